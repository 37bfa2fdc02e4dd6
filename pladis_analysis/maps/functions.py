"""Autograd Functions of the torch path: forward from :mod:`._threshold`, hand-written backward.

Each Function acts on the last dimension, upcasts to the working dtype (float32, or float64) inside and
returns the input dtype. The backward pass is the closed-form Jacobian-vector product (the Jacobians are
symmetric), never autograd through the threshold search. Each Function takes a trailing
``need_support`` flag and returns ``(p, support_size)``, the support size (non-differentiable) being an
empty tensor unless asked for.
"""

from __future__ import annotations

import torch

from . import _threshold as th


def _no_support(x: torch.Tensor) -> torch.Tensor:
    """Placeholder support output when the caller did not ask for it (counting costs two passes)."""
    return torch.empty(0, dtype=torch.int64, device=x.device)


class SoftmaxFunction(torch.autograd.Function):
    """softmax(z) with backward (diag(p) − p pᵀ) v."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, need_support: bool = False):
        x = z.to(th.working_dtype(z.dtype))
        m = th.row_max(x)
        p = th.softmax_forward(x, m)
        support = th.softmax_support(x) if need_support else _no_support(x)
        ctx.save_for_backward(p)
        ctx.mark_non_differentiable(support)
        return p.to(z.dtype), support

    @staticmethod
    def backward(ctx, grad_p, grad_support):
        (p,) = ctx.saved_tensors
        g = th.softmax_jvp(p, grad_p.to(p.dtype))
        return g.to(grad_p.dtype), None


class EntmaxFunction(torch.autograd.Function):
    """α-entmax(z) (α > 1; α = 2 sparsemax, α = 1.5 exact 1.5-entmax) with backward
    (diag(s) − s sᵀ/Σs) v, s = p^{2−α} on the support."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, alpha: float, need_support: bool = False):
        x = z.to(th.working_dtype(z.dtype))
        sparsemax = alpha == 2.0
        # s is only needed for a backward pass; the row max is validated chunk by chunk inside
        p, s, support = th.entmax_forward(x, alpha, need_support, need_s=ctx.needs_input_grad[0])
        support = _no_support(x) if support is None else support
        ctx.save_for_backward(p if sparsemax else s)
        ctx.sparsemax = sparsemax
        ctx.mark_non_differentiable(support)
        return p.to(z.dtype), support

    @staticmethod
    def backward(ctx, grad_p, grad_support):
        (saved,) = ctx.saved_tensors
        if ctx.sparsemax:
            g = th.entmax_jvp(None, saved, grad_p.to(saved.dtype))
        else:
            g = th.entmax_jvp(saved, None, grad_p.to(saved.dtype))
        return g.to(grad_p.dtype), None, None


class PladisFunction(torch.autograd.Function):
    """PLADIS weights A = (1 − λ) softmax(z) + λ α-entmax(z) with backward ((1 − λ) J_S + λ J_E) v.

    The support size returned is that of the entmax component (A itself is dense).
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, scale: float, alpha: float, need_support: bool = False):
        x = z.to(th.working_dtype(z.dtype))
        m = th.row_max(x)
        S = th.softmax_forward(x, m)
        sparsemax = alpha == 2.0
        E, s, support = th.entmax_forward(x, alpha, need_support, need_s=ctx.needs_input_grad[0], m=m)
        support = _no_support(x) if support is None else support
        # lerp is exact at both ends: scale = 0 gives S bit for bit, scale = 1 gives E
        A = S if scale == 0.0 else torch.lerp(S, E, scale)
        ctx.save_for_backward(S, E if sparsemax else s)
        ctx.scale, ctx.sparsemax = scale, sparsemax
        ctx.mark_non_differentiable(support)
        return A.to(z.dtype), support

    @staticmethod
    def backward(ctx, grad_a, grad_support):
        S, saved = ctx.saved_tensors
        v = grad_a.to(S.dtype)
        g = th.softmax_jvp(S, v)
        if ctx.scale != 0.0:
            if ctx.sparsemax:
                ge = th.entmax_jvp(None, saved, v)
            else:
                ge = th.entmax_jvp(saved, None, v)
            g = torch.lerp(g, ge, ctx.scale)
        return g.to(grad_a.dtype), None, None, None
