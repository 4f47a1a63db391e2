"""Small stand-ins for the question's data and model, shared by the scripts beside it: image/mask
pairs (bright ellipses on a textured background, about 15 % foreground) and the question's U-Net
(Conv2D + BatchNorm + ReLU blocks, max pooling down, transposed convolutions up), shrunk."""
import numpy as np
import keras
from keras import layers


def make_pairs(n=384, size=64, seed=0):
    """n RGB images in [0, 255] and their binary masks, float32, shapes (n, size, size, 3) and (n, size, size, 1)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    images = np.empty((n, size, size, 3), np.float32)
    masks = np.zeros((n, size, size, 1), np.float32)
    for i in range(n):
        for _ in range(rng.integers(1, 4)):
            cy, cx, ry, rx = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.06, 0.18), rng.uniform(0.06, 0.18)
            masks[i, ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1, 0] = 1
        texture = rng.normal(0, 1, (size // 8, size // 8, 3)).repeat(8, 0).repeat(8, 1)
        images[i] = np.clip(90 + 25 * texture + 70 * masks[i] + rng.normal(0, 12, (size, size, 3)), 0, 255)
    return images, masks


def block(x, depth):
    for _ in range(2):
        x = layers.Conv2D(depth, 3, padding="same")(x)
        # A faster moving average than Keras' 0.99: a few epochs of few steps each are enough for it.
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.Activation("relu")(x)
    return x


def unet(size=64, channels=3, depth=8, levels=3, activation="sigmoid"):
    inputs = keras.Input((size, size, channels))
    x, skips = inputs, []
    for level in range(levels):
        x = block(x, depth * 2 ** level)
        skips.append(x)
        x = layers.MaxPooling2D()(x)
    x = block(x, depth * 2 ** levels)
    for level in reversed(range(levels)):
        x = layers.Conv2DTranspose(depth * 2 ** level, 2, strides=2, padding="same")(x)
        x = block(layers.Concatenate()([x, skips[level]]), depth * 2 ** level)
    return keras.Model(inputs, layers.Conv2D(1, 1, activation=activation)(x))
