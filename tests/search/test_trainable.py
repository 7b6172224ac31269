"""search/trainable.py without Ray: ``trial_spec`` maps a searched config onto a ``TrialSpec``, and
``mcel_trial`` runs in-process on a tiny digits setup with Ray Tune's session calls replaced by fakes that
record every report and copy its checkpoint directory (a temporary directory the trial deletes)."""

from __future__ import annotations

import copy
import csv
import json
import math
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import ray
import torch
from ray.tune import Checkpoint

import mcel_search.search.trainable as trainable
from mcel_search.core.checkpoint import load_checkpoint
from mcel_search.core.training import TrainingDivergedError
from mcel_search.search.runner import _context
from mcel_search.search.searcher import NUMBER_KEY
from mcel_search.search.spec import parse_spec
from mcel_search.search.trainable import (
    CURVE_FILE,
    MODEL_FILE,
    SUMMARY_FILE,
    TRAINER_FILE,
    ForeignContextError,
    TrialContext,
    check_own_study,
    mcel_trial,
    trial_spec,
)

SPEC: dict[str, Any] = {
    "name": "t",
    "dataset": {"name": "digits", "split_seed": 3, "limit_train": 200, "limit_test": 100},
    "architectures": ["small_cnn"],
    "bits": [4],
    "losses": ["cel", "mcel", "mhl"],
    "space": {"margin": {"choice": [1, 2]}, "b": {"choice": [4, 8]}, "mhl_margin": {"choice": [16, 32]}},
    "train": {"epochs": 2, "batch_size": 64, "step_size": 1, "gamma": 0.5},  # device: auto (the default)
    "objective": {"target_ber": 0.01, "reps": 2, "every": 2},
    "sweep": {"bers": [0, 0.01], "reps": 2},
    "trials_per_arch": 2,
}
MCEL = {"loss": "mcel", "margin": 2.0, "b": 8.0, "logit_scale": 1.0, NUMBER_KEY: 7}


def context_of(changes: dict[str, Any] | None = None) -> TrialContext:
    data = copy.deepcopy(SPEC)
    data.update(changes or {})
    return _context(parse_spec(data), "small_cnn", 4)


@pytest.fixture(autouse=True)
def no_ray_autostart() -> None:
    """Outside a Ray worker the trainable must not start Ray: ``ray.get_gpu_ids()`` and
    ``ray.get_runtime_context()`` would start a local instance (seconds, and processes), so
    ``trainable._device`` and ``trainable._node_id`` ask ``ray.is_initialized()`` first. Checked here."""
    was_running = ray.is_initialized()
    yield
    assert ray.is_initialized() == was_running


