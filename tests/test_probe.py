"""The measured floor and threshold (harness/probe.py), and losses of every shape and kind."""
import math

import keras

import pytest

from harness.errors import ConfigError
from harness.losses import Loss, get_loss
from harness.probe import measure
from harness.verdict import judge
from harness.config import DEFAULTS

pytestmark = pytest.mark.backend      # CI runs these again under KERAS_BACKEND=jax

BINARY, SIGNED = {0: 0.0, 1: 1.0}, {0: -1.0, 1: 1.0}
WHITENED = {0: -0.446, 1: 2.43}          # binary masks at 15 % foreground, whitened as in the case


def user_loss(fn, lower_bound=None, target_range=(0.0, 1.0)):
    return Loss("user", fn, target_range, lower_bound, "")


def shifted_bce(y, p):          # BCE - 1: floor -1, declared nowhere
    return keras.losses.binary_crossentropy(y, p) - 1.0


def smoothed_bce(y, p):         # least at p = 0.95 for y = 1: entropy 0.199, not 0 and not its value at p = 1
    return keras.losses.binary_crossentropy(y, p, label_smoothing=0.1)


def scalar_bce(y, p):           # one value per batch
    return keras.ops.mean(keras.losses.binary_crossentropy(y, p))


def squared_error(y, p):
    return keras.ops.mean((y - p) ** 2, axis=(1, 2, 3))


@pytest.mark.parametrize("name, head, levels, floor, threshold", [
    ("bce", "sigmoid", BINARY, 0.0, 0.5),
    ("bce", "sigmoid", WHITENED, 0.0, 0.5),           # whitened targets: still scored at 0.5
    ("dice", "sigmoid", BINARY, 0.0, 0.5),
    ("modified_bce_corrected", "tanh", SIGNED, 0.0, 0.0),
    ("modified_bce_signed", "tanh", SIGNED, -math.log(2), 0.0),
    ("bce", "tanh", BINARY, 0.0, 0.5),                # tanh on {0, 1}: background sits at 0, not at a threshold of 0
])
def test_builtin_floors_and_thresholds(name, head, levels, floor, threshold):
    m = measure(get_loss(name), head, levels, default_threshold=99.0)
    assert m.floor == pytest.approx(floor, abs=1e-4)
    assert m.threshold == pytest.approx(threshold, abs=1e-3)


def test_posted_formula_on_whitened_targets_is_held_to_its_value_at_perfect_predictions():
    # It falls without bound on the background side; its value at perfect predictions stands in,
    # so a run that drives it below that is a negative_loss, as the case observed.
    floor = measure(get_loss("modified_bce_posted"), "tanh", WHITENED, 0.0).floor
    assert floor == pytest.approx(0.0, abs=1e-3)
    assert judge({"loss": [0.2, -1.5, -3.5], "val_miou": [0.4] * 3}, floor, 0.42, DEFAULTS["verdict"])["negative_loss"]


def test_user_floors_are_measured_not_assumed():
    assert measure(user_loss(shifted_bce), "sigmoid", BINARY, 0.5).floor == pytest.approx(-1.0, abs=1e-4)
    smoothed = measure(user_loss(smoothed_bce), "sigmoid", BINARY, 0.5)
    assert smoothed.floor == pytest.approx(0.1985, abs=2e-3) and smoothed.threshold == pytest.approx(0.5, abs=1e-3)
    assert measure(user_loss(squared_error), "tanh", BINARY, 0.0).threshold == pytest.approx(0.5, abs=1e-3)


def test_a_healthy_shifted_loss_is_not_called_negative():
    floor = measure(user_loss(shifted_bce), "sigmoid", BINARY, 0.5).floor
    history = {"loss": [-0.3, -0.6, -0.7, -0.72, -0.74, -0.75], "val_miou": [0.72, 0.74, 0.75, 0.76, 0.76, 0.76]}
    judged = judge(history, floor, 0.42, DEFAULTS["verdict"])
    assert not judged["negative_loss"] and judged["verdict"] == "converged"
    # ... while the old assumption, a floor of 0, called it negative.
    assert judge(history, 0.0, 0.42, DEFAULTS["verdict"])["verdict"] == "negative_loss"


@pytest.mark.parametrize("spec", ["keras.losses:BinaryFocalCrossentropy(gamma=2.0)",
                                  "keras.losses:BinaryCrossentropy", "keras.losses:binary_crossentropy"])
