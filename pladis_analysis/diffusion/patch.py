"""Install PLADIS on a model or pipeline, and take it off again exactly.

``apply_pladis`` swaps the processor of each selected attention module through the module's own
``set_processor`` (the per-module form of diffusers' ``set_attn_processor``); no class, no ``forward`` is patched,
so nothing leaks to other models and nothing depends on diffusers' internals beyond the processor protocol. The
returned :class:`ProcessorSwap` remembers the exact processor objects it replaced (PAG's, a recorder's, a
user's) and puts them back in ``remove()``, which the context-manager form calls in ``finally``.

    with apply_pladis(pipe, scale=2.0, alpha=1.5):          # default layers, see layers.default_spec
        image = pipe(prompt).images[0]

    handle = apply_pladis(unet, layers="cross", branches="cond")
    ...
    handle.remove()
"""

from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import torch

from .layers import AttentionLayer, LayerSpec, attention_layers, resolve_model, select_layers
from .processor import AttentionMap, PladisAttnProcessor, resolve_branches
from .tracking import parse_layout, track_sampling

# Processors whose maths PladisAttnProcessor reproduces (standard scaled-dot-product attention, possibly
# computed another way). Anything else — PAG's perturbed self-attention, IP-Adapter's extra image tokens, custom
# diffusion's trained projections — would silently change meaning if replaced, so it is refused.
REPLACEABLE_PROCESSORS = frozenset({
    "AttnProcessor", "AttnProcessor2_0", "SanaAttnProcessor2_0", "XFormersAttnProcessor", "AttnProcessorNPU",
    "FusedAttnProcessor2_0", "SlicedAttnProcessor", "PladisAttnProcessor",
})
_QK_NORM_BEFORE_SPLIT = frozenset({"SanaAttnProcessor2_0"})


class ProcessorSwap:
    """A set of processor replacements that can be undone exactly; a context manager and ``.remove()``.

    ``layers`` lists the module paths it touched; ``processors`` maps each path to the installed processor.
    """

    def __init__(self, model: torch.nn.Module, layers: list[AttentionLayer], new: dict[str, object],
                 exit_stack: contextlib.ExitStack):
        self.model = model
        self.layers = [layer.name for layer in layers]
        self._modules = {layer.name: layer.module for layer in layers}
        self._old = {layer.name: layer.module.processor for layer in layers}
        self.processors = new
        self._exit_stack = exit_stack
        self.active = False
        try:
            for name, processor in new.items():
                self._modules[name].set_processor(processor)
            self.active = True
        except BaseException:
            self._restore()
            raise

    def _restore(self) -> None:
        try:
            for name, processor in self._old.items():
                self._modules[name].set_processor(processor)
        finally:
            self._exit_stack.close()

    def remove(self, force: bool = False) -> None:
        """Put back the processors that were there; safe to call twice.

        Swaps come off in the reverse order they went on, as nested ``with`` blocks do. While a later swap (another
        ``apply_pladis``, a recorder) or a hand-set processor sits on one of this swap's modules, putting the old
        processors back would silently undo that later change: PLADIS off under a handle still active, a
        recorder's probe left on the model for good. So that raises ``RuntimeError`` and leaves everything as it
        is; ``force=True`` puts the old processors back regardless.
        """
        if not self.active:
            return
        replaced = [name for name, processor in self.processors.items()
                    if self._modules[name].processor is not processor]
        if replaced and not force:
            shown = ", ".join(replaced[:3]) + (" ..." if len(replaced) > 3 else "")
            raise RuntimeError(
                f"{self!r}: {len(replaced)} of its modules ({shown}) now run a processor installed after it "
                f"(a later apply_pladis or record_attention, or set by hand); remove that one first (handles come "
                f"off in the reverse order they went on), or call remove(force=True) to put back this one's "
                f"processors anyway")
        self.active = False
        self._restore()

    def __enter__(self) -> "ProcessorSwap":
        if not self.active:  # a removed handle installs nothing: the block would silently run the old processors
            raise RuntimeError(f"{self!r} was removed; a removed handle cannot be entered again (call apply_pladis "
                               "or record_attention anew)")
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return f"<{type(self).__name__} {state}: {len(self.layers)} layers>"


