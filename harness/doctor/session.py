"""One doctoring session: the data objects the script made (lineage.py), each fit examined (fit.py) and
diagnosed (judge.py), its diagnosis printed on stderr when the fit ends and kept for Python to read.
`harness.autolog()` starts one inside a script or a notebook; `harness doctor` starts one around a
script it runs (script.py)."""
from __future__ import annotations

import inspect
import sys
import threading
import weakref
from typing import Callable

import numpy as np

from harness.paths import DEFAULT_RESULTS
from harness.causes import union
from harness.doctor import hooks, lineage
from harness.doctor.fit import Examination, FitRecord


def say_on_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Session:
    """`epochs`: every fit capped at this many epochs (0: the script's own). `say`: where lines go.
    `on_diagnosis(diagnosis, record)`: called after each fit's diagnosis is printed (tracking)."""

    def __init__(self, epochs: int = 0, say: Callable[[str], None] = say_on_stderr,
                 on_diagnosis: Callable | None = None):
        self.epochs, self.say, self.on_diagnosis = epochs, say, on_diagnosis
        self.records: list[lineage.Record] = []
        self.objects: dict[int, tuple[object, lineage.Record]] = {}   # id -> (the object, kept alive; its record)
        self.compiled: dict[int, tuple[weakref.ref, lineage.Site | None]] = {}
        self.fitted: set[int] = set()
        self.fits: list = []                  # judge.FitDiagnosis, one per fit, in order
        self.fit_records: list[FitRecord] = []
        self.local = threading.local()

    @property
    def causes(self) -> list[str]:
        """The union of every fit's causes, in the vocabulary's order."""
        joined = union(",".join(d.causes) or "none" for d in self.fits)
        return [] if joined == "none" else joined.split(",")

    def guard(self, method: str, *args) -> None:
        try:
            getattr(self, method)(*args)
        except Exception as e:  # noqa: BLE001 - what the doctor records never breaks the script
            self.say(f"harness doctor: could not record {method.removeprefix('on_').replace('_', ' ')}: "
                     f"{type(e).__name__}: {e}")

    # What the patches (hooks.py) report.
    def record_of(self, obj, kind: str) -> lineage.Record:
        kept = self.objects.get(id(obj))
        if kept is not None and kept[0] is obj:
            return kept[1]
        record = lineage.Record(kind, lineage.call_site())
        self.objects[id(obj)] = (obj, record)
        self.records.append(record)
        return record

    def on_generator_made(self, generator, settings: dict) -> None:
        self.record_of(generator, "ImageDataGenerator").settings = settings

    def on_generator_fit(self, generator, x) -> None:
        record = self.record_of(generator, "ImageDataGenerator")
        record.fitted.append((lineage.call_site(), lineage.summarize(x)))
        if getattr(generator, "mean", None) is not None:
            record.mean = np.asarray(generator.mean, np.float64).ravel()
        if getattr(generator, "std", None) is not None:
            record.std = np.asarray(generator.std, np.float64).ravel()

    def on_generator_flow(self, generator, x, iterator) -> None:
        record = self.record_of(generator, "ImageDataGenerator")
        summary = lineage.summarize(x) if x is not None and not isinstance(x, str) else None
        record.flowed.append((lineage.call_site(), summary))
        if summary is not None and len(record.arrays) < 4:
            record.arrays.append(x)

    def on_adapt(self, layer, data) -> None:
        record = self.record_of(layer, "Normalization")
        if record.made is None:
            record.made = lineage.call_site()
        record.fitted.append((lineage.call_site(), lineage.summarize(data)))
        record.mean = np.asarray(layer.mean, np.float64).ravel()
        record.std = np.sqrt(np.asarray(layer.variance, np.float64).ravel())

    def on_compile(self, model) -> None:
        self.compiled[id(model)] = (weakref.ref(model), lineage.call_site())

    def on_patch_failed(self, module: str, error: Exception) -> None:
        self.say(f"harness doctor: could not instrument {module}: {type(error).__name__}: {error}")

    def on_fit(self, original, model, args: tuple, kwargs: dict):
        """The patched Model.fit: examine this fit, run it, diagnose it. A fit inside a fit (a
        callback's own training) runs as it is."""
        if getattr(self.local, "inside", False):
            return original(model, *args, **kwargs)
        try:
            bound = inspect.signature(original).bind(model, *args, **kwargs)
        except TypeError:
            return original(model, *args, **kwargs)          # Keras says what is wrong, as it would
        # What the script passed, by name (fit's defaults stay Keras' own: passing them explicitly
        # would change nothing but could make Keras warn about what the script never asked).
        arguments = dict(bound.arguments)
        arguments.pop("self", None)
        compiled = self.compiled.get(id(model))
        record = FitRecord(len(self.fit_records) + 1, lineage.call_site(),
                           compiled[1] if compiled and compiled[0]() is model else None)
        self.fit_records.append(record)
        self.fitted.add(id(model))
        examination = Examination(record, self.say)
        given = dict(arguments)
        try:
            examination.prepare(model, arguments, self.epochs)
        except Exception as e:  # noqa: BLE001 - each step is guarded; this is the guard of the guards
            self.say(f"harness doctor: could not instrument fit #{record.index}: {type(e).__name__}: {e}")
            examination.finish()
            arguments = given
        self.local.inside = True
        try:
            return original(model, **arguments)
        except BaseException as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            record.error = f"{type(e).__name__}: {first}".rstrip(": ")
            raise
        finally:
            self.local.inside = False
            examination.finish()
            self.conclude(record)

    def conclude(self, record: FitRecord) -> None:
        """Diagnose a fit that ended (or raised), print its block, hand it to `on_diagnosis`."""
        from harness.doctor.judge import diagnose_fit
        from harness.doctor.output import fit_block
        try:
            diagnosis = diagnose_fit(record, self.records)
        except Exception as e:  # noqa: BLE001
            self.say(f"harness doctor: could not diagnose fit #{record.index}: {type(e).__name__}: {e}")
            return
        self.fits.append(diagnosis)
        self.say(fit_block(diagnosis))
        if self.on_diagnosis is not None:
            try:
                self.on_diagnosis(diagnosis, record)
            except Exception as e:  # noqa: BLE001 - a store that cannot be written costs the run, not the script
                self.say(f"harness doctor: could not track fit #{record.index}: {type(e).__name__}: {e}")

    def never_fitted(self) -> list[str]:
        """The compiled models that no fit trained (a custom training loop, or a fit of their own)."""
        return [str(site) for ref, site in self.compiled.values()
                if ref() is not None and id(ref()) not in self.fitted and site is not None]


