"""The report's explanations in words: why each variant got its verdict ("Why"), the measured cause
of a negative loss, and what the validation split is and how close it sits to training."""
from __future__ import annotations

import json
import math

import pandas as pd

from harness.health import RULES as HEALTH_RULES


WHY = {
    "negative_loss": "the training loss fell below the loss's measured floor",
    "diverged": "a training loss reached NaN/Inf",
    "converged": "the loss stays above its floor and validation mIoU settles clearly above the trivial predictor",
    "learning": "validation mIoU is clearly above the trivial predictor and still improving: more epochs needed",
    "too_short": "validation mIoU is clearly above the trivial predictor, but too few epochs ran to judge a plateau",
    "degrading": "validation mIoU fell clearly from an earlier, better level: the model is getting worse",
    "not_learning": "validation mIoU stays at the trivial predictor's level",
    "unstable": "some seeds train and others fail",
    "crashed": "an exception ended the run; its reason is recorded in MLflow",
}


# Measured causes of a negative loss, from `harness check`'s flags (tags check.flags, check.details).
NEGATIVE_CAUSES = {
    "targets_outside_loss_domain": "the training targets leave the loss's domain",
    "loss_unbounded_below": "on these targets the loss has no lower bound",
    "loss_not_minimized_at_target": "the loss is least on the wrong side of the threshold",
}


def explain(summary: pd.DataFrame) -> str:
    lines = []
    for _, row in summary.iterrows():
        why = WHY.get(row["verdict"], "")
        extra = ""
        if row["negative_loss"] or row["verdict"] == "negative_loss":
            extra += (f" Min training loss {row['min_loss']:.3g} against a measured floor of {round(row['loss_floor'], 4):.3g}"
                      f"; {negative_cause(row)}.")
        if row["diverged"] or row["verdict"] == "diverged":
            wrong = check_detail(row, "loss_not_minimized_at_target")
            extra += (" Measured before training: the loss is least on the wrong side of the threshold "
                      f"({wrong}), so minimizing it drives outputs to the head's bounds." if wrong else "")
            if row.get("score_note"):
                extra += f" Quality: {row['score_note']}."
        if not math.isnan(row["val_as_train_miou"]):
            extra += (f" Validation was fed raw: mIoU {row['val_miou']:.3f} as fed, {row['val_as_train_miou']:.3f} "
                      f"with inputs transformed like training (trivial {row['trivial_miou']:.3f}); ")
            if row["val_as_train_miou"] >= row["trivial_miou"] + 0.1 and row["val_as_train_miou"] > row["val_miou"] + 0.1:
                extra += "the model did learn, and the raw validation inputs hide it."
            else:
                extra += "fed like training it is no better: the model itself did not learn."
        declared = row.get("loss_floor_declared", float("nan"))
        if isinstance(declared, float) and math.isfinite(declared) and abs(declared - row["loss_floor"]) > 0.01:
            extra += f" The loss declares a floor of {declared:.3g}; measured {round(row['loss_floor'], 4):.3g} (the verdicts use the measured one)."
        extra += health_note(row)
        extra += validation_note(row)
        why = why[:1].upper() + why[1:]
        lines.append(f"- **{row['variant']}**: `{row['verdict']}` ({row['verdict_per_seed']}). {why}.{extra}")
    return "\n".join(lines)


# Verdicts whose "Why" names the causes measured during training (harness/health.py).
EXPLAINED_BY_HEALTH = ("not_learning", "degrading", "unstable", "diverged")


def health_note(row) -> str:
    """For a run that failed: the causes its training health showed, with their numbers and the
    usual fix; for any run, the symptoms that a measured data or loss cause explains (harness/causes.py);
    '' for a healthy verdict, or runs from before the health metrics."""
    note = ""
    if row["verdict"] in EXPLAINED_BY_HEALTH and row.get("health_measured", False):
        details = {c: d for c, d in (row.get("cause_details") or {}).items() if c in HEALTH_RULES}
        if not details:
            note = " Measured during training: no training-health cause (gradients, updates, units and head were healthy)."
        else:
            named = "; ".join(f"`{cause}` ({detail}); usual fix: {HEALTH_RULES[cause][1]}" for cause, detail in details.items())
            note = f" Measured during training: {named}."
    return note + symptoms_note(row)


