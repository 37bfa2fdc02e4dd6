"""Does each kernel build for the GPUs users have? Compile for sm_75 … sm_90 on a CPU and read the cubins.

The kernels are tested and timed on one architecture (sm_90). A user's GPU may be an A100, an RTX card or a
T4, where the compiler may reject a construct, allocate registers differently or need more shared memory
than a block may have. Triton builds for any architecture offline
(:mod:`pladis_analysis.maps.kernels.offline`), so this table answers, per architecture, dtype and the largest
shapes the kernels accept: does it compile, with how many registers per thread, how much spilled stack and
how much shared memory, against that architecture's per-block limit.

Grid: compute capabilities 7.5, 8.0, 8.6, 8.9, 9.0; float16, bfloat16, float32; the fused cross-attention
kernel (PLADIS at α = 1.5, Newton search, and α = 3, Halley search) at SD/SDXL's 77 keys × 64 dims, SANA's
300 × 112 and the kernel's limit 512 × 128, each at the launch shape the heuristic picks (queries per block,
warps); the row-wise entmax forward and backward kernels at rows of 77, 300 and 4096. A build failure is a
row with ``built = False`` and the compiler's message, not an error of the script.

Every row names the Triton that compiled it and its ptxas: register allocation differs between versions, and
users run several (the GPU machine of ``scripts/gpu_check.sh`` has Triton 3.6, this project's CI 3.9). The
table accumulates: run it once per Triton version, with the other version first on the path
(``scripts/with_triton.sh``).

What this cannot say: whether a kernel that builds is fast there (only a GPU can time it).

    python experiments/kernel_builds.py                                     # results/kernel_builds.csv; resumes
    scripts/with_triton.sh 3.6.0 python experiments/kernel_builds.py        # the same grid with Triton 3.6.0
    python experiments/kernel_builds.py --quick   # sm_80 and sm_90, bfloat16, 77 keys only (tests)
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]

from pladis_analysis.results import ResultsTable  # noqa: E402

ARCHS = (75, 80, 86, 89, 90)
DTYPES = ("float16", "bfloat16", "float32")
# (Lk, d, heads) of the fused kernel: SD1.5/SDXL, SANA, and the kernel's limits (MAX_KEYS, MAX_HEAD_DIM); the
# heads set the strides of the diffusers layout the launcher specialises on
ATTENTION_SHAPES = ((77, 64, 10), (300, 112, 20), (512, 128, 8))
ROWS = 2 * 20 * 4096   # rows of scores for the row-wise kernels: a (2, 20, 4096, n) score tensor
ROW_LENGTHS = (77, 300, 4096)


@dataclass
class Config:
    archs: tuple[int, ...] = ARCHS
    dtypes: tuple[str, ...] = DTYPES
    attention_shapes: tuple[tuple[int, int, int], ...] = ATTENTION_SHAPES
    alphas: tuple[float, ...] = (1.5, 3.0)
    row_lengths: tuple[int, ...] = ROW_LENGTHS

    @classmethod
    def quick(cls) -> "Config":
        return cls(archs=(80, 90), dtypes=("bfloat16",), attention_shapes=ATTENTION_SHAPES[:1], alphas=(1.5,),
                   row_lengths=ROW_LENGTHS[:1])

    def to_dict(self) -> dict:
        return asdict(self)


def _attention_jobs(config: Config) -> list[dict]:
    """One job per (dtype, shape, α): the fused kernel, its constexprs and its heuristic launch shape."""
    from pladis_analysis.maps.kernels import cross_attention as ca
    from pladis_analysis.maps.kernels import offline

    jobs = []
    for dtype in config.dtypes:
        for lk, d, heads in config.attention_shapes:
            specialised, attrs = offline.launcher_specialization(
                ca._fused_pladis_fwd_kernel, offline.fused_attention_call(lk, d, heads, dtype=dtype))
            for alpha in config.alphas:
                meta = ca.kernel_constexprs(getattr(torch, dtype), lk, d, d, alpha=alpha, mask_kind=0,
                                            need_softmax=True, need_entmax=True, with_stats=False)
                block_m, num_warps, _ = ca.default_launch(meta)
                jobs.append(dict(kernel="fused_attention", dtype=dtype, length=lk, d=d, alpha=alpha, block_m=block_m,
                                 num_warps=num_warps, fn=ca._fused_pladis_fwd_kernel,
                                 types=offline.fused_kernel_types(dtype, mask_kind=0),
                                 consts={**meta, **specialised, "BLOCK_M": block_m}, attrs=attrs))
    return jobs


def _rowwise_jobs(config: Config) -> list[dict]:
    """Forward (at each α) and backward row-wise entmax kernels at each row length, as the launcher sizes them."""
    from pladis_analysis.maps.kernels import entmax_rowwise as er
    from pladis_analysis.maps.kernels import offline

    pointer = {"float16": "*fp16", "bfloat16": "*bf16", "float32": "*fp32"}
    jobs = []
    for dtype in config.dtypes:
        for n in config.row_lengths:
            block_rows, block_cols, num_warps = er._launch_shape(n)
            shape = dict(dtype=dtype, length=n, d=0, block_m=block_rows, num_warps=num_warps)
            specialised, attrs = offline.launcher_specialization(er._entmax_fwd_kernel,
                                                                 offline.rowwise_call(ROWS, n, dtype))
            for alpha in config.alphas:
                kind, q_int = er.alpha_flavour(alpha)
                jobs.append(dict(kernel="rowwise_forward", alpha=alpha, fn=er._entmax_fwd_kernel, **shape,
                                 types={"Z": pointer[dtype], "P": "*fp32", "STEPS": "*i32", "alpha": "fp32",
                                        "stop_tol": "fp32"},
                                 consts=dict(KIND=kind, Q_INT=q_int, MAX_ITER=er.max_iterations(kind),
                                             START_RANKS=er.default_start_ranks(alpha), WITH_STEPS=False,
                                             BLOCK_ROWS=block_rows, BLOCK_COLS=block_cols,
                                             **specialised), attrs=attrs))
            # The backward runs on float32 weights whatever the input dtype (EntmaxRowwise keeps them so).
            if dtype == config.dtypes[0]:
                specialised, attrs = offline.launcher_specialization(er._entmax_bwd_kernel,
                                                                     offline.rowwise_call(ROWS, n, backward=True))
                jobs.append(dict(kernel="rowwise_backward", alpha=config.alphas[0], fn=er._entmax_bwd_kernel,
                                 **{**shape, "dtype": "float32"},
                                 types={"P": "*fp32", "G": "*fp32", "DZ": "*fp32", "alpha": "fp32"},
                                 consts=dict(Q_INT=er.alpha_flavour(config.alphas[0])[1], BLOCK_ROWS=block_rows,
                                             BLOCK_COLS=block_cols, **specialised), attrs=attrs))
    return jobs


def build(job: dict, arch: int) -> dict:
    """Compile one job for ``arch``: its static usage, or ``built=False`` and the compiler's message."""
    from pladis_analysis.maps.kernels import offline

    try:
        compiled = offline.compile_for_gpu(job["fn"], job["types"], job["consts"], job["num_warps"], arch=arch,
                                           attrs=job.get("attrs"))
        found = offline.usage(compiled)
    except offline.OfflineCompileError:
        raise  # no toolchain here: nothing to tabulate
    except Exception as exc:  # the compiler's verdict on this architecture: a result, not a crash
        return {"built": False, "error": f"{type(exc).__name__}: {exc}"[:300].replace("\n", " "),
                "registers": -1, "stack_bytes": -1, "shared_bytes": -1, "fits_shared": False}
    limit = offline.ARCHITECTURES[arch][1]
    return {"built": True, "error": "", **found, "fits_shared": found["shared_bytes"] <= limit}


