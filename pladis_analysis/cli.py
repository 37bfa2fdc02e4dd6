"""pladis-analysis: sample with PLADIS and record attention statistics from the command line.

Subcommands live in :data:`COMMANDS`, each an ``(add_arguments(parser), run(args) -> int, help)`` triple; to add
one, write those two functions and register them there (``main`` builds the parser from the table).

    pladis-analysis sample --model PATH --prompt "a red circle" --pladis-scale 2 --alpha 1.5 --steps 25 \\
        --seed 0 --out runs/sample
    pladis-analysis probe --model PATH --prompt "a red circle" --variants "softmax,entmax(1.5),pladis(2,1.5)" \\
        --out runs/probe

``--model`` is a local diffusers pipeline folder, or ``bundled`` for the model that ships with the package.
"""

from __future__ import annotations

import argparse
import inspect
import math
import re
import sys
from pathlib import Path
from typing import Callable

# -- shared helpers -------------------------------------------------------------------------------------------


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="a local diffusers pipeline folder (SD1.5, SDXL, SANA, PixArt …) or 'bundled'")
    parser.add_argument("--dtype", default="float32", help="float32 (default), float16 or bfloat16")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def _add_sampling_arguments(parser: argparse.ArgumentParser, default_pladis_scale: float = 2.0) -> None:
    parser.add_argument("--prompt", action="append", default=[], help="a prompt (repeat for several)")
    parser.add_argument("--prompts-file", type=Path, help="a text file with one prompt per line")
    parser.add_argument("--steps", type=int, default=25, help="denoising steps (default 25)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first prompt; prompt i uses seed + i")
    parser.add_argument("--guidance-scale", type=float, default=None,
                        help="classifier-free guidance scale (default: the pipeline's)")
    parser.add_argument("--height", type=int, default=None, help="image height in pixels (default: the pipeline's)")
    parser.add_argument("--width", type=int, default=None, help="image width in pixels (default: the pipeline's)")
    parser.add_argument("--pladis-scale", type=float, default=default_pladis_scale,
                        help=f"PLADIS λ the model runs (0 = stock model; default {default_pladis_scale:g})")
    parser.add_argument("--alpha", type=float, default=1.5, help="α of the entmax component (default 1.5)")
    parser.add_argument("--layers", default="default",
                        help="layers PLADIS runs in: default, cross, 'cross:down,up', or comma-separated module names")
    parser.add_argument("--branches", default="all", choices=("all", "cond", "uncond"),
                        help="which guidance branches get PLADIS (default all)")
    parser.add_argument("--backend", default="auto", choices=("auto", "triton", "torch"),
                        help="attention path of PLADIS (and of the probes): the Triton kernel where it fits on "
                             "CUDA (auto, the default), always the kernel (triton), or the torch maps (torch)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")


def _prompts(args) -> list[str]:
    prompts = list(args.prompt)
    if args.prompts_file is not None:
        prompts += [line.strip() for line in args.prompts_file.read_text().splitlines() if line.strip()]
    if not prompts:
        raise SystemExit("error: give at least one --prompt or a --prompts-file")
    return prompts


def _check_map_arguments(args) -> None:
    """--pladis-scale, --alpha, --backend, --device and --out fail before the model loads, not at its first
    attention call or after sampling."""
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {str(args.out)!r} is a file; give a folder (it is created if missing)")
    _device(args.device)
    if not (math.isfinite(args.pladis_scale) and args.pladis_scale >= 0.0):
        raise ValueError(f"--pladis-scale {args.pladis_scale!r}: the PLADIS λ must be a finite number >= 0")
    if args.pladis_scale and not (math.isfinite(args.alpha) and args.alpha > 1.0):
        raise ValueError(f"--alpha {args.alpha!r}: α-entmax needs a finite α > 1")
    if args.backend == "triton" and _device(args.device) == "cpu":
        from .maps.kernels import dispatch

        if dispatch.triton_import_error() is not None or not dispatch.interpreter_ready():
            raise ValueError("--backend triton on the CPU runs the kernels in Triton's interpreter: set "
                             "TRITON_INTERPRET=1 in the environment (slow; for checks), or use --backend auto")


