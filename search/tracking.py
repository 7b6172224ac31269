"""MLflow tracking of a search, written by the driver only (a SQLite store tolerates one writer).

Layout (documented in README "MLflow layout"; ``analysis/`` reads it):

* one **experiment** per spec (``tracking.experiment``, default the spec's name);
* one **parent run** per (architecture, bits), tags ``mcel.role=parent``, ``mcel.study=<spec>-<arch>-<bits>b``,
  ``arch``, ``bits``, ``dataset``; params: the flattened spec;
* one **child run** per trial (``mlflow.parentRunId`` = the parent), tags ``mcel.role=trial`` (or
  ``baseline`` for the CEL baseline), ``mcel.trial_key`` (study + Optuna number: the trial's identity across
  retries and driver restarts), ``mcel.optuna_number``, ``mcel.tune_trial_id``, ``arch``, ``bits``,
  ``dataset``, ``loss``, ``mcel.state`` (``running`` / ``completed`` / ``pruned`` / ``errored``),
  ``mcel.node_id`` and ``mcel.device`` (the Ray node and the device it trained on, e.g. ``cuda:0 (NVIDIA
  A10G)``; updated when a retry lands elsewhere) and ``mcel.error`` for errored trials; params: the searched values (``loss``, ``margin``, ``b``, ``mhl_margin``,
  ``logit_scale``, ``relative_separation`` = m/(2b)) and the fixed settings (``train.*``, ``objective.*``);
  metrics per epoch with ``step=epoch`` (``train_loss``, ``train_acc``, ``mlm``, ``lr``, ``clean_acc``,
  ``ber_acc``, ``ber_acc_std``, ``search_wait_s``, ...); at the end the BER curve as metrics ``ber_acc_at_<ber>``,
  ``ber_acc_std_at_<ber>``, ``ber_acc_min_at_<ber>`` (MLflow forbids ``@`` in metric names) and artifacts
  ``checkpoint/model.pt`` (loads with ``weights_only=True``), ``ber_curve.csv`` (one row per BER and
  repetition) and ``summary.json``.

A trial's run is found again by ``mcel.trial_key`` after a retry or a driver restart, and epochs already
logged are not logged twice, so a resumed search never duplicates a run or a metric point.

**MLflow is off the trials' critical path.** Every Tune event becomes a pending MLflow call in a bounded
in-memory buffer (:attr:`~.sender.RetryingSender.max_pending`), sent in order by background threads of the
driver (``background=True``, the default; for a tracking server :data:`DEFAULT_SENDERS` of them, env
``MCEL_MLFLOW_SENDERS``, a trial's calls always through the same one; one for a local SQLite store): a trial's ``tune.report`` waits for the driver to process its
result, so a synchronous ``log_batch`` would stall every trial every epoch (``benchmarks/MEASUREMENTS.md``,
"MLflow sender"). Only those threads talk to MLflow during a Tune run; the driver thread only appends. An
error that is not an outage is raised in the driver at its next event or flush.

**Calls coalesce per trial.** A trial's results wait in its own buffer behind one queued call; that call
sends all that arrived until it runs in one ``log_batch`` (and ends the run, when the trial ended
meanwhile). When the server falls behind, the queue holds about one call per trial instead of one per
result, and a run's lag is about ``trials / server calls per second`` (``docs/cluster.md``, "How many trials
one driver carries"; :meth:`MlflowTrialLogger.lag_summary`).

**A tracking server that blinks does not stop a search.** When the
server is unreachable (connection refused, timeout, HTTP 5xx) the call stays buffered and the driver goes
on; the buffer is retried on the next event with a doubling backoff (0.5 s to 10 s), each attempt one HTTP
request without MLflow's own retries (``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0`` and a 30 s timeout,
``MCEL_MLFLOW_REQUEST_TIMEOUT_S``, during a flush), so the driver never blocks for long. When the buffer is full, and at the end of each Tune run, the driver waits for the
server up to :data:`~.sender.FLUSH_TIMEOUT_S` (env ``MCEL_MLFLOW_FLUSH_TIMEOUT_S``) and then stops with a
:class:`TrackingUnavailableError`. Passwords in URIs are masked in every logged param and tag.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
import zlib
from collections import deque
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from ray.tune import Callback
from ray.tune.experiment import Trial

from ..core.errors import BadInputError, ResumableError
from ..core.losses import all_loss_params, relative_separation
from ..core.redact import redact_credentials
from . import sender
from .preflight import SEARCH_ID_KEY
from .pruning import trial_key
from .searcher import BASELINE_ROLE, NUMBER_KEY, is_baseline
from .sender import RetryingSender

logger = logging.getLogger(__name__)

EPOCH_METRICS_SKIP = {
    "epoch",
    "final",
    "done",
    "training_iteration",
    "time_this_iter_s",
    "time_total_s",
    "timestamp",
}
#: The searched values logged as a trial's params: the loss, every registered loss parameter, the scale.
TRIAL_PARAM_KEYS = ("loss", *all_loss_params(), "logit_scale")
_TRANSIENT_TEXT = (
    "Max retries exceeded",
    "Connection refused",
    "Connection aborted",
    "ConnectionError",
    "RemoteDisconnected",
    "timed out",
    "Temporary failure",
    "Bad Gateway",
    "Service Unavailable",
    "Gateway Timeout",
    "response code 502",
    "response code 503",
    "response code 504",
)


class TrackingUnavailableError(ResumableError):
    """The tracking server stayed unreachable longer than :data:`~.sender.FLUSH_TIMEOUT_S` with calls still
    buffered."""


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` from an MLflow call means "server unreachable or overloaded" (worth retrying later)."""
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    try:
        import requests

        if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
            return True
    except ImportError:  # pragma: no cover
        pass
    if isinstance(exc, MlflowException):
        if exc.error_code == "TEMPORARILY_UNAVAILABLE":
            return True
        return any(t in str(exc) for t in _TRANSIENT_TEXT)
    return False


