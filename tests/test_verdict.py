import math

from harness.config import DEFAULTS
from harness.verdict import judge, rules_markdown

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
    short = [0.9, 0.9, 0.9]          # no earlier window to compare with
    assert judge(history([0.5] * 3, short), 0.0, TRIVIAL, RULES)["verdict"] == "learning"


def test_rules_text_states_the_numbers():
    text = rules_markdown(RULES)
    assert "0.1" in text and "0.05" in text and "last 3 epochs" in text
