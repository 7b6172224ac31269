"""The cluster launcher configs (``cluster.yaml``, ``cluster-gcp.yaml``) and docs/cluster.md, checked offline.

* Ray's own schema: ``validate_config(prepare_config(cfg))``. Nothing is mocked: ``prepare_config`` only
  merges the provider's ``defaults.yaml`` shipped inside Ray and fills worker counts; it needs no cloud
  SDK, credentials or network (the cloud-touching step, ``bootstrap_config``, is not called).
* Every shell command parses (``bash -n``); every ``ray start`` / ``mlflow server`` flag exists in the
  installed Ray and MLflow command lines.
* Our rules (``mcel_search.cluster.check_cluster_config``): the real files have no problem, and each mutated
  copy produces the problem of the rule it breaks.
* docs/cluster.md: it names every placeholder of the files, its ``ray`` and ``mcel`` commands parse with
  the real command lines, and its spec overlay on ``configs/paper/vgg3-fashionmnist.yaml`` is a valid spec whose
  per-trial resources pack onto the worker node types.
"""

from __future__ import annotations

import copy
import re
import shlex
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from mcel_search.cluster import (
    ALL_INTERFACES,
    check_cluster_config,
    check_cluster_file,
    check_trial_fit,
    load_cluster_config,
    placeholders,
    trials_per_node,
)

ROOT = Path(__file__).resolve().parents[1]
FILES = {"aws": ROOT / "cluster.yaml", "gcp": ROOT / "cluster-gcp.yaml"}
DOCS = ROOT / "docs" / "cluster.md"
PAPER_SPEC = ROOT / "configs" / "paper" / "vgg3-fashionmnist.yaml"


def locked_versions() -> dict[str, str]:
    """requirements.lock as {name: version}."""
    lock = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            lock[name] = version
    return lock


def project_ray_version() -> str:
    """The Ray the project installs: the lock's (pyproject.toml holds the range it must lie in)."""
    return locked_versions()["ray"]


def load(which: str) -> tuple[dict[str, Any], str]:
    return load_cluster_config(FILES[which])


def codes(problems: list[str]) -> set[str]:
    return {p[1 : p.index("]")] for p in problems}


# ------------------------------------------------------------------------------------------- Ray's schema


