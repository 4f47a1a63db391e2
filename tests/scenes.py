"""Test data for the leakage check: frames of a slowly moving scene, as a video or a volume gives them."""
from pathlib import Path

import numpy as np
from PIL import Image


def moving_scene(n: int = 40, size: int = 32, speed: int = 2, blur: float = 3.0, seed: int = 0):
    """n frames (n, size, size, 1), values 0..255, each the previous one shifted `speed` pixels
    sideways over a smooth random texture (Gaussian-blurred noise, `blur` px), plus a little pixel
    noise; masks (n, size, size, 1) {0, 1}: where the texture is above its median."""
    rng = np.random.default_rng(seed)
    width = size + speed * (n - 1)
    noise = rng.normal(size=(size, width))
    fy, fx = np.fft.fftfreq(size)[:, None], np.fft.rfftfreq(width)[None, :]
    texture = np.fft.irfft2(np.fft.rfft2(noise) * np.exp(-2 * (np.pi * blur) ** 2 * (fy ** 2 + fx ** 2)), s=noise.shape)
    texture = (texture - texture.mean()) / texture.std()
    frames = np.stack([texture[:, t * speed:t * speed + size] for t in range(n)])
    images = np.clip(128 + 40 * frames + rng.normal(0, 3, frames.shape), 0, 255)
    return images[..., None].astype(np.float32), (frames > np.median(texture))[..., None].astype(np.float32)


def write_folder(root: Path, images: np.ndarray, masks: np.ndarray, stems: list[str]) -> Path:
    """images/ and masks/ as 8-bit PNGs named by `stems`."""
    for sub, arrays, scale in (("images", images, 1), ("masks", masks, 255)):
        (root / sub).mkdir(parents=True, exist_ok=True)
        for stem, a in zip(stems, arrays):
            Image.fromarray((a[..., 0] * scale).astype(np.uint8)).save(root / sub / f"{stem}.png")
    return root
