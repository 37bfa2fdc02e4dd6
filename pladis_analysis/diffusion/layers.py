"""Find and name the attention modules of a diffusers model, and select them with a spec.

Names are module paths as ``model.named_modules()`` spells them (the path a diffusers user sees in
``model.attn_processors`` minus the ``.processor`` suffix), e.g.
``down_blocks.1.attentions.0.transformer_blocks.0.attn2`` (UNet) or ``transformer_blocks.7.attn2`` (DiT).

Selection specs (:func:`select_layers`):

* ``"cross"``, ``"self"``, ``"all"`` — every attention module of that kind;
* ``"cross:down,up"`` — kind restricted to block groups (``down``, ``mid``, ``up`` for UNets; ``transformer``
  for DiTs' ``transformer_blocks``);
* ``"default"`` or ``None`` — :func:`default_spec` of the model (see there for why);
* a list/tuple of names; an item containing ``*``, ``?`` or ``[`` is a glob (``fnmatch``) pattern; every item
  must match something; :class:`AttentionLayer` items (what :func:`select_layers` returns) stand for their names;
* a predicate ``f(layer: AttentionLayer) -> bool``.

A spec that matches nothing raises ``ValueError`` listing what exists.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence, Union

import torch

LayerSpec = Union[str, None, Sequence[str], Callable[["AttentionLayer"], bool]]

_GROUP_OF_PREFIX = {"down_blocks": "down", "mid_block": "mid", "up_blocks": "up",
                    "transformer_blocks": "transformer", "single_transformer_blocks": "transformer"}
KINDS = ("cross", "self", "all")


@dataclass(frozen=True)
class AttentionLayer:
    """One attention module: its path ``name``, ``kind`` (``"cross"``/``"self"``), block ``group``
    (``down``/``mid``/``up``/``transformer``/``other``), the block index inside the group (``None`` for ``mid``)
    and the module itself."""

    name: str
    kind: str
    group: str
    block: int | None
    module: torch.nn.Module


def resolve_model(model_or_pipeline) -> torch.nn.Module:
    """The denoiser of a pipeline (its ``unet`` or ``transformer``), or the model itself.

    Any ``DiffusionPipeline`` (diffusers' own, or the bundled ``ShapesPipeline``) with one of those attributes
    works, as does a bare ``torch.nn.Module``.
    """
    for attr in ("unet", "transformer"):
        model = getattr(model_or_pipeline, attr, None)
        if isinstance(model, torch.nn.Module):
            return model
    if isinstance(model_or_pipeline, torch.nn.Module):
        return model_or_pipeline
    raise ValueError(f"model_or_pipeline={type(model_or_pipeline).__name__}: expected a torch.nn.Module or a "
                     "pipeline with a `unet` or `transformer` attribute")


def unwrap_compiled(model: torch.nn.Module) -> torch.nn.Module:
    """The module ``torch.compile`` wrapped, or ``model`` itself.

    ``pipe.unet = torch.compile(pipe.unet)`` (as diffusers' docs suggest) returns a wrapper whose
    ``named_modules()`` prefixes every path with ``_orig_mod.``; layer names and block groups are the inner
    model's, so specs and results read the same with and without compilation. Processors set on the inner modules
    are what the compiled model runs.
    """
    return getattr(model, "_orig_mod", model)


def _is_attention(module: torch.nn.Module) -> bool:
    # the test diffusers itself uses for `attn_processors`: a module that owns a swappable processor
    return hasattr(module, "set_processor") and hasattr(module, "processor")


def _is_cross(module: torch.nn.Module) -> bool:
    return bool(getattr(module, "is_cross_attention", False))


def _group_and_block(name: str) -> tuple[str, int | None]:
    parts = name.split(".")
    group = _GROUP_OF_PREFIX.get(parts[0], "other")
    block = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
    return group, block


def attention_layers(model_or_pipeline) -> list[AttentionLayer]:
    """Every attention module of the model, in ``named_modules`` order."""
    model = unwrap_compiled(resolve_model(model_or_pipeline))
    layers = []
    for name, module in model.named_modules():
        if name and _is_attention(module):
            group, block = _group_and_block(name)
            layers.append(AttentionLayer(name, "cross" if _is_cross(module) else "self", group, block, module))
    return layers


def is_unet(model_or_pipeline) -> bool:
    """A UNet-style denoiser: attention in down/up block groups."""
    model = resolve_model(model_or_pipeline)
    return hasattr(model, "down_blocks") and hasattr(model, "up_blocks")


def default_spec(model_or_pipeline) -> str:
    """The layers PLADIS touches by default.

    UNets (SD1.5, SDXL, the bundled model): ``"cross:down,up"``, the cross-attention of the down and up blocks,
    *excluding the mid block*. That is what the public PLADIS implementation does for SDXL, although the paper's
    text says PLADIS replaces "all cross-attention"; we follow the code so that numbers reproduce the released
    results, and ``layers="cross"`` gives the paper's wording. DiTs (SANA, PixArt) have no block groups, so the
    default is every cross-attention (``"cross"``).
    """
    return "cross:down,up" if is_unet(model_or_pipeline) else "cross"


def describe_layers(layers: Iterable[AttentionLayer], max_names: int = 60) -> str:
    """A summary for error messages: counts per kind and group, then the names."""
    layers = list(layers)
    counts: dict[tuple[str, str], int] = {}
    for layer in layers:
        counts[(layer.kind, layer.group)] = counts.get((layer.kind, layer.group), 0) + 1
    summary = ", ".join(f"{kind}:{group}={n}" for (kind, group), n in sorted(counts.items()))
    names = [layer.name for layer in layers]
    shown = "\n  ".join(names[:max_names]) + (f"\n  ... and {len(names) - max_names} more"
                                               if len(names) > max_names else "")
    return f"{len(layers)} attention modules ({summary or 'none'}):\n  {shown}"


def _parse_kind_spec(spec: str, layers: list[AttentionLayer]) -> tuple[str, set[str] | None]:
    kind, _, groups = spec.partition(":")
    kind = kind.strip()
    if kind not in KINDS:  # most often a misspelt module name: show what exists
        raise ValueError(f"layers={spec!r} is neither an attention module's name nor a kind spec ({KINDS}, "
                         f"optionally ':' and block groups, e.g. 'cross:down,up'). Available: "
                         f"{describe_layers(layers)}")
    group_set = {g.strip() for g in groups.split(",") if g.strip()} if groups else None
    return kind, group_set


def select_layers(model_or_pipeline, spec: LayerSpec = "default") -> list[AttentionLayer]:
    """The attention modules ``spec`` selects (see the module docstring); ``ValueError`` if it selects none."""
    layers = attention_layers(model_or_pipeline)
    if spec is None or (isinstance(spec, str) and spec == "default"):
        spec = default_spec(model_or_pipeline)

    if isinstance(spec, str):
        if spec not in {layer.name for layer in layers} and not any(c in spec for c in "*?["):
            kind, groups = _parse_kind_spec(spec, layers)
            if groups is not None:
                known = {layer.group for layer in layers}
                unknown = groups - known
                if unknown:
                    raise ValueError(f"layers={spec!r}: block group(s) {sorted(unknown)} do not exist in this "
                                     f"model; it has {sorted(known)}. Available: {describe_layers(layers)}")
            chosen = [layer for layer in layers if (kind == "all" or layer.kind == kind)
                      and (groups is None or layer.group in groups)]
        else:
            spec = [spec]
            chosen = None
    elif callable(spec):
        chosen = [layer for layer in layers if spec(layer)]
    else:
        chosen = None

    if chosen is None:  # a list of names / patterns
        if isinstance(spec, (str, bytes)) or not isinstance(spec, Iterable):
            raise ValueError(f"layers={spec!r}: expected a kind spec string, a list of names, or a predicate")
        # the layers select_layers returned are accepted too (their names)
        items = [item.name if isinstance(item, AttentionLayer) else item for item in spec]
        wrong = [item for item in items if not isinstance(item, str)]
        if wrong:
            raise ValueError(f"layers: items {wrong[:3]!r} are {type(wrong[0]).__name__}; a list spec holds module "
                             "names or glob patterns (str) or AttentionLayer objects")
        missing = [item for item in items
                   if not any(fnmatch.fnmatchcase(layer.name, item) for layer in layers)]
        if missing:
            raise ValueError(f"layers: {missing} match no attention module. Available: {describe_layers(layers)}")
        chosen = [layer for layer in layers if any(fnmatch.fnmatchcase(layer.name, item) for item in items)]

    if not chosen:
        raise ValueError(f"layers={spec!r} selects no attention module. Available: {describe_layers(layers)}")
    return chosen
