"""The protocol study: where does MCEL help, and why (4-bit VGG3 on FashionMNIST, our protocol vs the paper's).

Usage::

    .venv/bin/python benchmarks/results_protocol.py                 # run what is not cached, write the report
    .venv/bin/python benchmarks/results_protocol.py --stage headline # only one stage (see STAGES)
    .venv/bin/python benchmarks/results_protocol.py --report-only   # re-render from the cache

Every model is trained on the same seeded subset of Debian's ``dataset-fashion-mnist`` training split
(``--limit-train``, a CPU budget) and evaluated on the **full 10,000-image test set** with the same sweep
seed, so realization ``r`` flips the same bit positions of every model with the same stored tensors
(paired). Protocols (:mod:`mcel_search.core.protocol`): ``default`` (ours: standardized inputs, no hidden
biases, float output bias, ``q * step + min``, constant scale, clean decode; Adam 1e-3, StepLR 10/0.5) and
``paper`` (the reference framework's: raw inputs, every bias quantized in the faulty memory, integer codes,
learnable scale from 1e-5, re-estimated decode; Adam 1e-4, StepLR 5/0.5).

Stages, in the order they run (each model cached as JSON under ``--cache`` by a hash of its setting, so an
interrupted run continues where it stopped; the cache is committed so the study spans sessions):

* ``headline``: CEL vs MCEL at ``--margins`` (b = ``--b``) under both protocols, ``--epochs`` epochs, seed 0;
  accuracy at ``--bers`` over ``--reps`` realizations; for the paper models also at the key BER with the
  weights only exposed and with the clean decode (evaluation-only ablations).
* ``sensitivity``: the per-tensor map (:mod:`mcel_search.core.sensitivity`) of CEL and MCEL m = ``--sens-margin``
  under both protocols at the key BER.
* ``ablation``: from ``default``, one convention switched at a time (raw inputs; faulty biases; raw inputs
  and faulty biases; integer arithmetic; learnable scale; the paper's training settings), and ``paper``
  with the biases protected (float), for CEL and MCEL m = ``--sens-margin``, at the key BER.
* ``seeds``: the headline CEL and MCEL m = ``--sens-margin`` rows at training seeds ``--seeds``: the paired
  MCEL - CEL difference per seed, and its mean with a t interval over training seeds.
* ``epochs``: the gap against training length (``--epoch-grid``) under both protocols.

No asserts: a reproducible report, not a test.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_digits import T_SOURCE, fmt_ci, mean_ci, parse_floats, parse_ints, write_section

from mcel_search.core.atomic import atomic_write
from mcel_search.core.biterrors import stored_tensors
from mcel_search.core.data import load_dataset
from mcel_search.core.evaluation import ber_sweep, cache_batches
from mcel_search.core.experiment import TrialSpec, run_trial
from mcel_search.core.protocol import parse_protocol
from mcel_search.core.sensitivity import sensitivity_map
from mcel_search.core.training import TrainConfig

STAGES = ("headline", "sensitivity", "ablation", "seeds", "epochs", "training-seeds")
#: The paper's training (Adam lr 1e-4, StepLR 5 / 0.5) on our default protocol: the one ablation row whose
#: paired difference excluded 0 at seed 0, rerun at the extra training seeds (stage training-seeds).
PAPER_TRAINING: tuple[tuple[str, float], ...] = (("lr", 1e-4), ("step_size", 5))
#: One convention of the paper at a time, from our default (label syntax of core.protocol.parse_protocol).
ABLATIONS: dict[str, str] = {
    "raw inputs": "default+inputs=raw",
    "faulty biases": "default+conv_bias=faulty,linear_bias=faulty,output_bias=faulty",
    "raw inputs + faulty biases": "default+inputs=raw,conv_bias=faulty,linear_bias=faulty,output_bias=faulty",
    "integer arithmetic": "default+arithmetic=integer",
    "learnable scale (init 1e-5)": "default+output_scale=learnable,output_scale_init=1e-05",
    "paper, biases protected (float)": "paper+conv_bias=float,linear_bias=float,output_bias=float",
}


@dataclass(frozen=True)
class Run:
    """One trained model of the study."""

    protocol: str  # parse_protocol text
    loss: str  # cel or mcel
    margin: float | None = None
    b: float | None = None
    seed: int = 0
    epochs: int = 4
    train: tuple[tuple[str, Any], ...] = field(default_factory=tuple)  # TrainConfig overrides

    @property
    def name(self) -> str:
        loss = "CEL" if self.loss == "cel" else f"MCEL m={self.margin:g}"
        return f"{loss} [{self.protocol}] seed {self.seed}, {self.epochs} ep" + (
            f" {dict(self.train)}" if self.train else ""
        )

    def spec(self, args: argparse.Namespace) -> TrialSpec:
        protocol = parse_protocol(self.protocol)
        settings = {"lr": 1e-3, "step_size": 10, "gamma": 0.5, "batch_size": 256}
        settings.update(protocol.train_defaults())
        settings.update(dict(self.train))
        settings["epochs"] = self.epochs
        return TrialSpec(
            arch="vgg3",
            dataset="fashionmnist",
            bits=args.bits,
            loss=self.loss,
            loss_params={} if self.loss == "cel" else {"margin": self.margin, "b": self.b},
            logit_scale=1.0,
            train=TrainConfig(**settings, seed=self.seed, device="cpu"),
            limit_train=args.limit_train or None,
            protocol=protocol,
        )


def cache_path(run: Run, args: argparse.Namespace, what: str, extra: dict | None = None) -> Path:
    blob = json.dumps(
        {
            "spec": run.spec(args).to_dict(),
            "what": what,
            "sweep_seed": args.sweep_seed,
            "limit_test": args.limit_test,
            **(extra or {}),
        },
        sort_keys=True,
        default=str,
    )
    return Path(args.cache) / f"{what}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}.json"


_MODELS: dict[Run, Any] = {}  # trained models of this process (sensitivity and eval-only rows reuse them)
_TEST: dict[str, Any] = {}


def test_batches(run: Run, args: argparse.Namespace):
    inputs = parse_protocol(run.protocol).inputs
    if inputs not in _TEST:
        data = load_dataset("fashionmnist", inputs=inputs, limit_test=args.limit_test or None)
        _TEST[inputs] = cache_batches(data.test, torch.device("cpu"))
    return _TEST[inputs]


def trained(run: Run, args: argparse.Namespace) -> dict[str, Any]:
    """Train ``run`` (or read its cache): history, clean accuracy, the sweep at ``--bers``; the paper
    models also at the key BER with weights only exposed and with the clean decode."""
    path = cache_path(run, args, "model", {"bers": args.bers, "reps": args.reps, "key": args.key_ber})
    if path.exists():
        return json.loads(path.read_text())
    print(f"training {run.name} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    res = run_trial(run.spec(args))
    train_s = time.perf_counter() - t0
    _MODELS[run] = res.model
    batches = test_batches(run, args)
    protocol = parse_protocol(run.protocol)
    t1 = time.perf_counter()
    sweep = ber_sweep(res.model, batches, args.bers, args.reps, args.sweep_seed, decode=protocol.decode)
    out: dict[str, Any] = {
        "name": run.name,
        "run": asdict(run),
        "protocol": protocol.to_dict(),
        "history": [h.to_dict() for h in res.history],
        "clean_acc": res.clean_acc,
        "acc": {str(b): sweep.accuracies(b) for b in args.bers},
        "test_mlm": res.margins["mean"],
        "train_seconds": train_s,
    }
    scale = getattr(res.model.logit_scale, "scale", None)
    out["output_scale"] = float(scale.detach()) if scale is not None else None
    if protocol.faulty_biases:
        weights = {t.name for t in stored_tensors(res.model) if t.kind == "weight"}
        w = ber_sweep(
            res.model,
            batches,
            [args.key_ber],
            args.reps,
            args.sweep_seed,
            decode=protocol.decode,
            only=weights,
        )
        out["acc_weights_only"] = w.accuracies(args.key_ber)
    if protocol.decode != "clean":
        c = ber_sweep(res.model, batches, [args.key_ber], args.reps, args.sweep_seed, decode="clean")
        out["acc_clean_decode"] = c.accuracies(args.key_ber)
    out["eval_seconds"] = time.perf_counter() - t1
    with atomic_write(path, "w") as fh:
        fh.write(json.dumps(out, indent=1))
    key = mean_ci(out["acc"].get(str(args.key_ber), [float("nan")]))[0]
    print(
        f"  {run.name}: train {train_s:.0f}s, clean {100 * res.clean_acc:.2f}%, @key {100 * key:.2f}%",
        file=sys.stderr,
        flush=True,
    )
    return out


def model_of(run: Run, args: argparse.Namespace):
    """The trained model of ``run``: this process's, else retrained (deterministic: same weights)."""
    if run not in _MODELS:
        res = run_trial(run.spec(args))
        _MODELS[run] = res.model
    return _MODELS[run]


