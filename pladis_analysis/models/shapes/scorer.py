"""Exact text–image alignment for the shapes dataset: no learned metric, no CLIP.

Pipeline for one image:

1. **Colour segmentation.** A pixel is part of an object when it is bright and saturated (HSV value ≥
   :data:`MIN_VALUE`, chroma = max − min ≥ :data:`MIN_CHROMA`); its colour is the palette colour of nearest hue
   (the palette's hues are 60° apart, so each gets ±30°). Dark or grey pixels are background.
2. **Objects** are the 8-connected components of each colour with at least :data:`MIN_AREA` pixels (smaller
   specks are noise, not objects; the smallest real object has about 20 pixels).
3. **Shape** by geometry: the component is compared with each candidate shape drawn at the component's bounding
   box (same centre, same extent) and gets the shape of highest intersection-over-union. A square fills its box,
   a circle π/4 of it, a cross 7/16 and a triangle 1/2 with its mass at the bottom, so the templates are far apart.
4. **Location and size** from the bounding box: its centre's cell in the 3×3 grid; "small" when its extent
   (larger side) is at most :data:`~.dataset.SIZE_THRESHOLD` pixels.
5. **Comparison with the prompt's ground truth**, only for the attributes the prompt specifies, plus the count
   (exactly one or two objects). A two-object prompt matches each named object to the largest detected object of
   its colour; the relation compares the two box centres with a :data:`RELATION_MARGIN`-pixel margin.

An image is aligned ("all") when the count and every specified attribute are right.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

from .dataset import (COLOUR_HUES, IMAGE_SIZE, POSITIONS, SHAPES, SIZE_THRESHOLD, PromptTruth, ShapesSample,
                      inside_shape)

MIN_VALUE = 0.45
MIN_CHROMA = 0.35
MIN_AREA = 10
RELATION_MARGIN = 2.0
_HUE_NAMES = tuple(COLOUR_HUES)
_HUES = np.array([COLOUR_HUES[c] for c in _HUE_NAMES])


@dataclass(frozen=True)
class DetectedObject:
    """An object found in an image: colour, shape, bounding-box centre (x, y), extent (px), area (px)."""

    colour: str
    shape: str
    cx: float
    cy: float
    extent: int
    area: int
    shape_iou: float

    @property
    def position(self) -> str:
        row = min(int(self.cy * 3 // IMAGE_SIZE), 2)
        col = min(int(self.cx * 3 // IMAGE_SIZE), 2)
        return POSITIONS[(row, col)]

    @property
    def size(self) -> str:
        return "small" if self.extent <= SIZE_THRESHOLD else "large"


# Float pixels may overshoot [0, 1] by a decoder's rounding; anything further out is another convention.
_FLOAT_RANGE_SLACK = 0.05


def _as_float_image(image) -> np.ndarray:
    """(H, W, 3) float64 in [0, 1] from integer pixels in [0, 255] (uint8, PIL images, int arrays) or float pixels
    in [0, 1]; other ranges are a ValueError: clipped, float pixels in [0, 255] would turn every faint background
    value into an object and score wrong without a word."""
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"image: expected an (H, W, 3) array, got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.integer):
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError(f"image: integer pixels must lie in [0, 255], found [{arr.min()}, {arr.max()}]")
        return arr.astype(np.float64) / 255.0
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"image: expected integer or float pixels, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if arr.size and not (np.isfinite(arr).all() and arr.min() >= -_FLOAT_RANGE_SLACK
                         and arr.max() <= 1 + _FLOAT_RANGE_SLACK):
        raise ValueError(f"image: float pixels must lie in [0, 1], found [{arr.min():.4g}, {arr.max():.4g}] "
                         "(divide [0, 255] pixels by 255, or pass uint8)")
    return np.clip(arr, 0.0, 1.0)


def colour_labels(image) -> np.ndarray:
    """(H, W) int array: index into the palette (``COLOUR_HUES`` order) per object pixel, −1 for background."""
    img = _as_float_image(image)
    mx, mn = img.max(axis=-1), img.min(axis=-1)
    chroma = mx - mn
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    safe = np.where(chroma > 0, chroma, 1.0)
    # Standard HSV hue in degrees, piecewise by the maximal channel.
    hue = np.where(mx == r, ((g - b) / safe) % 6, np.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4)) * 60
    dist = np.abs(hue[..., None] - _HUES)  # (H, W, 6) circular hue distance
    dist = np.minimum(dist, 360 - dist)
    labels = dist.argmin(axis=-1)
    return np.where((mx >= MIN_VALUE) & (chroma >= MIN_CHROMA), labels, -1)


def classify_shape(mask: np.ndarray) -> tuple[str, float]:
    """(shape, IoU) of the best-matching template drawn in ``mask``'s bounding box."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise ValueError("mask: empty")
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    extent = max(x1 - x0, y1 - y0)
    # Compare on a window around the box only: every template fits in it, and it is much cheaper.
    wy0, wy1, wx0, wx1 = max(y0 - 2, 0), min(y1 + 2, mask.shape[0]), max(x0 - 2, 0), min(x1 + 2, mask.shape[1])
    window = mask[wy0:wy1, wx0:wx1]
    py, px = np.mgrid[wy0:wy1, wx0:wx1].astype(np.float64) + 0.5  # pixel centres of the window
    best, best_iou = SHAPES[0], -1.0
    for shape in SHAPES:
        # A shape drawn with extent e spans between e - 1 and e + 1 pixels, so try larger extents too,
        # and half-pixel shifts of the centre, since the box of a rasterised shape hides sub-pixel position.
        for e in (extent - 0.5, extent, extent + 0.5, extent + 1.0):
            for dx in (-0.5, 0.0, 0.5):
                for dy in (-0.5, 0.0, 0.5):
                    tpl = inside_shape(shape, px - (cx + dx), py - (cy + dy), e)
                    iou = np.logical_and(tpl, window).sum() / max(np.logical_or(tpl, window).sum(), 1)
                    if iou > best_iou:
                        best, best_iou = shape, float(iou)
    return best, best_iou


