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
tl = pytest.importorskip("triton.language")
torch = pytest.importorskip("torch")


def _compile(fn, types: dict, consts: dict, num_warps: int):
    from pladis_analysis.maps.kernels import offline

    try:
        return offline.compile_for_gpu(fn, types, consts, num_warps)
    except offline.OfflineCompileError as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("dtype,kind,q_int,lk,block_d,mask_kind,stats", [
    ("bfloat16", 0, 0, 77, 64, 2, True),      # SDXL: Lk 77, d 64, −10000 bias, Newton with log/exp powers, statistics
    ("bfloat16", 0, 2, 300, 128, 1, False),   # SANA: Lk 300 (256 + 64 key columns), d 112, boolean mask, α = 1.5
    ("bfloat16", 0, 4, 77, 64, 0, False),     # α = 1.25: integer powers
    ("bfloat16", 1, 0, 77, 64, 0, False),     # α > 2: safeguarded Halley
    ("float32", 0, 1, 128, 64, 0, False),    # float32 (IEEE dots), sparsemax, one key block
])
@pytest.mark.parametrize("num_warps", [4, 8])
def test_fused_kernel_compiles_for_sm90(dtype, kind, q_int, lk, block_d, mask_kind, stats, num_warps):
    from pladis_analysis.maps.kernels import cross_attention as ca
    from pladis_analysis.maps.kernels import offline

    alpha = {0: 1.3, 1: 2.0, 2: 1.5, 4: 1.25}[q_int] if kind == 0 else 3.0
    meta = ca.kernel_constexprs(getattr(torch, dtype), lk, block_d, block_d, alpha=alpha, mask_kind=mask_kind,
                                need_softmax=True, need_entmax=True, with_stats=stats)
    assert (meta["KIND"], meta["Q_INT"]) == (kind, q_int)
    consts = dict(meta, BLOCK_M=ca.default_launch(meta)[0])
    types = offline.fused_kernel_types(dtype, mask_kind)
    kernel = _compile(ca._fused_pladis_fwd_kernel, types, consts, num_warps=num_warps)
    assert kernel.asm["cubin"], "ptxas produced no cubin"
    # An H100 SM gives one block at most 227 KiB of shared memory.
    assert kernel.metadata.shared <= 227 * 1024


@pytest.mark.parametrize("kind,q_int,with_steps", [(0, 0, False), (0, 1, False), (0, 2, True), (0, 3, False),
                                                  (0, 4, False), (1, 0, True)])
def test_rowwise_kernels_compile_for_sm90(kind, q_int, with_steps):
    from pladis_analysis.maps.kernels import entmax_rowwise as er

    fwd = _compile(er._entmax_fwd_kernel, {"Z": "*bf16", "P": "*fp32", "STEPS": "*i32", "alpha": "fp32",
                                                 "stop_tol": "fp32"},
                   dict(KIND=kind, Q_INT=q_int, MAX_ITER=40, START_RANKS=er.SPARSEMAX_START_RANKS if q_int == 1 else 1,
                        WITH_STEPS=with_steps, BLOCK_ROWS=8, BLOCK_COLS=512),
                   num_warps=8)
    bwd = _compile(er._entmax_bwd_kernel, {"P": "*fp32", "G": "*fp32", "DZ": "*fp32", "alpha": "fp32"},
                   dict(Q_INT=q_int, BLOCK_ROWS=8, BLOCK_COLS=512), num_warps=8)
    assert fwd.asm["cubin"] and bwd.asm["cubin"]


def _launch_resources(lk: int, d: int, heads: int, need_entmax: bool):
    """A function (BLOCK_M, num_warps) → the sm_90 resources of the fused kernel at a diffusers-layout call with
    ``lk`` keys, head dim ``d`` (bfloat16, no mask, α = 1.5 or the softmax skeleton), and its padded key count."""
    from pladis_analysis.maps.kernels import cross_attention as ca
    from pladis_analysis.maps.kernels import offline

    meta, compile_launch = offline.fused_kernel_compiler(lk, d, heads, alpha=1.5, need_entmax=need_entmax)

    def compiled(block_m, num_warps):
        try:
            return offline.resources(compile_launch(block_m, num_warps), num_warps)
        except offline.OfflineCompileError as exc:
            pytest.skip(str(exc))

    return compiled, ca.padded_keys(meta)


@pytest.mark.parametrize("need_entmax", [False, True], ids=["softmax", "pladis_alpha_1.5"])
def test_long_key_rows_get_a_warpgroup_mma_launch_that_does_not_spill(need_entmax):
    """At SANA's 300 keys (320 columns) the autotuner tries 64-query launches, which compile to sm_90's warpgroup
    MMA (HGMMA), at least one of them without spilling; its 16-query blocks compile to per-warp MMA (HMMA), the
    reason the 64-query ones are there."""
    from pladis_analysis.maps.kernels import cross_attention as ca

    compiled, n_cols = _launch_resources(300, 112, 20, need_entmax)
    wide = [shape for shape in ca.launch_shapes(n_cols) if shape[0] >= ca.WGMMA_MIN_ROWS]
    assert wide, "no launch at 300 keys can use warpgroup MMA"
    found = [compiled(*shape) for shape in wide]
    assert {r.tensor_core_path for r in found} == {"wgmma"}
    assert min(r.stack_bytes for r in found) == 0
    assert compiled(16, 8).tensor_core_path == "mma"


