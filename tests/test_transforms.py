"""harness/transforms.py, the leaf of the data flow: statistics, the variant's transform, the affine
draws and maths. Marker `backend`: CI runs them again under KERAS_BACKEND=jax."""
import copy

import numpy as np
import pytest

from test_layout import import_graph
from harness.config import DEFAULTS
from harness.transforms import (EPSILON, Stats, Transform, draw_affine, featurewise_stats, make_augmenter,
                                seeded_uniform)

backend_test = pytest.mark.backend
STATS3 = Stats(np.array([10.0, 20.0, 30.0], np.float32), np.array([2.0, 4.0, 5.0], np.float32))
STATS1 = Stats(np.array([0.25], np.float32), np.array([0.5], np.float32))


def test_the_leaf_imports_nothing_of_the_harness():
    assert import_graph()["harness.transforms"] == set()


def test_transform_applies_the_variants_arithmetic():
    x = np.full((1, 2, 2, 3), 30.0, np.float32)
    m = np.array([0.0, 1.0], np.float32).reshape(1, 1, 2, 1)
    whiten = Transform("featurewise", "featurewise", STATS3, STATS1)
    np.testing.assert_array_equal(whiten.image(x), (x - STATS3.mean) / (STATS3.std + EPSILON))
    np.testing.assert_array_equal(whiten.mask(m), (m - STATS1.mean) / (STATS1.std + EPSILON))
    images, masks = whiten.apply(x, m)
    np.testing.assert_array_equal(images, whiten.image(x))
    np.testing.assert_array_equal(masks, whiten.mask(m))
    scaled = Transform("scaled", "signed", STATS3, STATS1)
    np.testing.assert_array_equal(scaled.image(x), x / 255.0)
    assert scaled.levels() == {0: -1.0, 1: 1.0}
    assert Transform("scaled", "binary", STATS3, STATS1).levels() == {0: 0.0, 1: 1.0}


def test_featurewise_stats_over_augmented_rounds_leave_the_plain_array_out():
    x = np.arange(2 * 2 * 2 * 1, dtype=np.float32).reshape(2, 2, 2, 1)
    doubled = featurewise_stats(x, lambda a, s: a * 0 + s, rounds=2, seed=3)   # rounds are 3s, then 4s
    assert doubled.mean[0] == pytest.approx(3.5)
    assert featurewise_stats(x).mean[0] == pytest.approx(x.mean())


@backend_test
def test_no_augmentation_draws_the_identity_map():
    aug = dict(copy.deepcopy(DEFAULTS["augment"]), rotation_range=0, width_shift_range=0.0,
               height_shift_range=0.0, zoom_range=0.0, horizontal_flip=False)
    import keras
    maps = np.asarray(draw_affine(aug, 8, 3, seeded_uniform(keras.random.SeedGenerator(1))))
    np.testing.assert_allclose(maps, np.tile([1, 0, 0, 0, 1, 0, 0, 0], (3, 1)), atol=1e-6)


@backend_test
def test_one_seed_one_stream_and_image_and_mask_move_together():
    aug = copy.deepcopy(DEFAULTS["augment"])
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (4, 16, 16, 3)).astype(np.float32)
    masks = (images[..., :1] > 128).astype(np.float32)
    first = [np.asarray(a) for a in make_augmenter(aug, 16, seed=7)(images, masks)]
    again = [np.asarray(a) for a in make_augmenter(aug, 16, seed=7)(images, masks)]
    other = [np.asarray(a) for a in make_augmenter(aug, 16, seed=8)(images, masks)]
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])
    assert set(np.unique(first[1])) <= {0.0, 1.0}        # nearest: masks stay binary
