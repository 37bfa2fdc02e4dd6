"""Choosing between the Triton kernels and the torch path, with the reason stated.

``backend`` is one of:

* ``"auto"`` (default everywhere): the kernels on CUDA tensors whose dtype and shape fit, the torch path
  otherwise. Every fallback has a reason (``triton`` not importable, no CUDA tensor, dtype, shape, an α above
  ``FLOAT32_MAX_ALPHA`` = 6, where float32 registers lose weights next to the threshold, or below
  ``FLOAT32_MIN_ALPHA`` = 1.01, where they lose the scores' differences) that
  :func:`choose_map_backend` / :func:`choose_attention_backend` return and that is logged at DEBUG level on
  the ``pladis_analysis.kernels`` logger. CPU tensors always take the torch path under ``"auto"``: the
  Triton interpreter is a testing tool, far slower than torch on CPU.
* ``"triton"``: the kernels, or a ``ValueError`` saying why they cannot run (:class:`KernelBuildError` when
  they fail to build). CPU tensors are accepted when
  ``TRITON_INTERPRET=1`` was set before the kernels were first imported (that is how the tests run them).
* ``"torch"``: the torch path, always.

A kernel that fails to build or launch on the device at hand (a Triton error, shared memory the GPU lacks, a
compiler pass an older Triton cannot run: :mod:`.build_failures`) is a fallback too under ``"auto"``: the call
takes the torch path, a WARNING names the cause once, and later calls of that signature (device, dtype, key
count, head dims, mask, map) go straight to the torch path with that reason. Under ``"triton"`` it raises
:class:`KernelBuildError`.

One contract differs on the kernel path: the torch path raises ValueError for NaN or +inf scores, the kernels
do not look (a check costs a full extra pass over q and k plus a host synchronisation, more than the kernel
itself at diffusion shapes); a NaN score gives its row (weights, or the query's output) NaN there. Use
``backend="torch"`` to keep the check.

Softmax has no kernel of its own (``torch.softmax`` and SDPA are already fused); it takes the torch path
under every backend. This module imports Triton lazily, so importing it costs nothing where Triton is absent.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from functools import lru_cache

import torch

from .._shapes import broadcast_shapes
from .._threshold import FLOAT32_MAX_ALPHA, FLOAT32_MIN_ALPHA
from .build_failures import KernelBuildError

logger = logging.getLogger("pladis_analysis.kernels")

BACKENDS = ("auto", "triton", "torch")
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Maps with a row-wise kernel, and how each reads its parameters.
_KERNEL_MAPS = ("sparsemax", "entmax15", "entmax", "pladis")


def check_backend(backend: str) -> str:
    """``backend`` itself, or a ValueError naming the value and the choices."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: expected one of {BACKENDS}")
    return backend


@lru_cache(maxsize=None)
def triton_import_error() -> str | None:
    """``None`` when Triton imports, else the reason it does not."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install 'pladis_analysis[triton]')"
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as exc:  # a broken install raises all sorts of errors
        return f"triton failed to import: {type(exc).__name__}: {exc}"
    return None


def interpreter_requested() -> bool:
    """Whether ``TRITON_INTERPRET`` is set to a true value in the environment now."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


@lru_cache(maxsize=None)
def kernels_interpreted() -> bool:
    """Whether the kernels were built for the interpreter (``TRITON_INTERPRET=1`` at their first import).

    Triton decides at decoration time, so setting the variable after the kernel modules were imported has
    no effect on them (hence the answer is cached: it cannot change within a process).
    """
    from . import entmax_rowwise

    return type(entmax_rowwise._entmax_fwd_kernel).__name__ == "InterpretedFunction"


def interpreter_ready() -> bool:
    """Whether the kernels can run on CPU tensors now: ``TRITON_INTERPRET=1`` is set and was already set when
    Triton itself was first imported (its own library functions, ``tl.sum`` and friends, are decorated then;
    importing diffusers or torch.compile machinery may import Triton early)."""
    import triton.language.standard as triton_std

    return (interpreter_requested() and kernels_interpreted()
            and type(triton_std.sum).__name__ == "InterpretedFunction")


