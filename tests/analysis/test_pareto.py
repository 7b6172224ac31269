"""Pareto mask and front: hand-written tables (answers derived in comments) and a brute-force property test."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcel_search.analysis import pareto
from mcel_search.analysis.pareto import pareto_front, pareto_mask

NAN = float("nan")


def table(rows: list[tuple], columns: tuple[str, ...] = ("run_id", "state", "clean_acc", "ber_acc")):
    return pd.DataFrame(rows, columns=list(columns))


def brute_force_mask(values: list[list[float]], directions: list[str]) -> list[bool]:
    """The definition, literally: O(n^2 k) pure Python, no numpy."""
    sign = [1.0 if d == "min" else -1.0 for d in directions]
    pts = [[v * s for v, s in zip(row, sign, strict=True)] for row in values]

    def has_nan(p: list[float]) -> bool:
        return any(math.isnan(v) for v in p)

    def dominates(p: list[float], q: list[float]) -> bool:
        return all(a <= b for a, b in zip(p, q, strict=True)) and any(
            a < b for a, b in zip(p, q, strict=True)
        )

    out = []
    for j, q in enumerate(pts):
        if has_nan(q):
            out.append(False)
            continue
        out.append(not any(i != j and not has_nan(p) and dominates(p, q) for i, p in enumerate(pts)))
    return out


# ----------------------------------------------------------------------------------------- pareto_mask


def test_mask_two_objectives_max_max():
    # a(.90,.50)  b(.80,.70)  c(.85,.60)  d(.80,.60)  e(.70,.70)
    # d: c has .85 > .80 and .60 >= .60 -> dominated.   e: b has .80 > .70 and .70 >= .70 -> dominated.
    # a: best clean, nobody >= .90.  b: best ber with best clean among ber .70.  c: only a has more clean,
    # but a has less ber -> kept.
    values = np.array([[0.90, 0.50], [0.80, 0.70], [0.85, 0.60], [0.80, 0.60], [0.70, 0.70]])
    assert pareto_mask(values, ["max", "max"]).tolist() == [True, True, True, False, False]


def test_mask_min_direction_flips_the_answer():
    # same points, clean to MINIMIZE, ber to maximize: lower-is-better values (clean, -ber):
    # a(.90,-.50) b(.80,-.70) c(.85,-.60) d(.80,-.60) e(.70,-.70)
    # e: lowest clean (.70) and the best ber (tied with b) -> on the front; e dominates b (.70 < .80, equal ber),
    # d (.70 < .80, -.70 < -.60), c and a (both coordinates better). Front = {e}.
    values = np.array([[0.90, 0.50], [0.80, 0.70], [0.85, 0.60], [0.80, 0.60], [0.70, 0.70]])
    assert pareto_mask(values, ["min", "max"]).tolist() == [False, False, False, False, True]
    # both min: lower-is-better = raw values. e(.70,.70) vs a(.90,.50): a has lower ber -> both kept;
    # d(.80,.60): a has ber .50 < .60 but clean .90 > .80; e has clean .70 < .80 but ber .70 > .60 -> kept.
    # b(.80,.70) dominated by d (.80 <= .80, .60 < .70); c(.85,.60) dominated by d (.80 < .85, equal ber).
    assert pareto_mask(values, ["min", "min"]).tolist() == [True, False, False, True, True]


def test_mask_three_objectives():
    # objectives (max, max, min).  p0 (1, 1, 5)  p1 (1, 1, 6)  p2 (0, 0, 0)  p3 (0, 2, 9)  p4 (0, 1, 9)
    # p1 is p0 with a worse 3rd objective -> dominated by p0.  p2 is the only one with 3rd = 0 -> kept.
    # p3 has the best 2nd objective -> kept.  p4 is dominated by p3 (0>=0, 2>1, 9<=9) and by p0.
    values = np.array([[1, 1, 5], [1, 1, 6], [0, 0, 0], [0, 2, 9], [0, 1, 9]], dtype=float)
    assert pareto_mask(values, ["max", "max", "min"]).tolist() == [True, False, True, True, False]


def test_mask_ties_and_duplicates():
    # rows 0 and 1 are equal front points: neither is strictly better -> both kept.
    # rows 2 and 3 are equal but dominated by row 0 (.9 > .8 and .5 >= .5) -> a dominated duplicate pair.
    values = np.array([[0.9, 0.5], [0.9, 0.5], [0.8, 0.5], [0.8, 0.5], [0.5, 0.9]])
    assert pareto_mask(values, ["max", "max"]).tolist() == [True, True, False, False, True]


def test_mask_all_equal_points_all_kept():
    values = np.full((4, 3), 0.7)
    assert pareto_mask(values, ["max", "min", "max"]).tolist() == [True] * 4


def test_mask_nan_rows_never_on_front_and_never_dominate():
    # row 0 (.99, NaN) would dominate rows 2 and 3 in clean alone, but a NaN row never dominates;
    # row 1 (NaN, .99) likewise. Rows 2 (.6,.4) and 3 (.4,.6) do not dominate each other -> both kept.
    values = np.array([[0.99, NAN], [NAN, 0.99], [0.6, 0.4], [0.4, 0.6], [NAN, NAN]])
    assert pareto_mask(values, ["max", "max"]).tolist() == [False, False, True, True, False]


def test_mask_single_row_and_empty_and_one_objective():
    assert pareto_mask(np.array([[0.3, 0.1]]), ["max", "max"]).tolist() == [True]
    assert pareto_mask(np.array([[NAN, 0.1]]), ["max", "max"]).tolist() == [False]
    assert pareto_mask(np.empty((0, 2)), ["max", "max"]).shape == (0,)
    # one objective: every row attaining the best value (here max = 3, twice).
    assert pareto_mask(np.array([[3.0], [1.0], [3.0], [2.0]]), ["max"]).tolist() == [True, False, True, False]


def test_mask_infinities_are_ordinary_values():
    # -inf clean with the best ber is still incomparable with (1, 0); +inf clean dominates (1, 0).
    values = np.array([[-np.inf, 1.0], [1.0, 0.0], [np.inf, 0.0]])
    assert pareto_mask(values, ["max", "max"]).tolist() == [True, False, True]


@pytest.mark.parametrize(
    ("values", "directions", "match"),
    [
        (np.zeros((3, 2)), ["max", "up"], "'up'"),
        (np.zeros((3, 2)), ["max"], "1 directions for 2"),
        (np.zeros(3), ["max"], "2-D"),
        (np.zeros((3, 0)), [], "at least one objective"),
        (np.zeros((3, 1)), "max", "string"),
    ],
)
def test_mask_validation(values, directions, match):
    with pytest.raises(ValueError, match=match):
        pareto_mask(values, directions)


def test_mask_blocked_path_matches_brute_force(monkeypatch):
    # force tiny blocks so the block loop runs many times with a ragged last block.
    monkeypatch.setattr(pareto, "_BLOCK_ELEMENTS", 7)
    rng = np.random.default_rng(0)
    x = rng.random(53)
    # a trade-off (y ~ 1 - x) rounded to 1 decimal: a long front with many ties, plus a 3rd objective.
    values = np.round(np.column_stack([x, 1 - x + 0.1 * rng.random(53), rng.random(53)]), 1)
    values[rng.random(53) < 0.1, 1] = NAN
    directions = ["max", "max", "min"]
    expected = brute_force_mask(values.tolist(), directions)
    assert sum(expected) >= 3  # the table is not trivial
    assert pareto_mask(values, directions).tolist() == expected


@st.composite
def value_tables(draw):
    k = draw(st.integers(1, 4))
    n = draw(st.integers(0, 25))
    small = st.sampled_from([0.0, 1.0, 2.0, 3.0])  # few distinct values: many ties
    wide = st.floats(allow_nan=False)  # includes +-inf
    nan = st.just(NAN)
    element = [small, st.one_of(small, nan), st.one_of(wide, small, nan)][draw(st.integers(0, 2))]
    values = draw(st.lists(st.lists(element, min_size=k, max_size=k), min_size=n, max_size=n))
    directions = draw(st.lists(st.sampled_from(["max", "min"]), min_size=k, max_size=k))
    return values, directions, k


@settings(max_examples=150, deadline=None)
@given(value_tables())
def test_mask_matches_brute_force_definition(case):
    values, directions, k = case
    arr = np.array(values, dtype=float).reshape(len(values), k)
    got = pareto_mask(arr, directions)
    assert got.dtype == bool and got.shape == (len(values),)
    assert got.tolist() == brute_force_mask(values, directions)


# ---------------------------------------------------------------------------------------- pareto_front


def test_front_default_objectives_keeps_index_and_excludes_bad_states_and_nan():
    df = table(
        [
            ("a", "completed", 0.90, 0.50),  # front (best clean)
            ("b", "completed", 0.80, 0.70),  # front (best ber among completed)
            ("c", "completed", 0.80, 0.60),  # dominated by b
            ("p", "pruned", 0.99, 0.99),  # would dominate all, but pruned -> excluded
            ("e", "errored", 0.95, 0.95),  # likewise
            ("r", "running", 0.95, 0.95),  # likewise
            ("n", "completed", NAN, 0.99),  # NaN -> excluded, does not dominate b
        ]
    )
    df.index = [10, 11, 12, 13, 14, 15, 16]
    front = pareto_front(df)
    assert front["run_id"].tolist() == ["a", "b"]
    assert front.index.tolist() == [10, 11]
    assert list(front.columns) == list(df.columns)


def test_front_valid_states_option():
    df = table([("a", "completed", 0.90, 0.50), ("p", "pruned", 0.95, 0.60)])
    assert pareto_front(df)["run_id"].tolist() == ["a"]
    # counting pruned trials too: p dominates a.
    assert pareto_front(df, valid_states=("completed", "pruned"))["run_id"].tolist() == ["p"]
    assert pareto_front(df, valid_states=None)["run_id"].tolist() == ["p"]


def test_front_three_objectives_with_min():
    # (clean max, ber max, margin min):  x(.9,.5,8)  y(.9,.5,4)  z(.8,.6,16)  w(.8,.6,32)
    # x is y with a larger margin -> dominated; w is z with a larger margin -> dominated.
    df = pd.DataFrame(
        {
            "run_id": ["x", "y", "z", "w"],
            "state": ["completed"] * 4,
            "clean_acc": [0.9, 0.9, 0.8, 0.8],
            "ber_acc": [0.5, 0.5, 0.6, 0.6],
            "margin": [8.0, 4.0, 16.0, 32.0],
        }
    )
    front = pareto_front(df, {"clean_acc": "max", "ber_acc": "max", "margin": "min"})
    assert front["run_id"].tolist() == ["y", "z"]
    # without the margin objective, x/y and z/w are ties and all four stay.
    assert pareto_front(df)["run_id"].tolist() == ["x", "y", "z", "w"]


def test_front_ties_kept_and_all_equal():
    df = table([("a", "completed", 0.7, 0.7), ("b", "completed", 0.7, 0.7), ("c", "completed", 0.7, 0.7)])
    assert pareto_front(df)["run_id"].tolist() == ["a", "b", "c"]


def test_front_single_and_empty():
    one = table([("a", "completed", 0.5, 0.1)])
    assert pareto_front(one)["run_id"].tolist() == ["a"]
    empty = table([])
    out = pareto_front(empty)
    assert out.empty and list(out.columns) == list(empty.columns)
    only_pruned = table([("p", "pruned", 0.9, 0.9)])
    out = pareto_front(only_pruned)
    assert out.empty and list(out.columns) == list(only_pruned.columns)


def test_front_validation_names_the_problem():
    df = table([("a", "completed", 0.5, 0.1)])
    with pytest.raises(ValueError, match="ber_at_2pct"):
        pareto_front(df, {"clean_acc": "max", "ber_at_2pct": "max"})
    with pytest.raises(ValueError, match="'maximize'"):
        pareto_front(df, {"clean_acc": "maximize"})
    with pytest.raises(ValueError, match="'maximize'"):  # validated on an empty table too
        pareto_front(table([]), {"clean_acc": "maximize"})
    with pytest.raises(ValueError, match="at least one"):
        pareto_front(df, {})
    with pytest.raises(ValueError, match="'state'"):
        pareto_front(df.drop(columns="state"))
