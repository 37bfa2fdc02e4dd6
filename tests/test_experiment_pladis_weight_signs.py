"""The PLADIS weight-sign study: its counts agree with a row-by-row recount, the bounds hold on random and on the
bundled model's rows, and it resumes."""

import numpy as np
import pandas as pd
import pytest

from experiment_scripts import load_experiment
from pladis_analysis.maps import reference as ref


@pytest.fixture(scope="module")
def study():
    return load_experiment("pladis_weight_signs")


def test_weight_signs_on_rows_whose_signs_are_known(study):
    # row 1: one-hot entmax (gap 3 ≥ 2 at α = 1.5): the one inside weight is λ + (1−λ)S_μ > 0;
    # row 2: two-way tie on top, far below the rest: inside weights ½λ + (1−λ)S_i > 0;
    # row 3: entmax (0.815, 0.162, 0.023, 0): at λ = 4 the second and third weights are −0.037 and −0.323,
    #        inside the support, so there the negative mass exceeds its bound
    Z = np.array([[3.0, 0.0, -0.5, -1.0], [2.0, 2.0, -9.0, -9.0], [1.0, 0.0, -0.5, -3.0]])
    out = study.weight_signs(Z, 1.5, 4.0)
    A = ref.pladis_weights(Z, 4.0, 1.5)
    E = ref.entmax(Z, 1.5)
    np.testing.assert_array_equal(((E > 0) & (A < 0)).any(axis=-1), [False, False, True])
    assert out["share_rows_negative_inside"] == pytest.approx(1 / 3)
    assert out["mean_excess_over_bound"] == pytest.approx(-A[2, 1:3].sum() / 3, rel=1e-12)
    assert out["share_rows_one_hot"] == pytest.approx(1 / 3)
    assert out["share_rows_one_hot_on_first_key"] == pytest.approx(1 / 3)  # row 1 is one-hot on key 0
    elsewhere = study.weight_signs(np.array([[0.0, 3.0, -1.0, -1.0]]), 1.5, 2.0)
    assert elsewhere["share_rows_one_hot"] == 1.0 and elsewhere["share_rows_one_hot_on_first_key"] == 0.0
    assert out["bound_holds"] == 3 and out["l1_identity_holds"] == 3
    negative = np.where(A < 0, -A, 0).sum(-1)
    assert out["mean_negative_mass"] == pytest.approx(negative.mean(), rel=1e-12)


@pytest.fixture(scope="module")
def quick_run(study, tmp_path_factory):
    out = tmp_path_factory.mktemp("weight_signs")
    return out, study.main(["--quick", "--out", str(out)])


def test_quick_run_complete_bounds_hold_and_resumes(study, quick_run):
    out, (path, _) = quick_run
    cfg = study.Config.quick()
    df = pd.read_csv(path)
    assert len(df) == len(cfg.families) * len(cfg.lengths) * len(cfg.alphas) * len(cfg.scales)
    assert (df["bound_holds"] == df["rows"]).all() and (df["l1_identity_holds"] == df["rows"]).all()
    assert (df["mean_excess_over_bound"] >= -1e-12).all()
    again = study.run(cfg, out)
    assert pd.read_csv(again).equals(df)


def test_bundled_rows_complete_bounds_hold_and_resume(study, quick_run, monkeypatch):
    out, (_, path) = quick_run
    cfg = study.Config.quick()
    df = pd.read_csv(path)
    groups, branches = ("down", "mid", "up"), ("uncond", "cond")
    assert len(df) == (len(cfg.trajectories) * len(cfg.bundled_record_steps) * len(groups) * len(branches)
                       * len(cfg.alphas) * len(cfg.scales))
    assert set(df.group) == set(groups) and set(df.branch) == set(branches) and set(df.d) == {24}
    # every prompt's 4 heads × 1024 queries (down 256 + 64, mid 64, up 64 + 64 + 256 + 256), per branch
    per_key = df.groupby(["trajectory", "step", "branch", "alpha", "scale"]).rows.sum()
    assert (per_key == 2 * cfg.bundled_prompts_per_kind * 4 * 1024).all()
    assert (df["bound_holds"] == df["rows"]).all() and (df["l1_identity_holds"] == df["rows"]).all()
    assert df.timestep.is_monotonic_decreasing or set(df.groupby("step").timestep.nunique()) == {1}

    def no_sampling(*args):
        raise AssertionError("a complete table must not sample again")

    monkeypatch.setattr(study, "capture_bundled_rows", no_sampling)
    assert pd.read_csv(study.run_bundled(cfg, out)).equals(df)
    study.main(["--quick", "--sources", "random", "--out", str(out)])  # leaves the bundled table alone
    assert pd.read_csv(path).equals(df)


def test_figure_draws_from_the_table(quick_run, tmp_path):
    from pladis_analysis import plotting

    _, (path, bundled) = quick_run
    assert plotting.save_figure(plotting.plot_pladis_weight_signs(path), tmp_path / "f.png").stat().st_size > 0
    figure = plotting.plot_pladis_weight_signs_bundled(bundled)
    assert plotting.save_figure(figure, tmp_path / "g.png").stat().st_size > 0
    without_stock = pd.read_csv(bundled).query("trajectory != 'stock'")  # draws the trajectory it has
    figure = plotting.plot_pladis_weight_signs_bundled(without_stock)
    assert "pladis(2, 1.5) sampling" in figure._suptitle.get_text()


def test_bad_config_names_the_field(study):
    with pytest.raises(ValueError, match="families"):
        study.Config(families=("uniform",))
    with pytest.raises(ValueError, match="scales"):
        study.Config(scales=(0.5,))
    with pytest.raises(ValueError, match="trajectories"):
        study.Config(trajectories=("pladis(3, 1.5)",))
    with pytest.raises(ValueError, match="bundled_record_steps"):
        study.Config(bundled_steps=5, bundled_record_steps=(5,))
