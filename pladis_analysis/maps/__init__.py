"""Attention maps z ↦ p on the probability simplex: softmax, sparsemax, α-entmax and PLADIS weights.

This is the fast torch path (CPU and CUDA; float64, float32, float16 and bfloat16 inputs, computed in
float32 or better inside, returned in the input dtype), differentiable through hand-written
closed-form Jacobian-vector products. Its slow, obviously correct twin is the NumPy float64 module
:mod:`pladis_analysis.maps.reference`; the tests compare the two at the tolerances of
:data:`pladis_analysis.testing.TOLERANCES`.

All maps are regularised argmax problems over the simplex Δ = {p ≥ 0, Σp = 1}:

    ρ_Ω(z) = argmax_{p ∈ Δ} ⟨p, z⟩ − Ω(p)

softmax: Ω = negative Shannon entropy; α-entmax: Ω = −H^T_α, the Tsallis entropy
H^T_α(p) = (1 − Σ p_i^α)/(α(α − 1)) (Peters, Niculae & Martins 2019; Blondel et al. 2020); α = 2 is
sparsemax, the Euclidean projection onto Δ (Martins & Astudillo 2016). PLADIS (Kim & Sim 2025)
extrapolates A = S + λ(E − S) from softmax S towards entmax E.

Under ``torch.compile`` each map is one custom operator with a backward (:mod:`.operators`).

Masking: scores of −inf get weight exactly 0; a row of only −inf gives all zeros (never NaN). NaN or
+inf scores raise ValueError. With ``return_support=True`` each function returns ``(p, support_size)``,
an int64 tensor shaped like ``z`` without ``dim``.
"""

from __future__ import annotations

import torch

from . import _threshold as _th
from . import operators as _operators
from .functions import EntmaxFunction, PladisFunction, SoftmaxFunction
from .kernels import dispatch as _dispatch

__all__ = ["softmax", "sparsemax", "entmax15", "entmax", "pladis_weights",
           "SoftmaxFunction", "EntmaxFunction", "PladisFunction"]


def _on_last_dim(function: str, z: torch.Tensor, dim: int, return_support: bool, *args, backend: str = "auto"):
    """Run the autograd Function named ``function`` over ``dim`` (moved last and back); empty rows give empty
    outputs. (A name, not the class: torch.compile traces a string as a constant.)"""
    dim = _th.check_scores(z, dim)
    last = z.dim() - 1
    x = z if dim == last else z.movedim(dim, -1)
    if x.numel() == 0:  # no rows, or rows of no entries: nothing to solve (the solvers' chunking needs a row)
        p, support = x.clone(), torch.zeros(x.shape[:-1], dtype=torch.int64, device=z.device)
    elif torch.compiler.is_compiling() and not return_support:
        # one opaque node for torch.compile, with a backward (see .operators); the support is not among its outputs
        p = torch.ops.pladis_analysis.map(x, function, *_operators.scalar_slots(function, args), backend)
        support = None
    else:
        # backend: "auto" (the row-wise Triton kernel on CUDA where it fits), "triton" or "torch"; see
        # pladis_analysis.maps.kernels.dispatch. CPU tensors take the torch path under "auto".
        fast = _dispatch.maybe_triton_map_for(function, x, args, backend)
        if fast is None:
            fast = _operators.autograd_function(function).apply(x, *args, bool(return_support))
        p, support = fast
    return (p if dim == last else p.movedim(-1, dim)), support


def softmax(z: torch.Tensor, dim: int = -1, return_support: bool = False, backend: str = "auto"):
    """softmax(z)_i = exp(z_i) / Σ_j exp(z_j) along ``dim``.

    Solves argmax_{p∈Δ} ⟨p, z⟩ + H(p) with H the Shannon entropy. Dense: every finite score gets positive
    weight (``support_size`` counts the finite scores). Backward: J = diag(p) − p pᵀ.
    """
    p, support = _on_last_dim("SoftmaxFunction", z, dim, return_support, backend=backend)
    return (p, support) if return_support else p


