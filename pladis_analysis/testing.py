"""Tolerances as data, and one assertion helper that explains itself.

Every comparison between a fast path (torch, Triton) and the NumPy float64 reference goes through
:func:`assert_close` with the tolerances of :data:`TOLERANCES`, looked up by the dtype of the fast
path's output. No test uses bare ``allclose`` defaults.
"""

from __future__ import annotations

import numpy as np
import torch

# atol/rtol per dtype of the tensor under test, compared against a float64 reference.
# The fast paths compute in float32 inside; the low-precision rows are wide because the *input*
# is rounded to 8 (bf16) or 11 (fp16) mantissa bits before the map sees it, and the output is
# rounded again on the way out.
TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float64: {"atol": 1e-10, "rtol": 1e-9},
    torch.float32: {"atol": 2e-6, "rtol": 2e-5},
    torch.float16: {"atol": 2e-3, "rtol": 1e-2},
    torch.bfloat16: {"atol": 1.6e-2, "rtol": 4e-2},
}


def tolerance(dtype: torch.dtype) -> dict[str, float]:
    """The ``{"atol", "rtol"}`` pair for comparing a tensor of ``dtype`` against float64 truth."""
    try:
        return TOLERANCES[dtype]
    except KeyError:
        raise ValueError(f"dtype={dtype} has no tolerance entry; known: {sorted(map(str, TOLERANCES))}") from None


def _as_float64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def assert_close(actual, expected, *, dtype: torch.dtype | None = None, atol: float | None = None,
                 rtol: float | None = None, name: str = "value") -> None:
    """Assert ``|actual - expected| <= atol + rtol * |expected|`` elementwise.

    Tolerances default to the table entry for ``dtype`` (or ``actual.dtype`` for a tensor). On failure the
    message names the worst element (index, both values, its error) and the fraction of elements that fail,
    which is what one needs to tell a bug from a rounding issue.
    """
    if dtype is None:
        dtype = actual.dtype if isinstance(actual, torch.Tensor) else torch.float64
    tol = tolerance(dtype)
    atol = tol["atol"] if atol is None else atol
    rtol = tol["rtol"] if rtol is None else rtol
    a, e = _as_float64(actual), _as_float64(expected)
    if a.shape != e.shape:
        raise AssertionError(f"{name}: shape {a.shape} != expected shape {e.shape}")
    both_nonfinite = ~np.isfinite(a) & ~np.isfinite(e) & (a == e)
    with np.errstate(invalid="ignore"):  # inf − inf where both are the same infinity: masked by both_nonfinite
        err = np.where(both_nonfinite, 0.0, np.abs(a - e))
    err = np.where(np.isnan(err), np.inf, err)
    allowed = atol + rtol * np.abs(np.where(np.isfinite(e), e, 0.0))
    bad = err > allowed
    if bad.any():
        worst = np.unravel_index(np.argmax(err - allowed), err.shape)
        raise AssertionError(
            f"{name}: {bad.sum()} of {bad.size} elements ({bad.mean():.2%}) exceed atol={atol:g}, rtol={rtol:g} "
            f"for {dtype}; worst at index {tuple(int(i) for i in worst)}: actual={a[worst]!r}, "
            f"expected={e[worst]!r}, |error|={err[worst]:.3g} > allowed {allowed[worst]:.3g}"
        )


