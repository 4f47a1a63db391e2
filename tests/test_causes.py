"""One vocabulary for why a run fails (harness/causes.py): a data or loss cause explains the symptoms it
produces, which are then not causes of their own; and `no_signal` yields to the honest metric
(verdict.rose_above_trivial), in sweeps as in the doctor."""
from harness import causes, health
from harness.config import DEFAULTS
from harness.verdict import rose_above_trivial

from test_health import RULES, healthy

VERDICT = DEFAULTS["verdict"]


def test_a_loss_cause_explains_the_health_causes_and_the_verdict_it_produces():
    found = causes.differential(["targets_outside_loss_domain", "loss_unbounded_below", "masks_not_binary"],
                                ["exploding_gradients", "learning_rate_too_high", "saturated_head", "no_signal",
                                 "vanishing_gradients"], "negative_loss")
    assert found.causes == ("targets_outside_loss_domain", "loss_unbounded_below", "vanishing_gradients")
    assert found.symptoms == {name: "targets_outside_loss_domain" for name in
                              ("exploding_gradients", "learning_rate_too_high", "saturated_head", "no_signal",
                               "negative_loss")}
    assert found.warnings == ("masks_not_binary",) and found.notes == ()


def test_without_a_loss_cause_every_health_cause_stands_and_the_verdict_is_no_symptom():
    found = causes.differential(["validation_not_transformed_like_training", "loss_floor_not_zero"],
                                ["exploding_gradients", "learning_rate_too_high"], "diverged")
    assert found.causes == ("validation_not_transformed_like_training", "learning_rate_too_high", "exploding_gradients")
    assert found.symptoms == {} and found.notes == ("loss_floor_not_zero",)


def test_the_root_cause_is_named_first_and_explains_the_symptoms():
    found = causes.differential(["loss_not_minimized_at_target", "loss_unbounded_below"], ["exploding_gradients"],
                                "diverged")
    assert found.symptoms == {"exploding_gradients": "loss_unbounded_below", "diverged": "loss_unbounded_below"}
    found = causes.differential(["loss_not_minimized_at_target"], [], "negative_loss")
    assert found.symptoms == {"negative_loss": "loss_not_minimized_at_target"}


def test_warnings_and_notes_are_never_causes():
    found = causes.differential(["masks_not_binary", "validation_near_training", "declared_floor_differs",
                                 "loss_summed"], [], "converged")
    assert found.causes == () and found.warnings == ("masks_not_binary", "validation_near_training",
                                                      "declared_floor_differs")
    assert [causes.kind_of(n) for n in ("masks_not_binary", "loss_summed", "no_signal")] == ["warning", "note", "cause"]


def test_the_union_of_cells_keeps_the_vocabulary_order():
    assert causes.union(["no_signal", "targets_outside_loss_domain,exploding_gradients", "none", ""]) == \
        "targets_outside_loss_domain,exploding_gradients,no_signal"
    assert causes.union(["none", None]) == "none"
    assert causes.union(["a_newer_cause"]) == "a_newer_cause"


def test_validation_miou_that_rises_clearly_above_trivial_is_learning():
    trivial = 0.41
    bar = trivial + VERDICT["margin"]
    assert rose_above_trivial({"val_miou": [0.4, 0.45, bar, bar, bar, 0.45]}, trivial, VERDICT)
    assert not rose_above_trivial({"val_miou": [0.4, bar, bar, bar - 0.03, 0.45]}, trivial, VERDICT)
    # Fewer epochs than the window: their mean, one epoch included.
    assert rose_above_trivial({"val_miou": [bar, bar]}, trivial, VERDICT)
    assert rose_above_trivial({"val_miou": [bar]}, trivial, VERDICT)
    # Only whole windows count: a last epoch high alone does not make a window.
    assert not rose_above_trivial({"val_miou": [0.4, 0.4, 0.4, bar + 0.2]}, trivial, VERDICT)
    assert not rose_above_trivial({"val_miou": []}, trivial, VERDICT)
    # Epochs from the one that diverged on are not scored.
    assert not rose_above_trivial({"val_miou": [0.4, 0.4, 0.4, 0.9, 0.9, 0.9]}, trivial, VERDICT, diverged_epoch=4)


def test_no_signal_yields_to_a_run_that_learned():
    flat = healthy(batch_loss=[0.5] * 8)
    assert health.diagnose(flat, RULES) == {"no_signal": "training loss 0.5 at best, trivial predictor 0.47"}
    assert health.diagnose(flat, RULES, learned=True) == {}
    # Only no_signal: the other causes do not depend on the honest metric.
    assert "vanishing_gradients" in health.diagnose(healthy(grad_norm_first=[1e-5] * 8), RULES, learned=True)
