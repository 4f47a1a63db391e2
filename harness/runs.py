"""The record of one trained run, defined once: how a RunResult is judged, and the tags its MLflow
run carries. A sweep's point, a tune trial and the tests' logged runs all write through here, and
the report reads these names back (harness/report.py: `tags.<name>`)."""
from __future__ import annotations

import json

from harness.verdict import judge


def judge_result(result, rules: dict) -> dict:
    """The verdict of a RunResult (harness/train.py) under the experiment's `[verdict]` rules."""
    return judge(result.history, result.loss_floor, result.trivial_miou, rules,
                 diverged=result.diverged_at is not None,
                 diverged_epoch=result.diverged_at[0] if result.diverged_at else None)


def result_tags(result, judged: dict) -> dict:
    """The tags of a finished run: its verdict, what it was judged against, and how it trained."""
    tags = {"verdict": judged["verdict"], "diverged": judged["diverged"],
            "negative_loss": judged["negative_loss"], "converged": judged["converged"],
            "device": result.device, "deterministic": result.deterministic, "feed": result.feed,
            "loss_floor": result.loss_floor, "trivial_miou": result.trivial_miou,
            "loss_floor_declared": result.loss_floor_declared, "threshold": result.threshold,
            "scored_epochs": judged["scored_epochs"], "score_note": judged["score_note"],
            "epochs_run": result.epochs_run, "seconds": round(result.seconds, 2),
            "featurewise_stats": json.dumps(result.stats)}
    if result.diverged_at:
        tags["diverged_epoch"], tags["diverged_batch"] = result.diverged_at
    return tags


def check_tags(flags: list[str], predicted: str, details: dict, validation: dict | None = None) -> dict:
    """What `harness check` measured for the run's variant before training; `validation`: how close
    the validation images sit to the training images (harness/leakage.py), and which split."""
    tags = {"check.flags": ",".join(flags) or "none", "check.predicted": predicted,
            "check.details": json.dumps(details)[:5000]}
    if validation is not None:
        # The report says which split the verdicts were measured on, and how close.
        tags["check.validation"] = json.dumps(validation)[:5000]
    return tags


def failure_tags(reason: str, verdict: str) -> dict:
    """A run that ended without a result: `verdict` is "crashed" or "interrupted"."""
    return {"failure": reason, "verdict": verdict}
