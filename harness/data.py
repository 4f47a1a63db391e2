"""Datasets (synthetic, folder) -> in-memory arrays, and the train/validation split.

Images are kept raw (float32, 0..255, shape (N, H, W, C)) and masks binary (float32 {0, 1},
shape (N, H, W, 1)) until a variant's transform is applied, so every variant sees the same pixels.
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclass(frozen=True)
class Dataset:
    train_images: np.ndarray
    train_masks: np.ndarray
    val_images: np.ndarray
    val_masks: np.ndarray
    description: str
    # Each sample's source file, numbered in natural sort order (neighbouring slices or frames are
    # neighbouring numbers); None where the arrays were built by hand.
    train_sources: np.ndarray | None = None
    val_sources: np.ndarray | None = None
    source_names: tuple[str, ...] = ()      # the source files in that order
    split: str = ""                         # how validation was held out, in words

    @property
    def fingerprint(self) -> str:
        """Short hash of every pixel and the split: equal fingerprints, equal data."""
        h = hashlib.sha256()
        for a in (self.train_images, self.train_masks, self.val_images, self.val_masks):
            h.update(str(a.shape).encode())
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:12]

    @property
    def foreground_fraction(self) -> float:
        return float(self.train_masks.mean())


# ----------------------------------------------------------------------------------------------
# Loading

def load_dataset(data: dict) -> Dataset:
    if data["source"] == "synthetic":
        images, masks = make_synthetic(data["n_images"], data["image_size"], data["foreground_fraction"],
                                       data["data_seed"], data["channels"])
        groups, names = np.arange(len(images)), [f"image {i}" for i in range(len(images))]
        description = (f"synthetic: {len(images)} images {data['image_size']}x{data['image_size']}x"
                       f"{data['channels']}, foreground {data['foreground_fraction']:.0%}, seed {data['data_seed']}")
    else:
        images, masks, groups, names = load_folder(Path(data["path"]), data["image_size"], data["channels"],
                                                   data["fit"], data["mask_threshold"], data["n_images"],
                                                   data["split_seed"], data["foreground_values"])
        description = (f"folder {data['path']}: {len(images)} samples {data['image_size']}x{data['image_size']}x"
                       f"{data['channels']} ({data['fit']}) from {len(np.unique(groups))} files")
    ranks = natural_ranks(names)
    sources = ranks[groups]                 # each sample's file, numbered in natural sort order
    ordered = tuple(sorted(names, key=natural_key))
    unit = "files" if data["source"] == "folder" else "images"
    if data["split"] == "contiguous":
        train, val, split = split_contiguous(sources, data["val_fraction"], ordered, unit)
    else:
        # By position in the folder's listing (pair_files), as before data.split existed.
        train, val = split_groups(groups, data["val_fraction"], data["split_seed"])
        split = (f"random (seed {data['split_seed']}): {len(np.unique(groups[val]))} of {len(np.unique(groups))} "
                 f"{unit} validate")
    return Dataset(images[train], masks[train], images[val], masks[val], description,
                   sources[train], sources[val], ordered, split)


def count_val(n_files: int, val_fraction: float) -> int:
    """Files held out: val_fraction of them, at least one, and at least one left to train on."""
    return min(n_files - 1, max(1, round(n_files * val_fraction)))


def split_groups(groups: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic split by source file, so tiles of one image never sit on both sides."""
    unique = np.unique(groups)
    if len(unique) < 2:
        raise DataError(f"need at least 2 source images for a train/validation split, got {len(unique)}")
    rng = np.random.default_rng(seed)
    n_val = count_val(len(unique), val_fraction)
    val_groups = rng.permutation(unique)[:n_val]
    is_val = np.isin(groups, val_groups)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def split_contiguous(sources: np.ndarray, val_fraction: float, names=(), unit: str = "files"
                     ) -> tuple[np.ndarray, np.ndarray, str]:
    """The last val_fraction of the files in natural sort order validate: a block of the volume or
    video. The file just before the block is dropped, so the block's first slice has no direct
    neighbour in training; with 2 files there is none to spare. -> (train, val, in words)."""
    unique = np.unique(sources)
    if len(unique) < 2:
        raise DataError(f"need at least 2 source images for a train/validation split, got {len(unique)}")
    n_val = count_val(len(unique), val_fraction)
    val_files, rest = unique[-n_val:], unique[:-n_val]
    gap = rest[-1:] if len(rest) >= 2 else rest[:0]
    name = (lambda r: names[r]) if len(names) else str
    text = (f"contiguous: the last {n_val} of {len(unique)} {unit} in natural order validate "
            f"({name(val_files[0])} to {name(val_files[-1])}), ")
    text += (f"{name(gap[0])} dropped at the border" if len(gap) else
             f"none dropped at the border (2 {unit}: none to spare)")
    is_val, is_gap = np.isin(sources, val_files), np.isin(sources, gap)
    return np.flatnonzero(~is_val & ~is_gap), np.flatnonzero(is_val), text


