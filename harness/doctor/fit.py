"""One `fit` call of a user's script, examined: its inputs observed as they pass (observe.py), its
optimizer made to measure the gradients (monitor.measure_gradients_of), and callbacks that record each
epoch, probe the compiled loss on the targets fit really received (the preflight), score the honest
metric and measure training health (harness/monitor.py). What it measures goes into a FitRecord;
judge.py turns that into a diagnosis.

The user's training is never changed: the same batches in the same order, the same weights (the health
pass is stateless, the gradient sums are optimizer variables read nowhere else), the same History
(the doctor's numbers go to its own record, not to the epoch's logs). Every step of the instrumenting
is guarded: one that fails becomes one line (`harness doctor: could not measure X: ...`) and the fit
goes on without it.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from harness.doctor.lineage import Site
from harness.doctor.observe import Observed, is_array, observe, observe_arrays

# Losses whose targets are probabilities (Keras' names, as strings, functions or Loss classes).
PROBABILITY_LOSSES = ("binary_crossentropy", "BinaryCrossentropy", "binary_focal_crossentropy",
                      "BinaryFocalCrossentropy", "dice", "Dice", "tversky", "Tversky", "bce")
# Losses defined for any real target.
REAL_LOSSES = ("mean_squared_error", "MeanSquaredError", "mse", "mean_absolute_error", "MeanAbsoluteError",
               "mae", "huber", "Huber", "log_cosh", "LogCosh")
HEAD_RANGES = {"sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0), "linear": None}
SCORING_PIXELS = 2 ** 20       # validation pixels scored each epoch (train.SCORING_PIXELS: 64 images at 128x128)


class Unmeasurable(Exception):
    """Something the doctor cannot measure on this model; the message says what and why."""


@dataclass
class FitRecord:
    """What one fit call received and what was measured while it trained."""
    index: int
    site: Site | None                   # the script's line that called fit
    compiled_at: Site | None = None
    epochs_asked: int = 1
    epochs_allowed: int = 1             # after --epochs
    batch_size: int | None = None
    train: Observed = field(default_factory=lambda: Observed("training"))
    val: Observed | None = None
    head: str | None = None             # the head's activation: sigmoid, tanh, linear
    head_range: tuple | None = None
    loss_name: str = ""
    loss: object = None                 # a harness.losses.Loss: the compiled loss, its domain and declared floor
    domain_note: str = ""               # where the loss's domain came from, when not from a known loss
    measured: object = None             # probe.Measured on the targets fit received
    floor: float = math.nan             # the floor a training batch's loss is judged against
    loss_flags: dict = field(default_factory=dict)
    optimizer: str = ""
    gradients: bool = False             # gradient norms measured
    epochs: list = field(default_factory=list)        # per epoch: Keras' logs and the doctor's own numbers
    diverged_at: tuple | None = None    # (epoch, batch) of the first non-finite batch loss, 1-based
    preflight_seconds: float = math.nan
    error: str = ""                     # what the fit raised, if it did
    notes: list = field(default_factory=list)         # what could not be measured, and why

    def epoch(self, index: int) -> dict:
        while len(self.epochs) <= index:
            self.epochs.append({})
        return self.epochs[index]

    def history(self) -> dict[str, list[float]]:
        keys = list(dict.fromkeys(k for e in self.epochs for k in e))
        return {k: [e.get(k, math.nan) for e in self.epochs] for k in keys}


def head_of(model) -> tuple[str, tuple | None]:
    """The head's activation (sigmoid, tanh or linear) and output range, from the last layer."""
    last = model.layers[-1] if getattr(model, "layers", None) else None
    name = getattr(getattr(last, "activation", None), "__name__", None)
    if name not in HEAD_RANGES:
        raise Unmeasurable(f"the head's activation is {name or 'unknown'}; the loss probe knows sigmoid, tanh "
                           "and linear (logits) heads")
    try:
        channels = model.output_shape[-1]
    except (AttributeError, ValueError, TypeError):
        channels = None
    if channels not in (1, None):
        raise Unmeasurable(f"the head has {channels} channels; the doctor judges one-channel (binary) segmentation")
    return name, HEAD_RANGES[name]


