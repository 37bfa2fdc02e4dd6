"""Hypothesis properties of the NumPy reference maps: every identity and bound THEORY.md lists for the maps.

Inputs span scales 1e-5 … 1e4 and lengths 1 … 300, and a strategy forces ties in (tied maxima, tied groups,
values on a coarse grid, constant rows), because ties are where sort-based thresholds and supports break.

Tolerances are derived, not tuned. Rounding a score of magnitude M moves score differences by about
eps·M (eps = 2.2e-16), so at scale 1e4 every score difference is uncertain by ~1e-12 and no comparison of two
computations can be tighter than that. How much a weight moves when scores move by δ (in the scaled space
z' = (α−1)z, where the threshold τ is 1-Lipschitz in the ∞-norm) is bounded by :func:`weight_atol`:
Lipschitz for α ≤ 2 (p = t^k with k = 1/(α−1) ≥ 1, t ≤ 1) and only Hölder-k for α > 2 (|a^k − b^k| ≤ |a−b|^k),
which is why α > 2 needs visibly wider tolerances near the support boundary.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, example, given, note
from hypothesis import strategies as st

from pladis_analysis.maps import reference as R

pytestmark = pytest.mark.property

EPS = np.finfo(np.float64).eps
# The bisection returns τ to within BISECTION_TOL/2; the exact paths are exact up to rounding.
TAU_ERR = R.BISECTION_TOL


# --------------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------------

# Scales 1e-5 … 1e4, with both end points drawn often.
SCALES = st.one_of(st.sampled_from([1e-5, 1e4, 1.0]), st.floats(-5.0, 4.0).map(lambda e: 10.0 ** e))
# α > 1: the exact paths (1.5, 2), points near 1 and above 2, and anything in (1, 4].
ALPHAS = st.one_of(st.sampled_from([1.5, 2.0, 1.25, 3.0]), st.floats(1.05, 4.0))
LENGTHS = st.one_of(st.sampled_from([1, 2, 3]), st.integers(1, 300))
TIE_MODES = ("none", "tied_max", "tied_groups", "grid", "constant")


def force_ties(z: np.ndarray, mode: str, rng: np.random.Generator) -> np.ndarray:
    """Return a copy of ``z`` with ties of the requested kind (no-op for length 1 or mode 'none')."""
    z = z.copy()
    d = z.size
    if d < 2 or mode == "none":
        return z
    if mode == "tied_max":  # 2..4 entries share the maximum: the two-way tie is where ‖J‖ peaks
        k = int(rng.integers(2, min(d, 4) + 1))
        z[rng.choice(d, size=k, replace=False)] = z.max()
    elif mode == "tied_groups":  # a few values copied onto several other positions, at any rank
        for _ in range(int(rng.integers(1, 4))):
            src = int(rng.integers(d))
            z[rng.choice(d, size=int(rng.integers(1, d)), replace=False)] = z[src]
    elif mode == "grid":  # coarse grid: ties at every level, and entries exactly at the support boundary
        step = max(float(np.abs(z).max()), np.finfo(float).tiny) / 4.0
        z = np.round(z / step) * step
    elif mode == "constant":
        z[:] = z[0]
    return z


@st.composite
def score_rows(draw, min_len: int = 1, max_len: int = 300, scales=SCALES):
    """One score row: Gaussian, Laplace (heavy tailed) or uniform values at a drawn scale, ties forced in."""
    d = draw(st.integers(min_len, max_len) if (min_len, max_len) != (1, 300) else LENGTHS)
    scale = draw(scales)
    kind = draw(st.sampled_from(["normal", "laplace", "uniform"]))
    mode = draw(st.sampled_from(TIE_MODES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    z = {"normal": rng.standard_normal, "laplace": rng.laplace, "uniform": rng.random}[kind](size=d) * scale
    z = force_ties(z, mode, rng)
    note(f"d={d} scale={scale:.3g} kind={kind} ties={mode}")
    return z


@st.composite
def simplex_points(draw, d: int, n: int = 8):
    """``n`` points of the simplex in R^d: Dirichlet at three concentrations, vertices and sparse points."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    points = [rng.dirichlet(np.full(d, a)) for a in (0.05, 1.0, 20.0)]
    points.append(np.eye(d)[rng.integers(d)])
    while len(points) < n:
        q = np.zeros(d)
        idx = rng.choice(d, size=int(rng.integers(1, min(d, 3) + 1)), replace=False)
        q[idx] = rng.dirichlet(np.ones(idx.size))
        points.append(q)
    return np.stack(points)


