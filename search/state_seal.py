"""A resumed search runs no code that someone else put in its storage path.

``Tuner.restore`` unpickles what Ray Tune left in the experiment directory (``tuner.pkl``, the experiment
state, the searcher's state): anyone who can write there (a shared folder, a bucket) could make a resume run
code on the driver. So the driver that writes those files seals them: an HMAC-SHA256, under a key that only
this user can read (``~/.config/mcel-search/restore.key``, created on first use, mode 0600), of each file's
SHA-256, kept outside the storage path (``~/.config/mcel-search/seals/``) with a copy of each sealed file.
The seal is renewed after every step of Tune's loop in which the files changed (:class:`SealCallback`) and
when the run ends. Before a resume, :func:`verify` recomputes it. Tune's snapshot files that differ from
the seal (added, removed, changed: a driver killed between Tune's write and the seal, which Tune's
asynchronous copy to the storage path makes a real window, or files planted there) are replaced by the
sealed copies, so the resume goes on from the last sealed snapshot; a changed ``tuner.pkl`` (Tune writes
it once, at creation, and the driver seals it then) refuses the resume in one line.

Trust boundary: the machine and user that ran the search (their home directory) are trusted; the storage
path is not. A search resumed elsewhere is refused unless ``MCEL_TRUST_STORAGE=1`` says the storage path
is trusted. Remote storage
(``s3://``, ``gs://``) is not sealed here: there the bucket's permissions are the boundary.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from ray.tune import Callback

from ..core.atomic import atomic_write
from ..core.errors import BadInputError

logger = logging.getLogger(__name__)

#: Set to 1 to resume from a storage path whose state has no valid seal (you trust everything in it).
TRUST_ENV = "MCEL_TRUST_STORAGE"


class UnsealedStateError(BadInputError):
    """The experiment state to restore is not the state this user's driver wrote."""


def _home() -> Path:
    return Path(os.environ.get("MCEL_CONFIG_DIR", Path.home() / ".config" / "mcel-search")).expanduser()


def _key() -> bytes:
    path = _home() / "restore.key"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with atomic_write(path, "wb") as fh:  # mkstemp: mode 0600
            fh.write(secrets.token_bytes(32))
    return path.read_bytes()


def _seal_path(experiment_dir: Path) -> Path:
    name = hashlib.sha256(str(experiment_dir.resolve()).encode()).hexdigest()[:32]
    return _home() / "seals" / f"{name}.json"


def _state_paths(experiment_dir: Path) -> list[Path]:
    """What ``Tuner.restore`` deserializes: the directory's own ``.pkl`` and ``.json`` files (trial
    checkpoints load with ``weights_only=True`` and need no seal), sorted."""
    return sorted(p for p in experiment_dir.iterdir() if p.suffix in (".pkl", ".json") and p.is_file())


