"""Contracts of the private APIs of Ray, Optuna and MLflow the product relies on, one test each.

The upper bounds in pyproject.toml and the pins of requirements.lock fix the versions these tests passed
with; they are what raising a bound (and `make lock`) must pass. Each one
exercises the private piece the way the product's code does (the module that uses it is named), so an
upgrade that renames or changes it fails here with the name, not somewhere deep inside a search.
"""

from __future__ import annotations

import inspect

import optuna
import pytest


def test_tune_optuna_search_private_state() -> None:
    """search.searcher.PruningAwareOptunaSearch reads and writes ``_ot_study``, ``_ot_trials``,
    ``_completed_trials`` and ``_metric`` of Ray Tune's OptunaSearch."""
    from ray.tune.search.optuna import OptunaSearch

    s = OptunaSearch(
        space=lambda trial: None,
        metric=["clean_acc", "ber_acc"],
        mode=["max", "max"],
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    assert isinstance(s._ot_study, optuna.Study)
    assert s._ot_trials == {} and s._completed_trials == set() and s._metric == ["clean_acc", "ber_acc"]
    params = s.suggest("t1")
    assert "t1" in s._ot_trials and isinstance(s._ot_trials["t1"], optuna.Trial)
    assert params == {} or isinstance(params, dict)


def test_optuna_trial_from_a_stored_trial_id() -> None:
    """searcher adopts an orphaned RUNNING trial with ``optuna.Trial(study, frozen._trial_id)``; close_orphans
    and the pruning scheduler call ``study._storage.set_trial_user_attr`` and
    ``get_trial_id_from_study_id_trial_number``."""
    assert list(inspect.signature(optuna.Trial.__init__).parameters) == ["self", "study", "trial_id"]
    study = optuna.create_study(storage="sqlite:///:memory:")
    asked = study.ask()
    frozen = study.get_trials(deepcopy=False)[0]
    adopted = optuna.Trial(study, frozen._trial_id)
    assert adopted.number == asked.number
    storage = study._storage
    assert storage.get_trial_id_from_study_id_trial_number(study._study_id, asked.number) == frozen._trial_id
    storage.set_trial_user_attr(frozen._trial_id, "closed_reason", "test")
    assert study.get_trials()[0].user_attrs["closed_reason"] == "test"


def test_ray_autoscaler_config_validation() -> None:
    """mcel_search.cluster.ray_schema_problems calls ``ray.autoscaler._private.util.prepare_config`` and
    ``validate_config`` (and ``jsonschema.ValidationError`` with ``absolute_path`` and ``message``)."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = {
        "cluster_name": "t",
        "max_workers": 1,
        "provider": {"type": "aws", "region": "us-west-2"},
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            "head": {"resources": {"CPU": 0}, "node_config": {"InstanceType": "m5.large"}}
        },
        "head_node_type": "head",
    }
    validate_config(prepare_config(dict(cfg)))
    with pytest.raises(jsonschema.ValidationError) as info:
        validate_config(prepare_config({**cfg, "upscaling_speed": "fast"}))
    assert list(info.value.absolute_path) == ["upscaling_speed"] and info.value.message


def test_ray_task_error_dual_class_header() -> None:
    """search.cli.cluster_failure parses the node and task from a RayTaskError's first line
    (``ray::<task>() (pid=<pid>, ip=<ip>)``) and reads ``cause``; Ray's dual classes keep both."""
    from ray.exceptions import RayTaskError

    tb = 'Traceback (most recent call last):\n  File "w.py", line 1, in f\nValueError: x'  # as Ray formats it
    err = RayTaskError(
        "f", tb, ValueError("x"), proctitle="ray::f", pid=7, ip="10.0.0.1"
    ).as_instanceof_cause()
    assert isinstance(err, ValueError) and isinstance(err.__dict__["cause"], ValueError)
    assert "ray::f() (pid=7, ip=10.0.0.1)" in str(err).replace("\x1b[36m", "").replace("\x1b[39m", "")
