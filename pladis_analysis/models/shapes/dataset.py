"""Procedural text-to-image data whose prompts can be checked exactly.

A scene is a 32×32 RGB image on a black background holding one or two flat-coloured objects. Every scene comes
with a prompt and with the structured ground truth of *what the prompt says* (which attributes it specifies), so
that :mod:`pladis_analysis.models.shapes.scorer` can grade a generated image against the prompt with no learned
metric.

Vocabulary
    shapes    circle, square, triangle (apex up), cross (a plus sign, bars a quarter of its extent thick)
    colours   red, green, blue, yellow, magenta, cyan (the six saturated corners of the RGB cube, so a
              hue test separates them with 30° of margin each side)
    position  a 3×3 grid: top left, top, top right, left, centre, right, bottom left, bottom, bottom right
    size      small (6.5–8 px across) or large (11–12.5 px across)
    relation  left of, right of, above, below (two-object scenes only)

Single-object prompts specify colour and shape always, and position and/or size only sometimes ("a red circle"
leaves both free: the scene then has a random position and size). Two-object prompts name two different
colours, each with a shape, usually with a spatial relation. Several phrasings per scene ("in the top left",
"in the upper left corner", "a circle coloured red" …) make the text encoder matter.

Compositional split: the colour–shape pairs in :data:`HELDOUT_PAIRS` never occur in a ``split="train"``
scene (in neither object); ``split="heldout"`` scenes contain at least one of them.

Determinism: scene ``i`` of ``make_dataset(seed=s)`` is drawn from ``numpy.random.default_rng([s, i, kind])``
alone, so it does not depend on how many scenes are requested or in which order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

IMAGE_SIZE = 32
BACKGROUND = (0, 0, 0)

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "yellow": (255, 255, 0),
    "green": (0, 255, 0),
    "cyan": (0, 255, 255),
    "blue": (0, 0, 255),
    "magenta": (255, 0, 255),
}
#: Hue in degrees of each palette colour (used by the scorer).
COLOUR_HUES: dict[str, float] = {"red": 0.0, "yellow": 60.0, "green": 120.0, "cyan": 180.0, "blue": 240.0,
                                 "magenta": 300.0}

#: (row, col) of the 3×3 grid → canonical position name.
POSITIONS: dict[tuple[int, int], str] = {
    (0, 0): "top left", (0, 1): "top", (0, 2): "top right",
    (1, 0): "left", (1, 1): "centre", (1, 2): "right",
    (2, 0): "bottom left", (2, 1): "bottom", (2, 2): "bottom right",
}
POSITION_CELLS: dict[str, tuple[int, int]] = {v: k for k, v in POSITIONS.items()}
#: Phrasings of each position (the first is canonical).
POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "top left": ("in the top left", "in the upper left corner", "at the top left"),
    "top": ("at the top", "at the top centre", "in the upper middle"),
    "top right": ("in the top right", "in the upper right corner", "at the top right"),
    "left": ("on the left", "at the left side", "in the middle left"),
    "centre": ("in the centre", "in the middle", "in the center"),
    "right": ("on the right", "at the right side", "in the middle right"),
    "bottom left": ("in the bottom left", "in the lower left corner", "at the bottom left"),
    "bottom": ("at the bottom", "at the bottom centre", "in the lower middle"),
    "bottom right": ("in the bottom right", "in the lower right corner", "at the bottom right"),
}
SIZES: dict[str, tuple[float, float]] = {"small": (6.5, 8.0), "large": (11.0, 12.5)}
#: Bounding-box extent (pixels) separating "small" from "large" for the scorer: the gap between the two ranges.
SIZE_THRESHOLD = 9.5
PAIR_SIZE = (7.0, 9.0)
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
RELATION_PHRASES: dict[str, tuple[str, ...]] = {
    "left of": ("to the left of", "left of", "on the left of"),
    "right of": ("to the right of", "right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
#: Colour–shape pairs that never appear in training scenes (one per shape, each with a different colour).
HELDOUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("blue", "triangle"), ("yellow", "square"), ("cyan", "circle"), ("magenta", "cross")})

KINDS = ("single", "pair")
SPLITS = ("train", "heldout")

# Cell centres of the 3×3 grid in continuous pixel coordinates (pixel (i, j) covers [j, j+1) × [i, i+1)).
_CELL_CENTRES = (IMAGE_SIZE / 6, IMAGE_SIZE / 2, 5 * IMAGE_SIZE / 6)


@dataclass(frozen=True)
class SceneObject:
    """One object as drawn: colour and shape names, centre (x, y) in pixels, extent (side of its box)."""

    colour: str
    shape: str
    cx: float
    cy: float
    extent: float

    @property
    def cell(self) -> tuple[int, int]:
        """(row, col) of the 3×3 grid cell holding the centre."""
        return (min(int(self.cy * 3 // IMAGE_SIZE), 2), min(int(self.cx * 3 // IMAGE_SIZE), 2))


@dataclass(frozen=True)
class ObjectTruth:
    """What a prompt says about one object; ``None`` means "not specified"."""

    colour: str
    shape: str
    position: str | None = None
    size: str | None = None


@dataclass(frozen=True)
class PromptTruth:
    """Structured ground truth of a prompt: its objects and, for two objects, the relation of object 0 to 1."""

    objects: tuple[ObjectTruth, ...]
    relation: str | None = None

    @property
    def kind(self) -> str:
        return "single" if len(self.objects) == 1 else "pair"

    def specified(self) -> list[str]:
        """Names of the attributes this prompt specifies (the scorer checks exactly these, plus the count)."""
        names = ["count"]
        for k, o in enumerate(self.objects):
            suffix = "" if len(self.objects) == 1 else f"_{k}"
            names += [f"colour{suffix}", f"shape{suffix}"]
            if o.position is not None:
                names.append(f"position{suffix}")
            if o.size is not None:
                names.append(f"size{suffix}")
        if self.relation is not None:
            names.append("relation")
        return names

    def to_dict(self) -> dict:
        return {"objects": [o.__dict__.copy() for o in self.objects], "relation": self.relation}


@dataclass(frozen=True)
class ShapesSample:
    """A scene: ``image`` (32, 32, 3) uint8, its ``prompt`` and the prompt's ``truth``; ``objects`` as drawn."""

    image: np.ndarray
    prompt: str
    truth: PromptTruth
    objects: tuple[SceneObject, ...] = field(default=())


