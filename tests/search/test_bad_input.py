"""The bad-input catalog: malformed specs, environments and checkpoints through the real ``mcel`` entry point.

Every case runs ``search.cli.main(argv)`` in-process (two also as a subprocess, to see the real exit status
and stderr) and asserts: exit status 2; exactly one line on stderr, ``mcel: error: ...``, naming the field,
the bad value and what is allowed; no traceback (``--debug`` shows one); nothing launched: Ray not started,
no MLflow store or run, no Optuna study, nothing written under the storage path.
"""

from __future__ import annotations

import copy
import os
import pickle
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from mcel_search.search import cli


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Env:
    """A sandbox for one case: the spec's paths all live under ``root``."""

    root: Path
    base: dict[str, Any]

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow" / "mlflow.db"

    @property
    def storage(self) -> Path:
        return self.root / "ray"

    def spec(self) -> dict[str, Any]:
        spec = copy.deepcopy(self.base)
        (self.root / "mlflow").mkdir(exist_ok=True)
        spec.update(
            name="bad",
            tracking={"uri": f"sqlite:///{self.mlflow_db}"},
            storage={"path": str(self.storage)},
        )
        return spec

    def write(self, spec: dict[str, Any] | str) -> str:
        path = self.root / "spec.yaml"
        path.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec, sort_keys=False))
        return str(path)


def _set(spec: dict, dotted: str, value: Any) -> dict:
    *parents, last = dotted.split(".")
    node = spec
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return spec


def closed_port() -> int:
    port = free_port()
    with socket.socket() as s:  # nothing listens there: connecting is refused at once
        assert s.connect_ex(("127.0.0.1", port)) != 0
    return port


def _junk(path: Path) -> Path:
    path.write_text("this is not a database\n")
    return path


def file_in_the_way(env: Env) -> Path:
    """A regular file: a path under it cannot be created, whoever runs the test (root included)."""
    blocker = env.root / "blocker"
    blocker.write_text("not a directory\n")
    return blocker


# ------------------------------------------------------------------------------------------- the catalog

# Each spec case: (id, edit of the valid spec -> argv extras / spec, substrings the one line must hold).
# The edit gets (spec dict, env) and returns the spec (dict or YAML text) to write.
SpecEdit = Callable[[dict, Env], dict | str]


def edit(dotted: str, value: Any) -> SpecEdit:
    return lambda spec, env: _set(spec, dotted, value)


