"""Everything Optuna: one study per grid, its points as trials, claims, resume (finished points are
skipped, interrupted ones retrained), heartbeats, the points' states for `harness status`, and the
tuning studies of `harness tune` (sampler, pruner, suggested settings). The sweep that trains the
points is harness/sweep.py, the tuner harness/tune.py: this is the one module that imports Optuna,
and they hold its studies and trials as handles passed back to the functions here.

Trials name their point in the user attribute `point` (harness/points.py) and suggest no
parameters: Optuna refuses a categorical parameter whose choices change between trials, and a grid
that grows (a seed, a variant) changes them."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import threading
import time
from pathlib import Path
from typing import Callable

from harness import environment
from harness.config import Config
from harness.errors import StorageError
from harness.tracking import OPTUNA_STUDY_TAG, OPTUNA_TRIAL_TAG, first_line

# A live worker stamps its trial every HEARTBEAT_S; a trial unstamped for GRACE_S belongs to a dead
# worker and is marked FAILED, then retrained. Environment overrides serve tests and slow storages.
HEARTBEAT_S = environment.number(environment.HEARTBEAT_S)
GRACE_S = environment.number(environment.GRACE_S)
HOST = platform.node()
PARENT_RUN_ATTR = "mlflow_parent_run_id"    # the study's user attribute: its MLflow parent run


class Pruned(Exception):
    """Raised in a tune trial that the pruner stops (`should_prune`); runs.TrackedRun ends its run as
    pruned and tells the study so through `teller`."""


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


def tell(study, trial, value=None, state=None, log=print) -> None:
    """Finish the trial; if another worker already failed it as stale (this worker's heartbeat was
    starved), keep going: the point is queued again and the MLflow run above is kept."""
    try:
        study.tell(trial, value, state=state)
    except (RuntimeError, ValueError) as e:
        log(f"note: trial {trial.number} was already finished elsewhere ({first_line(e)})")


def teller(study, trial, log=print) -> Callable[..., None]:
    """How harness/runs.py finishes a trial without speaking Optuna: `tell(state, value=None)`, state
    "complete" (with the value), "fail", "pruned", or "interrupted" (Ctrl-C: failed, and an error
    telling it is raised, not logged)."""
    import optuna
    states = {"fail": optuna.trial.TrialState.FAIL, "pruned": optuna.trial.TrialState.PRUNED}

    def tell_trial(state: str, value: float | None = None) -> None:
        if state == "complete":
            tell(study, trial, value, log=log)
        elif state == "interrupted":
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            tell(study, trial, state=states[state], log=log)
    return tell_trial


def point_of(trial) -> str:
    """The grid point a claimed trial trains (its key in harness/points.py's grid_points)."""
    return trial.user_attrs["point"]


def noter(trial) -> Callable[[str, object], None]:
    """How harness/runs.py writes on a trial (its MLflow run id, its error, its verdict for
    `harness status`): note(key, value)."""
    return trial.set_user_attr


def trial_number(trial) -> int:
    return trial.number


def trial_tags(study, trial) -> dict:
    """The MLflow tags that tie a run to its study and trial."""
    return {OPTUNA_TRIAL_TAG: str(trial.number), OPTUNA_STUDY_TAG: study.study_name}


def study_name(study) -> str:
    return study.study_name


def parent_run_id(study) -> str | None:
    """The MLflow parent run of the study's sweeps (or tunes), once one started it."""
    return study.user_attrs.get(PARENT_RUN_ATTR)


def keep_parent_run_id(study, run_id: str) -> None:
    study.set_user_attr(PARENT_RUN_ATTR, run_id)


def failed_trials_run_ids(study) -> list[str]:
    """The MLflow runs of the trials Optuna holds failed (a dead worker's, among others)."""
    import optuna
    return [t.user_attrs["mlflow_run_id"] for t in study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.FAIL,)) if "mlflow_run_id" in t.user_attrs]


def open_tune_study(cfg: Config, storage_url: str, name: str, warmup_epochs: int, seed: int, trials: int):
    """`harness tune`'s study: a median pruner (after 3 trials, past `warmup_epochs`), and TPE reseeded
    by the trials already there, so a resumed tune does not replay the first call's draws."""
    import optuna
    study = open_study(cfg, storage_url, study_name=name,
                       pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=warmup_epochs))
    study.sampler = optuna.samplers.TPESampler(seed=seed * 100_003 + len(study.trials),
                                               n_startup_trials=min(10, max(3, trials // 3)))
    return study


def counted_trials(study) -> int:
    """Trials that count towards --trials: finished, pruned, or crashed by their own fault (a trial
    failed because its worker died is retried, not counted)."""
    import optuna
    states = optuna.trial.TrialState
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state in (states.COMPLETE, states.PRUNED) or (t.state == states.FAIL and "error" in t.user_attrs))


def new_trial(study):
    """A new tune trial: the sampler draws its settings through `suggest`."""
    return study.ask()


def suggest(trial, ranges: dict, defaults: Config) -> dict:
    """Draw one value per declared range; an integer setting draws integers."""
    params = {}
    for key, spec in ranges.items():
        section, name = key.split(".", 1)
        if "choices" in spec:
            params[key] = trial.suggest_categorical(key, spec["choices"])
        elif isinstance(defaults[section][name], int):
            params[key] = trial.suggest_int(key, int(spec["low"]), int(spec["high"]), log=bool(spec.get("log")))
        else:
            params[key] = trial.suggest_float(key, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")))
    return params


def should_prune(trial, value: float, step: int) -> bool:
    """Report the trial's value at `step` to the pruner; whether it stops the trial there."""
    trial.report(value, step)
    return trial.should_prune()


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