# --------------------------------------------------------------------------------------------------
# Tolerances
# --------------------------------------------------------------------------------------------------

def magnitude(*arrays) -> float:
    """1 + the largest finite |value|: the scale at which score differences are rounded."""
    finite = [np.abs(a[np.isfinite(a)]).max(initial=0.0) for a in map(np.asarray, arrays)]
    return 1.0 + max(finite)


def weight_atol(alpha: float, score_error: float) -> float:
    """Bound on |Δp| when every scaled score (α−1)z_i moves by at most ``score_error`` (softmax: α = 1).

    τ moves by at most ``score_error`` as well, so t = z' − τ moves by η ≤ 2·score_error. With p = t^k,
    k = 1/(α−1): |Δp| ≤ k·η for k ≥ 1 (t ≤ 1), and |Δp| ≤ η^k for k < 1 (α > 2). A factor 2 covers the
    renormalisation after bisection. Softmax is 1/2-Lipschitz per coordinate in z (here scaled = z).
    """
    eta = 2.0 * score_error
    if alpha == 1.0:
        return 2.0 * eta
    k = 1.0 / (alpha - 1.0)
    return 2.0 * (k * eta if k >= 1.0 else eta ** k) + 64 * EPS


def rounding_error(alpha: float, z, ulps: float = 8.0, bisect: bool = True) -> float:
    """Error in the scaled scores (α−1)z from rounding at z's magnitude, plus the bisection's τ error."""
    to_scaled = alpha - 1.0 if alpha > 1.0 else 1.0  # softmax (α = 1) works on z itself
    return to_scaled * ulps * EPS * magnitude(z) + (TAU_ERR if bisect else 0.0)


def assert_simplex(p: np.ndarray, atol: float) -> None:
    assert np.all(p >= 0.0), f"negative weight {p.min()!r}"
    assert abs(p.sum() - 1.0) <= atol, f"sum {p.sum()!r} differs from 1 by more than {atol:g}"


def spectral_norm(J: np.ndarray) -> float:
    """‖J‖₂ of a symmetric matrix: its largest |eigenvalue| (eigvalsh is much cheaper than an SVD)."""
    return float(np.abs(np.linalg.eigvalsh(J)).max())


def random_direction(rng: np.random.Generator, d: int) -> np.ndarray:
    v = rng.standard_normal(d)
    return v / np.linalg.norm(v)


# --------------------------------------------------------------------------------------------------
# Simplex, invariances, special values
# --------------------------------------------------------------------------------------------------

@given(z=score_rows(), alpha=ALPHAS)
def test_outputs_lie_on_the_simplex(z, alpha):
    d = z.size
    for p in (R.softmax(z), R.sparsemax(z), R.entmax15(z), R.entmax(z, alpha)):
        # Summing d weights ≤ 1 costs ≤ d·eps. The exact paths add the error of τ, which comes from a pairwise sum
        # over the support of scaled, max-shifted scores in [−1, 0]: ≤ log2(d)·eps·Σ|x| ≤ log2(d)·eps·d.
        assert_simplex(p, atol=2 * d * EPS * (1 + math.log2(d)))


@given(z=score_rows(max_len=120), data=st.data())
def test_sparsemax_is_the_euclidean_projection(z, data):
    # p = argmin_{q∈Δ} ‖q − z‖² iff the variational inequality ⟨z − p, q − p⟩ ≤ 0 holds for every q ∈ Δ.
    p = R.sparsemax(z)
    qs = data.draw(simplex_points(z.size))
    shifted = z - z.max()  # the inequality is translation invariant (Σq = Σp); shifting keeps terms O(range)
    lhs = (qs - p) @ (shifted - p)
    # Each product is O(range of z); the sum of d of them has rounding error ≤ d·eps·range.
    assert np.all(lhs <= 8 * z.size * EPS * magnitude(shifted)), lhs.max()


@given(z=score_rows(), alpha=ALPHAS, offset=st.floats(-1e4, 1e4))
def test_translation_invariance(z, alpha, offset):
    moved = z + offset
    # z + offset is rounded at |z| + |offset|: compare at that magnitude.
    for a, f in ((1.0, R.softmax), (alpha, lambda x: R.entmax(x, alpha))):
        atol = weight_atol(a, rounding_error(a, moved, bisect=a not in (1.0, 1.5, 2.0)))
        np.testing.assert_allclose(f(moved), f(z), rtol=0, atol=atol)


