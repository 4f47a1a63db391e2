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


def per_sample(name, y, p):
    """The loss of a batch of two 1x4 samples: one value per sample, as Keras expects of a loss."""
    out = np.asarray(LOSSES[name].fn(np.asarray(y, np.float32).reshape(2, 1, 4, 1),
                                     np.asarray(p, np.float32).reshape(2, 1, 4, 1)))
    assert out.shape == (2,), name
    return out


@pytest.mark.parametrize("name, y, p", [
    ("bce", [1, 1, 0, 0, 1, 0, 0, 0], [0.9, 0.6, 0.2, 0.1, 0.7, 0.3, 0.4, 0.05]),
    ("modified_bce_signed", [1, 1, -1, -1, 1, -1, -1, -1], [0.8, 0.2, -0.6, -0.9, 0.4, -0.3, 0.1, -0.5]),
])
def test_pixel_losses_are_each_samples_mean_over_its_pixels(name, y, p):
    # Not a sum, and not mixed across samples: the probe and the verdicts rely on a per-sample mean.
    y, p = np.asarray(y, np.float64), np.asarray(p, np.float64)
    if name == "bce":
        per_pixel = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    else:
        per_pixel = -0.5 * ((1 - y) * np.log(1 - p) + (1 + y) * np.log(1 + p))
    expected = per_pixel.reshape(2, 4).mean(axis=1)
    assert per_sample(name, y, p) == pytest.approx(expected, rel=1e-4)


def test_posted_formula_is_the_accepted_answers_term_for_term():
    # 0.5 * ((1 - y) log(1 - p) + (1 + y) log(1 + p)), per sample, at targets where neither term vanishes.
    y = np.array([0.0, 0.5, -0.5, 0.25, -1.0, 1.0, 0.0, 0.75])
    p = np.array([0.5, -0.25, 0.3, 0.6, 0.5, -0.5, -0.7, 0.2])
    expected = (0.5 * ((1 - y) * np.log(1 - p) + (1 + y) * np.log(1 + p))).reshape(2, 4).mean(axis=1)
    assert per_sample("modified_bce_posted", y, p) == pytest.approx(expected, rel=1e-4)


def test_clipping_keeps_the_signed_loss_finite_and_large_at_both_wrong_extremes():
    # -0.5 * 2 * log(1e-7) = 16.1 per pixel at the wrong extreme; float32 clipping gets close to it.
    wrong = per_sample("modified_bce_signed", [1, 1, 1, 1, -1, -1, -1, -1], [-1, -1, -1, -1, 1, 1, 1, 1])
    assert np.all(np.isfinite(wrong)) and wrong == pytest.approx([-math.log(1e-7)] * 2, rel=0.02)
    assert per_sample("modified_bce_corrected", [1] * 4 + [-1] * 4, [-1] * 4 + [1] * 4) == \
        pytest.approx(wrong + LOG2, rel=1e-6)


def test_dice_overlaps_each_sample_over_all_its_pixels():
    # sample 1: truth 3 pixels, prediction 2 of them: 1 - (2*2 + 1) / (3 + 2 + 1); sample 2: no truth,
    # prediction 1 pixel: 1 - 1 / (0 + 1 + 1).
    y = [1, 1, 1, 0, 0, 0, 0, 0]
    p = [1, 0, 1, 0, 0, 1, 0, 0]
    assert per_sample("dice", y, p) == pytest.approx([1 - 5 / 6, 1 - 1 / 2])


def test_unknown_heads_and_losses_name_the_valid_ones():
    from harness.errors import ConfigError
    from harness.losses import get_head
    with pytest.raises(ConfigError, match=r"^unknown head 'relu'; valid heads: sigmoid, tanh$"):
        get_head("relu")
    assert get_head("tanh").threshold == 0.0 and get_head("sigmoid").output_range == (0.0, 1.0)
    with pytest.raises(ConfigError, match=r"^unknown loss 'mse'; valid losses: bce, modified_bce_posted, "
                                          r"modified_bce_signed, modified_bce_corrected, dice or module:function$"):
        get_loss("mse")


def test_a_user_loss_carries_its_declared_domain_and_floor(tmp_path):
    from harness.errors import ConfigError
    (tmp_path / "declared_losses.py").write_text(
        "def signed(y, p):\n    return (y - p) ** 2\n"
        "signed.target_range = (-1, 1)\nsigned.lower_bound = '0.5'\n"
        "def plain(y, p):\n    return (y - p) ** 2\n"
        "def bad(y, p):\n    return y\nbad.target_range = 'x'\n")
    loss = get_loss("declared_losses:signed", search_dir=tmp_path)
    assert (loss.name, loss.target_range, loss.lower_bound) == ("declared_losses:signed", (-1.0, 1.0), 0.5)
    assert type(loss.lower_bound) is float and all(type(v) is float for v in loss.target_range)
    plain = get_loss("declared_losses:plain", search_dir=tmp_path)
    assert plain.target_range == (0.0, 1.0) and plain.lower_bound is None
    with pytest.raises(ConfigError, match=r"^loss 'declared_losses:bad': target_range must be"):
        get_loss("declared_losses:bad", search_dir=tmp_path)
