"""analysis.plots: every figure is a valid PNG and the returned data match an independent computation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from mcel_search.analysis import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    assert path.is_file()
    data = path.read_bytes()
    assert len(data) > 1000
    assert data[:8] == PNG_MAGIC
    image = imread(path)  # decodes: not only the magic bytes are right
    height, width = image.shape[:2]
    assert (width, height) == (round(plots.FIGSIZE[0] * plots.DPI), round(plots.FIGSIZE[1] * plots.DPI))
    assert not [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------------------------ BER curves


@pytest.fixture()
def curves() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for run_id, slope in (("run-b", 4.0), ("run-a", 8.0)):  # not alphabetical: order of appearance counts
        for ber in (0.0, 1e-4, 1e-3, 1e-2, 5e-2):
            reps = 1 if ber == 0.0 else 6  # a single realization at BER 0: std 0
            for rep in range(reps):
                acc = float(np.clip(0.97 - slope * ber + rng.normal(0, 0.01), 0, 1))
                rows.append({"run_id": run_id, "ber": ber, "rep": rep, "accuracy": acc})
    rows.append({"run_id": "run-a", "ber": 1e-2, "rep": 99, "accuracy": float("nan")})  # dropped
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0).reset_index(drop=True)


def test_ber_curves_mean_std_recomputed(tmp_path, curves):
    path = tmp_path / "figs" / "ber.png"  # parent folder does not exist yet
    out = plots.plot_ber_curves(curves, {"run-a": "MCEL m=0.5"}, path, title="BER")
    assert_png(path)
    assert list(out.columns) == ["run_id", "ber", "mean", "std", "n"]

    first_seen = list(dict.fromkeys(curves["run_id"]))
    expected = []
    for run_id in first_seen:
        sub = curves[curves["run_id"] == run_id]
        for ber in sorted(set(sub["ber"])):
            acc = sub.loc[(sub["ber"] == ber), "accuracy"].to_numpy()
            acc = acc[~np.isnan(acc)]
            std = 100 * np.std(acc, ddof=1) if len(acc) > 1 else 0.0
            expected.append((run_id, ber, 100 * np.mean(acc), std, len(acc)))
    assert list(out["run_id"]) == [e[0] for e in expected]
    np.testing.assert_array_equal(out["ber"], [e[1] for e in expected])
    np.testing.assert_allclose(out["mean"], [e[2] for e in expected], rtol=1e-12)
    np.testing.assert_allclose(out["std"], [e[3] for e in expected], rtol=1e-12, atol=1e-12)
    assert list(out["n"]) == [e[4] for e in expected]
    assert out.loc[out["ber"] == 0.0, "std"].eq(0.0).all()
    assert out.loc[(out["run_id"] == "run-a") & (out["ber"] == 1e-2), "n"].item() == 6  # NaN dropped


def test_ber_curves_only_ber_zero_and_empty(tmp_path):
    only_zero = pd.DataFrame(
        {"run_id": ["r"] * 3, "ber": [0.0] * 3, "rep": [0, 1, 2], "accuracy": [0.9, 0.8, 0.7]}
    )
    out = plots.plot_ber_curves(only_zero, None, tmp_path / "zero.png")
    assert_png(tmp_path / "zero.png")
    assert out["mean"].item() == pytest.approx(80.0)
    assert out["std"].item() == pytest.approx(10.0)

    empty = plots.plot_ber_curves(only_zero.iloc[0:0], None, tmp_path / "empty.png")
    assert_png(tmp_path / "empty.png")
    assert empty.empty


def test_ber_curves_rejects_percentages_and_bad_paths(tmp_path, curves):
    pct = curves.assign(accuracy=100 * curves["accuracy"])
    with pytest.raises(ValueError, match="fraction"):
        plots.plot_ber_curves(pct, None, tmp_path / "x.png")
    with pytest.raises(ValueError, match="lacks column"):
        plots.plot_ber_curves(curves.drop(columns="rep"), None, tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"\.png"):
        plots.plot_ber_curves(curves, None, tmp_path / "x.svg")
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------- Pareto


@pytest.fixture()
def trials() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    n = 40
    state = rng.choice(["completed", "pruned", "errored"], size=n, p=[0.6, 0.3, 0.1])
    df = pd.DataFrame(
        {
            "run_id": [f"t{i:02d}" for i in range(n)],
            "role": ["trial"] * n,
            "state": state,
            "arch": "mlp",
            "bits": 8,
            "dataset": "digits",
            "loss": "mcel",
            "margin": rng.uniform(0, 2, n),
            "b": rng.uniform(0.5, 2, n),
            "logit_scale": rng.uniform(1, 10, n),
            "clean_acc": rng.uniform(0.80, 0.97, n),
            "ber_acc": rng.uniform(0.20, 0.90, n),
            "ber_acc_std": rng.uniform(0.0, 0.03, n),
            "ber_acc_ci": rng.uniform(0.0, 0.02, n),
        }
    )
    # Pruned trials with very good partial accuracies: they would be on the front if they were shown.
    pruned = df.index[df["state"] == "pruned"][:2]
    df.loc[pruned, ["clean_acc", "ber_acc"]] = [[0.995, 0.99], [0.999, 0.98]]
    df.loc[df["state"] == "errored", ["clean_acc", "ber_acc", "ber_acc_std"]] = np.nan
    baseline = {"run_id": "base", "role": "baseline", "state": "completed", "loss": "cel"}
    baseline |= {"clean_acc": 0.955, "ber_acc": 0.31, "ber_acc_std": 0.02, "ber_acc_ci": 0.015}
    baseline |= {"arch": "mlp", "bits": 8}
    return pd.concat([df, pd.DataFrame([baseline])], ignore_index=True)


def brute_force_front(df: pd.DataFrame) -> list[str]:
    """Run ids of the completed trials that no other completed trial dominates (both accuracies maximized)."""
    ok = df[(df["role"] == "trial") & (df["state"] == "completed")]
    front = []
    for _, r in ok.iterrows():
        dominated = any(
            o["clean_acc"] >= r["clean_acc"]
            and o["ber_acc"] >= r["ber_acc"]
            and (o["clean_acc"] > r["clean_acc"] or o["ber_acc"] > r["ber_acc"])
            for _, o in ok.iterrows()
        )
        if not dominated:
            front.append(r["run_id"])
    return front


def test_pareto_plotted_points(tmp_path, trials):
    front_ids = brute_force_front(trials)
    assert len(front_ids) >= 3
    selected_id = front_ids[len(front_ids) // 2]
    path = tmp_path / "pareto.png"
    out = plots.plot_pareto(trials, front_ids[::-1], "base", selected_id, path, title="digits / mlp / 8 bits")
    assert_png(path)
    assert set(out) == {"trials", "front", "baseline", "selected"}

    # trials: the completed trial rows only (no pruned, errored or baseline row), in %
    completed = trials[(trials["role"] == "trial") & (trials["state"] == "completed")]
    assert list(out["trials"]["run_id"]) == list(completed["run_id"])
    np.testing.assert_allclose(out["trials"]["clean_acc"], 100 * completed["clean_acc"].to_numpy())
    np.testing.assert_allclose(out["trials"]["ber_acc"], 100 * completed["ber_acc"].to_numpy())
    pruned_ids = set(trials.loc[trials["state"] != "completed", "run_id"])
    assert pruned_ids and not pruned_ids & set(out["trials"]["run_id"])

    # front: exactly the given ids, in ascending clean accuracy (the connecting line's order)
    by_id = trials.set_index("run_id")
    expected = sorted(front_ids, key=lambda r: by_id.loc[r, "clean_acc"])
    assert list(out["front"]["run_id"]) == expected
    np.testing.assert_allclose(out["front"]["clean_acc"], 100 * by_id.loc[expected, "clean_acc"].to_numpy())
    np.testing.assert_allclose(out["front"]["ber_acc"], 100 * by_id.loc[expected, "ber_acc"].to_numpy())
    np.testing.assert_allclose(
        out["front"]["ber_acc_std"], 100 * by_id.loc[expected, "ber_acc_std"].to_numpy()
    )
    assert np.all(np.diff(out["front"]["clean_acc"]) >= 0)
    assert np.all(np.diff(out["front"]["ber_acc"]) <= 0)  # a front of two maximized objectives

    # baseline and selected: the rows' own values
    assert out["baseline"].to_dict("records") == [
        {
            "run_id": "base",
            "clean_acc": pytest.approx(95.5),
            "ber_acc": pytest.approx(31.0),
            "ber_acc_ci": pytest.approx(1.5),
        }
    ]
    # every drawn point carries the same kind of error bar: the 95% CI of its mean (in %)
    np.testing.assert_allclose(out["trials"]["ber_acc_ci"], 100 * completed["ber_acc_ci"].to_numpy())
    np.testing.assert_allclose(out["front"]["ber_acc_ci"], 100 * by_id.loc[expected, "ber_acc_ci"].to_numpy())
    assert list(out["selected"]["run_id"]) == [selected_id]
    assert out["selected"]["clean_acc"].item() == pytest.approx(100 * by_id.loc[selected_id, "clean_acc"])
    assert out["selected"]["ber_acc"].item() == pytest.approx(100 * by_id.loc[selected_id, "ber_acc"])


def test_pareto_optional_markers_and_errors(tmp_path, trials):
    front_ids = brute_force_front(trials)
    out = plots.plot_pareto(trials.drop(columns="ber_acc_std"), front_ids, None, None, tmp_path / "p.png")
    assert_png(tmp_path / "p.png")
    assert out["baseline"].empty and out["selected"].empty
    assert out["front"]["ber_acc_std"].isna().all()

    pruned_id = trials.loc[trials["state"] == "pruned", "run_id"].iloc[0]
    with pytest.raises(ValueError, match="not completed"):
        plots.plot_pareto(trials, [*front_ids, pruned_id], None, None, tmp_path / "q.png")
    with pytest.raises(ValueError, match="not in the trials table"):
        plots.plot_pareto(trials, ["nope"], None, None, tmp_path / "q.png")
    with pytest.raises(ValueError, match="baseline run 'nope'"):
        plots.plot_pareto(trials, front_ids, "nope", None, tmp_path / "q.png")
    with pytest.raises(ValueError, match="duplicated"):
        plots.plot_pareto(pd.concat([trials, trials.iloc[:1]]), front_ids, None, None, tmp_path / "q.png")
    assert not (tmp_path / "q.png").exists()


def test_pareto_no_completed_trials(tmp_path, trials):
    none_done = trials[trials["role"] == "baseline"]
    out = plots.plot_pareto(none_done, [], "base", None, tmp_path / "p.png")
    assert_png(tmp_path / "p.png")
    assert out["trials"].empty and out["front"].empty and len(out["baseline"]) == 1


# ------------------------------------------------------------------------------------------------ MLM


def test_mlm_lines(tmp_path):
    rows = [
        {"run_id": r, "epoch": e, "mlm": s * (e + 1)} for r, s in (("z", 0.05), ("y", 12.0)) for e in range(6)
    ]
    rows.append({"run_id": "z", "epoch": 2, "mlm": 0.5})  # a resumed trial re-logged epoch 2: last wins
    rows.append({"run_id": "y", "epoch": 6, "mlm": float("nan")})  # dropped
    histories = pd.DataFrame(rows)
    out = plots.plot_mlm(histories, {"z": "MCEL", "y": "CEL"}, tmp_path / "mlm.png")
    assert_png(tmp_path / "mlm.png")
    assert list(out.columns) == ["run_id", "epoch", "mlm"]
    assert list(out["run_id"]) == ["z"] * 6 + ["y"] * 6
    assert list(out["epoch"]) == list(range(6)) * 2
    expected = [0.05 * (e + 1) for e in range(6)] + [12.0 * (e + 1) for e in range(6)]
    expected[2] = 0.5
    np.testing.assert_allclose(out["mlm"], expected)
    assert out.attrs["yscale"] == "log"  # 72 / 0.05 > MLM_LOG_RATIO

    flat = plots.plot_mlm(histories[histories["run_id"] == "y"], None, tmp_path / "flat.png")
    assert_png(tmp_path / "flat.png")
    assert flat.attrs["yscale"] == "linear"


# -------------------------------------------------------------------------------------------- margins


def test_margins_summary(tmp_path):
    rng = np.random.default_rng(3)
    margins = {
        "wide": rng.gamma(5.0, 1.0, 2000).tolist(),
        "narrow": np.append(rng.gamma(2.0, 0.5, 999), np.nan),  # the NaN is dropped
        "empty": [],
    }
    out = plots.plot_margins(margins, {"wide": "MCEL"}, tmp_path / "margins.png")
    assert_png(tmp_path / "margins.png")
    assert list(out["run_id"]) == ["wide", "narrow", "empty"]
    for run_id, values in margins.items():
        v = np.asarray(values, dtype=float)
        v = v[~np.isnan(v)]
        row = out.set_index("run_id").loc[run_id]
        assert row["n"] == len(v)
        if len(v):
            assert row["mean"] == pytest.approx(float(np.mean(v)), rel=1e-12)
            assert row["median"] == pytest.approx(float(np.median(v)), rel=1e-12)
        else:
            assert np.isnan(row["mean"]) and np.isnan(row["median"])

    with pytest.raises(TypeError, match="per-sample margins"):
        plots.plot_margins({"r": {"mean": 1.0, "median": 0.9}}, None, tmp_path / "bad.png")


# ------------------------------------------------------------------------------------------------ saving


def test_save_writes_through_atomic_write(tmp_path, monkeypatch, curves):
    calls = []
    real = plots.atomic_write

    def spy(path, *args, **kwargs):
        calls.append((Path(path), args, kwargs))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(plots, "atomic_write", spy)
    path = tmp_path / "a" / "b" / "ber.png"
    plots.plot_ber_curves(curves, None, path)
    assert [c[0] for c in calls] == [path]
    assert_png(path)


def test_save_failure_keeps_the_old_file_and_leaves_no_tmp(tmp_path, monkeypatch, curves):
    path = tmp_path / "ber.png"
    plots.plot_ber_curves(curves, None, path)
    before = path.read_bytes()
    saved = []

    def broken_savefig(self, fh, **kwargs):
        saved.append(self)
        assert self.axes  # the figure was drawn
        fh.write(b"\x89PNG half a file")
        raise OSError("disk full")

    monkeypatch.setattr(plots.Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        plots.plot_ber_curves(curves, None, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ber.png"]
    assert len(saved) == 1 and not saved[0].axes  # the figure is freed (cleared) on failure too


# ---------------------------------------------------------------------------------------------- layering


def test_no_pyplot_no_tracking_imports():
    code = (
        "import sys, mcel_search.analysis.plots\n"
        "bad = [m for m in ('matplotlib.pyplot', 'mlflow', 'ray', 'optuna') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
