"""The only module that speaks to Optuna: one study per experiment, the variant x seed grid,
resume (finished points are skipped, interrupted ones retrained), the sweep loop and the points'
states for `harness status`.

Trials name their point in the user attribute `point` (harness/points.py) and suggest no
parameters: Optuna refuses a categorical parameter whose choices change between trials, and a grid
that grows (a seed, a variant) changes them."""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import random
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from harness.config import Config, Variant
from harness.errors import StorageError
from harness.points import grid_points, point_key  # noqa: F401 - point_key: grid's own name for it
from harness.progress import Progress
from harness.tracking import Tracker, default_tracking_uri, first_line

# A live worker stamps its trial every HEARTBEAT_S; a trial unstamped for GRACE_S belongs to a dead
# worker and is marked FAILED, then retrained. Environment overrides serve tests and slow storages.
HEARTBEAT_S = float(os.environ.get("HARNESS_HEARTBEAT_S", 5))
GRACE_S = float(os.environ.get("HARNESS_GRACE_S", 20))
HOST = platform.node()


@dataclass
class PointOutcome:
    variant: str
    seed: int
    verdict: str
    seconds: float


def default_storage(results: Path) -> str:
    return f"sqlite:///{(results / 'optuna.db').resolve()}"


def quiet_optuna():
    import warnings
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # JournalStorage and enqueue_trial's user_attrs are marked experimental.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def open_study(cfg: Config, storage_url: str, study_name: str | None = None, **study_kwargs):
    """Create or load the study (the grid's by default; `harness tune` passes its own name, sampler
    and pruner)."""
    import optuna
    quiet_optuna()
    for attempt in range(5):
        try:
            if storage_url.startswith("journal:"):
                from optuna.storages.journal import JournalFileBackend
                storage = optuna.storages.JournalStorage(JournalFileBackend(storage_url.removeprefix("journal:")))
            else:
                storage = optuna.storages.RDBStorage(storage_url, engine_kwargs=connect_timeout(storage_url))
            study = optuna.create_study(study_name=study_name or cfg.study_name, storage=storage,
                                        load_if_exists=True, direction="maximize", **study_kwargs)
            describe_study(study, cfg)
            return study
        except Exception as e:  # noqa: BLE001 - any failure here means the storage is unusable
            # Workers starting together on a fresh database race to create Optuna's tables; the
            # loser gets a unique violation or "already exists", and a retry finds the tables.
            if attempt < 4 and schema_race(e):
                time.sleep(0.5 + random.random())
                continue
            raise StorageError(f"Optuna storage {storage_url} is not usable: {first_line(e)}") from None


def schema_race(e: Exception) -> bool:
    from sqlalchemy.exc import IntegrityError, ProgrammingError
    return isinstance(e, (IntegrityError, ProgrammingError)) and any(
        word in str(e).lower() for word in ("duplicate", "already exists", "unique"))


def connect_timeout(url: str) -> dict:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}   # --n-jobs workers take turns writing one file
    if url.startswith("postgresql"):
        return {"connect_args": {"connect_timeout": 5}}
    if url.startswith("mysql"):
        return {"connect_args": {"connect_timeout": 5}}
    return {}


class Heartbeat:
    """Stamps the trial's `heartbeat` user attribute from a thread while its point trains. Optuna's
    own heartbeat exists only for RDB storages; this one works on every storage (journal too)."""

    def __init__(self, trial):
        self.trial = trial
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.beat, daemon=True)

    def beat(self):
        while not self.stop.wait(HEARTBEAT_S):
            try:
                self.trial.set_user_attr("heartbeat", time.time())
            except Exception:  # noqa: BLE001 - a missed beat only risks a retrain
                pass

    def __enter__(self):
        self.trial.set_user_attr("host", HOST)
        self.trial.set_user_attr("heartbeat", time.time())
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def fail_stale_trials(study) -> int:
    """RUNNING trials whose heartbeat stopped: their worker died. Mark them FAILED."""
    import optuna
    now, failed = time.time(), 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if is_stale(t, now):
            try:
                if study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL):
                    failed += 1
            except Exception:  # noqa: BLE001 - another worker failed it first
                pass
    return failed


# Heartbeats this process has seen change: trial id -> (stamp, this host's time when first seen).
OBSERVED: dict[int, tuple[float, float]] = {}