@pytest.mark.parametrize("which", sorted(FILES))
def test_ray_schema_accepts_the_file(which: str) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg, _ = load(which)
    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    assert prepared["provider"]["type"] == which
    # what we wrote survives the merge with Ray's defaults
    assert prepared["available_node_types"].keys() == cfg["available_node_types"].keys()
    assert prepared["available_node_types"][cfg["head_node_type"]]["resources"] == {"CPU": 0}


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c["available_node_types"]["gpu-1x"]["resources"].update(GPU=0.5),  # resources are integers
        lambda c: c["available_node_types"]["gpu-1x"].update(gpus=1),  # unknown key
        lambda c: c.update(head_node_type="nope"),
    ],
    ids=["fractional-resource", "unknown-key", "bad-head-type"],
)
def test_ray_schema_rejects_broken_copies(mutate: Callable[[dict], Any]) -> None:
    """The schema check is not vacuous: Ray rejects what it should."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg, _ = load("aws")
    mutate(cfg)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        validate_config(prepare_config(cfg))


# ---------------------------------------------------------------------------- commands and their flags


def _commands(cfg: dict[str, Any]) -> list[str]:
    from mcel_search.cluster import all_commands

    return all_commands(cfg)


@pytest.mark.parametrize("which", sorted(FILES))
def test_every_command_is_valid_shell(which: str) -> None:
    cfg, _ = load(which)
    commands = _commands(cfg)
    assert len(commands) >= 8
    script = "\n".join(f"f{i}() {{\n{c}\n}}" for i, c in enumerate(commands))  # one bash -n for all
    result = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True, timeout=10)
    assert result.returncode == 0, result.stderr


def _click_options(command: Any) -> set[str]:
    return {o for p in command.params for o in [*getattr(p, "opts", []), *getattr(p, "secondary_opts", [])]}


def _flags(args: str) -> set[str]:
    return {t.split("=", 1)[0] for t in args.split() if t.startswith("-")}


@pytest.mark.parametrize("which", sorted(FILES))
def test_ray_start_and_mlflow_server_flags_exist(which: str) -> None:
    from mlflow.cli import server
    from ray.scripts.scripts import cli

    ray_start, ray_stop, mlflow_server = (
        _click_options(cli.commands["start"]),
        _click_options(cli.commands["stop"]),
        _click_options(server),
    )
    cfg, _ = load(which)
    seen = set()
    for command in _commands(cfg):
        for m in re.finditer(r"\bray\s+(start|stop)\b([^;&|\n]*)", command):
            known = ray_start if m[1] == "start" else ray_stop
            assert _flags(m[2]) <= known, (m[0], _flags(m[2]) - known)
            seen.add(f"ray {m[1]}")
        m = re.search(r"\bmlflow\s+server\b(.*)", command)
        if m:
            args = re.sub(r"\$\([^)]*\)", "X", m[1]).split(">")[0]  # up to the log redirection
            assert _flags(args) <= mlflow_server, _flags(args) - mlflow_server
            seen.add("mlflow server")
    assert seen == {"ray start", "ray stop", "mlflow server"}


# --------------------------------------------------------------------------------------------- our rules


@pytest.mark.parametrize("which", sorted(FILES))
def test_real_files_follow_our_rules(which: str) -> None:
    assert check_cluster_file(FILES[which], ray_version=project_ray_version()) == []


@pytest.mark.parametrize("which", sorted(FILES))
def test_files_pin_the_projects_ray(which: str) -> None:
    cfg, _ = load(which)
    pins = re.findall(r"ray\[[^\]]*\]==([\w.]+)", "\n".join(_commands(cfg)))
    assert pins and set(pins) == {project_ray_version()}


def _replace(key: str, old: str, new: str) -> Callable[[dict], None]:
    """Replace ``old`` by ``new`` in the command list ``key``; fails if ``old`` is not there."""

    def mutate(cfg: dict) -> None:
        joined = "\n".join(cfg[key])
        assert old in joined, (key, old)
        cfg[key] = [c.replace(old, new) for c in cfg[key]]

    return mutate


def _drop(key: str, needle: str) -> Callable[[dict], None]:
    def mutate(cfg: dict) -> None:
        before = len(cfg[key])
        cfg[key] = [c for c in cfg[key] if needle not in c]
        assert len(cfg[key]) < before, (key, needle)

    return mutate


def _node(name: str, fn: Callable[[dict], Any]) -> Callable[[dict], None]:
    return lambda cfg: fn(cfg["available_node_types"][name])


def _both(*fns: Callable[[dict], Any]) -> Callable[[dict], None]:
    def mutate(cfg: dict) -> None:
        for fn in fns:
            fn(cfg)

    return mutate


HEAD_START = "head_start_ray_commands"
AWS_MUTATIONS: dict[str, tuple[Callable[[dict], Any], str]] = {
    "head-cpus": (
        _both(
            _node("head", lambda n: n.update(resources={"CPU": 4})), _replace(HEAD_START, "--num-cpus=0 ", "")
        ),
        "head-runs-trials",
    ),
    "head-gpu": (_node("head", lambda n: n["resources"].update(GPU=1)), "head-gpu"),
    "worker-no-gpu": (_node("gpu-1x", lambda n: n["resources"].pop("GPU")), "worker-gpu"),
    "worker-gpu-zero": (_node("gpu-4x", lambda n: n["resources"].update(GPU=0)), "worker-gpu"),
    "worker-no-cpu": (_node("gpu-1x", lambda n: n["resources"].pop("CPU")), "worker-cpu"),
    "worker-more-gpus-than-machine": (
        _node("gpu-1x", lambda n: n["resources"].update(GPU=2)),
        "worker-hardware",
    ),
    "worker-more-cpus-than-machine": (
        _node("gpu-1x", lambda n: n["resources"].update(CPU=16)),
        "worker-hardware",
    ),
    "worker-no-profile": (
        _node("gpu-4x", lambda n: n["node_config"].pop("IamInstanceProfile")),
        "storage-access",
    ),
    "no-image": (_node("head", lambda n: n["node_config"].pop("ImageId")), "image"),
    "no-project-install": (_drop("setup_commands", "-e ~/mcel-search"), "setup-install"),
    "no-lock": (_replace("setup_commands", "-c ~/mcel-search/requirements.lock ", ""), "setup-lock"),
    "head-default-profile": (_node("head", lambda n: n["node_config"].pop("IamInstanceProfile")), "iam-head"),
    "ray-security-group": (_node("gpu-1x", lambda n: n["node_config"].pop("SecurityGroupIds")), "ssh-open"),
    "no-token-mount": (lambda c: c["file_mounts"].pop("~/.ray/auth_token"), "auth-token"),
    "worker-without-token": (_replace("worker_start_ray_commands", " RAY_AUTH_MODE=token", ""), "auth-token"),
    "no-gpu-check": (_drop("worker_setup_commands", "mcel_search.core.devices"), "gpu-check"),
    "install-from-pypi": (
        _replace("setup_commands", "-e ~/mcel-search", "mcel-search"),
        "setup-install",
    ),
    "system-ray": (
        _both(
            _replace(HEAD_START, "~/venv/bin/ray", "ray"),
            _replace(HEAD_START, "export PATH=$HOME/venv/bin:$PATH ", "export "),
        ),
        "ray-from-venv",
    ),
    "mlflow-all-interfaces": (
        _replace(HEAD_START, "--host $HEAD_IP", f"--host {ALL_INTERFACES}"),
        "mlflow-bind",
    ),
    "mlflow-public-ip": (_replace(HEAD_START, "--host $HEAD_IP", "--host 54.12.3.4"), "mlflow-bind"),
    "mlflow-loopback": (_replace(HEAD_START, "--host $HEAD_IP", "--host 127.0.0.1"), "mlflow-bind"),
    "mlflow-no-host": (_replace(HEAD_START, "--host $HEAD_IP ", ""), "mlflow-bind"),
    "mlflow-hostname-i": (_replace(HEAD_START, "hostname -I", "hostname -i"), "mlflow-bind"),
    "mlflow-missing": (_drop(HEAD_START, "mlflow server"), "mlflow-missing"),
    "mlflow-on-worker": (
        lambda c: c["worker_start_ray_commands"].append("nohup ~/venv/bin/mlflow server --host 10.0.0.5 &"),
        "mlflow-on-worker",
    ),
    "dashboard-public": (
        _replace(HEAD_START, "--dashboard-host=127.0.0.1", f"--dashboard-host={ALL_INTERFACES}"),
        "dashboard-bind",
    ),
    "dashboard-unsaid": (_replace(HEAD_START, "--dashboard-host=127.0.0.1", ""), "dashboard-bind"),
    "no-autoscaling-config": (
        _replace(HEAD_START, "--autoscaling-config=~/ray_bootstrap_config.yaml", ""),
        "autoscaler",
    ),
    "real-bucket": (_replace(HEAD_START, "s3://YOUR-BUCKET/", "s3://my-lab-results/"), "bucket-placeholder"),
    "open-mlflow-port": (
        lambda c: c["provider"].update(
            security_group={
                "IpPermissions": [
                    {
                        "FromPort": 5000,
                        "ToPort": 5000,
                        "IpProtocol": "tcp",
                        "IpRanges": [{"CidrIp": f"{ALL_INTERFACES}/0"}],
                    }
                ]
            }
        ),
        "open-ports",
    ),
    "no-venv-exclude": (lambda c: c["rsync_exclude"].remove(".venv"), "sync"),
    "no-workdir-sync": (lambda c: c.update(file_mounts={"~/data": "/tmp/data"}), "sync"),
    "no-data-root": (
        _both(
            _replace("setup_commands", "MCEL_DATA_ROOT", "DATA"),
            _replace(HEAD_START, "MCEL_DATA_ROOT", "DATA"),
            _replace("worker_start_ray_commands", "MCEL_DATA_ROOT", "DATA"),
        ),
        "data-root",
    ),
    "data-root-in-bucket": (
        _replace(
            "worker_start_ray_commands", "MCEL_DATA_ROOT=$HOME/mcel-data", "MCEL_DATA_ROOT=s3://YOUR-BUCKET/d"
        ),
        "data-root",
    ),
    "other-ray": (
        _replace("setup_commands", "ray[default,tune]==2.60.0", "ray[default,tune]==2.59.0"),
        "ray-version",
    ),
    "no-max-workers": (lambda c: c.pop("max_workers"), "autoscaling"),
}


@pytest.mark.parametrize("name", sorted(AWS_MUTATIONS))
def test_each_rule_fails_on_a_mutated_aws_config(name: str) -> None:
    mutate, code = AWS_MUTATIONS[name]
    cfg, _ = load("aws")
    mutate(cfg)
    problems = check_cluster_config(cfg, ray_version=project_ray_version())
    assert code in codes(problems), problems


GCP_MUTATIONS: dict[str, tuple[Callable[[dict], Any], str]] = {
    "scheduling-as-list": (
        _node("gpu-t4", lambda n: n["node_config"].update(scheduling=[{"onHostMaintenance": "TERMINATE"}])),
        "gpu-maintenance",
    ),
    "no-scheduling": (_node("gpu-l4", lambda n: n["node_config"].pop("scheduling")), "gpu-maintenance"),
    "no-accelerator": (
        _node("gpu-t4", lambda n: n["node_config"].pop("guestAccelerators")),
        "worker-hardware",
    ),
    "g2-two-gpus": (_node("gpu-l4", lambda n: n["resources"].update(GPU=2)), "worker-hardware"),
    "no-service-account": (
        _node("gpu-l4", lambda n: n["node_config"].pop("serviceAccounts")),
        "storage-access",
    ),
    "head-cpus": (
        _both(
            _node("head", lambda n: n.update(resources={"CPU": 4})), _replace(HEAD_START, "--num-cpus=0 ", "")
        ),
        "head-runs-trials",
    ),
    "worker-no-gpu": (_node("gpu-t4", lambda n: n["resources"].pop("GPU")), "worker-gpu"),
    "mlflow-all-interfaces": (
        _replace(HEAD_START, "--host $HEAD_IP", f"--host {ALL_INTERFACES}"),
        "mlflow-bind",
    ),
    "dashboard-public": (
        _replace(HEAD_START, "--dashboard-host=127.0.0.1", f"--dashboard-host={ALL_INTERFACES}"),
        "dashboard-bind",
    ),
    "real-bucket": (_replace(HEAD_START, "gs://YOUR-BUCKET/", "gs://my-lab-results/"), "bucket-placeholder"),
    "default-network": (_node("gpu-l4", lambda n: n["node_config"].pop("networkInterfaces")), "ssh-open"),
    "unpinned-driver": (_replace("worker_setup_commands", " nvidia:580-server", ""), "gpu-driver"),
    "old-driver": (_replace("worker_setup_commands", "nvidia:580-server", "nvidia:535-server"), "gpu-driver"),
    "no-gpu-check": (_drop("worker_setup_commands", "mcel_search.core.devices"), "gpu-check"),
    "head-without-token": (_replace(HEAD_START, " RAY_AUTH_MODE=token", ""), "auth-token"),
}


@pytest.mark.parametrize("name", sorted(GCP_MUTATIONS))
def test_each_rule_fails_on_a_mutated_gcp_config(name: str) -> None:
    mutate, code = GCP_MUTATIONS[name]
    cfg, _ = load("gcp")
    mutate(cfg)
    assert code in codes(check_cluster_config(cfg))


def test_head_without_trials_needs_only_one_of_cpu0_and_num_cpus0() -> None:
    """``resources: {"CPU": 0}`` or ``ray start --head --num-cpus=0``: either keeps trials off the head."""
    cfg, _ = load("aws")
    only_flag = copy.deepcopy(cfg)
    only_flag["available_node_types"]["head"]["resources"] = {"CPU": 4}
    assert "head-runs-trials" not in codes(check_cluster_config(only_flag))
    only_resources = copy.deepcopy(cfg)
    _replace(HEAD_START, "--num-cpus=0 ", "")(only_resources)
    assert "head-runs-trials" not in codes(check_cluster_config(only_resources))


def test_ray_on_the_venvs_path_is_fine() -> None:
    """``export PATH=<venv>/bin:$PATH; ray start ...`` uses the venv's ray as well as ``<venv>/bin/ray``."""
    cfg, _ = load("aws")
    _replace(HEAD_START, "~/venv/bin/ray start", "ray start")(cfg)
    assert check_cluster_config(cfg) == []