def _device_reason(tensors: tuple[torch.Tensor, ...], backend: str) -> str | None:
    """Why the kernels cannot take these tensors (``None`` if they can)."""
    error = triton_import_error()
    if error is not None:
        return error
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        return f"tensors on several devices {sorted(map(str, devices))}"
    device = devices.pop()
    if device.type == "cuda":
        if kernels_interpreted():
            return "the kernels were built for the CPU interpreter (TRITON_INTERPRET=1 at import) but the tensors are on CUDA"
        return None
    if device.type == "cpu":
        if backend == "auto":
            return "CPU tensors: 'auto' uses the kernels on CUDA only (the Triton interpreter is for tests)"
        if not interpreter_requested():
            return "CPU tensors need TRITON_INTERPRET=1 (the Triton interpreter) and no CUDA device was given"
        if not interpreter_ready():
            return ("TRITON_INTERPRET=1 was set after Triton was imported; set it in the environment before "
                    "starting Python")
        return None
    return f"device {device.type!r} is not supported by Triton"


def _decide(reason: str | None, backend: str, what: str) -> tuple[str, str]:
    if reason is None:
        decision = ("triton", f"{what}: the Triton kernel fits")
    elif backend == "triton":
        raise ValueError(f"backend='triton' cannot run {what}: {reason}")
    else:
        decision = ("torch", f"{what}: torch path because {reason}")
    logger.debug("%s -> %s (%s)", what, *decision)
    return decision


def _decide_without_kernel(map_name: str, backend: str, what: str, softmax_reason: str) -> tuple[str, str] | None:
    """The decision when no kernel question arises (torch requested, or softmax), else ``None``; rejects unknown
    backends and map names."""
    check_backend(backend)
    if backend == "torch":
        return _decide("backend='torch' was requested", "torch", what)
    if map_name == "softmax":
        # Not an error even under backend='triton': there is simply no better kernel than torch's.
        return _decide(softmax_reason, "auto", what)
    if map_name not in _KERNEL_MAPS:
        raise ValueError(f"map_name={map_name!r}: expected 'softmax' or one of {_KERNEL_MAPS}")
    return None


def choose_map_backend(z: torch.Tensor, map_name: str, *, dim: int = -1, alpha: float = 1.5,
                       backend: str = "auto") -> tuple[str, str]:
    """``("triton" | "torch", reason)`` for a map applied to ``z`` along ``dim``.

    ``map_name``: ``softmax``, ``sparsemax``, ``entmax15``, ``entmax`` or ``pladis``. Raises ValueError for
    ``backend="triton"`` when the kernel cannot run (the message carries the reason).
    """
    what = f"{map_name} on {tuple(z.shape)} {z.dtype}"
    decided = _decide_without_kernel(map_name, backend, what, "softmax has no Triton kernel (torch.softmax is "
                                                                  "already fused)")
    if decided is not None:
        return decided
    reason = _device_reason((z,), backend)
    if reason is None:
        reason = _dtype_reason(z.dtype)
    if reason is None:
        reason = _alpha_reason(alpha)
    if reason is None and z.dim() > 0:
        from .entmax_rowwise import MAX_ROW_LENGTH

        n = z.shape[dim]
        if n > MAX_ROW_LENGTH:
            reason = f"rows of length {n} > {MAX_ROW_LENGTH} do not fit in registers"
        elif n == 0:
            reason = "empty rows"
    if reason is None and z.dim() == 0:
        reason = "a scalar has no rows"
    if reason is None:
        reason = _build_failure(_map_signature(z, alpha, dim), backend, what)
    return _decide(reason, backend, what)


def _alpha_reason(alpha: float) -> str | None:
    if not math.isfinite(alpha) or alpha <= 1.0:
        return f"alpha={alpha!r} is not a finite number > 1"
    if alpha > FLOAT32_MAX_ALPHA:
        return (f"alpha={alpha!r} > {FLOAT32_MAX_ALPHA}: the kernels search in float32, which loses the weights of "
                f"entries tied next to the threshold at such α (the torch path computes it in float64)")
    if alpha < FLOAT32_MIN_ALPHA:
        return (f"alpha={alpha!r} < {FLOAT32_MIN_ALPHA}: the kernels search in float32, which loses the scores' "
                f"differences so close to α = 1 (the torch path computes it in float64)")
    return None


def _dtype_reason(dtype: torch.dtype) -> str | None:
    if dtype not in KERNEL_DTYPES:
        return f"dtype {dtype} (kernels take {', '.join(str(d).replace('torch.', '') for d in KERNEL_DTYPES)})"
    return None