def test_keras_losses_by_name_class_and_instance(spec):
    loss = get_loss(spec)
    assert loss.lower_bound is None and loss.target_range == (0.0, 1.0)
    m = measure(loss, "sigmoid", BINARY, 0.0)
    assert m.floor == pytest.approx(0.0, abs=1e-4) and m.threshold == pytest.approx(0.5, abs=1e-3)


def test_scalar_returning_loss_is_probed_like_a_per_sample_one():
    scalar = measure(user_loss(scalar_bce), "sigmoid", WHITENED, 0.0)
    per_pixel = measure(get_loss("bce"), "sigmoid", WHITENED, 0.0)
    assert scalar.floor == pytest.approx(per_pixel.floor, abs=1e-6)
    assert scalar.threshold == pytest.approx(per_pixel.threshold, abs=1e-6)


def shifted_pixels(y, p):        # BCE - 1 per pixel: floor -1 a pixel
    return keras.losses.binary_crossentropy(y, p)[..., None] - 1.0


def summed_shifted(y, p):       # summed over the batch and the pixels: a training batch's floor is -B*H*W
    return keras.ops.sum(shifted_pixels(y, p))


def per_sample_summed_shifted(y, p):     # summed over each sample's pixels; Keras averages the samples
    return keras.ops.sum(shifted_pixels(y, p), axis=(1, 2, 3))


def summed_smoothed(y, p):      # a positive floor, summed: the short last batch has the least floor
    return keras.ops.sum(smoothed_bce(y, p))


def shifted_smooth_dice(y, p):  # one value per batch, growing a little with the pixels (the smoothing): a mean
    overlap = keras.ops.sum(y * p)
    return 1.0 - (2.0 * overlap + 1.0) / (keras.ops.sum(y) + keras.ops.sum(p) + 1.0) - 0.3


@pytest.mark.parametrize("fn, exponents, floor_per_pixel, least_batch", [
    (shifted_pixels, (0.0, 0.0), -1.0, None),
    (summed_shifted, (1.0, 1.0), -1.0, 16),
    (per_sample_summed_shifted, (0.0, 1.0), -1.0, None),
    (summed_smoothed, (1.0, 1.0), 0.1985, 5),
    (shifted_smooth_dice, (0.0, 0.0), -0.3, None),
])
def test_a_summed_loss_has_its_floor_scaled_to_the_training_batch(fn, exponents, floor_per_pixel, least_batch):
    m = measure(user_loss(fn), "sigmoid", BINARY, 0.5)
    assert m.exponents == pytest.approx(exponents, abs=1e-3)
    batches, pixels = [16, 5], 32 * 32                 # 37 images in batches of 16: 16, 16, 5
    expected = floor_per_pixel * (least_batch or 1) ** exponents[0] * pixels ** exponents[1]
    assert m.training_floor(batches, pixels) == pytest.approx(expected, rel=2e-2)
    # A healthy run of the summed loss, well above its floor, is not called negative; against the
    # probe's floor (16 pixels, one sample) it would have been.
    ends = 0.6 * expected if expected < 0 else 1.5 * expected
    history = {"loss": [ends * f for f in (0.3, 0.6, 0.8, 0.9, 0.95, 1.0)] if expected < 0 else
               [ends * f for f in (3.0, 2.0, 1.5, 1.2, 1.1, 1.0)], "val_miou": [0.72, 0.74, 0.75, 0.76, 0.76, 0.76]}
    judged = judge(history, m.training_floor(batches, pixels), 0.42, DEFAULTS["verdict"])
    assert not judged["negative_loss"] and judged["verdict"] == "converged"
    if exponents != (0.0, 0.0) and expected < 0:
        assert judge(history, m.floor, 0.42, DEFAULTS["verdict"])["verdict"] == "negative_loss"


def test_loss_module_beside_the_experiment_is_found(tmp_path):
    (tmp_path / "beside_losses.py").write_text(
        "import keras\n\nclass Shifted(keras.losses.Loss):\n"
        "    lower_bound = -2.0\n"
        "    def __init__(self, shift=1.0):\n        super().__init__()\n        self.shift = shift\n"
        "    def call(self, y, p):\n        return keras.losses.binary_crossentropy(y, p) - self.shift\n")
    loss = get_loss("beside_losses:Shifted(shift=2.0)", search_dir=tmp_path)
    assert loss.lower_bound == -2.0
    assert measure(loss, "sigmoid", BINARY, 0.5).floor == pytest.approx(-2.0, abs=1e-4)


