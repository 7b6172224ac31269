"""Checks that run before a search starts anything: what the spec cannot know on its own.

:func:`preflight` checks that the storage path can be written, the tracking store is usable (a writable
SQLite/file directory, or a server that accepts a connection within :data:`~mcel_search.analysis.stores.CONNECT_TIMEOUT_S`), the
data files are there and no search of the same name is in the way. A problem is one
:class:`PreflightError` (or :class:`SearchStateError`) line naming the field, the value and what is
allowed; nothing has been started or written when it is raised.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..analysis.stores import check_mlflow_server, check_reachable, local_store_path
from ..core.errors import BadInputError
from ..core.redact import redact_credentials
from .spec import SearchSpec, tune_run_names


class SearchStateError(BadInputError):
    """An existing run in the way (without --resume), or nothing to resume."""


class PreflightError(BadInputError):
    """The environment cannot run the spec (storage, tracking server, data); one line: field, value, allowed."""


def resolve_storage_path(path: str) -> str:
    """Absolute local path, or the URI unchanged for remote storage (``s3://``, ``gs://``...)."""
    if "://" in path:
        return path
    return str(Path(path).expanduser().resolve())


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


#: Longest file name and path POSIX file systems take (Linux: 255 and 4096 bytes).
NAME_MAX, PATH_MAX = 255, 4096


def _check_writable_dir(field_name: str, value: str, directory: Path) -> None:
    """``directory`` exists as a writable directory or can be created (its nearest existing ancestor is one)."""
    allowed = "a directory this user can write to (created if missing)"
    shown = value if len(value) <= 120 else f"{value[:60]}...{value[-40:]}"
    too_long = [part for part in directory.parts if len(os.fsencode(part)) > NAME_MAX]
    if too_long or len(os.fsencode(str(directory))) > PATH_MAX:
        what = f"a name of {len(too_long[0])} characters" if too_long else "a path this long"
        raise PreflightError(
            f"{field_name}: {shown!r} — {what}: the file system takes at most {NAME_MAX} bytes per name and "
            f"{PATH_MAX} per path; allowed: {allowed}"
        )
    base = _nearest_existing(directory)
    if not base.is_dir():
        raise PreflightError(
            f"{field_name}: {value!r} — not writable: {str(base)!r} is a file, not a directory; allowed: {allowed}"
        )
    if not os.access(base, os.W_OK | os.X_OK):
        raise PreflightError(
            f"{field_name}: {value!r} — not writable: no write permission on {str(base)!r}; allowed: {allowed}"
        )


def _reachable(field_name: str, uri: str, what: str) -> None:
    check_reachable(field_name, uri, what, PreflightError)


def _check_db_url(field_name: str, url: str, what: str) -> None:
    scheme = url.split(":", 1)[0].split("+")[0].lower()
    if scheme == "sqlite":
        db = local_store_path(url)
        shown = redact_credentials(url)
        _check_writable_dir(field_name, shown, db.resolve().parent)
        if db.is_dir():
            raise PreflightError(f"{field_name}: {shown!r} — is a directory; allowed: {what}")
        if db.is_file() and db.stat().st_size > 0:
            with db.open("rb") as fh:
                if fh.read(16) != b"SQLite format 3\x00":
                    raise PreflightError(
                        f"{field_name}: {shown!r} — exists and is not an SQLite database; allowed: {what}"
                    )
    elif scheme in ("postgresql", "mysql"):
        _reachable(field_name, url, what)


def _check_data(spec: SearchSpec) -> None:
    """The data set loads in the driver (a local Ray instance shares its file system with the trials)."""
    from ..core.data import load_dataset
    from ..core.data.registry import DATA_ROOT_ENV, DatasetNotFoundError, resolve_data_root

    d = spec.data
    try:
        load_dataset(d.name, root=d.root, split_seed=d.split_seed, limit_train=1, limit_test=1)
    except DatasetNotFoundError as exc:
        root = str(resolve_data_root(d.root))
        field_name = (
            "dataset.root"
            if d.root is not None
            else (DATA_ROOT_ENV if os.environ.get(DATA_ROOT_ENV) else "dataset.root (default)")
        )
        first = " ".join(str(exc).split("\n")[0].split())
        raise PreflightError(
            f"{field_name}: {root!r} — {first}; allowed: a directory holding the {d.name} files "
            f"(set dataset.root or {DATA_ROOT_ENV})"
        ) from None


def check_ray_address(address: str) -> None:
    """``--ray-address`` names a cluster that accepts a connection within
    :data:`~mcel_search.analysis.stores.CONNECT_TIMEOUT_S` (``auto`` is left to Ray): a closed port would
    otherwise hang in ``ray.init`` for minutes."""
    if address == "auto":
        return
    uri = address if "://" in address else f"ray://{address}"
    what = "the address of a running Ray cluster: ray://<head>:10001 or <head>:6379"
    check_reachable("--ray-address", uri, what, PreflightError)


def check_local_resources(spec: SearchSpec, num_cpus: int | None) -> None:
    """A search on a new local Ray can run here at all: one trial's ``resources`` fit this machine (Ray
    would wait for ever for a node that never comes), ``train.device`` names a device this machine has
    (every trial would fail on it), and ``--num-cpus`` is a count. Raises :class:`PreflightError`."""
    import torch

    cpus = os.cpu_count() or 1
    if num_cpus is not None and not (1 <= num_cpus <= 4096):
        raise PreflightError(f"--num-cpus: {num_cpus} — an integer >= 1 (CPUs of the local Ray instance)")
    available = num_cpus if num_cpus is not None else cpus
    if spec.resources.cpu > available:
        raise PreflightError(
            f"resources.cpu: {spec.resources.cpu:g} — more than the {available} CPUs of the local Ray "
            "instance, so no trial could ever start; allowed: at most that many, or --ray-address of a "
            "cluster whose nodes have them"
        )
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if spec.resources.gpu > gpus:
        raise PreflightError(
            f"resources.gpu: {spec.resources.gpu:g} — this machine has {gpus} GPU(s), so no trial could ever "
            "start on the local Ray instance; allowed: 0, or --ray-address of a cluster with GPUs"
        )
    device = spec.train.device
    if device.startswith("cuda") and (gpus == 0 or (":" in device and int(device.split(":")[1]) >= gpus)):
        raise PreflightError(
            f"train.device: {device!r} — not available here ({gpus} CUDA device(s)), so every trial would "
            "fail; allowed: auto or cpu, or --ray-address of a cluster with GPUs"
        )


#: Optuna user attribute and MLflow tag holding a search's identity (its study instance, not its name).
SEARCH_ID_KEY = "mcel.search_id"


def stored_search_ids(optuna_url: str, studies: list[str]) -> dict[str, str | None]:
    """``{study: search id}`` of the studies that exist in the Optuna storage ``optuna_url`` (None: a study
    from before search ids), read without creating anything (a missing SQLite file holds none)."""
    import optuna

    local = local_store_path(optuna_url)
    if optuna_url.startswith("sqlite:") and local is not None and not local.is_file():
        return {}
    storage = optuna.storages.RDBStorage(optuna_url, skip_table_creation=True)
    out: dict[str, str | None] = {}
    for study in studies:
        try:
            study_id = storage.get_study_id_from_name(study)
        except KeyError:
            continue
        out[study] = storage.get_study_user_attrs(study_id).get(SEARCH_ID_KEY)
    return out


def recorded_search_ids(tracking_uri: str, experiment: str) -> dict[str, set[str | None]]:
    """``{study: search ids}`` of the parent runs the MLflow experiment holds, read without creating a
    store (a missing SQLite file or store directory holds none)."""
    from mlflow.tracking import MlflowClient

    local = local_store_path(tracking_uri)
    if local is not None and not (local.is_file() if tracking_uri.startswith("sqlite:") else local.is_dir()):
        return {}
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return {}
    out: dict[str, set[str | None]] = {}
    for run in client.search_runs([found.experiment_id], filter_string="tags.`mcel.role` = 'parent'"):
        study = run.data.tags.get("mcel.study")
        if study:
            out.setdefault(study, set()).add(run.data.tags.get(SEARCH_ID_KEY))
    return out


def check_search_identity(spec: SearchSpec, tracking_uri: str, optuna_url: str) -> None:
    """The MLflow experiment holds no other search of the same study names: a study recorded there must be
    the very study instance in this search's Optuna storage (same search id). Otherwise the new trials
    would take the old runs' places (their trial keys are the study's trial numbers) and the summary would
    be the old search's. Raises :class:`SearchStateError` naming the experiment and what is allowed."""
    studies = [spec.study_name(arch, bits) for arch, bits in spec.studies()]
    recorded = recorded_search_ids(tracking_uri, spec.experiment_name())
    if not any(study in recorded for study in studies):
        return
    stored = stored_search_ids(optuna_url, studies)
    for study in studies:
        if study in recorded and (study not in stored or recorded[study] != {stored[study]}):
            where = "is not in" if study not in stored else "is another study than the one in"
            raise SearchStateError(
                f"tracking.experiment: {spec.experiment_name()!r} — already holds a search of study "
                f"{study!r} that {where} this search's Optuna storage {redact_credentials(optuna_url)!r}: its "
                "runs would be taken for this search's; allowed: --resume with that search's storage.path, "
                "another spec name, or another tracking.experiment"
            )


def preflight(
    spec: SearchSpec, tracking_uri: str, storage_path: str, *, resume: bool = False, check_data: bool = True
) -> None:
    """Check, before anything is started or written, that ``spec`` can run here; raise :class:`PreflightError`.

    * ``MCEL_FAULT_INJECT`` (tests) parses;
    * the local storage path (and the Optuna SQLite file) can be written: its nearest existing ancestor is a
      writable directory;
    * the tracking store is usable: a SQLite/file store's directory is writable, an ``http(s)://`` server
      (or a database) accepts a TCP connection within :data:`~mcel_search.analysis.stores.CONNECT_TIMEOUT_S` seconds;
    * the data set's files are there (``check_data``; skipped for a remote Ray cluster, whose workers have
      their own data root);
    * without ``resume``, no search of the same name exists under the storage path.
    """
    from .faults import FAULT_ENV, parse_faults

    try:
        parse_faults(os.environ.get(FAULT_ENV))
    except ValueError as exc:
        raise PreflightError(str(exc)) from None
    tracking_what = (
        "a reachable MLflow tracking server (is it running? is the SSH tunnel open?) or sqlite:///<file>"
    )
    scheme = (
        tracking_uri.split(":", 1)[0].lower()
        if "://" in tracking_uri or tracking_uri.startswith("file:")
        else None
    )
    if scheme in ("http", "https"):
        check_mlflow_server("tracking.uri", tracking_uri, tracking_what, PreflightError)
    elif scheme is not None and scheme.split("+")[0] in ("sqlite", "postgresql", "mysql"):
        _check_db_url("tracking.uri", tracking_uri, tracking_what)
    elif scheme == "file" or scheme is None:
        _check_writable_dir("tracking.uri", tracking_uri, local_store_path(tracking_uri).resolve())
    if "://" not in storage_path:
        _check_writable_dir("storage.path", storage_path, Path(storage_path))
    # the Optuna storage in force: the spec's URL, or the default SQLite file under the storage path
    _check_db_url(
        "storage.optuna",
        spec.optuna_storage(storage_path),
        "a writable sqlite:///<file> or a reachable database (default: <storage.path>/<name>/optuna.db)",
    )
    if check_data:
        _check_data(spec)
    if not resume and "://" not in storage_path:
        from ray import tune

        for arch, bits in spec.studies():
            study = spec.study_name(arch, bits)
            for name in tune_run_names(study):
                if tune.Tuner.can_restore(str(Path(storage_path) / name)):
                    raise SearchStateError(
                        f"storage.path: {storage_path!r} — a search named {name!r} already exists there; "
                        "allowed: --resume to continue it, or another spec name or storage path"
                    )
