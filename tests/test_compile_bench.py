"""The torch.compile benchmark's quick mode runs end to end and writes its results with provenance."""

import pandas as pd
import pytest

from experiment_scripts import load_experiment
from pladis_analysis.results import read_meta

pytest.importorskip("diffusers")


def test_quick_benchmark_compiles_both_models_into_one_graph_each(tmp_path):
    bench = load_experiment("bench_compile")
    path = bench.main(["--quick", "--out", str(tmp_path)])
    table = pd.read_csv(path).set_index(["model", "mode"])
    assert set(table.index) == set(bench.VARIANTS)
    assert (table.median_ms > 0).all() and (table.first_call_s > 0).all()
    compiled = table.xs("compiled", level="mode")
    assert (compiled.graphs == 1).all() and (compiled.graph_breaks == 0).all()      # PLADIS adds no break
    assert (compiled.max_abs_diff_vs_eager < 1e-5).all()
    for mode in ("eager", "compiled"):
        assert table.loc[("stock", mode), "x_stock_same_mode"] == 1.0
        assert table.loc[("pladis", mode), "x_stock_same_mode"] == pytest.approx(
            table.loc[("pladis", mode), "median_ms"] / table.loc[("stock", mode), "median_ms"])
    meta = read_meta(path)
    assert "git_commit" in meta and meta["config"]["backend"] == "aot_eager"


def test_config_validates_itself():
    bench = load_experiment("bench_compile")
    for bad in (dict(calls=0), dict(repeats=0), dict(text_tokens=0)):
        with pytest.raises(ValueError):
            bench.Config(**bad)
