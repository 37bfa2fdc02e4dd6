"""Load local diffusers pipelines (never from the hub) and sample from them with PLADIS on or off.

``load_pipeline(path)`` opens a folder saved by ``DiffusionPipeline.save_pretrained`` (SD1.5, SDXL, SANA, PixArt
…) with ``local_files_only=True``; a missing or malformed folder raises an error that says what was expected,
and a tokenizer the environment cannot load (a SentencePiece model without sentencepiece or protobuf) an
ImportError naming the folder and the package.
``sample(pipe, prompts, ...)`` calls the pipeline with a seeded generator and optional PLADIS, and returns the
images with the settings that produced them.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .patch import apply_pladis

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``torch.float16`` or a name (``"float16"``, ``"fp16"``, ``"bfloat16"``, ``"float32"``)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"dtype={dtype!r}: expected one of {sorted(_DTYPES)} or a torch.dtype") from None


def check_pipeline_folder(path: str | os.PathLike) -> dict[str, Any]:
    """Validate a ``save_pretrained`` folder and return its ``model_index.json``.

    Raises ``FileNotFoundError`` when the folder or ``model_index.json`` is missing and ``ValueError`` when the
    index is unreadable or names component folders that are absent.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model path {str(path)!r} does not exist; expected a diffusers pipeline folder "
                                "(written by DiffusionPipeline.save_pretrained, containing model_index.json)")
    if not path.is_dir():
        raise FileNotFoundError(f"model path {str(path)!r} is a file; expected a diffusers pipeline folder with "
                                "model_index.json (single-file checkpoints are not supported here)")
    index_file = path / "model_index.json"
    if not index_file.exists():
        raise FileNotFoundError(f"{str(path)!r} has no model_index.json; expected a diffusers pipeline folder "
                                f"(found: {sorted(p.name for p in path.iterdir())[:20]})")
    try:
        index = json.loads(index_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{str(index_file)!r} is not valid JSON: {err}") from err
    if not isinstance(index, dict) or "_class_name" not in index:
        raise ValueError(f"{str(index_file)!r} has no '_class_name'; is this a diffusers pipeline folder?")
    missing = [name for name, spec in index.items()
               if not name.startswith("_") and isinstance(spec, list) and len(spec) == 2
               and spec[0] is not None and not (path / name).is_dir()]
    if missing:
        raise ValueError(f"{str(path)!r}: model_index.json lists components {missing} but their folders are "
                         "missing; copy the whole pipeline folder")
    return index


# SentencePiece tokenizer files (T5's spiece.model: PixArt; tokenizer.model: Llama/Gemma-style). Without a
# tokenizer.json beside them, transformers converts them at load time, which needs both packages below; missing
# either, it fails deep inside with an error about tiktoken.
_SENTENCEPIECE_FILES = ("spiece.model", "tokenizer.model")
_SENTENCEPIECE_MODULES = {"sentencepiece": "sentencepiece", "google.protobuf": "protobuf"}


def check_tokenizer_backends(path: str | os.PathLike, index: dict[str, Any]) -> None:
    """ImportError naming the component and the packages to install when a tokenizer of the pipeline folder
    ``path`` is stored only as a SentencePiece model (no ``tokenizer.json``) and sentencepiece or protobuf is
    missing: PixArt's T5 tokenizer folders are usually stored so."""
    missing = [package for module, package in _SENTENCEPIECE_MODULES.items() if not _importable(module)]
    if not missing:
        return
    for name in index:
        folder = Path(path) / name
        if name.startswith("_") or not folder.is_dir() or (folder / "tokenizer.json").exists():
            continue
        stored = [f for f in _SENTENCEPIECE_FILES if (folder / f).exists()]
        if stored:
            raise ImportError(f"{str(folder)!r} stores its tokenizer as a SentencePiece model ({stored[0]}, no "
                              f"tokenizer.json); loading it needs {' and '.join(missing)}: pip install "
                              f"{' '.join(missing)} (or pip install 'pladis_analysis[diffusion]')")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a missing parent package ("google")
        return False


def load_pipeline(path: str | os.PathLike, dtype: str | torch.dtype = torch.float32,
                  device: str | torch.device = "cpu", **kwargs):
    """A diffusers pipeline from a local folder, with ``local_files_only=True`` (no network).

    ``kwargs`` go to ``DiffusionPipeline.from_pretrained`` (e.g. ``variant="fp16"``). The progress bar of the
    pipeline itself is disabled (callers show their own).
    """
    index = check_pipeline_folder(path)
    check_tokenizer_backends(path, index)
    try:
        from diffusers import DiffusionPipeline
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("loading pipelines needs diffusers: pip install 'pladis_analysis[diffusion]'") from err
    try:
        with warnings.catch_warnings():
            # newer diffusers rename `torch_dtype` to `dtype`; the old name works across the supported range
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            pipe = DiffusionPipeline.from_pretrained(str(path), torch_dtype=parse_dtype(dtype),
                                                     local_files_only=True, **kwargs)
    except (OSError, ValueError, EnvironmentError) as err:
        raise ValueError(f"could not load the {index.get('_class_name')} pipeline in {str(path)!r} "
                         f"(local files only): {err}") from err
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


@dataclass
class SampleResult:
    """Images (PIL) and the settings that produced them."""

    images: list
    prompts: list[str]
    settings: dict[str, Any] = field(default_factory=dict)


def _step_callback(pipe, callback: Callable) -> dict:
    """The pipeline-call arguments that run ``callback(step, timestep)`` after every step: diffusers'
    ``callback_on_step_end``, or the older ``callback``/``callback_steps`` (PixArt's pipelines), which a pipeline
    taking ``**kwargs`` would otherwise swallow without ever calling it."""
    parameters = inspect.signature(pipe.__call__).parameters
    if "callback_on_step_end" in parameters:
        def on_step_end(pipeline, step, timestep, tensors):
            callback(step, timestep)
            return tensors
        return {"callback_on_step_end": on_step_end}
    if "callback" in parameters and "callback_steps" in parameters:
        return {"callback": lambda step, timestep, latents: callback(step, timestep), "callback_steps": 1}
    raise ValueError(f"callback={callback!r}: {type(pipe).__name__} takes no step callback "
                     "(neither callback_on_step_end nor callback/callback_steps)")


def _layer_record(layers) -> object:
    """The layer spec as the settings record it: a string, ``None``, names, or a predicate's repr."""
    if layers is None or isinstance(layers, str):
        return layers
    if callable(layers):
        return repr(layers)
    return [getattr(item, "name", item) for item in layers]


def sample(pipe, prompts: str | Sequence[str], steps: int = 25, guidance_scale: float | None = None,
           seed: int = 0, pladis_scale: float = 0.0, alpha: float = 1.5, layers="default",
           branches: str = "all", callback: Callable | None = None, backend: str = "auto",
           **call_kwargs) -> SampleResult:
    """Sample one image per prompt; PLADIS is on when ``pladis_scale`` ≠ 0.

    ``guidance_scale=None`` keeps the pipeline's default. ``callback(step, timestep)`` is called after every step
    (through ``callback_on_step_end`` when the pipeline supports it), e.g. to advance a progress bar.
    ``backend`` (``"auto"`` | ``"triton"`` | ``"torch"``) is PLADIS's attention path, as in :func:`apply_pladis`.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError("prompts=[]: give at least one prompt")
    if steps < 1:
        raise ValueError(f"steps={steps!r}: must be ≥ 1")
    device = getattr(pipe, "device", torch.device("cpu"))
    generator = torch.Generator(device="cpu").manual_seed(seed)
    kwargs = dict(prompt=prompts, num_inference_steps=steps, generator=generator, **call_kwargs)
    if guidance_scale is not None:
        kwargs["guidance_scale"] = guidance_scale
    if callback is not None:
        kwargs.update(_step_callback(pipe, callback))

    if not (layers is None or isinstance(layers, str) or callable(layers)):
        layers = list(layers)  # once: a generator would be spent by the record below before apply_pladis saw it
    settings = {"steps": steps, "guidance_scale": guidance_scale, "seed": seed, "pladis_scale": pladis_scale,
                "alpha": alpha, "layers": _layer_record(layers), "branches": branches, "backend": backend,
                "device": str(device)}
    if pladis_scale != 0:
        with apply_pladis(pipe, scale=pladis_scale, alpha=alpha, layers=layers, branches=branches,
                          backend=backend) as handle:
            settings["pladis_layers"] = handle.layers
            images = pipe(**kwargs).images
    else:
        images = pipe(**kwargs).images
    if guidance_scale is None:  # record the pipeline's default, which diffusers' pipelines keep after a call
        settings["guidance_scale"] = getattr(pipe, "_guidance_scale", None)
    return SampleResult(images=list(images), prompts=prompts, settings=settings)
