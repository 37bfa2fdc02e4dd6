"""The PLADIS energy: its conjugate term's gradient is entmax (exact), and the PLADIS-weighted Hopfield update
descends it for λ ∈ [0, 1] (a bound, asserted on every trial). For λ > 1 descent is measured, not asserted
(``experiments/hopfield_energy.py``)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.special import logsumexp

from pladis_analysis.maps import reference as ref
from pladis_analysis.theory import entmax_conjugate, pladis_energy, pladis_step, retrieve

EPS = np.finfo(np.float64).eps

score_rows = st.builds(lambda seed, d, scale: np.random.default_rng(seed).standard_normal(d) * scale,
                       seed=st.integers(0, 2**31 - 1), d=st.integers(2, 30), scale=st.floats(0.01, 30.0))
trials = st.builds(
    lambda seed, dim, n, noise, spread: _trial(seed, dim, n, noise, spread),
    seed=st.integers(0, 2**31 - 1), dim=st.integers(2, 12), n=st.integers(2, 20), noise=st.floats(0.0, 2.0),
    spread=st.floats(0.0, 1.0))


def _trial(seed, dim, n, noise, spread):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((dim, n))
    X /= np.linalg.norm(X, axis=0)
    X *= 10.0 ** (spread * rng.uniform(-0.5, 0.5, size=n))  # unequal norms, up to 10x apart
    return X, X[:, rng.integers(n)] + noise * rng.standard_normal(dim) / np.sqrt(dim)


def test_conjugate_at_alpha_one_is_log_sum_exp_and_at_two_a_known_value():
    z = np.array([[3.0, 1.0, -2.0], [800.0, 799.0, -1e3]])
    np.testing.assert_allclose(entmax_conjugate(z, 1.0), logsumexp(z, axis=-1), rtol=1e-15)
    # sparsemax of (3, 1, −2) is one-hot (gap 2 ≥ 1): Ψ* = 3 + H(e₁) = 3; of (0.2, 0, ·): p = (0.6, 0.4, 0),
    # Ψ* = 0.12 + (1 − 0.36 − 0.16)/2 = 0.36
    np.testing.assert_allclose(entmax_conjugate(np.array([[3.0, 1.0, -2.0], [0.2, 0.0, -5.0]]), 2.0), [3.0, 0.36],
                               rtol=1e-15)
    np.testing.assert_allclose(entmax_conjugate(z.T, 1.0, axis=0), logsumexp(z, axis=-1), rtol=1e-15)
    # next to α = 1 it tends to log-sum-exp (THEORY: O(α − 1)); the textbook Tsallis form's 1 − Σ p^α cancelled to
    # rounding/(α − 1), 9e-5 off at α − 1 = 1e-12 (what remains there, 1e-10, is the reference entmax's own error
    # so close to α = 1, which enters the conjugate at second order only)
    row = np.array([1.0, 0.3, -0.5, 2.0])
    for eps in (1e-6, 1e-9, 1e-12, 1e-14):
        assert abs(entmax_conjugate(row, 1.0 + eps) - logsumexp(row)) < 2 * eps + 1e-9


@pytest.mark.property
@given(score_rows, st.sampled_from([1.0, 1.25, 1.5, 2.0, 3.0]), st.integers(0, 2**31 - 1))
def test_conjugate_gradient_is_entmax(z, alpha, seed):
    # Danskin: ∇Ψ*_α(z) = α-entmax(z), so ∇Φ_λ = the PLADIS weights. Central differences along a random
    # direction; Ψ* is C¹ (its gradient is continuous), so they converge even across support changes.
    u = np.random.default_rng(seed).standard_normal(z.size)
    h = 1e-6 * max(1.0, np.abs(z).max())
    slope = (entmax_conjugate(z + h * u, alpha) - entmax_conjugate(z - h * u, alpha)) / (2 * h)
    p = ref.softmax(z) if alpha == 1.0 else ref.entmax(z, alpha)
    assert abs(slope - p @ u) <= 1e-6 * np.abs(u).sum() * max(1.0, np.abs(z).max())


@pytest.mark.property
@given(trials, st.floats(0.05, 20.0), st.sampled_from([1.25, 1.5, 2.0, 3.0]), st.floats(0.0, 1.0))
def test_pladis_update_descends_its_energy_for_scale_at_most_one(trial, beta, alpha, scale):
    X, x = trial
    before = pladis_energy(X, x, beta, alpha, scale)
    x_next = pladis_step(X, x, beta, alpha, scale)
    after = pladis_energy(X, x_next, beta, alpha, scale)
    # rounding: a few ulps of the terms E is formed from: ½‖x‖², Φ/β = ½‖x‖² − E and the scores' shift max|z|/β
    terms = max(x @ x, x_next @ x_next) + max(abs(before), abs(after)) + np.abs(X.T @ np.stack([x, x_next], 1)).max()
    assert after <= before + 64 * EPS * terms


def test_step_is_retrieval_with_pladis_weights_and_energy_ends_are_hopfield_energies():
    X, x = _trial(3, 6, 9, 0.5, 0.5)
    np.testing.assert_allclose(pladis_step(X, x, 4.0, 1.5, 2.0),
                               retrieve(X, x, 4.0, lambda z: ref.pladis_weights(z, 2.0, 1.5)), rtol=1e-15)
    z = 4.0 * X.T @ x
    assert pladis_energy(X, x, 4.0, 1.5, 0.0) == pytest.approx(0.5 * x @ x - logsumexp(z) / 4.0, rel=1e-14)
    assert pladis_energy(X, x, 4.0, 1.5, 1.0) == pytest.approx(0.5 * x @ x - entmax_conjugate(z, 1.5) / 4.0,
                                                               rel=1e-14)


def test_bad_arguments_name_themselves():
    X, x = _trial(0, 4, 5, 0.1, 0.0)
    with pytest.raises(ValueError, match=r"scale \(the PLADIS λ\) must be"):
        pladis_energy(X, x, 1.0, 1.5, -1.0)
    with pytest.raises(ValueError, match="beta must be"):
        pladis_step(X, x, 0.0)
    with pytest.raises(ValueError, match="alpha"):
        pladis_energy(X, x, 1.0, 0.5, 1.0)
    with pytest.raises(ValueError, match="alpha > 1"):  # the energy of a step that pladis_step refuses
        pladis_energy(X, x, 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="z must be finite"):
        entmax_conjugate([1.0, np.nan], 1.5)