@pytest.fixture()
def no_cuda(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


# ------------------------------------------------------------------------------------------ trial_spec


def test_context_holds_the_spec_sections() -> None:
    context = context_of()
    assert context.study == "t-small_cnn-4b"
    assert (context.arch, context.bits, context.cpus) == ("small_cnn", 4, 1.0)
    assert context.train.epochs == 2 and context.train.device == "auto"
    assert context.objective.every == 2 and context.sweep.bers == (0.0, 0.01)


@pytest.mark.parametrize(
    "config, params",
    [
        (MCEL, {"margin": 2.0, "b": 8.0}),
        ({"loss": "mhl", "mhl_margin": 32.0, "logit_scale": 0.5}, {"mhl_margin": 32.0}),
        ({"loss": "cel", "logit_scale": 2.0}, {}),
        # keys of another loss (a stale config) are not passed on: create_loss would refuse them
        (
            {"loss": "mhl", "mhl_margin": 16.0, "margin": 4.0, "b": 4.0, "logit_scale": 1.0},
            {"mhl_margin": 16.0},
        ),
    ],
    ids=["mcel", "mhl", "cel", "mhl-with-stale-keys"],
)
def test_trial_spec_maps_the_loss_and_its_parameters(no_cuda, config: dict, params: dict) -> None:
    context = context_of()
    spec = trial_spec(config, context)
    assert spec.loss == config["loss"]
    assert dict(spec.loss_params) == params
    assert spec.logit_scale == config["logit_scale"]
    assert (spec.arch, spec.bits, spec.dataset) == ("small_cnn", 4, "digits")
    assert (spec.split_seed, spec.limit_train, spec.limit_test, spec.data_root) == (3, 200, 100, None)
    # the spec's train config, with "auto" resolved: no GPU here
    assert spec.train == replace(context.train, device="cpu")
    assert (spec.train.epochs, spec.train.batch_size, spec.train.step_size) == (2, 64, 1)


def test_trial_spec_requires_the_parameters_of_its_loss(no_cuda) -> None:
    with pytest.raises(KeyError, match="b"):
        trial_spec({"loss": "mcel", "margin": 2.0, "logit_scale": 1.0}, context_of())


def test_device_auto_and_explicit(monkeypatch, no_cuda) -> None:
    assert trial_spec(MCEL, context_of({"train": {**SPEC["train"], "device": "auto"}})).train.device == "cpu"
    assert trial_spec(MCEL, context_of({"train": {**SPEC["train"], "device": "cpu"}})).train.device == "cpu"
    # an explicit device is passed through unresolved
    explicit = context_of({"train": {**SPEC["train"], "device": "cuda:1"}})
    assert trial_spec(MCEL, explicit).train.device == "cuda:1"
    # auto with a visible CUDA device picks it
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert trial_spec(MCEL, context_of()).train.device == "cuda"


def test_a_trial_of_its_own_study_or_its_baseline_run_passes_another_study_errors() -> None:
    """``check_own_study``: the Tune run a trial belongs to must be its context's study or that study's
    separate baseline run; outside Tune (None) it passes; a foreign study, a longer name that only starts
    with the study's, or another study's baseline raise and name both."""
    study = "s-small_cnn-4b"
    for ok in (study, f"{study}-baseline", None):
        check_own_study(ok, study)
    for foreign in ("s-small_cnn-2b", f"{study}x", "s-small_cnn-2b-baseline", "s-small_cnn-4"):
        with pytest.raises(ForeignContextError, match=f"{foreign!r}.*{study!r}"):
            check_own_study(foreign, study)


def test_a_trial_given_another_studys_context_trains_nothing(monkeypatch, tmp_path) -> None:
    """``mcel_trial`` in a Tune run of another study (what a shared trainable name in Tune's registry
    did): it raises before any epoch, reports and writes nothing."""
    fake = FakeTune(tmp_path)
    monkeypatch.setattr(trainable, "tune", fake)
    monkeypatch.setattr(trainable, "_experiment_name", lambda: "t-small_cnn-2b")
    trained: list[int] = []
    monkeypatch.setattr(trainable.Trainer, "train_epoch", lambda self: trained.append(1))
    with pytest.raises(ForeignContextError, match="t-small_cnn-2b.*t-small_cnn-4b"):
        mcel_trial(MCEL, context_of())
    assert fake.reports == [] and trained == [] and not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------ mcel_trial


@dataclass
class Report:
    metrics: dict[str, Any]
    files: dict[str, Path]  # checkpoint file name -> its copy


class FakeTune:
    """What ``mcel_trial`` calls on ``ray.tune`` inside a session: ``report`` (recorded, checkpoint copied),
    ``get_checkpoint`` (``resume_from`` or None) and ``Checkpoint`` (the real class: it only wraps a path).
    ``get_context`` raises as outside a session: the trainable's ``_trial_dir`` guards it (``_node_id``
    guards ``ray.get_runtime_context``, which raises once Ray's auto-start is off: ``no_ray_autostart``)."""

    def __init__(self, out: Path, resume_from: Path | None = None) -> None:
        self.out = out
        self.resume_from = resume_from
        self.reports: list[Report] = []
        self.Checkpoint = Checkpoint

    def get_checkpoint(self) -> Checkpoint | None:
        return None if self.resume_from is None else Checkpoint.from_directory(str(self.resume_from))

    def get_context(self) -> Any:
        raise RuntimeError("not in a Tune session")

    def report(self, metrics: dict[str, Any], *, checkpoint: Checkpoint | None = None) -> None:
        files: dict[str, Path] = {}
        if checkpoint is not None:
            dest = self.out / f"report{len(self.reports)}"
            shutil.copytree(checkpoint.path, dest)
            files = {p.name: p for p in dest.iterdir()}
        self.reports.append(Report(copy.deepcopy(metrics), files))


def run_trial(
    monkeypatch: pytest.MonkeyPatch,
    out: Path,
    config: dict,
    context: TrialContext,
    resume_from: Path | None = None,
) -> list[Report]:
    fake = FakeTune(out, resume_from)
    monkeypatch.setattr(trainable, "tune", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # device auto -> cpu on any machine
    monkeypatch.delenv("MCEL_FAULT_INJECT", raising=False)
    threads = torch.get_num_threads()  # mcel_trial sets torch's thread count to context.cpus: restore it
    try:
        mcel_trial(config, context)
    finally:
        torch.set_num_threads(threads)
    return fake.reports


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> list[Report]:
    """One MCEL trial of 2 epochs, ber_acc measured every 2 epochs (so: at the last epoch only)."""
    was_running = ray.is_initialized()
    with pytest.MonkeyPatch.context() as mp:  # undone before the tests read the reports
        out = run_trial(mp, tmp_path_factory.mktemp("trial"), MCEL, context_of())
    assert ray.is_initialized() == was_running
    return out


def test_one_report_per_epoch_and_only_the_last_is_final(reports: list[Report]) -> None:
    assert [r.metrics["epoch"] for r in reports] == [1, 2]
    assert [r.metrics.get("final", False) for r in reports] == [False, True]
    for r in reports:
        m = r.metrics
        assert m["start_epoch"] == 0 and m["node_id"] == "local"
        assert 0.0 <= m["clean_acc"] <= 1.0 and 0.0 <= m["train_acc"] <= 1.0
        assert math.isfinite(m["train_loss"]) and math.isfinite(m["mlm"]) and m["search_wait_s"] >= 0.0
        assert {TRAINER_FILE, MODEL_FILE} <= set(r.files)
    # StepLR with step_size 1, gamma 0.5: the lr of epoch 2 is half that of epoch 1
    assert reports[1].metrics["lr"] == pytest.approx(reports[0].metrics["lr"] * 0.5)
    assert reports[1].metrics["search_wait_s"] > 0.0  # the first epoch's checkpoint write and report


def test_ber_acc_is_nan_where_not_measured(reports: list[Report]) -> None:
    first, last = reports[0].metrics, reports[1].metrics
    assert math.isnan(first["ber_acc"]) and math.isnan(first["ber_acc_std"])  # epoch 1 % every(2) != 0
    assert "ber_acc_min" not in first
    assert 0.0 <= last["ber_acc"] <= 1.0 and math.isfinite(last["ber_acc_std"])
    assert last["ber_acc_min"] <= last["ber_acc"]


def test_final_checkpoint_holds_curve_summary_and_model(reports: list[Report]) -> None:
    first, last = reports
    assert CURVE_FILE not in first.files and SUMMARY_FILE not in first.files
    assert {CURVE_FILE, SUMMARY_FILE, MODEL_FILE, TRAINER_FILE} <= set(last.files)

    with last.files[CURVE_FILE].open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(float(r["ber"]), int(r["rep"])) for r in rows] == [(0.0, 0), (0.0, 1), (0.01, 0), (0.01, 1)]
    at_zero = [float(r["accuracy"]) for r in rows if float(r["ber"]) == 0.0]
    # no flips: the clean accuracy, each time
    assert at_zero == pytest.approx([last.metrics["clean_acc"]] * 2)

    summary = json.loads(last.files[SUMMARY_FILE].read_text())
    records = summary["objective_records"]
    assert len(records) == 2 and [r["rep"] for r in records] == [0, 1]
    accs = [r["accuracy"] for r in records]
    assert last.metrics["ber_acc"] == pytest.approx(sum(accs) / len(accs))
    assert last.metrics["ber_acc_min"] == pytest.approx(min(accs))
    assert [float(r["accuracy"]) for r in rows if float(r["ber"]) == 0.01] == pytest.approx(accs)
    assert [s["ber"] for s in summary["ber_curve"]] == [0.0, 0.01]
    assert len(summary["history"]) == 2
    assert summary["metrics"]["clean_acc"] == last.metrics["clean_acc"]
    assert any(k.startswith("test_margin_") for k in last.metrics)

    model, payload = load_checkpoint(last.files[MODEL_FILE])
    assert payload["model"]["name"] == "small_cnn" and payload["model"]["bits"] == 4
    assert payload["loss"] == {"name": "mcel", "margin": 2.0, "b": 8.0}
    assert payload["metrics"]["search_number"] == MCEL[NUMBER_KEY]
    assert payload["metrics"]["epoch"] == 2 and payload["metrics"]["ber_acc"] == last.metrics["ber_acc"]
    assert isinstance(model, torch.nn.Module)


def test_ber_acc_measured_every_epoch_with_separate_objective_reps(monkeypatch, tmp_path) -> None:
    # every=1: epoch 1 is measured too; sweep.reps (3) != objective.reps (2): the objective has its own pass
    context = context_of(
        {
            "train": {**SPEC["train"], "epochs": 1},
            "objective": {**SPEC["objective"], "every": 1},
            "sweep": {"bers": [0.01], "reps": 3},
        }
    )
    (only,) = run_trial(monkeypatch, tmp_path, {"loss": "cel", "logit_scale": 1.0}, context)
    assert only.metrics["final"] is True and 0.0 <= only.metrics["ber_acc"] <= 1.0
    summary = json.loads(only.files[SUMMARY_FILE].read_text())
    accs = [r["accuracy"] for r in summary["objective_records"]]
    assert len(accs) == 2
    assert only.metrics["ber_acc"] == pytest.approx(sum(accs) / 2)
    assert summary["ber_curve"][0]["reps"] == 3


def test_estimate_is_logged_next_to_the_full_measurement(monkeypatch, tmp_path) -> None:
    """objective.estimate: ber_acc_est at every measured epoch next to the full ber_acc, which it never
    replaces; ber_passes counts the objective's flipped passes."""
    from mcel_search.core.evaluation import cache_batches
    from mcel_search.core.robustness_estimate import margin_shift_estimate

    objective = {**SPEC["objective"], "every": 1, "estimate": "margin_shift", "estimate_reps": 3}
    context = context_of({"train": {**SPEC["train"], "epochs": 3}, "objective": objective})
    reports = run_trial(monkeypatch, tmp_path, MCEL, context)
    assert [r.metrics["epoch"] for r in reports] == [1, 2, 3]
    for r in reports:
        assert 0.0 <= r.metrics["ber_acc_est"] <= 1.0 and r.metrics["ber_acc_est_logit_shift"] > 0
    assert all(0.0 <= r.metrics["ber_acc"] <= 1.0 for r in reports)
    # 3 estimate passes per epoch and the full 2-rep measurement at epochs 1-2 (the final epoch's ber_acc
    # comes from its sweep: sweep.reps == objective.reps)
    assert [r.metrics["ber_passes"] for r in reports] == [5, 10, 13]
    # the reported estimate is the estimate of the final model, recomputed here
    model, _ = load_checkpoint(reports[-1].files[MODEL_FILE])
    spec = trial_spec(MCEL, context)
    from mcel_search.core.experiment import build

    _, _, data = build(spec)
    again = margin_shift_estimate(model, cache_batches(data.test, torch.device("cpu")), 0.01, 3, 0)
    assert reports[-1].metrics["ber_acc_est"] == pytest.approx(again.value, abs=1e-9)


def test_resumes_from_a_checkpoint_and_replays_a_final_one(
    monkeypatch, tmp_path, reports: list[Report]
) -> None:
    first, last = reports
    epoch1 = first.files[TRAINER_FILE].parent
    (resumed,) = run_trial(monkeypatch, tmp_path / "resumed", MCEL, context_of(), resume_from=epoch1)
    assert resumed.metrics["start_epoch"] == 1 and resumed.metrics["epoch"] == 2
    assert resumed.metrics["final"] is True and SUMMARY_FILE in resumed.files
    # resuming is exact: the same weights as the uninterrupted run (same shuffling, same optimizer state)
    for key in ("clean_acc", "ber_acc", "train_loss", "lr"):
        assert resumed.metrics[key] == pytest.approx(last.metrics[key]), key
    # its first report carries epoch 1 as reported then (for a tracker that never got it: backfill)
    (earlier,) = resumed.metrics["backfill"]
    assert earlier["epoch"] == 1 and earlier["clean_acc"] == first.metrics["clean_acc"]
    assert earlier["train_loss"] == first.metrics["train_loss"]

    # restored after its last epoch: the final result is reported again from the trained weights, untrained
    final_dir = last.files[TRAINER_FILE].parent
    (replayed,) = run_trial(monkeypatch, tmp_path / "replayed", MCEL, context_of(), resume_from=final_dir)
    assert replayed.metrics["start_epoch"] == 2 and replayed.metrics["epoch"] == 2
    assert replayed.metrics["final"] is True
    assert [e["epoch"] for e in replayed.metrics["backfill"]] == [1]
    assert "backfill" not in first.metrics and "backfill" not in last.metrics  # not resumed: nothing to carry
    for key in ("clean_acc", "ber_acc", "train_loss", "lr"):
        assert replayed.metrics[key] == pytest.approx(last.metrics[key]), key


def test_divergence_ends_the_trial_with_one_diverged_report(monkeypatch, tmp_path) -> None:
    def diverge(self, should_stop=None):
        raise TrainingDivergedError(f"training loss is nan at epoch {self.epoch + 1}")

    monkeypatch.setattr(trainable.Trainer, "train_epoch", diverge)
    (only,) = run_trial(monkeypatch, tmp_path, MCEL, context_of())  # returns: no exception for Tune to retry
    m = only.metrics
    assert m["diverged"] is True and m["epoch"] == 1 and "nan at epoch 1" in m["error"]
    assert "final" not in m and only.files == {}
    # every metric a searcher or scheduler reads is present (NaN), as Tune demands
    for key in ("train_loss", "train_acc", "mlm", "clean_acc", "ber_acc", "ber_acc_std"):
        assert math.isnan(m[key]), key


def test_a_systemexit_in_a_weakref_callback_prints_nothing_with_the_quiet_hook() -> None:
    """What Ray's SIGTERM at shutdown does to a trial worker (SystemExit inside a weakref callback): Python
    reports it as "Exception ignored ... Traceback" unless the trainable's hook is installed; any other
    unraisable exception is still reported."""
    import subprocess
    import sys

    script = """
import weakref, sys
{install}
class A: pass
def boom(_):
    raise {exc}
a = A(); r = weakref.ref(a, boom); del a
print("end")
"""
    install = "from mcel_search.search.trainable import quiet_sigterm_exit; quiet_sigterm_exit(); quiet_sigterm_exit()"

    def run(exc: str, hook: bool) -> subprocess.CompletedProcess:
        code = script.format(install=install if hook else "", exc=exc)
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)

    bare = run("SystemExit(1)", hook=False)
    assert "Exception ignored" in bare.stderr and "SystemExit" in bare.stderr  # the noise, without the hook
    quiet = run("SystemExit(1)", hook=True)
    assert quiet.stdout.strip() == "end" and quiet.stderr == ""
    other = run("ValueError('real')", hook=True)
    assert "Exception ignored" in other.stderr and "ValueError: real" in other.stderr


