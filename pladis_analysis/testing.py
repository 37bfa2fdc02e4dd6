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