# ----------------------------------------------------------------------------------------------- rendering

def inside_shape(shape: str, dx: np.ndarray, dy: np.ndarray, extent: float) -> np.ndarray:
    """Whether points at offsets (dx, dy) from a shape's centre lie inside it (box ``extent`` pixels wide)."""
    r = extent / 2
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    if shape == "triangle":
        # Apex at the top (dy = -r), base at the bottom; half-width grows linearly from 0 to r.
        t = (dy + r) / (2 * r)
        return (t >= 0) & (t <= 1) & (np.abs(dx) <= r * t)
    if shape == "cross":
        arm = r / 4  # two bars a quarter of the extent thick (thicker ones look like blobs at 7 px)
        return ((np.abs(dx) <= r) & (np.abs(dy) <= arm)) | ((np.abs(dy) <= r) & (np.abs(dx) <= arm))
    raise ValueError(f"shape={shape!r}: expected one of {SHAPES}")


def shape_mask(shape: str, cx: float, cy: float, extent: float, size: int = IMAGE_SIZE) -> np.ndarray:
    """Boolean (size, size) mask of ``shape`` centred at (cx, cy) with a bounding box ``extent`` pixels wide.

    A pixel belongs to the shape when its centre does: no anti-aliasing, so colours stay exactly on the palette.
    """
    if shape not in SHAPES:
        raise ValueError(f"shape={shape!r}: expected one of {SHAPES}")
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5  # pixel centres
    return inside_shape(shape, xs - cx, ys - cy, extent)


def render(objects: Sequence[SceneObject], size: int = IMAGE_SIZE) -> np.ndarray:
    """Draw ``objects`` (later ones on top) on the black background; returns (size, size, 3) uint8."""
    img = np.empty((size, size, 3), dtype=np.uint8)
    img[:] = BACKGROUND
    for o in objects:
        img[shape_mask(o.shape, o.cx, o.cy, o.extent, size)] = COLOURS[o.colour]
    return img


# ------------------------------------------------------------------------------------------------ sampling

def _pair_allowed(colour: str, shape: str, split: str) -> bool:
    return (colour, shape) not in HELDOUT_PAIRS if split == "train" else True


def _draw_pair(rng: np.random.Generator, split: str, exclude_colour: str | None = None,
               force_heldout: bool = False) -> tuple[str, str]:
    if force_heldout:
        options = sorted(p for p in HELDOUT_PAIRS if p[0] != exclude_colour)
    else:
        options = [(c, s) for c in COLOURS for s in SHAPES
                   if c != exclude_colour and _pair_allowed(c, s, split)]
    return options[rng.integers(len(options))]


def _centre_in_cell(rng: np.random.Generator, cell: tuple[int, int], extent: float, jitter: float) -> tuple[float, float]:
    row, col = cell
    lo, hi = extent / 2 + 1, IMAGE_SIZE - extent / 2 - 1  # keep the whole shape inside, 1 px margin
    cx = float(np.clip(_CELL_CENTRES[col] + rng.uniform(-jitter, jitter), lo, hi))
    cy = float(np.clip(_CELL_CENTRES[row] + rng.uniform(-jitter, jitter), lo, hi))
    return cx, cy


def _name(colour: str, shape: str) -> str:
    return f"{colour} {shape}"


def _single_prompt(rng: np.random.Generator, colour: str, shape: str, position: str | None,
                   size: str | None) -> str:
    pos = None if position is None else POSITION_PHRASES[position][rng.integers(len(POSITION_PHRASES[position]))]
    adj = "" if size is None else size + " "
    templates = [f"a {adj}{colour} {shape}", f"{adj}{colour} {shape}", f"a {adj}{shape} coloured {colour}"]
    if pos is not None:
        templates = [f"a {adj}{colour} {shape} {pos}", f"{pos}, a {adj}{colour} {shape}",
                     f"a {adj}{shape} coloured {colour} {pos}", f"{pos} there is a {adj}{colour} {shape}"]
    return templates[rng.integers(len(templates))]