def sensitivity(run: Run, args: argparse.Namespace) -> dict[str, Any]:
    path = cache_path(run, args, "sens", {"ber": args.key_ber, "reps": args.sens_reps})
    if path.exists():
        return json.loads(path.read_text())
    trained(run, args)
    print(f"sensitivity of {run.name} ...", file=sys.stderr, flush=True)
    model = model_of(run, args)
    rows = sensitivity_map(
        model,
        test_batches(run, args),
        args.key_ber,
        args.sens_reps,
        args.sweep_seed,
        decode=parse_protocol(run.protocol).decode,
    )
    out = {"name": run.name, "rows": [{**asdict(r), "accs": list(r.accs)} for r in rows]}
    with atomic_write(path, "w") as fh:
        fh.write(json.dumps(out, indent=1))
    return out


# ------------------------------------------------------------------------------------------------ plan


def plan(args: argparse.Namespace) -> dict[str, list[Run]]:
    b, sm = args.b, args.sens_margin
    both = ("default", "paper")
    headline = [Run(p, "cel", epochs=args.epochs) for p in both]
    headline += [Run(p, "mcel", m, b, epochs=args.epochs) for p in both for m in args.margins]
    pair = lambda p, **kw: [Run(p, "cel", **kw), Run(p, "mcel", sm, b, **kw)]  # noqa: E731
    return {
        "headline": headline,
        "sensitivity": [r for p in both for r in pair(p, epochs=args.epochs)],
        "ablation": [r for p in ABLATIONS.values() for r in pair(p, epochs=args.epochs)]
        + [r for r in pair("default", epochs=args.epochs, train=PAPER_TRAINING)],
        "seeds": [r for p in both for s in args.seeds for r in pair(p, epochs=args.epochs, seed=s)],
        "epochs": [r for p in both for e in args.epoch_grid for r in pair(p, epochs=e)],
        "training-seeds": [
            r for s in args.seeds for r in pair("default", epochs=args.epochs, seed=s, train=PAPER_TRAINING)
        ],
    }