SPEC_CASES: list[tuple[str, SpecEdit, list[str]]] = [
    ("negative-margin", edit("space.margin", -1.0), ["space.margin", "-1.0", "margin must be >= 0"]),
    ("b-zero", edit("space.b", 0), ["space.b", "0", "b must be > 0"]),
    ("b-negative-choice", edit("space.b", {"choice": [4, -2]}), ["space.b.choice[1]", "-2", "b must be > 0"]),
    ("bits-3", edit("bits", [3]), ["bits[0]", "3", "one of 1, 2, 4, 8, 32"]),
    ("sweep-ber-above-1", edit("sweep.bers", [0.0, 1.5]), ["sweep.bers[1]", "1.5", "in [0, 1]"]),
    ("sweep-ber-negative", edit("sweep.bers", [-0.01, 0.01]), ["sweep.bers[0]", "-0.01", "in [0, 1]"]),
    ("target-ber-above-1", edit("objective.target_ber", 2), ["objective.target_ber", "2", "in [0, 1]"]),
    (
        "target-ber-negative",
        edit("objective.target_ber", -0.1),
        ["objective.target_ber", "-0.1", "in [0, 1]"],
    ),
    # p01 is target_ber; p10 alone is valid (asymmetric errors) but must itself be a rate
    ("p10-out-of-range", edit("objective.p10", 1.2), ["objective.p10", "1.2", "in [0, 1] or null"]),
    ("p10-a-string", edit("objective.p10", "high"), ["objective.p10", "'high'", "in [0, 1] or null"]),
    ("unknown-arch", edit("architectures", ["vgg99"]), ["architectures[0]", "'vgg99'", "one of mobilenetv2"]),
    ("unknown-dataset", edit("dataset", "mnist2"), ["dataset.name", "'mnist2'", "one of cifar10, digits"]),
    ("unknown-loss", edit("losses", ["focal"]), ["losses[0]", "'focal'", "one of cel, mcel, mhl"]),
    ("unknown-sampler", edit("sampler", "nsga3"), ["sampler.name", "'nsga3'", "did you mean 'nsga2'"]),
    ("unknown-pruner", edit("pruner", "medain"), ["pruner.name", "'medain'", "did you mean 'median'"]),
    (
        "misspelt-key",
        edit("train.batch_sise", 64),
        ["train.batch_sise", "64", "unknown key", "did you mean 'batch_size'"],
    ),
    ("string-for-number", edit("train.lr", "fast"), ["train.lr", "'fast'", "a finite number > 0"]),
    (
        "empty-range",
        edit("space.margin", {"uniform": [2, 2]}),
        ["space.margin.uniform", "[2, 2]", "low must be < high"],
    ),
    (
        "inverted-range",
        edit("space.margin", {"uniform": [8, 2]}),
        ["space.margin.uniform", "[8, 2]", "low must be < high"],
    ),
    (
        "empty-choice",
        edit("space.b", {"choice": []}),
        ["space.b.choice", "[]", "a non-empty list of numbers"],
    ),
    ("zero-trials", edit("trials_per_arch", 0), ["trials_per_arch", "0", "an integer >= 1"]),
    ("zero-epochs", edit("train.epochs", 0), ["train.epochs", "0", "an integer >= 1"]),
    (
        "train-ber-above-half",
        edit("train.train_ber", 0.7),
        ["train.train_ber", "0.7", "a bit error rate in [0, 0.5]"],
    ),
    ("zero-concurrency", edit("concurrency", 0), ["concurrency", "0", "an integer >= 1"]),
    (
        "fractional-gpus-above-1",
        edit("resources.gpu", 1.5),
        ["resources.gpu", "1.5", "fractions only up to 1"],
    ),
    (
        "pruner-mode-mismatch",
        edit("pruner", {"name": "median", "metric": "train_loss", "mode": "max"}),
        ["pruner.mode", "'max'", "set mode: min"],
    ),
    (
        "margin-missing-for-mcel",
        lambda s, e: {**s, "space": {"b": 4.0}},
        ["space.margin", "missing", "required by loss mcel"],
    ),
    (
        "tracking-uri-bad-scheme",
        edit("tracking.uri", "ftp://host/x"),
        ["tracking.uri", "'ftp://host/x'", "an MLflow tracking URI"],
    ),
    (
        "yaml-syntax-error",
        lambda s, e: "name: bad\nbits: [4\ntrain: {epochs: 3}\n",
        ["spec", "spec.yaml", "invalid YAML at line"],
    ),
    (
        "yaml-duplicate-key",
        lambda s, e: yaml.safe_dump(s, sort_keys=False) + "trials_per_arch: 5\n",
        ["spec", "'trials_per_arch'", "key given twice", "give each key once"],
    ),
    ("empty-file", lambda s, e: "", ["spec", "None", "a mapping with keys", "the file is empty"]),
    # the environment, checked before launch (search.runner.preflight)
    (
        "data-files-missing",
        lambda s, e: {**s, "dataset": {"name": "cifar10", "root": str(e.root / "empty-data")}},
        ["dataset.root", "empty-data", "not found", "allowed: a directory holding the cifar10 files"],
    ),
    (
        "tracking-server-unreachable",
        lambda s, e: _set(s, "tracking.uri", f"http://127.0.0.1:{closed_port()}"),
        ["tracking.uri", "http://127.0.0.1:", "unreachable", "allowed: a reachable MLflow tracking server"],
    ),
    (
        "tracking-password-masked",
        lambda s, e: _set(s, "tracking.uri", f"http://alice:hunter2@127.0.0.1:{closed_port()}"),
        ["tracking.uri", "http://alice:***@127.0.0.1:", "unreachable"],
    ),
    (
        "storage-under-a-file",
        lambda s, e: _set(s, "storage.path", str(file_in_the_way(e) / "ray")),
        [
            "storage.path",
            "blocker/ray",
            "is a file, not a directory",
            "allowed: a directory this user can write to",
        ],
    ),
    (
        "tracking-db-under-a-file",
        lambda s, e: _set(s, "tracking.uri", f"sqlite:///{file_in_the_way(e)}/mlflow.db"),
        ["tracking.uri", "blocker/mlflow.db", "is a file, not a directory", "allowed:"],
    ),
    (
        "tracking-db-is-a-directory",
        lambda s, e: _set(s, "tracking.uri", f"sqlite:///{(e.root / 'dir.db').mkdir() or e.root / 'dir.db'}"),
        ["tracking.uri", "dir.db", "is a directory"],
    ),
    (
        "optuna-db-is-junk",
        lambda s, e: _set(s, "storage.optuna", f"sqlite:///{_junk(e.root / 'junk.db')}"),
        ["storage.optuna", "junk.db", "exists and is not an SQLite database"],
    ),
    (
        "experiment-name-too-long",
        edit("tracking.experiment", "x" * 300),
        ["tracking.experiment", "at most 256 printable characters"],
    ),
    (
        "storage-name-over-the-file-system-limit",
        lambda s, e: _set(s, "storage.path", str(e.root / ("x" * 300) / "ray")),
        ["storage.path", "a name of 300 characters", "at most 255 bytes per name"],
    ),
    # hostile spec files: one line at once, whatever their content
    ("nul-character", lambda s, e: yaml.safe_dump(s).replace("name: bad", "name: ba\x00d"), ["U+0000"]),
    (
        "yaml-alias-bomb",
        lambda s, e: (
            "a: &a [x, x, x, x, x, x, x, x, x]\n"
            + "".join(
                f"a{i}: &a{i} [{', '.join(['*a' if i == 0 else f'*a{i - 1}'] * 9)}]\n" for i in range(8)
            )
        ),
        ["its YAML aliases expand to more than 100_000 values"],
    ),
    # sizes: every integer has an upper bound (an unbounded one was accepted, then hung or ran for ever)
    ("epochs-huge", edit("train.epochs", 10**12), ["train.epochs", "1000000000000", "<= 100_000"]),
    ("batch-size-huge", edit("train.batch_size", 10**12), ["train.batch_size", "<= 1_048_576"]),
    ("trials-huge", edit("trials_per_arch", 10**12), ["trials_per_arch", "<= 100_000"]),
    ("reps-huge", edit("objective.reps", 10**12), ["objective.reps", "<= 10_000"]),
    ("seed-beyond-32-bits", edit("sampler.seed", 2**40), ["sampler.seed", str(2**40), "<= 4_294_967_295"]),
    # resources no node of the local Ray can ever give: refused before Ray starts (it would wait for ever)
    (
        "cpus-no-node-has",
        edit("resources.cpu", 100_000),
        ["resources.cpu", "100000", "more than the", "CPUs of the local Ray instance"],
    ),
]


