"""The offline reading of compiled kernels (pladis_analysis.maps.kernels.offline): parsing and occupancy rules.

These run everywhere (no compile); tests/test_kernels_compile.py compiles real kernels when PLADIS_AOT_CHECK=1.
"""

import pytest

from pladis_analysis.maps.kernels import offline

RES_USAGE = """
Resource usage:
 Common:
  GLOBAL:28 CONSTANT[4]:16
 Function _fused_pladis_fwd_kernel:
  REG:255 STACK:216 SHARED:1024 LOCAL:0 CONSTANT[0]:720 TEXTURE:0 SURFACE:0 SAMPLER:0
"""

SASS = """
        /*0000*/                   LDC R1, c[0x0][0x28] ;                        /* 0x00000a00ff017b82 */
                                                                                 /* 0x000ff00000000800 */
        /*0010*/                   STL [R1+0x10], R4 ;                           /* 0x0000100401007387 */
        /*0020*/              @!P0 BRA 0x1230 ;                                  /* 0x0000001000008947 */
        /*0030*/                   SHFL.BFLY PT, R5, R4, 0x1, 0x1f ;             /* 0x0c201f0004057f89 */
        /*0040*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;                 /* 0x0000000000007b1d */
        /*0050*/               @P1 LDL R6, [R1+0x10] ;                           /* 0x0000100001061983 */
        /*0060*/                   HMMA.16816.F32.BF16 R8, R12, R16, R8 ;        /* 0x000000100c08723c */
        /*0070*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], R24 ; /* 0x00e00000041879f0 */
        /*0080*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8], R24 ; /* 0x00e00000081879f0 */
        /*0090*/                   EXIT ;                                        /* 0x000000000000794d */
"""


def test_parse_resource_usage_reads_the_function_not_the_common_section():
    assert offline.parse_resource_usage(RES_USAGE) == {"REG": 255, "STACK": 216, "SHARED": 1024}
    with pytest.raises(ValueError, match="REG"):
        offline.parse_resource_usage("Resource usage:\n Function f:\n  STACK:0 SHARED:0")


def test_count_sass_counts_opcodes_with_and_without_predicates():
    counts = offline.count_sass(SASS)
    assert counts == {"sass_instructions": 10, "local_loads": 1, "local_stores": 1, "barriers": 1, "shuffles": 1,
                      "hgmma": 2, "hmma": 1, "mufu": 0, "loop_instructions": 0, "loop_mufu": 0}
    looped = offline.count_sass(LOOPS.replace("FADD R2, R2, R3", "MUFU.EX2 R2, R3"))
    assert (looped["mufu"], looped["loop_instructions"], looped["loop_mufu"]) == (1, 8, 1)


LOOPS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   FADD R2, R2, R3 ;
        /*0020*/                   FMNMX R4, R2, RZ, !PT ;
        /*0030*/               @P0 BRA 0x10 ;
        /*0040*/                   FFMA R5, R4, R4, R5 ;
        /*0050*/                   BRA 0x70 ;
        /*0060*/                   NOP ;
        /*0070*/              @!P1 BRA 0x0 ;
        /*0080*/                   EXIT ;
