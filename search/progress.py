"""A compact live view of a running search, in place of Ray Tune's status block.

One :class:`SearchProgress` (a Ray Tune ``Callback``) per Tune run (a study, with its CEL baseline as one
more trial, labelled ``baseline``; or a baseline run of its own, as searches before 2026-12-02 had). On a
terminal it draws with tqdm: one line for the study (trials done of all, pruned, errored, running, the best
``ber_acc`` so far, the ETA) and one line per running trial (its number and parameters, epoch k of n with
tqdm's own rate, the last ``clean_acc`` and ``ber_acc``), redrawn in place; a trial that ends leaves one
summary line above the bars::

    #3 mcel m=8 b=16 s=1: done after 10 epochs, clean 97.50%, ber@1% 94.80%
    #5 mcel m=1 b=4 s=1: pruned at epoch 3, clean 88.06%
    quickstart-small_cnn-4b  5/12 done (1 pruned) · 2 running · best ber@1% 94.80% (#3) · ETA 0:01:20
      #6 mcel m=2 b=8 s=1   4/10 [00:02<00:03, 1.9 epoch/s, clean 96.4%, ber 93.1%]

Anywhere else (a log file, CI, ``nohup``) nothing is redrawn: a line when a trial starts and when it ends,
and the study line every ``log_every_s`` seconds, so a log holds the same facts without control characters.

ETA: ``mean seconds per epoch`` (over every epoch reported so far, all trials) times the epochs still to run
(the running trials' rest plus ``epochs`` per trial not started; pruning can only shorten it) divided by the
trials that run at once. Accuracies are shown in percent, as everywhere a person reads them; the metrics
stay fractions.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any

from ray.tune import Callback

from .searcher import NUMBER_KEY, is_baseline


def trial_label(config: dict[str, Any]) -> str:
    """``#3 mcel m=8 b=16 s=1`` from a trial's config (number, loss and its parameters, logit scale)."""
    number = config.get(NUMBER_KEY)
    parts = [f"#{number}" if number is not None else "baseline", str(config.get("loss", "?"))]
    for key, short in (("margin", "m"), ("b", "b"), ("mhl_margin", "M"), ("logit_scale", "s")):
        if key in config and config[key] is not None:
            parts.append(f"{short}={float(config[key]):g}")
    return " ".join(parts)


