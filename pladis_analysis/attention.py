"""Attention with a pluggable map: ``out = map(q kᵀ · scale + mask) v``, and PLADIS attention on top of it.

Layout is ``[..., L, d]`` with batch and heads leading (as ``torch.nn.functional.scaled_dot_product_attention``):
q ``[..., Lq, d]``, k ``[..., Lk, d]``, v ``[..., Lk, dv]`` → out ``[..., Lq, dv]``. Leading dimensions
broadcast. The map acts on the last dimension of the scores ``[..., Lq, Lk]`` (one distribution over keys per
query). Scores, weights and the weighted sum are computed in float32 (float64 for float64 inputs) and the
output is returned in the input dtype.

The map is a callable ``z ↦ p`` acting on the last dimension, or one of these names:

    "softmax"                    dense attention (the stock model)
    "sparsemax"                  2-entmax
    "entmax15"                   1.5-entmax (exact threshold)
    "entmax:<alpha>"             α-entmax, e.g. "entmax:1.25" (α > 1; "entmax:1.5"/"entmax:2" take the exact paths)
    "pladis", "pladis:<λ>", "pladis:<λ>:<alpha>"
                                 PLADIS weights (1−λ) softmax + λ α-entmax; defaults λ = 2, α = 1.5

Two different things are called "scale" — mind which function you call:

* ``attention(..., scale=)`` is the **score scale** multiplying q kᵀ (default 1/√d), exactly as in torch SDPA;
* ``pladis_attention(..., scale=)`` is the **PLADIS scale λ** (default 2.0), as in the paper and in
  :func:`pladis_analysis.maps.pladis_weights`; its score scale is the keyword ``score_scale`` (default 1/√d).

Masks (``attn_mask``), broadcastable to ``[..., Lq, Lk]``, follow torch SDPA:

* boolean: ``True`` = the key takes part, ``False`` = masked (its score becomes −inf);
* floating: added to the scores (−inf masks; finite values bias). diffusers builds the padding mask of the
  SANA and PixArt text encoders as a bias of −10000 on padded tokens. With that bias a padded key's softmax
  weight is about e^{−10000}, which is exactly 0 in float32 and float64, and its α-entmax weight is exactly 0 by
  construction, because the gap to the best real key exceeds 1/(α−1) (entries more than 1/(α−1) below the
  maximum are never in the support; this needs 1/(α−1) < ~10000, i.e. α > 1.0001). So −10000 padding
  equals truncating the padded keys, for softmax, entmax and PLADIS alike.

A query whose keys are **all** masked (−inf or ``False`` everywhere) gets all-zero weights and a zero output
row, never NaN (torch SDPA returns NaN there). An all −10000 row is not "all masked": −10000 is a finite bias,
the same for every key, and cancels (translation invariance), as it does in diffusers.

Under ``torch.compile`` a call with a map given by name is one custom operator,
``torch.ops.pladis_analysis.attention`` (see the last section of this module): the compiler sees it whole, with
no graph break, and CUDA graphs (``mode="reduce-overhead"``) can replay it. Calls whose inputs require grad
are traced through the torch path instead, whose map is an operator with a backward (no graph break either;
NaN scores are then reported by the map's check).

Errors: tensors of different dtypes or devices, non-floating dtypes, shapes that do not line up, masks that
do not broadcast, a bad map name, α ≤ 1 or non-finite, a negative or non-finite λ, and NaN or +inf scores
raise ``ValueError`` naming the argument and its value.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch

from . import maps
from .maps._shapes import broadcast_shapes, writes_heads_interleaved
from .maps._threshold import check_alpha, check_scale, finite_number
from .maps.kernels import dispatch as _dispatch

__all__ = ["attention", "pladis_attention", "resolve_map", "parse_map_name", "NamedMap", "AttentionMap"]

#: A map from scores ``[..., Lk]`` to weights of the same shape, acting on the last dimension.
AttentionMap = Callable[[torch.Tensor], torch.Tensor]
MapSpec = Union[str, AttentionMap]

_MAP_NAMES = ("softmax", "sparsemax", "entmax15", "entmax:<alpha>", "pladis", "pladis:<scale>",
              "pladis:<scale>:<alpha>")


# --------------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------------

def _number_in_name(text: str, where: str) -> float:
    """A number written in a map name (``"1.25"`` of ``"entmax:1.25"``); the maps' checks judge its value."""
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{where}={text!r} must be a finite real number") from None


