"""Tiny data and models for the doctor's induced-failure scripts beside this file (they import it as a
user's script imports its own helpers: from the script's folder)."""
import numpy as np
import keras
from keras import layers


def make_pairs(n=160, size=32, seed=0):
    """n RGB images in [0, 1] with bright ellipses, and their binary masks (about 15 % foreground)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    images = np.empty((n, size, size, 3), np.float32)
    masks = np.zeros((n, size, size, 1), np.float32)
    for i in range(n):
        for _ in range(rng.integers(1, 3)):
            cy, cx, r = rng.uniform(0.25, 0.75), rng.uniform(0.25, 0.75), rng.uniform(0.1, 0.2)
            masks[i, ((yy - cy) / r) ** 2 + ((xx - cx) / r) ** 2 <= 1, 0] = 1
        images[i] = np.clip(0.35 + 0.3 * masks[i] + rng.normal(0, 0.08, (size, size, 3)), 0, 1)
    return images, masks


def unet(size=32, channels=3, depth=8, activation="sigmoid"):
    """A two-level U-Net: Conv2D + BatchNorm + ReLU blocks."""
    def block(x, d):
        x = layers.Conv2D(d, 3, padding="same")(x)
        x = layers.BatchNormalization(momentum=0.9)(x)
        return layers.Activation("relu")(x)
    inputs = keras.Input((size, size, channels))
    a = block(inputs, depth)
    b = block(layers.MaxPooling2D()(a), depth * 2)
    c = block(layers.MaxPooling2D()(b), depth * 4)
    b = block(layers.Concatenate()([layers.UpSampling2D()(c), b]), depth * 2)
    a = block(layers.Concatenate()([layers.UpSampling2D()(b), a]), depth)
    return keras.Model(inputs, layers.Conv2D(1, 1, activation=activation)(a))