def loss_of(model, head_range) -> tuple[str, object, str]:
    """The compiled loss as a harness Loss (its function, the targets it is defined for and its
    declared floor) -> (name, Loss, where the domain came from when not from a known loss)."""
    import keras
    from harness.losses import Loss
    given = getattr(model, "loss", None)
    if isinstance(given, str):
        fn, name = keras.losses.get(given), given
    elif isinstance(given, keras.losses.Loss):
        fn, name = given, type(given).__name__
    elif callable(given):
        fn, name = given, getattr(given, "__name__", type(given).__name__)
    else:
        raise Unmeasurable("the model was compiled with no loss, or one loss per output")
    known = getattr(fn, "__name__", "") or type(fn).__name__
    note = ""
    if hasattr(fn, "target_range"):
        domain = tuple(float(v) for v in fn.target_range)
    elif name in PROBABILITY_LOSSES or known in PROBABILITY_LOSSES:
        domain = (0.0, 1.0)
    elif name in REAL_LOSSES or known in REAL_LOSSES:
        domain = (-math.inf, math.inf)
    else:
        domain = head_range or (-math.inf, math.inf)
        note = (f"{name} is the script's own loss and declares no target_range: its domain is taken as the head's "
                f"range [{domain[0]:g}, {domain[1]:g}]")
    declared = getattr(fn, "lower_bound", None)
    return name, Loss(name, fn, domain, None if declared is None else float(declared), f"compiled loss {name}"), note