def _read_only_storage(spec: dict, env: Env) -> dict:
    ro = env.root / "read-only"
    ro.mkdir()
    ro.chmod(0o500)
    return _set(spec, "storage.path", str(ro / "ray"))


@pytest.fixture()
def env(tmp_path: Path, base_spec: dict) -> Env:
    yield Env(tmp_path, base_spec)
    for p in tmp_path.rglob("*"):  # let pytest clean up what a case made read-only
        if p.is_dir():
            p.chmod(0o700)


def assert_nothing_launched(env: Env) -> None:
    import ray

    assert not ray.is_initialized(), "Ray was started"
    assert not env.mlflow_db.exists(), "an MLflow store was created"
    assert not env.storage.exists(), f"the storage path was written: {list(env.storage.rglob('*'))}"
    assert not list(env.root.rglob("optuna.db")), "an Optuna study was created"


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, list[str], str]:
    status = cli.main(argv)
    out = capsys.readouterr()
    return status, [ln for ln in out.err.splitlines() if ln.strip()], out.err


def assert_one_line(status: int, lines: list[str], err: str, needles: list[str]) -> None:
    assert status == cli.EXIT_BAD_INPUT, err
    assert len(lines) == 1 and lines[0].startswith("mcel: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"


def test_valid_base_spec_passes(env: Env, capsys: pytest.CaptureFixture) -> None:
    """The control: the spec every case breaks is valid and passes the preflight checks, so each case
    fails because of its one bad field."""
    from mcel_search.search.preflight import preflight, resolve_storage_path
    from mcel_search.search.spec_file import load_spec

    path = env.write(env.spec())
    assert cli.main(["search", path, "--dry-run"]) == 0
    capsys.readouterr()
    spec = load_spec(path)
    preflight(spec, spec.tracking.uri, resolve_storage_path(spec.storage.path))
    assert_nothing_launched(env)


@pytest.mark.parametrize("case, make, needles", SPEC_CASES, ids=[c[0] for c in SPEC_CASES])
def test_bad_search_input(
    case: str, make: SpecEdit, needles: list[str], env: Env, capsys: pytest.CaptureFixture
) -> None:
    path = env.write(make(env.spec(), env))
    status, lines, err = run_cli(["search", path, "--quiet"], capsys)
    assert_one_line(status, lines, err, needles)
    if case == "tracking-password-masked":
        assert "hunter2" not in err
    assert_nothing_launched(env)


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root writes into a 0o500 directory; storage-under-a-file covers it"
)
def test_storage_read_only_dir(env: Env, capsys: pytest.CaptureFixture) -> None:
    path = env.write(_read_only_storage(env.spec(), env))
    status, lines, err = run_cli(["search", path, "--quiet"], capsys)
    assert_one_line(status, lines, err, ["storage.path", "read-only/ray", "no write permission"])
    assert_nothing_launched(env)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the cases need one without")
