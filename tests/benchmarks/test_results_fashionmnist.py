"""The FashionMNIST reproduction's report (``benchmarks/results_fashionmnist.py``): the committed cache
renders, and the paired differences / MLM ratios it prints match a hand computation from the cached
per-realization accuracies."""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import results_fashionmnist as rf  # noqa: E402

CACHE = ROOT / "benchmarks" / "cache" / "fashionmnist"


def _args(**over) -> argparse.Namespace:
    """The script's defaults (the committed run's setting), as its parser gives them."""
    ns = argparse.Namespace(
        bits=4,
        epochs=4,
        batch_size=256,
        lr=1e-3,
        step_size=10,
        gamma=0.5,
        limit_train=20000,
        limit_test=4000,
        seed=0,
        margins=[16.0, 64.0, 128.0],
        b=64.0,
        logit_scale=1.0,
        mhl_b=[16.0],
        mhl_scale=1.0,
        train_ber=[0.01],
        reps=10,
        sweep_seed=0,
        bers=[0.0, 0.001, 0.005, 0.01, 0.02, 0.05],
        key_ber=0.01,
        shift_ber=0.01,
        shift_reps=3,
    )
    for k, v in over.items():
        setattr(ns, k, v)
    return ns


def _cached(args: argparse.Namespace) -> list[dict]:
    out = []
    for m in rf.models(args):
        path = CACHE / f"{args.bits}b-{rf.cache_key(m, args)}.json"
        assert path.exists(), f"the committed cache lacks {m.name} ({path.name}): rerun `make results`"
        out.append({**json.loads(path.read_text()), "key": m.key})
    return out


def test_committed_cache_is_complete_and_has_the_promised_shape() -> None:
    args = _args()
    results = _cached(args)
    assert [r["name"] for r in results] == [
        "CEL",
        "MCEL m=16",
        "MCEL m=64",
        "MCEL m=128",
        "MHL b=16",
        "CEL + flips p=0.01",
    ]
    for r in results:
        assert set(r["acc"]) == {str(b) for b in args.bers}
        assert all(len(v) == 10 for v in r["acc"].values())  # R = 10 realizations per BER
        assert len(set(r["acc"]["0.0"])) == 1  # BER 0: the clean accuracy, 10 times
        assert [h["epoch"] for h in r["history"]] == [1, 2, 3, 4]


def test_report_numbers_match_a_hand_computation() -> None:
    args = _args()
    results = _cached(args)
    costs = {r["key"]: 1.0 for r in results}
    text = "\n".join(rf.render(results, args, n_test=4000, costs=costs))
    cel, mcel16 = results[0], results[1]
    # paired difference at 1%, mean and t interval, by hand
    d = [100 * (a - c) for a, c in zip(mcel16["acc"]["0.01"], cel["acc"]["0.01"], strict=True)]
    mean, sd = statistics.mean(d), statistics.stdev(d)
    half = 2.262157 * sd / math.sqrt(10)  # t_{0.975, 9}
    row = next(line for line in text.splitlines() if line.startswith("| MCEL m=16 |") and "[" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[4] == f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}]"
    wins = sum(x > 0 for x in d)
    assert cells[-1] == f"{wins}/{sum(x == 0 for x in d)}/{sum(x < 0 for x in d)}"
    # MLM ratio of the last epoch in the accuracy table
    ratio = mcel16["history"][-1]["mlm"] / cel["history"][-1]["mlm"]
    acc_row = next(line for line in text.splitlines() if line.startswith("| MCEL m=16 |") and "±" in line)
    assert f"| {ratio:.2f}x |" in acc_row
    # the accuracy cell is mean +- sample std of the 10 realizations
    accs = [100 * a for a in mcel16["acc"]["0.01"]]
    assert f"{statistics.mean(accs):.1f} ± {statistics.stdev(accs):.1f}" in acc_row


def test_cache_key_changes_with_every_setting_that_changes_the_result() -> None:
    m = rf.models(_args())[1]
    base = rf.cache_key(m, _args())
    for change in ({"epochs": 5}, {"reps": 11}, {"sweep_seed": 1}, {"limit_test": 10000}, {"b": 32.0}):
        assert (
            rf.cache_key(m if "b" not in change else rf.models(_args(**change))[1], _args(**change)) != base
        )
    assert re.fullmatch(r"[0-9a-f]{16}", base)


@pytest.mark.parametrize("bad", ["mcel3", "nope"])
def test_only_rejects_unknown_model_keys(bad: str, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        rf.main(["--only", bad, "--out", "", "--limit-test", "10"])
    assert info.value.code == 2
    assert bad in capsys.readouterr().err
