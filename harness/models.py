"""The case's U-Net: Conv2D -> BatchNorm -> ReLU blocks, `levels` down, a middle, and back up."""
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