def _device(name: str | None) -> str:
    """``--device`` checked (a device torch knows, CUDA only where this torch has it), or the default."""
    import torch

    if not name:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device torch knows (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name!r}: this torch sees no CUDA device (torch.cuda.is_available() is False)")
    return name


def load_model(model: str, dtype: str = "float32", device: str | None = None):
    """A pipeline from ``--model``: ``bundled`` or a local folder."""
    from .diffusion.pipelines import load_pipeline, parse_dtype

    device = _device(device)
    if model == "bundled":
        from .models.shapes import load_bundled

        return load_bundled(device=device, dtype=parse_dtype(dtype))
    return load_pipeline(model, dtype=dtype, device=device)


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "prompt"


def _progress_callback(pipe, total: int, desc: str):
    """A tqdm bar advanced from the pipeline's ``callback_on_step_end``; ``None`` if the pipeline has none
    (then its own progress bar is switched on instead)."""
    from tqdm.auto import tqdm

    if "callback_on_step_end" not in inspect.signature(pipe.__call__).parameters:
        pipe.set_progress_bar_config(disable=False, desc=desc)
        return None, None
    bar = tqdm(total=total, desc=desc, unit="step")
    return bar, (lambda step, timestep: bar.update(1))


def _image_size(pipe, args) -> dict:
    """``height``/``width`` for the pipeline call, those given; a pipeline of fixed size (the bundled one) rejects
    them by name."""
    size = {name: value for name, value in (("height", args.height), ("width", args.width)) if value is not None}
    for name, value in size.items():
        if value < 1:
            raise ValueError(f"--{name} {value}: must be a positive number of pixels")
        if name not in inspect.signature(pipe.__call__).parameters:
            raise ValueError(f"--{name} {value}: {type(pipe).__name__} makes images of one fixed size")
    return size


def _run_prompts(pipe, prompts, args, pladis_scale, desc):
    """Sample each prompt (prompt i with seed + i); returns (rows, images)."""
    from .diffusion.pipelines import sample

    size = _image_size(pipe, args)
    rows, images = [], []
    for i, prompt in enumerate(prompts):
        bar, callback = _progress_callback(pipe, args.steps, f"{desc} {i + 1}/{len(prompts)}")
        try:
            result = sample(pipe, prompt, steps=args.steps, guidance_scale=args.guidance_scale,
                            seed=args.seed + i, pladis_scale=pladis_scale, alpha=args.alpha,
                            layers=_layer_spec(args.layers), branches=args.branches, callback=callback,
                            backend=args.backend, **size)
        finally:
            if bar is not None:
                bar.close()
        images.append(result.images[0])
        rows.append({"prompt_index": i, "prompt": prompt, "seed": args.seed + i, "pladis_scale": pladis_scale,
                     "alpha": args.alpha, "steps": args.steps, "guidance_scale": result.settings["guidance_scale"],
                     "height": result.images[0].height, "width": result.images[0].width})
    return rows, images


def _layer_spec(text: str):
    return text if ("," not in text or ":" in text) else [part for part in text.split(",") if part]


