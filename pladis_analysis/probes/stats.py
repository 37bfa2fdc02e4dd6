"""Per-row statistics of attention weights: what a probe measures at every attention call.

Each function takes weights ``A`` (…, Lk) — softmax, α-entmax or signed PLADIS weights — and returns one number
per row (…). They run on the probe's float32 tensors; :func:`row_stats_reference` is the NumPy float64 twin
the tests compare them with.

Signed weights: PLADIS weights with λ > 1 are negative off the entmax support, where p log p and p^α are
undefined. Entropies are therefore taken of the *magnitude distribution* |A| / ‖A‖₁, which equals A itself for
softmax and entmax (‖A‖₁ = 1) and says how spread PLADIS' weight magnitudes are; ``l1_norm`` and
``negative_mass`` (‖A‖₁ = 1 + 2·negative mass since Σ A = 1) report the sign structure separately.

Masked keys: a key counts as masked where a boolean mask is False or an additive mask is ≤ −1000 (diffusers'
text padding bias is −10000, −inf also counts); ``support_fraction`` divides by the number of unmasked keys.
"""

from __future__ import annotations

import numpy as np
import torch

from ..maps._threshold import MASKED_BIAS_THRESHOLD

# statistics of the weights (per variant)
WEIGHT_STATS = ("entropy", "tsallis_entropy", "support_size", "support_fraction", "max_weight", "bos_mass",
                "l1_norm", "negative_mass")
# statistics of the scores (same for every variant; onehot_fraction uses the variant's α)
GAP_STATS = ("top_gap", "onehot_fraction")
# distance of the variant's output from softmax attention's output on the same q/k/v, and its norm
OUTPUT_STATS = ("out_delta", "out_norm")
BASIC_STATS = WEIGHT_STATS + GAP_STATS


def unmasked_keys(mask: torch.Tensor) -> torch.Tensor:
    """True where a key is not masked: a boolean mask's True, an additive mask's value above
    :data:`MASKED_BIAS_THRESHOLD`."""
    return mask if mask.dtype == torch.bool else mask > MASKED_BIAS_THRESHOLD


def valid_keys(mask: torch.Tensor | None, key_length: int) -> torch.Tensor | int:
    """Number of unmasked keys per row (broadcastable to the rows), or ``key_length`` without a mask."""
    if mask is None:
        return key_length
    return unmasked_keys(mask).sum(-1)


def support_fraction(support: torch.Tensor, mask: torch.Tensor | None, key_length: int) -> torch.Tensor:
    """Support size per row over the row's unmasked keys; 0 on a row with none (an additive mask that masks every
    key leaves uniform weights over all of them, which is no support among unmasked keys)."""
    valid = valid_keys(mask, key_length)
    if isinstance(valid, torch.Tensor):
        return torch.where(valid > 0, support / valid.float().clamp_min(1), 0.0)
    return support / float(valid) if valid > 0 else torch.zeros_like(support)