@given(z=score_rows(), alpha=ALPHAS, seed=st.integers(0, 2**32 - 1))
def test_permutation_equivariance(z, alpha, seed):
    perm = np.random.default_rng(seed).permutation(z.size)
    # Only the order of summation changes: scores are untouched, sums move by ≤ d·eps, and bisection
    # may then stop at a different point of its final ±TAU_ERR bracket.
    score_error = z.size * EPS + TAU_ERR
    for a, f in ((1.0, R.softmax), (2.0, R.sparsemax), (1.5, R.entmax15), (alpha, lambda x: R.entmax(x, alpha))):
        np.testing.assert_allclose(f(z[perm]), f(z)[perm], rtol=0, atol=weight_atol(a, score_error))


@given(d=LENGTHS, alpha=ALPHAS, value=st.one_of(st.just(0.0), st.floats(-1e4, 1e4)))
def test_uniform_at_constant_scores(d, alpha, value):
    z = np.full(d, value)  # z = 0, and any constant row by translation invariance
    for p in (R.softmax(z), R.sparsemax(z), R.entmax15(z), R.entmax(z, alpha), R.pladis_weights(z, 2.0, alpha)):
        # Equal entries divided by their sum (d equal terms, summed with relative error ≤ d·eps).
        np.testing.assert_allclose(p, np.full(d, 1.0 / d), rtol=(d + 4) * EPS, atol=0)
    assert R.support_size(z, alpha) == d


@given(z=score_rows())
def test_exact_paths_equal_bisection(z):
    # The sort-based thresholds are exact; bisection has |τ error| ≤ TAU_ERR/2, hence |Δp| ≤ 2·k·TAU_ERR ≪ 1e-9.
    for alpha in (1.5, 2.0):
        exact = R.entmax(z, alpha)
        bisected = R.entmax(z, alpha, method="bisect")
        np.testing.assert_allclose(bisected, exact, rtol=0, atol=1e-9)
        tau_exact = R.entmax_threshold(z, alpha)
        tau_bisect = R.entmax_threshold(z, alpha, method="bisect")
        # τ carries the offset (α−1)·max z, rounded at that magnitude.
        assert abs(tau_exact - tau_bisect) <= TAU_ERR + 4 * EPS * magnitude(z)


@given(z=score_rows(scales=st.floats(-5.0, 1.5).map(lambda e: 10.0 ** e)),
       log_eps=st.floats(-3.0, -1.0))
def test_alpha_to_one_approaches_softmax_at_rate_alpha_minus_one(z, log_eps):
    # H^T_{1+ε} = H − ε(H + ½Σ p ln²p) + O(ε²), and perturbing the maximiser of ⟨p,z⟩ + H gives
    # entmax_{1+ε}(z) = S − (ε/2)·J_S·ln²S + O(ε²), with S = softmax(z), J_S = diag(S) − SSᵀ.
    # So |entmax − S| ≤ ε·(½K + O(ε)) with K = max_i S_i·|ln²S_i − Σ_j S_j ln²S_j|: the tolerance scales with ε.
    eps = 10.0 ** log_eps
    alpha = 1.0 + eps
    s = R.softmax(z)
    log_sq = np.where(s > 0, np.log(np.where(s > 0, s, 1.0)) ** 2, 0.0)
    centred = s * (log_sq - np.sum(s * log_sq))
    K = np.abs(centred).max()
    p = R.entmax(z, alpha)
    bisection = weight_atol(alpha, rounding_error(alpha, z))  # τ error enters p amplified by k = 1/ε
    assert np.abs(p - s).max() <= eps * (1.0 + K) + bisection
    # (The first-order coefficient itself is checked in test_reference.py: its residual shrinks like ε².)


# --------------------------------------------------------------------------------------------------
# Threshold, support, closed forms, one-hot
# --------------------------------------------------------------------------------------------------

@given(z=score_rows(), alpha=ALPHAS)
def test_threshold_lies_in_its_bracket(z, alpha):
    tau = R.entmax_threshold(z, alpha)
    top = (alpha - 1.0) * z.max()
    # τ is computed in the max-shifted space and shifted back: rounded at |top|.
    slack = TAU_ERR + 4 * EPS * (1.0 + abs(top))
    assert top - 1.0 - slack <= tau <= top - z.size ** (1.0 - alpha) + slack