def natural_key(name: str) -> tuple:
    """'slice_9' before 'slice_10': runs of digits compare as numbers. Short enough not to add a
    dependency (natsort) for it."""
    parts = re.split(r"(\d+)", name.lower())
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name


def natural_ranks(names: list[str]) -> np.ndarray:
    """Each name's position in natural sort order."""
    order = sorted(range(len(names)), key=lambda i: natural_key(names[i]))
    ranks = np.empty(len(names), int)
    ranks[order] = np.arange(len(names))
    return ranks


def make_synthetic(n: int, size: int, foreground: float, seed: int, channels: int = 3
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Textured ellipses on a textured, noisy background; about `foreground` of pixels are objects.

    Objects differ from the background by a weak colour shift and a striped texture, both below the
    pixel noise, so a model needs several epochs and spatial context to find them. Raw values sit
    around 150 +- 35 with a per-channel offset: fed raw to a model trained on standardized inputs,
    they are far off its training distribution.
    """
    if n < 2:
        raise DataError("data.n_images must be at least 2 for the synthetic dataset")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    images = np.empty((n, size, size, 3), np.float32)
    masks = np.empty((n, size, size, 1), np.float32)
    base = np.array([160.0, 140.0, 120.0], np.float32)
    object_shift = np.array([-24.0, 8.0, 18.0], np.float32)   # objects: a little bluer, less red
    for i in range(n):
        mask = draw_ellipses(rng, xx, yy, target=foreground * rng.uniform(0.6, 1.4))
        background = base + rng.normal(0, 12, 3) + 25 * smooth_noise(rng, size, 3)
        angle, freq = rng.uniform(0, math.pi), rng.uniform(10, 18)
        stripes = 18 * np.sin(2 * math.pi * freq * (xx * math.cos(angle) + yy * math.sin(angle)))
        objects = object_shift + stripes[..., None] + 10 * smooth_noise(rng, size, 3)
        img = background + mask[..., None] * objects + rng.normal(0, 6, (size, size, 3))
        images[i] = np.clip(img, 0, 255)
        masks[i, ..., 0] = mask
    if channels == 1:
        images = images.mean(axis=-1, keepdims=True)
    return images, masks


def draw_ellipses(rng, xx, yy, target: float) -> np.ndarray:
    mask = np.zeros(xx.shape, np.float32)
    while mask.mean() < target:
        cx, cy = rng.uniform(0.1, 0.9, 2)
        rx, ry = rng.uniform(0.05, 0.16, 2)
        t = rng.uniform(0, math.pi)
        dx, dy = xx - cx, yy - cy
        u = (dx * math.cos(t) + dy * math.sin(t)) / rx
        v = (-dx * math.sin(t) + dy * math.cos(t)) / ry
        mask[u * u + v * v <= 1.0] = 1.0
    return mask


def smooth_noise(rng, size: int, channels: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid upsampled bilinearly."""
    coarse = rng.uniform(-1, 1, (5, 5, channels)).astype(np.float32)
    pos = np.linspace(0, 4, size)
    i0 = np.minimum(pos.astype(int), 3)
    w = (pos - i0)[:, None, None]
    rows = coarse[i0] * (1 - w) + coarse[i0 + 1] * w                 # (size, 5, C)
    wc = (pos - i0)[None, :, None]
    return rows[:, i0] * (1 - wc) + rows[:, i0 + 1] * wc              # (size, size, C)


def load_folder(root: Path, size: int, channels: int, fit: str, threshold: float, limit: int, seed: int = 0,
                foreground_values: list | tuple = ()) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Read images/ and masks/ paired by file stem; tile or resize each to size x size.
    -> images, masks, each sample's file (its position in pair_files' order), the files' names.

    The image intensity scale and the mask levels are decided once for the whole set (a file
    that is all background, or darker than the others, is read on the same scale as the rest).
    With `limit`, at most that many samples, taken evenly from every file (a seeded choice of
    tiles), so the train/validation split still spans all files."""
    pairs = pair_files(root)
    read = [(read_image(i, channels), read_mask_values(m)) for i, m in pairs]
    for (image_path, mask_path), (image, mask) in zip(pairs, read):
        if image[0].shape[:2] != mask.shape[:2]:
            raise DataError(f"{image_path.name}: image is {image[0].shape[1]}x{image[0].shape[0]} but its mask "
                            f"is {mask.shape[1]}x{mask.shape[0]}")
    scale = intensity_scale([image for image, _ in read])
    binarize = mask_binarizer([mask for _, mask in read], [m for _, m in pairs], threshold, foreground_values)
    per_file = math.ceil(limit / len(pairs)) if limit else None
    rng = np.random.default_rng(seed)
    images, masks, groups = [], [], []
    for index, ((image, _), mask) in enumerate(read):
        tiles = fit_to_size(image * scale, binarize(mask), size, fit)
        if per_file and len(tiles) > per_file:
            tiles = [tiles[i] for i in sorted(rng.choice(len(tiles), per_file, replace=False))]
        for img, msk in tiles:
            images.append(img)
            masks.append(msk)
            groups.append(index)
    if limit:
        images, masks, groups = images[:limit], masks[:limit], groups[:limit]
    return np.stack(images), np.stack(masks), np.array(groups), [image.name for image, _ in pairs]


def pair_files(root: Path) -> list[tuple[Path, Path]]:
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    image_dir, mask_dir = root / "images", root / "masks"
    if not image_dir.is_dir() and (root / "image").is_dir():   # the ISBI layout: image/ and label/
        image_dir, mask_dir = root / "image", root / "label"
    for d in (image_dir, mask_dir):
        if not d.is_dir():
            raise DataError(f"{root} must hold images/ and masks/ (missing {d.name}/)")
    images = {p.stem: p for p in sorted(image_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    masks = {p.stem: p for p in sorted(mask_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    if not images:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {image_dir}")
    unpaired = sorted(set(images) ^ set(masks))
    if unpaired:
        shown = ", ".join(unpaired[:5]) + (" ..." if len(unpaired) > 5 else "")
        raise DataError(f"{len(unpaired)} unpaired file stem(s) between {image_dir.name}/ and "
                        f"{mask_dir.name}/: {shown}")
    return [(images[s], masks[s]) for s in sorted(images, key=listing_key)]


def listing_key(stem: str):
    """The order files are read in: digit-only stems by number, then the rest as strings. The random
    split draws files by their position in it, so it stays as it was (another order would move
    existing studies' files between training and validation); data.split="contiguous" sorts the
    names naturally (natural_key)."""
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


def open_image(path: Path):
    from PIL import Image, UnidentifiedImageError
    try:
        img = Image.open(path)
        img.load()
        return img
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None


def to_array(img) -> tuple[np.ndarray, str]:
    """PIL image -> (float32 (H, W, C) as stored, kind): kind "8bit" (0..255), "int" (16/32-bit
    integers) or "float". Scaling is decided for the whole set (intensity_scale)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        return np.asarray(img, dtype=np.float32)[..., None], "int"
    if img.mode == "F":
        return np.asarray(img, dtype=np.float32)[..., None], "float"
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("1", "L", "LA"):
        img = img.convert("L")
    elif img.mode != "RGB":
        img = img.convert("RGB")   # RGBA, CMYK, YCbCr: drop alpha, go to RGB
    a = np.asarray(img, dtype=np.float32)
    return (a[..., None] if a.ndim == 2 else a), "8bit"


def read_image(path: Path, channels: int) -> tuple[np.ndarray, str]:
    a, kind = to_array(open_image(path))
    if channels == 3 and a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)     # gray slices into a 3-channel model
    elif channels == 1 and a.shape[-1] == 3:
        a = a.mean(axis=-1, keepdims=True)
    return a, kind