def masked_scores(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Scores with a boolean mask applied as −inf or an additive mask added (as SDPA does)."""
    if mask is None:
        return scores
    if mask.dtype == torch.bool:
        return scores.masked_fill(~mask, float("-inf"))
    return scores + mask


def gap_scores(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Masked scores (:func:`masked_scores`) with every masked key at −inf, an additive bias ≤
    :data:`MASKED_BIAS_THRESHOLD` included: the gap statistics compare the row's unmasked keys only (a padded
    key's z − 10000 is no runner-up, and a row with one unmasked key has gap +inf, as under a boolean mask)."""
    if mask is None or mask.dtype == torch.bool:
        return scores
    return scores.masked_fill(~unmasked_keys(mask), float("-inf"))


def magnitude_distribution(weights: torch.Tensor) -> torch.Tensor:
    """|A| / ‖A‖₁ along the last dim (A itself for non-negative weights summing to 1); zero rows stay zero."""
    a = weights.abs()
    return a / a.sum(-1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)


def shannon_entropy(weights: torch.Tensor) -> torch.Tensor:
    """−Σ p log p of the magnitude distribution (0 log 0 = 0)."""
    p = magnitude_distribution(weights)
    return -torch.special.xlogy(p, p).sum(-1)


def tsallis_entropy(weights: torch.Tensor, alpha: float) -> torch.Tensor:
    """(1 − Σ p^α) / (α(α − 1)) of the magnitude distribution; α → 1 is the Shannon entropy."""
    p = magnitude_distribution(weights)
    if alpha == 1:
        return -torch.special.xlogy(p, p).sum(-1)
    return (1 - p.pow(alpha).sum(-1)) / (alpha * (alpha - 1))


def top_gap(scores: torch.Tensor) -> torch.Tensor:
    """z_(1) − z_(2): gap between the two largest scores of each row; +inf with fewer than two unmasked (finite)
    keys, none included, as the fused kernel reports it."""
    if scores.shape[-1] < 2:
        return torch.full(scores.shape[:-1], float("inf"), dtype=scores.dtype, device=scores.device)
    top2 = scores.topk(2, dim=-1).values
    return torch.where(torch.isneginf(top2[..., 1]), float("inf"), top2[..., 0] - top2[..., 1])


def onehot_threshold(alpha: float | None) -> float:
    """α-entmax is one-hot iff the top gap is ≥ 1/(α − 1); softmax (α = None) never is (+inf)."""
    return float("inf") if alpha is None else 1.0 / (alpha - 1.0)


def row_stats(weights: torch.Tensor, scores: torch.Tensor | None = None, mask: torch.Tensor | None = None,
              alpha: float | None = None, tsallis_alpha: float = 1.5, names=BASIC_STATS,
              gap: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The requested per-row statistics of ``weights`` (…, Lk) as float32 tensors shaped (…).

    ``scores`` (masked, with the row's scaling; keys masked by ``mask`` are left out of the gap) are needed for
    the gap statistics unless ``gap`` is given;
    ``alpha`` is the variant's entmax α (``None`` for softmax) and sets the one-hot threshold.
    """
    w = weights.float()
    out: dict[str, torch.Tensor] = {}
    names = set(names)
    if "entropy" in names:
        out["entropy"] = shannon_entropy(w)
    if "tsallis_entropy" in names:
        out["tsallis_entropy"] = tsallis_entropy(w, tsallis_alpha)
    if "support_size" in names or "support_fraction" in names:
        support = (w != 0).sum(-1).float()
        if "support_size" in names:
            out["support_size"] = support
        if "support_fraction" in names:
            out["support_fraction"] = support_fraction(support, mask, w.shape[-1])
    if "max_weight" in names:
        out["max_weight"] = w.amax(-1)
    if "bos_mass" in names:
        out["bos_mass"] = w[..., 0]
    if "l1_norm" in names:
        out["l1_norm"] = w.abs().sum(-1)
    if "negative_mass" in names:
        out["negative_mass"] = (-w).clamp_min(0).sum(-1)
    if names & set(GAP_STATS):
        if gap is None:
            if scores is None:
                raise ValueError("scores=None: the gap statistics need the scores (or gap=)")
            gap = top_gap(gap_scores(scores.float(), mask))
        if "top_gap" in names:
            out["top_gap"] = gap
        if "onehot_fraction" in names:
            out["onehot_fraction"] = (gap >= onehot_threshold(alpha)).float()
    return out


def row_stats_reference(weights, scores=None, valid=None, alpha=None, tsallis_alpha: float = 1.5) -> dict:
    """NumPy float64 twin of :func:`row_stats` (all statistics), written to be read."""
    w = np.asarray(weights, dtype=np.float64)
    n_keys = w.shape[-1]
    a = np.abs(w)
    total = a.sum(-1, keepdims=True)
    p = np.divide(a, total, out=np.zeros_like(a), where=total > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    entropy = -plogp.sum(-1)
    out = {
        "entropy": entropy,
        # order 1 is the Shannon entropy (the limit), as in tsallis_entropy
        "tsallis_entropy": entropy if tsallis_alpha == 1 else
        (1 - (p ** tsallis_alpha).sum(-1)) / (tsallis_alpha * (tsallis_alpha - 1)),
        "support_size": (w != 0).sum(-1).astype(np.float64),
        "max_weight": w.max(-1),
        "bos_mass": w[..., 0],
        "l1_norm": a.sum(-1),
        "negative_mass": np.where(w < 0, -w, 0.0).sum(-1),
    }
    valid = n_keys if valid is None else np.asarray(valid, dtype=np.float64)
    out["support_fraction"] = np.where(valid > 0, out["support_size"] / np.maximum(valid, 1), 0.0)
    if scores is not None:
        z = np.sort(np.asarray(scores, dtype=np.float64), axis=-1)
        with np.errstate(invalid="ignore"):  # −inf − (−inf) on a row without keys: +inf below, as in top_gap
            gap = z[..., -1] - z[..., -2] if n_keys > 1 else np.full(z.shape[:-1], np.inf)
        if n_keys > 1:
            gap = np.where(np.isneginf(z[..., -2]), np.inf, gap)
        out["top_gap"] = gap
        out["onehot_fraction"] = (gap >= onehot_threshold(alpha)).astype(np.float64)
    return out