_ATTEMPT_LOCK = threading.Lock()
_attempts = {"active": 0, "saved": {}}


@contextlib.contextmanager
def _one_attempt() -> Iterator[None]:
    """MLflow HTTP calls in this block make one attempt with a short timeout (we retry ourselves).

    Several sender threads may be inside at once: the first one in sets the variables, the last one out
    restores them (reference counted under a lock), so no thread runs with another's restored values."""
    names = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")
    with _ATTEMPT_LOCK:
        if _attempts["active"] == 0:
            _attempts["saved"] = {k: os.environ.get(k) for k in names}
            os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
            os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = os.environ.get("MCEL_MLFLOW_REQUEST_TIMEOUT_S", "30")
        _attempts["active"] += 1
    try:
        yield
    finally:
        with _ATTEMPT_LOCK:
            _attempts["active"] -= 1
            if _attempts["active"] == 0:
                for k, v in _attempts["saved"].items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v


def nearest_rank(values: list[float], p: float) -> float:
    """The ``p`` quantile by nearest rank: the ``ceil(p * n)``-th smallest of ``values`` (NaN if empty)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p * len(ordered)) - 1))]


#: MLflow 3's UI opens an experiment by its kind: ours is model training (its runs table), not GenAI traces.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def get_or_create_experiment(client: MlflowClient, name: str) -> str:
    """The id of experiment ``name``, created if absent (restored if deleted), tagged as a model-training
    experiment (:data:`EXPERIMENT_KIND`) so that the MLflow UI opens on its runs."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, tags=dict([EXPERIMENT_KIND]))
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    if exp.tags.get(EXPERIMENT_KIND[0]) is None:
        client.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
    return exp.experiment_id


def find_run(client: MlflowClient, experiment_id: str, tags: dict[str, str]) -> str | None:
    """The id of the run in ``experiment_id`` carrying all ``tags`` (the oldest if several), else None."""
    flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = client.search_runs(
        [experiment_id], filter_string=flt, order_by=["attributes.start_time ASC"], max_results=5
    )
    return runs[0].info.run_id if runs else None


def parent_run(
    client: MlflowClient, experiment_id: str, study: str, tags: dict[str, str], params: dict[str, Any]
) -> str:
    """Find or create the parent run of ``study``: the one of this search (``tags["mcel.search_id"]``,
    when given: the study instance, see :func:`~.preflight.check_search_identity`)."""
    identity = {"mcel.role": "parent", "mcel.study": study}
    if SEARCH_ID_KEY in tags:
        identity[SEARCH_ID_KEY] = tags[SEARCH_ID_KEY]
    found = find_run(client, experiment_id, identity)
    if found:
        return found
    run = client.create_run(
        experiment_id, run_name=study, tags={"mcel.role": "parent", "mcel.study": study, **tags}
    )
    _log_params(client, run.info.run_id, params)
    return run.info.run_id


def _log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    items = [Param(k, _param_value(v)) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])


def _param_value(value: Any) -> str:
    text = "null" if value is None else redact_credentials(str(value))
    return text[:6000]


def ber_metric_name(kind: str, ber: float) -> str:
    """``ber_acc_at_0.01``-style metric name for a BER curve point (``kind`` is ber_acc, ber_acc_std, ...)."""
    return f"{kind}_at_{ber:g}"


#: Sender threads of a logger (env ``MCEL_MLFLOW_SENDERS`` overrides): a trial's calls all go through one.
DEFAULT_SENDERS = 2
MAX_SENDERS = 64


def default_senders() -> int:
    """``MCEL_MLFLOW_SENDERS`` (an integer in [1, :data:`MAX_SENDERS`]) or :data:`DEFAULT_SENDERS`."""
    text = os.environ.get("MCEL_MLFLOW_SENDERS", "").strip()
    if not text:
        return DEFAULT_SENDERS
    if not text.isdigit() or not 1 <= int(text) <= MAX_SENDERS:
        raise BadInputError(
            f"MCEL_MLFLOW_SENDERS={text!r} is not allowed: an integer from 1 to {MAX_SENDERS} "
            f"(sender threads of the MLflow logger; unset: {DEFAULT_SENDERS})"
        )
    return int(text)