def test_checkpoint_every_k_epochs_and_the_last_with_the_same_results(monkeypatch, tmp_path) -> None:
    """``failure.checkpoint_every: 2`` over 3 epochs: every epoch reports, only epochs 2 and 3 carry a
    checkpoint; the metrics are those of a trial checkpointing every epoch, the epoch-2 checkpoint holds
    epochs 1-2 for a backfill, and a trial resumed from it ends as the uninterrupted one."""
    train = {**SPEC["train"], "epochs": 3}
    every1 = run_trial(monkeypatch, tmp_path / "every1", MCEL, context_of({"train": train}))
    sparse_context = context_of({"train": train, "failure": {"checkpoint_every": 2}})
    sparse = run_trial(monkeypatch, tmp_path / "every2", MCEL, sparse_context)
    assert [r.metrics["epoch"] for r in sparse] == [1, 2, 3]
    assert [bool(r.files) for r in sparse] == [False, True, True]
    assert [bool(r.files) for r in every1] == [True, True, True]
    for a, b in zip(every1, sparse, strict=True):
        for key in ("clean_acc", "train_loss", "lr", "mlm"):
            assert a.metrics[key] == b.metrics[key], key
    from mcel_search.search.trial_state import read_reported

    assert [r["epoch"] for r in read_reported(sparse[1].files[TRAINER_FILE])] == [1.0, 2.0]
    (resumed,) = run_trial(
        monkeypatch,
        tmp_path / "resumed",
        MCEL,
        sparse_context,
        resume_from=sparse[1].files[TRAINER_FILE].parent,
    )
    assert resumed.metrics["start_epoch"] == 2 and resumed.metrics["final"] is True
    assert [e["epoch"] for e in resumed.metrics["backfill"]] == [1.0, 2.0]
    for key in ("clean_acc", "ber_acc", "train_loss"):
        assert resumed.metrics[key] == pytest.approx(sparse[-1].metrics[key]), key