def intensity_scale(images: list[tuple[np.ndarray, str]]) -> float:
    """One factor taking every image of the set to 0..255: 8-bit images as they are; integer
    images by the bit depth that holds the set's largest value (12-bit data in 16-bit files: 4095);
    float images in [0, 1] by 255, others by the set's largest value."""
    kinds = {kind for _, kind in images}
    top = max(float(a.max()) for a, _ in images)
    if kinds == {"8bit"} or top <= 0:
        return 1.0
    if "float" in kinds:
        return 255.0 if top <= 1.0 else 255.0 / top
    depth = 2.0 ** math.ceil(math.log2(top + 1)) - 1
    return 255.0 / max(depth, 255.0)


MAX_LABELS = 16   # a mask set with at most this many distinct values is label-coded (exact levels)


def read_mask_values(path: Path) -> np.ndarray:
    """A mask's stored values, (H, W), as float32; colour masks averaged over their channels."""
    return to_array(open_image(path))[0].mean(axis=-1)


def mask_binarizer(masks: list[np.ndarray], paths: list[Path], threshold: float, foreground_values):
    """-> binarize(mask) -> float32 {0, 1} (H, W, 1), one rule for the whole set:
    - `foreground_values` given: those values are foreground, every other value background;
    - at most MAX_LABELS distinct values: exactly two levels (the higher is foreground), else refused
      with the levels found (label-coded masks, or 0/1 with a 255 "void" border, need
      `data.foreground_values`);
    - more (JPEG noise): foreground at `threshold` of the set's largest value; a mask with more than
      1 % of its pixels between the two levels is grey-level, and refused."""
    levels = np.unique(np.concatenate([np.unique(m) for m in masks]))
    if len(foreground_values):
        wanted = np.asarray(foreground_values, np.float32)
        if not np.isin(wanted, levels).any():
            raise DataError(f"none of data.foreground_values {list(foreground_values)} occur in the masks "
                            f"(values found: {format_levels(levels)})")
        return lambda m: np.isin(m, wanted).astype(np.float32)[..., None]
    if len(levels) <= MAX_LABELS:
        if len(levels) > 2:
            raise DataError(f"masks have {len(levels)} levels ({format_levels(levels)}), not two: for label-coded "
                            "masks set data.foreground_values to the values that are foreground, e.g. "
                            f"--set 'data.foreground_values=[{format_levels(levels[1:2])}]'")
        cut = float(levels.max()) * threshold
        return lambda m: (m >= cut).astype(np.float32)[..., None] if cut > 0 else np.zeros(m.shape + (1,), np.float32)
    top = float(levels.max())
    for mask, path in zip(masks, paths):
        # JPEG noise leaves a few values near the two levels; a grey-level image has many in between.
        between = np.mean((mask > 0.1 * top) & (mask < 0.9 * top))
        if between > 0.01:
            raise DataError(f"mask {path} is not binary: {between:.1%} of its pixels are between the two levels")
    return lambda m: (m >= threshold * top).astype(np.float32)[..., None]


def format_levels(levels: np.ndarray) -> str:
    shown = ", ".join(f"{v:g}" for v in levels[:8])
    return shown + (f", ... ({len(levels)} in all)" if len(levels) > 8 else "")


def fit_to_size(image: np.ndarray, mask: np.ndarray, size: int, fit: str):
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return [(image, mask)]
    if fit == "resize" or h < size or w < size:
        from PIL import Image
        chans = [np.asarray(Image.fromarray(image[..., c]).resize((size, size), Image.BILINEAR))
                 for c in range(image.shape[-1])]
        m = np.asarray(Image.fromarray(mask[..., 0]).resize((size, size), Image.NEAREST))
        return [(np.stack(chans, -1).astype(np.float32), m[..., None].astype(np.float32))]
    # Non-overlapping tiles; a remainder narrower than a tile is dropped.
    return [(image[y:y + size, x:x + size], mask[y:y + size, x:x + size])
            for y in range(0, h - size + 1, size) for x in range(0, w - size + 1, size)]