def detect_objects(image) -> list[DetectedObject]:
    """All objects of ``image`` (see the module docstring), largest first."""
    labels = colour_labels(image)
    found = []
    for k, colour in enumerate(_HUE_NAMES):
        comp, n = ndimage.label(labels == k, structure=np.ones((3, 3), dtype=bool))
        for j in range(1, n + 1):
            mask = comp == j
            area = int(mask.sum())
            if area < MIN_AREA:
                continue
            ys, xs = np.nonzero(mask)
            shape, iou = classify_shape(mask)
            found.append(DetectedObject(colour, shape, (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2,
                                        int(max(xs.max() - xs.min(), ys.max() - ys.min()) + 1), area, iou))
    return sorted(found, key=lambda o: -o.area)


def _relation_holds(a: DetectedObject, b: DetectedObject, relation: str) -> bool:
    if relation == "left of":
        return a.cx < b.cx - RELATION_MARGIN
    if relation == "right of":
        return a.cx > b.cx + RELATION_MARGIN
    if relation == "above":
        return a.cy < b.cy - RELATION_MARGIN
    if relation == "below":
        return a.cy > b.cy + RELATION_MARGIN
    raise ValueError(f"relation={relation!r}: unknown")


def score_image(image, truth: PromptTruth | ShapesSample) -> dict[str, bool]:
    """Which of the prompt's attributes ``image`` gets right: ``{attribute: bool, ..., "all": bool}``.

    Attribute names are those of :meth:`PromptTruth.specified` (``colour``, ``shape``, ``position``, ``size``
    for one object; ``colour_0``, ``shape_1``, ``relation`` … for two; ``count`` always).
    """
    if isinstance(truth, ShapesSample):
        truth = truth.truth
    if not isinstance(truth, PromptTruth):
        raise ValueError(f"truth: expected a PromptTruth or ShapesSample, got {type(truth).__name__}")
    objects = detect_objects(image)
    result = {"count": len(objects) == len(truth.objects)}
    if truth.kind == "single":
        t = truth.objects[0]
        main = objects[0] if objects else None
        result["colour"] = main is not None and main.colour == t.colour
        result["shape"] = main is not None and main.shape == t.shape
        if t.position is not None:
            result["position"] = main is not None and main.position == t.position
        if t.size is not None:
            result["size"] = main is not None and main.size == t.size
    else:
        matched = []
        for k, t in enumerate(truth.objects):
            same = [o for o in objects if o.colour == t.colour]
            m = same[0] if same else None  # largest of that colour
            matched.append(m)
            result[f"colour_{k}"] = m is not None
            result[f"shape_{k}"] = m is not None and m.shape == t.shape
        if truth.relation is not None:
            a, b = matched
            result["relation"] = a is not None and b is not None and _relation_holds(a, b, truth.relation)
    result["all"] = all(result.values())
    return result


def score_images(images: Iterable, truths: Sequence[PromptTruth | ShapesSample]) -> pd.DataFrame:
    """One row per image: the prompt kind, then each attribute (NaN where the prompt does not specify it)."""
    rows = []
    images = list(images)
    if len(images) != len(truths):
        raise ValueError(f"images/truths: {len(images)} images but {len(truths)} truths")
    for img, t in zip(images, truths):
        t = t.truth if isinstance(t, ShapesSample) else t
        row = {"kind": t.kind}
        row.update({k: float(v) for k, v in score_image(img, t).items()})
        rows.append(row)
    return pd.DataFrame(rows)


def summarise(per_image: pd.DataFrame) -> dict[str, float]:
    """Accuracy per attribute (over the images whose prompt specifies it) and ``all``. ``colour`` and ``shape``
    pool every object's: single-object images' own and both objects' of pairs (``colour_0``, ``colour_1``)."""
    out = {}
    for col in per_image.columns:
        if col == "kind":
            continue
        vals = per_image[col].dropna()
        if len(vals):
            out[col] = float(vals.mean())
    for base in ("colour", "shape"):
        cols = [c for c in (base, f"{base}_0", f"{base}_1") if c in per_image]
        pooled = pd.concat([per_image[c].dropna() for c in cols]) if cols else pd.Series(dtype=float)
        if len(pooled):
            out[base] = float(pooled.mean())
    return out


def score_alignment(images: Iterable, truths: Sequence[PromptTruth | ShapesSample]) -> dict[str, float]:
    """Alignment accuracies of ``images`` against their prompts' ground truth: ``{"all": …, "colour": …, …}``.

    ``images``: (H, W, 3) integer arrays in [0, 255] (uint8), float arrays in [0, 1] or PIL images, one per truth.
    """
    return summarise(score_images(images, truths))
