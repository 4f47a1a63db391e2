"""The verdict rules: plain functions of one run's per-epoch history. No TensorFlow, no MLflow.

Rules (also in docs/reference/causes.md and in every report, from RULES_TEXT):
- diverged: some training loss was NaN or Inf. Quality is then scored on the epochs before the
  first non-finite loss (NaN weights would score exactly as the trivial predictor).
- negative_loss: some epoch's training loss fell below the loss's measured floor (harness/probe.py)
  by more than `bound_slack`.
- Then the validation mIoU (mean of foreground and background IoU against the binary ground truth):
  its mean over the last `window` epochs against trivial + `margin`, and its trend, the median of
  the last `window` epochs against the median of the `window` epochs before (per-epoch mIoU swings
  by 0.3 on small validation sets: one dipped epoch must not make a fall, nor one lucky one a rise):
  converged (at least trivial + `margin`, changed by less than `tolerance`), learning (at least
  trivial + margin, rising by `tolerance` or more), degrading (fell by `tolerance` or more from a
  window that was at least trivial + margin), too_short (at least trivial + margin, but fewer than
  2 x `window` scored epochs: a plateau cannot be judged), not_learning (none of these).
"""
from __future__ import annotations

import math

VERDICTS = ("diverged", "negative_loss", "degrading", "converged", "learning", "too_short", "not_learning")
HEALTHY = ("converged", "learning", "too_short")     # the model trains; seeds may differ among these
# Most severe first: seeds that all fail, differently, are summarized by the most severe failure.
FAILED = ("crashed", "diverged", "negative_loss", "degrading", "not_learning")

RULES_TEXT = """\
| verdict | rule |
|---|---|
| `diverged` | some training loss was NaN or Inf (the run stops there; the epoch and batch are recorded). Quality is scored on the epochs before it, or not at all |
| `negative_loss` | some epoch's training loss < the loss's measured floor - {bound_slack:g} (the floor: the loss at perfect predictions of valid targets, probed before training) |
| `degrading` | the median `val_miou` of the last {window} epochs fell by {tolerance:g} or more from the median of the {window} epochs before, which was >= trivial mIoU + {margin:g} |
| `converged` | mean `val_miou` over the last {window} epochs >= trivial mIoU + {margin:g}, and its median within {tolerance:g} of the median of the {window} epochs before (a plateau) |
| `learning` | mean `val_miou` over the last {window} epochs >= trivial mIoU + {margin:g}, and its median {tolerance:g} or more above the median of the {window} epochs before (still improving) |
| `too_short` | mean `val_miou` over the last {window} epochs >= trivial mIoU + {margin:g}, but fewer than {two_windows} scored epochs: too few to judge a plateau |
| `not_learning` | none of the above: validation mIoU within {margin:g} of predicting every pixel as the majority class |

`val_miou` is the mean of foreground IoU and background IoU over all validation pixels, with predictions
thresholded at the measured threshold (midway between the head outputs where the loss is least for a
background and for a foreground pixel: 0.5 for sigmoid + BCE, 0 for tanh on {{-1, +1}}) and compared with
the binary ground truth, whatever targets the variant trained on. The single verdict is the first row
that holds. Over seeds: one verdict when all seeds agree; `learning` or `too_short` when all seeds are
healthy (`converged`, `learning`, `too_short`) but differ; the most severe failure when all fail; `unstable`
when some seeds are healthy and others fail.
"""


def is_finite(x) -> bool:
    return x is not None and math.isfinite(x)


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def scored(history: dict[str, list[float]], key: str, diverged_epoch: int | None) -> list[float]:
    """The finite values of a per-epoch quality metric from the epochs before divergence."""
    values = history.get(key, [])
    if diverged_epoch is not None:
        values = values[:max(0, diverged_epoch - 1)]
    return [x for x in values if is_finite(x)]


def median(values: list[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    if not n:
        return math.nan
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def judge(history: dict[str, list[float]], loss_floor: float, trivial_miou: float, rules: dict,
          diverged: bool = False, diverged_epoch: int | None = None) -> dict:
    """-> {diverged, negative_loss, converged, verdict, min_loss, final_loss, final_miou, scored_epochs,
    score_note}. `diverged_epoch` (1-based) is where the first non-finite loss came, if known."""
    losses = history.get("loss", [])
    first_bad = next((i + 1 for i, x in enumerate(losses) if not is_finite(x)), None)
    diverged = diverged or first_bad is not None
    if diverged_epoch is None:
        diverged_epoch = first_bad
    finite = [x for x in losses if is_finite(x)]
    min_loss = min(finite) if finite else math.nan
    # NaN: no floor was measured (old runs), so 0; -inf: the loss has no floor, nothing is below it.
    floor = 0.0 if loss_floor is None or math.isnan(loss_floor) else loss_floor
    negative = bool(finite) and min_loss < floor - rules["bound_slack"]

    miou = scored(history, "val_miou", diverged_epoch if diverged else None)
    window = rules["window"]
    final_miou = mean(miou[-window:])
    before = median(miou[-2 * window:-window]) if len(miou) >= 2 * window else math.nan
    bar = trivial_miou + rules["margin"]
    above = is_finite(final_miou) and final_miou >= bar
    change = median(miou[-window:]) - before
    if diverged:
        verdict = "diverged"
    elif negative:
        verdict = "negative_loss"
    elif is_finite(change) and change <= -rules["tolerance"] and before >= bar:
        verdict = "degrading"
    elif above and not is_finite(before):
        verdict = "too_short"
    elif above:
        verdict = "converged" if abs(change) < rules["tolerance"] else "learning"
    else:
        verdict = "not_learning"
    return {"diverged": diverged, "negative_loss": negative, "converged": verdict == "converged",
            "verdict": verdict, "min_loss": min_loss, "final_loss": finite[-1] if finite else math.nan,
            "final_miou": final_miou, "scored_epochs": len(miou),
            "score_note": score_note(diverged, diverged_epoch, len(miou))}


def rose_above_trivial(history: dict[str, list[float]], trivial_miou: float, rules: dict,
                       diverged_epoch: int | None = None) -> bool:
    """Whether validation mIoU, averaged over some `window` consecutive scored epochs, reached the
    trivial predictor's + `margin`: the honest metric says the run learned, at least for a while."""
    miou = scored(history, "val_miou", diverged_epoch)
    window = max(1, min(rules["window"], len(miou)))
    bar = trivial_miou + rules["margin"]
    return any(mean(miou[i:i + window]) >= bar for i in range(len(miou) - window + 1))


def score_note(diverged: bool, diverged_epoch: int | None, scored_epochs: int) -> str:
    if not diverged:
        return ""
    where = f"diverged in epoch {diverged_epoch}" if diverged_epoch else "diverged"
    if scored_epochs == 0:
        return f"{where}: no finite epoch to score"
    return f"{where}: scored on the {scored_epochs} epoch(s) before"


def combine(verdicts: list[str]) -> str:
    """One verdict for a variant's seeds (see RULES_TEXT)."""
    unique = list(dict.fromkeys(verdicts))
    if len(unique) == 1:
        return unique[0]
    if all(v in HEALTHY for v in unique):
        return "too_short" if "too_short" in unique else "learning"
    if all(v in FAILED for v in unique):
        return min(unique, key=FAILED.index)
    return "unstable"


def rules_markdown(rules: dict) -> str:
    return RULES_TEXT.format(two_windows=2 * rules["window"], **rules)