@pytest.mark.parametrize(
    "dotted, value, needles",
    [
        ("resources.gpu", 1, ["resources.gpu", "has 0 GPU(s)", "allowed: 0, or --ray-address"]),
        ("train.device", "cuda", ["train.device", "'cuda'", "not available here", "allowed: auto or cpu"]),
    ],
)
def test_gpu_asked_on_a_machine_without_one(
    dotted: str, value: Any, needles: list[str], env: Env, capsys: pytest.CaptureFixture
) -> None:
    """Every trial would fail (or never start) on the local Ray: refused before launch, one line."""
    status, lines, err = run_cli(["search", env.write(_set(env.spec(), dotted, value)), "--quiet"], capsys)
    assert_one_line(status, lines, err, needles)
    assert_nothing_launched(env)


@pytest.mark.parametrize("count", ["0", "-1"])
def test_num_cpus_that_is_no_count(count: str, env: Env, capsys: pytest.CaptureFixture) -> None:
    status, lines, err = run_cli(["search", env.write(env.spec()), "--quiet", "--num-cpus", count], capsys)
    assert_one_line(status, lines, err, ["--num-cpus", count, "an integer >= 1"])
    assert_nothing_launched(env)


def test_ray_address_on_a_closed_port_fails_in_seconds(env: Env, capsys: pytest.CaptureFixture) -> None:
    """ray.init would wait for minutes on an address nobody answers: one line, before anything starts."""
    address = f"127.0.0.1:{closed_port()}"
    status, lines, err = run_cli(
        ["search", env.write(env.spec()), "--quiet", "--ray-address", address], capsys
    )
    assert_one_line(status, lines, err, ["--ray-address", address, "unreachable", "a running Ray cluster"])
    assert_nothing_launched(env)