# ---------------------------------------------------------------------------------------------- report


def pts(x: float) -> str:
    return f"{100 * x:.1f}"


def ms(xs: list[float]) -> str:
    m, h, n = mean_ci(xs)
    return f"{100 * m:.1f}" + (f" ± {100 * h:.1f}" if n > 1 else "")


def loss_to_clean(d: dict, key: str) -> str:
    """Points lost at the key BER relative to the model's own clean accuracy."""
    return f"{100 * (d['clean_acc'] - mean_ci(d['acc'][key])[0]):.1f}"


def report(args: argparse.Namespace, runs: dict[str, list[Run]], done: dict[Run, dict]) -> str:
    key = str(args.key_ber)
    lines: list[str] = []
    setting = (
        f"4-bit VGG3, FashionMNIST: {args.limit_train or 60000:,} training images (a seeded subset, for this "
        f"2-core CPU), the full 10,000 test images; {args.reps} shared realizations (sweep seed "
        f"{args.sweep_seed}); b = {args.b:g}; logit scale 1 (default) / learnable from 1e-5 (paper)."
    )
    lines += [f"Setting: {setting}", ""]

    def row_of(r: Run) -> dict | None:
        return done.get(r)

    # headline
    lines += [
        f"**Headline ({args.epochs} epochs, seed 0): accuracy (%), mean ± 95% CI half-width over realizations,"
        " and the paired MCEL - CEL difference (points, 95% CI over realizations)**",
        "",
        "| protocol | model | clean | "
        + " | ".join(f"BER {100 * b:g}%" for b in args.bers if b)
        + " | "
        + " | ".join(f"Δ @ {100 * b:g}%" for b in args.bers if b)
        + " |",
        "|---|---|---|" + "---|" * (2 * sum(1 for b in args.bers if b)),
    ]
    for p in ("default", "paper"):
        cel = row_of(Run(p, "cel", epochs=args.epochs))
        for r in [x for x in runs["headline"] if x.protocol == p]:
            d = row_of(r)
            if d is None:
                continue
            cells = [ms(d["acc"][str(b)]) for b in args.bers if b]
            if cel is None or r.loss == "cel":
                deltas = ["—" for b in args.bers if b]
            else:
                deltas = [
                    fmt_ci([a - c for a, c in zip(d["acc"][str(b)], cel["acc"][str(b)], strict=True)])
                    for b in args.bers
                    if b
                ]
            label = "CEL" if r.loss == "cel" else f"MCEL m={r.margin:g}"
            lines.append(f"| {p} | {label} | {pts(d['clean_acc'])} | " + " | ".join(cells + deltas) + " |")
    lines.append("")
    # eval-only ablations of the paper models
    paper_rows = [(r, done[r]) for r in runs["headline"] if r.protocol == "paper" and r in done]
    if paper_rows:
        lines += [
            f"**Paper-protocol models at BER {100 * args.key_ber:g}%, evaluation-only ablations** (same models, "
            "same realizations): everything exposed; weights only (biases protected at evaluation); clean decode.",
            "",
            "| model | all exposed | weights only | clean decode | output scale learned |",
            "|---|---|---|---|---|",
        ]
        for r, d in paper_rows:
            label = "CEL" if r.loss == "cel" else f"MCEL m={r.margin:g}"
            lines.append(
                f"| {label} | {ms(d['acc'][key])} | {ms(d.get('acc_weights_only', [float('nan')]))} | "
                f"{ms(d.get('acc_clean_decode', [float('nan')]))} | {d.get('output_scale') or float('nan'):.3g} |"
            )
        lines.append("")
    # sensitivity
    sens = [(r, done.get(("sens", r))) for r in runs["sensitivity"]]
    if any(s for _, s in sens):
        lines += [
            f"**Sensitivity at BER {100 * args.key_ber:g}%: accuracy drop (points) when only one tensor is "
            f"flipped, mean [95% CI] over {args.sens_reps} realizations** (drop = clean - accuracy)",
            "",
        ]
        names: list[str] = []
        for _, s in sens:
            for row in (s or {}).get("rows", []):
                if row["name"] not in names:
                    names.append(row["name"])
        header = [
            f"{r.protocol} {'CEL' if r.loss == 'cel' else f'MCEL m={r.margin:g}'}" for r, s in sens if s
        ]
        lines += ["| tensor (values) | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
        for n in names:
            cells, numel = [], None
            for _, s in sens:
                if not s:
                    continue
                row = next((x for x in s["rows"] if x["name"] == n), None)
                if row is None:
                    cells.append("—")
                    continue
                numel = row["numel"]
                cells.append(fmt_ci([row["clean_acc"] - a for a in row["accs"]]))
            lines.append(f"| {n} ({numel:,}) | " + " | ".join(cells) + " |")
        lines.append("")
    # ablation
    abl = [r for r in runs["ablation"] if r in done]
    if abl:
        lines += [
            f"**Ablation ({args.epochs} epochs, seed 0): one convention at a time, at BER {100 * args.key_ber:g}%** "
            "(accuracy %, mean ± CI half-width; Δ = paired MCEL - CEL, points)",
            "",
            "| protocol | CEL clean | CEL @ key | CEL loss to clean | MCEL clean | MCEL @ key | Δ @ key |",
            "|---|---|---|---|---|---|---|",
        ]
        table = [("default (ours)", "default", ()), ("paper", "paper", ())]
        table += [(k, v, ()) for k, v in ABLATIONS.items()]
        table += [
            ("default + paper training (lr 1e-4, StepLR 5)", "default", (("lr", 1e-4), ("step_size", 5)))
        ]
        for label, p, train in table:
            c = done.get(Run(p, "cel", epochs=args.epochs, train=train))
            m = done.get(Run(p, "mcel", args.sens_margin, args.b, epochs=args.epochs, train=train))
            if c is None and m is None:
                continue
            cell = lambda d, f: f(d) if d else "—"  # noqa: E731
            delta = (
                fmt_ci([a - b for a, b in zip(m["acc"][key], c["acc"][key], strict=True)]) if c and m else "—"
            )
            lines.append(
                f"| {label} | {cell(c, lambda d: pts(d['clean_acc']))} | {cell(c, lambda d: ms(d['acc'][key]))} | "
                f"{cell(c, lambda d: loss_to_clean(d, key))} | "
                f"{cell(m, lambda d: pts(d['clean_acc']))} | {cell(m, lambda d: ms(d['acc'][key]))} | {delta} |"
            )
        lines.append("")
    # seeds
    seed_rows = []
    for p, train in (("default", ()), ("paper", ()), ("default", PAPER_TRAINING)):
        per_seed = {}
        for s in (0, *args.seeds):
            c = done.get(Run(p, "cel", epochs=args.epochs, seed=s, train=train))
            m = done.get(Run(p, "mcel", args.sens_margin, args.b, epochs=args.epochs, seed=s, train=train))
            if c and m:
                per_seed[s] = {
                    b: mean_ci([x - y for x, y in zip(m["acc"][str(b)], c["acc"][str(b)], strict=True)])[0]
                    for b in args.bers
                    if b
                }
        if len(per_seed) > 1:
            seed_rows.append((p + (" + paper training (lr 1e-4, StepLR 5)" if train else ""), per_seed))
    if seed_rows:
        lines += [
            f"**Over training seeds: paired MCEL m={args.sens_margin:g} - CEL difference (points) per seed (mean over "
            "realizations), and the mean with a 95% t interval over seeds**",
            "",
            "| protocol | seeds | "
            + " | ".join(f"Δ @ {100 * b:g}% per seed" for b in args.bers if b)
            + " | "
            + " | ".join(f"Δ @ {100 * b:g}% over seeds" for b in args.bers if b)
            + " |",
            "|---|---|" + "---|" * (2 * sum(1 for b in args.bers if b)),
        ]
        for p, per_seed in seed_rows:
            per = [", ".join(f"{100 * per_seed[s][b]:+.1f}" for s in per_seed) for b in args.bers if b]
            over = [fmt_ci([per_seed[s][b] for s in per_seed]) for b in args.bers if b]
            lines.append(f"| {p} | {', '.join(map(str, per_seed))} | " + " | ".join(per + over) + " |")
        lines.append("")
    # epochs
    ep_rows = []
    for p in ("default", "paper"):
        for e in sorted({*args.epoch_grid, args.epochs}):
            c = done.get(Run(p, "cel", epochs=e))
            m = done.get(Run(p, "mcel", args.sens_margin, args.b, epochs=e))
            if c and m:
                ep_rows.append((p, e, c, m))
    if ep_rows:
        lines += [
            f"**Gap against training length (seed 0), at BER {100 * args.key_ber:g}%**",
            "",
            "| protocol | epochs | CEL clean | CEL @ key | MCEL clean | MCEL @ key | Δ @ key |",
            "|---|---|---|---|---|---|---|",
        ]
        for p, e, c, m in ep_rows:
            delta = fmt_ci([a - b for a, b in zip(m["acc"][key], c["acc"][key], strict=True)])
            lines.append(
                f"| {p} | {e} | {pts(c['clean_acc'])} | {ms(c['acc'][key])} | {pts(m['clean_acc'])} | "
                f"{ms(m['acc'][key])} | {delta} |"
            )
        lines.append("")
    total = sum(
        d.get("train_seconds", 0) + d.get("eval_seconds", 0) for k, d in done.items() if isinstance(k, Run)
    )
    missing = [
        s for s in STAGES if any((("sens", r) if s == "sensitivity" else r) not in done for r in runs[s])
    ]
    lines += [
        f"Compute: {total / 60:.0f} min of training and evaluation in the cached models ({len([k for k in done if isinstance(k, Run)])} "
        f"models), {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads. "
        f"Stages not complete yet: {', '.join(missing) or 'none'}. CIs: Student t ({T_SOURCE}).",
        "",
        "Command: `.venv/bin/python benchmarks/results_protocol.py` (every stage not cached; `--stage NAME` for "
        "one stage, `--report-only` to re-render this block from the cache). Training seeds 0-2 where shown; "
        f"sweep seed {args.sweep_seed}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--epochs", type=int, default=4, help="epochs of the headline, ablation and seed rows")
    p.add_argument("--limit-train", type=int, default=15000, help="training images (a seeded subset; 0: all)")
    p.add_argument("--limit-test", type=int, default=0, help="test images (0: all 10,000; smoke runs only)")
    p.add_argument("--margins", type=parse_floats, default=parse_floats("8,16,32"), help="MCEL margins")
    p.add_argument("--b", type=float, default=16.0, help="MCEL bound b")
    p.add_argument("--sens-margin", type=float, default=16.0, help="the MCEL margin of the paired rows")
    p.add_argument("--bers", type=parse_floats, default=parse_floats("0,0.005,0.01,0.02"))
    p.add_argument("--key-ber", type=float, default=0.01)
    p.add_argument("--reps", type=int, default=6)
    p.add_argument("--sens-reps", type=int, default=4)
    p.add_argument("--sweep-seed", type=int, default=0)
    p.add_argument("--seeds", type=parse_ints, default=parse_ints("1,2"), help="extra training seeds")
    p.add_argument("--epoch-grid", type=parse_ints, default=parse_ints("1,4,16"))
    p.add_argument("--stage", choices=STAGES, action="append", help="run only these stages (repeatable)")
    p.add_argument("--report-only", action="store_true", help="train nothing; render the cached results")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache", default="benchmarks/cache/protocol")
    p.add_argument("--out", default="docs/results.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    runs = plan(args)
    done: dict[Any, dict] = {}
    for stage in STAGES:
        for r in runs[stage]:
            if stage == "sensitivity":
                path = cache_path(r, args, "sens", {"ber": args.key_ber, "reps": args.sens_reps})
                if path.exists():
                    done[("sens", r)] = json.loads(path.read_text())
                elif not args.report_only and (args.stage is None or stage in args.stage):
                    done[("sens", r)] = sensitivity(r, args)
                continue
            path = cache_path(r, args, "model", {"bers": args.bers, "reps": args.reps, "key": args.key_ber})
            if path.exists():
                done[r] = json.loads(path.read_text())
            elif not args.report_only and (args.stage is None or stage in args.stage):
                done[r] = trained(r, args)
            if args.out:
                write_section(Path(args.out), "protocol-study", report(args, runs, done))
    text = report(args, runs, done)
    print(text)
    if args.out:
        write_section(Path(args.out), "protocol-study", text)


if __name__ == "__main__":
    main()
