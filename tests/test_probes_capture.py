"""capture_attention: the kept queries and keys give the scores the model's own projections give, at the steps
asked for, with masks and guidance branches; processors come back afterwards; the model's output is unchanged."""

import numpy as np
import pytest
import torch

from pladis_analysis.diffusion import apply_pladis
from pladis_analysis.probes import capture_attention, record_attention
from pladis_analysis.testing import assert_close
from test_probes import LAYER, direct_weights, hand_loop, module_inputs
from tiny_models import one_torch_thread  # noqa: F401  (autouse)
from tiny_models import make_inputs, run_model, tiny_model, tiny_unet


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


def processors(model):
    return {name: type(p).__name__ for name, p in model.attn_processors.items()}


def test_scores_equal_the_modules_own_projections(unet):
    sample, timestep, text = make_inputs("unet", batch=2)  # [u1, u2, c1, c2]
    module = dict(unet.named_modules())[LAYER]
    with module_inputs(module) as inputs, capture_attention(unet, layers=[LAYER]) as calls:
        run_model(unet, sample, timestep, text)
    (call,) = calls
    _, expected = direct_weights(module, inputs["hidden"], inputs["context"], "softmax")  # float64 (B, H, Lq, Lk)
    assert call.layer == LAYER and call.group == "down" and call.step == 0 and call.timestep == 500.0
    assert call.layout == ("uncond", "cond") and call.mask is None
    assert_close(call.scores().numpy(), expected, atol=1e-5, rtol=1e-5, name="captured scores")
    cond = call.scores()[call.branch_rows("cond")]
    assert_close(cond.numpy(), expected[2:], atol=1e-5, rtol=1e-5, name="cond rows")
    rounded = call.scores(torch.bfloat16)
    assert not torch.equal(rounded, call.scores())  # q and k were rounded before the product
    assert_close(rounded.numpy(), expected, atol=0.05, rtol=0.05, name="bfloat16 q, k")
    with pytest.raises(ValueError, match="label='perturbed'"):
        call.branch_rows("perturbed")


def test_only_the_steps_asked_for_are_kept(unet):
    with capture_attention(unet, steps=(1, 3)) as calls:
        hand_loop(unet, "unet", 4)
    cross_layers = [name for name in processors(unet) if name.endswith("attn2.processor")]
    assert sorted({c.step for c in calls}) == [1, 3]
    assert len(calls) == 2 * len(cross_layers)
    assert {c.layer for c in calls} == {name.removesuffix(".processor") for name in cross_layers}
    with capture_attention(unet) as every:
        hand_loop(unet, "unet", 4)
    assert sorted({c.step for c in every}) == [0, 1, 2, 3]


def test_statistics_from_captured_scores_equal_the_recorders(unet):
    # the two probes see the same call: the recorder's softmax entropy per head is the captured rows' mean
    sample, timestep, text = make_inputs("unet", batch=2)
    with record_attention(unet, layers=[LAYER], variants=("softmax",), stats=["entropy"]) as rec, \
            capture_attention(unet, layers=[LAYER]) as calls:
        run_model(unet, sample, timestep, text)
    p = torch.softmax(calls[0].scores().double(), -1)
    entropy = -(p * p.log()).sum(-1)                                   # (B, H, Lq)
    df = rec.to_dataframe().set_index(["branch", "head"])
    for branch in ("uncond", "cond"):
        per_head = entropy[calls[0].branch_rows(branch)].mean(dim=(0, 2)).numpy()
        assert_close(df.loc[branch, "entropy"].to_numpy(), per_head, atol=1e-5, rtol=1e-5, name=branch)


@pytest.mark.parametrize("family", ["sana", "pixart"])
def test_masked_keys_get_minus_inf_or_the_padding_bias(family):
    model = tiny_model(family)
    sample, timestep, text = make_inputs(family, batch=2, text_len=7)
    mask = torch.ones(4, 7, dtype=torch.bool)
    mask[0, 4:] = False
    with capture_attention(model) as calls:
        run_model(model, sample, timestep, text, encoder_attention_mask=mask)
    assert calls and all(c.mask is not None for c in calls)
    z = calls[0].scores()                                              # (B, H, Lq, Lk)
    assert (z[0, :, :, 4:] <= -1000).all()                             # diffusers' −10000 bias (or −inf)
    assert torch.isfinite(z[1:]).all() and (z[1:] > -1000).all()


def test_capture_leaves_the_model_and_pladis_as_they_were(unet):
    sample, timestep, text = make_inputs("unet")
    before = processors(unet)
    with apply_pladis(unet, scale=2.0, alpha=1.5):
        expected = run_model(unet, sample, timestep, text)
        with capture_attention(unet) as calls:
            out = run_model(unet, sample, timestep, text)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert calls and processors(unet) == before
    with pytest.raises(RuntimeError, match="inside"), capture_attention(unet):
        raise RuntimeError("inside")
    assert processors(unet) == before


def test_bad_arguments_are_named(unet):
    with pytest.raises(ValueError, match="steps"):
        with capture_attention(unet, steps=(-1,)):
            pass
    with pytest.raises(ValueError, match="batch_layout"):
        with capture_attention(unet, batch_layout="twice"):
            pass
    assert np.all([name != "PladisAttnProcessor" for name in processors(unet).values()])