@pytest.mark.parametrize(
    "flag, value, needles",
    [
        ("--tracking-uri", "ftp://host/x", ["--tracking-uri", "'ftp://host/x'", "an MLflow tracking URI"]),
        ("--storage", "nfs://host/x", ["--storage", "'nfs://host/x'", "a directory or a URI with scheme"]),
    ],
)
def test_command_line_overrides_are_checked_as_the_spec_is(
    flag: str, value: str, needles: list[str], env: Env, capsys: pytest.CaptureFixture
) -> None:
    status, lines, err = run_cli(["search", env.write(env.spec()), "--quiet", flag, value], capsys)
    assert_one_line(status, lines, err, needles)
    assert_nothing_launched(env)


def test_a_port_that_answers_but_is_not_mlflow(env: Env, capsys: pytest.CaptureFixture) -> None:
    """Some other HTTP server holds the port: refused before launch, not after every MLflow call fails."""
    import http.server
    import threading

    class Quiet(http.server.BaseHTTPRequestHandler):  # answers 501 to everything, logs nothing
        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        uri = f"http://127.0.0.1:{server.server_address[1]}"
        status, lines, err = run_cli(
            ["search", env.write(_set(env.spec(), "tracking.uri", uri)), "--quiet"], capsys
        )
    finally:
        server.shutdown()
    assert_one_line(status, lines, err, ["tracking.uri", uri, "answers but is not an MLflow tracking server"])
    assert_nothing_launched(env)


def test_spec_file_name_over_the_file_system_limit(env: Env, capsys: pytest.CaptureFixture) -> None:
    status, lines, err = run_cli(["search", str(env.root / ("y" * 300 + ".yaml"))], capsys)
    assert_one_line(status, lines, err, ["spec", "yyyy", "does not exist"])
    assert_nothing_launched(env)


def test_spec_file_missing(env: Env, capsys: pytest.CaptureFixture) -> None:
    missing = str(env.root / "nope.yaml")
    status, lines, err = run_cli(["search", missing], capsys)
    assert_one_line(status, lines, err, ["spec", "nope.yaml", "does not exist"])
    assert_nothing_launched(env)


