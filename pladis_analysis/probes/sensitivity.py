"""How much an attention output moves when its inputs move: finite perturbations and Jacobian norms.

For one head and one query row, out(q) = ρ(s·K q) V with ρ the attention map (softmax, α-entmax, PLADIS) and s
the score scale. Three measurements:

* query sensitivity ‖out(q + δ) − out(q)‖ / ‖δ‖, δ Gaussian with ‖δ‖ = ε‖q‖ per row (relative size ε);
* text sensitivity ‖out(K', V') − out(K, V)‖ / ‖δ‖, where the text context c (B, Lk, C) entering ``to_k``/``to_v``
  moves by δ with ‖δ‖_F = ε‖c‖_F per batch item (so keys *and* values move, as a perturbed prompt embedding
  would move them), on the tokens the mask lets some query attend (norms over those tokens too);
* the local Lipschitz constant of q ↦ out(q): the spectral norm of J = s Vᵀ J_ρ(z) K, estimated by power
  iteration on JᵀJ with exact Jacobian-vector products. The map Jacobians are closed forms
  (:func:`map_jvp`): J_ρ = diag(σ) − σσᵀ/Σσ with σ = p for softmax and σ = p^{2−α} on the support for α-entmax
  (both symmetric, so JVP = VJP), and J_λ = (1 − λ) J_S + λ J_E for PLADIS. After ``iterations`` steps
  ‖J u‖ (‖u‖ = 1) is a lower bound that converges to ‖J‖₂ from below.

As ε → 0 the query sensitivity tends to ‖J δ̂‖ ≤ ‖J‖₂; large ε shows the non-local behaviour (support changes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..maps.functions import entmax_jvp_at, softmax_vjp


@dataclass(frozen=True)
class SensitivityConfig:
    """What the sensitivity probe measures.

    Args:
        eps: relative perturbation sizes.
        targets: ``"query"`` and/or ``"text"`` finite perturbations.
        lipschitz: also estimate the local Lipschitz constant w.r.t. queries.
        iterations: power-iteration steps.
        max_rows: query positions sampled per call (the same positions for every batch item and head); the
            statistics are means over them, so subsampling keeps the cost bounded without bias.
        seed: seeds the perturbations and the row sample (one generator per recorder, so runs repeat).
    """

    eps: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
    targets: tuple[str, ...] = ("query", "text")
    lipschitz: bool = True
    iterations: int = 8
    max_rows: int = 64
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "eps", tuple(float(e) for e in self.eps))
        object.__setattr__(self, "targets", tuple(self.targets))
        if any(not (e > 0 and math.isfinite(e)) for e in self.eps):
            raise ValueError(f"eps={self.eps!r}: relative sizes must be finite and > 0")
        bad = [t for t in self.targets if t not in ("query", "text")]
        if bad:
            raise ValueError(f"targets={self.targets!r}: expected 'query' and/or 'text'")
        if self.iterations < 1:
            raise ValueError(f"iterations={self.iterations!r}: need at least 1")
        if self.max_rows < 1:
            raise ValueError(f"max_rows={self.max_rows!r}: need at least 1")

    def stat_names(self) -> tuple[str, ...]:
        names = [f"sens_{target}_{eps:g}" for target in self.targets for eps in self.eps]
        if self.lipschitz:
            names += ["lipschitz", "lipschitz_max"]
        return tuple(names)

    def to_dict(self) -> dict:
        return {"eps": list(self.eps), "targets": list(self.targets), "lipschitz": self.lipschitz,
                "iterations": self.iterations, "max_rows": self.max_rows, "seed": self.seed}


def map_jvp(weights_parts: dict, dz: torch.Tensor) -> torch.Tensor:
    """J_ρ(z) · dz along the last dim, from the weights of the map's components.

    ``weights_parts``: ``{"softmax": S}`` for softmax, ``{"entmax": E, "alpha": α}`` for α-entmax,
    ``{"softmax": S, "entmax": E, "alpha": α, "scale": λ}`` for PLADIS.
    """
    def softmax_jvp(p):
        return softmax_vjp((p,), dz)  # the Jacobians are symmetric: JVP = VJP

    def entmax_jvp(p, alpha):
        return entmax_jvp_at(p, alpha, dz)

    if "scale" in weights_parts:
        lam = weights_parts["scale"]
        return (1 - lam) * softmax_jvp(weights_parts["softmax"]) + lam * entmax_jvp(weights_parts["entmax"],
                                                                                    weights_parts["alpha"])
    if "entmax" in weights_parts:
        return entmax_jvp(weights_parts["entmax"], weights_parts["alpha"])
    return softmax_jvp(weights_parts["softmax"])


def lipschitz_power_iteration(parts: dict, key: torch.Tensor, value: torch.Tensor, scale: float,
                              iterations: int = 8, generator: torch.Generator | None = None) -> torch.Tensor:
    """Estimate ‖∂out/∂q‖₂ per row. ``parts`` hold weights (…, R, Lk) at the rows; ``key`` (…, Lk, d),
    ``value`` (…, Lk, dv). Returns (…, R), a lower bound converging to the spectral norm."""
    shape = parts.get("softmax", parts.get("entmax")).shape[:-1] + (key.shape[-1],)
    # the generator lives on the CPU so that runs repeat on any device
    u = torch.randn(shape, generator=generator, dtype=key.dtype).to(key.device)
    u = u / u.norm(dim=-1, keepdim=True).clamp_min(1e-30)

    def jac(u):  # (…, R, d) -> (…, R, dv): s Vᵀ J_ρ K u, per row
        return scale * map_jvp(parts, u @ key.transpose(-1, -2)) @ value

    def jac_t(w):  # (…, R, dv) -> (…, R, d): s Kᵀ J_ρ V w (J_ρ symmetric)
        return scale * map_jvp(parts, w @ value.transpose(-1, -2)) @ key

    for _ in range(iterations):
        u = jac_t(jac(u))
        u = u / u.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    return jac(u).norm(dim=-1)


def relative_perturbation(x: torch.Tensor, eps: float, dims: tuple[int, ...],
                          generator: torch.Generator | None = None, keep: torch.Tensor | None = None
                          ) -> torch.Tensor:
    """Gaussian δ with ‖δ‖ = eps·‖x‖ over ``dims`` (e.g. per row: (-1,); per item: (-2, -1)).

    ``keep`` (0/1, broadcastable to ``x``): δ lives on the kept entries only, sized relative to x's norm there
    (text padding that no query attends is neither moved nor counted: moving it would move nothing, its share of
    δ would dilute the ratio, and its norm would size the other tokens' move)."""
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    if keep is not None:
        noise, x = noise * keep, x * keep
    noise = noise / noise.norm(dim=dims, keepdim=True).clamp_min(1e-30)
    return eps * x.norm(dim=dims, keepdim=True) * noise

