"""The search spec: every shipped config loads, the dict round trip is exact, and every malformed spec is
rejected with one line that names the field and the bad value."""

from __future__ import annotations

import copy
import pickle
import textwrap
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

import mcel_search.search.spec
from mcel_search.search.optuna_options import create_pruner, create_sampler
from mcel_search.search.spec import (
    ParamSpace,
    SpecError,
    flatten,
    parse_spec,
    spec_to_dict,
)
from mcel_search.search.spec_file import load_spec

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
CONFIGS = sorted([*CONFIG_DIR.glob("*.yaml"), *CONFIG_DIR.glob("paper/*.yaml")])

BASE: dict[str, Any] = {
    "name": "t",
    "dataset": "digits",
    "architectures": ["small_cnn"],
    "bits": [4],
    "losses": ["mcel"],
    "space": {"margin": {"choice": [1, 2, 4]}, "b": {"choice": [4, 8]}},
    "train": {"epochs": 2},
    "trials_per_arch": 3,
}

DELETE = object()


def mutate(changes: dict[str, Any], base: dict[str, Any] = BASE) -> dict[str, Any]:
    """A deep copy of ``base`` with dotted keys set (or deleted with ``DELETE``); missing levels created."""
    data = copy.deepcopy(base)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = data
        for key in parents:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        if value is DELETE:
            del node[leaf]
        else:
            node[leaf] = value
    return data


def errors_of(data: Any) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    return info.value.errors


# ------------------------------------------------------------------------------------ the shipped configs


def test_configs_exist() -> None:
    names = {str(p.relative_to(CONFIG_DIR)) for p in CONFIGS}
    assert {
        "quickstart.yaml",
        "paper/vgg3-fashionmnist.yaml",
        "paper/vgg7-svhn.yaml",
        "paper/mobilenetv2-cifar10.yaml",
        "paper/resnet18-imagenette.yaml",
        "paper/vgg3-fashionmnist-bnn.yaml",
        "paper/vgg7-svhn-bnn.yaml",
    } <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_loads_and_round_trips(path: Path) -> None:
    spec = load_spec(path)
    assert spec.name == path.stem
    assert parse_spec(spec_to_dict(spec)) == spec
    # the dict is plain YAML: dumping and re-loading it gives the same spec as well
    dumped = yaml.safe_load(yaml.safe_dump(spec_to_dict(spec)))
    assert parse_spec(dumped) == spec
    assert spec.objective.target_ber in spec.sweep.bers


def test_quickstart_is_the_small_demo() -> None:
    spec = load_spec(CONFIG_DIR / "quickstart.yaml")
    assert spec.data.name == "digits"
    assert spec.studies() == [("small_cnn", 4)]
    assert spec.space["margin"] == ParamSpace("choice", values=(1.0, 2.0, 4.0, 8.0, 16.0, 32.0))
    assert spec.space["b"].values == (4.0, 8.0, 16.0)
    assert spec.train.epochs <= 10 and spec.trials_per_arch == 12 and spec.concurrency == 2
    assert spec.resources.gpu == 0
    assert spec.pruner.options == {"n_startup_trials": 4, "n_warmup_steps": 2}
    assert spec.experiment_name() == "quickstart"


@pytest.mark.parametrize(
    "stem, epochs, batch_size, step_size, gamma, bits",
    [
        ("vgg3-fashionmnist", 100, 256, 10, 0.5, (2, 4, 8)),
        ("vgg7-svhn", 50, 256, 5, 0.25, (2, 4, 8)),
        ("mobilenetv2-cifar10", 100, 128, 10, 0.5, (2, 4, 8)),
        ("resnet18-imagenette", 100, 128, 10, 0.5, (2, 4, 8)),
        ("vgg3-fashionmnist-bnn", 100, 256, 10, 0.5, (1,)),
        ("vgg7-svhn-bnn", 100, 256, 10, 0.5, (1,)),
    ],
)
def test_paper_configs_follow_table_2(
    stem: str, epochs: int, batch_size: int, step_size: int, gamma: float, bits: tuple[int, ...]
) -> None:
    """Table II's epochs / batch size / StepLR per setup, Sec. VIII-B's margins, CEL + MHL baselines."""
    spec = load_spec(CONFIG_DIR / "paper" / f"{stem}.yaml")
    train = spec.train
    assert (train.epochs, train.batch_size, train.step_size, train.gamma) == (
        epochs,
        batch_size,
        step_size,
        gamma,
    )
    assert spec.bits == bits
    assert spec.space["margin"].values == tuple(float(2**k) for k in range(8))  # powers of two up to 128
    assert spec.losses == ("mcel", "mhl") and spec.baseline.enabled  # MHL searched, CEL as the baseline
    assert spec.storage.path.startswith("s3://") and spec.tracking.uri.startswith("http://")
    assert spec.resources.gpu > 0


