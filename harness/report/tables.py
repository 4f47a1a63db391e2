"""Runs (a DataFrame read back from MLflow) -> tables: one row per (variant, seed) with its verdict
recomputed, one row per variant (summary.csv), the points that crashed, and a study's summary."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from harness.config import Config
import json

from harness.causes import union
from harness.health import joined, measured
from harness.points import runs_of_grid
from harness.runs import Tag, diagnosed, flags_of, tag, text_tag
from harness.tracking import TAG_COLUMN, load_runs
from harness.verdict import HEALTHY, combine, judge


PREDICTED = {"negative_loss_or_diverged": ("negative_loss", "diverged"), "trains": HEALTHY,
             "crashed": ("crashed",)}


def agrees(predicted: str, observed: str) -> bool:
    """The check's prediction (harness/check.py) against the verdict the sweep observed."""
    return observed in PREDICTED.get(predicted, ())


NUMERIC = ["final_loss", "min_loss", "loss_floor", "loss_floor_declared", "threshold", "val_iou", "val_miou", "val_dice", "val_as_train_miou",
           "trivial_miou", "seconds_per_epoch"]


FLAGS = ["negative_loss", "diverged", "converged"]


# summary.csv's columns, in order.
SUMMARY_COLUMNS = (["variant", "seeds", "seeds_scored"] + [c for n in NUMERIC for c in (n, f"{n}_std")] + FLAGS
                   + ["verdict", "causes", "symptoms", "predicted", "agrees", "check_flags", "score_note"])


def point_rows(runs: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    """One row per (variant, seed): the newest finished run, with its verdict recomputed from its
    history under the config's rules (so a report never trusts a stale tag)."""
    if runs.empty:
        return pd.DataFrame()
    finished = runs[runs["status"] == "FINISHED"].sort_values("start_time", ascending=False)
    finished = finished.drop_duplicates(["variant", "seed"])
    rows = []
    for _, run in finished.iterrows():
        history = run.get("history") or {}
        floor = float(tag(run, Tag.LOSS_FLOOR, 0.0))
        trivial = float(tag(run, Tag.TRIVIAL_MIOU, 0.5))
        diverged = tag(run, Tag.DIVERGED) == "True"
        diverged_epoch = tag_int(tag(run, Tag.DIVERGED_EPOCH))
        judged = judge(history, floor, trivial, cfg["verdict"], diverged=diverged, diverged_epoch=diverged_epoch)
        epochs = max(1, int(tag(run, Tag.EPOCHS_RUN, 1) or 1))
        recent = cfg["verdict"]["window"]
        # Judged again from the logged health/ history and the check's flags (harness/causes.py).
        measured_causes, diagnosis = diagnosed(history, flags_of({Tag.CHECK_FLAGS: text_tag(run, Tag.CHECK_FLAGS)}), judged["verdict"], trivial, cfg["verdict"],
                                               cfg["health"], diverged_epoch if diverged else None)
        details = {**check_details_of(run), **measured_causes}
        rows.append({
            "variant": run["variant"], "seed": int(run["seed"]), "run_id": run["run_id"],
            "final_loss": judged["final_loss"], "min_loss": judged["min_loss"], "loss_floor": floor,
            "loss_floor_declared": tag_float(tag(run, Tag.LOSS_FLOOR_DECLARED)),
            "threshold": tag_float(tag(run, Tag.THRESHOLD)),
            "val_iou": tail_mean(scored(history, "val_iou", judged), recent),
            "val_miou": judged["final_miou"],
            "val_dice": tail_mean(scored(history, "val_dice", judged), recent),
            "val_as_train_miou": tail_mean(scored(history, "val_as_train_miou", judged), recent),
            "scored_epochs": judged["scored_epochs"], "score_note": judged["score_note"],
            "trivial_miou": trivial,
            "seconds_per_epoch": float(tag(run, Tag.SECONDS, "nan")) / epochs,
            "negative_loss": judged["negative_loss"], "diverged": judged["diverged"],
            "converged": judged["converged"], "verdict": judged["verdict"],
            "causes": joined(diagnosis.causes), "symptoms": joined(diagnosis.symptoms),
            "cause_details": {c: details.get(c, "") for c in diagnosis.causes},
            "symptom_details": {s: (cause, details.get(s, "")) for s, cause in diagnosis.symptoms.items()},
            "health_measured": measured(history),
            "diverged_at": (f"epoch {tag(run, Tag.DIVERGED_EPOCH)} batch {tag(run, Tag.DIVERGED_BATCH)}"
                            if diverged and text_tag(run, Tag.DIVERGED_EPOCH) else ""),
            "device": tag(run, Tag.DEVICE, ""), "history": history,
            "predicted": text_tag(run, Tag.CHECK_PREDICTED),
            "check_flags": text_tag(run, Tag.CHECK_FLAGS),
            "check_details": text_tag(run, Tag.CHECK_DETAILS),
            "check_validation": text_tag(run, Tag.CHECK_VALIDATION),
        })
    if not rows:
        return pd.DataFrame()
    order = {name: i for i, name in enumerate(v.name for v in cfg.variants)}
    df = pd.DataFrame(rows)
    df["order"] = df["variant"].map(order).fillna(len(order))
    return df.sort_values(["order", "seed"]).drop(columns="order").reset_index(drop=True)


def check_details_of(run) -> dict[str, str]:
    """What `harness check` measured for each of the run's flags (tag check.details); {} where absent."""
    text = tag(run, Tag.CHECK_DETAILS)
    try:
        return json.loads(text) if isinstance(text, str) else {}
    except json.JSONDecodeError:
        return {}


def tag_float(value) -> float:
    """A numeric tag; NaN where absent or "None" (a loss that declares no floor)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def tag_int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def scored(history: dict, key: str, judged: dict) -> list[float]:
    """A quality metric's epochs that the verdict scored (those before a divergence)."""
    values = history.get(key, [])
    return values[:judged["scored_epochs"]] if judged["diverged"] else values


def tail_mean(values, n: int) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite[-n:])) if finite else float("nan")


