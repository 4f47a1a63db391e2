"""The training-health rules (harness/health.py) on hand-built histories, and the measurements
(harness/monitor.py) on a real, tiny training run."""
import math

import pytest

from harness import health
from harness.config import DEFAULTS
from harness.monitor import batch_losses, loss_spread

RULES = DEFAULTS["health"]


def healthy(epochs=8, **changes):
    """A history like a healthy U-Net's (measured on tiny data), with some series replaced."""
    history = {
        "health/batch_loss": [0.6 - 0.04 * e for e in range(epochs)],
        "health/trivial_loss": [0.47] * epochs,
        "health/grad_norm": [0.5] * epochs, "health/grad_finite": [1.0] * epochs,
        "health/grad_norm_first": [0.1] * epochs, "health/grad_norm_last": [0.05] * epochs,
        "health/grad_norm_head": [0.4] * epochs,
        "health/update_ratio": [0.07] + [0.02] * (epochs - 1),
        "health/dead_units": [0.0] * epochs, "health/saturated_head": [0.0] * epochs,
        "health/loss_spread": [0.05] * epochs, "health/loss_sign_changes": [0.0] * epochs,
    }
    history.update({f"health/{k}": v for k, v in changes.items()})
    return history


def test_a_healthy_run_and_an_unmeasured_one_carry_no_cause():
    assert health.diagnose(healthy(), RULES) == {}
    assert health.diagnose({"loss": [0.5, 0.4]}, RULES) == {}
    assert not health.measured({"loss": [0.5]}) and health.measured(healthy())
    assert not health.measured({"health/grad_norm": []})
    # A run that diverged in its first epoch logged only what was finite.
    assert health.measured({"health/grad_finite": [0.0]})


def test_learning_rate_too_high_by_update_ratio_at_its_threshold():
    ratios = [RULES["update_ratio_high"]] + [0.02] * 7
    assert health.diagnose(healthy(update_ratio=ratios), RULES) == {"learning_rate_too_high": "update ratio up to 1"}
    ratios[0] = RULES["update_ratio_high"] * 0.999
    assert "learning_rate_too_high" not in health.diagnose(healthy(update_ratio=ratios), RULES)


def test_learning_rate_too_high_by_spread_only_while_no_better_than_trivial():
    spread = [RULES["spread_high"]] + [0.05] * 7
    stuck = healthy(loss_spread=spread, batch_loss=[0.5] * 8)
    assert health.diagnose(stuck, RULES)["learning_rate_too_high"].startswith("batch-loss spread up to 1")
    assert "learning_rate_too_high" not in health.diagnose(healthy(loss_spread=spread), RULES)
    stuck["health/loss_spread"][0] = RULES["spread_high"] * 0.99
    assert "learning_rate_too_high" not in health.diagnose(stuck, RULES)


def test_exploding_gradients_by_growth_or_a_gradient_that_was_not_finite():
    growth = RULES["exploding_growth"]
    assert health.diagnose(healthy(grad_norm=[0.5] * 7 + [0.5 * growth]), RULES) == {
        "exploding_gradients": f"gradient norm grew {growth:g}x from epoch 1"}
    assert health.diagnose(healthy(grad_norm=[0.5] * 7 + [0.5 * growth * 0.99]), RULES) == {}
    assert health.diagnose(healthy(grad_finite=[1.0] * 7 + [0.0]), RULES) == {
        "exploding_gradients": "gradient norm not finite"}
    assert health.diagnose(healthy(grad_norm=[0.0] * 8), RULES).get("exploding_gradients") is None
    # Growth from the first epoch's norm, from two epochs on; a first norm of 0 gives no growth.
    assert "exploding_gradients" in health.diagnose(healthy(epochs=2, grad_norm=[0.5, 0.5 * growth]), RULES)
    assert health.diagnose(healthy(grad_norm=[0.5, 1.0] + [60.0] * 6), RULES)["exploding_gradients"] == \
        "gradient norm grew 120x from epoch 1"
    assert "exploding_gradients" not in health.diagnose(healthy(grad_norm=[0.0, 0.5] + [60.0] * 6), RULES)


