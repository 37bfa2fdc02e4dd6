"""The Hopfield energy study: complete table, descent wherever it is guaranteed, a summary that agrees, resume."""

import numpy as np
import pandas as pd
import pytest

from experiment_scripts import load_experiment


@pytest.fixture(scope="module")
def study():
    return load_experiment("hopfield_energy")


def test_quick_run_descends_for_scale_at_most_one_summarises_and_resumes(study, tmp_path):
    path = study.main(["--quick", "--out", str(tmp_path)])
    cfg = study.Config.quick()
    df = pd.read_csv(path)
    trials = len(cfg.families) * len(cfg.noise) * len(cfg.betas) * cfg.trials
    assert df.groupby(["alpha", "scale"]).size().eq(trials).all()
    assert (df.loc[df["scale"] <= 1.0, "increases"] == 0).all()  # the concave–convex bound, trial by trial
    assert (df["increases"] <= df["steps"]).all() and (df["energy_end"] <= df["energy_start"]).where(
        df["scale"] <= 1.0, True).all()
    summary = pd.read_csv(path.with_name("hopfield_energy_summary.csv"))
    merged = summary.merge(df.groupby(["family", "alpha", "scale"])["increases"].sum().rename("total").reset_index())
    np.testing.assert_allclose(merged["share_steps_with_increase"], merged["total"] / (trials / 2 * cfg.steps))
    mtime = path.stat().st_mtime_ns
    again = study.run(cfg, tmp_path)
    assert pd.read_csv(again).equals(df) and again.stat().st_mtime_ns >= mtime


def test_trajectory_counts_a_rise(study, monkeypatch):
    # the counter itself: an "energy" that climbs by 1 per step is counted on every step
    energies = iter(range(100))
    monkeypatch.setattr(study, "pladis_energy", lambda *args: float(next(energies)))
    X = np.eye(3)
    row = study.trajectory(X, np.array([1.0, 0.0, 0.0]), 1.0, 1.5, 2.0, steps=4)
    assert row["increases"] == 4 and row["first_increase"] == 1 and row["largest_increase"] == 1.0


def test_ending_tells_alternation_from_convergence(study, monkeypatch):
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    assert study.ending([a, b, a]) == {"last_move": pytest.approx(2 ** 0.5), "two_step_gap": 0.0}
    converging = study.ending([a, a * 0.5, a * 0.25])
    assert converging["last_move"] == 0.25 and converging["two_step_gap"] == 0.75
    assert np.isnan(study.ending([a, b])["two_step_gap"])
    # a trajectory whose update swaps two coordinates alternates between two points
    monkeypatch.setattr(study, "pladis_step", lambda X, x, *args: x[::-1].copy())
    monkeypatch.setattr(study, "pladis_energy", lambda *args: 0.0)
    row = study.trajectory(np.eye(2), np.array([0.9, 0.1]), 1.0, 1.5, 3.0, steps=5)
    assert row["last_move"] > study.UNSETTLED and row["two_step_gap"] == 0.0
    # one on a 2-cycle, one converging to it (two-step gap 10⁻³ of its last move), one moving steadily
    rows = [row, dict(row, two_step_gap=1e-3 * row["last_move"]), dict(row, two_step_gap=2 * row["last_move"])]
    summary = study.summary_table(pd.DataFrame([dict(r, family="f", alpha=1.5, scale=3.0, steps=5) for r in rows]))
    assert summary.loc[0, "share_trajectories_unsettled"] == 1.0
    assert summary.loc[0, "share_trajectories_alternating"] == pytest.approx(2 / 3)


def test_figure_draws_from_the_summary(study, tmp_path):
    from pladis_analysis import plotting

    path = study.main(["--quick", "--out", str(tmp_path)])
    figure = plotting.plot_hopfield_energy(path.with_name("hopfield_energy_summary.csv"))
    assert plotting.save_figure(figure, tmp_path / "f.png").stat().st_size > 0


def test_bad_config_names_the_field(study):
    with pytest.raises(ValueError, match="families"):
        study.Config(families=("uniform",))
    with pytest.raises(ValueError, match="scales"):
        study.Config(scales=(-1.0,))
