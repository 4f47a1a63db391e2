"""Models built from config: the case's U-Net (Conv2D -> BatchNorm -> ReLU blocks, `levels` down, a
middle, and back up), or a user's own builder named in the experiment."""
from __future__ import annotations

import keras
from keras import layers


def conv_block(x, depth: int, bn_momentum: float):
    for _ in range(2):
        x = layers.Conv2D(depth, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization(momentum=bn_momentum)(x)
        x = layers.Activation("relu")(x)
    return x


def build_unet(image_size: int, channels: int, start_depth: int, levels: int, head: str,
               bn_momentum: float = 0.99) -> keras.Model:
    """U-Net with `levels` poolings; depth doubles per level; a 1x1 conv with `head` activation.

    Input (image_size, image_size, channels) float32; output (image_size, image_size, 1).
    """
    inputs = keras.Input((image_size, image_size, channels))
    skips, x = [], inputs
    for level in range(levels):
        x = conv_block(x, start_depth * 2 ** level, bn_momentum)
        skips.append(x)
        x = layers.MaxPooling2D(2)(x)
    x = conv_block(x, start_depth * 2 ** levels, bn_momentum)
    for level in reversed(range(levels)):
        x = layers.Conv2DTranspose(start_depth * 2 ** level, 2, strides=2, padding="same")(x)
        x = layers.Concatenate()([x, skips[level]])
        x = conv_block(x, start_depth * 2 ** level, bn_momentum)
    # float32 head: the losses take logs of it.
    outputs = layers.Conv2D(1, 1, activation=head, dtype="float32")(x)
    return keras.Model(inputs, outputs, name="unet")


def build_model(cfg, input_shape: tuple[int, int, int], activation: str) -> keras.Model:
    """The experiment's model: the user's `model.builder` ("module:function", called with the input
    shape (H, W, C) and the head's activation name, returning a Keras model whose output is
    (H, W, 1)), or the case's U-Net from the `[model]` settings."""
    spec = cfg["model"]["builder"]
    if spec:
        from harness.user_code import load_object
        builder, _ = load_object(spec, cfg.source_dir, what="model builder")
        model = builder(tuple(input_shape), activation)
        if not isinstance(model, keras.Model):
            raise TypeError(f"model builder {spec!r} returned {type(model).__name__}, not a keras.Model")
        return model
    size, _, channels = input_shape
    m = cfg["model"]
    return build_unet(size, channels, m["start_depth"], m["levels"], activation, m["bn_momentum"])


def load_model_builder(cfg) -> None:
    """Import the user's builder now, so a wrong name fails before the first point trains."""
    if cfg["model"]["builder"]:
        from harness.user_code import load_object
        load_object(cfg["model"]["builder"], cfg.source_dir, what="model builder")
