"""Row-wise α-entmax as Triton kernels: the whole row lives in registers.

α-entmax solves  p = argmax_{p ∈ Δ} ⟨p, z⟩ + H^T_α(p)  (Peters, Niculae & Martins 2019); its solution is
p_i = [z'_i − τ]_+^{1/(α−1)} with z' = (α−1) z and τ the unique root of f(τ) = Σ_i [z'_i − τ]_+^{1/(α−1)} − 1.
After shifting the row so that max z' = 0, τ lies in the bracket [−1, −n^{1−α}] (n = number of finite
entries): at τ = −1 the largest entry alone has weight 1, at τ = −n^{1−α} every entry has weight ≤ 1/n.

Cross-attention rows are short (77–300 text tokens), so a whole row fits in registers and τ can be found
without sorting:

* any α > 1: Halley steps on f, safeguarded by the bracket (a step that leaves the current bracket is
  replaced by bisection), then the weights are renormalised to sum to one, like ``entmax_bisect`` does;
* α = 2 (sparsemax) and α = 1.5: Newton steps from the left end of the bracket. f is convex and
  decreasing, so these never overshoot: every iterate's support contains the true support, and for
  sparsemax Newton's step *is* the closed form on the current support (Michelot's algorithm). Once the
  iterates stop moving, the closed form on the support {z' > τ} gives τ exactly (up to rounding):
  τ = (Σ_S z' − 1)/|S| for α = 2 and τ = M − sqrt((1 − Σ_S (z' − M)²)/|S|), M = mean_S z', for α = 1.5.

The backward kernel is the closed-form Jacobian–vector product  ∂z = s ⊙ g − s (⟨s, g⟩ / Σ s)  with
s_i = p_i^{2−α} on the support and 0 off it (s = 1 on the support for sparsemax, √p for α = 1.5).

Entries equal to −inf are treated as masked (zero weight); a row whose entries are all −inf gets all-zero
weights and zero gradient, never NaN. The kernels compute in float32 and return the input dtype.

Entry point for users: :func:`entmax_rowwise` (an autograd-aware wrapper around :class:`EntmaxRowwise`).
Dispatch between this and the torch path lives in :mod:`pladis_analysis.maps.kernels.dispatch`.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .._shapes import block_size, cdiv

# Kernel flavours of the threshold search, chosen from α on the host (constexpr in the kernel).
KIND_GENERAL = 0
KIND_ENTMAX15 = 1
KIND_SPARSEMAX = 2

# Longest row the row-wise kernel keeps in registers; longer rows go to the torch path.
MAX_ROW_LENGTH = 4096
# Iteration caps. Newton/Halley converge in a handful of steps; the caps only bound pathological rows
# (bisection alone would reach float32 resolution of a unit bracket in ~24 steps).
MAX_ITER_GENERAL = 40
MAX_ITER_EXACT = 64


def alpha_kind(alpha: float) -> int:
    """The kernel flavour for ``alpha``: exact paths for 1.5 and 2, the safeguarded Halley path otherwise."""
    if alpha == 2.0:
        return KIND_SPARSEMAX
    if alpha == 1.5:
        return KIND_ENTMAX15
    return KIND_GENERAL


def max_iterations(kind: int) -> int:
    """The iteration cap of a flavour: Newton with the exact finish (1.5, 2) or safeguarded Halley."""
    return MAX_ITER_EXACT if kind in (KIND_ENTMAX15, KIND_SPARSEMAX) else MAX_ITER_GENERAL


@triton.jit
def _powq(x, pos, q, KIND: tl.constexpr):
    """[x]_+^q for the three flavours (q = 1/(α−1)); ``pos`` is x > 0."""
    if KIND == 2:
        p = tl.where(pos, x, 0.0)
    elif KIND == 1:
        p = tl.where(pos, x * x, 0.0)
    else:
        xs = tl.where(pos, x, 1.0)  # keep log2 away from non-positive values
        p = tl.where(pos, tl.exp2(q * tl.log2(xs)), 0.0)
    return p


@triton.jit
def entmax_rows(z, valid, alpha, KIND: tl.constexpr, MAX_ITER: tl.constexpr):
    """α-entmax of each row of a [R, C] float32 tile held in registers.

    ``valid`` marks real entries (False for padding columns and −inf scores). Returns ``(p, tau, n_valid)``:
    the weights (0 on invalid entries and on rows with no valid entry), the threshold τ in the shifted,
    scaled space (max z' = 0), and the number of valid entries per row.
    """
    neg_inf = float("-inf")
    n_valid = tl.sum(valid.to(tl.float32), axis=1)
    row_ok = n_valid > 0.0
    m = tl.max(tl.where(valid, z, neg_inf), axis=1)
    m = tl.where(row_ok, m, 0.0)
    # z' = (α−1)(z − max z): max z' = 0, invalid entries at −inf so that z' − τ < 0 for every τ.
    zp = tl.where(valid, (z - m[:, None]) * (alpha - 1.0), neg_inf)
    q = 1.0 / (alpha - 1.0)

    lo = tl.full(m.shape, -1.0, tl.float32)
    # −n^{1−α}; for an empty row any bracket will do, its weights are zeroed at the end.
    hi = -tl.exp2((1.0 - alpha) * tl.log2(tl.maximum(n_valid, 1.0)))
    tau = lo
    active = row_ok & (hi > lo)
    it = 0
    while (tl.max(active.to(tl.int32), axis=0) > 0) & (it < MAX_ITER):
        x = zp - tau[:, None]
        pos = x > 0.0
        p = _powq(x, pos, q, KIND)
        f = tl.sum(p, axis=1) - 1.0
        if KIND == 2:
            # f' = −|S|; Newton from the left = closed form on the current support (Michelot).
            cand = tau + f / tl.maximum(tl.sum(pos.to(tl.float32), axis=1), 1.0)
        elif KIND == 1:
            # f' = −2 Σ_S x; Newton from the left never overshoots because f is convex.
            cand = tau + f / tl.maximum(2.0 * tl.sum(tl.where(pos, x, 0.0), axis=1), 1e-30)
        else:
            xs = tl.where(pos, x, 1.0)
            p_over_x = tl.where(pos, p / xs, 0.0)
            fp = -q * tl.sum(p_over_x, axis=1)
            fpp = q * (q - 1.0) * tl.sum(tl.where(pos, p_over_x / xs, 0.0), axis=1)
            # Halley: τ − 2 f f' / (2 f'² − f f''); a step outside the bracket becomes a bisection.
            lo = tl.where(f > 0.0, tau, lo)
            hi = tl.where(f < 0.0, tau, hi)
            den = 2.0 * fp * fp - f * fpp
            cand = tau - 2.0 * f * fp / tl.where(den == 0.0, 1.0, den)  # den = 0 only on empty rows
            inside = (cand > lo) & (cand < hi)  # False for NaN/inf candidates too
            cand = tl.where(inside, cand, 0.5 * (lo + hi))
            cand = tl.where(f == 0.0, tau, cand)
        moved = tl.abs(cand - tau) > 1e-7 * (1.0 + tl.abs(tau))
        tau = tl.where(active, cand, tau)
        active = active & moved
        it += 1

    if KIND == 2:
        # Closed form on the support the iteration settled on: exact up to rounding.
        pos = zp > tau[:, None]
        k = tl.maximum(tl.sum(pos.to(tl.float32), axis=1), 1.0)
        tau = (tl.sum(tl.where(pos, zp, 0.0), axis=1) - 1.0) / k
        p = tl.where(zp > tau[:, None], zp - tau[:, None], 0.0)
    elif KIND == 1:
        pos = zp > tau[:, None]
        k = tl.maximum(tl.sum(pos.to(tl.float32), axis=1), 1.0)
        mean = tl.sum(tl.where(pos, zp, 0.0), axis=1) / k
        dev = tl.where(pos, zp - mean[:, None], 0.0)
        delta = (1.0 - tl.sum(dev * dev, axis=1)) / k
        tau = mean - tl.sqrt(tl.maximum(delta, 0.0))
        x = zp - tau[:, None]
        p = tl.where(x > 0.0, x * x, 0.0)
    else:
        x = zp - tau[:, None]
        p = _powq(x, x > 0.0, q, KIND)
        # Renormalise: removes the residual of the stopping rule so that Σ p = 1 to rounding.
        p = p / tl.maximum(tl.sum(p, axis=1), 1e-30)[:, None]
    p = tl.where(row_ok[:, None], p, 0.0)
    return p, tau, n_valid


@triton.jit
def entmax_rows_jvp(p, g, alpha, KIND: tl.constexpr):
    """Closed-form (J g) for rows of α-entmax weights ``p``: s ⊙ g − s ⟨s, g⟩ / Σ s, s = p^{2−α} on the support."""
    pos = p > 0.0
    if KIND == 2:
        s = pos.to(tl.float32)
    elif KIND == 1:
        s = tl.sqrt(p)
    else:
        s = tl.where(pos, tl.exp2((2.0 - alpha) * tl.log2(tl.where(pos, p, 1.0))), 0.0)
    g = tl.where(pos, g, 0.0)
    s_sum = tl.sum(s, axis=1)
    coef = tl.sum(s * g, axis=1) / tl.maximum(s_sum, 1e-30)
    return s * g - s * coef[:, None]


@triton.jit
def _entmax_fwd_kernel(Z, P, n_rows, n_cols, stride_z, stride_p, alpha,
                       KIND: tl.constexpr, MAX_ITER: tl.constexpr,
                       BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)   # 64-bit: rows·stride may pass 2³¹
    cols = tl.arange(0, BLOCK_COLS)
    inb = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    z = tl.load(Z + rows[:, None] * stride_z + cols[None, :], mask=inb, other=float("-inf")).to(tl.float32)
    valid = inb & (z > float("-inf"))
    p, tau, n_valid = entmax_rows(z, valid, alpha, KIND, MAX_ITER)
    tl.store(P + rows[:, None] * stride_p + cols[None, :], p.to(P.dtype.element_ty), mask=inb)


@triton.jit
def _entmax_bwd_kernel(P, G, DZ, n_rows, n_cols, stride_p, stride_g, stride_dz, alpha,
                       KIND: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = tl.arange(0, BLOCK_COLS)
    inb = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    p = tl.load(P + rows[:, None] * stride_p + cols[None, :], mask=inb, other=0.0).to(tl.float32)
    g = tl.load(G + rows[:, None] * stride_g + cols[None, :], mask=inb, other=0.0).to(tl.float32)
    dz = entmax_rows_jvp(p, g, alpha, KIND)
    tl.store(DZ + rows[:, None] * stride_dz + cols[None, :], dz.to(DZ.dtype.element_ty), mask=inb)


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


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not math.isfinite(alpha) or alpha <= 1.0:
        raise ValueError(f"alpha={alpha!r}: α-entmax needs a finite alpha > 1 (use softmax for alpha = 1)")
    return alpha


def entmax_forward(z: torch.Tensor, alpha: float, dim: int = -1, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Launch the forward kernel (no autograd). ``z`` on CUDA, or on CPU under ``TRITON_INTERPRET=1``.

    The result has ``out_dtype`` (default: ``z.dtype``).
    """
    alpha = _check_alpha(alpha)
    rows, moved_shape = _as_rows(z, dim)
    n_rows, n_cols = rows.shape
    if n_cols > MAX_ROW_LENGTH:
        raise ValueError(f"row length {n_cols} > {MAX_ROW_LENGTH}: too long for the register-resident kernel")
    out = torch.empty(rows.shape, dtype=out_dtype or z.dtype, device=rows.device)
    if rows.numel() > 0:
        kind = alpha_kind(alpha)
        block_rows, block_cols, num_warps = _launch_shape(n_cols)
        grid = (cdiv(n_rows, block_rows),)
        _entmax_fwd_kernel[grid](rows, out, n_rows, n_cols, rows.stride(0), out.stride(0), alpha,
                                 KIND=kind, MAX_ITER=max_iterations(kind),
                                 BLOCK_ROWS=block_rows, BLOCK_COLS=block_cols, num_warps=num_warps)
    return out.reshape(moved_shape).movedim(-1, dim)


def entmax_backward(p: torch.Tensor, grad: torch.Tensor, alpha: float, dim: int = -1) -> torch.Tensor:
    """Launch the backward kernel: the Jacobian–vector product at weights ``p`` (no autograd)."""
    alpha = _check_alpha(alpha)
    p_rows, moved_shape = _as_rows(p, dim)
    g_rows, _ = _as_rows(grad, dim)
    n_rows, n_cols = p_rows.shape
    dz = torch.empty_like(g_rows)
    if p_rows.numel() > 0:
        block_rows, block_cols, num_warps = _launch_shape(n_cols)
        grid = (cdiv(n_rows, block_rows),)
        _entmax_bwd_kernel[grid](p_rows, g_rows, dz, n_rows, n_cols, p_rows.stride(0), g_rows.stride(0),
                                 dz.stride(0), alpha, KIND=alpha_kind(alpha),
                                 BLOCK_ROWS=block_rows, BLOCK_COLS=block_cols, num_warps=num_warps)
    return dz.reshape(moved_shape).movedim(-1, dim)


class EntmaxRowwise(torch.autograd.Function):
    """α-entmax with Triton forward and closed-form Triton backward (J g, J = diag(s) − s sᵀ/Σs)."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, alpha: float, dim: int) -> torch.Tensor:
        # The backward needs the weights at full precision (s = p^{2−α} of a rounded p is a rounded s),
        # so the kernel writes float32 and the rounding to z's dtype happens on the copy we return.
        p32 = entmax_forward(z, alpha, dim, out_dtype=torch.float32)
        ctx.alpha, ctx.dim = alpha, dim
        ctx.save_for_backward(p32)
        return p32.to(z.dtype)

    @staticmethod
    def backward(ctx, grad_p: torch.Tensor):
        (p32,) = ctx.saved_tensors
        grad_z = entmax_backward(p32, grad_p.to(torch.float32), ctx.alpha, ctx.dim)
        return grad_z.to(grad_p.dtype), None, None


def entmax_rowwise(z: torch.Tensor, alpha: float = 1.5, dim: int = -1) -> torch.Tensor:
    """α-entmax along ``dim`` by the row-wise Triton kernel, differentiable.

    Float32 inside; the result has ``z``'s dtype. ``−inf`` entries get zero weight; all-``−inf`` rows give
    zeros. No input validation beyond α (the public maps validate before dispatching here).
    """
    return EntmaxRowwise.apply(z, _check_alpha(alpha), dim)