def state_files(experiment_dir: Path) -> dict[str, str]:
    """``{file name: sha256}`` of the state files (:func:`_state_paths`)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in _state_paths(experiment_dir)}


def _mac(experiment_dir: Path, files: dict[str, str]) -> str:
    message = json.dumps({"dir": str(experiment_dir.resolve()), "files": files}, sort_keys=True).encode()
    return hmac.new(_key(), message, hashlib.sha256).hexdigest()


def _copies(experiment_dir: Path) -> Path:
    """Where the sealed state files are kept (outside the storage path, beside the seal)."""
    return _seal_path(experiment_dir).with_suffix("")


def seal(experiment_dir: str | os.PathLike) -> None:
    """Record the current state files of a local experiment directory, and keep a copy of each (nothing
    for a remote one): a resume after a driver killed before its last snapshot was sealed goes on from
    these copies."""
    directory = Path(experiment_dir)
    if "://" in str(experiment_dir) or not directory.is_dir():
        return
    copies = _copies(directory)
    copies.mkdir(parents=True, exist_ok=True)
    files = {}
    for path in _state_paths(directory):
        data = path.read_bytes()
        files[path.name] = hashlib.sha256(data).hexdigest()
        with atomic_write(copies / path.name, "wb", durable=False) as fh:
            fh.write(data)
    for stale in copies.iterdir():
        if stale.name not in files:
            stale.unlink()
    record = {"dir": str(directory.resolve()), "files": files, "mac": _mac(directory, files)}
    with atomic_write(_seal_path(directory), "w") as fh:
        fh.write(json.dumps(record))


def _restore_sealed_snapshot(directory: Path, sealed: dict[str, str]) -> bool:
    """Put the sealed copies of Tune's snapshot files back (and remove unsealed ones); False when a copy
    is missing or does not match its seal. ``tuner.pkl`` is never replaced: Tune writes it once, when
    the run is created, and the driver seals it right then."""
    copies = _copies(directory)
    blobs = {}
    for name, digest in sealed.items():
        copy = copies / name
        if not copy.is_file() or hashlib.sha256(copy.read_bytes()).hexdigest() != digest:
            return False
        blobs[name] = copy.read_bytes()
    for path in _state_paths(directory):
        if path.name not in sealed:
            path.unlink()
    for name, data in blobs.items():
        with atomic_write(directory / name, "wb") as fh:
            fh.write(data)
    return True


def verify(experiment_dir: str | os.PathLike) -> None:
    """Raise :class:`UnsealedStateError` (one line) unless the state files are the sealed ones."""
    directory = Path(experiment_dir)
    if "://" in str(experiment_dir) or os.environ.get(TRUST_ENV) == "1":
        return
    allowed = (
        f"resume on the machine and as the user that ran it, or set {TRUST_ENV}=1 if you trust everything "
        "under the storage path"
    )
    path = _seal_path(directory)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        raise UnsealedStateError(
            f"storage.path: {str(directory)!r} — this search's state was not written by this user's driver "
            f"(no seal in {str(path.parent)!r}); allowed: {allowed}"
        ) from None
    files = state_files(directory)
    if hmac.compare_digest(record.get("mac", ""), _mac(directory, files)):
        return
    sealed = record.get("files", {})
    changed = sorted(n for n in set(files) | set(sealed) if files.get(n) != sealed.get(n))
    # A driver killed after Tune wrote a snapshot but before it was sealed leaves newer snapshot files:
    # go on from the last sealed snapshot (as if killed a moment earlier). A changed tuner.pkl, or a
    # seal that is not this key's, is refused.
    genuine = hmac.compare_digest(record.get("mac", ""), _mac(directory, sealed))
    if genuine and "tuner.pkl" not in changed and _restore_sealed_snapshot(directory, sealed):
        logger.warning(
            "%s: Tune's state files %s are not the last sealed ones (a driver killed before it could seal "
            "them, or files written by someone else): resuming from the last sealed snapshot",
            directory,
            ", ".join(changed[:5]),
        )
        return
    raise UnsealedStateError(
        f"storage.path: {str(directory)!r} — the state Ray Tune would unpickle changed since this "
        f"user's driver wrote it ({', '.join(changed[:5]) or 'the seal'}); allowed: {allowed}"
    )


class SealCallback(Callback):
    """Tune callback of the driver: re-seals the experiment state after each step of Tune's loop in which
    a state file changed (a stat of a few files per step), and at the end of the run. Tune writes its state
    in the step itself, right before the callbacks' ``on_step_end``."""

    def __init__(self, experiment_dir: str) -> None:
        self.experiment_dir = experiment_dir
        self._stamp: Any = None

    def _stamp_now(self) -> list[tuple[str, int, int]]:
        stats = [(p.name, p.stat()) for p in _state_paths(Path(self.experiment_dir))]
        return [(name, st.st_mtime_ns, st.st_size) for name, st in stats]

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if "://" in self.experiment_dir:
            return
        stamp = self._stamp_now()
        if stamp != self._stamp:
            seal(self.experiment_dir)
            self._stamp = stamp

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        seal(self.experiment_dir)
