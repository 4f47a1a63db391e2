"""Why a run fails, in one vocabulary: `harness check`'s flags (measured on the data and the loss before
training) and the health monitor's causes (measured while it trains, harness/health.py), and the
differential diagnosis that tells a cause from the symptoms it produces. Pure: names in, names out.

A data or loss cause explains what it produces: targets outside the loss's domain make the loss
unbounded below, so the loss goes negative, the gradients explode, the head is pinned at its bounds
and the batch losses spread. Those are reported as its symptoms, not as causes of their own, so a
user who filters runs on a cause finds the one to fix. The sweep's report and `harness doctor` both
judge through `differential`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from harness.health import CAUSES as HEALTH_CAUSES

# The check's flags that make a run fail by themselves: a cause wherever they are measured. The loss
# causes first, root first: the targets, then what they do to the loss.
LOSS_CAUSES = ("targets_outside_loss_domain", "loss_unbounded_below", "loss_not_minimized_at_target")
DATA_AND_LOSS_CAUSES = LOSS_CAUSES + ("validation_not_transformed_like_training", "check_failed")
# Flags that warn: the run may still learn, but what it is scored on, or the loss it declares, is off.
WARNINGS = ("masks_not_binary", "validation_near_training", "declared_floor_differs")
# Flags that need no fix: a floor below 0 is expected of some losses; a summed loss is scaled.
NOTES = ("loss_floor_not_zero", "loss_summed")

# The health causes that a loss cause produces (an unbounded loss moves the weights far, spreads the
# batch losses, grows the gradients without bound and pins the head at a bound; compared with a loss
# that means nothing, the trivial predictor's says nothing either).
SYMPTOMS_OF_A_LOSS_CAUSE = ("learning_rate_too_high", "exploding_gradients", "saturated_head", "no_signal")
# Verdicts that a loss cause produces.
VERDICTS_OF_A_LOSS_CAUSE = ("negative_loss", "diverged")

# Every cause name, in the order they are reported.
ORDER = DATA_AND_LOSS_CAUSES + HEALTH_CAUSES


@dataclass(frozen=True)
class Diagnosis:
    causes: tuple[str, ...]                                 # what to fix, in ORDER
    symptoms: dict[str, str] = field(default_factory=dict)  # symptom -> the cause that explains it
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def differential(flags, health_causes, verdict: str = "") -> Diagnosis:
    """The causes of one run from the check's `flags` and the health monitor's `health_causes` (names),
    and its `verdict`: a health cause or verdict that a loss cause produces is that cause's symptom."""
    flags, health_causes = list(flags), list(health_causes)
    explaining = next((c for c in LOSS_CAUSES if c in flags), None)
    symptoms = {}
    if explaining is not None:
        symptoms = {name: explaining for name in health_causes if name in SYMPTOMS_OF_A_LOSS_CAUSE}
        if verdict in VERDICTS_OF_A_LOSS_CAUSE:
            symptoms[verdict] = explaining
    found = set(f for f in flags if f in DATA_AND_LOSS_CAUSES) | set(c for c in health_causes if c not in symptoms)
    unknown = sorted(found - set(ORDER))
    return Diagnosis(causes=tuple(c for c in ORDER if c in found) + tuple(unknown), symptoms=symptoms,
                     warnings=tuple(f for f in WARNINGS if f in flags),
                     notes=tuple(f for f in NOTES if f in flags))


def union(cells) -> str:
    """The union of several runs' cause names (cells as health.joined writes them: comma-separated,
    `none` where empty), in ORDER, names from elsewhere after."""
    names = {c for cell in cells for c in str(cell or "none").split(",") if c and c != "none"}
    return ",".join([c for c in ORDER if c in names] + sorted(names - set(ORDER))) or "none"


def kind_of(name: str) -> str:
    """"cause", "warning" or "note" for a flag or cause name."""
    if name in WARNINGS:
        return "warning"
    if name in NOTES:
        return "note"
    return "cause"
