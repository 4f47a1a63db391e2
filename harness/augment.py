"""Augmentation in keras.ops: the case's random affine map per sample, and the device feed that applies
it with the variant's transform inside the compiled train step, on any Keras backend.

The device feed (speed.device_augment): the training model's input is a batch of sample INDICES;
a layer holds the raw training images and masks as non-trainable variables (so they live on the
accelerator), gathers the batch, augments image and mask with ONE affine matrix per sample
(bilinear for images, nearest for masks), applies the variant's featurewise transform, and hands the
image to the inner model. Its output is concat([prediction, transformed mask], -1); the model's
`compute_loss` splits it and calls the variant's loss on (mask, prediction). Where the arrays are too
large for the device, the same layer takes host batches of images and masks instead (streamed by
Keras from NumPy, shuffled the same way), and train.py says so.
"""
from __future__ import annotations

import math
import os

import keras
import numpy as np
from keras import ops

from harness.data import EPSILON, Transform

# Arrays larger than this stay on the host and are streamed: a quarter of the accelerator's memory
# where the backend says how much it has, else 2 GiB (on the CPU the "device" is host memory, and a
# copy of the arrays is what holding them as variables costs). HARNESS_DEVICE_DATA_MB overrides.
DEVICE_SHARE = 0.25
DEFAULT_LIMIT_MB = 2048


def draw_affine(aug: dict, size: int, n, uniform):
    """One affine map per sample, (n, 8) in affine_transform's layout, from draws uniform(n, lo, hi)
    in a fixed order: rotation, zoom x, zoom y, shift x, shift y, flip. The ranges are the case's
    ImageDataGenerator arguments (degrees; fractions of the width and height; zoom in [1-z, 1+z])."""
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
    images = ops.image.affine_transform(images, transform, interpolation="bilinear", fill_mode=fill_mode)
    masks = ops.image.affine_transform(masks, transform, interpolation="nearest", fill_mode=fill_mode)
    return images, masks


def transform_batch(transform: Transform, images, masks):
    """The variant's transform (data.Transform) in keras.ops: the same float32 arithmetic."""
    if transform.images == "featurewise":
        images = (images - transform.image_stats.mean) / (transform.image_stats.std + np.float32(EPSILON))
    else:
        images = images / 255.0
    if transform.masks == "featurewise":
        masks = (masks - transform.mask_stats.mean) / (transform.mask_stats.std + np.float32(EPSILON))
    elif transform.masks == "signed":
        masks = 2.0 * masks - 1.0
    return images, masks


class DeviceFeed(keras.layers.Layer):
    """Batch -> augmented, transformed (images, masks). With `images`/`masks` given, its input is a
    batch of indices into them (held as variables, on the device); without, a dict of host batches
    {"images", "masks"}. Augments only when training; float32 whatever the global policy."""

    def __init__(self, aug: dict, size: int, transform: Transform, seed: int,
                 images: np.ndarray | None = None, masks: np.ndarray | None = None, **kwargs):
        super().__init__(dtype="float32", **kwargs)
        self.aug, self.size, self.transform = aug, size, transform
        self.seed_generator = keras.random.SeedGenerator(seed)   # tracked: its state is model state
        self.on_device = images is not None
        if self.on_device:
            self.images = keras.Variable(images.astype(np.float32), trainable=False, name="train_images")
            self.masks = keras.Variable(masks.astype(np.float32), trainable=False, name="train_masks")

    def uniform(self, n, lo, hi):
        if not hi > lo:
            return ops.full((n,), lo)
        return keras.random.uniform((n,), lo, hi, seed=self.seed_generator)

    def call(self, inputs, training=False):
        if self.on_device:
            indices = ops.cast(ops.reshape(inputs, (-1,)), "int32")
            images = ops.take(self.images, indices, axis=0)
            masks = ops.take(self.masks, indices, axis=0)
        else:
            images, masks = ops.cast(inputs["images"], "float32"), ops.cast(inputs["masks"], "float32")
        if training:
            n = ops.shape(images)[0]
            transform = draw_affine(self.aug, self.size, n, self.uniform)
            images, masks = apply_affine(images, masks, transform, self.aug["fill_mode"])
        return transform_batch(self.transform, images, masks)


class FedModel(keras.Model):
    """feed -> inner model; output concat([prediction, target], -1), split again by compute_loss, so
    one compiled train step holds gather, augmentation, transform, forward pass and loss."""

    def __init__(self, feed: DeviceFeed, inner: keras.Model, **kwargs):
        super().__init__(**kwargs)
        self.feed, self.inner = feed, inner

    def call(self, inputs, training=False):
        images, targets = self.feed(inputs, training=training)
        prediction = ops.cast(self.inner(images, training=training), "float32")
        return ops.concatenate([prediction, targets], axis=-1)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        # The variant's compiled loss on (target mask, prediction); the fitted `y` is None.
        return super().compute_loss(x, y_pred[..., 1:], y_pred[..., :1], sample_weight, training)


def device_data_limit_bytes() -> int:
    from harness.backend import device_memory_bytes
    if os.environ.get("HARNESS_DEVICE_DATA_MB"):
        return int(float(os.environ["HARNESS_DEVICE_DATA_MB"]) * 2 ** 20)
    memory = device_memory_bytes()
    return int(memory * DEVICE_SHARE) if memory else DEFAULT_LIMIT_MB * 2 ** 20


def build_fed_model(inner: keras.Model, images: np.ndarray, masks: np.ndarray, transform: Transform,
                    aug: dict, seed: int) -> tuple[FedModel, object, str]:
    """-> (model to fit, its `x` for fit(x, shuffle=True), where the data lives: "device" or "host").
    On the device the inputs are the sample indices np.arange(n); Keras shuffles them, seeded by
    keras.utils.set_random_seed, exactly as it would shuffle host arrays (the same batches either way)."""
    on_device = images.nbytes + masks.nbytes <= device_data_limit_bytes()
    size = images.shape[1]
    if on_device:
        feed = DeviceFeed(aug, size, transform, seed, images, masks)
        x = np.arange(len(images), dtype=np.int32)
        model = FedModel(feed, inner)
        model(x[:1])                               # build
    else:
        feed = DeviceFeed(aug, size, transform, seed)
        x = {"images": images.astype(np.float32), "masks": masks.astype(np.float32)}
        model = FedModel(feed, inner)
        model({k: v[:1] for k, v in x.items()})
    return model, x, "device" if on_device else "host"