def autolog(epochs: int = 0, results=DEFAULT_RESULTS, tracking_uri: str | None = None) -> Session:
    """Diagnose every `model.fit` from here on, in this process: each fit's diagnosis is printed on
    stderr when it ends, and kept in the returned session (`session.fits[-1].causes`,
    `session.fits[-1].findings`, `session.causes`). `epochs`: cap every fit (0: as the script asks).
    `results`: each fit is also an MLflow run in <results>/mlflow.db (None: not tracked), or in
    `tracking_uri`. Call `harness.doctor.stop()` to undo it."""
    from harness.doctor.output import tracker_for
    on_diagnosis = tracker_for(results, tracking_uri, experiment="doctor-" + script_name()) \
        if (results is not None or tracking_uri is not None) else None
    session = Session(epochs=epochs, on_diagnosis=on_diagnosis)
    hooks.install(session)
    return session


def callback(train_sample=None, validation_data=None, say: Callable[[str], None] = say_on_stderr):
    """A Keras callback that diagnoses the fit it is passed to, for a script that prefers to hand one in
    (`model.fit(..., callbacks=[harness.doctor.callback((x[:32], y[:32]), (x_val, y_val))])`) over
    `harness.autolog()`. What it measures without re-compiling: the loss probe on `train_sample`'s
    targets (the batches fit takes are not seen from a callback: without a sample, no data rule
    applies), the honest metric on `validation_data`, and training health but the gradients (the
    compiled optimizer cannot be made to measure them from here). Its diagnosis is printed when the
    fit ends and kept as `.diagnosis`."""
    import keras
    from harness.doctor.observe import Observed, observe_arrays
    session = Session(say=say)
    record = FitRecord(1, lineage.call_site())
    examination = Examination(record, say)
    if train_sample is not None:
        observe_arrays(np.asarray(train_sample[0]), np.asarray(train_sample[1]), None, record.train)
        record.train.arrays, record.train.kind = None, "a sample handed to the callback"
    if validation_data is not None:
        record.val = Observed("validation")
        record.val.arrays, record.val.kind = (np.asarray(validation_data[0]), np.asarray(validation_data[1])), "arrays"

    class DoctorCallback(keras.callbacks.Callback):
        async_safe = True
        diagnosis = None

        def on_train_begin(self, logs=None):
            examination.model = self.model
            record.epochs_asked = record.epochs_allowed = int(self.params.get("epochs") or 1)
            examination.guarded("the head and the loss", examination.read_model, self.model)
            record.gradients = getattr(type(self.model.optimizer), "measures_gradients", False)
            if not record.gradients:
                record.notes.append("the gradients: a callback cannot make the compiled optimizer measure them "
                                    "(harness.autolog() or harness doctor can)")
            self.inner = examination.callbacks()
            for inner in self.inner:
                inner.set_model(self.model)
                inner.set_params(self.params)
            self.forward("on_train_begin", logs)

        def forward(self, hook: str, *args) -> None:
            for inner in getattr(self, "inner", ()):
                getattr(inner, hook)(*args)

        def on_epoch_begin(self, epoch, logs=None):
            self.forward("on_epoch_begin", epoch, logs)

        def on_train_batch_end(self, batch, logs=None):
            self.forward("on_train_batch_end", batch, logs)

        def on_epoch_end(self, epoch, logs=None):
            self.forward("on_epoch_end", epoch, logs)

        def on_train_end(self, logs=None):
            self.forward("on_train_end", logs)
            session.conclude(record)
            self.diagnosis = session.fits[-1] if session.fits else None

    return DoctorCallback()


def stop() -> None:
    """Undo autolog: Keras and the data objects as they were."""
    hooks.uninstall()


def script_name() -> str:
    """The running script's name (a notebook: "notebook")."""
    import os
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    return os.path.splitext(os.path.basename(path))[0] if path else "notebook"