def test_open_ssh_alone_is_fine() -> None:
    cfg, _ = load("aws")
    ssh = {"FromPort": 22, "ToPort": 22, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": f"{ALL_INTERFACES}/0"}]}
    cfg["provider"]["security_group"] = {"IpPermissions": [ssh]}
    assert check_cluster_config(cfg) == []


@pytest.mark.parametrize(
    "secret",
    [
        "aws_access_key_id: x",
        "aws_secret_access_key = y",
        "key: AKIA" + "ABCDEFGHIJKLMNOP",
        "-----BEGIN RSA " + "PRIVATE KEY-----",
        '"private_key": "x"',
        "postgresql://mlflow:s3cret@db:5432/mlflow",
    ],
    ids=["key-id", "secret-key", "akia", "pem", "service-account-json", "password-in-url"],
)
def test_credentials_are_found_even_in_comments(secret: str) -> None:
    cfg, text = load("aws")
    assert check_cluster_config(cfg, text) == []
    assert "credentials" in codes(check_cluster_config(cfg, text + f"\n# {secret}\n"))


def test_a_real_bucket_in_a_comment_is_found() -> None:
    cfg, text = load("gcp")
    assert "bucket-placeholder" in codes(check_cluster_config(cfg, text + "\n# gs://lab-bucket/x\n"))


# ------------------------------------------------------------------------------------- trial placement


def test_paper_spec_resources_pack_onto_every_worker_type() -> None:
    resources = yaml.safe_load(PAPER_SPEC.read_text())["resources"]
    cpu, gpu = float(resources["cpu"]), float(resources["gpu"])
    assert (cpu, gpu) == (4.0, 0.5)
    for which in FILES:
        cfg, _ = load(which)
        assert check_trial_fit(cfg, cpu, gpu) == [], which
    aws, _ = load("aws")
    per_node = {n: trials_per_node(t["resources"], cpu, gpu) for n, t in aws["available_node_types"].items()}
    assert per_node == {"head": 0, "gpu-1x": 2, "gpu-4x": 8}


def test_a_worker_whose_cpus_leave_its_gpu_idle_is_reported() -> None:
    cfg, _ = load("aws")
    node = cfg["available_node_types"]["gpu-1x"]
    node["node_config"]["InstanceType"], node["resources"] = "g5.xlarge", {"CPU": 4, "GPU": 1}
    assert check_cluster_config(cfg) == []  # honest about the machine...
    assert "trial-fit" in codes(check_trial_fit(cfg, 4, 0.5))  # ...but half its GPU would idle
    node["resources"] = {"CPU": 2, "GPU": 1}
    assert any("cannot hold one trial" in p for p in check_trial_fit(cfg, 4, 0.5))


# ---------------------------------------------------------------------------------------------- the docs


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def _lines(block: str) -> list[str]:
    return [line.split(" #")[0].strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def test_docs_name_every_placeholder_of_the_files() -> None:
    docs = DOCS.read_text()
    for which, path in FILES.items():
        found = placeholders(path.read_text())
        assert found, which
        assert found <= placeholders(docs), (which, found - placeholders(docs))


def test_docs_ray_commands_use_real_subcommands_and_flags() -> None:
    from ray.scripts.scripts import cli

    checked = set()
    for block in _bash_blocks(DOCS.read_text()):
        for line in _lines(block):
            if not line.startswith("ray "):
                continue
            tokens = shlex.split(re.sub(r"\$\([^)]*\)", "X", line))[1:]
            command, name = cli, []
            while hasattr(command, "commands") and tokens and tokens[0] in command.commands:
                name.append(tokens[0])
                command = command.commands[tokens.pop(0)]
            assert not hasattr(command, "commands"), line
            args = tokens[: tokens.index("--")] if "--" in tokens else tokens
            flags = {t.split("=", 1)[0] for t in args if t.startswith("-")}
            assert flags <= _click_options(command), (line, flags - _click_options(command))
            checked.add(" ".join(name))
    assert {"up", "exec", "dashboard", "job submit", "attach", "down", "rsync-down"} <= checked


def test_docs_mcel_commands_parse() -> None:
    from mcel_search.search.cli import build_parser

    parser = build_parser()
    parsed = []
    for block in _bash_blocks(DOCS.read_text()):
        for line in _lines(block):
            for m in re.finditer(r"(?:^|[\s'])(?:\S*/)?mcel\s+([a-z]+\b[^'\n]*)", line):
                argv = shlex.split(re.sub(r"\$\([^)]*\)", "X", m[1]))
                try:
                    args = parser.parse_args(argv)
                except SystemExit:
                    pytest.fail(f"docs/cluster.md: `mcel {m[1]}` does not parse")
                parsed.append(args.command)
    assert {"search", "pareto", "best", "report"} <= set(parsed)


def test_docs_spec_overlay_is_a_valid_cluster_spec(tmp_path: Path) -> None:
    from mcel_search.search.spec_file import load_spec

    (overlay,) = [
        b for b in re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), flags=re.S) if "storage:" in b
    ]
    spec = yaml.safe_load(PAPER_SPEC.read_text())
    for key, value in yaml.safe_load(overlay).items():
        spec[key] = (
            {**spec[key], **value} if isinstance(value, dict) and isinstance(spec.get(key), dict) else value
        )
    path = tmp_path / "cluster-spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    loaded = load_spec(path)
    assert loaded.storage.path.startswith("s3://YOUR-BUCKET/")
    assert loaded.storage.optuna.startswith("sqlite:////")  # absolute: a job's working dir is temporary
    assert loaded.tracking.uri.startswith("http://10.")
    cfg, _ = load("aws")
    assert check_trial_fit(cfg, loaded.resources.cpu, loaded.resources.gpu) == []


