"""The case's own code path: two zipped ImageDataGenerators (tf-keras) beside the tf.data pipeline."""
import sys

import numpy as np
import pytest
from conftest import need_module

from harness.config import DEFAULTS
from harness.data import Dataset, make_synthetic
from harness.feeds.choose import fit_transform
from harness.feeds.imagedatagenerator import legacy_pipeline
from harness.transforms import featurewise_stats
from harness.errors import ConfigError

need_module("tf_keras", "pip install '.[legacy]'")


@pytest.fixture(scope="module")
def dataset():
    x, m = make_synthetic(64, 32, 0.15, seed=0)
    return Dataset(x[:48], m[:48], x[48:], m[48:], "test")


def test_featurewise_statistics_of_both_pipelines_agree(dataset):
    aug = DEFAULTS["augment"]                        # rounds = 2, augment = True, as in the case
    _, _, legacy = legacy_pipeline(dataset, "featurewise", "featurewise", aug, 16, seed=1)
    ours = fit_transform(dataset, "featurewise", "featurewise", aug, seed=1)
    plain = featurewise_stats(dataset.train_images)
    # Different random transforms, same distribution: within 2 % (mean) and 5 % (std) of each other.
    np.testing.assert_allclose(legacy.image_stats.mean, ours.image_stats.mean, rtol=0.02)
    np.testing.assert_allclose(legacy.image_stats.std, ours.image_stats.std, rtol=0.05)
    np.testing.assert_allclose(legacy.mask_stats.mean, ours.mask_stats.mean, rtol=0.1)
    np.testing.assert_allclose(legacy.image_stats.mean, plain.mean, rtol=0.02)


def test_zipped_generators_keep_image_and_mask_aligned(dataset):
    image_is_mask = Dataset(np.repeat(dataset.train_masks, 3, -1) * 255, dataset.train_masks,
                            dataset.val_images, dataset.val_masks, "aligned")
    ds, steps, _ = legacy_pipeline(image_is_mask, "scaled", "binary", DEFAULTS["augment"], 16, seed=3)
    assert steps == 3
    for x, m in ds.take(3):
        x, m = x.numpy(), m.numpy()
        assert not np.allclose(m, 0)
        # Same seed, same transform: the scaled image thresholds to the mask but for resampled edges.
        assert np.mean((x[..., 0] >= 0.5) != (m[..., 0] >= 0.5)) < 0.03
        # ImageDataGenerator resamples masks bilinearly, as in the case: their edges are not binary.
        assert len(np.unique(m)) > 2


def test_case_pair_whitens_masks_like_images(dataset):
    ds, _, transform = legacy_pipeline(dataset, "featurewise", "featurewise", DEFAULTS["augment"], 16, seed=1)
    _, m = next(iter(ds))
    f = float(transform.mask_stats.mean[0])
    assert m.numpy().max() == pytest.approx(np.sqrt((1 - f) / f), rel=0.1)     # far above 1: BCE goes negative


def test_missing_tf_keras_is_one_clear_error(monkeypatch, dataset):
    monkeypatch.setitem(sys.modules, "tf_keras", None)
    monkeypatch.setitem(sys.modules, "tf_keras.preprocessing.image", None)
    with pytest.raises(ConfigError, match="pip install 'harness\\[legacy\\]'"):
        legacy_pipeline(dataset, "featurewise", "featurewise", DEFAULTS["augment"], 16, seed=1)
