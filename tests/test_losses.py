import math

import numpy as np
import pytest

from harness.losses import LOSSES, get_loss

pytestmark = pytest.mark.backend      # CI runs these again under KERAS_BACKEND=jax

LOG2 = math.log(2)


def value(name, y, p):
    y = np.full((1, 2, 2, 1), y, np.float32)
    p = np.full((1, 2, 2, 1), p, np.float32)
    return float(np.asarray(LOSSES[name].fn(y, p))[0])


def test_bce_is_zero_at_a_perfect_prediction_and_unbounded_for_whitened_targets():
    assert value("bce", 1.0, 1 - 1e-7) == pytest.approx(0, abs=1e-3)
    assert value("bce", 0.0, 1e-7) == pytest.approx(0, abs=1e-3)
    assert value("bce", 1.0, 0.5) == pytest.approx(LOG2, rel=1e-4)
    # A whitened foreground target (about +2.4 at 15 % foreground): pushing p up drives BCE below 0.
    assert value("bce", 2.4, 0.99) < 0 < value("bce", 1.0, 0.99)


def test_posted_modified_bce_has_no_minus_sign():
    # 0.5 * ((1 - y) log(1 - p) + (1 + y) log(1 + p)) at y = 1, p = 0: 0.5 * 2 * log 1 = 0
    assert value("modified_bce_posted", 1.0, 0.0) == pytest.approx(0.0, abs=1e-6)
    # It rewards the wrong answer: for y = +1 the value at p = -0.9 is lower than at p = +0.9.
    assert value("modified_bce_posted", 1.0, -0.9) < value("modified_bce_posted", 1.0, 0.9)
    # ... and goes to -inf at p = -1: nothing bounds it below.
    assert value("modified_bce_posted", 1.0, -1.0) == -math.inf


def test_sign_corrected_loss_floors_at_minus_log2_and_shifted_one_at_zero():
    assert value("modified_bce_signed", 1.0, 1.0) == pytest.approx(-LOG2, abs=1e-5)
    assert value("modified_bce_signed", -1.0, -1.0) == pytest.approx(-LOG2, abs=1e-5)
    assert value("modified_bce_corrected", 1.0, 1.0) == pytest.approx(0.0, abs=1e-5)
    assert value("modified_bce_corrected", 1.0, 0.0) == pytest.approx(LOG2, rel=1e-4)
    # The right answer is now the minimum.
    assert value("modified_bce_corrected", 1.0, 0.9) < value("modified_bce_corrected", 1.0, -0.9)
    # Clipping keeps it finite at the wrong extreme.
    assert math.isfinite(value("modified_bce_corrected", 1.0, -1.0))


def test_each_loss_declares_its_floor_and_the_floor_is_reached_at_the_target():
    for name in ("bce", "modified_bce_signed", "modified_bce_corrected", "dice"):
        loss = get_loss(name)
        lo, hi = loss.target_range
        y = np.array([lo, hi, hi, lo], np.float32).reshape(1, 2, 2, 1)
        p = np.clip(y, lo + 1e-7, hi - 1e-7)
        assert float(np.asarray(loss.fn(y, p))[0]) == pytest.approx(loss.lower_bound, abs=2e-3), name
    assert get_loss("modified_bce_posted").lower_bound == pytest.approx(-LOG2)


def test_dice_is_one_minus_the_overlap():
    assert value("dice", 1.0, 1.0) == pytest.approx(0.0, abs=1e-6)
    y = np.array([1, 1, 0, 0], np.float32).reshape(1, 2, 2, 1)
    p = np.array([1, 0, 0, 0], np.float32).reshape(1, 2, 2, 1)
    assert float(np.asarray(LOSSES["dice"].fn(y, p))[0]) == pytest.approx(1 - 3 / 4)
