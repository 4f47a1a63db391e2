"""The README's first command, `harness sweep` on the default experiment, through the real CLI. It
pins the promises themselves: the five verdicts; on a CPU of the kind that made the committed report,
its summary.csv and runs.csv to the last digit in every column but the timings (the regression oracle:
a change that moves a number must regenerate results/whitening/ with the real commands and say why);
a real divergence end to end; and the real report as a reader sees it in Chromium.

The CPU is deterministic, but only per kind of CPU: TensorFlow's CPU kernels choose their
instructions (AVX2, AVX-512, AMX) and blocking by the processor, and the float sums come out in
another order (harness/backend.py host_cpu). Runs record the CPU in their `device`; on another kind
the numbers are compared within what that order can move."""
import csv
import math
import statistics

import pytest

from conftest import ROOT, run_harness
from harness.verdict import HEALTHY

COMMITTED = ROOT / "results" / "whitening"
VERDICTS = {"seed": "negative_loss", "no_featurewise": "learning", "image_only": "converged",
            "tanh_posted": "diverged", "tanh_corrected": "converged"}
TIMINGS = {"seconds_per_epoch", "seconds_per_epoch_std", "run_id"}   # the run id is new every sweep


def rows_of(path) -> list[dict]:
    with open(path) as f:
        return [{k: v for k, v in row.items() if k not in TIMINGS} for row in csv.DictReader(f)]


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_the_default_sweep_gives_the_committed_report(tmp_path):
    results = tmp_path / "results"
    run = run_harness("sweep", "--results", results, cwd=tmp_path, timeout=2300)   # experiment: the default
    assert run.returncode == 0, run.stderr[-3000:]
    folder = results / "whitening"
    summary = {row["variant"]: row for row in rows_of(folder / "summary.csv")}
    assert {name: row["verdict"] for name, row in summary.items()} == VERDICTS
    # Committed as the README states them, not only as measured here.
    assert {row["variant"]: row["verdict"] for row in rows_of(COMMITTED / "summary.csv")} == VERDICTS
    # No training-health cause on a variant that trains, measured or committed.
    for name in ("no_featurewise", "image_only", "tanh_corrected"):
        assert summary[name]["causes"] == "none", summary[name]
        assert {row["variant"]: row["causes"] for row in rows_of(COMMITTED / "summary.csv")}[name] == "none"

    runs, committed_runs = rows_of(folder / "runs.csv"), rows_of(COMMITTED / "runs.csv")
    committed = {row["variant"]: row for row in rows_of(COMMITTED / "summary.csv")}
    devices = {row["device"] for row in runs}
    if len(devices) == 1 and devices == {row["device"] for row in committed_runs} and devices.pop().startswith("CPU"):
        # The committed report's kind of CPU: every number but the seconds is the same.
        assert summary == committed
        assert runs == committed_runs
    else:
        assert_within_what_another_cpu_kind_moves(summary, committed, devices)

    assert_divergence_end_to_end(results, summary["tanh_posted"], run.stdout)
    assert_report_shown_in_chromium(folder / "report.html")


# What another kind of CPU moves in summary.csv: the greatest difference per column between the
# default sweep on an AVX-512/AMX Xeon (the committed report before bbb6a74) and on 2 cores of an AMD
# EPYC (AVX2; the report since), over the five variants, doubled. Most of it is the chaotic
# variants (seed, tanh_posted); the healthy ones moved at most 0.011 in val_miou. Columns not named
# here (the floors, thresholds and the trivial predictor, measured before training) did not move.
ANOTHER_KIND_MOVES = {"final_loss": 1.3e-3, "min_loss": 1.3e-3, "val_iou": 0.04, "val_miou": 0.11, "val_dice": 0.071,
                      "val_as_train_miou": 0.0072, "final_loss_std": 2.8e-4, "min_loss_std": 2.8e-4,
                      "val_iou_std": 0.039, "val_miou_std": 0.065, "val_dice_std": 0.042,
                      "val_as_train_miou_std": 0.014}
JUDGED = ("seeds", "seeds_scored", "negative_loss", "diverged", "converged", "verdict", "causes", "symptoms",
          "predicted", "agrees", "check_flags")


