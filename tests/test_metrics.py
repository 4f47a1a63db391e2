"""The trivial predictor's score is what the metrics give the majority-class prediction, whichever
class is the majority."""
import numpy as np
import pytest

from harness.metrics import confusion_ious, trivial_miou

pytestmark = pytest.mark.backend      # CI runs these again under KERAS_BACKEND=jax


# Strictly between 0 and 1: with one class absent, confusion_ious counts its empty IoU as 1 while
# trivial_miou counts it as 0 (a degenerate validation set; left as it is).
@pytest.mark.parametrize("foreground", [0.001, 0.05, 0.15, 0.5, 0.6, 0.85, 0.999])
def test_trivial_miou_is_the_score_of_the_majority_class_prediction(foreground):
    rng = np.random.default_rng(7)
    truth = np.zeros(1000, bool)
    truth[rng.permutation(1000)[:round(1000 * foreground)]] = True
    majority = np.full_like(truth, truth.mean() > 0.5)     # every pixel the majority class
    scored = confusion_ious(majority, truth)["miou"]
    assert trivial_miou(truth.astype(np.float32)) == pytest.approx(scored)


def test_above_half_foreground_the_trivial_predictor_says_foreground():
    truth = np.ones((2, 4, 4, 1), bool)
    truth[:, 0, :3] = False                               # 26 of 32 pixels foreground
    everything = confusion_ious(np.ones_like(truth), truth)
    assert everything["iou"] == pytest.approx(26 / 32) and everything["bg_iou"] == 0
    assert trivial_miou(truth.astype(np.float32)) == pytest.approx(everything["miou"]) == pytest.approx(13 / 32)
    # Predicting background here would score less: the floor is the better of the two constant guesses.
    assert confusion_ious(np.zeros_like(truth), truth)["miou"] < trivial_miou(truth.astype(np.float32))


def test_each_count_lands_in_its_own_score():
    # tp = 2, fp = 1, fn = 3, tn = 4 (pixels in any shape: scores pool over all of them)
    pred = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0], np.float32).reshape(1, 2, 5, 1)
    truth = np.array([1, 1, 0, 1, 1, 1, 0, 0, 0, 0], np.float32).reshape(1, 2, 5, 1)
    s = confusion_ious(pred, truth)
    assert s["iou"] == pytest.approx(2 / 6) and s["bg_iou"] == pytest.approx(4 / 8)
    assert s["miou"] == pytest.approx((2 / 6 + 4 / 8) / 2) and s["dice"] == pytest.approx(4 / 8)
    assert all(type(v) is float for v in s.values())


def test_an_empty_prediction_of_an_empty_mask_is_perfect():
    # No foreground anywhere, none predicted: nothing was missed, every score is 1, not 0 or NaN.
    empty = np.zeros((2, 4, 4, 1), np.float32)
    assert confusion_ious(empty, empty) == {"iou": 1.0, "bg_iou": 1.0, "miou": 1.0, "dice": 1.0}
    full = np.ones((2, 4, 4, 1), np.float32)
    assert confusion_ious(full, full) == {"iou": 1.0, "bg_iou": 1.0, "miou": 1.0, "dice": 1.0}
    # ... while predicting foreground on an empty mask scores 0 on foreground, 0 on background.
    assert confusion_ious(full, empty) == {"iou": 0.0, "bg_iou": 0.0, "miou": 0.0, "dice": 0.0}



def test_an_over_segmentation_is_scored_by_its_false_positives():
    # tp = 1, fp = 1, fn = 0, tn = 1: one wrongly predicted pixel halves both IoUs.
    s = confusion_ious(np.array([1, 1, 0]), np.array([1, 0, 0]))
    assert s == {"iou": 0.5, "bg_iou": 0.5, "miou": 0.5, "dice": pytest.approx(2 / 3)}
