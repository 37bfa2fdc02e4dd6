"""Row-wise α-entmax as Triton kernels: the whole row lives in registers.

α-entmax solves  p = argmax_{p ∈ Δ} ⟨p, z⟩ + H^T_α(p)  (Peters, Niculae & Martins 2019); its solution is
p_i = [z'_i − τ]_+^q with q = 1/(α−1), z' = (α−1) z and τ the unique root of f(τ) = Σ_i [z'_i − τ]_+^q − 1.
After shifting the row so that max z' = 0, τ lies in the bracket [−1, −n^{1−α}] (n = number of finite
entries): at τ = −1 the largest entry alone has weight 1, at τ = −n^{1−α} every entry has weight ≤ 1/n.

Cross-attention rows are short (77–300 text tokens), so a whole row fits in registers and τ can be found
without sorting:

* 1 < α ≤ 2 (q ≥ 1, sparsemax and 1.5-entmax included): Newton's method on the norm
  h(τ) = ‖[z' − τ]_+‖_q − 1, started left of the root: at τ = −1, or for sparsemax at the best of Michelot's
  thresholds on the row's few largest scores, which is the root itself when the support is that small
  (:func:`_newton_start`). h is convex (a norm of componentwise convex, non-negative functions) and
  decreasing, so the iterates increase monotonically to the root and never overshoot: no bracket, no
  bisection. The step is  τ ← τ + (F − F^{1−1/q}) / G  with F = Σ [x]_+^q and
  G = Σ [x]_+^{q−1}, x = z' − τ: the torch path's search (:mod:`pladis_analysis.maps._threshold`). For
  sparsemax (q = 1) this is Michelot's algorithm, exact once the support stops changing; h is nearly linear
  in τ for any q, so a few steps reach float32 resolution (a block of rows iterates until its slowest row is
  done, so fewer steps per row matter: the safeguarded Halley search on f that this replaced fell back to
  bisection on some rows of most blocks at α = 1.25). Sparsemax's Newton steps stay large until the support
  is found, so its block needed as many steps as its slowest row's support changes; from the start above most
  rows only confirm, in one step.
  For q ∈ {1, 2, 3, 4} (α = 2, 1.5, 4/3, 1.25) the powers are multiplications; other q use one log2/exp2
  pair per entry and step, both the GPU's one-instruction approximations when compiled (:func:`fast_log2`).
  Stopping: a row stops when its step falls below float32 resolution, or earlier when the step just taken
  provably leaves the weights within a tolerance of the exact ones. Convexity gives, for a Newton step s from
  τ, h(τ + s) ≤ s (|h'(τ)| − |h'(τ + s)|) ≤ s (|h'(τ)| − 1) =: b, because |h'| = ‖t‖_{q−1}^{q−1} / ‖t‖_q^{q−1} ≥ 1
  (ℓ_p norms decrease in p; for q = 1, |h'| = |support|). Iterates stay left of the root, where the weights
  p(τ) ≥ p* entrywise, so ‖p(τ) − p*‖₁ = Σp − 1 = (1 + h)^q − 1, and renormalising at most doubles that:
  the ℓ1 error of a row is ≤ 2((1 + b)^q − 1) (≤ b for sparsemax, which is not renormalised). The tolerance
  follows the input dtype (:data:`STOP_TOLERANCE`); far below a bfloat16 or float16 rounding of the weights,
  it lets many rows skip the last, confirming step (``experiments/search_steps.py`` counts the steps, with
  and without the rule; sparsemax rarely gains: its steps stay large until the exact one).
* α > 2 (q < 1, h is no longer convex): Halley steps on f, safeguarded as in ``rtsafe``: a step that leaves
  the current bracket, or does not shrink fast enough, is replaced by bisection, and a row stops only on its
  error bound or a bracket at float32 resolution (near an entry that is about to enter the support, f has
  infinite slope and Halley steps can stall far from the root). Weights of entries just inside the support
  are ill-conditioned in τ: p = t^q with q < 1 turns a rounding δ of τ into errors of order δ^q, and a τ near
  −1 is rounded by ~6e-8. Rows that end on the bracket are therefore searched again in scores measured from
  the entry nearest τ, where τ lies near 0 and float32 resolves it relatively (:func:`_entmax_tau_above_two`).

Except for sparsemax (exact), the weights are renormalised to sum to one, like ``entmax_bisect`` does.

The backward kernel is the closed-form Jacobian–vector product  ∂z = s ⊙ g − s (⟨s, g⟩ / Σ s)  with
s_i = p_i^{2−α} on the support and 0 off it (s = 1 on the support for sparsemax, √p for α = 1.5). For α > 2,
g is first measured from its value at the entry of largest s (exact, since J·1 = 0): that entry has the
smallest weight and an s that can dwarf the rest, and would otherwise cancel against itself.

Entries equal to −inf are treated as masked (zero weight); a row whose entries are all −inf gets all-zero
weights and zero gradient, never NaN. The kernels compute in float32 and return the input dtype.

Entry point for users: :func:`entmax_rowwise` (an autograd-aware wrapper around :class:`EntmaxRowwise`).
Dispatch between this and the torch path lives in :mod:`pladis_analysis.maps.kernels.dispatch`.
"""

from __future__ import annotations

import logging
import math

import torch
import triton
import triton.language as tl

from .._shapes import block_size, cdiv
from .._threshold import check_alpha
from .build_failures import KernelBuildError, launching

# Threshold searches, chosen from α on the host (constexpr in the kernel): Newton on the q-norm for α ≤ 2,
# safeguarded Halley for α > 2. With Newton, an integer q = 1/(α−1) up to INTEGER_Q_MAX is passed as Q_INT so
# that powers become multiplications (0: any other q).
KIND_NEWTON = 0
KIND_HALLEY = 1
INTEGER_Q_MAX = 4