def _pct(value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "-"
    return f"{100 * v:.2f}%" if math.isfinite(v) else "-"


def _clock(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


@dataclass
class _Trial:
    label: str
    started: float
    epoch: int = 0
    clean: float = math.nan
    ber: float = math.nan
    bar: Any = None
    position: int = 0
    baseline: bool = False  # the study's CEL baseline: shown, never the "best"


@dataclass
class SearchProgress(Callback):
    """The live view of one Tune run (module docstring)."""

    study: str
    total: int  # trials of this run
    epochs: int  # per trial
    concurrency: int
    target_ber: float
    stream: IO[str] | None = None  # default: sys.stderr
    live: bool | None = None  # None: when the stream is a terminal
    log_every_s: float = 60.0
    _running: dict[str, _Trial] = field(default_factory=dict)
    _done: int = 0
    _pruned: int = 0
    _errored: int = 0
    _best: tuple[float, str] | None = None
    _epoch_seconds: list[float] = field(default_factory=list)
    _bar: Any = None
    _last_log: float = 0.0

    def __post_init__(self) -> None:
        self.stream = self.stream or sys.stderr
        if self.live is None:
            self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self._ber = f"ber@{100 * self.target_ber:g}%"

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its callbacks with the experiment state: no stream, no bars (a restored search
        draws on the stderr of the driver that resumes it)."""
        state = self.__dict__.copy()
        state["stream"], state["_bar"] = None, None
        state["_running"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.stream = sys.stderr
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())

    def _free_position(self) -> int:
        """The lowest bar line (1, 2, ...) no running trial holds."""
        taken = {t.position for t in self._running.values()}
        return next(p for p in range(1, len(taken) + 2) if p not in taken)

    # ------------------------------------------------------------------------------------- drawing

    def _write(self, line: str) -> None:
        if self.live:
            from tqdm.auto import tqdm

            tqdm.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def eta_seconds(self) -> float | None:
        """Seconds left by the module docstring's formula; None before any epoch was reported."""
        if not self._epoch_seconds:
            return None
        per_epoch = sum(self._epoch_seconds) / len(self._epoch_seconds)
        started = self._done + len(self._running)
        left = sum(max(self.epochs - t.epoch, 0) for t in self._running.values())
        left += max(self.total - started, 0) * self.epochs
        return per_epoch * left / max(1, min(self.concurrency, self.total))

    def status_line(self) -> str:
        """The study line (module docstring)."""
        parts = [f"{self._done}/{self.total} done"]
        extra = [f"{n} {w}" for n, w in ((self._pruned, "pruned"), (self._errored, "errored")) if n]
        if extra:
            parts[0] += f" ({', '.join(extra)})"
        parts.append(f"{len(self._running)} running")
        if self._best is not None:
            parts.append(f"best {self._ber} {_pct(self._best[0])} ({self._best[1].split()[0]})")
        eta = self.eta_seconds()
        parts.append(f"ETA {_clock(eta)}" if eta is not None else "ETA -")
        return f"{self.study}  " + " · ".join(parts)

    def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.live:
            from tqdm.auto import tqdm

            if self._bar is None:
                self._bar = tqdm(
                    total=self.total, file=self.stream, position=0, leave=True, bar_format="{desc}"
                )
            self._bar.set_description_str(self.status_line(), refresh=True)
        elif force or now - self._last_log >= self.log_every_s:
            self._last_log = now
            print(self.status_line(), file=self.stream, flush=True)

    # ---------------------------------------------------------------------------- Tune callbacks

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        key = trial.trial_id
        if key in self._running:
            return
        t = _Trial(
            trial_label(trial.config),
            time.monotonic(),
            position=self._free_position(),
            baseline=is_baseline(trial.config),
        )
        if self.live:
            from tqdm.auto import tqdm

            t.bar = tqdm(
                total=self.epochs,
                desc=f"  {t.label}",
                unit="epoch",
                file=self.stream,
                position=t.position,
                leave=False,
                dynamic_ncols=True,
            )
        else:
            self._write(f"{t.label}: started")
        self._running[key] = t
        self._refresh()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        t = self._running.get(trial.trial_id)
        if t is None or result.get("diverged"):
            return
        epoch = int(result.get("epoch", t.epoch))
        start_epoch = int(result.get("start_epoch") or 0)
        if epoch > t.epoch:
            seconds = time.monotonic() - t.started
            ran = epoch - max(t.epoch, start_epoch)
            if ran > 0 and seconds > 0:
                self._epoch_seconds.append(seconds / ran)
            t.started = time.monotonic()
            if t.bar is not None:
                t.bar.update(epoch - t.epoch)
            t.epoch = epoch
        t.clean = float(result.get("clean_acc", math.nan))
        ber = result.get("ber_acc")
        if ber is not None and math.isfinite(float(ber)):
            t.ber = float(ber)
        if t.bar is not None:
            t.bar.set_postfix_str(f"clean {_pct(t.clean)}, ber {_pct(t.ber)}", refresh=False)
        self._refresh()

    def _end(self, trial: Any, how: str) -> None:
        t = self._running.pop(trial.trial_id, None)
        if t is None:
            return
        if t.bar is not None:
            t.bar.close()
        self._done += 1
        result = getattr(trial, "last_result", None) or {}
        if how == "errored":
            self._errored += 1
            line = f"{t.label}: errored at epoch {t.epoch + 1}"
        elif result.get("final"):
            line = f"{t.label}: done after {t.epoch} epochs, clean {_pct(t.clean)}, {self._ber} {_pct(t.ber)}"
            if not t.baseline and math.isfinite(t.ber) and (self._best is None or t.ber > self._best[0]):
                self._best = (t.ber, t.label)
        elif result.get("diverged"):
            self._errored += 1
            line = f"{t.label}: diverged at epoch {result.get('epoch')}"
        else:
            self._pruned += 1
            line = f"{t.label}: pruned at epoch {t.epoch}, clean {_pct(t.clean)}"
        self._write(line)
        self._refresh(force=not self.live and self._done == self.total)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "complete")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "errored")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        for t in self._running.values():
            if t.bar is not None:
                t.bar.close()
        self._running.clear()
        if self._bar is not None:
            self._bar.set_description_str(self.status_line(), refresh=True)
            self._bar.close()
            self._bar = None