def tied_group_rows(alpha: float, margins, group_sizes, length: int, seed: int = 0) -> np.ndarray:
    """Score rows whose α-entmax threshold sits right next to a tied group: float32 values, as float64.

    Each row has a leading score 1/(α−1) − δ, a group of k tokens at score 0 (as padding tokens of a text
    encoder often are) and ``length − 1 − k`` random scores below the group; one row per (δ, k) in ``margins``
    × ``group_sizes``. The one-hot gap of α-entmax is 1/(α−1), so for δ > 0 the group is in the support with
    t* ≈ (δ/k)^{α−1} each (1e-16 at α = 4, δ = 1e-4, k = 20) and weight ≈ δ/k: for α > 2 a weight whose τ no
    float of a fixed scale near −1 resolves (the case the α > 2 searches re-centre for). For δ ≤ 0 the row is
    one-hot.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for delta in margins:
        for k in group_sizes:
            if not 0 <= k <= length - 1:
                raise ValueError(f"group size {k} does not fit a row of length {length} with a leading score")
            below = -1e-3 - np.abs(rng.normal(0.0, 0.5, size=length - 1 - k))
            rows.append(np.concatenate([[1.0 / (alpha - 1.0) - delta], np.zeros(k), below]))
    return np.asarray(rows, dtype=np.float32).astype(np.float64)


def entmax_high_precision(row, alpha: float, digits: int | None = None) -> np.ndarray:
    """α-entmax of one score row (read as exact binary floats) by bisection in ``digits``-digit arithmetic
    (mpmath), rounded to float64 at the end: the truth against which the float64 reference itself is checked.

    τ is resolved to ~10^−digits. For α > 2 a weight next to the threshold is t^{1/(α−1)} with t as small as
    (δ/k)^{α−1} (:func:`tied_group_rows`), so ``digits`` must exceed that t's decimal exponent by a margin. The
    default, max(60, 30 + 8(α − 1)), covers margins δ/k down to 1e-8 with 30 digits to spare.
    """
    import mpmath   # a dev dependency (and one of sympy's, which torch requires)

    if digits is None:
        digits = max(60, int(30 + 8 * (alpha - 1.0)))

    row = [float(v) for v in np.asarray(row, dtype=np.float64).ravel()]
    with mpmath.workdps(digits):
        a = mpmath.mpf(alpha)
        q = 1 / (a - 1)
        top = max(row)
        x = [(a - 1) * (mpmath.mpf(v) - mpmath.mpf(top)) for v in row]
        lo, hi = mpmath.mpf(-1), mpmath.mpf(0)
        for _ in range(digits * 4):   # 2^−4·digits < 10^−digits: to the working precision
            mid = (lo + hi) / 2
            if sum(max(v - mid, 0) ** q for v in x) >= 1:
                lo = mid
            else:
                hi = mid
        return np.array([float(max(v - lo, 0) ** q) for v in x])


def edge_weight_rows(length: int, edge_weights=(1e-2, 1e-4, 1e-6, 1e-8), support: int = 4,
                     seed: int = 0) -> np.ndarray:
    """Weight rows (float64, each summing to 1) with one support entry of tiny weight: one row per edge weight.

    Each row has ``support`` non-zero weights, the edge weight and ``support − 1`` near-equal ones sharing the
    rest, in random positions. For α > 2, s = p^{2−α} at the edge weight dwarfs the others' (1e16 against
    about 10 at α = 4, weight 1e-8): a closed-form Jacobian–vector product that does not first measure the
    vector from that entry leaves s·ε of rounding in a result of order Σ of the other s.
    """
    if not 2 <= support <= length:
        raise ValueError(f"support must lie in [2, length={length}], got support={support}")
    rng = np.random.default_rng(seed)
    rows = []
    for edge in edge_weights:
        row = np.zeros(length)
        row[:support] = np.concatenate([[edge], (1.0 - edge) * rng.dirichlet(np.full(support - 1, 8.0))])
        rows.append(rng.permutation(row))
    return np.asarray(rows)


def assert_entmax_jvp_close(actual, p, v, alpha: float, *, name: str = "jvp") -> None:
    """Assert that ``actual`` is J v, J the α-entmax Jacobian at the weights ``p`` (rows on the last axis), to
    what rounding of a well-computed product leaves: 8 ε of ``actual``'s dtype times the sum of s = p^{2−α}
    over all entries but the largest, times max|v|, per row.

    Leaving out the largest s is the point: for α > 2 it sits at the smallest weight and can be 10¹⁶ times
    the others (:func:`edge_weight_rows`), yet J v stays of the others' order. ``p`` and ``v`` are the
    tensors the product under test saw (in its dtype); the truth is :func:`reference.entmax_jacobian_at` on
    them in float64.
    """
    from .maps import reference

    dtype = actual.dtype if isinstance(actual, torch.Tensor) else torch.float64
    p64, v64, a64 = _as_float64(p), _as_float64(v), _as_float64(actual)
    expected = np.einsum("...ij,...j->...i", reference.entmax_jacobian_at(p64, alpha), v64)  # J symmetric
    s = np.where(p64 > 0.0, np.where(p64 > 0.0, p64, 1.0) ** (2.0 - alpha), 0.0)
    largest = np.arange(s.shape[-1]) == s.argmax(axis=-1)[..., None]
    others = np.where(largest, 0.0, s).sum(axis=-1, keepdims=True)
    allowed = 8 * torch.finfo(dtype).eps * others * np.abs(v64).max(axis=-1, keepdims=True)
    excess = np.abs(a64 - expected) - allowed
    if not np.all(excess <= 0.0):  # also catches NaN
        worst = np.unravel_index(np.nanargmax(np.where(np.isnan(excess), np.inf, excess)), excess.shape)
        raise AssertionError(
            f"{name}: {int((~(excess <= 0.0)).sum())} of {excess.size} entries off the α={alpha} Jacobian-vector "
            f"product by more than rounding; worst at {tuple(int(i) for i in worst)}: actual={a64[worst]!r}, "
            f"expected={expected[worst]!r}, allowed {allowed[worst[:-1] + (0,)]:.3g} (largest s "
            f"{s.max(axis=-1)[worst[:-1]]:.3g})")