# ------------------------------------------------------------------------------------------ valid specs


def test_minimal_spec_takes_defaults() -> None:
    spec = parse_spec(BASE)
    assert spec.data.name == "digits" and spec.data.limit_train is None
    assert spec.space["logit_scale"] == ParamSpace("choice", values=(1.0,))
    assert spec.space["logit_scale"].fixed == 1.0 and spec.space["margin"].fixed is None
    assert spec.train.batch_size == 256 and spec.train.device == "auto"
    assert spec.train.train_ber == 0.0  # bit-error training is off unless asked for
    assert parse_spec(mutate({"train.train_ber": 0.01})).train.train_ber == 0.01
    assert spec.concurrency == 1
    assert spec.sampler.name == "nsga2" and spec.pruner.name == "median" and spec.pruner.metric == "clean_acc"
    assert spec.baseline.enabled is True and spec.failure.max_retries == 2
    assert spec.experiment_name() == "t"


def test_docstring_example_is_valid_and_shows_the_defaults() -> None:
    doc = mcel_search.search.spec.__doc__ or ""
    block = doc.split("every other key has the default shown)::\n\n")[1].split("\n\nYAML notes")[0]
    example = yaml.safe_load(textwrap.dedent(block))
    required_only = {key: example[key] for key in ("name", "architectures", "bits", "losses", "space")}
    required_only.update(dataset=example["dataset"]["name"], train={"epochs": 10}, trials_per_arch=12)
    assert parse_spec(example) == parse_spec(required_only)


def test_dataset_string_equals_mapping() -> None:
    as_mapping = mutate({"dataset": {"name": "digits"}})
    assert parse_spec(as_mapping) == parse_spec(BASE)


def test_target_ber_is_added_to_the_sweep_and_bers_are_sorted() -> None:
    spec = parse_spec(mutate({"objective.target_ber": 0.03, "sweep.bers": [0.05, 0.0, 0.01]}))
    assert spec.sweep.bers == (0.0, 0.01, 0.03, 0.05)
    already = parse_spec(mutate({"objective.target_ber": 0.01, "sweep.bers": [0.01, 0.0]}))
    assert already.sweep.bers == (0.0, 0.01)


def test_space_forms_and_round_trip() -> None:
    data = mutate(
        {
            "space.margin": {"uniform": [0, 32]},
            "space.b": {"loguniform": [2, 64]},
            "space.mhl_margin": {"choice": [4, 8]},
            "space.logit_scale": {"choice": [0.5, 1.0]},
            "losses": ["mcel", "mhl"],
            "pruner": {"name": "sha", "options": {"min_resource": 2}, "patience": 1},
            "sampler": {"name": "tpe", "seed": 3, "options": {"n_startup_trials": 4, "multivariate": True}},
            "objective": {"every": 2, "subset": 100, "p10": 0.0},
            "resources": {"cpu": 0.5, "gpu": 0.25},
            "tracking": {"experiment": "exp"},
        }
    )
    spec = parse_spec(data)
    assert spec.space["margin"] == ParamSpace("uniform", low=0.0, high=32.0)
    assert spec.space["b"] == ParamSpace("loguniform", low=2.0, high=64.0)
    assert spec.pruner.name == "successive_halving"  # alias resolved
    assert spec.experiment_name() == "exp"
    assert parse_spec(spec_to_dict(spec)) == spec


def test_yaml_file_reads_exponents_as_numbers(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(BASE).replace("epochs: 2", "epochs: 2\n  lr: 1e-3\n  weight_decay: 5E-4"))
    spec = load_spec(path)
    assert spec.train.lr == pytest.approx(1e-3)
    assert spec.train.weight_decay == pytest.approx(5e-4)


