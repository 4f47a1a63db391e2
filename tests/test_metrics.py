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
