"""Attention-module discovery and layer-selection specs on tiny UNet / SANA / PixArt models."""

from types import SimpleNamespace

import pytest

from pladis_analysis.diffusion import attention_layers, default_spec, select_layers
from tiny_models import one_torch_thread  # noqa: F401  (autouse)
from tiny_models import tiny_model

UNET_CROSS = {
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2",
    "down_blocks.1.attentions.0.transformer_blocks.0.attn2",
    "mid_block.attentions.0.transformer_blocks.0.attn2",
    "up_blocks.0.attentions.0.transformer_blocks.0.attn2",
    "up_blocks.0.attentions.1.transformer_blocks.0.attn2",
    "up_blocks.1.attentions.0.transformer_blocks.0.attn2",
    "up_blocks.1.attentions.1.transformer_blocks.0.attn2",
}


@pytest.fixture(scope="module")
def models():
    return {family: tiny_model(family) for family in ("unet", "sana", "pixart")}


def names(layers):
    return {layer.name for layer in layers}


def test_unet_layers_have_kinds_and_groups(models):
    layers = attention_layers(models["unet"])
    assert names(layer for layer in layers if layer.kind == "cross") == UNET_CROSS
    assert len([layer for layer in layers if layer.kind == "self"]) == len(UNET_CROSS)
    by_name = {layer.name: layer for layer in layers}
    assert by_name["mid_block.attentions.0.transformer_blocks.0.attn2"].group == "mid"
    assert by_name["up_blocks.1.attentions.0.transformer_blocks.0.attn2"].group == "up"
    assert by_name["up_blocks.1.attentions.0.transformer_blocks.0.attn2"].block == 1
    assert by_name["down_blocks.0.attentions.0.transformer_blocks.0.attn1"].kind == "self"


@pytest.mark.parametrize("family", ["sana", "pixart"])
def test_dit_layers(models, family):
    layers = attention_layers(models[family])
    assert names(layer for layer in layers if layer.kind == "cross") == {"transformer_blocks.0.attn2",
                                                                          "transformer_blocks.1.attn2"}
    assert {layer.group for layer in layers} == {"transformer"}


def test_default_is_down_and_up_cross_attention_for_unets_and_all_cross_for_dits(models):
    assert default_spec(models["unet"]) == "cross:down,up"
    assert names(select_layers(models["unet"])) == UNET_CROSS - {"mid_block.attentions.0.transformer_blocks.0.attn2"}
    for family in ("sana", "pixart"):
        assert default_spec(models[family]) == "cross"
        assert names(select_layers(models[family])) == names(select_layers(models[family], "cross"))


def test_kind_and_group_specs(models):
    unet = models["unet"]
    assert names(select_layers(unet, "cross")) == UNET_CROSS
    assert names(select_layers(unet, "cross:mid")) == {"mid_block.attentions.0.transformer_blocks.0.attn2"}
    assert all(layer.kind == "self" for layer in select_layers(unet, "self:down"))
    assert len(select_layers(unet, "all")) == 2 * len(UNET_CROSS)


def test_name_list_glob_and_predicate_specs(models):
    unet = models["unet"]
    wanted = ["down_blocks.0.attentions.0.transformer_blocks.0.attn2", "up_blocks.1.attentions.1.transformer_blocks.0.attn2"]
    assert names(select_layers(unet, wanted)) == set(wanted)
    assert names(select_layers(unet, wanted[0])) == {wanted[0]}
    assert names(select_layers(unet, ["up_blocks.0.*.attn2"])) == {
        "up_blocks.0.attentions.0.transformer_blocks.0.attn2", "up_blocks.0.attentions.1.transformer_blocks.0.attn2"}
    chosen = select_layers(unet, lambda layer: layer.kind == "cross" and layer.group == "up" and layer.block == 1)
    assert names(chosen) == {"up_blocks.1.attentions.0.transformer_blocks.0.attn2",
                             "up_blocks.1.attentions.1.transformer_blocks.0.attn2"}


def test_selected_layers_are_a_spec_themselves(models):
    unet = models["unet"]
    chosen = select_layers(unet, "cross:up")[:2]
    assert select_layers(unet, chosen) == chosen


def test_a_compiled_model_has_the_names_of_the_model_it_wraps(models):
    """torch.compile(model) wraps it in a module whose paths all start with ``_orig_mod.``; names, groups and the
    default spec are the inner model's, and the processors go onto the inner modules (what the wrapper runs)."""
    import torch

    from pladis_analysis.diffusion import apply_pladis, current_processors

    unet = models["unet"]
    compiled = torch.compile(unet)  # lazy: nothing compiles until it is called
    assert names(select_layers(compiled)) == names(select_layers(unet))
    assert [layer.group for layer in attention_layers(compiled)] == [layer.group for layer in attention_layers(unet)]
    with apply_pladis(compiled) as handle:
        assert set(handle.layers) == names(select_layers(unet))
        assert all(current_processors(unet)[name] is handle.processors[name] for name in handle.layers)
    assert current_processors(compiled) == current_processors(unet)


def test_pipeline_like_objects_resolve_to_their_denoiser(models):
    assert names(select_layers(SimpleNamespace(unet=models["unet"]))) == names(select_layers(models["unet"]))
    assert names(select_layers(SimpleNamespace(transformer=models["sana"]))) == names(select_layers(models["sana"]))
    with pytest.raises(ValueError, match="model_or_pipeline"):
        select_layers(SimpleNamespace(vae=None))


@pytest.mark.parametrize("spec, message", [
    ("cross:left", "block group"),
    ("crosss", "neither an attention module's name nor a kind spec"),
    ("down_blocks.0.attentions.0.transformer_blocks.0.attn3", "neither an attention module's name"),  # misspelt
    (["down_blocks.9.attn2"], "match no attention module"),
    (lambda layer: False, "selects no attention module"),
    (42, "expected a kind spec"),
    ([3], "a list spec holds module names"),
])
def test_specs_that_match_nothing_list_what_exists(models, spec, message):
    with pytest.raises(ValueError, match=message) as info:
        select_layers(models["unet"], spec)
    if message not in ("expected a kind spec", "a list spec holds module names"):
        assert "mid_block.attentions.0.transformer_blocks.0.attn2" in str(info.value)  # lists what exists


def test_dit_has_no_down_group(models):
    with pytest.raises(ValueError, match="transformer"):
        select_layers(models["sana"], "cross:down")
