"""Tiny random-weight diffusers models for integration tests, built from config dicts (no hub, no download).

Each builder seeds torch before construction, so two calls give identical weights, and returns the model in
float32 eval mode. The configs keep every structural feature the processor has to handle:

* UNet: cross-attention in down, mid and up blocks, ``attention_head_dim`` = number of heads (diffusers' naming),
  4-D feature maps entering the transformer blocks, the −10000 encoder-mask bias built by the UNet's forward.
* SANA: linear self-attention + SDPA cross-attention (``SanaAttnProcessor2_0``, no per-call kwargs), caption
  projection inside the model, mask converted to a bias by the model.
* PixArt: ``BasicTransformerBlock`` with ada-norm-single, patch size 2, caption projection.

``make_inputs`` returns a matching ``(sample, timestep, encoder_hidden_states)`` triple, with the
classifier-free-guidance batch layout ``[uncond, cond]`` when ``cfg=True`` (latents duplicated, as pipelines do).

Whole pipelines (``tiny_sd_pipeline``, ``tiny_sdxl_pipeline``, ``tiny_pixart_pipeline``, ``tiny_sana_pipeline``)
add one-layer text encoders over tokenizers written to a folder the caller gives, a tiny autoencoder and the
family's scheduler, so that they can be saved and loaded like published ones.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models run in one intra-op thread: on tensors this small the thread pool's hand-offs cost more
    than the maths, and on a shared CI machine spinning workers slow every op down by 10-100×. Import this
    fixture into a test module to make it apply there; the previous setting is restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)

UNET_CONFIG = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(8, 16),
    layers_per_block=1,
    norm_num_groups=4,
    cross_attention_dim=12,
    attention_head_dim=2,  # diffusers' UNet calls the number of heads "attention_head_dim"
)

SANA_CONFIG = dict(
    in_channels=4,
    out_channels=4,
    num_attention_heads=2,
    attention_head_dim=4,
    num_layers=2,
    num_cross_attention_heads=2,
    cross_attention_head_dim=4,
    cross_attention_dim=8,
    caption_channels=12,
    sample_size=8,
    patch_size=1,
)

PIXART_CONFIG = dict(
    sample_size=8,
    num_layers=2,
    patch_size=2,
    attention_head_dim=4,
    num_attention_heads=2,
    in_channels=4,
    out_channels=8,
    cross_attention_dim=8,
    caption_channels=12,
    attention_bias=True,
    activation_fn="gelu-approximate",
    num_embeds_ada_norm=1000,
    norm_type="ada_norm_single",
    norm_elementwise_affine=False,
    norm_eps=1e-6,
)

# text-embedding width each model expects at its forward (before any caption projection)
TEXT_DIM = {"unet": 12, "sana": 12, "pixart": 12}
FAMILIES = ("unet", "sana", "pixart")


def tiny_unet(seed: int = 0, **overrides):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**{**UNET_CONFIG, **overrides}).eval()


def tiny_sana(seed: int = 0, **overrides):
    from diffusers import SanaTransformer2DModel

    torch.manual_seed(seed)
    return SanaTransformer2DModel(**{**SANA_CONFIG, **overrides}).eval()


def tiny_pixart(seed: int = 0, **overrides):
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(seed)
    return PixArtTransformer2DModel(**{**PIXART_CONFIG, **overrides}).eval()


def tiny_model(family: str, seed: int = 0, **overrides):
    """``family`` in ``FAMILIES``."""
    builders = {"unet": tiny_unet, "sana": tiny_sana, "pixart": tiny_pixart}
    if family not in builders:
        raise ValueError(f"family={family!r}; expected one of {FAMILIES}")
    return builders[family](seed, **overrides)


def make_inputs(family: str, batch: int = 1, text_len: int = 6, cfg: bool = True, seed: int = 1,
                size: int = 8):
    """``(sample, timestep, encoder_hidden_states)`` for ``family``; with ``cfg`` the batch is ``[uncond, cond]``
    (``2 * batch`` items, latents repeated, different text embeddings), as in diffusers' pipelines."""
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 4, size, size, generator=g)
    cond = torch.randn(batch, text_len, TEXT_DIM[family], generator=g)
    if cfg:
        uncond = torch.randn(batch, text_len, TEXT_DIM[family], generator=g)
        latents = torch.cat([latents, latents])
        text = torch.cat([uncond, cond])
    else:
        text = cond
    timestep = torch.tensor([500] * latents.shape[0])
    return latents, timestep, text


