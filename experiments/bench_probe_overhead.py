"""What PLADIS and the attention probes cost: UNet sampling time against the stock model, in one run.

An SD1.5-architecture ``UNet2DConditionModel`` (SD1.5's config: block_out_channels (320, 640, 1280, 1280), two
layers per block, 8 heads, cross_attention_dim 768; random weights built from the config dict, no download) runs
a few denoising steps on a classifier-free-guidance batch of 2 (``[uncond, cond]``) with 77 text tokens, float32,
under each condition:

    stock                  the model's own processors
    pladis(2, 1.5)         apply_pladis, default layers (cross-attention of down and up blocks)
    pladis(2, 1.25)        same, α = 1.25 (the general-α threshold search)
    probe_entropy_support  record_attention on every cross-attention layer: entropy, support size/fraction of
                           softmax, entmax(1.5) and pladis(2, 1.5) side by side
    probe_basic            every basic statistic (adds Tsallis entropy, max weight, BOS mass, ‖A‖₁, negative
                           mass, top gap, one-hot fraction); on CUDA from the fused kernel's statistics
                           (record_attention's backend="auto")
    probe_basic_torch      the same statistics recomputed by the torch path (backend="torch"), to price the
                           kernel's statistics against it in the same run (on CPU both conditions run torch)
    probe_sensitivity      basic statistics + query/text perturbation sensitivities at 3 sizes and the
                           power-iteration Lipschitz estimate (8 iterations, 64 sampled query rows per call)

Runs are interleaved (each repeat times every condition once, in a rotated order) and each condition's time is
the median over repeats; the overhead is median(condition) / median(stock) − 1. On CPU the latents are reduced
(32×32, and 64×64 — SD1.5's native size — when asked); on CUDA the same script runs at 64×64.

    python experiments/bench_probe_overhead.py            # 32×32 and 64×64 latents, 5 repeats
    python experiments/bench_probe_overhead.py --quick    # small UNet, 16×16, 3 repeats (CI smoke test)

Writes ``results/bench_probe_overhead.csv`` (one row per latent size × condition: median seconds, overhead,
target, pass/fail) and ``results/bench_probe_overhead_runs.csv`` (every timed run), each with ``.meta.json``.
Reruns resume from the runs file.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from pladis_analysis.diffusion import apply_pladis
from pladis_analysis.probes import SensitivityConfig, record_attention
from pladis_analysis.results import ResultsTable, provenance, write_table

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
)
SMALL_UNET = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
)
CONDITIONS = ("stock", "pladis(2, 1.5)", "pladis(2, 1.25)", "probe_entropy_support", "probe_basic",
              "probe_basic_torch", "probe_sensitivity")
# overhead targets of the diffusion issue (fractions over stock); None = priced, no target
TARGETS = {"pladis(2, 1.5)": 0.05, "pladis(2, 1.25)": 0.05, "probe_entropy_support": 0.30,
           "probe_basic": None, "probe_basic_torch": None, "probe_sensitivity": None}
PROBE_VARIANTS = ("softmax", "entmax(1.5)", "pladis(2, 1.5)")


@dataclass
class Config:
    unet: str = "sd15"
    latent_sizes: tuple[int, ...] = (32, 64)
    repeats: int = 5
    steps: int = 2
    batch: int = 2
    text_tokens: int = 77
    conditions: tuple[str, ...] = CONDITIONS
    threads: int | None = None
    seed: int = 0

    def __post_init__(self):
        self.latent_sizes = tuple(int(s) for s in self.latent_sizes)
        self.conditions = tuple(self.conditions)
        if self.unet not in ("sd15", "small"):
            raise ValueError(f"unet={self.unet!r}: expected 'sd15' or 'small'")
        if self.repeats < 1 or self.steps < 1 or self.batch < 1 or self.text_tokens < 1:
            raise ValueError(f"repeats, steps, batch, text_tokens must be ≥ 1, got {self.repeats}, {self.steps}, "
                             f"{self.batch}, {self.text_tokens}")
        if not self.latent_sizes or any(s < 8 or s % 8 for s in self.latent_sizes):
            raise ValueError(f"latent_sizes={self.latent_sizes}: multiples of 8 (the UNet downsamples 3×)")
        unknown = set(self.conditions) - set(CONDITIONS)
        if unknown or "stock" not in self.conditions:
            raise ValueError(f"conditions={self.conditions}: must include 'stock' and come from {CONDITIONS}")

    @classmethod
    def quick(cls) -> "Config":
        # one thread: on tensors this small, thread hand-offs cost more than the maths
        return cls(unet="small", latent_sizes=(16,), repeats=3, steps=1, threads=1)

    def to_dict(self) -> dict:
        return asdict(self)


def build_unet(config: Config):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(config.seed)
    return UNet2DConditionModel(**(SD15_UNET if config.unet == "sd15" else SMALL_UNET)).eval()


def condition_context(unet, condition: str):
    """The context manager that puts ``unet`` in ``condition``."""
    if condition == "stock":
        return contextlib.nullcontext()
    if condition.startswith("pladis"):
        alpha = float(condition.split(",")[1].strip(" )"))
        return apply_pladis(unet, scale=2.0, alpha=alpha)
    if condition == "probe_entropy_support":
        return record_attention(unet, stats=["entropy", "support_size", "support_fraction"], variants=PROBE_VARIANTS)
    if condition == "probe_basic":
        return record_attention(unet, stats="basic", variants=PROBE_VARIANTS)
    if condition == "probe_basic_torch":
        return record_attention(unet, stats="basic", variants=PROBE_VARIANTS, backend="torch")
    if condition == "probe_sensitivity":
        return record_attention(unet, stats="basic", variants=PROBE_VARIANTS, sensitivity=SensitivityConfig())
    raise ValueError(f"condition={condition!r}")


@torch.inference_mode()
def time_run(unet, condition: str, latents, text, steps: int) -> float:
    """Seconds for ``steps`` CFG UNet evaluations under ``condition`` (installing/removing not timed), and for
    probes the path that measured their calls (``"triton"``, ``"torch"``, ``"mixed"``; ``""`` otherwise)."""
    timesteps = torch.linspace(999, 1, steps).round()
    with condition_context(unet, condition) as context:
        start = time.perf_counter()
        for t in timesteps:
            unet(torch.cat([latents] * 2), t, encoder_hidden_states=text)
        if latents.is_cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    paths = [path for path, calls in getattr(context, "calls_by_path", {}).items() if calls]
    return seconds, paths[0] if len(paths) == 1 else ("mixed" if paths else "")


def run(config: Config, out: Path, device: str | None = None) -> Path:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if config.threads:
        torch.set_num_threads(config.threads)
    runs = ResultsTable(out / "bench_probe_overhead_runs.csv", keys=["latent", "condition", "repeat"],
                        config=config.to_dict(), seeds=[config.seed], device=device)
    unet = build_unet(config).to(device)
    g = torch.Generator().manual_seed(config.seed)
    cross_dim = unet.config.cross_attention_dim
    n = len(config.conditions)
    todo = [(size, r) for size in config.latent_sizes for r in range(config.repeats)]
    with tqdm(total=len(todo) * n, desc="bench_probe_overhead", unit="run") as bar:
        for size in config.latent_sizes:
            latents = torch.randn(config.batch // 2 or 1, 4, size, size, generator=g).to(device)
            text = torch.randn(2 * latents.shape[0], config.text_tokens, cross_dim, generator=g).to(device)
            # warm-up of every condition on a small latent: lazy imports, first-call dispatch, allocator
            for c in config.conditions:
                time_run(unet, c, latents[..., :8, :8], text, 1)  # also compiles and tunes the kernels
            for r in range(config.repeats):
                # rotate the order every repeat so no condition always follows another (interleaving)
                order = config.conditions[r % n:] + config.conditions[:r % n]
                for condition in order:
                    bar.update(1)
                    if runs.has(latent=size, condition=condition, repeat=r):
                        continue
                    seconds, probe_path = time_run(unet, condition, latents, text, config.steps)
                    runs.add({"latent": size, "condition": condition, "repeat": r, "seconds": seconds,
                              "steps": config.steps, "batch": 2 * latents.shape[0], "probe_path": probe_path})
                runs.flush()
    return write_summary(runs.dataframe(), config, out, device)


def write_summary(df: pd.DataFrame, config: Config, out: Path, device: str) -> Path:
    rows = []
    for size, group in df.groupby("latent"):
        medians = {c: statistics.median(g.seconds) for c, g in group.groupby("condition")}
        stock = medians["stock"]
        # paired ratios (same repeat) are a second view that cancels slow drifts of a shared machine
        pivot = group.pivot(index="repeat", columns="condition", values="seconds")
        for condition in config.conditions:
            if condition not in medians:
                continue
            overhead = medians[condition] / stock - 1
            paired = float((pivot[condition] / pivot["stock"]).median() - 1)
            target = TARGETS.get(condition)
            rows.append({"latent": size, "condition": condition, "median_s": medians[condition],
                         "seconds_per_step": medians[condition] / config.steps, "overhead": overhead,
                         "paired_overhead": paired, "target": target,
                         "meets_target": None if target is None else bool(overhead <= target),
                         "n_runs": int((group.condition == condition).sum()),
                         "probe_path": _probe_path(group[group.condition == condition])})
    summary = pd.DataFrame(rows)
    meta = provenance(config.to_dict(), seeds=[config.seed], device=device,
                      unet_config=SD15_UNET if config.unet == "sd15" else SMALL_UNET,
                      description="UNet sampling time per condition vs stock; median of interleaved runs")
    return write_table(summary, out / "bench_probe_overhead.csv", meta)


def _probe_path(runs: pd.DataFrame) -> str:
    """The one path the condition's probes took in every run, or ``"mixed"`` (runs files from before the
    column have none: ``""``)."""
    if "probe_path" not in runs:
        return ""
    paths = set(runs.probe_path.fillna("").astype(str))
    return paths.pop() if len(paths) == 1 else "mixed"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small UNet, one 16×16 size, 3 repeats")
    parser.add_argument("--latent-sizes", type=int, nargs="+", help="override the latent sizes")
    parser.add_argument("--repeats", type=int, help="override the number of repeats")
    parser.add_argument("--steps", type=int, help="override UNet evaluations per timed run")
    parser.add_argument("--threads", type=int, help="torch intra-op threads")
    parser.add_argument("--conditions", nargs="+", help=f"a subset of {CONDITIONS} (with 'stock')")
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args(argv)
    config = Config.quick() if args.quick else Config()
    overrides = {k: v for k, v in (("latent_sizes", args.latent_sizes), ("repeats", args.repeats),
                                   ("steps", args.steps), ("threads", args.threads),
                                   ("conditions", args.conditions)) if v is not None}
    config = Config(**{**config.to_dict(), **overrides})
    path = run(config, args.out)
    summary = pd.read_csv(path)
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(summary.to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
