"""What ``torch.compile`` makes of a model with PLADIS: graph breaks, compile time and forward time, stock against
PLADIS, eager against compiled, in one run.

Under ``torch.compile`` attention with a named map is one custom operator (``pladis_analysis.attention``), so a
denoiser with PLADIS should compile into as many graphs as the stock one, and its compiled forward should cost
what the stock compiled forward costs plus the attention maps. This benchmark measures that on the bundled
model's UNet (random latents and text states of its shapes, a CFG batch of 2) on this machine's CPU:

    stock / eager        the UNet as loaded
    pladis / eager       the same weights with ``apply_pladis`` (λ = 2, α = 1.5, default layers)
    stock / compiled     ``torch.compile`` of the stock UNet
    pladis / compiled    ``torch.compile`` of the PLADIS UNet

``graphs`` and ``graph_breaks`` come from ``torch._dynamo.explain``. ``first_call_s`` is the first call's wall
time: for compiled variants, the compile (Inductor's caches are disabled, so each run compiles from scratch).
Forward times: after one more untimed call of each variant, the four alternate within each repeat; each sample
is the mean of ``calls`` forwards; the median over ``repeats`` samples is reported with its ratio to the stock
forward of the same mode.

    python experiments/bench_compile.py            # writes results/bench_compile.csv (Inductor; minutes)
    python experiments/bench_compile.py --quick    # aot_eager backend, fewer calls (tests)
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch

from pladis_analysis.diffusion import apply_pladis
from pladis_analysis.models.shapes.pipeline import WEIGHTS_DIR, load_unet
from pladis_analysis.results import provenance, write_table

VARIANTS = (("stock", "eager"), ("pladis", "eager"), ("stock", "compiled"), ("pladis", "compiled"))


@dataclass
class Config:
    backend: str = "inductor"       # torch.compile backend
    calls: int = 5
    repeats: int = 7
    text_tokens: int = 24           # the bundled text encoder's prompt length
    scale: float = 2.0
    alpha: float = 1.5
    seed: int = 0

    def __post_init__(self):
        if self.calls < 1 or self.repeats < 1 or self.text_tokens < 1:
            raise ValueError(f"calls, repeats, text_tokens must be ≥ 1, got {self.calls}, {self.repeats}, "
                             f"{self.text_tokens}")

    @classmethod
    def quick(cls) -> "Config":
        return cls(backend="aot_eager", calls=1, repeats=2)

    def to_dict(self) -> dict:
        return asdict(self)


def _inputs(unet, config: Config) -> tuple:
    """(latents, timestep, text states) for one CFG forward: batch 2, the UNet's sample size and text width."""
    gen = torch.Generator().manual_seed(config.seed)
    size, channels = unet.config.sample_size, unet.config.in_channels
    latents = torch.randn(2, channels, size, size, generator=gen)
    text = torch.randn(2, config.text_tokens, unet.config.cross_attention_dim, generator=gen)
    return latents, torch.tensor([500, 500]), text


def _forward(model, inputs) -> torch.Tensor:
    latents, timestep, text = inputs
    return model(latents, timestep, encoder_hidden_states=text).sample


def _mean_seconds(model, inputs, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        _forward(model, inputs)
    return (time.perf_counter() - start) / calls


def run(config: Config, out: Path) -> Path:
    torch.manual_seed(config.seed)
    stock = load_unet(WEIGHTS_DIR).eval()
    eager = {"stock": stock, "pladis": copy.deepcopy(stock)}
    inputs = _inputs(stock, config)
    rows, models, outputs = {}, {}, {}
    with torch.no_grad(), apply_pladis(eager["pladis"], scale=config.scale, alpha=config.alpha), \
            warnings.catch_warnings(), torch._inductor.config.patch(force_disable_caches=True):
        # Inductor caches compiled graphs on disk: disabled, so first_call_s is a compile from scratch every run.
        warnings.filterwarnings("ignore", message=".*force disabled by .*force_disable_caches")
        traced = {name: torch._dynamo.explain(model)(*inputs[:2], encoder_hidden_states=inputs[2])
                  for name, model in eager.items()}
        torch._dynamo.reset()  # once, before compiling: a reset between compiles would discard the first
        for name, mode in VARIANTS:
            model = eager[name] if mode == "eager" else torch.compile(eager[name], backend=config.backend)
            start = time.perf_counter()
            outputs[name, mode] = _forward(model, inputs)
            row = {"model": name, "mode": mode, "first_call_s": time.perf_counter() - start}
            if mode == "compiled":
                row.update(graphs=traced[name].graph_count, graph_breaks=traced[name].graph_break_count,
                           max_abs_diff_vs_eager=(outputs[name, mode] - outputs[name, "eager"]).abs().max().item())
            rows[name, mode], models[name, mode] = row, model
        for key in VARIANTS:  # one more untimed call each: a recompile triggered by the other model lands here
            _forward(models[key], inputs)
        samples = {key: [] for key in VARIANTS}
        for r in range(config.repeats):
            for key in (VARIANTS if r % 2 == 0 else VARIANTS[::-1]):
                samples[key].append(_mean_seconds(models[key], inputs, config.calls))
    for key, times in samples.items():
        rows[key].update(median_ms=1e3 * statistics.median(times), min_ms=1e3 * min(times),
                         max_ms=1e3 * max(times))
    for name, mode in VARIANTS:
        rows[name, mode]["x_stock_same_mode"] = rows[name, mode]["median_ms"] / rows["stock", mode]["median_ms"]
    meta = provenance(config.to_dict(), seeds=[config.seed], device="cpu",
                      description="bundled UNet forward (CFG batch 2), stock vs PLADIS, eager vs torch.compile")
    return write_table(pd.DataFrame(list(rows.values())), out / "bench_compile.csv", meta)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="aot_eager backend, 1 call, 2 repeats")
    parser.add_argument("--out", type=Path, default=Path("results"), help="results folder")
    args = parser.parse_args(argv)
    config = Config.quick() if args.quick else Config()
    args.out.mkdir(parents=True, exist_ok=True)
    path = run(config, args.out)
    with pd.option_context("display.width", 160):
        print(pd.read_csv(path).to_string(index=False))
    return path


if __name__ == "__main__":
    main()
