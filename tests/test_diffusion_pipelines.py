"""load_pipeline (local folders only, clear errors) and sample()."""

import json
import shutil

import numpy as np
import pytest
import torch

from pladis_analysis.diffusion import load_pipeline, sample
from pladis_analysis.diffusion.pipelines import check_pipeline_folder, parse_dtype
from tiny_models import one_torch_thread  # noqa: F401  (autouse)
from tiny_models import tiny_pixart_pipeline, tiny_sana_pipeline, tiny_sd_pipeline, tiny_sdxl_pipeline


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd")
    pipe = tiny_sd_pipeline(root / "tok")
    pipe.save_pretrained(root / "pipe")
    return pipe, root / "pipe"


def test_round_trip_loads_offline_and_samples_identically(saved):
    pipe, path = saved
    loaded = load_pipeline(path, dtype="float32", device="cpu")
    a = sample(pipe, "a red circle", steps=2, guidance_scale=5.0, seed=3, output_type="np").images[0]
    default = sample(pipe, "a red circle", steps=1, seed=3, output_type="np")
    assert default.settings["guidance_scale"] == 7.5  # the pipeline's default, recorded, not None
    b = sample(loaded, "a red circle", steps=2, guidance_scale=5.0, seed=3, output_type="np").images[0]
    assert np.array_equal(a, b)


def test_sample_with_pladis_changes_the_image_and_restores(saved):
    pipe, _ = saved
    steps = []
    stock = sample(pipe, ["a red circle"], steps=2, guidance_scale=5.0, seed=0, output_type="np")
    pladis = sample(pipe, ["a red circle"], steps=2, guidance_scale=5.0, seed=0, pladis_scale=2.0,
                    output_type="np", callback=lambda step, t: steps.append(step))
    zero = sample(pipe, ["a red circle"], steps=2, guidance_scale=5.0, seed=0, pladis_scale=0.0, output_type="np")
    assert steps == [0, 1]
    assert np.abs(pladis.images[0] - stock.images[0]).max() > 1e-4
    assert np.array_equal(zero.images[0], stock.images[0])
    assert pladis.settings["pladis_layers"] and all(".attn2" in name for name in pladis.settings["pladis_layers"])
    again = sample(pipe, ["a red circle"], steps=2, guidance_scale=5.0, seed=0, output_type="np")
    assert np.array_equal(again.images[0], stock.images[0])  # PLADIS removed after the call
    # The attention path reaches the processors: the torch path is the default's on CPU; a bad name fails early.
    torch_path = sample(pipe, ["a red circle"], steps=2, guidance_scale=5.0, seed=0, pladis_scale=2.0,
                        output_type="np", backend="torch")
    assert np.array_equal(torch_path.images[0], pladis.images[0]) and torch_path.settings["backend"] == "torch"
    with pytest.raises(ValueError, match="backend='gpu'"):
        sample(pipe, ["a red circle"], steps=1, pladis_scale=2.0, backend="gpu")


def test_sample_takes_every_layer_spec(saved):
    """None, a predicate, a generator and select_layers' own result select the same default layers; the settings
    record each spec in a form that serialises (a generator once listed, a predicate by its repr)."""
    from pladis_analysis.diffusion import select_layers

    pipe, _ = saved
    call = dict(steps=1, guidance_scale=5.0, seed=0, pladis_scale=2.0, output_type="np")
    default = sample(pipe, "a red circle", **call)
    chosen = default.settings["pladis_layers"]
    specs = (None, lambda layer: layer.kind == "cross" and layer.group in ("down", "up"), (name for name in chosen),
             select_layers(pipe, "default"))
    for spec in specs:
        result = sample(pipe, "a red circle", layers=spec, **call)
        assert result.settings["pladis_layers"] == chosen
        assert np.array_equal(result.images[0], default.images[0])
        json.dumps(result.settings)
    assert result.settings["layers"] == chosen