@pytest.mark.parametrize("spec, message", [
    ("nowhere_module:loss", "cannot load loss"),
    ("keras.losses:NoSuchLoss", "cannot load loss"),
    ("keras.losses:BinaryFocalCrossentropy(gamma=x)", "literal"),
    ("keras.losses:BinaryFocalCrossentropy(2.0)", "literal|by name|module:name"),
    ("keras.losses:BinaryFocalCrossentropy(nope=1)", "cannot create loss"),
])
def test_bad_loss_names_are_one_clear_error(spec, message):
    with pytest.raises(ConfigError, match=message):
        get_loss(spec)


@pytest.mark.slow   # a fresh process or a real training: the full suite runs it, not the fast set
def test_training_a_summed_loss_is_judged_against_a_training_batch_floor():
    """Trained for real: the epoch losses of a loss summed over batch and pixels lie far below the
    probe's floor (16 pixels), and far above a training batch's; the run is not a negative_loss."""
    from harness.config import Variant, load_config
    from harness.data import load_dataset
    from harness.train import train_variant
    from conftest import ROOT
    cfg = load_config(ROOT / "tests" / "data" / "tiny.toml",
                      ["train.epochs=2", "data.n_images=40", "augment.stats_rounds=1", "model.start_depth=4"])
    variant = Variant(name="summed", images="featurewise", masks="binary", head="sigmoid",
                      loss="test_probe:summed_shifted", validation="like_training")
    result = train_variant(cfg, variant, 1, load_dataset(cfg["data"]))
    probe_floor = measure(get_loss("test_probe:summed_shifted"), "sigmoid", BINARY, 0.5).floor
    assert min(result.history["loss"]) < probe_floor                 # what the old floor called negative
    assert result.loss_floor == pytest.approx(-16 * 32 * 32, rel=1e-3)   # batch 16 of 32x32 images
    judged = judge(result.history, result.loss_floor, result.trivial_miou, cfg["verdict"])
    assert not judged["negative_loss"], (result.history["loss"], result.loss_floor)


# The probe's parts on plain numpy losses, whose every value is known: floors, thresholds and
# exponents to the decimal, with no Keras in the way.
from harness.probe import (Measured, epoch_batch_sizes, least_set, measure_floor, measure_threshold,  # noqa: E402
                           size_exponents)
import numpy as np  # noqa: E402

LINE = np.linspace(-1.0, 1.0, 141)          # a tanh head's outputs, every 1/70


def squared(y, p):                          # per-pixel squared error, a mean per sample
    return np.mean((y - p) ** 2, axis=(1, 2, 3))


def measured_with(floor, exponents):
    return Measured(floor, 0.5, LINE, {}, exponents)


def test_an_epoch_has_full_batches_and_a_short_last_one():
    assert epoch_batch_sizes(37, 16) == [16, 5]
    assert epoch_batch_sizes(32, 16) == [16]
    assert epoch_batch_sizes(10, 16) == [10]          # fewer images than a batch: one short batch


def test_the_training_floor_scales_a_summed_floor_to_each_batch_and_image():
    # -1 on a 4x4 probe of one sample; summed over the batch and the pixels of 8x4 images: x batch x 2.
    summed = measured_with(-1.0, (1.0, 1.0))
    assert summed.training_floor([16, 5], 32) == -32.0          # the least: the full batch
    assert measured_with(0.5, (1.0, 1.0)).training_floor([16, 5], 32) == 5.0   # a positive floor: the short one
    assert measured_with(-1.0, (1.0, 0.0)).training_floor([16, 5], 32) == -16.0
    assert measured_with(-1.0, (0.0, 1.0)).training_floor([16, 5], 32) == -2.0
    assert measured_with(-1.0, (0.0, 0.0)).training_floor([16, 5], 32) == -1.0
    # No floor to scale: NaN (not measurable) and -inf (none) stand as they are.
    assert math.isnan(measured_with(math.nan, (1.0, 1.0)).training_floor([16], 32))
    assert measured_with(-math.inf, (1.0, 1.0)).training_floor([16], 32) == -math.inf
    # An epoch over 20 images of 8x4 pixels in batches of 16: batches 16 and 4, 32 pixels each.
    images = np.zeros((20, 8, 4, 3), np.float32)
    assert summed.epoch_floor(images, 16) == -32.0
    assert measured_with(0.5, (1.0, 1.0)).epoch_floor(images, 16) == 4.0


