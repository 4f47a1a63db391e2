"""Why a run does not learn, through the real CLI on tiny data: each induced failure is named by its
cause (harness/health.py) in summary.csv, runs.csv, the run's `health.causes` tag and the report."""
import csv
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import run_harness
from harness.tracking import default_tracking_uri, load_runs

BUILDERS = textwrap.dedent('''
    import keras
    from keras import layers

    def sigmoid_stack(input_shape, activation):
        """Twelve sigmoid convolutions, no normalization: each layer shrinks the gradient."""
        x = inputs = keras.Input(input_shape)
        for _ in range(12):
            x = layers.Conv2D(8, 3, padding="same", activation="sigmoid")(x)
        return keras.Model(inputs, layers.Conv2D(1, 1, activation=activation)(x))

    def dead_relu(input_shape, activation):
        """ReLU convolutions whose biases start far below zero: no unit ever fires."""
        x = inputs = keras.Input(input_shape)
        for _ in range(4):
            x = layers.Conv2D(8, 3, padding="same", activation="relu",
                              bias_initializer=keras.initializers.Constant(-20.0))(x)
        return keras.Model(inputs, layers.Conv2D(1, 1, activation=activation)(x))

    def frozen(input_shape, activation):
        """Every layer frozen: nothing can train."""
        x = inputs = keras.Input(input_shape)
        for _ in range(3):
            x = layers.Conv2D(8, 3, padding="same", activation="relu")(x)
        model = keras.Model(inputs, layers.Conv2D(1, 1, activation=activation)(x))
        for layer in model.layers:
            layer.trainable = False
        return model
''')

EXPERIMENT = textwrap.dedent('''
    name = "sick"
    variants = ["image_only"]
    [data]
    n_images = 256
    image_size = 32
    [augment]
    stats_rounds = 1
    [model]
    start_depth = 8
    bn_momentum = 0.9
    [train]
    epochs = 8
    batch_size = 16
    seeds = [1]
''')


def shuffled_folder(root: Path) -> Path:
    """The synthetic set written as a folder, its masks shuffled against their images (as a renaming
    of one list would): nothing in an image tells its mask."""
    from harness.data import make_synthetic
    from scenes import write_folder
    images, masks = make_synthetic(256, 32, 0.15, 0, channels=1)
    stems = [f"slice{i:03d}" for i in range(len(images))]
    return write_folder(root, images, masks[np.random.default_rng(0).permutation(len(masks))], stems)


def sweep_causes(tmp_path: Path, *sets: str) -> tuple[str, str]:
    """-> (the variant's `causes` in summary.csv, report.md) after a sweep with these overrides."""
    (tmp_path / "sick.toml").write_text(EXPERIMENT)
    (tmp_path / "builders.py").write_text(BUILDERS)
    results = tmp_path / "results"
    args = [a for s in sets for a in ("--set", s)]
    run = run_harness("sweep", tmp_path / "sick.toml", "--results", results, *args, cwd=tmp_path, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    with open(results / "sick" / "summary.csv") as f:
        row = next(csv.DictReader(f))
    with open(results / "sick" / "runs.csv") as f:
        assert next(csv.DictReader(f))["causes"] == row["causes"]
    runs = load_runs(default_tracking_uri(results), "sick")
    assert runs.iloc[0]["tags.causes"] == row["causes"]          # no check flag here: health causes alone
    assert runs.iloc[0]["tags.health.causes"] == row["causes"]
    assert any(key.startswith("health/") for key in runs.iloc[0]["history"])
    return row["causes"], (results / "sick" / "report.md").read_text()


@pytest.mark.slow
def test_a_learning_rate_of_1_is_named(tmp_path):
    causes, report = sweep_causes(tmp_path, "train.learning_rate=1.0")
    assert "learning_rate_too_high" in causes.split(","), causes
    assert "`learning_rate_too_high` (s1: update ratio up to" in report and "lower `train.learning_rate`" in report


@pytest.mark.slow
def test_a_deep_sigmoid_stack_has_vanishing_gradients(tmp_path):
    causes, report = sweep_causes(tmp_path, "model.builder=builders:sigmoid_stack")
    assert causes == "vanishing_gradients", causes
    assert "health_image_only.png" in report


@pytest.mark.slow
def test_relu_units_that_start_dead_are_named(tmp_path):
    causes, _ = sweep_causes(tmp_path, "model.builder=builders:dead_relu")
    assert "dead_units" in causes.split(","), causes


@pytest.mark.slow
def test_a_frozen_model_has_no_updates(tmp_path):
    causes, report = sweep_causes(tmp_path, "model.builder=builders:frozen")
    assert causes == "no_updates", causes
    assert "`no_updates` (s1: no trainable weights)" in report


@pytest.mark.slow
def test_masks_shuffled_against_their_images_give_no_signal(tmp_path):
    folder = shuffled_folder(tmp_path / "shuffled")
    causes, report = sweep_causes(tmp_path, "data.source=folder", f"data.path={folder}", "data.channels=1")
    assert causes == "no_signal", causes
    assert "`no_signal` (s1: training loss" in report and "check that each mask belongs to its image" in report


@pytest.mark.slow
def test_a_run_that_learns_is_not_named_no_signal_when_its_small_foreground_keeps_the_loss_near_trivial(tmp_path):
    """The embedded set at a small size: image_only learns (validation mIoU well above the trivial
    predictor's) while its fixed batch's loss stays within 5 % of the trivial predictor's. The honest
    metric decides: no cause."""
    from harness import health
    from harness.config import DEFAULTS
    results = tmp_path / "results"
    run = run_harness("sweep", "--results", results, "--set", "train.epochs=8", "--set", "data.image_size=32",
                      "--set", "data.n_images=96", "--set", "train.seeds=[1]", "--set", 'variants=["image_only"]',
                      cwd=tmp_path, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    with open(results / "whitening" / "summary.csv") as f:
        row = next(csv.DictReader(f))
    assert row["verdict"] == "learning" and float(row["val_miou"]) > float(row["trivial_miou"]) + 0.1
    assert row["causes"] == "none" and row["symptoms"] == "none"
    history = load_runs(default_tracking_uri(results), "whitening").iloc[0]["history"]
    assert "no_signal" in health.diagnose(history, DEFAULTS["health"])        # the fixed batch alone would say so
