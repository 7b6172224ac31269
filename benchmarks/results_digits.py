"""Results on the embedded data set: 4-bit ``small_cnn`` on ``digits``, CEL vs MCEL under weight bit flips.

Usage::

    .venv/bin/python benchmarks/results_digits.py                      # the report (docs/results-digits.md)
    .venv/bin/python benchmarks/results_digits.py --explore            # the (m, b, s) exploration grid only

For every training seed, CEL and MCEL are trained from the same seed (same initial weights when the logit
scales agree, same data order), then evaluated by :func:`core.evaluation.ber_sweep` with the *same* sweep
seed, so realization ``r`` flips exactly the same bit positions in both models (the flip pattern depends
only on the layer shapes, the bits, the BER and the seed): the comparison is paired. Reported:

* accuracy mean +- std over the ``--reps`` realizations, per seed and pooled over seeds;
* the Mean Logit Margin (MLM) of the last training epoch (paper Sec. VIII-C) and the ratio MCEL/CEL;
* the mean absolute logit change caused by the flips at one BER (``--shift-ber``), next to the test MLM:
  a margin only helps if it grows faster than the error-induced logit noise;
* the paired difference MCEL - CEL per realization with a 95% confidence interval
  ``mean +- t_{0.975, n-1} * sd / sqrt(n)``: per seed (n = reps), pooled over all realizations of all seeds
  (n = seeds x reps; says how sure we are about *these* trained models) and across seeds (n = seeds, on the
  per-seed mean differences; the claim for a fresh training run).

Prints a Markdown report (the exact command and the wall time included) and writes it into ``--out``
between ``<!-- BEGIN/END generated:report -->`` markers (``generated:explore`` for ``--explore``), so the
hand-written discussion around the blocks survives a rerun.
No asserts: a reproducible report, not a test. Exploration runs on training seed 0 / sweep seed 0, the
report defaults to training seeds 1-5 and sweep seed 1, so the chosen setting is judged on fresh seeds.
"""

from __future__ import annotations

import argparse
import math
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from scipy.stats import t as student_t

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mcel_search.core.biterrors import inject_bit_errors
from mcel_search.core.data import load_dataset
from mcel_search.core.evaluation import ber_sweep, cache_batches, realization_seed
from mcel_search.core.experiment import TrialSpec, run_trial
from mcel_search.core.training import TrainConfig


def t_quantile(df: int) -> float:
    """Two-sided 95% Student-t quantile ``t_{0.975, df}``."""
    return float(student_t.ppf(0.975, df))


T_SOURCE = "scipy.stats.t"
"""Named in the report footers (here and in ``results_fashionmnist.py``)."""

DEFAULT_GRID = (
    "2,16,1;4,16,1;8,16,1;16,16,1;32,16,1;8,16,0.25;8,16,0.5;8,16,2;16,16,2;32,16,4;2,4,1;4,8,1;8,8,1"
)


def parse_floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_grid(text: str) -> list[tuple[float, float, float]]:
    out = []
    for item in text.split(";"):
        m, b, s = parse_floats(item)
        out.append((m, b, s))
    return out


def mean_ci(xs: list[float]) -> tuple[float, float, int]:
    """``(mean, half width of the 95% t interval, n)``; half width 0 for n < 2."""
    n = len(xs)
    mean = sum(xs) / n
    if n < 2:
        return mean, 0.0, n
    sd = statistics.stdev(xs)
    return mean, t_quantile(n - 1) * sd / math.sqrt(n), n


