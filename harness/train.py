"""Train and evaluate one (variant, seed) -> a plain RunResult. No Optuna, no MLflow in here."""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import keras
import numpy as np

from harness import backend
from harness import compiled, metrics, monitor, probe
from harness.config import Config, Variant
from harness.data import Dataset
from harness.errors import interrupts_deferred, stop_if_interrupted
from harness.feeds.choose import choose_feed, validation_arrays
from harness.losses import get_head, get_loss

N_SAMPLES = 4  # validation images kept for the prediction-sample figure


@dataclass
class RunResult:
    history: dict[str, list[float]]          # per-epoch: loss, val_loss, val_iou, val_miou, ...
    diverged_at: tuple[int, int] | None      # (epoch, batch) of the first NaN/Inf loss, 1-based epoch
    device: str
    seconds: float
    epochs_run: int
    loss_floor: float                        # measured (harness/probe.py): the verdicts compare with it
    loss_floor_declared: float | None        # what the loss declares, a cross-check
    threshold: float                         # measured: prediction >= threshold is foreground
    trivial_miou: float
    stats: dict[str, list[float]]
    samples: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    model: object = field(repr=False, default=None)   # the trained keras.Model (sweep --save-models)
    deterministic: bool = False              # whether the run was deterministic (harness/backend.py)
    feed: str = "tfdata"                     # how batches reached the model: "tfdata", "imagedatagenerator",
    #                                          "device augment" (data on the device) or "device augment, streamed"
    # Where the run's wall time went, in seconds: "prepare" (session, feed and its statistics pass,
    # probe, model), "fit" (Keras' fit, scoring included), "scoring" (the per-epoch IoU/Dice passes),
    # "first_epoch" (its first epoch, which also traces the train step). `harness bench` reads them.
    timings: dict[str, float] = field(default_factory=dict)


# Scoring runs the whole validation input through the model in one call where it fits this many
# pixels (2**20: 455 images at 48x48, 64 at 128x128): one dispatch per epoch instead of one per
# training batch, and no padded images. Larger inputs go in equal chunks, so one shape is traced.
SCORING_PIXELS = 2 ** 20