def is_stale(trial, now: float) -> bool:
    """A trial stamped by this host is compared with this host's clock. One stamped by another
    host is judged on this host's clock alone: stale once its stamp has not changed for GRACE_S,
    so hosts whose clocks disagree never fail each other's live trials."""
    beat = trial.user_attrs.get("heartbeat", trial.datetime_start.timestamp() if trial.datetime_start else now)
    if trial.user_attrs.get("host") == HOST:
        return now - beat > GRACE_S
    seen = OBSERVED.get(trial._trial_id)
    if seen is None or seen[0] != beat:
        OBSERVED[trial._trial_id] = (beat, now)
        return False
    return now - seen[1] > GRACE_S


def crashed_in(trial, sweep_id: str) -> bool:
    """The trial's point raised during sweep `sweep_id` (a killed or starved worker's trial has no
    `error`: its point is retried at once)."""
    import optuna
    return (trial.state == optuna.trial.TrialState.FAIL and "error" in trial.user_attrs
            and trial.user_attrs.get("sweep") == sweep_id)


def point_states(study, sweep_id: str = "") -> tuple[set, set, set]:
    """Point keys with a finished trial, with a queued or running one, and crashed in this sweep."""
    import optuna
    states = optuna.trial.TrialState
    done, pending, crashed = set(), set(), set()
    for t in study.get_trials(deepcopy=False):
        key = t.user_attrs.get("point")
        if key is None:
            continue
        if t.state == states.COMPLETE:
            done.add(key)
        elif t.state in (states.WAITING, states.RUNNING):
            pending.add(key)
        elif crashed_in(t, sweep_id):
            crashed.add(key)
    return done, pending, crashed


def enqueue_missing(study, points: dict, sweep_id: str) -> list[str]:
    """Queue each grid point that has no finished trial, is not queued or running already, and did
    not crash in this sweep (a crash is retried by the next `harness sweep`, not in a loop).
    Returns the points not finished."""
    done, pending, crashed = point_states(study, sweep_id)
    missing = [k for k in points if k not in done]
    for key in missing:
        if key not in pending and key not in crashed:
            variant, seed = points[key]
            study.enqueue_trial({}, user_attrs={"point": key, "variant": variant.name, "seed": seed})
    return missing


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
    for pkg in ("tensorflow", "keras", "optuna", "mlflow"):
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


def run_sweep(cfg: Config, results: Path, storage: str | None = None, tracking_uri: str | None = None,
              command: str = "", log: Callable[[str], None] = print, run_check: bool = True,
              dataset=None, sweep_id: str | None = None) -> list[PointOutcome]:
    """Train every (variant, seed) point not finished yet; return what this call trained. Workers
    of one `--n-jobs` sweep share its `sweep_id`: a point that crashed is tried once in it."""
    from harness.data import load_dataset

    results.mkdir(parents=True, exist_ok=True)
    storage = storage or default_storage(results)
    tracking_uri = tracking_uri or default_tracking_uri(results)
    from harness.check import check_experiment, predicted_verdict
    from harness.losses import get_loss
    from harness.models import load_model_builder

    for variant in cfg.variants:                            # unknown or broken losses fail first
        get_loss(variant.loss, cfg.source_dir)
    load_model_builder(cfg)
    dataset = dataset or load_dataset(cfg["data"])          # bad data fails before any trial
    study = open_study(cfg, storage)
    tracker = Tracker(tracking_uri, cfg.name, results)
    stale_trials = fail_stale_trials(study)         # of any grid: their workers died
    if stale_trials:
        log(f"{stale_trials} running trial(s) without a heartbeat for {GRACE_S:.0f}s marked FAILED: their worker died")
    stale_runs = fail_orphaned_runs(study, tracker)
    sweep_id = sweep_id or uuid.uuid4().hex[:12]
    points = grid_points(cfg)
    missing = enqueue_missing(study, points, sweep_id)
    log(f"{cfg.name}: {len(points)} grid points, {len(points) - len(missing)} already finished, "
        f"{len(missing)} to train" + (f" ({stale_runs} interrupted run(s) marked FAILED)" if stale_runs else ""))
    log(f"data: {dataset.description}, fingerprint {dataset.fingerprint}")
    progress = Progress(total=len(points), done=len(points) - len(missing))
    log = with_progress_cleared(log, progress)
    checks = {}
    for row in check_experiment(cfg, dataset) if run_check else []:
        checks[row.variant] = {"check.flags": ",".join(row.flags) or "none",
                               "check.predicted": predicted_verdict(row.flags),
                               "check.details": json.dumps(row.details)[:5000]}
        log(f"check {row.variant}: predicted {predicted_verdict(row.flags)}; flags: {', '.join(row.flags) or 'none'}")
    open_parent_run(study, tracker, cfg, storage, command)
    tracker.use_dataset(cfg["data"], dataset.fingerprint, dataset.description)
    # A --n-jobs worker leaves the parent run to the process that started the workers.
    owns_parent = not os.environ.get("HARNESS_WORKER")
    outcomes, status = [], "KILLED"      # stays KILLED unless the loop ends normally
    figures = ThreadPoolExecutor(max_workers=1, thread_name_prefix="figures")
    try:
        while True:
            trial = next_trial(study, points, sweep_id, log=log,
                               on_stale=lambda: fail_orphaned_runs(study, tracker))
            if trial is None:
                break
            variant, seed = points[trial.user_attrs["point"]]
            progress.set_done(len(point_states(study)[0] & set(points)))
            # Stamped from the claim to `tell`: judging and the MLflow writes can be slow too, and a
            # trial gone silent is failed and retrained by another worker.
            with Heartbeat(trial):
                outcomes.append(run_point(cfg, study, trial, variant, seed, dataset, tracker, log,
                                          checks.get(variant.name, {}), progress, figures))
        status = "FINISHED"
    finally:
        figures.shutdown(wait=True)
        progress.clear()
        if owns_parent:
            tracker.end_sweep(status)
    return outcomes


