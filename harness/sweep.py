"""The sweep: train every grid point not finished yet, one MLflow run each under the sweep's parent
run, judge it, and tell the study (harness/grid.py) how it went. `--n-jobs` workers each run this loop."""
from __future__ import annotations

import contextlib
import math
import platform
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from harness import grid
from harness.config import Config, Variant
from harness.points import grid_points
from harness.progress import Progress
from harness.runs import TrackedRun, check_tags, flags_of
from harness.tracking import EXPERIMENT_TAG, Tracker, default_tracking_uri, first_line


@dataclass
class PointOutcome:
    variant: str
    seed: int
    verdict: str
    seconds: float
    # The train_variant call less the sweep's own per-epoch work (its MLflow write, the progress
    # line): the same training a user calls directly. harness bench: what the sweep adds is the
    # sweep's wall time less this, measured in the same run as the training it adds to.
    training_seconds: float = math.nan


def run_sweep(cfg: Config, results: Path, storage: str | None = None, tracking_uri: str | None = None,
              command: str = "", log: Callable[[str], None] = print, run_check: bool = True,
              dataset=None, sweep_id: str | None = None, system_metrics: bool = False,
              save_models: bool = False, worker: int | None = None) -> list[PointOutcome]:
    """Train every (variant, seed) point not finished yet; return what this call trained. Workers
    of one `--n-jobs` sweep share its `sweep_id`: a point that crashed is tried once in it.
    `system_metrics`: MLflow's system metrics for each point's run; `save_models`: each point's
    trained model as a `model.keras` artifact of its run."""
    from harness.data import load_dataset

    results.mkdir(parents=True, exist_ok=True)
    storage = storage or grid.default_storage(results)
    tracking_uri = tracking_uri or default_tracking_uri(results)
    from harness.check import check_experiment, predicted_verdict
    from harness.losses import get_loss
    from harness.models import load_model_builder

    for variant in cfg.variants:                            # unknown or broken losses fail first
        get_loss(variant.loss, cfg.source_dir)
    load_model_builder(cfg)
    dataset = dataset or load_dataset(cfg["data"])          # bad data fails before any trial
    study = grid.open_study(cfg, storage)
    tracker = Tracker(tracking_uri, cfg.name, results, system_metrics=system_metrics)
    stale_trials = grid.fail_stale_trials(study)         # of any grid: their workers died
    if stale_trials:
        log(f"{stale_trials} running trial(s) without a heartbeat for {grid.GRACE_S:.0f}s marked FAILED: their worker died")
    stale_runs = fail_orphaned_runs(study, tracker)
    sweep_id = sweep_id or uuid.uuid4().hex[:12]
    points = grid_points(cfg)
    missing = grid.enqueue_missing(study, points, sweep_id)
    log(f"{cfg.name}: {len(points)} grid points, {len(points) - len(missing)} already finished, "
        f"{len(missing)} to train" + (f" ({stale_runs} interrupted run(s) marked FAILED)" if stale_runs else ""))
    log(f"data: {dataset.description}, fingerprint {dataset.fingerprint}; split {dataset.split}")
    progress = Progress(total=len(points), done=len(points) - len(missing))
    log = with_progress_cleared(log, progress, f"[worker {worker}] " if worker else "")
    checks = {}
    rows = check_experiment(cfg, dataset) if run_check else []
    if rows:
        validation = rows[0].validation
        log(f"check validation: {validation['measured']}"
            + (f"; validation_near_training (fix: {validation['fix']})" if validation["flagged"] else "; no flag"))
    for row in rows:
        checks[row.variant] = check_tags(row.flags, predicted_verdict(row.flags), row.details, row.validation)
        log(f"check {row.variant}: predicted {predicted_verdict(row.flags)}; flags: {', '.join(row.flags) or 'none'}")
    # A --n-jobs worker reopens its parent's run, whose command its parent recorded.
    open_parent_run(study, tracker, cfg, storage, command, record_command=worker is None)
    tracker.use_dataset(cfg["data"], dataset.fingerprint, dataset.description)
    # A --n-jobs worker leaves the parent run to the process that started the workers.
    owns_parent = worker is None
    outcomes, status = [], "KILLED"      # stays KILLED unless the loop ends normally
    figures = ThreadPoolExecutor(max_workers=1, thread_name_prefix="figures")
    try:
        while True:
            trial = grid.next_trial(study, points, sweep_id, log=log,
                               on_stale=lambda: fail_orphaned_runs(study, tracker))
            if trial is None:
                break
            variant, seed = points[grid.point_of(trial)]
            progress.set_done(len(grid.point_states(study)[0] & set(points)))
            # Stamped from the claim to `tell`: judging and the MLflow writes can be slow too, and a
            # trial gone silent is failed and retrained by another worker.
            with grid.Heartbeat(trial):
                outcomes.append(run_point(cfg, study, trial, variant, seed, dataset, tracker, log,
                                          checks.get(variant.name, {}), progress, figures, save_models))
        status = "FINISHED"
    finally:
        figures.shutdown(wait=True)
        progress.clear()
        if owns_parent:
            tracker.end_sweep(status)
    return outcomes


