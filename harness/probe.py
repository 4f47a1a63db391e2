"""Probe a loss numerically through a head: its floor and its threshold, measured, not declared.

The probe evaluates the loss of a constant prediction act(z) against a constant target, for z over
the head's whole range. Two numbers come from it, and `harness check`, training and the verdicts
all use these same numbers:
- the floor: the loss's least value for the variant's own targets, each taken inside the loss's
  declared domain (a whitened mask is no valid BCE target), over the predictions on that target's
  side of the threshold: the value at a perfect prediction for a proper loss, at its optimum for a
  label-smoothed one;
- the threshold: midway between the head outputs at which the loss is least for a background
  pixel and for a foreground pixel (0.5 for sigmoid + BCE, 0 for tanh on {-1, +1}, 0.5 for tanh
  on {0, 1}).
Each z is its own call of the loss, so losses that return one value per pixel, per sample or per
batch (a Keras loss object reduces over the batch) are probed alike. A loss that sums over the
batch or the pixels instead of averaging reports a training batch's value many times a probe's:
the probe measures how its value grows with each (`size_exponents`), and the floor the verdicts use
is scaled to the training batches (`Measured.training_floor`), so a summed loss with a negative
floor is not taken for a `negative_loss`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Pre-activations (logits) probed: wide enough to reach within 1e-6 of the head's bounds, not so
# wide that float32 saturates to exactly 0 or 1.
PROBE_LIMIT = {"sigmoid": 14.0, "tanh": 7.0, "linear": 14.0}   # linear: logits (`harness doctor`)
N_POINTS = 141
PIXELS = (4, 4)          # a tiny constant image per call: spatial losses (Dice) see a real mask
PROBE_PIXELS = PIXELS[0] * PIXELS[1]
WIDER = (1, PIXELS[0] * 2, PIXELS[1] * 2, 1)     # a probe with four times the pixels (size_exponents)
FLAT = 1e-6              # loss values this close to the least count as least (a flat minimum)
EDGE_STEPS, FALLING = 10, 0.1   # a loss still falling by this much over the last steps has no floor
SIZE_PROBE_MIN = 1e-3    # a loss value this far from 0 shows how the loss grows with batch and image


@dataclass(frozen=True)
class Measured:
    floor: float         # least value at perfect predictions of valid targets, on a probe (NaN: not measurable)
    threshold: float     # prediction >= threshold means foreground
    outputs: np.ndarray  # the head outputs probed, (N_POINTS,)
    curves: dict         # class -> loss over `outputs` at the variant's own target level
    exponents: tuple[float, float] = (0.0, 0.0)   # value ~ batch**e_b * pixels**e_p (0: a mean, 1: a sum)

    def training_floor(self, batch_sizes: list[int], image_pixels: int) -> float:
        """The floor of a training batch's loss: the probe's floor where the loss is a mean; scaled
        to the batch and image where it sums. Of the batch sizes an epoch has (the last may be
        short), the one that makes the floor least: an epoch's loss, a mean of batch losses, can
        get that low without anything going wrong."""
        e_b, e_p = self.exponents
        if not math.isfinite(self.floor) or (e_b == 0 and e_p == 0):
            return self.floor
        pixels = (image_pixels / PROBE_PIXELS) ** e_p
        return min(self.floor * b ** e_b * pixels for b in batch_sizes)

    def epoch_floor(self, images: np.ndarray, batch_size: int) -> float:
        """training_floor for an epoch over `images` (N, H, W, C) in batches of `batch_size`."""
        return self.training_floor(epoch_batch_sizes(len(images), batch_size), int(np.prod(images.shape[1:3])))


def epoch_batch_sizes(n: int, batch_size: int) -> list[int]:
    """The batch sizes of an epoch over n samples: full batches, and a short last one."""
    return [min(batch_size, n)] + ([n % batch_size] if n > batch_size and n % batch_size else [])


def head_outputs(activation: str) -> tuple[np.ndarray, np.ndarray]:
    """-> (z grid, act(z)), both float32 of shape (N_POINTS,)."""
    import keras
    limit = PROBE_LIMIT[activation]          # a head's activation: sigmoid or tanh (losses.HEADS)
    z = np.linspace(-limit, limit, N_POINTS).astype(np.float32)
    return z, np.asarray(keras.activations.get(activation)(z), np.float32)


def loss_curve(loss_fn, outputs: np.ndarray, target: float) -> np.ndarray:
    """Loss of each constant prediction in `outputs` against a constant `target`, float64 (N,)."""
    y = np.full((1, *PIXELS, 1), target, np.float32)
    values = np.empty(len(outputs), np.float64)
    with np.errstate(all="ignore"):
        for i, p in enumerate(outputs):
            out = loss_fn(y, np.full_like(y, p))
            values[i] = float(np.mean(np.asarray(out, np.float64)))
    return values


def probe_loss(loss_fn, activation: str, levels: dict[int, float]):
    """-> (z grid, {class: loss values over z}) for constant targets `levels` {0: bg, 1: fg}."""
    z, p = head_outputs(activation)
    return z, {cls: loss_curve(loss_fn, p, y) for cls, y in levels.items()}


def least_set(values: np.ndarray) -> np.ndarray:
    """Indices where the loss is within FLAT (relative for large values) of its least: a clipped loss
    is exactly flat over a range of outputs, float32 noise aside."""
    v = np.where(np.isnan(values), np.inf, values)
    best = np.min(v)
    if not math.isfinite(best):
        return np.flatnonzero(v == best) if best == -math.inf else np.array([], int)
    return np.flatnonzero(v <= best + FLAT * max(1.0, abs(best)))


def measure_threshold(outputs: np.ndarray, curves: dict[int, np.ndarray], default: float) -> tuple[float, dict]:
    """Midway between the outputs where each class's loss is least: of a flat minimum, the end
    nearest the other class (a tanh fed BCE is least for background all over [-1, 0])."""
    best = {}
    for cls, values in curves.items():
        where = least_set(values)
        if len(where):
            side = outputs[where]
            best[cls] = float(side.max() if cls == 0 else side.min())
    if 0 not in best or 1 not in best:
        return default, best
    return (best[0] + best[1]) / 2.0, best


def measure_floor(loss_fn, outputs: np.ndarray, levels: dict[int, float], domain: tuple[float, float],
                  threshold: float) -> tuple[float, tuple[float, float] | None]:
    """The least value of the loss for each class's target (taken inside the loss's domain) over
    the predictions on that class's side of the threshold; the least over both classes. For a
    proper loss that is its value at a perfect prediction; for a label-smoothed one, at its optimum.
    Where the loss still falls at the head's bound it has no least value (the posted formula): its
    value at a perfect prediction stands in, so that falling below it is still a `negative_loss`.
    NaN where nothing is finite. -> (floor, (target, output) where it was found)."""
    values = []
    for cls, y in levels.items():
        target = min(max(y, domain[0]), domain[1])
        side = outputs >= threshold if cls == 1 else outputs < threshold
        curve = loss_curve(loss_fn, outputs, target)
        curve = np.where(side & np.isfinite(curve), curve, np.inf)
        if not np.isfinite(curve).any():
            continue
        best = int(np.argmin(curve))
        inner = best + (EDGE_STEPS if best == 0 else -EDGE_STEPS)
        if best in (0, len(outputs) - 1) and curve[best] < curve[inner] - FALLING:
            perfect = int(np.argmin(np.abs(outputs - target)))
            values.append((float(loss_curve(loss_fn, outputs[perfect:perfect + 1], target)[0]),
                           (target, float(outputs[perfect]))))
        else:
            values.append((float(curve[best]), (target, float(outputs[best]))))
    finite = [v for v in values if math.isfinite(v[0])]
    return min(finite, key=lambda v: v[0]) if finite else (math.nan, None)


def size_exponents(loss_fn, target: float, outputs: list[float]) -> tuple[float, float]:
    """How the loss's value grows with the batch and with the image: value ~ batch**e_b * pixels**e_p,
    0 for a mean and 1 for a sum, read from a probe with twice the samples and one with four times
    the pixels at a constant target and output: the first of `outputs` where the value is clearly
    not 0. An exponent near neither (a smoothed Dice grows a little with its pixel count) counts
    as a mean, so that no such loss is scaled or flagged by float noise."""
    def value(shape, output):
        y = np.full(shape, target, np.float32)
        with np.errstate(all="ignore"):
            return float(np.mean(np.asarray(loss_fn(y, np.full_like(y, output)), np.float64)))
    for output in outputs:
        base = value((1, *PIXELS, 1), output)
        if math.isfinite(base) and abs(base) > SIZE_PROBE_MIN:
            break
    else:
        return 0.0, 0.0
    exponents = []
    for shape, factor in (((2, *PIXELS, 1), 2), (WIDER, 4)):
        ratio = value(shape, output) / base
        e = math.log(ratio) / math.log(factor) if math.isfinite(ratio) and ratio > 0 else 0.0
        exponents.append(1.0 if abs(e - 1.0) < 0.1 else 0.0)
    return exponents[0], exponents[1]


# A loss's measurement depends on the loss, the head and the target levels only; `harness check`
# measures each variant before the sweep, and each point measured its variant again: about 1 s of
# loss evaluations each time at the default settings. Measured once per process; the loss function
# is kept with its result, so an id is never matched by another object that reused it.
_MEASURED: dict[tuple, tuple[object, Measured]] = {}


def measure(loss, activation: str, levels: dict[int, float], default_threshold: float) -> Measured:
    """Floor and threshold of `loss` (a losses.Loss) through a head, for the variant's target
    levels {0: background, 1: foreground} as training sees them."""
    key = (id(loss.fn), tuple(loss.target_range), activation, tuple(sorted(levels.items())),
           default_threshold)
    kept = _MEASURED.get(key)
    if kept is None or kept[0] is not loss.fn:
        kept = _MEASURED[key] = (loss.fn, measure_loss(loss, activation, levels, default_threshold))
    return kept[1]


def measure_loss(loss, activation: str, levels: dict[int, float], default_threshold: float) -> Measured:
    _, outputs = head_outputs(activation)
    curves = {cls: loss_curve(loss.fn, outputs, y) for cls, y in levels.items()}
    threshold, _ = measure_threshold(outputs, curves, default_threshold)
    floor, where = measure_floor(loss.fn, outputs, levels, loss.target_range, threshold)
    # Away from the floor where possible: there a proper loss is ~0 and its growth is float noise.
    exponents = size_exponents(loss.fn, where[0], [threshold, where[1]]) if where is not None and floor != 0 \
        else (0.0, 0.0)
    return Measured(floor, threshold, outputs, curves, exponents)
