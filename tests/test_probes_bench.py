"""The probe-overhead benchmark's quick mode runs end to end and writes its results with provenance."""

import pandas as pd

from experiment_scripts import load_experiment
from pladis_analysis.results import read_meta


def test_quick_benchmark_writes_summary_and_runs(tmp_path):
    bench = load_experiment("bench_probe_overhead")
    assert bench.main(["--quick", "--repeats", "2", "--out", str(tmp_path)]) == 0
    summary = pd.read_csv(tmp_path / "bench_probe_overhead.csv")
    runs = pd.read_csv(tmp_path / "bench_probe_overhead_runs.csv")
    assert set(summary.condition) == set(bench.CONDITIONS)
    assert len(runs) == 2 * len(bench.CONDITIONS) and (runs.seconds > 0).all()
    assert summary.set_index("condition").loc["stock", "overhead"] == 0
    paths = summary.set_index("condition").probe_path.fillna("")
    assert paths["stock"] == "" and paths["probe_basic"] == paths["probe_basic_torch"] == "torch"   # CPU: torch
    meta = read_meta(tmp_path / "bench_probe_overhead.csv")
    assert meta["config"]["unet"] == "small" and "git_commit" in meta and "device" in meta
    # a rerun resumes: nothing new is timed
    assert bench.main(["--quick", "--repeats", "2", "--out", str(tmp_path)]) == 0
    assert pd.read_csv(tmp_path / "bench_probe_overhead_runs.csv").seconds.tolist() == runs.seconds.tolist()


def test_config_validates_itself():
    bench = load_experiment("bench_probe_overhead")
    import pytest

    for bad in (dict(unet="sdxl"), dict(repeats=0), dict(latent_sizes=(12,)), dict(conditions=("pladis(2, 1.5)",))):
        with pytest.raises(ValueError):
            bench.Config(**bad)
    assert bench.Config(**bench.Config.quick().to_dict()) == bench.Config.quick()