def scoring_chunk(n: int, pixels_per_image: int, batch_size: int) -> int:
    """Images per forward pass when scoring `n` images: all of them where they fit SCORING_PIXELS
    (never fewer than a training batch), else ceil(n / chunks) for the fewest chunks that fit, so
    every chunk has one size and the last is padded by fewer images than there are chunks."""
    most = max(batch_size, SCORING_PIXELS // max(pixels_per_image, 1))
    chunks = -(-n // most)
    return max(-(-n // max(chunks, 1)), 1)


def predict_binary(model, images: np.ndarray, threshold: float, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """(pred >= threshold, pred) for every image, in chunks of `chunk` images through one traced
    function: a short last chunk is padded with copies of its last image, dropped after (a chunk of
    its own shape would be traced again, at the first epoch's end of every run). model.predict
    would build a new tf.data pipeline on every call, which costs more than the forward pass on a
    small validation set."""
    chunks = []
    for start in range(0, len(images), chunk):
        part = images[start:start + chunk]
        n = len(part)
        if n < chunk:
            part = np.concatenate([part, np.repeat(part[-1:], chunk - n, axis=0)])
        chunks.append(np.asarray(model.predict_on_batch(part), np.float32)[:n])
    pred = np.concatenate(chunks)
    return pred >= threshold, pred


def validation_loss(loss_fn, targets: np.ndarray, pred: np.ndarray) -> float:
    """The training loss on the validation set, as the variant feeds it (mean over images)."""
    value = loss_fn(keras.ops.convert_to_tensor(targets, "float32"),
                    keras.ops.convert_to_tensor(np.asarray(pred, np.float32)))
    return float(keras.ops.mean(value))


class StopOnNonFinite(keras.callbacks.Callback):
    """Stops the fit at the first non-finite batch loss and keeps where: `where` = (epoch, batch),
    1-based, or None. `on_batch(epoch, batch, loss)`: a per-batch listener (a live progress line)."""

    def __init__(self, on_batch: Callable[[int, int, float], None] | None = None):
        super().__init__()
        # Without a per-batch listener, Keras hands each batch's end to worker threads (async_safe),
        # so the training loop never waits for a loss to reach the host; they may finish out of
        # order, and are all done before the epoch ends. A Ctrl-C raised there reaches the training
        # loop at its next batch: Keras raises a finished worker's exception.
        self.async_safe = on_batch is None
        self.on_batch = on_batch
        self.epoch, self.where = 0, None
        self.lock = threading.Lock()

    def set_model(self, model):
        super().set_model(model)
        # Kept apart from `self.model`: under JAX that property syncs the training state into the
        # model's variables, and from a worker thread it raced the next train step, which had
        # donated those buffers: the fit then read deleted arrays after the stop ("Array has been
        # deleted"), and a diverging run crashed instead of being judged diverged.
        self.trained = model

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        stop_if_interrupted()
        loss = (logs or {}).get("loss")
        if self.on_batch is not None:
            self.on_batch(self.epoch + 1, batch + 1, loss)
        if loss is not None and not math.isfinite(float(loss)):
            with self.lock:           # the first non-finite batch, whichever worker sees it first
                here = (self.epoch + 1, batch + 1)
                self.where = here if self.where is None else min(self.where, here)
            self.trained.stop_training = True


@dataclass
class Validation:
    """What the scoring compares each epoch: the validation inputs as the variant feeds them ("val")
    and, where they differ, transformed like training ("val_as_train"); the binary truth; the targets
    and loss of the variant's validation loss; the threshold that makes a prediction foreground."""
    inputs: dict[str, np.ndarray]
    truth: np.ndarray
    targets: np.ndarray
    loss_fn: Callable
    threshold: float
    batch_size: int


class SegmentationMetrics(keras.callbacks.Callback):
    """val_iou, val_bg_iou, val_miou, val_dice on the validation inputs as the variant feeds them,
    and val_as_train_* with the inputs transformed like training, where the two differ. Once the
    loss went non-finite the weights are NaN: nothing is scored (NaN), never their predictions.
    Keeps the last epoch's raw predictions (`last_pred`, for the sample figure) and its own time
    (`seconds`); hands each epoch's logs to `on_epoch(epoch, metrics)`."""

    def __init__(self, scored_model, validation: Validation, stop: StopOnNonFinite,
                 on_epoch: Callable[[int, dict], None] | None = None):
        super().__init__()
        # The inner model: under device augmentation the fitted model (self.model) is the index-fed wrapper.
        self.scored_model, self.validation, self.stop, self.on_epoch = scored_model, validation, stop, on_epoch
        self.last_pred, self.seconds = None, 0.0

    def on_epoch_end(self, epoch, logs=None):
        stop_if_interrupted()            # before scoring: validation is a long stretch
        logs = logs if logs is not None else {}
        if self.stop.where is not None:
            for prefix in self.validation.inputs:
                logs.update({f"{prefix}_{key}": math.nan for key in ("iou", "bg_iou", "miou", "dice")})
            logs["val_loss"] = math.nan
        else:
            started = time.perf_counter()
            logs.update(self.scores())
            self.seconds += time.perf_counter() - started
        if self.on_epoch is not None:
            self.on_epoch(epoch + 1, {k: float(v) for k, v in logs.items()})

    def scores(self) -> dict[str, float]:
        v, out = self.validation, {}
        for prefix, images in v.inputs.items():
            chunk = scoring_chunk(len(images), int(np.prod(images.shape[1:3])), v.batch_size)
            pred, raw = predict_binary(self.scored_model, images, v.threshold, chunk)
            for key, value in metrics.confusion_ious(pred, v.truth).items():
                out[f"{prefix}_{key}"] = value
            if prefix == "val":
                self.last_pred = raw          # the sample figure reuses the last epoch's
                # From the same forward pass: Keras' own validation would run the model twice.
                out["val_loss"] = validation_loss(v.loss_fn, v.targets, raw)
        return out


class FirstEpochClock(keras.callbacks.Callback):
    """Times the first epoch (tracing the train step included), scoring included: last in the list."""
    seconds = math.nan

    def on_train_begin(self, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            self.seconds = time.perf_counter() - self.started


def train_variant(cfg: Config, variant: Variant, seed: int, dataset: Dataset,
                  on_epoch: Callable[[int, dict], None] | None = None, verbose: int = 0,
                  on_batch: Callable[[int, int, float], None] | None = None,
                  log: Callable[[str], None] | None = None) -> RunResult:
    """Fit the experiment's model for one variant and seed; a NaN/Inf loss ends the run, not the caller."""
    deterministic = cfg["train"]["deterministic"]
    with interrupts_deferred():       # Ctrl-C stops training at its next batch (harness/errors.py)
        try:
            return fit_variant(cfg, variant, seed, dataset, deterministic, on_epoch, verbose, on_batch, log)
        except Exception as e:  # noqa: BLE001 - only TensorFlow's determinism refusal is handled
            if not (deterministic and backend.is_determinism_error(e)):
                raise
        # TensorFlow on a GPU: an op without a deterministic kernel refused to run (at the first step,
        # before any epoch was reported). The point trains without op determinism, and says so.
        if log is not None:
            log(f"[{variant.name} seed={seed}] note: no deterministic kernel for an op on this device; "
                "training without op determinism")
        return fit_variant(cfg, variant, seed, dataset, False, on_epoch, verbose, on_batch, log)


def health_monitor(settings: dict, model, optimizer, loss, head, transform, dataset: Dataset,
                   async_safe: bool = False, cache: dict | None = None):
    """The per-epoch health measurements (harness/monitor.py): the training steps' gradients through
    `optimizer` (a measuring one), the forward statistics on the first `health.batch` training
    images, transformed as training feeds them, not augmented: the same batch every epoch."""
    n = settings["batch"]
    images, targets = transform.apply(dataset.train_images[:n], dataset.train_masks[:n])
    return monitor.health_callback(model, optimizer, loss.fn, head.output_range, np.asarray(images, np.float32),
                           np.asarray(targets, np.float32), dataset.train_masks[:n] > 0.5, async_safe, cache)


def training_floor(measured: probe.Measured, loss, dataset: Dataset, batch_size: int) -> float:
    """The floor a training batch's loss is judged against: the measured one, scaled to the batch
    sizes of an epoch and the image where the loss sums (harness/probe.py); where none was
    measurable, the declared one, else 0."""
    if math.isnan(measured.floor):
        return loss.lower_bound or 0.0
    return measured.epoch_floor(dataset.train_images, batch_size)


@dataclass
class Compiled:
    """A point's model ready to fit: `model` (the Keras model it trains and scores), `trained` (what
    fit() trains: the model, or the feed's index-fed wrapper), `fit_args` (fit's data arguments), its
    optimizer, the loss the train step uses, and the health pass's kept pieces (or None)."""
    model: object
    trained: object
    fit_args: dict
    optimizer: object
    loss: object
    health_cache: dict | None


def compiled_model(cfg: Config, variant: Variant, dataset: Dataset, feed, fresh, loss, deterministic: bool) -> Compiled:
    """`fresh`: this point's model as built, its weights drawn from the seed. Where the last point
    compiled the same graph (the variant's previous seed, or a variant with the same head and loss),
    that model is reused with `fresh`'s values: its train step is not traced again (harness/compiled.py)."""
    train_cfg, speed = cfg["train"], cfg["speed"]
    reuse = compiled.reusable(cfg["model"]["builder"], variant.loss)
    key = compiled.key_of(cfg.raw, variant.head, variant.loss, dataset.train_images.shape[1:], feed.name,
                          deterministic, backend.backend_name())
    kept = compiled.take(key, fresh) if reuse else None
    model = kept.model if kept else fresh
    trained, fit_args = feed.fit_inputs(model, train_cfg["batch_size"])
    if kept:
        return Compiled(model, trained, fit_args, kept.optimizer, kept.loss, kept.extras)
    # JAX runs a train step op by op unless it is jitted: XLA is how JAX runs at all (its CPU
    # results are deterministic either way), so speed.jit_compile only decides for TensorFlow.
    jit = speed["jit_compile"] or backend.backend_name() == "jax"
    optimizer = (monitor.measuring_optimizer(keras.optimizers.Adam, model, learning_rate=train_cfg["learning_rate"])
                 if cfg["health"]["measure"] else keras.optimizers.Adam(train_cfg["learning_rate"]))
    trained.compile(optimizer=optimizer, loss=loss.fn, jit_compile=jit)
    # Keras builds the optimizer at the first train step. Under TensorFlow that is inside the step's
    # trace, and a tf.function that creates variables is traced twice. Built here, eagerly, the
    # step is traced once: the same zero moments, the same numbers. Measured on the default point's
    # model, a first 2-epoch fit went from 8.0 s to 4.2 s.
    optimizer.build(trained.trainable_variables)
    # Kept only where fit() trains the model itself: a device feed's wrapper holds this seed's data.
    if reuse and trained is model:
        return Compiled(model, trained, fit_args, optimizer, loss, compiled.keep(key, model, optimizer, loss).extras)
    return Compiled(model, trained, fit_args, optimizer, loss, None)


def fit_variant(cfg: Config, variant: Variant, seed: int, dataset: Dataset, deterministic: bool,
                on_epoch, verbose: int, on_batch, log) -> RunResult:
    from harness.models import build_model

    prepare_started = time.perf_counter()
    device = backend.select_device()
    deterministic = backend.start_clean_session(seed, deterministic, cfg["speed"]["mixed_precision"])
    head, loss = get_head(variant.head), get_loss(variant.loss, cfg.source_dir)
    # The statistics pass and, for tf.data and the generator pair, the pipeline: before the model is
    # built, as the random draws have always come (harness/feeds/).
    feed = choose_feed(cfg, dataset, variant, seed)
    stop_if_interrupted()            # the statistics pass can take a while: a safe point after it
    val_x, val_y, eval_inputs = validation_inputs(dataset, feed.transform, variant.validation)
    # The floor the verdicts compare with and the threshold that scores predictions, measured on
    # this variant's own targets (harness/probe.py, the same numbers as `harness check`).
    measured = probe.measure(loss, head.activation, feed.transform.levels(), head.threshold)
    fresh = build_model(cfg, dataset.train_images.shape[1:], head.activation)
    point = compiled_model(cfg, variant, dataset, feed, fresh, loss, deterministic)
    if feed.name == "device augment, streamed" and log is not None:
        log(f"[{variant.name} seed={seed}] note: the training arrays are too large for the device; "
            "host batches are streamed to it and augmented there")
    validation = Validation(eval_inputs, dataset.val_masks > 0.5, val_y, point.loss.fn, measured.threshold,
                            cfg["train"]["batch_size"])
    stop = StopOnNonFinite(on_batch)
    scoring = SegmentationMetrics(point.model, validation, stop, on_epoch)
    # Before the scoring: its epoch end hands the health/ metrics on with the scores.
    health = ([health_monitor(cfg["health"], point.model, point.optimizer, point.loss, head, feed.transform,
                              dataset, async_safe=on_batch is None, cache=point.health_cache)]
              if cfg["health"]["measure"] else [])
    first_epoch = FirstEpochClock()          # last: its epoch end comes after the scoring

    stop_if_interrupted()
    started = time.perf_counter()
    try:
        fit = point.trained.fit(**point.fit_args, epochs=cfg["train"]["epochs"],
                                callbacks=[stop, *health, scoring, first_epoch], verbose=verbose)
    except BaseException:
        compiled.forget()            # a fit that raised leaves its model in a state nobody checked
        raise
    seconds = time.perf_counter() - started
    timings = {"prepare": started - prepare_started, "fit": seconds, "scoring": scoring.seconds,
               "first_epoch": first_epoch.seconds}
    # A Ctrl-C during the last batches, or one that ended fit() as if the data ran out.
    stop_if_interrupted()

    history = {k: [float(v) for v in vs] for k, vs in fit.history.items()}
    return RunResult(history=history, diverged_at=stop.where, device=device, seconds=seconds,
                     epochs_run=len(history.get("loss", [])),
                     # NaN: not measurable (the loss is NaN at every probe point); -inf: no floor.
                     loss_floor=training_floor(measured, point.loss, dataset, cfg["train"]["batch_size"]),
                     loss_floor_declared=point.loss.lower_bound, threshold=measured.threshold,
                     trivial_miou=metrics.trivial_miou(dataset.val_masks), stats=transform_stats(feed.transform),
                     samples=prediction_samples(point.model, dataset, eval_inputs["val"], scoring.last_pred,
                                                measured.threshold),
                     deterministic=bool(deterministic), feed=feed.name, model=point.model, timings=timings)


def validation_inputs(dataset: Dataset, transform, validation: str):
    """-> (validation images and targets as the variant feeds them, the inputs scored each epoch:
    "val", and "val_as_train" (transformed like training) where the variant feeds validation raw)."""
    val_x, val_y = validation_arrays(dataset, transform, validation)
    inputs = {"val": val_x}
    if validation == "raw":
        inputs["val_as_train"] = validation_arrays(dataset, transform, "like_training")[0]
    return val_x, val_y, inputs


def prediction_samples(model, dataset: Dataset, val_inputs: np.ndarray, last_pred, threshold: float) -> dict:
    """The first N_SAMPLES validation images, their truth and the last epoch's predictions (predicted
    now where no epoch was scored), for the prediction-sample figure."""
    if last_pred is None:
        _, last_pred = predict_binary(model, val_inputs[:N_SAMPLES], threshold, N_SAMPLES)
    return {"images": dataset.val_images[:N_SAMPLES], "truth": dataset.val_masks[:N_SAMPLES],
            "prediction": last_pred[:N_SAMPLES], "threshold": np.float32(threshold)}


def transform_stats(transform) -> dict[str, list[float]]:
    """The featurewise statistics the run's transform used (what the masks were whitened with, in the case)."""
    return {"image_mean": transform.image_stats.mean.tolist(), "image_std": transform.image_stats.std.tolist(),
            "mask_mean": transform.mask_stats.mean.tolist(), "mask_std": transform.mask_stats.std.tolist()}
