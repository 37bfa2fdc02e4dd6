"""The torch path of the maps against its NumPy float64 twin, the `entmax` package, and its own invariants.

Climbs the ladder of STYLE.md: every map and dtype against ``pladis_analysis.maps.reference`` at the one
tolerance table (a low-precision output is compared with the reference evaluated on the SAME rounded
input, upcast); batched = per-row; −inf padding = truncation; ``gradcheck`` in float64 for every autograd
Function; backward = reference Jacobian-vector products; the general-α error bound; input errors.
"""

from __future__ import annotations

import math

import entmax as entmax_pkg
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pladis_analysis import maps
from pladis_analysis.maps import _threshold
from pladis_analysis.maps import reference as R
from pladis_analysis.testing import assert_close, tolerance

from hypothesis_budget import examples

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]

# name -> (torch map, reference map, α of the entmax part or None for softmax)
MAPS = {
    "softmax": (maps.softmax, R.softmax, None),
    "sparsemax": (maps.sparsemax, R.sparsemax, 2.0),
    "entmax15": (maps.entmax15, R.entmax15, 1.5),
    "entmax(1.25)": (lambda z, **k: maps.entmax(z, 1.25, **k), lambda z, axis=-1: R.entmax(z, 1.25, axis=axis), 1.25),
    "entmax(1.75)": (lambda z, **k: maps.entmax(z, 1.75, **k), lambda z, axis=-1: R.entmax(z, 1.75, axis=axis), 1.75),
    "entmax(3)": (lambda z, **k: maps.entmax(z, 3.0, **k), lambda z, axis=-1: R.entmax(z, 3.0, axis=axis), 3.0),
    "pladis(2, 1.5)": (lambda z, **k: maps.pladis_weights(z, 2.0, 1.5, **k),
                       lambda z, axis=-1: R.pladis_weights(z, 2.0, 1.5, axis=axis), 1.5),
    "pladis(1.5, 2)": (lambda z, **k: maps.pladis_weights(z, 1.5, 2.0, **k),
                       lambda z, axis=-1: R.pladis_weights(z, 1.5, 2.0, axis=axis), 2.0),
    "pladis(3, 1.25)": (lambda z, **k: maps.pladis_weights(z, 3.0, 1.25, **k),
                        lambda z, axis=-1: R.pladis_weights(z, 3.0, 1.25, axis=axis), 1.25),
}


def _scores(shape, scale=1.0, seed=0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def _reference(ref_map, z: torch.Tensor, axis: int = -1) -> np.ndarray:
    """The float64 reference on exactly the values the torch path saw (after rounding to z.dtype)."""
    return ref_map(z.detach().to(torch.float64).numpy(), axis=axis)


def _assert_matches_reference(p: torch.Tensor, z: torch.Tensor, name: str, label: str) -> None:
    """``p`` = MAPS[name] of ``z`` against the reference on the same (rounded) input, at the tolerance table.

    No widening for α > 2, although a weight p = t^{1/(α−1)} is not Lipschitz in t at the support's edge: the
    search re-solves such rows relative to the nearest score (see ``test_entmax_next_to_a_tied_group``)."""
    _, ref_map, _ = MAPS[name]
    assert_close(p, _reference(ref_map, z), name=label)


# --------------------------------------------------------------------------------------------------
# values against the reference
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(MAPS))
@pytest.mark.parametrize("scale", [1e-5, 1.0, 10.0, 1e4])
def test_matches_reference(name, dtype, scale):
    fn, ref, _ = MAPS[name]
    for d in (1, 7, 77):
        z = _scores((3, 5, d), scale=scale, seed=d, dtype=dtype)
        p = fn(z)
        assert p.dtype == dtype and p.shape == z.shape
        _assert_matches_reference(p, z, name, f"{name} d={d} scale={scale}")