# Longest row the row-wise kernel keeps in registers; longer rows go to the torch path.
MAX_ROW_LENGTH = 4096
# Iteration caps. Newton converges in a handful of steps; the cap only bounds pathological rows. The α > 2
# search may have to bisect down to float32 resolution of a unit bracket (~24 halvings, after stalled steps).
MAX_ITER_NEWTON = 32
MAX_ITER_HALLEY = 64
# A Newton row stops iterating once its step is below 1e-7 (1 + |τ|), float32 resolution (see ``_resolution``), or
# once the bound on its weights' ℓ1 error is below the input dtype's tolerance (both searches): 2^-20 for float32
# (the torch path's bound, 2 × its SUM_TOLERANCE), and 1/16 of half an ulp of 1 for float16 (2^-15) and
# bfloat16 (2^-12), whose inputs and outputs are rounded far more coarsely than that.
STOP_TOLERANCE: dict[torch.dtype, float] = {torch.float32: 2.0**-20, torch.float16: 2.0**-15,
                                            torch.bfloat16: 2.0**-12}


def alpha_flavour(alpha: float) -> tuple[int, int]:
    """``(KIND, Q_INT)`` for ``alpha``: Newton for α ≤ 2, with Q_INT = q when q = 1/(α−1) is an integer
    ≤ :data:`INTEGER_Q_MAX` (α = 2, 1.5, 4/3, 1.25) and 0 otherwise; Halley for α > 2."""
    if alpha > 2.0:
        return KIND_HALLEY, 0
    q = 1.0 / (alpha - 1.0)
    q_int = round(q)
    if 1 <= q_int <= INTEGER_Q_MAX and abs(q - q_int) <= 1e-12 * q:
        return KIND_NEWTON, q_int
    return KIND_NEWTON, 0


# Sparsemax's search starts from Michelot's thresholds on a row's SPARSEMAX_START_RANKS largest distinct scores
# (:func:`_newton_start`): each rank costs one pass over the row (a masked maximum), and a row whose support has at
# most that many entries of distinct value then needs one confirming step instead of one per support change
# (results/search_steps.csv: start "default" against "ranks 1"). For q > 1 the same start is only a bound and
# saves fewer steps: in the issue-rate bound (results/search_issue_bound.csv, other_start_* columns) it would
# cost α = 1.25 and 1.5, whose steps are multiplications, 1.32–1.48× their search, and save 7–14% at α = 1.75,
# whose steps take a log2 and an exp2 per score. Until a GPU has timed that, only sparsemax uses it.
SPARSEMAX_START_RANKS = 6


def default_start_ranks(alpha: float) -> int:
    """How many of a row's largest distinct scores the Newton search's starting point uses for ``alpha``
    (:func:`_newton_start`; 1: it starts at τ = −1, as for α > 2, whose search does not use it)."""
    return SPARSEMAX_START_RANKS if alpha_flavour(alpha) == (KIND_NEWTON, 1) else 1


def max_iterations(kind: int) -> int:
    """The iteration cap of a threshold search."""
    return MAX_ITER_NEWTON if kind == KIND_NEWTON else MAX_ITER_HALLEY


def stop_tolerance(dtype: torch.dtype, stop_tol: float | None = None) -> float:
    """The ℓ1 error per row at which the threshold search may stop: ``stop_tol`` when given (a finite number
    ≥ 0; 0 stops on step size only), else the default for inputs of ``dtype`` (float64 inputs, which the kernels
    do not take, would get float32's)."""
    if stop_tol is None:
        return STOP_TOLERANCE.get(dtype, STOP_TOLERANCE[torch.float32])
    tol = float(stop_tol)
    if not (math.isfinite(tol) and tol >= 0.0):
        raise ValueError(f"stop_tol={stop_tol!r}: the stopping tolerance must be a finite number >= 0")
    return tol


@triton.jit
def fast_log2(x):
    """log2 of x ≥ 0 (−inf at 0), for the powers of the Newton search and of the fused kernel's statistics.
    Compiled: the GPU's own approximation (``lg2.approx.ftz.f32``, one MUFU instruction, absolute error
    ≤ 2^-22.6; subnormal x count as 0), the counterpart of the ``ex2.approx`` that ``tl.exp2`` is.
    ``tl.log2`` compiles to libdevice's accurate log2, ~30 instructions: per score and Newton step, that made a
    non-integer q cost several times an integer one. The error added to a power x^{q−1} = 2^{(q−1) log2 x} is
    a relative (q−1)·2^-23, below ``ex2.approx``'s own 2^-22.5 for q ≤ 2 (α ≥ 1.5). In the interpreter, which
    runs no PTX: numpy's log2."""
    if HARDWARE_LOG2:
        r = tl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True,
                                      pack=1)
    else:
        r = tl.log2(x)
    return r


# Compiled or interpreted: Triton decides when a kernel is decorated (TRITON_INTERPRET=1 at import).
HARDWARE_LOG2: tl.constexpr = tl.constexpr(type(fast_log2).__name__ != "InterpretedFunction")


@triton.jit
def _pow_q_minus_1(xp, q, Q_INT: tl.constexpr):
    """xp^{q−1} for xp = [x]_+ ≥ 0 (zero where xp = 0), for q ≥ 1; Q_INT > 0 is q as a small integer."""
    if Q_INT == 1:
        r = tl.where(xp > 0.0, 1.0, 0.0)
    elif Q_INT == 2:
        r = xp
    elif Q_INT == 3:
        r = xp * xp
    elif Q_INT == 4:
        r = xp * xp * xp
    elif HARDWARE_LOG2:
        r = tl.exp2((q - 1.0) * fast_log2(xp))          # lg2(+0) = −inf, ex2(−inf) = +0: zero where xp = 0
    else:
        pos = xp > 0.0                                  # numpy would warn on log2(0)
        r = tl.where(pos, tl.exp2((q - 1.0) * fast_log2(tl.where(pos, xp, 1.0))), 0.0)
    return r


