"""NumPy float64 reference for the attention maps: slow, obvious, and the ground truth of every test.

Every map here solves a regularised linear problem over the probability simplex Δ = {p ≥ 0, Σp = 1}:

    map(z) = argmax_{p ∈ Δ}  ⟨p, z⟩ + H(p)

with H the Shannon entropy (softmax) or the Tsallis entropy H^T_α (α-entmax; sparsemax is α = 2).
The α-entmax solution has the closed form ``p_i = [(α−1) z_i − τ]_+^{1/(α−1)}`` with the threshold τ
chosen so that Σp = 1. Throughout this module, "scaled space" means z' = (α−1) z, where that formula
reads ``p = [z' − τ]_+^{1/(α−1)}`` and τ lies in the bracket ``[max z' − 1, max z' − d^{1−α}]``.

Conventions shared by every function:

* ``axis`` (default −1) names the axis the map acts on; every other axis is a batch axis.
* ``-inf`` scores are allowed and mean "masked": their weight is exactly 0. A row whose scores are all
  ``-inf`` has no admissible distribution; by convention its weights are all zero, its threshold is
  ``-inf`` and its support size 0 (callers that mask whole rows, e.g. padded queries, get zeros, not NaN).
* NaN or ``+inf`` scores, α ≤ 1 or non-finite α, and negative or non-finite PLADIS scales raise
  ``ValueError`` naming the argument and its value.

The algorithms are the textbook ones, written to be read, not to be fast: the torch path in
:mod:`pladis_analysis.maps` and the Triton kernels are tested against them.

References:
    Martins & Astudillo (2016), "From Softmax to Sparsemax", ICML.
    Peters, Niculae & Martins (2019), "Sparse Sequence-to-Sequence Models", ACL.
    Blondel, Martins & Niculae (2020), "Learning with Fenchel-Young Losses", JMLR.
    Kim & Sim (2025), "PLADIS", arXiv 2503.07677.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "softmax",
    "sparsemax",
    "entmax15",
    "entmax",
    "entmax_threshold",
    "support_size",
    "entmax_jacobian",
    "entmax_jacobian_at",
    "shannon_entropy",
    "tsallis_entropy",
    "pladis_weights",
    "fenchel_young_loss",
    "BISECTION_TOL",
]

#: Guaranteed accuracy of the bisection on τ (scaled, max-shifted space, where the bracket has width < 1):
#: |τ − τ*| ≤ BISECTION_TOL / 2. The loop actually halves until the bracket spans adjacent floats (|τ| ≤ 1,
#: so ≤ 1.1e-16), because for α > 2 a weight is only Hölder in τ (p = t^{1/(α−1)}): an entry with
#: t ≈ 1e-7 loses ~1e-9 of accuracy to a τ error of 1e-12, but only ~1e-13 to one of 1e-16.
BISECTION_TOL = 1e-12
# The loop stops as soon as every bracket spans adjacent floats: ~55 halvings for τ in [-1, -1e-3]. The cap only
# has to let that happen everywhere. The re-centred search (α > 2) starts from a bracket of width 2e-12 around a
# τ_w that can be as small as the t* ≈ (δ/k)^{α−1} of a group tied δ under the one-hot gap: 1e-133 at α = 20,
# δ = 1e-7, whose adjacent floats (spacing ~1e-149) are ~460 halvings away; a cap of 200 left weights up to 1e-5
# off at α = 12. 1100 halvings reach adjacent floats from width 2 anywhere in float64's range, subnormals included.
_BISECTION_MAX_ITER = 1100


# --------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------

def _check_scores(z, name: str = "z") -> np.ndarray:
    """``z`` as a float64 array; NaN and +inf are errors, -inf means masked."""
    z = np.asarray(z, dtype=np.float64)
    if z.ndim == 0:
        raise ValueError(f"{name} must have at least one dimension, got the scalar {float(z)!r}")
    bad = np.isnan(z) | (z == np.inf)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name} must not contain NaN or +inf (-inf is allowed and means masked); "
                         f"found {float(z[index])!r} at index {index}")
    return z


def _check_alpha(alpha, *, allow_softmax: bool = False) -> float:
    """α as a float; α > 1 for entmax (α ≥ 1 where α = 1 is documented to mean softmax)."""
    bound = "alpha >= 1 (1 = softmax)" if allow_softmax else "alpha > 1"
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"alpha must be a finite real number with {bound}, got {alpha!r}") from None
    if not math.isfinite(a) or a < 1.0 or (a == 1.0 and not allow_softmax):
        raise ValueError(f"alpha must be a finite real number with {bound}, got alpha={alpha!r}")
    return a


def _check_pladis_scale(scale) -> float:
    try:
        lam = float(scale)
    except (TypeError, ValueError):
        raise ValueError(f"scale (the PLADIS λ) must be a finite number >= 0, got {scale!r}") from None
    if not math.isfinite(lam) or lam < 0.0:
        raise ValueError(f"scale (the PLADIS λ) must be a finite number >= 0, got scale={scale!r}")
    return lam


def _check_method(method: str) -> str:
    if method not in ("auto", "bisect"):
        raise ValueError(f"method must be 'auto' (exact sort-based paths for alpha 1.5 and 2) or 'bisect', "
                         f"got method={method!r}")
    return method


def _to_last(x: np.ndarray, axis: int, name: str = "z") -> np.ndarray:
    """Move ``axis`` to the end; the map's axis must not be empty."""
    x = np.moveaxis(x, axis, -1)  # raises numpy's AxisError (a ValueError) for a bad axis
    if x.shape[-1] == 0:
        raise ValueError(f"{name} has length 0 along axis={axis}; a map needs at least one entry")
    return x


