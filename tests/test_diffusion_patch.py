"""apply_pladis: exact restoration, no global patching, coexistence with PAG and with recorders."""

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0, PAGCFGIdentitySelfAttnProcessor2_0

from pladis_analysis.diffusion import PladisAttnProcessor, apply_pladis, current_processors
from pladis_analysis.probes import record_attention
from pladis_analysis.testing import assert_close
from tiny_models import one_torch_thread  # noqa: F401  (autouse)
from tiny_models import make_inputs, run_model, tiny_unet

MID_SELF = "mid_block.attentions.0.transformer_blocks.0.attn1"


@pytest.fixture()
def unet():
    return tiny_unet()


def assert_same_processors(before, after):
    assert before.keys() == after.keys()
    changed = [name for name in before if before[name] is not after[name]]
    assert not changed, f"processors not restored: {changed}"


def test_context_restores_the_exact_processor_objects(unet):
    before = current_processors(unet)
    with apply_pladis(unet) as handle:
        during = current_processors(unet)
        assert all(isinstance(during[name], PladisAttnProcessor) for name in handle.layers)
        untouched = set(before) - set(handle.layers)
        assert all(during[name] is before[name] for name in untouched)
    assert_same_processors(before, current_processors(unet))


def test_restores_after_an_exception(unet):
    before = current_processors(unet)
    with pytest.raises(RuntimeError, match="boom"):
        with apply_pladis(unet, layers="cross"):
            raise RuntimeError("boom")
    assert_same_processors(before, current_processors(unet))
    assert not unet._forward_pre_hooks  # the step-tracking hook is gone too


def test_sampling_hook_only_for_branch_selective_pladis(unet):
    """PLADIS on every branch needs no guidance layout, so it installs no forward hook (the hook syncs a GPU once
    per model call); on the conditional branch only it does, and removes it again."""
    with apply_pladis(unet, layers="cross"):
        assert not unet._forward_pre_hooks
    with apply_pladis(unet, layers="cross", branches="cond") as handle:
        assert len(unet._forward_pre_hooks) == 1
        assert all(handle.processors[name].state is not None for name in handle.layers)
    assert not unet._forward_pre_hooks


def test_handle_remove_without_context_and_twice(unet):
    before = current_processors(unet)
    handle = apply_pladis(unet, scale=3.0, alpha=1.25)
    assert handle.active
    handle.remove()
    handle.remove()
    assert not handle.active
    assert_same_processors(before, current_processors(unet))


def test_bad_arguments_touch_nothing(unet):
    before = current_processors(unet)
    for kwargs in (dict(alpha=1.0), dict(scale=float("inf")), dict(branches="both"), dict(layers="cross:left"),
                   dict(batch_layout="cfg+cfg")):
        with pytest.raises(ValueError):
            apply_pladis(unet, **kwargs)
    assert_same_processors(before, current_processors(unet))
    assert not unet._forward_pre_hooks


def test_no_class_level_patching(unet):
    other = tiny_unet(seed=1)
    sample, timestep, text = make_inputs("unet")
    other_before = run_model(other, sample, timestep, text)
    forward, call = Attention.forward, AttnProcessor2_0.__call__
    with apply_pladis(unet, layers="cross"):
        assert Attention.forward is forward and AttnProcessor2_0.__call__ is call
        assert all(type(p) is AttnProcessor2_0 for p in current_processors(other).values())
        assert torch.equal(run_model(other, sample, timestep, text), other_before)


def test_nesting_with_a_recorder_in_both_orders(unet):
    sample, timestep, text = make_inputs("unet")
    before = current_processors(unet)
    with record_attention(unet, variants=("softmax",)) as rec:
        with apply_pladis(unet, layers="cross"):
            run_model(unet, sample, timestep, text)
        after_pladis = current_processors(unet)
        assert all(isinstance(after_pladis[name], PladisAttnProcessor) and after_pladis[name].map.kind == "softmax"
                   for name in rec.layers)
        run_model(unet, sample, timestep, text)
    assert_same_processors(before, current_processors(unet))
    df = rec.to_dataframe()
    assert set(df.running_map) == {"pladis(2, 1.5)", "softmax"}  # the probe survived PLADIS' swap

    with apply_pladis(unet) as handle:
        with record_attention(unet, variants=("softmax",)) as rec:
            run_model(unet, sample, timestep, text)
        assert all(current_processors(unet)[name] is handle.processors[name] for name in handle.layers)
    assert_same_processors(before, current_processors(unet))
    df = rec.to_dataframe()
    default_layers = set(handle.layers)
    assert set(df[df.layer.isin(default_layers)].running_map) == {"pladis(2, 1.5)"}
    assert set(df[~df.layer.isin(default_layers)].running_map) == {"softmax"}  # mid block keeps softmax

