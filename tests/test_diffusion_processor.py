"""PladisAttnProcessor under the UNet, SANA and PixArt call conventions.

Reference computations here are independent of the processor: float64 copies of the attention module's
projections and the NumPy float64 maps of ``pladis_analysis.maps.reference``.
"""

import copy

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

from pladis_analysis.diffusion import AttentionMap, PladisAttnProcessor, apply_pladis, infer_layout
from pladis_analysis.diffusion.tracking import CFG, CFG_PAG, NO_GUIDANCE, PAG
from pladis_analysis.maps import reference as ref
from pladis_analysis.testing import assert_close
from tiny_models import one_torch_thread  # noqa: F401  (autouse)
from tiny_models import FAMILIES, make_inputs, run_model, tiny_model, tiny_sana

TEXT_LEN = 6


@pytest.fixture(scope="module")
def models():
    return {family: tiny_model(family) for family in FAMILIES}


def padding_mask(text, n_pad=2):
    mask = torch.ones(text.shape[0], text.shape[1])
    mask[:, text.shape[1] - n_pad:] = 0
    return mask


# -- reference -------------------------------------------------------------------------------------------------

def reference_weights(attention_map: AttentionMap, scores: np.ndarray) -> np.ndarray:
    if attention_map.kind == "softmax":
        return ref.softmax(scores)
    if attention_map.kind in ("entmax", "sparsemax"):
        return ref.entmax(scores, attention_map.alpha)
    return ref.pladis_weights(scores, attention_map.scale, attention_map.alpha)


@torch.no_grad()
def reference_attention(attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                        attention_map=AttentionMap.softmax()) -> torch.Tensor:
    """What a diffusers Attention module computes with ``attention_map`` in place of softmax, in float64."""
    m = copy.deepcopy(attn).double()
    x = hidden_states.double()
    residual = x
    if m.spatial_norm is not None:
        x = m.spatial_norm(x, temb.double())
    four_d = x.ndim == 4
    if four_d:
        b, c, h, w = x.shape
        x = x.reshape(b, c, h * w).transpose(1, 2)
    if m.group_norm is not None:
        x = m.group_norm(x.transpose(1, 2)).transpose(1, 2)
    context = x if encoder_hidden_states is None else encoder_hidden_states.double()
    if encoder_hidden_states is not None and m.norm_cross is not None:
        context = m.norm_encoder_hidden_states(context)
    q, k, v = m.to_q(x), m.to_k(context), m.to_v(context)
    heads = m.heads
    split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2).numpy()  # noqa: E731
    q, k, v = split(q), split(k), split(v)  # (B, H, L, d)
    scores = q @ np.swapaxes(k, -1, -2) * m.scale
    if attention_mask is not None:
        mask = attention_mask.double().numpy()[:, None]  # (B, 1, 1, Lk) bias
        scores = scores + mask
    out = reference_weights(attention_map, scores) @ v  # (B, H, Lq, d)
    out = torch.from_numpy(out).transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)
    out = m.to_out[0](out)
    if four_d:
        out = out.transpose(1, 2).reshape(b, c, h, w)
    if m.residual_connection:
        out = out + residual
    return out / m.rescale_output_factor


def capture_io(model, names):
    """Forward hooks recording each named module's inputs (args/kwargs) and output."""
    records, handles = {}, []
    modules = dict(model.named_modules())
    for name in names:
        def hook(module, args, kwargs, output, name=name):
            records[name] = (args, dict(kwargs), output)
        handles.append(modules[name].register_forward_hook(hook, with_kwargs=True))
    return records, handles


# -- λ = 0 and the softmax map are the stock model --------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_lambda_zero_equals_stock(models, family):
    model = models[family]
    sample, timestep, text = make_inputs(family, text_len=TEXT_LEN)
    mask = padding_mask(text)
    stock = run_model(model, sample, timestep, text, mask)
    with apply_pladis(model, scale=0.0, alpha=1.5, layers="cross"):
        pladis0 = run_model(model, sample, timestep, text, mask)
    assert_close(pladis0, stock, atol=1e-5, rtol=0, name=f"{family} λ=0 vs stock")


@pytest.mark.parametrize("family", FAMILIES)
def test_softmax_map_is_bit_exact(models, family):
    model = models[family]
    sample, timestep, text = make_inputs(family, text_len=TEXT_LEN)
    stock = run_model(model, sample, timestep, text)
    with apply_pladis(model, map="softmax", layers="all" if family == "unet" else "cross"):
        same = run_model(model, sample, timestep, text)
    assert torch.equal(same, stock)


