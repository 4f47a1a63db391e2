"""`harness tune VARIANT`: is a variant's failure the variant's, or its learning rate's?

Optuna's TPE sampler draws the experiment's `[tune]` ranges (the learning rate on a log scale by
default), a median pruner stops trials whose per-epoch val_miou trails the others, and each trial
is a nested MLflow run under one parent per tuning study. The study lives in the same storage as
the grid, under its own name, so an interrupted tune resumes where it stopped.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from harness.config import Config, Variant
from harness.errors import ConfigError
from harness.grid import Heartbeat, default_storage, fail_stale_trials, open_study, teller
from harness.runs import Tag, TrackedRun
from harness.sweep import run_params
from harness.tracking import (EXPERIMENT_TAG, KIND_TAG, OPTUNA_STUDY_TAG, OPTUNA_TRIAL_TAG, TUNE_BASE_STUDY_TAG,
                              Tracker, default_tracking_uri)

TUNE_KIND = "tune"                 # harness.kind of each trial's run (the parent is "tune-study")


@dataclass
class TuneOutcome:
    number: int
    state: str                     # complete, pruned or crashed
    value: float
    params: dict


def tune_study_name(cfg: Config, variant: str) -> str:
    """Per variant, beside the grid's study: the grid's settings digest, the variant, and a digest of
    the variant's axes and the ranges. Optuna refuses a parameter whose distribution changes within
    a study (a categorical's choices, a range's log scale), and TPE learns from the trials of one
    space: changed ranges or a redefined variant start a tuning study of their own."""
    axes = next((v.axes() for v in cfg.variants if v.name == variant), {})
    space = json.dumps({"axes": axes, "ranges": cfg["tune"]["ranges"]}, sort_keys=True)
    return f"{cfg.study_name}-tune-{variant}-{hashlib.sha256(space.encode()).hexdigest()[:8]}"


def find_variant(cfg: Config, name: str) -> Variant:
    for variant in cfg.variants:
        if variant.name == name:
            return variant
    raise ConfigError(f"unknown variant {name!r} for experiment {cfg.name}; "
                      f"valid variants: {', '.join(v.name for v in cfg.variants)}")


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


def counted_trials(study) -> int:
    """Trials that count towards --trials: finished, pruned, or crashed by their own fault (a trial
    failed because its worker died is retried, not counted)."""
    import optuna
    states = optuna.trial.TrialState
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state in (states.COMPLETE, states.PRUNED) or (t.state == states.FAIL and "error" in t.user_attrs))


def run_tune(cfg: Config, variant_name: str, trials: int, results: Path, storage: str | None = None,
             tracking_uri: str | None = None, command: str = "",
             log: Callable[[str], None] = print) -> list[TuneOutcome]:
    import optuna
    from harness.data import load_dataset
    from harness.losses import get_loss

    variant = find_variant(cfg, variant_name)
    get_loss(variant.loss, cfg.source_dir)
    tune = cfg["tune"]
    dataset = load_dataset(cfg["data"])
    storage = storage or default_storage(results)
    tracking_uri = tracking_uri or default_tracking_uri(results)
    study = open_study(cfg, storage, study_name=tune_study_name(cfg, variant.name),
                       pruner=optuna.pruners.MedianPruner(n_startup_trials=3,
                                                          n_warmup_steps=tune["pruner_warmup_epochs"]))
    # Reseeded by the trials already there: a resumed tune must not replay the first run's draws.
    study.sampler = optuna.samplers.TPESampler(seed=tune["seed"] * 100_003 + len(study.trials),
                                               n_startup_trials=min(10, max(3, trials // 3)))
    tracker = Tracker(tracking_uri, cfg.name, results)
    fail_stale_trials(study)
    done = counted_trials(study)
    log(f"tune {variant.name}: {trials} trials over {', '.join(tune['ranges'])}, seed {tune['seed']}, "
        f"{done} already done; study {study.study_name}")
    parent = tracker.start_sweep(study.user_attrs.get("mlflow_parent_run_id"),
                                 params={"study": study.study_name, "storage": storage, "command": command,
                                         "ranges": str(tune["ranges"])},
                                 tags={EXPERIMENT_TAG: cfg.name, KIND_TAG: "tune-study",
                                       "variant": variant.name, TUNE_BASE_STUDY_TAG: cfg.study_name})
    study.set_user_attr("mlflow_parent_run_id", parent)
    outcomes, status = [], "KILLED"
    try:
        while counted_trials(study) < trials:
            outcomes.append(run_trial(cfg, variant, study, dataset, tracker, log))
        status = "FINISHED"
    finally:
        tracker.end_sweep(status)
    # Which trial is best is the report's judgement (harness/report/tuning.py: pick_best), printed
    # by the command after the report is written: Optuna's best value may be a failed trial's.
    return outcomes


def run_trial(cfg: Config, variant: Variant, study, dataset, tracker: Tracker, log) -> TuneOutcome:
    import optuna
    from harness import plots
    from harness.train import train_variant

    trial = study.ask()
    params = suggest(trial, cfg["tune"]["ranges"], cfg)
    trial_cfg = cfg.with_overrides(params)
    seed = cfg["tune"]["seed"]
    label = f"[tune {variant.name} #{trial.number}]"
    run = TrackedRun(tracker, teller(study, trial, log), trial.set_user_attr, log, label, state_tag=Tag.TUNE_STATE)
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
    started = time.perf_counter()

    seen: list[float] = []
    window = cfg["verdict"]["window"]

    def on_epoch(epoch: int, metrics: dict) -> None:
        tracker.log_epoch(run.run_id, epoch, metrics)
        value = metrics.get("val_miou")
        seen.append(value if value is not None and math.isfinite(value) else 0.0)
        # The pruner sees what the verdict judges: the mean over the last `window` epochs (a single
        # epoch's mIoU swings by 0.3 and more in this case).
        smoothed = sum(seen[-window:]) / len(seen[-window:])
        trial.report(smoothed, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"val_miou {smoothed:.3f} (mean of the last {window} epochs) at epoch "
                                     f"{epoch} trails the median of finished trials")

    with run.started(variant.name, seed, {**run_params(trial_cfg, variant, seed, dataset.fingerprint),
                                          **{f"tuned.{k}": v for k, v in params.items()}},
                     tags={KIND_TAG: TUNE_KIND, OPTUNA_TRIAL_TAG: str(trial.number),
                           OPTUNA_STUDY_TAG: study.study_name, TUNE_BASE_STUDY_TAG: cfg.study_name},
                     pruned=optuna.TrialPruned):
        log(f"{label} {shown}")
        with Heartbeat(trial):
            result = train_variant(trial_cfg, variant, seed, dataset, on_epoch=on_epoch)
        judged = run.judge(result, trial_cfg["verdict"], trial_cfg["health"])
        value = judged["final_miou"] if math.isfinite(judged["final_miou"]) else 0.0
        tracker.log_figure(run.run_id, plots.loss_curve(result.history, result.loss_floor,
                                                        f"{variant.name} #{trial.number}"), "loss_curve.png")
        run.end()
        if judged["diverged"]:
            # A diverged trial has no honest score: failed in Optuna, so it is never the study's
            # best trial; it still counts towards --trials (its error says why).
            run.fail(judged["score_note"])
        else:
            run.complete(value)
        log(f"{label} {judged['verdict']}: val_miou {value:.3f} "
            f"(min loss {judged['min_loss']:.4g}, floor {round(result.loss_floor, 4):.4g}), "
            f"{time.perf_counter() - started:.0f}s")
        return TuneOutcome(trial.number, "complete", value, params)
    return TuneOutcome(trial.number, run.ended, math.nan, params)       # pruned or crashed
