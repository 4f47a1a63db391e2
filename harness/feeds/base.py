"""The one interface every feed gives (Feed), and what feeds share: the statistics pass, the
validation arrays, and host augmentation in keras.ops (any backend) for the statistics and samples."""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from harness.data import Dataset
from harness.transforms import Stats, Transform, featurewise_stats, make_augmenter


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
    augment = (lambda x, s: augment_array(aug, x, s)) if rounds else None
    image_stats = featurewise_stats(dataset.train_images, augment, rounds, seed)
    mask_stats = featurewise_stats(dataset.train_masks, augment, rounds, seed)
    return Transform(images, masks, image_stats, mask_stats)


def identity_stats(channels: int) -> Stats:
    return Stats(np.zeros(channels, np.float32), np.ones(channels, np.float32))


def validation_arrays(dataset: Dataset, transform: Transform, validation: str) -> tuple[np.ndarray, np.ndarray]:
    """Validation inputs and targets as the variant feeds them: raw (as loaded) or like training."""
    if validation == "raw":
        return dataset.val_images, dataset.val_masks
    return (transform.image(dataset.val_images).astype(np.float32),
            transform.mask(dataset.val_masks).astype(np.float32))
