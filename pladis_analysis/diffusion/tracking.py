"""Where sampling is: step, timestep and the CFG batch layout, observed by a forward pre-hook on the model.

Processors see one attention call at a time and, for some models (SANA), no per-call kwargs at all. The step,
the timestep and which batch chunk is which guidance branch are properties of the *model* call, so one forward
pre-hook on the denoiser records them in a :class:`SamplingState` that every processor of that model shares.

* ``step``: index of the model forward call within the current sampling run. A run ends when the timestep goes
  *up* (samplers walk timesteps downwards), so several pipeline calls inside one context each count from 0 and
  ``run`` counts them. Schedulers that evaluate the model twice per step (Heun) count two steps per step.
* ``timestep``: the first element of the model's ``timestep`` argument, as a float.
* ``layout``: the guidance branch of each equal batch chunk, e.g. ``("uncond", "cond")`` for classifier-free
  guidance or ``("uncond", "cond", "perturbed")`` for CFG + perturbed-attention guidance (PAG). Resolved, in
  order, from an explicit layout, from the pipeline's ``do_classifier_free_guidance`` /
  ``do_perturbed_attention_guidance`` properties when a pipeline was given and defines them, and otherwise from
  the inputs: pipelines build guidance batches by repeating the latents (``torch.cat([latents] * n)``), so equal
  latent chunks reveal the layout; PAG's perturbed chunk shares the conditional text, CFG's unconditional chunk
  does not, and PAG is only considered while one of the model's processors is a PAG processor (PAG pipelines
  install them for their call), so an empty prompt under CFG stays CFG. A pipeline's properties outlive its call,
  so they are believed only where the latent chunks agree with them. (A batch of repeated latents without
  guidance, e.g. paired noise for several prompts, reads as CFG, and PixArt's pipelines define no such
  properties: pass an explicit layout for those.)

The hook is shared: :func:`track_sampling` is reference counted per model, so PLADIS and a recorder on the same
model see one state, and the hook goes away when the last user leaves.
"""

from __future__ import annotations

import contextlib
import inspect
import weakref
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch

from .layers import attention_layers, unwrap_compiled

CFG = ("uncond", "cond")
CFG_PAG = ("uncond", "cond", "perturbed")
PAG = ("cond", "perturbed")
NO_GUIDANCE = ("cond",)
_NAMED_LAYOUTS = {"cfg": CFG, "cfg+pag": CFG_PAG, "pag": PAG, "none": NO_GUIDANCE}
BRANCH_LABELS = ("uncond", "cond", "perturbed")


