"""A full or read-only disk stops the whole search at once, resumably (real faults, not injected ones).

Retrying a trial whose checkpoint write hit ``ENOSPC``/``EDQUOT``/``EROFS`` fails the same way while the disk
is full, and each retry costs a trial its attempts. :class:`StorageFaultGuard`, a Tune callback of the
driver, stops ``Tuner.fit`` at the first such failure; the runner turns that into a one-line
``StorageFaultError`` (exit 3) and ``mcel search --resume`` continues after space is freed.
"""

from __future__ import annotations

import errno
import re
from pathlib import Path
from typing import Any

from ray.tune import Callback

#: errno values that mean "the disk is full or read-only": retrying does not help, resuming later does.
STORAGE_ERRNOS: frozenset[int] = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})

_ERRNO_RE = re.compile(r"\[Errno (?P<errno>\d+)\] (?P<text>[^:\n]+)(?:: (?P<path>'[^'\n]*'|\S+))?")


def storage_fault(text: str) -> str | None:
    """``"[Errno 28] No space left on device: '<path>'"`` if ``text`` (an error, a traceback) shows a storage
    fault (:data:`STORAGE_ERRNOS`), else None."""
    for m in _ERRNO_RE.finditer(text):
        if int(m.group("errno")) in STORAGE_ERRNOS:
            return m.group(0)
    return None


def _trial_error_text(trial: Any) -> str:
    path = getattr(trial, "error_file", None)
    try:
        if path and Path(path).exists():
            return Path(path).read_text()
    except OSError:
        pass
    return str(getattr(trial, "error_msg", "") or "")


class StorageFaultStop(Exception):
    """Raised from a Tune callback to stop ``Tuner.fit`` at once (like a killed driver: resumable)."""


class StorageFaultGuard(Callback):
    """Tune callback: the first trial failure caused by a full or read-only disk stops the whole search.

    Called on ``on_trial_recover`` (a failure Tune would retry) and ``on_trial_error`` (the last one), it
    records the fault (``self.fault``: errno text and path, ``self.trial``) and raises, which ends
    ``Tuner.fit`` the way a killed driver does: the experiment state stays resumable.
    """

    def __init__(self) -> None:
        self.fault: str | None = None
        self.trial: str | None = None

    def _check(self, trial: Any) -> None:
        fault = storage_fault(_trial_error_text(trial))
        if fault is not None:
            self.fault, self.trial = fault, str(trial)
            raise StorageFaultStop(fault, self.trial)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._check(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._check(trial)