def test_vanishing_gradients_by_the_median_ratio_of_first_layer_to_head():
    edge = RULES["vanishing_ratio"]
    at = healthy(grad_norm_first=[0.4 * edge] * 8)
    assert health.diagnose(at, RULES) == {"vanishing_gradients": "first layer's gradient 0.001 of the head's"}
    above = healthy(grad_norm_first=[0.4 * edge * 1.01] * 8)
    assert "vanishing_gradients" not in health.diagnose(above, RULES)
    # One epoch is not the median; a head with no gradient gives no ratio.
    assert "vanishing_gradients" not in health.diagnose(healthy(grad_norm_first=[0.0] + [0.1] * 7), RULES)
    assert "vanishing_gradients" not in health.diagnose(healthy(grad_norm_head=[0.0] * 8, grad_norm_first=[0.0] * 8), RULES)


def test_dead_units_and_saturated_head_read_the_last_epoch():
    assert health.diagnose(healthy(dead_units=[0.0] * 7 + [RULES["dead_fraction"]]), RULES) == {
        "dead_units": "50% of ReLU channels never active"}
    assert health.diagnose(healthy(dead_units=[1.0] * 7 + [0.49]), RULES) == {}
    stuck = healthy(saturated_head=[0.0] * 7 + [RULES["saturated_fraction"]], batch_loss=[0.5] * 8)
    assert health.diagnose(stuck, RULES) == {"saturated_head": "50% of head outputs at its bounds"}
    # A confident, trained head sits at its bounds too: below the trivial loss it is no cause.
    assert health.diagnose(healthy(saturated_head=[1.0] * 8), RULES) == {}
    # The last epoch's loss decides.
    assert health.diagnose(healthy(saturated_head=[1.0] * 8, batch_loss=[0.3] * 7 + [0.5]), RULES) == {
        "saturated_head": "100% of head outputs at its bounds"}
    assert health.diagnose(healthy(saturated_head=[1.0] * 8, batch_loss=[0.5] * 7 + [0.3]), RULES) == {}


def test_no_updates_for_a_frozen_model_or_weights_that_never_move():
    frozen = {"health/grad_norm": [0.0] * 6, "health/update_ratio": [0.0] * 6,
              "health/batch_loss": [0.7] * 6, "health/trivial_loss": [0.47] * 6}
    assert health.diagnose(frozen, RULES) == {"no_updates": "no trainable weights"}
    still = healthy(update_ratio=[RULES["update_ratio_low"]] * 8)
    assert health.diagnose(still, RULES) == {"no_updates": "weights moved at most 1e-07 of their norm"}
    assert health.diagnose(healthy(update_ratio=[RULES["update_ratio_low"] * 2] * 8), RULES) == {}
    assert health.diagnose(healthy(update_ratio=[0.0] * 8), RULES) == {"no_updates": "weights moved at most 0 of their norm"}
    # A model with no kernel layer (no per-group norms) whose weights move is not frozen.
    moving = {k: v for k, v in healthy().items() if not k.startswith("health/grad_norm_")}
    assert health.diagnose(moving, RULES) == {}


def test_no_signal_needs_enough_epochs_healthy_gradients_and_a_loss_never_clearly_below_trivial():
    flat = healthy(batch_loss=[0.5] * 8)
    assert health.diagnose(flat, RULES) == {"no_signal": "training loss 0.5 at best, trivial predictor 0.47"}
    edge = 0.47 * (1 - RULES["signal_margin"])
    assert "no_signal" not in health.diagnose(healthy(batch_loss=[0.5] * 7 + [edge]), RULES)
    assert "no_signal" in health.diagnose(healthy(batch_loss=[0.5] * 7 + [edge + 1e-6]), RULES)
    assert health.diagnose(healthy(epochs=RULES["signal_epochs"] - 1, batch_loss=[0.5] * 4), RULES) == {}
    assert "no_signal" in health.diagnose(healthy(epochs=RULES["signal_epochs"], batch_loss=[0.5] * 5), RULES)
    # With a gradient cause, the data are not blamed.
    assert health.diagnose(healthy(batch_loss=[0.5] * 8, dead_units=[1.0] * 8), RULES) == {
        "dead_units": "100% of ReLU channels never active"}
    # A negative trivial loss (a loss below zero): "clearly below" is by its magnitude.
    assert "no_signal" in health.diagnose(healthy(batch_loss=[-0.3] * 8, trivial_loss=[-0.31] * 8), RULES)
    assert "no_signal" not in health.diagnose(healthy(batch_loss=[-0.4] * 8, trivial_loss=[-0.31] * 8), RULES)


