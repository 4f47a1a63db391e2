"""Datasets (synthetic, folder) -> in-memory arrays -> tf.data pipelines with the case's augmentation.

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

from harness.errors import ConfigError, DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
EPSILON = 1e-6  # ImageDataGenerator divides by std + 1e-6


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


@dataclass(frozen=True)
class Stats:
    """Featurewise statistics, per channel, shape (C,)."""
    mean: np.ndarray
    std: np.ndarray


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


# ----------------------------------------------------------------------------------------------
# Featurewise statistics and the variants' transforms

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
    """How one variant feeds images and masks; applies to NumPy arrays and tf tensors alike."""
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

    def levels(self) -> dict[int, float]:
        """What a background (0) and a foreground (1) pixel become as training targets."""
        return {c: float(np.asarray(self.mask(np.float32(c))).ravel()[0]) for c in (0, 1)}


# ----------------------------------------------------------------------------------------------
# tf.data pipelines

def tensorflow_backend() -> bool:
    from harness.backend import backend_name
    return backend_name() == "tensorflow"


def make_augmenter(aug: dict, size: int, seed: int):
    """augment(images, masks) -> (images, masks), one random geometric transform per sample applied
    to both: images bilinear, masks nearest-neighbour (they stay binary and aligned)."""
    if aug["engine"] == "layers":
        return make_layer_augmenter(aug, seed)
    return make_affine_augmenter(aug, size, seed)


def make_affine_augmenter(aug: dict, size: int, seed: int):
    """The case's rotation, shifts, zoom and flip composed into ONE affine map per sample and applied
    with a single resampling (keras.ops.image.affine_transform), as ImageDataGenerator does. Chaining
    RandomRotation, RandomTranslation and RandomZoom resamples three times: measured on the
    synthetic set, that cut the images' pixel-to-pixel variation 3x and the model, trained on
    blurred images, failed on sharp validation images."""
    import keras
    from keras import ops
    from harness.augment import apply_affine, draw_affine
    gen = keras.random.SeedGenerator(seed)
    draw = {"key": None, "count": 0}     # a stateless key for this call (parallel map), else None

    def uniform(n, lo, hi):
        if not hi > lo:
            return ops.full((n,), lo)
        if draw["key"] is None:
            return keras.random.uniform((n,), lo, hi, seed=gen)
        import tensorflow as tf
        draw["count"] += 1
        return tf.random.stateless_uniform((n,), seed=draw["key"] + [0, draw["count"]], minval=lo, maxval=hi)

    def augment(images, masks, key=None):
        """`key`: a [2] int tensor; with it every draw is stateless (the same key, the same
        transform), so batches can be augmented in parallel and still reproducibly."""
        draw["key"], draw["count"] = key, 0
        transform = draw_affine(aug, size, ops.shape(images)[0], uniform)
        fill = "reflect" if aug["fill_mode"] == "reflect" else aug["fill_mode"]
        return apply_affine(images, masks, transform, fill)

    return augment


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


def augment_array(aug: dict, x: np.ndarray, seed: int, batch_size: int = 256) -> np.ndarray:
    """Augment a NumPy array of images (no masks), e.g. for featurewise statistics over rounds.
    In tf.data under TensorFlow (as the training pipeline); under another backend batch by batch in
    keras.ops, from the same seeded generator (another backend, another random stream)."""
    augment = make_augmenter(aug, x.shape[1], seed)
    dummy = np.zeros(x.shape[:3] + (1,), np.float32)
    if not tensorflow_backend():
        return np.concatenate([np.asarray(augment(x[i:i + batch_size], dummy[i:i + batch_size])[0])
                               for i in range(0, len(x), batch_size)])
    import tensorflow as tf
    ds = tf.data.Dataset.from_tensor_slices((x, dummy)).batch(batch_size).map(augment)
    return np.concatenate([img.numpy() for img, _ in ds])


def fit_transform(dataset: Dataset, images: str, masks: str, aug: dict, seed: int) -> Transform:
    """Featurewise statistics of the training images and masks, as the case's two generators compute them."""
    rounds = aug["stats_rounds"]
    augment = (lambda x, s: augment_array(aug, x, s)) if rounds else None
    image_stats = featurewise_stats(dataset.train_images, augment, rounds, seed)
    mask_stats = featurewise_stats(dataset.train_masks, augment, rounds, seed)
    return Transform(images, masks, image_stats, mask_stats)


