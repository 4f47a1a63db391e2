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
from harness import grid
from harness.runs import Tag, TrackedRun
from harness.sweep import run_params
from harness.tracking import EXPERIMENT_TAG, KIND_TAG, TUNE_BASE_STUDY_TAG, Tracker, default_tracking_uri

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


def run_tune(cfg: Config, variant_name: str, trials: int, results: Path, storage: str | None = None,
             tracking_uri: str | None = None, command: str = "",
             log: Callable[[str], None] = print) -> list[TuneOutcome]:
    from harness.data import load_dataset
    from harness.losses import get_loss

    variant = find_variant(cfg, variant_name)
    get_loss(variant.loss, cfg.source_dir)
    tune = cfg["tune"]
    dataset = load_dataset(cfg["data"])
    storage = storage or grid.default_storage(results)
    tracking_uri = tracking_uri or default_tracking_uri(results)
    study = grid.open_tune_study(cfg, storage, tune_study_name(cfg, variant.name), tune["pruner_warmup_epochs"],
                                 tune["seed"], trials)
    tracker = Tracker(tracking_uri, cfg.name, results)
    grid.fail_stale_trials(study)
    done = grid.counted_trials(study)
    log(f"tune {variant.name}: {trials} trials over {', '.join(tune['ranges'])}, seed {tune['seed']}, "
        f"{done} already done; study {grid.study_name(study)}")
    parent = tracker.start_sweep(grid.parent_run_id(study),
                                 params={"study": grid.study_name(study), "storage": storage, "command": command,
                                         "ranges": str(tune["ranges"])},
                                 tags={EXPERIMENT_TAG: cfg.name, KIND_TAG: "tune-study",
                                       "variant": variant.name, TUNE_BASE_STUDY_TAG: cfg.study_name})
    grid.keep_parent_run_id(study, parent)
    outcomes, status = [], "KILLED"
    try:
        while grid.counted_trials(study) < trials:
            outcomes.append(run_trial(cfg, variant, study, dataset, tracker, log))
        status = "FINISHED"
    finally:
        tracker.end_sweep(status)
    # Which trial is best is the report's judgement (harness/report/tuning.py: pick_best), printed
    # by the command after the report is written: Optuna's best value may be a failed trial's.
    return outcomes


def run_trial(cfg: Config, variant: Variant, study, dataset, tracker: Tracker, log) -> TuneOutcome:
    from harness import plots
    from harness.train import train_variant

    trial = grid.new_trial(study)
    number = grid.trial_number(trial)
    params = grid.suggest(trial, cfg["tune"]["ranges"], cfg)
    trial_cfg = cfg.with_overrides(params)
    seed = cfg["tune"]["seed"]
    label = f"[tune {variant.name} #{number}]"
    run = TrackedRun(tracker, grid.teller(study, trial, log), grid.noter(trial), log, label, state_tag=Tag.TUNE_STATE)
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
        if grid.should_prune(trial, smoothed, epoch):
            raise grid.Pruned(f"val_miou {smoothed:.3f} (mean of the last {window} epochs) at epoch "
                                     f"{epoch} trails the median of finished trials")

    with run.started(variant.name, seed, {**run_params(trial_cfg, variant, seed, dataset.fingerprint),
                                          **{f"tuned.{k}": v for k, v in params.items()}},
                     tags={KIND_TAG: TUNE_KIND, **grid.trial_tags(study, trial),
                           TUNE_BASE_STUDY_TAG: cfg.study_name},
                     pruned=grid.Pruned):
        log(f"{label} {shown}")
        with grid.Heartbeat(trial):
            result = train_variant(trial_cfg, variant, seed, dataset, on_epoch=on_epoch)
        judged = run.judge(result, trial_cfg["verdict"], trial_cfg["health"])
        value = judged["final_miou"] if math.isfinite(judged["final_miou"]) else 0.0
        tracker.log_figure(run.run_id, plots.loss_curve(result.history, result.loss_floor,
                                                        f"{variant.name} #{number}"), "loss_curve.png")
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
        return TuneOutcome(number, "complete", value, params)
    return TuneOutcome(number, run.ended, math.nan, params)       # pruned or crashed