@given(z=score_rows(), alpha=ALPHAS)
def test_support_is_the_set_above_the_threshold(z, alpha):
    tau = R.entmax_threshold(z, alpha)
    n = int(R.support_size(z, alpha))
    scaled = (alpha - 1.0) * z
    # Entries within rounding of τ may land on either side (their weight is ~0 either way): sandwich the count.
    slack = TAU_ERR + 8 * EPS * magnitude(scaled)
    assert int(np.sum(scaled > tau + slack)) <= n <= int(np.sum(scaled > tau - slack))
    # And the weights vanish exactly off the support (underflow may zero a few more when α is near 1).
    p = R.entmax(z, alpha)
    assert int(np.count_nonzero(p)) <= n
    if alpha >= 1.25:  # p_i = t_i^{1/(α−1)} with t_i ≥ 1e-60 cannot underflow for exponents ≤ 4
        assert int(np.count_nonzero(p)) >= int(np.sum(scaled > tau + max(slack, 1e-60)))


@given(t=st.one_of(st.floats(-1e4, 1e4), st.floats(-1.5, 1.5), st.sampled_from([-1.0, 1.0, 0.0])))
def test_sparsemax_two_element_closed_form(t):
    p = R.sparsemax(np.array([t, 0.0]))
    assert abs(p[0] - min(max((t + 1.0) / 2.0, 0.0), 1.0)) <= 4 * EPS
    assert abs(p[0] + p[1] - 1.0) <= 2 * EPS


@given(t=st.one_of(st.floats(-1e4, 1e4), st.floats(-2.5, 2.5), st.sampled_from([-2.0, 2.0, 0.0])))
def test_entmax15_two_element_closed_form(t):
    p = R.entmax15(np.array([t, 0.0]))
    if abs(t) < 2.0:
        expected = ((t / 2.0 + math.sqrt(2.0 - t * t / 4.0)) / 2.0) ** 2
    else:
        expected = 1.0 if t > 0 else 0.0  # gap ≥ 1/(α−1) = 2: one-hot
    assert abs(p[0] - expected) <= 16 * EPS
    assert abs(p[0] + p[1] - 1.0) <= 4 * EPS


@st.composite
def rows_with_top_gap(draw):
    """(z, α): a score row whose top gap is often placed just below, at, or just above 1/(α−1)."""
    alpha = draw(ALPHAS)
    z = draw(score_rows(min_len=2, max_len=300))
    where = draw(st.sampled_from(["as drawn", "near threshold"]))
    if where == "near threshold":
        rel = draw(st.sampled_from([-0.5, -1e-2, -1e-6, 0.0, 1e-6, 1e-2, 0.5]))
        i = int(np.argmax(z))
        second = np.max(np.delete(z, i))
        z = z.copy()
        z[i] = second + (1.0 + rel) / (alpha - 1.0)
    return z, alpha


@given(case=rows_with_top_gap())
def test_one_hot_iff_top_gap_at_least_one_over_alpha_minus_one(case):
    z, alpha = case
    top2 = np.sort(z)[-2:]
    gap_scaled = (alpha - 1.0) * (top2[1] - top2[0])
    # Within this band of the threshold the decision is below rounding (gap at z's magnitude) or the
    # bisection's resolution: a second weight t^k with t ≈ (kδ)^{1/k} for k < 1 is unresolved when
    # δ ≲ TAU_ERR^k/k.
    k = 1.0 / (alpha - 1.0)
    band = 8 * EPS * max(alpha - 1.0, 1.0) * magnitude(z) + 4 * TAU_ERR ** min(k, 1.0) * max(1.0, 1.0 / k)
    assume(abs(gap_scaled - 1.0) > band)
    p = R.entmax(z, alpha)
    if gap_scaled > 1.0:
        assert R.support_size(z, alpha) == 1
        np.testing.assert_array_equal(p, np.eye(z.size)[np.argmax(z)])
    else:
        assert R.support_size(z, alpha) >= 2
    # Softmax is never one-hot (unless underflow makes it so, which needs a gap > ~745).
    if top2[1] - top2[0] < 700:
        assert np.count_nonzero(R.softmax(z)) >= 2


# --------------------------------------------------------------------------------------------------
# Jacobian
# --------------------------------------------------------------------------------------------------

ALPHAS_WITH_SOFTMAX = st.one_of(st.just(1.0), ALPHAS)


