"""Names that come from outside (MLflow tags, run names, spec fields) turned into file names safely.

A tag such as ``arch = "../../x"`` must never make ``mcel best --download`` or ``mcel report --out`` write
outside the directory the user named. :func:`child_path` is the one way such a name becomes a path: the
name is reduced to one plain component and the result is checked to lie inside the base directory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import BadInputError

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
#: Longest component kept (file systems allow 255 bytes).
MAX_COMPONENT = 200


def path_component(name: object) -> str:
    """``name`` as one safe path component: runs of characters other than ``[A-Za-z0-9_.-]`` (``/``,
    ``\\``, NUL, spaces, ...) become ``_``, leading dots are dropped (no ``..``, no hidden file), at most
    :data:`MAX_COMPONENT` characters; an empty result is ``_``."""
    text = _UNSAFE.sub("_", str(name)).lstrip(".")[:MAX_COMPONENT]
    return text or "_"


def child_path(base: str | os.PathLike, name: object) -> Path:
    """``base / path_component(name)``, guaranteed to lie inside ``base`` (else :class:`BadInputError`)."""
    root = Path(base).resolve()
    path = root / path_component(name)
    if path.parent != root:  # cannot happen after path_component; kept as the invariant's check
        raise BadInputError(f"name {name!r} would leave the directory {str(root)!r}")
    return path
