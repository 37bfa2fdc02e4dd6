"""Smoke tests of the map benchmark: the CLI's quick mode writes its table, metadata and figure; the config
validates itself; a rerun resumes instead of recomputing."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "bench_maps.py"


def _load_module():
    spec = importlib.util.spec_from_file_location("bench_maps", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


bench = _load_module()


def test_quick_cli_writes_table_meta_and_figure(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    df = pd.read_csv(tmp_path / "bench_maps.csv")
    meta = json.loads((tmp_path / "bench_maps.meta.json").read_text())
    assert (tmp_path / "bench_maps.png").stat().st_size > 0
    n_methods = len(bench.methods())
    assert len(df) == n_methods * len(bench.QUICK_SHAPES) * len(bench.MODES)
    assert (df.loc[df["method"] == "torch.softmax", "x_torch_softmax"] == 1.0).all()
    ours = df[df["impl"] == "pladis_analysis"]
    assert (ours["speedup_vs_counterpart"] > 0).all()
    # the correctness columns: our maps are within float32 rounding of the float64 reference at benchmark
    # shapes, and agree with their counterparts, except the package's α = 3 bisection, which is the one off
    assert (ours["max_abs_err_vs_float64"] < 2e-6).all(), ours[["method", "max_abs_err_vs_float64"]]
    agree = ours[ours["map"] != "entmax(3)"]
    assert (agree["max_abs_diff_vs_counterpart"] < 1e-5).all(), agree[["method", "max_abs_diff_vs_counterpart"]]
    package = df[df["impl"] == "entmax package"].set_index("map")["max_abs_err_vs_float64"]
    mine = ours.set_index("map")["max_abs_err_vs_float64"]
    assert (mine.loc["entmax(3)"].to_numpy() <= package.loc["entmax(3)"].to_numpy()).all()
    assert meta["config"]["quick"] is True and meta["seeds"] == [0] and "git_commit" in meta
    assert {t["map"] for t in meta["targets"]} == {"entmax15", "entmax(1.25)", "sparsemax"}


def test_rerun_resumes(tmp_path):
    cfg = bench.BenchMapsConfig(shapes=((2, 8, 77),), modes=("forward",), repeats=5, warmup=0, quick=True)
    path = bench.run(cfg, tmp_path)
    first = pd.read_csv(path)
    bench.run(cfg, tmp_path)  # every group is present: nothing is re-timed
    pd.testing.assert_frame_equal(first, pd.read_csv(path))


@pytest.mark.parametrize("bad", [{"repeats": 3}, {"modes": ("sideways",)}, {"shapes": ()}, {"devices": ("tpu",)},
                                 {"threads": 0}, {"score_std": 0.0}, {"warmup": -1}])
def test_config_validates_itself(bad):
    with pytest.raises(ValueError):
        bench.BenchMapsConfig(**bad)


def test_config_round_trips_to_dict():
    cfg = bench.BenchMapsConfig.quick_config()
    assert bench.BenchMapsConfig(**cfg.to_dict()) == cfg
