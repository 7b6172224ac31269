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


def credentials_to_env(uri: str) -> str:
    """``uri`` without its password, which moves into this process's environment where the client reads it.

    An ``http(s)://user:password@host`` MLflow URI becomes ``http(s)://host`` with
    ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` set (MLflow's own basic-auth variables), so
    the URI that a search hands to its callbacks, searchers and schedulers, which Ray Tune pickles into the
    storage path (``tuner.pkl``, experiment state), carries no secret; a resumed search is given the URI
    again. Other URIs are returned unchanged (mask them with :func:`redact_credentials` for output).
    """
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.scheme.lower() not in ("http", "https") or parts.password is None:
        return uri
    os.environ["MLFLOW_TRACKING_USERNAME"] = unquote(parts.username or "")
    os.environ["MLFLOW_TRACKING_PASSWORD"] = unquote(parts.password)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
