"""The seal on a search's Tune state: a resume unpickles only what this user's driver wrote."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mcel_search.search import state_seal


@pytest.fixture()
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MCEL_CONFIG_DIR", str(tmp_path / "home"))
    monkeypatch.delenv(state_seal.TRUST_ENV, raising=False)
    d = tmp_path / "ray" / "study"
    d.mkdir(parents=True)
    (d / "tuner.pkl").write_bytes(b"tuner state")
    (d / "experiment_state-1.json").write_text("{}")
    (d / "trial_000").mkdir()  # trial folders are not state files
    return d


def test_sealed_state_verifies(run_dir: Path, tmp_path: Path) -> None:
    state_seal.seal(run_dir)
    state_seal.verify(run_dir)
    key = tmp_path / "home" / "restore.key"
    assert key.is_file() and oct(key.stat().st_mode & 0o777) == "0o600" and len(key.read_bytes()) == 32
    assert not any(p.suffix == ".json" and "seal" in p.name for p in run_dir.iterdir())  # kept outside


def test_a_changed_tuner_pkl_refuses_the_resume(run_dir: Path) -> None:
    state_seal.seal(run_dir)
    (run_dir / "tuner.pkl").write_bytes(b"planted code")
    with pytest.raises(state_seal.UnsealedStateError) as info:
        state_seal.verify(run_dir)
    assert "tuner.pkl" in str(info.value) and "MCEL_TRUST_STORAGE=1" in str(info.value)
    assert len(str(info.value).splitlines()) == 1
    assert (run_dir / "tuner.pkl").read_bytes() == b"planted code"  # nothing was unpickled or replaced


@pytest.mark.parametrize(
    "tamper",
    [
        lambda d: (d / "searcher-state-2.pkl").write_bytes(b"newer, unsealed"),
        lambda d: (d / "experiment_state-1.json").unlink(),
        lambda d: (d / "experiment_state-1.json").write_text('{"planted": 1}'),
    ],
    ids=["added", "removed", "changed"],
)
def test_unsealed_snapshot_files_give_way_to_the_sealed_ones(run_dir: Path, tamper) -> None:
    """A driver killed after Tune wrote a snapshot but before the seal (or files planted there): the
    resume goes on from the last sealed snapshot, whose copies are kept outside the storage path."""
    state_seal.seal(run_dir)
    sealed = state_seal.state_files(run_dir)
    tamper(run_dir)
    state_seal.verify(run_dir)
    assert state_seal.state_files(run_dir) == sealed
    assert (run_dir / "experiment_state-1.json").read_text() == "{}"


def test_a_sealed_copy_that_changed_refuses_the_resume(run_dir: Path) -> None:
    state_seal.seal(run_dir)
    (run_dir / "experiment_state-1.json").write_text('{"planted": 1}')
    (state_seal._copies(run_dir) / "experiment_state-1.json").write_text('{"also": 1}')
    with pytest.raises(state_seal.UnsealedStateError, match="experiment_state-1.json"):
        state_seal.verify(run_dir)


def test_a_forged_seal_does_not_pass(run_dir: Path, tmp_path: Path) -> None:
    """Whoever can write the storage (not the key) cannot make a seal that verifies."""
    (run_dir / "tuner.pkl").write_bytes(b"planted code")
    seal_file = state_seal._seal_path(run_dir)
    seal_file.parent.mkdir(parents=True)
    files = state_seal.state_files(run_dir)
    seal_file.write_text(f'{{"files": {files!r}, "mac": "{"0" * 64}"}}'.replace("'", '"'))
    with pytest.raises(state_seal.UnsealedStateError, match="changed since"):
        state_seal.verify(run_dir)


def test_no_seal_is_refused_unless_the_storage_is_trusted(run_dir: Path, monkeypatch) -> None:
    with pytest.raises(state_seal.UnsealedStateError, match="no seal"):
        state_seal.verify(run_dir)
    monkeypatch.setenv(state_seal.TRUST_ENV, "1")
    state_seal.verify(run_dir)
    assert os.environ[state_seal.TRUST_ENV] == "1"


def test_the_callback_reseals_when_tune_writes(run_dir: Path) -> None:
    cb = state_seal.SealCallback(str(run_dir))
    cb.on_step_end(iteration=1, trials=[])
    (run_dir / "experiment_state-2.json").write_text('{"new": 1}')  # Tune's next snapshot
    cb.on_step_end(iteration=2, trials=[])
    state_seal.verify(run_dir)