def scored_arrays(observed: Observed | None, batch_size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The validation images and targets scored each epoch: the arrays fit was given, or the batches it
    took, at most SCORING_PIXELS of them (never fewer than a batch)."""
    if observed is None:
        return None
    if observed.arrays is not None:
        x, y = observed.arrays
    elif observed.batches:
        x, y = observed.x(), observed.y()
    else:
        return None
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 4 or y.ndim < 3:
        return None
    most = max(batch_size, SCORING_PIXELS // max(int(np.prod(x.shape[1:3])), 1))
    return np.asarray(x[:most], np.float32), np.asarray(y[:most], np.float32)


def binary_truth(targets: np.ndarray) -> np.ndarray:
    """The binary masks behind targets as fed (whitened, signed or 0/255 alike): above the midpoint of
    their range. Augmentation interpolates between the two levels, never beyond them."""
    lo, hi = float(np.min(targets)), float(np.max(targets))
    return targets > (lo + hi) / 2 if hi > lo else np.zeros(targets.shape, bool)


HOOKS = ("on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end", "on_train_batch_begin",
         "on_train_batch_end")


def guarded_callback(inner, what: str, say, notes: list):
    """`inner` (a Keras callback) behind a guard: its first error becomes one line and a note, and it
    does nothing more; the fit goes on."""
    import keras

    class Guarded(keras.callbacks.Callback):
        async_safe = getattr(inner, "async_safe", False)

        def __init__(self):
            super().__init__()
            self.failed = False

        def set_model(self, model):
            super().set_model(model)
            inner.set_model(model)

        def call(self, hook: str, *args, **kwargs) -> None:
            if self.failed:
                return
            try:
                getattr(inner, hook)(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - never the user's training's failure
                self.failed = True
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                notes.append(f"{what}: {type(e).__name__}: {first}")
                say(f"harness doctor: could not measure {what}: {type(e).__name__}: {first}")

    for hook in HOOKS:
        setattr(Guarded, hook, lambda self, *args, _hook=hook, **kwargs: self.call(_hook, *args, **kwargs))
    return Guarded()


class Examination:
    """The instrumenting of one fit call: `prepare` changes what fit is handed (never what it trains
    on), `callbacks` are added to the script's, `finish` gives back what was changed."""

    def __init__(self, record: FitRecord, say):
        self.record, self.say = record, say
        self.undo: list = []
        self.model = None
        self.preflight_done = False
        self.lock = threading.Lock()

    def guarded(self, what: str, step, *args):
        """Run one instrumenting step; an error becomes a note and a line, and the fit goes on."""
        try:
            return step(*args)
        except Unmeasurable as e:
            self.record.notes.append(f"{what}: {e}")
        except Exception as e:  # noqa: BLE001 - the user's training must never fail because of the doctor
            message = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            self.record.notes.append(f"{what}: {message}")
            self.say(f"harness doctor: could not measure {what}: {message}")
        return None

    def prepare(self, model, arguments: dict, epochs_cap: int) -> None:
        """Change `arguments` (fit's, bound by name) in place: epochs capped, inputs observed, the
        doctor's callbacks added; the model's optimizer made to measure gradients."""
        self.model = model
        record = self.record
        record.epochs_asked = int(arguments.get("epochs") or 1)
        start = int(arguments.get("initial_epoch") or 0)
        record.epochs_allowed = min(record.epochs_asked, start + epochs_cap) if epochs_cap > 0 else record.epochs_asked
        arguments["epochs"] = record.epochs_allowed
        record.batch_size = arguments.get("batch_size")
        self.guarded("the head and the loss", self.read_model, model)
        self.guarded("the training batches", self.observe_training, arguments)
        self.guarded("the validation batches", self.observe_validation, arguments)
        self.guarded("the gradients", self.measure_gradients, model)
        self.guarded("training health", self.add_callbacks, arguments)

    def read_model(self, model) -> None:
        import keras
        record = self.record
        record.optimizer = type(getattr(model, "optimizer", None)).__name__
        if type(model).train_step is not keras.Model.train_step:
            record.notes.append("the gradients, in part: the model trains through its own train_step; they are "
                                "measured only where it applies them through self.optimizer")
        record.head, record.head_range = head_of(model)
        record.loss_name, record.loss, record.domain_note = loss_of(model, record.head_range)

    def observe_training(self, arguments: dict) -> None:
        x, y = arguments.get("x"), arguments.get("y")
        train = self.record.train
        if is_array(x) and y is not None and is_array(y):
            split = float(arguments.get("validation_split") or 0.0)
            if split and arguments.get("validation_data") is None:
                at = int(len(x) * (1.0 - split))          # Keras takes validation from the end
                self.record.val = Observed("validation")
                self.record.val.arrays = (x[at:], y[at:])
                x, y = x[:at], y[:at]
            observe_arrays(x, y, arguments.get("batch_size"), train)
            train.kind = "arrays"
            return
        if x is None:
            raise Unmeasurable("fit was given no training data")
        arguments["x"], undo = observe(x, train)
        train.kind = type(x).__name__
        self.undo.append(undo)

    def observe_validation(self, arguments: dict) -> None:
        given = arguments.get("validation_data")
        if given is None:
            return
        val = self.record.val = Observed("validation")
        if isinstance(given, (tuple, list)) and len(given) >= 2 and is_array(given[0]) and is_array(given[1]):
            val.arrays, val.kind = (given[0], given[1]), "arrays"
            observe_arrays(given[0], given[1], arguments.get("validation_batch_size") or arguments.get("batch_size"), val)
            return
        arguments["validation_data"], undo = observe(given, val)
        val.kind = type(given).__name__
        self.undo.append(undo)

    def measure_gradients(self, model) -> None:
        from harness import monitor
        optimizer = getattr(model, "optimizer", None)
        if optimizer is None:
            raise Unmeasurable("the model has no optimizer (was it compiled?)")
        monitor.measure_gradients_of(optimizer, model)
        self.record.gradients = True

    def add_callbacks(self, arguments: dict) -> None:
        given = arguments.get("callbacks")
        if given is not None and not isinstance(given, (list, tuple)):
            raise Unmeasurable(f"fit's callbacks are a {type(given).__name__}, not a list: none added")
        arguments["callbacks"] = list(given or []) + self.callbacks()

    def callbacks(self) -> list:
        record, model = self.record, self.model
        found = [guarded_callback(self.recorder(), "the epochs", self.say, record.notes)]
        if record.loss is not None:
            from harness import monitor
            optimizer = model.optimizer if record.gradients else None
            health = monitor.health_callback(model, optimizer, record.loss.fn, record.head_range, self.fixed_batch,
                                             async_safe=True, sink=self.keep_health)
            found.insert(0, guarded_callback(health, "training health", self.say, record.notes))
        return found

    def keep_health(self, epoch: int, measured: dict) -> None:
        self.record.epoch(epoch).update(measured)

    def fixed_batch(self):
        """The health pass's fixed batch: the first `health.batch` training samples fit took."""
        from harness.config import DEFAULTS
        if not self.record.train.batches:
            return None
        n = DEFAULTS["health"]["batch"]
        x, y = self.record.train.x()[:n], self.record.train.y()[:n]
        return np.asarray(x, np.float32), np.asarray(y, np.float32), binary_truth(y)

    def recorder(self):
        """The callback that keeps each epoch's logs, the first non-finite batch, runs the preflight
        and scores validation."""
        import keras
        examination = self

        class Recorder(keras.callbacks.Callback):
            # Batch ends may run on Keras' worker threads, out of order: the first non-finite batch
            # is the least (epoch, batch) seen, and all of them are done before the epoch ends.
            async_safe = True

            def on_train_begin(self, logs=None):
                self.epoch = 0
                if examination.record.train.batches:
                    examination.preflight()

            def on_epoch_begin(self, epoch, logs=None):
                self.epoch = epoch

            def on_train_batch_end(self, batch, logs=None):
                loss = (logs or {}).get("loss")
                if loss is not None and not math.isfinite(float(loss)):
                    with examination.lock:
                        here, seen = (self.epoch + 1, batch + 1), examination.record.diverged_at
                        examination.record.diverged_at = here if seen is None else min(seen, here)

            def on_epoch_end(self, epoch, logs=None):
                examination.record.epoch(epoch).update(
                    {k: float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float, np.floating))})
                if not examination.preflight_done:
                    examination.preflight()
                examination.guarded("the validation mIoU", examination.score, epoch)

        return Recorder()

    def preflight(self) -> None:
        """The check's loss measurements on the targets fit received, once: the probe's floor and
        threshold, and the loss's flags (check.loss_findings)."""
        self.preflight_done = True
        self.guarded("the loss probe", self.probe_loss)

    def probe_loss(self) -> None:
        from harness import probe
        from harness.check import loss_findings
        record = self.record
        if record.loss is None:
            return
        targets = record.train.y()
        if targets is None:
            raise Unmeasurable(record.train.note or "no training batch was observed")
        started = time.perf_counter()
        record.batch_size = record.batch_size or len(record.train.batches[0][1])
        lo, hi = float(np.min(targets)), float(np.max(targets))
        if not hi > lo:
            raise Unmeasurable(f"the first training batches' targets all equal {lo:g}")
        levels = {0: lo, 1: hi}
        bounds = record.head_range or (-1.0, 1.0)
        record.measured = measured = probe.measure(record.loss, record.head, levels, (bounds[0] + bounds[1]) / 2)
        sizes = sorted({len(y) for _, y in record.train.batches}, reverse=True)
        pixels = int(np.prod(targets.shape[1:3])) if targets.ndim >= 3 else 1
        record.floor = measured.training_floor(sizes, pixels)
        record.loss_flags = loss_findings(measured, levels, (lo, hi), record.loss.target_range,
                                          record.loss.lower_bound, record.floor)
        record.preflight_seconds = time.perf_counter() - started

    def score(self, epoch: int) -> None:
        """val_iou, val_bg_iou, val_miou, val_dice against the binary truth of the validation targets,
        predictions thresholded at the probe's threshold."""
        from harness import metrics
        from harness.train import predict_binary, scoring_chunk
        record = self.record
        if record.measured is None:
            return
        arrays = scored_arrays(record.val, record.batch_size or 32)
        if arrays is None:
            return
        x, y = arrays
        chunk = scoring_chunk(len(x), int(np.prod(x.shape[1:3])), record.batch_size or 32)
        pred, _ = predict_binary(self.model, x, record.measured.threshold, chunk)
        ious = metrics.confusion_ious(pred, binary_truth(y))
        record.epoch(epoch).update({f"doctor/val_{k}": v for k, v in ious.items()})

    def finish(self) -> None:
        """Give back what prepare changed (a PyDataset's class)."""
        for undo in self.undo:
            self.guarded("the inputs", undo)
