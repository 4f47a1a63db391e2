"""The record of one trained run, defined once: how a RunResult is judged, the tags its MLflow run
carries, and its lifecycle (start, judge, end, tell: TrackedRun). A sweep's point, a tune trial and
the tests' logged runs all write through here, and the report reads these names back
(harness/report/tables.py: `tags.<name>`)."""
from __future__ import annotations

import contextlib
import json
from typing import Callable

from harness.causes import Diagnosis, differential
from harness.errors import interrupted_reason
from harness.health import diagnose, joined
from harness.tracking import TAG_COLUMN, first_line
from harness.verdict import judge, rose_above_trivial


class Tag:
    """The names of the tags a run carries, defined once: the writers below and every reader (the
    report, tune, the tests' hand-made runs) use these. tracking.py names the harness.*, optuna.* and
    MLflow source tags the same way (its *_TAG constants)."""
    VERDICT = "verdict"
    DIVERGED = "diverged"
    NEGATIVE_LOSS = "negative_loss"
    CONVERGED = "converged"
    DEVICE = "device"
    DETERMINISTIC = "deterministic"
    FEED = "feed"
    LOSS_FLOOR = "loss_floor"
    TRIVIAL_MIOU = "trivial_miou"
    LOSS_FLOOR_DECLARED = "loss_floor_declared"
    THRESHOLD = "threshold"
    SCORED_EPOCHS = "scored_epochs"
    SCORE_NOTE = "score_note"
    EPOCHS_RUN = "epochs_run"
    SECONDS = "seconds"
    FEATUREWISE_STATS = "featurewise_stats"
    HEALTH_CAUSES = "health.causes"
    CAUSES = "causes"
    SYMPTOMS = "symptoms"
    DIVERGED_EPOCH = "diverged_epoch"
    DIVERGED_BATCH = "diverged_batch"
    CHECK_FLAGS = "check.flags"
    CHECK_PREDICTED = "check.predicted"
    CHECK_DETAILS = "check.details"
    CHECK_VALIDATION = "check.validation"
    FAILURE = "failure"
    TUNE_STATE = "tune.state"
    TUNE_PRUNED = "tune.pruned"
    DOCTOR_FINDINGS = "doctor.findings"     # a doctor fit's findings: name, kind, where (JSON)


def tag(run, name: str, default=None):
    """A tag's value in a run as tracking.load_runs reads it (the column "tags.<name>"), or `default`."""
    return run.get(TAG_COLUMN + name, default)


def text_tag(run, name: str) -> str:
    """A tag's text, or "" where the run has none (pandas fills a missing tag with NaN)."""
    value = tag(run, name)
    return value if isinstance(value, str) else ""


def judge_result(result, rules: dict, health: dict | None = None, flags=()) -> dict:
    """The verdict of a RunResult (harness/train.py) under the experiment's `[verdict]` rules, and
    with its `[health]` rules the causes its health history shows (harness/health.py), told from
    their symptoms by the check's `flags` (harness/causes.py)."""
    diverged_epoch = result.diverged_at[0] if result.diverged_at else None
    judged = judge(result.history, result.loss_floor, result.trivial_miou, rules,
                   diverged=result.diverged_at is not None, diverged_epoch=diverged_epoch)
    measured, diagnosis = diagnosed(result.history, flags, judged["verdict"], result.trivial_miou, rules,
                                    health, diverged_epoch)
    judged["causes"] = {c: d for c, d in measured.items() if c in diagnosis.causes}
    judged["diagnosis"] = diagnosis
    return judged


def diagnosed(history: dict, flags, verdict: str, trivial_miou: float, rules: dict, health: dict | None,
              diverged_epoch: int | None = None) -> tuple[dict[str, str], Diagnosis]:
    """-> (the health causes measured in `history`, {cause: what was measured}; the run's diagnosis
    with the check's `flags`). `no_signal` is not named where validation mIoU rose clearly above the
    trivial predictor's (verdict.rose_above_trivial): the run had signal."""
    if health is None:
        measured = {}
    else:
        measured = diagnose(history, health, rose_above_trivial(history, trivial_miou, rules, diverged_epoch))
    return measured, differential(flags, measured, verdict)


def result_tags(result, judged: dict) -> dict:
    """The tags of a finished run: its verdict, what it was judged against, and how it trained."""
    tags = {Tag.VERDICT: judged["verdict"], Tag.DIVERGED: judged["diverged"],
            Tag.NEGATIVE_LOSS: judged["negative_loss"], Tag.CONVERGED: judged["converged"],
            Tag.DEVICE: result.device, Tag.DETERMINISTIC: result.deterministic, Tag.FEED: result.feed,
            Tag.LOSS_FLOOR: result.loss_floor, Tag.TRIVIAL_MIOU: result.trivial_miou,
            Tag.LOSS_FLOOR_DECLARED: result.loss_floor_declared, Tag.THRESHOLD: result.threshold,
            Tag.SCORED_EPOCHS: judged["scored_epochs"], Tag.SCORE_NOTE: judged["score_note"],
            Tag.EPOCHS_RUN: result.epochs_run, Tag.SECONDS: round(result.seconds, 2),
            Tag.FEATUREWISE_STATS: json.dumps(result.stats), Tag.HEALTH_CAUSES: joined(judged["causes"]),
            Tag.CAUSES: joined(judged["diagnosis"].causes), Tag.SYMPTOMS: joined(judged["diagnosis"].symptoms)}
    if result.diverged_at:
        tags[Tag.DIVERGED_EPOCH], tags[Tag.DIVERGED_BATCH] = result.diverged_at
    return tags