def test_least_values_are_those_within_a_relative_millionth_of_the_least():
    assert list(least_set(np.array([3.0, 1e-6, 0.0, 2e-6, 0.0]))) == [1, 2, 4]      # 1e-6 of 0: in
    big = -1000.0
    assert list(least_set(np.array([big + 1e-3, big, big + 2e-3]))) == [0, 1]     # 1e-6 of 1000
    assert list(least_set(np.array([np.nan, 2.0, 1.0]))) == [2]                    # NaN is no least
    assert list(least_set(np.array([0.0, -np.inf, 1.0, -np.inf]))) == [1, 3]       # unbounded: where it is -inf
    assert len(least_set(np.array([np.nan, np.inf]))) == 0                         # nothing finite


def test_the_threshold_is_midway_between_the_inner_ends_of_each_class_least():
    outputs = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
    flat_background = np.array([0.0, 0.0, 0.0, 1.0, 2.0])      # least all over [-1, 0]: its end nearest 1 is 0
    foreground = np.array([2.0, 1.5, 1.0, 0.0, 0.0])           # least over [0.5, 1]: its end nearest 0 is 0.5
    threshold, best = measure_threshold(outputs, {0: flat_background, 1: foreground}, default=9.0)
    assert threshold == 0.25 and best == {0: 0.0, 1: 0.5}
    # A class with no finite loss: the head's default threshold, and what was found.
    threshold, best = measure_threshold(outputs, {0: flat_background, 1: np.full(5, np.nan)}, default=9.0)
    assert threshold == 9.0 and best == {0: 0.0}
    assert measure_threshold(outputs, {1: foreground}, default=9.0) == (9.0, {1: 0.5})


def test_the_floor_is_the_least_loss_on_each_class_side_of_the_threshold():
    # Squared error, targets -0.5 and 0.75: least (0) at a perfect prediction on each side.
    floor, where = measure_floor(squared, LINE, {0: -0.5, 1: 0.75}, (-1.0, 1.0), 0.0)
    assert floor == 0.0 and where in ((-0.5, -0.5), (0.75, 0.75))
    # A target on the wrong side of the threshold is scored on its own side only: its least there.
    floor, where = measure_floor(squared, LINE, {1: -0.5}, (-1.0, 1.0), 0.0)
    assert floor == pytest.approx(0.25) and where == (-0.5, 0.0)          # 0 is on the foreground side
    floor, where = measure_floor(squared, LINE, {0: 0.5}, (-1.0, 1.0), 0.0)
    assert floor == pytest.approx(0.25 + 1 / 70 + 1 / 70 ** 2) and where == (0.5, pytest.approx(-1 / 70))
    # Targets outside the loss's domain are taken at the domain's edge.
    floor, where = measure_floor(lambda y, p: squared(y, p) - y.mean(), LINE, {0: -3.0, 1: 2.0}, (-1.0, 1.0), 0.0)
    assert floor == -1.0 and where == (1.0, 1.0)


def test_a_loss_still_falling_at_the_head_bound_is_held_to_its_value_at_a_perfect_prediction():
    def falling(y, p):              # linear in p: no least value, falls 0.14 over the last 10 steps
        return np.mean(-2 * (p - y) * np.sign(y), axis=(1, 2, 3))
    floor, where = measure_floor(falling, LINE, {0: -0.5, 1: 0.5}, (-1.0, 1.0), 0.0)
    assert floor == pytest.approx(0.0, abs=1e-6) and where[1] == pytest.approx(where[0], abs=1 / 70)

    def flattening(y, p):           # least at the bound, but flat there: that least is the floor
        return np.mean((p - np.sign(y)) ** 4, axis=(1, 2, 3)) - 0.5
    floor, where = measure_floor(flattening, LINE, {0: -0.5, 1: 0.5}, (-1.0, 1.0), 0.0)
    assert floor == pytest.approx(-0.5) and abs(where[1]) == 1.0
    # Nothing finite: no floor.
    assert measure_floor(lambda y, p: np.full(len(p), np.nan), LINE, {0: 0.0, 1: 1.0}, (0.0, 1.0), 0.5) == \
        (pytest.approx(math.nan, nan_ok=True), None)