def run_model(model, sample, timestep, text, encoder_attention_mask=None) -> torch.Tensor:
    """One forward with the calling convention of each family (UNet: positional sample/timestep;
    DiTs: keyword ``hidden_states``/``timestep``)."""
    with torch.no_grad():
        if type(model).__name__ == "UNet2DConditionModel":
            return model(sample, timestep, encoder_hidden_states=text,
                         encoder_attention_mask=encoder_attention_mask).sample
        return model(hidden_states=sample, encoder_hidden_states=text, timestep=timestep,
                     encoder_attention_mask=encoder_attention_mask).sample


# -- a whole (tiny, random) Stable Diffusion pipeline, offline -------------------------------------------------

def tiny_clip_tokenizer(directory, max_length: int = 16):
    """A CLIPTokenizer whose vocabulary is single characters (no merges), written to ``directory``."""
    import json
    import os
    import string

    from transformers import CLIPTokenizer

    chars = list(string.ascii_lowercase) + list(string.digits) + list(".,!?'-")
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(directory, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    return CLIPTokenizer(os.path.join(directory, "vocab.json"), os.path.join(directory, "merges.txt"),
                         model_max_length=max_length)


def _tiny_clip_config(tokenizer, hidden: int, **extra):
    """A one-layer CLIP text encoder of width ``hidden`` over ``tokenizer``'s vocabulary."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                          num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id, **extra)


def _tiny_vae():
    """A two-level VAE: 16×16 images, 4-channel 8×8 latents."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), latent_channels=4,
                         norm_num_groups=4, sample_size=16).eval()


def tiny_sd_pipeline(tmp_dir, seed: int = 0):
    """A ``StableDiffusionPipeline`` with random tiny components (16×16 px images, 8×8 latents), built offline.

    ``tmp_dir`` holds the tokenizer files. The UNet has cross-attention in down, mid and up blocks.
    """
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel

    tokenizer = tiny_clip_tokenizer(tmp_dir)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_tiny_clip_config(tokenizer, 12)).eval()
    torch.manual_seed(seed + 1)
    vae = _tiny_vae()
    unet = tiny_unet(seed + 2)
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sdxl_pipeline(tmp_dir, seed: int = 0):
    """A ``StableDiffusionXLPipeline`` with random tiny components (16×16 px images), built offline.

    What SDXL adds to SD1.5, kept: two text encoders whose hidden states are concatenated (8 + 8 = 16 channels
    of cross-attention context) and whose second one's pooled projection conditions the UNet with the size and
    crop ids (``addition_embed_type="text_time"``); a first down block and a last up block without attention;
    two transformer layers per block in the attention blocks; linear projections in and out of them.
    """
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = tiny_clip_tokenizer(tmp_dir)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_tiny_clip_config(tokenizer, 8)).eval()
    text_encoder_2 = CLIPTextModelWithProjection(_tiny_clip_config(tokenizer, 8, projection_dim=8)).eval()
    torch.manual_seed(seed + 1)
    vae = _tiny_vae()
    torch.manual_seed(seed + 2)
    time_embed_dim = 4
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4, transformer_layers_per_block=(1, 2), attention_head_dim=(2, 4), cross_attention_dim=16,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=time_embed_dim,
        # six size/crop ids, each embedded in time_embed_dim channels, then the pooled text projection
        projection_class_embeddings_input_dim=6 * time_embed_dim + 8).eval()
    scheduler = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                       steps_offset=1)
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_t5_tokenizer(directory, max_length: int = 16):
    """A T5Tokenizer stored as PixArt's are: a SentencePiece unigram model (``spiece.model``, 32 pieces, trained
    here on a few shape prompts) and ``tokenizer_config.json``, no ``tokenizer.json``. Needs sentencepiece and
    protobuf."""
    import json
    import os
    import random

    import sentencepiece
    from transformers import T5Tokenizer

    os.makedirs(directory, exist_ok=True)
    words = ["a", "red", "blue", "green", "circle", "square", "triangle", "left", "right", "of", "the", "top"]
    rng = random.Random(0)
    corpus = os.path.join(directory, "corpus.txt")
    with open(corpus, "w") as f:
        f.write("\n".join(" ".join(rng.choice(words) for _ in range(6)) for _ in range(300)))
    sentencepiece.SentencePieceTrainer.train(input=corpus, model_prefix=os.path.join(directory, "spiece"),
                                             vocab_size=32, model_type="unigram", pad_id=0, eos_id=1, unk_id=2,
                                             bos_id=-1, character_coverage=1.0, minloglevel=2)
    os.remove(corpus)
    os.remove(os.path.join(directory, "spiece.vocab"))
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "T5Tokenizer", "extra_ids": 0, "model_max_length": max_length}, f)
    return T5Tokenizer.from_pretrained(directory)


