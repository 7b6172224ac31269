"""Opening an MLflow tracking store for reading, and whether a server answers at all.

Read-only commands (``mcel pareto``, ``best``, ``report``, ``evaluate runs:/...``) go through
:func:`open_store`: it never creates a store (MLflow would create ``mlflow.db`` or an ``mlruns/`` folder
on first contact with a path that holds none) and it refuses a server that does not accept a connection
within :data:`CONNECT_TIMEOUT_S`, in one line, instead of MLflow's minutes of retries.
:func:`check_reachable` is the same connection test for the search's pre-launch checks.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

from mlflow.tracking import MlflowClient

from ..core.errors import BadInputError
from ..core.redact import redact_credentials

#: Seconds a connection to a tracking server (or a database) may take before it counts as unreachable.
CONNECT_TIMEOUT_S = 5.0
#: The store a command reads when neither ``--tracking-uri`` nor ``$MLFLOW_TRACKING_URI`` names one.
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
_DEFAULT_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "mysql": 3306, "ray": 10001}


class StoreUnavailableError(BadInputError):
    """A tracking store that is not there (no such local store) or does not answer."""


def absolute_sqlite_uri(uri: str) -> str:
    """``sqlite:///relative.db`` made absolute (Ray workers and later commands find the same file); any
    other URI unchanged."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
    return uri


def default_tracking_uri(uri: str | None = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else the demo store; relative SQLite paths made absolute."""
    return absolute_sqlite_uri(uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI)


def check_reachable(
    field_name: str, uri: str, what: str, error: type[BadInputError] = StoreUnavailableError
) -> None:
    """A TCP connection to the host and port of ``uri`` opens within :data:`CONNECT_TIMEOUT_S`; else
    ``error`` with one line: the field, the URI (credentials masked), why, and ``what`` is allowed."""
    parts = urlsplit(uri)
    scheme = parts.scheme.split("+")[0].lower()
    try:
        host, port = parts.hostname, parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:
        host, port = None, None
    shown = redact_credentials(uri)
    if not host or not port:
        raise error(f"{field_name}: {shown!r} — no host and port in it; allowed: {what}")
    start = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
        raise error(
            f"{field_name}: {shown!r} — unreachable ({reason} after {time.monotonic() - start:.1f}s); "
            f"allowed: {what}"
        ) from None


def check_mlflow_server(
    field_name: str, uri: str, what: str, error: type[BadInputError] = StoreUnavailableError
) -> None:
    """``uri`` (``http(s)://``) accepts a connection *and* answers as an MLflow tracking server (its
    experiments-search API returns JSON) within :data:`CONNECT_TIMEOUT_S`; else ``error``, one line. A port
    that another program holds would otherwise fail every MLflow call of the search after it started."""
    import requests

    check_reachable(field_name, uri, what, error)
    shown = redact_credentials(uri)
    api = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search"
    try:
        env_auth = (os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD"))
        auth = env_auth if all(env_auth) and urlsplit(uri).password is None else None  # as MLflow would
        answer = requests.get(api, params={"max_results": 1}, timeout=CONNECT_TIMEOUT_S, auth=auth)
    except requests.RequestException as exc:
        raise error(
            f"{field_name}: {shown!r} — no HTTP answer ({type(exc).__name__}); allowed: {what}"
        ) from None
    if answer.status_code in (401, 403):
        raise error(
            f"{field_name}: {shown!r} — refused the credentials (HTTP {answer.status_code}); allowed: {what}"
        )
    try:
        body = answer.json()
    except ValueError:
        body = None
    if answer.status_code != 200 or not isinstance(body, dict):
        raise error(
            f"{field_name}: {shown!r} — answers but is not an MLflow tracking server (HTTP "
            f"{answer.status_code} from {'/api/2.0/mlflow/experiments/search'}); allowed: {what}"
        )


def local_store_path(uri: str) -> Path | None:
    """The file (``sqlite:///``) or folder (``file:`` or a bare path) of a local store, else None."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :].split("?", 1)[0]).expanduser()
    if uri.startswith("file:"):
        rest = uri[len("file:") :]
        return Path(rest[2:] if rest.startswith("//") else rest).expanduser()
    if "://" not in uri:
        return Path(uri).expanduser()
    return None


def open_store(tracking_uri: str | None = None) -> tuple[MlflowClient, str]:
    """``(client, resolved uri)`` of a store that exists and answers; never creates one.

    Raises:
        StoreUnavailableError: a local store that is not there, or a server that does not accept a
            connection within :data:`CONNECT_TIMEOUT_S`.
    """
    uri = default_tracking_uri(tracking_uri)
    what = "the tracking URI a search wrote to (--tracking-uri or $MLFLOW_TRACKING_URI)"
    local = local_store_path(uri)
    if local is not None:
        exists = local.is_file() if uri.startswith("sqlite:") else local.is_dir()
        if not exists:
            raise StoreUnavailableError(
                f"tracking.uri: {redact_credentials(uri)!r} — no MLflow store there (nothing was tracked to it; "
                f"none is created by reading); allowed: {what}"
            )
    elif urlsplit(uri).scheme.lower() in ("http", "https"):
        check_mlflow_server("tracking.uri", uri, f"an MLflow tracking server: {what}")
    elif urlsplit(uri).scheme.split("+")[0].lower() in ("postgresql", "mysql"):
        check_reachable("tracking.uri", uri, f"a reachable database: {what}")
    return MlflowClient(uri), uri
