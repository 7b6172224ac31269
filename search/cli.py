"""The ``mcel`` command line: one entry point, subcommands in a dict (as optuna's cli.py).

Exit statuses (the product's exceptions, :mod:`mcel_search.core.errors`):

* 0: done;
* 2, bad input (:class:`~mcel_search.core.errors.BadInputError`: a value out of range, an unsafe
  checkpoint, an unreachable tracking server, an unwritable storage path; and a path the user gave that
  does not exist or cannot be opened): ``mcel: error: ...`` naming the field, the value and what is
  allowed, one line per problem (a spec with four bad fields prints four lines);
* 3, resumable (:class:`~mcel_search.core.errors.ResumableError`: a full disk, a tracking server down too
  long): one line saying what to fix before rerunning with ``--resume``;
* 4, no result: a search that ended with a study without a completed trial;
* 5, a cluster-side failure: an error that Ray raised or carried from another process (a worker or a node
  died, a remote task failed, a runtime environment could not be set up): one line naming the node (its
  address), the process and the cause, never labelled bad input even when the cause is a missing file
  *on that node*;
* 1, a bug: any other exception, reported as one line that says so; ``--debug`` shows the traceback (for
  every status).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..core.errors import BadInputError, McelError, NoResultError, ResumableError
from ..core.redact import redact_credentials

#: Exit status of bad input (:class:`BadInputError` and path errors of files the user named).
EXIT_BAD_INPUT = 2
#: Exit status of a search stopped by its environment (:class:`ResumableError`): fix it, rerun with --resume.
EXIT_RESUMABLE = 3
#: Exit status of a search that ran but left a study without a completed trial (:class:`NoResultError`).
EXIT_NO_RESULT = 4
#: Exit status of a failure on the Ray cluster's side (a ``ray.exceptions.RayError``): see :func:`cluster_failure`.
EXIT_CLUSTER = 5
#: Exit status of an exception that is not the product's own: a bug.
EXIT_BUG = 1
#: OS errors about a path (a file the user named that is missing, a directory, not permitted): bad input.
PATH_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)


class UsageError(BadInputError):
    """Bad input found by the CLI itself; ``errors`` holds one line per problem when there are several."""

    def __init__(self, message: str, errors: Sequence[str] | None = None) -> None:
        super().__init__(message)
        self.errors = list(errors or [message])


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None


def _protocol_arg(text: str):
    from ..core.protocol import parse_protocol

    try:
        return parse_protocol(text)
    except BadInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _protocol_line(protocol) -> str:
    """The switches of ``protocol`` on one line (what every printed result says it used)."""
    return ", ".join(f"{k} {v}" for k, v in protocol.to_dict().items() if k != "preset")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one model (one trial) and write a checkpoint and metrics")
    p.add_argument("--arch", default="small_cnn", help="model name (see `mcel list`)")
    p.add_argument("--dataset", default="digits", help="data set name (see `mcel list`)")
    p.add_argument("--bits", type=int, default=4, help="1 (BNN), 2, 4, 8 (QAT) or 32 (float)")
    p.add_argument("--loss", default="mcel", help="cel, mcel or mhl")
    # one flag per registered loss parameter (core.losses.all_loss_params; a test keeps them in step)
    p.add_argument("--margin", type=float, default=None, help="MCEL margin m >= 0 (mcel; default 8)")
    p.add_argument("--b", type=float, default=None, help="MCEL saturation bound b > 0 (mcel; default 16)")
    p.add_argument("--mhl-margin", type=float, default=None, help="MHL margin > 0 (mhl)")
    p.add_argument(
        "--logit-scale",
        type=float,
        default=None,
        help="constant factor on the raw logits (default 1.0; the learnable scale's init under --protocol "
        "paper+output_scale_init=None)",
    )
    p.add_argument(
        "--protocol",
        default="default",
        type=_protocol_arg,
        help="default (ours), paper (the reference framework's: raw inputs, faulty biases, integer "
        "arithmetic, learnable scale, re-estimated decode; lr 1e-4, StepLR 5/0.5, 10 epochs unless given), "
        "or PRESET+switch=value,... e.g. paper+decode=clean",
    )
    # None: the protocol preset's value (paper) or TrainConfig's default
    p.add_argument("--epochs", type=int, default=None, help="default 10")
    p.add_argument("--batch-size", type=int, default=None, help="default 256")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 1e-3; paper 1e-4)")
    p.add_argument(
        "--step-size", type=int, default=None, help="StepLR step size in epochs (default 10; paper 5)"
    )
    p.add_argument("--gamma", type=float, default=None, help="StepLR decay (default 0.5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--data-root", default=None, help="data set root (default: $MCEL_DATA_ROOT)")
    p.add_argument("--limit-train", type=int, default=None, help="use the first N training samples only")
    p.add_argument("--limit-test", type=int, default=None, help="use the first N test samples only")
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    p.add_argument(
        "--out",
        default=None,
        help="output directory for checkpoint.pt and metrics.json (default runs/<arch>-<dataset>-<bits>b-<loss>)",
    )
    p.set_defaults(func=cmd_train)


def _train_problems(args: argparse.Namespace, given: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """Every problem of ``mcel train``'s flags at once (one line each, as a spec's), and the loss's
    parameters: each flag given, else its registered default (MCEL: m = 8, b = 16)."""
    from ..core.data.registry import list_datasets
    from ..core.layers import check_layer_bits
    from ..core.losses import all_loss_params, create_loss, loss_param_specs
    from ..core.models.registry import check_model_bits, list_models
    from ..core.training import train_config_problems

    problems: list[str] = []
    loss_params: dict[str, Any] = {}

    def check(fn: Callable[[], Any]) -> None:
        try:
            fn()
        except BadInputError as exc:
            problems.append(str(exc).splitlines()[0])

    if args.arch in list_models():
        check(lambda: check_model_bits(args.arch, args.bits))  # what this architecture supports
    else:
        problems.append(f"arch={args.arch!r} is not known: one of {', '.join(list_models())}")
        check(lambda: check_layer_bits(args.bits))
    if args.dataset not in list_datasets():
        problems.append(f"dataset={args.dataset!r} is not known: one of {', '.join(list_datasets())}")
    try:
        specs = loss_param_specs(args.loss)
    except BadInputError as exc:
        problems.append(str(exc))
    else:
        names = {name for name in all_loss_params() if getattr(args, name) is not None}
        loss_params = {name: getattr(args, name) for name in names}
        loss_params.update(
            {p.name: p.default for p in specs if p.name not in names and p.default is not None}
        )
        check(lambda: create_loss(args.loss, **loss_params))  # a flag it does not take, a bound
    problems += [
        f"{k}={v!r} is not allowed: it must be {allowed}" for k, v, allowed in train_config_problems(given)
    ]
    for flag in ("limit_train", "limit_test"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            problems.append(f"--{flag.replace('_', '-')}={value!r} is not allowed: a number of samples >= 1")
    return problems, loss_params


def cmd_train(args: argparse.Namespace) -> int:
    from ..core.experiment import TrialSpec, run_trial
    from ..core.training import TrainConfig

    protocol = args.protocol
    given = {
        k: getattr(args, k)
        for k in ("epochs", "batch_size", "lr", "step_size", "gamma")
        if getattr(args, k) is not None
    }
    problems, loss_params = _train_problems(args, given)
    if problems:  # all of them, before anything is printed or trained
        raise UsageError(problems[0], problems)
    if args.out is None:
        args.out = str(Path("runs") / f"{args.arch}-{args.dataset}-{args.bits}b-{args.loss}")
    train = TrainConfig(
        **{**protocol.train_defaults(), **given},
        seed=args.seed,
        device=args.device,
        progress=args.progress,
    )
    spec = TrialSpec(
        arch=args.arch,
        dataset=args.dataset,
        bits=args.bits,
        loss=args.loss,
        loss_params=loss_params,
        logit_scale=1.0 if args.logit_scale is None else args.logit_scale,
        train=train,
        data_root=args.data_root,
        limit_train=args.limit_train,
        limit_test=args.limit_test,
        protocol=protocol,
    )
    print(f"protocol {protocol.label}: {_protocol_line(protocol)}", flush=True)

    def on_epoch(stats, _trainer) -> None:
        print(
            f"epoch {stats.epoch:>3}  loss {stats.train_loss:.4f}  train acc {100 * stats.train_acc:6.2f}%  "
            f"MLM {stats.mlm:.4f}  lr {stats.lr:.2e}  {stats.seconds:.1f}s",
            flush=True,
        )

    result = run_trial(spec, out_dir=args.out, on_epoch=on_epoch)
    print(f"clean test accuracy {100 * result.clean_acc:.2f}%  test margin mean {result.margins['mean']:.4f}")
    print(f"wrote {result.checkpoint} and {Path(args.out) / 'metrics.json'}")
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="accuracy under bit errors of a checkpoint (mean, std, min per BER)")
    p.add_argument(
        "checkpoint",
        help="checkpoint path, or a runs:/<id>/checkpoint/model.pt or models:/<name>@<alias> URI",
    )
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI for runs:/ and models:/ URIs")
    p.add_argument(
        "--bers",
        type=_floats,
        default=[0.0, 0.001, 0.01],
        help="comma-separated BERs as fractions in [0, 1] (0.01 = 1%%)",
    )
    p.add_argument("--reps", type=int, default=10, help="error realizations per BER")
    p.add_argument("--seed", type=int, default=0, help="seed of the realization seed list")
    p.add_argument("--p10", type=float, default=None, help="1->0 flip probability (default: symmetric)")
    p.add_argument("--csv", default=None, help="write one row per (ber, rep): ber, rep, accuracy")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-root", default=None, help="override the data root stored in the checkpoint")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument(
        "--tolerable",
        action="store_true",
        help="also the tolerable BER: the highest BER within --tolerance points of clean, bisected on a log "
        "scale between the --bers grid points with the same realization seeds",
    )
    p.add_argument("--tolerance", type=float, default=1.0, help="tolerable BER: points below clean, (0, 100]")
    p.add_argument(
        "--tolerable-iters", type=int, default=6, help="tolerable BER: bisection steps (each --reps passes)"
    )
    _add_protocol_flags(p)
    p.set_defaults(func=cmd_evaluate)


def _add_protocol_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--protocol",
        default=None,
        type=_protocol_arg,
        help="evaluate under this protocol (default: the one the checkpoint was trained with, which it "
        "records); another one needs --cross-protocol",
    )
    p.add_argument(
        "--cross-protocol",
        action="store_true",
        help="allow --protocol to differ from the checkpoint's (only inputs and decode may change)",
    )


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..core.evaluation import ber_sweep, format_sweep_table
    from ..core.training import resolve_device

    if args.tolerable:
        from ..core.tolerance import check_tolerance

        check_tolerance(args.tolerance, args.tolerable_iters)  # before the checkpoint is loaded
        if not any(b > 0 for b in args.bers):
            raise UsageError(f"--tolerable needs a BER > 0 in --bers (got {args.bers})")
    device = resolve_device(args.device)
    model, payload = _load_checkpoint_arg(args, device)
    protocol, name, data = _checkpoint_data(args, payload)
    result = ber_sweep(
        model,
        data.test,
        args.bers,
        args.reps,
        args.seed,
        p10=args.p10,
        device=str(device),
        decode=protocol.decode,
    )
    m = payload["model"]
    print(f"{m['name']} {m['bits']}-bit on {name} ({len(data.test)} test samples), seed {args.seed}")
    print(f"protocol {protocol.label}: {_protocol_line(protocol)}")
    print(format_sweep_table(result))
    if args.tolerable:
        from ..core.evaluation import cache_batches
        from ..core.tolerance import format_tolerable, model_tolerable_ber

        tolerable = model_tolerable_ber(
            model,
            cache_batches(data.test, device),
            args.bers,
            args.reps,
            args.seed,
            args.tolerance,
            args.tolerable_iters,
            p10=args.p10,
            decode=protocol.decode,
            curve=result,
        )
        print(format_tolerable(tolerable))
    if args.csv:
        path = Path(args.csv)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["ber", "rep", "accuracy"])
            writer.writeheader()
            for r in result.records:
                writer.writerow({"ber": r["ber"], "rep": r["rep"], "accuracy": r["accuracy"]})
        print(f"wrote {path}")
    return 0


def _load_checkpoint_arg(args: argparse.Namespace, device):
    """``(model, payload)`` of ``args.checkpoint``: a path, or a runs:/ / models:/ URI downloaded from
    ``args.tracking_uri`` into a temporary directory that is removed after loading."""
    from ..core.checkpoint import load_checkpoint

    with tempfile.TemporaryDirectory(prefix="mcel-ckpt-") as tmp:
        path = args.checkpoint
        if path.startswith(("runs:/", "models:/")):
            from ..analysis.queries import download_checkpoint

            path = str(download_checkpoint(path, tmp, tracking_uri=args.tracking_uri))
        return load_checkpoint(path, device=device)


def _checkpoint_data(args: argparse.Namespace, payload: dict):
    """``(protocol, data set name, test data)`` to evaluate a loaded checkpoint with: its recorded protocol
    unless ``--protocol`` (with ``--cross-protocol``) says otherwise, its data set under that protocol's
    input convention, ``--data-root`` overriding the recorded root."""
    from ..core.data import load_dataset
    from ..core.protocol import evaluation_protocol, protocol_from_dict

    trained = protocol_from_dict(payload.get("protocol"))
    protocol = evaluation_protocol(trained, args.protocol, args.cross_protocol)
    data_cfg = dict(payload.get("data", {}))
    name = data_cfg.pop("name", None)
    if name is None:
        raise UsageError(f"checkpoint {args.checkpoint!r} does not say which data set it was trained on")
    if args.data_root is not None:
        data_cfg["root"] = args.data_root
    data_cfg.pop("limit_train", None)
    data_cfg["inputs"] = protocol.inputs
    return protocol, name, load_dataset(name, **data_cfg)


def _add_sensitivity(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sensitivity",
        help="accuracy drop per stored tensor (each layer's weights, each faulty bias) when only it is flipped",
    )
    p.add_argument("checkpoint", help="checkpoint path, or a runs:/ or models:/ URI")
    p.add_argument(
        "--ber", type=float, required=True, help="bit error rate as a fraction in [0, 1], e.g. 0.01 (= 1%%)"
    )
    p.add_argument("--reps", type=int, default=10, help="error realizations per tensor (>= 2 for a CI)")
    p.add_argument("--seed", type=int, default=0, help="seed of the realization seed list (as mcel evaluate)")
    p.add_argument("--p10", type=float, default=None, help="1->0 flip probability (default: symmetric)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-root", default=None, help="override the data root stored in the checkpoint")
    p.add_argument("--csv", default=None, help="write one row per (tensor, rep): tensor, rep, accuracy")
    p.add_argument("--figure", default=None, help="write a bar chart of the drops (.png)")
    p.add_argument("--tracking-uri", default=None, help="MLflow store for runs:/ / models:/ and --log-to")
    p.add_argument(
        "--log-to",
        default=None,
        metavar="RUN_ID",
        help="log the map as metrics sensitivity.<tensor>.drop/ci_low/ci_high/worst into this MLflow run",
    )
    _add_protocol_flags(p)
    p.set_defaults(func=cmd_sensitivity)


def cmd_sensitivity(args: argparse.Namespace) -> int:
    from ..analysis import sensitivity as sens
    from ..core.sensitivity import sensitivity_map
    from ..core.training import MAX_SEED, resolve_device
    from .spec import MAX_REPS, SpecError

    problems = []
    if not (isinstance(args.ber, float) and 0.0 <= args.ber <= 1.0):
        problems.append(f"--ber: {args.ber!r} — a bit error rate in [0, 1]")
    if not 1 <= args.reps <= MAX_REPS:
        problems.append(f"--reps: {args.reps!r} — an integer >= 1 and <= {MAX_REPS:_}")
    if not 0 <= args.seed <= MAX_SEED:
        problems.append(f"--seed: {args.seed!r} — an integer >= 0 and <= {MAX_SEED:_}")
    if args.figure is not None and not args.figure.lower().endswith(".png"):
        problems.append(f"--figure: {args.figure!r} — a path ending in .png")
    if problems:
        raise SpecError(problems, "<command line>")
    client = None
    if args.log_to is not None:  # the run must exist before the expensive part
        from ..analysis.stores import open_store

        client, _ = open_store(args.tracking_uri)
        try:
            client.get_run(args.log_to)
        except Exception as exc:  # MlflowException for an unknown id
            raise UsageError(
                f"--log-to: {args.log_to!r} — the id of an existing MLflow run ({type(exc).__name__})"
            ) from None
    device = resolve_device(args.device)
    model, payload = _load_checkpoint_arg(args, device)
    protocol, name, data = _checkpoint_data(args, payload)
    raw = sensitivity_map(
        model,
        data.test,
        args.ber,
        args.reps,
        args.seed,
        p10=args.p10,
        decode=protocol.decode,
        device=str(device),
    )
    rows = sens.summarize(raw)
    m = payload["model"]
    print(f"{m['name']} {m['bits']}-bit on {name} ({len(data.test)} test samples), seed {args.seed}")
    print(f"protocol {protocol.label}: {_protocol_line(protocol)}")
    print(sens.format_table(rows, args.ber))
    if args.csv:
        out = Path(args.csv)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["tensor", "kind", "rep", "accuracy", "clean_acc"])
            writer.writeheader()
            for r in raw:
                for rep, acc in enumerate(r.accs):
                    writer.writerow(
                        {
                            "tensor": r.name,
                            "kind": r.kind,
                            "rep": rep,
                            "accuracy": acc,
                            "clean_acc": r.clean_acc,
                        }
                    )
        print(f"wrote {out}")
    if args.figure:
        print(f"wrote {sens.plot(rows, args.ber, args.figure)}")
    if client is not None:
        import time as _time

        from mlflow.entities import Metric, Param

        now = int(_time.time() * 1000)
        client.log_batch(
            args.log_to,
            metrics=[Metric(k, v, now, 0) for k, v in sens.metrics(rows).items()],
            params=[Param("sensitivity.ber", str(args.ber)), Param("sensitivity.reps", str(args.reps))],
        )
        print(f"logged {len(rows)} tensors' sensitivity into run {args.log_to}")
    return 0


def _add_list(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="registered models, data sets and losses")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)


def cmd_list(args: argparse.Namespace) -> int:
    from ..core.data import list_datasets
    from ..core.losses import list_losses
    from ..core.models import list_models, supported_bits

    info = {
        "models": {m: sorted(supported_bits(m)) for m in list_models()},
        "datasets": list_datasets(),
        "losses": list_losses(),
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for m, bits in info["models"].items():
            print(f"model    {m:<12} bits {', '.join(map(str, bits))}")
        print(f"datasets {', '.join(info['datasets'])}")
        print(f"losses   {', '.join(info['losses'])}")
    return 0


def _add_search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="run (or resume) a search spec: Ray Tune + Optuna + MLflow")
    p.add_argument("spec", help="search spec YAML (see configs/)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted search of the same name")
    p.add_argument(
        "--dry-run", action="store_true", help="validate the spec and print the plan; start nothing"
    )
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (overrides the spec)")
    p.add_argument("--storage", default=None, help="Ray Tune storage path (overrides the spec)")
    p.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: start a local one)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all)")
    p.add_argument("--quiet", action="store_true", help="no progress view (the plan and the result only)")
    p.add_argument(
        "--ray-status",
        action="store_true",
        help="Ray Tune's own status block every few seconds instead of the compact progress view",
    )
    p.set_defaults(func=cmd_search)


def cmd_search(args: argparse.Namespace) -> int:
    from .preflight import resolve_storage_path
    from .runner import plan, run_search
    from .spec import check_overrides
    from .spec_file import load_spec

    spec = load_spec(args.spec)
    check_overrides(args.tracking_uri, args.storage)
    tracking_uri = args.tracking_uri or spec.tracking.uri
    storage = resolve_storage_path(args.storage or spec.storage.path)
    if args.dry_run:
        print(plan(spec, tracking_uri, storage))
        return 0
    print(plan(spec, tracking_uri, storage), flush=True)
    outcome = run_search(
        spec,
        resume=args.resume,
        tracking_uri=args.tracking_uri,
        storage_path=args.storage,
        ray_address=args.ray_address,
        num_cpus=args.num_cpus,
        verbose=1 if args.ray_status and not args.quiet else 0,
        progress=not (args.quiet or args.ray_status),
    )
    from ..analysis.workflow import pareto_summary

    empty = []
    for study in outcome.studies:
        states = [t["state"] for t in study.trials]
        print(
            f"{study.study}: {states.count('completed')} completed, {states.count('pruned')} pruned, "
            f"{states.count('errored')} errored" + (", CEL baseline done" if study.baseline else "")
        )
        if "completed" not in states:
            empty.append(study)
    if empty:
        raise NoResultError(_no_result_line(spec.name, empty))
    print()
    print(pareto_summary(spec.experiment_name(), outcome.tracking_uri))
    uri = outcome.tracking_uri
    shown = redact_credentials(uri)
    print(f"\nMLflow experiment {spec.experiment_name()!r} (id {outcome.experiment_id}) at {shown}")
    if uri.startswith(("sqlite:", "file:")) or "://" not in uri:
        print(
            f"open the UI with:  .venv/bin/mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
        )
    return 0


def _no_result_line(name: str, studies: list) -> str:
    """One line: which studies ended without a completed trial, their counts and the first error."""
    parts, first_error = [], None
    for study in studies:
        states = [t["state"] for t in study.trials]
        parts.append(f"{study.study} ({states.count('errored')} errored, {states.count('pruned')} pruned)")
        first_error = first_error or next((t["error"] for t in study.trials if t.get("error")), None)
    why = f"; first error: {' '.join(first_error.split())[:300]}" if first_error else ""
    return f"search {name!r}: no trial completed in {', '.join(parts)}, so nothing can be selected{why}"


def _tracking_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)",
    )


def _selection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", default=None, help="only this architecture")
    p.add_argument("--bits", type=int, default=None, help="only this bit width")
    p.add_argument(
        "--rule",
        default="constraint",
        help="constraint (default), knee, weighted or tolerable (highest tolerable BER above the clean floor)",
    )
    p.add_argument(
        "--max-clean-drop",
        type=float,
        default=1.0,
        help="constraint and tolerable rules: clean accuracy drop allowed, points",
    )
    p.add_argument("--weights", default=None, help="weighted rule: clean_acc=W1,ber_acc=W2")
    p.add_argument(
        "--target-ber",
        type=float,
        default=None,
        help="BER of the paired comparison, a fraction in [0, 1] (0.01 = 1%%; default: the spec's)",
    )


def _selection_kwargs(args: argparse.Namespace) -> dict:
    ber = args.target_ber
    if ber is not None and not (math.isfinite(ber) and 0.0 <= ber <= 1.0):
        raise UsageError(f"--target-ber {ber!r}: a bit error rate as a fraction in [0, 1] (0.01 = 1%)")
    return {
        "tracking_uri": args.tracking_uri,
        "arch": args.arch,
        "bits": args.bits,
        "rule": args.rule,
        "max_clean_drop": args.max_clean_drop,
        "weights": _weights(args.weights),
        "target_ber": args.target_ber,
    }


def _weights(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    out = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            raise UsageError(f"--weights: {text!r} — expected clean_acc=W1,ber_acc=W2 with numbers") from None
    return out


def _add_pareto(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pareto", help="Pareto front and selected point per architecture; tags them in MLflow")
    p.add_argument("experiment", help="MLflow experiment (the spec's name by default)")
    _selection_args(p)
    _tracking_arg(p)
    p.add_argument(
        "--register", action="store_true", help="register each selected checkpoint in the Model Registry"
    )
    p.add_argument("--alias", default="champion", help="alias of the registered version (default: champion)")
    p.add_argument(
        "--sensitivity",
        type=float,
        default=None,
        metavar="BER",
        help="also map each selected model's per-tensor sensitivity at this BER (as `mcel sensitivity`) "
        "(a fraction in [0, 1], 0.01 = 1%%) and log it into the selected run",
    )
    p.add_argument("--sensitivity-reps", type=int, default=10, help="realizations per tensor (default 10)")
    p.set_defaults(func=cmd_pareto)


def cmd_pareto(args: argparse.Namespace) -> int:
    from ..analysis.workflow import pareto_command

    if args.sensitivity is not None:
        from .spec import MAX_REPS, SpecError

        problems = []
        if not 0.0 <= args.sensitivity <= 1.0:
            problems.append(f"--sensitivity: {args.sensitivity!r} — a bit error rate in [0, 1]")
        if not 1 <= args.sensitivity_reps <= MAX_REPS:
            problems.append(
                f"--sensitivity-reps: {args.sensitivity_reps!r} — an integer >= 1 and <= {MAX_REPS:_}"
            )
        if problems:
            raise SpecError(problems, "<command line>")
    print(
        pareto_command(args.experiment, register=args.register, alias=args.alias, **_selection_kwargs(args))
    )
    if args.sensitivity is not None:
        from ..analysis.queries import best_checkpoints

        for _, row in best_checkpoints(args.experiment, **_selection_kwargs(args)).iterrows():
            print(
                f"\n== sensitivity of the selected {row['dataset']} {row['arch']} {int(row['bits'])}-bit model =="
            )
            cmd_sensitivity(
                argparse.Namespace(
                    checkpoint=row["checkpoint_uri"],
                    ber=args.sensitivity,
                    reps=args.sensitivity_reps,
                    seed=0,
                    p10=None,
                    device="cpu",
                    data_root=None,
                    csv=None,
                    figure=None,
                    tracking_uri=args.tracking_uri,
                    log_to=row["run_id"],
                    protocol=None,
                    cross_protocol=False,
                )
            )
    return 0


def _add_best(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("best", help="the selected checkpoint's run, metrics and URI; optionally download it")
    p.add_argument("experiment")
    _selection_args(p)
    _tracking_arg(p)
    p.add_argument("--download", default=None, help="directory to download the checkpoint into")
    p.set_defaults(func=cmd_best)


def cmd_best(args: argparse.Namespace) -> int:
    from ..analysis.queries import best_checkpoints, download_checkpoint
    from ..core.paths import child_path

    best = best_checkpoints(args.experiment, **_selection_kwargs(args))
    if best.empty:
        raise UsageError(
            f"experiment {args.experiment!r} has no completed trial matching arch={args.arch} bits={args.bits}"
        )
    for _, row in best.iterrows():
        print(f"{row['dataset']} {row['arch']} {int(row['bits'])}-bit: run {row['run_id']}")
        print(f"  margin {row['margin']}, b {row['b']}, logit scale {row['logit_scale']}")
        print(
            f"  clean {100 * row['clean_acc']:.2f}%, at BER {100 * row['target_ber']:g}% "
            f"{100 * row['ber_acc']:.2f} ± {100 * row['ber_acc_std']:.2f}%"
        )
        print(f"  {row['verdict']}")
        print(f"  checkpoint: {row['checkpoint_uri']}")
        if args.download:
            dst = child_path(args.download, f"{row['arch']}-{int(row['bits'])}b")  # tags: never outside
            path = download_checkpoint(row["checkpoint_uri"], dst, tracking_uri=args.tracking_uri)
            print(f"  downloaded to {path}")
    return 0


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="Markdown report with Pareto, BER, MLM and margin figures")
    p.add_argument("experiment")
    _selection_args(p)
    _tracking_arg(p)
    p.add_argument("--out", required=True, help="output directory (report.md and PNG figures)")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from ..analysis.workflow import report_command

    path = report_command(args.experiment, args.out, **_selection_kwargs(args))
    print(f"wrote {path}")
    return 0


COMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {
    "pareto": _add_pareto,
    "best": _add_best,
    "report": _add_report,
    "search": _add_search,
    "train": _add_train,
    "evaluate": _add_evaluate,
    "sensitivity": _add_sensitivity,
    "list": _add_list,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mcel", description="Search for bit-error-tolerant quantized networks trained with MCEL."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS.values():
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow prints a "View run ... at <tracking URI>" pair per finished run: noise per trial, and the URI
    # would carry a password given in it
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    from ..core.allocator import tune_cpu_allocator

    tune_cpu_allocator()  # every command's CPU work (evaluate's BER sweeps too); MCEL_TUNE_MALLOC=0: off
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("mcel: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        failure = cluster_failure(exc)  # before the path errors: Ray re-raises a remote FileNotFoundError
        if failure is None:
            return _classified(exc, args.debug)
        if args.debug:
            traceback.print_exc()
        print(f"mcel: error: {redact_credentials(failure)}", file=sys.stderr)
        return EXIT_CLUSTER


def _classified(exc: Exception, debug: bool) -> int:
    """Print the lines of one of the product's own exceptions (or of a bug) and return its exit status."""
    if isinstance(exc, ResumableError):
        return _fail(exc, debug, EXIT_RESUMABLE)
    if isinstance(exc, NoResultError):
        return _fail(exc, debug, EXIT_NO_RESULT)
    if isinstance(exc, (BadInputError, *PATH_ERRORS)):
        return _fail(exc, debug, EXIT_BAD_INPUT)
    return _fail(exc, debug, EXIT_BUG)  # not ours: a bug, said as such