# ------------------------------------------------------ Ray's validation in the CLI, permissions, workers


def _copy_cluster(tmp_path: Path, which: str = "aws") -> Path:
    """``cluster.yaml`` (or the GCP file) and ``cluster-setup/`` copied into ``tmp_path``."""
    import shutil

    shutil.copytree(ROOT / "cluster-setup", tmp_path / "cluster-setup")
    target = tmp_path / FILES[which].name
    target.write_text(FILES[which].read_text())
    return target


def _run_check(path: Path) -> subprocess.CompletedProcess:
    import sys

    return subprocess.run(
        [sys.executable, "-m", "mcel_search.cluster", str(path)], capture_output=True, text=True, timeout=120
    )


def test_cluster_check_runs_rays_validation_and_fails_a_mutated_file(tmp_path: Path) -> None:
    path = _copy_cluster(tmp_path)
    ok = _run_check(path)
    assert ok.returncode == 0 and ok.stdout.strip() == "no problems", ok.stdout + ok.stderr
    # a value only Ray's schema knows is wrong (our rules do not look at it)
    path.write_text(path.read_text().replace("upscaling_speed: 1.0 ", 'upscaling_speed: "fast" ', 1))
    bad = _run_check(path)
    assert bad.returncode == 1, bad.stdout
    lines = bad.stdout.splitlines()
    assert any("[ray-schema] upscaling_speed:" in ln and "'fast'" in ln for ln in lines), lines
    assert "INFO" not in bad.stderr  # Ray's prepare_config chatter is silenced