def train_pipeline(dataset: Dataset, transform: Transform, aug: dict, batch_size: int, seed: int,
                   parallel: bool = False):
    """Shuffle -> batch -> augment image and mask together -> the variant's transform -> prefetch.

    By default batches are augmented one after another from one random stream. `parallel` (the
    affine engine only) gives each batch its own stateless key, drawn per epoch from the seed, and
    augments batches on all cores: reproducible still, but another random stream."""
    import tensorflow as tf
    augment = make_augmenter(aug, dataset.train_images.shape[1], seed)

    def feed(images, masks, key=None):
        images, masks = augment(images, masks) if key is None else augment(images, masks, key)
        return transform.image(images), transform.mask(masks)

    batches = (tf.data.Dataset.from_tensor_slices((dataset.train_images, dataset.train_masks))
               .shuffle(len(dataset.train_images), seed=seed, reshuffle_each_iteration=True)
               .batch(batch_size))
    if not (parallel and aug["engine"] == "affine"):
        return batches.map(feed).prefetch(tf.data.AUTOTUNE)
    keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return (tf.data.Dataset.zip(batches, keys)
            .map(lambda pair, key: feed(*pair, key=tf.cast(key % (2 ** 31 - 1), tf.int32)),
                 num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .prefetch(tf.data.AUTOTUNE))


def augmented_batches(dataset: Dataset, aug: dict, batch_size: int, seed: int, max_batches: int,
                      pipeline: str = "tfdata"):
    """Augmented, untransformed training batches as NumPy (images 0..255, masks as augmented);
    under a backend other than TensorFlow, augmented in keras.ops without tf.data."""
    if pipeline == "imagedatagenerator":
        gen = legacy_generator(aug, featurewise=False)
        images = gen.flow(dataset.train_images, batch_size=batch_size, shuffle=False, seed=seed)
        masks = gen.flow(dataset.train_masks, batch_size=batch_size, shuffle=False, seed=seed)
        for _, (x, m) in zip(range(min(max_batches, len(images))), zip(images, masks)):
            yield x, m
        return
    augment = make_augmenter(aug, dataset.train_images.shape[1], seed)
    if not tensorflow_backend():
        for i in range(0, min(len(dataset.train_images), max_batches * batch_size), batch_size):
            images, masks = augment(dataset.train_images[i:i + batch_size], dataset.train_masks[i:i + batch_size])
            yield np.asarray(images), np.asarray(masks)
        return
    import tensorflow as tf
    ds = (tf.data.Dataset.from_tensor_slices((dataset.train_images, dataset.train_masks))
          .batch(batch_size).take(max_batches).map(augment))
    for images, masks in ds:
        yield images.numpy(), masks.numpy()


def validation_arrays(dataset: Dataset, transform: Transform, validation: str) -> tuple[np.ndarray, np.ndarray]:
    """Validation inputs and targets as the variant feeds them: raw (as loaded) or like training."""
    if validation == "raw":
        return dataset.val_images, dataset.val_masks
    return (transform.image(dataset.val_images).astype(np.float32),
            transform.mask(dataset.val_masks).astype(np.float32))


# ----------------------------------------------------------------------------------------------
# The case's own code path: two zipped ImageDataGenerators (tf-keras), fed to the Keras 3 model

def legacy_generator(aug: dict, featurewise: bool, rescale: float | None = None):
    """One ImageDataGenerator with the case's arguments (featurewise or only geometric)."""
    import warnings
    # tf-keras still imports scipy.ndimage.interpolation, deprecated in SciPy: one warning per image.
    warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*scipy.ndimage")
    try:
        from tf_keras.preprocessing.image import ImageDataGenerator
    except ImportError:
        raise ConfigError("pipeline = 'imagedatagenerator' needs the tf-keras package: "
                          "pip install 'harness[legacy]' (or pip install tf-keras)") from None
    return ImageDataGenerator(featurewise_center=featurewise, featurewise_std_normalization=featurewise,
                              rotation_range=aug["rotation_range"], width_shift_range=aug["width_shift_range"],
                              height_shift_range=aug["height_shift_range"], zoom_range=aug["zoom_range"],
                              horizontal_flip=aug["horizontal_flip"], fill_mode=aug["fill_mode"], rescale=rescale)


def generator_stats(gen, channels: int) -> Stats:
    """A fitted generator's featurewise statistics; identity statistics where it does not whiten."""
    if not gen.featurewise_center:
        return Stats(np.zeros(channels, np.float32), np.ones(channels, np.float32))
    return Stats(gen.mean.ravel().astype(np.float32), gen.std.ravel().astype(np.float32))


def legacy_pipeline(dataset: Dataset, images: str, masks: str, aug: dict, batch_size: int, seed: int):
    """The case's pair: two generators from one argument dict, each fit(augment=True, rounds, seed),
    flow(seed) with one seed, zipped. -> (tf.data.Dataset, steps per epoch, Transform).

    Masks go through the same bilinear resampling as images (order=1), as in the case, so their
    edges are not binary. Wrapped in tf.data: Keras 3 rejects a bare zip, and a Python generator
    handed to fit was seen to stall 30-40 s after the last epoch."""
    import tensorflow as tf
    rounds = aug["stats_rounds"]
    image_gen = legacy_generator(aug, images == "featurewise", rescale=None if images == "featurewise" else 1 / 255)
    mask_gen = legacy_generator(aug, masks == "featurewise")
    for gen, x in ((image_gen, dataset.train_images), (mask_gen, dataset.train_masks)):
        if gen.featurewise_center:
            gen.fit(x, augment=rounds > 0, rounds=max(rounds, 1), seed=seed)
    transform = Transform(images, masks, generator_stats(image_gen, dataset.train_images.shape[-1]),
                          generator_stats(mask_gen, 1))
    signed = masks == "signed"

    def zipped():
        flows = zip(image_gen.flow(dataset.train_images, batch_size=batch_size, seed=seed),
                    mask_gen.flow(dataset.train_masks, batch_size=batch_size, seed=seed))
        for x, m in flows:
            yield x.astype(np.float32), (2.0 * m - 1.0 if signed else m).astype(np.float32)

    size, channels = dataset.train_images.shape[1], dataset.train_images.shape[-1]
    spec = (tf.TensorSpec((None, size, size, channels), tf.float32), tf.TensorSpec((None, size, size, 1), tf.float32))
    ds = tf.data.Dataset.from_generator(zipped, output_signature=spec).prefetch(2)
    return ds, math.ceil(len(dataset.train_images) / batch_size), transform
