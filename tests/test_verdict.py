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


# Rules whose numbers are exact in binary floating point, so that each boundary of a rule can be hit
# exactly: the bar is trivial + margin = 0.5, a change of exactly the tolerance is 0.125.
EXACT = {"margin": 0.25, "window": 2, "tolerance": 0.125, "bound_slack": 0.5}
QUARTER = 0.25                     # the trivial mIoU used with EXACT


def test_negative_loss_starts_strictly_below_floor_minus_slack():
    at_limit = judge(history([1.0, -0.5], [0.6] * 2), 0.0, QUARTER, EXACT)       # exactly floor - slack
    assert not at_limit["negative_loss"] and at_limit["verdict"] == "too_short"
    below = judge(history([1.0, -0.5625], [0.6] * 2), 0.0, QUARTER, EXACT)
    assert below["negative_loss"] and below["verdict"] == "negative_loss"
    # Within the slack below the floor is not negative; against a floor of 1 the same run is.
    assert not judge(history([0.25, -0.25], [0.6] * 2), 0.0, QUARTER, EXACT)["negative_loss"]
    assert judge(history([0.25, 0.25], [0.6] * 2), 1.0, QUARTER, EXACT)["negative_loss"]


def test_min_and_final_loss_are_the_finite_losses_least_and_last():
    j = judge(history([0.5, 0.2, 0.3], [0.6] * 3), 0.0, QUARTER, EXACT)
    assert j["min_loss"] == 0.2 and j["final_loss"] == 0.3
    # A run whose first loss is already NaN has no loss to report, and is not also a negative_loss.
    j = judge(history([float("nan")], [0.6]), 0.0, QUARTER, EXACT)
    assert math.isnan(j["min_loss"]) and math.isnan(j["final_loss"]) and not j["negative_loss"]


def test_an_unmeasured_floor_is_zero_whether_none_or_nan():
    for floor in (None, math.nan):
        assert not judge(history([0.5, 0.125], [0.6] * 2), floor, QUARTER, EXACT)["negative_loss"]
        assert judge(history([0.5, -0.75], [0.6] * 2), floor, QUARTER, EXACT)["negative_loss"]


def test_the_divergence_epoch_found_in_the_losses_decides_which_epochs_are_scored():
    # No epoch given: the first non-finite loss is in epoch 5, so epochs 1-4 are scored, and only those.
    h = history([0.5, 0.4, 0.3, 0.3, float("nan"), float("nan")], [0.75, 0.75, 0.5, 0.5, 0.125, 0.125])
    j = judge(h, 0.0, QUARTER, EXACT)
    assert j["diverged"] and j["verdict"] == "diverged"
    assert j["scored_epochs"] == 4 and j["final_miou"] == 0.5
    assert j["score_note"] == "diverged in epoch 5: scored on the 4 epoch(s) before"
    # An epoch given by the caller (where training stopped) wins over the one found in the losses.
    j = judge(h, 0.0, QUARTER, EXACT, diverged=True, diverged_epoch=3)
    assert j["scored_epochs"] == 2 and j["final_miou"] == 0.75 and "diverged in epoch 3:" in j["score_note"]


def test_score_notes_say_exactly_what_was_scored():
    assert judge(history([0.5, 0.4], [0.6] * 2), 0.0, QUARTER, EXACT)["score_note"] == ""
    j = judge(history([float("inf")], [0.6]), 0.0, QUARTER, EXACT)
    assert j["score_note"] == "diverged in epoch 1: no finite epoch to score" and j["scored_epochs"] == 0
    # Diverged by the caller's word, with no epoch known and no NaN recorded: all epochs are scored.
    j = judge(history([0.5, 0.4], [0.75, 0.75]), 0.0, QUARTER, EXACT, diverged=True)
    assert j["score_note"] == "diverged: scored on the 2 epoch(s) before" and j["final_miou"] == 0.75
    j = judge(history([0.5, 0.4], [0.75, 0.75]), 0.0, QUARTER, EXACT, diverged=True, diverged_epoch=2)
    assert j["score_note"] == "diverged in epoch 2: scored on the 1 epoch(s) before"


def test_a_run_without_validation_scores_is_not_learning_and_scores_nothing():
    j = judge({"loss": [0.5, 0.4]}, 0.0, QUARTER, EXACT)
    assert j["verdict"] == "not_learning" and j["scored_epochs"] == 0 and math.isnan(j["final_miou"])
    # Missing (None) or NaN validation scores are skipped, not counted.
    j = judge(history([0.5] * 4, [None, math.nan, 0.75, 0.75]), 0.0, QUARTER, EXACT)
    assert j["scored_epochs"] == 2 and j["final_miou"] == 0.75


def test_the_bar_is_reached_at_exactly_trivial_plus_margin():
    assert judge(history([0.5] * 2, [0.5, 0.5]), 0.0, QUARTER, EXACT)["verdict"] == "too_short"
    assert judge(history([0.5] * 2, [0.5, 0.4375]), 0.0, QUARTER, EXACT)["verdict"] == "not_learning"
    # The bar is the trivial mIoU plus the margin: 0.5 is below it when the trivial mIoU is 0.375.
    assert judge(history([0.5] * 2, [0.5, 0.5]), 0.0, 0.375, EXACT)["verdict"] == "not_learning"