def _pair_prompt(rng: np.random.Generator, a: ObjectTruth, b: ObjectTruth, relation: str | None) -> str:
    if relation is None:
        first, second = (a, b) if rng.random() < 0.5 else (b, a)
        return f"a {_name(first.colour, first.shape)} and a {_name(second.colour, second.shape)}"
    phrase = RELATION_PHRASES[relation][rng.integers(len(RELATION_PHRASES[relation]))]
    if rng.random() < 0.8:
        return f"a {_name(a.colour, a.shape)} {phrase} a {_name(b.colour, b.shape)}"
    return f"{_name(a.colour, a.shape)} {phrase} {_name(b.colour, b.shape)}"


def make_scene(index: int, seed: int = 0, kind: str = "single", split: str = "train") -> ShapesSample:
    """Scene number ``index`` of the stream ``(seed, kind, split)``; a pure function of its arguments."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: expected one of {KINDS}")
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {SPLITS}")
    if index < 0:
        raise ValueError(f"index={index}: must be >= 0")
    rng = np.random.default_rng([seed, index, KINDS.index(kind), SPLITS.index(split)])
    heldout = split == "heldout"
    if kind == "single":
        colour, shape = _draw_pair(rng, split, force_heldout=heldout)
        size = ("small", "large")[rng.integers(2)]
        cell = (int(rng.integers(3)), int(rng.integers(3)))
        extent = rng.uniform(*SIZES[size])
        cx, cy = _centre_in_cell(rng, cell, extent, jitter=1.5)
        obj = SceneObject(colour, shape, cx, cy, extent)
        # What the prompt says: position and size each specified about two times in three.
        u = rng.random()
        say_pos, say_size = (True, True) if u < 0.35 else (True, False) if u < 0.65 else \
            (False, True) if u < 0.8 else (False, False)
        truth = ObjectTruth(colour, shape, POSITIONS[cell] if say_pos else None, size if say_size else None)
        prompt = _single_prompt(rng, colour, shape, truth.position, truth.size)
        return ShapesSample(render([obj]), prompt, PromptTruth((truth,)), (obj,))

    # Two objects of different colours; in the held-out split object 0 or 1 (at random) is a held-out pair.
    heldout_slot = int(rng.integers(2)) if heldout else -1
    c0, s0 = _draw_pair(rng, split, force_heldout=heldout_slot == 0)
    c1, s1 = _draw_pair(rng, split, exclude_colour=c0, force_heldout=heldout_slot == 1)
    if c1 == c0:  # only possible when forcing a held-out pair whose colour is taken: redraw freely
        c1, s1 = _draw_pair(rng, "train", exclude_colour=c0)
    relation = RELATIONS[rng.integers(len(RELATIONS))]
    # Cells satisfying the relation of object 0 to object 1 along its axis; the other axis is free.
    lo_hi = sorted(rng.choice(3, size=2, replace=False).tolist())
    free = rng.integers(3, size=2)
    first, second = (lo_hi if relation in ("left of", "above") else lo_hi[::-1])
    if relation in ("left of", "right of"):
        cells = ((int(free[0]), first), (int(free[1]), second))
    else:
        cells = ((first, int(free[0])), (second, int(free[1])))
    objs = []
    for (c, s), cell in zip(((c0, s0), (c1, s1)), cells):
        extent = rng.uniform(*PAIR_SIZE)
        cx, cy = _centre_in_cell(rng, cell, extent, jitter=0.75)
        objs.append(SceneObject(c, s, cx, cy, extent))
    say_relation = rng.random() < 0.85
    truth = PromptTruth((ObjectTruth(c0, s0), ObjectTruth(c1, s1)), relation if say_relation else None)
    prompt = _pair_prompt(rng, truth.objects[0], truth.objects[1], truth.relation)
    return ShapesSample(render(objs), prompt, truth, tuple(objs))


def make_dataset(n: int, seed: int = 0, kind: str = "single", split: str = "train",
                 start: int = 0) -> list[ShapesSample]:
    """``n`` scenes (indices ``start … start+n-1``) of one kind (``"single"``, ``"pair"``) and split.

    ``kind="mixed"`` interleaves the two kinds, 60% single-object scenes and 40% two-object scenes (the
    training mix), decided per index from the seed.
    """
    if n < 0:
        raise ValueError(f"n={n}: must be >= 0")
    return list(iter_dataset(n, seed=seed, kind=kind, split=split, start=start))


def iter_dataset(n: int, seed: int = 0, kind: str = "single", split: str = "train",
                 start: int = 0) -> Iterator[ShapesSample]:
    """Generator form of :func:`make_dataset`."""
    if kind == "mixed":
        for i in range(start, start + n):
            pick = np.random.default_rng([seed, i, 99]).random()
            yield make_scene(i, seed, "single" if pick < 0.6 else "pair", split)
    else:
        for i in range(start, start + n):
            yield make_scene(i, seed, kind, split)