def open_parent_run(study, tracker: Tracker, cfg: Config, storage: str, command: str) -> str:
    """The sweep's MLflow parent run: one per study, reopened on resume."""
    parent = tracker.start_sweep(study.user_attrs.get("mlflow_parent_run_id"),
                                 params={"study": study.study_name, "storage": storage, "command": command},
                                 tags={"harness.experiment": cfg.name})
    study.set_user_attr("mlflow_parent_run_id", parent)
    tracker.log_config(parent, cfg.raw)
    return parent


@contextlib.contextmanager
def workers_parent_run(cfg: Config, results: Path, storage: str | None, tracking_uri: str | None, command: str):
    """For --n-jobs: open the study and the parent run before the workers start (so they all share
    one), and close it once they are done. Yields a dict: set "failed" to True when a worker died,
    and the parent run ends FAILED instead of FINISHED."""
    storage = storage or default_storage(results)
    study = open_study(cfg, storage)
    tracker = Tracker(tracking_uri or default_tracking_uri(results), cfg.name, results)
    open_parent_run(study, tracker, cfg, storage, command)
    status, outcome = "KILLED", {"failed": False}
    try:
        yield outcome
        status = "FAILED" if outcome["failed"] else "FINISHED"
    finally:
        tracker.end_sweep(status)


def with_progress_cleared(log: Callable[[str], None], progress: Progress) -> Callable[[str], None]:
    """Log lines wipe the live progress line first, so the two never share a terminal line."""
    prefix = f"[worker {os.environ['HARNESS_WORKER']}] " if os.environ.get("HARNESS_WORKER") else ""

    def logged(message: str) -> None:
        progress.clear()
        log(prefix + message)
    return logged


def next_trial(study, points: dict, sweep_id: str, log: Callable[[str], None] = print,
               on_stale: Callable[[], None] = lambda: None):
    """Claim the next grid point: pop a queued trial and keep it only if no other trial holds that
    point (workers racing for one point all see the same lowest number, so exactly one keeps it).
    A queued trial of another grid (an interrupted sweep's) is skipped and said so. When nothing is
    queued but other workers' points of this grid are running, wait: a dead worker's point goes
    stale, is failed and queued again. None when all are done."""
    import optuna
    running = optuna.trial.TrialState.RUNNING
    while True:
        if study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
            trial = study.ask()
            key = trial.user_attrs.get("point")
            if key not in points:
                log(f"skipping queued trial {trial.number} ({key}): not in this grid; an earlier sweep of "
                    "another grid left it, and that grid's next sweep queues it again")
                trial.set_user_attr("skipped", "not in the grid of the sweep that found it queued")
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                continue
            if not claimed_elsewhere(study, key, trial.number, sweep_id):
                trial.set_user_attr("sweep", sweep_id)
                return trial
            # Another worker holds this point, or took the last queued one between our look and ask.
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        if not any(t.user_attrs.get("point") in points for t in study.get_trials(deepcopy=False, states=(running,))):
            return None
        time.sleep(HEARTBEAT_S)
        if fail_stale_trials(study):
            on_stale()
        enqueue_missing(study, points, sweep_id)


