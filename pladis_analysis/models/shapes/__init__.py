"""The bundled, really trained text-to-image model, its procedural dataset and its exact alignment scorer.

    from pladis_analysis.models.shapes import load_bundled, make_dataset, score_alignment
    pipe = load_bundled()                                    # offline: weights ship with the package
    images = pipe(["a red circle to the left of a blue square"], output_type="np").images
    data = make_dataset(16, seed=1, kind="pair")             # prompts with structured ground truth
    score_alignment(pipe([s.prompt for s in data], output_type="np").images, data)   # {"all": …, "colour": …}

``dataset`` and ``scorer`` need only NumPy/SciPy; ``ShapesPipeline`` and ``load_bundled`` need diffusers and
transformers, and are imported on first use.
"""

from __future__ import annotations

from .dataset import (COLOURS, HELDOUT_PAIRS, POSITIONS, SHAPES, ObjectTruth, PromptTruth, ShapesSample,
                      make_dataset, make_scene, render)
from .scorer import detect_objects, score_alignment, score_image, score_images

__all__ = ["COLOURS", "HELDOUT_PAIRS", "POSITIONS", "SHAPES", "ObjectTruth", "PromptTruth", "ShapesSample",
           "make_dataset", "make_scene", "render", "detect_objects", "score_alignment", "score_image",
           "score_images", "load_bundled", "ShapesPipeline"]


def __getattr__(name: str):
    # diffusers is an optional dependency and slow to import: load the pipeline module lazily.
    if name in ("load_bundled", "ShapesPipeline"):
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