def _check_qkv(q, k, v) -> tuple[int, ...]:
    """Validate q, k, v; return the broadcast leading (batch, heads, …) shape."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise ValueError(f"{name}.dtype={t.dtype} must be floating (float64, float32, float16, bfloat16)")
        if t.dim() < 2:
            raise ValueError(f"{name} must have shape [..., L, d] (at least 2 dims), got {tuple(t.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k and v must share one dtype, got q.dtype={q.dtype}, k.dtype={k.dtype}, "
                         f"v.dtype={v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device}, {v.device}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same feature size d: q.shape={tuple(q.shape)}, "
                         f"k.shape={tuple(k.shape)}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v must have the same number of keys Lk: k.shape={tuple(k.shape)}, "
                         f"v.shape={tuple(v.shape)}")
    try:
        return broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    except RuntimeError:
        raise ValueError(f"the leading (batch, heads) dims of q, k, v do not broadcast: q.shape={tuple(q.shape)}, "
                         f"k.shape={tuple(k.shape)}, v.shape={tuple(v.shape)}") from None


def _check_score_scale(scale, d: int) -> float:
    if scale is None:
        if d == 0:
            raise ValueError("q.shape[-1]=0: the default score scale 1/√d needs a feature size d ≥ 1 (or pass scale=)")
        return 1.0 / math.sqrt(d)
    try:
        s = float(scale)
    except (TypeError, ValueError):
        raise ValueError(f"scale={scale!r} (the score scale) must be a finite real number or None") from None
    if isinstance(scale, bool) or not finite_number(s):
        raise ValueError(f"scale={scale!r} (the score scale) must be a finite real number or None")
    return s


# --------------------------------------------------------------------------------------------------
# Maps by name
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NamedMap:
    """A parsed map name: ``kind`` is "softmax", "sparsemax", "entmax15", "entmax" or "pladis"; ``alpha`` is the
    entmax α (None for softmax) and ``scale`` the PLADIS λ (None unless kind is "pladis"). Kernel dispatch
    (a ``backend=`` choice) can read these instead of re-parsing the name."""

    kind: str
    alpha: float | None = None
    scale: float | None = None

    def function(self, backend: str = "auto") -> AttentionMap:
        """The map acting on the last dimension (``backend`` picks its row-wise kernel or the torch path)."""
        if self.kind == "softmax":
            return functools.partial(maps.softmax, dim=-1, backend=backend)
        if self.kind == "sparsemax":
            return functools.partial(maps.sparsemax, dim=-1, backend=backend)
        if self.kind == "entmax15":
            return functools.partial(maps.entmax15, dim=-1, backend=backend)
        if self.kind == "entmax":
            return functools.partial(maps.entmax, alpha=self.alpha, dim=-1, backend=backend)
        return functools.partial(maps.pladis_weights, scale=self.scale, alpha=self.alpha, dim=-1, backend=backend)


def parse_map_name(map: str) -> NamedMap:
    """Parse a map name (see the module docstring), or raise ValueError naming it."""
    if not isinstance(map, str):
        raise ValueError(f"map={map!r} must be a callable or one of the names {_MAP_NAMES}")
    name, *params = map.strip().split(":")
    if name == "softmax" and not params:
        return NamedMap("softmax")
    if name == "sparsemax" and not params:
        return NamedMap("sparsemax", alpha=2.0)
    if name == "entmax15" and not params:
        return NamedMap("entmax15", alpha=1.5)
    if name == "entmax" and len(params) == 1:
        where = f"alpha in map={map!r}"
        return NamedMap("entmax", alpha=check_alpha(_number_in_name(params[0], where), where))
    if name == "pladis" and len(params) <= 2:
        where_scale, where_alpha = f"scale in map={map!r}", f"alpha in map={map!r}"
        lam = check_scale(_number_in_name(params[0], where_scale), where_scale) if params else 2.0
        alpha = check_alpha(_number_in_name(params[1], where_alpha), where_alpha) if len(params) == 2 else 1.5
        return NamedMap("pladis", alpha=alpha, scale=lam)
    raise ValueError(f"map={map!r} is not a known map; expected a callable or one of {_MAP_NAMES}")


def resolve_map(map: MapSpec, backend: str = "auto") -> AttentionMap:
    """The callable for a map name (see the module docstring for the names; ``backend`` as in the maps), or
    ``map`` itself if callable."""
    return map if callable(map) else parse_map_name(map).function(backend)


# --------------------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------------------

def _masked_scores(q, k, attn_mask, scale: float, work: torch.dtype) -> torch.Tensor:
    """scale · q kᵀ (+ mask) in the working dtype, checked for NaN and +inf."""
    scores = torch.matmul(q.to(work), k.to(work).transpose(-1, -2)) * scale  # (..., Lq, Lk)
    if attn_mask is not None:
        if not isinstance(attn_mask, torch.Tensor):
            raise ValueError(f"attn_mask must be a torch.Tensor or None, got {type(attn_mask).__name__}")
        if attn_mask.device != q.device:
            raise ValueError(f"attn_mask is on {attn_mask.device}, q on {q.device}")
        try:
            broadcast = broadcast_shapes(attn_mask.shape, scores.shape)
        except RuntimeError:
            broadcast = None
        if broadcast != tuple(scores.shape):
            raise ValueError(f"attn_mask.shape={tuple(attn_mask.shape)} does not broadcast to the scores' shape "
                             f"[..., Lq, Lk] = {tuple(scores.shape)}")
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))  # True = keep, as torch SDPA
        elif attn_mask.is_floating_point():
            bias = attn_mask.to(work)
            if not torch.compiler.is_compiling() and (torch.isnan(bias).any() or torch.isposinf(bias).any()):
                raise ValueError("attn_mask must not contain NaN or +inf (use -inf or False to mask a key)")
            scores = scores + bias
        else:
            raise ValueError(f"attn_mask.dtype={attn_mask.dtype} must be torch.bool (True = keep) or floating "
                             f"(added to the scores)")
    if torch.compiler.is_compiling():
        # No data-dependent check while tracing (it would break the graph): the maps' check of their row maxima
        # raises on NaN and +inf scores instead, with fewer details.
        return scores
    largest = scores.amax() if scores.numel() else scores.new_zeros(())  # amax propagates NaN: one reduction
    if torch.isnan(largest) or torch.isposinf(largest):
        bad = torch.isnan(scores) | torch.isposinf(scores)
        index = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"the scores q·kᵀ·scale (+ attn_mask) contain {scores[index].item()!r} at index {index}; "
                         f"q, k or attn_mask hold NaN or inf values")
    return scores


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, map: MapSpec = "softmax",
              attn_mask: torch.Tensor | None = None, scale: float | None = None,
              backend: str = "auto") -> torch.Tensor:
    """``map(q kᵀ · scale + attn_mask) v`` on ``[..., L, d]`` tensors.

    Args:
        q: queries ``[..., Lq, d]``.
        k: keys ``[..., Lk, d]``.
        v: values ``[..., Lk, dv]``. q, k, v share dtype and device; leading dims broadcast.
        map: a name (``"softmax"``, ``"sparsemax"``, ``"entmax15"``, ``"entmax:<alpha>"``, ``"pladis"``,
            ``"pladis:<λ>"``, ``"pladis:<λ>:<alpha>"``) or a callable mapping scores ``[..., Lq, Lk]`` to
            weights of the same shape along the last dim (e.g. ``functools.partial(maps.entmax, alpha=1.3)``).
        attn_mask: ``None``, a boolean mask (True = keep) or an additive float mask, broadcastable to
            ``[..., Lq, Lk]``. Queries with every key masked get zero weights and a zero output.
        scale: the **score** scale (default 1/√d, as torch SDPA) — not the PLADIS λ.
        backend: ``"auto"`` (the fused Triton kernel on CUDA where shape and dtype fit, for maps given by name),
            ``"triton"`` (the kernel or a ValueError saying why not) or ``"torch"``; see
            :mod:`pladis_analysis.maps.kernels.dispatch`. CPU tensors take the torch path under ``"auto"``.

    Returns:
        ``[..., Lq, dv]`` in the input dtype (computed in float32, or float64 for float64 inputs).
    """
    map_fn = resolve_map(map, backend)
    _check_qkv(q, k, v)
    score_scale = _check_score_scale(scale, q.shape[-1])
    if torch.compiler.is_compiling():
        if _as_one_operator(map, (q, k, v, attn_mask)):
            _dispatch.check_backend(backend)
            return torch.ops.pladis_analysis.attention(q, k, v, attn_mask, map, score_scale, backend)
        # Needs gradients: traced through the torch path below, not the fused kernel, whose host-side dispatch
        # cannot be traced; the map there is an operator that may launch the row-wise kernel.
    elif backend != "torch":  # the fused Triton kernel where it fits
        fast = _dispatch.maybe_triton_attention_named(parse_map_name(map) if isinstance(map, str) else None, q, k, v,
                                                      attn_mask=attn_mask, score_scale=score_scale, backend=backend)
        if fast is not None:
            return fast
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    scores = _masked_scores(q, k, attn_mask, score_scale, work)  # (..., Lq, Lk)
    weights = map_fn(scores)  # (..., Lq, Lk), all-masked rows are zero
    if not isinstance(weights, torch.Tensor) or weights.shape != scores.shape:
        got = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__
        raise ValueError(f"map={map!r} returned {got}; expected weights shaped like the scores {tuple(scores.shape)}")
    out = torch.matmul(weights.to(work), v.to(work))  # (..., Lq, dv)
    return out.to(q.dtype)


def pladis_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float = 2.0, alpha: float = 1.5,
                     attn_mask: torch.Tensor | None = None, *, score_scale: float | None = None,
                     backend: str = "auto") -> torch.Tensor:
    """PLADIS attention: ``A v`` with ``A = (1−λ) softmax(z) + λ α-entmax(z)``, ``z = q kᵀ · score_scale + mask``.

    Args:
        q, k, v, attn_mask: as in :func:`attention`.
        scale: the **PLADIS scale λ** ≥ 0 (default 2.0, the paper's). λ = 0 is softmax attention bit for bit,
            λ = 1 pure α-entmax attention, λ > 1 extrapolates (weights off the entmax support turn negative).
        alpha: α > 1 of the sparse map (1.5 default; 2 = sparsemax).
        score_scale: the scale of q kᵀ (default 1/√d); this is what :func:`attention` calls ``scale``.
        backend: ``"auto"`` | ``"triton"`` | ``"torch"``, as in :func:`attention`.
    """
    lam = check_scale(scale)
    alpha = check_alpha(alpha)
    if torch.compiler.is_compiling():
        if _as_one_operator("pladis", (q, k, v, attn_mask)):
            return attention(q, k, v, map=f"pladis:{lam!r}:{alpha!r}", attn_mask=attn_mask, scale=score_scale,
                             backend=backend)
    elif backend != "torch":  # the fused Triton kernel where it fits
        _check_qkv(q, k, v)
        fast = _dispatch.maybe_triton_attention(q, k, v, map_name="pladis", attn_mask=attn_mask,
                                                score_scale=_check_score_scale(score_scale, q.shape[-1]),
                                                pladis_scale=lam, alpha=alpha, backend=backend)
        if fast is not None:
            return fast
    return attention(q, k, v, map=functools.partial(maps.pladis_weights, scale=lam, alpha=alpha, dim=-1,
                                                   backend=backend), attn_mask=attn_mask, scale=score_scale,
                     backend="torch")


# --------------------------------------------------------------------------------------------------
# torch.compile: named-map attention as one custom operator
# --------------------------------------------------------------------------------------------------
# Traced op by op, attention would break the compiler's graph at every data-dependent step (the NaN check on
# the scores, the threshold search's loop over still-active rows, the kernel's host-side dispatch), and a
# compiled model would run those pieces eagerly between graphs. As an opaque operator it is one node: the
# compiler needs only the output's shape and layout (the fake implementation below), the eager implementation
# runs at run time with every check, and the fused kernel keeps its plans. The operator has no backward: a
# call that needs gradients is traced instead, through the torch path, whose map is itself an operator with a
# backward (maps.operators), so that it has no graph break either.

def _as_one_operator(map: MapSpec, tensors: tuple) -> bool:
    """While torch.compile traces: route this call through the operator, for a map given by name (a callable
    cannot be an operator argument) when no input wants a gradient (inference, the diffusion use)."""
    if not isinstance(map, str):
        return False
    return not (torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors))


def _heads_interleaved(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """The layout the operator promises: heads interleaved as the query's when it is a head-split projection
    (what the fused kernel writes), else contiguous."""
    return writes_heads_interleaved(q, broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2]))


def _empty_output(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """An uninitialised output ``[..., Lq, dv]`` in the promised layout."""
    lead = broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    lq, dv = q.shape[-2], v.shape[-1]
    if writes_heads_interleaved(q, lead):
        return q.new_empty((lead[0], lq, lead[1], dv)).transpose(1, 2)                       # (B, H, Lq, dv)
    return q.new_empty((*lead, lq, dv))


@torch.library.custom_op("pladis_analysis::attention", mutates_args=())
def _attention_operator(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: Optional[torch.Tensor],
                        map_name: str, score_scale: float, backend: str) -> torch.Tensor:
    out = attention(q, k, v, map=map_name, attn_mask=attn_mask, scale=score_scale, backend=backend)
    in_layout = out.transpose(1, 2).is_contiguous() if _heads_interleaved(q, k, v) else out.is_contiguous()
    # the kernel writes the promised layout; the torch path's contiguous output is copied into it
    return out if in_layout else _empty_output(q, k, v).copy_(out)


@_attention_operator.register_fake
def _(q, k, v, attn_mask, map_name, score_scale, backend):
    return _empty_output(q, k, v)