def test_64_query_launches_spill_at_512_keys():
    """Why no 64-query launch is tried at 512 key columns: even the softmax skeleton spills there, on 8 warps and
    on 16."""
    compiled, n_cols = _launch_resources(512, 128, 8, need_entmax=False)
    assert n_cols == 512
    assert compiled(64, 8).stack_bytes > 0 and compiled(64, 16).stack_bytes > 0


def test_non_integer_q_newton_step_uses_the_hardware_log2():
    """At α = 1.75 (q = 4/3) every score needs a log2 and an exp2 per Newton step: compiled, the log2 is the
    GPU's MUFU.LG2, and the search loop stays within 1.6× the instructions of α = 1.5's (whose powers are
    products). libdevice's accurate log2 made it 5.6×."""
    from pladis_analysis.maps.kernels import offline

    def loop_and_sass(alpha):
        _, compile_launch = offline.fused_kernel_compiler(77, 64, 10, alpha=alpha)
        try:
            text = offline.sass(compile_launch(64, 4))
        except offline.OfflineCompileError as exc:
            pytest.skip(str(exc))
        return offline.loop_bodies(text)[0], text

    general, text = loop_and_sass(1.75)
    integer, _ = loop_and_sass(1.5)
    assert "MUFU.LG2" in text
    assert general <= 1.6 * integer, f"Newton loop: {general} instructions at α = 1.75, {integer} at α = 1.5"


def _quick_grid(name: str, out):
    """Run experiments/<name>.py's quick grid into ``out``: (the experiment module, its table)."""
    import pandas as pd
    from experiment_scripts import load_experiment

    from pladis_analysis.maps.kernels import offline

    experiment = load_experiment(name)
    try:
        path = experiment.run(experiment.Config.quick(), out)
    except offline.OfflineCompileError as exc:
        pytest.skip(str(exc))
    return experiment, pd.read_csv(path)


def test_kernel_resources_quick_grid(tmp_path):
    """experiments/kernel_resources.py --quick: every launch candidate compiles, fits an SM at least once, and
    the heuristic's configuration is one row per variant."""
    _, df = _quick_grid("kernel_resources", tmp_path)
    assert set(df.variant) == {"pladis", "softmax"}
    assert (df.groupby("variant").chosen.sum() == 1).all()
    assert (df.registers.between(1, 255)).all() and (df.warps_per_sm >= df.num_warps).all()
    # The softmax-only skeleton is a strict subset of the PLADIS kernel's work.
    merged = df[df.variant == "pladis"].merge(df[df.variant == "softmax"], on=["block_m", "num_warps", "maxnreg"])
    assert (merged.sass_instructions_x > merged.sass_instructions_y).all()
    capped = df[df.maxnreg > 0]
    assert len(capped) == len(df) / 2 and (capped.registers <= capped.maxnreg).all()
    assert df.autotuned.all()  # 77 keys: the autotuner tries every shape with and without the cap


def test_search_issue_bound_quick_grid(tmp_path):
    """experiments/search_issue_bound.py --quick: the Newton loop is found in the SASS (far longer than the q kᵀ
    chunk loops), and its issue-rate bound stays below the search time the H100 measured (else the bound, or
    the loop it counted, is wrong)."""
    _, df = _quick_grid("search_issue_bound", tmp_path)
    assert len(df) == 2 and (df.body_instructions > 200).all()
    assert ((df.search_bound_ms > 0) & (df.bound_over_measured_search < 1)).all()
    assert (df.serial_floor_ratio_vs_sdpa == 1 + df.search_bound_over_sdpa).all()
    # α = 1.5 starts at τ = −1 (no start instructions) and sparsemax on 6 ranks, whose start costs instructions
    # outside the loop (a masked maximum per rank beyond the first); each row also bounds the other start
    entmax15, sparsemax = df[df.alpha == 1.5].iloc[0], df[df.alpha == 2.0].iloc[0]
    assert (entmax15.start_ranks, entmax15.start_instructions, entmax15.other_start_ranks) == (1, 0, 6)
    assert (sparsemax.start_ranks, sparsemax.other_start_ranks, sparsemax.other_start_instructions) == (6, 1, 0)
    assert sparsemax.start_instructions > 5 * 40 and entmax15.other_start_instructions > 5 * 40
    assert (df.other_start_search_bound_ms > 0).all()


def test_kernel_builds_quick_grid(tmp_path):
    """experiments/kernel_builds.py --quick: every kernel builds for sm_80 and sm_90 within the shared memory a
    block may have there, and a kernel the compiler rejects becomes a row, not an error of the script."""
    experiment, df = _quick_grid("kernel_builds", tmp_path)
    assert set(df.arch) == {80, 90} and set(df.kernel) == {"fused_attention", "rowwise_forward", "rowwise_backward"}
    assert df.built.all() and df.fits_shared.all() and df.registers.between(1, 255).all()
    rejected = experiment.build(dict(fn=_not_a_kernel(), types={}, consts={}, num_warps=4), arch=90)
    assert rejected["built"] is False and rejected["error"]


def _not_a_kernel():
    @triton.jit
    def kernel(X, BLOCK: tl.constexpr):
        tl.store(X + tl.arange(0, BLOCK), tl.undefined_function())  # noqa: F821  (the compiler must reject it)
    return kernel
