"""A lower bound on the threshold search's device time from the compiled kernel, against SDPA's measured time.

Is the issue's target (fused PLADIS attention ≤ 1.3× SDPA) reachable with a kernel that finds α-entmax's
threshold by a Newton search over the whole score row? The search is a loop: every warp of every block issues
the loop's body once per step, and the block steps until its slowest row has converged. An H100 SM issues at
most one warp-instruction per cycle on each of its four schedulers, and its special-function units (MUFU:
exp2, log2, reciprocal, square root) return 16 results per cycle, two cycles per warp-instruction. So the
search alone takes at least

    (start instructions / 4 + max(body instructions / 4, MUFU instructions in the body × 2) × mean steps per
    block) × warps launched / (SMs × clock)

whatever the memory system does. The start is what a block does once before the loop: for sparsemax, one masked
maximum over the row per rank of its starting point (``entmax_rowwise.default_start_ranks``), none for the
other α (they start at τ = −1). For α = 1.25, 1.5 and 2 the powers are products, a few MUFU per row remain,
and issue decides; at α = 1.75 (a non-integer q) every score takes a log2 and an exp2 per step, and the MUFU
units decide (column ``limited_by``). Every factor comes from a file, not a guess:

* the loop's body: the largest backward branch in the kernel's SASS, compiled for sm_90 on this CPU
  (``maps.kernels.offline.loop_opcodes``; the other loops are the q kᵀ head-dimension chunks, a few dozen
  instructions), for α ≤ 2 (Newton) at each launch; the start: the whole kernel's SASS instructions less
  those of the same launch compiled to start at τ = −1;
* the steps: ``results/search_steps.csv`` (the kernel's own counts on the benchmark's random scores, score std
  1.5 as the benchmark draws them, as float32 products of bfloat16 q and k like the fused kernel's, with
  bfloat16's stopping tolerance, the default stopping rule and start, per block size);
* SDPA's time and the kernel's: ``results/bench_cross_attention.csv`` (CUDA-graph medians on an H100 SXM), and
  its meta's launch configurations (what the autotuner chose);
* the H100 SXM's 132 SMs and 1.98 GHz boost clock (NVIDIA's datasheet; a lower clock only raises the bound),
  and the 16 MUFU results per SM and cycle of compute capability 9.0 (CUDA C++ Programming Guide, arithmetic
  instruction throughput).

Launches: the one the H100's autotuner chose at the benchmark's commit (for an α the benchmark did not time,
the launch it chose for another α at the same shape: ``chosen_for_other_alpha``), and for 300 keys also 64
queries on 8 warps (the smallest block that uses warpgroup MMA, tried by the autotuner since 7b97246). The bound ignores
latency, reductions across threads and memory, so the real search costs more: ``bound_over_measured_search``
compares it with the measured kernel − skeleton difference where the launch is the measured one. The
``other_start_*`` columns are the same bound for the other start (from τ = −1 for sparsemax; from the sparsemax
start on ``SPARSEMAX_START_RANKS`` ranks for the other α): its build's loop and start, the steps the table
counts from it. They say in this model what the kernel's choice of start gains or would lose.

What it proves: where ``search_bound_over_sdpa`` exceeds 1.3, no tuning of this search meets the target. Where
it does not, ``serial_floor_ratio_vs_sdpa`` = 1 + bound / SDPA is what the kernel would need at best if its
skeleton ran at SDPA's speed and the search overlapped none of the tensor-core work. That is not a hard floor:
other blocks on the SM can compute while a block searches.

    python experiments/search_issue_bound.py          # writes results/search_issue_bound.csv (+ .meta.json)
    python experiments/search_issue_bound.py --quick  # one shape (tests)
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]

from pladis_analysis.results import provenance, write_table  # noqa: E402

# H100 SXM5 (the benchmark's "NVIDIA H100 80GB HBM3"): streaming multiprocessors and maximum boost clock.
H100_SMS = 132
H100_CLOCK_HZ = 1.98e9
ISSUE_PER_SM_CYCLE = 4   # four schedulers, one warp-instruction each per cycle
MUFU_PER_SM_CYCLE = 16   # special-function results per SM and cycle (compute capability 9.0)
WARP = 32


@dataclass
class Config:
    bench: str = "results/bench_cross_attention.csv"     # relative paths are from the repository root
    steps: str = "results/search_steps.csv"
    alphas: tuple[float, ...] = (1.25, 1.5, 1.75, 2.0)
    score_group: str = "std 1.5"
    shapes: tuple[str, ...] | None = None   # None: every attention shape of the benchmark

    def __post_init__(self):
        self.alphas = tuple(float(a) for a in self.alphas)
        if not all(1.0 < a <= 2.0 for a in self.alphas):
            # for α > 2 the search is safeguarded Halley with a second search: not one loop to count
            raise ValueError(f"alphas={self.alphas}: the bound counts the Newton loop, which runs for 1 < α ≤ 2")

    @classmethod
    def quick(cls) -> "Config":
        return cls(alphas=(1.5, 2.0), shapes=("sdxl_32px",))

    def to_dict(self) -> dict:
        return asdict(self)


def sm_cycles_per_step(body: int, mufu: int) -> tuple[float, str]:
    """SM cycles one warp's loop iteration occupies at least, and what limits it: issuing its ``body``
    instructions (four per SM and cycle) or its ``mufu`` special-function instructions (16 lanes per cycle)."""
    issue, sfu = body / ISSUE_PER_SM_CYCLE, mufu * WARP / MUFU_PER_SM_CYCLE
    return (issue, "issue") if issue >= sfu else (sfu, "mufu")


def issue_bound_ms(body: int, steps: float, warps: int, mufu: int = 0, start: int = 0) -> float:
    """The fewest milliseconds an H100 SXM needs to run ``start`` instructions once and then a loop of ``body``
    instructions, ``mufu`` of them on the special-function units, ``steps`` times, on each of ``warps`` warps."""
    cycles, _ = sm_cycles_per_step(body, mufu)
    return (start / ISSUE_PER_SM_CYCLE + cycles * steps) * warps / (H100_SMS * H100_CLOCK_HZ) * 1e3


def launches(meta: dict, lq: int, lk: int, q_int: int) -> list[tuple[str, int, int]]:
    """(name, BLOCK_M, num_warps): the autotuner's choice recorded in the benchmark's meta (failing one for this
    α's flavour, its choice for another α at the shape), and for long key rows the 64-query warpgroup-MMA
    launch."""
    configs = [c for c in meta.get("kernel_launch_configs", [])
               if (c["Lq"], c["Lk"], c["NEED_ENTMAX"]) == (lq, lk, True)]
    found = [("chosen", c["BLOCK_M"], c["num_warps"]) for c in configs if c["Q_INT"] == q_int][:1]
    if not found:
        found = [("chosen_for_other_alpha", c["BLOCK_M"], c["num_warps"]) for c in configs][:1]
    if lk > 128 and not any(bm >= 64 for _, bm, _ in found):
        found.append(("wgmma_64x8", 64, 8))
    return found


def run(config: Config, out: Path) -> Path:
    import triton

    from pladis_analysis.maps.kernels import offline
    from pladis_analysis.maps.kernels.entmax_rowwise import SPARSEMAX_START_RANKS, alpha_flavour, default_start_ranks

    bench_path, steps_path = ROOT / config.bench, ROOT / config.steps   # an absolute path stays as it is
    bench = pd.read_csv(bench_path)
    bench_meta = json.loads(bench_path.with_suffix(".meta.json").read_text())
    steps = pd.read_csv(steps_path)
    steps = steps[(steps.source == "random") & (steps.group == config.score_group) & (steps.dtype == "bfloat16")
                  & (steps.stop_rule == "bound")]
    if "start" not in steps:                                 # a table from before the start was a column
        steps = steps.assign(start="default")
    if "rounding" in steps:                                  # the fused kernel's scores: products of bf16 q and k
        steps = steps[steps.rounding == "q, k"]
    graph = bench[bench.case == "attention"].pivot_table(index=["shape", "alpha"], columns="method",
                                                          values="graph_median_ms")
    # SDPA does not depend on α: for an α the benchmark did not time, its median over the α's it did
    sdpa_by_shape = graph["sdpa"].groupby(level="shape").median()
    rows = []
    for name, batch, heads, lq, lk, d in bench_meta["config"]["shapes"]:
        if config.shapes is not None and name not in config.shapes:
            continue
        for alpha in config.alphas:
            ranks = default_start_ranks(alpha)
            other_ranks = SPARSEMAX_START_RANKS if ranks == 1 else 1
            compilers = {r: offline.fused_kernel_compiler(lk, d, heads, alpha=alpha, start_ranks=r)[1]
                         for r in (1, SPARSEMAX_START_RANKS)}
            for launch, block_m, num_warps in launches(bench_meta, lq, lk, alpha_flavour(alpha)[1]):
                counted = {r: offline.count_sass(offline.sass(compile_launch(block_m, num_warps)))
                           for r, compile_launch in compilers.items()}
                # the start: what the build with more ranks has beyond the one that starts at τ = −1
                start_of = {1: 0, SPARSEMAX_START_RANKS: counted[SPARSEMAX_START_RANKS]["sass_instructions"]
                            - counted[1]["sass_instructions"]}
                warps = -(-lq // block_m) * batch * heads * num_warps

                def bound_for(r: int) -> tuple[float, float]:
                    """(mean steps per block, search bound in ms) for the start on ``r`` ranks."""
                    label = "default" if r == ranks else f"ranks {r}"
                    mean = _mean_block_steps(steps, steps_path, config, alpha, lk, block_m, label)
                    c = counted[r]
                    return mean, issue_bound_ms(c["loop_instructions"], mean, warps, c["loop_mufu"], start_of[r])

                body, mufu = counted[ranks]["loop_instructions"], counted[ranks]["loop_mufu"]
                _, limited_by = sm_cycles_per_step(body, mufu)
                mean_steps, bound = bound_for(ranks)
                other_steps, other_bound = bound_for(other_ranks)
                timed = graph.loc[(name, alpha)] if (name, alpha) in graph.index else pd.Series(dtype=float)
                kernel, skeleton = (timed.get(m, float("nan")) for m in ("triton", "triton_softmax"))
                sdpa = timed.get("sdpa", sdpa_by_shape.get(name, float("nan")))
                measured_search = kernel - skeleton if launch == "chosen" else float("nan")
                rows.append({"shape": name, "alpha": alpha, "launch": launch, "block_m": block_m,
                             "num_warps": num_warps, "B": batch, "H": heads, "Lq": lq, "Lk": lk, "d": d,
                             "body_instructions": body, "mufu_instructions": mufu, "limited_by": limited_by,
                             "start_ranks": ranks, "start_instructions": start_of[ranks],
                             "mean_block_steps": mean_steps, "warps": warps,
                             "search_bound_ms": bound,
                             "other_start_ranks": other_ranks, "other_start_instructions": start_of[other_ranks],
                             "other_start_mean_block_steps": other_steps,
                             "other_start_search_bound_ms": other_bound, "sdpa_graph_ms": sdpa,
                             "search_bound_over_sdpa": bound / sdpa,
                             "kernel_graph_ms": kernel, "skeleton_graph_ms": skeleton,
                             "measured_search_ms": measured_search,
                             "bound_over_measured_search": bound / measured_search,
                             # the best the kernel can do if its skeleton matched SDPA exactly and the search
                             # overlapped none of it (within a block it runs between q kᵀ and A·V; other
                             # blocks on the SM can fill that time, so this is not a hard floor)
                             "serial_floor_ratio_vs_sdpa": 1.0 + bound / sdpa})
    meta = provenance(config.to_dict(), device="cpu (compiles for sm_90)", target="sm_90a",
                      triton=triton.__version__, ptxas=offline.ptxas_version(),
                      bench_commit=bench_meta.get("git_commit"), bench_device=bench_meta.get("device_name"),
                      h100=dict(sms=H100_SMS, clock_hz=H100_CLOCK_HZ, issue_per_sm_cycle=ISSUE_PER_SM_CYCLE,
                                mufu_per_sm_cycle=MUFU_PER_SM_CYCLE))
    out.mkdir(parents=True, exist_ok=True)
    return write_table(pd.DataFrame(rows), out / "search_issue_bound.csv", meta)


def _mean_block_steps(steps: pd.DataFrame, path: Path, config: Config, alpha: float, lk: int, block_m: int,
                      start: str) -> float:
    """Mean steps per block of ``block_m`` queries from the step table's rows for this α, key count and start."""
    counted = steps[(steps.lk == lk) & (steps.alpha == alpha) & (steps.block_m == block_m) & (steps.start == start)]
    if counted.empty:
        raise ValueError(f"{path} has no step counts for alpha={alpha}, Lk={lk}, BLOCK_M={block_m}, start={start} "
                         f"({config.score_group}, bfloat16 q and k, bound rule): rerun experiments/search_steps.py "
                         "with them, or leave the alpha out")
    return float(counted.mean_block_steps.iloc[0])


def report(path: Path) -> None:
    df = pd.read_csv(path)
    cols = ["shape", "alpha", "launch", "block_m", "num_warps", "body_instructions", "mufu_instructions",
            "limited_by", "start_instructions", "mean_block_steps", "other_start_mean_block_steps",
            "search_bound_ms", "other_start_search_bound_ms", "sdpa_graph_ms", "search_bound_over_sdpa",
            "bound_over_measured_search",
            "serial_floor_ratio_vs_sdpa"]
    with pd.option_context("display.width", 200, "display.precision", 3):
        print(df[cols].to_string(index=False))


def main(argv: list[str] | None = None) -> Path:
    from pladis_analysis.maps.kernels.offline import experiment_main

    return experiment_main(argv, __doc__.splitlines()[0], run, Config, report, ROOT / "results")


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
