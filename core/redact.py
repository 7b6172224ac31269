"""Masking of credentials in anything the product prints, logs or tracks.

``scheme://user:password@host`` becomes ``scheme://user:***@host``; a ``password=``, ``token=``,
``secret=``, ``access_key=``... query value becomes ``***``. Every line the ``mcel`` command prints for an
error, every MLflow param and tag with a URI, and the plan of a search go through
:func:`redact_credentials`.
"""

from __future__ import annotations

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