def mean_std(xs: list[float]) -> tuple[float, float]:
    return sum(xs) / len(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def fmt_ms(xs: list[float]) -> str:
    m, s = mean_std(xs)
    return f"{100 * m:.1f} ± {100 * s:.1f}"


def fmt_ci(xs: list[float]) -> str:
    m, h, n = mean_ci(xs)
    if n < 2:
        return f"{100 * m:+.2f} (n=1, no CI)"
    return f"{100 * m:+.2f} [{100 * (m - h):+.2f}, {100 * (m + h):+.2f}]"


def ber_label(b: float) -> str:
    return f"{100 * b:g}%"


def train(loss: str, m: float | None, b: float | None, s: float, seed: int, args: argparse.Namespace):
    spec = TrialSpec(
        arch="small_cnn",
        dataset="digits",
        bits=args.bits,
        loss=loss,
        loss_params={"margin": m, "b": b} if loss == "mcel" else {},
        logit_scale=s,
        train=TrainConfig(
            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=seed, device="cpu"
        ),
    )
    return run_trial(spec)


@torch.no_grad()
def logit_shift(model: torch.nn.Module, batches, ber: float, reps: int, seed: int) -> float:
    """Mean |z_flipped - z_clean| over test samples, classes and ``reps`` realizations (ber_sweep's seeds)."""
    model.eval()
    clean = [model(x) for x, _ in batches]
    total, count = 0.0, 0
    for rep in range(reps):
        with inject_bit_errors(model, ber, realization_seed(seed, rep)):
            for (x, _), z0 in zip(batches, clean, strict=True):
                total += float((model(x) - z0).abs().sum())
                count += z0.numel()
    return total / max(count, 1)


def evaluate(result, data, args: argparse.Namespace, batches) -> dict:
    sweep = ber_sweep(result.model, data.test, args.bers, args.reps, args.sweep_seed)
    return {
        "acc": {ber: sweep.accuracies(ber) for ber in args.bers},
        "mlm": result.history[-1].mlm,
        "test_mlm": result.margins["mean"],
        "shift": logit_shift(result.model, batches, args.shift_ber, args.reps, args.sweep_seed),
        "clean": result.clean_acc,
    }


def run_report(args: argparse.Namespace, data, batches) -> list[str]:
    m, b, s = args.margin, args.b, args.logit_scale
    runs: dict[int, dict[str, dict]] = {}
    for seed in args.seeds:
        runs[seed] = {}
        for name, (loss, mm, bb, ss) in {"CEL": ("cel", None, None, 1.0), "MCEL": ("mcel", m, b, s)}.items():
            t0 = time.perf_counter()
            res = train(loss, mm, bb, ss, seed, args)
            runs[seed][name] = evaluate(res, data, args, batches)
            print(f"seed {seed} {name}: trained+swept in {time.perf_counter() - t0:.1f}s", file=sys.stderr)

    bers, seeds = args.bers, args.seeds
    heads = " | ".join(f"BER {ber_label(x)}" for x in bers)
    lines = []
    # --- pooled table
    lines += [
        f"**Accuracy (%) under bit flips, pooled over {len(seeds)} training seeds x {args.reps} shared "
        "realizations** (mean ± std over all seed x realization pairs; the std includes the seed-to-seed "
        "spread), and the Mean Logit Margin of the last training epoch (mean over seeds):",
        "",
        f"| loss | {heads} | MLM (last epoch) | test MLM | mean abs logit shift @ {ber_label(args.shift_ber)} "
        "| test MLM / shift |",
        "|---|" + "---|" * (len(bers) + 4),
    ]
    for name, label in (("CEL", "CEL"), ("MCEL", f"MCEL (m={m:g}, b={b:g}, s={s:g})")):
        cells = [fmt_ms([a for sd in seeds for a in runs[sd][name]["acc"][x]]) for x in bers]
        mlm = mean_std([runs[sd][name]["mlm"] for sd in seeds])[0]
        tmlm = mean_std([runs[sd][name]["test_mlm"] for sd in seeds])[0]
        shift = mean_std([runs[sd][name]["shift"] for sd in seeds])[0]
        snr = mean_std([runs[sd][name]["test_mlm"] / runs[sd][name]["shift"] for sd in seeds])[0]
        lines.append(
            f"| {label} | " + " | ".join(cells) + f" | {mlm:.2f} | {tmlm:.2f} | {shift:.2f} | {snr:.1f} |"
        )
    ratios = [runs[sd]["MCEL"]["mlm"] / runs[sd]["CEL"]["mlm"] for sd in seeds]
    shift_ratios = [runs[sd]["MCEL"]["shift"] / runs[sd]["CEL"]["shift"] for sd in seeds]
    lines += [
        "",
        f"MLM ratio MCEL/CEL (last epoch): {mean_std(ratios)[0]:.2f} (per seed: "
        + ", ".join(f"{r:.2f}" for r in ratios)
        + f"); ratio of the logit shifts at {ber_label(args.shift_ber)} MCEL/CEL: "
        f"{mean_std(shift_ratios)[0]:.2f}.",
        "",
    ]
    # --- paired differences
    lines += [
        "**Paired difference MCEL - CEL (accuracy points), mean [95% CI]**; per seed n = "
        f"{args.reps} realizations; pooled n = {len(seeds) * args.reps} (all realizations, these models); "
        f"across seeds n = {len(seeds)} (per-seed means, t with {len(seeds) - 1} df: the claim for a new "
        "training run):",
        "",
        f"| seed | {heads} | W/T/L @ {ber_label(args.key_ber)} |",
        "|---|" + "---|" * (len(bers) + 1),
    ]

    def diffs(sd: int, x: float) -> list[float]:
        return [a - c for a, c in zip(runs[sd]["MCEL"]["acc"][x], runs[sd]["CEL"]["acc"][x], strict=True)]

    def wtl(ds: list[float]) -> str:
        return f"{sum(d > 0 for d in ds)}/{sum(d == 0 for d in ds)}/{sum(d < 0 for d in ds)}"

    for sd in seeds:
        lines.append(
            f"| {sd} | "
            + " | ".join(fmt_ci(diffs(sd, x)) for x in bers)
            + f" | {wtl(diffs(sd, args.key_ber))} |"
        )
    pooled = {x: [d for sd in seeds for d in diffs(sd, x)] for x in bers}
    lines.append(
        "| pooled | " + " | ".join(fmt_ci(pooled[x]) for x in bers) + f" | {wtl(pooled[args.key_ber])} |"
    )
    across = {x: [mean_std(diffs(sd, x))[0] for sd in seeds] for x in bers}
    lines.append(
        "| across seeds | "
        + " | ".join(fmt_ci(across[x]) for x in bers)
        + f" | {wtl(across[args.key_ber])} |"
    )
    lines.append("")
    lines.append(
        f"W/T/L: realizations (or seeds) where MCEL is better / equal / worse. One test image = "
        f"{100 / len(data.test):.2f} points."
    )
    lines.append("")
    # --- per seed
    lines += [
        "**Per training seed** (accuracy % mean ± std over the shared realizations):",
        "",
        f"| seed | loss | {heads} | MLM (last epoch) |",
        "|---|---|" + "---|" * (len(bers) + 1),
    ]
    for sd in seeds:
        for name in ("CEL", "MCEL"):
            r = runs[sd][name]
            lines.append(
                f"| {sd} | {name} | " + " | ".join(fmt_ms(r["acc"][x]) for x in bers) + f" | {r['mlm']:.2f} |"
            )
    lines.append("")
    return lines


def run_explore(args: argparse.Namespace, data, batches) -> list[str]:
    grid = parse_grid(args.grid)
    seed = args.explore_seed
    bers = args.bers
    heads = " | ".join(f"BER {ber_label(x)}" for x in bers)
    lines = [
        f"**Exploration** (training seed {seed}, sweep seed {args.sweep_seed}, {args.reps} realizations; "
        "accuracy % mean ± std; Δ@key = paired MCEL - CEL at "
        f"{ber_label(args.key_ber)}, mean [95% CI]):",
        "",
        f"| loss | m | b | s | m/(2b) | {heads} | Δ@{ber_label(args.key_ber)} | MLM (last epoch) "
        f"| test MLM / logit shift @ {ber_label(args.shift_ber)} |",
        "|---|---|---|---|---|" + "---|" * (len(bers) + 3),
    ]
    configs = [("cel", None, None, 1.0), *[("mcel", m, b, s) for m, b, s in grid]]
    cel_acc = None
    for loss, m, b, s in configs:
        t0 = time.perf_counter()
        r = evaluate(train(loss, m, b, s, seed, args), data, args, batches)
        if loss == "cel":
            cel_acc = r["acc"][args.key_ber]
            delta = "—"
        else:
            delta = fmt_ci([a - c for a, c in zip(r["acc"][args.key_ber], cel_acc, strict=True)])
        mm = "—" if m is None else f"{m:g}"
        bb = "—" if b is None else f"{b:g}"
        sep = "—" if m is None else f"{m / (2 * b):.2f}"
        lines.append(
            f"| {loss.upper()} | {mm} | {bb} | {s:g} | {sep} | "
            + " | ".join(fmt_ms(r["acc"][x]) for x in bers)
            + f" | {delta} | {r['mlm']:.2f} | {r['test_mlm'] / r['shift']:.1f} |"
        )
        print(lines[-1], f"({time.perf_counter() - t0:.1f}s)", file=sys.stderr)
    lines.append("")
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=30, help="training epochs per model")
    p.add_argument("--batch-size", type=int, default=64, help="training batch size")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--bits", type=int, default=4, help="weight bits")
    p.add_argument("--margin", type=float, default=8.0, help="MCEL margin m")
    p.add_argument("--b", type=float, default=16.0, help="MCEL saturation bound b")
    p.add_argument("--logit-scale", type=float, default=1.0, help="MCEL model's logit scale s (CEL: 1)")
    p.add_argument("--seeds", type=parse_ints, default=parse_ints("1,2,3,4,5"), help="training seeds")
    p.add_argument("--reps", type=int, default=20, help="error realizations per BER")
    p.add_argument("--sweep-seed", type=int, default=1, help="seed of the shared error realizations")
    p.add_argument("--bers", type=parse_floats, default=parse_floats("0,0.005,0.01,0.02,0.05"))
    p.add_argument("--key-ber", type=float, default=0.01, help="BER of the W/T/L count and exploration Δ")
    p.add_argument("--shift-ber", type=float, default=0.01, help="BER of the logit-shift diagnostic")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--explore", action="store_true", help="run the (m, b, s) grid instead of the report")
    p.add_argument("--explore-seed", type=int, default=0, help="training seed of the exploration")
    p.add_argument("--grid", default=DEFAULT_GRID, help="exploration grid 'm,b,s;m,b,s;...'")
    p.add_argument(
        "--out",
        default="docs/results-digits.md",
        help="Markdown file; the generated block between its markers is replaced ('' : print only)",
    )
    p.add_argument(
        "--block", default=None, help="name of the generated block in --out (default: report / explore)"
    )
    args = p.parse_args(argv)
    if args.key_ber not in args.bers:
        p.error(f"--key-ber {args.key_ber} must be one of --bers {args.bers}")
    out = args.out

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    data = load_dataset("digits")
    batches = cache_batches(data.test, torch.device("cpu"))
    lines = run_explore(args, data, batches) if args.explore else run_report(args, data, batches)
    wall = time.perf_counter() - start
    command = ".venv/bin/python benchmarks/results_digits.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    common = (
        f"{args.bits}-bit small_cnn on digits (1,437 train / {len(data.test)} test images, split seed 0); "
        f"Adam lr {args.lr:g}, batch {args.batch_size}, {args.epochs} epochs, StepLR(10, 0.5); CEL with logit "
        "scale 1; "
    )
    if args.explore:
        setting = common + (
            f"MCEL settings as listed; training seed {args.explore_seed}; {args.reps} realizations per BER "
            f"from sweep seed {args.sweep_seed} shared by all models."
        )
    else:
        setting = common + (
            f"MCEL m={args.margin:g}, b={args.b:g}, s={args.logit_scale:g} (relative separation m/(2b) = "
            f"{args.margin / (2 * args.b):.2f}); training seeds {','.join(map(str, args.seeds))}; "
            f"{args.reps} realizations per BER from sweep seed {args.sweep_seed} shared by both models."
        )
    footer = [
        f"Setting: {setting}",
        "",
        f"Command: `{command.strip()}`  ",
        f"Wall time: {wall:.0f} s ({torch.get_num_threads()} torch thread(s), torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}); CIs use {T_SOURCE}.",
    ]
    text = "\n".join(lines + footer) + "\n"
    print(text)
    if out:
        write_section(Path(out), args.block or ("explore" if args.explore else "report"), text)
        print(f"wrote {out}", file=sys.stderr)


def write_section(path: Path, key: str, text: str) -> None:
    """Replace the text between ``<!-- BEGIN generated:key -->`` and ``<!-- END generated:key -->`` in
    ``path`` (hand-written discussion around it survives a rerun); append the marked block if absent."""
    begin, end = f"<!-- BEGIN generated:{key} -->", f"<!-- END generated:{key} -->"
    block = f"{begin}\n{text}{end}"
    old = path.read_text() if path.exists() else ""
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        new = head + block + rest.split(end, 1)[1]
    else:
        new = (old.rstrip("\n") + "\n\n" if old.strip() else "") + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


if __name__ == "__main__":
    main()