def run(config: Config, out: Path) -> Path:
    from pladis_analysis.maps.kernels import offline

    unknown = sorted(set(config.archs) - set(offline.ARCHITECTURES))
    if unknown:
        raise ValueError(f"archs={unknown}: expected compute capabilities among {sorted(offline.ARCHITECTURES)}")
    import triton

    # meta: the compiling CPU as device and the last run's versions; each row names its own Triton and ptxas
    table = ResultsTable(out / "kernel_builds.csv",
                         keys=["triton", "arch", "kernel", "dtype", "length", "d", "alpha"], config=config.to_dict())
    ptxas = {arch: offline.ptxas_version(arch) for arch in config.archs}
    jobs = [(arch, job) for arch in config.archs for job in _attention_jobs(config) + _rowwise_jobs(config)]
    for arch, job in tqdm(jobs, desc=f"compile (Triton {triton.__version__})"):
        key = {"triton": triton.__version__, "arch": arch,
               **{name: job[name] for name in ("kernel", "dtype", "length", "d", "alpha")}}
        if table.has(**key):
            continue
        gpus, limit = offline.ARCHITECTURES[arch]
        table.add({**key, "ptxas": ptxas[arch], "gpus": gpus, "block_m": job["block_m"],
                   "num_warps": job["num_warps"], "shared_limit": limit, **build(job, arch)})
        table.flush()
    return table.flush()


def report(path: Path) -> None:
    df = pd.read_csv(path)
    cols = ["triton", "arch", "kernel", "dtype", "length", "d", "alpha", "block_m", "num_warps", "built", "registers",
            "stack_bytes", "shared_bytes", "shared_limit", "fits_shared", "error"]
    print(df[cols].to_string(index=False))


def main(argv: list[str] | None = None) -> Path:
    from pladis_analysis.maps.kernels.offline import experiment_main

    return experiment_main(argv, __doc__.splitlines()[0], run, Config, report, ROOT / "results")


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
