"""Does what PLADIS does to a prompt track that prompt's attention regime?

THEORY.md asks whether the alignment gain of PLADIS (if any) tracks entropy reduction, support size or
sensitivity. The main study (``experiments/pladis_shapes_study.py``) scores the same prompts from the same noise
with stock attention and with PLADIS, but probes attention on other prompts. This script joins the two per
prompt: it reruns the study's stock sample of every prompt of the chosen splits alone, with the probe on the
layers the study applied PLADIS to (the down and up blocks' cross-attention by default), and relates the prompt's
attention statistics to its change in alignment.

Per prompt (conditional branch, mean over sampling steps, layers and heads; the variants are measured on the
stock trajectory's q, k, v, see ``record_attention``):

* entropy of softmax and of α-entmax, and the entropy the sparse map removes (``entropy_reduction``);
* α-entmax's support size and its one-hot fraction (rows whose top gap is ≥ 1/(α−1));
* softmax's start-of-text mass, max weight and the top score gap;
* PLADIS's negative mass;
* sensitivity of the PLADIS output and of the α-entmax output over softmax's: to a relative perturbation of the
  queries and of the text embeddings (``pladis_sens_*_ratio``, ``entmax_sens_*_ratio``), and the ratios of their
  local Lipschitz estimates (``*_lipschitz_ratio``): is sparse attention "robust to noise" on real trajectories?

The outcomes are the paired differences PLADIS − stock read from the study's table: all attributes right
(``gain_all``, −1/0/1), object count (``gain_count``) and the mean over the attributes the prompt names
(``gain_attributes``). Each (split, guidance, statistic, outcome) gets Spearman's ρ over prompts with a
percentile bootstrap 95% interval (prompts resampled), also with the chosen splits pooled. These are empirical
associations on one small model, not causes: report them, never assert them. With a dozen statistics, three
outcomes and several splits, some intervals exclude 0 by chance alone.

The rerun must be the study's stock sample: the same prompt, noise, steps and weights (checked against the
study table's meta), sampled alone instead of in a batch. Column ``rerun_all`` scores the rerun image, so the
table shows how often it agrees with the study's stock score.

Writes ``results/pladis_gain_attention.csv`` (one row per prompt; resumable) and
``results/pladis_gain_attention_summary.csv`` (the correlations), each with ``.meta.json`` provenance.

    python experiments/pladis_gain_attention.py            # two-object splits, guidance 5: 192 prompts
    python experiments/pladis_gain_attention.py --quick    # 3 prompts of one split, no sensitivity (tests)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the study's conventions, in the same folder

import pladis_shapes_study as study  # noqa: E402

from pladis_analysis.models.shapes import load_bundled, make_dataset  # noqa: E402
from pladis_analysis.models.shapes.pipeline import to_uint8, weights_fingerprint  # noqa: E402
from pladis_analysis.models.shapes.scorer import score_image  # noqa: E402
from pladis_analysis.probes import record_attention  # noqa: E402
from pladis_analysis.probes.sensitivity import SensitivityConfig  # noqa: E402
from pladis_analysis.results import ResultsTable, provenance, read_meta, read_table, write_table  # noqa: E402

OUTCOMES = ("gain_all", "gain_count", "gain_attributes")
# the study table's per-image attribute columns (two-object prompts score colour and shape per object)
ATTRIBUTE_COLUMNS = ("count", "colour", "shape", "position", "size", "relation",
                     "colour_0", "shape_0", "colour_1", "shape_1")
# the study settings the rerun must share to be the study's stock sample
SAMPLING_KEYS = ("prompt_seed", "sample_seed", "num_inference_steps", "layers", "unet_sha256")


@dataclass
class Config:
    """Which of the study's prompts to rerun, and how to summarise them."""

    alignment: str = "results/pladis_shapes_alignment.csv"   # the study's per-image table
    splits: tuple[str, ...] = ("pair/train", "pair/heldout")   # single-object prompts barely change (README)
    guidance_scales: tuple[float, ...] = (5.0,)
    variant: str = "pladis(2, 1.5)"                           # the study variant whose gain is explained
    n_prompts: int | None = None                              # None: every prompt the study table has
    layers: str | None = None                                 # probed; None: the study's PLADIS layers
    sensitivity: bool = True
    sensitivity_eps: float = 1e-2
    sensitivity_rows: int = 16
    lipschitz_iterations: int = 4
    bootstrap: int = 2000
    threads: int = 2
    out: str = "results"
    quick: bool = False

    def __post_init__(self) -> None:
        self.splits = tuple(self.splits)
        self.guidance_scales = tuple(float(g) for g in self.guidance_scales)
        bad = [s for s in self.splits if s not in study.SPLITS]
        if bad or not self.splits:
            raise ValueError(f"splits={self.splits}: choose from {study.SPLITS}")
        if self.variant not in {v[0] for v in study.VARIANTS} - {"stock"}:
            raise ValueError(f"variant={self.variant!r}: not among the study's non-stock variants "
                             f"{[v[0] for v in study.VARIANTS[1:]]}")
        if self.n_prompts is not None and self.n_prompts < 1:
            raise ValueError(f"n_prompts={self.n_prompts}: must be ≥ 1 (or None for all)")
        if self.bootstrap < 1 or not self.sensitivity_eps > 0:
            raise ValueError(f"bootstrap={self.bootstrap}, sensitivity_eps={self.sensitivity_eps}: must be > 0")

    @classmethod
    def quick_config(cls, **overrides) -> "Config":
        return cls(**{**dict(splits=("pair/train",), n_prompts=3, sensitivity=False, bootstrap=200, quick=True),
                      **overrides})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def variant_parameters(self) -> tuple[float, float]:
        """(λ, α) of :attr:`variant`."""
        _, lam, alpha, _ = study.unpack_variant(next(v for v in study.VARIANTS if v[0] == self.variant))
        return lam, alpha