def test_sana_with_qk_norm_across_heads_matches_stock():
    # SanaAttnProcessor2_0 normalises q/k before splitting heads; the processor must do the same
    model = tiny_sana(qk_norm="rms_norm_across_heads")
    sample, timestep, text = make_inputs("sana", text_len=TEXT_LEN)
    stock = run_model(model, sample, timestep, text)
    with apply_pladis(model, scale=0.0):
        pladis0 = run_model(model, sample, timestep, text)
    assert_close(pladis0, stock, atol=1e-5, rtol=0, name="SANA qk-norm λ=0")


# -- PLADIS equals an independent computation -----------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("attention_map", ["pladis(2, 1.5)", "pladis(3, 1.25)", "entmax(1.5)", "sparsemax"])
def test_output_equals_independent_computation(models, family, attention_map):
    model = models[family]
    attention_map = AttentionMap.parse(attention_map)
    sample, timestep, text = make_inputs(family, text_len=TEXT_LEN)
    mask = padding_mask(text)
    with apply_pladis(model, map=attention_map, layers="cross") as handle:
        records, hooks = capture_io(model, handle.layers)
        try:
            run_model(model, sample, timestep, text, mask)
        finally:
            for h in hooks:
                h.remove()
    modules = dict(model.named_modules())
    for name, (args, kwargs, output) in records.items():
        hidden = args[0] if args else kwargs["hidden_states"]
        expected = reference_attention(modules[name], hidden, kwargs.get("encoder_hidden_states"),
                                       kwargs.get("attention_mask"), attention_map=attention_map)
        assert_close(output, expected, atol=2e-5, rtol=1e-4, name=f"{family} {name} {attention_map}")


def standalone_attention(**kwargs):
    torch.manual_seed(3)
    config = dict(query_dim=8, cross_attention_dim=6, heads=2, dim_head=4)
    config.update(kwargs)
    return Attention(**config).eval()


CONVENTIONS = {
    "group_norm+residual+rescale": dict(norm_num_groups=2, residual_connection=True, rescale_output_factor=2.0),
    "norm_cross_layer_norm": dict(cross_attention_norm="layer_norm"),
    "norm_cross_group_norm": dict(cross_attention_norm="group_norm", cross_attention_norm_num_groups=2),
    "spatial_norm": dict(spatial_norm_dim=5, query_dim=32),  # SpatialNorm group-norms in 32 groups
    "scale_qk_false": dict(scale_qk=False),
}


@pytest.mark.parametrize("convention", sorted(CONVENTIONS))
@pytest.mark.parametrize("four_d", [False, True])
def test_attention_conventions(convention, four_d):
    attn = standalone_attention(**CONVENTIONS[convention])
    g = torch.Generator().manual_seed(4)
    if four_d or convention == "spatial_norm":
        hidden = torch.randn(2, attn.query_dim, 3, 4, generator=g)  # (B, C, H, W)
    else:
        hidden = torch.randn(2, 12, attn.query_dim, generator=g)
    temb = torch.randn(2, 5, 2, 2, generator=g) if convention == "spatial_norm" else None
    context = torch.randn(2, 5, 6, generator=g)
    bias = torch.zeros(2, 1, 5)
    bias[:, :, -1] = -10000.0
    with torch.no_grad():
        stock_processor = AttnProcessor2_0() if attn.scale_qk else AttnProcessor()
        stock = stock_processor(attn, hidden, context, bias, temb=temb)
        for spec in ("pladis(0, 1.5)", "softmax", "pladis(2, 1.5)", "entmax(1.25)"):
            attention_map = AttentionMap.parse(spec)
            ours = PladisAttnProcessor(map=attention_map)(attn, hidden, context, bias, temb=temb)
            expected = reference_attention(attn, hidden, context, bias, temb, attention_map)
            assert_close(ours, expected, atol=2e-5, rtol=1e-4, name=f"{convention} {spec} vs reference")
            if attention_map.kind == "softmax" or attention_map.scale == 0:
                assert_close(ours, stock, atol=1e-5, rtol=0, name=f"{convention} {spec} vs stock")


# -- masks -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("spec", ["softmax", "entmax(1.5)", "pladis(2, 1.5)"])
def test_padding_bias_equals_truncation(models, family, spec):
    # the −10000 bias the models build from encoder_attention_mask must act like removing the tokens
    model = models[family]
    sample, timestep, text = make_inputs(family, text_len=TEXT_LEN)
    with apply_pladis(model, map=spec, layers="cross"):
        masked = run_model(model, sample, timestep, text, padding_mask(text, n_pad=2))
        truncated = run_model(model, sample, timestep, text[:, :TEXT_LEN - 2])
    assert_close(masked, truncated, atol=1e-5, rtol=1e-5, name=f"{family} {spec} padding vs truncation")