@triton.jit
def row_sum(x, x_t, HAS_TAIL: tl.constexpr):
    """Per-row sum of a row split into tile ``x`` and, when ``HAS_TAIL``, tile ``x_t``."""
    total = tl.sum(x, axis=1)
    if HAS_TAIL:
        total += tl.sum(x_t, axis=1)
    return total


@triton.jit
def row_max(x, x_t, HAS_TAIL: tl.constexpr):
    """Per-row maximum of a row split into tile ``x`` and, when ``HAS_TAIL``, tile ``x_t``."""
    top = tl.max(x, axis=1)
    if HAS_TAIL:
        top = tl.maximum(top, tl.max(x_t, axis=1))
    return top


# The smallest |τ| a search relative to a nearby score resolves (2^-120, a normal float32; GPUs may flush
# subnormals): the floor of its resolution and of its geometric bisection.
RELATIVE_FLOOR: tl.constexpr = tl.constexpr(2.0**-120)


@triton.jit
def _resolution(tau, RELATIVE: tl.constexpr):
    """The smallest change of τ a search tells apart from none: 1e-7 (1 + |τ|), float32 resolution of a τ in
    [−1, 0]; with ``RELATIVE``, 1e-7 |τ| (down to 2^-120), the resolution of a τ measured from a nearby score."""
    if RELATIVE:
        res = 1e-7 * tl.abs(tau) + RELATIVE_FLOOR
    else:
        res = 1e-7 * (1.0 + tl.abs(tau))
    return res


@triton.jit
def _newton_sums(zp, tau, q, Q_INT: tl.constexpr):
    """Per-row G = Σ [x]_+^{q−1} and F = Σ [x]_+^q of a tile, x = zp − τ."""
    xp = tl.maximum(zp - tau[:, None], 0.0)                  # [x]_+ (−inf entries give 0)
    g_q1 = _pow_q_minus_1(xp, q, Q_INT)
    g = tl.sum(g_q1, axis=1)
    if Q_INT == 1:
        f = tl.sum(xp, axis=1)                               # the compiler would multiply by the indicator
    else:
        f = tl.sum(g_q1 * xp, axis=1)
    return g, f


@triton.jit
def _newton_start(zp, zp_t, q, Q_INT: tl.constexpr, RANKS: tl.constexpr, HAS_TAIL: tl.constexpr):
    """A starting point τ₀ ≤ τ* per row for the Newton search, from the row's ``RANKS`` largest distinct values
    of zp (whose maximum is 0): τ₀ = max over j ≤ RANKS of  S_j/j − j^{−1/q},  S_j the sum of the j largest
    (j = 1 gives −1; ``RANKS`` = 1 costs nothing).

    Why τ₀ ≤ τ*: for any j entries S, f(τ) + 1 ≥ Σ_S [zp_i − τ]_+^q ≥ j [mean_S zp − τ]_+^q (power means, q ≥ 1),
    which is 1 at τ = mean_S zp − j^{−1/q}; so f ≥ 0 there, and f decreases. Distinct values are a set of
    entries too, so ties only weaken the bound. For sparsemax (q = 1) the candidates are Michelot's thresholds
    (S_j − 1)/j, and their maximum is τ* itself when the support has at most ``RANKS`` entries with distinct
    values: the search then only confirms it. Each rank is one masked maximum over the row. τ₀ is rounded
    like any iterate: where the bound is tight it can land an ulp right of τ*, and then the first step is
    negative, as is its error bound, which ends the row's search (one step from the right lands at or left of
    τ*: h is convex).
    """
    tau0 = tl.full((zp.shape[0],), -1.0, tl.float32)
    top = tl.zeros((zp.shape[0],), tl.float32)                     # the largest value: 0
    total = tl.zeros((zp.shape[0],), tl.float32)
    for j in tl.static_range(2, RANKS + 1):
        # the next distinct value below ``top`` (−inf once a row has no more: its candidates are −inf)
        top = row_max(tl.where(zp < top[:, None], zp, float("-inf")),
                      tl.where(zp_t < top[:, None], zp_t, float("-inf")), HAS_TAIL)
        total += top
        if Q_INT == 1:
            candidate = (total - 1.0) * (1.0 / j)                       # Michelot's (S_j − 1)/j
        else:
            candidate = total * (1.0 / j) - tl.exp2(tl.log2(tl.full((1,), j, tl.float32)) * (-1.0 / q))
        tau0 = tl.maximum(tau0, candidate)
    return tau0