def parse_layout(layout: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``None``/``"auto"`` → ``None`` (infer); ``"cfg"``, ``"cfg+pag"``, ``"pag"``, ``"none"`` or a sequence of
    branch labels → a tuple of labels."""
    if layout is None or layout == "auto":
        return None
    if isinstance(layout, str):
        if layout not in _NAMED_LAYOUTS:
            raise ValueError(f"batch_layout={layout!r}: expected 'auto', one of {sorted(_NAMED_LAYOUTS)} or a "
                             f"sequence of labels from {BRANCH_LABELS}")
        return _NAMED_LAYOUTS[layout]
    labels = tuple(layout)
    bad = [x for x in labels if x not in BRANCH_LABELS]
    if not labels or bad:
        raise ValueError(f"batch_layout={layout!r}: labels must be a non-empty sequence from {BRANCH_LABELS}")
    return labels


def _chunks_equal(x: torch.Tensor, n: int) -> bool:
    if x.shape[0] % n or x.shape[0] < n:
        return False
    chunks = x.chunk(n)
    return all(torch.equal(chunks[0], c) for c in chunks[1:])


def infer_layout(sample: torch.Tensor, text: torch.Tensor | None, pag: bool = True) -> tuple[str, ...]:
    """The branch layout of a guidance batch, read off repeated latent chunks (see the module docstring).

    ``pag=False``: perturbed-attention guidance is not running (the model has no PAG processor), so equal text
    chunks are CFG with a negative prompt equal to the prompt (an empty prompt, say), not PAG's perturbed copy."""
    if text is not None and text.shape[0] != sample.shape[0]:
        text = None
    if pag and _chunks_equal(sample, 3) and (text is None or _chunks_equal(text[sample.shape[0] // 3:], 2)):
        return CFG_PAG
    if _chunks_equal(sample, 2):
        if pag and text is not None and _chunks_equal(text, 2):
            return PAG
        return CFG
    return NO_GUIDANCE


def _pipeline_layout(pipeline) -> tuple[str, ...] | None:
    # Pipelines set `_guidance_scale`/`_pag_scale` inside __call__; before that the properties raise.
    try:
        cfg = pipeline.do_classifier_free_guidance
    except Exception:  # noqa: BLE001 - any failure means "this pipeline cannot tell us"
        return None
    try:
        pag = bool(pipeline.do_perturbed_attention_guidance)
    except Exception:  # noqa: BLE001
        pag = False
    if not isinstance(cfg, bool):
        return None
    return {(True, True): CFG_PAG, (True, False): CFG, (False, True): PAG, (False, False): NO_GUIDANCE}[(cfg, pag)]


@dataclass
class SamplingState:
    """What the model is doing now; read by processors and probes."""

    step: int = -1
    timestep: float = float("nan")
    run: int = -1
    calls: int = 0
    layout: tuple[str, ...] = NO_GUIDANCE
    latent_hw: tuple[int, int] | None = None
    pipeline_ref: "weakref.ReferenceType | None" = None
    _users: int = field(default=0, repr=False)

    def observe(self, sample: torch.Tensor | None, timestep, text: torch.Tensor | None,
                pag_running: Callable[[], bool] | None = None) -> None:
        """One model call. ``pag_running()`` says whether PAG may be running, asked only where the layout is read
        off the inputs (``None``: it may)."""
        t = _first_float(timestep)
        if self.run < 0 or (t == t and self.timestep == self.timestep and t > self.timestep):
            self.run += 1
            self.step = 0
        else:
            self.step += 1
        self.calls += 1
        self.timestep = t
        layout = None
        pipeline = self.pipeline_ref() if self.pipeline_ref is not None else None
        if pipeline is not None:
            layout = _pipeline_layout(pipeline)
            # Pipelines set these properties in __call__ and never clear them: a call the pipeline is not making
            # (another pipeline sharing the model, a hand-written loop afterwards) would read its last setting.
            # A guidance batch repeats its latents, so a claim of guidance over unequal chunks is stale.
            if layout is not None and len(layout) > 1 and sample is not None and not _chunks_equal(sample,
                                                                                                   len(layout)):
                layout = None
        if layout is None and sample is not None:
            layout = infer_layout(sample, text, pag_running is None or pag_running())
        if layout is not None and sample is not None and sample.shape[0] % len(layout) == 0:
            self.layout = layout
        elif sample is not None:
            self.layout = NO_GUIDANCE
        if sample is not None and sample.ndim == 4:
            self.latent_hw = (int(sample.shape[-2]), int(sample.shape[-1]))

    def reset(self) -> None:
        self.step, self.timestep, self.run, self.calls = -1, float("nan"), -1, 0


def _first_float(timestep) -> float:
    if timestep is None:
        return float("nan")
    if isinstance(timestep, torch.Tensor):
        return float(timestep.reshape(-1)[0]) if timestep.numel() else float("nan")
    return float(timestep)


def _pre_hook(state: SamplingState, model: torch.nn.Module):
    # Arguments by name, whatever their order: UNet2DConditionModel(sample, timestep, encoder_hidden_states),
    # SANA and PixArt (hidden_states, encoder_hidden_states, timestep), positional or not.
    try:
        signature = inspect.signature(unwrap_compiled(model).forward)
    except (TypeError, ValueError):
        signature = None
    attention = [layer.module for layer in attention_layers(model)]

    def pag_running() -> bool:
        # PAG pipelines install their perturbed-attention processors for the length of their call; without one,
        # equal text chunks are CFG with a negative prompt equal to the prompt, not PAG
        return any("PAG" in type(m.processor).__name__ for m in attention)

    def hook(module, args, kwargs):
        named = dict(kwargs)
        if signature is not None:
            try:
                named = dict(signature.bind_partial(*args, **kwargs).arguments)
            except TypeError:
                pass
        sample = named.get("sample", named.get("hidden_states"))
        timestep = named.get("timestep")
        text = named.get("encoder_hidden_states")
        state.observe(sample if isinstance(sample, torch.Tensor) else None, timestep,
                      text if isinstance(text, torch.Tensor) else None, pag_running)
    return hook


_STATES: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[SamplingState, object]]" = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def track_sampling(model: torch.nn.Module, pipeline=None) -> Iterator[SamplingState]:
    """Share (installing on first use) the model's :class:`SamplingState` and its forward pre-hook; the hook is
    removed in ``finally`` when the last user leaves."""
    if model in _STATES:
        state, handle = _STATES[model]
    else:
        state = SamplingState()
        handle = model.register_forward_pre_hook(_pre_hook(state, model), with_kwargs=True)
        _STATES[model] = (state, handle)
    previous_pipeline = state.pipeline_ref
    if pipeline is not None and pipeline is not model:
        try:
            state.pipeline_ref = weakref.ref(pipeline)
        except TypeError:  # an object that cannot be weakly referenced: keep it alive for the context
            state.pipeline_ref = (lambda p: (lambda: p))(pipeline)
    state._users += 1
    try:
        yield state
    finally:
        state._users -= 1
        state.pipeline_ref = previous_pipeline
        if state._users == 0:
            handle.remove()
            del _STATES[model]