def test_a_plateau_needs_exactly_two_windows():
    # 2 x window = 4 scored epochs judge a plateau; 3 do not.
    assert judge(history([0.5] * 4, [0.75] * 4), 0.0, QUARTER, EXACT)["verdict"] == "converged"
    assert judge(history([0.5] * 3, [0.75] * 3), 0.0, QUARTER, EXACT)["verdict"] == "too_short"


def test_a_change_of_exactly_the_tolerance_is_a_trend_not_a_plateau():
    # Medians of two epochs are their mean: the window before is [0.5, 0.625] -> 0.5625.
    rise = judge(history([0.5] * 4, [0.5, 0.625, 0.6875, 0.6875]), 0.0, QUARTER, EXACT)
    assert rise["verdict"] == "learning" and not rise["converged"]
    just_under = judge(history([0.5] * 4, [0.5, 0.625, 0.625, 0.6875]), 0.0, QUARTER, EXACT)
    assert just_under["verdict"] == "converged" and just_under["converged"]
    fall = judge(history([0.5] * 4, [0.75, 0.75, 0.625, 0.625]), 0.0, QUARTER, EXACT)
    assert fall["verdict"] == "degrading"
    assert judge(history([0.5] * 4, [0.75, 0.75, 0.625, 0.6875]), 0.0, QUARTER, EXACT)["verdict"] == "converged"


def test_degrading_needs_the_window_before_at_the_bar_or_above():
    # From exactly the bar (0.5) down by the tolerance: degrading.
    assert judge(history([0.5] * 4, [0.5, 0.5, 0.375, 0.375]), 0.0, QUARTER, EXACT)["verdict"] == "degrading"
    # From below the bar: a model that never learned is not degrading.
    assert judge(history([0.5] * 4, [0.4375, 0.4375, 0.3125, 0.3125]), 0.0, QUARTER, EXACT)["verdict"] == "not_learning"


def test_a_median_that_fell_is_no_plateau_even_with_a_lucky_mean():
    # The last window's mean (0.55) clears the bar though its median fell by 0.29 from a window
    # just under the bar (so not degrading): that is no plateau.
    rules = {**EXACT, "window": 3}
    miou = [0.49, 0.49, 0.49, 0.2, 0.2, 1.25]
    assert judge(history([0.5] * 6, miou), 0.0, QUARTER, rules)["verdict"] == "learning"


def test_an_even_window_takes_the_middle_two_epochs_mean_as_median():
    # window 4: the window before has median 0.6875; the last, [0.5, 0.5, 0.875, 1.0] sorted, too:
    # a plateau. Either middle value alone would see a change of 0.1875 (a fall or a rise).
    rules = {**EXACT, "window": 4}
    miou = [0.6875] * 4 + [0.875, 0.5, 1.0, 0.5]
    assert judge(history([0.5] * 8, miou), 0.0, QUARTER, rules)["verdict"] == "converged"
    # The window before [0.5, 0.5, 0.75, 1.0] has median 0.625: a rise of 0.125 to 0.75 is learning.
    miou = [1.0, 0.5, 0.75, 0.5, 0.75, 0.5, 0.75, 0.75]
    assert judge(history([0.5] * 8, miou), 0.0, QUARTER, rules)["verdict"] == "learning"


def test_failed_seeds_combine_to_the_most_severe_failure_in_any_order():
    severity = ["crashed", "diverged", "negative_loss", "degrading", "not_learning"]
    for i, worse in enumerate(severity):
        for milder in severity[i + 1:]:
            assert combine([worse, milder]) == combine([milder, worse]) == worse, (worse, milder)
    assert combine(["not_learning", "degrading", "diverged", "degrading"]) == "diverged"
    assert combine(["crashed", "converged"]) == "unstable"
    assert combine(["learning", "learning", "learning"]) == "learning"
    assert combine(["too_short", "learning", "converged"]) == "too_short"


def test_an_odd_window_takes_the_middle_epoch_as_median():
    # window 5: the last window [0.5, 0.5, 0.75, 1.0, 1.0] sorted has median 0.75, as had the window
    # before: a plateau, though two epochs dipped to 0.5.
    rules = {**EXACT, "window": 5}
    miou = [0.75] * 5 + [1.0, 0.5, 0.75, 0.5, 1.0]
    assert judge(history([0.5] * 10, miou), 0.0, QUARTER, rules)["verdict"] == "converged"


def test_a_run_with_no_history_is_judged_not_learning():
    # The report judges a finished run whose metrics were never logged with an empty history.
    j = judge({}, 0.0, QUARTER, EXACT)
    assert j["verdict"] == "not_learning" and not j["diverged"] and not j["negative_loss"]
    assert math.isnan(j["min_loss"]) and math.isnan(j["final_loss"]) and j["scored_epochs"] == 0


def test_only_the_last_two_windows_judge_the_trend():
    # Ten epochs: low for six, then a plateau over the last two windows: converged, whatever came first.
    miou = [0.25] * 6 + [0.75] * 4
    assert judge(history([0.5] * 10, miou), 0.0, QUARTER, EXACT)["verdict"] == "converged"


def test_an_epoch_given_for_a_run_that_did_not_diverge_is_ignored():
    j = judge(history([0.5] * 4, [0.75] * 4), 0.0, QUARTER, EXACT, diverged=False, diverged_epoch=2)
    assert j["scored_epochs"] == 4 and j["verdict"] == "converged" and j["score_note"] == ""