def _warm_trial_end() -> None:
    """Import what the first trial's end needs (see :func:`prewarm_trial_end`); errors are left for the
    real call to raise."""
    try:
        import mlflow.pyfunc  # noqa: F401  (log_trial_model)

        from ..analysis import plots  # noqa: F401  (matplotlib's figure machinery: ber_curve.png)
        from . import pyfunc  # noqa: F401
    except Exception:  # an optimization only
        logger.debug("warming the trial-end imports failed", exc_info=True)
        return
    try:
        from mlflow.utils import requirements_utils

        # MLflow's map of importable modules to installed distributions, which every model log consults
        # (warn_dependency_requirement_mismatches); private API: a newer MLflow may lack it
        requirements_utils._init_packages_to_modules_map()
    except Exception:
        logger.debug("warming MLflow's package map failed", exc_info=True)


_warm_lock = threading.Lock()
_warm_thread: threading.Thread | None = None


def prewarm_trial_end() -> threading.Thread:
    """Start, once per process, a daemon thread that imports what a finished trial's logging needs.

    The first trial's end is the first time the driver draws a figure (matplotlib, ~1.5-2 s to import)
    and logs an MLflow Model (MLflow scans every installed distribution once, ~1.5-2.7 s): ~3.4 s of CPU
    with the GIL mostly held, in the sender thread, while the next trial reports every epoch and waits for
    the driver each time (2026-12-02: that trial's waits were 0.5-1 s longer in four runs of five). Done at the search's
    start, the imports overlap the first trial's worker start-up instead, when the driver only waits.
    Returns the thread (already started, or started earlier by this process)."""
    global _warm_thread
    with _warm_lock:
        if _warm_thread is None:
            _warm_thread = threading.Thread(target=_warm_trial_end, name="mcel-warm-imports", daemon=True)
            _warm_thread.start()
        return _warm_thread


#: Metrics per ``log_batch`` call (MLflow's REST limit: 1,000 metrics, 1,000 entities with the tags).
BATCH_METRICS = 900
#: Results whose MLflow lag :meth:`MlflowTrialLogger.lag_summary` describes (the latest ones).
LAG_WINDOW = 100_000

#: Per-epoch result keys logged as MLflow metrics (besides ``epoch``): these names, and these prefixes.
EPOCH_METRIC_KEYS = ("train_loss", "train_acc", "mlm", "lr", "clean_acc", "search_wait_s", "ber_passes")
EPOCH_METRIC_PREFIXES = ("ber_acc", "test_margin", "tolerable_ber")


def _epoch_metrics(result: Mapping[str, Any], ts: int, step: int) -> list[Metric]:
    """The MLflow metrics of one epoch's result (finite numbers of :data:`EPOCH_METRIC_KEYS` and
    :data:`EPOCH_METRIC_PREFIXES`) plus ``epoch``, all at ``step``."""
    metrics = [
        Metric(k, float(v), ts, step)
        for k, v in result.items()
        if k not in EPOCH_METRICS_SKIP
        and isinstance(v, int | float)
        and not isinstance(v, bool)
        and math.isfinite(float(v))
        and (k in EPOCH_METRIC_KEYS or k.startswith(EPOCH_METRIC_PREFIXES))
    ]
    metrics.append(Metric("epoch", float(step), ts, step))
    return metrics


#: ``mcel.state`` of a run that has ended.
FINISHED_STATES = ("completed", "pruned", "errored")


def _now_ms() -> int:
    """Wall-clock time in milliseconds, as MLflow keeps a run's start and end."""
    return int(time.time() * 1000)