def summarize(points: pd.DataFrame) -> pd.DataFrame:
    """One row per variant: means over seeds with `<column>_std`, flags true when true for every seed."""
    rows = []
    for variant, group in points.groupby("variant", sort=False):
        row = {"variant": variant, "seeds": len(group),
               # Seeds whose quality could be scored (a run that diverged in its first epoch has none).
               "seeds_scored": int(group["val_miou"].astype(float).notna().sum())}
        for col in NUMERIC:
            values = group[col].astype(float)
            row[col] = values.mean()
            row[f"{col}_std"] = values.std(ddof=0) if len(values) > 1 else 0.0
        for flag in FLAGS:
            row[flag] = bool(group[flag].all())
        row["verdict"] = combine(list(group["verdict"]))
        row["causes"] = union(group["causes"])
        row["symptoms"] = union(group["symptoms"])
        # {cause: "s1: what was measured; s2: ..."}, for the report's Why.
        row["cause_details"] = {cause: "; ".join(f"s{s}: {d[cause]}" for s, d in zip(group["seed"], group["cause_details"])
                                                 if cause in d) for cause in row["causes"].split(",") if cause != "none"}
        # {symptom: (the cause that explains it, "s1: what was measured; ...")}.
        row["symptom_details"] = {
            symptom: (next(d[symptom][0] for d in group["symptom_details"] if symptom in d),
                      "; ".join(f"s{s}: {d[symptom][1]}" for s, d in zip(group["seed"], group["symptom_details"])
                                if symptom in d and d[symptom][1]))
            for symptom in row["symptoms"].split(",") if symptom != "none"}
        row["health_measured"] = bool(group["health_measured"].any())
        row["verdict_per_seed"] = " ".join(f"s{s}:{v}" for s, v in zip(group["seed"], group["verdict"]))
        row["predicted"] = group["predicted"].iloc[0]
        row["check_flags"] = group["check_flags"].iloc[0]
        row["check_details"] = group["check_details"].iloc[0]
        row["check_validation"] = group["check_validation"].iloc[0]
        row["score_note"] = "; ".join(f"s{s}: {n}" for s, n in zip(group["seed"], group["score_note"]) if n)
        row["agrees"] = bool(row["predicted"]) and all(agrees(row["predicted"], v) for v in group["verdict"])
        rows.append(row)
    return pd.DataFrame(rows)


def study_summary(cfg: Config, tracking_uri: str, study: str | None = None) -> pd.DataFrame:
    """One row per variant of a study (default: the config's own), as in summary.csv; empty if no runs."""
    runs = runs_of_grid(load_runs(tracking_uri, cfg.name, study=study or cfg.study_name), cfg)
    points = point_rows(runs, cfg)
    return pd.DataFrame() if points.empty else summarize(points)


def failures(runs: pd.DataFrame) -> pd.DataFrame:
    """Crashed or interrupted points that have no finished run."""
    if runs.empty:
        return runs
    finished = set(map(tuple, runs.loc[runs["status"] == "FINISHED", ["variant", "seed"]].values.tolist()))
    failed = runs[(runs["status"] != "FINISHED") & (runs["status"] != "RUNNING")]
    failed = failed[[(v, s) not in finished for v, s in zip(failed["variant"], failed["seed"])]]
    failed = failed.drop_duplicates(["variant", "seed"])
    reason = TAG_COLUMN + Tag.FAILURE
    cols = [c for c in ("variant", "seed", "status", reason) if c in failed]
    return failed[cols].rename(columns={reason: "reason"})


def csv_table(df: pd.DataFrame) -> pd.DataFrame:
    """Flags as `true`/`false`, as the CSV's readers expect."""
    df = df.copy()
    for col in FLAGS + ["agrees"]:
        if col in df:
            df[col] = df[col].map(lambda b: "true" if b else "false")
    return df