def test_bad_fault_injection_variable(
    env: Env, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MCEL_FAULT_INJECT", "explode:epoch=2")
    status, lines, err = run_cli(["search", env.write(env.spec()), "--quiet"], capsys)
    assert_one_line(status, lines, err, ["MCEL_FAULT_INJECT", "'explode:epoch=2'", "raise_once, enospc"])
    assert_nothing_launched(env)


def test_debug_shows_the_traceback(env: Env, capsys: pytest.CaptureFixture) -> None:
    path = env.write(_set(env.spec(), "space.margin", -1.0))
    status = cli.main(["--debug", "search", path])
    err = capsys.readouterr().err
    assert status == cli.EXIT_BAD_INPUT
    assert "Traceback (most recent call last)" in err and "SpecError" in err
    assert err.strip().splitlines()[-1].startswith("mcel: error: space.margin: -1.0")
    assert_nothing_launched(env)


@pytest.mark.parametrize(
    "case, needles",
    [
        ("negative-margin", ["space.margin", "-1.0", "margin must be >= 0"]),
        ("tracking-server-unreachable", ["tracking.uri", "http://127.0.0.1:", "unreachable"]),
    ],
)
def test_subprocess_exit_status_2_and_no_traceback(case: str, needles: list[str], env: Env) -> None:
    make = dict((c[0], c[1]) for c in SPEC_CASES)[case]
    path = env.write(make(env.spec(), env))
    proc = subprocess.run(
        [sys.executable, "-m", "mcel_search.search.cli", "search", path, "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert_one_line(proc.returncode, lines, proc.stderr, needles)
    assert_nothing_launched(env)


# ------------------------------------------------------------------------------------------ checkpoints


def _checkpoint(path: Path, arch: str = "small_cnn", claim: str | None = None) -> Path:
    """A real (untrained) digits checkpoint of ``arch``; ``claim`` names another architecture in it."""
    from mcel_search.core.checkpoint import save_checkpoint
    from mcel_search.core.models import create_model

    meta = {"name": arch, "bits": 4, "num_classes": 10, "in_channels": 1, "image_size": 8, "logit_scale": 1.0}
    model = create_model(meta.pop("name"), **meta)
    save_checkpoint(
        path,
        model,
        {"model": {"name": claim or arch, **meta}, "data": {"name": "digits"}, "loss": {"name": "cel"}},
    )
    return path


class _Exploit:
    """A pickle that runs code when unpickled: it would write a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def _truncated(env: Env) -> Path:
    good = _checkpoint(env.root / "good.pt").read_bytes()
    bad = env.root / "truncated.pt"
    bad.write_bytes(good[: len(good) // 2])
    return bad


def _other_arch(env: Env) -> Path:
    return _checkpoint(env.root / "other.pt", arch="small_cnn", claim="vgg3")


def _code_pickle(env: Env) -> Path:
    path = env.root / "evil.pt"
    torch.save({"format": "mcel-checkpoint", "version": 1, "payload": _Exploit(env.root / "PWNED")}, path)
    return path


def _plain_pickle(env: Env) -> Path:
    path = env.root / "plain.pkl"
    path.write_bytes(pickle.dumps(_Exploit(env.root / "PWNED")))
    return path


def _edited(env: Env, name: str, change: Callable[[dict], None]) -> Path:
    """A real checkpoint whose payload ``change`` edits (the way a hostile file would differ)."""
    path = _checkpoint(env.root / name)
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, path)
    return path


def _huge_dims(payload: dict) -> None:
    payload["model"]["num_classes"] = 10**9  # the loader would build a 10**9-way output layer first


def _int_weights(payload: dict) -> None:
    key = next(k for k, v in payload["state_dict"].items() if v.dtype.is_floating_point)
    payload["state_dict"][key] = payload["state_dict"][key].round().to(torch.int64)


CHECKPOINT_CASES: list[tuple[str, Callable[[Env], Path], list[str]]] = [
    (
        "unknown-keys",
        lambda e: _edited(e, "keys.pt", lambda p: p.update(extra={"x": 1})),
        ["checkpoint", "keys.pt", "unknown keys ['extra']", "allowed:"],
    ),
    (
        "dimensions-that-would-allocate-gigabytes",
        lambda e: _edited(e, "huge.pt", _huge_dims),
        ["checkpoint", "huge.pt", "num_classes=1000000000", "<= 100_000"],
    ),
    (
        "integer-weights",
        lambda e: _edited(e, "ints.pt", _int_weights),
        ["checkpoint", "ints.pt", "torch.int64", "the model holds torch.float32"],
    ),
    ("truncated", _truncated, ["checkpoint", "truncated.pt", "unreadable", "allowed: an mcel-checkpoint"]),
    (
        "other-architecture",
        _other_arch,
        ["checkpoint", "other.pt", "does not fit architecture 'vgg3'", "allowed:"],
    ),
    (
        "torch-file-carrying-code",
        _code_pickle,
        ["checkpoint", "evil.pt", "refused by the safe loader", "allowed:"],
    ),
    ("raw-pickle-carrying-code", _plain_pickle, ["checkpoint", "plain.pkl", "allowed: an mcel-checkpoint"]),
    ("missing", lambda e: e.root / "absent.pt", ["checkpoint", "absent.pt", "does not exist", "allowed:"]),
]


@pytest.mark.parametrize("case, make, needles", CHECKPOINT_CASES, ids=[c[0] for c in CHECKPOINT_CASES])
def test_bad_checkpoint(
    case: str, make: Callable[[Env], Path], needles: list[str], env: Env, capsys: pytest.CaptureFixture
) -> None:
    ckpt = make(env)
    csv = env.root / "out.csv"
    status, lines, err = run_cli(["evaluate", str(ckpt), "--reps", "1", "--csv", str(csv)], capsys)
    assert_one_line(status, lines, err, needles)
    assert not (env.root / "PWNED").exists(), "unpickling ran the checkpoint's code"
    assert not csv.exists()


def test_exploit_fixture_really_runs_code(env: Env) -> None:
    """The control of the code-carrying cases: unpickled unsafely, the payload does write its marker."""
    path = _plain_pickle(env)
    pickle.loads(path.read_bytes())  # deliberately unsafe: proves the payload is live
    assert (env.root / "PWNED").exists()


def test_a_search_without_a_completed_trial_exits_4_with_one_line(
    env: Env, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The search ran, but every trial of a study errored or was pruned: nothing to select, so not exit 0."""
    from mcel_search.search import runner

    study = runner.StudyOutcome(
        study="bad-small_cnn-4b",
        arch="small_cnn",
        bits=4,
        parent_run_id="p",
        trials=[
            {"state": "errored", "error": "training diverged: loss is nan in epoch 1"},
            {"state": "pruned", "error": None},
        ],
    )
    outcome = runner.SearchOutcome(
        experiment_id="1", tracking_uri="sqlite:///x", storage_path="/x", studies=[study]
    )
    monkeypatch.setattr(runner, "run_search", lambda *a, **k: outcome)
    status, lines, err = run_cli(["search", env.write(env.spec()), "--quiet"], capsys)
    assert status == cli.EXIT_NO_RESULT == 4, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in ("no trial completed", "bad-small_cnn-4b (1 errored, 1 pruned)", "loss is nan in epoch 1"):
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("error", ["StorageFaultError", "TrackingUnavailableError"])
def test_search_stopped_by_its_environment_exits_3_with_one_line(
    error: str, env: Env, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not bad input but a full disk or a tracking server down too long: status 3, one line, no traceback."""
    from mcel_search.core.errors import ResumableError
    from mcel_search.search import runner, tracking

    cls = getattr(runner, error, None) or getattr(tracking, error)
    assert issubclass(cls, ResumableError)
    line = "storage: [Errno 28] No space left on device: '/x/model.pt' — ... rerun with --resume"

    def stopped(*args: Any, **kwargs: Any) -> None:
        raise cls(line)

    monkeypatch.setattr(runner, "run_search", stopped)
    status = cli.main(["search", env.write(env.spec()), "--quiet"])
    err = capsys.readouterr().err
    assert status == cli.EXIT_RESUMABLE == 3
    assert err.strip().splitlines() == [f"mcel: error: {line}"]


@pytest.mark.parametrize(
    "exc", [ValueError("operands could not be broadcast"), ZeroDivisionError("division")]
)
def test_an_exception_that_is_not_ours_is_a_bug_not_bad_input(
    exc: Exception, env: Env, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain ValueError (say, from numpy) is no longer read as bad input: exit 1, one line saying bug."""
    from mcel_search.search import runner

    def broken(*args: Any, **kwargs: Any) -> None:
        raise exc

    monkeypatch.setattr(runner, "run_search", broken)
    status = cli.main(["search", env.write(env.spec()), "--quiet"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == cli.EXIT_BUG == 1
    assert len(lines) == 1 and lines[0].startswith("mcel: error: internal error (a bug"), lines
    assert type(exc).__name__ in lines[0] and "--debug" in lines[0]
    assert cli.main(["--debug", "search", env.write(env.spec()), "--quiet"]) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_every_spec_error_is_printed_one_line_each(env: Env, capsys: pytest.CaptureFixture) -> None:
    spec = env.spec()
    spec["train"] = {**spec["train"], "epochs": 0, "lr": -1}
    spec["objective"] = {"target_ber": 2.0}
    spec["bits"] = [3]
    status = cli.main(["search", env.write(spec), "--dry-run"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(lines) == 4 and all(line.startswith("mcel: error: ") for line in lines), lines
    for field in ("bits[0]", "train.epochs", "train.lr", "objective.target_ber"):
        assert sum(field in line for line in lines) == 1, (field, lines)