class MlflowTrialLogger(Callback):
    """Ray Tune callback (driver side) that writes the MLflow layout described in the module docstring.

    Each ``on_trial_*`` event is queued as one pending call and the queue is sent in order: by a
    background thread (``background=True``) or, with ``background=False``, by the driver thread at once
    on each event. While the tracking server is unreachable the calls wait in the queue (see the module
    docstring). :meth:`flush` with ``final=True`` (``on_experiment_end``, and the runner after
    ``Tuner.fit``) waits for the queue to empty, the server to come back, or :data:`~.sender.FLUSH_TIMEOUT_S`.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment_id: str,
        parent_run_id: str,
        study: str,
        tags: dict[str, str],
        params: dict[str, Any],
        role: str = "trial",
        background: bool = True,
        senders: int | None = None,
        coalesce: bool = True,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.study = study
        self.tags = dict(tags)
        self.params = dict(params)
        self.role = role
        self._client: MlflowClient | None = None
        self._runs: dict[str, str] = {}
        self._last_step: dict[str, int] = {}
        self._checkpoints: dict[str, Any] = {}
        self._closed: set[str] = set()
        self._nodes: dict[str, str] = {}
        self._devices: dict[str, str] = {}
        self._resumed: dict[str, int] = {}
        self._need_params: dict[str, dict[str, Any]] = {}
        self._uncertain: set[tuple[str, int]] = set()
        # key -> when Tune started / ended the trial (ms, taken in the driver's thread at the event): the
        # run's start and end time, not the moment a queued call reached the server
        self._start_ms: dict[str, int] = {}
        self._end_ms: dict[str, int] = {}
        self._ended_here: set[str] = set()  # keys whose end event this driver saw (on_trial_complete/error)
        self._restored_ended: set[str] | None = None  # keys of the trials already ended at the first step
        self.coalesce = coalesce
        self._results: dict[str, list[tuple[Trial, dict, float]]] = {}  # key -> results not yet sent
        self._scheduled: set[str] = set()  # keys with a queued _trial_results call
        self._endings: dict[
            str, tuple[dict, Any]
        ] = {}  # key -> (last result, checkpoint) that call ends with
        self._buffer_lock = threading.Lock()
        self._prefetch_lock = threading.Lock()
        self._prefetched: dict[str, str] | None = None
        self._prefetched_states: dict[str, str] = {}  # key -> mcel.state of the run when first looked
        #: seconds from each result's event to its log_batch returning (the last LAG_WINDOW results)
        self.lags: deque[float] = deque(maxlen=LAG_WINDOW)
        self.results_logged = 0  # results handed to MLflow (one epoch each; a repeat counts once more)
        self.metric_batches = 0  # log_batch calls that carried epoch metrics
        # a SQLite (or file) store takes one writer at a time: more threads would only wait for its lock
        # (and for the GIL the driver thread needs); an HTTP server takes requests in parallel
        remote = tracking_uri.split(":", 1)[0].lower() in ("http", "https", "databricks")
        n = senders if senders is not None else (default_senders() if remote else 1)
        if not 1 <= n <= MAX_SENDERS:
            raise BadInputError(f"senders={n!r} is not allowed: an integer from 1 to {MAX_SENDERS}")
        #: the queues of MLflow calls and the threads that send them (MLflow off the trials' critical
        #: path); a trial's calls always go through the same one (by its key), so they stay in order
        self.senders = [
            RetryingSender(
                self._deliver,
                is_transient=is_transient,
                unavailable=self._unavailable,
                target=f"MLflow tracking server {redact_credentials(tracking_uri)}",
                background=background,
                attempt=_one_attempt,
                thread_name="mcel-mlflow-sender" + (f"-{i}" if i else ""),
            )
            for i in range(n)
        ]
        self.sender = self.senders[0]  # the one of calls without a trial

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(
            _client=None,
            _runs={},
            _last_step={},
            _checkpoints={},
            _closed=set(),
            _nodes={},
            _resumed={},
            _need_params={},
            _uncertain=set(),
            _results={},
            _scheduled=set(),
            _endings={},
            _buffer_lock=None,
            _prefetch_lock=None,
            _prefetched=None,
            _prefetched_states={},
            _ended_here=set(),  # a restored logger has seen no end event: the dead driver's may be unsent
            _restored_ended=None,
            lags=deque(maxlen=LAG_WINDOW),
        )
        return state  # the senders pickle themselves empty (RetryingSender.__getstate__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._buffer_lock = threading.Lock()
        self._prefetch_lock = threading.Lock()

    # ------------------------------------------------------------------------------- buffered calls

    @property
    def background(self) -> bool:
        """Whether a background thread sends the calls (the default) or each event sends them."""
        return self.sender.background

    @property
    def pending(self) -> int:
        """Calls waiting for the tracking server."""
        return sum(s.pending for s in self.senders)

    def _enqueue(self, method: str, *args: Any, shard: str | None = None) -> None:
        """Queue the call ``self.<method>(*args)`` (see :class:`~.sender.RetryingSender`) on the sender of
        ``shard`` (a trial's key: its calls stay in order), or the first one."""
        index = 0 if shard is None else zlib.crc32(shard.encode()) % len(self.senders)
        self.senders[index].enqueue(method, args)

    def _deliver(self, method: str, args: tuple) -> None:
        getattr(self, method)(*args)

    def flush(self, final: bool = False) -> None:
        """Send the pending calls in order; with ``final`` wait for them up to
        :data:`~.sender.FLUSH_TIMEOUT_S`, then raise :class:`TrackingUnavailableError`."""
        for s in self.senders:
            s.flush(final)

    def close(self) -> None:
        """Stop the sender threads once the queues are empty (or the server unreachable); idempotent."""
        for s in self.senders:
            s.close()

    def lag_summary(self) -> dict[str, float]:
        """Seconds from a result's event to its MLflow write over the last :data:`LAG_WINDOW` results:
        ``p50``, ``p99``, ``max`` and ``n`` (empty before the first write)."""
        lags = sorted(self.lags)
        if not lags:
            return {}
        return {
            "p50": nearest_rank(lags, 0.50),
            "p99": nearest_rank(lags, 0.99),
            "max": lags[-1],
            "n": float(len(lags)),
        }

    def _unavailable(self, pending: int) -> TrackingUnavailableError:
        return TrackingUnavailableError(
            f"tracking.uri: {redact_credentials(self.tracking_uri)!r} — unreachable for "
            f"{sender.FLUSH_TIMEOUT_S:.0f}s with {pending} MLflow calls unsent (the runs of the trials "
            "concerned lack them); allowed: a reachable tracking server, then rerun with --resume to "
            "continue the unfinished trials"
        )

    def on_step_begin(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        if self._restored_ended is None:  # the first step: the trials a restored run began with
            self._restored_ended = {
                self._key(t) for t in trials if str(getattr(t, "status", "")) in ("TERMINATED", "ERROR")
            }

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        self._end_restored(trials)
        try:
            self.flush(final=True)
        finally:
            self.close()

    def _end_restored(self, trials: list[Trial]) -> None:
        """End the runs of trials that ended before a driver restart but whose end never reached MLflow.

        Tune's snapshot can hold a trial as TERMINATED or ERROR while the dead driver still had its last
        epochs and its run's end queued: the restored run does not train it again, so no event would come.
        Only the trials that were already ended when this run began (seen at its first step) are
        concerned: a trial that ends now gets its own events (or, stopped by a storage fault, stays
        ``running``, to be resumed).
        Such a run (found by its key, not yet ``completed`` / ``pruned`` / ``errored``) gets the epochs it
        lacks from the trial's last checkpoint (``trainer.pt`` keeps every epoch's scalar results) and its
        ending from the trial's last result, as if the events had come. Runs ended by this driver, or
        finished in MLflow already (one search of the study's runs tells), are left alone."""
        before = self._restored_ended or set()
        pending = [t for t in trials if self._key(t) in before and self._key(t) not in self._ended_here]
        if not pending:
            return
        self._existing_runs()
        for trial in pending:
            key = self._key(trial)
            status = str(trial.status)
            if self._prefetched_states.get(key) in FINISHED_STATES:
                continue
            self._ended_here.add(key)
            last = dict(getattr(trial, "last_result", None) or {})
            if last.get("timestamp"):
                self._end_ms.setdefault(key, int(float(last["timestamp"]) * 1000))
            checkpoint = self._latest_checkpoint(trial)
            self._enqueue("_restored_end", trial, status, last, checkpoint, shard=key)

    def _restored_end(self, trial: Trial, status: str, last: dict, checkpoint: Any) -> None:
        run_id = self.run_id(trial)
        if run_id in self._closed:
            return
        logger.info("ending the MLflow run of %s, which ended before the driver restarted", self._key(trial))
        earlier = _reported_epochs(checkpoint)
        if earlier and last:
            self._log_results(trial, [({**last, "backfill": earlier}, None)])
        if status == "ERROR":
            self._trial_error(trial, _error_message(trial), checkpoint)
        else:
            self._trial_complete(trial, last, checkpoint)

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def _role(self, trial: Trial) -> str:
        """``baseline`` for the study's CEL baseline (by its config, when it runs in the study's own Tune
        run, or by this logger's ``role``, for a baseline run of its own), else ``trial``."""
        return BASELINE_ROLE if is_baseline(trial.config) else self.role

    def _key(self, trial: Trial) -> str:
        return f"{self.study}#{trial_key(trial) if self._role(trial) == 'trial' else BASELINE_ROLE}"

    def _existing_runs(self) -> dict[str, str]:
        """``mcel.trial_key`` -> run id of the runs of this study that existed when the logger first
        looked (a resumed search's): one paginated search instead of one per new trial (at 1,000 trials
        starting, a search each was a quarter of the start-up calls)."""
        with self._prefetch_lock:
            if self._prefetched is None:
                found: dict[str, str] = {}
                token = None
                while True:
                    page = self.client.search_runs(
                        [self.experiment_id],
                        filter_string=f"tags.`mcel.study` = '{self.study}'",
                        order_by=["attributes.start_time ASC"],
                        max_results=1000,
                        page_token=token,
                    )
                    for run in page:
                        key = run.data.tags.get("mcel.trial_key")
                        if key is not None and key not in found:  # the oldest, as find_run
                            found[key] = run.info.run_id
                            self._prefetched_states[key] = run.data.tags.get("mcel.state", "")
                    token = page.token
                    if not token:
                        break
                self._prefetched = found
            return self._prefetched

    def run_id(self, trial: Trial) -> str:
        """The child run of ``trial`` (found by its key, else created with params and tags)."""
        key = self._key(trial)
        if key in self._runs:
            run_id = self._runs[key]
            if run_id in self._need_params:  # created, but the params did not reach the server yet
                _log_params(self.client, run_id, self._need_params[run_id])
                del self._need_params[run_id]
            return run_id
        found = self._existing_runs().get(key)
        if found:
            self._runs[key] = found
            if self.client.get_run(found).data.tags.get("mcel.state") in FINISHED_STATES:
                self._closed.add(found)  # finished before a driver restart: nothing more to log
            history = self.client.get_metric_history(found, "train_loss")
            self._last_step[found] = max((m.step for m in history), default=0)
            self.client.set_tag(found, "mcel.tune_trial_id", trial.trial_id)
            return found
        config = trial.config
        number = config.get(NUMBER_KEY)
        tags = {
            "mlflow.parentRunId": self.parent_run_id,
            "mcel.role": self._role(trial),
            "mcel.study": self.study,
            "mcel.trial_key": key,
            "mcel.tune_trial_id": trial.trial_id,
            "mcel.state": "running",
            "loss": str(config.get("loss")),
            **{k: redact_credentials(str(v)) for k, v in self.tags.items()},
        }
        if number is not None:
            tags["mcel.optuna_number"] = str(number)
        name = f"{self.tags.get('arch')}-{self.tags.get('bits')}b-{config.get('loss')}-" + (
            f"t{number}" if number is not None else self._role(trial)
        )
        run = self.client.create_run(
            self.experiment_id, run_name=name, tags=tags, start_time=self._start_ms.get(key)
        )
        run_id = run.info.run_id
        params = {k: config[k] for k in TRIAL_PARAM_KEYS if k in config}
        separation = relative_separation(config)
        if separation is not None:
            params["relative_separation"] = separation
        self._runs[key] = run_id
        self._last_step[run_id] = 0
        self._need_params[run_id] = {**self.params, **params}
        _log_params(self.client, run_id, self._need_params[run_id])
        del self._need_params[run_id]
        return run_id

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._start_ms.setdefault(self._key(trial), _now_ms())
        self._enqueue("_trial_start", trial, shard=self._key(trial))

    def _trial_start(self, trial: Trial) -> None:
        fresh = self._key(trial) not in self._runs and self._key(trial) not in self._existing_runs()
        run_id = self.run_id(trial)
        if run_id not in self._closed and not fresh:  # a new run is created with mcel.state=running
            self.client.set_tag(run_id, "mcel.state", "running")

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any
    ) -> None:
        self.queue_result(trial, result, time.monotonic())

    def queue_result(self, trial: Trial, result: dict, since: float) -> None:
        """Queue one result of ``trial`` (``since``: its event time, ``time.monotonic()``, for the lag).

        With ``coalesce`` the results of one trial wait in its own buffer and one queued call
        (``_trial_results``) sends all that arrived until it runs, in one ``log_batch``: when the server
        falls behind, a trial's epochs merge into fewer calls instead of the queue growing per result."""
        key = self._key(trial)
        if not self.coalesce:
            self._enqueue("_trial_result", trial, dict(result), since, shard=key)
            return
        with self._buffer_lock:
            self._results.setdefault(key, []).append((trial, dict(result), since))
            if key in self._scheduled:
                return
            self._scheduled.add(key)
        self._enqueue("_trial_results", key, shard=key)

    def _trial_results(self, key: str) -> None:
        """Send the results buffered for ``key`` (all that arrived until now) in one ``log_batch``; on an
        error they go back to the front of the buffer (the sender retries this call)."""
        with self._buffer_lock:
            self._scheduled.discard(key)
            batch = self._results.pop(key, [])
            ending = self._endings.pop(key, None)
        if not batch:
            return
        try:
            trial = batch[0][0]
            if ending is None:
                self._log_results(trial, [(r, t) for _, r, t in batch])
                return
            run_id = self.run_id(trial)
            if run_id in self._closed:
                return
            tags, metrics, status = self._ending(run_id, *ending)
            self._log_results(trial, [(r, t) for _, r, t in batch], tags, metrics)
            self._terminate(run_id, status, key)
        except BaseException:
            with self._buffer_lock:
                self._results[key] = batch + self._results.get(key, [])
                if ending is not None:
                    self._endings.setdefault(key, ending)
            raise

    def _trial_result(self, trial: Trial, result: dict, since: float | None = None) -> None:
        """Log one result of ``trial`` (the path without coalescing)."""
        self._log_results(trial, [(result, since)])

    def _log_results(
        self,
        trial: Trial,
        results: list[tuple[dict, float | None]],
        extra_tags: Mapping[str, str] | None = None,
        extra_metrics: list[Metric] | None = None,
    ) -> None:
        """Log ``results`` of ``trial`` (in the order they came): tags that changed, then every new epoch's
        metrics (backfilled ones included) in as few ``log_batch`` calls as MLflow allows; ``extra_tags``
        and ``extra_metrics`` (a run's ending) go with the last of them."""
        run_id = self.run_id(trial)
        steps: list[tuple[int, list[Metric]]] = []
        tags: dict[str, str] = {}
        last = self._last_step.get(run_id, 0)
        for result, _ in results:
            last = self._result_tags_and_steps(run_id, result, last, steps, tags)
        self._log_steps(run_id, steps, {**tags, **(extra_tags or {})}, extra_metrics)
        # what the run now carries (only once the server has it: a failed call is sent again whole)
        for key, attr in (("mcel.node_id", "_nodes"), ("mcel.device", "_devices")):
            if key in tags:
                getattr(self, attr)[run_id] = tags[key]
        if "mcel.resumed_from_epoch" in tags:
            self._resumed[run_id] = int(tags["mcel.resumed_from_epoch"])
        now = time.monotonic()
        for _, since in results:
            if since is not None:
                self.lags.append(now - since)
        self.results_logged += len(results)

    def _result_tags_and_steps(
        self,
        run_id: str,
        result: dict,
        last: int,
        steps: list[tuple[int, list[Metric]]],
        tags: dict[str, str],
    ) -> int:
        """Add the tags ``result`` changes to ``tags`` and its new epochs to ``steps``; returns the last step."""
        node = result.get("node_id")
        if node and tags.get("mcel.node_id", self._nodes.get(run_id)) != str(node):
            tags["mcel.node_id"] = str(node)
        device = result.get("device")  # a retry on another node may differ
        if device and tags.get("mcel.device", self._devices.get(run_id)) != str(device):
            tags["mcel.device"] = str(device)
        start = result.get("start_epoch")
        if start and int(tags.get("mcel.resumed_from_epoch", self._resumed.get(run_id) or 0)) != int(start):
            tags["mcel.resumed_from_epoch"] = str(start)
        if result.get("diverged"):
            return last
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        ts = int(result.get("timestamp", 0) * 1000) or 0
        # epochs reported before a driver died but never delivered: the resumed trial carries them
        for entry in sorted(result.get("backfill") or (), key=lambda e: int(e.get("epoch", 0))):
            earlier = int(entry.get("epoch", 0))
            if last < earlier < step:
                steps.append((earlier, _epoch_metrics(entry, ts, earlier)))
                last = earlier
        if step <= last:  # already logged (a retry or a resumed search replays epochs from a checkpoint)
            return last
        steps.append((step, _epoch_metrics(result, ts, step)))
        return step

    def _log_steps(
        self,
        run_id: str,
        steps: list[tuple[int, list[Metric]]],
        tags: Mapping[str, str] | None = None,
        extra: list[Metric] | None = None,
    ) -> None:
        """The metrics of several epochs (``tags`` with the first call, ``extra`` metrics with the last) in
        as few ``log_batch`` calls as MLflow allows (:data:`BATCH_METRICS` metrics each), each epoch at most
        once: epochs of an attempt that failed in flight are checked against the run's ``epoch`` history
        first. Advances the run's last step."""
        run_tags = [RunTag(k, v) for k, v in (tags or {}).items()]
        extra = list(extra or [])
        if not steps:
            if run_tags or extra:
                self.client.log_batch(run_id, metrics=extra, tags=run_tags)
            return
        newest = max(step for step, _ in steps)
        if any((run_id, step) in self._uncertain for step, _ in steps):
            # an earlier attempt failed in flight: the server may have stored some of it already
            logged = {m.step for m in self.client.get_metric_history(run_id, "epoch")}
            for step, _ in steps:
                self._uncertain.discard((run_id, step))
            steps = [(step, metrics) for step, metrics in steps if step not in logged]
        chunk: list[Metric] = []
        chunk_steps: list[int] = []
        for i, (step, metrics) in enumerate(steps):
            chunk.extend(metrics)
            chunk_steps.append(step)
            following = len(steps[i + 1][1]) if i + 1 < len(steps) else 0
            if i + 1 == len(steps) or len(chunk) + following > BATCH_METRICS:
                if i + 1 == len(steps) and extra:
                    if len(chunk) + len(extra) > BATCH_METRICS:
                        self.client.log_batch(run_id, metrics=extra)
                    else:
                        chunk.extend(extra)
                    extra = []
                if chunk or run_tags:
                    self._uncertain.update((run_id, s) for s in chunk_steps)
                    self.client.log_batch(run_id, metrics=chunk, tags=run_tags)
                    self.metric_batches += bool(chunk)
                    run_tags = []
                    self._uncertain.difference_update((run_id, s) for s in chunk_steps)
                self._last_step[run_id] = max(chunk_steps[-1], self._last_step.get(run_id, 0))
                chunk, chunk_steps = [], []
        if run_tags or extra:  # every epoch was there already
            self.client.log_batch(run_id, metrics=extra, tags=run_tags)
        self._last_step[run_id] = max(newest, self._last_step.get(run_id, 0))

    def on_checkpoint(
        self, iteration: int, trials: list[Trial], trial: Trial, checkpoint: Any, **info: Any
    ) -> None:
        self._checkpoints[self._key(trial)] = checkpoint

    def _latest_checkpoint(self, trial: Trial) -> Any:
        return self._checkpoints.get(self._key(trial)) or trial.checkpoint

    def _upload(self, run_id: str, checkpoint: Any, model: bool = False) -> dict | None:
        """Upload model.pt / ber_curve.csv / summary.json of ``checkpoint``; returns the summary. With
        ``model`` (a finished trial), also log it as an MLflow Model (``search.pyfunc``): once per run, its
        id kept in the run's ``mcel.model_id`` tag."""
        if checkpoint is None:
            return None
        import json

        summary = None
        if model:  # the imports warming since the search began: finished, not done twice at once
            prewarm_trial_end().join()
        with checkpoint.as_directory() as d:
            d = Path(d)
            if (d / "model.pt").exists():
                self.client.log_artifact(run_id, str(d / "model.pt"), artifact_path="checkpoint")
            for name in ("ber_curve.csv", "summary.json"):
                if (d / name).exists():
                    self.client.log_artifact(run_id, str(d / name))
            if (d / "summary.json").exists():
                summary = json.loads((d / "summary.json").read_text())
            if model and (d / "ber_curve.csv").exists():
                self._log_curve_views(run_id, d / "ber_curve.csv")
            from .trainable import INPUT_EXAMPLE_FILE

            example = d / INPUT_EXAMPLE_FILE
            if model and (d / "model.pt").exists() and example.exists():
                from .pyfunc import MODEL_ID_TAG, log_trial_model

                if MODEL_ID_TAG not in self.client.get_run(run_id).data.tags:
                    import numpy as np

                    model_id = log_trial_model(run_id, d / "model.pt", np.load(example), self.tracking_uri)
                    self.client.set_tag(run_id, MODEL_ID_TAG, model_id)
        return summary

    def _log_curve_views(self, run_id: str, curve_csv: Path) -> None:
        """The final BER curve as the MLflow UI shows it: a figure (``ber_curve.png``: mean accuracy against
        BER with its spread, ``analysis.plots.plot_ber_curves``) and a table (``ber_curve_table.json``: one
        row per BER with mean, std, min and the number of realizations, in %)."""
        import tempfile

        import pandas as pd

        from ..analysis.plots import plot_ber_curves

        records = pd.read_csv(curve_csv).assign(run_id=run_id)
        with tempfile.TemporaryDirectory() as tmp:
            drawn = plot_ber_curves(
                records, {run_id: "this trial"}, Path(tmp) / "ber_curve.png", title="BER curve"
            )
            self.client.log_artifact(run_id, str(Path(tmp) / "ber_curve.png"))
        table = drawn.drop(columns="run_id").rename(columns={"mean": "mean_acc_pct", "std": "std_acc_pct"})
        table["min_acc_pct"] = (
            (100.0 * records.groupby("ber")["accuracy"].min()).reindex(table["ber"]).to_numpy()
        )
        self.client.log_table(run_id, data=table, artifact_file="ber_curve_table.json")

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        # the checkpoint is taken now: by the time the call is sent a retry may have newer ones
        key = self._key(trial)
        self._end_ms[key] = _now_ms()
        self._ended_here.add(key)
        ending = (dict(trial.last_result or {}), self._latest_checkpoint(trial))
        if self.coalesce:
            with self._buffer_lock:
                if key in self._scheduled:  # its results wait for a queued call: that call ends the run too
                    self._endings[key] = ending
                    return
        self._enqueue(
            "_trial_complete",
            trial,
            dict(trial.last_result or {}),
            self._latest_checkpoint(trial),
            shard=self._key(trial),
        )

    def _trial_complete(self, trial: Trial, last_result: dict, checkpoint: Any = None) -> None:
        run_id = self.run_id(trial)
        if run_id in self._closed:
            return
        tags, metrics, status = self._ending(run_id, last_result, checkpoint)
        self._log_steps(run_id, [], tags, metrics)
        self._terminate(run_id, status, self._key(trial))

    def _ending(
        self, run_id: str, last_result: dict, checkpoint: Any
    ) -> tuple[dict[str, str], list[Metric], str]:
        """What a finished trial's run gets: its tags (``mcel.state``, ``mcel.error``), the final BER curve
        metrics and its MLflow status; uploads the checkpoint's files (and, for a completed trial, the
        MLflow Model) on the way."""
        if last_result.get("diverged"):
            error = redact_credentials(str(last_result.get("error", "diverged")))
            return {"mcel.state": "errored", "mcel.error": error[:5000]}, [], "FAILED"
        final = bool(last_result.get("final"))
        summary = self._upload(run_id, checkpoint, model=final)
        metrics = []
        if final and summary:
            ts = int(last_result.get("timestamp", 0) * 1000)
            step = int(last_result.get("epoch", 0))
            for point in summary["ber_curve"]:
                for kind, key in (("ber_acc", "mean"), ("ber_acc_std", "std"), ("ber_acc_min", "min")):
                    metrics.append(Metric(ber_metric_name(kind, point["ber"]), float(point[key]), ts, step))
        # a pruned trial was stopped, not finished: KILLED in the MLflow UI's status column
        return {"mcel.state": "completed" if final else "pruned"}, metrics, "FINISHED" if final else "KILLED"

    def _terminate(self, run_id: str, status: str, key: str) -> None:
        self.client.set_terminated(run_id, status, end_time=self._end_ms.get(key))
        self._closed.add(run_id)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._end_ms[self._key(trial)] = _now_ms()
        self._ended_here.add(self._key(trial))
        self._enqueue(
            "_trial_error",
            trial,
            _error_message(trial),
            self._latest_checkpoint(trial),
            shard=self._key(trial),
        )

    def _trial_error(self, trial: Trial, message: str, checkpoint: Any = None) -> None:
        run_id = self.run_id(trial)
        if run_id in self._closed:
            return
        message = redact_credentials(message)
        self.client.set_tag(run_id, "mcel.state", "errored")
        self.client.set_tag(run_id, "mcel.error", message[:5000])
        self._upload(run_id, checkpoint)
        self.client.set_terminated(run_id, "FAILED", end_time=self._end_ms.get(self._key(trial)))
        self._closed.add(run_id)


def _reported_epochs(checkpoint: Any) -> list[dict]:
    """Every epoch's scalar results kept in a checkpoint's ``trainer.pt`` (``search.trainable``), or []."""
    if checkpoint is None:
        return []
    from .trial_state import TRAINER_FILE, read_reported

    try:
        with checkpoint.as_directory() as d:
            path = Path(d) / TRAINER_FILE
            if not path.exists():
                return []
            return read_reported(path)
    except Exception as exc:  # an unreadable checkpoint: the run keeps what it has
        logger.warning("could not read the epochs of checkpoint %s: %s", checkpoint, exc)
        return []


def _error_message(trial: Trial) -> str:
    for attr in ("error_file",):
        path = getattr(trial, attr, None)
        if path and Path(path).exists():
            lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
            if lines:
                return lines[-1]
    return str(getattr(trial, "error_msg", None) or "trial failed")