def tiny_pixart_pipeline(tmp_dir, seed: int = 0):
    """A ``PixArtAlphaPipeline`` with random tiny components (16×16 px images), built offline: a one-layer T5
    encoder over :func:`tiny_t5_tokenizer` (its padding mask reaches the cross-attention as a −10000 bias) and the
    tiny PixArt transformer."""
    from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline
    from transformers import T5Config, T5EncoderModel

    tokenizer = tiny_t5_tokenizer(tmp_dir)
    torch.manual_seed(seed)
    text_encoder = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=PIXART_CONFIG["caption_channels"], d_kv=4, d_ff=24, num_layers=1,
        num_heads=2, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id)).eval()
    torch.manual_seed(seed + 1)
    vae = _tiny_vae()
    pipe = PixArtAlphaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                               transformer=tiny_pixart(seed + 2), scheduler=DPMSolverMultistepScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_gemma_tokenizer(directory):
    """A GemmaTokenizer over single characters (spaces as "▁"), saved to ``directory`` and loaded back from it, so
    that it behaves as the tokenizer of a pipeline loaded from disk does."""
    import string

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import GemmaTokenizerFast

    pieces = ["<pad>", "<eos>", "<bos>", "<unk>"] + list(string.ascii_lowercase) + list("▁.,:;'-")
    characters = Tokenizer(models.WordLevel({p: i for i, p in enumerate(pieces)}, unk_token="<unk>"))
    characters.normalizer = normalizers.Replace(" ", "▁")
    characters.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    GemmaTokenizerFast(tokenizer_object=characters, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                       unk_token="<unk>").save_pretrained(directory)
    return GemmaTokenizerFast.from_pretrained(directory)


def tiny_sana_pipeline(tmp_dir, seed: int = 0):
    """A ``SanaPipeline`` with random tiny components (32×32 px images: SANA wants multiples of 32), built offline:
    a one-layer Gemma-2 encoder over :func:`tiny_gemma_tokenizer` (the pipeline prepends its long "complex human
    instruction" to every prompt and keeps the last tokens), a two-level DC autoencoder, the tiny SANA
    transformer (linear self-attention, SDPA cross-attention)."""
    from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaPipeline
    from transformers import Gemma2Config, Gemma2Model

    tokenizer = tiny_gemma_tokenizer(tmp_dir)
    torch.manual_seed(seed)
    text_encoder = Gemma2Model(Gemma2Config(
        vocab_size=len(tokenizer), hidden_size=SANA_CONFIG["caption_channels"], intermediate_size=24,
        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=6,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id)).eval()
    torch.manual_seed(seed + 1)
    two_levels = dict(encoder_block_types=("ResBlock",) * 2, decoder_block_types=("ResBlock",) * 2,
                      encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                      encoder_layers_per_block=(1, 1), decoder_layers_per_block=(1, 1),
                      encoder_qkv_multiscales=((), ()), decoder_qkv_multiscales=((), ()))
    vae = AutoencoderDC(in_channels=3, latent_channels=4, attention_head_dim=2, decoder_norm_types="batch_norm",
                        decoder_act_fns="silu", **two_levels).eval()
    pipe = SanaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=tiny_sana(seed + 2),
                        scheduler=DPMSolverMultistepScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


SD_CALL = dict(height=16, width=16, num_inference_steps=2, guidance_scale=5.0, output_type="np")
