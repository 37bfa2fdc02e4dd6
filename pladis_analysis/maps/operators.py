"""The maps as torch custom operators, which is what ``torch.compile`` sees of them.

Traced op by op, a map breaks the compiler's graph at its data-dependent steps (the NaN check on the row maxima,
the threshold search's loop over still-active rows). While compiling, the public maps call
``torch.ops.pladis_analysis.map`` instead: an opaque node whose eager body is the map itself (kernel dispatch
included). Its backward is a second operator, ``pladis_analysis.map_backward``, which recomputes the map's
saved tensors from the scores and applies the closed-form Jacobian-vector product of :mod:`.functions`, so
compiled training through a map has no graph break either. The support size (``return_support=True``) is not
an output of the operator: such calls are traced as before.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from . import _threshold as th
from .functions import (EntmaxFunction, PladisFunction, SoftmaxFunction, entmax_parts, entmax_vjp, pladis_parts,
                        pladis_vjp, softmax_parts, softmax_vjp)
from .kernels import dispatch as _dispatch

class _Map(NamedTuple):
    """A map of the torch path: its autograd Function, its forward and backward bodies (:mod:`.functions`) and
    how many scalar parameters they take (λ and/or α, in the Function's order)."""

    function: type[torch.autograd.Function]
    parts: Callable
    vjp: Callable
    n_scalars: int


#: The maps by the name of their autograd Function.
_MAPS = {"SoftmaxFunction": _Map(SoftmaxFunction, softmax_parts, softmax_vjp, 0),
         "EntmaxFunction": _Map(EntmaxFunction, entmax_parts, entmax_vjp, 1),
         "PladisFunction": _Map(PladisFunction, pladis_parts, pladis_vjp, 2)}


def autograd_function(function: str) -> type[torch.autograd.Function]:
    """The torch path's autograd Function of that name."""
    return _MAPS[function].function


def scalar_slots(function: str, args: tuple) -> tuple[float, float]:
    """A Function's scalar parameters in the operator's two slots ``(a, b)`` (unused slots 0)."""
    values = [float(x) for x in args[: _MAPS[function].n_scalars]]
    return tuple(values + [0.0] * (2 - len(values)))


def _scalars(function: str, a: float, b: float) -> tuple:
    return (a, b)[: _MAPS[function].n_scalars]


@torch.library.custom_op("pladis_analysis::map", mutates_args=())
def map_operator(z: torch.Tensor, function: str, a: float, b: float, backend: str) -> torch.Tensor:
    """The map named by its autograd Function over the last dim of ``z``, eagerly: the kernel or the torch path."""
    scalars = _scalars(function, a, b)
    fast = _dispatch.maybe_triton_map_for(function, z, scalars, backend)
    p = fast[0] if fast is not None else autograd_function(function).apply(z, *scalars, False)[0]
    return p.contiguous()  # the layout the fake promises, whatever z's (a moved dim is a strided view)


@map_operator.register_fake
def _(z, function, a, b, backend):
    return z.new_empty(z.shape)


@torch.library.custom_op("pladis_analysis::map_backward", mutates_args=())
def map_backward_operator(z: torch.Tensor, grad: torch.Tensor, function: str, a: float, b: float) -> torch.Tensor:
    """J grad (J is symmetric) of the map at ``z``, its saved tensors recomputed on the torch path."""
    ops, scalars = _MAPS[function], _scalars(function, a, b)
    work = th.working_dtype(z.dtype, scalars[-1] if scalars else None)   # α is each map's last scalar
    _, _, saved = ops.parts(z.to(work), *scalars, need_grad=True)
    return ops.vjp(saved, *scalars, grad.to(work)).to(grad.dtype).contiguous()


@map_backward_operator.register_fake
def _(z, grad, function, a, b):
    return grad.new_empty(grad.shape)


def _save_scores(ctx, inputs, output):
    z, function, a, b, _backend = inputs
    ctx.save_for_backward(z)
    ctx.function, ctx.a, ctx.b = function, a, b


def _backward(ctx, grad):
    (z,) = ctx.saved_tensors
    return torch.ops.pladis_analysis.map_backward(z, grad, ctx.function, ctx.a, ctx.b), None, None, None, None


map_operator.register_autograd(_backward, setup_context=_save_scores)
