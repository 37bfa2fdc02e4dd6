"""What the fused kernel's Python wrapper costs the host per call, with and without call plans, in one run.

At diffusion shapes the fused kernel's host time per call (~60 µs on an H100 machine,
``results/gpu_logs/launch_profile_h100_run2.txt``) exceeds its device time, so eager sampling is bound by it;
about half of it was this project's wrapper deriving views, strides and compile-time arguments, the rest
Triton's launcher. This benchmark times the wrapper alone: ``fused_attention_forward`` with the kernel launch
replaced by a no-op (nothing runs, no GPU needed), on empty tensors in the head-split layout attention
processors pass, at the cross-attention shapes of SD1.5, SDXL and SANA (B = 2, bfloat16):

    per_call    every call derives its plan (``call_plans(False)``): the wrapper as it was
    call_plan   the plan of the call's signature is looked up (the default)

Conditions alternate within each repeat; each sample is the mean over ``calls`` calls; the median over
``repeats`` samples is reported with the ratio per_call / call_plan. The host here is this machine's CPU, not a
GPU machine's; Triton's launcher, which runs after the wrapper, is not timed.

    python experiments/bench_host_overhead.py            # writes results/bench_host_overhead.csv
    python experiments/bench_host_overhead.py --quick    # fewer calls and repeats (tests)
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

from pladis_analysis.results import provenance, write_table

# name → (heads, query tokens, key tokens, head dim): cross-attention of the benchmark's families
SHAPES = {"sd15": (8, 4096, 77, 40), "sdxl": (10, 4096, 77, 64), "sana": (20, 1024, 300, 112)}
CONDITIONS = ("per_call", "call_plan")


@dataclass
class Config:
    shapes: tuple[str, ...] = tuple(SHAPES)
    calls: int = 2000
    repeats: int = 7
    batch: int = 2

    def __post_init__(self):
        self.shapes = tuple(self.shapes)
        unknown = set(self.shapes) - set(SHAPES)
        if unknown or not self.shapes:
            raise ValueError(f"shapes={self.shapes}: choose from {sorted(SHAPES)}")
        if self.calls < 1 or self.repeats < 1 or self.batch < 1:
            raise ValueError(f"calls, repeats, batch must be ≥ 1, got {self.calls}, {self.repeats}, {self.batch}")

    @classmethod
    def quick(cls) -> "Config":
        return cls(shapes=("sdxl",), calls=200, repeats=3)

    def to_dict(self) -> dict:
        return asdict(self)


class _NoLaunch:
    """Stands in for the kernel: ``kernel[grid](*args, **meta)`` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


@contextlib.contextmanager
def _launches_stubbed():
    from pladis_analysis.maps.kernels import cross_attention as ca

    kernel = ca._fused_pladis_fwd_kernel
    ca._fused_pladis_fwd_kernel = _NoLaunch()
    try:
        yield
    finally:
        ca._fused_pladis_fwd_kernel = kernel


def _heads_view(batch: int, length: int, heads: int, dim: int) -> torch.Tensor:
    x = torch.empty(batch, length, heads * dim, dtype=torch.bfloat16)                        # (B, L, H·d)
    return x.view(batch, length, heads, dim).transpose(1, 2)                                 # (B, H, L, d)


def time_calls(call, calls: int) -> float:
    """Mean microseconds per call over ``calls`` calls."""
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / calls * 1e6


def run(config: Config, out: Path) -> Path:
    from pladis_analysis.maps.kernels import cross_attention as ca

    rows = []
    with _launches_stubbed():
        for name in config.shapes:
            heads, lq, lk, dim = SHAPES[name]
            q = _heads_view(config.batch, lq, heads, dim)
            k, v = _heads_view(config.batch, lk, heads, dim), _heads_view(config.batch, lk, heads, dim)
            call = lambda: ca.fused_attention_forward(q, k, v, pladis_scale=2.0, alpha=1.5)  # noqa: E731
            samples = {c: [] for c in CONDITIONS}
            for condition in CONDITIONS:  # warm-up: the plan is derived and kept, allocator warm
                with ca.call_plans(condition == "call_plan"):
                    time_calls(call, max(1, config.calls // 10))
            for r in range(config.repeats):
                order = CONDITIONS if r % 2 == 0 else CONDITIONS[::-1]
                for condition in order:
                    with ca.call_plans(condition == "call_plan"):
                        samples[condition].append(time_calls(call, config.calls))
            medians = {c: statistics.median(s) for c, s in samples.items()}
            for condition in CONDITIONS:
                rows.append({"shape": name, "heads": heads, "lq": lq, "lk": lk, "d": dim, "condition": condition,
                             "median_us": medians[condition], "min_us": min(samples[condition]),
                             "max_us": max(samples[condition]),
                             "per_call_over_this": medians["per_call"] / medians[condition]})
    meta = provenance(config.to_dict(), device="cpu",
                      description="host microseconds per fused_attention_forward call, kernel launch stubbed")
    return write_table(pd.DataFrame(rows), out / "bench_host_overhead.csv", meta)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="SDXL only, 200 calls, 3 repeats")
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