def open_parent_run(study, tracker: Tracker, cfg: Config, storage: str, command: str,
                    record_command: bool = True) -> str:
    """The sweep's MLflow parent run: one per study, reopened on resume."""
    parent = tracker.start_sweep(grid.parent_run_id(study),
                                 params={"study": grid.study_name(study), "storage": storage, "command": command},
                                 tags={EXPERIMENT_TAG: cfg.name}, record_command=record_command)
    grid.keep_parent_run_id(study, parent)
    tracker.log_config(parent, cfg.raw)
    return parent


@contextlib.contextmanager
def workers_parent_run(cfg: Config, results: Path, storage: str | None, tracking_uri: str | None, command: str):
    """For --n-jobs: open the study and the parent run before the workers start (so they all share
    one), and close it once they are done. Yields a dict: set "failed" to True when a worker died,
    and the parent run ends FAILED instead of FINISHED; "interrupted", and it ends KILLED."""
    storage = storage or grid.default_storage(results)
    study = grid.open_study(cfg, storage)
    tracker = Tracker(tracking_uri or default_tracking_uri(results), cfg.name, results)
    open_parent_run(study, tracker, cfg, storage, command)
    status, outcome = "KILLED", {"failed": False, "interrupted": False}
    try:
        yield outcome
        status = "FAILED" if outcome["failed"] else "KILLED" if outcome["interrupted"] else "FINISHED"
    finally:
        tracker.end_sweep(status)


def with_progress_cleared(log: Callable[[str], None], progress: Progress, prefix: str = "") -> Callable[[str], None]:
    """Log lines wipe the live progress line first, so the two never share a terminal line."""

    def logged(message: str) -> None:
        progress.clear()
        log(prefix + message)
    return logged


