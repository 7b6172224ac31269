"""Selection rules, the paired CEL comparison and its verdict, on hand-written tables (answers derived)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from mcel_search.analysis.selection import (
    RULES,
    Selection,
    format_selection,
    select,
    select_all,
)

NAN = float("nan")
COLUMNS = [
    "run_id",
    "role",
    "state",
    "dataset",
    "arch",
    "bits",
    "loss",
    "margin",
    "b",
    "logit_scale",
    "clean_acc",
    "ber_acc",
    "ber_acc_std",
]


def trial(run_id, clean, ber, margin=8.0, *, b=16.0, s=1.0, state="completed", **over):
    row = {
        "run_id": run_id,
        "role": "trial",
        "state": state,
        "dataset": "fashionmnist",
        "arch": "vgg3",
        "bits": 4,
        "loss": "mcel",
        "margin": margin,
        "b": b,
        "logit_scale": s,
        "clean_acc": clean,
        "ber_acc": ber,
        "ber_acc_std": 0.05,
    }
    row.update(over)
    return row


def baseline(run_id, clean, ber, *, state="completed", **over):
    return trial(run_id, clean, ber, NAN, b=NAN, s=NAN, state=state, role="baseline", loss="cel", **over)


def frame(*rows):
    return pd.DataFrame(list(rows), columns=COLUMNS)


# ---------------------------------------------------------------------------------------- constraint


def constraint_table():
    # best clean of the group = CEL baseline's .925; 1 point below is .915.
    return frame(
        baseline("cel", 0.925, 0.50),
        trial("t1", 0.915, 0.60, 2.0),  # exactly 1.0 point below the baseline: qualifies (inclusive)
        trial("t2", 0.910, 0.70, 4.0),  # 1.5 points below the baseline: out (in, if CEL were ignored)
        trial("t3", 0.990, 0.99, 8.0, state="pruned"),  # not completed: neither candidate nor reference
        trial("t4", 0.990, 0.99, 8.0, state="errored"),
        trial("t5", 0.890, 0.90, 16.0),  # 3.5 points below: out
    )


def test_constraint_reference_includes_baseline_clean_accuracy():
    sel = select(constraint_table())
    # candidates within 1 pt of .925: only t1 -> t1. (Reference from trials only, .915, would admit t2.)
    assert sel.rule == "constraint"
    assert sel.row["run_id"] == "t1"
    assert sel.baseline["run_id"] == "cel"
    assert "92.50%" in sel.message


def test_constraint_larger_drop_admits_more_trials():
    # 2 points below .925 = .905: t1 (.915) and t2 (.910) qualify; t2 has the higher BER accuracy.
    assert select(constraint_table(), max_clean_drop=2.0).row["run_id"] == "t2"
    # 4 points below = .885: t5 (.890, BER .90) joins and wins.
    assert select(constraint_table(), max_clean_drop=4.0).row["run_id"] == "t5"


def test_constraint_without_baseline_uses_best_trial():
    df = constraint_table()
    df = df[df["role"] == "trial"]
    # best completed trial clean .915; 1 pt below = .905: t1 and t2 qualify -> t2 (BER .70).
    sel = select(df)
    assert sel.row["run_id"] == "t2" and sel.baseline is None


def test_constraint_none_qualifies():
    # 0.5 points below .925 = .920: no trial reaches it.
    sel = select(constraint_table(), max_clean_drop=0.5, realizations=lambda rid: [0.1, 0.2])
    assert sel.row is None and sel.gain is None
    assert "no completed trial within 0.5 points" in sel.message
    assert sel.verdict().startswith("no setting selected")
    assert sel.summary()["run_id"] is None and math.isnan(sel.summary()["clean_acc"])


def test_constraint_tie_breaks():
    df = frame(
        baseline("cel", 0.90, 0.40),
        trial("a", 0.895, 0.70, 2.0),  # same BER as b, lower clean -> loses to b
        trial("b", 0.899, 0.70, 8.0),  # same BER and clean as c, larger margin -> loses to c
        trial("c", 0.899, 0.70, 4.0),  # winner
        trial("d", 0.899, 0.70, NAN),  # NaN margin sorts last
    )
    assert select(df).row["run_id"] == "c"
    assert select(df.iloc[[0, 1, 2]]).row["run_id"] == "b"  # without c: b beats a on clean
    assert select(df.iloc[[0, 4, 2]]).row["run_id"] == "b"  # NaN margin loses to 8


def test_errored_baseline_and_nan_trials_are_ignored():
    df = frame(
        baseline("cel-bad", 0.99, 0.99, state="errored"),
        baseline("cel", 0.90, 0.40),
        trial("nan-ber", 0.95, NAN),  # no BER accuracy: not a candidate, not the clean reference
        trial("ok", 0.895, 0.60),
    )
    sel = select(df)
    assert sel.baseline["run_id"] == "cel"
    assert sel.row["run_id"] == "ok"  # reference .90 (baseline): .895 is within 1 point


def test_no_completed_trials():
    df = frame(baseline("cel", 0.9, 0.4), trial("p", 0.9, 0.9, state="pruned"))
    for rule in RULES:
        sel = select(df, rule)
        assert sel.row is None and sel.front.empty
        assert "no completed trial" in sel.message


# ------------------------------------------------------------------------------------ knee / weighted


def knee_table():
    # front (clean, ber): A (.95,.10)  B (.93,.60)  C (.88,.70)  D (.80,.75);  E (.85,.55) dominated by C.
    # normalized over the front (clean range .80-.95, ber range .10-.75):
    #   A (1, 0)   B (.8667, .7692)   C (.5333, .9231)   D (0, 1)
    # chord D-A is x + y = 1; distance toward (1, 1) is (x + y - 1)/sqrt 2:
    #   B .6359/1.414 = .450,  C .4564/1.414 = .323,  A = D = 0  ->  knee B.
    # weighted .5/.5: A .525, B .765, C .790, D .775, E .700 -> C.
    return frame(
        baseline("cel", 0.94, 0.20),
        trial("A", 0.95, 0.10, 0.0),
        trial("B", 0.93, 0.60, 4.0),
        trial("C", 0.88, 0.70, 8.0),
        trial("D", 0.80, 0.75, 16.0),
        trial("E", 0.85, 0.55, 32.0),
    )


def test_knee_picks_clear_knee():
    sel = select(knee_table(), "knee")
    assert sel.row["run_id"] == "B"
    assert sorted(sel.front["run_id"]) == ["A", "B", "C", "D"]  # baseline and E not on the front


def test_knee_ignores_points_below_the_chord():
    # front P1 (.9,.5), P2 (.6,.6), P3 (.5,.9) -> normalized (1,0), (.25,.25), (0,1): P2 lies below the chord
    # (signed distance -.354), so the best is an extreme (distance 0); tie -> higher BER -> P3.
    df = frame(trial("P1", 0.9, 0.5), trial("P2", 0.6, 0.6), trial("P3", 0.5, 0.9))
    assert select(df, "knee").row["run_id"] == "P3"


def test_knee_with_one_or_two_front_points():
    # one front point X dominates Y.
    one = frame(trial("X", 0.9, 0.8), trial("Y", 0.8, 0.7))
    sel = select(one, "knee")
    assert sel.row["run_id"] == "X" and len(sel.front) == 1
    # two front points: the one with the higher BER accuracy.
    two = frame(trial("X", 0.9, 0.6), trial("Y", 0.8, 0.7), trial("Z", 0.7, 0.5))
    assert select(two, "knee").row["run_id"] == "Y"


def test_weighted_rule():
    df = knee_table()
    assert select(df, "weighted").row["run_id"] == "C"  # see knee_table
    assert select(df, "weighted", weights={"clean_acc": 1.0, "ber_acc": 0.0}).row["run_id"] == "A"
    assert select(df, "weighted", weights={"ber_acc": 2.0}).row["run_id"] == "D"  # missing key = 0
    # .2 clean + .8 ber: A .27, B .666, C .736, D .76, E .61 -> D.
    assert select(df, "weighted", weights={"clean_acc": 0.2, "ber_acc": 0.8}).row["run_id"] == "D"


def test_weighted_ties_go_to_front_point():
    # clean-only weights: X and Y tie on the score; Y has the higher BER (X is dominated by Y).
    df = frame(trial("X", 0.9, 0.5), trial("Y", 0.9, 0.6), trial("Z", 0.8, 0.9))
    assert select(df, "weighted", weights={"clean_acc": 1.0, "ber_acc": 0.0}).row["run_id"] == "Y"


def test_weighted_float_noise_does_not_break_ties():
    # .5 * .70 + .5 * .94 = .82 = .5 * .71 + .5 * .93 exactly, but in floating point the second sum is
    # .8200000000000001; the scores must count as tied, so the tie-break (higher BER) picks L.
    df = frame(trial("L", 0.70, 0.94), trial("H", 0.71, 0.93))
    assert 0.5 * 0.71 + 0.5 * 0.93 > 0.5 * 0.70 + 0.5 * 0.94  # the float noise this test is about
    assert select(df, "weighted").row["run_id"] == "L"


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        ({"clean_acc": -0.1, "ber_acc": 1.0}, ">= 0"),
        ({"clean_acc": 0.0, "ber_acc": 0.0}, "all be 0"),
        ({"clean_acc": NAN, "ber_acc": 1.0}, ">= 0"),
        ({"mlm": 1.0}, "'mlm'"),
    ],
)
def test_weighted_validation(weights, match):
    with pytest.raises(ValueError, match=match):
        select(knee_table(), "weighted", weights=weights)


def test_unknown_rule_lists_rules():
    with pytest.raises(ValueError, match=r"'best'.*constraint.*knee.*weighted"):
        select(knee_table(), "best")


def test_other_argument_errors():
    with pytest.raises(ValueError, match="max_clean_drop"):
        select(knee_table(), max_clean_drop=-1.0)
    with pytest.raises(ValueError, match="max_clean_drop"):
        select(knee_table(), max_clean_drop=NAN)
    with pytest.raises(ValueError, match="'role'"):
        select(knee_table().drop(columns="role"))
    two_groups = pd.concat([knee_table(), frame(trial("r", 0.9, 0.5, arch="resnet18"))])
    with pytest.raises(ValueError, match="'arch'.*select_all"):
        select(two_groups)


# ------------------------------------------------------------------------------ gain, verdict, summary


BASE_R = [0.50, 0.70, 0.55, 0.65, 0.60]
SIG_D = [0.04, 0.045, 0.035, 0.042, 0.038]
# mean .04; sd = sqrt((0 + 25 + 25 + 4 + 4)e-6 / 4) = .0038079; t_{.975,4} = 2.7764451
# half = 2.7764451 * .0038079 / sqrt 5 = .0047281 -> CI [3.53, 4.47] points.
NONSIG_D = [0.01, 0.02, 0.03]  # mean 2 points, half 4.3027 / sqrt 3 = 2.484 points -> [-0.48, +4.48]


def gain_table():
    return frame(
        baseline("cel", 0.920, 0.55),
        trial("mcel-8", 0.915, 0.60, 8.0, b=16.0, s=1.0, ber_acc_std=0.03),
        trial("mcel-2", 0.800, 0.40, 2.0),
    )


def realizations_from(cand, base):
    table = {"mcel-8": cand, "cel": base}
    return lambda run_id: table[run_id]


def test_verdict_significant_gain():
    cand = [x + d for x, d in zip(BASE_R, SIG_D, strict=True)]
    sel = select(gain_table(), realizations=realizations_from(cand, BASE_R), target_ber=0.01)
    assert sel.row["run_id"] == "mcel-8"
    assert sel.gain.significant and sel.gain.n == 5
    assert sel.verdict() == "MCEL m=8 b=16 s=1 beats CEL at BER 1%: +4.00 points [95% CI +3.53, +4.47]"


def test_verdict_positive_but_not_significant():
    base = BASE_R[:3]
    cand = [x + d for x, d in zip(base, NONSIG_D, strict=True)]
    sel = select(gain_table(), realizations=realizations_from(cand, base), target_ber=0.01)
    assert sel.gain.mean > 0 and not sel.gain.significant
    assert sel.verdict() == (
        "the search found no significant gain over CEL at BER 1%: +2.00 points [95% CI -0.48, +4.48]"
    )


def test_verdict_significantly_worse():
    cand = [x - d for x, d in zip(BASE_R, SIG_D, strict=True)]
    sel = select(gain_table(), realizations=realizations_from(cand, BASE_R), target_ber=0.02)
    assert sel.verdict() == (
        "the search found no gain over CEL at BER 2%; MCEL m=8 b=16 s=1 is significantly worse: "
        "-4.00 points [95% CI -4.47, -3.53]"
    )


def test_verdict_without_realizations_or_baseline():
    sel = select(gain_table())  # .60 - .55 = +5 points, no interval
    assert sel.gain is None
    assert sel.verdict() == (
        "MCEL m=8 b=16 s=1 vs CEL at the target BER: +5.00 points in mean accuracy "
        "(no paired realizations given: significance not tested)"
    )
    no_base = gain_table().iloc[1:]
    sel = select(no_base, realizations=lambda rid: pytest.fail("must not be called"))
    assert sel.gain is None and "no completed CEL baseline" in sel.verdict()


def test_summary_fields():
    cand = [x + d for x, d in zip(BASE_R, SIG_D, strict=True)]
    sel = select(gain_table(), realizations=realizations_from(cand, BASE_R), target_ber=0.01)
    s = sel.summary()
    assert (s["dataset"], s["arch"], s["bits"]) == ("fashionmnist", "vgg3", 4)
    assert (s["margin"], s["b"], s["logit_scale"]) == (8.0, 16.0, 1.0)
    assert s["relative_separation"] == 0.25  # 8 / (2 * 16)
    assert (s["clean_acc"], s["ber_acc"], s["ber_acc_std"]) == (0.915, 0.60, 0.03)
    assert s["clean_acc_std"] == 0.0 and s["baseline_clean_acc_std"] == 0.0
    assert (s["baseline_clean_acc"], s["baseline_ber_acc"], s["baseline_ber_acc_std"]) == (0.92, 0.55, 0.05)
    assert s["gain_mean"] == pytest.approx(4.0)  # points
    assert (s["gain_low"], s["gain_high"]) == pytest.approx((3.5272, 4.4728), abs=1e-4)
    assert s["significant"] is True and s["gain_n"] == 5
    assert s["verdict"] == sel.verdict()
    assert s["run_id"] == "mcel-8" and s["baseline_run_id"] == "cel"


def test_summary_relative_separation_nan_without_margin():
    df = frame(trial("mhl", 0.9, 0.6, NAN, b=NAN, s=NAN, loss="mhl"))
    s = select(df).summary()
    assert math.isnan(s["relative_separation"]) and s["significant"] is None
    assert s["verdict"].startswith("MHL selected")


# ---------------------------------------------------------------------------------- select_all, format


def test_select_all_sorted_groups():
    df = pd.concat(
        [
            frame(trial("v16", 0.9, 0.5, bits=16), baseline("c16", 0.9, 0.4, bits=16)),
            frame(trial("v8", 0.9, 0.6, bits=8)),
            frame(trial("r2", 0.8, 0.3, arch="resnet18", bits=2)),
        ],
        ignore_index=True,
    )
    sels = select_all(df)
    # sorted by (dataset, arch, bits): resnet18 < vgg3, and bits numerically 8 < 16.
    assert [s.row["run_id"] for s in sels] == ["r2", "v8", "v16"]
    assert [s.group for s in sels] == [
        {"dataset": "fashionmnist", "arch": "resnet18", "bits": 2, "protocol": "default"},
        {"dataset": "fashionmnist", "arch": "vgg3", "bits": 8, "protocol": "default"},
        {"dataset": "fashionmnist", "arch": "vgg3", "bits": 16, "protocol": "default"},
    ]
    # a table without the protocol column is our protocol's; two protocols never share a front
    paper = df[df["run_id"] == "v8"].assign(protocol="paper", run_id="p8")
    mixed = pd.concat([df.assign(protocol="default"), paper], ignore_index=True)
    groups = [(s.group["bits"], s.group["protocol"]) for s in select_all(mixed)]
    assert groups == [(2, "default"), (8, "default"), (8, "paper"), (16, "default")]
    assert sels[2].baseline["run_id"] == "c16" and sels[1].baseline is None
    assert [s.rule for s in select_all(df, rule="knee")] == ["knee"] * 3
    assert select_all(df.iloc[0:0]) == []
    with pytest.raises(ValueError, match="'seed'"):
        select_all(df, group_cols=("seed",))


def test_format_selection_marks_selected_and_baseline():
    cand = [x + d for x, d in zip(BASE_R, SIG_D, strict=True)]
    sel = select(gain_table(), realizations=realizations_from(cand, BASE_R), target_ber=0.01)
    text = format_selection(sel)
    lines = text.splitlines()
    assert lines[-1] == sel.verdict()
    starred = [ln for ln in lines if ln.lstrip().startswith("*")]
    # the selected row: margin 8, b 16, s 1, m/(2b) .25, clean 91.50, ber 60.00 +- 3.00
    assert len(starred) == 1 and starred[0].split() == [
        "*",
        "8",
        "16",
        "1",
        "0.25",
        "91.50",
        "60.00",
        "±",
        "3.00",
    ]
    cel = [ln for ln in lines if ln.lstrip().startswith("CEL")]
    assert len(cel) == 1 and cel[0].split() == ["CEL", "-", "-", "-", "-", "92.00", "55.00", "±", "5.00"]
    # the front has only mcel-8 (mcel-2 is dominated): header + 2 rows between title and verdict.
    assert len(lines) == 5 and "m/(2b)" in lines[1]


def test_format_selection_empty():
    sel = Selection("knee", None, frame().iloc[0:0], None, None, "no completed trial", None)
    text = format_selection(sel)
    assert "(no completed trials)" in text and text.splitlines()[-1].startswith("no setting selected")


# ---------------------------------------------------------------------------------------- tolerable


def tolerable_table():
    # best clean = baseline .925; floor 1 point below = .915
    return frame(
        baseline("cel", 0.925, 0.50, tolerable_ber=0.002),
        trial("t1", 0.920, 0.60, 2.0, tolerable_ber=0.004),
        trial("t2", 0.916, 0.55, 4.0, tolerable_ber=0.009),  # the most tolerant above the floor
        trial("t3", 0.900, 0.70, 8.0, tolerable_ber=0.050),  # more tolerant, but 2.5 points below: out
        trial("t4", 0.924, 0.80, 16.0, tolerable_ber=NAN),  # best ber_acc, no tolerable BER recorded
    ).assign(tolerable_ber=[0.002, 0.004, 0.009, 0.050, NAN])


def test_tolerable_rule_takes_the_highest_tolerable_ber_above_the_clean_floor():
    sel = select(tolerable_table(), "tolerable")
    assert sel.row["run_id"] == "t2"
    assert "highest tolerable BER among 2 of 4 trials within 1 points" in sel.message
    assert sel.summary()["tolerable_ber"] == 0.009 and sel.summary()["baseline_tolerable_ber"] == 0.002
    # the constraint rule on the same table picks by ber_acc instead
    assert select(tolerable_table(), "constraint").row["run_id"] == "t4"
    # a looser floor admits t3
    assert select(tolerable_table(), "tolerable", max_clean_drop=3.0).row["run_id"] == "t3"


def test_tolerable_rule_without_the_column_selects_nothing_and_says_why():
    df = tolerable_table().drop(columns=["tolerable_ber"])
    sel = select(df, "tolerable")
    assert sel.row is None and "has a tolerable_ber" in sel.message
    assert "tolerable" in RULES


def test_format_selection_shows_the_tolerable_ber_column_when_recorded():
    text = format_selection(select(tolerable_table(), "tolerable"))
    header = text.splitlines()[1]
    assert header.split()[-3:] == ["tolerable", "BER", "%"]
    row = next(line for line in text.splitlines() if line.lstrip().startswith("*"))
    assert row.split()[-1] == "0.9"  # 0.009 in percent
    assert "tolerable" not in format_selection(select(constraint_table()))


def test_format_selection_marks_every_row_with_the_ci_when_every_row_has_it():
    df = constraint_table().assign(ber_acc_ci=0.012)
    text = format_selection(select(df))
    assert "% ± 95% CI" in text.splitlines()[1]
    rows = [ln for ln in text.splitlines()[2:-1] if "±" in ln]
    assert rows and all(ln.split()[-1] == "1.20" for ln in rows)
    # one row without it: the std for every row instead (never two kinds of bars in one table)
    df.loc[df["run_id"] == "cel", "ber_acc_ci"] = NAN
    mixed = format_selection(select(df))
    assert "% ± std" in mixed.splitlines()[1] and "1.20" not in mixed
