"""Fused PLADIS cross-attention: scores → softmax and α-entmax → A = S + λ(E − S) → A·V in one pass.

Cross-attention keys are text tokens (77–300), so one program holds the scores of a block of queries against
*all* keys: it computes the block's score tile once, finds both maps in registers (softmax directly,
α-entmax by the threshold search of :mod:`.entmax_rowwise`), mixes them, and multiplies by V. The scores
never reach memory; memory traffic is that of softmax attention (read Q, K, V, write O).

The key axis is a power-of-two head block plus, when that saves padding, a power-of-two tail block (77 keys:
64 + 16 columns instead of 128; 300: 256 + 64 instead of 512): every elementwise step of the search runs over
the padded columns, so padding is work. Keys and values never sit whole in registers: q kᵀ accumulates over
chunks of :data:`HEAD_DIM_CHUNK` head dimensions, and A·V over chunks of :data:`KEY_CHUNK` keys. A tensor-core
operand is held whole in registers by every warp that uses it, and whole operands at SANA's 300 keys × 128
dims filled the register file and spilled even without the threshold search; with the chunks the default
launch there needs 128–129 registers per thread instead of 239–252 (α ≤ 2; ``results/kernel_resources.csv``
and its history).

    z   = (q kᵀ) · score_scale + bias        bias: additive mask, or −inf where a boolean mask is False
    S   = softmax(z),  E = α-entmax(z)
    A   = S + λ (E − S)                      λ = pladis_scale (0: softmax attention, 1: entmax attention)
    out = A v

Inputs may be float16, bfloat16 or float32; products accumulate in float32 and both maps are computed in
float32 (for float32 inputs the dot products use IEEE float32, not TF32). A row whose keys are all masked
(all −inf) gets zero weights and a zero output, never NaN. An additive −10000 padding bias (diffusers,
SANA/PixArt) is an ordinary finite bias: it gives those keys zero weight unless every key has it.

Optionally the kernel also writes per-row statistics of all three maps (see :data:`STAT_NAMES`), those the
probes record (:func:`pladis_analysis.probes.record_attention` reads them on CUDA instead of recomputing the
weights), at little extra cost because the maps are already in registers.

The backward pass recomputes through the torch maps (:mod:`pladis_analysis.maps`), so gradients are those of
the reference path; it costs a materialised score matrix, which is fine for analysis work.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import os

import torch
import triton
import triton.language as tl

from .._shapes import block_size, broadcast_shapes, cdiv, split_blocks, writes_heads_interleaved
from .._threshold import MASKED_BIAS_THRESHOLD, check_scale
from .build_failures import launching
from .entmax_rowwise import (KIND_NEWTON, alpha_flavour, default_start_ranks, entmax_rows, fast_log2,
                             max_iterations, row_max, row_sum, stop_tolerance)

# Largest key length and head dimension the kernel holds in registers (text encoders: 77–300 tokens).
MAX_KEYS = 512
MAX_HEAD_DIM = 128
# q kᵀ accumulates over chunks of this many head dimensions, and A·V over chunks of KEY_CHUNK keys: a tensor-core
# operand is held whole in registers by every warp that uses it, so whole 300-key × 128-dim operands cost more
# registers than the score tiles (results/kernel_resources.csv).
HEAD_DIM_CHUNK = 32
KEY_CHUNK: tl.constexpr = tl.constexpr(64)
MASKED_BIAS: tl.constexpr = tl.constexpr(MASKED_BIAS_THRESHOLD)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# Per-row statistics, in this order along the last dimension of the stats tensor: MAP_STATS of each of the three
# maps (softmax S, α-entmax E, the PLADIS mix A), then the top gap. They are those of
# pladis_analysis.probes.stats, so that a probe can read them instead of recomputing the weights: entropies
# (natural log) are of the magnitude distribution |w| / ‖w‖₁, the Tsallis one with the launch's
# ``tsallis_alpha``; support counts nonzero weights; bos_mass is the first key's weight; negative mass is
# Σ_{w_i<0} |w_i| (‖A‖₁ = 1 + 2·negative mass). The top gap is z_(1) − z_(2) of the masked, scaled scores (the
# one-hot regime of α-entmax is gap ≥ 1/(α−1)), 0 on a tie, +inf when fewer than two keys are unmasked; keys
# under an additive bias ≤ MASKED_BIAS_THRESHOLD (text padding) do not count for it. A row whose keys are all
# masked has zero weights, and the statistics of a zero row.
STAT_MAPS = ("softmax", "entmax", "pladis")
MAP_STATS = ("entropy", "tsallis_entropy", "support_size", "max_weight", "bos_mass", "l1_norm", "negative_mass")
STAT_NAMES = tuple(f"{stat}_{name}" for name in STAT_MAPS for stat in MAP_STATS) + ("top_gap",)
_N_MAP_STATS: tl.constexpr = tl.constexpr(len(MAP_STATS))

_MASK_NONE, _MASK_BOOL, _MASK_ADDITIVE = 0, 1, 2

logger = logging.getLogger("pladis_analysis.kernels")


@triton.jit
def _load_rows(PTR, base, rows, L, C, s_row, s_col, BLOCK_C: tl.constexpr):
    """Rows ``rows`` (< L) of a (L, C) matrix at ``PTR + base``, zero-padded to (len(rows), BLOCK_C)."""
    offs_c = tl.arange(0, BLOCK_C)
    return tl.load(PTR + base + rows[:, None] * s_row + offs_c[None, :] * s_col,
                   mask=(rows < L)[:, None] & (offs_c[None, :] < C), other=0.0)


@triton.jit
def _dot(a, b, acc, IEEE_FP32: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """acc + a · b on the tensor cores in the inputs' dtype, fp32 accumulation (IEEE for float32 inputs)."""
    if IEEE_FP32:
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    elif UPCAST_DOT:
        # The CPU interpreter multiplies bfloat16 tiles as raw integers: upcast, after rounding to b's dtype as
        # the tensor cores would.
        acc = tl.dot(a.to(b.dtype).to(tl.float32), b.to(tl.float32), acc)
    else:
        acc = tl.dot(a.to(b.dtype), b, acc)
    return acc


@triton.jit
def _raw_scores(Q, q_base, K, k_base, rows, row_in, cols, Lk, D, sqm, sqd, skn, skd,
                IEEE_FP32: tl.constexpr, UPCAST_DOT: tl.constexpr, BLOCK_M: tl.constexpr, N: tl.constexpr,
                BLOCK_D: tl.constexpr, D_CHUNK: tl.constexpr):
    """q kᵀ of a block of queries against the keys ``cols`` (N of them), accumulated over chunks of D_CHUNK head
    dimensions (kᵀ is loaded as such, so the compiler stages it in shared memory).

    A loop, not ``tl.static_range``: unrolled, the chunks are scheduled together and cost registers. At 77 keys
    with 64 queries on 8 warps, α ≤ 2, the unrolled form compiled to 157–184 registers per thread under Triton
    3.6 and 128–168 under 3.9, the loop to 110–127 under both (results/kernel_resources_history/, the aeb9956
    and e7198aa_unspecialised tables, compiled without the launcher's specialisation on unit strides).
    Compiled as a launch compiles it, the loop takes 89–94 (3.9) and 106–116 (3.6) there
    (results/kernel_resources.csv); the unrolled form has not been compiled that way."""
    z = tl.zeros((BLOCK_M, N), dtype=tl.float32)
    for start in range(0, BLOCK_D, D_CHUNK):
        dims = start + tl.arange(0, D_CHUNK)
        dim_in = dims < D
        q = tl.load(Q + q_base + rows[:, None] * sqm + dims[None, :] * sqd,
                    mask=row_in[:, None] & dim_in[None, :], other=0.0)                      # (BLOCK_M, D_CHUNK)
        k = tl.load(K + k_base + dims[:, None] * skd + cols[None, :] * skn,
                    mask=dim_in[:, None] & (cols < Lk)[None, :], other=0.0)                 # (D_CHUNK, N)
        z = _dot(q, k, z, IEEE_FP32, UPCAST_DOT)
    return z


