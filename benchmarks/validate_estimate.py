"""Validate the cheap robustness estimate (``core.robustness_estimate``) on the trials of real searches.

Usage::

    .venv/bin/python benchmarks/validate_estimate.py                     # run what is not cached, report
    .venv/bin/python benchmarks/validate_estimate.py --only digits-default
    .venv/bin/python benchmarks/validate_estimate.py --report-only       # re-render from the cache

Each search (``SEARCHES``) is a real ``mcel search`` run through :func:`mcel_search.run_search` (its own
local Ray, a local MLflow store under ``--work``) with ``objective.estimate: margin_shift``, pruning off,
so every trial measures at every epoch both

* the full ``ber_acc`` (``objective.reps`` realizations, seeds ``derive_seed(seed, j)``), and
* the estimate from the clean margins and ``objective.estimate_reps`` flipped passes whose seeds come from
  a disjoint stream (``estimate_seed``): the estimate never sees the reference's flips.

Per search and epoch it reports Spearman's rho (Fisher-z / Bonett-Wright 95% interval,
``analysis.ranking``) of each estimate against the same epoch's full ``ber_acc``, and of an early epoch's
estimate against the *final* full ``ber_acc`` (what a pruner needs), next to two references: the plain
mean accuracy of the estimate's own flipped passes (``flip_acc``, the same passes without the margins) and
the split-half reliability of the full measurement itself (rho of the mean of its even vs odd
realizations at the final epoch: the ceiling any estimate faces). Top-k overlap: the fraction of the top
``k`` trials by the full final ``ber_acc`` that the estimate's top ``k`` holds; "best kept": whether the best
trial is among the estimate's top ``k``.

Per-trial values are cached as JSON under ``--cache`` (committed, small), so the report re-renders without
rerunning and an interrupted run continues with the next search. No asserts: a reproducible report.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_digits import write_section

from mcel_search.analysis.ranking import best_kept, spearman_ci, topk_overlap

ESTIMATE_KEYS = {
    "margin_shift": "ber_acc_est",
    "gauss": "ber_acc_est_gauss",
    "frac_above": "ber_acc_est_frac_above",
    "ratio": "ber_acc_est_ratio",
    "flip_acc (same passes)": "ber_acc_est_flip_acc",
}
HISTORY_KEYS = ("ber_acc", "clean_acc", "mlm", *ESTIMATE_KEYS.values())

_DIGITS = {
    "dataset": "digits",
    "architectures": ["small_cnn"],
    "bits": [4],
    "train": {
        "epochs": 8,
        "batch_size": 64,
        "lr": 0.001,
        "step_size": 5,
        "gamma": 0.5,
        "seed": 0,
        "device": "cpu",
    },
    "trials_per_arch": 24,
    "objective": {"target_ber": 0.03},
}
_FASHION = {
    "dataset": {"name": "fashionmnist", "limit_train": 6000, "limit_test": 1000, "split_seed": 0},
    "architectures": ["vgg3"],
    "bits": [4],
    "train": {
        "epochs": 4,
        "batch_size": 256,
        "lr": 0.001,
        "step_size": 10,
        "gamma": 0.5,
        "seed": 0,
        "device": "cpu",
    },
    "trials_per_arch": 12,
    "objective": {"target_ber": 0.01},
}
#: name -> (base spec, protocol)
SEARCHES: dict[str, tuple[dict[str, Any], str]] = {
    "digits-default": (_DIGITS, "default"),
    "digits-paper": (_DIGITS, "paper"),
    "fashionmnist-default": (_FASHION, "default"),
    "fashionmnist-paper": (_FASHION, "paper"),
}


def spec_for(name: str, base: dict[str, Any], protocol: str, work: Path) -> dict[str, Any]:
    """The search spec of ``name``: CEL and MCEL, margins, bounds and logit scales sampled at random (the
    logit scale fixed at 1 under ``paper``, whose learnable scale starts at the reference's 1e-5)."""
    target = base["objective"]["target_ber"]
    scale = 1.0 if protocol == "paper" else {"loguniform": [0.25, 4.0]}
    return {
        "name": f"estimate-{name}",
        **{k: v for k, v in base.items() if k != "objective"},
        "protocol": protocol,
        "losses": ["cel", "mcel"],
        "space": {
            "margin": {"choice": [1, 2, 4, 8, 16, 32]},
            "b": {"choice": [4, 8, 16]},
            "logit_scale": scale,
        },
        "objective": {
            "target_ber": target,
            "reps": 10,
            "seed": 0,
            "estimate": "margin_shift",
            "estimate_reps": 2,
        },
        "sweep": {"bers": [0.0, target], "reps": 10, "tolerable_iters": 0},
        "concurrency": 2,
        "resources": {"cpu": 1, "gpu": 0},
        "sampler": {"name": "random", "seed": 0},
        "pruner": "none",
        "baseline": {"enabled": False},
        "tracking": {"uri": f"sqlite:///{work / name / 'mlflow.db'}", "experiment": f"estimate-{name}"},
        "storage": {"path": str(work / name / "ray_results")},
    }


def collect(name: str, base: dict[str, Any], protocol: str, work: Path) -> dict[str, Any]:
    """Run the search and return its per-trial, per-epoch values."""
    from mlflow.tracking import MlflowClient

    import mcel_search
    from mcel_search.analysis.queries import realizations

    spec = spec_for(name, base, protocol, work)
    (work / name).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = mcel_search.run_search(spec, num_cpus=2)
    seconds = time.perf_counter() - start
    uri = spec["tracking"]["uri"]
    client = MlflowClient(tracking_uri=uri)
    trials = []
    target = spec["objective"]["target_ber"]
    for _, row in result.trials.iterrows():
        if row.get("state") != "completed" or not math.isfinite(float(row.get("ber_acc", math.nan))):
            continue
        rid = row["run_id"]
        history: dict[str, dict[int, float]] = {}
        for key in HISTORY_KEYS:
            history[key] = {int(m.step): float(m.value) for m in client.get_metric_history(rid, key)}
        trials.append(
            {
                "run_id": rid,
                "loss": row.get("loss"),
                "margin": row.get("margin"),
                "b": row.get("b"),
                "logit_scale": row.get("logit_scale"),
                "history": history,
                "final_reps": realizations(rid, target, tracking_uri=uri),
            }
        )
    return {"name": name, "protocol": protocol, "spec": spec, "seconds": seconds, "trials": trials}


def _values(trials: list[dict], key: str, epoch: int) -> list[float]:
    return [
        t["history"].get(key, {}).get(str(epoch), t["history"].get(key, {}).get(epoch, math.nan))
        for t in trials
    ]


def analyse(data: dict[str, Any], k: int) -> list[dict[str, Any]]:
    """One row per (estimate, epoch) of one search: rho vs same-epoch and vs final ber_acc, top-k."""
    trials = data["trials"]
    epochs = data["spec"]["train"]["epochs"]
    final = _values(trials, "ber_acc", epochs)
    rows = []
    for epoch in sorted({1, max(1, epochs // 2), epochs}):
        same = _values(trials, "ber_acc", epoch)
        for label, key in ESTIMATE_KEYS.items():
            est = _values(trials, key, epoch)
            keep = [i for i in range(len(trials)) if all(math.isfinite(v[i]) for v in (est, same, final))]
            e = [est[i] for i in keep]
            rows.append(
                {
                    "epoch": epoch,
                    "estimate": label,
                    "n": len(keep),
                    "rho_same": spearman_ci(e, [same[i] for i in keep]),
                    "rho_final": spearman_ci(e, [final[i] for i in keep]),
                    "overlap": topk_overlap(e, [final[i] for i in keep], k) if keep else math.nan,
                    "best_kept": best_kept(e, [final[i] for i in keep], k) if keep else None,
                }
            )
        if epoch < epochs:  # the full measurement at an early epoch as a predictor of the final one
            keep = [i for i in range(len(trials)) if math.isfinite(same[i]) and math.isfinite(final[i])]
            s = [same[i] for i in keep]
            f = [final[i] for i in keep]
            rows.append(
                {
                    "epoch": epoch,
                    "estimate": "full ber_acc (10 reps)",
                    "n": len(keep),
                    "rho_same": None,
                    "rho_final": spearman_ci(s, f),
                    "overlap": topk_overlap(s, f, k),
                    "best_kept": best_kept(s, f, k),
                }
            )
    halves = [
        (sum(t["final_reps"][0::2]), sum(t["final_reps"][1::2])) for t in trials if len(t["final_reps"]) >= 2
    ]
    rows.append(
        {
            "epoch": epochs,
            "estimate": "split half of the full measurement (5 vs 5 reps)",
            "n": len(halves),
            "rho_same": spearman_ci([h[0] for h in halves], [h[1] for h in halves]),
            "rho_final": None,
            "overlap": math.nan,
            "best_kept": None,
        }
    )
    return rows


def render(searches: list[dict[str, Any]], k: int) -> str:
    """The markdown block for docs/results.md."""
    lines = [
        "Spearman's rho with its 95% interval (Fisher z, Bonett-Wright) over the finished trials of each "
        f"search; top-{k} overlap and best kept against the final full `ber_acc`. Estimate: clean margins "
        "plus 2 flipped passes from a seed stream disjoint from the full measurement's 10.",
        "",
    ]
    for data in searches:
        spec = data["spec"]
        ds = spec["dataset"] if isinstance(spec["dataset"], str) else spec["dataset"]["name"]
        lines += [
            f"**{data['name']}** ({ds}, {spec['architectures'][0]} {spec['bits'][0]}-bit, protocol "
            f"`{data['protocol']}`, BER {100 * spec['objective']['target_ber']:g}%, {len(data['trials'])} finished "
            f"trials of CEL and MCEL sampled at random, {spec['train']['epochs']} epochs, "
            f"{data['seconds'] / 60:.0f} min)",
            "",
            f"| epoch | measure | n | rho vs same epoch's ber_acc | rho vs final ber_acc | top-{k} overlap | best kept |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in analyse(data, k):
            same = "" if r["rho_same"] is None else str(r["rho_same"])
            fin = "" if r["rho_final"] is None else str(r["rho_final"])
            ov = "" if math.isnan(r["overlap"]) else f"{r['overlap']:.2f}"
            bk = "" if r["best_kept"] is None else ("yes" if r["best_kept"] else "no")
            lines.append(f"| {r['epoch']} | {r['estimate']} | {r['n']} | {same} | {fin} | {ov} | {bk} |")
        lines.append("")
    lines.append(
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads; "
        "command: `.venv/bin/python benchmarks/validate_estimate.py`."
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=list(SEARCHES), action="append")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=Path(__file__).parent / "cache" / "estimate")
    ap.add_argument("--work", type=Path, default=Path("/tmp/mcel-estimate-validation"))
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "results.md")
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    done = []
    for name, (base, protocol) in SEARCHES.items():
        path = args.cache / f"{name}.json"
        if not path.exists() and not args.report_only and (args.only is None or name in args.only):
            data = collect(name, base, protocol, args.work.resolve())
            path.write_text(json.dumps(data, indent=1, default=str))
            print(f"{name}: {len(data['trials'])} trials in {data['seconds']:.0f} s", flush=True)
        if path.exists():
            done.append(json.loads(path.read_text()))
    if done:
        text = render(done, args.k)
        print(text)
        write_section(args.out, "estimate-validation", text)


if __name__ == "__main__":
    main()
