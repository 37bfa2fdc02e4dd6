"""Modern Hopfield retrieval with softmax, α-entmax and PLADIS weights, the bounds THEORY.md states, and the
energy the PLADIS-weighted update descends (for λ ≤ 1), and the random score rows the map studies draw."""

from .energy import entmax_conjugate, pladis_energy, pladis_step
from .families import SCORE_FAMILIES, check_families, sample_score_rows
from .hopfield import (
    PATTERN_FAMILIES,
    RetrievalGeometry,
    dense_retrieval_bound,
    entmax_retrieval_bound,
    is_entmax_fixed_point,
    retrieval_geometry,
    retrieve,
    sample_patterns,
)

__all__ = [
    "PATTERN_FAMILIES",
    "RetrievalGeometry",
    "SCORE_FAMILIES",
    "check_families",
    "dense_retrieval_bound",
    "entmax_conjugate",
    "entmax_retrieval_bound",
    "is_entmax_fixed_point",
    "pladis_energy",
    "pladis_step",
    "retrieval_geometry",
    "retrieve",
    "sample_patterns",
    "sample_score_rows",
]