@triton.jit
def _mask_tile(MASK, m_base, rows, row_in, cols, Lk, smm, smn):
    """The (rows, cols) tile of the mask, 0 outside the rows and the Lk keys."""
    tile_in = row_in[:, None] & (cols < Lk)[None, :]
    return tl.load(MASK + m_base + rows[:, None] * smm + cols[None, :] * smn, mask=tile_in, other=0)


@triton.jit
def _masked_scores(z, MASK, m_base, rows, row_in, cols, Lk, smm, smn, score_scale, MASK_KIND: tl.constexpr):
    """The scores ``z`` scaled and masked; returns ``(z, valid)``."""
    z = z * score_scale
    if MASK_KIND == 1:
        z = tl.where(_mask_tile(MASK, m_base, rows, row_in, cols, Lk, smm, smn) != 0, z, float("-inf"))
    elif MASK_KIND == 2:
        z = z + _mask_tile(MASK, m_base, rows, row_in, cols, Lk, smm, smn).to(tl.float32)
    return z, (cols < Lk)[None, :] & (z > float("-inf"))


@triton.jit
def _gap_keys(valid, MASK, m_base, rows, row_in, cols, Lk, smm, smn, MASK_KIND: tl.constexpr):
    """The keys the top gap compares: the valid ones, less those under a padding bias (reloaded here rather than
    kept in registers through the threshold search)."""
    if MASK_KIND == 2:
        return valid & (_mask_tile(MASK, m_base, rows, row_in, cols, Lk, smm, smn).to(tl.float32) > MASKED_BIAS)
    return valid


# A·V over key chunks. Triton cannot slice a register tile, but it can split one in two: (M, N) → (M, 2, N/2) →
# (M, N/2, 2) → two (M, N/2) halves. _times_values halves a tile wider than KEY_CHUNK and recurses on the halves
# (N is a constexpr, so each width is its own specialisation and the recursion ends at KEY_CHUNK).

