"""Why a run does not learn: the named causes, as plain functions of one run's per-epoch health
history (harness/monitor.py measures it). No Keras, no MLflow: like verdict.py, the report judges
again from the logged history under the experiment's `[health]` rules, so a tag is never trusted stale.

A run gets zero or more causes, whatever its verdict; a healthy run gets none. The names are part of
the interface (users filter runs on them: the `health.causes` tag, the `causes` column).
"""
from __future__ import annotations

import math

from harness.verdict import median

PREFIX = "health/"

# The per-epoch metrics harness/monitor.py logs under PREFIX, and what each measures.
METRICS = {
    "grad_norm": "the training loss's gradient norm over all trainable weights: the root mean square over "
                 "the epoch's steps of each step's norm",
    "grad_finite": "1, or 0 where a step's gradient was not finite",
    "grad_norm_first": "the same over the first layer with a kernel",
    "grad_norm_last": "the same over the last layer before the head",
    "grad_norm_head": "the same over the head",
    "update_ratio": "how far the trainable weights moved in the epoch: ||W_end - W_start|| / ||W_start||",
    "loss_spread": "the epoch's batch losses' standard deviation over their mean magnitude",
    "loss_sign_changes": "how often the epoch's batch losses changed sign",
    "batch_loss": "the training loss on one fixed training batch (the same every epoch)",
    "trivial_loss": "a constant prediction's loss at that batch's foreground fraction, on the same targets",
    "dead_units": "the share of ReLU channels never positive on the fixed batch",
    "saturated_head": "the share of head outputs within 1 % of the head's bounds on the fixed batch",
}

CAUSES = ("learning_rate_too_high", "exploding_gradients", "vanishing_gradients", "dead_units",
          "saturated_head", "no_updates", "no_signal")

# Causes that say the gradients are not healthy: no_signal (a data cause) is named only without them.
GRADIENT_CAUSES = ("learning_rate_too_high", "exploding_gradients", "vanishing_gradients", "dead_units",
                   "saturated_head", "no_updates")

# The rules, with the thresholds of the `[health]` table (harness/config.py), and the usual fix.
RULES = {
    "learning_rate_too_high": (
        "in some epoch the trainable weights moved by `update_ratio_high` ({update_ratio_high:g}) or more of "
        "their norm (`health/update_ratio`), or the epoch's batch losses spread by `spread_high` "
        "({spread_high:g}) or more of their mean magnitude (`health/loss_spread`) while the fixed batch's "
        "loss stayed no better than the trivial predictor's",
        "lower `train.learning_rate` (by 10x), or add a warm-up"),
    "exploding_gradients": (
        "a training step's gradient was not finite in an epoch (`health/grad_finite` = 0), or the epoch's "
        "gradient norm (`health/grad_norm`, the root mean square over its steps) grew "
        "to `exploding_growth` ({exploding_growth:g}) times its first epoch's or more",
        "lower the learning rate, clip gradients (`clipnorm`), or normalize (BatchNormalization); where "
        "`harness check` flags the loss (unbounded, or least at the head's bounds), fix the loss first"),
    "vanishing_gradients": (
        "the median over epochs of the first layer's gradient norm over the head's "
        "(`health/grad_norm_first` / `health/grad_norm_head`) is `vanishing_ratio` ({vanishing_ratio:g}) or less",
        "use ReLU-family activations, BatchNormalization and He initialization, or skip connections"),
    "dead_units": (
        "in the last measured epoch `dead_fraction` ({dead_fraction:g}) or more of the ReLU channels were never "
        "positive on the fixed batch (`health/dead_units`)",
        "lower the learning rate, start biases at 0, use BatchNormalization or LeakyReLU"),
    "saturated_head": (
        "in the last measured epoch `saturated_fraction` ({saturated_fraction:g}) or more of the head's outputs "
        "were within 1 % of its bounds (`health/saturated_head`) while the fixed batch's loss was no better "
        "than the trivial predictor's",
        "check that the targets match the head's range and the loss is minimized inside it"),
    "no_updates": (
        "the model has no trainable weights, or they moved by at most `update_ratio_low` ({update_ratio_low:g}) "
        "of their norm in every epoch (`health/update_ratio`)",
        "unfreeze layers (`layer.trainable = True`); give the optimizer the model's weights and a learning rate above 0"),
    "no_signal": (
        "with none of the causes above, over at least `signal_epochs` ({signal_epochs}) epochs, the fixed "
        "batch's training loss (`health/batch_loss`) never fell `signal_margin` ({signal_margin:g}) of its "
        "magnitude below a constant prediction's at the foreground fraction (`health/trivial_loss`), and "
        "validation mIoU never rose clearly above the trivial predictor's (by the verdicts' `margin`, over "
        "their `window`)",
        "check that each mask belongs to its image (file names, sort order, a shuffle of one list)"),
}