def check_tags(flags: list[str], predicted: str, details: dict, validation: dict | None = None) -> dict:
    """What `harness check` measured for the run's variant before training; `validation`: how close
    the validation images sit to the training images (harness/leakage.py), and which split."""
    tags = {Tag.CHECK_FLAGS: ",".join(flags) or "none", Tag.CHECK_PREDICTED: predicted,
            Tag.CHECK_DETAILS: json.dumps(details)[:5000]}
    if validation is not None:
        # The report says which split the verdicts were measured on, and how close.
        tags[Tag.CHECK_VALIDATION] = json.dumps(validation)[:5000]
    return tags


def flags_of(tags: dict) -> list[str]:
    """The check's flags from a run's tags (`check.flags`, as check_tags writes it); [] where none."""
    return [f for f in str(tags.get(Tag.CHECK_FLAGS) or "none").split(",") if f and f != "none"]


def failure_tags(reason: str, verdict: str) -> dict:
    """A run that ended without a result: `verdict` is "crashed" or "interrupted"."""
    return {Tag.FAILURE: reason, Tag.VERDICT: verdict}


def pruned_tags(reason: str) -> dict:
    """A tune trial stopped by the pruner: a finished run whose verdict is "pruned"."""
    return {Tag.TUNE_STATE: "pruned", Tag.VERDICT: "pruned", Tag.TUNE_PRUNED: reason}


class TrackedRun:
    """One run's lifecycle, the same for a sweep's point and a tune trial: start its MLflow run, judge
    the result and write its tags, end the run, and tell its Optuna trial once.

    `tracker`: the sweep's harness.tracking.Tracker. `tell(state, value=None)`: finishes the trial,
    state "complete" (with its value), "fail", "pruned" or "interrupted" (harness/grid.py: teller).
    `note(key, value)`: a user attribute of the trial. `label`: how log lines name the run.
    `state_tag`: a tag that also records how the run ended ("tune.state" for tune trials).

    Inside `started(...)` the caller trains; a KeyboardInterrupt ends the run KILLED and is raised
    again; an exception ends it FAILED (a crash is data: it is not raised, and `ended` says
    "crashed"); one of `pruned` ends it FINISHED as pruned."""

    def __init__(self, tracker, tell: Callable[..., None], note: Callable[[str, object], None],
                 log: Callable[[str], None], label: str, state_tag: str | None = None):
        self.tracker, self.tell, self.note, self.log = tracker, tell, note, log
        self.label, self.state_tag = label, state_tag
        self.run_id: str | None = None
        self.ended = ""            # "finished", "pruned" or "crashed" once known
        self.reason = ""           # why it crashed or was pruned

    def state(self, name: str) -> dict:
        return {self.state_tag: name} if self.state_tag else {}

    @contextlib.contextmanager
    def started(self, variant: str, seed: int, params: dict, tags: dict, pruned: tuple = ()):
        self.run_id = self.tracker.start_point(variant, seed, params, tags)
        try:                             # from the run's start: a Ctrl-C anywhere after it marks it KILLED
            self.note("mlflow_run_id", self.run_id)
            yield self
        except pruned as e:
            self.ended, self.reason = "pruned", str(e)
            self.tracker.set_tags(self.run_id, pruned_tags(self.reason))
            self.tracker.end_point(self.run_id, "FINISHED")
            self.tell("pruned")
            self.log(f"{self.label} pruned: {e}")
        except KeyboardInterrupt:
            self.tracker.set_tags(self.run_id, failure_tags(interrupted_reason(), "interrupted"))
            self.tracker.end_point(self.run_id, "KILLED")
            self.tell("interrupted")
            raise
        except Exception as e:  # noqa: BLE001 - a crashed run is data; the sweep or tuning goes on
            self.ended, self.reason = "crashed", f"{type(e).__name__}: {first_line(e)}"
            self.tracker.set_tags(self.run_id, {**failure_tags(self.reason, "crashed"), **self.state("crashed")})
            self.tracker.end_point(self.run_id, "FAILED")
            self.note("error", self.reason)
            self.tell("fail")
            self.log(f"{self.label} crashed: {self.reason}")

    def judge(self, result, rules: dict, health: dict | None = None, flags=()) -> dict:
        """The result's verdict under `rules` and its causes under `health` and the check's `flags`,
        written to the run as its tags."""
        judged = judge_result(result, rules, health, flags)
        self.tracker.set_tags(self.run_id, {**result_tags(result, judged), **self.state("complete")})
        return judged

    def end(self) -> None:
        """The run trained and was judged: FINISHED (the trial is told after, by `complete` or `fail`)."""
        self.ended = "finished"
        self.tracker.end_point(self.run_id, "FINISHED")

    def complete(self, value: float) -> None:
        self.tell("complete", value)

    def fail(self, reason: str) -> None:
        """A finished run with no honest score (diverged): its trial failed, with the reason."""
        self.note("error", reason)
        self.tell("fail")
