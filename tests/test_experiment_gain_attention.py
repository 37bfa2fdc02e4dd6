"""Per-prompt PLADIS gain against attention statistics: the helpers, and a quick run on the bundled model."""

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from experiment_scripts import load_experiment


@pytest.fixture(scope="module")
def gain():
    return load_experiment("pladis_gain_attention")


@pytest.mark.parametrize("seed", range(4))
def test_spearman_matches_scipy_with_ties(gain, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=40)
    y = rng.integers(-1, 2, size=40).astype(float)  # the ternary gains: mostly ties
    assert gain.spearman(x, y) == pytest.approx(scipy_stats.spearmanr(x, y).statistic, abs=1e-12)
    assert np.isnan(gain.spearman(x, np.zeros(40)))  # a constant outcome has no rank correlation


def test_spearman_interval_brackets_a_clear_monotone_relation(gain):
    rng = np.random.default_rng(0)
    x = rng.normal(size=60)
    rho, lo, hi = gain.spearman_interval(x, np.exp(x) + 0.1 * rng.normal(size=60), 300)
    assert lo <= rho <= hi and lo > 0.8
    rho, lo, hi = gain.spearman_interval(x, rng.normal(size=60), 300)
    assert lo < 0 < hi or abs(rho) < 0.35  # independent draws: an interval around a small ρ


def _probe(branch_rows):
    """A probe table with the recorder's columns: two rows per (branch, variant)."""
    rows = []
    for branch, variant, value in branch_rows:
        for step in (0, 1):
            rows.append({"step": step, "layer": "l", "head": 0, "branch": branch, "variant": variant,
                         "entropy": value + step, "support_size": 2 * value, "onehot_fraction": value / 10,
                         "bos_mass": value / 100, "max_weight": value / 20, "top_gap": value / 4,
                         "negative_mass": value / 50, "sens_query_0.01": value, "sens_text_0.01": 2 * value,
                         "lipschitz": 3 * value})
    return pd.DataFrame(rows)


def test_prompt_statistics_average_the_conditional_branch_and_take_ratios(gain):
    labels = gain.probe_labels(2.0, 1.5)
    assert labels == {"softmax": "softmax", "entmax": "entmax(1.5)", "pladis": "pladis(2, 1.5)"}
    probe = _probe([("cond", "softmax", 4.0), ("cond", "entmax(1.5)", 1.0), ("cond", "pladis(2, 1.5)", 8.0),
                    ("uncond", "softmax", 100.0), ("uncond", "entmax(1.5)", 100.0),
                    ("uncond", "pladis(2, 1.5)", 100.0)])
    got = gain.prompt_statistics(probe, labels, 0.01)
    assert got["softmax_entropy"] == 4.5 and got["entmax_entropy"] == 1.5 and got["entropy_reduction"] == 3.0
    assert got["entmax_support"] == 2.0 and got["entmax_onehot_fraction"] == 0.1
    assert got["softmax_bos_mass"] == 0.04 and got["pladis_negative_mass"] == 0.16
    assert got["pladis_sens_query_ratio"] == got["pladis_sens_text_ratio"] == got["pladis_lipschitz_ratio"] == 2.0
    assert got["entmax_sens_query_ratio"] == got["entmax_sens_text_ratio"] == got["entmax_lipschitz_ratio"] == 0.25
    assert not any("sens" in k or "lipschitz" in k for k in gain.prompt_statistics(probe, labels, None))
    with pytest.raises(ValueError, match="did not measure"):
        gain.prompt_statistics(probe, gain.probe_labels(3.0, 1.5), None)
    with pytest.raises(ValueError, match="conditional"):
        gain.prompt_statistics(probe[probe["branch"] == "uncond"], labels, None)


def test_study_outcomes_are_paired_differences_per_prompt(gain):
    rows = []
    for variant, all_, count, relation in (("stock", [1, 0], [1, 1], [1, 0]),
                                           ("pladis(2, 1.5)", [0, 0], [0, 1], [1, 1])):
        for i in range(2):
            rows.append({"split": "pair/train", "guidance_scale": 5.0, "variant": variant, "index": i,
                         "all": all_[i], "count": count[i], "relation": relation[i], "colour": np.nan})
    out = gain.study_outcomes(pd.DataFrame(rows), "pladis(2, 1.5)").set_index("index")
    assert out["stock_all"].tolist() == [1, 0]
    assert out["gain_all"].tolist() == [-1, 0] and out["gain_count"].tolist() == [-1, 0]
    # the attributes a prompt names (NaN columns are not named): count and relation here
    assert out["gain_attributes"].tolist() == [-0.5, 0.5]
    with pytest.raises(ValueError, match="no rows of variant"):
        gain.study_outcomes(pd.DataFrame(rows), "pladis(3, 1.5)")


def test_summary_pools_splits_and_marks_intervals_that_exclude_zero(gain):
    rng = np.random.default_rng(1)
    n = 30
    per_prompt = pd.DataFrame({"split": ["pair/train"] * n + ["pair/heldout"] * n, "guidance_scale": 5.0,
                               "index": list(range(n)) * 2, "softmax_entropy": rng.normal(size=2 * n)})
    per_prompt["gain_all"] = np.sign(per_prompt["softmax_entropy"])       # tracks the statistic exactly
    per_prompt["gain_count"] = 0.0                                         # never changes
    per_prompt["gain_attributes"] = rng.normal(size=2 * n)
    summary = gain.summarise(per_prompt, 200)
    assert set(summary["split"]) == {"pair/train", "pair/heldout", "pooled"}
    assert set(summary["statistic"]) == {"softmax_entropy"}                # only the statistics present
    tracked = summary[summary["outcome"] == "gain_all"]
    assert (tracked["spearman"] > 0.8).all() and tracked["excludes_zero"].all()
    assert tracked.set_index("split").loc["pooled", "n"] == 2 * n
    never = summary[summary["outcome"] == "gain_count"]
    assert never["spearman"].isna().all() and (never["n_changed"] == 0).all() and not never["excludes_zero"].any()