@triton.jit
def _newton_tau(zp, zp_t, row_ok, q, stop_tol, Q_INT: tl.constexpr, MAX_ITER: tl.constexpr,
                HAS_TAIL: tl.constexpr, START_RANKS: tl.constexpr):
    """``(τ, steps)`` per row by Newton on h(τ) = ‖[zp − τ]_+‖_q − 1 from the lower bound of
    :func:`_newton_start` on ``START_RANKS`` ranks (q ≥ 1; see the module docstring); ``steps`` counts the
    iterations a row was active in (its block runs the largest count).

    A row stops when its step is below float32 resolution, or as soon as a step provably leaves its final
    weights within ``stop_tol`` of the exact ones in ℓ1 (the step bound of the module docstring).

    A row is the tile ``zp`` followed, when ``HAS_TAIL``, by the tile ``zp_t`` (the same rows, more columns).
    """
    tau = _newton_start(zp, zp_t, q, Q_INT, START_RANKS, HAS_TAIL)
    steps = tl.zeros(row_ok.shape, tl.int32)
    active = row_ok
    it = 0
    while (tl.max(active.to(tl.int32), axis=0) > 0) & (it < MAX_ITER):
        steps += active.to(tl.int32)
        g, f = _newton_sums(zp, tau, q, Q_INT)                                    # G = −f'(τ)/q, F = Σ [x]_+^q
        if HAS_TAIL:
            g_t, f_t = _newton_sums(zp_t, tau, q, Q_INT)
            g += g_t
            f += f_t
        # The step (F − F^{1−1/q}) / G and h(τ + step) ≤ step · (|h'(τ)| − 1) =: b, |h'| = G / F^{1−1/q}. With
        # F − F^{1−1/q} = F^{1−1/q} · excess / spread both share one reciprocal of spread · G (G ≥ F^{1−1/q} ≥ 1
        # left of the root; the clamp serves empty rows). Near the root F ≈ F^{1−1/q} ≈ 1 and their difference
        # cancels; for q = 2 and 4 it is taken without cancellation, excess = F − 1 and spread = Σ_k F^{k/q}, so
        # that the step shrinks to float32 resolution rather than to the rounding of F^{1−1/q}.
        if Q_INT == 1:
            step = (f - 1.0) / tl.maximum(g, 1e-30)
            b = step * tl.maximum(g - 1.0, 0.0)
        else:
            if Q_INT == 2:
                f_pow = tl.sqrt(f)
                excess = f - 1.0
                spread = f_pow + 1.0
            elif Q_INT == 4:
                root2 = tl.sqrt(f)
                root4 = tl.sqrt(root2)
                f_pow = root2 * root4
                excess = f - 1.0
                spread = (root2 + 1.0) * (root4 + 1.0)
            else:
                f_pow = tl.exp2((1.0 - 1.0 / q) * fast_log2(tl.maximum(f, 1e-30)))
                excess = f - f_pow
                spread = f_pow
            inv = 1.0 / tl.maximum(spread * g, 1e-30)
            step = f_pow * excess * inv
            b = excess * tl.maximum(g - f_pow, 0.0) * inv
        # The weights' ℓ1 error after the step is at most b for sparsemax (no renormalisation), else
        # 2((1 + b)^q − 1) ≤ 2qb(1 + b)^{q−1}: by multiplications for an integer q, else bounded once more by
        # 2qb·e^{(q−1)b} (ln(1 + b) ≤ b), which needs no logarithm.
        if Q_INT == 1:
            l1_after = b
        elif Q_INT > 1:
            l1_after = 2.0 * Q_INT * b
            for _ in tl.static_range(Q_INT - 1):
                l1_after = l1_after * (1.0 + b)
        else:
            l1_after = 2.0 * q * b * tl.exp2((q - 1.0) * 1.4426950408889634 * b)       # 1.4427 = log2 e
        cand = tau + step
        moved = tl.abs(cand - tau) > _resolution(tau, False)
        tau = tl.where(active, cand, tau)
        active = active & moved & (l1_after > stop_tol)
        it += 1
    return tau, steps


@triton.jit
def _powq_general(x, pos, q):
    """[x]_+^q by log2/exp2 for any q > 0; ``pos`` is x > 0."""
    xs = tl.where(pos, x, 1.0)  # keep log2 away from non-positive values
    return tl.where(pos, tl.exp2(q * tl.log2(xs)), 0.0)


@triton.jit
def _halley_sums(zp, tau, q):
    """Per-row Σ [x]_+^q, Σ [x]_+^{q−1} and Σ [x]_+^{q−2} of a tile, x = zp − τ."""
    x = zp - tau[:, None]
    pos = x > 0.0
    p = _powq_general(x, pos, q)
    xs = tl.where(pos, x, 1.0)
    p_over_x = tl.where(pos, p / xs, 0.0)
    return tl.sum(p, axis=1), tl.sum(p_over_x, axis=1), tl.sum(tl.where(pos, p_over_x / xs, 0.0), axis=1)


@triton.jit
def _split(lo, hi, RELATIVE: tl.constexpr):
    """Where a bisection of [lo, hi] evaluates: the midpoint; with ``RELATIVE`` (τ measured from a nearby score,
    whose kink is at 0), 0 for a bracket around it and the geometric mean (from 2^-120 up) for one that spans
    more than a factor 4, so that a root of any magnitude is reached in a few halvings of its exponent."""
    mid = 0.5 * (lo + hi)
    if RELATIVE:
        small = tl.maximum(tl.minimum(tl.abs(lo), tl.abs(hi)), RELATIVE_FLOOR)
        large = tl.maximum(tl.abs(lo), tl.abs(hi))
        geometric = tl.where(hi <= 0.0, -1.0, 1.0) * tl.sqrt(small) * tl.sqrt(large)
        mid = tl.where((lo < 0.0) & (hi > 0.0), 0.0, tl.where(large > 4.0 * small, geometric, mid))
    return mid