def choose_attention_backend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             attn_mask: torch.Tensor | None = None, *, map_name: str = "pladis",
                             alpha: float = 1.5, backend: str = "auto", stats: bool = False) -> tuple[str, str]:
    """``("triton" | "torch", reason)`` for attention of ``q`` [..., Lq, d] over ``k``/``v`` [..., Lk, d(v)].

    The fused kernel needs one dtype among float16/bfloat16/float32, Lk ≤ 512 and head dims ≤ 128 (text
    cross-attention); ``map_name="softmax"`` always takes the torch path (SDPA is the fused softmax kernel).
    ``stats``: the call also asks for the per-row statistics (a kernel variant of its own, which may fail to
    build where the plain one does not).
    """
    # CUDA decisions depend only on shapes, dtypes, devices and arguments: remember them, so that a diffusion
    # model's thousands of identical calls skip the checks (CPU decisions also read the environment: not cached).
    key = None
    if q.is_cuda and backend != "torch":
        key = (q.shape, k.shape, v.shape, q.dtype, k.dtype, v.dtype, q.device, k.device, v.device,
               None if attn_mask is None else (attn_mask.shape, attn_mask.dtype, attn_mask.device,
                                               attn_mask.requires_grad and torch.is_grad_enabled()),
               map_name, alpha, backend, stats)
        cached = _ATTENTION_DECISIONS.get(key)
        if cached is not None:
            return cached
    what = f"{map_name} attention q{tuple(q.shape)} k{tuple(k.shape)} {q.dtype}"
    decided = _decide_without_kernel(map_name, backend, what, "softmax attention has no Triton kernel here (SDPA "
                                                                  "is already fused)")
    if decided is not None:
        return decided
    tensors = (q, k, v) if attn_mask is None else (q, k, v, attn_mask)
    reason = _device_reason(tensors, backend)
    if reason is None and not (q.dtype == k.dtype == v.dtype):
        reason = f"mixed dtypes q={q.dtype}, k={k.dtype}, v={v.dtype}"
    if reason is None:
        reason = _dtype_reason(q.dtype)
    if reason is None:
        reason = _alpha_reason(alpha)
    if reason is None:
        from .cross_attention import MAX_HEAD_DIM, MAX_KEYS

        if min(q.dim(), k.dim(), v.dim()) < 2:
            reason = "q, k and v need at least 2 dims [..., L, d]"
        elif q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
            reason = f"shapes q{tuple(q.shape)} k{tuple(k.shape)} v{tuple(v.shape)} do not line up"
        elif k.shape[-2] > MAX_KEYS:
            reason = f"Lk={k.shape[-2]} keys > {MAX_KEYS} (the kernel holds all keys in registers)"
        elif max(q.shape[-1], v.shape[-1]) > MAX_HEAD_DIM:
            reason = f"head dim {max(q.shape[-1], v.shape[-1])} > {MAX_HEAD_DIM}"
        elif 0 in (q.numel(), k.numel(), v.numel()):
            reason = "an empty q, k or v (no queries, keys or head dimension)"
        elif attn_mask is not None and not (attn_mask.dtype == torch.bool or attn_mask.is_floating_point()):
            reason = f"attn_mask dtype {attn_mask.dtype} (bool or floating masks only)"
        elif attn_mask is not None and attn_mask.requires_grad and torch.is_grad_enabled():
            reason = "attn_mask requires grad (the kernel's backward gives q, k and v theirs only)"
        else:
            try:
                lead = broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
                if attn_mask is not None:
                    broadcast_shapes(attn_mask.shape, (*lead, q.shape[-2], k.shape[-2]))
            except RuntimeError:
                reason = "shapes of q/k/v/attn_mask do not broadcast"
            else:
                if math.prod(lead) > MAX_GRID_Y:
                    reason = (f"batch × heads = {math.prod(lead)} > {MAX_GRID_Y} (CUDA's limit on the launch grid's "
                              "y axis)")
    if reason is None:
        reason = _build_failure(_attention_signature(q, k, v, attn_mask, map_name, alpha, stats), backend, what)
    decision = _decide(reason, backend, what)
    if key is not None:
        if len(_ATTENTION_DECISIONS) >= 4096:  # a bound, not a policy: shapes in one session are few
            _ATTENTION_DECISIONS.clear()
        _ATTENTION_DECISIONS[key] = decision
    return decision


