"""Hopfield retrieval: the bounds of THEORY.md hold on every trial; the PLADIS one-hot identity is exact."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from pladis_analysis.maps import reference as ref
from pladis_analysis.theory import (
    dense_retrieval_bound,
    entmax_retrieval_bound,
    is_entmax_fixed_point,
    retrieval_geometry,
    retrieve,
    sample_patterns,
)

# A trial: patterns with unequal norms (norm spread up to 10x), a query near one of them, and β.
trials = st.builds(
    lambda seed, dim, n, noise, norm_spread, beta: _trial(seed, dim, n, noise, norm_spread, beta),
    seed=st.integers(0, 2**31 - 1), dim=st.integers(2, 16), n=st.integers(2, 24),
    noise=st.floats(0.0, 2.0), norm_spread=st.floats(0.0, 1.0), beta=st.floats(0.05, 20.0),
)


def _trial(seed, dim, n, noise, norm_spread, beta):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((dim, n))
    X /= np.linalg.norm(X, axis=0)
    X *= 10.0 ** (norm_spread * rng.uniform(-0.5, 0.5, size=n))
    x = X[:, rng.integers(n)] + noise * rng.standard_normal(dim) / np.sqrt(dim)
    return X, x, beta


def _slack(bound: float, spread: float) -> float:
    # Rounding in X ρ(z) − ξ_μ is a few ulps of the pattern scale; the bound itself is exact.
    return bound + 1e-12 * max(spread, 1.0)


@pytest.mark.property
@given(trials)
def test_dense_bound_holds(trial):
    X, x, beta = trial
    g = retrieval_geometry(X, x, beta)
    err = np.linalg.norm(retrieve(X, x, beta, "softmax") - X[:, g.winner])
    assert err <= _slack(dense_retrieval_bound(X, x, beta), g.spread)


@pytest.mark.property
@given(trials, st.floats(1.01, 2.0))
def test_entmax_bound_holds(trial, alpha):
    X, x, beta = trial
    g = retrieval_geometry(X, x, beta)
    err = np.linalg.norm(retrieve(X, x, beta, f"entmax:{alpha}") - X[:, g.winner])
    assert err <= _slack(entmax_retrieval_bound(X, x, beta, alpha), g.spread)


@pytest.mark.property
@given(trials)
def test_entmax_bound_tends_to_dense_bound(trial):
    X, x, beta = trial
    dense = dense_retrieval_bound(X, x, beta)
    near = entmax_retrieval_bound(X, x, beta, 1.0 + 1e-7)
    # (1 − εΔ)^{1/ε} = e^{−Δ}(1 − εΔ²/2 + O(ε²)): relative gap ~ εΔ²/2.
    gap = retrieval_geometry(X, x, beta).gap
    assert near == pytest.approx(dense, rel=1e-7 * (1 + gap**2) + 1e-9, abs=1e-300)


@pytest.mark.property
@given(trials, st.floats(1.1, 2.0), st.floats(0.0, 4.0))
def test_pladis_mirrors_softmax_error_when_entmax_is_one_hot(trial, alpha, lam):
    X, x, beta = trial
    g = retrieval_geometry(X, x, beta)
    assume(g.gap >= 1.0 / (alpha - 1.0))  # entmax is one-hot on μ exactly when the gap reaches 1/(α−1)
    xi = X[:, g.winner]
    dense_error = retrieve(X, x, beta, "softmax") - xi
    pladis_error = retrieve(X, x, beta, lambda z: ref.pladis_weights(z, lam, alpha)) - xi
    np.testing.assert_allclose(pladis_error, (1.0 - lam) * dense_error, rtol=1e-9,
                               atol=1e-12 * (1 + lam) * max(g.spread, 1.0))


@pytest.mark.property
@given(st.integers(0, 2**31 - 1), st.integers(2, 12), st.integers(2, 12), st.floats(0.1, 10.0),
       st.floats(1.1, 2.0))
def test_fixed_point_condition_is_exact(seed, dim, n, beta, alpha):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((dim, n))
    mu = int(rng.integers(n))
    inner = X.T @ X[:, mu]
    margin = beta * (inner[mu] - np.delete(inner, mu).max())
    assume(abs(margin - 1.0 / (alpha - 1.0)) > 1e-9)  # not on the boundary, where rounding decides
    p = ref.entmax(beta * inner, alpha)
    one_hot_on_mu = p[mu] == 1.0 and np.count_nonzero(p) == 1
    assert is_entmax_fixed_point(X, mu, beta, alpha) == one_hot_on_mu
    if one_hot_on_mu:
        np.testing.assert_array_equal(retrieve(X, X[:, mu], beta, f"entmax:{alpha}"), X[:, mu])


def test_bad_input_is_named():
    X = np.eye(3)
    with pytest.raises(ValueError, match="beta"):
        retrieve(X, X[:, 0], 0.0)
    with pytest.raises(ValueError, match="alpha"):
        entmax_retrieval_bound(X, X[:, 0], 1.0, 2.5)
    with pytest.raises(ValueError, match="query"):
        retrieve(X, np.ones(4), 1.0)
    with pytest.raises(ValueError, match="map name"):
        retrieve(X, X[:, 0], 1.0, "sparsest")
    with pytest.raises(ValueError, match="index must be an integer"):
        is_entmax_fixed_point(X, 1.5, 1.0, 1.5)


def test_sample_patterns_families():
    rng = np.random.default_rng(0)
    np.testing.assert_allclose(np.linalg.norm(sample_patterns("equal_norm", 5, 40, rng), axis=0), 1.0, rtol=1e-12)
    norms = np.linalg.norm(sample_patterns("unequal_norm", 5, 400, rng), axis=0)
    assert norms.min() >= 10**-0.5 and norms.max() <= 10**0.5 and norms.max() / norms.min() > 5
    with pytest.raises(ValueError, match="family must be one of"):
        sample_patterns("orthogonal", 5, 4, rng)


def test_sample_score_rows_families():
    from pladis_analysis.theory import SCORE_FAMILIES, sample_score_rows

    rng = np.random.default_rng(0)
    for family in SCORE_FAMILIES:
        assert sample_score_rows(family, 3, 5, rng).shape == (3, 5)
    rounded = sample_score_rows("rounded", 50, 8, rng)
    np.testing.assert_allclose(rounded * 10, np.round(rounded * 10), atol=1e-9)
    with pytest.raises(ValueError, match="family must be one of"):
        sample_score_rows("uniform", 3, 5, rng)
