"""Autograd Functions of the torch path: forward from :mod:`._threshold`, hand-written backward.

Each map's forward and backward are plain functions first (``*_parts``, ``*_vjp``), which the Functions wrap and
the backward of the compiled maps' operator (:mod:`.operators`) calls directly.

Each Function acts on the last dimension, upcasts to the working dtype (float32; float64 for float64 input and
for α outside [:data:`._threshold.FLOAT32_MIN_ALPHA`, :data:`._threshold.FLOAT32_MAX_ALPHA`]) inside and
returns the input dtype. The backward pass is the closed-form Jacobian-vector product (the Jacobians are
symmetric), never autograd through the threshold search.
Each Function takes a trailing ``need_support`` flag and returns ``(p, support_size)``, the support size
(non-differentiable) being an empty tensor unless asked for.

Twice differentiable only in the incoming gradient. Under ``create_graph=True`` a backward is built from
differentiable ops on the gradient it receives, so the double-backward Jacobian-vector product
(``torch.autograd.functional.jvp``) is exact; the tensors it saved from the forward (p, s, S) are constants to
autograd, so a Hessian through a map lacks the map's own curvature (except softmax of float32/float64 scores,
whose saved p is its output). Second derivatives in z are not implemented.
"""

from __future__ import annotations

import torch

from . import _threshold as th


def _no_support(x: torch.Tensor) -> torch.Tensor:
    """Placeholder support output when the caller did not ask for it (counting costs two passes)."""
    return torch.empty(0, dtype=torch.int64, device=x.device)


# -- forward and backward of each map, outside autograd ----------------------------------------------------
# ``*_parts(x, ...)`` take scores in the working dtype and return ``(weights, support, saved)``: ``saved`` is what
# ``*_vjp(saved, ..., g)`` needs. The autograd Functions below and the backward of the compiled maps'
# operator (:mod:`.operators`) both use them.

def softmax_parts(x: torch.Tensor, need_support: bool = False, need_grad: bool = True):
    p = th.softmax_forward(x, th.row_max(x))
    support = th.softmax_support(x) if need_support else _no_support(x)
    return p, support, (p,)


def softmax_vjp(saved: tuple, g: torch.Tensor) -> torch.Tensor:
    (p,) = saved
    return th.softmax_jvp(p, g)


def entmax_parts(x: torch.Tensor, alpha: float, need_support: bool = False, need_grad: bool = True,
                 m: torch.Tensor | None = None):
    # s is only needed for a backward pass; the row max is validated chunk by chunk inside
    p, s, support = th.entmax_forward(x, alpha, need_support, need_s=need_grad, m=m)
    support = _no_support(x) if support is None else support
    return p, support, (p if alpha == 2.0 else s,)


def entmax_vjp(saved: tuple, alpha: float, g: torch.Tensor) -> torch.Tensor:
    (kept,) = saved
    return th.entmax_jvp(None, kept, g) if alpha == 2.0 else th.entmax_jvp(kept, None, g, centre=alpha > 2.0)


def entmax_jvp_at(p: torch.Tensor, alpha: float, v: torch.Tensor) -> torch.Tensor:
    """J v along the last dim with J the α-entmax Jacobian (α > 1) at the weights ``p`` alone, s = p^{2−α} on the
    support: for callers that kept the weights, not the forward's s (the row-wise kernel's torch twin, the
    sensitivity probes). Centred for α > 2 like :func:`entmax_vjp`.

    Computed in the maps' working dtype and returned in that of ``p`` and ``v``: above α = 6 that is float64,
    since s overflows float32 at a weight of 1e-8 once α > 6.8 (s = 1e40 at α = 7), and inf · 0 at the centred
    entry would turn the row into NaN, although J v is of the order of the other entries' s."""
    out_dtype = torch.promote_types(p.dtype, v.dtype)
    work = th.working_dtype(out_dtype, alpha)
    p, v = p.to(work), v.to(work)
    s = None if alpha == 2.0 else torch.where(p > 0, p.pow(2.0 - alpha), torch.zeros_like(p))
    return th.entmax_jvp(s, p, v, centre=alpha > 2.0).to(out_dtype)


def pladis_parts(x: torch.Tensor, scale: float, alpha: float, need_support: bool = False, need_grad: bool = True):
    m = th.row_max(x)
    S = th.softmax_forward(x, m)
    E, support, (kept,) = entmax_parts(x, alpha, need_support, need_grad, m=m)
    # lerp is exact at both ends: scale = 0 gives S bit for bit, scale = 1 gives E
    A = S if scale == 0.0 else torch.lerp(S, E, scale)
    return A, support, (S, kept)


def pladis_vjp(saved: tuple, scale: float, alpha: float, g: torch.Tensor) -> torch.Tensor:
    S, kept = saved
    grad = th.softmax_jvp(S, g)
    if scale != 0.0:
        grad = torch.lerp(grad, entmax_vjp((kept,), alpha, g), scale)
    return grad


# -- autograd Functions ----------------------------------------------------------------------------------------

class SoftmaxFunction(torch.autograd.Function):
    """softmax(z) with backward (diag(p) − p pᵀ) v."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, need_support: bool = False):
        p, support, saved = softmax_parts(z.to(th.working_dtype(z.dtype)), need_support)
        ctx.save_for_backward(*saved)
        ctx.mark_non_differentiable(support)
        return p.to(z.dtype), support

    @staticmethod
    def backward(ctx, grad_p, grad_support):
        saved = ctx.saved_tensors
        return softmax_vjp(saved, grad_p.to(saved[0].dtype)).to(grad_p.dtype), None


class EntmaxFunction(torch.autograd.Function):
    """α-entmax(z) (α > 1; α = 2 sparsemax, α = 1.5 exact 1.5-entmax) with backward
    (diag(s) − s sᵀ/Σs) v, s = p^{2−α} on the support."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, alpha: float, need_support: bool = False):
        p, support, saved = entmax_parts(z.to(th.working_dtype(z.dtype, alpha)), alpha, need_support,
                                         need_grad=ctx.needs_input_grad[0])
        ctx.save_for_backward(*saved)
        ctx.alpha = alpha
        ctx.mark_non_differentiable(support)
        return p.to(z.dtype), support

    @staticmethod
    def backward(ctx, grad_p, grad_support):
        saved = ctx.saved_tensors
        return entmax_vjp(saved, ctx.alpha, grad_p.to(saved[0].dtype)).to(grad_p.dtype), None, None


class PladisFunction(torch.autograd.Function):
    """PLADIS weights A = (1 − λ) softmax(z) + λ α-entmax(z) with backward ((1 − λ) J_S + λ J_E) v.

    The support size returned is that of the entmax component (A itself is dense).
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, scale: float, alpha: float, need_support: bool = False):
        A, support, saved = pladis_parts(z.to(th.working_dtype(z.dtype, alpha)), scale, alpha, need_support,
                                         need_grad=ctx.needs_input_grad[0])
        ctx.save_for_backward(*saved)
        ctx.scale, ctx.alpha = scale, alpha
        ctx.mark_non_differentiable(support)
        return A.to(z.dtype), support

    @staticmethod
    def backward(ctx, grad_a, grad_support):
        saved = ctx.saved_tensors
        return pladis_vjp(saved, ctx.scale, ctx.alpha, grad_a.to(saved[0].dtype)).to(grad_a.dtype), None, None, None