# --------------------------------------------------------------------------------------------------
# per-prompt attention statistics
# --------------------------------------------------------------------------------------------------

def probe_labels(lam: float, alpha: float) -> dict[str, str]:
    """The recorder's variant labels for the three maps: softmax, α-entmax and PLADIS(λ, α)."""
    return {"softmax": "softmax", "entmax": f"entmax({alpha:g})", "pladis": f"pladis({lam:g}, {alpha:g})"}


def prompt_statistics(probe: pd.DataFrame, labels: dict[str, str], eps: float | None) -> dict[str, float]:
    """One prompt's attention statistics from its probe table (``record_attention(...).to_dataframe()``): means
    over the conditional branch's rows (steps × layers × heads), and the ratios the module docstring names.
    ``eps``: the relative perturbation of the sensitivity columns (None: the probe measured none)."""
    cond = probe[probe["branch"] == "cond"]
    if cond.empty:
        raise ValueError(f"the probe has no conditional-branch rows (branches: {sorted(probe['branch'].unique())})")
    mean = cond.groupby("variant").mean(numeric_only=True)
    missing = sorted(set(labels.values()) - set(mean.index))
    if missing:
        raise ValueError(f"the probe did not measure {missing} (it has {sorted(mean.index)})")
    s, e, p = (mean.loc[labels[k]] for k in ("softmax", "entmax", "pladis"))
    stats = {"softmax_entropy": s["entropy"], "entmax_entropy": e["entropy"],
             "entropy_reduction": s["entropy"] - e["entropy"],
             "entmax_support": e["support_size"], "entmax_onehot_fraction": e["onehot_fraction"],
             "softmax_bos_mass": s["bos_mass"], "softmax_max_weight": s["max_weight"], "top_gap": s["top_gap"],
             "pladis_negative_mass": p["negative_mass"]}
    if eps is not None:
        for name, mapped in (("pladis", p), ("entmax", e)):
            for target in ("query", "text"):
                column = f"sens_{target}_{eps:g}"
                stats[f"{name}_sens_{target}_ratio"] = mapped[column] / s[column]
            stats[f"{name}_lipschitz_ratio"] = mapped["lipschitz"] / s["lipschitz"]
    return {k: float(v) for k, v in stats.items()}


STATISTICS = ("softmax_entropy", "entmax_entropy", "entropy_reduction", "entmax_support", "entmax_onehot_fraction",
              "softmax_bos_mass", "softmax_max_weight", "top_gap", "pladis_negative_mass",
              "pladis_sens_query_ratio", "pladis_sens_text_ratio", "pladis_lipschitz_ratio",
              "entmax_sens_query_ratio", "entmax_sens_text_ratio", "entmax_lipschitz_ratio")


# --------------------------------------------------------------------------------------------------
# the study's outcomes
# --------------------------------------------------------------------------------------------------

def study_outcomes(alignment: pd.DataFrame, variant: str) -> pd.DataFrame:
    """Per (split, guidance_scale, index): the study's stock score ``stock_all`` and the paired differences
    ``variant`` − stock named in :data:`OUTCOMES`."""
    scored = alignment.copy()
    present = [c for c in ATTRIBUTE_COLUMNS if c in scored]
    scored["attributes"] = scored[present].mean(axis=1, skipna=True)  # the attributes this prompt names
    keys = ["split", "guidance_scale", "index"]
    wide = scored[scored["variant"].isin(["stock", variant])].pivot_table(
        index=keys, columns="variant", values=["all", "count", "attributes"])
    if variant not in wide.columns.get_level_values(1):
        raise ValueError(f"the alignment table has no rows of variant {variant!r}")
    out = pd.DataFrame({"stock_all": wide[("all", "stock")],
                        "gain_all": wide[("all", variant)] - wide[("all", "stock")],
                        "gain_count": wide[("count", variant)] - wide[("count", "stock")],
                        "gain_attributes": wide[("attributes", variant)] - wide[("attributes", "stock")]})
    return out.reset_index()


