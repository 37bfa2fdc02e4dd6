"""Modern Hopfield retrieval with softmax, α-entmax and PLADIS weights, and the bounds THEORY.md states."""

from .hopfield import (
    RetrievalGeometry,
    dense_retrieval_bound,
    entmax_retrieval_bound,
    is_entmax_fixed_point,
    retrieval_geometry,
    retrieve,
)

__all__ = [
    "RetrievalGeometry",
    "dense_retrieval_bound",
    "entmax_retrieval_bound",
    "is_entmax_fixed_point",
    "retrieval_geometry",
    "retrieve",
]