@pytest.mark.parametrize("spec", ["softmax", "entmax(1.5)", "pladis(2, 1.5)"])
def test_boolean_mask_equals_truncation(spec):
    attn = standalone_attention()
    g = torch.Generator().manual_seed(5)
    hidden, context = torch.randn(2, 7, 8, generator=g), torch.randn(2, 5, 6, generator=g)
    keep = torch.ones(2, 1, 5, dtype=torch.bool)
    keep[:, :, 3:] = False
    processor = PladisAttnProcessor(map=spec)
    with torch.no_grad():
        masked = processor(attn, hidden, context, keep)
        truncated = processor(attn, hidden, context[:, :3])
    assert_close(masked, truncated, atol=1e-6, rtol=1e-5, name=f"{spec} boolean mask vs truncation")


# -- CFG branches -------------------------------------------------------------------------------------------------

def test_infer_layout_from_repeated_latents():
    x = torch.randn(2, 4, 3, 3)
    text_u, text_c = torch.randn(2, 5, 6), torch.randn(2, 5, 6)
    assert infer_layout(torch.cat([x, x]), torch.cat([text_u, text_c])) == CFG
    assert infer_layout(torch.cat([x, x, x]), torch.cat([text_u, text_c, text_c])) == CFG_PAG
    assert infer_layout(torch.cat([x, x]), torch.cat([text_c, text_c])) == PAG
    assert infer_layout(x, text_c) == NO_GUIDANCE
    # without PAG running, equal texts are CFG with the prompt as its own negative (an empty prompt, say)
    assert infer_layout(torch.cat([x, x]), torch.cat([text_c, text_c]), pag=False) == CFG
    # three prompts under CFG with identical latents: thirds are equal but the text says CFG
    same = torch.cat([x[:1]] * 6)
    assert infer_layout(same, torch.cat([text_u[:1]] * 3 + [text_c[:1], text_c[1:], text_u[1:]])) == CFG


@pytest.mark.parametrize("family", FAMILIES)
def test_branch_selection(models, family):
    model = models[family]
    sample, timestep, text = make_inputs(family, batch=2, text_len=TEXT_LEN)  # [u1, u2, c1, c2]
    stock = run_model(model, sample, timestep, text)
    with apply_pladis(model, scale=2.0, layers="cross"):
        everywhere = run_model(model, sample, timestep, text)
    with apply_pladis(model, scale=2.0, layers="cross", branches="cond"):
        cond_only = run_model(model, sample, timestep, text)
    with apply_pladis(model, scale=2.0, layers="cross", branches="uncond"):
        uncond_only = run_model(model, sample, timestep, text)
    tol = dict(atol=1e-5, rtol=1e-5)
    assert_close(cond_only[:2], stock[:2], name="uncond half untouched", **tol)
    assert_close(cond_only[2:], everywhere[2:], name="cond half = PLADIS", **tol)
    assert_close(uncond_only[:2], everywhere[:2], name="uncond half = PLADIS", **tol)
    assert_close(uncond_only[2:], stock[2:], name="cond half untouched", **tol)
    assert (everywhere - stock).abs().max() > 1e-3  # PLADIS does change the output


def test_branch_selection_with_pag_layout(models):
    """PAG batches [uncond, cond, perturbed]: explicit, and inferred while a PAG processor is installed (as PAG
    pipelines do for their call; without one, equal text chunks are CFG with an empty or repeated prompt)."""
    from diffusers.models.attention_processor import PAGCFGIdentitySelfAttnProcessor2_0

    model = models["unet"]
    sample, timestep, text = make_inputs("unet", text_len=TEXT_LEN)
    sample3, text3 = torch.cat([sample, sample[:1]]), torch.cat([text, text[1:]])  # [uncond, cond, perturbed]
    ts3 = torch.cat([timestep, timestep[:1]])
    assert infer_layout(sample3, text3, pag=False) == NO_GUIDANCE and infer_layout(sample3, text3) == CFG_PAG
    mid_self = dict(model.named_modules())["mid_block.attentions.0.transformer_blocks.0.attn1"]
    original = mid_self.processor
    mid_self.set_processor(PAGCFGIdentitySelfAttnProcessor2_0())
    try:
        stock = run_model(model, sample3, ts3, text3)
        with apply_pladis(model, layers="cross"):
            everywhere = run_model(model, sample3, ts3, text3)
        with apply_pladis(model, layers="cross", branches="cond", batch_layout="cfg+pag"):
            cond = run_model(model, sample3, ts3, text3)
        with apply_pladis(model, layers="cross", branches=("perturbed",)):  # layout inferred as cfg+pag
            perturbed = run_model(model, sample3, ts3, text3)
    finally:
        mid_self.set_processor(original)
    tol = dict(atol=1e-5, rtol=1e-5)
    assert_close(cond[:1], stock[:1], name="uncond untouched", **tol)
    assert_close(cond[1:], everywhere[1:], name="cond + perturbed get PLADIS", **tol)
    assert_close(perturbed[:2], stock[:2], name="uncond, cond untouched", **tol)
    assert_close(perturbed[2:], everywhere[2:], name="perturbed gets PLADIS", **tol)