def sparsemax(z: torch.Tensor, dim: int = -1, return_support: bool = False, backend: str = "auto"):
    """sparsemax(z) = argmin_{p∈Δ} ‖p − z‖² along ``dim`` (Martins & Astudillo 2016), i.e. 2-entmax.

    p_i = [z_i − τ]_+ with τ exact: found by Michelot's fixed point (Newton from below, finitely many
    steps) and, once the support S is fixed, τ = (Σ_S z − 1)/|S|. Backward: J = diag(s) − s sᵀ/|S|,
    s the support indicator.
    """
    p, support = _on_last_dim("EntmaxFunction", z, dim, return_support, 2.0, backend=backend)
    return (p, support) if return_support else p


def entmax15(z: torch.Tensor, dim: int = -1, return_support: bool = False, backend: str = "auto"):
    """1.5-entmax along ``dim`` (Peters, Niculae & Martins 2019): argmax_{p∈Δ} ⟨p, z⟩ + H^T_{1.5}(p).

    p_i = [z_i/2 − τ]_+² with τ exact: Newton locates the support, then τ solves the quadratic
    Σ_S (z_i/2 − τ)² = 1 in closed form. Backward: J = diag(s) − s sᵀ/Σs, s = √p.
    """
    p, support = _on_last_dim("EntmaxFunction", z, dim, return_support, 1.5, backend=backend)
    return (p, support) if return_support else p


def entmax(z: torch.Tensor, alpha: float, dim: int = -1, return_support: bool = False, backend: str = "auto"):
    """α-entmax along ``dim``: argmax_{p∈Δ} ⟨p, z⟩ + H^T_α(p), H^T_α(p) = (1 − Σ p_i^α)/(α(α − 1)).

    Peters, Niculae & Martins (2019); Blondel, Martins & Niculae (2020). For α > 1 the solution is
    p_i = [(α − 1) z_i − τ]_+^{1/(α−1)}; α = 2 and α = 1.5 use the exact paths of :func:`sparsemax` and
    :func:`entmax15`, other α a safeguarded Newton–bisection search for τ in [max z' − 1, max z' − d^{1−α}]
    (z' = (α − 1) z) followed by renormalisation, with ‖p − p*‖₁ ≤ 2ε, ε = 2⁻²¹ in float32 and 2⁻⁴¹ in
    float64 (derivation in :mod:`pladis_analysis.maps._threshold`). α above 6 (``FLOAT32_MAX_ALPHA``) is
    computed in float64 whatever the input dtype: there a float32 search loses weights of entries tied just
    under the one-hot gap. So is α below 1.01 (``FLOAT32_MIN_ALPHA``), where it loses the scores' differences.
    α → 1 tends to softmax.
    Backward: J = diag(s) − s sᵀ/Σs, s = p^{2−α} on the support.

    Raises ValueError for α ≤ 1 or non-finite α.
    """
    alpha = _th.check_alpha(alpha)
    p, support = _on_last_dim("EntmaxFunction", z, dim, return_support, alpha, backend=backend)
    return (p, support) if return_support else p


def pladis_weights(z: torch.Tensor, scale: float = 2.0, alpha: float = 1.5, dim: int = -1,
                   return_support: bool = False, backend: str = "auto"):
    """PLADIS weights A = S + λ(E − S) = (1 − λ) softmax(z) + λ α-entmax(z) along ``dim``, λ = ``scale``.

    Kim & Sim (2025). Σ A = 1; λ = 0 gives softmax bit for bit, λ = 1 α-entmax, λ > 1 extrapolates and
    makes the weights off the entmax support negative ((1 − λ) S_i). ``support_size`` is the support of
    the entmax component. Backward: J_λ = (1 − λ) J_S + λ J_E.

    Raises ValueError for a non-finite ``scale``, or α ≤ 1 / non-finite α.
    """
    scale = _th.check_scale(scale)
    alpha = _th.check_alpha(alpha)
    p, support = _on_last_dim("PladisFunction", z, dim, return_support, scale, alpha, backend=backend)
    return (p, support) if return_support else p
