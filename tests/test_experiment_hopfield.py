"""The Hopfield retrieval study runs, resumes, and its bounds hold on every trial it records."""

import pandas as pd

from experiment_scripts import load_experiment


def test_quick_run_writes_a_table_whose_bounds_all_hold_and_resumes(tmp_path):
    study = load_experiment("hopfield_retrieval")
    path = study.main(["--quick", "--out", str(tmp_path)])
    df = pd.read_csv(path)
    cfg = study.Config.quick()
    trials = len(cfg.families) * len(cfg.noise) * len(cfg.betas) * cfg.trials
    assert df.groupby("map").size().eq(trials).all()
    assert df.dropna(subset=["bound_holds"]).bound_holds.astype(bool).all()
    mtime = path.stat().st_mtime_ns
    again = study.run(cfg, tmp_path)  # every row present: nothing recomputed, same rows
    assert pd.read_csv(again).equals(df) and again.stat().st_mtime_ns >= mtime


def test_a_broken_bound_fails_the_run_after_writing_it(tmp_path, monkeypatch):
    import pytest

    study = load_experiment("hopfield_retrieval")
    monkeypatch.setattr(study, "dense_retrieval_bound", lambda *args: -1.0)  # a bound no error can meet
    with pytest.raises(AssertionError, match="broke a proved retrieval bound"):
        study.run(study.Config.quick(), tmp_path)
    assert (tmp_path / "hopfield_retrieval.csv").exists()
