"""Report logic on hand-built runs (no training, no MLflow): which run counts, how seeds combine,
how a negative loss is explained, and which tuned trial is best."""
import json
import math

import pandas as pd
import pytest

from harness.config import load_config
from harness.report import explain, failures, pick_best, point_rows, summarize

from conftest import ROOT

TRIVIAL = 0.414
PLATEAU = [0.84, 0.85, 0.86, 0.86, 0.86, 0.86]
RISING = [0.5, 0.55, 0.6, 0.7, 0.75, 0.8]


@pytest.fixture(scope="module")
def cfg():
    return load_config(ROOT / "experiments" / "whitening.toml")


def run(variant, seed, miou, loss=None, start=1, status="FINISHED", floor=0.0, **tags):
    loss = loss or [0.5 - 0.05 * i for i in range(len(miou))]
    return {"run_id": f"{variant}-{seed}-{start}", "status": status, "start_time": start, "variant": variant,
            "seed": seed, "history": {"loss": loss, "val_miou": miou, "val_iou": miou, "val_dice": miou},
            "tags.loss_floor": str(floor), "tags.trivial_miou": str(TRIVIAL), "tags.epochs_run": str(len(miou)),
            "tags.seconds": "6", "tags.device": "CPU", "tags.check.predicted": "trains", "tags.check.flags": "none",
            **{f"tags.{k}": v for k, v in tags.items()}}


def test_the_newest_finished_run_of_a_point_counts(cfg):
    runs = pd.DataFrame([run("image_only", 1, [0.4] * 6, start=1), run("image_only", 1, PLATEAU, start=2),
                         run("image_only", 1, PLATEAU, start=3, status="FAILED")])
    points = point_rows(runs, cfg)
    assert len(points) == 1 and points.iloc[0]["run_id"] == "image_only-1-2"
    assert points.iloc[0]["verdict"] == "converged"


def test_a_crash_later_finished_is_not_a_failure(cfg):
    runs = pd.DataFrame([run("seed", 1, PLATEAU, start=2), run("seed", 1, PLATEAU, start=1, status="FAILED"),
                         run("seed", 2, PLATEAU, start=1, status="FAILED")])
    failed = failures(runs)
    assert list(zip(failed["variant"], failed["seed"])) == [("seed", 2)]


def test_learning_and_converged_seeds_are_healthy_not_unstable(cfg):
    runs = pd.DataFrame([run("no_featurewise", 1, RISING), run("no_featurewise", 2, PLATEAU)])
    summary = summarize(point_rows(runs, cfg)).iloc[0]
    assert summary["verdict"] == "learning" and summary["agrees"]
    assert summary["verdict_per_seed"] == "s1:learning s2:converged"


def test_a_diverged_seed_is_not_scored_as_the_trivial_predictor(cfg):
    # Epoch 4 diverged: NaN weights predict every pixel background, which scores exactly trivial.
    runs = pd.DataFrame([run("tanh_posted", 1, [0.6, 0.7, 0.75, TRIVIAL], loss=[0.1, -0.5, -1.0, math.nan],
                             diverged="True", diverged_epoch="4", diverged_batch="3"),
                         run("tanh_posted", 2, [TRIVIAL], loss=[math.nan], diverged="True", diverged_epoch="1",
                             diverged_batch="2")])
    points = point_rows(runs, cfg)
    assert points.iloc[0]["val_miou"] == pytest.approx((0.6 + 0.7 + 0.75) / 3)
    assert math.isnan(points.iloc[1]["val_miou"])
    summary = summarize(points).iloc[0]
    assert summary["seeds_scored"] == 1 and summary["val_miou"] == pytest.approx(0.6833, abs=1e-3)
    assert "no finite epoch" in summary["score_note"] and summary["verdict"] == "diverged"


def test_a_negative_loss_is_explained_by_what_check_measured(cfg):
    details = json.dumps({"targets_outside_loss_domain": "targets span [-0.446, 2.43], loss domain [0, 1]"})
    runs = pd.DataFrame([run("seed", 1, PLATEAU, loss=[0.2, -0.5, -1.0, -1.5, -2.0, -2.5], **{
        "check.flags": "targets_outside_loss_domain", "check.details": details,
        "check.predicted": "negative_loss_or_diverged"})])
    text = explain(summarize(point_rows(runs, cfg)))
    assert "negative_loss" in text and "targets span [-0.446, 2.43]" in text
    # A loss that goes below its floor on valid targets is said to, not blamed on the targets.
    runs = pd.DataFrame([run("image_only", 1, PLATEAU, loss=[0.2, -0.5, -1.0, -1.5, -2.0, -2.5])])
    text = explain(summarize(point_rows(runs, cfg)))
    assert "goes below its own floor" in text and "targets span" not in text


def trials(*rows):
    return pd.DataFrame([{"variant": "v", "trial": i, "state": s, "verdict": v, "val_miou": m, "tuned": {}}
                         for i, (s, v, m) in enumerate(rows)])


