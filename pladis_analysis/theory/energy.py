"""The energy whose concave–convex step is the PLADIS-weighted Hopfield update (NumPy float64).

With patterns X (``(D, N)``), z = βXᵀx and a convex Φ, the update x ← X ∇Φ(z) is the concave–convex step of

    E(x) = ½‖x‖² − Φ(βXᵀx)/β,

and decreases E at every step (Yuille & Rangarajan 2003; Ramsauer et al. 2020 for Φ = log-sum-exp, Hu et al. 2023
for the α-entmax conjugate). PLADIS weights A = (1−λ) softmax + λ α-entmax are ∇Φ_λ of

    Φ_λ = (1−λ) lse + λ Ψ*_α,    Ψ*_α(z) = max_{p∈Δ} ⟨p, z⟩ + H^T_α(p) = ⟨p*, z⟩ + H^T_α(p*),  p* = α-entmax(z),

(Danskin: the gradient of a max of affine functions of z is the maximiser). For λ ∈ [0, 1] Φ_λ is a convex
combination of convex functions, so the update decreases E_λ: a bound, and asserted as one. For λ > 1 the
coefficient of lse is negative, Φ_λ need not be convex, and nothing guarantees descent: THEORY.md's "rare
increases", measured by ``experiments/hopfield_energy.py``.

Energy descent, for λ ∈ [0, 1]: write F(x) = Φ(βXᵀx)/β (convex, ∇F(x) = XA) and x⁺ = XA. Convexity gives
F(x⁺) ≥ F(x) + ⟨x⁺, x⁺ − x⟩, so E(x⁺) ≤ ½‖x⁺‖² − F(x) − ‖x⁺‖² + ⟨x⁺, x⟩ ≤ ½‖x‖² − F(x) = E(x).
"""

from __future__ import annotations

import numpy as np

from ..maps import reference as ref
from .hopfield import _check_beta, _check_patterns

__all__ = ["entmax_conjugate", "pladis_energy", "pladis_step"]


def entmax_conjugate(z, alpha: float, axis: int = -1) -> np.ndarray:
    """Ψ*_α(z) = max_{p∈Δ} ⟨p, z⟩ + H^T_α(p) along ``axis`` (α ≥ 1; α = 1: log-sum-exp). Its gradient is α-entmax(z).

    Computed at the maximiser, ⟨p*, z − max z⟩ + H^T_α(p*) + max z, so that large scores do not round away the
    entropy term; H^T_α(p*) as −Σ p·expm1((α−1) ln p)/(α(α−1)) (equal to (1 − Σ p^α)/(α(α−1)) since Σ p = 1),
    whose 1 − Σ p^α would cancel to rounding/(α − 1) next to α = 1.
    """
    a = float(alpha)
    z = np.moveaxis(np.asarray(z, dtype=np.float64), axis, -1)
    if not np.all(np.isfinite(z)):
        raise ValueError("z must be finite (masked scores have no conjugate here)")
    top = z.max(axis=-1, keepdims=True)
    shifted = z - top
    if a == 1.0:
        return np.log(np.exp(shifted).sum(axis=-1)) + top[..., 0]
    p = ref.entmax(shifted, a)  # validates α
    log_p = np.log(np.where(p > 0, p, 1.0))                    # 0 off the support, where p·expm1(·) is 0 anyway
    tsallis = -(p * np.expm1((a - 1.0) * log_p)).sum(axis=-1) / (a * (a - 1.0))
    return (p * shifted).sum(axis=-1) + tsallis + top[..., 0]


def pladis_energy(patterns, query, beta: float, alpha: float = 1.5, scale: float = 2.0) -> float:
    """E_λ(x) = ½‖x‖² − [(1−λ) lse(z) + λ Ψ*_α(z)]/β, z = βXᵀx: the energy of :func:`pladis_step`.

    λ = ``scale`` = 0 is the modern Hopfield energy of softmax retrieval, λ = 1 that of α-entmax retrieval.
    """
    X, x = _check_patterns(patterns, query)
    b, lam = _check_beta(beta), ref._check_pladis_scale(scale)
    ref._check_alpha(alpha)  # α > 1, as pladis_step's weights need (α = 1 would be an energy without a step)
    z = b * (X.T @ x)  # (N,)
    phi = (1.0 - lam) * entmax_conjugate(z, 1.0) + lam * entmax_conjugate(z, alpha)
    return float(0.5 * x @ x - phi / b)


def pladis_step(patterns, query, beta: float, alpha: float = 1.5, scale: float = 2.0) -> np.ndarray:
    """One update x ← X A(βXᵀx), A the PLADIS weights (1−λ) softmax + λ α-entmax."""
    X, x = _check_patterns(patterns, query)
    b, lam = _check_beta(beta), ref._check_pladis_scale(scale)
    return X @ ref.pladis_weights(b * (X.T @ x), lam, alpha)
