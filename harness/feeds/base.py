"""The one interface every feed gives (Feed), and what feeds share: the statistics pass, the
validation arrays, and host augmentation in keras.ops (any backend) for the statistics and samples."""
from __future__ import annotations

import hashlib
import json
from typing import Callable, Iterator

import numpy as np

from harness.data import Dataset
from harness.transforms import Stats, Transform, featurewise_stats, make_augmenter


def untuned_fit_options():
    """tf.data options without autotuning, for a pipeline fit() reads (TensorFlow only): with it, fit
    was seen to take seconds more to return after its last epoch, tearing the iterator down
    (harness/feeds/tfdata.py: fit_inputs). The batches are the same."""
    import tensorflow as tf
    options = tf.data.Options()
    options.autotune.enabled = False
    return options


class Feed:
    """How one variant's training batches reach the model.

    `name`: what the run records ("tfdata", "imagedatagenerator", "device augment",
    "device augment, streamed"); `transform`: the variant's Transform with its fitted statistics.
    Building a feed does what must happen before the model is built (the statistics pass, the
    pipeline); `fit_inputs` what needs the model."""
    name: str
    transform: Transform

    def fit_inputs(self, model, batch_size: int) -> tuple[object, dict]:
        """-> (the model fit() trains: `model` or a wrapper around it, fit's data arguments)."""
        raise NotImplementedError

    def sample_batches(self, max_batches: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Augmented, untransformed training batches as NumPy (images 0..255, masks as augmented),
        as this feed augments them: what `harness check` measures training's targets on."""
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------
# Host augmentation in keras.ops, batch by batch (backends other than TensorFlow)

def augment_array(aug: dict, x: np.ndarray, seed: int, batch_size: int = 256) -> np.ndarray:
    """Augment a NumPy array of images (no masks) batch by batch in keras.ops, from one seeded
    generator (another backend, another random stream than tf.data's)."""
    augment = make_augmenter(aug, x.shape[1], seed)
    dummy = np.zeros(x.shape[:3] + (1,), np.float32)
    return np.concatenate([np.asarray(augment(x[i:i + batch_size], dummy[i:i + batch_size])[0])
                           for i in range(0, len(x), batch_size)])


def sample_batches(dataset: Dataset, aug: dict, batch_size: int, seed: int, max_batches: int):
    """The first `max_batches` training batches, in order, augmented in keras.ops."""
    augment = make_augmenter(aug, dataset.train_images.shape[1], seed)
    for i in range(0, min(len(dataset.train_images), max_batches * batch_size), batch_size):
        images, masks = augment(dataset.train_images[i:i + batch_size], dataset.train_masks[i:i + batch_size])
        yield np.asarray(images), np.asarray(masks)


# ----------------------------------------------------------------------------------------------
# Shared by the feeds

def fit_transform(dataset: Dataset, images: str, masks: str, aug: dict, seed: int,
                  augment_array: Callable = augment_array) -> Transform:
    """Featurewise statistics of the training images and masks, as the case's two generators compute
    them: over `augment.stats_rounds` augmented copies, augmented by `augment_array(aug, x, seed)`."""
    rounds = aug["stats_rounds"]
    image_stats = augmented_stats(dataset.train_images, aug, rounds, seed, augment_array)
    mask_stats = augmented_stats(dataset.train_masks, aug, rounds, seed, augment_array)
    return Transform(images, masks, image_stats, mask_stats)


# The statistics depend on the array, the augmentation, its seed and rounds, and nothing else: every
# variant of a seed shares them, and `harness check` computes the first seed's before the sweep. So
# they are computed once per process: at the default size each computation is four traced
# augmentation passes over the training set, 1.2 s, which every point and every checked variant paid.
_STATS: dict[tuple, Stats] = {}


def augmented_stats(x: np.ndarray, aug: dict, rounds: int, seed: int, augment_array: Callable) -> Stats:
    key = (array_digest(x), json.dumps(aug, sort_keys=True, default=str), rounds, seed,
           f"{augment_array.__module__}.{augment_array.__qualname__}")
    if key not in _STATS:
        augment = (lambda a, s: augment_array(aug, a, s)) if rounds else None
        _STATS[key] = featurewise_stats(x, augment, rounds, seed)
    return _STATS[key]


def array_digest(x: np.ndarray) -> str:
    """Its shape, dtype and every value, hashed (a few milliseconds for the default training set)."""
    h = hashlib.blake2b(f"{x.shape}{x.dtype}".encode(), digest_size=16)
    h.update(np.ascontiguousarray(x).tobytes())
    return h.hexdigest()


def identity_stats(channels: int) -> Stats:
    return Stats(np.zeros(channels, np.float32), np.ones(channels, np.float32))


def validation_arrays(dataset: Dataset, transform: Transform, validation: str) -> tuple[np.ndarray, np.ndarray]:
    """Validation inputs and targets as the variant feeds them: raw (as loaded) or like training."""
    if validation == "raw":
        return dataset.val_images, dataset.val_masks
    return (transform.image(dataset.val_images).astype(np.float32),
            transform.mask(dataset.val_masks).astype(np.float32))
