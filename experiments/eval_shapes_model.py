"""Evaluate the bundled shapes model: exact prompt alignment of generated images.

    python experiments/eval_shapes_model.py              # 256 prompts per split, CFG 5 and no CFG (resumes)
    python experiments/eval_shapes_model.py --quick      # 16 single-object prompts, CFG only (tests, CI)

For each split — single-object and two-object prompts from the training distribution, and the same two kinds with
a held-out colour–shape pair (never seen in training) — the script draws prompts from the dataset with a seed
distinct from training's, samples one image per prompt (DDIM, 25 steps) with guidance 5 and without guidance
(scale 1), and scores each image with :func:`pladis_analysis.models.shapes.scorer.score_image`.

Writes ``results/shapes_eval.csv`` (one row per image; resumable) and ``results/shapes_eval_summary.csv`` (one row
per split × guidance × attribute: accuracy and count), each with ``.meta.json`` provenance; then refreshes the
weights folder's model card with the summary.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pladis_analysis.models.shapes.dataset import make_dataset  # noqa: E402
from pladis_analysis.models.shapes.model_card import write_model_card  # noqa: E402
from pladis_analysis.models.shapes.pipeline import (WEIGHTS_DIR, load_bundled, to_uint8,  # noqa: E402
                                                    weights_fingerprint)
from pladis_analysis.models.shapes.scorer import score_image  # noqa: E402
from pladis_analysis.results import ResultsTable, provenance, write_table  # noqa: E402

ALL_SPLITS = ("single/train", "pair/train", "single/heldout", "pair/heldout")


@dataclass
class EvalConfig:
    """What an evaluation run measures."""

    weights_dir: str = ""  # empty: the package's bundled weights
    splits: tuple[str, ...] = ALL_SPLITS
    n_prompts: int = 256
    guidance_scales: tuple[float, ...] = (5.0, 1.0)
    num_inference_steps: int = 25
    scheduler: str = "ddim"
    prompt_seed: int = 1000  # training uses seed 0
    sample_seed: int = 0
    batch_size: int = 64
    threads: int = 2
    out: str = "results/shapes_eval.csv"
    quick: bool = False

    def __post_init__(self) -> None:
        self.splits = tuple(self.splits)
        self.guidance_scales = tuple(float(g) for g in self.guidance_scales)
        for s in self.splits:
            if s not in ALL_SPLITS:
                raise ValueError(f"splits: {s!r} is not one of {ALL_SPLITS}")
        if self.n_prompts < 1:
            raise ValueError(f"n_prompts={self.n_prompts}: must be >= 1")
        if self.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps={self.num_inference_steps}: must be >= 1")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size}: must be >= 1")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["splits"], d["guidance_scales"] = list(self.splits), list(self.guidance_scales)
        return d

    @classmethod
    def quick_config(cls, **kw) -> "EvalConfig":
        return cls(**{**dict(splits=("single/train",), n_prompts=16, guidance_scales=(5.0,), batch_size=16,
                             out="tmp/shapes_eval_quick/shapes_eval.csv", quick=True), **kw})


def summary_path(out: str | Path) -> Path:
    p = Path(out)
    return p.with_name(p.stem + "_summary.csv")


def summarise(per_image: pd.DataFrame) -> pd.DataFrame:
    """Tidy summary: one row per (split, guidance_scale, attribute) with accuracy and the number of images."""
    rows = []
    attrs = [c for c in per_image.columns if c not in ("split", "kind", "heldout", "guidance_scale", "index",
                                                        "prompt")]
    for (split, g), grp in per_image.groupby(["split", "guidance_scale"], sort=False):
        for a in attrs:
            vals = grp[a].dropna()
            if len(vals):
                rows.append({"split": split, "guidance_scale": g, "attribute": a, "accuracy": float(vals.mean()),
                             "n": int(len(vals))})
        for base in ("colour", "shape"):  # pair prompts: pool both objects
            cols = [c for c in (f"{base}_0", f"{base}_1") if c in grp and grp[c].notna().any()]
            if cols:
                vals = pd.concat([grp[c].dropna() for c in cols])
                rows.append({"split": split, "guidance_scale": g, "attribute": base,
                             "accuracy": float(vals.mean()), "n": int(len(vals))})
    return pd.DataFrame(rows)


def time_sampling(pipe, n_images: int = 16, steps: int = 25, guidance_scale: float = 5.0) -> float:
    """Wall time (s) of one call generating ``n_images`` at ``steps`` steps with CFG (after a warm-up call)."""
    pipe(["a red circle"] * 2, num_inference_steps=2, guidance_scale=guidance_scale, output_type="np")
    t0 = time.perf_counter()
    pipe(["a red circle in the top left"] * n_images, num_inference_steps=steps, guidance_scale=guidance_scale,
         generator=torch.Generator().manual_seed(0), output_type="np")
    return time.perf_counter() - t0


def evaluate(cfg: EvalConfig, pipe=None, write_card: bool = True) -> pd.DataFrame:
    """Run (or resume) the evaluation; returns the summary table."""
    torch.set_num_threads(cfg.threads)
    weights_dir = Path(cfg.weights_dir) if cfg.weights_dir else WEIGHTS_DIR
    if pipe is None:
        pipe = load_bundled(weights_dir, scheduler=cfg.scheduler)
    out = ROOT / cfg.out if not Path(cfg.out).is_absolute() else Path(cfg.out)
    table = ResultsTable(out, keys=["split", "guidance_scale", "index"],
                         config={**cfg.to_dict(), "unet_sha256": weights_fingerprint(pipe.unet)},
                         seeds=[cfg.prompt_seed, cfg.sample_seed])
    timing = {} if cfg.quick else {"sampling_16_images_25_steps_cfg_s": round(time_sampling(pipe), 2)}
    jobs = [(s, g) for s in cfg.splits for g in cfg.guidance_scales]
    bar = tqdm(total=len(jobs) * cfg.n_prompts, desc="eval", mininterval=30, disable=None)
    for split in cfg.splits:
        kind, which = split.split("/")
        samples = make_dataset(cfg.n_prompts, seed=cfg.prompt_seed, kind=kind, split=which)
        for g in cfg.guidance_scales:
            todo = [i for i in range(cfg.n_prompts) if not table.has(split=split, guidance_scale=g, index=i)]
            bar.update(cfg.n_prompts - len(todo))
            for b in range(0, len(todo), cfg.batch_size):
                idx = todo[b:b + cfg.batch_size]
                # One generator per image: its noise depends on the image's index only, not on the batching.
                gens = [torch.Generator().manual_seed(cfg.sample_seed * 1_000_003 + i) for i in idx]
                images = pipe([samples[i].prompt for i in idx], num_inference_steps=cfg.num_inference_steps,
                              guidance_scale=g, generator=gens, output_type="pt").images
                for i, img in zip(idx, to_uint8(images)):
                    row = {"split": split, "kind": kind, "heldout": which == "heldout", "guidance_scale": g,
                           "index": i, "prompt": samples[i].prompt}
                    row.update({k: float(v) for k, v in score_image(img, samples[i].truth).items()})
                    table.add(row)
                table.flush(weights=str(weights_dir), **timing)
                bar.update(len(idx))
    bar.close()
    per_image = table.dataframe()
    summary = summarise(per_image)
    write_table(summary, summary_path(out),
                provenance(cfg.to_dict(), seeds=[cfg.prompt_seed, cfg.sample_seed], weights=str(weights_dir),
                           per_image_table=str(out.relative_to(ROOT) if out.is_relative_to(ROOT) else out),
                           **timing))
    if write_card and not cfg.quick and (weights_dir / "training.json").exists():
        write_model_card(weights_dir, summary_path(out))
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="16 single-object prompts, CFG only")
    parser.add_argument("--weights-dir", default="", help="weights folder (default: the bundled weights)")
    parser.add_argument("--n-prompts", type=int)
    parser.add_argument("--out")
    parser.add_argument("--no-card", action="store_true", help="do not rewrite the model card")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in (("weights_dir", args.weights_dir), ("n_prompts", args.n_prompts),
                                   ("out", args.out)) if v}
    cfg = EvalConfig.quick_config(**overrides) if args.quick else EvalConfig(**overrides)
    summary = evaluate(cfg, write_card=not args.no_card)
    show = summary[summary.attribute == "all"][["split", "guidance_scale", "accuracy", "n"]]
    print(show.to_string(index=False))


if __name__ == "__main__":
    main()