# α = 3.8125, three keys in the support, one of weight 0.014 (s = 2258): row sums of 4e-13 > 4·d·ε·max|J|.
@example(z=np.array([0.119, 0.427, 0.624, 0.377, 0.708, 0.231, 0.144, 0.749, 0.669, 0.429, 0.137, 0.664, 0.75,
                     0.164, 0.689, 0.356, 0.915, 0.752, 0.274, 0.938, 0.025, 0.185, 0.242, 0.732, 0.526, 0.464,
                     0.223, 0.756, 0.117, 0.247, 0.806, 0.451, 0.877, 0.602]), alpha=3.8125)
@given(z=score_rows(max_len=120), alpha=ALPHAS_WITH_SOFTMAX)
def test_jacobian_is_symmetric_and_annihilates_ones(z, alpha):
    J = R.entmax_jacobian(z, alpha)
    assert J.shape == (z.size, z.size)
    np.testing.assert_array_equal(J, J.T)
    # J·1 = 0 up to the rounding of J's own entries: J_ii = s_i Σ_{j≠i} s_j / Σs is summed without s_i, so a
    # dominant s_i (α > 2, a small weight: s = 2258 against max|J| = 7.3 in the example) does not cancel
    # against itself and leave s_i·ε.
    row_sums = J.sum(axis=-1)
    assert np.all(np.abs(row_sums) <= 4 * z.size * EPS * np.maximum(1.0, np.abs(J).max()))


@given(z=score_rows(max_len=150))
def test_softmax_jacobian_spectral_norm_at_most_half(z):
    # J = diag(p) − ppᵀ is symmetric PSD, so its spectral norm is its largest eigenvalue: ≤ 1/2 (THEORY.md: bound).
    assert spectral_norm(R.entmax_jacobian(z, 1.0)) <= 0.5 + 16 * EPS


def _kink_margin(z: np.ndarray, alpha: float) -> float:
    """Distance, in the scaled space, from the support boundary to the nearest finite entry."""
    x = (alpha - 1.0) * (z - z.max())
    tau = R.entmax_threshold(z - z.max(), alpha)
    return float(np.abs(x - tau).min())


MARGIN = 0.05  # scaled-space distance from the support boundary that the finite-difference tests ask for


@given(z=score_rows(max_len=40, scales=st.floats(-5.0, 4.0).map(lambda e: 10.0 ** e)), alpha=ALPHAS_WITH_SOFTMAX,
       seed=st.integers(0, 2**32 - 1))
def test_jacobian_equals_finite_differences_away_from_kinks(z, alpha, seed):
    # "Away from ties": the map is smooth only while no entry sits on the support boundary. A central
    # difference with step h then has truncation O(h²·p''') and rounding O(eps·M/h).
    if alpha != 1.0:
        assume(_kink_margin(z, alpha) > MARGIN)
    rng = np.random.default_rng(seed)
    h = 1e-5
    f = (lambda x: R.softmax(x)) if alpha == 1.0 else (lambda x: R.entmax(x, alpha))
    J = R.entmax_jacobian(z, alpha)
    # Rounding: z ± hv is rounded at M, the map is then evaluated to ~weight_atol of that; the truncation term
    # is bounded with p''' ≤ (α−1)³k³·MARGIN^{k−3} ≤ MARGIN^{-3} for t ≥ MARGIN.
    round_err = weight_atol(alpha, rounding_error(alpha, z, bisect=alpha not in (1.0, 1.5, 2.0)))
    atol = h * h * MARGIN ** -3 + 2.0 * round_err / h
    for _ in range(3):
        v = random_direction(rng, z.size)
        fd = (f(z + h * v) - f(z - h * v)) / (2 * h)
        np.testing.assert_allclose(J @ v, fd, rtol=0, atol=atol)


@given(z=score_rows(min_len=1, max_len=120), alpha=ALPHAS)
def test_jacobian_is_zero_on_one_hot_rows(z, alpha):
    z = z.copy()
    i = int(np.argmax(z))
    if z.size > 1:  # push the top entry to a gap of at least 1/(α−1)
        z[i] = max(z[i], np.max(np.delete(z, i)) + 1.0 / (alpha - 1.0) * (1.0 + 1e-6)) + 0.0
    assert R.support_size(z, alpha) == 1
    np.testing.assert_array_equal(R.entmax_jacobian(z, alpha), np.zeros((z.size, z.size)))


# --------------------------------------------------------------------------------------------------
# Variational characterisation and Fenchel–Young loss
# --------------------------------------------------------------------------------------------------

