"""Does PLADIS improve prompt alignment of the bundled shapes model, and in which attention regime does it act?

This is the toolkit's main job (``make demo`` runs it with ``--quick``). On the bundled, really trained
text-to-image model it

1. samples the same prompts from the same initial noise under each attention variant — stock softmax (λ = 0),
   pure 1.5-entmax (λ = 1), PLADIS λ ∈ {2, 3} at α = 1.5 and λ = 2 at α = 2 — with and without guidance, and
   scores every image with the exact alignment scorer; because the runs are paired (same prompt, same noise),
   the difference to stock comes with a paired bootstrap 95% interval;
2. records, during stock sampling, the cross-attention statistics that decide what PLADIS can do
   (THEORY.md, "what the diffusion experiments should ask"): the fraction of rows in entmax's one-hot regime
   (top gap ≥ 1/(α−1)), the mass on the start-of-text token, entropy and support, per layer and step.

Writes ``results/pladis_shapes_alignment.csv`` (one row per image × variant × guidance; resumable),
``results/pladis_shapes_alignment_summary.csv`` (accuracy per split × guidance × variant, with the paired
difference to stock and its interval) and ``results/pladis_shapes_attention.csv`` (probe table), each with
``.meta.json`` provenance; figures come from those files (``pladis_analysis.plotting``).

    python experiments/pladis_shapes_study.py            # full: 64 prompts per split
    python experiments/pladis_shapes_study.py --quick    # 8 single-object prompts, 10 steps (demo, tests)
    python experiments/pladis_shapes_study.py --branches --skip-probe   # PLADIS on all guidance branches vs the
                                                         # conditional one only (results/pladis_branches/)
    python experiments/pladis_shapes_study.py --splits pair/train pair/heldout --variants stock "pladis(2, 1.5)" \
        --guidance-scales 2 3 --skip-probe --out results/pladis_guidance   # a guidance sweep
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
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]

from pladis_analysis.diffusion import apply_pladis  # noqa: E402
from pladis_analysis.models.shapes import load_bundled, make_dataset  # noqa: E402
from pladis_analysis.models.shapes.pipeline import to_uint8, weights_fingerprint  # noqa: E402
from pladis_analysis.models.shapes.scorer import score_image  # noqa: E402
from pladis_analysis.probes import record_attention  # noqa: E402
from pladis_analysis.results import ResultsTable, provenance, write_table  # noqa: E402

SPLITS = ("single/train", "pair/train", "single/heldout", "pair/heldout")
# (label, λ, α[, branches]); λ = 0 is the stock model and does not install any processor. ``branches`` (default
# "all", as the public implementation) picks the guidance chunks PLADIS acts on (see ``apply_pladis``).
VARIANTS = (("stock", 0.0, 1.5), ("entmax(1.5)", 1.0, 1.5), ("pladis(2, 1.5)", 2.0, 1.5),
            ("pladis(3, 1.5)", 3.0, 1.5), ("pladis(2, 2)", 2.0, 2.0))
# ``--branches``: does PLADIS on the unconditional branch cause the losses seen with guidance?
BRANCH_VARIANTS = (("stock", 0.0, 1.5), ("pladis(2, 1.5)", 2.0, 1.5), ("pladis(2, 1.5) cond only", 2.0, 1.5, "cond"))


def unpack_variant(variant: tuple) -> tuple[str, float, float, str]:
    """(label, λ, α, branches) of a variant tuple, ``branches`` defaulting to ``"all"``."""
    label, lam, alpha, *rest = variant
    return label, float(lam), float(alpha), rest[0] if rest else "all"


@dataclass
class StudyConfig:
    """What the study samples and measures."""

    splits: tuple[str, ...] = SPLITS
    variants: tuple[tuple[str, float, float], ...] = VARIANTS
    n_prompts: int = 64
    guidance_scales: tuple[float, ...] = (5.0, 1.0)
    num_inference_steps: int = 25
    layers: str = "default"  # PLADIS layers: down+up cross-attention, as the public implementation
    prompt_seed: int = 2000  # disjoint from training (0) and the model evaluation (1000)
    sample_seed: int = 0
    batch_size: int = 32
    probe_prompts: int = 16
    bootstrap: int = 2000
    threads: int = 2
    out: str = "results"
    quick: bool = False

    def __post_init__(self) -> None:
        self.splits = tuple(self.splits)
        self.variants = tuple(tuple(v) for v in self.variants)
        self.guidance_scales = tuple(float(g) for g in self.guidance_scales)
        bad = [s for s in self.splits if s not in SPLITS]
        if bad:
            raise ValueError(f"splits: {bad} not in {SPLITS}")
        if not any(lam == 0.0 for _, lam, _ in self.variants):
            raise ValueError("variants must include the stock model (λ = 0): differences are paired against it")
        for label, lam, alpha, _ in map(unpack_variant, self.variants):
            if lam < 0 or alpha <= 1:
                raise ValueError(f"variant {label!r}: need λ >= 0 and α > 1, got λ={lam}, α={alpha}")
        if min(self.n_prompts, self.num_inference_steps, self.batch_size, self.probe_prompts) < 1:
            raise ValueError("n_prompts, num_inference_steps, batch_size and probe_prompts must be >= 1")

    @classmethod
    def quick_config(cls, **overrides) -> "StudyConfig":
        base = dict(splits=("single/train",), variants=(VARIANTS[0], VARIANTS[2]), n_prompts=8,
                    guidance_scales=(5.0,), num_inference_steps=10, batch_size=8, probe_prompts=4,
                    bootstrap=200, quick=True)
        return cls(**{**base, **overrides})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def paired_difference(stock: np.ndarray, other: np.ndarray, n_boot: int, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``other − stock`` over paired trials, with a percentile bootstrap 95% interval."""
    diff = np.asarray(other, float) - np.asarray(stock, float)
    rng = np.random.default_rng(seed)
    boots = diff[rng.integers(0, len(diff), size=(n_boot, len(diff)))].mean(axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return float(diff.mean()), float(lo), float(hi)


ATTRIBUTES = ("all", "count", "colour", "shape", "position", "size", "relation")


def summarise(per_image: pd.DataFrame, n_boot: int) -> pd.DataFrame:
    """Accuracy per split × guidance × variant × attribute, and the paired difference to stock.

    ``all`` is the headline (every attribute the prompt names is right); the per-attribute rows show where a
    change comes from. Two-object attributes (``colour_0``, ``colour_1`` …) are pooled over both objects.
    """
    long = per_image.copy()
    for base in ("colour", "shape"):
        parts = [c for c in (f"{base}_0", f"{base}_1") if c in long]
        if parts:
            pooled = long[parts].mean(axis=1)  # the fraction of the two objects with the attribute right
            long[base] = long[base].fillna(pooled) if base in long else pooled
    rows = []
    for (split, g), grp in long.groupby(["split", "guidance_scale"]):
        for attribute in ATTRIBUTES:
            if attribute not in grp or grp[attribute].isna().all():
                continue
            wide = grp.pivot(index="index", columns="variant", values=attribute)
            for variant in wide.columns:
                paired = wide[["stock", variant]].dropna()
                delta, lo, hi = paired_difference(paired["stock"].to_numpy(), paired[variant].to_numpy(), n_boot)
                rows.append({"split": split, "guidance_scale": g, "variant": variant, "attribute": attribute,
                             "accuracy": float(wide[variant].mean()), "n": int(wide[variant].notna().sum()),
                             "delta_vs_stock": delta, "delta_ci_low": lo, "delta_ci_high": hi})
    return pd.DataFrame(rows)


def sample_seed_of(sample_seed: int, index: int) -> int:
    """The noise seed of prompt ``index``: the same for every variant, so that the comparison is paired."""
    return sample_seed * 1_000_003 + index


def _variant_context(pipe, lam: float, alpha: float, layers: str, branches: str = "all"):
    from contextlib import nullcontext

    return nullcontext() if lam == 0.0 else apply_pladis(pipe, scale=lam, alpha=alpha, layers=layers,
                                                          branches=branches)


def results_config(cfg: StudyConfig, pipe) -> dict:
    """The config every table of the study records: the study's settings and the UNet weights' fingerprint."""
    return {**cfg.to_dict(), "unet_sha256": weights_fingerprint(pipe.unet)}


def run_alignment(cfg: StudyConfig, pipe, out: Path) -> pd.DataFrame:
    table = ResultsTable(out / "pladis_shapes_alignment.csv", keys=["split", "guidance_scale", "variant", "index"],
                         config=results_config(cfg, pipe),
                         seeds=[cfg.prompt_seed, cfg.sample_seed])
    jobs = [(s, g, v) for s in cfg.splits for g in cfg.guidance_scales for v in cfg.variants]
    bar = tqdm(total=len(jobs) * cfg.n_prompts, desc="alignment", disable=None)
    for split, g, variant in jobs:
        label, lam, alpha, branches = unpack_variant(variant)
        kind, which = split.split("/")
        samples = make_dataset(cfg.n_prompts, seed=cfg.prompt_seed, kind=kind, split=which)
        todo = [i for i in range(cfg.n_prompts) if not table.has(split=split, guidance_scale=g, variant=label, index=i)]
        bar.update(cfg.n_prompts - len(todo))
        for b in range(0, len(todo), cfg.batch_size):
            idx = todo[b:b + cfg.batch_size]
            gens = [torch.Generator().manual_seed(sample_seed_of(cfg.sample_seed, i)) for i in idx]
            with _variant_context(pipe, lam, alpha, cfg.layers, branches):
                images = pipe([samples[i].prompt for i in idx], num_inference_steps=cfg.num_inference_steps,
                              guidance_scale=g, generator=gens, output_type="pt").images
            for i, img in zip(idx, to_uint8(images)):
                row = {"split": split, "guidance_scale": g, "variant": label, "pladis_scale": lam, "alpha": alpha,
                       "branches": branches, "index": i, "prompt": samples[i].prompt}
                row.update({k: float(v) for k, v in score_image(img, samples[i].truth).items()})
                table.add(row)
            table.flush()
            bar.update(len(idx))
    bar.close()
    return table.dataframe()


def run_probe(cfg: StudyConfig, pipe, out: Path) -> Path:
    """Attention statistics during stock sampling of single- and two-object prompts, all cross-attention."""
    path = out / "pladis_shapes_attention.csv"
    prompts = [s.prompt for kind in ("single", "pair")
               for s in make_dataset(cfg.probe_prompts, seed=cfg.prompt_seed + 1, kind=kind)]
    parsed = [unpack_variant(v) for v in cfg.variants]
    variants = ["softmax"] + sorted({f"entmax({a:g})" for _, lam, a, _ in parsed if lam > 0}) + \
               list(dict.fromkeys(f"pladis({lam:g}, {a:g})" for _, lam, a, _ in parsed if lam > 1))
    with record_attention(pipe, stats="basic", variants=variants, layers="cross") as rec:
        for b in tqdm(range(0, len(prompts), cfg.batch_size), desc="probe", disable=None):
            batch = prompts[b:b + cfg.batch_size]
            pipe(batch, num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scales[0],
                 generator=torch.Generator().manual_seed(cfg.sample_seed), output_type="pt")
    df = rec.to_dataframe()
    write_table(df, path, provenance({**results_config(cfg, pipe), "recorder": rec.config()},
                                     seeds=[cfg.prompt_seed + 1, cfg.sample_seed], prompts=len(prompts)))
    return path


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 single-object prompts, 10 steps, stock vs PLADIS")
    parser.add_argument("--out", default=None, help="results folder (default results/)")
    parser.add_argument("--n-prompts", type=int, help="prompts per split")
    parser.add_argument("--weights-dir", default=None, help="weights folder (default: the bundled weights)")
    parser.add_argument("--skip-probe", action="store_true", help="alignment only")
    parser.add_argument("--guidance-scales", type=float, nargs="+", help="guidance scales (default 5 and 1)")
    parser.add_argument("--splits", nargs="+", choices=SPLITS, help="splits (default: all four)")
    parser.add_argument("--variants", nargs="+", help="variant labels to keep, from the default set")
    parser.add_argument("--branches", action="store_true",
                        help="PLADIS on all guidance branches vs the conditional branch only, guidance 5 "
                             "(default results folder results/pladis_branches)")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in (("out", args.out), ("n_prompts", args.n_prompts),
                                   ("guidance_scales", args.guidance_scales), ("splits", args.splits)) if v is not None}
    if args.variants:
        unknown = sorted(set(args.variants) - {v[0] for v in VARIANTS})
        if unknown:
            parser.error(f"--variants {unknown}: not among {[v[0] for v in VARIANTS]}")
        overrides["variants"] = tuple(v for v in VARIANTS if v[0] in args.variants)
    if args.branches:
        overrides = {"out": "results/pladis_branches", "variants": BRANCH_VARIANTS, "guidance_scales": (5.0,),
                     **overrides}
    cfg = StudyConfig.quick_config(**overrides) if args.quick else StudyConfig(**overrides)
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    pipe = load_bundled(args.weights_dir)
    per_image = run_alignment(cfg, pipe, out)
    summary = summarise(per_image, cfg.bootstrap)
    write_table(summary, out / "pladis_shapes_alignment_summary.csv",
                provenance(results_config(cfg, pipe), seeds=[cfg.prompt_seed, cfg.sample_seed]))
    if not args.skip_probe:
        run_probe(cfg, pipe, out)
    with pd.option_context("display.width", 160, "display.precision", 3):
        print(summary[summary["attribute"] == "all"].to_string(index=False))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