def test_a_diverged_trial_is_never_the_best_unless_all_failed():
    best, all_failed = pick_best(trials(("complete", "diverged", 0.9), ("complete", "learning", 0.7),
                                        ("pruned", "pruned", math.nan)))
    assert best["verdict"] == "learning" and best["val_miou"] == 0.7 and not all_failed
    best, all_failed = pick_best(trials(("complete", "diverged", 0.5), ("complete", "negative_loss", 0.6)))
    assert best["verdict"] == "negative_loss" and all_failed
    assert pick_best(trials(("pruned", "pruned", math.nan))) == (None, True)


def test_a_verdict_on_a_validation_set_close_to_training_is_marked_with_the_fix(cfg):
    from harness.report import marked_verdicts, split_rule, validation_paragraph
    measured = ("split random (seed 0): 6 of 30 files validate: validation's nearest training image correlates 0.78 "
                "(median over 8 validation images; max 0.83), typical 0.21 for training images at least 8 files apart")
    validation = json.dumps({"split": "random (seed 0): 6 of 30 files validate", "flagged": True, "measured": measured,
                             "fix": 'hold out a block of the volume or video: --set data.split="contiguous"'})
    runs = pd.DataFrame([run("image_only", 1, PLATEAU, **{
        "check.flags": "validation_near_training", "check.details": json.dumps({"validation_near_training": measured}),
        "check.validation": validation})])
    points = point_rows(runs, cfg)
    summary = summarize(points)
    text = explain(summary)
    assert "`converged`" in text and "`validation_near_training`: split random" in text
    assert "correlates 0.78" in text and 'Fix: hold out a block of the volume or video: `--set data.split="contiguous"`' in text
    assert marked_verdicts(summary).iloc[0]["verdict"] == "converged (validation near training)"
    assert summary.iloc[0]["verdict"] == "converged"                    # summary.csv keeps the bare verdict
    assert validation_paragraph(summary).startswith(f"Validation: {measured}. Flagged `validation_near_training`")
    assert split_rule(cfg["data"]).startswith("Split (`data.split = \"random\"`)")
    from harness.report import cell_tone, render_markdown
    assert cell_tone("verdict", "converged (validation near training)") == "good"
    md = render_markdown(cfg, summary, points, failures(runs), [], "harness report")
    assert "| converged (validation near training) |" in md and f"Validation: {measured}." in md
    rules = md[md.index("## Rules"):]
    assert "`validation_near_training`: each validation image's signature" in rules and "Split (`data.split" in rules


def test_an_unflagged_split_is_stated_and_runs_from_before_the_check_say_so(cfg):
    from harness.report import marked_verdicts, validation_paragraph
    validation = json.dumps({"split": "contiguous: ...", "flagged": False, "measured": "split contiguous: x", "fix": ""})
    summary = summarize(point_rows(pd.DataFrame([run("image_only", 1, PLATEAU, **{"check.validation": validation})]), cfg))
    assert validation_paragraph(summary) == "Validation: split contiguous: x."
    assert "near training" not in explain(summary) and "near-copies" not in explain(summary)
    assert marked_verdicts(summary).iloc[0]["verdict"] == "converged"
    old = summarize(point_rows(pd.DataFrame([run("image_only", 1, PLATEAU)]), cfg))
    assert "not measured" in validation_paragraph(old)


def test_a_loss_cause_names_its_health_symptoms_as_such_in_the_summary_and_the_why(cfg):
    """The posted tanh loss on whitened targets: its exploding gradients are a symptom of the loss cause
    the check measured, not a cause of their own; a healthy variant with only a warning has no cause."""
    exploding = {"health/grad_norm": [0.5, 80.0, 90.0], "health/grad_finite": [1.0, 1.0, 0.0],
                 "health/update_ratio": [0.05, 0.05, 0.05]}
    posted = run("tanh_posted", 1, [0.6, 0.5, 0.45], loss=[0.1, -0.5, math.nan], diverged="True",
                 diverged_epoch="3", diverged_batch="1",
                 **{"check.flags": "targets_outside_loss_domain,loss_unbounded_below",
                    "check.details": json.dumps({"targets_outside_loss_domain": "targets span [-0.42, 2.38]",
                                                 "loss_unbounded_below": "falls toward p=1"})})
    posted["history"].update(exploding)
    healthy_with_warning = run("image_only", 1, PLATEAU, **{"check.flags": "masks_not_binary"})
    summary = summarize(point_rows(pd.DataFrame([posted, healthy_with_warning]), cfg)).set_index("variant")
    assert summary.loc["tanh_posted", "causes"] == "targets_outside_loss_domain,loss_unbounded_below"
    assert summary.loc["tanh_posted", "symptoms"] == "exploding_gradients,diverged"
    assert summary.loc["image_only", "causes"] == "none" and summary.loc["image_only", "symptoms"] == "none"
    why = explain(summary.reset_index())
    assert ("as symptoms of `targets_outside_loss_domain` rather than causes of their own: `exploding_gradients` "
            "(s1: gradient norm not finite)") in why