_ATTENTION_DECISIONS: dict[tuple, tuple[str, str]] = {}

# The fused kernel launches one program per query block along x and per (batch, head) along y, whose size CUDA
# caps at 65535.
MAX_GRID_Y = 65535


# --------------------------------------------------------------------------------------------------
# Kernels that do not build here: remembered per signature, so that the torch path takes over
# --------------------------------------------------------------------------------------------------
# (No shared-memory rule: the fused kernel stages key and value chunks, not whole tiles, and compiles to
# 16–67 KiB of shared memory up to 512 keys × 128 dims on sm_75 … sm_90 (results/kernel_builds.csv); a GPU
# with less is answered by Triton's out-of-resources error at launch, a build failure like any other.)

_BUILD_FAILURES: dict[tuple, str] = {}   # dispatch signature → why its kernel did not build


def _attention_signature(q, k, v, attn_mask, map_name: str, alpha: float, stats: bool = False) -> tuple:
    mask = None if attn_mask is None else attn_mask.dtype
    return ("attention", q.device, q.dtype, k.shape[-2], q.shape[-1], v.shape[-1], mask, map_name, alpha,
            "with statistics" if stats else "")


def _map_signature(z: torch.Tensor, alpha: float, dim: int) -> tuple:
    return ("row-wise map", z.device, z.dtype, z.shape[dim], alpha)   # sparse maps and PLADIS share the kernel


def _build_failure(signature: tuple, backend: str, what: str) -> str | None:
    """Why the kernel cannot run for ``signature`` (it failed to build earlier in this process), else None;
    under ``backend="triton"`` that is a :class:`KernelBuildError`."""
    failure = _BUILD_FAILURES.get(signature)
    if failure is not None and backend == "triton":
        raise KernelBuildError(f"backend='triton' cannot run {what}: {failure}")
    return failure


def _kernel_or_torch(signature, backend: str, launch):
    """``launch()``'s result, or ``None`` (take the torch path) when its kernel does not build here: the
    failure is remembered for ``signature()`` (called only then, off the hot path) and logged once; under
    ``backend="triton"`` it is raised."""
    try:
        return launch()
    except KernelBuildError as exc:
        signature = signature()
        _BUILD_FAILURES[signature] = f"its kernel failed earlier in this process ({exc})"
        _ATTENTION_DECISIONS.clear()   # cached "triton" decisions must now read the failure
        if backend == "triton":
            raise
        logger.warning("torch path instead of the Triton kernel from now on for %s: %s",
                       ", ".join(map(str, signature)), exc)
        return None


# --------------------------------------------------------------------------------------------------
# Entry points for the public functions: they return None when the torch path should run.
# --------------------------------------------------------------------------------------------------

def _map_alpha(map_name: str, alpha: float | None) -> float:
    return {"sparsemax": 2.0, "entmax15": 1.5}.get(map_name, alpha if alpha is not None else 1.5)


def maybe_triton_map(map_name: str, z: torch.Tensor, *, dim: int = -1, backend: str = "auto",
                     alpha: float | None = None, scale: float | None = None):
    """``(p, support_size)`` from the row-wise kernel, or ``None`` when the torch path should run.

    ``map_name``: ``softmax`` (always ``None``), ``sparsemax``, ``entmax15``, ``entmax`` (needs ``alpha``) or
    ``pladis`` (needs ``scale`` = λ and ``alpha``). The weights are differentiable; ``support_size`` (int64,
    ``z``'s shape without ``dim``) counts the entmax component's nonzeros.
    """
    if backend == "auto" and not z.is_cuda:
        return None
    a = _map_alpha(map_name, alpha)
    chosen, _ = choose_map_backend(z, map_name, dim=dim, alpha=a, backend=backend)
    if chosen != "triton":
        return None
    from .entmax_rowwise import entmax_rowwise

    e = _kernel_or_torch(lambda: _map_signature(z, a, dim), backend,
                         lambda: entmax_rowwise(z, a, dim, torch_backward_on_failure=backend == "auto"))
    if e is None:
        return None
    support = (e.detach() > 0).sum(dim=dim)
    if map_name != "pladis":
        return e, support
    lam = 2.0 if scale is None else float(scale)
    # torch.softmax of an all −inf row is NaN; the maps' convention is zero weights there. Those rows are softmaxed
    # as zeros and then zeroed, not NaN-filled afterwards: autograd would still carry the NaN into the gradient,
    # and a NaN score must stay NaN.
    zf = z.float()
    live = (zf != float("-inf")).any(dim, keepdim=True)
    s = torch.softmax(torch.where(live, zf, 0.0), dim=dim) * live
    return (s + lam * (e.float() - s)).to(z.dtype), support


