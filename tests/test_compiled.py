"""A variant's next seed trains on the model its previous seed compiled (harness/compiled.py): the
same numbers as a freshly compiled model, and reused only where nothing the train step depends on
changed."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness import compiled

SETS = ["data.n_images=48", "data.image_size=32", "model.start_depth=4", "model.levels=2",
        "train.epochs=2", "train.batch_size=16", "augment.stats_rounds=1"]


def assert_same_history(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)     # NaN equals NaN here


def only_where_the_model_is_trained_as_it_is():
    from harness.backend import backend_name
    if backend_name() != "tensorflow":
        pytest.skip("other backends train through the device feed, whose wrapper holds each seed's data: not kept")


def test_a_reused_model_trains_exactly_what_a_fresh_one_does():
    only_where_the_model_is_trained_as_it_is()
    from harness.config import load_config
    from harness.data import load_dataset
    from harness.train import train_variant
    cfg = load_config(None, SETS)                    # health measured: its optimizer and probe reused too
    dataset = load_dataset(cfg["data"])
    by_name = {v.name: v for v in cfg.variants}
    compiled.forget()
    first = train_variant(cfg, by_name["seed"], 1, dataset)
    # Whatever the last run left in the kept model and its optimizer (here: NaN everywhere, as a
    # diverged run leaves them), the next seed starts from its own fresh values.
    kept = compiled._kept[0]
    for variable in list(kept.model.variables) + compiled.optimizer_variables(kept.model, kept.optimizer):
        variable.assign(np.full(variable.shape, np.nan, variable.dtype) if "float" in str(variable.dtype)
                        else np.full(variable.shape, 7, variable.dtype))
    # Another seed of another variant with the same head and loss: other batches, other validation.
    reused = train_variant(cfg, by_name["image_only"], 2, dataset)
    assert reused.model is first.model               # it was reused, not compiled again
    compiled.forget()
    fresh = train_variant(cfg, by_name["image_only"], 2, dataset)
    assert fresh.model is not first.model
    assert_same_history(reused.history, fresh.history)
    assert all(np.isfinite(reused.history["loss"]))


def test_another_variant_or_setting_compiles_its_own_model():
    only_where_the_model_is_trained_as_it_is()
    from harness.config import load_config
    from harness.data import load_dataset
    from harness.train import train_variant
    cfg = load_config(None, SETS + ["train.epochs=1"])
    dataset = load_dataset(cfg["data"])
    by_name = {v.name: v for v in cfg.variants}
    compiled.forget()
    first = train_variant(cfg, by_name["image_only"], 1, dataset)
    other = train_variant(cfg, by_name["tanh_corrected"], 1, dataset)           # another head and loss
    assert other.model is not first.model
    faster = cfg.with_overrides({"train.learning_rate": 0.01})
    assert train_variant(faster, by_name["tanh_corrected"], 2, dataset).model is not other.model
    on_device = cfg.with_overrides({"speed.device_augment": True})   # fit trains a wrapper holding the seed's data
    first = train_variant(on_device, by_name["image_only"], 1, dataset)
    assert train_variant(on_device, by_name["image_only"], 2, dataset).model is not first.model


def key(raw=None, head="sigmoid", loss="bce", shape=(32, 32, 3), feed="tfdata", deterministic=True,
        backend="tensorflow"):
    raw = raw or {"train": {"seeds": [1, 2], "learning_rate": 0.001}, "model": {"start_depth": 16}}
    return compiled.key_of(raw, head, loss, shape, feed, deterministic, backend)


def test_the_key_leaves_out_the_seeds_and_nothing_else_the_graph_depends_on():
    base = key()
    assert key(raw={"train": {"seeds": [7], "learning_rate": 0.001}, "model": {"start_depth": 16}}) == base
    assert key(raw={"train": {"seeds": [1, 2], "learning_rate": 0.01}, "model": {"start_depth": 16}}) != base
    assert key(raw={"train": {"seeds": [1, 2], "learning_rate": 0.001}, "model": {"start_depth": 8}}) != base
    assert key(head="tanh") != base
    assert key(loss="posted_bce") != base
    assert key(shape=(64, 64, 3)) != base
    assert key(feed="imagedatagenerator") != base
    assert key(deterministic=False) != base
    assert key(backend="jax") != base
    # The same settings in another order, and settings without a train section or JSON's types.
    assert key(raw={"model": {"start_depth": 16}, "train": {"learning_rate": 0.001, "seeds": [3]}}) == base
    assert key(raw={"model": {"start_depth": 16}}) != base
    assert key(raw={"model": {"levels": 4, "start_depth": 16}, "train": {}}) == \
        key(raw={"model": {"start_depth": 16, "levels": 4}, "train": {}})
    assert key(raw={"data": {"folder": Path("/data")}, "train": {}}) != key(raw={"data": {"folder": "/other"}, "train": {}})


def test_take_gives_back_only_the_same_key_and_layout():
    import keras
    small = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    wide = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    optimizer = keras.optimizers.Adam(0.001)
    small.compile(optimizer=optimizer, loss="mse")
    optimizer.build(small.trainable_variables)
    loss = object()
    compiled.keep("k", small, optimizer, loss)
    assert compiled.take("other", keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])) is None
    assert compiled.take("k", wide) is None
    fresh = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    optimizer.iterations.assign(5)
    taken = compiled.take("k", fresh)
    assert taken.model is small and taken.optimizer is optimizer and taken.loss is loss
    assert int(optimizer.iterations.value) == 0
    for mine, theirs in zip(small.variables, fresh.variables):
        np.testing.assert_array_equal(np.asarray(mine.value), np.asarray(theirs.value))
    compiled.forget()
    assert compiled.take("k", fresh) is None


def test_only_the_harness_model_and_losses_are_reused():
    """A user's builder or loss may draw from TensorFlow's stateful random ops, whose seeds a traced
    graph keeps: compiled anew at every point."""
    assert compiled.reusable("", "bce")
    assert not compiled.reusable("user_code:dilated_net", "bce")
    assert not compiled.reusable("", "user_losses:shifted")
    assert not compiled.reusable("user_code:dilated_net", "user_losses:shifted")


def test_under_mixed_precision_the_loss_scale_is_restored_too():
    """Keras wraps the optimizer in a LossScaleOptimizer under mixed_float16: its loss scale and
    step counter are the model's optimizer variables as much as Adam's moments are."""
    import keras
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        optimizer = keras.optimizers.Adam(0.001)
        model.compile(optimizer=optimizer, loss="mse")
        model.optimizer.build(model.trainable_variables)
        fresh = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    variables = compiled.optimizer_variables(model, optimizer)
    assert len({id(v) for v in variables}) == len(variables)                    # each once
    scale = [v for v in variables if not any(v is w for w in optimizer.variables)]
    assert scale, "the loss-scale wrapper's own variables"
    compiled.keep("k", model, optimizer, None)
    before = [np.asarray(v.value).copy() for v in scale]
    for v in scale:
        v.assign(np.full(v.shape, 3, v.dtype))
    compiled.take("k", fresh)
    for v, value in zip(scale, before):
        np.testing.assert_array_equal(np.asarray(v.value), value)