def _is_ray_error(exc: BaseException) -> bool:
    """True for a ``ray.exceptions.RayError`` (checked by class, so Ray is never imported for it), including
    Ray's dual classes such as ``RayTaskError(FileNotFoundError)``."""
    return any(c.__module__ == "ray.exceptions" and c.__name__ == "RayError" for c in type(exc).__mro__)


#: The first line of a ``RayTaskError``: ``ray::<task>() (pid=<pid>, ip=<address>)`` (colour codes removed).
_RAY_TASK_HEADER = re.compile(r"ray::(?P<task>[^\s(]+)\(\)\s*\(pid=(?P<pid>\d+), ip=(?P<ip>[^)\s]+)\)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def cluster_failure(exc: BaseException) -> str | None:
    """One line for a failure on the Ray cluster's side, or None when ``exc`` is not one.

    ``RayTaskError`` (a remote task or actor raised): ``cluster-side failure on node <ip> (pid <pid>, <task>):
    <CauseType>: <first line of the cause>``; the node, process and task come from the error's first line
    (``ray::<task>() (pid=..., ip=...)``), which Ray's dual classes such as ``RayTaskError(FileNotFoundError)``
    keep when their attributes are gone. Other Ray errors (a node or worker died, an object was lost, a
    runtime environment failed): ``cluster-side failure[ on node <id>]: <Type>: <first line>``. A
    ``BadInputError`` or ``FileNotFoundError`` raised *on a worker* is the node's state, not the user's input,
    so it is reported here, not as exit 2.
    """
    if not _is_ray_error(exc):
        return None
    text = _ANSI.sub("", str(exc))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    cause = exc.__dict__.get("cause")  # the dual classes forward unknown attributes to the cause
    header = _RAY_TASK_HEADER.search(lines[0]) if lines else None
    if cause is not None and header is not None:
        first = (str(cause).splitlines() or [""])[0] or type(cause).__name__
        where = f"node {header['ip']} (pid {header['pid']}, {header['task']})"
        return f"cluster-side failure on {where}: {type(cause).__name__}: {first}"
    node = next((exc.__dict__[a] for a in ("node_id", "node_ip_address", "ip") if exc.__dict__.get(a)), None)
    where = f" on node {node}" if node else ""
    name = type(exc).__name__
    return f"cluster-side failure{where}: {name}: {lines[0] if lines else name}"


def _error_lines(exc: BaseException) -> list[str]:
    """What ``mcel: error:`` prints: every line of a spec error (one per bad field), else the first line
    of the message; an exception that is not the product's own is labelled a bug."""

    if isinstance(exc, (McelError, *PATH_ERRORS)):
        lines = getattr(exc, "errors", None) or str(exc).splitlines()[:1] or [type(exc).__name__]
        return [redact_credentials(line) for line in lines]
    first = (str(exc).splitlines() or [""])[0]
    return [
        redact_credentials(
            f"internal error (a bug in mcel-search, not your input): {type(exc).__name__}: {first}; "
            "rerun with --debug for the traceback and report it"
        )
    ]


def _fail(exc: BaseException, debug: bool, status: int) -> int:
    """Print ``mcel: error: <line>`` for each line of :func:`_error_lines` (passwords masked), the traceback
    too with ``--debug``; return ``status``."""
    if debug:
        traceback.print_exc()
    for line in _error_lines(exc):
        print(f"mcel: error: {line}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