def test_size_exponents_tell_a_sum_from_a_mean():
    def scaled(batch_power, pixel_power):
        def fn(y, p):
            b, h, w = y.shape[:3]          # one value per batch
            return (p.flat[0] + 1.0) * b ** batch_power * (h * w / 16) ** pixel_power
        return fn
    assert size_exponents(scaled(1, 1), 1.0, [0.5]) == (1.0, 1.0)
    assert size_exponents(scaled(1, 0), 1.0, [0.5]) == (1.0, 0.0)
    assert size_exponents(scaled(0, 1), 1.0, [0.5]) == (0.0, 1.0)
    assert size_exponents(scaled(0, 0), 1.0, [0.5]) == (0.0, 0.0)
    # Near 1 is a sum, anything else a mean: a smoothed Dice grows a little with its pixels.
    assert size_exponents(scaled(1.08, 0.92), 1.0, [0.5]) == (1.0, 1.0)
    assert size_exponents(scaled(0.5, 1.15), 1.0, [0.5]) == (0.0, 0.0)
    # Read where the value is clearly not 0: at the second output when the first gives 0.
    assert size_exponents(scaled(1, 1), 1.0, [-1.0, 0.5]) == (1.0, 1.0)
    assert size_exponents(scaled(1, 1), 1.0, [-1.0, -1.0 + 1e-3]) == (0.0, 0.0)
    # A value that changes sign with the size says nothing of a sum: a mean.
    assert size_exponents(lambda y, p: 1.0 if len(y) == 1 and y.shape[1] == 4 else -1.0, 1.0, [0.5]) == (0.0, 0.0)


def test_the_probe_feeds_a_loss_float32_like_training():
    def float32_only(y, p):
        assert y.dtype == np.float32 and p.dtype == np.float32, (y.dtype, p.dtype)
        return squared(y, p) * len(y)
    assert measure_floor(float32_only, LINE.astype(np.float32), {0: -0.5, 1: 0.5}, (-1.0, 1.0), 0.0)[0] == 0.0
    assert size_exponents(float32_only, 1.0, [0.5]) == (1.0, 0.0)


def test_a_value_that_vanishes_or_barely_differs_from_zero_says_nothing_of_size():
    def summed_from(base):          # value ~ batch x pixels, exactly `base` on the probe
        return lambda y, p: base * len(y) * y.shape[1] * y.shape[2] / 16
    assert size_exponents(summed_from(0.00125), 1.0, [0.5]) == (1.0, 1.0)
    assert size_exponents(summed_from(0.001), 1.0, [0.5]) == (0.0, 0.0)        # not clearly away from 0
    # 0 for a larger batch or image: no exponent to read, and no error.
    assert size_exponents(lambda y, p: 1.0 if len(y) == 1 and y.shape[1] == 4 else 0.0, 1.0, [0.5]) == (0.0, 0.0)


def test_a_loss_summed_over_every_element_channels_included_is_a_sum():
    assert size_exponents(lambda y, p: float(np.sum(np.ones_like(y))), 1.0, [0.5]) == (1.0, 1.0)


def test_the_head_outputs_span_each_heads_range_in_float32():
    from harness.probe import N_POINTS, PROBE_LIMIT, head_outputs
    for activation, (lo, hi) in (("sigmoid", (0.0, 1.0)), ("tanh", (-1.0, 1.0))):
        z, p = head_outputs(activation)
        assert z.dtype == p.dtype == np.float32 and len(z) == len(p) == N_POINTS
        assert z[0] == -PROBE_LIMIT[activation] and z[-1] == PROBE_LIMIT[activation]
        assert lo < p[0] < lo + 1e-5 and hi - 1e-5 < p[-1] < hi


def test_a_loss_curve_is_one_value_per_output_of_a_one_channel_probe_image():
    from harness.probe import PROBE_PIXELS, loss_curve
    values = loss_curve(lambda y, p: np.sum(p + y), np.array([0.25, 0.5], np.float32), 1.0)
    assert values.dtype == np.float64
    np.testing.assert_allclose(values, [1.25 * PROBE_PIXELS, 1.5 * PROBE_PIXELS])       # one channel: 16 pixels


def test_no_least_value_is_an_empty_index_array():
    where = least_set(np.array([np.nan, np.inf]))
    assert len(where) == 0 and where.dtype.kind == "i"


def test_a_class_with_nothing_finite_leaves_the_floor_to_the_other():
    def nan_for_background(y, p):
        return np.where(y == 0.0, np.nan, (p - y) ** 2)
    floor, where = measure_floor(nan_for_background, LINE, {0: 0.0, 1: 1.0}, (-1.0, 1.0), 0.0)
    assert floor == 0.0 and where == (1.0, 1.0)


def test_a_floor_tied_between_the_classes_is_the_first_class():
    def constant(y, p):
        return np.full_like(p, 0.5)
    floor, where = measure_floor(constant, LINE, {0: 0.9, 1: -0.9}, (-1.0, 1.0), 0.0)
    assert floor == 0.5 and where == (0.9, float(LINE[0]))


