"""The sweep's whole product path on a shrunken experiment, in seconds (like the flax examples'
train_test.py): a broken sweep loop fails the fast set, not only CI's end-to-end tests."""
import csv
import math

import pytest

from conftest import TINY, run_harness

# One variant, one epoch, 32 images of 32x32, a U-Net of start depth 4: the real CLI, Optuna study,
# MLflow store and report, with almost no training.
SHRUNK = ["--set", 'variants=["image_only"]', "--set", "data.n_images=32", "--set", "train.epochs=1",
          "--set", "model.start_depth=4", "--set", "augment.stats_rounds=1"]


def test_a_sweep_trains_tracks_and_reports_in_process(cli, tmp_path):
    results = tmp_path / "r"
    code, out, err = cli("sweep", TINY, *SHRUNK, "--results", results)
    assert code == 0, err[-3000:]
    assert "1 grid points, 0 already finished, 1 to train" in out
    with open(results / "tiny" / "summary.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["variant"] == "image_only" and row["seeds"] == "1" and row["verdict"] in ("too_short", "not_learning")
    assert 0 <= float(row["val_miou"]) <= 1 and float(row["trivial_miou"]) > 0.4
    import harness
    (run,) = [r for _, r in harness.load_runs(results, "tiny").iterrows()]
    assert run["status"] == "FINISHED" and run["tags.verdict"] == row["verdict"]
    assert len(run["history"]["loss"]) == 1 and run["tags.check.flags"] == "none"
    # Run again: nothing is left to train.
    code, out, err = cli("sweep", TINY, *SHRUNK, "--results", results)
    assert code == 0 and "1 already finished, 0 to train" in out, err[-3000:]


def test_an_interrupted_sweep_resumes_and_trains_only_what_is_missing(cli, tmp_path, monkeypatch):
    """Ctrl-C after the first of three points (as the CLI's handler sets it): exit 130, the finished
    point kept; the same command then trains the two that are missing, and nothing more."""
    from harness import errors, sweep
    results = tmp_path / "r"
    grid = [*SHRUNK, "--set", 'variants=["image_only","no_featurewise","tanh_corrected"]']
    real = sweep.run_point

    def then_ctrl_c(*args, **kwargs):
        outcome = real(*args, **kwargs)
        errors.INTERRUPTED.set()             # what on_sigint does while training defers it
        return outcome
    monkeypatch.setattr(sweep, "run_point", then_ctrl_c)
    code, out, err = cli("sweep", TINY, *grid, "--results", results)
    assert code == 130 and "harness: interrupted" in err, err[-3000:]
    monkeypatch.setattr(sweep, "run_point", real)
    code, out, err = cli("sweep", TINY, *grid, "--results", results)
    assert code == 0, err[-3000:]
    assert "3 grid points, 1 already finished, 2 to train" in out
    import harness
    runs = harness.load_runs(results, "tiny")
    finished = runs[runs["status"] == "FINISHED"]
    assert sorted(finished["variant"]) == ["image_only", "no_featurewise", "tanh_corrected"]
    assert len(finished) == 3 and (runs["status"] == "KILLED").sum() == 1


@pytest.mark.slow   # a fresh process or a real training: the full suite runs it, not the fast set
def test_a_small_sweep_in_a_fresh_process_prints_nothing_on_stderr(tmp_path):
    """What a user sees: no library warning (matplotlib's "Tight layout not applied" was one), no
    TensorFlow start-up lines, no MLflow INFO lines. Results go to stdout; stderr holds the progress
    lines alone (on a pipe: a plain line at most every HARNESS_PROGRESS_S seconds)."""
    import re
    run = run_harness("sweep", TINY, *SHRUNK, "--results", tmp_path / "r", cwd=tmp_path,
                      env={"TF_CPP_MIN_LOG_LEVEL": None, "PYTHONWARNINGS": None})     # as a user runs it
    assert run.returncode == 0, run.stderr[-3000:]
    other = [line for line in run.stderr.splitlines() if not re.match(r"\[\d+/\d+ done\] ", line)]
    assert other == [], run.stderr[-3000:]
    assert "report:" in run.stdout


def test_a_training_run_says_where_its_time_went():
    from harness.config import load_config
    from harness.data import load_dataset
    from harness.train import train_variant
    cfg = load_config(TINY, [s for s in SHRUNK if s != "--set"] + ["train.epochs=2", 'variants=["seed"]'])
    result = train_variant(cfg, cfg.variants[0], 1, load_dataset(cfg["data"]))
    t = result.timings
    assert set(t) == {"prepare", "fit", "scoring", "first_epoch"}
    assert all(math.isfinite(s) and s > 0 for s in t.values()), t
    # Intervals inside fit's, whatever the machine's speed: the first epoch, and the scoring passes.
    assert t["fit"] == result.seconds and t["first_epoch"] <= t["fit"] and t["scoring"] <= t["fit"]


def test_a_validation_input_is_scored_in_one_pass_where_it_fits():
    """The default point's 77 validation images (48x48) go through the model in one call; inputs
    past SCORING_PIXELS in equal chunks, never smaller than a training batch, the last padded by
    fewer images than there are chunks."""
    from harness.train import SCORING_PIXELS, scoring_chunk
    assert scoring_chunk(77, 48 * 48, 16) == 77
    assert scoring_chunk(154, 48 * 48, 16) == 154
    assert scoring_chunk(1000, 128 * 128, 32) == 63          # 16 chunks of at most 64
    assert scoring_chunk(10, SCORING_PIXELS, 4) == 4         # a batch at least: 3 chunks of 4
    assert scoring_chunk(SCORING_PIXELS // 100 + 1, 100, 1) == (SCORING_PIXELS // 100 + 2) // 2
    assert scoring_chunk(0, 48 * 48, 16) == 1
    assert scoring_chunk(SCORING_PIXELS, 1, 1) == SCORING_PIXELS                  # one-pixel images: one call
    assert all(isinstance(scoring_chunk(n, 3, 1), int) for n in (1, SCORING_PIXELS))      # it slices arrays
    for n in (1, 5, 77, 500, 5000):
        chunk = scoring_chunk(n, 128 * 128, 32)
        chunks = -(-n // chunk)
        assert chunk * chunks - n < chunks and chunk <= max(32, SCORING_PIXELS // (128 * 128))


@pytest.mark.backend
def test_validation_is_scored_in_chunks_of_one_shape_with_the_padding_dropped():
    """predict_binary pads the short last chunk (one traced shape per run) and drops the padding:
    each image's prediction is the one it gets alone."""
    import keras
    import numpy as np
    from harness.train import predict_binary
    inputs = keras.Input((5, 5, 1))
    model = keras.Model(inputs, keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(inputs))
    images = np.random.default_rng(0).normal(size=(7, 5, 5, 1)).astype("float32")
    shapes = []
    predict = model.predict_on_batch
    model.predict_on_batch = lambda x: shapes.append(x.shape) or predict(x)
    binary, pred = predict_binary(model, images, 0.5, 3)
    assert shapes == [(3, 5, 5, 1)] * 3
    alone = np.concatenate([np.asarray(predict(images[i:i + 1])) for i in range(7)])
    assert pred.shape == (7, 5, 5, 1) and binary.dtype == bool
    np.testing.assert_allclose(pred, alone, rtol=1e-6)
    np.testing.assert_array_equal(binary, pred >= 0.5)
    shapes.clear()
    _, one_pass = predict_binary(model, images, 0.5, 7)
    assert shapes == [(7, 5, 5, 1)]
    np.testing.assert_allclose(one_pass, pred, rtol=1e-6)


def test_a_point_says_how_long_its_training_took_apart_from_the_sweeps_own_work(tmp_path):
    """harness bench reads what a sweep adds to a point as the sweep's wall time less the training's."""
    from harness.config import load_config
    from harness.sweep import run_sweep
    cfg = load_config(TINY, [s for s in SHRUNK if s != "--set"])
    (outcome,) = run_sweep(cfg, tmp_path / "r", log=lambda _: None, run_check=False)
    assert outcome.verdict != "crashed" and math.isfinite(outcome.training_seconds)
    assert 0 < outcome.training_seconds < outcome.seconds


@pytest.mark.backend
def test_a_run_that_diverges_mid_epoch_is_judged_diverged_not_crashed(tmp_path):
    """The stop at the first non-finite batch runs on Keras' worker threads: under JAX, touching
    `callback.model` there synced the training state while the next step had donated it, and the fit
    then crashed on deleted arrays ("Array has been deleted") instead of ending diverged."""
    from harness.config import load_config
    from harness.sweep import run_sweep
    shrunk = [s for s in SHRUNK if s != "--set" and not s.startswith("variants=")]
    cfg = load_config(TINY, shrunk + ['variants=["tanh_posted"]', "train.epochs=2", "train.learning_rate=1e4"])
    (outcome,) = run_sweep(cfg, tmp_path / "r", log=lambda _: None, run_check=False)
    assert outcome.verdict == "diverged"
