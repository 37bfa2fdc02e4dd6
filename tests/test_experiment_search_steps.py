"""experiments/search_steps.py: the block statistics by hand, and the quick grid end to end (resuming)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from experiment_scripts import load_experiment
from pladis_analysis.maps.kernels import dispatch
from pladis_analysis.results import read_meta

pytestmark = pytest.mark.triton


@pytest.fixture(scope="module")
def steps_module():
    return load_experiment("search_steps")


def test_block_statistics_by_hand(steps_module):
    steps = torch.tensor([[1, 2, 3, 4, 5]])                        # one head, 5 queries
    valid = torch.tensor([[True, True, True, True, False]])        # the last query is a padded row
    got = steps_module.summarise_steps(steps, valid, block_m=2)
    # blocks [1, 2], [3, 4], [5, pad]: the last holds no real row and is dropped; maxima 2 and 4
    assert got["rows"] == 4 and got["max_row_steps"] == 4
    assert got["mean_row_steps"] == pytest.approx(2.5)
    assert got["mean_block_steps"] == pytest.approx(3.0)
    assert got["idle_fraction"] == pytest.approx(1 - 10 / (2 * 6))


def test_config_rejects_bad_values(steps_module):
    with pytest.raises(ValueError, match="alphas"):
        steps_module.Config(alphas=(1.0,))
    with pytest.raises(ValueError, match="bundled_record_steps"):
        steps_module.Config(bundled_steps=3, bundled_record_steps=(3,))


@pytest.mark.skipif(not (torch.cuda.is_available() or dispatch.interpreter_ready()),
                    reason="the kernels need CUDA, or TRITON_INTERPRET=1 set before Triton was imported")
def test_quick_grid_writes_a_resumable_table(steps_module, tmp_path, monkeypatch):
    path = steps_module.main(["--quick", "--out", str(tmp_path)])
    df = pd.read_csv(path)
    config = steps_module.Config.quick()
    assert set(df.source) == {"random", "bundled"}
    # sparsemax (α = 2) is counted from its default start (6 ranks) and from τ = −1 on every view; α = 1.5 from
    # its default (τ = −1), and on the fused kernel's view (rounding "q, k") also from the sparsemax start
    starts = df.groupby(["rounding", "alpha"]).start.agg(lambda x: tuple(sorted(set(x)))).to_dict()
    assert starts == {("scores", 1.5): ("default",), ("scores", 2.0): ("default", "ranks 1"),
                      ("q, k", 1.5): ("default", "ranks 6"), ("q, k", 2.0): ("default", "ranks 1")}
    assert set(df[(df.alpha == 2.0) & (df.start == "default")].start_ranks) == {6}
    assert set(df[(df.alpha == 1.5) & (df.start == "default")].start_ranks) == {1}
    per_rule = len(config.dtypes) * 3 + len(config.qk_dtypes) * 4                # (view, α, start) combinations
    assert len(df) == 2 * per_rule * len(config.stop_rules) * len(config.block_ms)
    fused = df[df.rounding == "q, k"]
    assert set(fused.dtype) == {"bfloat16"} and set(fused[fused.stop_rule == "bound"].stop_tol) == {2.0 ** -12}
    assert (df.mean_block_steps >= df.mean_row_steps).all()
    assert df.idle_fraction.between(0.0, 1.0, inclusive="left").all()
    assert (df.max_row_steps >= 1).all() and (df.max_row_steps <= 40).all()
    # bigger blocks wait longer for their slowest row
    for _, group in df.groupby(["source", "group", "dtype", "rounding", "stop_rule", "alpha", "start"]):
        by_block = group.sort_values("block_m")
        assert by_block.mean_block_steps.is_monotonic_increasing
    # the bound rule stops each row at or before the step rule, and within its tolerance (+ float32 rounding)
    keys = ["source", "group", "dtype", "rounding", "alpha", "start", "block_m"]
    paired = df[df.stop_rule == "bound"].merge(df[df.stop_rule == "step"], on=keys, suffixes=("", "_step"))
    assert len(paired) == len(df) // 2
    assert (paired.mean_block_steps <= paired.mean_block_steps_step).all()
    assert (paired.mean_row_steps <= paired.mean_row_steps_step).all()
    assert (paired.max_l1_error <= paired.stop_tol + 1e-5).all(), paired[["max_l1_error", "stop_tol"]]
    # the Newton map is increasing left of the root (N' = h h''/h'² ≥ 0), so iterates from the higher start never
    # trail those from τ = −1: no block takes more steps
    keys = ["source", "group", "dtype", "rounding", "stop_rule", "alpha", "block_m"]
    paired = df[df.start_ranks == 6].merge(df[df.start_ranks == 1], on=keys, suffixes=("", "_minus_one"))
    assert len(paired) == len(df[(df.alpha == 2.0) | (df.rounding == "q, k")]) // 2
    assert (paired.mean_block_steps <= paired.mean_block_steps_minus_one).all()
    assert (paired[paired.alpha == 2.0].mean_block_steps < paired[paired.alpha == 2.0].mean_block_steps_minus_one).any()
    assert read_meta(path)["config"]["alphas"] == list(config.alphas)
    from pladis_analysis import plotting

    assert plotting.save_figure(plotting.plot_search_steps(path), tmp_path / "search_steps.png").stat().st_size > 0

    def no_recount(*args, **kwargs):
        raise AssertionError("a finished grid was counted again instead of resumed")

    monkeypatch.setattr(steps_module, "row_steps", no_recount)
    monkeypatch.setattr(steps_module, "bundled_scores", no_recount)
    assert pd.read_csv(steps_module.main(["--quick", "--out", str(tmp_path)])).equals(df)


def test_an_interrupted_grid_resumes_job_by_job(steps_module, tmp_path):
    """Random-score jobs of two key counts share their group label: a job whose grid point was written must not
    wait for the other key count's rows (it recounted its own and added them twice)."""
    from dataclasses import replace

    config = replace(steps_module.Config.quick(), sources=("random",), key_counts=(33, 40), stop_rules=("bound",),
                     alphas=(1.5,), qk_dtypes=())
    path = steps_module.run(config, tmp_path)
    df = pd.read_csv(path)
    assert set(df.lk) == {33, 40}
    df[df.lk == 33].to_csv(path, index=False)                            # the run stopped before the lk = 40 job
    resumed = pd.read_csv(steps_module.run(config, tmp_path))
    assert len(resumed) == len(df) and set(resumed.lk) == {33, 40}
