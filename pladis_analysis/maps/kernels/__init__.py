"""Triton kernels for the maps: row-wise α-entmax and fused PLADIS cross-attention.

* :mod:`.entmax_rowwise` — α-entmax for any α > 1 with the whole row in registers (forward: Newton on the
  q-norm for α ≤ 2, exact for sparsemax, safeguarded Halley for α > 2; backward: closed-form JVP).
* :mod:`.cross_attention` — scores → softmax and α-entmax → A = S + λ(E − S) → A·V in one pass, with
  optional per-row statistics for the probes; keys as a power-of-two head block plus a small tail block.
* :mod:`.dispatch` — ``backend="auto" | "triton" | "torch"`` and the stated reason for every fallback.
* :mod:`.build_failures` — a kernel that does not build on this GPU or Triton raises
  :class:`KernelBuildError`, on which ``"auto"`` takes the torch path instead.
* :mod:`.offline` — compile a kernel for sm_90 on any machine and read its registers, spills, shared memory,
  occupancy and SASS counts (``experiments/kernel_resources.py``).

Importing this package does not import Triton; the kernel modules are imported on first use. Kernels run on
CUDA, or on CPU tensors under the Triton interpreter (``TRITON_INTERPRET=1`` set before first import).
"""

from .build_failures import KernelBuildError
from .dispatch import (BACKENDS, check_backend, choose_attention_backend, choose_map_backend,
                       maybe_triton_attention, maybe_triton_map, triton_import_error)

__all__ = ["BACKENDS", "KernelBuildError", "check_backend", "choose_attention_backend", "choose_map_backend",
           "maybe_triton_attention", "maybe_triton_map", "triton_import_error",
           "triton_entmax", "fused_pladis_attention", "STAT_NAMES"]


def __getattr__(name: str):
    # Lazy: the kernel modules import Triton, which is optional.
    # (The row-wise function is exported as ``triton_entmax``: the name ``entmax_rowwise`` is its module.)
    if name == "triton_entmax":
        from .entmax_rowwise import entmax_rowwise
        return entmax_rowwise
    if name in ("fused_pladis_attention", "STAT_NAMES"):
        from . import cross_attention
        return getattr(cross_attention, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
