"""The one place a feed is chosen (choose_feed), and the host augmentation of this Keras backend (the
statistics pass and the sampled batches: tf.data under TensorFlow, keras.ops elsewhere)."""
from __future__ import annotations

from harness import backend
from harness.errors import needs_tensorflow
from harness.feeds.base import Feed, validation_arrays
from harness.feeds import base as _ops_host

__all__ = ["Feed", "augment_array", "choose_feed", "fit_transform", "host_augmentation", "sample_batches",
           "validation_arrays"]


def host_augmentation():
    """Host augmentation for the statistics pass and the sampled batches: tf.data under TensorFlow
    (as training augments), keras.ops batch by batch under another backend. -> a module with
    augment_array(aug, x, seed) and sample_batches(dataset, aug, batch_size, seed, max_batches)."""
    if backend.backend_name() == "tensorflow":
        from harness.feeds import tfdata
        return tfdata
    return _ops_host


def augment_array(aug: dict, x, seed: int):
    """Augmented images (no masks), by this backend's host augmentation."""
    return host_augmentation().augment_array(aug, x, seed)


def sample_batches(dataset, aug: dict, batch_size: int, seed: int, max_batches: int):
    """The first training batches, augmented and untransformed, by this backend's host augmentation."""
    return host_augmentation().sample_batches(dataset, aug, batch_size, seed, max_batches)


def fit_transform(dataset, images: str, masks: str, aug: dict, seed: int):
    """The variant's Transform with featurewise statistics over host-augmented rounds (this backend's)."""
    return _ops_host.fit_transform(dataset, images, masks, aug, seed, host_augmentation().augment_array)


def choose_feed(cfg, dataset, variant, seed: int) -> Feed:
    """The feed for one (variant, seed), by the resolved config: pipeline "imagedatagenerator" -> the
    case's generator pair; speed.device_augment -> the device feed, streamed where the arrays exceed
    the device data limit; else tf.data. The first two of those need TensorFlow."""
    pipeline, speed, aug = cfg["pipeline"], cfg["speed"], cfg["augment"]
    batch_size, name = cfg["train"]["batch_size"], backend.backend_name()
    if name != "tensorflow" and not speed["device_augment"]:
        raise needs_tensorflow(pipeline, name)
    if pipeline == "imagedatagenerator":
        from harness.feeds.imagedatagenerator import ImageDataGeneratorFeed
        return ImageDataGeneratorFeed(dataset, variant.images, variant.masks, aug, batch_size, seed)
    if speed["device_augment"]:
        from harness.feeds.device import DeviceAugmentFeed, fits_on_device
        streamed = not fits_on_device(dataset.train_images, dataset.train_masks)
        return DeviceAugmentFeed(dataset, variant.images, variant.masks, aug, batch_size, seed,
                                 host_augmentation(), streamed=streamed)
    from harness.feeds.tfdata import TFDataFeed
    return TFDataFeed(dataset, variant.images, variant.masks, aug, batch_size, seed,
                      parallel=speed["parallel_augment"])
