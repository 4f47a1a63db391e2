"""The tf.data feed (TensorFlow only): shuffle -> batch -> augment image and mask together -> the
variant's transform -> prefetch; and the host augmentation the statistics pass and `harness check`
use under TensorFlow, in tf.data as training augments."""
from __future__ import annotations

import numpy as np

from harness.data import Dataset
from harness.feeds.base import Feed, fit_transform, untuned_fit_options
from harness.transforms import Transform, augment_affine, make_augmenter, seeded_uniform


def augment_array(aug: dict, x: np.ndarray, seed: int, batch_size: int = 256) -> np.ndarray:
    """Augment a NumPy array of images (no masks) in tf.data, as the training pipeline does, e.g. for
    featurewise statistics over rounds."""
    import tensorflow as tf
    augment = make_augmenter(aug, x.shape[1], seed)
    dummy = np.zeros(x.shape[:3] + (1,), np.float32)
    ds = tf.data.Dataset.from_tensor_slices((x, dummy)).batch(batch_size).map(augment)
    return np.concatenate([img.numpy() for img, _ in ds])


def sample_batches(dataset: Dataset, aug: dict, batch_size: int, seed: int, max_batches: int):
    """The first `max_batches` training batches, in order, augmented in tf.data."""
    import tensorflow as tf
    augment = make_augmenter(aug, dataset.train_images.shape[1], seed)
    ds = (tf.data.Dataset.from_tensor_slices((dataset.train_images, dataset.train_masks))
          .batch(batch_size).take(max_batches).map(augment))
    for images, masks in ds:
        yield images.numpy(), masks.numpy()


def make_keyed_augmenter(aug: dict, size: int, seed: int):
    """augment(images, masks, key): with `key` (a [2] int tensor) every draw is stateless (the same
    key, the same transform), so batches can be augmented in parallel and still reproducibly."""
    import keras
    import tensorflow as tf
    stream = seeded_uniform(keras.random.SeedGenerator(seed))
    draw = {"key": None, "count": 0}

    def uniform(n, lo, hi):
        if draw["key"] is None or not hi > lo:
            return stream(n, lo, hi)
        draw["count"] += 1
        return tf.random.stateless_uniform((n,), seed=draw["key"] + [0, draw["count"]], minval=lo, maxval=hi)

    def augment(images, masks, key):
        draw["key"], draw["count"] = key, 0
        return augment_affine(aug, size, images, masks, uniform)

    return augment


def train_pipeline(dataset: Dataset, transform: Transform, aug: dict, batch_size: int, seed: int,
                   parallel: bool = False):
    """Shuffle -> batch -> augment image and mask together -> the variant's transform -> prefetch.

    By default batches are augmented one after another from one random stream. `parallel` (the
    affine engine only) gives each batch its own stateless key, drawn per epoch from the seed, and
    augments batches on all cores: reproducible still, but another random stream."""
    import tensorflow as tf
    size = dataset.train_images.shape[1]
    batches = (tf.data.Dataset.from_tensor_slices((dataset.train_images, dataset.train_masks))
               .shuffle(len(dataset.train_images), seed=seed, reshuffle_each_iteration=True)
               .batch(batch_size))
    if not (parallel and aug["engine"] == "affine"):
        augment = make_augmenter(aug, size, seed)
        return batches.map(lambda images, masks: transform.apply(*augment(images, masks))).prefetch(tf.data.AUTOTUNE)
    augment = make_keyed_augmenter(aug, size, seed)
    keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return (tf.data.Dataset.zip(batches, keys)
            .map(lambda pair, key: transform.apply(*augment(*pair, tf.cast(key % (2 ** 31 - 1), tf.int32))),
                 num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .prefetch(tf.data.AUTOTUNE))


class TFDataFeed(Feed):
    """Statistics over tf.data-augmented rounds; batches from train_pipeline (it shuffles)."""
    name = "tfdata"

    def __init__(self, dataset: Dataset, images: str, masks: str, aug: dict, batch_size: int, seed: int,
                 parallel: bool = False):
        self.dataset, self.aug, self.batch_size, self.seed = dataset, aug, batch_size, seed
        self.transform = fit_transform(dataset, images, masks, aug, seed, augment_array)
        self.pipeline = train_pipeline(dataset, self.transform, aug, batch_size, seed, parallel=parallel)

    def fit_inputs(self, model, batch_size: int):
        # One iterator for the whole fit, repeated: Keras keeps it from epoch to epoch when
        # steps_per_epoch is given. Handed the finite pipeline, Keras 3.15 makes a new iterator at
        # each epoch's end and another at the next epoch's start (EpochIterator._enumerate_iterator),
        # so the batches of epoch 2 on were not the pipeline's own second pass: the discarded
        # iterator's prefetch drew shuffle seeds and augmentations first. Repeated, fit trains on
        # exactly the pipeline's passes (tests/test_feeds.py), and each epoch saves two
        # instantiations of the augmentation's map function, about 30 ms each at 48x48.
        # Without tf.data's autotuning: with it, in 6 of 20 runs of a 5-epoch point, fit took 4.4 to
        # 5.1 s more to return after its last epoch, tearing the iterator down; without it, 0 of 10.
        # The batches are the same (tests/test_feeds.py).
        steps = -(-len(self.dataset.train_images) // self.batch_size)
        return model, {"x": self.pipeline.repeat().with_options(untuned_fit_options()), "steps_per_epoch": steps,
                       "shuffle": False}

    def sample_batches(self, max_batches: int):
        return sample_batches(self.dataset, self.aug, self.batch_size, self.seed, max_batches)
