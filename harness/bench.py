"""`harness bench`: speed and memory as ratios measured in one run, contenders alternated.

Figures: pipeline_speedup (harness tf.data pipeline vs the case's zipped ImageDataGenerators),
pipeline_headroom (a pipeline's images/s over the bare training images/s on the same device, for the
host tf.data pipeline and for device augmentation: below 1 the pipeline starves the model),
train_vs_handwritten (one harness training run vs the loop a user would write for the same variant:
the same feed, Keras' own validation once per epoch, nothing tracked), train_vs_bound (the same run vs
a bare model.fit on in-memory tensors; both references train in the harness run's process, an epoch
each after each of its epochs, and the figures are the median epoch pair's ratio), tracking_overhead
(one point of the experiment at its own size called directly, plus what a sweep through Optuna +
MLflow adds to it, measured inside the sweep, over the direct point; with the two whole points' ratio
beside it, and where the point's time went),
health_overhead (one point at the experiment's own size with its per-epoch health measurements vs
without them), sweep_vs_bound (a real sweep's wall time vs the bare fits of its points), peak_memory (a real sweep's
peak RSS), imagedatagenerator_vs_tfdata_epoch (the case's feed against tf.data, each in a sweep of
its own, training running), plus what mixed precision and XLA give on this device.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from harness import environment
from harness.backend import backend_name
from harness.config import Config, load_config

TARGETS = {"pipeline_speedup": ">= 10", "pipeline_headroom": ">= 2", "train_vs_handwritten": ">= 0.97",
           "train_vs_bound": ">= 0.85 on the CPU, >= 0.9 on a GPU",
           "tracking_overhead": "<= 1.05", "health_overhead": "<= 1.03", "peak_memory_gib": "< 4 on the CPU",
           "doctor_overhead": "<= 1.05", "imagedatagenerator_vs_tfdata_epoch": "<= 1.2"}


def bench_config(quick: bool, experiment: Path, overrides: list[str] = ()) -> Config:
    """The default experiment, shrunk for --quick; full size otherwise (128x128x3, depth 16)."""
    if quick:
        # 4 epochs for the options figure's fits: at 2 (14 steps, under a second) one scheduling hiccup
        # moved a ratio by 0.2.
        sets = ["data.n_images=128", "data.image_size=48", "train.epochs=4", "train.seeds=[1]", "train.batch_size=16"]
    else:
        sets = ["data.n_images=640", "data.image_size=128", "model.start_depth=16", "train.epochs=3",
                "train.seeds=[1]", "train.batch_size=32", "model.bn_momentum=0.99"]
    return load_config(experiment, sets + ['variants=["image_only"]'] + list(overrides))


def bench_rounds(quick: bool) -> dict[str, int]:
    """Alternated rounds per figure, and the train figure's timed epochs per run; HARNESS_BENCH_REPS
    sets the rounds (the tests: 1, with 2 timed epochs). The quick tracking figure takes the most
    rounds: its ratio is what its target judges. The train figure's epochs are interleaved
    (interleaved_epochs), so each run gives as many timed pairs as it has epochs: 3 runs of 20."""
    reps = environment.bench_reps()
    if reps is not None:
        return {**dict.fromkeys(("pipeline", "train", "tracking", "health", "doctor", "feeds"), reps), "train_epochs": 2,
                "doctor_epochs": 3}
    return {"pipeline": 3, "train": 3, "train_epochs": 20, "tracking": 5, "health": 3, "doctor": 3,
            "doctor_epochs": 8, "feeds": 2} if quick else \
        {"pipeline": 5, "train": 3, "train_epochs": 6, "tracking": 3, "health": 3, "doctor": 3, "doctor_epochs": 8,
         "feeds": 3}


def median_rates(contenders: dict[str, Callable[[], int]], reps: int) -> dict[str, float]:
    """Items per second, median over `reps` alternating runs, after one warm-up run of each."""
    for fn in contenders.values():
        fn()
    times = {name: [] for name in contenders}
    for _ in range(reps):
        for name, fn in contenders.items():
            start = time.perf_counter()
            items = fn()
            times[name].append(items / (time.perf_counter() - start))
    return {name: statistics.median(v) for name, v in times.items()}


def in_turn(items: list, rep: int) -> list:
    """`items` in rotating order, reversed every other round: on a 2-core machine whose speed drifts
    by a quarter within minutes, whatever runs second in every round would ride the drift."""
    return list(items) if rep % 2 == 0 else list(reversed(items))


def point_seconds(runs: list[tuple[float, list[float]]]) -> float:
    """A point's seconds from several runs of it, each (wall seconds, its epochs' seconds): the part
    outside its later epochs (preparing, the first epoch that traces, what comes after fit), median
    over the runs, plus its later epochs at the median of all of them. On a shared 2-core machine a
    run's wall time moved by 10 % from one run to the next; a slow stretch moves one epoch's time,
    and the median over every run's epochs does not follow it."""
    fixed = statistics.median(wall - sum(epochs[1:]) for wall, epochs in runs)
    later = [e for _, epochs in runs for e in epochs[1:]]
    return fixed + statistics.median(later) * (len(runs[0][1]) - 1) if later else fixed