def _save_images(images, rows, folder: Path, tag: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for row, image in zip(rows, images):
        name = f"{row['prompt_index']:03d}_{_slug(row['prompt'])}_{tag}.png"
        image.save(folder / name)
        row["image"] = str(Path(folder.name) / name)


def _config(args) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"}


# -- sample ---------------------------------------------------------------------------------------------------

def add_sample_arguments(parser: argparse.ArgumentParser) -> None:
    _add_model_arguments(parser)
    _add_sampling_arguments(parser)
    parser.add_argument("--also-stock", action="store_true",
                        help="also sample every prompt with the stock model (λ = 0), same seeds")


def run_sample(args) -> int:
    """Write ``images/*.png`` and ``samples.csv`` (+ ``samples.meta.json``) to ``--out``."""
    import pandas as pd

    from .results import provenance, write_table

    prompts = _prompts(args)
    _check_map_arguments(args)
    pipe = load_model(args.model, args.dtype, args.device)
    scales = [args.pladis_scale] + ([0.0] if args.also_stock and args.pladis_scale != 0 else [])
    all_rows = []
    for scale in scales:
        tag = f"pladis{scale:g}-a{args.alpha:g}" if scale else "stock"
        rows, images = _run_prompts(pipe, prompts, args, scale, tag)
        _save_images(images, rows, args.out / "images", tag)
        all_rows += rows
    path = write_table(pd.DataFrame(all_rows), args.out / "samples.csv",
                       provenance(_config(args), seeds=[args.seed + i for i in range(len(prompts))],
                                  device=_device(args.device)))
    print(f"wrote {len(all_rows)} images and {path}")
    return 0


# -- probe ----------------------------------------------------------------------------------------------------

def add_probe_arguments(parser: argparse.ArgumentParser) -> None:
    _add_model_arguments(parser)
    _add_sampling_arguments(parser, default_pladis_scale=0.0)
    parser.add_argument("--variants", default="softmax,entmax(1.5),pladis(2,1.5)",
                        help="maps measured side by side, comma-separated (default softmax,entmax(1.5),pladis(2,1.5))")
    parser.add_argument("--stats", default="basic", help="statistics or groups: basic, output, all, or names")
    parser.add_argument("--probe-layers", default="cross", help="layers to probe (default every cross-attention)")
    parser.add_argument("--sensitivity", action="store_true", help="add perturbation/Lipschitz sensitivities")
    parser.add_argument("--heatmap-steps", default="", help="steps at which to keep per-token heat maps, e.g. 0,12")
    parser.add_argument("--heatmap-size", type=int, default=16)


def _split_variants(text: str) -> list[str]:
    # commas inside parentheses belong to the map: "softmax,pladis(2,1.5)" -> ["softmax", "pladis(2,1.5)"]
    return [v.strip() for v in re.findall(r"[^,()]+(?:\([^)]*\))?", text) if v.strip()]


def _heatmap_steps(args, n_prompts: int) -> list[int]:
    """``--heatmap-steps`` as step indices below ``--steps``, for one prompt: the recorder averages a step's
    per-token maps over its calls, and token i of one prompt is another word than token i of the next."""
    try:
        steps = [int(s) for s in args.heatmap_steps.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--heatmap-steps {args.heatmap_steps!r}: expected step indices, e.g. 0,12") from None
    beyond = [s for s in steps if not 0 <= s < args.steps]
    if beyond:
        raise ValueError(f"--heatmap-steps {beyond}: steps run from 0 to {args.steps - 1} (--steps {args.steps})")
    if steps and n_prompts > 1:
        raise ValueError(f"--heatmap-steps with {n_prompts} prompts would average token maps of different prompts; "
                         "probe one prompt at a time for heat maps")
    return steps


def run_probe(args) -> int:
    """Sample with the running map (``--pladis-scale``, default 0 = stock) while recording attention statistics
    of ``--variants``; write ``attention_stats.csv`` (+ meta), the images and optional ``heatmaps.npz``."""
    import numpy as np
    import pandas as pd

    from .diffusion import AttentionMap
    from .probes import SensitivityConfig, parse_stats, record_attention
    from .results import provenance, write_table

    prompts = _prompts(args)
    _check_map_arguments(args)
    heat_steps = _heatmap_steps(args, len(prompts))
    stats = parse_stats([s for s in args.stats.split(",") if s.strip()])   # before the model loads
    variants = [AttentionMap.parse(v) for v in _split_variants(args.variants)]
    pipe = load_model(args.model, args.dtype, args.device)
    with record_attention(pipe, stats=stats, variants=variants,
                          layers=_layer_spec(args.probe_layers),
                          sensitivity=SensitivityConfig(seed=args.seed) if args.sensitivity else None,
                          heatmap_steps=heat_steps, heatmap_size=args.heatmap_size, backend=args.backend) as rec:
        tag = f"pladis{args.pladis_scale:g}-a{args.alpha:g}" if args.pladis_scale else "stock"
        rows, images = _run_prompts(pipe, prompts, args, args.pladis_scale, f"probe {tag}")
    _save_images(images, rows, args.out / "images", tag)
    seeds = [args.seed + i for i in range(len(prompts))]
    config = {**_config(args), "prompts": prompts}
    path = rec.save(args.out / "attention_stats.csv", seeds=seeds, **config)
    write_table(pd.DataFrame(rows), args.out / "samples.csv",
                provenance({**config, "recorder": rec.config()}, seeds, device=_device(args.device)))
    if heat_steps:
        maps = rec.heatmaps()
        np.savez_compressed(args.out / "heatmaps.npz", **{
            f"step{step}|{layer}|{branch}|{variant}": m.numpy() for (step, layer, branch, variant), m in maps.items()})
    print(f"wrote {len(rec.to_dataframe())} statistic rows to {path}")
    return 0


# -- figures --------------------------------------------------------------------------------------------------

#: results file (relative to ``--results``) → (plotting function name, figure file name)
FIGURES: dict[str, tuple[str, str]] = {
    "bench_maps.csv": ("plot_bench_maps", "bench_maps.png"),
    "hopfield_retrieval.csv": ("plot_hopfield_retrieval", "hopfield_retrieval.png"),
    "hopfield_energy_summary.csv": ("plot_hopfield_energy", "hopfield_energy.png"),
    "map_jacobian_norm.csv": ("plot_map_jacobian_norm", "map_jacobian_norm.png"),
    "pladis_weight_signs.csv": ("plot_pladis_weight_signs", "pladis_weight_signs.png"),
    "pladis_weight_signs_bundled.csv": ("plot_pladis_weight_signs_bundled", "pladis_weight_signs_bundled.png"),
    "pladis_shapes_alignment_summary.csv": ("plot_pladis_alignment", "pladis_shapes_alignment.png"),
    "pladis_shapes_attention.csv": ("plot_attention_regime", "pladis_shapes_attention.png"),
    "pladis_gain_attention_summary.csv": ("plot_gain_attention", "pladis_gain_attention.png"),
    "shapes_eval_summary.csv": ("plot_shapes_eval", "shapes_eval.png"),
    "bench_probe_overhead.csv": ("plot_probe_overhead", "bench_probe_overhead.png"),
    "bench_cross_attention.csv": ("plot_bench_cross_attention", "bench_cross_attention.png"),
    "search_steps.csv": ("plot_search_steps", "search_steps.png"),
    "kernel_resources.csv": ("plot_kernel_resources", "kernel_resources.png"),
}


def add_figures_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", type=Path, default=Path("results"), help="folder holding results tables")
    parser.add_argument("--out", type=Path, default=Path("paper_figures"), help="folder for the PNG figures")


def run_figures(args: argparse.Namespace) -> int:
    """Draw every figure whose results file exists; figures are drawn from saved results only."""
    from . import plotting

    if not args.results.is_dir():
        raise SystemExit(f"--results {str(args.results)!r} is not a folder of results tables")
    drawn = 0
    for table, (function, figure) in FIGURES.items():
        path = args.results / table
        if not path.exists():
            continue
        written = plotting.save_figure(getattr(plotting, function)(path), args.out / figure)
        print(f"{path} -> {written}")
        drawn += 1
    if drawn == 0:
        raise SystemExit(f"no known results table in {str(args.results)!r}; known: {sorted(FIGURES)}")
    return 0


# -- the table of subcommands ---------------------------------------------------------------------------------

COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]] = {
    "sample": (add_sample_arguments, run_sample, "sample images with PLADIS (and optionally the stock model)"),
    "probe": (add_probe_arguments, run_probe, "sample while recording attention statistics of several maps"),
    "figures": (add_figures_arguments, run_figures, "draw the figures of every results table in a folder"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pladis-analysis", description=__doc__.split("\n\n")[0])
    parser.add_argument("--traceback", action="store_true",
                        help="show the full traceback of an error in the arguments or the model folder")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add_arguments, run, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(command)
        command.set_defaults(func=run)
    return parser


# What a wrong argument or model folder, or a package the folder needs and the environment lacks, raises (the
# library names the argument and the value, or the package, in the message): the command line prints the message,
# not a traceback, and exits with argparse's usage-error status.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, ImportError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as error:
        if args.traceback:
            raise
        parser.exit(2, f"{parser.prog} {args.command}: error: {error}\n(--traceback shows where it was raised)\n")


if __name__ == "__main__":
    sys.exit(main())
