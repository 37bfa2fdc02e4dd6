"""Ahead-of-time compilation of the kernels for an H100 (sm_90), without a GPU.

The interpreter tests check what the kernels compute; they cannot check that the Triton compiler accepts them
(types of loop-carried values, dot shapes, constexpr branches). Triton ships ptxas, so the whole pipeline
source → TTIR → TTGIR → LLVM IR → PTX → cubin runs on a CPU. Each compile takes tens of seconds, so the test
runs only when asked: ``PLADIS_AOT_CHECK=1 pytest tests/test_kernels_compile.py``.
"""

from __future__ import annotations

import os

import pytest

pytestmark = [pytest.mark.triton, pytest.mark.slow,
              pytest.mark.skipif(os.environ.get("PLADIS_AOT_CHECK") != "1",
                                 reason="slow (tens of seconds per kernel); set PLADIS_AOT_CHECK=1 to run")]

triton = pytest.importorskip("triton", reason="Triton is not installed")

_KERNEL_TYPES = {"score_scale": "fp32", "alpha": "fp32", "lam": "fp32", "stop_tol": "fp32"}


def _compile(fn, types: dict, consts: dict, num_warps: int):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if type(fn).__name__ == "InterpretedFunction":
        pytest.skip("kernels were imported under TRITON_INTERPRET=1; run this file in a fresh process without it")
    signature = {name: "constexpr" if name in consts else types.get(name, "i32") for name in fn.arg_names}
    return triton.compile(ASTSource(fn, signature, consts), target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": num_warps})


@pytest.mark.parametrize("dtype,kind,q_int,lk,block_d,mask_kind,stats", [
    ("bf16", 0, 0, 77, 64, 2, True),      # SDXL: Lk 77, d 64, −10000 bias, Newton with log/exp powers, statistics
    ("bf16", 0, 2, 300, 128, 1, False),   # SANA: Lk 300 (256 + 64 key columns), d 112, boolean mask, α = 1.5
    ("bf16", 0, 4, 77, 64, 0, False),     # α = 1.25: integer powers
    ("bf16", 1, 0, 77, 64, 0, False),     # α > 2: safeguarded Halley
    ("fp32", 0, 1, 128, 64, 0, False),    # float32 (IEEE dots), sparsemax, one key block
])
@pytest.mark.parametrize("query_blocks", [1, 4])
def test_fused_kernel_compiles_for_sm90(dtype, kind, q_int, lk, block_d, mask_kind, stats, query_blocks):
    from pladis_analysis.maps._shapes import split_blocks
    from pladis_analysis.maps.kernels import cross_attention as ca

    block_n, block_t = split_blocks(lk)

    consts = dict(MASK_KIND=mask_kind, NEED_SOFTMAX=True, NEED_ENTMAX=True, KIND=kind, Q_INT=q_int, MAX_ITER=40,
                  WITH_STATS=stats, IEEE_FP32=dtype == "fp32", UPCAST_DOT=False,
                  BLOCK_M=ca._block_m(block_n + block_t, block_d), BLOCK_N=block_n, HAS_TAIL=block_t > 0,
                  BLOCK_T=max(block_t, 16), BLOCK_D=block_d, BLOCK_DV=block_d, QUERY_BLOCKS=query_blocks)
    pointer = f"*{dtype}"
    types = dict(_KERNEL_TYPES, Q=pointer, K=pointer, V=pointer, OUT=pointer, STATS="*fp32",
                 MASK="*u8" if mask_kind == 1 else pointer)
    kernel = _compile(ca._fused_pladis_fwd_kernel, types, consts, num_warps=4)
    assert kernel.asm["cubin"], "ptxas produced no cubin"
    # An H100 SM gives one block at most 227 KiB of shared memory.
    assert kernel.metadata.shared <= 227 * 1024


@pytest.mark.parametrize("kind,q_int,with_steps", [(0, 0, False), (0, 1, False), (0, 2, True), (0, 3, False),
                                                  (0, 4, False), (1, 0, True)])
def test_rowwise_kernels_compile_for_sm90(kind, q_int, with_steps):
    from pladis_analysis.maps.kernels import entmax_rowwise as er

    fwd = _compile(er._entmax_fwd_kernel, {"Z": "*bf16", "P": "*fp32", "STEPS": "*i32", "alpha": "fp32",
                                                 "stop_tol": "fp32"},
                   dict(KIND=kind, Q_INT=q_int, MAX_ITER=40, WITH_STEPS=with_steps, BLOCK_ROWS=8, BLOCK_COLS=512),
                   num_warps=8)
    bwd = _compile(er._entmax_bwd_kernel, {"P": "*fp32", "G": "*fp32", "DZ": "*fp32", "alpha": "fp32"},
                   dict(Q_INT=q_int, BLOCK_ROWS=8, BLOCK_COLS=512), num_warps=8)
    assert fwd.asm["cubin"] and bwd.asm["cubin"]
