"""The Python API: run a search, or load a finished one, and get everything back as Python objects.

::

    import mcel_search

    result = mcel_search.run_search("configs/quickstart.yaml", trials_per_arch=4, train={"epochs": 2})
    result.trials                 # pandas DataFrame: one row per run (params, final metrics, state, run id,
                                  # checkpoint URI)
    result.selections             # one analysis.selection.Selection per (dataset, arch, bits, protocol)
    result.best                   # DataFrame: the selected point per group, its gain over CEL, its checkpoint
    result.fronts                 # {(dataset, arch, bits, protocol): Pareto front DataFrame}
    result.result_grids           # {study: Tune ResultGrid}: its trials and its CEL baseline (the result whose
                                  # config has _mcel_role: baseline; "<study>-baseline" for searches begun
                                  # before 2026-12-02, which ran it as a Tune run of its own)
    optuna.load_study(study_name=name, storage=url) for name, url in result.optuna_studies.items()

    later = mcel_search.load_results("quickstart", tracking_uri="sqlite:///mlflow.db")

``run_search(spec_or_path, **overrides)`` takes a spec file's path, a spec mapping (what the YAML holds) or a
validated :class:`~mcel_search.search.spec.SearchSpec`; ``overrides`` replace top-level keys of the spec,
mappings merged key by key (``train={"epochs": 2}`` changes the epochs only). The whole spec is validated
before anything starts, with every bad field in one :class:`~mcel_search.search.spec.SpecError`. The search
is exactly ``mcel search`` (``runner.run_search``: its own local Ray unless ``ray_address``, resume,
preflight checks); a search that ended without any completed trial raises ``NoResultError`` as the CLI
exits 4.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ..analysis.queries import checkpoint_uri, selections
from ..analysis.selection import GROUP_COLS, Selection
from ..core.errors import BadInputError, NoResultError
from .spec import SearchSpec, baseline_run_name, parse_spec, spec_to_dict


@dataclass
class SearchResult:
    """A search's results: the runs, the Pareto fronts and selections, and where everything lives."""

    experiment: str  # MLflow experiment name
    tracking_uri: str  # where the runs are (passwords never included)
    trials: pd.DataFrame  # one row per trial and baseline run: analysis.queries.runs_frame + checkpoint_uri
    selections: list[Selection]  # one per (dataset, arch, bits, protocol), analysis.selection rules
    target_ber: float  # the BER of ber_acc and of the paired gains
    optuna_studies: dict[str, str] = field(default_factory=dict)  # study name -> storage URL for load_study
    result_grids: dict[str, Any] = field(default_factory=dict)  # Tune ResultGrids; empty from load_results
    spec: SearchSpec | None = None  # the validated spec that ran (None from load_results)

    @property
    def fronts(self) -> dict[tuple, pd.DataFrame]:
        """The Pareto front (clean_acc, ber_acc) of each group, keyed by its (dataset, arch, bits, protocol)."""
        return {tuple(s.group.get(c) for c in GROUP_COLS): s.front for s in self.selections}

    @property
    def best(self) -> pd.DataFrame:
        """The selected point of each group (``Selection.summary()``: parameters, accuracies, tolerable BER,
        the paired gain over the CEL baseline and the verdict) with its ``checkpoint_uri``."""
        rows = [
            {**s.summary(), "checkpoint_uri": checkpoint_uri(s.row["run_id"])}
            for s in self.selections
            if s.row is not None
        ]
        return pd.DataFrame(rows)


def _merge(base: Any, over: Any) -> Any:
    """``over`` onto ``base``: mappings merged key by key (recursively), anything else replaced."""
    if isinstance(base, Mapping) and isinstance(over, Mapping):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base.get(k), v) if k in base else copy.deepcopy(v)
        return out
    return copy.deepcopy(over)


def load_search_spec(
    spec_or_path: str | os.PathLike | Mapping[str, Any] | SearchSpec, **overrides: Any
) -> SearchSpec:
    """The validated spec of ``spec_or_path`` with ``overrides`` applied (see the module docstring)."""
    from .spec_file import read_spec_data

    if isinstance(spec_or_path, SearchSpec):
        if not overrides:
            return spec_or_path
        data, source, early = spec_to_dict(spec_or_path), "<SearchSpec>", []
    elif isinstance(spec_or_path, Mapping):
        data, source, early = dict(spec_or_path), "<dict>", []
    elif isinstance(spec_or_path, str | os.PathLike):
        source = os.fspath(spec_or_path)
        data, early = read_spec_data(source)
    else:
        raise BadInputError(
            f"spec: {type(spec_or_path).__name__} is not allowed: a path to a YAML spec, a mapping or a SearchSpec"
        )
    if overrides:
        if not isinstance(data, Mapping):
            raise BadInputError(f"spec: {source} is not a mapping, so {sorted(overrides)} cannot be applied")
        data = _merge(data, overrides)
    return parse_spec(data, source=source, early=early)


