"""Output heads and losses, each declaring its valid target range and its lower bound.

A loss value is only meaningful against its own floor: BCE never goes below 0 on targets in
[0, 1], while the sign-corrected tanh loss of the case bottoms out at -log 2. The verdicts and
`harness check` compare observed losses with the floor measured by harness/probe.py, never with 0;
`lower_bound` is what a loss declares, kept as a cross-check.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import keras
from keras import ops

from harness.errors import ConfigError

CLIP = 1e-7  # keeps log() finite where a loss clips its predictions


@dataclass(frozen=True)
class Head:
    name: str
    activation: str
    output_range: tuple[float, float]
    threshold: float          # prediction >= threshold means foreground


@dataclass(frozen=True)
class Loss:
    name: str
    fn: Callable              # fn(y_true, y_pred) -> per-pixel, per-sample or one value per batch
    target_range: tuple[float, float]  # targets the loss is defined for
    lower_bound: float | None  # declared value at a perfect prediction (None: not declared)
    about: str


HEADS = {
    "sigmoid": Head("sigmoid", "sigmoid", (0.0, 1.0), 0.5),
    "tanh": Head("tanh", "tanh", (-1.0, 1.0), 0.0),
}


def pixel_mean(x):
    return ops.mean(ops.reshape(x, (ops.shape(x)[0], -1)), axis=-1)


def bce(y_true, y_pred):
    # Keras computes this from the sigmoid's logits when y_pred is a sigmoid layer's output, so
    # nothing clips it: with targets outside [0, 1] it has no lower bound (as in the case).
    return pixel_mean(keras.losses.binary_crossentropy(y_true, y_pred)[..., None])


def modified_bce_posted(y_true, y_pred):
    # Exactly as posted in the accepted answer: no minus sign and no clipping. Minimizing it drives
    # predictions to +-1, where log(0) gives -inf and then NaN.
    y, p = y_true, y_pred
    return pixel_mean(0.5 * ((1 - y) * ops.log(1 - p) + (1 + y) * ops.log(1 + p)))


def modified_bce_signed(y_true, y_pred):
    # The posted formula with its minus sign restored and predictions clipped: a proper loss for
    # targets in [-1, 1], whose minimum at a perfect prediction is -log 2, not 0.
    y, p = y_true, ops.clip(y_pred, -1 + CLIP, 1 - CLIP)
    return pixel_mean(-0.5 * ((1 - y) * ops.log(1 - p) + (1 + y) * ops.log(1 + p)))


def modified_bce_corrected(y_true, y_pred):
    # Sign-corrected and shifted by log 2: BCE on (y + 1) / 2 and (p + 1) / 2, minimum 0.
    return modified_bce_signed(y_true, y_pred) + math.log(2.0)


def dice(y_true, y_pred, smooth=1.0):
    axes = list(range(1, len(y_true.shape)))
    inter = ops.sum(y_true * y_pred, axis=axes)
    total = ops.sum(y_true, axis=axes) + ops.sum(y_pred, axis=axes)
    return 1.0 - (2.0 * inter + smooth) / (total + smooth)


LOG2 = math.log(2.0)
LOSSES = {
    "bce": Loss("bce", bce, (0.0, 1.0), 0.0, "binary cross-entropy; unbounded below for targets outside [0, 1]"),
    # Declares the bound of the loss it was meant to be (the sign-corrected one): -log 2.
    "modified_bce_posted": Loss("modified_bce_posted", modified_bce_posted, (-1.0, 1.0), -LOG2,
                                "the accepted answer's formula as posted (missing minus sign)"),
    "modified_bce_signed": Loss("modified_bce_signed", modified_bce_signed, (-1.0, 1.0), -LOG2,
                                "sign-corrected modified BCE, not shifted: floor -log 2"),
    "modified_bce_corrected": Loss("modified_bce_corrected", modified_bce_corrected, (-1.0, 1.0), 0.0,
                                   "sign-corrected modified BCE shifted by log 2: floor 0"),
    "dice": Loss("dice", dice, (0.0, 1.0), 0.0, "soft Dice loss"),
}


def get_head(name: str) -> Head:
    if name not in HEADS:
        raise ConfigError(f"unknown head {name!r}; valid heads: {', '.join(HEADS)}")
    return HEADS[name]


def get_loss(name: str, search_dir=None) -> Loss:
    """A built-in loss by name, or a user's as "module:function", "module:Class" or
    "module:Class(arg=value)" (a Keras loss class or instance works as is). The function or object
    may carry `target_range` (default (0, 1)) and `lower_bound` (default: none declared; the floor
    is measured anyway). `search_dir`: the experiment file's folder, searched for the module."""
    if ":" in name:
        return import_loss(name, search_dir)
    if name not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}; valid losses: {', '.join(LOSSES)} or module:function")
    return LOSSES[name]


def import_loss(spec: str, search_dir=None) -> Loss:
    from harness.user_code import load_object
    fn, _ = load_object(spec, search_dir, what="loss")
    declared = getattr(fn, "lower_bound", None)
    try:
        lo, hi = getattr(fn, "target_range", (0.0, 1.0))
        declared = None if declared is None else float(declared)
        domain = (float(lo), float(hi))
    except (TypeError, ValueError):
        raise ConfigError(f"loss {spec!r}: target_range must be (low, high) and lower_bound a number") from None
    return Loss(spec, fn, domain, declared, f"user loss {spec}")