class _HeldReport(FakeTune):
    """A ``tune.report`` that, for the non-final epoch-1 report, waits (up to ``hold_s``) for epoch 2's
    training to start, records whether it did, then returns or, with ``stop``, raises ``SystemExit`` as Ray
    Tune does when it stops a trial inside ``tune.report``."""

    def __init__(self, out: Path, started: Any, hold_s: float, stop: bool = False) -> None:
        super().__init__(out)
        self.started, self.hold_s, self.stop = started, hold_s, stop
        self.overlapped: list[bool] = []

    def report(self, metrics: dict[str, Any], *, checkpoint: Checkpoint | None = None) -> None:
        super().report(metrics, checkpoint=checkpoint)
        if metrics["epoch"] == 1:
            self.overlapped.append(self.started.wait(self.hold_s))
            if self.stop:
                raise SystemExit(0)


def _watch_epoch_2(monkeypatch, log: list[str], gate: bool = False) -> Any:
    """Wrap ``Trainer.train_epoch``: an Event set when epoch 2 starts training, and a log of how each
    epoch ended. With ``gate``, epoch 2 holds before its first step until its ``should_stop`` says stop
    (so a cancellation lands there, deterministically)."""
    import threading
    import time

    from mcel_search.core.training import Trainer, TrainingCancelledError

    started = threading.Event()
    original = Trainer.train_epoch

    def watched(self, should_stop=None):
        epoch = self.epoch + 1
        check = should_stop
        if epoch == 2:
            started.set()
            if gate and should_stop is not None:

                def check() -> bool:
                    deadline = time.monotonic() + 30
                    while not should_stop() and time.monotonic() < deadline:
                        time.sleep(0.005)
                    return should_stop()

        try:
            stats = original(self, should_stop=check)
        except TrainingCancelledError:
            log.append(f"{epoch} cancelled")
            raise
        log.append(f"{epoch} done")
        return stats

    monkeypatch.setattr(Trainer, "train_epoch", watched)
    return started