def check_replaceable(layers: Sequence[AttentionLayer]) -> None:
    """Raise ``ValueError`` if a selected module's processor is not one whose maths we reproduce."""
    bad = [(layer.name, type(layer.module.processor).__name__) for layer in layers
           if type(layer.module.processor).__name__ not in REPLACEABLE_PROCESSORS]
    if bad:
        shown = ", ".join(f"{name} ({cls})" for name, cls in bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise ValueError(f"layers: {len(bad)} selected module(s) run processors PLADIS cannot stand in for: "
                         f"{shown}. Replaceable: {sorted(REPLACEABLE_PROCESSORS)}. PAG's processors live on "
                         "self-attention; select cross-attention layers (the default) to combine PLADIS with PAG.")


def processor_for(layer: AttentionLayer, **changes) -> PladisAttnProcessor:
    """The PladisAttnProcessor that stands in for ``layer``'s current processor, with ``changes`` applied.

    An existing PladisAttnProcessor (e.g. a recorder's) is copied so its other settings (a probe) survive.
    """
    current = layer.module.processor
    if isinstance(current, PladisAttnProcessor):
        return current.replace(**changes)
    before_split = type(current).__name__ in _QK_NORM_BEFORE_SPLIT
    return PladisAttnProcessor(layer=layer.name, qk_norm_before_split=before_split, **changes)


def swap_processors(model_or_pipeline, layers: LayerSpec,
                    make: Callable[[AttentionLayer, object], PladisAttnProcessor], track: bool = True) -> ProcessorSwap:
    """Select ``layers``, build ``make(layer, state)`` for each and install them; returns the undo handle.

    ``state`` is the model's shared :class:`~.tracking.SamplingState`, kept alive (with its forward hook) until
    the handle is removed; with ``track=False`` no hook is installed and ``state`` is ``None`` (the hook reads
    the timestep and compares latent chunks, which synchronises a GPU once per model call).
    """
    model = resolve_model(model_or_pipeline)
    chosen = select_layers(model_or_pipeline, layers)
    check_replaceable(chosen)
    stack = contextlib.ExitStack()
    try:
        state = stack.enter_context(track_sampling(model, pipeline=model_or_pipeline)) if track else None
        new = {layer.name: make(layer, state) for layer in chosen}
    except BaseException:
        stack.close()
        raise
    return ProcessorSwap(model, chosen, new, stack)


def apply_pladis(model_or_pipeline, scale: float = 2.0, alpha: float = 1.5, layers: LayerSpec = "default",
                 branches: str | Sequence[str] = "all", batch_layout: str | Sequence[str] | None = "auto",
                 map: str | AttentionMap | None = None, backend: str = "auto") -> ProcessorSwap:
    """Run PLADIS (A = S + λ(E − S), λ = ``scale``, E = α-entmax) in the selected attention layers.

    Args:
        model_or_pipeline: a diffusers pipeline with a ``unet`` or ``transformer`` (SD1.5, SDXL, SANA, PixArt,
            the bundled ``ShapesPipeline``) or a bare denoiser.
        scale: λ; 0 is the stock model, 1 pure α-entmax attention, > 1 extrapolation.
        alpha: α of the entmax component (1.5 default, 2 = sparsemax).
        layers: a spec for :func:`~.layers.select_layers`; ``"default"`` is the cross-attention of the down and
            up blocks for UNets (the public implementation's choice; the paper says all cross-attention, use
            ``"cross"`` for that) and every cross-attention for DiTs.
        branches: which guidance chunks get PLADIS: ``"all"`` (as the public implementation), ``"cond"``,
            ``"uncond"`` or a tuple of labels (see :mod:`.processor`).
        batch_layout: ``"auto"`` (infer per model call, see :mod:`.tracking`), ``"cfg"``, ``"cfg+pag"``,
            ``"pag"``, ``"none"`` or a tuple of labels.
        map: run another map instead (``"entmax(1.5)"``, ``"sparsemax"``, ...); overrides ``scale``/``alpha``.
        backend: forwarded to the attention functions.

    Returns:
        a :class:`ProcessorSwap`: use it as a context manager or call ``.remove()``.
    """
    attention_map = AttentionMap.parse(map) if map is not None else AttentionMap.pladis(scale, alpha)
    # Validate before touching the model. Only a branch-selective PLADIS needs the guidance layout of each model
    # call, hence the sampling-state hook (which syncs a GPU once per call); on every branch it runs without.
    branch_selective = resolve_branches(branches) is not None
    layout = parse_layout(batch_layout)

    def make(layer: AttentionLayer, state) -> PladisAttnProcessor:
        changes = dict(map=attention_map, branches=branches, batch_layout=layout, backend=backend)
        if state is not None:  # otherwise a recorder's processor keeps the state it has
            changes["state"] = state
        return processor_for(layer, **changes)

    return swap_processors(model_or_pipeline, layers, make, track=branch_selective)


def current_processors(model_or_pipeline) -> dict[str, object]:
    """``{module path: processor object}`` for every attention module (to compare before/after)."""
    return {layer.name: layer.module.processor for layer in attention_layers(model_or_pipeline)}