def pipeline_figure(cfg: Config, dataset, reps: int) -> dict:
    from harness.backend import backend_name
    from harness.feeds.choose import fit_transform
    aug, bs = cfg["augment"], cfg["train"]["batch_size"]
    transform = fit_transform(dataset, "featurewise", "featurewise", aug, seed=1)
    n = len(dataset.train_images)
    device_epoch = device_augment_epoch(cfg, dataset, transform)
    if backend_name() != "tensorflow":
        # tf.data and the ImageDataGenerator pair need TensorFlow: device augmentation alone.
        rates = median_rates({"device_augment": device_epoch}, reps)
        return {"pipeline_images_per_s": rates, "pipeline_images": n}
    from harness.feeds.tfdata import train_pipeline
    ours = train_pipeline(dataset, transform, aug, bs, seed=1)
    ours_parallel = train_pipeline(dataset, transform, aug, bs, seed=1, parallel=True)

    def harness_epoch() -> int:
        return sum(int(x.shape[0]) for x, _ in ours)

    def harness_parallel_epoch() -> int:
        return sum(int(x.shape[0]) for x, _ in ours_parallel)

    steps = -(-n // bs)                         # batches per epoch, as fit would take them
    gens = legacy_pair(dataset, aug, bs)

    def case_epoch() -> int:
        count = 0
        for _ in range(steps):
            x, _ = next(gens)
            count += len(x)
        return count

    rates = median_rates({"harness": harness_epoch, "harness_parallel_augment": harness_parallel_epoch,
                          "imagedatagenerator": case_epoch, "device_augment": device_epoch}, reps)
    return {"pipeline_speedup": rates["harness"] / rates["imagedatagenerator"],
            "pipeline_speedup_parallel_augment": rates["harness_parallel_augment"] / rates["imagedatagenerator"],
            "pipeline_speedup_device_augment": rates["device_augment"] / rates["imagedatagenerator"],
            "pipeline_images_per_s": rates, "pipeline_images": n}


def device_augment_epoch(cfg: Config, dataset, transform) -> Callable[[], int]:
    """One epoch of device augmentation alone (harness/feeds/device.py: gather, affine maps, transform), in
    a compiled function on the training device, as the train step runs it. Each batch returns one
    number per sample (a sum over image and mask), so nothing is left out and little is copied back."""
    import keras
    from keras import ops
    from harness.feeds.device import DeviceFeed

    class Augmented(keras.layers.Layer):
        def __init__(self, feed):
            super().__init__(dtype="float32")
            self.feed = feed

        def call(self, indices):
            images, masks = self.feed(indices, training=True)      # augment as fit would
            return ops.sum(images, axis=(1, 2, 3)) + ops.sum(masks, axis=(1, 2, 3))

    images, masks, bs = dataset.train_images, dataset.train_masks, cfg["train"]["batch_size"]
    feed = DeviceFeed(cfg["augment"], images.shape[1], transform, 1, images, masks)
    indices = keras.Input((), dtype="int32")
    model = keras.Model(indices, Augmented(feed)(indices))
    order = np.random.default_rng(1).permutation(len(images)).astype(np.int32)

    def epoch() -> int:
        for i in range(0, len(order), bs):
            np.asarray(model.predict_on_batch(order[i:i + bs]))
        return len(order)

    return epoch


def legacy_pair(dataset, aug, bs):
    """The case's zipped pair for the `seed` variant, fitted as the case fits it."""
    from harness.feeds.imagedatagenerator import legacy_generator
    rounds = aug["stats_rounds"]
    image_gen, mask_gen = legacy_generator(aug, True), legacy_generator(aug, True)
    image_gen.fit(dataset.train_images, augment=rounds > 0, rounds=max(rounds, 1), seed=1)
    mask_gen.fit(dataset.train_masks, augment=rounds > 0, rounds=max(rounds, 1), seed=1)
    return zip(image_gen.flow(dataset.train_images, batch_size=bs, seed=1),
               mask_gen.flow(dataset.train_masks, batch_size=bs, seed=1))


def bare_fit_seconds(cfg: Config, dataset, epochs: int, warm_up: bool = True, mixed_precision: bool = False,
                     **compile_kw) -> float:
    """The upper bound: the same model on pre-computed in-memory tensors, no augmentation, no callbacks."""
    from harness.backend import start_clean_session
    start_clean_session(1, cfg["train"]["deterministic"], mixed_precision)
    fit = bare_fit(cfg, dataset, **compile_kw)
    if warm_up:
        fit(1, ())
    start = time.perf_counter()
    fit(epochs, ())
    return time.perf_counter() - start


def bare_fit(cfg: Config, dataset, **compile_kw) -> Callable[[int, list], object]:
    """fit(epochs, callbacks) of the bound's model, built and compiled in the session running."""
    import keras
    from harness.transforms import featurewise_stats, standardize
    from harness.models import build_model
    x = standardize(dataset.train_images, featurewise_stats(dataset.train_images)).astype(np.float32)
    model = build_model(cfg, x.shape[1:], "sigmoid")
    model.compile(optimizer=keras.optimizers.Adam(cfg["train"]["learning_rate"]), loss="binary_crossentropy",
                  **compile_kw)
    return lambda epochs, callbacks: model.fit(x, dataset.train_masks, batch_size=cfg["train"]["batch_size"],
                                               epochs=epochs, callbacks=list(callbacks) or None, verbose=0)


def handwritten_fit(cfg: Config, dataset, fit_call=None) -> Callable[[int, list], object]:
    """fit(epochs, callbacks) of the loop a user would write for the same variant: the same feed (its
    statistics pass, augmentation and transform), model and loss, Keras' own validation_data once per
    epoch; no probe, no IoU scoring, no health measurements, no callbacks of the harness.
    `fit_call(model, **arguments)` calls fit (default: model.fit; the doctor figure: through the doctor)."""
    fit_call = fit_call or (lambda model, **arguments: model.fit(**arguments))
    import keras
    from harness.feeds.choose import choose_feed, validation_arrays
    from harness.losses import get_head, get_loss
    from harness.models import build_model
    variant, batch_size = cfg.variants[0], cfg["train"]["batch_size"]
    feed = choose_feed(cfg, dataset, variant, 1)
    head, loss = get_head(variant.head), get_loss(variant.loss, cfg.source_dir)
    val_x, val_y = validation_arrays(dataset, feed.transform, variant.validation)
    model = build_model(cfg, dataset.train_images.shape[1:], head.activation)
    trained, fit_args = feed.fit_inputs(model, batch_size)
    trained.compile(optimizer=keras.optimizers.Adam(cfg["train"]["learning_rate"]), loss=loss.fn)
    if trained is model:
        validation = {"validation_data": (val_x, val_y), "validation_batch_size": batch_size}
        return lambda epochs, callbacks: fit_call(trained, **fit_args, epochs=epochs, callbacks=list(callbacks),
                                                  verbose=0, **validation)
    model.compile(loss=loss.fn)           # the device feed's wrapper takes indices: validate the model

    class Validate(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            model.evaluate(val_x, val_y, batch_size=batch_size, verbose=0)
    return lambda epochs, callbacks: fit_call(trained, **fit_args, epochs=epochs, callbacks=[Validate(), *callbacks],
                                              verbose=0)


class Stopped(Exception):
    """Ends a reference's fit() where the harness run ended first."""


class Turns:
    """A reference's fit() in a thread of its own, one epoch each time the harness run (the main
    thread) hands it the turn and waits: the two never run at once. Its epochs are timed from
    on_epoch_begin to on_epoch_end (validation included) inside one fit() call, as a user's loop
    runs them, so no per-call set-up of fit() is counted."""

    def __init__(self, fit: Callable[[int, list], object], epochs: int):
        import keras
        self.go, self.done = threading.Semaphore(0), threading.Semaphore(0)
        self.stopping, self.error, self.seconds = False, None, []
        self.waiting = threading.Event()       # set once fit() has set up and waits for its first turn
        turns = self

        class Turn(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                turns.waiting.set()
                turns.go.acquire()
                if turns.stopping:
                    raise Stopped
                self.started = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                turns.seconds.append(time.perf_counter() - self.started)
                turns.done.release()

        def run():
            try:
                fit(epochs, [Turn()])
            except Stopped:
                pass
            except BaseException as e:  # noqa: BLE001 - raised in the main thread, at its next turn
                self.error = e
            finally:
                self.waiting.set()
                self.done.release()      # a reference that ended never leaves the harness run waiting
        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def epoch(self) -> None:
        self.go.release()
        self.done.acquire()
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self.stopping = True
        self.go.release()
        self.thread.join()


def interleaved_epochs(cfg: Config, dataset, epochs: int) -> dict[str, list[float]]:
    """Seconds per epoch of one harness training run and of the two references (the hand-written loop,
    the bare fit), taken in turn epoch by epoch in one process: after each of the harness's epochs, one
    epoch of each reference, in alternating order. A stretch of a slow machine then falls on the three
    alike. The references are built in the harness run's session, after its first epoch; every
    contender's first epoch (tracing its steps) is left out."""
    from harness.train import train_variant
    references: dict[str, Turns] = {}
    harness: list[float] = []
    resumed = [time.perf_counter()]

    def turn(epoch: int, logs: dict) -> None:
        harness.append(time.perf_counter() - resumed[0])
        if not references:
            references["handwritten"] = Turns(handwritten_fit(cfg, dataset), epochs)
            references["bare_fit"] = Turns(bare_fit(cfg, dataset), epochs)
        for reference in in_turn(list(references.values()), epoch):
            reference.epoch()
        resumed[0] = time.perf_counter()

    try:
        train_variant(cfg.with_overrides({"train.epochs": epochs}), cfg.variants[0], 1, dataset, on_epoch=turn)
    finally:
        for reference in references.values():
            reference.close()
    return {"harness": harness[1:], **{name: r.seconds[1:] for name, r in references.items()}}


def train_figure(cfg: Config, dataset, reps: int, epochs: int) -> dict:
    """Images per second of a harness training run, the hand-written loop and the bare fit, their
    epochs interleaved (interleaved_epochs), over `reps` runs of `epochs` + 1 epochs. The ratios are
    the median over epochs of each epoch pair's ratio (the reference's epoch over the harness epoch
    just before it): on a 2-core machine whose speed moved by half within a minute, three separate
    runs' medians put 0.78 to 1.14 on the same two loops (median epoch seconds, 4 rounds of 16 epochs)."""
    n = len(dataset.train_images)
    runs = [interleaved_epochs(cfg, dataset, epochs + 1) for _ in range(reps)]
    seconds = {name: [s for run in runs for s in run[name]] for name in runs[0]}

    paired = {name: [r / h for run in runs for h, r in zip(run["harness"], run[name])]
              for name in ("handwritten", "bare_fit")}
    rate = {name: n / statistics.median(s) for name, s in seconds.items()}
    quartiles = {name: [float(q) for q in np.percentile(ratios, [25, 75])] for name, ratios in paired.items()}
    return {"train_vs_handwritten": statistics.median(paired["handwritten"]),
            "train_vs_bound": statistics.median(paired["bare_fit"]),
            "train_ratio_quartiles": quartiles, "train_ratio_pairs": paired, "train_images_per_s": rate,
            "train_epochs_timed": len(seconds["harness"])}


def options_figure(cfg: Config, dataset, epochs: int) -> dict:
    """What XLA and mixed precision give for the bare fit on this device (ratios to the default)."""
    from harness.backend import set_precision
    # Keras turns XLA off while op determinism is on: compare both without it.
    cfg = cfg.with_overrides({"train.deterministic": False})
    base = bare_fit_seconds(cfg, dataset, epochs)
    out = {"jit_compile": base / bare_fit_seconds(cfg, dataset, epochs, jit_compile=True)}
    # The session sets the policy as it starts: mixed precision is asked of it (until 2026-12-07 it
    # was set before, and the session's start put float32 back: the figure compared float32 twice).
    try:
        out["mixed_precision"] = base / bare_fit_seconds(cfg, dataset, epochs, mixed_precision=True)
    finally:
        set_precision(False)
    return {"option_speedups": out}


def point_config(experiment: Path, overrides: list[str] = ()) -> Config:
    """One point of the experiment at its own size (the default: 15 epochs of 307 images): image_only,
    seed 1."""
    return load_config(experiment, list(overrides) + ['variants=["image_only"]', "train.seeds=[1]"])


def timed_point(cfg: Config, dataset, timings: dict | None = None) -> tuple[float, list[float]]:
    """(wall seconds, seconds per epoch) of one train_variant call: the point trained directly;
    `timings` gets the run's own (RunResult.timings)."""
    from harness.train import train_variant
    ends: list[float] = []
    start = time.perf_counter()
    result = train_variant(cfg, cfg.variants[0], 1, dataset, on_epoch=lambda *_: ends.append(time.perf_counter()))
    wall = time.perf_counter() - start
    if timings is not None:
        timings.update(result.timings, epochs_run=result.epochs_run)
    return wall, list(np.diff([start] + ends))


def timed_tracked_point(cfg: Config, dataset, own: list | None = None) -> tuple[float, list[float]]:
    """(wall seconds, seconds per epoch) of the same point through a sweep (Optuna, MLflow, figures)
    into a results folder of its own whose two stores exist already: creating them is a one-time
    cost of a results folder, timed apart (tracking_figure). The epochs are the run's own
    `epoch_seconds`, read back from its MLflow run. `own` gets the sweep's own seconds: its wall time
    less its training's (PointOutcome.training_seconds), both from this one run."""
    from harness.sweep import run_sweep
    from harness.tracking import default_tracking_uri, load_runs
    with tempfile.TemporaryDirectory() as tmp:
        create_stores(cfg, Path(tmp))
        start = time.perf_counter()
        (outcome,) = run_sweep(cfg, Path(tmp), log=lambda _: None, run_check=False, dataset=dataset)
        wall = time.perf_counter() - start
        runs = load_runs(default_tracking_uri(Path(tmp)), cfg.name)
        if own is not None:
            own.append(wall - outcome.training_seconds)
        return wall, list(runs.iloc[0]["history"]["epoch_seconds"])


def create_stores(cfg: Config, results: Path) -> None:
    """A results folder's Optuna study and MLflow experiment, as a sweep's first run creates them."""
    from harness.grid import default_storage, open_study
    from harness.tracking import Tracker, default_tracking_uri
    open_study(cfg, default_storage(results))
    Tracker(default_tracking_uri(results), cfg.name, results)


def store_creation_seconds(cfg: Config) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        create_stores(cfg, Path(tmp))
        return time.perf_counter() - start


def tracking_figure(experiment: Path, overrides: list[str] = (), reps: int = 3) -> dict:
    """One point of the experiment at its own size through a sweep (Optuna + MLflow, figures)
    against the same training called directly, alternated `reps` times; where the point's time went
    (the timings of the last direct run).

    tracking_overhead is the direct point (point_seconds) plus the sweep's own seconds, measured in
    each tracked run as its wall time less its training's (median over the rounds), over the direct
    point. The two sides' whole points, each by point_seconds, give tracking_overhead_end_to_end,
    reported beside it: the same training on both sides, nearly all of a point, moved by more than the 5 %
    budget from one run of the bench to the next on 2 cores (1.05 to 1.11 on the same code), so the
    whole points' ratio could not tell the sweep's half second from the machine's drift."""
    from harness.data import load_dataset
    cfg = point_config(experiment, overrides)
    dataset = load_dataset(cfg["data"])
    timed_point(cfg, dataset)                      # warm-up: the process's first training is slower
    runs: dict[str, list] = {"direct": [], "tracked": []}
    own: list[float] = []
    t: dict = {}
    sides = [("direct", lambda: timed_point(cfg, dataset, t)),
             ("tracked", lambda: timed_tracked_point(cfg, dataset, own))]
    for rep in range(reps):
        for label, run in in_turn(sides, rep):
            runs[label].append(run())
    bare, sweep_own = point_seconds(runs["direct"]), statistics.median(own)
    later_share = 1 - 1 / t["epochs_run"]
    breakdown = {"prepare (session, statistics pass, probe, model)": t["prepare"],
                 "first epoch (tracing the train step, scoring included)": t["first_epoch"],
                 "training, later epochs": t["fit"] - t["first_epoch"] - t["scoring"] * later_share,
                 "scoring (IoU/Dice passes, every epoch)": t["scoring"] * later_share,
                 "tracking and figures (the sweep's own)": sweep_own}
    end_to_end = point_seconds(runs["tracked"])
    return {"tracking_overhead": (bare + sweep_own) / bare, "tracking_fixed_seconds_per_point": sweep_own,
            "tracking_overhead_end_to_end": end_to_end / bare,
            "tracking_seconds": {"with": bare + sweep_own, "without": bare, "sweep_own_per_round": own,
                                 "end_to_end_with": end_to_end, "store_creation_once": store_creation_seconds(cfg),
                                 "rounds": reps},
            "tracking_point": f"{cfg.name}: {len(dataset.train_images)} training images, "
                              f"{cfg['train']['epochs']} epochs, {cfg['data']['image_size']}px",
            "point_breakdown_seconds": breakdown}


def health_figure(experiment: Path, overrides: list[str] = (), reps: int = 3) -> dict:
    """One point of the experiment at its own size trained with its health measurements
    (harness/monitor.py) against the same point without them, alternated `reps` times, each side's
    seconds by point_seconds."""
    from harness.data import load_dataset
    measured = point_config(experiment, overrides)
    plain = measured.with_overrides({"health.measure": False})
    dataset = load_dataset(measured["data"])
    runs: dict[str, list] = {"with": [], "without": []}
    for rep in range(reps):
        for label, cfg in in_turn([("without", plain), ("with", measured)], rep):
            runs[label].append(timed_point(cfg, dataset))
    with_, without = point_seconds(runs["with"]), point_seconds(runs["without"])
    return {"health_overhead": with_ / without, "health_seconds": {
        "with": with_, "without": without, "per_epoch": (with_ - without) / measured["train"]["epochs"], "rounds": reps}}


def doctor_figure(experiment: Path, overrides: list[str] = (), reps: int = 3, epochs: int = 8) -> dict:
    """doctor_overhead: the loop a user writes for the default point (handwritten_fit: its feed, model,
    loss and validation_data) fitted with `harness doctor`'s instrumentation and without it, both in
    threads of their own whose epochs are taken in turn (Turns) in one session, `reps` times; the
    median over epoch pairs of (the doctored epoch / the plain one), each contender's first epoch
    (tracing) left out. The doctor's callbacks run before the script's, so its epoch-end work (health,
    scoring) falls inside the doctored epoch. Its preflight (the loss probe, once per fit) is reported
    apart, in seconds, from a doctored fit of one epoch run alone before the rounds: measured while
    the other contender waits at its first epoch, the same probe took 8.5 s instead of 1 s (its eager
    ops competed with the waiting fit's input pipeline), which no user's single fit pays."""
    import keras
    from harness.backend import start_clean_session
    from harness.data import load_dataset
    from harness.doctor.session import Session
    cfg = point_config(experiment, overrides)
    dataset = load_dataset(cfg["data"])
    ratios: list[float] = []
    seconds: dict[str, list[float]] = {"with": [], "without": []}
    start_clean_session(1, cfg["train"]["deterministic"])
    alone = Session(say=lambda _: None)
    handwritten_fit(cfg, dataset, lambda model, **arguments: alone.on_fit(keras.Model.fit, model, (), arguments))(1, [])
    preflight = [r.preflight_seconds for r in alone.fit_records]
    for rep in range(reps):
        start_clean_session(1, cfg["train"]["deterministic"])
        session = Session(say=lambda _: None)
        doctored = handwritten_fit(cfg, dataset, lambda model, **arguments: session.on_fit(
            keras.Model.fit, model, (), arguments))
        # One set-up at a time, and none while the other trains: the preflight (the first epoch's
        # end, where the batches are known only once fit takes them) is timed alone.
        contenders = {"with": Turns(doctored, epochs)}
        contenders["with"].waiting.wait()
        contenders["without"] = Turns(handwritten_fit(cfg, dataset), epochs)
        contenders["without"].waiting.wait()
        try:
            for epoch in range(epochs):
                for _, turns in in_turn(list(contenders.items()), epoch + rep):
                    turns.epoch()
        finally:
            for turns in contenders.values():
                turns.close()
        run = {label: turns.seconds[1:] for label, turns in contenders.items()}
        ratios += [w / wo for w, wo in zip(run["with"], run["without"])]
        for label in seconds:
            seconds[label] += run[label]
    return {"doctor_overhead": statistics.median(ratios),
            "doctor_overhead_quartiles": [float(q) for q in np.percentile(ratios, [25, 75])],
            "doctor_overhead_pairs": ratios,
            "doctor_point": f"{cfg.name}: {len(dataset.train_images)} training images, {cfg['data']['image_size']}px, "
                            f"batch {cfg['train']['batch_size']}",
            "doctor_epochs_timed": len(ratios), "doctor_preflight_seconds": statistics.median(preflight),
            "doctor_seconds_per_epoch": {label: statistics.median(s) for label, s in seconds.items()}}


def child_sweep(experiment: Path, results: str, sets: list[str], n_jobs: int = 1) -> None:
    """A real `harness sweep` in a child process, into `results`."""
    subprocess.run([sys.executable, "-m", "harness.cli", "sweep", str(experiment), "--results", results,
                    "--n-jobs", str(n_jobs), *sets], check=True, capture_output=True,
                   env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))


def timed_sweep(experiment: Path, sets: list[str], n_jobs: int = 1) -> float:
    """Wall seconds of a real `harness sweep` in a child process, in a fresh results folder."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        child_sweep(experiment, tmp, sets, n_jobs)
        return time.perf_counter() - start


def point_epoch_seconds(experiment: Path, sets: list[str]) -> float:
    """A real `harness sweep` of one point in a child process (a process of its own, so a setting one
    feed leaves behind reaches no other): its fit's seconds per epoch, from the report's runs.csv
    (the fit's wall time over its epochs: the first epoch's trace and fit's return included)."""
    import pandas as pd
    with tempfile.TemporaryDirectory() as tmp:
        child_sweep(experiment, tmp, sets)
        (runs,) = Path(tmp).glob("*/runs.csv")
        return float(pd.read_csv(runs)["seconds_per_epoch"].iloc[0])


def feeds_figure(experiment: Path, overrides: list[str] = (), reps: int = 1) -> dict:
    """The case's feed (the zipped ImageDataGenerators) against tf.data with training running: one
    point of the experiment at its own size swept on each feed, in turn, `reps` times; the figure is the
    median of each turn's ratio of seconds per epoch (point_epoch_seconds)."""
    sets = [arg for o in list(overrides) + ['variants=["image_only"]', "train.seeds=[1]"] for arg in ("--set", o)]
    feeds = {"tfdata": [], "imagedatagenerator": []}
    for rep in range(reps):
        for feed in in_turn(list(feeds), rep):
            feeds[feed].append(point_epoch_seconds(experiment, sets + ["--set", f'pipeline="{feed}"']))
    ratios = [g / t for g, t in zip(feeds["imagedatagenerator"], feeds["tfdata"])]
    return {"imagedatagenerator_vs_tfdata_epoch": statistics.median(ratios), "feeds_ratios": ratios,
            "feeds_seconds_per_epoch": feeds}


def memory_and_jobs_figure(experiment: Path, quick: bool, overrides: list[str] = ()) -> dict:
    """Peak resident memory of a real `harness sweep` of the default experiment, then the same sweep
    with --n-jobs 2 against it (wall-time ratio: what a second worker process gives on this device)."""
    # --quick: 1 epoch, 1 seed, 2 variants (2 points, so a second worker has one to take).
    sets = ["--set", "train.epochs=1", "--set", "train.seeds=[1]", "--set", 'variants=["seed","image_only"]'] if quick else []
    sets += [arg for o in overrides for arg in ("--set", o)]
    one = timed_sweep(experiment, sets)
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss     # the largest child so far
    two = timed_sweep(experiment, sets, n_jobs=2)
    bound = sweep_bound_seconds(experiment, [s for s in sets if s != "--set"])
    return {"peak_memory_gib": peak_kib / 2 ** 20, "sweep_vs_bound": bound / one,
            "sweep_seconds": {"sweep": one, "bare_fits_of_its_points": bound},
            "peak_memory_sweep": "default experiment" + (", 1 epoch, 1 seed, 2 variants (--quick)" if quick else ""),
            "n_jobs_seconds": {"1": one, "2": two}, "n_jobs_2_speedup": one / two}


def sweep_bound_seconds(experiment: Path, overrides: list[str]) -> float:
    """What the points of a sweep cost at the least: each point's bare fit (in-memory tensors, no
    augmentation, no scoring, no tracking) over all its epochs, its first epoch (tracing) included."""
    from harness.data import load_dataset
    cfg = load_config(experiment, overrides)
    dataset = load_dataset(cfg["data"])
    points = len(cfg.variants) * len(cfg.seeds)
    # Unwarmed, as a sweep's point starts: its first epoch traces the train step, as each point's does.
    return points * bare_fit_seconds(cfg, dataset, cfg["train"]["epochs"], warm_up=False)


def machine() -> dict:
    from harness.sweep import versions
    from harness.backend import select_device
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "device": select_device(),
            "backend": backend_name(), **versions()}


STAGES = ("pipeline", "train", "tracking", "health", "doctor", "options", "memory")


def run_bench(experiment: Path, results: Path, quick: bool, command: str, log=print,
              overrides: list[str] = (), sweep_quick: bool | None = None, name: str = "bench",
              only: tuple[str, ...] = ()) -> dict:
    """Every figure (or the stages in `only`), written to <results>/bench/<name>.json and .md.
    `sweep_quick` shrinks only the child sweeps (memory, --n-jobs) where the rest runs at full size."""
    from harness.data import load_dataset
    cfg = bench_config(quick, experiment, overrides)
    dataset = load_dataset(cfg["data"])
    rounds = bench_rounds(quick)
    figures: dict = {}
    stage_seconds: dict = {}
    for stage, measure in (("pipeline", lambda: pipeline_figure(cfg, dataset, rounds["pipeline"])),
                          ("train", lambda: train_figure(cfg, dataset, rounds["train"], rounds["train_epochs"])),
                          ("tracking", lambda: tracking_figure(experiment, overrides, rounds["tracking"])),
                          ("health", lambda: health_figure(experiment, overrides, rounds["health"])),
                          ("doctor", lambda: doctor_figure(experiment, overrides, rounds["doctor"], rounds["doctor_epochs"])),
                          ("options", lambda: options_figure(cfg, dataset, cfg["train"]["epochs"])),
                          ("feeds", lambda: feeds_figure(experiment, overrides, rounds["feeds"])),
                          ("memory and --n-jobs", lambda: memory_and_jobs_figure(
                              experiment, quick if sweep_quick is None else sweep_quick, overrides))):
        if only and stage.split()[0] not in only:
            continue
        started = time.perf_counter()
        figures.update(measure())
        stage_seconds[stage] = time.perf_counter() - started
        if stage == "train" and "pipeline_images_per_s" in figures:     # --only train: no pipeline rate
            figures["pipeline_headroom"] = headroom(figures)
        log(f"bench: {stage} measured in {stage_seconds[stage]:.0f}s")
    figures["per_backend"] = {backend_name(): backend_figures(figures)}
    for other in other_backends() if not only or {"pipeline", "train"} <= set(only) else ():
        started, stage = time.perf_counter(), f"pipeline and train under {other}"
        figures["per_backend"][other] = figures_under(other, experiment, quick, overrides)
        stage_seconds[stage] = time.perf_counter() - started
        log(f"bench: {stage} measured in {stage_seconds[stage]:.0f}s")
    out = {"command": command, "quick": quick, "machine": machine(), "data": dataset.description,
           "model": {"image_size": cfg["data"]["image_size"], "start_depth": cfg["model"]["start_depth"],
                     "batch_size": cfg["train"]["batch_size"]},
           "figures": figures, "targets": TARGETS, "stage_seconds": stage_seconds}
    folder = results / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(out, indent=1, default=float) + "\n")
    (folder / f"{name}.md").write_text(render(out))
    return out


def backend_figures(figures: dict) -> dict:
    keys = ("pipeline_headroom", "pipeline_images_per_s", "train_images_per_s", "train_vs_handwritten",
            "train_vs_bound", "train_ratio_quartiles", "train_epochs_timed")
    return {k: figures[k] for k in keys if k in figures}


def other_backends() -> list[str]:
    """Keras backends installed besides the one running (JAX where this runs under TensorFlow);
    HARNESS_BENCH_BACKENDS=current measures this one alone."""
    import importlib.util
    if environment.text(environment.BENCH_BACKENDS) == "current":
        return []
    return [name for name in ("jax",) if name != backend_name() and importlib.util.find_spec(name)]


def figures_under(backend: str, experiment: Path, quick: bool, overrides: list[str]) -> dict:
    """The pipeline and train figures measured under another Keras backend, in a child process
    (KERAS_BACKEND is read once per process)."""
    cmd = [sys.executable, "-m", "harness.bench", "pipeline-and-train", str(experiment), "1" if quick else "0",
           *overrides]
    done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, KERAS_BACKEND=backend,
                                                                       TF_CPP_MIN_LOG_LEVEL="3"))
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["exited with %d" % done.returncode])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def pipeline_and_train(experiment: Path, quick: bool, overrides: list[str]) -> dict:
    from harness.data import load_dataset
    cfg = bench_config(quick, experiment, overrides)
    dataset = load_dataset(cfg["data"])
    rounds = bench_rounds(quick)
    figures = {**pipeline_figure(cfg, dataset, rounds["pipeline"]),
               **train_figure(cfg, dataset, rounds["train"], rounds["train_epochs"])}
    figures["pipeline_headroom"] = headroom(figures)
    return {"device": machine()["device"], **backend_figures(figures)}