def test_branch_selection_needs_a_divisible_batch():
    attn = standalone_attention()
    processor = PladisAttnProcessor(map="pladis(2, 1.5)", branches="cond", batch_layout=CFG, layer="x")
    with pytest.raises(ValueError, match="batch_layout"), torch.no_grad():
        processor(attn, torch.randn(3, 4, 8), torch.randn(3, 5, 6))


# -- the exact λ identity at the module output --------------------------------------------------------------------

@pytest.mark.parametrize("scale", [0.5, 2.0, 3.0])
def test_output_moves_linearly_in_lambda(scale):
    # out_λ − out_S = λ (out_E − out_S) holds for A V and survives the linear to_out projection
    attn = standalone_attention()
    g = torch.Generator().manual_seed(6)
    hidden, context = torch.randn(2, 9, 8, generator=g), torch.randn(2, 5, 6, generator=g)
    with torch.no_grad():
        out = {spec: PladisAttnProcessor(map=spec)(attn, hidden, context).double()
               for spec in ("softmax", "entmax(1.5)", f"pladis({scale}, 1.5)")}
    assert_close(out[f"pladis({scale}, 1.5)"] - out["softmax"], scale * (out["entmax(1.5)"] - out["softmax"]),
                 atol=1e-5, rtol=1e-5, name="λ identity")


# -- argument checking --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["entmax(1)", "entmax(0.5)", "pladis(nan, 1.5)", "softmaxx", "pladis(2, 1.5, 3)"])
def test_bad_map_specs(spec):
    with pytest.raises(ValueError):
        AttentionMap.parse(spec)


def test_map_labels_round_trip():
    for spec in ("softmax", "sparsemax", "entmax(1.5)", "entmax(1.25)", "pladis(2, 1.5)", "pladis(0.5, 2)"):
        assert AttentionMap.parse(AttentionMap.parse(spec).label) == AttentionMap.parse(spec)
    assert AttentionMap.parse("entmax(2)").label == "sparsemax"
    assert AttentionMap.parse("pladis(2)").label == "pladis(2, 1.5)"


def test_bad_branches():
    with pytest.raises(ValueError, match="branches"):
        PladisAttnProcessor(branches="conditional")
    with pytest.raises(ValueError, match="branches"):
        PladisAttnProcessor(branches=("cond", "negative"))


def test_bad_backend_fails_at_installation():
    with pytest.raises(ValueError, match="backend='gpu'"):
        PladisAttnProcessor(map="pladis(2, 1.5)", backend="gpu")


def test_the_sampling_hook_reads_arguments_by_name_and_distrusts_stale_pipelines():
    """DiTs called positionally (hidden_states, encoder_hidden_states, timestep) give the same step, timestep and
    layout as called by keyword (positions were read as a UNet's: the text became the timestep); an empty prompt
    under CFG (equal text chunks, no PAG processor) is CFG, not PAG; a pipeline's guidance property, which outlives
    its call, is not believed over latent chunks that differ."""
    from types import SimpleNamespace

    from pladis_analysis.diffusion.tracking import track_sampling

    sana = tiny_sana()
    sample, timestep, text = make_inputs("sana", text_len=TEXT_LEN)
    with track_sampling(sana) as state, torch.no_grad():
        sana(sample, text, timestep)
        assert state.timestep == float(timestep[0]) and state.layout == CFG
        same_text = torch.cat([text[1:], text[1:]])                           # prompt == negative prompt
        sana(hidden_states=sample, encoder_hidden_states=same_text, timestep=timestep)
        assert state.layout == CFG
    stale = SimpleNamespace(do_classifier_free_guidance=True, do_perturbed_attention_guidance=False)
    two_prompts = torch.randn(sample.shape, generator=torch.Generator().manual_seed(3))  # no guidance, own noise
    with track_sampling(sana, pipeline=stale) as state, torch.no_grad():
        sana(hidden_states=two_prompts, encoder_hidden_states=text, timestep=timestep)
        assert state.layout == NO_GUIDANCE
        sana(hidden_states=sample, encoder_hidden_states=text, timestep=timestep)
        assert state.layout == CFG
