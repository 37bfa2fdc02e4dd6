"""Telling a kernel that cannot be built here from a kernel that was given bad input.

A Triton kernel is compiled on its first launch for each compile-time signature, for the GPU at hand and with
the installed Triton. Both vary on users' machines: the kernels here are tested on sm_90 with one Triton, and
``results/kernel_builds.csv`` records which architectures they compile for offline, but a consumer GPU's
shared memory, an older Triton's lowering or a launcher whose conventions changed can still make a launch
fail. Such a failure says nothing about the caller's tensors, and ``backend="auto"`` should answer it by
taking the torch path (see :mod:`.dispatch`), not by stopping a sampling run with a traceback from deep
inside Triton.

:func:`launching` wraps one launch and turns such a failure into :class:`KernelBuildError`:

* any of Triton's own errors (compilation, out of resources, ptxas), on any launch: a new integer
  specialisation (an odd stride, a length divisible by 16) compiles a new variant at any time;
* any other exception on the first launch of a signature, when Triton compiles and first drives the launcher
  (compiler passes fail with plain ``RuntimeError``); later launches of a signature that ran once re-raise what
  they get, since the kernel evidently builds;
* never a CUDA out-of-memory error, which is about the tensors, not the kernel.

Argument checks happen before the launch, outside :func:`launching`, so they keep their ``ValueError``.
"""

from __future__ import annotations

import contextlib

import torch


class KernelBuildError(RuntimeError):
    """A Triton kernel could not be compiled or launched for this signature on this device (the cause is
    chained). ``backend="auto"`` falls back to the torch path on it; ``backend="triton"`` raises it."""


@contextlib.contextmanager
def launching(kernel: str, signature: tuple, device: torch.device):
    """Run one launch of ``kernel`` (a name for messages) for the compile-time ``signature`` (hashable) on
    ``device``; a failure that is the build's, not the input's, is re-raised as :class:`KernelBuildError`."""
    key = (kernel, str(device), signature)
    try:
        yield
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as exc:
        if not (isinstance(exc, _triton_errors()) or key not in _LAUNCHED):
            raise
        raise KernelBuildError(f"the Triton {kernel} kernel failed to build or launch on {_describe(device)} "
                               f"with Triton {_triton_version()}: {type(exc).__name__}: {exc}") from exc
    _LAUNCHED.add(key)


_LAUNCHED: set[tuple] = set()   # (kernel, device, signature) that launched once in this process


def _triton_errors() -> tuple[type, ...]:
    try:
        from triton.errors import TritonError  # the base of all of its errors, where Triton has one
        return (TritonError,)
    except ImportError:
        from triton.compiler.errors import CompilationError
        from triton.runtime.errors import OutOfResources
        return (CompilationError, OutOfResources)


def _triton_version() -> str:
    import triton

    return getattr(triton, "__version__", "?")


def _describe(device: torch.device) -> str:
    if device.type != "cuda":
        return f"{device} (interpreter)"
    major, minor = torch.cuda.get_device_capability(device)
    return f"{torch.cuda.get_device_name(device)} (sm_{major}{minor})"
