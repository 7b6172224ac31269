"""Fault injection for reliability tests: real product code, inert unless ``MCEL_FAULT_INJECT`` is set.

``MCEL_FAULT_INJECT`` holds one or more faults separated by ``;``, each ``<kind>:epoch=<k>``:

* ``raise_once:epoch=3`` — the trial raises :class:`InjectedFault` at the start of epoch 3, on its first
  attempt only (a marker file ``.mcel-fault-raise_once-epoch3`` in the trial directory remembers that it
  fired), so Ray Tune's retry (``failure.max_retries``) resumes it from its last checkpoint (epoch 2);
* ``enospc:epoch=2`` — every attempt's checkpoint write of epoch 2 fails the way a full disk fails: bytes
  reach a temporary file through :func:`mcel_search.core.atomic.atomic_write`, then ``OSError(ENOSPC)`` is raised
  (the temporary file is removed, no checkpoint is left half-written). It keeps failing while the variable
  is set, as a full disk would; the driver stops the search (see ``search.runner``) and a later
  ``mcel search --resume`` without the variable finishes it.

Handling real storage faults (not injected ones) is product code of its own:
:mod:`mcel_search.search.storage_guard`.

The variable is read in the trial process. A local Ray instance started by ``mcel search`` inherits the
driver's environment, and ``search.runner`` also passes the variable to Ray workers through
``runtime_env``. An unparsable value is refused before anything starts (``search.runner.preflight``).
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import BadInputError

#: The environment variable holding the faults to inject (unset or empty: none).
FAULT_ENV = "MCEL_FAULT_INJECT"
#: Kinds of faults.
FAULT_KINDS: tuple[str, ...] = ("raise_once", "enospc")


_FAULT_RE = re.compile(r"(?P<kind>[a-z_]+):epoch=(?P<epoch>[0-9]+)")


class InjectedFault(RuntimeError):
    """The error a ``raise_once`` fault raises in a trial."""


@dataclass(frozen=True)
class Fault:
    """One injected fault: ``kind`` at epoch ``epoch`` (1-based)."""

    kind: str  # one of FAULT_KINDS
    epoch: int  # the epoch it fires at, >= 1


def parse_faults(text: str | None) -> list[Fault]:
    """The faults of a ``MCEL_FAULT_INJECT`` value; a ValueError names the bad part and the allowed form."""
    faults = []
    for part in (text or "").split(";"):
        part = part.strip()
        if not part:
            continue
        m = _FAULT_RE.fullmatch(part)
        if not m or m.group("kind") not in FAULT_KINDS or int(m.group("epoch")) < 1:
            raise BadInputError(
                f"{FAULT_ENV}: {part!r} — <kind>:epoch=<k> with kind one of {', '.join(FAULT_KINDS)} and k >= 1"
            )
        faults.append(Fault(m.group("kind"), int(m.group("epoch"))))
    return faults


def active_faults() -> list[Fault]:
    """The faults set in the environment (none when ``MCEL_FAULT_INJECT`` is unset)."""
    return parse_faults(os.environ.get(FAULT_ENV))


def before_epoch(epoch: int, trial_dir: str | os.PathLike | None) -> None:
    """Called by the trial before it trains ``epoch``; raises :class:`InjectedFault` for a ``raise_once``
    fault of that epoch on the trial's first attempt."""
    for fault in active_faults():
        if fault.kind != "raise_once" or fault.epoch != epoch or trial_dir is None:
            continue
        marker = Path(trial_dir) / f".mcel-fault-raise_once-epoch{epoch}"
        if marker.exists():
            continue
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("fired\n")
        raise InjectedFault(
            f"injected fault ({FAULT_ENV}=raise_once:epoch={epoch}) at the start of epoch {epoch}"
        )


def checkpoint_write_fails(epoch: int) -> bool:
    """Whether an ``enospc`` fault makes the checkpoint write of ``epoch`` fail."""
    return any(f.kind == "enospc" and f.epoch == epoch for f in active_faults())


def fail_write_enospc(path: str | os.PathLike) -> None:
    """Write to ``path`` through :func:`core.atomic.atomic_write` and fail half-way with ENOSPC, as a full
    disk does: the temporary file is removed and ``path`` is not created."""
    from ..core.atomic import atomic_write

    with atomic_write(path, "wb") as fh:
        fh.write(b"\0" * 4096)  # part of the checkpoint reached the disk ...
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))  # ... then it was full