@triton.jit
def _halley_tau(zp, zp_t, active, lo, hi, tau, q, stop_tol, RELATIVE: tl.constexpr, MAX_ITER: tl.constexpr,
                HAS_TAIL: tl.constexpr):
    """Safeguarded Halley steps on f from ``tau`` inside the bracket [``lo``, ``hi``] (f(lo) ≥ 0 ≥ f(hi)) for the
    ``active`` rows (any α; used for α > 2). Returns ``(τ, steps, resolved, lo, hi)``: ``steps`` as in
    :func:`_newton_tau`, ``resolved`` the rows that stopped on their error bound (the others stopped on a bracket
    at resolution, :func:`_resolution` with ``RELATIVE``, or on the cap) and the final bracket.

    For q < 1 every entry that enters the support adds a kink with infinite slope to f, and next to one Halley
    steps can stall: tiny steps far from the root. So, as in ``rtsafe`` (Numerical Recipes §9.4), a step that
    leaves the bracket or is not at most half the step before last becomes a bisection, and a step below
    resolution is stretched across it (to tell a converged row from a stalled one). A row stops when its
    weights' ℓ1 error is within ``stop_tol`` (it is |f| before and at most 2|f| after renormalising, because
    p(τ) − p* has one sign) or its bracket has shrunk to resolution; never on a small step alone.
    """
    step_before_last = hi - lo
    last_step = hi - lo
    steps = tl.zeros(active.shape, tl.int32)
    resolved = ~active
    it = 0
    while (tl.max(active.to(tl.int32), axis=0) > 0) & (it < MAX_ITER):
        steps += active.to(tl.int32)
        s0, s1, s2 = _halley_sums(zp, tau, q)
        if HAS_TAIL:
            t0, t1, t2 = _halley_sums(zp_t, tau, q)
            s0 += t0
            s1 += t1
            s2 += t2
        f = s0 - 1.0
        fp = -q * s1
        fpp = q * (q - 1.0) * s2
        lo = tl.where(active & (f > 0.0), tau, lo)
        hi = tl.where(active & (f < 0.0), tau, hi)
        resolution = _resolution(tau, RELATIVE)
        # Halley: τ − 2 f f' / (2 f'² − f f'')
        den = 2.0 * fp * fp - f * fpp
        step = -2.0 * f * fp / tl.where(den == 0.0, 1.0, den)  # den = 0 only on empty rows
        halley = tau + step
        # Done: within the error tolerance at τ (stay), or the bracket is at resolution (end on Halley's point
        # in it, far more accurate than either end when the steps converge, or else on the midpoint).
        good = 2.0 * tl.abs(f) <= stop_tol
        narrow = (hi - lo <= 2.0 * resolution) & ~good
        final = tl.where((halley >= lo) & (halley <= hi), halley, 0.5 * (lo + hi))  # NaN: midpoint
        # Continue: a step below resolution is stretched across it; a step out of the bracket, or not at most
        # half the step before last (a stall), becomes a bisection.
        step = tl.where(tl.abs(step) <= resolution, tl.where(f > 0.0, 2.0 * resolution, -2.0 * resolution), step)
        cand = tau + step
        slow = (cand <= lo) | (cand >= hi) | (2.0 * tl.abs(step) > tl.abs(step_before_last))
        cand = tl.where(slow | (cand != cand), _split(lo, hi, RELATIVE), cand)
        moving = active & ~good & ~narrow
        step_before_last = tl.where(moving, last_step, step_before_last)
        last_step = tl.where(moving, cand - tau, last_step)
        tau = tl.where(moving, cand, tl.where(active & narrow, final, tau))
        resolved = resolved | (active & good)
        active = moving
        it += 1
    return tau, steps, resolved, lo, hi


@triton.jit
def _nearest_score(z, zp, tau, dist, z_near):
    """Fold a tile into the running per-row (distance, raw score) of the valid entry whose zp is nearest τ."""
    d = tl.abs(zp - tau[:, None])                                                 # inf on invalid entries
    d_min = tl.min(d, axis=1)
    z_at = tl.max(tl.where(d == d_min[:, None], z, float("-inf")), axis=1)
    closer = d_min < dist
    return tl.where(closer, d_min, dist), tl.where(closer, z_at, z_near)


@triton.jit
def _entmax_tau_above_two(z, valid, zp, z_t, valid_t, zp_t, m, row_ok, n_valid, alpha, q, stop_tol,
                          MAX_ITER: tl.constexpr, HAS_TAIL: tl.constexpr):
    """``(w, w_t, τ, steps)`` for α > 2: :func:`_halley_tau` on the bracket [−1, −n^{1−α}], then, for rows it
    could not resolve, again in w = (α−1)(z − z_r), the scores measured from the entry r nearest its τ; the
    weights are [w − τ]_+^q for every row (w = zp when no row of the block needs the second search; otherwise
    rows resolved by the first search just change coordinates).

    Why the second search: p = t^q with q < 1 has infinite slope at t = 0, so when τ* lies within float32
    resolution of a score (a tied group of padding tokens at the edge of the support, say), no float32 τ near
    −1…0 gives weights within tolerance: a rounding δ of τ moves each such weight by up to δ^q. Measured from
    that score r, w = (α−1)(z − z_r) is exact at r (and, by Sterbenz's lemma, close to exact near it) and τ
    lies near 0, where float32 resolves it relatively; only rows the first search left at its resolution pay
    for the second.
    """
    lo = tl.full(row_ok.shape, -1.0, tl.float32)
    # −n^{1−α}; for an empty row any bracket will do, its weights are zeroed at the end.
    hi = -tl.exp2((1.0 - alpha) * tl.log2(tl.maximum(n_valid, 1.0)))
    tau, steps, resolved, lo, hi = _halley_tau(zp, zp_t, row_ok & (hi > lo), lo, hi, lo, q, stop_tol, False,
                                               MAX_ITER, HAS_TAIL)
    unresolved = row_ok & ~resolved
    w = zp
    w_t = zp_t
    if tl.max(unresolved.to(tl.int32), axis=0) > 0:  # most blocks of most inputs skip this
        dist, z_r = _nearest_score(z, zp, tau, tl.full(row_ok.shape, float("inf"), tl.float32),
                                   tl.zeros(row_ok.shape, tl.float32))
        if HAS_TAIL:
            dist, z_r = _nearest_score(z_t, zp_t, tau, dist, z_r)
        z_r = tl.where(row_ok, z_r, 0.0)
        zp_r = (z_r - m) * (alpha - 1.0)                                          # as _shifted rounds it
        w = tl.where(valid, (z - z_r[:, None]) * (alpha - 1.0), float("-inf"))
        w_t = w
        if HAS_TAIL:
            w_t = tl.where(valid_t, (z_t - z_r[:, None]) * (alpha - 1.0), float("-inf"))
        # The first bracket, moved and widened by 16 resolutions: more than the rounding of zp against w (an ulp
        # of each |zp| ≤ 1 that matters) and of the move, so f keeps its signs at the ends.
        margin = 16.0 * _resolution(tau, False)
        tau, steps_w, _, _, _ = _halley_tau(w, w_t, unresolved, lo - zp_r - margin, hi - zp_r + margin,
                                            tau - zp_r, q, stop_tol, True, MAX_ITER, HAS_TAIL)
        steps += steps_w
    return w, w_t, tau, steps