@given(z=score_rows(max_len=120), alpha=ALPHAS_WITH_SOFTMAX, data=st.data())
def test_map_maximises_score_plus_tsallis_entropy(z, alpha, data):
    # entmax_α(z) = argmax_{p∈Δ} ⟨p, z⟩ + H^T_α(p) (α = 1: softmax with Shannon entropy).
    p = R.softmax(z) if alpha == 1.0 else R.entmax(z, alpha)
    shifted = z - z.max()  # ⟨q, z − c⟩ = ⟨q, z⟩ − c on the simplex: same comparison, O(range) terms

    def objective(q):
        return q @ shifted + R.tsallis_entropy(q, alpha, axis=-1)

    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    far = data.draw(simplex_points(z.size))
    near = np.stack([(1 - t) * p + t * q for t in (1e-3, 1e-1) for q in far[:3]])  # probe the optimum locally
    candidates = np.concatenate([far, near, rng.dirichlet(np.ones(z.size), size=4)])
    # Rounding of d products of size ≤ range, and of the entropy, whose 1 − Σq^α cancels at 1/(α(α−1)) scale.
    entropy_scale = 1.0 if alpha == 1.0 else 1.0 / (alpha * (alpha - 1.0))
    tol = 16 * z.size * EPS * (magnitude(shifted) + entropy_scale)
    assert np.all(objective(candidates) <= objective(p) + tol)


@given(z=score_rows(max_len=120), alpha=ALPHAS_WITH_SOFTMAX, data=st.data())
def test_fenchel_young_loss_nonnegative_and_zero_only_at_prediction(z, alpha, data):
    y_hat = R.softmax(z) if alpha == 1.0 else R.entmax(z, alpha)
    entropy_scale = 1.0 if alpha == 1.0 else 1.0 / (alpha * (alpha - 1.0))
    tol = 16 * z.size * EPS * (magnitude(z - z.max()) + entropy_scale)
    assert abs(R.fenchel_young_loss(z, y_hat, alpha)) <= tol
    ys = data.draw(simplex_points(z.size))
    losses = R.fenchel_young_loss(np.broadcast_to(z, ys.shape), ys, alpha)
    assert np.all(losses >= -tol)
    if alpha <= 2.0:
        # Ω = −H^T_α has Hessian diag(p^{α−2}) ≽ I on the simplex for α ≤ 2, so it is 1-strongly convex and
        # L(z; y) ≥ ½‖y − ŷ‖² (Blondel, Martins & Niculae 2020, Prop. 3): zero only at y = ŷ.
        assert np.all(losses >= 0.5 * np.sum((ys - y_hat) ** 2, axis=-1) - tol)


@given(z=score_rows(max_len=60), alpha=st.one_of(st.just(1.0), st.sampled_from([1.5, 2.0]), st.floats(1.05, 2.0)),
       data=st.data())
def test_fenchel_young_gradient_is_prediction_minus_target(z, alpha, data):
    # L is C¹ with gradient ŷ − y, which is 1-Lipschitz for α ≤ 2 (‖J‖ ≤ max s ≤ 1). For such a function the
    # central difference along a unit v is within h/2 of ⟨∇L, v⟩ even across kinks of ŷ; add rounding eps·M/h.
    y = data.draw(simplex_points(z.size, n=4))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    y_hat = R.softmax(z) if alpha == 1.0 else R.entmax(z, alpha)
    entropy_scale = 1.0 if alpha == 1.0 else 1.0 / (alpha * (alpha - 1.0))
    loss_rounding = 16 * z.size * EPS * (magnitude(z) + entropy_scale) + (0.0 if alpha in (1.0, 1.5, 2.0) else
                                                                          4 * TAU_ERR * magnitude(z))
    h = math.sqrt(loss_rounding)  # balances h/2 against rounding/h
    for target in y:
        v = random_direction(rng, z.size)
        fd = (R.fenchel_young_loss(z + h * v, target, alpha) - R.fenchel_young_loss(z - h * v, target, alpha)) / (2 * h)
        assert abs(fd - (y_hat - target) @ v) <= h / 2 + 2 * loss_rounding / h


# --------------------------------------------------------------------------------------------------
# PLADIS weights A = (1−λ) S + λ E
# --------------------------------------------------------------------------------------------------

LAMBDAS = st.one_of(st.sampled_from([0.0, 1.0, 2.0]), st.floats(0.0, 6.0))


