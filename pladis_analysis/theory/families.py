"""Random score rows of the families the map studies draw from (NumPy float64)."""

from __future__ import annotations

import numpy as np

__all__ = ["SCORE_FAMILIES", "check_families", "sample_score_rows"]

SCORE_FAMILIES = ("gaussian", "gaussian_x3", "student_t2", "rounded")


def check_families(families, known) -> None:
    """An experiment config's ``families`` against the ``known`` ones (score or pattern families): a ValueError
    naming the unknown ones, before any sampling starts."""
    unknown = set(families) - set(known)
    if unknown:
        raise ValueError(f"families contains unknown {sorted(unknown)}; known: {', '.join(known)}")


def sample_score_rows(family: str, n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """(n, d) score rows: Gaussian (scale 1 or 3), Student t with 2 degrees of freedom (heavy tails), or Gaussian
    rounded to 0.1 (ties, as padding tokens and rounded scores give)."""
    if family == "gaussian":
        return rng.standard_normal((n, d))
    if family == "gaussian_x3":
        return 3.0 * rng.standard_normal((n, d))
    if family == "student_t2":
        return rng.standard_t(2.0, size=(n, d))
    if family == "rounded":
        return np.round(rng.standard_normal((n, d)), 1)
    raise ValueError(f"family must be one of {SCORE_FAMILIES}, got family={family!r}")
