"""mcel-search: bit-error-tolerant quantized networks trained with the Margin Cross-Entropy Loss (MCEL).

One import name for the whole distribution. The repository keeps its top-level folders, each installed as
a subpackage of this one (``pyproject.toml``, ``[tool.setuptools] package-dir``)::

    core/      -> mcel_search.core      the science (torch only)
    analysis/  -> mcel_search.analysis  Pareto fronts, selection, MLflow queries, plots, reports
    search/    -> mcel_search.search    Ray Tune, Optuna, MLflow, the ``mcel`` command

Inside the package every import is relative, and each subpackage refuses to load under any other name
(:func:`mcel_search._guard.require_name`), so no module can exist twice in one process (``core.losses`` beside
``mcel_search.core.losses`` would be two registries, two exception classes): run from the repository root,
``import core`` raises ImportError naming ``mcel_search.core``.
"""

__version__ = "0.1.0"

#: The Python API (``mcel_search.search.api``), imported on first use so that ``import mcel_search`` stays
#: light (no Ray, Optuna or MLflow until a search is run or loaded).
_API = ("run_search", "load_results", "load_search_spec", "SearchResult")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from .search import api

        return getattr(api, name)
    raise AttributeError(f"module 'mcel_search' has no attribute {name!r}")
