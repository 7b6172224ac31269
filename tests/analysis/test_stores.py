"""Read-only commands open a tracking store without creating one, and give up on a dead server quickly."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mcel_search.analysis.stores import StoreUnavailableError, local_store_path, open_store

MCEL = [sys.executable, "-m", "mcel_search.search.cli"]
READ_ONLY = (
    ["pareto", "quickstart"],
    ["best", "quickstart"],
    ["report", "quickstart", "--out", "report"],
    ["evaluate", "runs:/0123456789abcdef/checkpoint/model.pt"],
)


def _run(argv: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run(
        [*MCEL, *argv], cwd=cwd, env={**clean, **env}, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("argv", READ_ONLY, ids=lambda a: a[0])
def test_read_only_commands_create_no_store(argv: list[str], tmp_path: Path) -> None:
    """In a directory without ``mlflow.db`` (the default store), each command says so in one line, exit 2,
    and leaves the directory as it was: no ``mlflow.db``, no ``mlruns/``, no report, no temporary files."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    proc = _run(argv, tmp_path, TMPDIR=str(scratch))
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert "no MLflow store there" in lines[0] and "mlflow.db" in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp"] and not list(scratch.iterdir())


@pytest.mark.parametrize("argv", READ_ONLY[:2], ids=lambda a: a[0])
def test_a_closed_port_fails_within_seconds_in_one_line(argv: list[str], tmp_path: Path, unused_port) -> None:
    start = time.monotonic()
    proc = _run([*argv, "--tracking-uri", f"http://alice:pw@127.0.0.1:{unused_port()}"], tmp_path)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "unreachable" in lines[0], proc.stderr[-2000:]
    assert "pw" not in proc.stderr and time.monotonic() - start < 30  # the interpreter's start included
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_open_store_never_creates_a_local_store(tmp_path: Path) -> None:
    for uri in (f"sqlite:///{tmp_path}/m.db", f"file://{tmp_path}/mlruns", str(tmp_path / "plain")):
        with pytest.raises(StoreUnavailableError, match="no MLflow store there"):
            open_store(uri)
    assert list(tmp_path.iterdir()) == []
    assert local_store_path("sqlite:////abs/m.db") == Path("/abs/m.db")
    assert local_store_path("file:///abs/mlruns") == Path("/abs/mlruns")
    assert local_store_path("http://host:5000") is None