def test_config_names_what_is_wrong(gain):
    with pytest.raises(ValueError, match="splits"):
        gain.Config(splits=("pair/nowhere",))
    with pytest.raises(ValueError, match="variant='stock'"):
        gain.Config(variant="stock")
    with pytest.raises(ValueError, match="n_prompts=0"):
        gain.Config(n_prompts=0)
    assert gain.Config().variant_parameters() == (2.0, 1.5)


def test_a_missing_alignment_table_says_which(gain, tmp_path):
    cfg = gain.Config.quick_config(alignment=str(tmp_path / "none.csv"), out=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="none.csv"):
        gain.run(cfg, pipe=None)


def test_each_rerun_samples_the_study_prompt_with_its_noise_and_steps(gain, tmp_path, monkeypatch):
    import torch

    calls = []

    class Pipe:
        unet = None

        def __call__(self, prompts, num_inference_steps, guidance_scale, generator, output_type):
            calls.append((prompts, num_inference_steps, guidance_scale, [g.initial_seed() for g in generator]))
            return SimpleNamespace(images=torch.zeros(len(prompts), 3, 32, 32))

    class Recorder:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def to_dataframe(self):
            return _probe([("cond", "softmax", 4.0), ("cond", "entmax(1.5)", 1.0), ("cond", "pladis(2, 1.5)", 8.0)])

    probed = []
    monkeypatch.setattr(gain, "record_attention", lambda pipe, **kwargs: probed.append(kwargs) or Recorder())
    monkeypatch.setattr(gain, "check_same_weights", lambda study_config, pipe: None)
    per_prompt = gain.run(gain.Config.quick_config(out=str(tmp_path), n_prompts=2), Pipe())
    alignment = gain.ROOT / "results/pladis_shapes_alignment.csv"
    study_config = json.loads(alignment.with_suffix(".meta.json").read_text())["config"]
    table = pd.read_csv(alignment)
    stock = table[(table["split"] == "pair/train") & (table["variant"] == "stock") & (table["guidance_scale"] == 5)]
    prompts = stock.set_index("index")["prompt"]
    seeds = [gain.study.sample_seed_of(study_config["sample_seed"], i) for i in (0, 1)]
    assert seeds == [study_config["sample_seed"] * 1_000_003 + i for i in (0, 1)]   # the study's own rule
    assert calls == [([prompts[i]], study_config["num_inference_steps"], 5.0, [seeds[i]]) for i in (0, 1)]
    assert [kw["layers"] for kw in probed] == [study_config["layers"]] * 2     # where the study applied PLADIS
    assert per_prompt["index"].tolist() == [0, 1] and per_prompt["entropy_reduction"].tolist() == [3.0, 3.0]
    assert per_prompt["gain_all"].notna().all()                                  # joined with the study's outcomes


@pytest.mark.slow
def test_quick_run_reproduces_the_study_stock_samples_resumes_and_draws(gain, tmp_path, monkeypatch):
    summary = gain.main(["--quick", "--out", str(tmp_path)])
    per_prompt = pd.read_csv(tmp_path / "pladis_gain_attention.csv")
    assert len(per_prompt) == 3 and set(per_prompt["split"]) == {"pair/train"}
    assert set(gain.STATISTICS) - set(per_prompt) == {f"{m}_{s}_ratio" for m in ("pladis", "entmax")
                                                      for s in ("sens_query", "sens_text", "lipschitz")}
    assert (per_prompt["entmax_support"] <= 24).all() and (per_prompt["entropy_reduction"] > 0).all()
    # the rerun is the study's stock sample: same prompt, noise, steps and weights, so the same score
    merged = gain.study_outcomes(pd.read_csv(gain.ROOT / "results/pladis_shapes_alignment.csv"), "pladis(2, 1.5)")
    merged = per_prompt.merge(merged, on=["split", "guidance_scale", "index"])
    assert (merged["rerun_all"] == merged["stock_all"]).all()
    assert set(summary["outcome"]) == set(gain.OUTCOMES) and (summary["n"] == 3).all()

    # a second run resumes: nothing is sampled again
    class NoSampling:
        def __getattr__(self, name):
            raise AssertionError("a resumed run sampled again")

    monkeypatch.setattr(gain, "load_bundled", lambda weights_dir=None: NoSampling())
    monkeypatch.setattr(gain, "check_same_weights", lambda study_config, pipe: None)
    again = gain.main(["--quick", "--out", str(tmp_path)])
    pd.testing.assert_frame_equal(again, summary)

    from pladis_analysis.cli import main as cli

    assert cli(["figures", "--results", str(tmp_path), "--out", str(tmp_path / "fig")]) == 0
    assert (tmp_path / "fig" / "pladis_gain_attention.png").exists()


def test_other_weights_are_refused(gain, tmp_path, monkeypatch):
    source = gain.ROOT / "results/pladis_shapes_alignment.csv"
    shutil.copy(source, tmp_path / "a.csv")
    meta = json.loads(source.with_suffix(".meta.json").read_text())
    meta["config"]["unet_sha256"] = "0000000000000000"               # the table says: other weights
    (tmp_path / "a.meta.json").write_text(json.dumps(meta))
    monkeypatch.setattr(gain, "weights_fingerprint", lambda unet: "8c43f73c78deaf33")
    with pytest.raises(ValueError, match="other weights"):
        gain.run(gain.Config.quick_config(alignment=str(tmp_path / "a.csv"), out=str(tmp_path)),
                 SimpleNamespace(unet=None))