def claimed_elsewhere(study, key: str, number: int, sweep_id: str) -> bool:
    """Another trial of this point finished, runs with a lower number, or crashed in this sweep."""
    import optuna
    states = optuna.trial.TrialState
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("point") != key or t.number == number:
            continue
        if (t.state == states.COMPLETE or (t.state == states.RUNNING and t.number < number)
                or crashed_in(t, sweep_id)):
            return True
    return False


def fail_orphaned_runs(study, tracker: Tracker) -> int:
    """MLflow runs of trials that Optuna failed as stale (their worker died) are marked FAILED, so no
    run is left RUNNING; live workers' runs are left alone."""
    import optuna
    run_ids = [t.user_attrs["mlflow_run_id"] for t in study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.FAIL,)) if "mlflow_run_id" in t.user_attrs]
    return tracker.fail_if_running(run_ids, "interrupted: the worker training it died or was killed")


def run_point(cfg, study, trial, variant, seed, dataset, tracker: Tracker, log, check_tags: dict,
              progress: Progress | None = None, figures=None) -> PointOutcome:
    import optuna
    from harness import plots
    from harness.train import train_variant
    from harness.verdict import judge

    run_id = tracker.start_point(variant.name, seed, run_params(cfg, variant, seed, dataset.fingerprint),
                                 tags={"optuna.trial": str(trial.number), "optuna.study": study.study_name,
                                       **check_tags})
    trial.set_user_attr("mlflow_run_id", run_id)
    log(f"[{variant.name} seed={seed}] training ({cfg['train']['epochs']} epochs)")
    started = time.perf_counter()
    progress = progress or Progress(total=1, done=0)
    progress.start_point(variant.name, seed, cfg["train"]["epochs"])

    last_epoch_end = [time.perf_counter()]

    def on_epoch(epoch: int, metrics: dict) -> None:
        now = time.perf_counter()        # wall time per epoch, validation included (bench extrapolates it)
        metrics = {**metrics, "epoch_seconds": now - last_epoch_end[0]}
        last_epoch_end[0] = now
        tracker.log_epoch(run_id, epoch, metrics)
        progress.epoch(epoch, metrics.get("loss"))

    try:
        result = train_variant(cfg, variant, seed, dataset, on_epoch=on_epoch, on_batch=progress.batch, log=log)
        judged = judge(result.history, result.loss_floor, result.trivial_miou, cfg["verdict"],
                       diverged=result.diverged_at is not None,
                       diverged_epoch=result.diverged_at[0] if result.diverged_at else None)
        tags = {"verdict": judged["verdict"], "diverged": judged["diverged"],
                "negative_loss": judged["negative_loss"], "converged": judged["converged"],
                "device": result.device, "deterministic": result.deterministic, "feed": result.feed,
                "loss_floor": result.loss_floor, "trivial_miou": result.trivial_miou,
                "loss_floor_declared": result.loss_floor_declared, "threshold": result.threshold,
                "scored_epochs": judged["scored_epochs"], "score_note": judged["score_note"],
                "epochs_run": result.epochs_run, "seconds": round(result.seconds, 2),
                "featurewise_stats": json.dumps(result.stats)}
        if result.diverged_at:
            tags["diverged_epoch"], tags["diverged_batch"] = result.diverged_at
        tracker.set_tags(run_id, tags)
        tracker.log_params(run_id, {"device": result.device})
        tracker.end_point(run_id, "FINISHED")

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
        trial.set_user_attr("verdict", judged["verdict"])          # for `harness status`, without MLflow
        progress.end_point()
        value = judged["final_miou"]
        tell(study, trial, value if math.isfinite(value) else 0.0, log=log)
        where = f" at epoch {result.diverged_at[0]} batch {result.diverged_at[1]}" if result.diverged_at else ""
        log(f"[{variant.name} seed={seed}] {judged['verdict']}{where}: min loss {judged['min_loss']:.4g} "
            f"(floor {round(result.loss_floor, 4):.4g}), val_miou {value:.3f} (trivial {result.trivial_miou:.3f}), "
            f"{result.seconds:.0f}s on {result.device}")
        return PointOutcome(variant.name, seed, judged["verdict"], time.perf_counter() - started)
    except KeyboardInterrupt:
        tracker.set_tags(run_id, {"failure": "interrupted by the user (Ctrl-C)", "verdict": "interrupted"})
        tracker.end_point(run_id, "KILLED")
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    except Exception as e:  # noqa: BLE001 - a crashed point is data; the sweep goes on
        reason = f"{type(e).__name__}: {first_line(e)}"
        tracker.set_tags(run_id, {"failure": reason, "verdict": "crashed"})
        tracker.end_point(run_id, "FAILED")
        progress.end_point()
        trial.set_user_attr("error", reason)
        tell(study, trial, state=optuna.trial.TrialState.FAIL, log=log)
        log(f"[{variant.name} seed={seed}] crashed: {reason}")
        return PointOutcome(variant.name, seed, "crashed", time.perf_counter() - started)


