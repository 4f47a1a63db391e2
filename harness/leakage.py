"""Does validation leak? Each validation image's nearest training image, against unrelated training pairs.

Slices of one volume and frames of one video look like their neighbours: split at random, a validation
slice usually has a near-copy in training, and its scores measure recall, not generalization. Measured
here on image signatures (gray, block means on a coarse grid, standardized per image), so the
correlation of two signatures is a dot product. NumPy only: this module imports nothing of the harness.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

# Rows compared at most (a seeded subsample beyond): cost is rows x training images x side^2, so
# 1,840 training images of 128x128 take well under a second.
MAX_ROWS = 1000
# Row blocks of the correlation matrix: 256 rows x 20,000 training images is 40 MB of float64.
CHUNK = 256


@dataclass(frozen=True)
class Leakage:
    """What was measured; `val_median` against `typical` is the rule (see `near_training`)."""
    split: str                    # how validation was held out, in words
    val_median: float             # median over validation images of the correlation with their nearest training image
    val_max: float
    typical: float                # median over training images of the same, among training images at least `far` files away
    far: int                      # files apart that count as unrelated
    compared: tuple[int, int]     # validation and training images compared
    duplicates: list[str] = field(default_factory=list)   # "validation X = training Y", identical pixels

    def to_dict(self) -> dict:
        return asdict(self)


def signatures(images: np.ndarray, side: int) -> np.ndarray:
    """(N, H, W, C) -> (N, side*side) float64 rows of unit norm and zero mean: gray, block means over
    a side x side grid (the remainder of H or W beyond a multiple of side is cropped), centred. A
    constant image gets a zero row: it correlates 0 with everything. In chunks: 2,300 images of
    128x128x3 as float64 at once would be 900 MB."""
    n, h, w = images.shape[:3]
    sh, sw = min(side, h), min(side, w)
    out = np.empty((n, sh * sw))
    for start in range(0, n, CHUNK):
        chunk = np.asarray(images[start:start + CHUNK, :h // sh * sh, :w // sw * sw], np.float32)
        gray = chunk @ np.full(chunk.shape[-1], 1 / chunk.shape[-1], np.float32)   # 8x faster than mean(-1)
        out[start:start + len(gray)] = gray.reshape(len(gray), sh, h // sh, sw, w // sw).mean(axis=(2, 4)).reshape(len(gray), -1)
    out -= out.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return np.divide(out, norm, out=np.zeros_like(out), where=norm > 1e-6)


def nearest(rows: np.ndarray, against: np.ndarray, allowed=None) -> np.ndarray:
    """Per row of `rows`, the largest correlation with a row of `against` (NaN where none is allowed).
    `allowed(i0, i1)` -> bool (i1 - i0, len(against)): which pairs count, for rows i0..i1."""
    out = np.full(len(rows), np.nan)
    if not len(against):
        return out
    for start in range(0, len(rows), CHUNK):
        corr = rows[start:start + CHUNK] @ against.T
        if allowed is not None:
            corr = np.where(allowed(start, start + len(corr)), corr, -np.inf)
        best = corr.max(axis=1)
        out[start:start + len(corr)] = np.where(np.isfinite(best), best, np.nan)
    return out


def far_nearest(sig: np.ndarray, ranks: np.ndarray, far: int, rows: np.ndarray) -> np.ndarray:
    """For the training images `rows` (indices), the nearest training image among those whose source
    file is at least `far` files away in the folder's order: what unrelated images score."""
    def allowed(i0, i1):
        return np.abs(ranks[rows[i0:i1], None] - ranks[None, :]) >= far
    return nearest(sig[rows], sig, allowed)


def pixel_digests(images: np.ndarray) -> list[str | None]:
    """A content hash per image; None for a constant image (blank tiles repeat without leaking)."""
    flat = np.ascontiguousarray(images).reshape(len(images), -1)
    return [None if np.ptp(x) == 0 else hashlib.sha256(x.tobytes()).hexdigest() for x in flat]


def duplicate_pairs(train_images: np.ndarray, val_images: np.ndarray) -> list[tuple[int, int]]:
    """(validation index, training index) of images with identical pixels on both sides of the split."""
    train = {}
    for i, d in enumerate(pixel_digests(train_images)):
        if d is not None:
            train.setdefault(d, i)
    return [(v, train[d]) for v, d in enumerate(pixel_digests(val_images)) if d in train]


