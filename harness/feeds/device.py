"""The device feed (speed.device_augment), in keras.ops on any backend: augmentation and the variant's
transform run inside the compiled train step.

The training model's input is a batch of sample INDICES; a layer holds the raw training images and
masks as non-trainable variables (so they live on the accelerator), gathers the batch, augments image
and mask with ONE affine matrix per sample (bilinear for images, nearest for masks), applies the
variant's featurewise transform, and hands the image to the inner model. Its output is
concat([prediction, transformed mask], -1); the model's `compute_loss` splits it and calls the
variant's loss on (mask, prediction). Where the arrays are too large for the device, the same layer
takes host batches of images and masks instead (streamed by Keras from NumPy, shuffled the same way).
"""
from __future__ import annotations

import keras
import numpy as np
from keras import ops

from harness import environment
from harness.data import Dataset
from harness.feeds.base import Feed, fit_transform
from harness.transforms import Transform, augment_affine, seeded_uniform

# Arrays larger than this stay on the host and are streamed: a quarter of the accelerator's memory
# where the backend says how much it has, else 2 GiB (on the CPU the "device" is host memory, and a
# copy of the arrays is what holding them as variables costs). HARNESS_DEVICE_DATA_MB overrides.
DEVICE_SHARE = 0.25
DEFAULT_LIMIT_MB = 2048


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

    def call(self, inputs, training=False):
        if self.on_device:
            indices = ops.cast(ops.reshape(inputs, (-1,)), "int32")
            images = ops.take(self.images, indices, axis=0)
            masks = ops.take(self.masks, indices, axis=0)
        else:
            images, masks = ops.cast(inputs["images"], "float32"), ops.cast(inputs["masks"], "float32")
        if training:
            images, masks = augment_affine(self.aug, self.size, images, masks, seeded_uniform(self.seed_generator))
        return self.transform.apply(images, masks)


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
    mib = environment.optional_number(environment.DEVICE_DATA_MB)
    if mib is not None:
        return int(mib * 2 ** 20)
    memory = device_memory_bytes()
    return int(memory * DEVICE_SHARE) if memory else DEFAULT_LIMIT_MB * 2 ** 20


def fits_on_device(images: np.ndarray, masks: np.ndarray) -> bool:
    return images.nbytes + masks.nbytes <= device_data_limit_bytes()


def build_fed_model(inner: keras.Model, images: np.ndarray, masks: np.ndarray, transform: Transform,
                    aug: dict, seed: int, on_device: bool | None = None) -> tuple[FedModel, object, str]:
    """-> (model to fit, its `x` for fit(x, shuffle=True), where the data lives: "device" or "host").
    On the device the inputs are the sample indices np.arange(n); Keras shuffles them, seeded by
    keras.utils.set_random_seed, exactly as it would shuffle host arrays (the same batches either way).
    `on_device` None: where the arrays fit (device_data_limit_bytes)."""
    on_device = fits_on_device(images, masks) if on_device is None else on_device
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


class DeviceAugmentFeed(Feed):
    """Statistics from the host augmenter (as the case's fit(augment=True, rounds)); batches augmented
    on the device inside the train step, the arrays resident there or, where too large, streamed."""

    def __init__(self, dataset: Dataset, images: str, masks: str, aug: dict, batch_size: int, seed: int,
                 host, streamed: bool = False):
        """`host`: the host augmentation of this backend (a module with augment_array and
        sample_batches: tfdata's under TensorFlow, else feeds.base's keras.ops)."""
        self.dataset, self.aug, self.batch_size, self.seed, self.host = dataset, aug, batch_size, seed, host
        self.streamed = streamed
        self.name = "device augment, streamed" if streamed else "device augment"
        self.transform = fit_transform(dataset, images, masks, aug, seed, host.augment_array)

    def fit_inputs(self, model, batch_size: int):
        fed, x, _ = build_fed_model(model, self.dataset.train_images, self.dataset.train_masks, self.transform,
                                    self.aug, self.seed, on_device=not self.streamed)
        return fed, {"x": x, "batch_size": batch_size, "shuffle": True}

    def sample_batches(self, max_batches: int):
        return self.host.sample_batches(self.dataset, self.aug, self.batch_size, self.seed, max_batches)
