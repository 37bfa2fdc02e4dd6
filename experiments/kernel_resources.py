"""What the fused kernel costs an H100 statically: registers, spills, shared memory, occupancy, SASS, and which
tensor cores its dots use.

The benchmark (``experiments/bench_cross_attention.py``) needs a GPU. Part of what it measures does not: the
compiled kernel's registers per thread, its local-memory stack (spilled registers), its shared memory, how many
blocks of it fit on an SM, and its instruction counts are fixed by the cubin, which Triton builds for sm_90 on
any machine (:mod:`pladis_analysis.maps.kernels.offline`). At the benchmark's shapes the kernel is latency-bound
(a few hundred bytes per query, a serial threshold search), so spills and resident warps decide much of its
speed; this table lets a kernel change be judged on a CPU before a GPU times it, and says why a launch
configuration the autotuner picks is fast or slow. ``tensor_core_path`` says whether the dots compiled to sm_90's
warpgroup MMA (``wgmma``: SASS HGMMA, only for blocks of ≥ 64 queries) or to per-warp MMA (``mma``: HMMA).
``loop_instructions`` is the largest loop's body, the threshold search's for the PLADIS variants (one
iteration per search step; for the softmax skeleton, the q kᵀ chunk loop), and ``loop_mufu`` its
special-function instructions (exp2, log2, square roots, reciprocals).

Grid: the benchmark's two key/head-dim families (SD1.5/SDXL: 77 keys, d = 64; SANA: 300 keys, d = 112 → 128;
bfloat16, no mask), the kernel's variants (PLADIS with α ∈ {1.25, 1.5, 1.75, 2, 3}: integer q = 1/(α−1), a
non-integer q, and α > 2's safeguarded Halley search; ``softmax``: the softmax-only
skeleton the benchmark calls ``triton_softmax``; ``pladis_stats``: PLADIS at α = 1.5 also writing the per-row
statistics, as record_attention launches it on CUDA), and every launch shape the autotuner tries there (queries per
block, warps), each without and with the register cap (``maxnreg``; 0: none, ptxas decides). Lq does not change
the compiled kernel, so it is not a grid axis. ``chosen`` marks the heuristic's configuration (what runs without
the autotuner), ``autotuned`` the configurations the autotuner tries (the capped ones with
``PLADIS_TRITON_REGISTER_CAP=1``).

Every row names the Triton that compiled it (a key column) and its ptxas: the same source compiles to very
different register counts under Triton 3.6 (the GPU machine's) and 3.9 (this project's CI).
The table accumulates: run it once per version, the other one first on the path (``scripts/with_triton.sh``).

    python experiments/kernel_resources.py           # writes results/kernel_resources.csv (+ .meta.json); resumes
    scripts/with_triton.sh 3.6.0 python experiments/kernel_resources.py     # the same grid with Triton 3.6.0
    python experiments/kernel_resources.py --quick   # SD family, α = 1.5 and softmax only (tests)
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]

from pladis_analysis.results import ResultsTable  # noqa: E402

# (family, Lk, d, heads): the benchmark's shapes, by what changes the compiled kernel; the heads set the strides
# of the diffusers layout the launcher specialises on (SDXL's 10 heads of 64, SANA's 20 of 112)
FAMILIES = (("sd_sdxl", 77, 64, 10), ("sana", 300, 112, 20))


@dataclass
class Config:
    families: tuple[tuple[str, int, int, int], ...] = FAMILIES
    alphas: tuple[float, ...] = (1.25, 1.5, 1.75, 2.0, 3.0)
    stats_alpha: float | None = 1.5   # α of the variant with statistics (None: not compiled)
    dtype: str = "bfloat16"

    @classmethod
    def quick(cls) -> "Config":
        return cls(families=FAMILIES[:1], alphas=(1.5,), stats_alpha=None)

    def to_dict(self) -> dict:
        return asdict(self)


def variants(config: Config) -> list[tuple[str, float]]:
    """(variant, α) pairs: PLADIS at each α, the softmax-only skeleton once (α does not enter it), and PLADIS
    with statistics at ``config.stats_alpha``."""
    stats = [] if config.stats_alpha is None else [("pladis_stats", float(config.stats_alpha))]
    return [("pladis", a) for a in config.alphas] + [("softmax", float("nan"))] + stats


def run(config: Config, out: Path) -> Path:
    import triton

    from pladis_analysis.maps.kernels import cross_attention as ca
    from pladis_analysis.maps.kernels import offline

    # meta: the compiling CPU as device, sm_90a as target, the last run's versions; rows name their Triton
    table = ResultsTable(out / "kernel_resources.csv",
                         keys=["triton", "family", "variant", "alpha", "block_m", "num_warps", "maxnreg"],
                         config=config.to_dict())
    jobs = []
    for family, lk, d, heads in config.families:
        for variant, alpha in variants(config):
            # compiled as a launch at a diffusers call of this shape compiles it (unit strides, multiples of 16)
            meta, compile_launch = offline.fused_kernel_compiler(
                lk, d, heads, alpha=1.5 if variant == "softmax" else alpha, need_entmax=variant != "softmax",
                with_stats=variant == "pladis_stats", dtype=config.dtype)
            default = ca.default_launch(meta)
            tried = ca.launch_candidates(ca.padded_keys(meta), register_cap=True)
            shapes = dict.fromkeys([*ca.launch_shapes(ca.padded_keys(meta)), default[:2]])
            for launch in [(bm, w, cap) for bm, w in shapes for cap in (None, ca.REGISTER_CAP)]:
                jobs.append((family, lk, d, variant, alpha, meta, compile_launch, launch, launch == default,
                             launch in tried))
    ptxas = offline.ptxas_version()
    for family, lk, d, variant, alpha, meta, compile_launch, (block_m, num_warps, maxnreg), chosen, autotuned in tqdm(
            jobs, desc=f"compile sm_90 (Triton {triton.__version__})"):
        # maxnreg 0: no cap (ptxas decides); a key column must read back as it was written
        key = dict(triton=triton.__version__, family=family, variant=variant, alpha=alpha, block_m=block_m,
                   num_warps=num_warps, maxnreg=maxnreg or 0)
        if table.has(**key):
            continue
        found = offline.resources(compile_launch(block_m, num_warps, maxnreg), num_warps)
        table.add({**key, "ptxas": ptxas, "lk": lk, "d": d, "n_cols": ca.padded_keys(meta),
                   "d_chunk": meta["D_CHUNK"], "chosen": chosen, "autotuned": autotuned,
                   # one fp32 score tile's entries per thread: what each live tile of the search costs in registers
                   "scores_per_thread": block_m * ca.padded_keys(meta) // (32 * num_warps), **found.as_dict()})
        table.flush(target="sm_90a", dtype=config.dtype)
    return table.flush(target="sm_90a", dtype=config.dtype)


def report(path: Path) -> None:
    df = pd.read_csv(path)
    cols = ["triton", "family", "variant", "alpha", "block_m", "num_warps", "maxnreg", "chosen", "scores_per_thread",
            "registers", "stack_bytes", "shared_bytes", "warps_per_sm", "sass_instructions", "local_loads", "barriers",
            "tensor_core_path"]
    print(df[cols].to_string(index=False))


def main(argv: list[str] | None = None) -> Path:
    from pladis_analysis.maps.kernels.offline import experiment_main

    return experiment_main(argv, __doc__.splitlines()[0], run, Config, report, ROOT / "results")


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