@pytest.mark.parametrize("name", list(MAPS))
def test_other_dim_and_noncontiguous(name):
    fn, ref, _ = MAPS[name]
    z = _scores((6, 9, 4), seed=1, dtype=torch.float32)
    assert_close(fn(z, dim=1), _reference(ref, z, axis=1), name=f"{name} dim=1")
    zt = z.transpose(0, 2)  # (4, 9, 6), non-contiguous
    assert_close(fn(zt), _reference(ref, zt), name=f"{name} non-contiguous")


@pytest.mark.parametrize("name", list(MAPS))
def test_batched_equals_per_row(name):
    fn, _, _ = MAPS[name]
    z = _scores((40, 33), scale=2.0, seed=2)
    batched = fn(z)
    rows = torch.stack([fn(z[i]) for i in range(z.shape[0])])
    assert_close(batched, rows, name=f"{name} batched vs per row")


@pytest.mark.parametrize("name", list(MAPS))
def test_minus_inf_padding_equals_truncation(name):
    fn, _, _ = MAPS[name]
    z = _scores((8, 13), scale=3.0, seed=3)
    padded = torch.cat([z, torch.full((8, 6), -math.inf, dtype=z.dtype)], dim=-1)
    p = fn(padded)
    assert torch.equal(p[:, 13:], torch.zeros(8, 6, dtype=z.dtype)), "masked entries must get weight exactly 0"
    assert_close(p[:, :13], fn(z), name=f"{name} padded vs truncated")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(MAPS))