def maybe_triton_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, map_name: str = "pladis",
                           attn_mask: torch.Tensor | None = None, score_scale: float | None = None,
                           pladis_scale: float = 2.0, alpha: float = 1.5, backend: str = "auto",
                           return_stats: bool = False, tsallis_alpha: float = 1.5):
    """The fused kernel's output (or ``(out, stats)``), or ``None`` when the torch path should run.

    ``map_name``: ``pladis`` (uses ``pladis_scale`` = λ), or ``sparsemax``/``entmax15``/``entmax`` (λ = 1).
    """
    if backend == "auto" and not q.is_cuda:
        return None  # the common CPU case decides before any string is formatted
    a = _map_alpha(map_name, alpha)
    chosen, _ = choose_attention_backend(q, k, v, attn_mask, map_name=map_name, alpha=a, backend=backend,
                                         stats=return_stats)
    if chosen != "triton":
        return None
    from .cross_attention import fused_pladis_attention

    lam = float(pladis_scale) if map_name == "pladis" else 1.0
    return _kernel_or_torch(lambda: _attention_signature(q, k, v, attn_mask, map_name, a, return_stats), backend,
                            lambda: fused_pladis_attention(q, k, v, pladis_scale=lam, alpha=a, attn_mask=attn_mask,
                                                           score_scale=score_scale, return_stats=return_stats,
                                                           tsallis_alpha=tsallis_alpha))


_FUNCTION_MAPS = {"SoftmaxFunction": "softmax", "EntmaxFunction": "entmax", "PladisFunction": "pladis"}


def maybe_triton_map_for(function_name: str, x: torch.Tensor, args: tuple, backend: str = "auto"):
    """:func:`maybe_triton_map` keyed by the torch path's autograd Function (``EntmaxFunction`` + ``(alpha,)``,
    ``PladisFunction`` + ``(scale, alpha)``, ``SoftmaxFunction``), acting on the last dim of ``x``."""
    check_backend(backend)
    if backend == "torch" or (backend == "auto" and not x.is_cuda):
        return None  # the common CPU case decides before any string is formatted
    kind = _FUNCTION_MAPS.get(function_name)
    if kind is None:
        if backend == "triton":
            raise ValueError(f"backend='triton': no kernel for {function_name}")
        return None
    if kind == "softmax":
        return maybe_triton_map("softmax", x, backend=backend)
    if kind == "entmax":
        return maybe_triton_map("entmax", x, backend=backend, alpha=float(args[0]))
    return maybe_triton_map("pladis", x, backend=backend, scale=float(args[0]), alpha=float(args[1]))


def maybe_triton_attention_named(named, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                                 attn_mask: torch.Tensor | None = None, score_scale: float | None = None,
                                 backend: str = "auto"):
    """:func:`maybe_triton_attention` for a parsed map name (anything with ``kind``, ``alpha``, ``scale``, such
    as :class:`pladis_analysis.attention.NamedMap`), or ``named=None`` for a callable map, which has no kernel."""
    check_backend(backend)
    if backend == "torch" or (backend == "auto" and not q.is_cuda):
        return None
    if named is None:
        if backend == "triton":
            raise ValueError("backend='triton' needs the map given by name ('pladis:2:1.5', 'entmax:1.25', ...); "
                             "a callable map has no kernel")
        logger.debug("callable map -> torch (no kernel for an arbitrary callable)")
        return None
    kind = "entmax" if named.kind == "entmax15" else named.kind
    return maybe_triton_attention(q, k, v, map_name=kind, attn_mask=attn_mask, score_scale=score_scale,
                                  pladis_scale=named.scale if named.scale is not None else 1.0,
                                  alpha=named.alpha if named.alpha is not None else 1.5, backend=backend)
