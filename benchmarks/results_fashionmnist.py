"""The paper's seed result on CPU: 4-bit VGG3 on FashionMNIST, CEL vs MCEL (margin sweep) vs MHL vs
bit-error training, evaluated under weight bit flips.

Usage::

    .venv/bin/python benchmarks/results_fashionmnist.py            # train what is not cached, write docs/results.md
    .venv/bin/python benchmarks/results_fashionmnist.py --bits 2   # another bit width (its own block)

Every model is trained from the same seed (same data order; same initial weights where the logit scales
agree) on Debian's ``dataset-fashion-mnist`` files, then evaluated by :func:`core.evaluation.ber_sweep` on
the 10,000 test images with the *same* sweep seed: realization ``r`` flips exactly the same bit positions in
every model (the pattern depends only on the layer shapes, the bits, the BER and the seed), so every
comparison with CEL is paired. Reported per model:

* accuracy mean +- std over ``--reps`` realizations at each BER (paper Fig. 3);
* the paired difference to CEL per realization with a 95% t interval ``mean +- t_{0.975,R-1} sd / sqrt(R)``
  (the uncertainty over error realizations for *these* trained models, not over training seeds);
* the Mean Logit Margin per training epoch (paper Fig. 4, Sec. VIII-C) and its ratio to CEL's;
* the test-set MLM and the mean absolute logit change the flips at ``--shift-ber`` cause (a margin only
  protects if it grows faster than the error-induced logit noise);
* training wall time per model, so the price of bit-error training is visible next to its accuracy.

Each trained model's results (history, sweep records, times) are cached as JSON in ``--cache`` keyed by
its full setting, so an interrupted run continues where it stopped and a rerun only re-renders. The report
goes into ``--out`` between ``<!-- BEGIN/END generated:fashionmnist-<bits>b -->`` markers (hand-written
text around it survives), figures into ``--figures``. No asserts: a reproducible report, not a test.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shlex
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_digits import (
    T_SOURCE,
    ber_label,
    fmt_ci,
    fmt_ms,
    logit_shift,
    mean_std,
    parse_floats,
    write_section,
)

from mcel_search.core.atomic import atomic_write
from mcel_search.core.data import load_dataset
from mcel_search.core.evaluation import ber_sweep, cache_batches
from mcel_search.core.experiment import TrialSpec, run_trial
from mcel_search.core.training import TrainConfig

#: Paper (Sec. VIII-B, Fig. 3/4): 4-bit VGG3 on FashionMNIST, MCEL 15.32 points above CEL at BER 1%;
#: MCEL's MLM about 20x CEL's (Fig. 4, read off the plot).
PAPER_GAIN_AT_1PCT = 15.32
PAPER_MLM_RATIO = 20.0


@dataclass(frozen=True)
class Model:
    """One trained model of the comparison."""

    name: str  # label in the tables
    loss: str  # cel, mcel, mhl
    margin: float | None = None
    b: float | None = None
    logit_scale: float = 1.0
    train_ber: float = 0.0  # bit-error training rate (0: clean training)

    @property
    def key(self) -> str:
        """Short name for ``--only``: cel, mcel16, mhl16, flips0.01, ..."""
        if self.train_ber:
            return f"flips{self.train_ber:g}"
        return self.loss + (
            "" if self.loss == "cel" else f"{self.margin if self.loss == 'mcel' else self.b:g}"
        )

    @property
    def loss_params(self) -> dict[str, float]:
        """The loss's parameters by their registered names (``b`` is MHL's ``mhl_margin`` for mhl)."""
        if self.loss == "mcel":
            return {"margin": self.margin, "b": self.b}
        return {"mhl_margin": self.b} if self.loss == "mhl" else {}

    def spec(self, args: argparse.Namespace) -> TrialSpec:
        return TrialSpec(
            arch="vgg3",
            dataset="fashionmnist",
            bits=args.bits,
            loss=self.loss,
            loss_params=self.loss_params,
            logit_scale=self.logit_scale,
            train=TrainConfig(
                epochs=args.epochs,
                batch_size=args.batch_size,
                lr=args.lr,
                step_size=args.step_size,
                gamma=args.gamma,
                seed=args.seed,
                device="cpu",  # a CPU study (the cached runs were trained so)
                train_ber=self.train_ber,
            ),
            limit_train=args.limit_train,
        )


def models(args: argparse.Namespace) -> list[Model]:
    """CEL, MCEL at every ``--margins`` value (b, s fixed), MHL, and CEL with bit-error training."""
    out = [Model("CEL", "cel")]
    out += [Model(f"MCEL m={m:g}", "mcel", m, args.b, args.logit_scale) for m in args.margins]
    out += [Model(f"MHL b={b:g}", "mhl", None, b, args.mhl_scale) for b in args.mhl_b]
    out += [Model(f"CEL + flips p={tb:g}", "cel", train_ber=tb) for tb in args.train_ber]
    return out


def cache_key(model: Model, args: argparse.Namespace) -> str:
    """Hash of everything that determines the cached result (setting, sweep, code-relevant knobs)."""
    spec = model.spec(args).to_dict()
    # the layout the committed cache was keyed with (TrialSpec had margin and b fields then): same key
    spec.pop("protocol")  # always the default protocol here (the key predates protocols)
    params = spec.pop("loss_params")
    spec.update(margin=params.get("margin"), b=params.get("b", params.get("mhl_margin")))
    blob = json.dumps(
        {
            "spec": spec,
            "bers": args.bers,
            "reps": args.reps,
            "sweep_seed": args.sweep_seed,
            "shift_ber": args.shift_ber,
            "shift_reps": args.shift_reps,
            "limit_test": args.limit_test,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def train_and_evaluate(model: Model, args: argparse.Namespace, batches) -> dict[str, Any]:
    """Train ``model``, sweep it, measure its logit shift; a JSON-ready dict."""
    t0 = time.perf_counter()
    res = run_trial(model.spec(args))
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    sweep = ber_sweep(res.model, batches, args.bers, args.reps, args.sweep_seed)
    sweep_s = time.perf_counter() - t1
    shift = logit_shift(res.model, batches, args.shift_ber, min(args.shift_reps, args.reps), args.sweep_seed)
    return {
        "name": model.name,
        "setting": model.__dict__,
        "history": [h.to_dict() for h in res.history],
        "clean_acc": sweep.at(0.0).mean if 0.0 in args.bers else res.clean_acc,
        "acc": {str(b): sweep.accuracies(b) for b in args.bers},
        "test_mlm": res.margins["mean"],
        "shift": shift,
        "train_seconds": train_s,
        "epoch_seconds": [h.seconds for h in res.history],
        "sweep_seconds": sweep_s,
    }


def load_or_run(model: Model, args: argparse.Namespace, batches) -> dict[str, Any]:
    path = Path(args.cache) / f"{args.bits}b-{cache_key(model, args)}.json"
    if path.exists():
        return json.loads(path.read_text())
    print(f"training {model.name} ({args.bits}-bit, {args.epochs} epochs) ...", file=sys.stderr, flush=True)
    result = train_and_evaluate(model, args, batches)
    with atomic_write(path, "w") as fh:
        fh.write(json.dumps(result, indent=1))
    print(
        f"  {model.name}: train {result['train_seconds']:.0f}s, sweep {result['sweep_seconds']:.0f}s, "
        f"clean {100 * result['clean_acc']:.2f}%, "
        f"@1% {100 * mean_std(result['acc'].get('0.01', [float('nan')]))[0]:.2f}%",
        file=sys.stderr,
        flush=True,
    )
    return result


def step_costs(todo: list[Model], args: argparse.Namespace, rounds: int = 7) -> dict[str, float]:
    """Seconds of one training step per model kind, relative to CEL's: every model's :class:`Trainer`
    trains one epoch of exactly one batch (the first ``batch_size`` training images), round-robin, after a
    warm-up; the figure is the median over ``rounds`` of the per-round ratio to CEL (same process, same
    batch: immune to the machine's load, unlike the wall times of the training runs)."""
    from torch.utils.data import TensorDataset

    from benchmarks.common import interleaved, paired_ratio
    from mcel_search.core.experiment import build
    from mcel_search.core.training import Trainer

    trainers: dict[str, Trainer] = {}
    for m in todo:
        spec = m.spec(args)
        model, loss_fn, data = build(spec)
        n = args.batch_size
        x = torch.stack([data.train[i][0] for i in range(n)])
        y = torch.tensor([int(data.train[i][1]) for i in range(n)])
        config = replace(spec.train, epochs=10**6)
        trainers[m.key] = Trainer(model, TensorDataset(x, y), loss_fn, config)
    times = interleaved({k: t.train_epoch for k, t in trainers.items()}, repeats=rounds)
    cel = times[todo[0].key]
    return {k: paired_ratio(v, cel) for k, v in times.items()}


def render(
    results: list[dict[str, Any]], args: argparse.Namespace, n_test: int, costs: dict[str, float]
) -> list[str]:
    bers = args.bers
    heads = " | ".join(f"BER {ber_label(x)}" for x in bers)
    cel = results[0]
    lines = [
        f"**{args.bits}-bit VGG3 on FashionMNIST: accuracy (%) under weight bit flips**, mean ± std over "
        f"{args.reps} realizations shared by all models (sweep seed {args.sweep_seed}); MLM = Mean Logit "
        "Margin of the last training epoch; test MLM / shift = test-set MLM over the mean absolute logit "
        f"change caused by the flips at {ber_label(args.shift_ber)}; step cost = seconds per training step "
        "relative to CEL's (same batch, same process, interleaved, median of 7); train = wall time of the "
        "training run (on a shared, loaded machine: not comparable across rows).",
        "",
        f"| model | {heads} | MLM | MLM / CEL | test MLM / shift | step cost | train (s) |",
        "|---|" + "---|" * (len(bers) + 5),
    ]
    for r in results:
        mlm = r["history"][-1]["mlm"]
        lines.append(
            f"| {r['name']} | "
            + " | ".join(fmt_ms(r["acc"][str(x)]) for x in bers)
            + f" | {mlm:.2f} | {mlm / cel['history'][-1]['mlm']:.2f}x | {r['test_mlm'] / r['shift']:.1f} "
            f"| {costs[r['key']]:.2f}x | {r['train_seconds']:.0f} |"
        )
    lines += [
        "",
        "**Paired difference to CEL (accuracy points), mean [95% CI over the shared realizations]**:",
        "",
        f"| model | {heads} | W/T/L @ {ber_label(args.key_ber)} |",
        "|---|" + "---|" * (len(bers) + 1),
    ]
    for r in results[1:]:
        cells, key = [], []
        for x in bers:
            d = [a - c for a, c in zip(r["acc"][str(x)], cel["acc"][str(x)], strict=True)]
            cells.append(fmt_ci(d))
            if x == args.key_ber:
                key = d
        wtl = f"{sum(d > 0 for d in key)}/{sum(d == 0 for d in key)}/{sum(d < 0 for d in key)}"
        lines.append(f"| {r['name']} | " + " | ".join(cells) + f" | {wtl} |")
    lines += ["", "W/T/L: realizations where the model beats / ties / loses to CEL. One test image = "]
    lines[-1] += f"{100 / n_test:.2f} points."
    lines += [
        "",
        "**Mean Logit Margin per epoch** (training samples, as the paper's Fig. 4) and its ratio to CEL's:",
        "",
        "| model | " + " | ".join(f"ep {h['epoch']}" for h in cel["history"]) + " |",
        "|---|" + "---|" * len(cel["history"]),
    ]
    for r in results:
        cells = []
        for h, hc in zip(r["history"], cel["history"], strict=True):
            cells.append(f"{h['mlm']:.2f}" + ("" if r is cel else f" ({h['mlm'] / hc['mlm']:.1f}x)"))
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    best = max(results[1:], key=lambda r: mean_std(r["acc"][str(args.key_ber)])[0], default=None)
    if best is not None and str(args.key_ber) in cel["acc"]:
        gain = 100 * (
            mean_std(best["acc"][str(args.key_ber)])[0] - mean_std(cel["acc"][str(args.key_ber)])[0]
        )
        lines += [
            "",
            f"Best model at BER {ber_label(args.key_ber)}: {best['name']}, {gain:+.2f} points vs CEL "
            f"(paper, 4-bit, 100 epochs: MCEL +{PAPER_GAIN_AT_1PCT} points; MLM ratio ~{PAPER_MLM_RATIO:g}x).",
        ]
    lines.append("")
    return lines


def figures(results: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    """Accuracy vs BER and MLM per epoch as PNGs; returns Markdown image lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(args.figures)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"fashionmnist-vgg3-{args.bits}b"
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    xs = [100 * b for b in args.bers]
    for r in results:
        ms = [mean_std(r["acc"][str(b)]) for b in args.bers]
        ax.errorbar(
            xs,
            [100 * m for m, _ in ms],
            yerr=[100 * s for _, s in ms],
            marker="o",
            capsize=3,
            label=r["name"],
        )
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlabel("bit error rate (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{args.bits}-bit VGG3, FashionMNIST ({args.epochs} epochs, {args.reps} realizations)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    acc_png = out / f"{stem}-accuracy-vs-ber.png"
    fig.savefig(acc_png, dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in results:
        ax.plot(
            [h["epoch"] for h in r["history"]], [h["mlm"] for h in r["history"]], marker="o", label=r["name"]
        )
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("Mean Logit Margin (training samples)")
    ax.set_title(f"{args.bits}-bit VGG3, FashionMNIST: MLM per epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    mlm_png = out / f"{stem}-mlm.png"
    fig.savefig(mlm_png, dpi=110)
    plt.close(fig)
    rel = Path(args.figures).relative_to(Path(args.out).parent) if args.out else Path(args.figures)
    return [
        f"![accuracy vs BER, {args.bits}-bit]({rel / acc_png.name})",
        f"![MLM per epoch, {args.bits}-bit]({rel / mlm_png.name})",
        "",
    ]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bits", type=int, default=4, help="weight bits (2, 4, 8)")
    p.add_argument("--epochs", type=int, default=4, help="training epochs per model (paper: 100)")
    p.add_argument("--batch-size", type=int, default=256, help="paper Table II: 256")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--step-size", type=int, default=10, help="StepLR step size (paper: 10)")
    p.add_argument("--gamma", type=float, default=0.5, help="StepLR factor (paper: 0.5)")
    p.add_argument("--limit-train", type=int, default=20000, help="use the first N training images (0: all)")
    p.add_argument("--limit-test", type=int, default=4000, help="use the first N test images (0: all)")
    p.add_argument("--seed", type=int, default=0, help="training seed (all models)")
    p.add_argument("--margins", type=parse_floats, default=parse_floats("16,64,128"), help="MCEL margins m")
    p.add_argument("--b", type=float, default=64.0, help="MCEL saturation bound b")
    p.add_argument("--logit-scale", type=float, default=1.0, help="MCEL models' logit scale s")
    p.add_argument("--mhl-b", type=parse_floats, default=parse_floats("16"), help="MHL margins b ('' : none)")
    p.add_argument("--mhl-scale", type=float, default=1.0, help="MHL models' logit scale")
    p.add_argument(
        "--train-ber",
        type=parse_floats,
        default=parse_floats("0.01"),
        help="bit-error training rates ('' : none)",
    )
    p.add_argument("--reps", type=int, default=10, help="error realizations per BER")
    p.add_argument("--sweep-seed", type=int, default=0, help="seed of the shared error realizations")
    p.add_argument("--bers", type=parse_floats, default=parse_floats("0,0.001,0.005,0.01,0.02,0.05"))
    p.add_argument("--key-ber", type=float, default=0.01, help="BER of the W/T/L count and the headline")
    p.add_argument("--shift-ber", type=float, default=0.01, help="BER of the logit-shift diagnostic")
    p.add_argument("--shift-reps", type=int, default=3, help="realizations of the logit-shift diagnostic")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument(
        "--only",
        default="",
        help="train these models (keys: cel, mcel16, mhl16, flips0.01) and stop, no report",
    )
    p.add_argument(
        "--cache",
        default="benchmarks/cache/fashionmnist",
        help="per-model result cache (committed: a rerun only re-renders)",
    )
    p.add_argument("--out", default="docs/results.md", help="Markdown file ('' : print only)")
    p.add_argument("--figures", default="docs/figures", help="directory of the PNG figures")
    args = p.parse_args(argv)
    args.limit_train = args.limit_train or None
    args.limit_test = args.limit_test or None
    if args.key_ber not in args.bers:
        p.error(f"--key-ber {args.key_ber} must be one of --bers {args.bers}")

    todo = models(args)
    wanted = set(args.only.split(",")) if args.only else set()
    unknown = wanted - {m.key for m in todo}
    if unknown:  # before the data are loaded: bad input costs nothing
        p.error(f"--only {sorted(unknown)}: not among the models {[m.key for m in todo]}")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    data = load_dataset("fashionmnist", limit_test=args.limit_test)
    batches = cache_batches(data.test, torch.device("cpu"))
    if args.only:
        for m in todo:
            if m.key in wanted:
                load_or_run(m, args, batches)
        return
    results = [{**load_or_run(m, args, batches), "key": m.key} for m in todo]
    costs = step_costs(todo, args)
    wall = time.perf_counter() - start
    trained = sum(r["train_seconds"] + r["sweep_seconds"] for r in results)
    lines = render(results, args, len(data.test), costs)
    lines += figures(results, args)
    command = ".venv/bin/python benchmarks/results_fashionmnist.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    n_train = args.limit_train or 60000
    lines += [
        f"Setting: {args.bits}-bit VGG3 (C64 MP2 C64 MP2 FC2048 FC10, every layer quantized) on FashionMNIST "
        f"({n_train:,} train / {len(data.test):,} test images); Adam lr {args.lr:g}, batch {args.batch_size}, "
        f"{args.epochs} epochs, StepLR({args.step_size}, {args.gamma:g}), training seed {args.seed}; MCEL "
        f"b = {args.b:g}, logit scale {args.logit_scale:g}; {args.reps} realizations per BER from sweep seed "
        f"{args.sweep_seed}, symmetric flips in every quantized weight.",
        "",
        f"Command: `{command.strip()}`  ",
        f"Compute: {trained / 60:.1f} min of training + sweeps (this call: {wall / 60:.1f} min; cached models "
        f"are not retrained) on {torch.get_num_threads()} torch thread(s), {platform.machine()}, torch "
        f"{torch.__version__}; CIs use {T_SOURCE}.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        write_section(Path(args.out), f"fashionmnist-{args.bits}b", text)
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