def test_ray_schema_problems_name_the_field() -> None:
    from mcel_search.cluster import ray_schema_problems

    cfg, _ = load("gcp")
    assert ray_schema_problems(cfg) == []
    cfg["available_node_types"]["gpu-t4"]["resources"]["GPU"] = 0.5  # Ray wants integers
    (problem,) = ray_schema_problems(cfg)
    assert problem.startswith("[ray-schema] available_node_types.gpu-t4.resources.GPU:"), problem


def test_the_head_policy_lets_the_head_pass_exactly_the_workers_role() -> None:
    import json

    from mcel_search.cluster import passrole_problems, worker_profile_roles

    cfg, _ = load("aws")
    assert set(worker_profile_roles(cfg).values()) == {"mcel-worker"}
    policy = json.loads((ROOT / "cluster-setup" / "aws-head-policy.json").read_text())
    assert passrole_problems(cfg, policy) == []
    # without the PassRole statement, both worker types are reported
    no_pass = {"Statement": [s for s in policy["Statement"] if s.get("Action") != "iam:PassRole"]}
    assert codes(passrole_problems(cfg, no_pass)) == {"iam-passrole"}
    assert len(passrole_problems(cfg, no_pass)) == 2
    # PassRole on another role does not count; a wildcard that covers the role does
    other = {
        "Statement": [{"Effect": "Allow", "Action": "iam:PassRole", "Resource": "arn:aws:iam::1:role/x"}]
    }
    assert len(passrole_problems(cfg, other)) == 2
    wild = {
        "Statement": [
            {"Effect": "Allow", "Action": ["iam:PassRole"], "Resource": "arn:aws:iam::*:role/mcel-*"}
        ]
    }
    assert passrole_problems(cfg, wild) == []
    deny = {"Statement": [dict(wild["Statement"][0], Effect="Deny")]}
    assert len(passrole_problems(cfg, deny)) == 2


