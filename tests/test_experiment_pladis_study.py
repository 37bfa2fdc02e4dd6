"""The main study runs end to end on the bundled model (tiny settings) and its figures draw."""

import numpy as np
import pandas as pd
import pytest

from experiment_scripts import load_experiment


def test_paired_difference_interval_contains_the_mean_and_is_zero_for_equal_runs():
    study = load_experiment("pladis_shapes_study")
    a = np.array([1, 0, 1, 1, 0, 0, 1, 0], float)
    assert study.paired_difference(a, a, 100) == (0.0, 0.0, 0.0)
    b = np.array([1, 1, 1, 1, 0, 1, 1, 0], float)
    mean, lo, hi = study.paired_difference(a, b, 500)
    assert mean == pytest.approx(0.25) and lo <= mean <= hi


def test_config_rejects_a_study_without_the_stock_baseline():
    study = load_experiment("pladis_shapes_study")
    with pytest.raises(ValueError, match="stock"):
        study.StudyConfig(variants=(("pladis(2, 1.5)", 2.0, 1.5),))
    with pytest.raises(ValueError, match="splits"):
        study.StudyConfig(splits=("single/nowhere",))


@pytest.mark.slow
def test_quick_study_writes_tables_and_figures(tmp_path, monkeypatch):
    study = load_experiment("pladis_shapes_study")
    monkeypatch.setattr(study.StudyConfig, "quick_config", classmethod(
        lambda cls, **kw: cls(**{**dict(splits=("single/train",), variants=(study.VARIANTS[0], study.VARIANTS[2]),
                                        n_prompts=2, guidance_scales=(5.0,), num_inference_steps=3, batch_size=2,
                                        probe_prompts=1, bootstrap=50, quick=True), **kw})))
    summary = study.main(["--quick", "--out", str(tmp_path)])
    assert set(summary["variant"]) == {"stock", "pladis(2, 1.5)"}
    per_image = pd.read_csv(tmp_path / "pladis_shapes_alignment.csv")
    assert len(per_image) == 4 and per_image["all"].isin([0.0, 1.0]).all()
    probe = pd.read_csv(tmp_path / "pladis_shapes_attention.csv")
    assert {"onehot_fraction", "bos_mass", "support_size"} <= set(probe.columns)
    assert probe["step"].nunique() == 3
    from pladis_analysis.cli import main as cli

    assert cli(["figures", "--results", str(tmp_path), "--out", str(tmp_path / "fig")]) == 0
    assert (tmp_path / "fig" / "pladis_shapes_alignment.png").exists()


def test_variants_name_their_guidance_branches():
    study = load_experiment("pladis_shapes_study")
    assert study.unpack_variant(("stock", 0, 1.5)) == ("stock", 0.0, 1.5, "all")
    assert study.unpack_variant(("p", 2, 1.5, "cond")) == ("p", 2.0, 1.5, "cond")
    cfg = study.StudyConfig(variants=study.BRANCH_VARIANTS)
    assert {study.unpack_variant(v)[3] for v in cfg.variants} == {"all", "cond"}
    assert [tuple(v) for v in study.StudyConfig().to_dict()["variants"]] == list(study.VARIANTS)  # main unchanged


def test_cli_rejects_unknown_variant_labels(capsys):
    study = load_experiment("pladis_shapes_study")
    with pytest.raises(SystemExit):
        study.main(["--quick", "--variants", "pladis(9, 9)"])
    assert "not among" in capsys.readouterr().err
