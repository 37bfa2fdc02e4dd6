"""Example-based tests of the NumPy reference maps: known values, an independent implementation, axes and
batches, masking, and every input error. The identities over random inputs live in
``test_reference_properties.py``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pladis_analysis.maps import reference as R

EPS = np.finfo(np.float64).eps
ALL_MAPS = {
    "softmax": R.softmax,
    "sparsemax": R.sparsemax,
    "entmax15": R.entmax15,
    "entmax(1.25)": lambda z, axis=-1: R.entmax(z, 1.25, axis=axis),
    "entmax(3)": lambda z, axis=-1: R.entmax(z, 3.0, axis=axis),
    "pladis(2, 1.5)": lambda z, axis=-1: R.pladis_weights(z, 2.0, 1.5, axis=axis),
    "pladis(3, 1.25)": lambda z, axis=-1: R.pladis_weights(z, 3.0, 1.25, axis=axis),
}


# --------------------------------------------------------------------------------------------------
# Known values
# --------------------------------------------------------------------------------------------------

def test_softmax_known_value():
    np.testing.assert_allclose(R.softmax([0.0, math.log(3.0)]), [0.25, 0.75], rtol=4 * EPS)


def test_sparsemax_known_values():
    # sorted 0.5, 0.2, 0.1: all three satisfy 1 + k z_(k) > Σ_{j≤k} z_(j), so τ = (0.8 − 1)/3.
    np.testing.assert_allclose(R.sparsemax([0.5, 0.2, 0.1]), [0.5 + 0.2 / 3, 0.2 + 0.2 / 3, 0.1 + 0.2 / 3],
                               rtol=0, atol=4 * EPS)
    np.testing.assert_array_equal(R.sparsemax([3.0, 1.0, 0.0]), [1.0, 0.0, 0.0])


def test_one_hot_exactly_at_the_gap_threshold():
    # gap = 1/(α−1) exactly (representable here): the runner-up sits on the boundary and gets weight 0.
    np.testing.assert_array_equal(R.sparsemax([1.0, 0.0]), [1.0, 0.0])
    np.testing.assert_array_equal(R.entmax15([2.0, 0.0, -5.0]), [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(R.entmax([4.0, 0.0], 1.25), [1.0, 0.0])
    assert R.support_size([2.0, 0.0], 1.5) == 1
    # ... and just below it the runner-up is in the support.
    assert R.support_size([1.999, 0.0], 1.5) == 2


def test_entmax15_two_way_tie_is_half_half():
    # τ = 0.35 − √(1/2): p = (√½)² is 0.5 up to one rounding of the square root
    np.testing.assert_allclose(R.entmax15([0.7, 0.7]), [0.5, 0.5], rtol=2 * EPS, atol=0)


def test_threshold_satisfies_the_normalisation_equation():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((6, 50)) * 3
    for alpha in (1.1, 1.5, 2.0, 2.5):
        tau = R.entmax_threshold(z, alpha, keepdims=True)
        mass = (np.clip((alpha - 1) * z - tau, 0, None) ** (1 / (alpha - 1))).sum(-1)
        # τ to ≤ BISECTION_TOL moves the mass by at most (1/(α−1))·Σ t^{k−1}·BISECTION_TOL.
        np.testing.assert_allclose(mass, 1.0, rtol=0, atol=1e-10)


def test_extreme_alphas_stay_on_the_simplex():
    z = np.random.default_rng(1).standard_normal(100)
    for alpha in (1.0001, 1.01, 10.0, 100.0):
        p = R.entmax(z, alpha)
        assert p.min() >= 0 and abs(p.sum() - 1) <= 100 * EPS
        # underflow may zero weights inside the support near α = 1, never the reverse
        assert np.count_nonzero(p) <= R.support_size(z, alpha)
    np.testing.assert_allclose(R.entmax(z, 1.0001), R.softmax(z), atol=1e-3)


def test_alpha_to_one_first_order_coefficient():
    # entmax_{1+ε}(z) = S − (ε/2)·J_S·ln²S + O(ε²) (expand H^T_{1+ε} to first order in ε; see the property test).
    # If the coefficient is right, the residual divided by ε² settles to a constant as ε shrinks.
    z = np.random.default_rng(8).laplace(size=60) * 2
    z[:3] = z.max()  # a tie at the top
    s = R.softmax(z)
    log_sq = np.log(s) ** 2
    centred = s * (log_sq - np.sum(s * log_sq))
    ratios = [np.abs(R.entmax(z, 1 + eps) - (s - 0.5 * eps * centred)).max() / eps**2 for eps in (1e-2, 1e-3, 1e-4)]
    assert ratios[0] > 1e-3  # a visible second-order term, so the test below is not vacuous
    np.testing.assert_allclose(ratios[1:], ratios[0], rtol=0.15)


# --------------------------------------------------------------------------------------------------
# An independent implementation: the `entmax` package (float64 on CPU)
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [1e-5, 1.0, 30.0, 1e4])
def test_agrees_with_the_entmax_package(scale):
    entmax_pkg = pytest.importorskip("entmax")
    rng = np.random.default_rng(int(scale * 7) % 1000)
    z = rng.standard_normal((20, 57)) * scale
    z[:5, :3] = z[:5, 3:4]  # tied values inside rows
    z[5:8, :] = np.round(z[5:8, :] / scale) * scale  # coarse grid: ties everywhere
    zt = torch.from_numpy(z)
    np.testing.assert_allclose(R.sparsemax(z), entmax_pkg.sparsemax(zt, dim=-1).numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(R.entmax15(z), entmax_pkg.entmax15(zt, dim=-1).numpy(), rtol=0, atol=1e-12)
    for alpha in (1.25, 2.5):
        # entmax_bisect stops after n_iter halvings of a bracket of width < 1: 60 reach float64 resolution.
        theirs = entmax_pkg.entmax_bisect(zt, alpha, dim=-1, n_iter=60).numpy()
        np.testing.assert_allclose(R.entmax(z, alpha), theirs, rtol=0, atol=1e-9)


@pytest.mark.parametrize("alpha", [2.5, 3.0, 4.0])
def test_weights_next_to_a_tied_group_match_60_digit_arithmetic(alpha):
    """For α > 2 a weight is t^{1/(α−1)}, infinitely steep at t = 0: with a leading score just under the one-hot gap
    and a tied group of runners-up, the group's t* falls to 1e-17 and below, under float64's resolution of a τ
    near −1, and a bisection on [−1, 0] alone rounds the group's weights away (ℓ1 error 1.4e-4 on such a row of
    the bundled model at α = 4). The reference re-solves relative to the nearest score and matches arithmetic
    at 60 digits."""
    from pladis_analysis.testing import entmax_high_precision, tied_group_rows

    rows = tied_group_rows(alpha, margins=[3e-2, 1e-4, 1e-6, -1e-6], group_sizes=[1, 22, 60], length=64)
    ours = R.entmax(rows, alpha)
    truth = np.stack([entmax_high_precision(row, alpha) for row in rows])
    group_weight = truth[:, 1].max()
    assert group_weight > 0 and truth[:, 1].min() == 0, "the rows should span in-support and one-hot groups"
    np.testing.assert_allclose(ours, truth, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("alpha", [9.0, 12.0, 20.0])
def test_weights_next_to_a_tied_group_at_large_alpha_match_high_precision(alpha):
    """At large α the tied group's t* ≈ (δ/k)^{α−1} is tiny (1e-133 at α = 20, δ = 1e-7): the re-centred
    bisection must keep halving until its bracket reaches float64's spacing there, hundreds of halvings past the
    ~55 a τ near −1 needs (capped at 200 halvings, the reference was 1e-6 off at α = 12 and 8e-4 at α = 20 here)."""
    from pladis_analysis.testing import entmax_high_precision, tied_group_rows

    rows = tied_group_rows(alpha, margins=[1e-4, 1e-7], group_sizes=[1, 5], length=24)
    truth = np.stack([entmax_high_precision(row, alpha) for row in rows])   # digits grow with α
    assert truth[:, 1].min() > 0, "the margins should put the tied group in the support"
    np.testing.assert_allclose(R.entmax(rows, alpha), truth, rtol=1e-9, atol=1e-15)


def test_softmax_agrees_with_scipy():
    special = pytest.importorskip("scipy.special")
    z = np.random.default_rng(2).standard_normal((4, 9)) * 50
    np.testing.assert_allclose(R.softmax(z, axis=0), special.softmax(z, axis=0), rtol=1e-14, atol=1e-300)


# --------------------------------------------------------------------------------------------------
# Axes and batches
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(ALL_MAPS))
def test_any_axis_and_batch_equals_a_per_row_loop(name):
    f = ALL_MAPS[name]
    z = np.random.default_rng(3).standard_normal((3, 5, 7)) * 2
    for axis in (0, 1, 2, -1, -2):
        out = f(z, axis=axis)
        moved = np.moveaxis(z, axis, -1)
        expected = np.stack([f(row) for row in moved.reshape(-1, moved.shape[-1])])
        expected = np.moveaxis(expected.reshape(moved.shape), -1, axis)
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-15)


def test_threshold_support_and_entropies_take_axis():
    z = np.random.default_rng(4).standard_normal((4, 6))
    np.testing.assert_array_equal(R.entmax_threshold(z, 1.5, axis=0), R.entmax_threshold(z.T, 1.5))
    assert R.entmax_threshold(z, 1.5, axis=0, keepdims=True).shape == (1, 6)
    np.testing.assert_array_equal(R.support_size(z, 1.5, axis=0), R.support_size(z.T, 1.5))
    assert R.support_size(z, 2.0, keepdims=True).shape == (4, 1)
    p = R.softmax(z, axis=0)
    np.testing.assert_allclose(R.shannon_entropy(p, axis=0), R.shannon_entropy(p.T), rtol=1e-15)
    np.testing.assert_allclose(R.tsallis_entropy(p, 1.5, axis=0), R.tsallis_entropy(p.T, 1.5), rtol=1e-15)
    y = R.softmax(z * 3, axis=0)
    np.testing.assert_allclose(R.fenchel_young_loss(z, y, 1.5, axis=0), R.fenchel_young_loss(z.T, y.T, 1.5),
                               rtol=1e-14)


def test_jacobian_shape_and_value_on_a_small_example():
    z = np.array([[1.0, 0.5, -3.0], [0.0, 0.0, 0.0]])
    J = R.entmax_jacobian(z, 1.5)
    assert J.shape == (2, 3, 3)
    p = R.entmax15(z[0])
    s = np.sqrt(p)  # s = p^{2−α} = √p at α = 1.5; the third entry is off the support
    assert p[2] == 0.0
    np.testing.assert_allclose(J[0], np.diag(s) - np.outer(s, s) / s.sum(), atol=1e-15)
    np.testing.assert_allclose(J[1], (np.eye(3) - 1 / 3) / math.sqrt(3) * 1.0, atol=1e-15)  # s = 1/√3 each
    # axis=0 puts the map axis last: same matrices as on the transposed array
    np.testing.assert_array_equal(R.entmax_jacobian(z.T, 1.5, axis=0), J)
    p_soft = R.softmax(z[0])
    np.testing.assert_allclose(R.entmax_jacobian(z[0], 1.0), np.diag(p_soft) - np.outer(p_soft, p_soft), atol=1e-16)


def test_jacobian_at_a_vanishing_weight_equals_exact_rational_arithmetic():
    """α = 4: s = p^{−2} is rational for rational p, so J = diag(s) − s sᵀ/Σs is exact in fractions. With a weight
    of 10⁻⁹ its s is 10¹⁸ against about 10 for the rest, yet J's entries are of the rest's order; computed as
    s_i − s_i²/Σs its diagonal would keep 10¹⁸·ε ≈ 100 of rounding."""
    from fractions import Fraction

    weights = [Fraction(1, 10**9), Fraction(3, 10), Fraction(2, 5)]
    weights.append(1 - sum(weights))
    s = [1 / w**2 for w in weights]
    total = sum(s)
    exact = np.array([[float((s[i] if i == j else 0) - s[i] * s[j] / total) for j in range(4)] for i in range(4)])
    J = R.entmax_jacobian_at(np.array([float(w) for w in weights]), 4.0)
    assert np.abs(exact).max() < 50.0
    np.testing.assert_allclose(J, exact, rtol=1e-13, atol=1e-13 * np.abs(exact).max())
    p = np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    tie = math.sqrt(0.5) / 2 * np.array([[1, -1, 0], [-1, 1, 0], [0, 0, 0]])
    np.testing.assert_allclose(R.entmax_jacobian_at(p, 1.5), [tie, np.zeros((3, 3))], atol=1e-15,
                               err_msg="two-way tie: s = √½ each, J = (s/2)[[1, −1], [−1, 1]]; one-hot: J = 0")


def test_jacobian_at_checks_its_weights():
    with pytest.raises(ValueError, match="p must be non-negative"):
        R.entmax_jacobian_at([0.5, -0.1, 0.6], 3.0)
    with pytest.raises(ValueError, match="alpha"):
        R.entmax_jacobian_at([0.5, 0.5], 0.5)


# --------------------------------------------------------------------------------------------------
# Masking with -inf
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(ALL_MAPS))
def test_minus_inf_padding_equals_truncation(name):
    f = ALL_MAPS[name]
    z = np.random.default_rng(5).standard_normal((4, 9)) * 3
    padded = np.concatenate([z, np.full((4, 5), -np.inf)], axis=-1)
    out = f(padded)
    np.testing.assert_array_equal(out[:, 9:], 0.0)  # masked weights are exactly 0
    np.testing.assert_allclose(out[:, :9], f(z), rtol=0, atol=1e-14)


def test_minus_inf_padding_in_threshold_support_jacobian_and_loss():
    z = np.random.default_rng(6).standard_normal(8)
    padded = np.concatenate([z, [-np.inf, -np.inf]])
    for alpha in (1.5, 2.0, 1.3):
        assert abs(R.entmax_threshold(padded, alpha) - R.entmax_threshold(z, alpha)) <= 1e-12
        assert R.support_size(padded, alpha) == R.support_size(z, alpha)
        J = R.entmax_jacobian(padded, alpha)
        np.testing.assert_allclose(J[:8, :8], R.entmax_jacobian(z, alpha), atol=1e-12)
        np.testing.assert_array_equal(J[8:], 0.0)
        y = R.softmax(z * 2)
        assert abs(R.fenchel_young_loss(padded, np.concatenate([y, [0, 0]]), alpha)
                   - R.fenchel_young_loss(z, y, alpha)) <= 1e-12
    # mass on a masked score is outside the loss's domain
    assert R.fenchel_young_loss(padded, np.r_[np.zeros(8), 0.5, 0.5], 1.5) == np.inf


def test_all_masked_row_gives_zeros_not_nan():
    z = np.array([[0.3, -np.inf, 1.0], [-np.inf, -np.inf, -np.inf]])
    for name, f in ALL_MAPS.items():
        out = f(z)
        assert np.isfinite(out).all(), name
        np.testing.assert_array_equal(out[1], 0.0)
    for alpha in (1.5, 2.0, 1.7):
        assert R.entmax_threshold(z, alpha)[1] == -np.inf
        assert R.support_size(z, alpha)[1] == 0
        np.testing.assert_array_equal(R.entmax_jacobian(z, alpha)[1], 0.0)
    np.testing.assert_array_equal(R.entmax_jacobian(z, 1.0)[1], 0.0)


# --------------------------------------------------------------------------------------------------
# Entropies, Fenchel–Young, PLADIS
# --------------------------------------------------------------------------------------------------

def test_entropies_known_values():
    d = 7
    uniform = np.full(d, 1.0 / d)
    assert abs(R.shannon_entropy(uniform) - math.log(d)) <= 8 * EPS
    for alpha in (0.5, 1.5, 2.0, 3.0):
        expected = (1 - d ** (1 - alpha)) / (alpha * (alpha - 1))
        assert abs(R.tsallis_entropy(uniform, alpha) - expected) <= 16 * EPS
    p = np.array([0.5, 0.3, 0.2, 0.0])
    assert R.tsallis_entropy(p, 1.0) == R.shannon_entropy(p)
    assert abs(R.tsallis_entropy(p, 2.0) - (1 - np.sum(p**2)) / 2) <= 4 * EPS
    # H^T_α → Shannon as α → 1, at rate O(α − 1)
    assert abs(R.tsallis_entropy(p, 1 + 1e-6) - R.shannon_entropy(p)) <= 1e-5
    assert R.shannon_entropy([1.0, 0.0]) == 0.0


def test_fenchel_young_softmax_is_the_logistic_loss():
    # α = 1, one-hot y: L = ⟨ŷ − y, z⟩ + H(ŷ) − 0 = logsumexp(z) − z_y (cross-entropy).
    z = np.array([1.0, -0.5, 2.0, 0.3])
    for label in range(4):
        y = np.eye(4)[label]
        expected = math.log(np.exp(z).sum()) - z[label]
        assert abs(R.fenchel_young_loss(z, y, 1.0) - expected) <= 1e-14


def test_fenchel_young_sparsemax_loss_known_value():
    # α = 2 (sparsemax loss, Martins & Astudillo 2016): L = ½‖y − z‖² − ½‖p − z‖² with p = sparsemax(z)
    # (their eq. 18 rewritten); ŷ = y gives zero.
    z = np.array([0.5, 0.2, 0.1])
    p = R.sparsemax(z)
    y = np.array([0.0, 1.0, 0.0])
    expected = 0.5 * np.sum((y - z) ** 2) - 0.5 * np.sum((p - z) ** 2)
    assert abs(R.fenchel_young_loss(z, y, 2.0) - expected) <= 1e-15
    assert abs(R.fenchel_young_loss(z, p, 2.0)) <= 1e-15


def test_pladis_weights_known_value_and_softmax_at_zero():
    z = np.array([3.0, 0.5, -np.inf, 0.0])
    S, E = R.softmax(z), R.entmax15(z)
    A = R.pladis_weights(z, 2.0, 1.5)
    np.testing.assert_allclose(A, 2 * E - S, atol=1e-16)
    assert E[1] == 0 and A[1] < 0 and A[2] == 0  # off-support negative, masked exactly zero
    np.testing.assert_array_equal(R.pladis_weights(z, 0.0, 1.5), S)
    np.testing.assert_array_equal(R.pladis_weights(z, 0, 3.0), S)


# --------------------------------------------------------------------------------------------------
# Errors: every bad input raises ValueError naming the argument and its value
# --------------------------------------------------------------------------------------------------

Z = np.array([0.5, -1.0, 2.0])
BAD_ALPHAS = [1.0, 0.5, -2.0, float("nan"), float("inf"), "1.5x", None]


@pytest.mark.parametrize("alpha", BAD_ALPHAS)
def test_bad_alpha_raises(alpha):
    calls = [lambda: R.entmax(Z, alpha), lambda: R.entmax_threshold(Z, alpha), lambda: R.support_size(Z, alpha),
             lambda: R.pladis_weights(Z, 2.0, alpha)]
    if alpha != 1.0:  # α = 1 means softmax for the Jacobian and the loss
        calls += [lambda: R.entmax_jacobian(Z, alpha), lambda: R.fenchel_young_loss(Z, R.softmax(Z), alpha)]
    for call in calls:
        with pytest.raises(ValueError, match="alpha") as info:
            call()
        assert repr(alpha) in str(info.value) or str(alpha) in str(info.value)


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_tsallis_alpha_raises(alpha):
    with pytest.raises(ValueError, match="alpha"):
        R.tsallis_entropy([0.5, 0.5], alpha)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_plus_inf_scores_raise(bad):
    z = np.array([[0.0, 1.0], [2.0, bad]])
    calls = [R.softmax, R.sparsemax, R.entmax15, lambda x: R.entmax(x, 1.3), lambda x: R.entmax_threshold(x, 1.5),
             lambda x: R.support_size(x, 2.0), lambda x: R.entmax_jacobian(x, 1.5), lambda x: R.pladis_weights(x),
             lambda x: R.fenchel_young_loss(x, np.full((2, 2), 0.5))]
    for call in calls:
        with pytest.raises(ValueError, match=r"z must not contain NaN or \+inf.*index \(1, 1\)"):
            call(z)


@pytest.mark.parametrize("scale", [-0.5, float("nan"), float("inf"), "two"])
def test_bad_pladis_scale_raises(scale):
    with pytest.raises(ValueError, match="scale") as info:
        R.pladis_weights(Z, scale, 1.5)
    assert str(scale) in str(info.value)


def test_bad_method_axis_and_shapes_raise():
    with pytest.raises(ValueError, match="method='newton'"):
        R.entmax(Z, 1.5, method="newton")
    with pytest.raises(ValueError, match="length 0"):
        R.softmax(np.zeros((3, 0)))
    with pytest.raises(ValueError, match="scalar"):
        R.sparsemax(1.0)
    with pytest.raises(ValueError):  # numpy's AxisError is a ValueError
        R.entmax15(Z, axis=3)


def test_bad_distributions_raise():
    with pytest.raises(ValueError, match="y must have the shape of z"):
        R.fenchel_young_loss(Z, np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match=r"y must sum to 1.*sum of 0\.(9|8999)"):
        R.fenchel_young_loss(Z, np.array([0.5, 0.2, 0.2]))
    with pytest.raises(ValueError, match="y must be non-negative.*-0.5"):
        R.fenchel_young_loss(Z, np.array([1.0, 0.5, -0.5]))
    with pytest.raises(ValueError, match="p must be non-negative.*-1"):
        R.shannon_entropy(R.pladis_weights([4.0, 0.0, -9.0], 2.0, 1.5) * 0 + np.array([2.0, 0.0, -1.0]))
    with pytest.raises(ValueError, match="p must be finite.*nan"):
        R.tsallis_entropy([0.5, float("nan")], 1.5)