@triton.jit
def _weights(zp, tau, q, KIND: tl.constexpr, Q_INT: tl.constexpr):
    """[zp − τ]_+^q of a tile (unnormalised)."""
    x = zp - tau[:, None]
    if KIND == 0:
        xp = tl.maximum(x, 0.0)
        p = _pow_q_minus_1(xp, q, Q_INT) * xp
    else:
        p = _powq_general(x, x > 0.0, q)
    return p


@triton.jit
def _shifted(z, valid, m, alpha):
    """z' = (α−1)(z − max z): max z' = 0, invalid entries at −inf so that z' − τ < 0 for every τ."""
    return tl.where(valid, (z - m[:, None]) * (alpha - 1.0), float("-inf"))


@triton.jit
def entmax_rows(z, valid, z_t, valid_t, alpha, stop_tol, KIND: tl.constexpr, Q_INT: tl.constexpr,
                MAX_ITER: tl.constexpr, HAS_TAIL: tl.constexpr, START_RANKS: tl.constexpr):
    """α-entmax of each row of float32 tiles held in registers: a row is ``z`` [R, C] followed, when
    ``HAS_TAIL``, by ``z_t`` [R, C_t] (two power-of-two tiles cover 77 keys as 64 + 16 instead of 128).
    ``stop_tol``: the ℓ1 error per row the Newton search may stop at (see :func:`stop_tolerance`);
    ``START_RANKS``: the ranks its starting point uses (:func:`default_start_ranks`).

    ``valid``/``valid_t`` mark real entries (False for padding columns and −inf scores). Returns
    ``(p, zp, p_t, zp_t, steps)``: the weights (0 on invalid entries and on rows with no valid entry), the
    shifted, scaled scores zp = (α−1)(z − max z) (−inf on invalid entries), from which a caller can still get
    softmax, and the threshold search's iterations per row (int32; 0 for rows with no valid entry; callers
    that do not store it pay nothing, the compiler drops it). Without a tail, ``z_t``/``valid_t`` are ignored
    and ``p_t``/``zp_t`` repeat ``p``/``zp``.
    """
    n_valid = row_sum(valid.to(tl.float32), valid_t.to(tl.float32), HAS_TAIL)
    m = row_max(tl.where(valid, z, float("-inf")), tl.where(valid_t, z_t, float("-inf")), HAS_TAIL)
    row_ok = n_valid > 0.0
    m = tl.where(row_ok, m, 0.0)
    zp = _shifted(z, valid, m, alpha)
    zp_t = zp
    if HAS_TAIL:
        zp_t = _shifted(z_t, valid_t, m, alpha)
    q = 1.0 / (alpha - 1.0)
    if KIND == 0:
        tau, steps = _newton_tau(zp, zp_t, row_ok, q, stop_tol, Q_INT, MAX_ITER, HAS_TAIL, START_RANKS)
        zw = zp
        zw_t = zp_t
    else:
        zw, zw_t, tau, steps = _entmax_tau_above_two(z, valid, zp, z_t, valid_t, zp_t, m, row_ok, n_valid, alpha,
                                                     q, stop_tol, MAX_ITER, HAS_TAIL)
    p = _weights(zw, tau, q, KIND, Q_INT)
    p_t = p
    if HAS_TAIL:
        p_t = _weights(zw_t, tau, q, KIND, Q_INT)
    if Q_INT != 1:
        # Renormalise: removes the residual of the stopping rule so that Σ p = 1 to rounding (sparsemax's
        # closed form on its final support already sums to one).
        scale = tl.where(row_ok, 1.0 / tl.maximum(row_sum(p, p_t, HAS_TAIL), 1e-30), 0.0)
    else:
        scale = tl.where(row_ok, 1.0, 0.0)
    p = p * scale[:, None]
    if HAS_TAIL:
        p_t = p_t * scale[:, None]
    else:
        p_t = p
    return p, zp, p_t, zp_t, steps


@triton.jit
def entmax_rows_jvp(p, g, alpha, Q_INT: tl.constexpr):
    """Closed-form (J g) for rows of α-entmax weights ``p``: s ⊙ g − s ⟨s, g⟩ / Σ s, s = p^{2−α} on the support."""
    pos = p > 0.0
    if Q_INT == 1:
        s = pos.to(tl.float32)
    elif Q_INT == 2:
        s = tl.sqrt(p)
    else:
        s = tl.where(pos, tl.exp2((2.0 - alpha) * tl.log2(tl.where(pos, p, 1.0))), 0.0)
        if alpha > 2.0:
            # Measure g from its value at the entry of largest s (J·1 = 0: exact): for α > 2 that entry has the
            # smallest weight and an s that can dwarf the rest; uncentred, its own term cancels to s·ε of rounding.
            s_top = tl.max(s, axis=1)
            g_top = tl.max(tl.where(pos & (s == s_top[:, None]), g, float("-inf")), axis=1)
            g = g - tl.where(s_top > 0.0, g_top, 0.0)[:, None]
    g = tl.where(pos, g, 0.0)
    s_sum = tl.sum(s, axis=1)
    coef = tl.sum(s * g, axis=1) / tl.maximum(s_sum, 1e-30)
    return s * g - s * coef[:, None]