def test_a_flat_edge_at_the_lower_bound_is_a_floor_and_only_a_steep_one_is_not():
    # Background's loss is least at the lowest output, flat inward: that least value is the floor.
    def flat_low(y, p):
        return np.where(y < 0.0, 0.3 + 1e-3 * (p + 1.0), (p - 1.0) ** 2 + 1.0)
    floor, where = measure_floor(flat_low, LINE, {0: -0.5, 1: 1.0}, (-1.0, 1.0), 0.0)
    assert where == (-0.5, -1.0) and floor == pytest.approx(0.3)
    # Falling by exactly FALLING over the last steps is not falling more than it: still the floor.
    from harness.probe import EDGE_STEPS, FALLING

    def step_low(y, p):              # 0 at the lowest output, FALLING everywhere else on its side
        return np.where(y < 0.0, np.where(p <= LINE[0], 0.0, FALLING), (p - 1.0) ** 2 + 1.0)
    assert step_low(-0.5, LINE[EDGE_STEPS]) - FALLING == 0.0
    floor, where = measure_floor(step_low, LINE, {0: -0.5, 1: 1.0}, (-1.0, 1.0), 0.0)
    assert floor == 0.0 and where == (-0.5, -1.0)


def test_the_measured_threshold_falls_back_to_the_heads_and_a_zero_floor_is_not_scaled():
    from harness.probe import measure

    class NaNLoss:
        target_range, lower_bound = (0.0, 1.0), None

        @staticmethod
        def fn(y, p):
            return np.full_like(p, np.nan)
    nan = measure(NaNLoss, "sigmoid", {0: 0.0, 1: 1.0}, 0.5)
    assert nan.threshold == 0.5 and math.isnan(nan.floor) and nan.exponents == (0.0, 0.0)

    class SummedSquares:             # least exactly 0 at a target of 0.5 (sigmoid(0)): scaled or not, 0
        target_range, lower_bound = (0.0, 1.0), None

        @staticmethod
        def fn(y, p):
            return np.sum((p - y) ** 2)
    summed = measure(SummedSquares, "sigmoid", {0: 0.0, 1: 0.5}, 0.5)
    assert summed.floor == 0.0 and summed.exponents == (0.0, 0.0)
    shifted = measure(type("Shifted", (SummedSquares,), {"fn": staticmethod(lambda y, p: np.sum((p - y) ** 2 + 0.1))}),
                      "sigmoid", {0: 0.0, 1: 0.5}, 0.5)
    assert shifted.floor == pytest.approx(1.6) and shifted.exponents == (1.0, 1.0)


def test_a_loss_curve_through_log_zero_warns_nobody():
    import warnings
    from harness.probe import loss_curve
    with warnings.catch_warnings():
        warnings.simplefilter("error")                  # a numpy RuntimeWarning would reach the terminal
        values = loss_curve(lambda y, p: np.log(p - p), np.array([0.5], np.float32), 1.0)
    assert values[0] == -math.inf


def test_size_exponents_through_log_zero_warn_nobody():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert size_exponents(lambda y, p: np.log(p - p), 1.0, [0.5]) == (0.0, 0.0)    # -inf: says nothing


def test_a_measurement_is_made_once_per_loss_head_and_levels():
    """`harness check` and each point measure a variant's loss: the second time gives the first's
    result back, never another loss's that shares a name (or, once collected, an id)."""
    calls = []

    def counted(y, p):
        calls.append(1)
        return keras.ops.mean(keras.ops.square(y - p), axis=(1, 2, 3))

    loss = Loss("mine", counted, (0.0, 1.0), None, "")
    first = measure(loss, "sigmoid", {0: 0.0, 1: 1.0}, 0.5)
    n = len(calls)
    assert measure(loss, "sigmoid", {0: 0.0, 1: 1.0}, 0.5) is first and len(calls) == n
    assert measure(loss, "sigmoid", {0: -0.5, 1: 2.0}, 0.5) is not first          # other levels: measured
    same_name = Loss("mine", lambda y, p: counted(y, p) + 1.0, (0.0, 1.0), None, "")
    other = measure(same_name, "sigmoid", {0: 0.0, 1: 1.0}, 0.5)
    assert other is not first and other.floor == pytest.approx(first.floor + 1.0)
    assert measure(loss, "sigmoid", {0: 0.0, 1: 1.0}, 0.5) is first             # each loss keeps its own
