"""Pareto fronts over the trials table (pure functions: numpy arrays and pandas frames in, the same out).

Definition. Every objective is first turned into *lower-is-better* (a ``"max"`` column is negated), so
the rest of the code knows one direction only. Row ``i`` *dominates* row ``j`` iff

    v_i[c] <= v_j[c] for every objective c   and   v_i[c] < v_j[c] for at least one c

(in the lower-is-better values ``v``). A row is on the *Pareto front* iff no other row dominates it.

Edge cases:

- Equal points do not dominate each other (no strict improvement), so duplicates and ties all stay on
  the front together; if every row is equal, every row is on the front.
- A row with a NaN in any objective is never on the front and never dominates another row (it is
  dropped before the comparison, as optuna drops failed trials from ``_get_pareto_front_trials``).
- ``+-inf`` are ordinary, comparable values.
- With one objective the front is every row that attains the best value.

The layout follows optuna's ``study/_multi_objective.py``: normalize directions first, then one pure mask
function; :func:`pareto_front` is the table-level wrapper.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ..core.errors import BadInputError

DIRECTIONS = ("max", "min")
#: The search's two objectives and their directions: what every study optimizes (Optuna), every trial
#: reports and every front is taken over. The one definition (search and selection import it).
OBJECTIVES: Mapping[str, str] = {"clean_acc": "max", "ber_acc": "max"}

# Upper bound on the elements of the (n, block, k) comparison tensor built per step; keeps memory at a few
# tens of MB for tens of thousands of trials while staying fully vectorized within each block.
_BLOCK_ELEMENTS = 4_000_000


def _signs(directions: Sequence[str]) -> np.ndarray:
    """+1 for ``"min"``, -1 for ``"max"``: multiplying by it makes every column lower-is-better."""
    if isinstance(directions, str):
        raise BadInputError(f"directions must be a sequence of 'max'/'min', got the string {directions!r}")
    signs = []
    for d in directions:
        if d not in DIRECTIONS:
            raise BadInputError(f"unknown direction {d!r}: expected one of {DIRECTIONS}")
        signs.append(1.0 if d == "min" else -1.0)
    return np.asarray(signs, dtype=float)


def pareto_mask(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Boolean mask of the rows of ``values`` that lie on the Pareto front.

    Args:
        values: array of shape ``(n, k)``, one row per point, one column per objective.
        directions: ``"max"`` or ``"min"`` for each of the ``k`` columns.

    Returns:
        ``bool`` array of shape ``(n,)``: ``True`` iff the row has no NaN and no other (NaN-free) row is
        at least as good in every objective and strictly better in at least one. Ties are kept.

    Raises:
        ValueError: ``values`` is not 2-D, ``k`` is 0, ``len(directions) != k`` or a direction is unknown.

    Cost: ``O(n^2 k)`` comparisons, vectorized in blocks of candidate rows.
    """
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 2:
        raise BadInputError(f"values must be a 2-D array (n, k), got shape {arr.shape}")
    n, k = arr.shape
    signs = _signs(directions)
    if k == 0:
        raise BadInputError("need at least one objective (values has 0 columns)")
    if len(signs) != k:
        raise BadInputError(f"got {len(signs)} directions for {k} objective columns")

    lower = arr * signs  # every column lower-is-better from here on
    valid = ~np.isnan(lower).any(axis=1)
    pts = lower[valid]
    m = len(pts)
    dominated = np.zeros(m, dtype=bool)
    block = max(1, _BLOCK_ELEMENTS // max(1, m * k))
    for start in range(0, m, block):
        cand = pts[start : start + block]  # (B, k): rows whose domination we decide in this step
        others = pts[:, None, :]  # (m, 1, k): potential dominators
        no_worse = (others <= cand[None, :, :]).all(axis=2)  # (m, B)
        better = (others < cand[None, :, :]).any(axis=2)  # (m, B)
        dominated[start : start + block] = (no_worse & better).any(axis=0)

    mask = np.zeros(n, dtype=bool)
    mask[np.flatnonzero(valid)] = ~dominated
    return mask


def pareto_front(
    df: pd.DataFrame,
    objectives: Mapping[str, str] = OBJECTIVES,
    *,
    valid_states: Sequence[str] | None = ("completed",),
) -> pd.DataFrame:
    """The rows of ``df`` on the Pareto front of ``objectives`` (index and column order kept).

    Args:
        df: trials table (one row per trial).
        objectives: ``{column: "max" | "min"}``, any number (>= 1) of columns.
        valid_states: only rows whose ``state`` is in this collection take part (pruned, errored and running
            trials are excluded by default); ``None`` disables the filter (then no ``state`` column is needed).

    Returns:
        The front rows, in their original order. Rows with NaN in any objective are excluded. An empty
        ``df`` (or no valid row) gives an empty frame with the same columns.

    Raises:
        ValueError: no objectives, an objective column or the ``state`` column is missing (naming it), or a
            direction is unknown (naming it).
    """
    if not objectives:
        raise BadInputError("need at least one objective")
    cols = list(objectives)
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise BadInputError(f"unknown objective column(s) {missing}: table has {list(df.columns)}")
    directions = [objectives[c] for c in cols]
    _signs(directions)  # validate even when the table is empty
    if valid_states is not None:
        if isinstance(valid_states, str):
            valid_states = (valid_states,)
        if "state" not in df.columns:
            raise BadInputError("column 'state' is needed to filter by valid_states (pass valid_states=None)")
        df = df[df["state"].isin(list(valid_states))]
    if df.empty:
        return df.iloc[0:0]
    values = df[cols].to_numpy(dtype=float, na_value=np.nan)
    return df[pareto_mask(values, directions)]
