"""The leaf of the data flow: featurewise statistics, the variant's transform, and the case's random
affine augmentation (its draws and its maths, written once). Imports nothing of the harness.

Arrays: images float32 (N, H, W, C), masks float32 (N, H, W, 1). Every function here works on NumPy
arrays and on Keras tensors alike; Keras is imported where a function needs it, so importing this
module stays cheap.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

EPSILON = 1e-6  # ImageDataGenerator divides by std + 1e-6


@dataclass(frozen=True)
class Stats:
    """Featurewise statistics, per channel, shape (C,)."""
    mean: np.ndarray
    std: np.ndarray


def featurewise_stats(x: np.ndarray, augment=None, rounds: int = 0, seed: int = 0) -> Stats:
    """ImageDataGenerator.fit: per-channel mean and std over all pixels; with augment and rounds,
    over `rounds` augmented copies of x (and not x itself), as `fit(x, augment=True, rounds=r)`."""
    if augment is not None and rounds > 0:
        x = np.concatenate([augment(x, seed + r) for r in range(rounds)])
    x = x.astype(np.float64)
    return Stats(mean=x.mean(axis=(0, 1, 2)).astype(np.float32), std=x.std(axis=(0, 1, 2)).astype(np.float32))


def standardize(x, stats: Stats):
    """ImageDataGenerator.standardize with featurewise_center and featurewise_std_normalization."""
    return (x - stats.mean) / (stats.std + EPSILON)


@dataclass(frozen=True)
class Transform:
    """How one variant feeds images and masks; applies to NumPy arrays and tensors alike."""
    images: str
    masks: str
    image_stats: Stats
    mask_stats: Stats

    def image(self, x):
        return standardize(x, self.image_stats) if self.images == "featurewise" else x / 255.0

    def mask(self, m):
        if self.masks == "featurewise":
            return standardize(m, self.mask_stats)
        if self.masks == "signed":
            return 2.0 * m - 1.0
        return m

    def apply(self, images, masks):
        """(images, masks) as the variant trains on them."""
        return self.image(images), self.mask(masks)

    def levels(self) -> dict[int, float]:
        """What a background (0) and a foreground (1) pixel become as training targets."""
        return {c: float(np.asarray(self.mask(np.float32(c))).ravel()[0]) for c in (0, 1)}


# ----------------------------------------------------------------------------------------------
# The case's random augmentation: one affine map per sample, for image and mask alike

def seeded_uniform(seed_generator):
    """uniform(n, lo, hi) -> (n,) draws from a keras.random.SeedGenerator; a constant where the
    range is empty (a disabled augmentation draws nothing)."""
    import keras
    from keras import ops

    def uniform(n, lo, hi):
        if not hi > lo:
            return ops.full((n,), lo)
        return keras.random.uniform((n,), lo, hi, seed=seed_generator)

    return uniform


def draw_affine(aug: dict, size: int, n, uniform):
    """One affine map per sample, (n, 8) in affine_transform's layout, from draws uniform(n, lo, hi)
    in a fixed order: rotation, zoom x, zoom y, shift x, shift y, flip. The ranges are the case's
    ImageDataGenerator arguments (degrees; fractions of the width and height; zoom in [1-z, 1+z])."""
    from keras import ops
    centre = (size - 1) / 2.0
    theta_max = math.radians(aug["rotation_range"])
    shift_x, shift_y = aug["width_shift_range"] * size, aug["height_shift_range"] * size
    z = aug["zoom_range"]
    theta = uniform(n, -theta_max, theta_max)
    zx, zy = uniform(n, 1 - z, 1 + z), uniform(n, 1 - z, 1 + z)
    tx, ty = uniform(n, -shift_x, shift_x), uniform(n, -shift_y, shift_y)
    flip = (ops.where(uniform(n, 0.0, 1.0) < 0.5, -1.0, 1.0) if aug["horizontal_flip"]
            else ops.ones((n,)))
    cos, sin = ops.cos(theta), ops.sin(theta)
    # Output pixel (x, y) samples input pixel M (x - c, y - c) + c + t, M = R(theta) diag(zx, zy) diag(flip, 1).
    m00, m01 = cos * zx * flip, -sin * zy
    m10, m11 = sin * zx * flip, cos * zy
    return ops.stack([m00, m01, centre + tx - (m00 + m01) * centre,
                      m10, m11, centre + ty - (m10 + m11) * centre,
                      ops.zeros((n,)), ops.zeros((n,))], axis=1)


def apply_affine(images, masks, transform, fill_mode: str):
    """The same maps on images (bilinear) and masks (nearest: they stay binary and aligned)."""
    from keras import ops
    images = ops.image.affine_transform(images, transform, interpolation="bilinear", fill_mode=fill_mode)
    masks = ops.image.affine_transform(masks, transform, interpolation="nearest", fill_mode=fill_mode)
    return images, masks


def augment_affine(aug: dict, size: int, images, masks, uniform):
    """The case's rotation, shifts, zoom and flip composed into ONE affine map per sample and applied
    with a single resampling (keras.ops.image.affine_transform), as ImageDataGenerator does. Chaining
    RandomRotation, RandomTranslation and RandomZoom resamples three times: measured on the
    synthetic set, that cut the images' pixel-to-pixel variation 3x and the model, trained on
    blurred images, failed on sharp validation images."""
    from keras import ops
    transform = draw_affine(aug, size, ops.shape(images)[0], uniform)
    return apply_affine(images, masks, transform, aug["fill_mode"])


def make_augmenter(aug: dict, size: int, seed: int):
    """augment(images, masks) -> (images, masks), one random geometric transform per sample applied
    to both: images bilinear, masks nearest-neighbour (they stay binary and aligned)."""
    if aug["engine"] == "layers":
        return make_layer_augmenter(aug, seed)
    import keras
    uniform = seeded_uniform(keras.random.SeedGenerator(seed))
    return lambda images, masks: augment_affine(aug, size, images, masks, uniform)


def make_layer_augmenter(aug: dict, seed: int):
    """Keras 3 preprocessing layers on {"images", "segmentation_masks"}: same transform for both,
    masks nearest-neighbour; each layer resamples the image once more."""
    import keras
    fill = aug["fill_mode"]
    layers = []
    if aug["rotation_range"]:
        layers.append(keras.layers.RandomRotation(aug["rotation_range"] / 360.0, fill_mode=fill, seed=seed))
    if aug["width_shift_range"] or aug["height_shift_range"]:
        layers.append(keras.layers.RandomTranslation(aug["height_shift_range"], aug["width_shift_range"],
                                                     fill_mode=fill, seed=seed + 1))
    if aug["zoom_range"]:
        z = aug["zoom_range"]
        layers.append(keras.layers.RandomZoom((-z, z), (-z, z), fill_mode=fill, seed=seed + 2))
    if aug["horizontal_flip"]:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed + 3))

    def augment(images, masks):
        batch = {"images": images, "segmentation_masks": masks}
        for layer in layers:
            batch = layer(batch, training=True)
        return batch["images"], batch["segmentation_masks"]

    return augment