def headroom(figures: dict) -> dict:
    """Each pipeline's images/s over the bare fit's training images/s, both on this device."""
    bare = figures["train_images_per_s"]["bare_fit"]
    rates = figures["pipeline_images_per_s"]
    names = {"harness": "tfdata", "device_augment": "device_augment"}
    return {label: rates[key] / bare for key, label in names.items() if key in rates}


def figure_lines(out: dict) -> list[str]:
    f = out["figures"]
    if "pipeline_headroom" not in f:          # --only, without the pipeline and train stages
        return [line for line in common_lines(f) if line]
    lines = ["pipeline_headroom: " + ", ".join(f"{k} {v:.2f}" for k, v in f["pipeline_headroom"].items())
             + f" (target {TARGETS['pipeline_headroom']}; pipeline images/s over bare training images/s, "
             f"{out['machine']['device']})"]
    for name, other in f.get("per_backend", {}).items():
        if name != out["machine"].get("backend", name) and "pipeline_headroom" in other:
            lines.append(f"pipeline_headroom under {name}: " + ", ".join(
                f"{k} {v:.2f}" for k, v in other["pipeline_headroom"].items()) + f" ({other['device']})")
        elif "error" in other:
            lines.append(f"pipeline_headroom under {name}: not measured ({other['error']})")
    if "pipeline_speedup" not in f:       # not TensorFlow: no host pipelines to compare
        return lines + common_lines(f)
    return lines + [f"pipeline_speedup: {f['pipeline_speedup']:.2f} (target {TARGETS['pipeline_speedup']}); "
                    f"device augmentation {f['pipeline_speedup_device_augment']:.2f}"] + common_lines(f) + [
            f"parallel_augment_pipeline_speedup: {f['pipeline_speedup_parallel_augment']:.2f} over ImageDataGenerator, "
            f"{f['pipeline_speedup_parallel_augment'] / f['pipeline_speedup']:.2f}x the default pipeline "
            "(speed.parallel_augment; on when > 1)"]