def test_handles_removed_out_of_order_refuse_and_change_nothing(unet):
    """Removing the recorder while PLADIS, installed after it, is still on would put the stock processors back
    under a live PLADIS handle (and PLADIS' removal would then reinstall the recorder's probe for good)."""
    sample, timestep, text = make_inputs("unet")
    before = current_processors(unet)
    rec = record_attention(unet, variants=("softmax",))
    handle = apply_pladis(unet, layers="cross")
    with_both = current_processors(unet)
    with pytest.raises(RuntimeError, match="installed after it"):
        rec.remove()
    assert current_processors(unet) == with_both and handle.active
    handle.remove()
    rec.remove()
    assert_same_processors(before, current_processors(unet))
    assert not unet._forward_pre_hooks

    # a processor set by hand blocks the removal too; force=True puts the old ones back regardless
    handle = apply_pladis(unet, layers="cross")
    module = dict(unet.named_modules())[handle.layers[0]]
    module.set_processor(AttnProcessor2_0())
    with pytest.raises(RuntimeError, match=handle.layers[0]):
        handle.remove()
    handle.remove(force=True)
    assert_same_processors(before, current_processors(unet))
    run_model(unet, sample, timestep, text)



def pag_unet():
    unet = tiny_unet()
    unet_modules = dict(unet.named_modules())
    pag = PAGCFGIdentitySelfAttnProcessor2_0()
    unet_modules[MID_SELF].set_processor(pag)
    return unet, pag


def pag_inputs():
    sample, timestep, text = make_inputs("unet")  # [uncond, cond]
    return (torch.cat([sample, sample[:1]]), torch.cat([timestep, timestep[:1]]),
            torch.cat([text, text[1:]]))  # [uncond, cond, perturbed]


def test_coexists_with_pag_processors():
    unet, pag = pag_unet()
    sample, timestep, text = pag_inputs()
    before = current_processors(unet)
    stock = run_model(unet, sample, timestep, text)
    with apply_pladis(unet, scale=0.0, layers="cross"):
        assert current_processors(unet)[MID_SELF] is pag
        same = run_model(unet, sample, timestep, text)
    with apply_pladis(unet, scale=2.0, layers="cross", branches="cond"):
        pladis = run_model(unet, sample, timestep, text)
    assert_same_processors(before, current_processors(unet))
    assert_close(same, stock, atol=1e-5, rtol=0, name="λ=0 with PAG")
    assert_close(pladis[:1], stock[:1], atol=1e-5, rtol=1e-5, name="uncond untouched under cfg+pag")
    assert (pladis[1:] - stock[1:]).abs().max() > 1e-3


def test_refuses_to_replace_pag_processors():
    unet, pag = pag_unet()
    before = current_processors(unet)
    with pytest.raises(ValueError, match="PAG"):
        apply_pladis(unet, layers="self:mid")
    assert_same_processors(before, current_processors(unet))


def test_real_pag_pipeline_restores_processors(tmp_path):
    from diffusers import StableDiffusionPAGPipeline

    from tiny_models import SD_CALL, tiny_sd_pipeline

    pipe = StableDiffusionPAGPipeline.from_pipe(tiny_sd_pipeline(tmp_path / "tok"), pag_applied_layers=["mid"])
    before = current_processors(pipe)
    generator = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    stock = pipe("a red circle", generator=generator(), pag_scale=3.0, **SD_CALL).images
    with apply_pladis(pipe, scale=0.0):
        same = pipe("a red circle", generator=generator(), pag_scale=3.0, **SD_CALL).images
    with apply_pladis(pipe, scale=2.0) as handle, record_attention(pipe, variants=("softmax",)) as rec:
        changed = pipe("a red circle", generator=generator(), pag_scale=3.0, **SD_CALL).images
        # the pipeline swapped PAG in and out around the call; our processors survived that
        assert all(current_processors(pipe)[name].map.label == "pladis(2, 1.5)" for name in handle.layers)
    assert_same_processors(before, current_processors(pipe))
    assert_close(torch.from_numpy(same), torch.from_numpy(stock), atol=1e-5, rtol=0, name="λ=0 PAG pipeline")
    assert abs(changed - stock).max() > 1e-4
    assert set(rec.to_dataframe().branch) == {"uncond", "cond", "perturbed"}


def test_a_probe_layout_never_changes_what_the_model_computes(unet):
    """A recorder's or capture's own batch_layout labels what it sees; it used to replace the layout PLADIS
    computes its branches with (and apply_pladis inside a probe dropped the probe's)."""
    from pladis_analysis.probes import capture_attention

    sample, timestep, text = make_inputs("unet")
    with apply_pladis(unet, layers="cross", branches="cond", batch_layout="cfg"):
        expected = run_model(unet, sample, timestep, text)
        with capture_attention(unet, layers="cross", batch_layout="none") as calls:
            assert torch.equal(run_model(unet, sample, timestep, text), expected)
    assert {call.layout for call in calls} == {("cond",)}
    with capture_attention(unet, layers="cross", batch_layout=("cond", "uncond")) as calls:
        with apply_pladis(unet, layers="cross"):
            run_model(unet, sample, timestep, text)
    assert {call.layout for call in calls} == {("cond", "uncond")}