def symptoms_note(row) -> str:
    """The health causes and verdicts explained by a data or loss cause: named as its symptoms."""
    symptoms = row.get("symptom_details") or {}
    measured = {s: v for s, v in symptoms.items() if s in HEALTH_RULES}
    if not measured:
        return ""
    named = "; ".join(f"`{s}` ({detail})" if detail else f"`{s}`" for s, (_, detail) in measured.items())
    causes = sorted({cause for cause, _ in measured.values()})
    return (f" Also measured during training, as symptoms of `{'`, `'.join(causes)}` rather than causes of "
            f"their own: {named}.")


NEAR_TRAINING = "validation_near_training"


SPLIT_FIX = '--set data.split="contiguous"'


def near_training(row) -> bool:
    return NEAR_TRAINING in str(row.get("check_flags", "")).split(",")


def validation_of(row) -> dict:
    """What `harness check` measured of the validation set (tag check.validation); {} before it did."""
    try:
        return json.loads(row.get("check_validation") or "{}")
    except json.JSONDecodeError:
        return {}


def validation_note(row) -> str:
    """For a verdict measured on a validation set that sits close to training: the flag, the numbers
    and the fix ('' otherwise)."""
    if not near_training(row):
        return ""
    fix = validation_of(row).get("fix") or f"hold out a block of the volume or video: {SPLIT_FIX}"
    return (f" Measured on a validation set that sits close to training (`{NEAR_TRAINING}`: "
            f"{check_detail(row, NEAR_TRAINING)}): its scores measure recall of near-copies more than "
            f"generalization, so this verdict and the mIoU ranking are optimistic. Fix: {fix.replace(SPLIT_FIX, f'`{SPLIT_FIX}`')}.")


def marked_verdicts(summary: pd.DataFrame) -> pd.DataFrame:
    """The verdict table's copy: a verdict on a validation set close to training says so."""
    shown = summary.copy()
    shown["verdict"] = [f"{v} (validation near training)" if near_training(r) else v
                        for v, (_, r) in zip(summary["verdict"], summary.iterrows())]
    return shown


def validation_paragraph(summary: pd.DataFrame) -> str:
    """Which split the verdicts were measured on, and what the check measured of it."""
    found = next((v for v in map(validation_of, (r for _, r in summary.iterrows())) if v), {})
    if not found:
        return ("Validation: how close it sits to training was not measured for these runs (they predate "
                "`harness check`'s `validation_near_training`).")
    text = f"Validation: {found['measured']}."
    if found.get("flagged"):
        text += f" Flagged `{NEAR_TRAINING}`: the verdicts below are marked."
    return text


def check_detail(row, flag: str) -> str:
    """What `harness check` measured for a flag of this variant ('' when not flagged)."""
    if flag not in str(row.get("check_flags", "")).split(","):
        return ""
    try:
        return json.loads(row.get("check_details") or "{}").get(flag, "flagged")
    except json.JSONDecodeError:
        return "flagged"


def negative_cause(row) -> str:
    """The measured cause of a negative loss: a check flag with its measurement, never a guess."""
    causes = [f"{text} ({check_detail(row, flag)})" for flag, text in NEGATIVE_CAUSES.items()
              if check_detail(row, flag)]
    if causes:
        return "measured before training: " + "; ".join(causes)
    if not row.get("check_flags"):
        return "no measurement of the cause was recorded for these runs (`harness check` explains it)"
    return ("the targets stay inside the loss's domain and the loss is bounded there: "
            "the loss itself goes below its own floor")


def split_rule(data: dict) -> str:
    """The train/validation split these settings make, in words."""
    if data["split"] == "contiguous":
        return (f"Split (`data.split = \"contiguous\"`): the last {data['val_fraction']:g} of the source files in natural "
                "sort order validate, a block of the volume or video; the file just before it is dropped, so the "
                "block's first slice has no direct neighbour in training.")
    return (f"Split (`data.split = \"random\"`): {data['val_fraction']:g} of the source files, drawn with seed "
            f"{data['split_seed']}, validate; tiles of one file stay on one side. Slices of a volume or frames of a "
            f"video then have neighbours on both sides: `{NEAR_TRAINING}` says whether that happened, and "
            f"`{SPLIT_FIX}` holds out a block instead.")