def common_lines(f: dict) -> list[str]:
    """A line per figure that was measured (all of them, unless --only)."""
    lines = []
    if "train_vs_handwritten" in f:
        q = f["train_ratio_quartiles"]
        pairs = f"median of {f['train_epochs_timed']} epoch pairs, taken in turn"
        lines += [f"train_vs_handwritten: {f['train_vs_handwritten']:.3f} (target {TARGETS['train_vs_handwritten']}; "
                  f"{pairs}; quartiles {q['handwritten'][0]:.3f} to {q['handwritten'][1]:.3f})",
                  f"train_vs_bound: {f['train_vs_bound']:.3f} (target {TARGETS['train_vs_bound']}; {pairs}; "
                  f"quartiles {q['bare_fit'][0]:.3f} to {q['bare_fit'][1]:.3f})"]
    if "tracking_overhead" in f:
        lines.append(f"tracking_overhead: {f['tracking_overhead']:.3f} (target {TARGETS['tracking_overhead']}; one point, "
                     f"{f['tracking_point']}; {f['tracking_fixed_seconds_per_point']:.2f} s more per point, measured in "
                     f"the tracked runs; whole points end to end {f['tracking_overhead_end_to_end']:.3f})")
    if "health_overhead" in f:
        lines.append(f"health_overhead: {f['health_overhead']:.3f} (target {TARGETS['health_overhead']}; the same point "
                     f"with and without its health measurements, {f['health_seconds']['per_epoch']:.2f} s per epoch)")
    if "doctor_overhead" in f:
        q = f["doctor_overhead_quartiles"]
        lines.append(f"doctor_overhead: {f['doctor_overhead']:.3f} (target {TARGETS['doctor_overhead']}; the default "
                     f"point's fit ({f['doctor_point']}) with and without harness doctor, median of "
                     f"{f['doctor_epochs_timed']} epoch pairs "
                     f"taken in turn, quartiles {q[0]:.3f} to {q[1]:.3f}; its preflight, once per fit, "
                     f"{f['doctor_preflight_seconds']:.2f} s)")
    if "sweep_vs_bound" in f:
        lines += [f"sweep_vs_bound: {f['sweep_vs_bound']:.3f} (a real sweep's wall time against its points' bare fits)",
                  f"peak_memory: {f['peak_memory_gib']:.2f} GiB (target {TARGETS['peak_memory_gib']})"]
    if "option_speedups" in f:
        lines += [f"jit_compile_speedup: {f['option_speedups']['jit_compile']:.2f} (on when > 1)",
                  f"mixed_precision_speedup: {f['option_speedups']['mixed_precision']:.2f} (on when > 1)"]
    if "imagedatagenerator_vs_tfdata_epoch" in f:
        seconds = {k: statistics.median(v) for k, v in f["feeds_seconds_per_epoch"].items()}
        lines.append(f"imagedatagenerator_vs_tfdata_epoch: {f['imagedatagenerator_vs_tfdata_epoch']:.2f} (target "
                     f"{TARGETS['imagedatagenerator_vs_tfdata_epoch']}; one point swept on each feed in turn, "
                     f"{len(f['feeds_ratios'])} turns, ratios {min(f['feeds_ratios']):.2f} to {max(f['feeds_ratios']):.2f}; "
                     f"{seconds['imagedatagenerator']:.2f} s against {seconds['tfdata']:.2f} s per epoch)")
    if "n_jobs_2_speedup" in f:
        lines.append(f"n_jobs_2_speedup: {f['n_jobs_2_speedup']:.2f} (--n-jobs 2 over 1 for the same sweep; use when > 1)")
    return lines


