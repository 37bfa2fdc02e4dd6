"""Keep the queries and keys of selected attention calls while a model samples: ``capture_attention(...)``.

    with capture_attention(pipe, layers="cross", steps=(0, 9)) as calls:
        pipe(prompt, num_inference_steps=10)
    for call in calls:
        z = call.scores()                     # (B, H, Lq, Lk) float32, scaled and masked

:func:`~pladis_analysis.probes.record_attention` reduces every call to statistics at once. Some questions need
the score rows themselves: how many steps a threshold search takes on a model's scores, or where PLADIS weights
turn negative inside the entmax support. This probe keeps, at the sampling steps asked for, each call's query
and key as the model computed them (detached, moved to the CPU, in the model's dtype), its mask and score
scale, so the scores can be formed later in any precision. It changes nothing the model computes.

Memory grows with what is kept: B·H·(Lq + Lk)·d numbers per call (SDXL at 1024² with guidance, float16: about
10 MB per call of a 4096-token layer, 5 MB of a 1024-token one, 70 cross-attention calls per step), so choose
``steps`` and ``layers`` to fit.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import torch

from ..diffusion.layers import LayerSpec
from ..diffusion.patch import processor_for, swap_processors
from ..diffusion.processor import AttentionCall
from ..diffusion.tracking import parse_layout
from .recorder import _chain
from .stats import masked_scores


@dataclass(frozen=True)
class CapturedCall:
    """One attention call: ``query`` (B, H, Lq, d), ``key`` (B, H, Lk, d), ``mask`` (B, H, 1 or Lq, Lk) or
    ``None``, the score ``scale``, and where it happened (sampling step and timestep, layer and its group,
    the guidance ``layout`` of the batch: one label per equal chunk)."""

    step: int
    timestep: float
    layer: str
    group: str
    layout: tuple[str, ...]
    query: torch.Tensor
    key: torch.Tensor
    mask: torch.Tensor | None
    scale: float

    def scores(self, qk_dtype: torch.dtype | None = None) -> torch.Tensor:
        """The scores q kᵀ·scale in float32 with the mask applied (−inf where a boolean mask is False, an
        additive mask added), shaped (B, H, Lq, Lk). With ``qk_dtype``, q and k are rounded to it first (what a
        kernel reading bfloat16 q and k multiplies)."""
        q, k = self.query, self.key
        if qk_dtype is not None:
            q, k = q.to(qk_dtype), k.to(qk_dtype)
        mask = self.mask
        if mask is not None and mask.dtype != torch.bool:
            mask = mask.float()
        return masked_scores((q.float() @ k.float().transpose(-1, -2)) * self.scale, mask)

    def branch_rows(self, label: str) -> slice:
        """The batch rows of guidance branch ``label`` (e.g. ``"cond"``), as a slice of dimension 0."""
        if label not in self.layout:
            raise ValueError(f"label={label!r}: this call's guidance layout is {self.layout}")
        chunk = self.query.shape[0] // len(self.layout)
        start = self.layout.index(label) * chunk
        return slice(start, start + chunk)


@contextlib.contextmanager
def capture_attention(model_or_pipeline, layers: LayerSpec = "cross", steps: Iterable[int] | None = None,
                      batch_layout: str | Sequence[str] | None = "auto") -> Iterator[list[CapturedCall]]:
    """Keep the query, key, mask and scale of every selected attention call at the sampling ``steps`` (all steps
    when ``None``; steps count model calls from the first one inside the context, as in ``record_attention``).

    Yields the list the calls are appended to, in call order. The processors and the step-tracking hook are
    removed on exit, also when the body raises; the list stays readable.
    """
    wanted = None if steps is None else frozenset(int(s) for s in steps)
    if wanted is not None and any(s < 0 for s in wanted):
        raise ValueError(f"steps={sorted(wanted)}: steps count from 0")
    layout = parse_layout(batch_layout)
    calls: list[CapturedCall] = []
    started = []  # the shared sampling state, reset once so steps count from this context's first model call

    def make(layer, state):
        if not started:
            state.reset()
            started.append(state)

        def probe(call: AttentionCall) -> None:
            step = state.step
            if wanted is not None and step not in wanted:
                return
            mask = None if call.mask is None else call.mask.detach().cpu()
            calls.append(CapturedCall(step=step, timestep=state.timestep, layer=layer.name, group=layer.group,
                                      layout=call.layout, query=call.query.detach().cpu(),
                                      key=call.key.detach().cpu(), mask=mask, scale=float(call.scale)))

        current = getattr(layer.module.processor, "probe", None)
        changes = {"probe": probe if current is None else _chain(current, probe), "state": state}
        if layout is not None:
            changes["probe_layout"] = layout
        return processor_for(layer, **changes)

    swap = swap_processors(model_or_pipeline, layers, make)
    try:
        yield calls
    finally:
        swap.remove()
