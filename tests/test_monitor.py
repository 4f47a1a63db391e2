"""The health measurements' parts (harness/monitor.py): the gradient sums taken inside the compiled
train step, the weights' relative move, and a saved model that loads back without the harness."""
import math

import pytest


@pytest.mark.backend
def test_gradient_sums_in_the_train_step_equal_the_gradient_an_sgd_step_applied():
    """With plain SGD one step moves each weight by -lr * its gradient: the measuring optimizer's
    norms, summed inside the compiled step, must equal those read back from the weights."""
    import keras
    import numpy as np
    from harness.monitor import gradient_norms, measuring_optimizer
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(3, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(3, 3, padding="same", activation="relu")(x)
    model = keras.Model(inputs, keras.layers.Conv2D(1, 1, activation="sigmoid")(x))
    lr = 0.5
    optimizer = measuring_optimizer(keras.optimizers.SGD, model, learning_rate=lr)
    model.compile(optimizer=optimizer, loss="binary_crossentropy")
    rng = np.random.default_rng(0)
    images, masks = rng.normal(size=(4, 6, 6, 2)).astype("float32"), (rng.random((4, 6, 6, 1)) > 0.5).astype("float32")
    kernels = [layer for layer in model.layers if getattr(layer, "kernel", None) is not None]
    before = [[np.asarray(v.value).copy() for v in layer.trainable_weights] for layer in kernels]
    model.train_on_batch(images, masks)
    moved = [[(b - np.asarray(v.value)) / lr for b, v in zip(bs, layer.trainable_weights)] for bs, layer in zip(before, kernels)]

    def norm(arrays):
        return math.sqrt(sum(float(np.sum(np.square(a))) for a in arrays))

    found = gradient_norms(optimizer)
    assert found["grad_finite"] == 1.0
    assert found["grad_norm"] == pytest.approx(norm([a for group in moved for a in group]), rel=1e-4)
    for name, group in zip(("first", "last", "head"), moved):
        assert found[f"grad_norm_{name}"] == pytest.approx(norm(group), rel=1e-4)
    # Read once per epoch: the sums start again at zero.
    assert gradient_norms(optimizer) == {"grad_norm": 0.0, "grad_finite": 1.0}
    # A step whose gradient is not finite is told apart.
    model.train_on_batch(np.full_like(images, np.nan), masks)
    assert gradient_norms(optimizer)["grad_finite"] == 0.0


def test_relative_move_over_all_weights():
    from harness.monitor import relative_move
    import numpy as np
    before = [np.array([3.0, 0.0]), np.array([4.0])]
    assert relative_move([np.array([3.0, 1.0]), np.array([4.0])], before) == pytest.approx(1 / 5)
    assert relative_move([], []) == 0.0
    assert relative_move([np.array([1.0])], [np.array([0.0])]) == pytest.approx(1e12)


def test_a_model_trained_with_the_measuring_optimizer_loads_back_as_the_optimizer_it_measures(tmp_path):
    """`harness sweep --save-models`: keras.saving.load_model reads the model back, compiled, without
    the harness, with its Adam state (the gradient sums are not saved)."""
    import keras
    import numpy as np
    from harness.monitor import measuring_optimizer
    inputs = keras.Input((6, 6, 2))
    model = keras.Model(inputs, keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(inputs))
    model.compile(optimizer=measuring_optimizer(keras.optimizers.Adam, model, learning_rate=1e-3),
                  loss="binary_crossentropy")
    model.fit(np.ones((4, 6, 6, 2), "float32"), np.zeros((4, 6, 6, 1), "float32"), verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert type(loaded.optimizer) is keras.optimizers.Adam
    saved = [np.asarray(v.value) for v in model.optimizer.variables
             if v is not model.optimizer.gradient_sums and v is not model.optimizer.gradient_steps]
    restored = [np.asarray(v.value) for v in loaded.optimizer.variables]
    assert len(saved) == len(restored) and all(np.array_equal(a, b) for a, b in zip(saved, restored))
    assert int(restored[0]) == 1                 # the iteration count: one step was taken
