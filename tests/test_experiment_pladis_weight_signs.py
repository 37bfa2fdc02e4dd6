"""The PLADIS weight-sign study: its counts agree with a row-by-row recount, the bounds hold, it resumes."""

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
    assert out["bound_holds"] == 3 and out["l1_identity_holds"] == 3
    negative = np.where(A < 0, -A, 0).sum(-1)
    assert out["mean_negative_mass"] == pytest.approx(negative.mean(), rel=1e-12)


def test_quick_run_complete_bounds_hold_and_resumes(study, tmp_path):
    path = study.main(["--quick", "--out", str(tmp_path)])
    cfg = study.Config.quick()
    df = pd.read_csv(path)
    assert len(df) == len(cfg.families) * len(cfg.lengths) * len(cfg.alphas) * len(cfg.scales)
    assert (df["bound_holds"] == df["rows"]).all() and (df["l1_identity_holds"] == df["rows"]).all()
    assert (df["mean_excess_over_bound"] >= -1e-12).all()
    again = study.run(cfg, tmp_path)
    assert pd.read_csv(again).equals(df)


def test_figure_draws_from_the_table(study, tmp_path):
    from pladis_analysis import plotting

    path = study.main(["--quick", "--out", str(tmp_path)])
    assert plotting.save_figure(plotting.plot_pladis_weight_signs(path), tmp_path / "f.png").stat().st_size > 0


def test_bad_config_names_the_field(study):
    with pytest.raises(ValueError, match="families"):
        study.Config(families=("uniform",))
    with pytest.raises(ValueError, match="scales"):
        study.Config(scales=(0.5,))