@triton.jit
def _halves(a, M: tl.constexpr, N: tl.constexpr):
    """(a[:, :N/2], a[:, N/2:]) of an (M, N) tile."""
    return tl.split(tl.permute(tl.reshape(a, (M, 2, N // 2)), (0, 2, 1)))


@triton.jit
def _times_values(a, V, v_base, first, Lk, DV, svn, svd, acc, IEEE_FP32: tl.constexpr, UPCAST_DOT: tl.constexpr,
                  M: tl.constexpr, N: tl.constexpr, BLOCK_DV: tl.constexpr):
    """acc + a · V[first : first + N] for an (M, N) tile of weights, KEY_CHUNK keys at a time (rows of V at or
    past Lk read as 0)."""
    if N <= KEY_CHUNK:
        v = _load_rows(V, v_base, first + tl.arange(0, N), Lk, DV, svn, svd, BLOCK_DV)   # (N, BLOCK_DV)
        acc = _dot(a, v, acc, IEEE_FP32, UPCAST_DOT)
    else:
        a0, a1 = _halves(a, M, N)
        acc = _times_values(a0, V, v_base, first, Lk, DV, svn, svd, acc, IEEE_FP32, UPCAST_DOT, M, N // 2,
                            BLOCK_DV)
        acc = _times_values(a1, V, v_base, first + N // 2, Lk, DV, svn, svd, acc, IEEE_FP32, UPCAST_DOT, M,
                            N // 2, BLOCK_DV)
    return acc


# ln 2: the statistics take logarithms base 2, which the GPU computes in one instruction (fast_log2).
LN_2: tl.constexpr = tl.constexpr(0.6931471805599453)


@triton.jit
def _entropy_terms(w):
    """−w ln w elementwise (0 where w = 0)."""
    return -w * LN_2 * tl.where(w > 0.0, fast_log2(tl.where(w > 0.0, w, 1.0)), 0.0)


@triton.jit
def _weight_stats(w, w_t, cols, cols_t, Lk, tsallis_alpha, HAS_TAIL: tl.constexpr):
    """:data:`MAP_STATS` of one map's weights, per row: a head tile ``w`` and, with HAS_TAIL, a tail ``w_t``
    (columns at or past Lk hold zero weight)."""
    mag = tl.abs(w)
    mag_t = tl.abs(w_t)
    l1 = row_sum(mag, mag_t, HAS_TAIL)
    inv_l1 = 1.0 / tl.maximum(l1, 1e-30)                                                  # zero rows stay zero
    p = mag * inv_l1[:, None]
    p_t = mag_t * inv_l1[:, None]
    entropy = row_sum(_entropy_terms(p), _entropy_terms(p_t), HAS_TAIL)
    power_sum = row_sum(_powers(p, tsallis_alpha), _powers(p_t, tsallis_alpha), HAS_TAIL)
    # Order 1 is the Shannon entropy (the limit); its unused quotient would divide by zero.
    order_one = tsallis_alpha == 1.0
    tsallis = tl.where(order_one, entropy,
                       (1.0 - power_sum) / tl.where(order_one, 1.0, tsallis_alpha * (tsallis_alpha - 1.0)))
    support = row_sum((w != 0.0).to(tl.float32), (w_t != 0.0).to(tl.float32), HAS_TAIL)
    top = row_max(tl.where((cols < Lk)[None, :], w, float("-inf")),
                  tl.where((cols_t < Lk)[None, :], w_t, float("-inf")), HAS_TAIL)
    first = tl.sum(tl.where((cols == 0)[None, :], w, 0.0), axis=1)
    negative = row_sum(tl.where(w < 0.0, -w, 0.0), tl.where(w_t < 0.0, -w_t, 0.0), HAS_TAIL)
    return entropy, tsallis, support, top, first, l1, negative


@triton.jit
def _powers(p, exponent):
    """p ** exponent elementwise for p ≥ 0 (0 where p = 0)."""
    return tl.where(p > 0.0, tl.exp2(exponent * fast_log2(tl.where(p > 0.0, p, 1.0))), 0.0)


@triton.jit
def _store_weight_stats(ptr, row_in, entropy, tsallis, support, top, first, l1, negative):
    """Store one map's :data:`MAP_STATS` at ``ptr`` (one pointer per row) and the six columns after it."""
    tl.store(ptr + 0, entropy, mask=row_in)
    tl.store(ptr + 1, tsallis, mask=row_in)
    tl.store(ptr + 2, support, mask=row_in)
    tl.store(ptr + 3, top, mask=row_in)
    tl.store(ptr + 4, first, mask=row_in)
    tl.store(ptr + 5, l1, mask=row_in)
    tl.store(ptr + 6, negative, mask=row_in)


@triton.jit
def _fused_pladis_fwd_kernel(
        Q, K, V, MASK, OUT, STATS,
        score_scale, alpha, lam, stop_tol, tsallis_alpha,
        H, Lq, Lk, D, DV,
        sqb, sqh, sqm, sqd,
        skb, skh, skn, skd,
        svb, svh, svn, svd,
        smb, smh, smm, smn,
        sob, soh, som, sod,
        ssb, ssh, ssm,
        MASK_KIND: tl.constexpr, NEED_SOFTMAX: tl.constexpr, NEED_ENTMAX: tl.constexpr,
        KIND: tl.constexpr, Q_INT: tl.constexpr, MAX_ITER: tl.constexpr, START_RANKS: tl.constexpr,
        WITH_STATS: tl.constexpr,
        IEEE_FP32: tl.constexpr, UPCAST_DOT: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_TAIL: tl.constexpr, BLOCK_T: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, D_CHUNK: tl.constexpr):
    """Scores → softmax and α-entmax → PLADIS mix → ·V for one block of BLOCK_M queries of one (batch, head).

    Keys: a head block of BLOCK_N and, with HAS_TAIL, a tail block of BLOCK_T after it (powers of two: 77 keys
    are 64 + 16 columns instead of 128, 300 keys 256 + 64 instead of 512).
    """
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    # 64-bit offsets: b·stride can pass 2³¹ for large batches even when every stride fits in 32 bits.
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    cols_t = BLOCK_N + tl.arange(0, BLOCK_T)
    row_in = rows < Lq
    m_base = b * smb + h * smh
    q_base = b * sqb + h * sqh
    k_base = b * skb + h * skh
    z = _raw_scores(Q, q_base, K, k_base, rows, row_in, cols, Lk, D, sqm, sqd, skn, skd, IEEE_FP32, UPCAST_DOT,
                    BLOCK_M, BLOCK_N, BLOCK_D, D_CHUNK)                                      # (BLOCK_M, BLOCK_N)
    z, valid = _masked_scores(z, MASK, m_base, rows, row_in, cols, Lk, smm, smn, score_scale, MASK_KIND)
    if HAS_TAIL:
        z_t = _raw_scores(Q, q_base, K, k_base, rows, row_in, cols_t, Lk, D, sqm, sqd, skn, skd, IEEE_FP32,
                          UPCAST_DOT, BLOCK_M, BLOCK_T, BLOCK_D, D_CHUNK)                    # (BLOCK_M, BLOCK_T)
        z_t, valid_t = _masked_scores(z_t, MASK, m_base, rows, row_in, cols_t, Lk, smm, smn, score_scale,
                                      MASK_KIND)
    else:
        z_t = z
        valid_t = valid
        cols_t = cols                                           # the tail tiles alias the head tiles, never used
    # NaN is no valid score (`z > −inf` is False for it), so the maps would leave that key out; a query whose
    # scores hold one gets a NaN output instead, as the torch path's ValueError and the dispatch's promise want
    n_nan = row_sum((z != z).to(tl.float32), (z_t != z_t).to(tl.float32), HAS_TAIL)
    log2e = 1.4426950408889634

    if NEED_ENTMAX:
        # zp = (α−1)(z − max z), −inf off the valid entries; z itself is dead from here (fewer live registers
        # through the threshold search), and softmax comes from zp: exp(z − max z) = exp2(zp · log2(e)/(α−1)).
        e_w, shifted, e_w_t, shifted_t, _ = entmax_rows(z, valid, z_t, valid_t, alpha, stop_tol, KIND, Q_INT,
                                                        MAX_ITER, HAS_TAIL, START_RANKS)
        to_log2 = log2e / (alpha - 1.0)
    else:
        zmax = row_max(tl.where(valid, z, float("-inf")), tl.where(valid_t, z_t, float("-inf")), HAS_TAIL)
        zmax = tl.where(zmax > float("-inf"), zmax, 0.0)                                     # all-masked rows
        shifted = tl.where(valid, z - zmax[:, None], float("-inf"))
        shifted_t = tl.where(valid_t, z_t - zmax[:, None], float("-inf"))
        to_log2 = log2e
    if NEED_SOFTMAX:
        expo = tl.exp2(shifted * to_log2)                                                    # 0 off the valid entries
        expo_t = tl.exp2(shifted_t * to_log2)
        inv_sum = 1.0 / tl.maximum(row_sum(expo, expo_t, HAS_TAIL), 1e-30)                 # zero rows stay zero
    if NEED_SOFTMAX and NEED_ENTMAX:
        # A = S + λ(E − S) = (1 − λ) S + λ E, with S = expo / Σ expo folded into one per-row coefficient.
        coef = (1.0 - lam) * inv_sum
        a = expo * coef[:, None] + lam * e_w
        a_t = expo_t * coef[:, None] + lam * e_w_t
    elif NEED_ENTMAX:
        a = e_w
        a_t = e_w_t
    else:
        a = expo * inv_sum[:, None]
        a_t = expo_t * inv_sum[:, None]

    v_base = b * svb + h * svh
    out = tl.zeros((BLOCK_M, BLOCK_DV), dtype=tl.float32)
    out = _times_values(a, V, v_base, 0, Lk, DV, svn, svd, out, IEEE_FP32, UPCAST_DOT, BLOCK_M, BLOCK_N, BLOCK_DV)
    if HAS_TAIL:
        out = _times_values(a_t, V, v_base, BLOCK_N, Lk, DV, svn, svd, out, IEEE_FP32, UPCAST_DOT, BLOCK_M, BLOCK_T,
                            BLOCK_DV)
    out = tl.where(n_nan[:, None] > 0.0, float("nan"), out)
    offs_dv = tl.arange(0, BLOCK_DV)
    tl.store(OUT + b * sob + h * soh + rows[:, None] * som + offs_dv[None, :] * sod,
             out.to(OUT.dtype.element_ty), mask=row_in[:, None] & (offs_dv[None, :] < DV))

    if WITH_STATS:
        # WITH_STATS implies both maps were computed (the host sets NEED_SOFTMAX = NEED_ENTMAX = True).
        base = STATS + b * ssb + h * ssh + rows * ssm
        e0, e1, e2, e3, e4, e5, e6 = _weight_stats(expo * inv_sum[:, None], expo_t * inv_sum[:, None], cols,
                                                   cols_t, Lk, tsallis_alpha, HAS_TAIL)
        _store_weight_stats(base, row_in, e0, e1, e2, e3, e4, e5, e6)
        e0, e1, e2, e3, e4, e5, e6 = _weight_stats(e_w, e_w_t, cols, cols_t, Lk, tsallis_alpha, HAS_TAIL)
        _store_weight_stats(base + _N_MAP_STATS, row_in, e0, e1, e2, e3, e4, e5, e6)
        e0, e1, e2, e3, e4, e5, e6 = _weight_stats(a, a_t, cols, cols_t, Lk, tsallis_alpha, HAS_TAIL)
        _store_weight_stats(base + 2 * _N_MAP_STATS, row_in, e0, e1, e2, e3, e4, e5, e6)
        # The top gap in score units from the shifted scores, over the keys no mask or padding bias removes (the
        # largest of those is the row's maximum, shifted to 0, unless a biased key outscores them all).
        gk = _gap_keys(valid, MASK, m_base, rows, row_in, cols, Lk, smm, smn, MASK_KIND)
        if HAS_TAIL:
            gk_t = _gap_keys(valid_t, MASK, m_base, rows, row_in, cols_t, Lk, smm, smn, MASK_KIND)
        else:
            gk_t = gk
        top = row_max(tl.where(gk, shifted, float("-inf")), tl.where(gk_t, shifted_t, float("-inf")), HAS_TAIL)
        n_at_top = row_sum((gk & (shifted == top[:, None])).to(tl.float32),
                           (gk_t & (shifted_t == top[:, None])).to(tl.float32), HAS_TAIL)
        second = row_max(tl.where(gk & (shifted < top[:, None]), shifted, float("-inf")),
                          tl.where(gk_t & (shifted_t < top[:, None]), shifted_t, float("-inf")), HAS_TAIL)
        n_counted = row_sum(gk.to(tl.float32), gk_t.to(tl.float32), HAS_TAIL)
        top = tl.where(n_counted > 0.0, top, 0.0)                          # no −inf − (−inf) on key-less rows
        gap = tl.where(n_at_top > 1.0, 0.0, (top - second) / (alpha - 1.0))  # a tie at the top is a zero gap
        gap = tl.where(n_counted > 1.0, gap, float("inf"))
        tl.store(base + 3 * _N_MAP_STATS, gap, mask=row_in)


_AUTOTUNED: dict[tuple[int, bool], object] = {}
# (BLOCK_M, num_warps, maxnreg) the autotuner chose, per launch key: later calls launch the kernel directly
# with it, since the autotuner's per-call bookkeeping costs host time comparable to the kernel at diffusion
# shapes.
_TUNED: dict[tuple, tuple[int, int, int | None]] = {}
# What the autotuner measured for every candidate, per launch key: {(BLOCK_M, num_warps, maxnreg): median ms}
# (inf for a candidate that failed to build or launch). Benchmarks record it, so one GPU run says how each launch
# shape fares, not only which one won.
_TUNING_MS: dict[tuple, dict[tuple[int, int, int | None], float]] = {}


def _autotuned_kernel(n_cols: int):
    """The kernel wrapped in ``triton.autotune`` over queries per block, warps and a register cap
    (:func:`launch_candidates`), for one padded key count.

    Only used on CUDA (set ``PLADIS_TRITON_AUTOTUNE=0`` to use the fixed heuristic instead); each candidate is
    one compile (a few seconds). The kernel only writes its outputs, so re-running it while tuning is harmless.
    """
    key = (n_cols, register_cap_enabled())
    if key not in _AUTOTUNED:
        # A Triton without register caps in its configs (older than 3.0) gets the uncapped candidates only.
        caps_supported = "maxnreg" in inspect.signature(triton.Config).parameters
        configs = [triton.Config({"BLOCK_M": bm}, num_warps=w, num_stages=1, **({"maxnreg": cap} if cap else {}))
                   for bm, w, cap in launch_candidates(n_cols) if cap is None or caps_supported]
        _AUTOTUNED[key] = triton.autotune(
            configs=configs,
            key=["Lq", "Lk", "D", "DV", "MASK_KIND", "NEED_SOFTMAX", "NEED_ENTMAX", "KIND", "Q_INT",
                 "WITH_STATS"],
        )(_fused_pladis_fwd_kernel)
    return _AUTOTUNED[key]


# ptxas gives these kernels more registers than they need when it may (165–168 per thread at SD's shape with
# 64 queries on 8 warps, for α = 1.25 and 2): capped at 128 the same code compiles without spills and twice as
# many warps fit on an SM. At SANA's 300 keys a cap spills 424–2504 bytes per thread, except with 16 queries on 8
# warps, which need 128–158 registers uncapped anyway (results/kernel_resources.csv); so the capped candidates
# are for short key rows only. Which is faster is the autotuner's measurement, and no GPU has made it yet: the
# capped candidates are opt-in (PLADIS_TRITON_REGISTER_CAP=1; scripts/gpu_check.sh sets it) until one does, since
# they double the autotuner's compiles on first use.
REGISTER_CAP = 128


def register_cap_enabled() -> bool:
    """Whether the autotuner also tries register-capped launches (``PLADIS_TRITON_REGISTER_CAP=1``)."""
    return os.environ.get("PLADIS_TRITON_REGISTER_CAP", "0") == "1"


# On sm_90 Triton turns a dot into Hopper's warpgroup MMA (wgmma, SASS HGMMA) only for tiles of at least 64
# rows; blocks of 16 or 32 queries use the per-warp MMA of earlier GPUs (mma.sync, HMMA), and each re-reads all
# keys and values for fewer queries. Every launch the autotuner tried at SANA's 300 keys was such a block
# (its H100 choice: 32 queries on 4 warps, a1ae08b), while at 77 keys it chose 64 (wgmma), where the softmax
# skeleton ran at SDPA's speed. So long key rows also get 64-query launches. At 300 keys on 8 warps they take
# 198–255 registers per thread and spill 0–192 bytes for softmax and α ≤ 2 (none at α = 1.5 and 2 under either
# Triton); on 16 warps the register file caps them at 128 per thread and they spill 0–216 bytes
# (results/kernel_resources.csv, its tensor_core_path column). Which launch is fastest is the autotuner's
# measurement. At 512 columns 64-query launches spill even the softmax skeleton (hundreds of bytes per thread,
# tests/test_kernels_compile.py), so none is tried there.
WGMMA_MIN_ROWS = 64


def launch_shapes(n_cols: int) -> list[tuple[int, int]]:
    """The (BLOCK_M, num_warps) the autotuner tries for ``n_cols`` padded key columns: two query-block sizes
    that keep the score tiles at 2k–8k floats, times 4 or 8 warps; for ≤ 96 columns also 128 queries on 8
    warps, and for 129–320 columns also 64 queries on 8 and 16 warps (the smallest blocks that use sm_90's
    warpgroup MMA, see :data:`WGMMA_MIN_ROWS`)."""
    sizes = (32, 64) if n_cols <= 128 else (16, 32)
    shapes = [(bm, w) for bm in sizes for w in (4, 8)]
    if n_cols <= 96:  # 77 keys as 64 + 16 columns: a 128-query tile still fits 8 warps' registers (sm_90)
        shapes.append((128, 8))
    elif 128 < n_cols <= 320:
        shapes += [(WGMMA_MIN_ROWS, 8), (WGMMA_MIN_ROWS, 16)]
    return shapes


def launch_candidates(n_cols: int, register_cap: bool | None = None) -> list[tuple[int, int, int | None]]:
    """The (BLOCK_M, num_warps, maxnreg) the autotuner tries: each of :func:`launch_shapes` with ptxas's own
    register count and, for ≤ 128 key columns when ``register_cap`` (default: :func:`register_cap_enabled`),
    capped at :data:`REGISTER_CAP`."""
    register_cap = register_cap_enabled() if register_cap is None else register_cap
    caps = (None, REGISTER_CAP) if n_cols <= 128 and register_cap else (None,)
    return [(bm, w, cap) for bm, w in launch_shapes(n_cols) for cap in caps]


def tuned_launch_configs() -> list[dict]:
    """The launch configurations the autotuner chose in this process, one dict per launch key (for benchmark
    provenance: which query-block size, warp count and register cap each shape ran with), each with
    ``candidates``: every configuration it measured and its median time in ms (inf: failed)."""
    names = ("dtype", "Lq", "Lk", "D", "DV", "MASK_KIND", "NEED_SOFTMAX", "NEED_ENTMAX", "KIND", "Q_INT",
             "WITH_STATS")
    return [{**dict(zip(names, (str(key[0]).replace("torch.", ""), *key[1:]))), "BLOCK_M": bm, "num_warps": w,
             "maxnreg": cap,
             "candidates": [{"BLOCK_M": c_bm, "num_warps": c_w, "maxnreg": c_cap, "median_ms": ms}
                            for (c_bm, c_w, c_cap), ms in _TUNING_MS.get(key, {}).items()]}
            for key, (bm, w, cap) in _TUNED.items()]


def candidate_timings(tuner) -> dict[tuple[int, int, int | None], float]:
    """{(BLOCK_M, num_warps, maxnreg): median ms} of the configurations ``tuner`` (a ``triton.autotune`` object)
    measured in its last tuning; empty when it kept none (another Triton's bookkeeping). Triton records each
    configuration's (median, 20th, 80th percentile), or inf when it failed."""
    found = {}
    for config, times in (getattr(tuner, "configs_timings", None) or {}).items():
        kwargs = getattr(config, "kwargs", None)
        if not isinstance(kwargs, dict) or "BLOCK_M" not in kwargs:
            return {}
        median = times[0] if isinstance(times, (list, tuple)) else times
        found[(kwargs["BLOCK_M"], config.num_warps, getattr(config, "maxnreg", None))] = float(median)
    return found


def _use_autotune(device: torch.device) -> bool:
    return device.type == "cuda" and os.environ.get("PLADIS_TRITON_AUTOTUNE", "1") != "0"


def padded_keys(meta: dict) -> int:
    """Key columns the kernel computes for the constexprs ``meta`` (head block plus tail block)."""
    return meta["BLOCK_N"] + (meta["BLOCK_T"] if meta["HAS_TAIL"] else 0)


def default_launch(meta: dict) -> tuple[int, int, int | None]:
    """(BLOCK_M, num_warps, maxnreg) without the autotuner, for the constexprs ``meta`` (no register cap)."""
    n_cols = padded_keys(meta)
    block_m = _block_m(n_cols, max(meta["BLOCK_D"], meta["BLOCK_DV"]))
    return block_m, _num_warps(block_m, n_cols), None


def _block_m(n_cols: int, block_d: int) -> int:
    """Queries per program: the (BLOCK_M, n_cols) score tiles and their temporaries must stay in registers."""
    budget = 8192 if block_d <= 64 else 4096
    rows = budget // n_cols
    return max(16, min(64, 1 << (rows.bit_length() - 1) if rows > 0 else 1))   # a power of two


def _num_warps(block_m: int, n_cols: int) -> int:
    return 4 if block_m * n_cols <= 4096 else 8


def kernel_constexprs(dtype: torch.dtype, lk: int, d: int, dv: int, *, alpha: float, mask_kind: int,
                      need_softmax: bool, need_entmax: bool, with_stats: bool, on_cuda: bool = True) -> dict:
    """The kernel's compile-time arguments for one call signature, all but the launch shape (``BLOCK_M``,
    ``num_warps``). ``mask_kind``: 0 none, 1 boolean, 2 additive."""
    kind, q_int = alpha_flavour(alpha) if need_entmax else (KIND_NEWTON, 2)
    block_n, block_t = split_blocks(lk)
    return dict(MASK_KIND=mask_kind, NEED_SOFTMAX=need_softmax, NEED_ENTMAX=need_entmax,
                KIND=kind, Q_INT=q_int, MAX_ITER=max_iterations(kind),
                # a function of α like Q_INT (so not an autotuning key of its own)
                START_RANKS=default_start_ranks(alpha) if need_entmax else 1,
                WITH_STATS=with_stats, IEEE_FP32=dtype == torch.float32,
                # The CPU interpreter multiplies bfloat16 tiles as raw integers; upcast there (GPUs use
                # tensor cores).
                UPCAST_DOT=not on_cuda,
                BLOCK_N=block_n, HAS_TAIL=block_t > 0, BLOCK_T=max(block_t, 16),
                BLOCK_D=block_size(d), BLOCK_DV=block_size(dv), D_CHUNK=min(block_size(d), HEAD_DIM_CHUNK))


def _to_4d(x: torch.Tensor, name: str) -> torch.Tensor:
    """[..., L, d] → (B, H, L, d) as a view when possible: no leading dims → (1, 1), one → (B, 1), more → flattened."""
    if x.dim() < 2:
        raise ValueError(f"{name} must have at least 2 dims [..., L, d], got shape {tuple(x.shape)}")
    if x.dim() == 2:
        return x[None, None]
    if x.dim() == 3:
        return x[:, None]
    if x.dim() == 4:
        return x
    return x.reshape(-1, *x.shape[-3:])                                                      # (B·…, H, L, d)


def _mask_4d(attn_mask: torch.Tensor, lead: tuple[int, ...], lq: int, lk: int) -> tuple[torch.Tensor, int]:
    """Broadcast ``attn_mask`` to (*lead, Lq, Lk) without copying, then to (B, H, Lq, Lk); returns (mask, kind)."""
    if attn_mask.dtype == torch.bool:
        kind = _MASK_BOOL
        attn_mask = attn_mask.view(torch.uint8)  # same bytes; Triton loads uint8 cleanly everywhere
    elif attn_mask.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        kind = _MASK_ADDITIVE
        if attn_mask.dtype == torch.float64:
            attn_mask = attn_mask.to(torch.float32)
    else:
        raise ValueError(f"attn_mask.dtype={attn_mask.dtype}: expected torch.bool or a floating dtype")
    try:
        full = attn_mask.expand(*lead, lq, lk)                                               # (*lead, Lq, Lk), stride 0 where broadcast
    except RuntimeError:
        raise ValueError(f"attn_mask shape {tuple(attn_mask.shape)} does not broadcast to "
                         f"{(*lead, lq, lk)}") from None
    return _to_4d(full, "attn_mask"), kind


def fused_attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, pladis_scale: float,
                            alpha: float, attn_mask: torch.Tensor | None = None,
                            score_scale: float | None = None, need_softmax: bool = True,
                            need_entmax: bool = True, return_stats: bool = False, stop_tol: float | None = None,
                            tsallis_alpha: float = 1.5):
    """Launch the fused kernel (no autograd). Returns ``out`` or ``(out, stats)``.

    ``q``: [..., Lq, d], ``k``: [..., Lk, d], ``v``: [..., Lk, dv] with the same leading dims (k/v may
    broadcast over them); ``attn_mask`` broadcastable to [..., Lq, Lk]. ``stats``: [..., Lq, len(STAT_NAMES)]
    float32. ``stop_tol``: the threshold search's ℓ1 stopping tolerance (default :func:`stop_tolerance` of the
    dtype, of float32 with ``return_stats``; 0 stops on step size only, as the benchmark's ``triton_step_rule``
    does). ``tsallis_alpha``: the order of the Tsallis entropies among the statistics.
    """
    params = (pladis_scale, alpha, score_scale, need_softmax or return_stats, need_entmax or return_stats,
              return_stats, stop_tol, tsallis_alpha)
    key = _call_key(q, k, v, attn_mask, params) if not _CALL_PLANS_SET or _CALL_PLANS_SET[-1] else None
    if key is None:
        # No plan kept (inputs whose 4-D views or mask are copies, or call_plans(False)): derive everything and
        # launch on the views.
        call, views, outputs = _CallPlan.derive(q, k, v, attn_mask, params)
        return call.launch(*views, outputs=outputs)
    plan_key = _plan_key(q, k, v, attn_mask, key)
    if plan_key is not None:
        plan = _PLANS.get(plan_key)
        if plan is not None:
            try:
                return plan.launch(q, k, v, attn_mask)
            except (TypeError, AttributeError, ValueError, IndexError, KeyError) as exc:  # another launcher API
                _disable_plans(f"{type(exc).__name__}: {exc}")
                plan_key = None
    call, outputs = _CALLS.get(key), None
    if call is None:
        call, _, outputs = _CallPlan.derive(q, k, v, attn_mask, params)
        if len(_CALLS) >= 4096:  # a bound, not a policy: a session sees few signatures
            _CALLS.clear()
        _CALLS[key] = call
    return call.launch(q, k, v, call.mask_pointer(attn_mask), plan_key, outputs)


# --------------------------------------------------------------------------------------------------
# Call plans: what a call signature derives on the host, derived once
# --------------------------------------------------------------------------------------------------
# A diffusion model makes the same few cross-attention calls thousands of times, and deriving the 4-D views,
# strides, block sizes and compile-time arguments from the tensors took about half of the ~60 µs of host time
# per call on an H100 machine (results/gpu_logs/launch_profile_h100_run2.txt). A call plan holds all of it per
# call signature: the shapes, strides, dtypes and device of q, k, v and the mask, and every scalar argument
# (not the data pointers, and not their alignment, which Triton's launcher reads itself). The kernel reads q,
# k, v through explicit strides, so a caller's ≤ 4-D tensor and its 4-D view are interchangeable as pointers;
# inputs whose views would be copies (more than 4 dims, a float64 mask, a mask on another device) derive a
# plan per call instead. Settings read when a signature is first seen: PLADIS_TRITON_AUTOTUNE.

_CALLS: dict[tuple, "_CallPlan"] = {}
_CALL_PLANS_SET: list[bool] = []   # innermost call_plans(...) setting (empty: on)


@contextlib.contextmanager
def call_plans(enabled: bool = True):
    """Inside the block, calls derive their plan every time (``enabled=False``: the host-overhead benchmark's
    baseline) or use the kept plans (the default)."""
    _CALL_PLANS_SET.append(bool(enabled))
    try:
        yield
    finally:
        _CALL_PLANS_SET.pop()


def _call_key(q, k, v, attn_mask, params) -> tuple | None:
    """The signature a call plan is kept under, or ``None`` when the call must derive its own."""
    if max(q.dim(), k.dim(), v.dim()) > 4:
        return None
    mask_sig = None
    if attn_mask is not None:
        if attn_mask.dim() > 4 or attn_mask.dtype == torch.float64 or attn_mask.device != q.device:
            return None
        mask_sig = (attn_mask.shape, attn_mask.stride(), attn_mask.dtype)
    return (q.shape, q.stride(), k.shape, k.stride(), v.shape, v.stride(), q.dtype, k.dtype, v.dtype, q.device,
            mask_sig, params)


class _CallPlan:
    """Everything one call signature derives on the host: checks, output layout, kernel arguments but the
    pointers, compile-time arguments, launch shape. It holds no tensor (plans are kept for the process)."""

    @classmethod
    def derive(cls, q, k, v, attn_mask, params) -> tuple["_CallPlan", tuple, tuple]:
        """The plan of this call, the 4-D views (q, k, v, mask) it was derived on, and this call's outputs (the
        plan reads their strides)."""
        plan = cls.__new__(cls)
        views, outputs = plan._derive(q, k, v, attn_mask, params)
        return plan, views, outputs

    def _derive(self, q, k, v, attn_mask, params) -> tuple:
        (pladis_scale, alpha, score_scale, need_softmax, need_entmax, return_stats, stop_tol,
         tsallis_alpha) = params
        if not (q.dtype == k.dtype == v.dtype) or q.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"q/k/v dtypes {q.dtype}/{k.dtype}/{v.dtype}: the kernel needs one dtype among "
                             f"{[str(d) for d in SUPPORTED_DTYPES]}")
        lq, d = q.shape[-2:]
        lk, dv = v.shape[-2:]
        if k.shape[-1] != d or k.shape[-2] != lk:
            raise ValueError(f"k shape {tuple(k.shape)} does not match q {tuple(q.shape)} / v {tuple(v.shape)}")
        if lk > MAX_KEYS or d > MAX_HEAD_DIM or dv > MAX_HEAD_DIM:
            raise ValueError(f"Lk={lk}, d={d}, dv={dv}: the kernel holds at most {MAX_KEYS} keys and head dims "
                             f"≤ {MAX_HEAD_DIM} in registers")
        lead = broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
        q4 = _to_4d(q.expand(*lead, lq, d), "q")                                             # (B, H, Lq, d)
        k4 = _to_4d(k.expand(*lead, lk, d), "k")                                             # (B, H, Lk, d)
        v4 = _to_4d(v.expand(*lead, lk, dv), "v")                                            # (B, H, Lk, dv)
        nb, nh = q4.shape[:2]
        self.dtype, self.device = q.dtype, q.device
        # q as attention processors make it, a head-split view of (B, Lq, H·d): the output is written in that
        # layout too, so that merging the heads back (transpose + reshape) is a view, not a copy (SDPA does so).
        self.head_split = writes_heads_interleaved(q, lead)
        self.out_shape = (nb, lq, nh, dv) if self.head_split else (*lead, lq, dv)
        self.stats_shape = (*lead, lq, len(STAT_NAMES)) if return_stats else None
        out, stats = self.outputs()
        o4 = _to_4d(out, "out")
        if attn_mask is not None:
            m4, self.mask_kind = _mask_4d(attn_mask.to(q.device), tuple(lead), lq, lk)
            mask_strides = m4.stride()
        else:
            m4, self.mask_kind, mask_strides = q4, _MASK_NONE, (0, 0, 0, 0)   # dummy pointer, never read
        stats_strides = _to_4d(stats, "stats").stride()[:3] if return_stats else (0, 0, 0)
        # Statistics are float32 numbers whatever the inputs: the search that feeds them stops at float32's
        # tolerance, or a bfloat16 call's entmax entropies would be off by up to ~10⁻⁴ (2⁻¹² in ℓ1).
        search_dtype = torch.float32 if return_stats else q.dtype
        self.tail_args = (1.0 / math.sqrt(d) if score_scale is None else float(score_scale), float(alpha),
                          float(pladis_scale), stop_tolerance(search_dtype, stop_tol), float(tsallis_alpha),
                          nh, lq, lk, d, dv,
                          *q4.stride(), *k4.stride(), *v4.stride(), *mask_strides, *o4.stride(), *stats_strides)
        self.meta = kernel_constexprs(q.dtype, lk, d, dv, alpha=alpha, mask_kind=self.mask_kind,
                                      need_softmax=need_softmax, need_entmax=need_entmax, with_stats=return_stats,
                                      on_cuda=q.is_cuda)
        self.rows, self.programs = lq, nb * nh
        self.n_cols = padded_keys(self.meta)
        self.default = default_launch(self.meta)
        self.build_key = (str(q.dtype), *sorted(self.meta.items()))   # what the compiled variant depends on
        self.autotune = _use_autotune(q.device)
        self.tune_key = (q.dtype, lq, lk, d, dv, self.mask_kind, need_softmax, need_entmax, self.meta["KIND"],
                         self.meta["Q_INT"], return_stats)
        self._direct: dict[tuple, tuple] = {}
        return (q4, k4, v4, m4), (out, stats)

    def outputs(self):
        """Fresh ``(out, stats)`` in this signature's layout (``stats`` None without statistics)."""
        out = torch.empty(self.out_shape, dtype=self.dtype, device=self.device)
        if self.head_split:
            out = out.transpose(1, 2)                                                        # (B, H, Lq, dv)
        stats = None
        if self.stats_shape is not None:
            stats = torch.empty(self.stats_shape, dtype=torch.float32, device=self.device)
        return out, stats

    def mask_pointer(self, attn_mask: torch.Tensor | None) -> torch.Tensor | None:
        """The caller's mask as the kernel reads it (a boolean mask as the same bytes in uint8)."""
        if attn_mask is None or self.mask_kind != _MASK_BOOL:
            return attn_mask
        return attn_mask.view(torch.uint8)

    def launch(self, q, k, v, mask, plan_key=None, outputs=None):
        """Run the kernel on pointers ``q``, ``k``, ``v``, ``mask`` (tensors with this plan's strides, or views
        sharing their data) into ``outputs`` (fresh ones by default); returns ``out`` or ``(out, stats)``."""
        out, stats = outputs or self.outputs()
        if self.rows * self.programs == 0:
            return (out, stats) if stats is not None else out
        args = (q, k, v, q if mask is None else mask, out, out if stats is None else stats, *self.tail_args)
        block_m, num_warps, maxnreg = self.default
        if self.autotune:
            tuned = _TUNED.get(self.tune_key)
            if tuned is None:
                tuner = _autotuned_kernel(self.n_cols)
                tuner.configs_timings = None          # what this tuning measures, not a previous key's
                rows = self.rows
                with launching("fused cross-attention", (*self.build_key, "autotuned"), q.device):
                    tuner[lambda m: (cdiv(rows, m["BLOCK_M"]), self.programs)](*args, **self.meta)
                best = getattr(tuner, "best_config", None)
                if best is not None:
                    _TUNED[self.tune_key] = (best.kwargs["BLOCK_M"], best.num_warps, getattr(best, "maxnreg", None))
                    _TUNING_MS[self.tune_key] = candidate_timings(tuner)
                return (out, stats) if stats is not None else out
            block_m, num_warps, maxnreg = tuned
        shape = (block_m, num_warps, maxnreg)
        direct = self._direct.get(shape)
        if direct is None:   # grid, launch keywords and build signature of this launch shape, built once
            cap = {} if maxnreg is None else {"maxnreg": maxnreg}
            direct = self._direct[shape] = ((cdiv(self.rows, block_m), self.programs),
                                            {**self.meta, "BLOCK_M": block_m, "num_warps": num_warps,
                                             "num_stages": 1, **cap}, (*self.build_key, *shape))
        grid, keywords, signature = direct
        with launching("fused cross-attention", signature, q.device):
            compiled = _fused_pladis_fwd_kernel[grid](*args, **keywords)
        if plan_key is not None and compiled is not None:
            constexprs = {**self.meta, "BLOCK_M": block_m}
            try:
                plan = _Plan(compiled, grid, self, tuple(constexprs[n] for n in _CONSTEXPR_NAMES))
            except (TypeError, AttributeError, IndexError, KeyError) as exc:  # no CompiledKernel[grid] here
                _disable_plans(f"{type(exc).__name__}: {exc}")
            else:
                _remember_plan(plan_key, plan)
        return (out, stats) if stats is not None else out


# --------------------------------------------------------------------------------------------------
# Launch plans: repeated calls of one signature skip the host-side work
# --------------------------------------------------------------------------------------------------
# After the call plan, Triton's launcher still re-derives, on every call, the specialisation of all ~40 kernel
# arguments (integers equal to 1 or divisible by 16, 16-byte-aligned pointers) to find the compiled variant:
# the other half of the ~60 µs of host time per call on an H100 machine, more than the kernel itself at SD/SDXL
# shapes. A launch plan keeps, per call signature (the call plan's, and the 16-byte alignment of each input
# pointer: with it, exactly what selects the compiled variant), the compiled kernel and every argument except
# the data pointers, and launches it directly. Only on CUDA, for calls that have a call plan.
#
# Opt-in (``PLADIS_TRITON_PLANS=1``) until a GPU run validates it: it launches through Triton's
# ``CompiledKernel[grid](*args)``, whose argument conventions are Triton's internals, and the one GPU run it had
# (Triton 3.6) found a grid of two sizes where that runner reads three (fixed since, not re-run).
# tests/test_kernels.py::test_fused_attention_launch_plans_repeat_the_first_call checks it on CUDA. Any
# exception from that launcher turns plans off for the process (logged) and the call takes Triton's own.

_PLANS: dict[tuple, "_Plan"] = {}
_CONSTEXPR_NAMES = tuple(name for name, param in inspect.signature(_fused_pladis_fwd_kernel.fn).parameters.items()
                         if str(param.annotation).endswith("constexpr"))


_PLANS_DISABLED: list[str] = []   # why plans were turned off in this process (empty: they are on)
_PLANS_FORCED: list[bool] = []    # innermost launch_plans(...) setting, overriding the environment


def _plans_enabled() -> bool:
    if _PLANS_DISABLED:
        return False
    if _PLANS_FORCED:
        return _PLANS_FORCED[-1]
    return os.environ.get("PLADIS_TRITON_PLANS", "0") == "1"


@contextlib.contextmanager
def launch_plans(enabled: bool = True):
    """Turn launch plans on (or off) inside the block, whatever ``PLADIS_TRITON_PLANS`` says (benchmarks compare
    both in one process). Plans turned off by a launcher error stay off."""
    _PLANS_FORCED.append(bool(enabled))
    try:
        yield
    finally:
        _PLANS_FORCED.pop()


def _disable_plans(reason: str) -> None:
    logger.warning("launch plans disabled, every call takes Triton's own launcher: %s", reason)
    _PLANS.clear()
    _PLANS_DISABLED.append(reason)


def launch_plan_status() -> dict:
    """How many launch plans this process holds and, if they were turned off, why (benchmark provenance)."""
    return {"plans": len(_PLANS), "disabled_because": _PLANS_DISABLED[0] if _PLANS_DISABLED else "",
            "opted_in": os.environ.get("PLADIS_TRITON_PLANS", "0") == "1"}


def _plan_key(q, k, v, attn_mask, call_key):
    """The signature of a call that a launch plan can serve (its call plan's key and the 16-byte alignment of
    each pointer, which selects the compiled variant), or ``None`` when this call takes Triton's launcher."""
    if not q.is_cuda or not _plans_enabled():
        return None
    mask_aligned = None if attn_mask is None else attn_mask.data_ptr() % 16 == 0
    return (call_key, q.data_ptr() % 16 == 0, k.data_ptr() % 16 == 0, v.data_ptr() % 16 == 0, mask_aligned)


class _Plan:
    """A compiled kernel and all its arguments except the data pointers of q, k, v, the mask, out and stats."""

    def __init__(self, compiled, grid, call: _CallPlan, constexpr_args: tuple):
        self.runner = compiled[(*grid, 1)]  # CompiledKernel's runner reads three grid sizes
        self.call = call
        self.tail_args = (*call.tail_args, *constexpr_args)

    def launch(self, q, k, v, attn_mask):
        out, stats = self.call.outputs()
        mask = q if attn_mask is None else self.call.mask_pointer(attn_mask)                # q: never read
        self.runner(q, k, v, mask, out, out if stats is None else stats, *self.tail_args)
        return out if stats is None else (out, stats)


def _remember_plan(key, plan: _Plan) -> None:
    if len(_PLANS) >= 4096:  # a bound, not a policy: a session sees few signatures
        _PLANS.clear()
    _PLANS[key] = plan


def torch_recompute(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, pladis_scale: float, alpha: float,
                    attn_mask: torch.Tensor | None, score_scale: float | None) -> torch.Tensor:
    """The same computation through the torch maps, in float32: the backward pass differentiates this.

    Rows whose keys are all masked are given finite dummy scores and then zero weights, matching the kernel.
    """
    from pladis_analysis import maps  # same layer (maps); imported late so that maps can import the kernels

    d = q.shape[-1]
    scale = 1.0 / math.sqrt(d) if score_scale is None else score_scale
    z = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale                         # (..., Lq, Lk)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            z = z.masked_fill(~attn_mask, float("-inf"))
        else:
            z = z + attn_mask.float()
    row_ok = torch.isfinite(z).any(dim=-1, keepdim=True)                                    # (..., Lq, 1)
    z = torch.where(row_ok, z, torch.zeros_like(z))
    if pladis_scale == 0.0:
        a = torch.softmax(z, dim=-1)
    elif pladis_scale == 1.0:
        a = maps.entmax(z, alpha, dim=-1)
    else:
        a = maps.pladis_weights(z, scale=pladis_scale, alpha=alpha, dim=-1)
    a = a * row_ok
    return torch.matmul(a, v.float()).to(q.dtype)


class FusedPladisAttention(torch.autograd.Function):
    """Forward: the fused kernel. Backward: autograd through :func:`torch_recompute` (the torch maps)."""

    @staticmethod
    def forward(ctx, q, k, v, attn_mask, pladis_scale, alpha, score_scale):
        ctx.save_for_backward(q, k, v, attn_mask)
        ctx.params = dict(pladis_scale=pladis_scale, alpha=alpha, score_scale=score_scale)
        return fused_attention_forward(q, k, v, pladis_scale=pladis_scale, alpha=alpha, attn_mask=attn_mask,
                                       score_scale=score_scale, need_softmax=pladis_scale != 1.0,
                                       need_entmax=pladis_scale != 0.0)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, attn_mask = ctx.saved_tensors
        create_graph = torch.is_grad_enabled()  # differentiable in grad_out then, as the torch path's backward
        with torch.enable_grad():
            inputs = [t.detach().requires_grad_(need) for t, need in zip((q, k, v), ctx.needs_input_grad[:3])]
            out = torch_recompute(*inputs, attn_mask=attn_mask, **ctx.params)
            wanted = [t for t in inputs if t.requires_grad]
            grads = (iter(torch.autograd.grad(out, wanted, grad_out, create_graph=create_graph)) if wanted
                     else iter(()))
        result = [next(grads) if t.requires_grad else None for t in inputs]
        return (*result, None, None, None, None)


def fused_pladis_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, pladis_scale: float = 2.0,
                           alpha: float = 1.5, attn_mask: torch.Tensor | None = None,
                           score_scale: float | None = None, return_stats: bool = False,
                           tsallis_alpha: float = 1.5):
    """PLADIS attention by the fused kernel: out = (S + λ(E − S)) v with S = softmax, E = α-entmax.

    ``pladis_scale`` is λ (0 gives softmax attention, 1 entmax attention); ``score_scale`` multiplies q kᵀ
    (default 1/√d). With ``return_stats=True`` returns ``(out, stats)`` with per-row statistics named by
    :data:`STAT_NAMES` (no gradient flows through ``stats``; ``tsallis_alpha`` is the order of their Tsallis
    entropies). Differentiable in q, k, v. The search is in float32: above α = 6 (``FLOAT32_MAX_ALPHA``) it
    loses the weights of keys tied just under the one-hot gap, below α = 1.01 (``FLOAT32_MIN_ALPHA``) the
    scores' differences; ``pladis_attention`` hands such α to the torch path, which computes them in float64.
    """
    pladis_scale = check_scale(pladis_scale, "pladis_scale")
    alpha = float(alpha)
    if (pladis_scale != 0.0 or return_stats) and (not math.isfinite(alpha) or alpha <= 1.0):
        raise ValueError(f"alpha={alpha!r}: α-entmax needs a finite alpha > 1")
    if not (math.isfinite(float(tsallis_alpha)) and tsallis_alpha > 0):
        raise ValueError(f"tsallis_alpha={tsallis_alpha!r}: must be finite and > 0")
    if score_scale is not None and not math.isfinite(float(score_scale)):
        raise ValueError(f"score_scale={score_scale!r}: must be a finite number, or None for 1/√d")
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if not needs_grad:
        # Inference (the diffusion use): one launch, no autograd bookkeeping; the statistics come with it.
        return fused_attention_forward(q, k, v, pladis_scale=pladis_scale, alpha=alpha, attn_mask=attn_mask,
                                       score_scale=score_scale, need_softmax=pladis_scale != 1.0,
                                       need_entmax=pladis_scale != 0.0, return_stats=return_stats,
                                       tsallis_alpha=tsallis_alpha)
    out = FusedPladisAttention.apply(q, k, v, attn_mask, float(pladis_scale), alpha, score_scale)
    if return_stats:
        with torch.no_grad():  # statistics carry no gradient; a second launch keeps the autograd path simple
            _, stats = fused_attention_forward(q, k, v, pladis_scale=pladis_scale, alpha=alpha,
                                               attn_mask=attn_mask, score_scale=score_scale, return_stats=True,
                                               tsallis_alpha=tsallis_alpha)
        return out, stats
    return out
