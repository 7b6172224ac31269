"""Masking of credentials in anything the product prints, logs or tracks.

``scheme://user:password@host`` becomes ``scheme://user:***@host``; a ``password=``, ``token=``,
``secret=``, ``access_key=``... query value becomes ``***``. Every line the ``mcel`` command prints for an
error, every MLflow param and tag with a URI, and the plan of a search go through
:func:`redact_credentials`.
"""

from __future__ import annotations

import os
import re

_USERINFO_RE = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/@:\s]*):(?P<secret>[^/@\s]*)@")
_SECRET_QUERY_RE = re.compile(
    r"(?P<head>[?&](?:password|passwd|pwd|token|secret|access_key|secret_key)=)[^&\s]*", re.I
)

#: What replaces a password or token in anything logged or printed.
REDACTED = "***"


def redact_credentials(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` URI and every ``password=`` /
    ``token=`` query value replaced by ``***``; used for everything logged to MLflow or printed."""
    text = _USERINFO_RE.sub(lambda m: f"{m.group('head')}:{REDACTED}@", text)
    return _SECRET_QUERY_RE.sub(lambda m: f"{m.group('head')}{REDACTED}", text)


#: Where a password moves, per URI scheme: the variables the clients of that scheme read themselves.
PASSWORD_ENV: dict[str, tuple[str | None, str]] = {
    "http": ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"),  # MLflow's basic auth
    "https": ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"),
    "postgresql": (None, "PGPASSWORD"),  # libpq (psycopg2)
    "mysql": (None, "MYSQL_PWD"),  # libmysqlclient (mysqlclient)
}


def credentials_to_env(uri: str) -> str:
    """``uri`` without its password, which moves into this process's environment where the client reads it.

    ``http(s)://user:password@host`` (MLflow) becomes ``http(s)://host`` with ``MLFLOW_TRACKING_USERNAME`` /
    ``MLFLOW_TRACKING_PASSWORD`` set; ``postgresql://user:password@host/db`` keeps its user and gets
    ``PGPASSWORD``; ``mysql://`` gets ``MYSQL_PWD`` (:data:`PASSWORD_ENV`). So the URIs a search hands to its
    callbacks, searchers and schedulers, which Ray Tune pickles into the storage path (``tuner.pkl``, the
    experiment state), carry no secret; a resumed search is given the URI again. A URI without a password,
    of another scheme, or whose variable already holds another password is returned unchanged (mask it
    with :func:`redact_credentials` for output).
    """
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(uri)
    scheme = parts.scheme.split("+")[0].lower()
    if scheme not in PASSWORD_ENV or parts.password is None:
        return uri
    user_var, password_var = PASSWORD_ENV[scheme]
    password = unquote(parts.password)
    if os.environ.get(password_var, password) != password:
        return uri  # two stores with two passwords: the variable can hold one of them only
    os.environ[password_var] = password
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    host += f":{parts.port}" if parts.port else ""
    if user_var is not None:
        os.environ[user_var] = unquote(parts.username or "")
        netloc = host
    else:
        netloc = f"{parts.username}@{host}" if parts.username else host
    return urlunsplit(parts._replace(netloc=netloc))
