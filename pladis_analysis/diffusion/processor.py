"""One attention processor for every model family, parameterised by the attention map and an optional probe.

:class:`PladisAttnProcessor` reproduces the stock diffusers processors' pre- and post-processing so that only
the map from scores to weights changes:

    residual → spatial_norm(·, temb) → (B, C, H, W) → (B, HW, C) → prepare_attention_mask → group_norm
    → q = to_q(x); k, v = to_k/to_v(norm_cross(context)) → optional q/k norm → heads (B, H, L, d)
    → out = map(q kᵀ · attn.scale + mask) v → merge heads → to_out → (B, C, H, W) → + residual
    → / rescale_output_factor

That covers ``AttnProcessor2_0`` (UNets, PixArt) and ``SanaAttnProcessor2_0`` (SANA cross-attention; it
normalises q/k *before* splitting heads, which :attr:`qk_norm_before_split` reproduces). Scores use
``attn.scale`` (``dim_head ** -0.5`` unless ``scale_qk=False``); masks may be boolean (``True`` = attend) or
additive, including the −10000 text-padding bias UNet/SANA/PixArt build from ``encoder_attention_mask``.

Branch selection: a guidance batch is made of equal chunks (``[uncond, cond]`` for CFG,
``[uncond, cond, perturbed]`` for CFG + PAG; see :mod:`.tracking`). ``branches="all"`` (the default, as the
public PLADIS implementation) applies the map to the whole batch; ``"cond"`` applies it to the prompt-conditioned
chunks (``cond`` and PAG's ``perturbed``, whose guidance direction ``cond − perturbed`` is then free of PLADIS);
``"uncond"`` to the unconditional chunk; a tuple of labels picks exactly those. Untouched chunks run stock
softmax attention (SDPA).

Softmax through this processor is ``F.scaled_dot_product_attention`` itself, so a processor with the softmax map
(what :func:`~pladis_analysis.probes.record_attention` installs to observe a stock model) changes nothing.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from .. import attention as attention_fns
from .. import maps
from .tracking import BRANCH_LABELS, SamplingState, parse_layout

MAP_KINDS = ("softmax", "sparsemax", "entmax", "pladis")


@dataclass(frozen=True)
class AttentionMap:
    """A map from scores to attention weights: ``softmax``, ``sparsemax``, ``entmax`` (α > 1) or ``pladis``
    (A = S + λ(E − S), λ = :attr:`scale`, E = α-entmax). Build with :meth:`parse` from labels such as
    ``"softmax"``, ``"sparsemax"``, ``"entmax(1.5)"``, ``"pladis(2.0, 1.5)"``."""

    kind: str = "softmax"
    alpha: float | None = None
    scale: float | None = None

    def __post_init__(self):
        if self.kind not in MAP_KINDS:
            raise ValueError(f"kind={self.kind!r}: expected one of {MAP_KINDS}")
        if self.kind == "sparsemax":
            object.__setattr__(self, "alpha", 2.0)
        if self.kind in ("entmax", "pladis"):
            if self.alpha is None or not math.isfinite(self.alpha) or self.alpha <= 1:
                raise ValueError(f"alpha={self.alpha!r}: α-entmax needs a finite α > 1")
            object.__setattr__(self, "alpha", float(self.alpha))
        if self.kind == "pladis":
            if self.scale is None or not math.isfinite(self.scale) or self.scale < 0:
                raise ValueError(f"scale={self.scale!r}: the PLADIS scale λ must be a finite number ≥ 0")
            object.__setattr__(self, "scale", float(self.scale))

    @classmethod
    def softmax(cls) -> "AttentionMap":
        return cls("softmax")

    @classmethod
    def entmax(cls, alpha: float) -> "AttentionMap":
        return cls("sparsemax") if alpha == 2 else cls("entmax", alpha=alpha)

    @classmethod
    def pladis(cls, scale: float = 2.0, alpha: float = 1.5) -> "AttentionMap":
        return cls("pladis", alpha=alpha, scale=scale)

    @classmethod
    def parse(cls, spec: "str | AttentionMap") -> "AttentionMap":
        """``"softmax"``, ``"sparsemax"``, ``"entmax15"``, ``"entmax(α)"``, ``"pladis(λ, α)"``, ``"pladis(λ)"``."""
        if isinstance(spec, AttentionMap):
            return spec
        s = str(spec).strip().lower().replace(" ", "")
        if s in ("softmax", "sparsemax"):
            return cls(s)
        if s == "entmax15":
            return cls("entmax", alpha=1.5)
        m = re.fullmatch(r"(entmax|pladis)\(([^)]*)\)", s)
        if m:
            try:
                args = [float(a) for a in m.group(2).split(",") if a]
            except ValueError:
                args = None
            if m.group(1) == "entmax" and args and len(args) == 1:
                return cls.entmax(args[0])
            if m.group(1) == "pladis" and args and len(args) in (1, 2):
                return cls.pladis(*args)
        raise ValueError(f"map={spec!r}: expected 'softmax', 'sparsemax', 'entmax(α)' or 'pladis(λ, α)'")

    @property
    def label(self) -> str:
        if self.kind in ("softmax", "sparsemax"):
            return self.kind
        if self.kind == "entmax":
            return f"entmax({self.alpha:g})"
        return f"pladis({self.scale:g}, {self.alpha:g})"

    @property
    def entmax_alpha(self) -> float | None:
        """α of the sparse component (``None`` for softmax)."""
        return self.alpha

    def weights(self, scores: torch.Tensor) -> torch.Tensor:
        """Attention weights over the last dim of ``scores`` (−inf entries get weight 0)."""
        if self.kind == "softmax":
            return maps.softmax(scores, dim=-1)
        if self.kind == "sparsemax":
            return maps.sparsemax(scores, dim=-1)
        if self.kind == "entmax":
            return maps.entmax(scores, self.alpha, dim=-1)
        return maps.pladis_weights(scores, scale=self.scale, alpha=self.alpha, dim=-1)

    @property
    def attention_name(self) -> str:
        """The map's name for :func:`pladis_analysis.attention.attention` (a name, not a callable, so the
        attention function can dispatch it to the fused kernel)."""
        if self.kind in ("softmax", "sparsemax"):
            return self.kind
        if self.kind == "entmax":
            return f"entmax:{self.alpha!r}"
        return f"pladis:{self.scale!r}:{self.alpha!r}"

    def __str__(self) -> str:
        return self.label


@dataclass
class AttentionCall:
    """Everything a probe may need about one attention call, heads split: ``query`` (B, H, Lq, d),
    ``key``/``value`` (B, H, Lk, d), ``mask`` (B, H, 1 or Lq, Lk) or ``None``, ``output`` (B, H, Lq, d) — what the
    model runs —, the normalised text ``context`` (B, Lk, C) and ``project_kv(context) -> (key, value)`` to
    recompute keys and values from a perturbed context, in the context's dtype (a float32 context gets float32
    keys and values from a half-precision model, its weights upcast for the call). ``chunk_maps`` is the map each
    guidance chunk of ``layout`` ran: ``map`` on the selected branches, softmax on the others."""

    layer: str
    attn: Any
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    mask: torch.Tensor | None
    scale: float
    output: torch.Tensor
    context: torch.Tensor
    project_kv: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    layout: tuple[str, ...]
    map: AttentionMap
    spatial: tuple[int, int] | None = None
    state: SamplingState | None = None
    chunk_maps: tuple[AttentionMap, ...] = ()


def resolve_branches(branches: str | Sequence[str]) -> frozenset[str] | None:
    """``"all"`` → ``None`` (every chunk); ``"cond"`` → {cond, perturbed}; ``"uncond"`` → {uncond};
    a sequence of labels → that set."""
    if isinstance(branches, str):
        if branches == "all":
            return None
        if branches == "cond":
            return frozenset({"cond", "perturbed"})
        if branches == "uncond":
            return frozenset({"uncond"})
        raise ValueError(f"branches={branches!r}: expected 'all', 'cond', 'uncond' or a sequence of labels "
                         f"from {BRANCH_LABELS}")
    labels = frozenset(branches)
    if not labels or not labels <= set(BRANCH_LABELS):
        raise ValueError(f"branches={tuple(branches)!r}: labels must come from {BRANCH_LABELS}")
    return labels


def _head_split(x: torch.Tensor, heads: int) -> torch.Tensor:
    # (B, L, H*d) -> (B, H, L, d)
    batch, length, inner = x.shape
    return x.view(batch, length, heads, inner // heads).transpose(1, 2)


@dataclass(eq=False)
class PladisAttnProcessor:
    """The processor (see the module docstring).

    Args:
        map: the attention map the model runs (:class:`AttentionMap` or a label); softmax is stock attention.
        branches: which guidance chunks get ``map`` (others get softmax).
        batch_layout: explicit branch labels per batch chunk (or ``"cfg"``, ``"cfg+pag"``, ``"pag"``, ``"none"``);
            ``None``/``"auto"`` reads :attr:`state`'s inferred layout.
        probe_layout: the labels the probe sees, when a recorder was given its own; ``None``: the layout the
            processor computes with. Kept apart so that a probe's labels never change what the model computes.
        probe: ``probe(call: AttentionCall)`` run after the output is computed, or ``None``.
        layer: the module path (for probes and error messages).
        state: the model's shared :class:`~.tracking.SamplingState` (step, timestep, layout), or ``None``.
        qk_norm_before_split: apply ``attn.norm_q``/``norm_k`` on (B, L, H·d) as ``SanaAttnProcessor2_0`` does.
        backend: forwarded to the attention function (``"auto"`` lets it choose a kernel).
    """

    map: AttentionMap = field(default_factory=AttentionMap.softmax)
    branches: str | Sequence[str] = "all"
    batch_layout: str | Sequence[str] | None = None
    probe_layout: str | Sequence[str] | None = None
    probe: Callable[[AttentionCall], None] | None = None
    layer: str = ""
    state: SamplingState | None = None
    qk_norm_before_split: bool = False
    backend: str = "auto"

    def __post_init__(self):
        self.map = AttentionMap.parse(self.map)
        maps.kernels.check_backend(self.backend)        # at installation, not at the model's first call
        self._branch_set = resolve_branches(self.branches)
        self.batch_layout = parse_layout(self.batch_layout)
        self.probe_layout = parse_layout(self.probe_layout)

    def replace(self, **changes) -> "PladisAttnProcessor":
        """A copy with ``changes`` (e.g. another map, or a probe attached)."""
        return replace(self, **changes)

    # -- the diffusers processor protocol -------------------------------------------------------------------
    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 **kwargs) -> torch.Tensor:
        residual = hidden_states
        if getattr(attn, "spatial_norm", None) is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim
        spatial = None
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            spatial = (height, width)
            # (B, C, H, W) -> (B, HW, C)
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)

        batch_size, key_length, _ = (hidden_states if encoder_hidden_states is None
                                     else encoder_hidden_states).shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, key_length, batch_size)
            # (B*H, 1 or Lq, Lk) -> (B, H, 1 or Lq, Lk)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        if getattr(attn, "group_norm", None) is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif getattr(attn, "norm_cross", None):
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)

        key, value = self._project_kv(attn, encoder_hidden_states)
        if self.qk_norm_before_split and attn.norm_q is not None:
            query = attn.norm_q(query)
        query = _head_split(query, attn.heads)  # (B, H, Lq, d)
        if not self.qk_norm_before_split and getattr(attn, "norm_q", None) is not None:
            query = attn.norm_q(query)

        layout = self._layout(batch_size)
        out = self._attend(query, key, value, attention_mask, attn.scale, layout)  # (B, H, Lq, d)

        if self.probe is not None:
            probe_layout = layout if self.probe_layout is None else self._layout(batch_size, self.probe_layout)
            self.probe(AttentionCall(
                layer=self.layer, attn=attn, query=query, key=key, value=value, mask=attention_mask,
                scale=attn.scale, output=out, context=encoder_hidden_states,
                project_kv=lambda context: self._project_kv(attn, context, weights_like_context=True),
                layout=probe_layout, map=self.map, spatial=spatial, state=self.state,
                chunk_maps=self.chunk_maps(probe_layout)))

        # (B, H, Lq, d) -> (B, Lq, H*d)
        hidden_states = out.transpose(1, 2).reshape(batch_size, -1, out.shape[1] * out.shape[-1])
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)  # dropout

        if input_ndim == 4:
            # (B, HW, C) -> (B, C, H, W)
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if getattr(attn, "residual_connection", False):
            hidden_states = hidden_states + residual
        return hidden_states / getattr(attn, "rescale_output_factor", 1.0)

    # -- pieces -----------------------------------------------------------------------------------------------
    def _project_kv(self, attn, context: torch.Tensor, weights_like_context: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (B, H, Lk, d) of a (normalised) context, with the module's key norm.

        ``weights_like_context``: run the projections with their parameters cast to the context's dtype (for the
        probes, which perturb a float32 copy of a half-precision model's context by less than its rounding)."""
        def run(module, x):
            if not weights_like_context:
                return module(x)
            state = {name: t.to(x.dtype) if t.is_floating_point() else t
                     for name, t in (*module.named_parameters(), *module.named_buffers())}
            return torch.func.functional_call(module, state, (x,))

        key = run(attn.to_k, context)
        value = run(attn.to_v, context)
        if self.qk_norm_before_split and attn.norm_k is not None:
            key = run(attn.norm_k, key)
        heads = attn.heads
        key, value = _head_split(key, heads), _head_split(value, heads)
        if not self.qk_norm_before_split and getattr(attn, "norm_k", None) is not None:
            key = run(attn.norm_k, key)
        return key, value

    def chunk_maps(self, layout: tuple[str, ...]) -> tuple[AttentionMap, ...]:
        """The map each guidance chunk of ``layout`` runs: :attr:`map` on the selected branches, softmax elsewhere."""
        if self._branch_set is None:
            return (self.map,) * len(layout)
        return tuple(self.map if label in self._branch_set else AttentionMap.softmax() for label in layout)

    def _layout(self, batch_size: int, explicit: tuple[str, ...] | None = None) -> tuple[str, ...]:
        layout = explicit or self.batch_layout
        if layout is None:
            layout = self.state.layout if self.state is not None else ("cond",)
        if batch_size % len(layout):
            if self._branch_set is not None:
                raise ValueError(f"layer {self.layer!r}: batch of {batch_size} cannot be split into the "
                                 f"{len(layout)} guidance chunks {layout}; pass batch_layout= explicitly")
            layout = ("cond",)
        return tuple(layout)

    def _attend(self, query, key, value, mask, scale, layout) -> torch.Tensor:
        chunk_maps = self.chunk_maps(layout)
        if len(set(chunk_maps)) == 1:  # one map for the whole batch: one call
            return self._attend_map(chunk_maps[0], query, key, value, mask, scale)
        outs = []
        chunk = query.shape[0] // len(layout)
        for i, attention_map in enumerate(chunk_maps):
            rows = slice(i * chunk, (i + 1) * chunk)
            m = None if mask is None else (mask[rows] if mask.shape[0] == query.shape[0] else mask)
            outs.append(self._attend_map(attention_map, query[rows], key[rows], value[rows], m, scale))
        return torch.cat(outs)

    def _attend_map(self, attention_map: AttentionMap, query, key, value, mask, scale) -> torch.Tensor:
        if attention_map.kind == "softmax":
            # stock attention, bit for bit what AttnProcessor2_0 / SanaAttnProcessor2_0 compute
            return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0,
                                                  is_causal=False, scale=scale)
        if attention_map.kind == "pladis":
            return attention_fns.pladis_attention(query, key, value, scale=attention_map.scale,
                                                  alpha=attention_map.alpha, attn_mask=mask, score_scale=scale,
                                                  backend=self.backend)
        return attention_fns.attention(query, key, value, map=attention_map.attention_name, attn_mask=mask,
                                       scale=scale, backend=self.backend)

def is_pladis_processor(processor) -> bool:
    return isinstance(processor, PladisAttnProcessor)