def foreground_constant(foreground_fraction: float, bounds: tuple[float, float]) -> float:
    """The trivial predictor's output: the foreground fraction, placed in the head's range."""
    lo, hi = bounds
    return lo + foreground_fraction * (hi - lo)


def series(history: dict, name: str) -> list[float]:
    """A health metric's finite values over the epochs it was measured."""
    return [x for x in history.get(PREFIX + name, []) if x is not None and math.isfinite(x)]


def measured(history: dict) -> bool:
    """Whether the run logged any health metric (runs from before them did not)."""
    return any(key.startswith(PREFIX) and values for key, values in history.items())


def no_better_than_trivial(loss: float, trivial: float, margin: float) -> bool:
    return loss > trivial - margin * abs(trivial)


def diagnose(history: dict, rules: dict, learned: bool = False) -> dict[str, str]:
    """-> {cause: what was measured} for one run, in CAUSES order; {} when healthy or not measured
    (runs from before the health metrics). Non-finite values are skipped (MLflow does not log
    them): a gradient that was not finite is `health/grad_finite` = 0. `learned`: the honest metric
    rose clearly above the trivial predictor's (verdict.rose_above_trivial), so the run had signal
    whatever the fixed batch's loss says: a small foreground keeps a learning model's BCE close to
    the trivial predictor's."""
    if not measured(history):
        return {}
    found: dict[str, str] = {}
    ratios = series(history, "update_ratio")
    spreads = series(history, "loss_spread")
    losses, trivials = series(history, "batch_loss"), series(history, "trivial_loss")
    margin = rules["signal_margin"]
    # The last epoch's loss against the trivial predictor's (the same every epoch: one fixed batch).
    stuck = bool(losses) and bool(trivials) and no_better_than_trivial(losses[-1], trivials[-1], margin)

    if ratios and max(ratios) >= rules["update_ratio_high"]:
        found["learning_rate_too_high"] = f"update ratio up to {max(ratios):.3g}"
    elif spreads and stuck and max(spreads) >= rules["spread_high"]:
        found["learning_rate_too_high"] = f"batch-loss spread up to {max(spreads):.3g}, loss no better than trivial"

    norms = series(history, "grad_norm")
    if 0.0 in series(history, "grad_finite"):
        found["exploding_gradients"] = "gradient norm not finite"
    elif len(norms) >= 2 and norms[0] > 0 and max(norms) >= rules["exploding_growth"] * norms[0]:
        found["exploding_gradients"] = f"gradient norm grew {max(norms) / norms[0]:.3g}x from epoch 1"

    first, head = series(history, "grad_norm_first"), series(history, "grad_norm_head")
    pairs = [f / h for f, h in zip(first, head) if h > 0]
    if pairs and median(pairs) <= rules["vanishing_ratio"]:
        found["vanishing_gradients"] = f"first layer's gradient {median(pairs):.2g} of the head's"

    dead = series(history, "dead_units")
    if dead and dead[-1] >= rules["dead_fraction"]:
        found["dead_units"] = f"{dead[-1]:.0%} of ReLU channels never active"

    saturated = series(history, "saturated_head")
    if saturated and saturated[-1] >= rules["saturated_fraction"] and stuck:
        found["saturated_head"] = f"{saturated[-1]:.0%} of head outputs at its bounds"

    if not history.get(PREFIX + "grad_norm_head") and ratios and max(ratios) == 0.0:
        found["no_updates"] = "no trainable weights"
    elif ratios and max(ratios) <= rules["update_ratio_low"]:
        found["no_updates"] = f"weights moved at most {max(ratios):.2g} of their norm"

    if len(losses) >= rules["signal_epochs"] and trivials and not found and not learned:
        if all(no_better_than_trivial(x, trivials[-1], margin) for x in losses):
            found["no_signal"] = f"training loss {min(losses):.4g} at best, trivial predictor {trivials[-1]:.4g}"
    return {cause: found[cause] for cause in CAUSES if cause in found}


def joined(causes) -> str:
    """The causes as a tag or CSV cell: comma-separated, `none` where there are none."""
    return ",".join(causes) or "none"


def union(cells) -> str:
    """The union of several runs' causes (cells as `joined` writes them), in CAUSES order."""
    names = {c for cell in cells for c in str(cell or "none").split(",") if c and c != "none"}
    return joined([c for c in CAUSES if c in names] + sorted(names - set(CAUSES)))


def rules_markdown(rules: dict) -> str:
    lines = ["| cause | rule | usual fix |", "|---|---|---|"]
    lines += [f"| `{name}` | {rule.format(**rules)} | {fix} |" for name, (rule, fix) in RULES.items()]
    return "\n".join(lines)