def test_setup_files_named_by_the_config_must_exist(tmp_path: Path) -> None:
    path = _copy_cluster(tmp_path)
    (tmp_path / "cluster-setup" / "aws-head-policy.json").unlink()
    problems = check_cluster_file(path, ray_schema=False)
    assert codes(problems) == {"iam-files"}, problems
    assert any("aws-head-policy.json" in p for p in problems)


def test_shipped_policies_and_scripts() -> None:
    import json

    setup = ROOT / "cluster-setup"
    for name in (
        "aws-head-policy.json",
        "aws-worker-policy.json",
        "aws-ec2-trust.json",
        "aws-operator-policy.json",
    ):
        doc = json.loads((setup / name).read_text())
        assert doc["Version"] == "2012-10-17" and doc["Statement"], name
        assert placeholders((setup / name).read_text()) <= {"YOUR-ACCOUNT-ID", "YOUR-BUCKET"}, name
    worker = json.loads((setup / "aws-worker-policy.json").read_text())
    actions = {
        a
        for s in worker["Statement"]
        for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    }
    assert all(a.startswith("s3:") for a in actions), actions  # the workers touch the bucket, nothing else
    resources = {s["Resource"] for s in worker["Statement"]}
    assert resources == {"arn:aws:s3:::YOUR-BUCKET", "arn:aws:s3:::YOUR-BUCKET/mcel/*"}
    for script in ("aws-setup.sh", "gcp-setup.sh"):
        assert subprocess.run(["bash", "-n", str(setup / script)], timeout=10).returncode == 0, script