def test_studies_and_names() -> None:
    spec = parse_spec(mutate({"architectures": ["vgg3", "small_cnn"], "bits": [2, 1]}))
    assert spec.studies() == [("vgg3", 2), ("vgg3", 1), ("small_cnn", 2), ("small_cnn", 1)]
    assert spec.study_name("vgg3", 2) == "t-vgg3-2b"


@pytest.mark.parametrize(
    "storage, expected",
    [
        ({}, "sqlite:///ray_results/t/optuna.db"),
        ({"path": "/data/runs"}, "sqlite:////data/runs/t/optuna.db"),
        ({"path": "file:///data/runs"}, "sqlite:////data/runs/t/optuna.db"),
        ({"path": "~/runs"}, f"sqlite:///{Path('~/runs').expanduser()}/t/optuna.db"),
        ({"path": "s3://bucket/mcel", "optuna": "sqlite:///optuna.db"}, "sqlite:///optuna.db"),
        ({"path": "gs://bucket/mcel", "optuna": "postgresql://u:p@db/optuna"}, "postgresql://u:p@db/optuna"),
    ],
)
def test_optuna_storage(storage: dict, expected: str) -> None:
    spec = parse_spec(mutate({"storage": storage}))
    assert spec.optuna_storage() == expected
    assert (spec.optuna_db_path() is None) == ("optuna" in storage)


@pytest.mark.parametrize(
    "uri",
    [
        "sqlite:///mlflow.db",
        "file:./mlruns",
        "file:///tmp/mlruns",
        "http://127.0.0.1:5000",
        "https://mlflow.example.org",
        "postgresql://u:p@host/db",
        "mysql+pymysql://u@host/db",
        "./mlruns",
    ],
)
def test_tracking_uris_accepted(uri: str) -> None:
    assert parse_spec(mutate({"tracking.uri": uri})).tracking.uri == uri


def test_flatten() -> None:
    assert flatten({"a": 1, "b": {"c": [1, 2], "d": {"e": None}, "f": {}}}) == {
        "a": 1,
        "b.c": [1, 2],
        "b.d.e": None,
    }
    flat = flatten(parse_spec(BASE))
    assert flat["train.epochs"] == 2 and flat["dataset.name"] == "digits"
    assert flat["space.margin.choice"] == [1.0, 2.0, 4.0] and flat["space.logit_scale"] == 1.0
    assert all(not isinstance(v, dict) for v in flat.values())


def test_optuna_objects() -> None:
    spec = parse_spec(
        mutate({"pruner": {"name": "percentile", "options": {"percentile": 25.0}, "patience": 2}})
    )
    pruner = create_pruner(spec.pruner)
    assert isinstance(pruner, optuna.pruners.PatientPruner)
    assert isinstance(create_pruner(parse_spec(BASE).pruner), optuna.pruners.MedianPruner)
    assert isinstance(create_sampler(parse_spec(BASE).sampler), optuna.samplers.NSGAIISampler)


# ------------------------------------------------------------------------------------- malformed specs