def test_folder_errors(tmp_path, saved):
    _, path = saved
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pipeline(tmp_path / "missing")
    (tmp_path / "file.safetensors").write_text("x")
    with pytest.raises(FileNotFoundError, match="is a file"):
        load_pipeline(tmp_path / "file.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_pipeline(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model_index.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_pipeline(bad)
    partial = tmp_path / "partial"
    partial.mkdir()
    index = json.loads((path / "model_index.json").read_text())
    (partial / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="folders are missing"):
        load_pipeline(partial)
    assert check_pipeline_folder(path)["_class_name"] == "StableDiffusionPipeline"


def test_dtype_names():
    assert parse_dtype("fp16") is torch.float16 and parse_dtype(torch.bfloat16) is torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        parse_dtype("float8")


# Whole pipelines beyond SD1.5: (tiny builder, image size, call options). The DiTs' options: no resolution binning
# (the tiny models have no aspect-ratio table), no caption cleaning (it needs ftfy and bs4).
DIT_CALL = dict(max_sequence_length=16, use_resolution_binning=False, clean_caption=False)
PIPELINES = {"sdxl": (tiny_sdxl_pipeline, 16, {}), "pixart": (tiny_pixart_pipeline, 16, DIT_CALL),
             "sana": (tiny_sana_pipeline, 32, DIT_CALL)}


def _saved_pipeline(family, tmp_path):
    """``(pipeline, its save_pretrained folder)``; PixArt's tokenizer folder holds what published PixArt folders
    hold (``spiece.model`` and its config, no ``tokenizer.json``)."""
    pipe = PIPELINES[family][0](tmp_path / "tok")
    pipe.save_pretrained(tmp_path / "pipe")
    if family == "pixart":
        shutil.rmtree(tmp_path / "pipe" / "tokenizer")       # save_pretrained wrote tokenizer.json instead
        shutil.copytree(tmp_path / "tok", tmp_path / "pipe" / "tokenizer")
    return pipe, tmp_path / "pipe"


@pytest.mark.parametrize("family", sorted(PIPELINES))
def test_pipeline_loads_samples_and_takes_pladis_and_probes(family, tmp_path):
    """A tiny SDXL (two text encoders, size/crop conditioning, attention-free outer blocks, two transformer layers
    per attention block), PixArt-α or SANA pipeline loads with load_pipeline and samples as the pipeline it was
    saved from (the PixArt tokenizer converted from its SentencePiece model). PLADIS changes its image through the
    default layers (every cross-attention but a UNet's mid block; the text encoder's padding mask reaches the DiTs'
    as a bias); λ = 0 gives the stock image to rounding, leaving the context the stock image exactly; the probes see
    every cross-attention layer in both guidance branches."""
    from pladis_analysis.diffusion import apply_pladis
    from pladis_analysis.probes import record_attention

    _, size, options = PIPELINES[family]
    pipe, folder = _saved_pipeline(family, tmp_path)
    loaded = load_pipeline(folder, dtype="float32", device="cpu")
    assert type(loaded) is type(pipe)
    prompt = "a red circle left of a blue square"
    call = dict(steps=2, guidance_scale=4.5, seed=0, height=size, width=size, output_type="np", **options)
    stock = sample(pipe, prompt, **call).images[0]
    assert np.array_equal(sample(loaded, prompt, **call).images[0], stock)

    steps = []  # PixArt's pipelines take the older callback/callback_steps, which sample() falls back on
    pladis = sample(loaded, prompt, pladis_scale=2.0, callback=lambda step, timestep: steps.append(step), **call)
    assert np.abs(pladis.images[0] - stock).max() > 1e-5 and steps == [0, 1]
    denoiser = loaded.unet if family == "sdxl" else loaded.transformer
    cross = [name for name, _ in denoiser.named_modules() if name.endswith("attn2")]
    assert pladis.settings["pladis_layers"] == [name for name in cross if not name.startswith("mid_block")]
    with apply_pladis(loaded, scale=0.0):  # explicit softmax weights, not SDPA: equal to rounding
        np.testing.assert_allclose(sample(loaded, prompt, **call).images[0], stock, rtol=0, atol=1e-5)
    assert np.array_equal(sample(loaded, prompt, **call).images[0], stock)
    with record_attention(loaded) as rec:
        loaded("a red circle", num_inference_steps=2, height=size, width=size, output_type="np", **options)
    rows = rec.to_dataframe()
    assert set(rows["layer"]) == set(cross) and set(rows["branch"]) == {"cond", "uncond"}


def test_a_sentencepiece_tokenizer_without_protobuf_is_a_clear_error(tmp_path, monkeypatch):
    from pladis_analysis.diffusion import pipelines

    _, folder = _saved_pipeline("pixart", tmp_path)
    monkeypatch.setattr(pipelines, "_importable", lambda module: module != "google.protobuf")
    with pytest.raises(ImportError, match=r"tokenizer.*spiece\.model.*needs protobuf: pip install protobuf"):
        load_pipeline(folder)
