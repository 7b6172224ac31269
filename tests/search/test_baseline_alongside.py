"""The CEL baseline runs next to its study, not before it: one more trial of the study's own Tune run
(``search.searcher.BaselineAlongside``), in real searches (local Ray, the MLflow server process, SQLite
Optuna), read back from MLflow, Optuna and the Tune run directly; and a search begun the earlier way (a
baseline Tune run of its own, ``baseline_alongside=False``) resumes that way, with no second baseline."""

from __future__ import annotations

import optuna
import pytest
from mlflow.tracking import MlflowClient

from mcel_search.search.runner import experiment_dir, run_search
from mcel_search.search.searcher import ROLE_KEY
from mcel_search.search.spec import parse_spec

STUDY_OVERRIDES = {"trials_per_arch": 2, "concurrency": 1, "baseline": {"enabled": True}}


def _children(client: MlflowClient, experiment: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    return [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("mcel.role") != "parent"]


def _optuna(tmp_path, name: str, study: str) -> optuna.Study:
    return optuna.load_study(study_name=study, storage=f"sqlite:///{tmp_path / 'ray' / name / 'optuna.db'}")


def test_the_baseline_runs_in_the_studys_tune_run_next_to_its_trials(
    tmp_path, mlflow_server, local_ray, small_spec
) -> None:
    """concurrency 1 on a 2-CPU Ray: the search's one slot and one more for the baseline; the study's first
    trial does not wait for the baseline to end. The baseline is in the study's ResultGrid, not in a Tune
    run of its own; Optuna and the pruning study hold the 2 search trials only; MLflow one baseline run.
    A resume re-runs nothing and adds no baseline."""
    spec = parse_spec(small_spec("along", **STUDY_OVERRIDES, train={**small_spec("x")["train"], "epochs": 2}))
    study = "along-small_cnn-4b"
    outcome = run_search(spec)
    (s,) = outcome.studies
    assert s.baseline_grid is None and not (tmp_path / "ray" / f"{study}-baseline").exists()
    roles = sorted((r.config or {}).get(ROLE_KEY, "trial") for r in s.grid)
    assert roles == ["baseline", "trial", "trial"] and all(r.error is None for r in s.grid)
    client = MlflowClient(mlflow_server.uri)
    runs = _children(client, "along")
    base = [r for r in runs if r.data.tags["mcel.role"] == "baseline"]
    trials = [r for r in runs if r.data.tags["mcel.role"] == "trial"]
    assert len(base) == 1 and len(trials) == 2
    assert base[0].data.params["loss"] == "cel" and base[0].data.tags["mcel.state"] == "completed"
    assert s.baseline is not None and s.baseline["run_id"] == base[0].info.run_id
    search = _optuna(tmp_path, "along", study)
    # alongside: the study's first trial was asked for (Optuna's start) while the baseline still ran (run
    # times are Tune's start and end events); before, no study trial existed until the baseline's run ended
    asked = min(t.datetime_start.timestamp() for t in search.trials) * 1000
    assert asked < base[0].info.end_time, (base[0].info, asked)
    assert sorted(t.number for t in search.trials) == [0, 1]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in search.trials)
    assert all(t.params.get("loss", "mcel") == "mcel" for t in search.trials)
    pruning = _optuna(tmp_path, "along", f"{study}-pruning")
    assert sorted(t.user_attrs["search_number"] for t in pruning.trials) == ["n0", "n1"]

    again = run_search(spec, resume=True)
    assert len(list(again.studies[0].grid)) == 3
    after = _children(client, "along")
    assert sorted(r.info.run_id for r in after) == sorted(r.info.run_id for r in runs)
    assert len(_optuna(tmp_path, "along", study).trials) == 2


@pytest.mark.slow
def test_a_search_begun_with_a_baseline_run_of_its_own_resumes_that_way(
    tmp_path, mlflow_server, local_ray, small_spec
) -> None:
    spec = parse_spec(small_spec("sep", **STUDY_OVERRIDES, train={**small_spec("x")["train"], "epochs": 2}))
    study = "sep-small_cnn-4b"
    first = run_search(spec, baseline_alongside=False)
    (s,) = first.studies
    assert s.baseline_grid is not None and len(list(s.baseline_grid)) == 1
    assert all(ROLE_KEY not in (r.config or {}) for r in s.grid) and len(list(s.grid)) == 2
    assert (tmp_path / "ray" / f"{study}-baseline").is_dir()
    client = MlflowClient(mlflow_server.uri)
    runs = _children(client, "sep")
    base = [r for r in runs if r.data.tags["mcel.role"] == "baseline"]
    assert len(base) == 1
    # the baseline ran before the study: it ended before any trial started
    assert all(
        base[0].info.end_time <= r.info.start_time for r in runs if r.data.tags["mcel.role"] == "trial"
    )

    resumed = run_search(spec, resume=True)  # the default is alongside: the stored layout wins
    (r,) = resumed.studies
    assert r.baseline_grid is not None and len(list(r.grid)) == 2
    assert all(ROLE_KEY not in (x.config or {}) for x in r.grid)
    assert sorted(x.info.run_id for x in _children(client, "sep")) == sorted(x.info.run_id for x in runs)
    assert experiment_dir(str(tmp_path / "ray"), study).endswith(study)