def _check_distribution(p, name: str) -> np.ndarray:
    """A finite, non-negative float64 array (entropies are not defined for signed weights)."""
    p = np.asarray(p, dtype=np.float64)
    if p.ndim == 0:
        raise ValueError(f"{name} must have at least one dimension, got the scalar {float(p)!r}")
    if not np.isfinite(p).all():
        index = tuple(int(i) for i in np.argwhere(~np.isfinite(p))[0])
        raise ValueError(f"{name} must be finite; found {float(p[index])!r} at index {index}")
    if (p < 0).any():
        index = tuple(int(i) for i in np.argwhere(p < 0)[0])
        raise ValueError(f"{name} must be non-negative (a probability vector); "
                         f"found {float(p[index])!r} at index {index}")
    return p


# --------------------------------------------------------------------------------------------------
# Thresholds, on the last axis, in the scaled and max-shifted space
# --------------------------------------------------------------------------------------------------
# Every algorithm first subtracts the row maximum: the maps are translation invariant, and after the shift
# the entries that can be in the support lie in [-1, 0] (scaled space), so sums over the support are formed
# from O(1) numbers whatever the scale of z. Rows that are all -inf are flagged and handled at the end.

def _scaled_shifted(z: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x = (α−1)(z − max z) on the last axis, the row maxima (keepdims), and a mask of all -inf rows."""
    row_max = z.max(axis=-1, keepdims=True)
    empty = row_max == -np.inf
    x = (alpha - 1.0) * (z - np.where(empty, 0.0, row_max))
    return x, row_max, empty


def _sparsemax_threshold(x: np.ndarray) -> np.ndarray:
    """τ for sparsemax (Martins & Astudillo 2016, Alg. 1) on the last axis of x (max 0, may hold -inf).

    Sort descending, z_(1) ≥ … ≥ z_(d); the support size is k* = max{k : 1 + k z_(k) > Σ_{j≤k} z_(j)} and
    τ = (Σ_{j≤k*} z_(j) − 1) / k*. Masked (-inf) entries sort last and never satisfy the condition.
    """
    d = x.shape[-1]
    srt = -np.sort(-x, axis=-1)
    k = np.arange(1, d + 1, dtype=np.float64)
    with np.errstate(invalid="ignore"):  # -inf arithmetic on masked entries; they fail the test below
        cumsum = np.cumsum(srt, axis=-1)
        satisfied = np.isfinite(srt) & (1.0 + k * srt > cumsum)
    k_star = np.where(satisfied, k, 0.0).max(axis=-1, keepdims=True)
    # The running sum only decides k*: summed left to right its error grows like k·eps·Σ|x| (1e-12 in Σp for
    # ~200 tied entries); τ is recomputed with numpy's pairwise sum over the support (error ~log2(k)·eps·Σ|x|).
    safe_k = np.maximum(k_star, 1.0)
    support_sum = np.where(k <= k_star, srt, 0.0).sum(axis=-1, keepdims=True)
    tau = (support_sum - 1.0) / safe_k
    return np.where(k_star == 0, -np.inf, tau)


def _entmax15_threshold(x: np.ndarray) -> np.ndarray:
    """τ for 1.5-entmax (Peters, Niculae & Martins 2019, Alg. 2) on the last axis of x = (z − max z)/2.

    With p = [x − τ]_+², a support of the k largest entries needs Σ_{j≤k} (x_(j) − τ)² = 1, whose smaller root
    is τ_k = mean_k − sqrt((1 − ss_k) / k) with mean_k and ss_k = Σ_{j≤k} (x_(j) − mean_k)² the mean and
    sum of squared deviations of the top k. The support is the largest k with τ_k ≤ x_(k).
    """
    d = x.shape[-1]
    srt = -np.sort(-x, axis=-1)
    k = np.arange(1, d + 1, dtype=np.float64)
    with np.errstate(invalid="ignore"):  # inf - inf on masked entries; the isfinite test excludes them
        mean = np.cumsum(srt, axis=-1) / k
        mean_sq = np.cumsum(srt * srt, axis=-1) / k
        ss = k * (mean_sq - mean * mean)
        delta = (1.0 - ss) / k
        # delta < 0 only for k beyond the support (the top k cannot all be kept); clipping keeps sqrt real
        # and makes τ_k = mean_k ≥ x_(k), so such k fail the test as they should.
        tau_k = mean - np.sqrt(np.clip(delta, 0.0, None))
        satisfied = np.isfinite(srt) & (tau_k <= srt)
    k_star = np.where(satisfied, k, 0.0).max(axis=-1, keepdims=True)
    # The running formula ss_k = k(mean_sq_k − mean_k²) cancels when the top k are nearly tied (~1e-13 in Σp
    # for a few hundred entries); it only decides k*. τ itself is recomputed two-pass on the support.
    in_support = k <= k_star
    safe_k = np.maximum(k_star, 1.0)
    mean = np.where(in_support, srt, 0.0).sum(axis=-1, keepdims=True) / safe_k
    ss = np.where(in_support, (srt - mean) ** 2, 0.0).sum(axis=-1, keepdims=True)
    tau = mean - np.sqrt(np.clip((1.0 - ss) / safe_k, 0.0, None))
    return np.where(k_star == 0, -np.inf, tau)


def _bisection_threshold(x: np.ndarray, alpha: float, lo: np.ndarray | None = None,
                         hi: np.ndarray | None = None) -> np.ndarray:
    """τ for any α > 1 by bisection on the last axis of x = (α−1)(z − max z), or of any shift of it when the
    bracket [``lo``, ``hi``] (keepdims) is given.

    The mass m(τ) = Σ [x − τ]_+^{1/(α−1)} is continuous and decreasing; with n finite entries and max x = 0,
    m(−1) ≥ 1 (the top entry alone has weight 1) and m(−n^{1−α}) ≤ 1 (each weight ≤ 1/n), so the root lies in
    [−1, −n^{1−α}]. Halve that bracket until it spans adjacent floats (so certainly ≤ BISECTION_TOL) and
    return its midpoint.
    """
    exponent = 1.0 / (alpha - 1.0)
    n_finite = np.isfinite(x).sum(axis=-1, keepdims=True)
    if lo is None:
        lo = np.full(n_finite.shape, -1.0)
        hi = -np.maximum(n_finite, 1).astype(np.float64) ** (1.0 - alpha)
    for _ in range(_BISECTION_MAX_ITER):
        mid = 0.5 * (lo + hi)
        if not np.any((lo < mid) & (mid < hi)):  # every bracket is down to adjacent floats
            break
        mass = (np.clip(x - mid, 0.0, None) ** exponent).sum(axis=-1, keepdims=True)
        too_much_mass = mass >= 1.0  # τ = mid is too small: the root is above it
        lo = np.where(too_much_mass, mid, lo)
        hi = np.where(too_much_mass, hi, mid)
    tau = 0.5 * (lo + hi)
    return np.where(n_finite == 0, -np.inf, tau)


def _recentred_threshold(z: np.ndarray, x: np.ndarray, tau: np.ndarray, row_max: np.ndarray,
                         alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(w, τ_w, z_r): the scores measured from the entry z_r nearest τ, w = (α−1)(z − z_r), and their threshold
    bisected again from ``tau``, the threshold of x = (α−1)(z − max z). For α > 2.

    Why: p = t^{1/(α−1)} has infinite slope at t = 0 for α > 2, so an entry within float64 resolution of τ*
    (1e-16 near |τ| ~ 1) gets a weight that no float64 τ in [−1, 0] resolves: a margin of 7e-5 below the one-hot
    gap with 22 tied runners-up puts them at t = 3e-17, weight 3.1e-6 each, which the first bisection rounds
    to 0 (ℓ1 error 1.4e-4). Measured from z_r, the entries near τ* have w ≈ 0 (z − z_r is exact for nearby
    floats, Sterbenz's lemma) and τ_w is resolved relatively, down to ~1e-300.
    """
    empty = ~np.isfinite(tau)
    with np.errstate(invalid="ignore"):  # all −inf rows: −inf − (−inf); they keep τ = −inf below
        distance = np.where(np.isfinite(x), np.abs(x - tau), np.inf)
    nearest = np.argmin(distance, axis=-1)[..., None]
    z_r = np.where(empty, 0.0, np.take_along_axis(z, nearest, axis=-1))
    w = (alpha - 1.0) * (z - z_r)
    # the first bracket's end points are within an ulp of τ; the move from x to w rounds by a few ulps of 1
    x_r = (alpha - 1.0) * (z_r - np.where(empty, 0.0, row_max))
    tau_r = np.where(empty, 0.0, tau - x_r)
    tau_w = _bisection_threshold(w, alpha, lo=tau_r - BISECTION_TOL, hi=tau_r + BISECTION_TOL)
    return w, np.where(empty, -np.inf, tau_w), z_r


def _threshold_last(z: np.ndarray, alpha: float, method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, τ, shift) on the last axis: x = (α−1)(z − shift) and its threshold τ (keepdims), p = [x − τ]_+^q.

    The shift is the row maximum, except for α > 2, where the threshold is refined in scores measured from the
    entry nearest it (see :func:`_recentred_threshold`)."""
    x, row_max, _ = _scaled_shifted(z, alpha)
    if method == "auto" and alpha == 2.0:
        tau = _sparsemax_threshold(x)
    elif method == "auto" and alpha == 1.5:
        tau = _entmax15_threshold(x)
    else:
        tau = _bisection_threshold(x, alpha)
        if alpha > 2.0:
            return _recentred_threshold(z, x, tau, row_max, alpha)
    return x, tau, row_max


def _entmax_last(z: np.ndarray, alpha: float, method: str) -> np.ndarray:
    x, tau, _ = _threshold_last(z, alpha, method)
    with np.errstate(invalid="ignore"):  # all -inf rows: -inf - (-inf); set to 0 just below
        p = np.clip(x - tau, 0.0, None) ** (1.0 / (alpha - 1.0))
    p = np.where(np.isnan(p), 0.0, p)
    if not (method == "auto" and alpha in (1.5, 2.0)):
        # Bisection leaves Σp = 1 ± O(BISECTION_TOL / (α−1)); renormalising removes that first-order error.
        total = p.sum(axis=-1, keepdims=True)
        p = p / np.where(total == 0.0, 1.0, total)
    return p


def _softmax_last(z: np.ndarray) -> np.ndarray:
    row_max = z.max(axis=-1, keepdims=True)
    e = np.exp(z - np.where(row_max == -np.inf, 0.0, row_max))  # exp(-inf) = 0: masked entries vanish
    total = e.sum(axis=-1, keepdims=True)  # ≥ 1 unless the row is all -inf
    return e / np.where(total == 0.0, 1.0, total)


# --------------------------------------------------------------------------------------------------
# Maps
# --------------------------------------------------------------------------------------------------

def softmax(z, axis: int = -1) -> np.ndarray:
    """Softmax: ``argmax_{p∈Δ} ⟨p, z⟩ + H(p)`` with the Shannon entropy H(p) = −Σ p_i log p_i.

    The solution is p_i = exp(z_i) / Σ_j exp(z_j), computed after subtracting the row maximum. It is the
    α → 1 limit of α-entmax and is never sparse (except for -inf entries, whose weight is exactly 0).
    A row that is all -inf gives all-zero weights.
    """
    z = _check_scores(z)
    return np.moveaxis(_softmax_last(_to_last(z, axis)), -1, axis)


def entmax(z, alpha: float, axis: int = -1, method: str = "auto") -> np.ndarray:
    """α-entmax (Peters, Niculae & Martins 2019): ``argmax_{p∈Δ} ⟨p, z⟩ + H^T_α(p)`` for α > 1.

    H^T_α(p) = (1 − Σ p_i^α) / (α(α−1)) is the Tsallis entropy. The solution is
    ``p_i = [(α−1) z_i − τ]_+^{1/(α−1)}`` with τ such that Σp = 1 (see :func:`entmax_threshold`). α = 2 is
    sparsemax, α → 1 tends to softmax; entries whose score is more than 1/(α−1) below the maximum always get
    weight 0.

    Args:
        z: scores, any shape; -inf entries are masked (weight 0); an all -inf row gives all-zero weights.
        alpha: α > 1.
        axis: the axis the map acts on.
        method: ``"auto"`` uses the exact sort-based thresholds for α = 1.5 and α = 2 and bisection otherwise;
            ``"bisect"`` always bisects (τ to float64 resolution, at worst BISECTION_TOL/2, in the scaled
            space, and for α > 2 once more relative to the score nearest τ; then Σp is renormalised to 1).

    Note:
        For α close to 1 the exponent 1/(α−1) is large and weights inside the support can underflow to an exact
        0 (e.g. α = 1.01 and a weight below ~1e-308); :func:`support_size` counts the mathematical support.
    """
    alpha = _check_alpha(alpha)
    _check_method(method)
    z = _check_scores(z)
    return np.moveaxis(_entmax_last(_to_last(z, axis), alpha, method), -1, axis)


def sparsemax(z, axis: int = -1) -> np.ndarray:
    """Sparsemax (Martins & Astudillo 2016): the Euclidean projection of z onto the simplex.

    ``sparsemax(z) = argmin_{p∈Δ} ‖p − z‖²``, equivalently ``argmax_{p∈Δ} ⟨p, z⟩ + H^T_2(p)`` (2-entmax).
    Exact sort-based threshold: p = [z − τ]_+ with τ = (Σ_{j≤k*} z_(j) − 1)/k* (see ``_sparsemax_threshold``).
    """
    return entmax(z, 2.0, axis=axis)


def entmax15(z, axis: int = -1) -> np.ndarray:
    """1.5-entmax (Peters, Niculae & Martins 2019): ``argmax_{p∈Δ} ⟨p, z⟩ + H^T_{1.5}(p)``.

    p = [z/2 − τ]_+² with the exact sort-based threshold τ (see ``_entmax15_threshold``); the default sparse map
    of PLADIS.
    """
    return entmax(z, 1.5, axis=axis)


def entmax_threshold(z, alpha: float, axis: int = -1, keepdims: bool = False, method: str = "auto") -> np.ndarray:
    """The α-entmax threshold τ, in the scaled space z' = (α−1) z, so that ``p = [z' − τ]_+^{1/(α−1)}``.

    τ is the root of Σ_i [z'_i − τ]_+^{1/(α−1)} = 1 and lies in ``[max z' − 1, max z' − n^{1−α}]``, n the number
    of finite entries (so also in the bracket with the full length d ≥ n). An all -inf row has τ = -inf.
    With ``keepdims=True`` the reduced axis is kept with length 1, so the result broadcasts against z.
    """
    alpha = _check_alpha(alpha)
    _check_method(method)
    z = _to_last(_check_scores(z), axis)
    _, tau, shift = _threshold_last(z, alpha, method)
    with np.errstate(invalid="ignore"):
        tau = np.where(np.isneginf(tau), -np.inf, tau + (alpha - 1.0) * shift)  # undo the shift
    tau = np.moveaxis(tau, -1, axis)
    return tau if keepdims else np.squeeze(tau, axis=axis)


def support_size(z, alpha: float, axis: int = -1, keepdims: bool = False, method: str = "auto") -> np.ndarray:
    """Number of entries in the α-entmax support, #{i : (α−1) z_i > τ} (an integer array).

    This is the mathematical support; for α near 1 a weight inside it can underflow to 0 (see :func:`entmax`).
    An all -inf row has support size 0.
    """
    alpha = _check_alpha(alpha)
    _check_method(method)
    z = _to_last(_check_scores(z), axis)
    x, tau, _ = _threshold_last(z, alpha, method)
    count = (x > tau).sum(axis=-1, keepdims=True)
    count = np.moveaxis(count, -1, axis)
    return count if keepdims else np.squeeze(count, axis=axis)


def entmax_jacobian(z, alpha: float = 1.5, axis: int = -1) -> np.ndarray:
    """The Jacobian ∂p/∂z of α-entmax (α ≥ 1; α = 1 is softmax), one d×d matrix per row.

    ``J = diag(s) − s sᵀ / Σs`` with ``s_i = p_i^{2−α}`` on the support and 0 off it (Peters, Niculae &
    Martins 2019, Prop. 1); for softmax s = p and J = diag(p) − p pᵀ. J is symmetric, J·1 = 0, and J = 0 on a
    one-hot row. The map is not differentiable where an entry sits exactly on the support boundary; there
    this formula is one of its one-sided Jacobians. An all -inf row gives J = 0. J depends on z only through
    the weights p: :func:`entmax_jacobian_at` takes p.

    Returns:
        Array of shape ``batch + (d, d)``: the map axis is moved to the end and becomes the last two axes
        (row index = output i, column index = input j), whatever ``axis`` was.
    """
    alpha = _check_alpha(alpha, allow_softmax=True)
    z = _to_last(_check_scores(z), axis)
    p = _softmax_last(z) if alpha == 1.0 else _entmax_last(z, alpha, "auto")
    return _jacobian_at_last(p, alpha)


def entmax_jacobian_at(p, alpha: float = 1.5, axis: int = -1) -> np.ndarray:
    """The Jacobian of α-entmax (α ≥ 1) at a point where it outputs the weights ``p``: diag(s) − s sᵀ/Σs,
    s = p^{2−α} on the support (p > 0). Same layout as :func:`entmax_jacobian`.

    For α > 2, s is largest where p is smallest and blows up as a weight goes to 0: J stays bounded while one
    entry does so (its diagonal is summed without cancellation here) but grows without bound when two do.
    """
    alpha = _check_alpha(alpha, allow_softmax=True)
    return _jacobian_at_last(_to_last(_check_distribution(p, "p"), axis, name="p"), alpha)


def _jacobian_at_last(p: np.ndarray, alpha: float) -> np.ndarray:
    s = np.where(p > 0.0, np.where(p > 0.0, p, 1.0) ** (2.0 - alpha), 0.0)  # inner where: no 0^(negative)
    total = s.sum(axis=-1, keepdims=True)
    total = np.where(total == 0.0, 1.0, total)
    eye = np.eye(p.shape[-1])
    outer = s[..., :, None] * s[..., None, :] / total[..., None]
    # J_ii = s_i − s_i²/Σs = s_i · Σ_{j≠i} s_j / Σs, summed without s_i: s_i − s_i²/Σs would cancel a
    # dominant s_i against itself (α > 2, a small weight), leaving s_i·ε of rounding.
    others = (s[..., None, :] * (1.0 - eye)).sum(axis=-1)  # (..., d): Σ_{j≠i} s_j
    return (s * others / total)[..., :, None] * eye - outer * (1.0 - eye)


# --------------------------------------------------------------------------------------------------
# Entropies, PLADIS, Fenchel-Young
# --------------------------------------------------------------------------------------------------

def shannon_entropy(p, axis: int = -1) -> np.ndarray:
    """Shannon entropy H(p) = −Σ p_i log p_i (natural log, 0 log 0 = 0) along ``axis``.

    ``p`` must be finite and non-negative; it is not renormalised. Signed weights such as PLADIS weights with
    λ > 1 have no entropy and raise ValueError.
    """
    p = _to_last(_check_distribution(p, "p"), axis, name="p")
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0.0, -p * np.log(np.where(p > 0.0, p, 1.0)), 0.0)
    return terms.sum(axis=-1)


def tsallis_entropy(p, alpha: float, axis: int = -1) -> np.ndarray:
    """Tsallis entropy H^T_α(p) = (1 − Σ p_i^α) / (α(α−1)) along ``axis``; α = 1 is the Shannon entropy.

    This normalisation (Blondel et al. 2019; Peters et al. 2019) makes α-entmax the maximiser of
    ⟨p, z⟩ + H^T_α(p) over the simplex, and H^T_α → Shannon as α → 1. Defined for any α > 0; ``p`` must be
    finite and non-negative.
    """
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"alpha must be a finite real number > 0, got {alpha!r}") from None
    if not math.isfinite(a) or a <= 0.0:
        raise ValueError(f"alpha must be a finite real number > 0, got alpha={alpha!r}")
    if a == 1.0:
        return shannon_entropy(p, axis=axis)
    p = _to_last(_check_distribution(p, "p"), axis, name="p")
    return (1.0 - (p ** a).sum(axis=-1)) / (a * (a - 1.0))


def pladis_weights(z, scale: float = 2.0, alpha: float = 1.5, axis: int = -1) -> np.ndarray:
    """PLADIS weights A = S + λ(E − S) = (1−λ) S + λ E, S = softmax(z), E = α-entmax(z), λ = ``scale`` ≥ 0.

    Σ A = 1; λ = 0 gives S and λ = 1 gives E exactly (the (1−λ)S + λE form is exact at both ends); for λ > 1
    the entries off the entmax support are (1−λ) S_i < 0, so A is a signed weighting with
    ‖A‖₁ = 1 + 2·(negative mass). A is not the solution of an optimisation problem: it extrapolates from the
    dense to the sparse solution (Kim & Sim 2025). An all -inf row gives all-zero weights.
    """
    lam = _check_pladis_scale(scale)
    alpha = _check_alpha(alpha)
    z = _to_last(_check_scores(z), axis)
    dense = _softmax_last(z)
    sparse = _entmax_last(z, alpha, "auto")
    return np.moveaxis((1.0 - lam) * dense + lam * sparse, -1, axis)


def fenchel_young_loss(z, y, alpha: float = 1.5, axis: int = -1) -> np.ndarray:
    """The Fenchel–Young loss of α-entmax (Blondel, Martins & Niculae 2020), α ≥ 1 (α = 1: softmax/Shannon).

    With the regulariser Ω = −H^T_α (restricted to the simplex) and its conjugate
    Ω*(z) = max_{p∈Δ} ⟨p, z⟩ − Ω(p) = ⟨ŷ, z⟩ + H^T_α(ŷ), ŷ = α-entmax(z):

        L(z; y) = Ω*(z) + Ω(y) − ⟨z, y⟩ = ⟨ŷ − y, z⟩ + H^T_α(ŷ) − H^T_α(y).

    L ≥ 0 with equality iff y = ŷ, and ∇_z L = ŷ − y. ``y`` must be a distribution on the simplex with the
    shape of z (checked to 1e-9); if y puts mass on a -inf score the loss is +inf. Returns the loss per row
    (``axis`` removed). Rounding can make L a few ulps of the scores' scale negative at y = ŷ.
    """
    alpha = _check_alpha(alpha, allow_softmax=True)
    z = _check_scores(z)
    y = _check_distribution(y, "y")
    if y.shape != z.shape:
        raise ValueError(f"y must have the shape of z, got y.shape={y.shape} and z.shape={z.shape}")
    z = _to_last(z, axis)
    y = _to_last(y, axis, name="y")
    sums = y.sum(axis=-1)
    if np.any(np.abs(sums - 1.0) > 1e-9):
        worst = np.unravel_index(np.argmax(np.abs(sums - 1.0)), sums.shape)
        raise ValueError(f"y must sum to 1 along axis={axis}; found a sum of {float(sums[worst])!r} at batch index "
                         f"{tuple(int(i) for i in worst)}")
    y_hat = _softmax_last(z) if alpha == 1.0 else _entmax_last(z, alpha, "auto")
    # Σ(ŷ − y) = 0, so ⟨ŷ − y, z⟩ is unchanged by subtracting the row max; doing so keeps the products O(range)
    # instead of O(|z|). Entries where ŷ = y contribute nothing (this also avoids 0·(−inf) = NaN).
    row_max = z.max(axis=-1, keepdims=True)
    shifted = z - np.where(row_max == -np.inf, 0.0, row_max)
    diff = y_hat - y
    with np.errstate(invalid="ignore"):
        linear = np.where(diff != 0.0, diff * shifted, 0.0).sum(axis=-1)
    return linear + tsallis_entropy(y_hat, alpha) - tsallis_entropy(y, alpha)