@pytest.mark.parametrize(
    "script,env",
    [
        ("aws-setup.sh", {"BUCKET": "b", "REGION": "us-west-2"}),
        ("gcp-setup.sh", {"PROJECT": "p", "BUCKET": "b", "REGION": "us-central1"}),
    ],
)
@pytest.mark.parametrize("cidr", [f"{ALL_INTERFACES}/0", "::/0", "203.0.113.7"])
def test_setup_scripts_refuse_ssh_from_anywhere(script: str, env: dict, cidr: str, tmp_path: Path) -> None:
    """The check runs before any cloud call: PATH holds no aws/gcloud here, so reaching one would fail
    differently (127, command not found)."""
    import os

    result = subprocess.run(
        ["bash", str(ROOT / "cluster-setup" / script)],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **env, "OPERATOR_CIDR": cidr},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert cidr in result.stderr and "OPERATOR_CIDR" in result.stderr
    assert os.listdir(tmp_path) == []  # nothing written


def test_docker_variant_is_valid_when_uncommented() -> None:
    """The commented ``docker:`` block of cluster.yaml passes Ray's validation and our rules once
    uncommented, and its image is built from cluster-setup/Dockerfile at the project's Ray version."""
    from mcel_search.cluster import ray_schema_problems

    text = FILES["aws"].read_text()
    block = re.search(r"^# docker:\n((?:#   .*\n)+)", text, flags=re.M)
    assert block, "no commented docker: block in cluster.yaml"
    uncommented = text.replace(
        block[0], "docker:\n" + "".join(line[2:] + "\n" for line in block[1].splitlines())
    )
    cfg = yaml.safe_load(uncommented)
    assert cfg["docker"]["worker_run_options"] == ["--gpus all"]
    assert ray_schema_problems(cfg) == []
    assert check_cluster_config(cfg, uncommented, ray_version=project_ray_version()) == []
    dockerfile = (ROOT / "cluster-setup" / "Dockerfile").read_text()
    (base,) = re.findall(r"^FROM\s+(\S+)", dockerfile, flags=re.M)
    assert base.startswith(f"rayproject/ray:{project_ray_version()}-py311-gpu"), base
    assert "-c /home/ray/mcel-search/requirements.lock" in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "mlflow.db", "ray_results"} <= set(ignored)


