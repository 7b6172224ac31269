"""The check that keeps every module of the distribution under one name (see :mod:`mcel_search`)."""

from __future__ import annotations


def require_name(actual: str, expected: str) -> None:
    """Raise ImportError unless a subpackage is being imported as ``expected``.

    Called first thing by ``core/__init__.py``, ``search/__init__.py`` and ``analysis/__init__.py``. A
    top-level folder of the repository found on ``sys.path`` (Python puts the current directory there)
    would otherwise load as ``core`` beside the installed ``mcel_search.core``: two copies of every module,
    whose registries and exception classes differ, which fails far from the cause.
    """
    if actual != expected:
        raise ImportError(
            f"this folder is the package {expected!r}; import it by that name, not as {actual!r} "
            f"(install the project: pip install -e .)"
        )
