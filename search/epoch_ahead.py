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
* The thread trains with the torch thread count and, on a GPU, the current CUDA device of the thread
  that created it (both are per-thread settings; a new thread would otherwise take the process default
  and device 0).

When the report does not return (Ray Tune stops a trial by raising ``SystemExit`` in ``tune.report``:
pruned, finished, the search ending), :meth:`cancel` asks the epoch to stop before its next step and
joins the thread, so a stopped trial costs at most one training step more, and a reused actor's next trial
never shares the CPU with the previous trial's epoch. An exception of the epoch itself (a fault injected,
:class:`~mcel_search.core.training.TrainingDivergedError`) is raised by :meth:`result`, in the trial's
thread, where it would have been raised without the overlap.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import torch

from ..core.training import EpochStats, Trainer


class EpochAhead:
    """The next epoch of ``trainer``, running in a daemon thread from construction until :meth:`result`
    or :meth:`cancel`; ``before_epoch(k)`` runs first in the same thread (the fault-injection hook
    the trial calls before every epoch)."""

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
        self._thread = threading.Thread(target=self._run, name="mcel-epoch-ahead", daemon=True)
        self._thread.start()

    def _run(self) -> None:
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

    def idle_until(self, now: float) -> float:
        """Seconds before ``now`` that the compute sat idle: ``now - done_at`` when the epoch had ended
        by then (the report took longer than the epoch), else 0."""
        done = self.done_at
        return 0.0 if done is None else max(0.0, now - done)

    def result(self) -> EpochStats:
        """Wait for the epoch; its stats, or the exception it raised."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._stats is not None
        return self._stats

    def cancel(self) -> None:
        """Stop the epoch before its next step and wait for the thread; whatever it raised is dropped
        (the trial is ending for another reason, which the caller re-raises)."""
        self._stop.set()
        self._thread.join()

    def alive(self) -> bool:
        """Whether the thread still runs."""
        return self._thread.is_alive()