def assert_within_what_another_cpu_kind_moves(summary: dict, committed: dict, devices: set) -> None:
    """On a CPU of a kind without a committed report, said so: what is judged equals the committed
    report exactly (verdicts, flags, causes, symptoms), and every number is within what the two
    measured kinds of CPU moved it (ANOTHER_KIND_MOVES; 0 for a column they did not move)."""
    import warnings
    warnings.warn(f"no committed report of this CPU kind ({', '.join(sorted(devices))}): the default sweep is "
                  "compared with results/whitening/ within what another kind of CPU moves", UserWarning)
    assert summary.keys() == committed.keys()
    for name, row in summary.items():
        for column, value in row.items():
            want = committed[name][column]
            if column in JUDGED or column in ("variant", "score_note"):
                assert value == want, (name, column, value, want)
                continue
            got, expected = float(value), float(want)
            if math.isnan(expected):
                assert math.isnan(got), (name, column, value)
            else:
                assert abs(got - expected) <= ANOTHER_KIND_MOVES.get(column, 0.0), (name, column, got, expected)



def assert_divergence_end_to_end(results, summary_row: dict, log: str) -> None:
    """The posted tanh loss reaches NaN for real: the run stops there and records where, the sweep goes
    on, and its quality is the mean of the last 3 epochs before the divergence, never NaN weights."""
    import harness
    runs = harness.load_runs(results, "whitening")
    posted = runs[runs["variant"] == "tanh_posted"]
    assert len(posted) == 2 and set(posted["status"]) == {"FINISHED"}
    scored_means = []
    for _, run in posted.iterrows():
        epoch, batch = int(run["tags.diverged_epoch"]), int(run["tags.diverged_batch"])
        assert run["tags.verdict"] == "diverged" and run["tags.diverged"] == "True"
        assert epoch >= 1 and batch >= 1 and int(run["tags.epochs_run"]) == epoch      # stopped in that epoch
        assert f"[tanh_posted seed={run['seed']}] diverged at epoch {epoch} batch {batch}:" in log
        scored = int(run["tags.scored_epochs"])
        assert scored == epoch - 1
        miou = run["history"].get("val_miou", [])
        assert len(miou) == scored and all(math.isfinite(v) for v in miou)   # nothing logged from NaN weights
        if scored:
            assert f"diverged in epoch {epoch}: scored on the {scored} epoch(s) before" in run["tags.score_note"]
            scored_means.append(statistics.mean(miou[-3:]))
        else:
            assert "no finite epoch to score" in run["tags.score_note"]
    assert int(summary_row["seeds_scored"]) == len(scored_means) >= 1
    assert float(summary_row["val_miou"]) == pytest.approx(statistics.mean(scored_means), abs=1e-5)


def assert_report_shown_in_chromium(report) -> None:
    """The real report of this sweep, opened as a reader would: the verdict table first, with the
    verdicts measured, and every figure (loss curves, mIoU, one prediction sample per variant) shown."""
    from test_report_browser import (assert_every_figure_shown, browser_launched, open_report,
                                     verdict_table)
    with browser_launched() as browser, open_report(browser, report) as (page, errors, outside):
        assert verdict_table(page) == VERDICTS
        # loss curves, mIoU, a prediction sample per variant, and the health of each failed variant
        failed = sum(v not in HEALTHY for v in VERDICTS.values())
        assert_every_figure_shown(page, outside, 2 + len(VERDICTS) + failed)
        assert not errors, errors


def test_another_cpu_kind_is_held_to_the_committed_judgements_and_the_measured_spread():
    committed = {row["variant"]: row for row in rows_of(COMMITTED / "summary.csv")}
    moved = {name: dict(row) for name, row in committed.items()}
    moved["image_only"]["val_miou"] = str(float(moved["image_only"]["val_miou"]) + 0.9 * ANOTHER_KIND_MOVES["val_miou"])
    with pytest.warns(UserWarning, match="no committed report of this CPU kind"):
        assert_within_what_another_cpu_kind_moves(moved, committed, {"CPU (another)"})
    for column, value in (("val_miou", lambda v: float(v) + 1.1 * ANOTHER_KIND_MOVES["val_miou"]),
                          ("loss_floor", lambda v: float(v) + 1e-6), ("causes", lambda v: "no_signal"),
                          ("verdict", lambda v: "learning")):
        broken = {name: dict(row) for name, row in committed.items()}
        broken["seed"][column] = str(value(broken["seed"][column]))
        with pytest.warns(UserWarning), pytest.raises(AssertionError):
            assert_within_what_another_cpu_kind_moves(broken, committed, {"CPU (another)"})