# (id, changes to BASE, start of the expected error line: "<field path>: <repr of bad value> —")
MALFORMED: list[tuple[str, dict[str, Any], str]] = [
    ("negative-margin", {"space.margin": -1}, "space.margin: -1 —"),
    ("negative-margin-in-choice", {"space.margin": {"choice": [1, -2]}}, "space.margin.choice[1]: -2 —"),
    ("zero-b", {"space.b": 0}, "space.b: 0 —"),
    ("negative-b-range", {"space.b": {"uniform": [-1, 4]}}, "space.b.uniform: [-1, 4] —"),
    ("zero-logit-scale", {"space.logit_scale": 0.0}, "space.logit_scale: 0.0 —"),
    ("bits-3", {"bits": [4, 3]}, "bits[1]: 3 —"),
    ("bits-as-string", {"bits": ["4"]}, "bits[0]: '4' —"),
    ("target-ber-negative", {"objective.target_ber": -0.1}, "objective.target_ber: -0.1 —"),
    ("target-ber-above-1", {"objective.target_ber": 2}, "objective.target_ber: 2 —"),
    ("sweep-ber-above-1", {"sweep.bers": [0.0, 1.5]}, "sweep.bers[1]: 1.5 —"),
    ("sweep-ber-duplicate", {"sweep.bers": [0.01, 0.01]}, "sweep.bers[1]: 0.01 —"),
    ("p10-above-1", {"objective.p10": 1.1}, "objective.p10: 1.1 —"),
    ("unknown-architecture", {"architectures": ["vgg9"]}, "architectures[0]: 'vgg9' —"),
    ("unknown-dataset", {"dataset": "mnist"}, "dataset.name: 'mnist' —"),
    ("unknown-loss", {"losses": ["focal"]}, "losses[0]: 'focal' —"),
    ("unknown-sampler", {"sampler.name": "nsga3"}, "sampler.name: 'nsga3' —"),
    ("unknown-pruner", {"pruner": "hyperband"}, "pruner.name: 'hyperband' —"),
    ("misspelt-top-level-key", {"trials_per_arc": 4}, "trials_per_arc: 4 —"),
    ("misspelt-nested-key", {"train.epcohs": 5}, "train.epcohs: 5 —"),
    ("misspelt-dataset-key", {"dataset": {"name": "digits", "limit_tain": 10}}, "dataset.limit_tain: 10 —"),
    ("data-instead-of-dataset", {"data": "digits"}, "data: 'digits' —"),
    ("string-for-number", {"train.lr": "fast"}, "train.lr: 'fast' —"),
    ("bool-for-int", {"train.epochs": True}, "train.epochs: True —"),
    ("float-for-int", {"train.batch_size": 64.0}, "train.batch_size: 64.0 —"),
    ("empty-choice", {"space.margin": {"choice": []}}, "space.margin.choice: [] —"),
    ("inverted-range", {"space.margin": {"uniform": [8, 2]}}, "space.margin.uniform: [8, 2] —"),
    ("equal-range", {"space.b": {"uniform": [4, 4]}}, "space.b.uniform: [4, 4] —"),
    ("loguniform-low-0", {"space.b": {"loguniform": [0, 4]}}, "space.b.loguniform: [0, 4] —"),
    ("unknown-space-form", {"space.b": {"normal": [4, 1]}}, "space.b.normal: [4, 1] —"),
    ("unknown-space-param", {"space.temperature": 2}, "space.temperature: 2 —"),
    ("missing-loss-param", {"space.b": DELETE}, "space.b: missing —"),
    ("param-no-loss-uses", {"losses": ["cel"]}, "space.margin: {'choice': [1, 2, 4]} —"),
    ("zero-trials", {"trials_per_arch": 0}, "trials_per_arch: 0 —"),
    ("zero-epochs", {"train.epochs": 0}, "train.epochs: 0 —"),
    ("missing-required-key", {"architectures": DELETE}, "architectures: missing —"),
    ("missing-dataset", {"dataset": DELETE}, "dataset: missing —"),
    ("missing-epochs", {"train": {"batch_size": 8}}, "train.epochs: missing —"),
    (
        "duplicate-architecture",
        {"architectures": ["small_cnn", "small_cnn"]},
        "architectures[1]: 'small_cnn' —",
    ),
    ("empty-losses", {"losses": []}, "losses: [] —"),
    ("unsupported-arch-bits", {"architectures": ["resnet18"], "bits": [1]}, "bits[0]: 1 — (resnet18, 1-bit)"),
    ("bad-pruner-option", {"pruner.options": {"n_startup_trial": 3}}, "pruner.options.n_startup_trial: 3 —"),
    (
        "bad-pruner-option-value",
        {"pruner.options": {"n_startup_trials": -1}},
        "pruner.options: {'n_startup_trials': -1} —",
    ),
    (
        "pruner-option-type",
        {"pruner.options": {"n_warmup_steps": "3"}},
        "pruner.options.n_warmup_steps: '3' —",
    ),
    ("percentile-needs-percentile", {"pruner.name": "percentile"}, "pruner.options.percentile: missing —"),
    ("unknown-pruner-metric", {"pruner.metric": "accuracy"}, "pruner.metric: 'accuracy' —"),
    ("pruner-mode-mismatch", {"pruner.metric": "train_loss"}, "pruner.mode: 'max' —"),
    ("negative-patience", {"pruner.patience": -1}, "pruner.patience: -1 —"),
    ("bad-sampler-option", {"sampler.options": {"pop_size": 8}}, "sampler.options.pop_size: 8 —"),
    (
        "bad-sampler-option-value",
        {"sampler.options": {"population_size": 1}},
        "sampler.options: {'population_size': 1} —",
    ),
    (
        "sampler-seed-in-options",
        {"sampler.options": {"seed": 1}},
        "sampler.options.seed: 1 — not an option here: set it as sampler.seed",
    ),
    ("bad-name-characters", {"name": "my search/1"}, "name: 'my search/1' —"),
    ("dot-dot-name", {"name": ".."}, "name: '..' —"),
    ("empty-name", {"name": ""}, "name: '' —"),
    ("bad-tracking-uri", {"tracking.uri": "htp://host:5000"}, "tracking.uri: 'htp://host:5000' —"),
    ("tracking-uri-no-host", {"tracking.uri": "http://"}, "tracking.uri: 'http://' —"),
    ("empty-tracking-uri", {"tracking.uri": ""}, "tracking.uri: '' —"),
    ("bad-storage-path", {"storage.path": "ftp://host/x"}, "storage.path: 'ftp://host/x' —"),
    ("empty-storage-path", {"storage.path": ""}, "storage.path: '' —"),
    ("remote-storage-needs-optuna-url", {"storage.path": "s3://bucket/x"}, "storage.optuna: None —"),
    ("bad-optuna-url", {"storage.optuna": "redis://host"}, "storage.optuna: 'redis://host' —"),
    ("gamma-above-1", {"train.gamma": 1.5}, "train.gamma: 1.5 —"),
    ("zero-lr", {"train.lr": 0}, "train.lr: 0 —"),
    ("zero-step-size", {"train.step_size": 0}, "train.step_size: 0 —"),
    ("bad-device", {"train.device": "gpu"}, "train.device: 'gpu' —"),
    ("zero-reps", {"objective.reps": 0}, "objective.reps: 0 —"),
    ("zero-every", {"objective.every": 0}, "objective.every: 0 —"),
    ("zero-subset", {"objective.subset": 0}, "objective.subset: 0 —"),
    ("unknown-estimate", {"objective.estimate": "margin"}, "objective.estimate: 'margin' —"),
    ("estimate-reps-unbounded", {"objective.estimate_reps": 10**6}, "objective.estimate_reps: 1000000 —"),
    (
        "prune-on-the-estimate",
        {"objective.estimate": "margin_shift", "pruner.metric": "ber_acc_est"},
        "pruner.metric: 'ber_acc_est' — the cheap estimate (objective.estimate) is a logged diagnostic",
    ),
    ("zero-sweep-reps", {"sweep.reps": 0}, "sweep.reps: 0 —"),
    ("zero-tolerance", {"sweep.tolerance": 0}, "sweep.tolerance: 0 —"),
    ("tolerance-above-100", {"sweep.tolerance": 150}, "sweep.tolerance: 150 —"),
    ("tolerable-iters-unbounded", {"sweep.tolerable_iters": 10**6}, "sweep.tolerable_iters: 1000000 —"),
    ("zero-limit-train", {"dataset": {"name": "digits", "limit_train": 0}}, "dataset.limit_train: 0 —"),
    ("zero-concurrency", {"concurrency": 0}, "concurrency: 0 —"),
    ("zero-cpu", {"resources.cpu": 0}, "resources.cpu: 0 —"),
    ("negative-gpu", {"resources.gpu": -1}, "resources.gpu: -1 —"),
    ("fractional-gpus-above-1", {"resources.gpu": 1.5}, "resources.gpu: 1.5 —"),
    ("negative-retries", {"failure.max_retries": -1}, "failure.max_retries: -1 —"),
    ("zero-checkpoint-every", {"failure.checkpoint_every": 0}, "failure.checkpoint_every: 0 —"),
    (
        "unbounded-checkpoint-every",
        {"failure.checkpoint_every": 10**9},
        "failure.checkpoint_every: 1000000000 —",
    ),
    ("baseline-enabled-string", {"baseline.enabled": "yes"}, "baseline.enabled: 'yes' —"),
    ("section-not-mapping", {"train": [2]}, "train: [2] —"),
]