def test_lock_pins_the_projects_dependencies_inside_their_ranges() -> None:
    from packaging.requirements import Requirement

    lock = locked_versions()
    assert "mcel-search" not in lock
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    for dep in deps:
        req = Requirement(dep)
        name = req.name.lower()
        assert name in lock, f"{name} (pyproject) is not in requirements.lock: run make lock"
        assert req.specifier.contains(lock[name], prereleases=True), (
            f"lock {name}=={lock[name]} outside {dep}"
        )
        # a range, not a pin: the lock pins
        assert not any(s.operator == "==" for s in req.specifier), dep
    # ray[default] for the dashboard, jobs and the autoscaler on the nodes
    assert {"aiohttp-cors", "opencensus", "py-spy"} <= lock.keys()


def test_storage_paths_agree_between_spec_docs_and_files() -> None:
    spec = yaml.safe_load(PAPER_SPEC.read_text())
    path = spec["storage"]["path"]
    assert path == "s3://YOUR-BUCKET/mcel/ray"
    for doc in (DOCS, ROOT / "README.md", FILES["aws"]):
        found = set(re.findall(r"s3://YOUR-BUCKET/mcel(?:/[\w-]+)?", doc.read_text()))
        assert found <= {path, "s3://YOUR-BUCKET/mcel/mlflow-artifacts", "s3://YOUR-BUCKET/mcel/data"}, (
            doc,
            found,
        )
    assert path in DOCS.read_text()


def test_docs_name_the_right_paper_spec() -> None:
    text = DOCS.read_text()
    assert "configs/vgg3-fashionmnist.yaml" not in text
    for name in re.findall(r"configs/[\w/-]+\.yaml", text):
        if "cluster" not in name:  # the user's own copy
            assert (ROOT / name).is_file(), name
