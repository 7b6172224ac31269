"""``benchmarks.bench_tune_state`` on a real (small) Tune run: the snapshot bytes it counts are the files
Tune wrote, and Tune still snapshots through the method it wraps (a Ray change would make the figures
silently zero otherwise)."""

from __future__ import annotations

import json
import os

from benchmarks import bench_tune_state


def test_snapshot_figures_of_a_small_run_match_the_written_state(local_ray, monkeypatch) -> None:
    from ray.tune.execution.tune_controller import TuneController

    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "7")  # the user's value comes back after the run
    sizes: list[int] = []  # the experiment_state file's size after each snapshot, read independently
    counts: list[int] = []  # the trials in each snapshot
    original = TuneController.save_to_dir

    def spy(self: TuneController) -> None:
        original(self)
        staging = self._storage.experiment_driver_staging_path
        (name,) = [n for n in os.listdir(staging) if n.startswith("experiment_state")]
        with open(os.path.join(staging, name)) as f:
            state = json.load(f)
        counts.append(len(state["trial_data"]))  # every trial created so far, ended ones too
        sizes.append(os.path.getsize(os.path.join(staging, name)))

    monkeypatch.setattr(TuneController, "save_to_dir", spy)
    m = bench_tune_state.measure(6, "1")
    assert os.environ["TUNE_GLOBAL_CHECKPOINT_S"] == "7"
    assert m["snapshots"] == len(sizes) >= 1
    assert counts == sorted(counts) and counts[-1] == 6, counts
    # the counted bytes hold the state file and the searcher's small file beside it: at least the file
    assert sum(sizes) <= m["bytes_per_snapshot"] * m["snapshots"] <= sum(sizes) + 20_000 * len(sizes)
    assert 0 < m["driver_share"] < 1 and m["wall_s"] > 0
    assert (
        abs(m["bytes_per_s"] - m["bytes_per_snapshot"] * m["snapshots"] / m["wall_s"])
        < 1e-6 * m["bytes_per_s"]
    )
    rows = bench_tune_state.rows(m, m, "1")
    assert [r.key for r in rows] == ["tune_state.bytes_per_s", "tune_state.driver_share", "tune_state.wall"]
    assert rows[2].ratio == 1.0
