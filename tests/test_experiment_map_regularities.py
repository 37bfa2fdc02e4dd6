"""The map-regularities study: its constructed rows are what they claim, its tables are complete, it resumes."""

import numpy as np
import pandas as pd
import pytest

from experiment_scripts import load_experiment
from pladis_analysis.maps import reference as ref


@pytest.fixture(scope="module")
def study():
    return load_experiment("map_regularities")


@pytest.mark.parametrize("alpha", [2.5, 3.0, 4.0])
def test_edge_pair_rows_have_the_weights_and_norm_they_claim(study, alpha):
    # weights (1 − 2w, w, w, 0, 0): J has the eigenvalue s = w^{2−α} on (0, 1, −1, 0, 0), its largest (s is
    # largest at the smallest weight, and the largest eigenvalue of diag(s) − s sᵀ/Σs is at most max s)
    for w in (1e-2, 1e-4):
        z = study.edge_pair_row(alpha, w, 5)
        np.testing.assert_allclose(ref.entmax(z, alpha), [1 - 2 * w, w, w, 0, 0], rtol=1e-9, atol=1e-15)
        assert study.jacobian_norm(z, alpha) == pytest.approx(w ** (2 - alpha), rel=1e-6)


def test_two_way_tie_norm_is_the_norm_at_a_two_way_tie(study):
    for alpha in (1.0, 1.5, 2.0, 3.0):
        assert study.jacobian_norm(np.array([0.3, 0.3, -np.inf]), alpha) == pytest.approx(study.two_way_tie_norm(alpha))


def test_sweep_counts_find_an_increase_when_there_is_one(study):
    # the counter itself: a sweep that runs α downwards makes the support and entropy grow
    Z = np.random.default_rng(0).standard_normal((5, 8))
    alphas = np.array([3.0, 2.0, 1.5, 1.2])
    down = study._sweep_counts(Z, np.ones(4), alphas)
    up = study._sweep_counts(Z, np.ones(4), alphas[::-1].copy())
    assert down["entropy_increases"] == 15 and up["entropy_increases"] == 0
    assert down["support_increases"] > 0 and up["support_increases"] == 0


def test_quick_run_writes_complete_tables_and_resumes(study, tmp_path):
    norms, monotone = study.main(["--quick", "--out", str(tmp_path)])
    cfg = study.Config.quick()
    df = pd.read_csv(norms)
    search = df[df["method"] == "search"]
    assert len(search) == cfg.starts * sum(a <= 2 or d <= cfg.max_length_above_two
                                           for a in cfg.alphas for d in cfg.lengths)
    # the search keeps its best point, up to the cap it stops climbing at
    assert (search["norm"] >= np.minimum(search["norm_start"], cfg.norm_cap) * (1 - 1e-12)).all()
    assert (search["reached_cap"] == (search["norm"] >= cfg.norm_cap)).all()
    edge = df[df["method"] == "edge_pair"]
    assert len(edge) == sum(a > 2 for a in cfg.alphas) * len(cfg.edge_weights)
    np.testing.assert_allclose(edge["norm"], edge["edge_weight"] ** (2 - edge["alpha"]), rtol=1e-6)
    mono = pd.read_csv(monotone)
    sweeps = mono[mono["family"] != "search"]
    assert len(sweeps) == len(cfg.families) * len(cfg.sweep_lengths) * (1 + len(cfg.beta_alphas))
    alpha_sweeps = sweeps[sweeps["sweep"] == "alpha"]
    assert (alpha_sweeps["steps"] + alpha_sweeps["ambiguous_steps"] == cfg.rows * cfg.alpha_grid).all()
    assert len(mono[mono["family"] == "search"]) == 1
    before = norms.stat().st_mtime_ns, pd.read_csv(monotone)
    again = study.main(["--quick", "--out", str(tmp_path)])  # every row present: nothing recomputed
    assert pd.read_csv(again[0]).equals(df) and pd.read_csv(again[1]).equals(before[1])


def test_figure_draws_from_the_table(study, tmp_path):
    from pladis_analysis import plotting

    norms, _ = study.main(["--quick", "--out", str(tmp_path)])
    assert plotting.save_figure(plotting.plot_map_jacobian_norm(norms), tmp_path / "f.png").stat().st_size > 0


def test_bad_config_names_the_field(study):
    with pytest.raises(ValueError, match="families"):
        study.Config(families=("uniform",))
    with pytest.raises(ValueError, match="alphas"):
        study.Config(alphas=(0.5,))
