"""The exact alignment scorer: near-perfect on clean dataset images, low and crash-free on garbage."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pladis_analysis.models.shapes import dataset as ds
from pladis_analysis.models.shapes import detect_objects, make_dataset, score_alignment, score_image
from pladis_analysis.models.shapes.scorer import colour_labels, score_images, summarise


@pytest.mark.parametrize("kind, split, n", [("single", "train", 300), ("pair", "train", 150),
                                            ("single", "heldout", 100), ("pair", "heldout", 100)])
def test_clean_images_score_at_least_99_percent(kind, split, n):
    data = make_dataset(n, seed=11, kind=kind, split=split)
    acc = score_alignment([s.image for s in data], data)
    assert acc["all"] >= 0.99, acc
    assert min(acc.values()) >= 0.99, acc


def test_shuffled_pixels_score_low_without_crashing():
    data = make_dataset(120, seed=12, kind="mixed")
    rng = np.random.default_rng(0)
    shuffled = [s.image.reshape(-1, 3)[rng.permutation(32 * 32)].reshape(32, 32, 3) for s in data]
    acc = score_alignment(shuffled, data)
    assert acc["all"] < 0.05, acc
    assert acc["shape"] < 0.2, acc


@pytest.mark.parametrize("garbage", ["black", "white", "grey", "noise", "float_noise"])
def test_garbage_images_are_graded_not_crashed(garbage):
    rng = np.random.default_rng(1)
    img = {"black": np.zeros((32, 32, 3), np.uint8), "white": np.full((32, 32, 3), 255, np.uint8),
           "grey": np.full((32, 32, 3), 128, np.uint8),
           "noise": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
           "float_noise": rng.random((32, 32, 3))}[garbage]
    for s in make_dataset(6, seed=13, kind="mixed"):
        result = score_image(img, s)
        assert result["all"] is False or result["all"] == False  # noqa: E712 - numpy bools too
        assert set(result) == set(s.truth.specified()) | {"all"}


def test_wrong_prompt_fails_the_attribute_it_changes():
    s = make_dataset(1, seed=14, kind="single")[0]
    t = s.truth.objects[0]
    other_colour = next(c for c in ds.COLOURS if c != t.colour)
    other_shape = next(x for x in ds.SHAPES if x != t.shape)
    wrong_colour = dataclasses.replace(s.truth, objects=(dataclasses.replace(t, colour=other_colour),))
    wrong_shape = dataclasses.replace(s.truth, objects=(dataclasses.replace(t, shape=other_shape),))
    assert score_image(s.image, s)["all"]
    r = score_image(s.image, wrong_colour)
    assert not r["colour"] and r["shape"] and not r["all"]
    r = score_image(s.image, wrong_shape)
    assert r["colour"] and not r["shape"] and not r["all"]


def test_swapped_relation_fails():
    s = next(x for x in make_dataset(50, seed=15, kind="pair") if x.truth.relation is not None)
    flip = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
    wrong = dataclasses.replace(s.truth, relation=flip[s.truth.relation])
    assert score_image(s.image, s)["relation"] and not score_image(s.image, wrong)["relation"]


def test_extra_object_breaks_count():
    single = make_dataset(1, seed=16, kind="single")[0]
    obj = single.objects[0]
    extra = ds.SceneObject("green" if obj.colour != "green" else "red", "square",
                           32 - obj.cx, 32 - obj.cy, 7.0)
    if np.hypot(extra.cx - obj.cx, extra.cy - obj.cy) < 12:  # centre object: move the extra one to a corner
        extra = dataclasses.replace(extra, cx=5.0, cy=5.0)
    r = score_image(ds.render([obj, extra]), single)
    assert not r["count"] and not r["all"]


@given(shape=st.sampled_from(ds.SHAPES), colour=st.sampled_from(list(ds.COLOURS)),
       cx=st.floats(8, 24), cy=st.floats(8, 24), extent=st.floats(6.5, 12.5))
def test_detects_any_drawn_object(shape, colour, cx, cy, extent):
    img = ds.render([ds.SceneObject(colour, shape, cx, cy, extent)])
    (obj,) = detect_objects(img)
    assert (obj.colour, obj.shape) == (colour, shape)
    assert abs(obj.cx - cx) <= 1 and abs(obj.cy - cy) <= 1


def test_colour_labels_follow_hue_and_ignore_dull_pixels():
    img = np.array([[[250, 10, 10], [20, 240, 30], [30, 30, 230], [240, 240, 20]],
                    [[128, 128, 128], [20, 20, 20], [90, 0, 0], [230, 20, 230]]], dtype=np.uint8)
    names = list(ds.COLOUR_HUES)
    lab = colour_labels(img)
    assert [names[i] for i in lab[0]] == ["red", "green", "blue", "yellow"]
    assert list(lab[1, :3]) == [-1, -1, -1] and names[lab[1, 3]] == "magenta"


def test_summary_pools_pair_attributes_and_checks_lengths():
    data = make_dataset(10, seed=17, kind="pair")
    per_image = score_images([s.image for s in data], data)
    acc = summarise(per_image)
    assert acc["colour"] == 1.0 and acc["shape"] == 1.0 and acc["all"] == 1.0
    with pytest.raises(ValueError, match="images/truths"):
        score_images([data[0].image], data)
    with pytest.raises(ValueError, match="image"):
        score_image(np.zeros((32, 32)), data[0])
    # mixed kinds: the pooled colour and shape cover the pairs' objects too, not only single-object images
    mixed = make_dataset(20, seed=18, kind="mixed")
    images = [s.image if s.truth.kind == "single" else s.image[..., ::-1] for s in mixed]  # pairs: wrong colours
    per_image = score_images(images, mixed)
    acc = summarise(per_image)
    pooled = pd.concat([per_image[c].dropna() for c in ("colour", "colour_0", "colour_1")])
    assert acc["colour"] == pooled.mean() < 1.0


def test_pixels_in_any_integer_dtype_or_float_unit_range_score_alike():
    """uint8, other integer dtypes (np.array(pil, dtype=int)) and float pixels in [0, 1] are one image; float
    pixels in [0, 255] are refused (clipped to [0, 1] they scored 0 where the image was perfect)."""
    data = make_dataset(6, seed=19, kind="mixed")
    for s in data:
        expected = score_image(s.image, s)
        assert score_image(s.image.astype(np.int64), s) == expected
        assert score_image(s.image / 255.0, s) == expected
    with pytest.raises(ValueError, match=r"float pixels must lie in \[0, 1\]"):
        score_image(data[0].image.astype(np.float32), data[0])
    with pytest.raises(ValueError, match=r"integer pixels must lie in \[0, 255\]"):
        score_image(data[0].image.astype(np.int64) * 2, data[0])