# --------------------------------------------------------------------------------------------------
# correlations
# --------------------------------------------------------------------------------------------------

def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's ρ of each row pair of ``x`` and ``y`` (..., n): Pearson's on average ranks (ties count once
    each); NaN for a row where either side is constant."""
    rx, ry = (rankdata(a, axis=-1) for a in (x, y))
    rx, ry = rx - rx.mean(axis=-1, keepdims=True), ry - ry.mean(axis=-1, keepdims=True)
    norm = np.sqrt((rx * rx).sum(axis=-1) * (ry * ry).sum(axis=-1))
    return np.where(norm > 0, (rx * ry).sum(axis=-1) / np.where(norm > 0, norm, 1.0), np.nan)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's ρ of two samples; NaN when either side is constant."""
    return float(spearman_rows(np.asarray(x, float), np.asarray(y, float)))


def spearman_interval(x: np.ndarray, y: np.ndarray, n_boot: int, seed: int = 0) -> tuple[float, float, float]:
    """(ρ, 2.5%, 97.5%): Spearman's ρ and a percentile bootstrap interval over resampled pairs (resamples in
    which either side is constant are dropped; NaN bounds when none is left)."""
    picks = np.random.default_rng(seed).integers(0, len(x), size=(n_boot, len(x)))   # (n_boot, n)
    boots = spearman_rows(x[picks], y[picks])
    boots = boots[np.isfinite(boots)]
    lo, hi = np.percentile(boots, [2.5, 97.5]) if len(boots) else (float("nan"), float("nan"))
    return spearman(x, y), float(lo), float(hi)