@triton.jit
def _entmax_fwd_kernel(Z, P, STEPS, n_rows, n_cols, stride_z, stride_p, alpha, stop_tol,
                       KIND: tl.constexpr, Q_INT: tl.constexpr, MAX_ITER: tl.constexpr, START_RANKS: tl.constexpr,
                       WITH_STEPS: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)   # 64-bit: rows·stride may pass 2³¹
    cols = tl.arange(0, BLOCK_COLS)
    inb = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    z = tl.load(Z + rows[:, None] * stride_z + cols[None, :], mask=inb, other=float("-inf")).to(tl.float32)
    valid = inb & (z > float("-inf"))
    p, _, _, _, steps = entmax_rows(z, valid, z, valid, alpha, stop_tol, KIND, Q_INT, MAX_ITER, False,
                                    START_RANKS)
    # NaN is no valid score (`z > −inf` is False for it), so the search left it out; a row holding one is NaN,
    # as the dispatch promises, not a plausible row without that key
    has_nan = tl.max((z != z).to(tl.int32), axis=1) > 0
    p = tl.where(has_nan[:, None], float("nan"), p)
    tl.store(P + rows[:, None] * stride_p + cols[None, :], p.to(P.dtype.element_ty), mask=inb)
    if WITH_STEPS:
        tl.store(STEPS + rows, steps, mask=rows < n_rows)


