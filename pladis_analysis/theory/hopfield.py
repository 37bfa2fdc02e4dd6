"""One step of modern-Hopfield retrieval, T_ρ(x) = X ρ(β Xᵀ x), and its error bounds (NumPy float64).

Patterns ξ_1..ξ_N are the columns of X (shape ``(D, N)``), x is a query (shape ``(D,)``), β the inverse
temperature and ρ a map from :mod:`pladis_analysis.maps.reference`: softmax (dense, Ramsauer et al. 2020),
α-entmax (sparse, Hu et al. 2023; Wu et al. 2024) or the PLADIS blend A = S + λ(E − S).

Notation (THEORY.md): z = βXᵀx, μ = argmax z, Δ̃ = z_μ − max_{ν≠μ} z_ν (the gap at the query),
D_μ = max_ν ‖ξ_ν − ξ_μ‖. Both bounds follow from T(x) − ξ_μ = Σ_{ν≠μ} p_ν (ξ_ν − ξ_μ):

* softmax: p_ν ≤ p_ν/p_μ = e^{z_ν − z_μ} ≤ e^{−Δ̃}, so ‖T_S(x) − ξ_μ‖ ≤ D_μ (N−1) e^{−Δ̃};
* α-entmax: τ ≥ (α−1) z_μ − 1 (lower end of the threshold bracket), so
  p_ν = [(α−1) z_ν − τ]_+^{1/(α−1)} ≤ [1 − (α−1) Δ̃]_+^{1/(α−1)}, hence
  ‖T_α(x) − ξ_μ‖ ≤ D_μ (N−1) [1 − (α−1) Δ̃]_+^{1/(α−1)}.

They are upper bounds on every trial (status "bound"); that sparse retrieval beats dense retrieval
pointwise is *not* a theorem (it fails with unequal pattern norms) and is measured, not asserted, by
``experiments/hopfield_retrieval.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..maps import reference as ref

__all__ = [
    "RetrievalGeometry",
    "retrieval_geometry",
    "retrieve",
    "dense_retrieval_bound",
    "entmax_retrieval_bound",
    "is_entmax_fixed_point",
    "map_by_name",
    "PATTERN_FAMILIES",
    "sample_patterns",
]


def _check_patterns(patterns, query=None) -> tuple[np.ndarray, np.ndarray | None]:
    X = np.asarray(patterns, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] < 2:
        raise ValueError(f"patterns must be a (D, N) array with N >= 2 patterns as columns, got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError("patterns contain NaN or inf")
    if query is None:
        return X, None
    x = np.asarray(query, dtype=np.float64)
    if x.shape != (X.shape[0],):
        raise ValueError(f"query must have shape ({X.shape[0]},) to match patterns {X.shape}, got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("query contains NaN or inf")
    return X, x


def _check_beta(beta) -> float:
    b = float(beta)
    if not np.isfinite(b) or b <= 0:
        raise ValueError(f"beta must be a finite number > 0, got beta={beta!r}")
    return b


PATTERN_FAMILIES = ("equal_norm", "unequal_norm")


def sample_patterns(family: str, dim: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """(dim, n) random patterns on the unit sphere; ``unequal_norm`` rescales them by factors in [1/√10, √10]
    (the family where sparse retrieval can lose to dense: a larger-norm pattern captures the argmax)."""
    if family not in PATTERN_FAMILIES:
        raise ValueError(f"family must be one of {PATTERN_FAMILIES}, got family={family!r}")
    X = rng.standard_normal((dim, n))
    X /= np.linalg.norm(X, axis=0)
    if family == "unequal_norm":
        X *= 10.0 ** rng.uniform(-0.5, 0.5, size=n)
    return X


def map_by_name(name: str, scale: float = 2.0) -> Callable[[np.ndarray], np.ndarray]:
    """``"softmax"``, ``"entmax:<alpha>"`` or ``"pladis:<alpha>"`` (with PLADIS scale ``scale``) as z → p."""
    if name == "softmax":
        return ref.softmax
    kind, _, alpha = name.partition(":")
    if kind == "entmax" and alpha:
        return lambda z: ref.entmax(z, float(alpha))
    if kind == "pladis" and alpha:
        return lambda z: ref.pladis_weights(z, scale, float(alpha))
    raise ValueError(f"map name {name!r} is not one of 'softmax', 'entmax:<alpha>', 'pladis:<alpha>'")


@dataclass(frozen=True)
class RetrievalGeometry:
    """What the bounds depend on: the scores z, the winner μ, its gap Δ̃ and its spread D_μ."""

    scores: np.ndarray  # (N,)  z = β Xᵀ x
    winner: int  # μ = argmax z
    gap: float  # Δ̃ = z_μ − max_{ν≠μ} z_ν  (≥ 0)
    spread: float  # D_μ = max_ν ‖ξ_ν − ξ_μ‖
    num_patterns: int  # N


def retrieval_geometry(patterns, query, beta: float) -> RetrievalGeometry:
    X, x = _check_patterns(patterns, query)
    z = _check_beta(beta) * (X.T @ x)  # (N,)
    mu = int(np.argmax(z))
    others = np.delete(z, mu)
    spread = float(np.max(np.linalg.norm(X - X[:, [mu]], axis=0)))
    return RetrievalGeometry(z, mu, float(z[mu] - others.max()), spread, X.shape[1])


def retrieve(patterns, query, beta: float, weights: Callable[[np.ndarray], np.ndarray] | str = "softmax") -> np.ndarray:
    """One retrieval step T(x) = X ρ(β Xᵀ x); ``weights`` is a map z → p or a name for :func:`map_by_name`."""
    X, x = _check_patterns(patterns, query)
    rho = map_by_name(weights) if isinstance(weights, str) else weights
    return X @ rho(_check_beta(beta) * (X.T @ x))


def dense_retrieval_bound(patterns, query, beta: float) -> float:
    """D_μ (N−1) e^{−Δ̃}: a bound on ‖T_softmax(x) − ξ_μ‖ (Ramsauer et al. 2020, with z already scaled by β)."""
    g = retrieval_geometry(patterns, query, beta)
    return g.spread * (g.num_patterns - 1) * float(np.exp(-g.gap))


def entmax_retrieval_bound(patterns, query, beta: float, alpha: float) -> float:
    """D_μ (N−1) [1 − (α−1)Δ̃]_+^{1/(α−1)}: a bound on ‖T_α(x) − ξ_μ‖ for α ∈ (1, 2] (Hu et al. 2023).

    It tends to the dense bound as α → 1, since (1 − (α−1)Δ̃)^{1/(α−1)} → e^{−Δ̃}, and is exactly 0 once
    the gap reaches 1/(α−1) (one-hot weights, exact retrieval).
    """
    a = float(alpha)
    if not np.isfinite(a) or not 1.0 < a <= 2.0:
        raise ValueError(f"alpha must lie in (1, 2] for this bound, got alpha={alpha!r}")
    g = retrieval_geometry(patterns, query, beta)
    base = max(1.0 - (a - 1.0) * g.gap, 0.0)
    return g.spread * (g.num_patterns - 1) * base ** (1.0 / (a - 1.0))


def is_entmax_fixed_point(patterns, index: int, beta: float, alpha: float) -> bool:
    """Whether the α-entmax update maps ξ_μ to itself with one-hot weights:
    β·(ξ_μᵀξ_μ − max_{ν≠μ} ξ_νᵀξ_μ) ≥ 1/(α−1)."""
    X, _ = _check_patterns(patterns)
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < X.shape[1]:
        raise ValueError(f"index must be an integer in [0, {X.shape[1]}), got index={index!r}")
    a = float(alpha)
    if not np.isfinite(a) or a <= 1.0:
        raise ValueError(f"alpha must be a finite number > 1, got alpha={alpha!r}")
    inner = X.T @ X[:, index]  # (N,)
    margin = inner[index] - np.delete(inner, index).max()
    return bool(_check_beta(beta) * margin >= 1.0 / (a - 1.0))