def run_search(
    spec_or_path: str | os.PathLike | Mapping[str, Any] | SearchSpec,
    *,
    resume: bool = False,
    tracking_uri: str | None = None,
    storage_path: str | None = None,
    ray_address: str | None = None,
    num_cpus: int | None = None,
    verbose: int = 0,
    progress: bool = False,
    rule: str = "constraint",
    max_clean_drop: float = 1.0,
    **overrides: Any,
) -> SearchResult:
    """Validate, run (or resume with ``resume=True``) and return the search (module docstring).

    ``tracking_uri`` / ``storage_path`` override the spec's (as ``mcel search --tracking-uri/--storage``);
    ``ray_address`` joins an existing cluster, else a local Ray of ``num_cpus`` is started; ``verbose`` is
    Ray Tune's (0: quiet); ``progress=True`` draws ``mcel search``'s compact live view on stderr; ``rule`` and ``max_clean_drop`` pick the selected point per group. Raises
    ``SpecError`` (every bad field), ``NoResultError`` (a study without a completed trial), and whatever
    ``mcel search`` would exit non-zero for.
    """
    from ..core.redact import redact_credentials
    from .runner import run_search as _run
    from .spec import check_overrides

    spec = load_search_spec(spec_or_path, **overrides)
    check_overrides(tracking_uri, storage_path)
    outcome = _run(
        spec,
        resume=resume,
        tracking_uri=tracking_uri,
        storage_path=storage_path,
        ray_address=ray_address,
        num_cpus=num_cpus,
        verbose=verbose,
        progress=progress,
    )
    empty = [s.study for s in outcome.studies if not any(t["state"] == "completed" for t in s.trials)]
    if empty:
        raise NoResultError(f"search {spec.name!r}: no completed trial in {', '.join(empty)}")
    result = load_results(
        spec.experiment_name(), tracking_uri=outcome.tracking_uri, rule=rule, max_clean_drop=max_clean_drop
    )
    result.spec = spec
    result.tracking_uri = redact_credentials(outcome.tracking_uri)
    for s in outcome.studies:
        result.optuna_studies[s.study] = s.optuna_storage
        result.result_grids[s.study] = s.grid
        if s.baseline_grid is not None:
            result.result_grids[baseline_run_name(s.study)] = s.baseline_grid
    return result


def load_results(
    experiment: str,
    tracking_uri: str | None = None,
    *,
    rule: str = "constraint",
    max_clean_drop: float = 1.0,
    weights: Mapping[str, float] | None = None,
    target_ber: float | None = None,
) -> SearchResult:
    """A finished (or running) search's results from MLflow alone: the runs table, the selections and the
    Optuna studies the parent runs name (their ``mcel.optuna_storage`` tag). No Tune ResultGrids (they
    live with the driver that ran the search)."""
    from ..core.redact import redact_credentials

    df, sels, ber = selections(
        experiment,
        tracking_uri=tracking_uri,
        rule=rule,
        max_clean_drop=max_clean_drop,
        weights=weights,
        target_ber=target_ber,
    )
    df = df.assign(checkpoint_uri=[checkpoint_uri(r) for r in df["run_id"]])
    return SearchResult(
        experiment=experiment,
        tracking_uri=redact_credentials(tracking_uri or ""),
        trials=df,
        selections=sels,
        target_ber=ber,
        optuna_studies=_optuna_studies(experiment, tracking_uri),
    )


def _optuna_studies(experiment: str, tracking_uri: str | None) -> dict[str, str]:
    """Study name -> Optuna storage URL, as the parent runs' ``mcel.optuna_storage`` tag records it (searches
    from before the tag existed: not listed)."""
    from ..analysis.queries import runs_frame
    from .runner import OPTUNA_STORAGE_TAG

    parents = runs_frame(
        experiment, tracking_uri=tracking_uri, filters={"mcel.role": "parent"}, include_parents=True
    )
    col = f"tags.{OPTUNA_STORAGE_TAG}"
    if parents.empty or col not in parents:
        return {}
    return {
        str(r["study"]): str(r[col]) for _, r in parents.iterrows() if isinstance(r[col], str) and r["study"]
    }