def render(out: dict) -> str:
    m = out["machine"]
    lines = ["# harness bench", "", f"Produced by `{out['command']}`.", "",
             f"Machine: {m['platform']}, {m['cpus']} CPUs, device {m['device']}; TensorFlow "
             f"{m['version.tensorflow']}, Keras {m['version.keras']}, Optuna {m['version.optuna']}, "
             f"MLflow {m['version.mlflow']}, commit {m['git_commit']}.", "",
             f"Data of the pipeline, train and options stages: {out['data']}; model {out['model']}.", "",
             "## Figures", ""]
    lines += [f"- {line}" for line in figure_lines(out)]
    breakdown = out["figures"].get("point_breakdown_seconds", {})
    if breakdown:
        total = sum(breakdown.values())
        lines += ["", f"## Where one point's time goes ({out['figures']['tracking_point']})", "",
                  "| stage | seconds | share |", "|---|---|---|"]
        lines += [f"| {stage} | {s:.1f} | {s / total:.0%} |" for stage, s in breakdown.items()]
    lines += ["", "## Raw measurements", "", "```json", json.dumps(out["figures"], indent=1, default=float), "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    # The child of figures_under: `python -m harness.bench pipeline-and-train EXPERIMENT QUICK [SET ...]`.
    if sys.argv[1:2] == ["pipeline-and-train"]:
        print(json.dumps(pipeline_and_train(Path(sys.argv[2]), sys.argv[3] == "1", sys.argv[4:]), default=float))