def subsample(n: int, limit: int, seed: int) -> np.ndarray:
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def measure(train_images: np.ndarray, val_images: np.ndarray, train_ranks: np.ndarray, n_files: int,
            split: str, side: int = 16, far_fraction: float = 0.25, seed: int = 0,
            names=None) -> Leakage:
    """Validation's nearest-training correlations against training pairs at least `far_fraction` of
    the files apart. `train_ranks`: each training image's source file, numbered in the folder's
    order (neighbouring slices are neighbouring numbers); `n_files` how many files the set has.
    `names(side, index)` -> a sample's name for the duplicates ("validation"/"training", index)."""
    train_sig, val_sig = signatures(train_images, side), signatures(val_images, side)
    val_rows = subsample(len(val_sig), MAX_ROWS, seed)
    val_near = nearest(val_sig[val_rows], train_sig)
    far = max(2, int(np.ceil(far_fraction * n_files)))
    train_near = far_nearest(train_sig, np.asarray(train_ranks), far, subsample(len(train_sig), MAX_ROWS, seed))
    names = names or (lambda side_, i: f"{side_} image {i}")
    # Tiles of one duplicated file pair up tile by tile: named once, with their count.
    pairs = Counter(f"{names('validation', v)} = {names('training', t)}"
                    for v, t in duplicate_pairs(train_images, val_images))
    dups = [pair if count == 1 else f"{pair} ({count} samples)" for pair, count in pairs.items()]
    return Leakage(split=split, val_median=nanmedian(val_near), val_max=float(np.max(val_near)),
                   typical=nanmedian(train_near), far=far, compared=(len(val_rows), len(train_sig)),
                   duplicates=dups)


def nanmedian(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(np.median(x)) if len(x) else float("nan")


def closer_than_typical(m: Leakage, margin: float) -> bool:
    """Validation's median nearest-training correlation exceeds the typical value by `margin` or more
    (False where no training pair is `far` apart: too few files to say what unrelated images score)."""
    return bool(np.isfinite(m.typical) and np.isfinite(m.val_median) and m.val_median - m.typical >= margin)


def near_training(m: Leakage, margin: float) -> bool:
    """The rule: validation markedly closer to training than unrelated images are, or some
    validation image an exact duplicate of a training image."""
    return closer_than_typical(m, margin) or bool(m.duplicates)


def fix_for(m: Leakage, margin: float) -> str:
    """What to do about it, for this measurement."""
    fixes = ["remove the duplicated files"] if m.duplicates else []
    if closer_than_typical(m, margin):
        fixes.append('hold out a block of the volume or video: --set data.split="contiguous"'
                     if m.split.startswith("random") else
                     "validate on another volume or video: even the held-out block sits close to training")
    return "; ".join(fixes)


def describe(m: Leakage) -> str:
    """One line: the numbers the rule compares, and the duplicates (the first few named)."""
    typical = (f"{m.typical:.2f} for training images at least {m.far} files apart" if np.isfinite(m.typical)
               else f"not measured (no training images {m.far} files apart)")
    text = (f"split {m.split}: validation's nearest training image correlates {m.val_median:.2f} (median over "
            f"{m.compared[0]} validation images; max {m.val_max:.2f}), typical {typical}")
    if m.duplicates:
        shown = "; ".join(m.duplicates[:5]) + (f"; ... ({len(m.duplicates)} in all)" if len(m.duplicates) > 5 else "")
        text += f"; {len(m.duplicates)} exact duplicate(s) across the split: {shown}"
    return text


def rule_text(margin: float, far_fraction: float, side: int) -> str:
    """The rule in words, with its settings (the report's Rules)."""
    return (f"`validation_near_training`: each validation image's signature (gray, {side}x{side} block means, "
            f"standardized) is correlated with every training image's; the median over validation images of the "
            f"nearest is compared with the typical value, the median of the same for training images against "
            f"training images at least {far_fraction:g} of the files apart (unrelated in a volume or a video; any "
            f"image, where images are independent). Flagged when the median exceeds the typical value by "
            f"{margin:g} or more, or when a validation image has an exact duplicate (identical pixels) in training. "
            "Fix: hold out a block of the volume, `--set data.split=\"contiguous\"` (the last files in natural sort "
            "order, one file dropped at the border), and remove duplicated files.")
