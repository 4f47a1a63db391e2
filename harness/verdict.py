"""The verdict rules: plain functions of one run's per-epoch history. No TensorFlow, no MLflow.

Rules (also printed in the README and in every report):
- diverged: some training loss was NaN or Inf.
- negative_loss: some epoch's training loss fell below the loss's own lower bound by more than
  `bound_slack` (0 for BCE; -log 2 for the unshifted tanh BCE; each loss declares its bound).
- converged: not diverged, and over the last `window` epochs the mean validation mIoU (mean of
  foreground and background IoU against the binary ground truth) is at least the trivial
  predictor's mIoU + `margin`, and exceeds the mean over the `window` epochs before by less than
  `tolerance` (it stopped improving).
The single `verdict` label is the first that holds of: diverged, negative_loss, converged,
learning (above trivial + margin, still improving), not_learning.
"""
from __future__ import annotations

import math

RULES_TEXT = """\
| verdict | rule |
|---|---|
| `diverged` | some training loss was NaN or Inf (the run stops there; the epoch and batch are recorded) |
| `negative_loss` | some epoch's training loss < the loss's own lower bound - {bound_slack:g} (0 for BCE; each loss declares its bound) |
| `converged` | not diverged; mean `val_miou` over the last {window} epochs >= trivial mIoU + {margin:g}; and that mean exceeds the mean of the {window} epochs before by < {tolerance:g} (no longer improving) |
| `learning` | not diverged; mean `val_miou` over the last {window} epochs >= trivial mIoU + {margin:g}, still improving |
| `not_learning` | none of the above: validation mIoU within {margin:g} of predicting every pixel as the majority class |

`val_miou` is the mean of foreground IoU and background IoU over all validation pixels, with predictions
thresholded through the head (0.5 for sigmoid, 0 for tanh) and compared with the binary ground truth,
whatever targets the variant trained on. The single verdict is the first row that holds; the
`negative_loss`, `diverged` and `converged` columns are reported separately.
"""


def is_finite(x) -> bool:
    return x is not None and math.isfinite(x)


def judge(history: dict[str, list[float]], loss_floor: float, trivial_miou: float, rules: dict,
          diverged: bool = False) -> dict:
    """-> {diverged, negative_loss, converged, verdict, min_loss, final_loss, final_miou}."""
    losses = history.get("loss", [])
    diverged = diverged or any(not is_finite(x) for x in losses)
    finite = [x for x in losses if is_finite(x)]
    min_loss = min(finite) if finite else float("nan")
    negative = bool(finite) and min_loss < loss_floor - rules["bound_slack"]
    miou = [x for x in history.get("val_miou", []) if is_finite(x)]
    window = rules["window"]
    recent = miou[-window:]
    final_miou = sum(recent) / len(recent) if recent else float("nan")
    above = bool(recent) and final_miou >= trivial_miou + rules["margin"]
    before = miou[-2 * window:-window]
    plateau = len(before) == window and final_miou - sum(before) / window < rules["tolerance"]
    converged = (not diverged) and above and plateau
    if diverged:
        verdict = "diverged"
    elif negative:
        verdict = "negative_loss"
    elif converged:
        verdict = "converged"
    elif above and not diverged:
        verdict = "learning"
    else:
        verdict = "not_learning"
    return {"diverged": diverged, "negative_loss": negative, "converged": converged, "verdict": verdict,
            "min_loss": min_loss, "final_loss": finite[-1] if finite else float("nan"), "final_miou": final_miou}


def rules_markdown(rules: dict) -> str:
    return RULES_TEXT.format(**rules)
