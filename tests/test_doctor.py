"""`harness doctor` in-process: the batches a fit sees are the same with the doctor as without it, for
every kind of input (harness/doctor/observe.py); the data objects that standardized the targets are
named with their line (lineage.py); autolog, the explicit callback and a failing measurement. The real
command on real scripts: tests/test_doctor_cli.py."""
import inspect

import numpy as np
import pytest

from harness.doctor import hooks, lineage
from harness.doctor.session import Session

SIZE, N = 16, 32


def pairs(n=N, seed=0):
    rng = np.random.default_rng(seed)
    masks = (rng.random((n, SIZE, SIZE, 1)) < 0.2).astype("float32")
    images = (0.3 + 0.5 * masks + 0.1 * rng.random((n, SIZE, SIZE, 3))).astype("float32")
    return images, masks


def recording_model(seen: list):
    """A tiny model that records every batch it trains on (eagerly: a traced call records nothing)."""
    import keras

    class Record(keras.layers.Layer):
        def call(self, x, training=None):
            if training:
                try:
                    seen.append(keras.ops.convert_to_numpy(x))
                except Exception:  # noqa: BLE001 - a symbolic or traced call has no values
                    pass
            return x

    inputs = keras.Input((SIZE, SIZE, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(Record()(inputs)))
    model.compile(optimizer="adam", loss="binary_crossentropy", run_eagerly=True)
    return model


def zipped(x, y, seed=1):
    """The case's pair: two ImageDataGenerators, one argument dict, zipped in a generator."""
    from keras.src.legacy.preprocessing.image import ImageDataGenerator
    args = dict(rotation_range=30, width_shift_range=0.2, horizontal_flip=True)
    images, masks = ImageDataGenerator(**args).flow(x, batch_size=8, seed=seed), \
        ImageDataGenerator(**args).flow(y, batch_size=8, seed=seed)
    for pair in zip(images, masks):
        yield pair


def flipped_dataset(x, y):
    import tensorflow as tf

    def flip(a, b):
        both = tf.image.random_flip_left_right(tf.concat([a, b], -1), seed=3)
        return both[..., :3], both[..., 3:]
    return tf.data.Dataset.from_tensor_slices((x, y)).shuffle(N, seed=2).map(flip).batch(8)


def fit_arguments(kind: str) -> dict:
    """fit's arguments for one kind of input, built anew (a generator is used up by one fit)."""
    x, y = pairs()
    val = pairs(8, seed=1)
    if kind == "arrays":
        return dict(x=x, y=y, batch_size=8, validation_data=val)
    if kind == "zipped generators":
        return dict(x=zipped(x, y), steps_per_epoch=4, validation_data=val)
    if kind == "PyDataset":
        from keras.src.legacy.preprocessing.image import ImageDataGenerator
        return dict(x=ImageDataGenerator(rotation_range=30).flow(x, y, batch_size=8, seed=1), validation_data=val)
    if kind == "tf.data":
        return dict(x=flipped_dataset(x, y), validation_data=flipped_dataset(*val))
    if kind == "validation generator":
        return dict(x=x, y=y, batch_size=8, validation_data=zipped(*val, seed=5), validation_steps=1)
    raise ValueError(kind)


def train(kind: str, doctored: bool):
    """-> (the batches the model trained on, History, final weights, the session or None)."""
    import keras
    keras.utils.set_random_seed(1)
    seen: list = []
    model = recording_model(seen)
    session = Session(epochs=0, say=lambda _: None) if doctored else None
    if session is not None:
        hooks.install(session)
    try:
        history = model.fit(**fit_arguments(kind), epochs=2, verbose=0)
    finally:
        hooks.uninstall()
    return seen, history.history, [np.array(w) for w in model.get_weights()], session


@pytest.mark.backend
@pytest.mark.parametrize("kind", ["arrays", "zipped generators", "PyDataset", "tf.data", "validation generator"])
def test_a_fit_sees_the_same_batches_in_the_same_order_with_the_doctor(kind):
    seen, history, weights, _ = train(kind, doctored=False)
    seen_doctored, history_doctored, weights_doctored, session = train(kind, doctored=True)
    assert len(seen) >= 8 and len(seen_doctored) == len(seen)
    assert all(np.array_equal(a, b) for a, b in zip(seen, seen_doctored))
    # The History holds Keras' own numbers only, and they are the same; so are the trained weights.
    assert history_doctored.keys() == history.keys()
    assert all(np.allclose(history[k], history_doctored[k], rtol=0, atol=0) for k in history)
    assert all(np.array_equal(a, b) for a, b in zip(weights, weights_doctored))
    record = session.fit_records[0]
    observed = record.train.batches
    assert len(observed) == (N // 8 if kind in ("arrays", "validation generator") else min(len(seen), 8))
    if kind in ("zipped generators", "tf.data", "PyDataset"):     # fit shuffles arrays; the doctor samples them in order
        # What Keras takes to learn the shapes before training (a PyDataset's first batch, read once or
        # twice more; under JAX a dataset's first element, from iterations of its own) is recorded too.
        assert any(all(np.array_equal(o[0], s) for o, s in zip(observed[peeks:], seen)) for peeks in (0, 1, 2))
    assert record.val is not None and (record.val.batches or record.val.arrays is not None)
    # The doctor measured something on every kind: health each epoch, and the honest metric.
    assert len(session.fits) == 1 and len(session.fits[0].history["health/update_ratio"]) == 2
    assert len(session.fits[0].history["doctor/val_miou"]) == 2


def test_a_py_dataset_gets_its_own_class_back_after_fit():
    from keras.src.legacy.preprocessing.image import NumpyArrayIterator
    arguments = fit_arguments("PyDataset")
    import keras
    model = recording_model([])
    session = Session(say=lambda _: None)
    hooks.install(session)
    try:
        model.fit(**arguments, epochs=1, verbose=0)
    finally:
        hooks.uninstall()
    assert type(arguments["x"]) is NumpyArrayIterator
    assert not hasattr(keras.Model.fit, "__doctor_original__")       # uninstall undid the patch


def made_here() -> int:
    return inspect.currentframe().f_back.f_lineno


def test_the_mask_generator_that_whitened_the_targets_is_named_with_its_line():
    from tensorflow.keras.preprocessing.image import ImageDataGenerator
    x, y = pairs()
    session = Session(say=lambda _: None)
    hooks.install(session)
    try:
        args = dict(featurewise_center=True, featurewise_std_normalization=True, rotation_range=30)
        image_datagen = ImageDataGenerator(**args)
        mask_datagen = ImageDataGenerator(**args); line = made_here()    # noqa: E702
        image_datagen.fit(x, augment=True, seed=1, rounds=1)
        mask_datagen.fit(y, augment=True, seed=1, rounds=1)
        targets = next(mask_datagen.flow(y, batch_size=8, seed=1))
    finally:
        hooks.uninstall()
    record, how = lineage.target_transformer(session.records, (float(targets.min()), float(targets.max())))
    assert how == "exact" and record.name == "mask_datagen"
    assert (record.made.file, record.made.line) == (__file__, line)
    assert record.fitted[0][1].binary and record.flowed[0][1].shape == y.shape
    fix = lineage.fix_for_targets(record)
    assert fix.startswith("mask_datagen = ImageDataGenerator(rotation_range=30)") and "featurewise_center=" not in fix
    assert lineage.input_transformer(session.records).name == "image_datagen"
    assert lineage.fix_for_validation(lineage.input_transformer(session.records)).startswith(
        "x_val = image_datagen.standardize(")


def test_a_normalization_layer_adapted_on_the_masks_is_named():
    import keras
    _, y = pairs()
    session = Session(say=lambda _: None)
    hooks.install(session)
    try:
        mask_norm = keras.layers.Normalization(axis=-1)
        mask_norm.adapt(y); line = made_here()      # noqa: E702
    finally:
        hooks.uninstall()
    targets = np.asarray(mask_norm(y))
    record, how = lineage.target_transformer(session.records, (float(targets.min()), float(targets.max())))
    assert how == "exact" and record.kind == "Normalization" and record.name == "mask_norm"
    assert record.made.line == line
    # Targets that no recorded object made are nobody's.
    assert lineage.target_transformer(session.records, (0.0, 255.0)) == (None, "")


def test_what_a_generator_does_to_a_pixel():
    record = lineage.Record("ImageDataGenerator", None, {"featurewise_center": True,
                                                         "featurewise_std_normalization": True},
                            mean=np.array([0.25]), std=np.array([0.5]))
    assert record.transformed(1.0) == pytest.approx(0.75 / (0.5 + 1e-6))
    assert record.transformed(0.0) == pytest.approx(-0.25 / (0.5 + 1e-6))
    record.settings = {"featurewise_center": True, "rescale": 1 / 255}
    assert record.transformed(255.0) == pytest.approx(0.75)
    record.settings = {"samplewise_center": True}
    assert record.transformed(1.0) is None and record.standardizes
    record.settings = {"rotation_range": 30, "rescale": 1 / 255}
    assert not record.standardizes
    unfitted = lineage.Record("ImageDataGenerator", None, {"featurewise_center": True})
    assert unfitted.transformed(1.0) is None


def test_a_samplewise_standardizer_that_flowed_masks_is_the_likely_one():
    binary = lineage.Summary((8, 4, 4, 1), 0.0, 1.0, 2)
    images = lineage.Summary((8, 4, 4, 3), 0.0, 255.0, 200)
    record = lineage.Record("ImageDataGenerator", lineage.Site("t.py", 3, "g = ImageDataGenerator(samplewise_center=True)"),
                            {"samplewise_center": True}, flowed=[(None, binary)])
    other = lineage.Record("ImageDataGenerator", None, {"samplewise_center": True}, flowed=[(None, images)])
    assert lineage.target_transformer([record, other], (-0.3, 0.9)) == (record, "likely")
    assert lineage.target_transformer([other], (-0.3, 0.9)) == (None, "")
    assert record.name == "g"


def test_a_call_site_is_the_users_line_not_the_harness_nor_a_library():
    site = lineage.call_site(); line = made_here()      # noqa: E702
    assert (site.file, site.line) == (__file__, line) and site.code.startswith("site = lineage.call_site()")
    assert str(site) == f"test_doctor.py:{line}"
    assert lineage.summarize("a path") is None and lineage.summarize(np.zeros((3, 2, 2, 1))).levels == 1
    assert lineage.count_levels(np.arange(1000.0)) == lineage.MANY_LEVELS


def tiny_fit(callbacks=(), masks_scale=255.0, epochs=2):
    import keras
    x, y = pairs()
    model = recording_model([])
    model.compile(optimizer="adam", loss="binary_crossentropy")
    return model.fit(x, y * masks_scale, batch_size=8, epochs=epochs, validation_data=(x[:8], y[:8]),
                     callbacks=list(callbacks), verbose=0)


def test_autolog_diagnoses_each_fit_and_keeps_it_for_python(capsys):
    import harness
    import harness.doctor
    session = harness.autolog(results=None)
    try:
        tiny_fit(masks_scale=255.0)
        tiny_fit(masks_scale=1.0, epochs=1)
    finally:
        harness.doctor.stop()
    assert [d.index for d in session.fits] == [1, 2]
    assert "targets_outside_loss_domain" in session.fits[0].causes
    assert "targets_outside_loss_domain" not in session.fits[1].causes
    assert session.causes[0] == "targets_outside_loss_domain"
    from harness.health import METRICS, PREFIX       # every health metric measured is documented
    assert {k[len(PREFIX):] for k in session.fits[1].history if k.startswith(PREFIX)} <= set(METRICS)
    found = {f.name: f for f in session.fits[0].findings}["targets_outside_loss_domain"]
    assert found.kind == "cause" and "[0, 255]" in found.evidence and "y = (y > 127.5)" in found.fix
    err = capsys.readouterr().err
    assert "harness doctor: fit #1 at test_doctor.py:" in err and "harness doctor: fit #2" in err


def test_the_explicit_callback_measures_what_it_can_without_recompiling(capsys):
    import harness.doctor
    x, y = pairs()
    callback = harness.doctor.callback(train_sample=(x[:16], 255 * y[:16]), validation_data=(x[:8], y[:8]))
    tiny_fit([callback])
    diagnosis = callback.diagnosis
    assert "targets_outside_loss_domain" in diagnosis.causes
    assert any(note.startswith("the gradients: a callback cannot") for note in diagnosis.not_measured)
    assert len(diagnosis.history["health/update_ratio"]) == 2 and "health/grad_norm" not in diagnosis.history
    assert "harness doctor: fit #1" in capsys.readouterr().err


def test_a_measurement_that_fails_is_one_line_and_training_goes_on(monkeypatch, capsys):
    from harness.doctor import fit

    def broken(self):
        raise RuntimeError("boom")
    monkeypatch.setattr(fit.Examination, "probe_loss", broken)
    lines: list = []
    session = Session(say=lines.append)
    hooks.install(session)
    try:
        history = tiny_fit(masks_scale=1.0)
    finally:
        hooks.uninstall()
    assert len(history.history["loss"]) == 2
    assert "harness doctor: could not measure the loss probe: RuntimeError: boom" in lines
    assert session.fits[0].not_measured[0] == "the loss probe: RuntimeError: boom"


BINARY = lineage.Summary((8, 4, 4, 1), 0.0, 1.0, 2)
GRAY = lineage.Summary((8, 4, 4, 1), 0.0, 1.0, 97)
RGB_BINARY = lineage.Summary((8, 4, 4, 3), 0.0, 1.0, 2)


def whitening(mean: float, std: float, name: str = "m", channels: int = 1, **settings) -> lineage.Record:
    """A generator fitted on binary masks whose statistics are `mean` and `std`."""
    return lineage.Record("ImageDataGenerator", lineage.Site("s.py", 4, f"{name} = ImageDataGenerator()"),
                          {"featurewise_center": True, "featurewise_std_normalization": True, **settings},
                          fitted=[(None, BINARY)], mean=np.full(channels, mean), std=np.full(channels, std))


def test_the_record_whose_statistics_map_the_mask_levels_onto_the_targets_is_the_one():
    found = whitening(0.2, 0.4, "found")
    lo, hi = found.transformed(0.0), found.transformed(1.0)
    later_unfitted = lineage.Record("ImageDataGenerator", None, {"featurewise_center": True})
    assert lineage.target_transformer([found, later_unfitted], (lo, hi)) == (found, "exact")
    # Only both ends match; a record fitted per channel on 2 or more channels is an image standardizer.
    assert lineage.target_transformer([found], (lo, hi + 0.01)) == (None, "")
    assert lineage.target_transformer([found], (lo + 0.01, hi)) == (None, "")
    assert lineage.target_transformer([whitening(0.2, 0.4, channels=2)], (lo, hi)) == (None, "")
    # Flowing binary single-channel data makes a standardizer the likely one; gray or RGB data does not.
    for flowed, likely in ((GRAY, False), (RGB_BINARY, False), (BINARY, True)):
        samplewise = lineage.Record("ImageDataGenerator", None, {"samplewise_center": True}, flowed=[(None, flowed)])
        assert lineage.target_transformer([samplewise], (-0.5, 0.5)) == ((samplewise, "likely") if likely else (None, ""))


def test_ranges_match_within_a_thousandth_relative_or_absolute():
    assert lineage.close(1000.0, 1000.9) and not lineage.close(1000.0, 1001.1)
    assert lineage.close(0.0, 0.0009) and not lineage.close(0.0, 0.0011)


def test_a_records_fitted_levels_channels_and_unknown_statistics():
    record = lineage.Record("Normalization", None, fitted=[(None, BINARY), (None, None)], mean=np.zeros(3))
    assert record.fitted_levels() == (0.0, 1.0) and record.channels() == 3
    assert lineage.Record("Normalization", None).channels() == 0
    assert lineage.Record("Normalization", None, fitted=[(None, GRAY)]).fitted_levels() is None
    assert record.transformed(1.0) is None                          # a mean but no std: not known
    sampled = whitening(0.2, 0.4, samplewise_std_normalization=True)
    assert sampled.transformed(1.0) is None
    assert lineage.Record("Normalization", None, mean=np.array([0.25]), std=np.array([0.5])).transformed(1.0) == 1.5


def test_the_fixes_are_code_with_the_scripts_own_names():
    record = whitening(0.2, 0.4, "mask_gen", rotation_range=30, zoom_range=0.1, rescale=1 / 255)
    assert lineage.constructor_without_standardizing(record) == \
        "mask_gen = ImageDataGenerator(rotation_range=30, zoom_range=0.1)"
    assert lineage.fix_for_targets(record) == (
        "mask_gen = ImageDataGenerator(rotation_range=30, zoom_range=0.1)  # masks are targets: no "
        "featurewise_center / featurewise_std_normalization, and no mask_gen.fit(...)")
    nameless = lineage.Record("ImageDataGenerator", None, {"featurewise_center": True})
    assert lineage.constructor_without_standardizing(nameless) == "mask_datagen = ImageDataGenerator()"
    assert lineage.fix_for_targets(nameless).endswith("and no mask_datagen.fit(...)")
    norm = lineage.Record("Normalization", lineage.Site("s.py", 9, "mask_norm.adapt(y)"))
    assert lineage.fix_for_targets(norm) == ("leave the targets as they are: apply mask_norm to the images only "
                                             "(it was adapted on masks)")
    assert lineage.fix_for_targets(lineage.Record("Normalization", None)).startswith(
        "leave the targets as they are: apply the Normalization layer to")
    assert lineage.fix_for_validation(None) == ("apply the training inputs' transform to the validation inputs "
                                                "before passing validation_data")
    assert lineage.fix_for_validation(norm) == "x_val = mask_norm(x_val)  # the same statistics as training"
    assert lineage.fix_for_validation(lineage.Record("Normalization", None)) == \
        "x_val = image_datagen(x_val)  # the same statistics as training"
    assert lineage.fix_for_validation(record) == ("x_val = mask_gen.standardize(x_val.astype('float32'))  "
                                                  "# the statistics it fitted on the training images")


def test_what_is_the_users_code_and_what_a_record_says_of_itself():
    import os
    import sysconfig
    dirs = lineage.library_dirs()
    assert all(d.endswith(os.sep) for d in dirs) and len(set(dirs)) == len(dirs)
    assert os.path.join(os.path.dirname(os.path.dirname(lineage.__file__)), "") in dirs
    assert {os.path.join(sysconfig.get_paths()[k], "") for k in ("stdlib", "purelib", "scripts")} <= set(dirs)
    # A frozen frame (importlib's) is never the user's line.
    frozen = compile("site = call_site(skip=skip)", "<frozen importlib._bootstrap>", "exec")
    scope = {"call_site": lineage.call_site, "skip": lineage.LIBRARIES + (os.path.dirname(__file__),)}
    exec(frozen, scope)
    # Past it, the outer frames are pytest's (an xdist worker's run through exec as "<string>").
    assert scope["site"] is None or not scope["site"].file.startswith("<frozen")
    assert str(lineage.Summary((2, 4, 4, 1), 0.0, 1.0, 2)) == "shape (2, 4, 4, 1), values [0, 1], 2 levels"
    assert str(lineage.Summary((2,), 0.0, 9.0, lineage.MANY_LEVELS)).endswith("256+ levels")
    record = whitening(0.2, 0.4, "g", rotation_range=30)
    record.flowed.append((lineage.Site("s.py", 7, "g.flow(y)"), BINARY))
    assert record.to_dict() == {
        "kind": "ImageDataGenerator", "name": "g",
        "made": {"file": "s.py", "line": 4, "code": "g = ImageDataGenerator()", "at": "s.py:4"},
        "settings": {"featurewise_center": "True", "featurewise_std_normalization": "True", "rotation_range": "30"},
        "fitted": [{"at": None, "data": "shape (8, 4, 4, 1), values [0, 1], 2 levels"}],
        "flowed": [{"at": {"file": "s.py", "line": 7, "code": "g.flow(y)", "at": "s.py:7"},
                    "data": "shape (8, 4, 4, 1), values [0, 1], 2 levels"}]}
    assert lineage.summarize(np.full((1, 1), 3.0)) == lineage.Summary((1, 1), 3.0, 3.0, 1)
    assert lineage.summarize(np.zeros((0, 2))) is None
    # Levels are counted on the first SUMMARY_SAMPLES samples only: the array can be GBs.
    many = np.zeros((lineage.SUMMARY_SAMPLES + 1, 2))
    many[-1] = 5.0
    assert lineage.summarize(many).levels == 1


def test_a_record_without_sites_or_data_says_so():
    site = lineage.Site("s.py", 3, "g.fit(x)")
    record = lineage.Record("ImageDataGenerator", None, fitted=[(site, None)], flowed=[(None, BINARY)])
    assert record.to_dict()["made"] is None
    assert record.to_dict()["fitted"] == [{"at": site.to_dict(), "data": None}]
    assert record.to_dict()["flowed"] == [{"at": None, "data": str(BINARY)}]


def test_a_model_with_its_own_train_step_or_fit_gets_what_can_be_measured_and_is_told_the_rest():
    import keras

    class OwnStep(keras.Model):
        def train_step(self, data):
            return super().train_step(data)          # applies its gradients through self.optimizer

    class OwnFit(keras.Model):
        def fit(self, x, y, **kwargs):               # never calls Keras' fit
            return self.train_on_batch(x[:8], y[:8])

    def built(cls):
        inputs = keras.Input((SIZE, SIZE, 3))
        model = cls(inputs, keras.layers.Conv2D(1, 1, activation="sigmoid")(inputs))
        model.compile(optimizer="adam", loss="binary_crossentropy")
        return model

    x, y = pairs()
    session = Session(say=lambda _: None)
    hooks.install(session)
    try:
        built(OwnStep).fit(x, y, batch_size=8, epochs=2, validation_data=(x[:8], y[:8]), verbose=0)
        built(OwnFit).fit(x, y)
    finally:
        hooks.uninstall()
    (diagnosis,) = session.fits
    assert diagnosis.history["health/grad_norm"] and all(g > 0 for g in diagnosis.history["health/grad_norm"])
    assert any(n.startswith("the gradients, in part: the model trains through its own train_step")
               for n in diagnosis.not_measured)
    # The OwnFit model was compiled (in built()) but never trained through Keras' fit.
    assert session.never_fitted() == [f"test_doctor.py:{inspect.getsourcelines(built)[1] + 3}"]
