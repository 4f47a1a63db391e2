"""`harness tune`: TPE over the declared ranges, a pruner, nested MLflow runs, resume, and the
report's "best tuned result per variant" section beside the grid."""
import csv

import pytest

from test_cli_e2e import TINY, harness

# One level of U-Net: the test counts trials and reads the study, never a score of its own.
SMALL = ["--set", "data.n_images=96", "--set", "train.epochs=4", "--set", "tune.pruner_warmup_epochs=1", "--set", "model.levels=1",
         "--set", 'variants=["seed","image_only"]']


@pytest.mark.slow
def test_tune_resumes_tracks_trials_and_reports_beside_the_grid(tmp_path):
    import optuna
    import harness as harness_pkg
    from harness.config import load_config
    from harness.tune import tune_study_name

    results = tmp_path / "results"
    grid = harness("sweep", TINY, "--results", results, *SMALL, cwd=tmp_path)
    assert grid.returncode == 0, grid.stderr[-3000:]
    first = harness("tune", "image_only", TINY, "--trials", "4", "--results", results, *SMALL, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "0 already done" in first.stdout and first.stdout.count("[tune image_only #") >= 8

    # Resume: asking for 5 trials in all trains exactly one more.
    again = harness("tune", "image_only", TINY, "--trials", "5", "--results", results, *SMALL, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "4 already done" in again.stdout and "#4]" in again.stdout and "#3]" not in again.stdout

    cfg = load_config(TINY, [s for s in SMALL if s != "--set"])
    study = optuna.load_study(study_name=tune_study_name(cfg, "image_only"),
                              storage=f"sqlite:///{results / 'optuna.db'}")
    states = [t.state for t in study.trials]
    assert len(states) == 5 and all(s in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
                                    for s in states)
    rates = [t.params["train.learning_rate"] for t in study.trials]
    assert all(1e-4 <= r <= 1e-2 for r in rates) and len(set(rates)) == 5

    # Each trial is a nested MLflow run with its own learning rate; the grid's runs are untouched.
    tuned = harness_pkg.load_runs(results, "tiny", kind="tune")
    assert len(tuned) == 5 and tuned["tags.mlflow.parentRunId"].nunique() == 1
    assert sorted(float(r) for r in tuned["params.train.learning_rate"]) == sorted(rates)
    assert len(harness_pkg.load_runs(results, "tiny")) == 2

    folder = results / "tiny"
    md = (folder / "report.md").read_text()
    assert "## Verdicts" in md and "## Best tuned result per variant" in md
    assert md.index("## Verdicts") < md.index("## Best tuned result per variant")
    with open(folder / "tuned.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["variant"] for r in rows] == ["image_only"] and rows[0]["trials"] == "5"
    best = max(t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE)
    assert abs(float(rows[0]["best_val_miou"]) - best) < 1e-4
    assert rows[0]["grid_verdict"] and (folder / "tuning.png").stat().st_size > 0
    assert "data:image/png;base64," in (folder / "report.html").read_text()
    # The command's last word on the variant is the report's own sentence.
    last = [line for line in again.stdout.splitlines() if line.startswith("tune image_only: ")][-1]
    assert f"- **image_only**: {last.removeprefix('tune image_only: ')}" in md


def test_tunes_last_line_is_the_reports_reading_even_when_every_trial_failed(tmp_path):
    from harness.report.tuning import tuned_reading
    row = {"variant": "seed", "trials": 3, "pruned": 0, "best_setting": "train.learning_rate=0.004",
           "best_val_miou": 0.38, "best_verdict": "negative_loss", "grid_val_miou": 0.17,
           "grid_verdict": "negative_loss", "verdicts_over_trials": "negative_loss:3", "every_trial_failed": True}
    import pandas as pd
    pd.DataFrame([row]).to_csv(tmp_path / "tuned.csv", index=False)
    reading = tuned_reading(tmp_path, "seed")
    assert reading.startswith("every trial failed; the best of the failed ones: best val_miou 0.380 (`negative_loss`)")
    assert "the failure is the variant's" in reading
    pd.DataFrame([{**row, "every_trial_failed": False, "best_verdict": "converged"}]).to_csv(tmp_path / "tuned.csv", index=False)
    assert tuned_reading(tmp_path, "seed").startswith("best val_miou 0.380 (`converged`)")
    assert tuned_reading(tmp_path, "image_only") is None


def test_tune_unknown_variant_and_bad_range_are_one_line_errors(tmp_path, cli):
    for args, message in ((["nope", TINY], "unknown variant 'nope'"),
                          (["seed", TINY, "--set", 'tune.ranges={"train.seeds"={low=1,high=2}}'], "cannot be tuned"),
                          (["seed", TINY, "--trials", "0"], "--trials must be >= 1")):
        code, out, err = cli("tune", *args, "--results", tmp_path / "r")
        assert code == 2, err[-2000:]
        assert "Traceback" not in err and message in err, err