@given(z=score_rows(), alpha=ALPHAS, lam=LAMBDAS)
def test_pladis_weights_sum_to_one_and_l1_norm_identity(z, alpha, lam):
    A = R.pladis_weights(z, lam, alpha)
    # (1−λ)ΣS + λΣE, each sum within d·eps of 1.
    tol = 4 * z.size * EPS * (1.0 + 2.0 * lam)
    assert abs(A.sum() - 1.0) <= tol
    negative_mass = -A[A < 0].sum()
    assert abs(np.abs(A).sum() - (1.0 + 2.0 * negative_mass)) <= 2 * tol


@given(z=score_rows(), alpha=ALPHAS)
def test_pladis_weights_endpoints_are_exact(z, alpha):
    np.testing.assert_array_equal(R.pladis_weights(z, 0.0, alpha), R.softmax(z))
    np.testing.assert_array_equal(R.pladis_weights(z, 1.0, alpha), R.entmax(z, alpha))


@given(z=score_rows(), alpha=ALPHAS, lam=st.floats(1.0, 6.0))
def test_pladis_negative_mass_bound(z, alpha, lam):
    # Off the entmax support A_i = (1−λ)S_i ≤ 0, so the negative mass is at least (λ−1)·Σ_{i∉supp} S_i.
    A = R.pladis_weights(z, lam, alpha)
    S, E = R.softmax(z), R.entmax(z, alpha)
    negative_mass = -A[A < 0].sum()
    # Relative rounding of the sums, plus the products (1−λ)S_i that underflow to −0 when S_i is subnormal.
    tiny = np.finfo(np.float64).tiny
    assert negative_mass >= (lam - 1.0) * S[E == 0].sum() * (1 - 4 * z.size * EPS) - z.size * tiny


@given(z=score_rows(max_len=40, scales=st.floats(-5.0, 4.0).map(lambda e: 10.0 ** e)), alpha=ALPHAS,
       lam=st.floats(0.0, 6.0), seed=st.integers(0, 2**32 - 1))
def test_pladis_jacobian_is_the_blend_of_jacobians(z, alpha, lam, seed):
    # J_λ = (1−λ) J_S + λ J_E, checked against central differences of pladis_weights (away from kinks).
    assume(_kink_margin(z, alpha) > MARGIN)
    J = (1 - lam) * R.entmax_jacobian(z, 1.0) + lam * R.entmax_jacobian(z, alpha)
    h = 1e-5
    round_err = weight_atol(alpha, rounding_error(alpha, z, bisect=alpha not in (1.5, 2.0)))
    atol = (1.0 + lam) * (h * h * MARGIN ** -3 + 2.0 * round_err / h)
    rng = np.random.default_rng(seed)
    for _ in range(2):
        v = random_direction(rng, z.size)
        fd = (R.pladis_weights(z + h * v, lam, alpha) - R.pladis_weights(z - h * v, lam, alpha)) / (2 * h)
        np.testing.assert_allclose(J @ v, fd, rtol=0, atol=atol)


@given(z=score_rows(max_len=120), alpha=ALPHAS, lam=st.floats(1.0, 6.0))
def test_pladis_jacobian_spectral_norm_bound(z, alpha, lam):
    # ‖J_λ‖ ≤ (λ−1)‖J_S‖ + λ‖J_E‖ ≤ (λ−1)/2 + λ‖J_E‖ for λ ≥ 1 (THEORY.md: bound).
    J_S, J_E = R.entmax_jacobian(z, 1.0), R.entmax_jacobian(z, alpha)
    J = (1 - lam) * J_S + lam * J_E
    norm_E = spectral_norm(J_E)
    assert spectral_norm(J) <= (lam - 1.0) / 2.0 + lam * norm_E + 64 * EPS * (1.0 + lam * (1.0 + norm_E))


@given(z=score_rows(min_len=2, max_len=120), alpha=ALPHAS, lam=st.floats(0.0, 6.0))
def test_pladis_jacobian_on_one_hot_rows_is_scaled_softmax_jacobian(z, alpha, lam):
    z = z.copy()
    i = int(np.argmax(z))
    z[i] = max(z[i], np.max(np.delete(z, i)) + (1.0 + 1e-6) / (alpha - 1.0))
    J_S, J_E = R.entmax_jacobian(z, 1.0), R.entmax_jacobian(z, alpha)
    np.testing.assert_array_equal(J_E, 0.0)
    J = (1 - lam) * J_S + lam * J_E
    np.testing.assert_array_equal(J, (1 - lam) * J_S)
    if lam == 2.0:
        # J = −J_S exactly; the eigen-solver may round the two spectra differently in the last bits.
        assert abs(spectral_norm(J) - spectral_norm(J_S)) <= 16 * EPS * spectral_norm(J_S)


