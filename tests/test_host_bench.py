"""The host-overhead benchmark's quick mode runs end to end and writes its results with provenance."""

import pandas as pd
import pytest

from experiment_scripts import load_experiment
from pladis_analysis.maps.kernels import dispatch
from pladis_analysis.results import read_meta

pytestmark = pytest.mark.skipif(dispatch.triton_import_error() is not None,
                                reason=f"the wrapper imports Triton: {dispatch.triton_import_error()}")


def test_quick_benchmark_times_both_conditions_and_restores_the_kernel(tmp_path):
    from pladis_analysis.maps.kernels import cross_attention as ca

    kernel = ca._fused_pladis_fwd_kernel
    bench = load_experiment("bench_host_overhead")
    path = bench.main(["--quick", "--out", str(tmp_path)])
    table = pd.read_csv(path).set_index("condition")
    assert set(table.index) == set(bench.CONDITIONS) and (table.median_us > 0).all()
    assert table.loc["per_call", "per_call_over_this"] == 1.0
    assert table.loc["call_plan", "per_call_over_this"] == pytest.approx(
        table.loc["per_call", "median_us"] / table.loc["call_plan", "median_us"])
    meta = read_meta(path)
    assert "git_commit" in meta and meta["config"]["calls"] == 200
    assert ca._fused_pladis_fwd_kernel is kernel                        # the stub is gone after the run


def test_config_validates_itself():
    bench = load_experiment("bench_host_overhead")
    for bad in (dict(shapes=("sd3",)), dict(shapes=()), dict(calls=0), dict(repeats=0)):
        with pytest.raises(ValueError):
            bench.Config(**bad)