def run_point(cfg, study, trial, variant, seed, dataset, tracker: Tracker, log, check_tags: dict,
              progress: Progress | None = None, figures=None, save_models: bool = False) -> PointOutcome:
    from harness import plots
    from harness.train import train_variant

    label = f"[{variant.name} seed={seed}]"
    note = grid.noter(trial)
    run = TrackedRun(tracker, grid.teller(study, trial, log), note, log, label)
    progress = progress or Progress(total=1, done=0)
    last_epoch_end = [time.perf_counter()]
    own_epoch_seconds = [0.0]            # the sweep's work inside the training's wall time

    def on_epoch(epoch: int, metrics: dict) -> None:
        now = time.perf_counter()        # wall time per epoch, validation included (bench extrapolates it)
        metrics = {**metrics, "epoch_seconds": now - last_epoch_end[0]}
        last_epoch_end[0] = now
        tracker.log_epoch(run.run_id, epoch, metrics)
        progress.epoch(epoch, metrics.get("loss"))
        own_epoch_seconds[0] += time.perf_counter() - now

    started = time.perf_counter()
    with run.started(variant.name, seed, run_params(cfg, variant, seed, dataset.fingerprint),
                     tags={**grid.trial_tags(study, trial), **check_tags}):
        run_id = run.run_id
        log(f"{label} training ({cfg['train']['epochs']} epochs)")
        progress.start_point(variant.name, seed, cfg["train"]["epochs"])
        last_epoch_end[0] = training_started = time.perf_counter()
        # Batches are read one by one only to move a live progress line (harness/train.py: async_safe).
        result = train_variant(cfg, variant, seed, dataset, on_epoch=on_epoch,
                               on_batch=progress.batch if progress.live else None, log=log)
        training = time.perf_counter() - training_started - own_epoch_seconds[0]
        judged = run.judge(result, cfg["verdict"], cfg["health"], flags_of(check_tags))
        tracker.log_params(run_id, {"device": result.device})
        if save_models:
            tracker.log_model(run_id, result.model)
        run.end()

        def draw_figures():
            try:
                tracker.log_figure(run_id, plots.loss_curve(result.history, result.loss_floor, variant.name),
                                   "loss_curve.png")
                tracker.log_figure(run_id, plots.prediction_samples(result.samples, variant.name),
                                   "predictions.png")
            except Exception as e:  # noqa: BLE001 - a missing figure never costs a finished run
                log(f"note: figures of run {run_id} not logged: {first_line(e)}")
        # Drawn while the next point trains; the sweep waits for them before it ends.
        (figures.submit(draw_figures) if figures is not None else draw_figures())
        note("verdict", judged["verdict"])          # for `harness status`, without MLflow
        progress.end_point()
        value = judged["final_miou"]
        run.complete(value if math.isfinite(value) else 0.0)
        where = f" at epoch {result.diverged_at[0]} batch {result.diverged_at[1]}" if result.diverged_at else ""
        log(f"{label} {judged['verdict']}{where}: min loss {judged['min_loss']:.4g} "
            f"(floor {round(result.loss_floor, 4):.4g}), val_miou {value:.3f} (trivial {result.trivial_miou:.3f}), "
            f"{result.seconds:.0f}s on {result.device}")
        return PointOutcome(variant.name, seed, judged["verdict"], time.perf_counter() - started, training)
    progress.end_point()                 # here only when it crashed (run.ended): the sweep goes on
    return PointOutcome(variant.name, seed, "crashed", time.perf_counter() - started)


def fail_orphaned_runs(study, tracker: Tracker) -> int:
    """MLflow runs of trials that Optuna failed as stale (their worker died) are marked FAILED, so no
    run is left RUNNING; live workers' runs are left alone."""
    return tracker.fail_if_running(grid.failed_trials_run_ids(study),
                                   "interrupted: the worker training it died or was killed")


def run_params(cfg: Config, variant: Variant, seed: int, fingerprint: str) -> dict:
    params = {"variant": variant.name, "seed": seed, "dataset_fingerprint": fingerprint,
              "pipeline": cfg["pipeline"], **{f"axis.{k}": v for k, v in variant.axes().items()}}
    for section in ("data", "augment", "model", "train", "speed", "verdict"):
        params.update({f"{section}.{k}": v for k, v in cfg[section].items() if k != "seeds"})
    params.update(versions())
    return params


def versions() -> dict:
    import importlib.metadata as md
    out = {"python": platform.python_version()}
    for pkg in ("tensorflow", "keras", "jax", "optuna", "mlflow"):
        try:
            out[f"version.{pkg}"] = md.version(pkg)
        except md.PackageNotFoundError:
            out[f"version.{pkg}"] = "absent"
    try:
        out["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                           cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = "unknown"
    return out
