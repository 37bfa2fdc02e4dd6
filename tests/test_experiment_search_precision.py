"""The large-α search precision study: complete grid, resumes, float64 and the reference meet their tolerances."""

import pandas as pd
import pytest
import torch

from experiment_scripts import load_experiment
from pladis_analysis.testing import tolerance


def test_quick_run_measures_each_precision_and_resumes(tmp_path):
    study = load_experiment("search_precision")
    path = study.main(["--quick", "--out", str(tmp_path)])
    df = pd.read_csv(path)
    cfg = study.Config.quick()
    per_search = len(cfg.alphas) * len(cfg.margins()) * len(cfg.group_sizes) * len(cfg.seeds)
    counts = df.groupby("comparison").size()
    assert counts["float32 search"] == counts["float64 search"] == per_search
    assert counts["reference"] == len(cfg.alphas) * len(cfg.group_sizes) * len(cfg.high_precision_log_margins)
    # float64 holds the table's float64 tolerance at every α; the reference is exact to rounding
    assert df[df.comparison == "float64 search"].max_abs_error.max() <= tolerance(torch.float64)["atol"]
    assert df[df.comparison == "reference"].max_abs_error.max() <= 1e-14
    # the rows do put weight on the tied group (else they would test nothing)
    assert (df[(df.comparison == "reference")].group_weight > 0).all()
    assert df[df.comparison != "float32 search"].within_tolerance.all()
    again = study.run(cfg, tmp_path)  # every row present: nothing recomputed, same rows
    assert pd.read_csv(again).equals(df)


def test_config_rejects_alphas_at_most_two_and_groups_that_do_not_fit():
    study = load_experiment("search_precision")
    with pytest.raises(ValueError, match="alphas="):
        study.Config(alphas=(1.5, 4.0))
    with pytest.raises(ValueError, match="group_sizes="):
        study.Config(group_sizes=(80,), length=80)