def tell(study, trial, value=None, state=None, log=print) -> None:
    """Finish the trial; if another worker already failed it as stale (this worker's heartbeat was
    starved), keep going: the point is queued again and the MLflow run above is kept."""
    try:
        study.tell(trial, value, state=state)
    except (RuntimeError, ValueError) as e:
        log(f"note: trial {trial.number} was already finished elsewhere ({first_line(e)})")


def point_trials(cfg: Config, storage_url: str) -> dict[str, list[dict]] | None:
    """For `harness status`: every trial of the grid's study as plain data, by point key (oldest
    first); None when the storage or the study does not exist yet. Creates nothing."""
    import optuna
    quiet_optuna()
    local = storage_url.removeprefix("journal:") if storage_url.startswith("journal:") else (
        storage_url.removeprefix("sqlite:///") if storage_url.startswith("sqlite:///") else None)
    if local is not None and not Path(local).is_file():
        return None
    try:
        if storage_url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend
            storage = optuna.storages.JournalStorage(JournalFileBackend(local))
        else:
            storage = optuna.storages.RDBStorage(storage_url, engine_kwargs=connect_timeout(storage_url))
        study = optuna.load_study(study_name=cfg.study_name, storage=storage)
    except KeyError:
        return None                     # the storage holds other studies, not this one
    except Exception as e:  # noqa: BLE001 - any other failure means the storage is unusable
        raise StorageError(f"Optuna storage {storage_url} is not usable: {first_line(e)}") from None
    trials: dict[str, list[dict]] = {}
    for t in study.get_trials(deepcopy=False):
        if "point" in t.user_attrs:
            trials.setdefault(t.user_attrs["point"], []).append({
                "number": t.number, "state": t.state.name, "value": t.value, "attrs": dict(t.user_attrs),
                "start": t.datetime_start.timestamp() if t.datetime_start else None})
    return trials


def describe_study(study, cfg: Config) -> None:
    """Name the objective and store the settings as user attributes, so optuna-dashboard and
    `optuna studies` show what a study is (written once, by whoever creates the study)."""
    if "experiment" in study.user_attrs:
        return
    study.set_metric_names(["val_miou"])
    for key, value in study_attrs(cfg).items():
        study.set_user_attr(key, value)


def study_attrs(cfg: Config) -> dict:
    """The settings that make the study (its name hashes them), one attribute per config section;
    the grid itself (variants, seeds) may grow later, so it is stored as it was at creation."""
    settings = {section: cfg[section] for section in ("data", "augment", "model", "verdict")}
    settings["train"] = {k: v for k, v in cfg["train"].items() if k != "seeds"}
    raw = json.dumps(cfg.raw, sort_keys=True, default=str)
    return {"experiment": cfg.name, "pipeline": cfg["pipeline"], "objective": "val_miou, maximized",
            **json.loads(json.dumps(settings, default=str)),
            "grid_at_creation": {"variants": [v.name for v in cfg.variants], "seeds": cfg.seeds},
            "config_digest": hashlib.sha256(raw.encode()).hexdigest()[:12]}
