"""The procedural shapes dataset: determinism, vocabulary, the held-out split, ground truth matching the prompt."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pladis_analysis.models.shapes import dataset as ds
from pladis_analysis.models.shapes import make_dataset, make_scene


def _same(a, b):
    return (np.array_equal(a.image, b.image) and a.prompt == b.prompt and a.truth == b.truth
            and a.objects == b.objects)


@pytest.mark.parametrize("kind", ["single", "pair", "mixed"])
def test_same_seed_same_scenes(kind):
    a = make_dataset(40, seed=3, kind=kind)
    b = make_dataset(40, seed=3, kind=kind)
    assert all(_same(x, y) for x, y in zip(a, b))


def test_scene_does_not_depend_on_how_many_are_requested():
    full = make_dataset(30, seed=1, kind="mixed")
    tail = make_dataset(10, seed=1, kind="mixed", start=20)
    assert all(_same(x, y) for x, y in zip(full[20:], tail))
    assert _same(full[7], make_scene(7, seed=1, kind=full[7].truth.kind))


def test_different_seeds_differ():
    a = make_dataset(20, seed=0)
    b = make_dataset(20, seed=1)
    assert sum(not np.array_equal(x.image, y.image) for x, y in zip(a, b)) >= 18


def test_vocabulary_is_covered():
    data = make_dataset(600, seed=2, kind="mixed")
    colours = {o.colour for s in data for o in s.objects}
    shapes = {o.shape for s in data for o in s.objects}
    assert {"red", "green", "blue", "yellow"} <= colours and len(colours) >= 6
    assert {"circle", "square", "triangle"} <= shapes and len(shapes) >= 4
    cells = {o.cell for s in data if s.truth.kind == "single" for o in s.objects}
    assert len(cells) == 9
    assert len({s.prompt for s in data}) > 300  # several phrasings, not one template
    under = [s for s in data if s.truth.kind == "single" and s.truth.objects[0].position is None
             and s.truth.objects[0].size is None]
    assert under, "under-specified prompts ('a red circle') must occur"
    assert any(s.truth.kind == "pair" and s.truth.relation is not None for s in data)


@pytest.mark.parametrize("kind", ["single", "pair"])
def test_heldout_pairs_never_in_train_and_always_in_heldout(kind):
    train = make_dataset(400, seed=4, kind=kind, split="train")
    held = make_dataset(100, seed=4, kind=kind, split="heldout")
    assert not any((o.colour, o.shape) in ds.HELDOUT_PAIRS for s in train for o in s.objects)
    assert all(any((o.colour, o.shape) in ds.HELDOUT_PAIRS for o in s.objects) for s in held)


def test_mixed_stream_is_sixty_forty():
    kinds = [s.truth.kind for s in make_dataset(1000, seed=0, kind="mixed")]
    assert 0.55 < kinds.count("single") / len(kinds) < 0.65


def test_images_are_black_background_and_palette_colours():
    palette = {tuple(c) for c in ds.COLOURS.values()} | {ds.BACKGROUND}
    for s in make_dataset(50, seed=5, kind="mixed"):
        assert s.image.shape == (32, 32, 3) and s.image.dtype == np.uint8
        assert {tuple(p) for p in s.image.reshape(-1, 3)} <= palette
        assert (s.image.reshape(-1, 3) == 0).all(axis=1).mean() > 0.5  # mostly background


def test_ground_truth_matches_prompt_words():
    for s in make_dataset(300, seed=6, kind="mixed"):
        t = s.truth
        for obj, drawn in zip(t.objects, s.objects):
            assert obj.colour in s.prompt and obj.shape in s.prompt
            assert (obj.colour, obj.shape) == (drawn.colour, drawn.shape)
            if obj.position is not None:
                assert ds.POSITIONS[drawn.cell] == obj.position
                assert any(p in s.prompt for p in ds.POSITION_PHRASES[obj.position])
            if obj.size is not None:
                assert obj.size in s.prompt
                assert ds.SIZES[obj.size][0] <= drawn.extent <= ds.SIZES[obj.size][1]
        if t.relation is not None:
            a, b = s.objects
            sign = {"left of": b.cx - a.cx, "right of": a.cx - b.cx, "above": b.cy - a.cy, "below": a.cy - b.cy}
            assert sign[t.relation] > 5
        if t.kind == "pair":
            assert t.objects[0].colour != t.objects[1].colour


@given(shape=st.sampled_from(ds.SHAPES), cx=st.floats(8, 24), cy=st.floats(8, 24), extent=st.floats(6.5, 12.5))
def test_shape_mask_fits_its_box(shape, cx, cy, extent):
    mask = ds.shape_mask(shape, cx, cy, extent)
    ys, xs = np.nonzero(mask)
    # The thinnest shape, a cross with 1-pixel bars when its centre sits on a pixel centre, fills 13/49 of a 7 px box.
    assert len(xs) > 0.2 * extent**2
    assert xs.max() + 1 - xs.min() <= extent + 1 and ys.max() + 1 - ys.min() <= extent + 1


@pytest.mark.parametrize("kwargs, name", [(dict(kind="triple"), "kind"), (dict(split="test"), "split"),
                                          (dict(index=-1), "index")])
def test_bad_arguments_name_themselves(kwargs, name):
    with pytest.raises(ValueError, match=name):
        make_scene(**{"index": 0, **kwargs})
    with pytest.raises(ValueError, match="shape"):
        ds.shape_mask("hexagon", 16, 16, 8)