def summarise(per_prompt: pd.DataFrame, n_boot: int) -> pd.DataFrame:
    """Spearman's ρ of every statistic with every outcome, per split × guidance and with the splits pooled
    (split ``"pooled"``), with bootstrap intervals and the count of prompts whose outcome changed."""
    statistics = [s for s in STATISTICS if s in per_prompt]
    groups = [(split, g, grp) for (split, g), grp in per_prompt.groupby(["split", "guidance_scale"])]
    if per_prompt["split"].nunique() > 1:
        groups += [("pooled", g, grp) for g, grp in per_prompt.groupby("guidance_scale")]
    rows = []
    for split, g, grp in groups:
        for outcome in OUTCOMES:
            y = grp[outcome].to_numpy(float)
            for statistic in statistics:
                rho, lo, hi = spearman_interval(grp[statistic].to_numpy(float), y, n_boot)
                rows.append({"split": split, "guidance_scale": g, "outcome": outcome, "statistic": statistic,
                             "n": len(grp), "n_changed": int((y != 0).sum()), "outcome_mean": float(y.mean()),
                             "spearman": rho, "ci_low": lo, "ci_high": hi,
                             "excludes_zero": bool(lo > 0 or hi < 0)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------------

def check_same_weights(study_config: dict, pipe) -> None:
    """Refuse to rerun a study table whose stock samples came from other UNet weights than ``pipe``'s."""
    theirs, ours = study_config.get("unet_sha256"), weights_fingerprint(pipe.unet)
    if theirs != ours:
        raise ValueError(f"the alignment table was sampled with other weights (UNet {theirs!r}, these are "
                         f"{ours!r}); rerun experiments/pladis_shapes_study.py with them first")


def run(cfg: Config, pipe) -> pd.DataFrame:
    alignment_path = Path(cfg.alignment)
    if not alignment_path.is_absolute():
        alignment_path = ROOT / alignment_path
    if not alignment_path.exists():
        raise FileNotFoundError(f"alignment={str(alignment_path)!r}: no such table; run "
                                f"experiments/pladis_shapes_study.py first")
    study_config = read_meta(alignment_path)["config"]
    check_same_weights(study_config, pipe)
    outcomes = study_outcomes(read_table(alignment_path), cfg.variant)
    lam, alpha = cfg.variant_parameters()
    labels = probe_labels(lam, alpha)
    sensitivity = (SensitivityConfig(eps=(cfg.sensitivity_eps,), iterations=cfg.lipschitz_iterations,
                                     max_rows=cfg.sensitivity_rows) if cfg.sensitivity else None)
    layers = cfg.layers or study_config["layers"]
    # rows resume only under the same settings, sampling and statistics (a new statistic recomputes them all)
    config = {**cfg.to_dict(), **{f"study_{k}": study_config.get(k) for k in SAMPLING_KEYS}, "probed_layers": layers,
              "statistics": list(STATISTICS)}
    table = ResultsTable(Path(cfg.out) / "pladis_gain_attention.csv", keys=["split", "guidance_scale", "index"],
                         config=config, seeds=[study_config["prompt_seed"], study_config["sample_seed"]])
    jobs = []
    for split in cfg.splits:
        for g in cfg.guidance_scales:
            have = outcomes[(outcomes["split"] == split) & (outcomes["guidance_scale"] == g)]
            if have.empty:
                raise ValueError(f"the alignment table has no rows for split {split!r} at guidance {g:g}")
            n = len(have) if cfg.n_prompts is None else cfg.n_prompts
            if n > len(have):
                raise ValueError(f"n_prompts={n}: the alignment table has {len(have)} prompts of {split!r} at "
                                 f"guidance {g:g}")
            jobs += [(split, g, i) for i in sorted(have["index"])[:n]]
    todo = [j for j in jobs if not table.has(split=j[0], guidance_scale=j[1], index=j[2])]
    datasets = {}
    for split, g, i in tqdm(todo, desc="prompts", disable=None):
        if split not in datasets:
            kind, which = split.split("/")
            datasets[split] = make_dataset(study_config["n_prompts"], seed=study_config["prompt_seed"], kind=kind,
                                           split=which)
        sample = datasets[split][i]
        generator = torch.Generator().manual_seed(study.sample_seed_of(study_config["sample_seed"], i))
        with record_attention(pipe, stats="basic", variants=list(labels.values()), layers=layers,
                              sensitivity=sensitivity) as rec:
            images = pipe([sample.prompt], num_inference_steps=study_config["num_inference_steps"],
                          guidance_scale=g, generator=[generator], output_type="pt").images
        rerun = score_image(to_uint8(images)[0], sample.truth)
        row = {"split": split, "guidance_scale": g, "index": i, "prompt": sample.prompt,
               "rerun_all": float(rerun["all"])}
        row.update(prompt_statistics(rec.to_dataframe(), labels, cfg.sensitivity_eps if cfg.sensitivity else None))
        table.add(row)
        table.flush()
    keys = ["split", "guidance_scale", "index"]
    # this configuration's prompts (a table on disk may hold more), with the study's outcomes beside them
    return pd.DataFrame(jobs, columns=keys).merge(table.dataframe(), on=keys).merge(outcomes, on=keys, how="left")


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 prompts of pair/train, no sensitivity probes")
    parser.add_argument("--out", default=None, help="results folder (default results/)")
    parser.add_argument("--alignment", default=None, help="the study's per-image table "
                                                          "(default results/pladis_shapes_alignment.csv)")
    parser.add_argument("--splits", nargs="+", choices=study.SPLITS, help="splits (default: the two-object ones)")
    parser.add_argument("--guidance-scales", type=float, nargs="+", help="guidance scales (default 5)")
    parser.add_argument("--n-prompts", type=int, help="prompts per split (default: all the study table has)")
    parser.add_argument("--layers", help="layer spec to probe (default: the layers the study applied PLADIS to)")
    parser.add_argument("--weights-dir", default=None, help="weights folder (default: the bundled weights)")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in (("out", args.out), ("alignment", args.alignment), ("splits", args.splits),
                                   ("guidance_scales", args.guidance_scales), ("n_prompts", args.n_prompts),
                                   ("layers", args.layers))
                 if v is not None}
    cfg = Config.quick_config(**overrides) if args.quick else Config(**overrides)
    torch.set_num_threads(cfg.threads)
    pipe = load_bundled(args.weights_dir)
    per_prompt = run(cfg, pipe)
    summary = summarise(per_prompt, cfg.bootstrap)
    agree = float((per_prompt["rerun_all"] == per_prompt["stock_all"]).mean())
    per_prompt_meta = read_meta(Path(cfg.out) / "pladis_gain_attention.csv")
    write_table(summary, Path(cfg.out) / "pladis_gain_attention_summary.csv",
                provenance(per_prompt_meta["config"], seeds=per_prompt_meta["seeds"], bootstrap_seed=0,
                           prompts=len(per_prompt), rerun_agrees_with_study=agree))
    with pd.option_context("display.width", 160, "display.precision", 3):
        shown = summary[summary["excludes_zero"]] if summary["excludes_zero"].any() else summary.head(12)
        print(f"{len(per_prompt)} prompts; rerun stock score equals the study's on {agree:.1%}")
        print(shown.to_string(index=False))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