def _held_trial(
    out: Path, context: TrialContext, hold_s: float, log: list[str], stop: bool = False
) -> _HeldReport:
    """``mcel_trial(MCEL, context)`` with :class:`_HeldReport` as ``tune`` and epoch 2 watched (``log``);
    every patch undone on return or exception."""
    with pytest.MonkeyPatch.context() as mp:
        fake = _HeldReport(out, _watch_epoch_2(mp, log, gate=stop), hold_s, stop)
        mp.setattr(trainable, "tune", fake)
        mp.setattr(torch.cuda, "is_available", lambda: False)
        mp.delenv("MCEL_FAULT_INJECT", raising=False)
        threads = torch.get_num_threads()
        try:
            mcel_trial(MCEL, context)
        finally:
            torch.set_num_threads(threads)
    return fake


def test_the_next_epoch_trains_while_a_report_is_in_flight_with_the_same_results(tmp_path) -> None:
    """With ``overlap_report`` (the default) epoch 2 starts while epoch 1's report has not returned;
    without it, it does not (the held report times out). Either way every metric but ``search_wait_s``
    and the final model's weights are bit for bit the same."""
    train = {**SPEC["train"], "epochs": 3}
    context = context_of({"train": train})
    assert context.overlap_report is True
    on_log: list[str] = []
    off_log: list[str] = []
    on = _held_trial(tmp_path / "on", context, 30, on_log)
    off = _held_trial(tmp_path / "off", replace(context, overlap_report=False), 1, off_log)
    assert on.overlapped == [True] and off.overlapped == [False]
    assert on_log == off_log == ["1 done", "2 done", "3 done"]
    assert [r.metrics["epoch"] for r in on.reports] == [r.metrics["epoch"] for r in off.reports] == [1, 2, 3]
    for a, b in zip(on.reports, off.reports, strict=True):
        keys = set(a.metrics) - {"search_wait_s"}
        assert keys == set(b.metrics) - {"search_wait_s"}
        for key in keys:
            x, y = a.metrics[key], b.metrics[key]
            same = (isinstance(x, float) and math.isnan(x) and math.isnan(y)) or x == y
            assert same, (a.metrics["epoch"], key, x, y)
    # the held second cost the trial without overlap; with it, epoch 2 trained meanwhile
    assert off.reports[1].metrics["search_wait_s"] >= 1.0
    model_on = load_checkpoint(on.reports[-1].files[MODEL_FILE])[0].state_dict()
    model_off = load_checkpoint(off.reports[-1].files[MODEL_FILE])[0].state_dict()
    assert model_on.keys() == model_off.keys()
    assert all(torch.equal(model_on[k], model_off[k]) for k in model_on)


