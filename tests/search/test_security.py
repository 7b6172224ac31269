"""Security: what we start listens on 127.0.0.1 only, and no credential reaches MLflow or the terminal."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mcel_search.core.redact import redact_credentials
from mcel_search.search import runner
from mcel_search.search.spec import parse_spec

ROOT = Path(__file__).resolve().parents[2]
#: Product code and docs a user copies commands from (tests excluded: their servers are test fixtures).
PRODUCT_FILES = [
    *sorted((ROOT / "mcel_search").glob("*.py")),
    *sorted((ROOT / "search").glob("*.py")),
    *sorted((ROOT / "core").rglob("*.py")),
    *sorted((ROOT / "analysis").rglob("*.py")),
    *sorted((ROOT / "configs").glob("*.yaml")),
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted(ROOT.glob("cluster*.yaml")),
    ROOT / "README.md",
    ROOT / "Makefile",
]
ALL_INTERFACES = ".".join(["0"] * 4)
_SERVER_RE = re.compile(r"mlflow (?:server|ui)\b[^\n`\"]*")
_HOST_RE = re.compile(r"--host[= ](\S+)")


#: Ray's own processes of a local instance: their gRPC servers (GCS, raylet, workers, agents).
RAY_CORE_PROCESSES = ("gcs_server", "raylet", "ray::", "python", "default_worker", "agent")


def _listening_sockets(pids: set[int]) -> list[tuple[str, int, str]]:
    """``(address, port, process name)`` of every TCP socket in LISTEN state owned by ``pids``."""
    import psutil

    out = []
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
            try:
                name = psutil.Process(conn.pid).name()
            except psutil.Error:
                name = "?"
            out.append((conn.laddr.ip, conn.laddr.port, name))
    return out


def test_local_ray_really_starts_no_dashboard_and_only_rays_own_ports_listen() -> None:
    """The sockets a local search's Ray really bound (not the kwargs of a patched ray.init): no dashboard
    (nothing on its port, no dashboard process), and every socket not on loopback belongs to one of
    Ray's core processes (their gRPC ports, which Ray binds on every interface whatever address it is
    given: see README "Security")."""
    import psutil
    import ray

    if ray.is_initialized():
        ray.shutdown()
    driver = psutil.Process()
    before = {p.pid for p in driver.children(recursive=True)}
    runner._init_ray(None, 1)
    try:
        ray.get(ray.remote(lambda: 1).remote())  # a worker is up too
        pids = {driver.pid} | {p.pid for p in driver.children(recursive=True)} - before
        names = {psutil.Process(pid).name() for pid in pids if psutil.pid_exists(pid)}
        sockets = _listening_sockets(pids)
        assert sockets, "no listening socket found: the check would see nothing"
        assert not any("dashboard" in name for name in names), names
        assert 8265 not in {port for _, port, _ in sockets}, sockets  # Ray's default dashboard port
        for address, port, name in sockets:
            if address not in ("127.0.0.1", "::1"):
                assert name.startswith(RAY_CORE_PROCESSES), (address, port, name)
        # ... and those are guarded by Ray's token authentication (Ray sets the mode for a new local Ray)
        assert os.environ.get("RAY_AUTH_MODE") == "token"
        assert (Path.home() / ".ray" / "auth_token").is_file()
    finally:
        ray.shutdown()


def test_every_server_command_we_ship_binds_to_loopback_or_the_private_address() -> None:
    found = []
    for path in PRODUCT_FILES:
        text = path.read_text()
        assert ALL_INTERFACES not in text, f"{path}: binds to all interfaces"
        for m in _SERVER_RE.finditer(text):
            hosts = _HOST_RE.findall(m.group(0))
            found.append((path.name, m.group(0)))
            # no --host: mlflow's default is 127.0.0.1; $HEAD_IP is the head's private address (the cluster
            # file checks in mcel_search/cluster.py verify it)
            assert all(h in ("127.0.0.1", "$HEAD_IP") for h in hosts), (path, m.group(0))
        for m in re.finditer(r"dashboard[-_]host\s*=\s*[\"']?([\w.${}]+)", text):
            found.append((path.name, m.group(0)))
            assert m.group(1) == "127.0.0.1", (path, m.group(0))
    names = {name for name, _ in found}
    assert {"cli.py", "runner.py", "cluster.yaml", "cluster-gcp.yaml"} <= names, found  # the grep sees them


def test_docs_send_users_through_ssh_tunnels() -> None:
    text = (ROOT / "docs" / "cluster.md").read_text()
    assert (
        "SSH tunnels" in text and "ssh -i" in text and "-L 5000:" in text and "-L 8265:127.0.0.1:8265" in text
    )


@pytest.mark.parametrize(
    "text, secret",
    [
        ("http://alice:hunter2@mlflow.example:5000", "hunter2"),
        ("postgresql+psycopg2://optuna:s3cr%40t@db:5432/optuna", "s3cr%40t"),
        ("mysql://root:pw@10.0.0.3/mlflow", ":pw@"),
        ("https://host/api?token=abc123&x=1", "abc123"),
        ("error: could not reach http://bob:topsecret@h:1/ (refused)", "topsecret"),
    ],
)
def test_redact_credentials_masks_passwords(text: str, secret: str) -> None:
    out = redact_credentials(text)
    assert secret not in out and "***" in out


@pytest.mark.slow
def test_logged_params_and_tags_never_contain_credentials(
    tmp_path, mlflow_server, local_ray, small_spec
) -> None:
    """A real search whose tracking URI carries a password: the password is in no MLflow param,
    tag or the printed plan; the masked URI is logged (so the param exists and was masked, not dropped)."""
    port = mlflow_server.uri.rsplit(":", 1)[1]
    uri = f"http://alice:hunter2@127.0.0.1:{port}"  # the server ignores basic auth: the search runs
    spec = parse_spec(
        small_spec(
            "secrets",
            train={"epochs": 1, "batch_size": 64, "device": "cpu"},
            trials_per_arch=1,
            concurrency=1,
            tracking={"uri": uri, "experiment": "secrets"},
            storage={
                "path": str(tmp_path / "ray"),
                "optuna": f"sqlite:///{tmp_path / 'optuna.db'}",
            },
        )
    )
    assert "hunter2" not in runner.plan(spec, uri, str(tmp_path / "ray"))
    runner.run_search(spec, verbose=0)
    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name("secrets")
    runs = client.search_runs([exp.experiment_id])
    assert {r.data.tags.get("mcel.role") for r in runs} == {"parent", "trial"}
    for run in runs:
        for value in [*run.data.params.values(), *run.data.tags.values()]:
            assert "hunter2" not in value, value
    parent = next(r for r in runs if r.data.tags["mcel.role"] == "parent")
    assert parent.data.params["tracking.uri"] == f"http://alice:***@127.0.0.1:{port}"


@pytest.mark.parametrize(
    "uri, stripped, env",
    [
        (
            "http://alice:p%40ss@127.0.0.1:5000/x",
            "http://127.0.0.1:5000/x",
            {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": "p@ss"},
        ),
        (
            "postgresql+psycopg2://bob:pw@db:5432/optuna",
            "postgresql+psycopg2://bob@db:5432/optuna",
            {"PGPASSWORD": "pw"},
        ),
        ("mysql://carol:pw@[::1]:3306/m", "mysql://carol@[::1]:3306/m", {"MYSQL_PWD": "pw"}),
        ("sqlite:////abs/optuna.db", "sqlite:////abs/optuna.db", {}),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000", {}),
    ],
)
def test_a_password_leaves_the_uri_for_the_clients_own_variable(
    uri: str, stripped: str, env: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mcel_search.core.redact import PASSWORD_ENV, credentials_to_env

    for names in PASSWORD_ENV.values():
        for name in names:
            if name:
                monkeypatch.delenv(name, raising=False)
    assert credentials_to_env(uri) == stripped
    assert {k: os.environ[k] for k in env} == env


def test_two_stores_with_two_passwords_keep_the_second_in_its_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    from mcel_search.core.redact import credentials_to_env

    monkeypatch.setenv("PGPASSWORD", "first")
    assert credentials_to_env("postgresql://u:second@db/x") == "postgresql://u:second@db/x"
    assert os.environ["PGPASSWORD"] == "first"
