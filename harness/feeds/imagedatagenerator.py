"""The case's own feed: two zipped ImageDataGenerators (tf-keras), one for images, one for masks,
fed to the Keras 3 model through tf.data (TensorFlow only)."""
from __future__ import annotations

import math

import numpy as np

from harness import backend
from harness.data import Dataset
from harness.errors import ConfigError
from harness.feeds.base import Feed, identity_stats, untuned_fit_options
from harness.transforms import Stats, Transform


def legacy_generator(aug: dict, featurewise: bool, rescale: float | None = None):
    """One ImageDataGenerator with the case's arguments (featurewise or only geometric)."""
    import warnings
    # tf-keras still imports scipy.ndimage.interpolation, deprecated in SciPy: one warning per image.
    warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*scipy.ndimage")
    try:
        from tf_keras.preprocessing.image import ImageDataGenerator
    except ImportError:
        raise ConfigError("pipeline = 'imagedatagenerator' needs the tf-keras package: "
                          "pip install 'harness[legacy]' (or pip install tf-keras)") from None
    return ImageDataGenerator(featurewise_center=featurewise, featurewise_std_normalization=featurewise,
                              rotation_range=aug["rotation_range"], width_shift_range=aug["width_shift_range"],
                              height_shift_range=aug["height_shift_range"], zoom_range=aug["zoom_range"],
                              horizontal_flip=aug["horizontal_flip"], fill_mode=aug["fill_mode"], rescale=rescale)


def generator_stats(gen, channels: int) -> Stats:
    """A fitted generator's featurewise statistics; identity statistics where it does not whiten."""
    if not gen.featurewise_center:
        return identity_stats(channels)
    return Stats(gen.mean.ravel().astype(np.float32), gen.std.ravel().astype(np.float32))


def legacy_pipeline(dataset: Dataset, images: str, masks: str, aug: dict, batch_size: int, seed: int):
    """The case's pair: two generators from one argument dict, each fit(augment=True, rounds, seed),
    flow(seed) with one seed, zipped. -> (tf.data.Dataset, steps per epoch, Transform).

    Masks go through the same bilinear resampling as images (order=1), as in the case, so their
    edges are not binary. Wrapped in tf.data: Keras 3 rejects a bare zip, and a Python generator
    handed to fit was seen to stall 30-40 s after the last epoch."""
    import tensorflow as tf
    rounds = aug["stats_rounds"]
    image_gen = legacy_generator(aug, images == "featurewise", rescale=None if images == "featurewise" else 1 / 255)
    mask_gen = legacy_generator(aug, masks == "featurewise")
    for gen, x in ((image_gen, dataset.train_images), (mask_gen, dataset.train_masks)):
        if gen.featurewise_center:
            gen.fit(x, augment=rounds > 0, rounds=max(rounds, 1), seed=seed)
    transform = Transform(images, masks, generator_stats(image_gen, dataset.train_images.shape[-1]),
                          generator_stats(mask_gen, 1))
    signed = masks == "signed"

    def zipped():
        # Runs once the generator dataset's op is built, which has just set glibc's malloc for
        # generators; put back, training's large buffers are reused (harness/backend.py).
        backend.keep_large_buffers_reused()
        flows = zip(image_gen.flow(dataset.train_images, batch_size=batch_size, seed=seed),
                    mask_gen.flow(dataset.train_masks, batch_size=batch_size, seed=seed))
        for x, m in flows:
            yield x.astype(np.float32), (2.0 * m - 1.0 if signed else m).astype(np.float32)

    size, channels = dataset.train_images.shape[1], dataset.train_images.shape[-1]
    spec = (tf.TensorSpec((None, size, size, channels), tf.float32), tf.TensorSpec((None, size, size, 1), tf.float32))
    ds = tf.data.Dataset.from_generator(zipped, output_signature=spec).prefetch(2).with_options(untuned_fit_options())
    return ds, math.ceil(len(dataset.train_images) / batch_size), transform


def sample_batches(dataset: Dataset, aug: dict, batch_size: int, seed: int, max_batches: int):
    """The first `max_batches` training batches, in order, from a geometric-only pair (untransformed)."""
    gen = legacy_generator(aug, featurewise=False)
    images = gen.flow(dataset.train_images, batch_size=batch_size, shuffle=False, seed=seed)
    masks = gen.flow(dataset.train_masks, batch_size=batch_size, shuffle=False, seed=seed)
    for _, (x, m) in zip(range(min(max_batches, len(images))), zip(images, masks)):
        yield x, m


class ImageDataGeneratorFeed(Feed):
    """The generators' own statistics (fit(augment=True, rounds, seed)) and their zipped batches."""
    name = "imagedatagenerator"

    def __init__(self, dataset: Dataset, images: str, masks: str, aug: dict, batch_size: int, seed: int):
        self.dataset, self.aug, self.batch_size, self.seed = dataset, aug, batch_size, seed
        self.pipeline, self.steps, self.transform = legacy_pipeline(dataset, images, masks, aug, batch_size, seed)

    def fit_inputs(self, model, batch_size: int):
        return model, {"x": self.pipeline, "steps_per_epoch": self.steps, "shuffle": False}

    def sample_batches(self, max_batches: int):
        return sample_batches(self.dataset, self.aug, self.batch_size, self.seed, max_batches)