def test_causes_come_in_interface_order_and_join_as_a_cell():
    found = health.diagnose(healthy(update_ratio=[5.0] * 8, dead_units=[0.9] * 8, grad_norm_first=[0.0] * 8), RULES)
    assert list(found) == ["learning_rate_too_high", "vanishing_gradients", "dead_units"]
    assert health.joined(found) == "learning_rate_too_high,vanishing_gradients,dead_units"
    assert health.joined({}) == "none"
    assert health.union(["dead_units", "none", "learning_rate_too_high,dead_units", None]) == \
        "learning_rate_too_high,dead_units"
    assert health.union(["none", "none"]) == "none"
    assert health.union(["my_cause,no_signal"]) == "no_signal,my_cause"


def test_non_finite_values_are_skipped_as_mlflow_skips_them():
    history = healthy(update_ratio=[math.nan] * 7 + [0.02], batch_loss=[math.inf] * 8)
    assert health.diagnose(history, RULES) == {}


def test_rules_table_states_every_cause_with_its_threshold():
    table = health.rules_markdown(RULES)
    assert table.splitlines()[:2] == ["| cause | rule | usual fix |", "|---|---|---|"]
    assert len(table.splitlines()) == 2 + len(health.CAUSES)
    for name in health.CAUSES:
        assert f"| `{name}` |" in table
    assert f"({RULES['update_ratio_high']:g})" in table and f"({RULES['signal_epochs']})" in table
    assert set(health.RULES) == set(health.CAUSES)


def test_foreground_constant_sits_in_the_heads_range():
    assert health.foreground_constant(0.25, (0.0, 1.0)) == 0.25
    assert health.foreground_constant(0.25, (-1.0, 1.0)) == -0.5


def test_batch_losses_undo_keras_running_mean():
    assert batch_losses([1.0, 2.0, 2.0]) == [1.0, 3.0, 2.0]
    assert loss_spread([1.0]) == {}
    spread = loss_spread([1.0, -1.0, 1.0, math.nan])
    assert spread["loss_sign_changes"] == 2.0 and spread["loss_spread"] == pytest.approx(math.sqrt(8 / 9))


@pytest.mark.backend
def test_health_measurement_changes_no_trained_number_and_logs_every_metric():
    from harness.config import load_config
    from harness.data import load_dataset
    from harness.train import train_variant
    sets = ["data.n_images=64", "data.image_size=32", "model.start_depth=4", "model.levels=2",
            "train.epochs=2", "train.batch_size=16", "augment.stats_rounds=0"]
    measured = load_config(None, sets)
    plain = measured.with_overrides({"health.measure": False})
    dataset = load_dataset(measured["data"])
    variant = next(v for v in measured.variants if v.name == "image_only")
    with_health = train_variant(measured, variant, 1, dataset).history
    without = train_variant(plain, variant, 1, dataset).history
    assert {k: v for k, v in with_health.items() if not k.startswith("health/")} == without
    logged = {k[len("health/"):] for k in with_health if k.startswith("health/")}
    assert logged == {"batch_loss", "trivial_loss", "grad_norm", "grad_finite", "grad_norm_first", "grad_norm_last",
                      "grad_norm_head", "update_ratio", "saturated_head", "dead_units", "loss_spread",
                      "loss_sign_changes"}
    assert all(len(v) == 2 and all(math.isfinite(x) for x in v) for k, v in with_health.items() if k.startswith("health/"))
    assert with_health["health/dead_units"][0] < 0.5 and with_health["health/grad_norm"][0] > 0


def test_a_run_traces_its_train_step_once(monkeypatch):
    """The optimizer is built before fit (harness/train.py): built at the first step instead, inside
    tf.function's trace, its variables make TensorFlow trace the step a second time (a point's first
    epoch took twice as long). Each trace calls train_step once in Python: counted here."""
    from harness.backend import backend_name
    if backend_name() != "tensorflow":
        pytest.skip("the double trace is tf.function's")
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer
    from harness.config import load_config
    from harness.data import load_dataset
    from harness.train import train_variant
    traces = []
    step = TensorFlowTrainer.train_step

    def counted(self, data):
        traces.append(1)
        return step(self, data)

    monkeypatch.setattr(TensorFlowTrainer, "train_step", counted)
    cfg = load_config(None, ["data.n_images=40", "data.image_size=32", "model.start_depth=4", "model.levels=2",
                             "train.epochs=2", "train.batch_size=16", "augment.stats_rounds=0"])
    variant = next(v for v in cfg.variants if v.name == "image_only")
    result = train_variant(cfg, variant, 1, load_dataset(cfg["data"]))
    assert result.epochs_run == 2 and len(traces) == 1