class _SlowReport(FakeTune):
    """A ``tune.report`` whose epoch-1 report returns only once epoch 2, training ahead, has ended (``log``
    says "2 done"): a driver slower to answer than the last epoch takes to train."""

    def __init__(self, out: Path, log: list[str]) -> None:
        super().__init__(out)
        self.log = log
        self.waited_for_epoch_2: list[bool] = []

    def report(self, metrics: dict[str, Any], *, checkpoint: Checkpoint | None = None) -> None:
        import time

        super().report(metrics, checkpoint=checkpoint)
        if metrics["epoch"] == 1:
            deadline = time.monotonic() + 30
            while "2 done" not in self.log and time.monotonic() < deadline:
                time.sleep(0.005)
            self.waited_for_epoch_2.append("2 done" in self.log)


def test_a_last_epoch_that_ends_before_the_report_returns_is_still_reported_final(
    monkeypatch, tmp_path
) -> None:
    """2 epochs; epoch 1's report returns after epoch 2 (trained ahead) has ended, so the trainer already
    counts 2 epochs when the trial looks again: the trial still takes that epoch's stats and reports it as
    its final result (curve, summary, model), not end after epoch 1 as if stopped (seen in a real search:
    such a trial was told PRUNED and left the Pareto front)."""
    log: list[str] = []
    fake = _SlowReport(tmp_path, log)
    _watch_epoch_2(monkeypatch, log)
    monkeypatch.setattr(trainable, "tune", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("MCEL_FAULT_INJECT", raising=False)
    threads = torch.get_num_threads()
    try:
        mcel_trial(MCEL, context_of())
    finally:
        torch.set_num_threads(threads)
    assert fake.waited_for_epoch_2 == [True] and log == ["1 done", "2 done"]
    assert [r.metrics["epoch"] for r in fake.reports] == [1, 2]
    assert [r.metrics.get("final", False) for r in fake.reports] == [False, True]
    assert {CURVE_FILE, SUMMARY_FILE, MODEL_FILE} <= set(fake.reports[-1].files)


def test_a_trial_stopped_in_its_report_cancels_the_epoch_ahead(tmp_path) -> None:
    """Ray Tune stops a trial by raising ``SystemExit`` in ``tune.report``: the epoch training ahead is
    cancelled before its next step and waited for before the exception leaves ``mcel_trial``, so no
    epoch outlives the trial (a reused actor's next trial would share the CPU with it)."""
    from mcel_search.search.epoch_ahead import running_epochs

    log: list[str] = []
    context = context_of({"train": {**SPEC["train"], "epochs": 3}})
    with pytest.raises(SystemExit):
        _held_trial(tmp_path, context, 30, log, stop=True)
    assert log == ["1 done", "2 cancelled"]
    assert running_epochs() == 0