"""


def test_loop_bodies_are_backward_branches_with_their_targets():
    # 0x10..0x30 (3 instructions) and 0x00..0x70 (8); the forward BRA to 0x70 is no loop
    assert offline.loop_bodies(LOOPS) == [8, 3]
    assert offline.loop_opcodes(LOOPS)[1] == ["FADD", "FMNMX", "BRA"]
    assert offline.loop_bodies(SASS) == []  # a forward branch only


@pytest.mark.parametrize("hgmma,hmma,path", [(2, 0, "wgmma"), (0, 5, "mma"), (0, 0, "none")])
def test_tensor_core_path_names_the_mma_instructions(hgmma, hmma, path):
    found = offline.Resources(registers=96, stack_bytes=0, shared_bytes=0, num_warps=8, blocks_per_sm=2,
                              warps_per_sm=16, sass_instructions=100, local_loads=0, local_stores=0, barriers=0,
                              shuffles=0, hgmma=hgmma, hmma=hmma)
    assert found.tensor_core_path == path and found.as_dict()["tensor_core_path"] == path


@pytest.mark.parametrize("registers,shared,warps,blocks", [
    (167, 15360, 4, 3),       # 167 → 168 per thread: 5376 per warp, 12 warps' worth → 3 blocks of 4
    (128, 15360, 4, 4),       # 4096 per warp: 16 warps → 4 blocks (shared memory would allow 14)
    (255, 98304, 8, 1),
    (32, 0, 4, 16),           # the 64-warp limit
    (16, 0, 1, 32),           # the 32-block limit
    (64, 180224, 4, 1),       # shared memory: one 176 KiB block per SM
    (64, 228 * 1024, 4, 0),   # more than a block may have
])
def test_occupancy_follows_the_sm90_limits(registers, shared, warps, blocks):
    assert offline.occupancy(registers, shared, warps) == (blocks, blocks * warps)


def test_occupancy_rejects_nonsense():
    with pytest.raises(ValueError, match="num_warps=0"):
        offline.occupancy(64, 0, 0)


def test_fused_kernel_types_names_the_dtype():
    assert offline.fused_kernel_types("bfloat16", 1)["MASK"] == "*u8"
    assert offline.fused_kernel_types("float16", 2)["Q"] == "*fp16"
    with pytest.raises(ValueError, match="float64"):
        offline.fused_kernel_types("float64", 0)


def test_plot_kernel_resources_draws_one_panel_per_family_and_metric(tmp_path):
    import pandas as pd

    from pladis_analysis import plotting

    rows = [dict(family=family, variant=variant, alpha=alpha, block_m=bm, num_warps=4, maxnreg=cap,
                 registers=128 if cap else 200, stack_bytes=0 if cap else 16, warps_per_sm=16 if cap else 8)
            for family, bm in (("sd_sdxl", 64), ("sana", 16)) for variant, alpha in (("pladis", 1.5),
                                                                                      ("softmax", float("nan")))
            for cap in (0, 128)]
    figure = plotting.plot_kernel_resources(pd.DataFrame(rows))
    assert len(figure.axes) == 2 * 3
    assert plotting.save_figure(figure, tmp_path / "kernel_resources.png").stat().st_size > 0
    # Rows of two Triton versions: a column of panels per family and version.
    two = pd.DataFrame([{**row, "triton": version} for row in rows for version in ("3.6.0", "3.9.0")])
    assert len(plotting.plot_kernel_resources(two).axes) == 4 * 3
    # Launches whose dots became warpgroup MMA are marked on the launch axis.
    paths = pd.DataFrame([{**row, "tensor_core_path": "wgmma" if row["block_m"] >= 64 else "mma"} for row in rows])
    labels = {tick.get_text() for ax in plotting.plot_kernel_resources(paths).axes for tick in ax.get_xticklabels()}
    assert {"64×4 wg", "64×4/128 wg", "16×4", "16×4/128"} <= labels


def test_offline_compiles_specialise_like_the_launcher():
    """The capture of a diffusers-layout call: unit strides become constants, multiples of 16 and aligned
    tensors get the divisibility attribute, other integers and the floats nothing; the kernel is restored."""
    pytest.importorskip("triton", reason="Triton is not installed")
    from pladis_analysis.maps.kernels import cross_attention as ca

    kernel = ca._fused_pladis_fwd_kernel
    call = offline.fused_attention_call(300, 112, 20, queries=1000)
    assert ca._fused_pladis_fwd_kernel is kernel                       # the recorder is gone again
    assert (call["sqm"], call["sqd"], call["Lk"], call["Lq"]) == (20 * 112, 1, 300, 1000)
    constants, attrs = offline.launcher_specialization(kernel, call)
    assert constants == {"sqd": 1, "skd": 1, "svd": 1, "sod": 1}
    marked = {kernel.arg_names[index] for (index,) in attrs}
    assert {"Q", "K", "V", "OUT", "sqm", "skn", "D", "DV"} <= marked
    assert not marked & {"Lq", "Lk", "H", "score_scale", "alpha", "BLOCK_M"}  # 1000, 300, 20; floats; constexprs
    rows = offline.rowwise_call(40, 77)
    assert (rows["n_rows"], rows["n_cols"], rows["stride_z"]) == (40, 77, 77)


def test_search_issue_bound_arithmetic_and_its_alpha_range():
    """One second of an H100 SXM's issue slots is 132 SMs × 4 schedulers × 1.98e9 cycles of one warp-instruction,
    and its MUFU units take two SM cycles per warp-instruction; the bound is defined for the Newton search only
    (1 < α ≤ 2)."""
    from experiment_scripts import load_experiment

    experiment = load_experiment("search_issue_bound")
    slots_per_ms = 132 * 4 * 1.98e9 / 1e3
    warps = int(slots_per_ms / 500)
    assert experiment.issue_bound_ms(body=100, steps=5.0, warps=warps) == pytest.approx(1.0, 1e-3)
    # 100 instructions issue in 25 SM cycles; 12 MUFU take 24 (issue decides), 13 take 26 (the MUFU units do)
    assert experiment.sm_cycles_per_step(100, 12) == (25.0, "issue")
    assert experiment.sm_cycles_per_step(100, 13) == (26.0, "mufu")
    assert experiment.issue_bound_ms(body=100, steps=5.0, warps=warps, mufu=25) == pytest.approx(2.0, 1e-3)
    # a start of 500 instructions issues once, in as many cycles as the five steps of 100
    assert experiment.issue_bound_ms(body=100, steps=5.0, warps=warps, start=500) == pytest.approx(2.0, 1e-3)
    with pytest.raises(ValueError, match="alphas"):
        experiment.Config(alphas=(1.5, 3.0))
    meta = {"kernel_launch_configs": [dict(Lq=1024, Lk=300, NEED_ENTMAX=True, Q_INT=2, BLOCK_M=32, num_warps=4)]}
    assert experiment.launches(meta, 1024, 300, 2) == [("chosen", 32, 4), ("wgmma_64x8", 64, 8)]
    assert experiment.launches(meta, 1024, 300, 0) == [("chosen_for_other_alpha", 32, 4), ("wgmma_64x8", 64, 8)]
    assert experiment.launches(meta, 1024, 77, 2) == []
