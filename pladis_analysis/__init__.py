"""pladis_analysis: measure what PLADIS (A = S + λ(E − S), sparse-attention extrapolation) does in diffusion models.

Layers, lowest first (a layer never imports a higher one):

* :mod:`pladis_analysis.maps` — softmax, sparsemax, α-entmax, PLADIS weights (NumPy reference, torch, Triton)
* :mod:`pladis_analysis.attention` — ``attention`` and ``pladis_attention`` on ``[..., L, d]`` tensors
* :mod:`pladis_analysis.diffusion` — ``apply_pladis``, ``load_pipeline``: the seam into diffusers
* :mod:`pladis_analysis.probes` — ``record_attention``: statistics measured while a model samples
* :mod:`pladis_analysis.theory` — one-step Hopfield retrieval and its bounds
* :mod:`pladis_analysis.models.shapes` — the bundled, really trained text-to-image model and its exact scorer

Import the submodule you need; importing the package itself loads nothing heavy.
"""

__version__ = "0.1.0"
