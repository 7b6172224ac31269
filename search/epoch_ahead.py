"""Train a trial's next epoch while its last epoch's report is in flight.

A function trainable's ``tune.report`` blocks until the driver has taken the result, run its callbacks
(the MLflow logger's queue, the pruner's decision) and asked for the next one: ~25-35 ms per report on
the 2-core VM of 2026-12-02, plus the copy of a reported checkpoint into the trial's storage. A trial that
waits for it idles its CPU (or GPU) every epoch. :class:`EpochAhead` starts epoch ``k + 1`` in a thread
just before epoch ``k``'s report and hands its :class:`~mcel_search.core.training.EpochStats` over once the
report has returned, so the compute waits only when a report takes longer than an epoch.

What the overlap may touch, and why the results are bit for bit those of a trial without it:

* Everything epoch ``k`` reports is computed and written first: its metrics (plain numbers), its
  checkpoint files (``trainer.pt``, ``model.pt``, written before the thread starts). The report then only
  reads those; the thread only trains (model, optimizer, scheduler, ``Trainer.history``).
* Nothing else runs in the trial meanwhile: evaluation of epoch ``k + 1`` starts after :meth:`result`,
  so the torch generators and the model are used by one thread at a time, in the sequential order.
* The trainer's state reads as the epoch ahead leaves it as soon as that epoch ends, which can be before
  the report returns: the caller decides what comes next from whether an epoch ahead is pending, never
  from ``trainer.epoch`` alone (the last epoch, trained ahead, must still be taken and reported final).
* The thread trains with the torch thread count and, on a GPU, the current CUDA device of the thread
  that created the :class:`EpochAhead`, set again for every epoch (both are per-thread settings: the
  process's epoch thread, long-lived, would otherwise keep a previous epoch's, and a new thread takes the
  process default and device 0).

When the report does not return (Ray Tune stops a trial by raising ``SystemExit`` in ``tune.report``:
pruned, finished, the search ending), :meth:`cancel` asks the epoch to stop before its next step and
waits for it to end, so a stopped trial costs at most one training step more, and a reused actor's next
trial never shares the CPU with the previous trial's epoch (the epoch thread then idles, blocked on its
queue, until that trial's first epoch ahead). An exception of the epoch itself (a fault injected,
:class:`~mcel_search.core.training.TrainingDivergedError`) is raised by :meth:`result`, in the trial's
thread, where it would have been raised without the overlap.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

import torch

from ..core.training import EpochStats, Trainer

THREAD_NAME = "mcel-epoch-ahead"


class _EpochThread:
    """One daemon thread that runs the epochs handed to it, one at a time, and idles in between.

    Why not a new thread per epoch: in a Ray Tune trial worker, where the report runs beside the epoch,
    an epoch trained in a fresh thread took ~440 minor page faults and ~6 ms of system time that the same
    epoch in a long-lived thread did not (2026-12-03, ``benchmarks/MEASUREMENTS.md``, "the epoch ahead's
    thread"). The process keeps one such thread (:func:`_claim`); a second epoch ahead while it is busy
    (two trials training in one process) gets a thread of its own for that epoch.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.busy = False  # claimed by an epoch that has not ended yet (guarded by _LOCK)
        self.thread = threading.Thread(target=self._loop, name=THREAD_NAME, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            self._jobs.get()()  # a job never raises: EpochAhead._run keeps its exception

    def submit(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)


_LOCK = threading.Lock()
_SHARED: _EpochThread | None = None  # a forked child finds its thread not alive and starts its own
_RUNNING = 0  # epochs ahead started and not yet ended, in this process (guarded by _LOCK)


def _claim() -> _EpochThread | None:
    """The process's epoch thread, marked busy; None when another epoch holds it."""
    global _SHARED
    with _LOCK:
        if _SHARED is None or not _SHARED.thread.is_alive():
            _SHARED = _EpochThread()
        if _SHARED.busy:
            return None
        _SHARED.busy = True
        return _SHARED


def running_epochs() -> int:
    """How many epochs ahead are training in this process now (0 once every one has been joined)."""
    with _LOCK:
        return _RUNNING


class EpochAhead:
    """The next epoch of ``trainer``, running in a daemon thread from construction until :meth:`result`
    or :meth:`cancel`; ``before_epoch(k)`` runs first in the same thread (the fault-injection hook
    the trial calls before every epoch). The thread is the process's long-lived epoch thread
    (:class:`_EpochThread`), or a thread of its own when that one is busy with another epoch."""

    def __init__(self, trainer: Trainer, before_epoch: Callable[[int], None]) -> None:
        self._trainer = trainer
        self._before = before_epoch
        self._threads = torch.get_num_threads()
        # the current CUDA device is per thread too (a new one starts on device 0): the creator's, for
        # anything in the epoch that allocates on "cuda" without an index
        dev = trainer.device
        self._cuda: int | None = None
        if dev.type == "cuda":
            self._cuda = dev.index if dev.index is not None else torch.cuda.current_device()
        self._stop = threading.Event()
        self._stats: EpochStats | None = None
        self._error: BaseException | None = None
        self.done_at: float | None = None  # time.perf_counter() when the epoch ended (or raised)
        self._done = threading.Event()
        global _RUNNING
        with _LOCK:
            _RUNNING += 1
        self._shared = _claim()
        if self._shared is not None:
            self._shared.submit(self._run)
        else:
            threading.Thread(target=self._run, name=THREAD_NAME, daemon=True).start()

    def _run(self) -> None:
        global _RUNNING
        try:
            torch.set_num_threads(self._threads)
            if self._cuda is not None:
                torch.cuda.set_device(self._cuda)
            self._before(self._trainer.epoch + 1)
            self._stats = self._trainer.train_epoch(should_stop=self._stop.is_set)
        except BaseException as exc:  # handed to the trial's thread by result()
            self._error = exc
        finally:
            self.done_at = time.perf_counter()
            with _LOCK:  # free before done: the trial's next epoch ahead, started after result(), finds it so
                _RUNNING -= 1
                if self._shared is not None:
                    self._shared.busy = False
            self._done.set()

    def idle_until(self, now: float) -> float:
        """Seconds before ``now`` that the compute sat idle: ``now - done_at`` when the epoch had ended
        by then (the report took longer than the epoch), else 0."""
        done = self.done_at
        return 0.0 if done is None else max(0.0, now - done)

    def result(self) -> EpochStats:
        """Wait for the epoch; its stats, or the exception it raised."""
        self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._stats is not None
        return self._stats

    def cancel(self) -> None:
        """Stop the epoch before its next step and wait for it to end; whatever it raised is dropped
        (the trial is ending for another reason, which the caller re-raises)."""
        self._stop.set()
        self._done.wait()

    def alive(self) -> bool:
        """Whether the epoch still runs."""
        return not self._done.is_set()
