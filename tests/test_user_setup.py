"""A user's own losses, head and model through the real CLI: verdicts that stay true off the case.

The user's module sits beside their experiment file and is found without PYTHONPATH."""
import csv
import textwrap

import pytest

from conftest import run_harness
from harness.tracking import default_tracking_uri, load_runs

USER_CODE = textwrap.dedent('''
    import keras
    from keras import ops

    def shifted_bce(y_true, y_pred):
        """BCE - 1 per sample: its floor is -1, and it declares none."""
        return ops.mean(keras.losses.binary_crossentropy(y_true, y_pred), axis=(1, 2)) - 1.0

    def scalar_bce(y_true, y_pred):
        """One value per batch."""
        return ops.mean(keras.losses.binary_crossentropy(y_true, y_pred))

    def dilated_net(input_shape, activation):
        """No pooling: dilated convolutions see 31 pixels around each one."""
        inputs = keras.Input(input_shape)
        x = inputs
        for rate in (1, 2, 4, 8):
            x = keras.layers.Conv2D(16, 3, padding="same", dilation_rate=rate, use_bias=False)(x)
            x = keras.layers.BatchNormalization(momentum=0.9)(x)
            x = keras.layers.Activation("relu")(x)
        return keras.Model(inputs, keras.layers.Conv2D(1, 1, activation=activation)(x))
''')

EXPERIMENT = textwrap.dedent('''
    name = "user"
    variants = ["shifted", "scalar", "focal", "tanh01"]
    [define.shifted]
    masks = "binary"
    validation = "like_training"
    loss = "user_code:shifted_bce"
    [define.scalar]
    masks = "binary"
    validation = "like_training"
    loss = "user_code:scalar_bce"
    [define.focal]
    masks = "binary"
    validation = "like_training"
    loss = "keras.losses:BinaryFocalCrossentropy(gamma=2.0)"
    [define.tanh01]            # tanh trained on {0, 1}: background sits at 0, so 0 is no threshold
    masks = "binary"
    validation = "like_training"
    head = "tanh"
    loss = "bce"
    [data]
    n_images = 128
    image_size = 32
    [model]
    start_depth = 8
    levels = 3
    bn_momentum = 0.9
    [train]
    epochs = 12
    batch_size = 16
    seeds = [1]
''')


def sweep(tmp_path, *args):
    # No PYTHONPATH: the user's modules are found beside the experiment file, as for a user.
    p = run_harness("sweep", tmp_path / "exp" / "user.toml", "--results", tmp_path / "results", *args,
                    cwd=tmp_path, env={"PYTHONPATH": None}, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def summary(tmp_path, name="user"):
    with open(tmp_path / "results" / name / "summary.csv") as f:
        return {row["variant"]: row for row in csv.DictReader(f)}


@pytest.mark.slow
def test_user_losses_heads_and_model_get_true_verdicts(tmp_path):
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "user_code.py").write_text(USER_CODE)
    (tmp_path / "exp" / "user.toml").write_text(EXPERIMENT)
    sweep(tmp_path)
    rows = summary(tmp_path)

    shifted = rows["shifted"]     # healthy, below 0 all along: never a false negative_loss
    # Healthy by trend: plateaued or still gaining at epoch 12, as the augmentation stream has it.
    assert shifted["verdict"] in ("converged", "learning") and shifted["negative_loss"] == "false"
    assert float(shifted["loss_floor"]) == pytest.approx(-1.0, abs=1e-3) and float(shifted["min_loss"]) < 0
    assert "loss_floor_not_zero" in shifted["check_flags"] and shifted["agrees"] == "true"
    for name in ("scalar", "focal"):  # one value per batch; a Keras loss instance
        assert rows[name]["check_flags"] == "none" and rows[name]["predicted"] == "trains"
        assert rows[name]["verdict"] in ("converged", "learning") and rows[name]["agrees"] == "true"
    tanh01 = rows["tanh01"]
    assert float(tanh01["threshold"]) == pytest.approx(0.5, abs=1e-3)
    assert tanh01["verdict"] == "converged" and tanh01["agrees"] == "true"

    # The user's own network, named in the experiment, trains end to end.
    sweep(tmp_path, "--set", "model.builder=user_code:dilated_net", "--set", 'variants=["shifted"]')
    built = summary(tmp_path)["shifted"]
    assert built["verdict"] in ("converged", "learning") and built["negative_loss"] == "false"
    runs = load_runs(default_tracking_uri(tmp_path / "results"), "user", with_history=False)
    mine = runs[runs["params.model.builder"] == "user_code:dilated_net"]
    assert len(mine) == 1 and mine.iloc[0]["status"] == "FINISHED"
    assert int(mine.iloc[0]["params.model.start_depth"]) == 8      # recorded, though the builder ignores it
