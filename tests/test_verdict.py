import math

from harness.config import DEFAULTS
import pytest

from harness.verdict import combine, judge, rules_markdown

RULES = DEFAULTS["verdict"]
TRIVIAL = 0.42


def history(losses, mious):
    return {"loss": losses, "val_miou": mious}


def test_negative_loss_is_judged_against_the_loss_own_floor():
    h = history([0.5, 0.1, -0.3, -0.8], [0.1, 0.1, 0.1, 0.1])
    assert judge(h, 0.0, TRIVIAL, RULES)["verdict"] == "negative_loss"
    # The same values are fine for a loss whose floor is -log 2.
    h = history([0.5, 0.1, -0.3, -0.6], [0.1] * 4)
    j = judge(h, -math.log(2), TRIVIAL, RULES)
    assert not j["negative_loss"] and j["verdict"] == "not_learning"


def test_nan_means_diverged_and_wins():
    h = history([0.5, -1.0, float("nan")], [0.5, 0.5])
    j = judge(h, 0.0, TRIVIAL, RULES)
    assert j["diverged"] and j["negative_loss"] and j["verdict"] == "diverged" and not j["converged"]
    assert judge(history([0.5, 0.4], [0.9, 0.9]), 0.0, TRIVIAL, RULES, diverged=True)["verdict"] == "diverged"
    assert judge(history([0.5, float("inf")], [0.9]), 0.0, TRIVIAL, RULES)["diverged"]


def test_converged_needs_a_clear_margin_and_a_plateau():
    plateau = [0.5, 0.7, 0.85, 0.88, 0.9, 0.89, 0.91, 0.9]
    j = judge(history([0.5] * 8, plateau), 0.0, TRIVIAL, RULES)
    assert j["converged"] and j["verdict"] == "converged"
    assert abs(j["final_miou"] - (0.89 + 0.91 + 0.9) / 3) < 1e-9
    rising = [0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8]
    assert judge(history([0.5] * 8, rising), 0.0, TRIVIAL, RULES)["verdict"] == "learning"
    trivial = [TRIVIAL + 0.05] * 8
    assert judge(history([0.5] * 8, trivial), 0.0, TRIVIAL, RULES)["verdict"] == "not_learning"
    short = [0.9, 0.9, 0.9]          # no earlier window to compare with: a stated outcome
    assert judge(history([0.5] * 3, short), 0.0, TRIVIAL, RULES)["verdict"] == "too_short"


def test_rules_text_states_the_numbers():
    text = rules_markdown(RULES)
    assert "0.1" in text and "0.05" in text and "last 3 epochs" in text


def test_a_falling_miou_is_degrading_not_converged():
    falling = [0.85, 0.9, 0.9, 0.9, 0.8, 0.78, 0.76]     # still above trivial + margin, but getting worse
    j = judge(history([0.3] * 7, falling), 0.0, TRIVIAL, RULES)
    assert j["verdict"] == "degrading" and not j["converged"]
    # A drop within the tolerance is still a plateau.
    flat = [0.9, 0.9, 0.9, 0.89, 0.88, 0.88]
    assert judge(history([0.3] * 6, flat), 0.0, TRIVIAL, RULES)["verdict"] == "converged"


def test_too_few_epochs_to_judge_a_plateau_is_stated():
    j = judge(history([0.3] * 5, [0.8, 0.85, 0.9, 0.9, 0.9]), 0.0, TRIVIAL, RULES)
    assert j["verdict"] == "too_short" and not j["converged"]
    assert "too_short" in rules_markdown(RULES) and "fewer than 6 scored epochs" in rules_markdown(RULES)


def test_a_diverged_run_is_scored_on_its_epochs_before_the_divergence():
    # Epoch 4 diverged; its val_miou is what NaN weights give: every pixel background = trivial.
    h = history([0.5, 0.4, 0.3, float("nan")], [0.7, 0.8, 0.85, TRIVIAL])
    j = judge(h, 0.0, TRIVIAL, RULES, diverged=True, diverged_epoch=4)
    assert j["verdict"] == "diverged" and j["final_miou"] == pytest.approx((0.7 + 0.8 + 0.85) / 3)
    assert j["final_miou"] != TRIVIAL and j["scored_epochs"] == 3 and "epoch 4" in j["score_note"]
    # Diverged in the first epoch: nothing to score, and it says so.
    j = judge(history([float("nan")], [TRIVIAL]), 0.0, TRIVIAL, RULES, diverged=True, diverged_epoch=1)
    assert math.isnan(j["final_miou"]) and j["scored_epochs"] == 0 and "no finite epoch" in j["score_note"]


def test_seeds_that_all_train_are_not_unstable():
    assert combine(["learning", "converged"]) == "learning"
    assert combine(["converged", "converged"]) == "converged"
    assert combine(["converged", "too_short"]) == "too_short"
    assert combine(["converged", "negative_loss"]) == "unstable"
    assert combine(["negative_loss", "diverged"]) == "diverged"     # all fail: the most severe
    assert combine(["not_learning", "degrading"]) == "degrading"


def test_a_loss_without_floor_is_never_negative_and_an_unmeasured_one_is_held_to_zero():
    h = history([-5.0, -9.0], [0.5, 0.5])
    assert not judge(h, -math.inf, TRIVIAL, RULES)["negative_loss"]
    assert judge(h, math.nan, TRIVIAL, RULES)["negative_loss"]


def test_one_dipped_epoch_is_noise_not_a_fall():
    # Seen in the default sweep: one epoch at 0.71 among epochs above 0.9.
    dipped = [0.94, 0.87, 0.96, 0.92, 0.71, 0.96]
    assert judge(history([0.1] * 6, dipped), 0.0, TRIVIAL, RULES)["verdict"] == "converged"
    # ... and one lucky epoch is no rise.
    lucky = [0.8, 0.8, 0.8, 0.8, 0.95, 0.81]
    assert judge(history([0.1] * 6, lucky), 0.0, TRIVIAL, RULES)["verdict"] == "converged"