# --------------------------------------------------------------------------------------------------
# The Newton search's stopping bound (the Triton kernel stops on it: maps/kernels/entmax_rowwise.py)
# --------------------------------------------------------------------------------------------------

NEWTON_ALPHAS = st.one_of(st.sampled_from([1.5, 2.0, 1.25, 4.0 / 3.0]), st.floats(1.05, 2.0))


@given(z=score_rows(), alpha=NEWTON_ALPHAS)
def test_newton_step_bound_on_the_weights_error(z, alpha):
    """Newton on h(τ) = ‖[z' − τ]_+‖_q − 1 from τ = −1 (z' = (α−1)(z − max z), q = 1/(α−1)): every iterate
    stays left of τ*, |h'| ≥ 1 there, and after a step s from τ, b = s (|h'(τ)| − 1) bounds h(τ + s) and the
    ℓ1 error of the weights at τ + s: ≤ b for sparsemax, ≤ 2((1 + b)^q − 1) after renormalising otherwise."""
    q = 1.0 / (alpha - 1.0)
    zp = (alpha - 1.0) * (z - z.max())
    exact = R.entmax(z, alpha)
    tau_star = R.entmax_threshold(z, alpha) - (alpha - 1.0) * z.max()
    slack = 1e-9

    def weights_and_slope(tau):
        t = np.maximum(zp - tau, 0.0)
        f = np.sum(t ** q)
        return t ** q, f ** (1.0 / q) - 1.0, np.sum(t ** (q - 1.0) * (t > 0)) * f ** (1.0 / q - 1.0)   # p, h, |h'|

    tau = -1.0
    for _ in range(30):
        p, h, slope = weights_and_slope(tau)
        assert tau <= tau_star + slack and h >= -slack, f"iterate τ={tau!r} passed the root τ*={tau_star!r}"
        assert slope >= 1.0 - slack, f"|h'(τ)| = {slope!r} < 1"
        step = h / slope
        b = step * max(slope - 1.0, 0.0)
        tau += step
        p, h, _ = weights_and_slope(tau)
        assert h <= b + slack, f"h(τ + s) = {h!r} > s(|h'(τ)| − 1) = {b!r}"
        if q == 1.0:
            error, bound = np.abs(p - exact).sum(), b
        else:
            error, bound = np.abs(p / p.sum() - exact).sum(), 2.0 * ((1.0 + b) ** q - 1.0)
        assert error <= bound + 1e-8, f"ℓ1 error {error!r} > bound {bound!r} after a step of {step!r}"
        if step <= 1e-13:
            break


def newton_start(zp: np.ndarray, q: float, ranks: int) -> float:
    """The Newton search's start (``maps/kernels/entmax_rowwise._newton_start``) in float64: the largest of
    mean_j − j^{−1/q} over the j ≤ ``ranks`` largest distinct values of ``zp`` (max 0)."""
    values = np.unique(zp[np.isfinite(zp)])[::-1][:ranks]
    return max(np.cumsum(values)[j - 1] / j - j ** (-1.0 / q) for j in range(1, len(values) + 1))


@given(z=score_rows(), alpha=NEWTON_ALPHAS, ranks=st.integers(1, 40))
def test_newton_start_is_a_lower_bound_and_michelot_exact_on_small_supports(z, alpha, ranks):
    """Any j entries S give f(τ) + 1 ≥ j (mean_S z' − τ)^q (power means), so mean_S z' − j^{−1/q} ≤ τ*; for
    sparsemax the start is τ* itself when the support has at most ``ranks`` entries, all of distinct value."""
    q = 1.0 / (alpha - 1.0)
    zp = (alpha - 1.0) * (z - z.max())
    tau_star = R.entmax_threshold(z, alpha) - (alpha - 1.0) * z.max()
    start = newton_start(zp, q, ranks)
    assert start <= tau_star + 1e-9 * (1.0 + abs(tau_star)), f"start {start!r} > τ* {tau_star!r}"
    support = zp[zp > tau_star]
    if alpha == 2.0 and len(support) <= ranks and len(np.unique(support)) == len(support):
        assert abs(start - tau_star) <= 1e-9 * (1.0 + abs(tau_star)), f"start {start!r} ≠ τ* {tau_star!r}"