@triton.jit
def _entmax_bwd_kernel(P, G, DZ, n_rows, n_cols, stride_p, stride_g, stride_dz, alpha,
                       Q_INT: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = tl.arange(0, BLOCK_COLS)
    inb = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    p = tl.load(P + rows[:, None] * stride_p + cols[None, :], mask=inb, other=0.0).to(tl.float32)
    g = tl.load(G + rows[:, None] * stride_g + cols[None, :], mask=inb, other=0.0).to(tl.float32)
    dz = entmax_rows_jvp(p, g, alpha, Q_INT)
    tl.store(DZ + rows[:, None] * stride_dz + cols[None, :], dz.to(DZ.dtype.element_ty), mask=inb)


# Each rank is a pass over the row, unrolled in the kernel: more than a few dozen only bloats the build.
MAX_START_RANKS = 32


def _check_start_ranks(alpha: float, start_ranks: int | None) -> int:
    if start_ranks is None:
        return default_start_ranks(alpha)
    if isinstance(start_ranks, bool) or not isinstance(start_ranks, int) or not 1 <= start_ranks <= MAX_START_RANKS:
        # (a bool is an int to Python, and True would silently mean one rank)
        raise ValueError(f"start_ranks={start_ranks!r}: must be an integer from 1 to {MAX_START_RANKS}")
    if start_ranks != 1 and alpha_flavour(alpha)[0] != KIND_NEWTON:
        raise ValueError(f"start_ranks={start_ranks} with alpha={alpha}: the start is the Newton search's "
                         "(alpha <= 2); the alpha > 2 search does not use one")
    return start_ranks


def _launch_shape(n_cols: int) -> tuple[int, int, int]:
    """(BLOCK_ROWS, BLOCK_COLS, num_warps): about 4k row elements per program keeps the tile in registers."""
    block_cols = block_size(n_cols)
    block_rows = max(1, min(64, 4096 // block_cols))
    num_warps = 4 if block_cols * block_rows <= 2048 else 8
    return block_rows, block_cols, num_warps


def _as_rows(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Move ``dim`` last and flatten the rest: (rows, n) contiguous, plus the moved shape to undo it."""
    moved = x.movedim(dim, -1)
    return moved.reshape(-1, moved.shape[-1]).contiguous(), tuple(moved.shape)


def entmax_forward(z: torch.Tensor, alpha: float, dim: int = -1, out_dtype: torch.dtype | None = None,
                   return_steps: bool = False, stop_tol: float | None = None, start_ranks: int | None = None):
    """Launch the forward kernel (no autograd). ``z`` on CUDA, or on CPU under ``TRITON_INTERPRET=1``.

    The result has ``out_dtype`` (default: ``z.dtype``). With ``return_steps=True`` returns ``(p, steps)``,
    ``steps`` the threshold search's iterations per row (int32, ``z``'s shape without ``dim``): what the fused
    attention kernel spends per row too, since both run :func:`entmax_rows` (a block of rows iterates as
    long as its slowest row; ``experiments/search_steps.py`` measures both). ``stop_tol`` overrides the
    search's ℓ1 stopping tolerance (default :func:`stop_tolerance` of ``z.dtype``; 0 stops on step size only).
    ``start_ranks`` overrides how many ranks the Newton search's starting point uses (default
    :func:`default_start_ranks` of ``alpha``; 1 starts at τ = −1): for experiments that compare starts, the
    weights agree either way.
    """
    alpha = check_alpha(alpha)
    tol = stop_tolerance(z.dtype, stop_tol)
    rows, moved_shape = _as_rows(z, dim)
    n_rows, n_cols = rows.shape
    if n_cols > MAX_ROW_LENGTH:
        raise ValueError(f"row length {n_cols} > {MAX_ROW_LENGTH}: too long for the register-resident kernel")
    ranks = _check_start_ranks(alpha, start_ranks)
    out = torch.empty(rows.shape, dtype=out_dtype or z.dtype, device=rows.device)
    steps = torch.zeros(n_rows, dtype=torch.int32, device=rows.device) if return_steps else out
    if rows.numel() > 0:
        kind, q_int = alpha_flavour(alpha)
        block_rows, block_cols, num_warps = _launch_shape(n_cols)
        grid = (cdiv(n_rows, block_rows),)
        signature = (str(rows.dtype), str(out.dtype), kind, q_int, ranks, return_steps, block_cols)
        with launching("row-wise entmax", signature, rows.device):
            _entmax_fwd_kernel[grid](rows, out, steps, n_rows, n_cols, rows.stride(0), out.stride(0), alpha, tol,
                                     KIND=kind, Q_INT=q_int, MAX_ITER=max_iterations(kind), START_RANKS=ranks,
                                     WITH_STEPS=return_steps, BLOCK_ROWS=block_rows, BLOCK_COLS=block_cols,
                                     num_warps=num_warps)
    p = out.reshape(moved_shape).movedim(-1, dim)
    if return_steps:
        return p, steps.reshape(moved_shape[:-1])
    return p


def entmax_backward(p: torch.Tensor, grad: torch.Tensor, alpha: float, dim: int = -1) -> torch.Tensor:
    """Launch the backward kernel: the Jacobian–vector product at weights ``p`` (no autograd)."""
    alpha = check_alpha(alpha)
    p_rows, moved_shape = _as_rows(p, dim)
    g_rows, _ = _as_rows(grad, dim)
    n_rows, n_cols = p_rows.shape
    dz = torch.empty_like(g_rows)
    if p_rows.numel() > 0:
        block_rows, block_cols, num_warps = _launch_shape(n_cols)
        grid = (cdiv(n_rows, block_rows),)
        q_int = alpha_flavour(alpha)[1]
        with launching("row-wise entmax backward", (str(p_rows.dtype), str(g_rows.dtype), q_int, block_cols),
                       p_rows.device):
            _entmax_bwd_kernel[grid](p_rows, g_rows, dz, n_rows, n_cols, p_rows.stride(0), g_rows.stride(0),
                                     dz.stride(0), alpha, Q_INT=q_int,
                                     BLOCK_ROWS=block_rows, BLOCK_COLS=block_cols, num_warps=num_warps)
    return dz.reshape(moved_shape).movedim(-1, dim)


def entmax_backward_torch(p: torch.Tensor, grad: torch.Tensor, alpha: float, dim: int = -1) -> torch.Tensor:
    """The backward kernel's torch twin: (diag(s) − s sᵀ/Σs) g along ``dim``, s = p^{2−α} on the support."""
    from ..functions import entmax_jvp_at  # same layer (maps); late, so that maps can import the kernels

    return entmax_jvp_at(p.movedim(dim, -1), alpha, grad.movedim(dim, -1)).movedim(-1, dim)


# Backward signatures (device, α, row length) whose kernel did not build: their backward takes the torch twin.
_BACKWARD_FAILURES: dict[tuple, str] = {}
logger = logging.getLogger("pladis_analysis.kernels")


class EntmaxRowwise(torch.autograd.Function):
    """α-entmax with Triton forward and closed-form Triton backward (J g, J = diag(s) − s sᵀ/Σs).

    With ``torch_backward_on_failure``, a backward kernel that does not build on this GPU gives way to its
    torch twin (one warning per signature), as the dispatch's ``auto`` does for the forward; without, its
    :class:`KernelBuildError` propagates (``backend="triton"``)."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, alpha: float, dim: int, torch_backward_on_failure: bool) -> torch.Tensor:
        # The backward needs the weights at full precision (s = p^{2−α} of a rounded p is a rounded s),
        # so the kernel writes float32 and the rounding to z's dtype happens on the copy we return.
        p32 = entmax_forward(z, alpha, dim, out_dtype=torch.float32)
        ctx.alpha, ctx.dim, ctx.fallback = alpha, dim, torch_backward_on_failure
        ctx.save_for_backward(p32)
        return p32.to(z.dtype)

    @staticmethod
    def backward(ctx, grad_p: torch.Tensor):
        (p32,) = ctx.saved_tensors
        g32 = grad_p.to(torch.float32)
        signature = (str(p32.device), ctx.alpha, p32.shape[ctx.dim])
        if torch.is_grad_enabled():
            # create_graph=True: the torch twin, whose ops on the gradient autograd can differentiate again (the
            # double-backward Jacobian-vector product), as the torch path's backward is; the kernel's are opaque
            grad_z = entmax_backward_torch(p32, g32, ctx.alpha, ctx.dim)
        elif ctx.fallback and signature in _BACKWARD_FAILURES:
            grad_z = entmax_backward_torch(p32, g32, ctx.alpha, ctx.dim)
        else:
            try:
                grad_z = entmax_backward(p32, g32, ctx.alpha, ctx.dim)
            except KernelBuildError as exc:
                if not ctx.fallback:
                    raise
                _BACKWARD_FAILURES[signature] = str(exc)
                logger.warning("%s; the backward takes the torch path for this signature from now on", exc)
                grad_z = entmax_backward_torch(p32, g32, ctx.alpha, ctx.dim)
        return grad_z.to(grad_p.dtype), None, None, None


def entmax_rowwise(z: torch.Tensor, alpha: float = 1.5, dim: int = -1, *,
                   torch_backward_on_failure: bool = False) -> torch.Tensor:
    """α-entmax along ``dim`` by the row-wise Triton kernel, differentiable.

    Float32 inside; the result has ``z``'s dtype. ``−inf`` entries get zero weight; all-``−inf`` rows give
    zeros. No input validation beyond α (the public maps validate before dispatching here). Above α = 6
    (``FLOAT32_MAX_ALPHA``) float32 loses the weights of entries tied just under the one-hot gap, below α = 1.01
    (``FLOAT32_MIN_ALPHA``) the scores' differences; the public maps hand such α to the torch path, which
    computes them in float64.
    ``torch_backward_on_failure``: see :class:`EntmaxRowwise` (the dispatch sets it under ``auto``).
    """
    return EntmaxRowwise.apply(z, check_alpha(alpha), dim, torch_backward_on_failure)