def test_fully_masked_row_gives_zeros_and_zero_gradient(name, dtype):
    fn, _, _ = MAPS[name]
    z = _scores((3, 5), seed=4, dtype=dtype)
    z[1] = -math.inf
    z.requires_grad_(True)
    p = fn(z)
    assert torch.equal(p[1].detach(), torch.zeros(5, dtype=dtype))
    assert torch.isfinite(p).all()
    (p * torch.arange(5, dtype=dtype)).sum().backward()
    assert torch.isfinite(z.grad).all() and torch.equal(z.grad[1], torch.zeros(5, dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_pladis_at_scale_0_is_softmax_bit_for_bit_and_at_1_is_entmax(dtype):
    z = _scores((16, 77), scale=3.0, seed=5, dtype=dtype)
    for alpha in (1.5, 2.0, 1.25):
        assert torch.equal(maps.pladis_weights(z, 0.0, alpha), maps.softmax(z))
        assert torch.equal(maps.pladis_weights(z, 1.0, alpha), maps.entmax(z, alpha))


def test_entmax_dispatches_exact_alphas():
    z = _scores((10, 20), seed=6)
    assert torch.equal(maps.entmax(z, 2.0), maps.sparsemax(z))
    assert torch.equal(maps.entmax(z, 1.5), maps.entmax15(z))


def test_gradient_keeps_input_dtype():
    for dtype in DTYPES:
        z = _scores((4, 9), seed=7, dtype=dtype).requires_grad_(True)
        for name, (fn, _, _) in MAPS.items():
            z.grad = None
            fn(z).pow(2).sum().backward()
            assert z.grad.dtype == dtype and torch.isfinite(z.grad).all(), name


# --------------------------------------------------------------------------------------------------
# gradients
# --------------------------------------------------------------------------------------------------

def _away_from_kinks(z: torch.Tensor, alpha: float | None, margin: float = 1e-3) -> None:
    """Fail loudly if an entry sits near the support boundary (finite differences would straddle a kink)."""
    if alpha is None:
        return
    x = z.detach().numpy()
    tau = R.entmax_threshold(x, alpha, keepdims=True)
    gap = np.abs((alpha - 1.0) * x - tau)
    assert gap[np.isfinite(gap)].min() > margin, "test input too close to a tie with the threshold"


@pytest.mark.parametrize("name", list(MAPS))
def test_gradcheck_float64(name):
    fn, _, alpha = MAPS[name]
    # distinct, well-spread scores (a random permutation of a grid) keep every entry off the kinks
    g = torch.Generator().manual_seed(8)
    z = (torch.stack([torch.randperm(7, generator=g) for _ in range(6)]).to(torch.float64) * 0.41
         + 0.05 * torch.rand(6, 7, generator=g, dtype=torch.float64)).reshape(2, 3, 7)
    z[1, 2, 0] = -math.inf  # a masked entry: its gradient is 0
    _away_from_kinks(z, alpha)
    z.requires_grad_(True)
    assert torch.autograd.gradcheck(fn, (z,), eps=1e-6, atol=1e-7)
    assert torch.autograd.gradcheck(lambda x: fn(x, dim=1), (z,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", list(MAPS))
def test_double_backward_jacobian_vector_product(name):
    """Under create_graph=True the backward is differentiable in its incoming gradient, so the double-backward
    JVP (torch.autograd.functional.jvp) equals J dz, which is Jᵀ dz (J is symmetric): the plain backward's."""
    fn, _, alpha = MAPS[name]
    gen = torch.Generator().manual_seed(21)
    z = torch.randn(4, 9, generator=gen, dtype=torch.float64) * 2
    z[1, :3] = -math.inf
    dz = torch.randn(4, 9, generator=gen, dtype=torch.float64)
    _away_from_kinks(z, alpha)
    _, jvp = torch.autograd.functional.jvp(fn, z, dz)
    x = z.clone().requires_grad_(True)
    (vjp,) = torch.autograd.grad(fn(x), x, dz)
    assert_close(jvp, vjp, name=f"{name} double-backward JVP")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("name", list(MAPS))
def test_backward_equals_reference_jvp(name, dtype):
    fn, _, alpha = MAPS[name]
    z = _scores((12, 30), scale=2.0, seed=9, dtype=dtype).requires_grad_(True)
    v = _scores((12, 30), seed=10, dtype=dtype)
    (fn(z) * v).sum().backward()
    x = z.detach().to(torch.float64).numpy()
    if name == "softmax":
        jac = R.entmax_jacobian(x, 1.0)
    elif name.startswith("pladis"):
        lam = float(name[len("pladis("):].split(",")[0])
        jac = (1.0 - lam) * R.entmax_jacobian(x, 1.0) + lam * R.entmax_jacobian(x, alpha)
    else:
        jac = R.entmax_jacobian(x, alpha)
    expected = np.einsum("rij,rj->ri", jac, v.to(torch.float64).numpy())  # J symmetric: Jᵀv = Jv
    # the gradient entries are O(|v|) ~ 1, up to 3 for λ = 3: scale the float32 tolerance accordingly
    assert_close(z.grad, expected, atol=1e-9 if dtype == torch.float64 else 2e-5, rtol=1e-6 if dtype == torch.float64 else 1e-4,
                 name=f"{name} vjp")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("alpha", [2.5, 3.0, 4.0, 6.0])
def test_backward_next_to_a_vanishing_weight(alpha, dtype):
    """For α > 2, s = p^{2−α} is largest at the smallest weight (up to 10³² here) while J v stays of the other
    entries' order: the backward measures v from the entry of largest s so that it does not cancel that entry
    against itself. Checked on the functions autograd calls (entmax and PLADIS) at the weights they saw."""
    from pladis_analysis.maps import functions
    from pladis_analysis.testing import assert_entmax_jvp_close, edge_weight_rows

    p = torch.from_numpy(edge_weight_rows(12, seed=int(alpha * 10))).to(dtype)
    v = _scores(p.shape, seed=11, dtype=dtype)
    s = torch.where(p > 0, p.pow(2.0 - alpha), torch.zeros_like(p))
    assert_entmax_jvp_close(functions.entmax_vjp((s,), alpha, v), p, v, alpha, name="entmax backward")
    # PLADIS' backward is softmax's JVP lerped with this one: at λ = 1 it is this one alone
    S = torch.softmax(_scores(p.shape, seed=12, dtype=dtype), dim=-1)
    assert_entmax_jvp_close(functions.pladis_vjp((S, s), 1.0, alpha, v), p, v, alpha, name="PLADIS backward")
    # what the centring is for: the uncentred product misses by far more than rounding
    with pytest.raises(AssertionError, match="off the"):
        assert_entmax_jvp_close(_threshold.entmax_jvp(s, None, v), p, v, alpha, name="uncentred")


# --------------------------------------------------------------------------------------------------
# agreement with the `entmax` package
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ours, theirs", [
    (maps.sparsemax, entmax_pkg.sparsemax),
    (maps.entmax15, entmax_pkg.entmax15),
    (lambda z: maps.entmax(z, 1.25), lambda z: entmax_pkg.entmax_bisect(z, 1.25, n_iter=60)),
    (lambda z: maps.entmax(z, 1.75), lambda z: entmax_pkg.entmax_bisect(z, 1.75, n_iter=60)),
], ids=["sparsemax", "entmax15", "bisect(1.25)", "bisect(1.75)"])
def test_agrees_with_entmax_package(ours, theirs):
    z = _scores((64, 50), scale=2.0, seed=11).requires_grad_(True)
    v = _scores((64, 50), seed=12)
    p_ours, p_theirs = ours(z), theirs(z)
    assert_close(p_ours, p_theirs.detach(), name="forward")
    g_ours, = torch.autograd.grad((p_ours * v).sum(), z)
    g_theirs, = torch.autograd.grad((p_theirs * v).sum(), z)
    assert_close(g_ours, g_theirs, atol=1e-9, rtol=1e-7, name="backward")


# --------------------------------------------------------------------------------------------------
# the general-α error bound (module docstring of pladis_analysis.maps._threshold)
# --------------------------------------------------------------------------------------------------

def _error_bound(x: np.ndarray, alpha: float, dtype: torch.dtype) -> np.ndarray:
    """2 max(ε, 2u q Σt^{q−1}) + rounding 8u (1 + q Σt^{q−1}), per row, with t from the float64 τ*."""
    q = 1.0 / (alpha - 1.0)
    u = torch.finfo(_threshold.working_dtype(dtype)).eps
    eps = _threshold.SUM_TOLERANCE[_threshold.working_dtype(dtype)]
    tau = R.entmax_threshold(x, alpha, keepdims=True)
    t = np.clip((alpha - 1.0) * x - tau, 0.0, None)
    slope = q * np.where(t > 0, np.where(t > 0, t, 1.0) ** (q - 1.0), 0.0).sum(axis=-1)
    return 2.0 * np.maximum(eps, 2.0 * u * slope) + 8.0 * u * (1.0 + slope)


@pytest.mark.property
@settings(max_examples=examples(40))
@given(alpha=st.floats(1.05, 4.0), d=st.integers(1, 200), log_scale=st.floats(-3.0, 3.0),
       dtype=st.sampled_from([torch.float64, torch.float32]), seed=st.integers(0, 2**16))
def test_general_alpha_error_bound(alpha, d, log_scale, dtype, seed):
    z = _scores((4, d), scale=10.0**log_scale, seed=seed, dtype=dtype)
    p = maps.entmax(z, alpha)
    x = z.to(torch.float64).numpy()
    exact = R.entmax(x, alpha)
    err = np.abs(p.to(torch.float64).numpy() - exact).sum(axis=-1)
    bound = _error_bound(x, alpha, dtype)
    assert (err <= bound).all(), f"l1 error {err.max():.3g} exceeds bound {bound[err.argmax()]:.3g}"


def test_exact_paths_are_exact_in_float64():
    # α = 2 and α = 1.5 end on the closed form on the support: agreement to rounding, far below ε
    z = _scores((200, 77), scale=2.0, seed=13)
    for alpha, ref in ((2.0, R.sparsemax), (1.5, R.entmax15)):
        assert_close(maps.entmax(z, alpha), ref(z.numpy()), atol=1e-14, rtol=0, name=f"alpha={alpha}")


@pytest.mark.property
@settings(max_examples=examples(40))
@given(alpha=st.floats(2.05, 6.0), log_margin=st.floats(-7.0, -1.0), sign=st.sampled_from([1.0, -1.0]),
       group=st.integers(1, 150), length=st.integers(2, 160), dtype=st.sampled_from([torch.float64, torch.float32]),
       seed=st.integers(0, 2**16))
def test_entmax_next_to_a_tied_group(alpha, log_margin, sign, group, length, dtype, seed):
    """α > 2 with τ* next to a tied group (a leading score δ under the one-hot gap 1/(α−1), k runners-up tied
    at 0): the group's t* ≈ (δ/k)^{α−1} falls far below the resolution of a τ near −1, where its weights ≈ δ/k
    are infinitely sensitive to τ (bisection on [−1, 0] alone left ℓ1 errors of 1e-4…0.2 in float32). The
    search re-centres on the nearest score; the weights meet the tolerance table."""
    from pladis_analysis.testing import tied_group_rows

    k = min(group, length - 1)
    z = torch.from_numpy(tied_group_rows(alpha, [sign * 10.0**log_margin], [k], length, seed=seed)).to(dtype)
    p = maps.entmax(z, alpha)
    assert_close(p, R.entmax(z.to(torch.float64).numpy(), alpha), name=f"alpha={alpha}, k={k}")


@pytest.mark.parametrize("alpha", [8.0, 12.0])
@pytest.mark.parametrize("dtype", DTYPES)
def test_entmax_large_alpha_on_long_rows_of_close_scores(alpha, dtype):
    """Large α, long rows, scores within 10⁻³ of each other: far from τ*, Σt^q is in the thousands and
    ‖t‖_q = (Σt^q)^{α−1} overflows float32; the Newton step on ‖t‖_q − 1 must not turn that into a step of 0
    (read as "cannot move": such rows were left up to 0.1 off)."""
    z = _scores((6, 4096), scale=1e-4, seed=21, dtype=dtype)
    assert_close(maps.entmax(z, alpha), R.entmax(z.to(torch.float64).numpy(), alpha), name=f"alpha={alpha}")


@pytest.mark.parametrize("alpha", [1 + 1e-3, 1 + 1e-4, 1 + 1e-6])
@pytest.mark.parametrize("dtype", DTYPES)
def test_alpha_next_to_one_computes_in_float64(alpha, dtype):
    """Next to α = 1, z' = (α − 1)(z − max z) and t = z' − τ sit by 1, so a float32 search keeps only about
    ε/(α − 1) of the score differences: float32 weights failed the float32 tolerance on 13% of the elements at
    α = 1.0001 and 85% at 1 + 10⁻⁶. Below FLOAT32_MIN_ALPHA = 1.01 the maps compute in float64 whatever the input
    dtype; at 1.001 float32 itself still held (the limit's margin), which the float32 call below checks."""
    z = _scores((64, 77), scale=2.0, seed=23, dtype=dtype)
    x = z.to(torch.float64).numpy()
    assert _threshold.working_dtype(dtype, alpha) == torch.float64
    assert _threshold.working_dtype(torch.float32, _threshold.FLOAT32_MIN_ALPHA) == torch.float32
    assert_close(maps.entmax(z, alpha), R.entmax(x, alpha), name=f"entmax alpha={alpha}")
    assert_close(maps.pladis_weights(z, 2.0, alpha), R.pladis_weights(x, 2.0, alpha), name=f"pladis alpha={alpha}")
    if alpha == 1 + 1e-3:  # the float32 search itself, below the limit's margin
        p32 = _threshold.entmax_forward(z.float(), alpha, False)[0]
        assert_close(p32, R.entmax(z.float().double().numpy(), alpha), dtype=torch.float32, name="float32 search")


@pytest.mark.parametrize("alpha", [7.0, 9.0, 20.0])
@pytest.mark.parametrize("dtype", DTYPES)
def test_large_alpha_next_to_a_tied_group_computes_in_float64(alpha, dtype):
    """Above FLOAT32_MAX_ALPHA the tied group's t* ≈ (δ/k)^{α−1} underflows float32 (1e-49 at α = 7,
    δ = 1e-7, k = 50): a float32 search left weights up to 2.3e-5 (α = 7) to 0.33 (α = 20) off
    (results/search_precision.csv). The maps compute such α in float64 whatever the input dtype and meet the
    input dtype's tolerance. (Not the gradients: the Jacobian there holds s = t*^{q−1}, 1e43 at α = 7, beyond
    any low-precision dtype's range or meaning.)"""
    from pladis_analysis.testing import tied_group_rows

    assert _threshold.working_dtype(dtype, alpha) == torch.float64
    assert _threshold.working_dtype(torch.float32, _threshold.FLOAT32_MAX_ALPHA) == torch.float32
    rows = tied_group_rows(alpha, [10.0**e for e in (-7, -5, -3)] + [-1e-6], [1, 5, 50], 80, seed=2)
    z = torch.from_numpy(rows).to(dtype)
    x = z.to(torch.float64).numpy()
    assert_close(maps.entmax(z, alpha), R.entmax(x, alpha), name=f"entmax alpha={alpha}")
    assert_close(maps.pladis_weights(z, 2.0, alpha), R.pladis_weights(x, 2.0, alpha), name=f"pladis alpha={alpha}")


@pytest.mark.parametrize("alpha", [2.5, 3.0, 4.0])
@pytest.mark.parametrize("dtype", DTYPES)
def test_entmax_above_two_rows_leave_the_search_in_any_order(alpha, dtype):
    """The α > 2 search drops rows from its loop as they finish (a few steps for most rows, many for rows that
    must bisect to resolution or be solved again next to a tied group): interleaved easy and hard rows, the
    hard ones at scattered positions, must each get their own weights back."""
    from pladis_analysis.testing import tied_group_rows

    easy = _scores((40, 50), scale=1.0, seed=3).numpy().astype(np.float64)
    hard = tied_group_rows(alpha, [-(10.0**-5), 10.0**-3, -(10.0**-2)], [20, 7, 33], 50, seed=4)
    rows = np.concatenate([easy, hard])
    order = np.random.default_rng(5).permutation(len(rows))                              # hard rows scattered
    z = torch.from_numpy(rows[order]).to(dtype)
    p = maps.entmax(z, alpha)
    assert_close(p, R.entmax(z.to(torch.float64).numpy(), alpha), name=f"alpha={alpha}, mixed rows")


# --------------------------------------------------------------------------------------------------
# property: the torch path equals the reference on adversarial inputs (ties, scales, lengths)
# --------------------------------------------------------------------------------------------------

@pytest.mark.property
@settings(max_examples=examples(40))
@given(d=st.integers(1, 120), log_scale=st.floats(-5.0, 4.0), ties=st.integers(0, 5),
       name=st.sampled_from(sorted(MAPS)), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
def test_property_matches_reference(d, log_scale, ties, name, dtype, seed):
    fn, ref, _ = MAPS[name]
    z = _scores((3, d), scale=10.0**log_scale, seed=seed)
    if d > 1 and ties:  # force ties, including with the maximum
        idx = torch.randint(0, d, (ties,), generator=torch.Generator().manual_seed(seed))
        z[:, idx] = z.max(dim=-1, keepdim=True).values
    z = z.to(dtype)
    p = fn(z)
    _assert_matches_reference(p, z, name, name)
    assert_close(p.to(torch.float64).sum(-1), torch.ones(3, dtype=torch.float64), dtype=dtype, name="sum")


# --------------------------------------------------------------------------------------------------
# return_support
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(MAPS))
def test_return_support(name):
    fn, _, alpha = MAPS[name]
    z = _scores((5, 7, 40), scale=2.0, seed=14)
    z[0, 0, :3] = -math.inf
    p, support = fn(z, return_support=True)
    assert torch.equal(p, fn(z))
    assert support.dtype == torch.int64 and support.shape == (5, 7)
    if alpha is None:
        expected = np.isfinite(z.numpy()).sum(axis=-1)
    else:
        expected = R.support_size(z.numpy(), alpha)
    np.testing.assert_array_equal(support.numpy(), expected)
    _, support1 = fn(z, dim=1, return_support=True)
    assert support1.shape == (5, 40)


# --------------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("alpha", [1.0, 0.5, -2.0, math.nan, math.inf, True, "1.5", None])
def test_bad_alpha_raises(alpha):
    z = torch.zeros(3)
    with pytest.raises(ValueError, match="alpha"):
        maps.entmax(z, alpha)
    with pytest.raises(ValueError, match="alpha"):
        maps.pladis_weights(z, 2.0, alpha)


@pytest.mark.parametrize("scale", [math.nan, math.inf, -math.inf, "2", None])
def test_bad_scale_raises(scale):
    with pytest.raises(ValueError, match="scale"):
        maps.pladis_weights(torch.zeros(3), scale)


@pytest.mark.parametrize("name", list(MAPS))
@pytest.mark.parametrize("bad, word", [(math.nan, "NaN"), (math.inf, r"\+inf")])
def test_nan_and_plus_inf_scores_raise(name, bad, word):
    fn, _, _ = MAPS[name]
    for dtype in (torch.float32, torch.bfloat16):
        z = torch.randn(4, 6).to(dtype)
        z[2, 3] = bad  # mixed with finite values in the same row
        with pytest.raises(ValueError, match=word):
            fn(z)
        z = torch.full((2, 3), -math.inf, dtype=dtype)
        z[0, 1] = bad  # mixed with -inf only
        with pytest.raises(ValueError, match=word):
            fn(z)


def test_bad_tensor_arguments_raise():
    with pytest.raises(ValueError, match="z.dtype"):
        maps.softmax(torch.arange(4))
    with pytest.raises(ValueError, match="dim"):
        maps.entmax15(torch.zeros(2, 3), dim=2)
    with pytest.raises(ValueError, match="z must be a torch.Tensor"):
        maps.sparsemax([1.0, 2.0])
    with pytest.raises(ValueError, match="0-d"):
        maps.entmax15(torch.tensor(1.0))
    with pytest.raises(ValueError, match="dim=1.0 must be an integer"):
        maps.entmax15(torch.zeros(2, 3), dim=1.0)
    z = torch.randn(2, 3)  # NumPy integers are integers (torch's own functions take them)
    assert torch.equal(maps.pladis_weights(z, dim=np.int64(0)), maps.pladis_weights(z, dim=0))


@pytest.mark.parametrize("name", list(MAPS))
@pytest.mark.parametrize("shape", [(3, 0), (0, 5), (2, 0, 4)])
def test_empty_rows_give_empty_outputs(name, shape):
    """Rows of no entries (the reference refuses those), and no rows at all (an empty batch, Lq = 0), which the
    reference maps to an empty result too."""
    fn, ref, _ = MAPS[name]
    z = torch.zeros(shape, requires_grad=True)
    p = fn(z)
    assert p.shape == shape
    if shape[-1]:
        assert ref(z.detach().numpy()).shape == shape
    p.sum().backward()
    assert z.grad.shape == shape
    _, support = maps.entmax15(z, return_support=True)
    assert torch.equal(support, torch.zeros(shape[:-1], dtype=torch.int64))


# --------------------------------------------------------------------------------------------------
# CUDA
# --------------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list(MAPS))
def test_cuda_matches_reference(name):
    fn, ref, _ = MAPS[name]
    for dtype in DTYPES:
        z = _scores((4, 64, 77), scale=3.0, seed=15, dtype=dtype)
        z_cuda = z.cuda().requires_grad_(True)
        p = fn(z_cuda)
        assert p.device.type == "cuda" and p.dtype == dtype
        _assert_matches_reference(p.cpu(), z, name, f"{name} cuda {dtype}")
        p.float().pow(2).sum().backward()
        assert torch.isfinite(z_cuda.grad).all()



def test_negative_pladis_scale_is_rejected_like_the_reference():
    z = torch.randn(3, 5)
    with pytest.raises(ValueError, match="scale"):
        maps.pladis_weights(z, scale=-0.5)
    with pytest.raises(ValueError, match="scale"):
        R.pladis_weights(z.numpy(), scale=-0.5)