@pytest.mark.parametrize("changes, expected", [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_spec_names_field_and_value(changes: dict[str, Any], expected: str) -> None:
    errors = errors_of(mutate(changes))
    assert any(line.startswith(expected) for line in errors), errors
    assert all("\n" not in line for line in errors)


def test_unknown_key_suggests_the_right_one() -> None:
    (line,) = errors_of(mutate({"train.epcohs": 5}))
    assert "did you mean 'epochs'?" in line and "batch_size" in line
    (line,) = errors_of(mutate({"sampler.name": "nsga3"}))
    assert line == "sampler.name: 'nsga3' — one of nsga2, tpe, random; did you mean 'nsga2'?"


def test_three_independent_mistakes_are_all_reported() -> None:
    data = mutate({"train.epochs": 0, "space.margin": {"uniform": [8, 2]}, "sampler.name": "nsga3"})
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    errors = info.value.errors
    assert len(errors) == 3, errors
    assert errors[0] == "space.margin.uniform: [8, 2] — low must be < high"
    assert errors[1] == "train.epochs: 0 — an integer >= 1 and <= 100_000"
    assert errors[2].startswith("sampler.name: 'nsga3' — one of nsga2, tpe, random")
    assert str(info.value) == "\n".join(errors)


def test_top_level_not_a_mapping() -> None:
    (line,) = errors_of([1, 2])
    assert line.startswith("spec: [1, 2] — a mapping with keys name, dataset,")


def test_spec_error_pickles() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(mutate({"train.epochs": 0, "trials_per_arch": 0}))
    again = pickle.loads(pickle.dumps(info.value))
    assert again.errors == info.value.errors and str(again) == str(info.value)
    assert isinstance(again, ValueError)


# ----------------------------------------------------------------------------------------- files


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.errors == [f"spec: file {str(path)!r} does not exist"]


def test_yaml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: t\ntrain:\n  epochs: [1, 2\nbits: [4]\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    (line,) = info.value.errors
    assert line.startswith(f"spec: file {str(path)!r} — invalid YAML at line ")
    assert "column" in line


def test_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(yaml.safe_dump(BASE, sort_keys=False) + "trials_per_arch: 5\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert any(line.startswith("spec: 'trials_per_arch' — key given twice") for line in info.value.errors)
    assert info.value.source == str(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert "the file is empty" in str(info.value)


def test_invalid_file_spec_reports_fields(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(mutate({"bits": [3]})))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.errors[0].startswith("bits[0]: 3 —")


# ------------------------------------------------------------------------------------- hostile files


def _bomb(levels: int = 9) -> str:
    """A "billion laughs" document: 9 aliases per level, 9**levels values once expanded, ~1 KB of text."""
    text = 'l0: &l0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]\n'
    for i in range(1, levels):
        text += f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n"
    return text


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    import time

    path = tmp_path / "bomb.yaml"
    path.write_text(_bomb())
    start = time.monotonic()
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert time.monotonic() - start < 2.0
    assert info.value.errors == [
        f"spec: file {str(path)!r} — its YAML aliases expand to more than 100_000 values; allowed: a spec "
        "without such aliases"
    ]


def test_a_small_alias_is_still_fine(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(
        yaml.safe_dump(BASE).replace("trials_per_arch: 3", "trials_per_arch: &n 3\nconcurrency: *n")
    )
    assert load_spec(path).concurrency == 3


@pytest.mark.parametrize(
    "text, needle",
    [
        ("name: a\x00b\n", "control character U+0000 at line 1, column 8"),
        ("name: ok\ntrain: {epochs: 2}\x1b[31m\n", "control character U+001B at line 2, column 19"),
        ("x: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    ],
    ids=["nul", "escape", "deep"],
)
def test_control_characters_and_deep_nesting_are_one_line(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert len(info.value.errors) == 1 and needle in info.value.errors[0], info.value.errors


def test_a_huge_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("# " + "x" * (1 << 20) + "\n")
    with pytest.raises(SpecError, match="allowed: a spec of at most 1_048_576 bytes"):
        load_spec(path)


def test_a_bad_value_inside_a_huge_structure_is_shown_briefly() -> None:
    errors = errors_of(mutate({"trials_per_arch": [list(range(1000))] * 1000}))
    line = next(e for e in errors if e.startswith("trials_per_arch:"))
    assert len(line) < 200
