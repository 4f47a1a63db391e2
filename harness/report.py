"""Runs (read back from MLflow) -> summary.csv, report.md, report.html and figures. No TensorFlow."""
from __future__ import annotations

import base64
import html
import json
import math
import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from harness import leakage, plots
from harness.config import Config
from harness.errors import ConfigError
from harness.points import runs_of_grid
from harness.tracking import artifact_path, attach_report, load_runs, sweep_commands
from harness.verdict import FAILED, HEALTHY, combine, judge, rules_markdown

PREDICTED = {"negative_loss_or_diverged": ("negative_loss", "diverged"), "trains": HEALTHY,
             "crashed": ("crashed",)}


def agrees(predicted: str, observed: str) -> bool:
    """The check's prediction (harness/check.py) against the verdict the sweep observed."""
    return observed in PREDICTED.get(predicted, ())

NUMERIC = ["final_loss", "min_loss", "loss_floor", "loss_floor_declared", "threshold", "val_iou", "val_miou", "val_dice", "val_as_train_miou",
           "trivial_miou", "seconds_per_epoch"]
FLAGS = ["negative_loss", "diverged", "converged"]

WHY = {
    "negative_loss": "the training loss fell below the loss's measured floor",
    "diverged": "a training loss reached NaN/Inf",
    "converged": "the loss stays above its floor and validation mIoU settles clearly above the trivial predictor",
    "learning": "validation mIoU is clearly above the trivial predictor and still improving: more epochs needed",
    "too_short": "validation mIoU is clearly above the trivial predictor, but too few epochs ran to judge a plateau",
    "degrading": "validation mIoU fell clearly from an earlier, better level: the model is getting worse",
    "not_learning": "validation mIoU stays at the trivial predictor's level",
    "unstable": "some seeds train and others fail",
    "crashed": "an exception ended the run; its reason is recorded in MLflow",
}
# Measured causes of a negative loss, from `harness check`'s flags (tags check.flags, check.details).
NEGATIVE_CAUSES = {
    "targets_outside_loss_domain": "the training targets leave the loss's domain",
    "loss_unbounded_below": "on these targets the loss has no lower bound",
    "loss_not_minimized_at_target": "the loss is least on the wrong side of the threshold",
}


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
        floor = float(run.get("tags.loss_floor", 0.0))
        trivial = float(run.get("tags.trivial_miou", 0.5))
        diverged = run.get("tags.diverged") == "True"
        judged = judge(history, floor, trivial, cfg["verdict"], diverged=diverged,
                       diverged_epoch=tag_int(run.get("tags.diverged_epoch")))
        epochs = max(1, int(run.get("tags.epochs_run", 1) or 1))
        recent = cfg["verdict"]["window"]
        rows.append({
            "variant": run["variant"], "seed": int(run["seed"]), "run_id": run["run_id"],
            "final_loss": judged["final_loss"], "min_loss": judged["min_loss"], "loss_floor": floor,
            "loss_floor_declared": tag_float(run.get("tags.loss_floor_declared")),
            "threshold": tag_float(run.get("tags.threshold")),
            "val_iou": tail_mean(scored(history, "val_iou", judged), recent),
            "val_miou": judged["final_miou"],
            "val_dice": tail_mean(scored(history, "val_dice", judged), recent),
            "val_as_train_miou": tail_mean(scored(history, "val_as_train_miou", judged), recent),
            "scored_epochs": judged["scored_epochs"], "score_note": judged["score_note"],
            "trivial_miou": trivial,
            "seconds_per_epoch": float(run.get("tags.seconds", "nan")) / epochs,
            "negative_loss": judged["negative_loss"], "diverged": judged["diverged"],
            "converged": judged["converged"], "verdict": judged["verdict"],
            "diverged_at": (f"epoch {run.get('tags.diverged_epoch')} batch {run.get('tags.diverged_batch')}"
                            if diverged and isinstance(run.get("tags.diverged_epoch"), str) else ""),
            "device": run.get("tags.device", ""), "history": history,
            "predicted": run.get("tags.check.predicted") if isinstance(run.get("tags.check.predicted"), str) else "",
            "check_flags": run.get("tags.check.flags") if isinstance(run.get("tags.check.flags"), str) else "",
            "check_details": run.get("tags.check.details") if isinstance(run.get("tags.check.details"), str) else "",
            "check_validation": run.get("tags.check.validation") if isinstance(run.get("tags.check.validation"), str) else "",
        })
    if not rows:
        return pd.DataFrame()
    order = {name: i for i, name in enumerate(v.name for v in cfg.variants)}
    df = pd.DataFrame(rows)
    df["order"] = df["variant"].map(order).fillna(len(order))
    return df.sort_values(["order", "seed"]).drop(columns="order").reset_index(drop=True)


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
        row["verdict_per_seed"] = " ".join(f"s{s}:{v}" for s, v in zip(group["seed"], group["verdict"]))
        row["predicted"] = group["predicted"].iloc[0]
        row["check_flags"] = group["check_flags"].iloc[0]
        row["check_details"] = group["check_details"].iloc[0]
        row["check_validation"] = group["check_validation"].iloc[0]
        row["score_note"] = "; ".join(f"s{s}: {n}" for s, n in zip(group["seed"], group["score_note"]) if n)
        row["agrees"] = bool(row["predicted"]) and all(agrees(row["predicted"], v) for v in group["verdict"])
        rows.append(row)
    return pd.DataFrame(rows)


def failures(runs: pd.DataFrame) -> pd.DataFrame:
    """Crashed or interrupted points that have no finished run."""
    if runs.empty:
        return runs
    finished = set(map(tuple, runs.loc[runs["status"] == "FINISHED", ["variant", "seed"]].values.tolist()))
    failed = runs[(runs["status"] != "FINISHED") & (runs["status"] != "RUNNING")]
    failed = failed[[(v, s) not in finished for v, s in zip(failed["variant"], failed["seed"])]]
    failed = failed.drop_duplicates(["variant", "seed"])
    cols = [c for c in ("variant", "seed", "status", "tags.failure") if c in failed]
    return failed[cols].rename(columns={"tags.failure": "reason"})


def csv_table(df: pd.DataFrame) -> pd.DataFrame:
    """Flags as `true`/`false`, as the CSV's readers (and the README) expect."""
    df = df.copy()
    for col in FLAGS + ["agrees"]:
        if col in df:
            df[col] = df[col].map(lambda b: "true" if b else "false")
    return df


def fmt(x, digits=3) -> str:
    if isinstance(x, (bool, np.bool_)):
        return "true" if x else "false"
    if isinstance(x, float):
        return "nan" if math.isnan(x) else f"{x:.{digits}f}"
    return str(x)


def markdown_table(df: pd.DataFrame, columns: list[str]) -> str:
    lines = ["| " + " | ".join(map(cell, columns)) + " |", "|" + "---|" * len(columns)]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(cell(fmt(row[c])) for c in columns) + " |")
    return "\n".join(lines)


def cell(text: str) -> str:
    """A table cell's text: a `|` (in a failure reason, say) escaped, so it cannot end the cell;
    line breaks folded, as a Markdown row is one line."""
    return " ".join(str(text).split()).replace("|", "\\|")


def explain(summary: pd.DataFrame) -> str:
    lines = []
    for _, row in summary.iterrows():
        why = WHY.get(row["verdict"], "")
        extra = ""
        if row["negative_loss"] or row["verdict"] == "negative_loss":
            extra += (f" Min training loss {row['min_loss']:.3g} against a measured floor of {round(row['loss_floor'], 4):.3g}"
                      f"; {negative_cause(row)}.")
        if row["diverged"] or row["verdict"] == "diverged":
            wrong = check_detail(row, "loss_not_minimized_at_target")
            extra += (" Measured before training: the loss is least on the wrong side of the threshold "
                      f"({wrong}), so minimizing it drives outputs to the head's bounds." if wrong else "")
            if row.get("score_note"):
                extra += f" Quality: {row['score_note']}."
        if not math.isnan(row["val_as_train_miou"]):
            extra += (f" Validation was fed raw: mIoU {row['val_miou']:.3f} as fed, {row['val_as_train_miou']:.3f} "
                      f"with inputs transformed like training (trivial {row['trivial_miou']:.3f}); ")
            if row["val_as_train_miou"] >= row["trivial_miou"] + 0.1 and row["val_as_train_miou"] > row["val_miou"] + 0.1:
                extra += "the model did learn, and the raw validation inputs hide it."
            else:
                extra += "fed like training it is no better: the model itself did not learn."
        declared = row.get("loss_floor_declared", float("nan"))
        if isinstance(declared, float) and math.isfinite(declared) and abs(declared - row["loss_floor"]) > 0.01:
            extra += f" The loss declares a floor of {declared:.3g}; measured {round(row['loss_floor'], 4):.3g} (the verdicts use the measured one)."
        extra += validation_note(row)
        why = why[:1].upper() + why[1:]
        lines.append(f"- **{row['variant']}**: `{row['verdict']}` ({row['verdict_per_seed']}). {why}.{extra}")
    return "\n".join(lines)


NEAR_TRAINING = "validation_near_training"
SPLIT_FIX = '--set data.split="contiguous"'


def near_training(row) -> bool:
    return NEAR_TRAINING in str(row.get("check_flags", "")).split(",")


def validation_of(row) -> dict:
    """What `harness check` measured of the validation set (tag check.validation); {} before it did."""
    try:
        return json.loads(row.get("check_validation") or "{}")
    except json.JSONDecodeError:
        return {}


def validation_note(row) -> str:
    """For a verdict measured on a validation set that sits close to training: the flag, the numbers
    and the fix ('' otherwise)."""
    if not near_training(row):
        return ""
    fix = validation_of(row).get("fix") or f"hold out a block of the volume or video: {SPLIT_FIX}"
    return (f" Measured on a validation set that sits close to training (`{NEAR_TRAINING}`: "
            f"{check_detail(row, NEAR_TRAINING)}): its scores measure recall of near-copies more than "
            f"generalization, so this verdict and the mIoU ranking are optimistic. Fix: {fix.replace(SPLIT_FIX, f'`{SPLIT_FIX}`')}.")


def marked_verdicts(summary: pd.DataFrame) -> pd.DataFrame:
    """The verdict table's copy: a verdict on a validation set close to training says so."""
    shown = summary.copy()
    shown["verdict"] = [f"{v} (validation near training)" if near_training(r) else v
                        for v, (_, r) in zip(summary["verdict"], summary.iterrows())]
    return shown


def validation_paragraph(summary: pd.DataFrame) -> str:
    """Which split the verdicts were measured on, and what the check measured of it."""
    found = next((v for v in map(validation_of, (r for _, r in summary.iterrows())) if v), {})
    if not found:
        return ("Validation: how close it sits to training was not measured for these runs (they predate "
                "`harness check`'s `validation_near_training`).")
    text = f"Validation: {found['measured']}."
    if found.get("flagged"):
        text += f" Flagged `{NEAR_TRAINING}`: the verdicts below are marked."
    return text


def check_detail(row, flag: str) -> str:
    """What `harness check` measured for a flag of this variant ('' when not flagged)."""
    if flag not in str(row.get("check_flags", "")).split(","):
        return ""
    try:
        return json.loads(row.get("check_details") or "{}").get(flag, "flagged")
    except json.JSONDecodeError:
        return "flagged"


def negative_cause(row) -> str:
    """The measured cause of a negative loss: a check flag with its measurement, never a guess."""
    causes = [f"{text} ({check_detail(row, flag)})" for flag, text in NEGATIVE_CAUSES.items()
              if check_detail(row, flag)]
    if causes:
        return "measured before training: " + "; ".join(causes)
    if not row.get("check_flags"):
        return "no measurement of the cause was recorded for these runs (`harness check` explains it)"
    return ("the targets stay inside the loss's domain and the loss is bounded there: "
            "the loss itself goes below its own floor")


def write_report(cfg: Config, results: Path, tracking_uri: str, command: str, study: str | None = None,
                 folder: Path | None = None) -> Path:
    """Read the runs back from MLflow and write <results>/<experiment>/{report.md,html,summary.csv,...}
    (or into `folder`), from the config's study or the given `study`."""
    study = study or cfg.study_name
    runs = runs_of_grid(load_runs(tracking_uri, cfg.name, study=study), cfg)   # current definitions only
    out = folder or results / cfg.report_name
    out.mkdir(parents=True, exist_ok=True)
    points = point_rows(runs, cfg)
    tuned = tune_section(cfg, tracking_uri, out, summary=None)
    if points.empty:
        md = (f"# Report: {cfg.name}\n\nNo finished grid runs yet in study `{study}` "
              f"(`harness sweep` trains them).\n\n" + tuned)
        (out / "report.md").write_text(md)
        (out / "report.html").write_text(render_html(md, out))
        return out / "report.md"
    summary = summarize(points)
    summary_cols = (["variant", "seeds", "seeds_scored"] + [c for n in NUMERIC for c in (n, f"{n}_std")] + FLAGS
                    + ["verdict", "predicted", "agrees", "check_flags", "score_note"])
    csv_table(summary[summary_cols]).to_csv(out / "summary.csv", index=False, float_format="%.6g",
                                            na_rep="nan", lineterminator="\n")
    csv_table(points.drop(columns=["history", "check_details", "check_validation"])).to_csv(out / "runs.csv", index=False, float_format="%.6g",
                                                     lineterminator="\n")

    floors = dict(zip(summary["variant"], summary["loss_floor"]))
    curves = {v: [(int(r.seed), r.history) for r in g.itertuples()] for v, g in points.groupby("variant", sort=False)}
    figures = {"loss_curves.png": plots.all_loss_curves(curves, floors),
               "miou.png": plots.miou_bars(summary, float(points["trivial_miou"].mean()))}
    for name, fig in figures.items():
        fig.savefig(out / name, dpi=90, bbox_inches="tight")
    plots.close_all()
    samples = collect_samples(points, tracking_uri, out)

    md = render_markdown(cfg, summary, points, failures(runs), samples, command)
    md += "\n" + compare_pipelines(cfg, summary, tracking_uri)
    md += "\n" + tune_section(cfg, tracking_uri, out, summary)
    md += "\n" + reproduce_section(runs, points, sweep_commands(tracking_uri, cfg.name, study), command)
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(render_html(md, out))
    # The parent run keeps the report too, so a tracking server shows it to every host.
    attach_report(tracking_uri, cfg.name, study, [out / n for n in ("report.md", "report.html", "summary.csv")])
    return out / "report.md"


VERSION_PARAMS = {"python": "params.python", "tensorflow": "params.version.tensorflow",
                  "keras": "params.version.keras", "jax": "params.version.jax", "optuna": "params.version.optuna",
                  "mlflow": "params.version.mlflow", "harness commit": "tags.mlflow.source.git.commit",
                  "uncommitted changes": "tags.mlflow.source.git.dirty"}


def reproduce_section(runs: pd.DataFrame, points: pd.DataFrame, commands: list[str], command: str) -> str:
    """How to get these runs again: the sweep command(s) that trained them, with every --set (read
    from the MLflow parent runs of the study), and the versions and device the runs recorded."""
    used = runs[runs["run_id"].isin(points["run_id"])] if "run_id" in points else runs
    lines = ["## Reproduce", ""]
    if commands:
        lines += [f"The runs above were trained by {'this command' if len(commands) == 1 else 'these commands'} "
                  "(from the sweep's MLflow parent run; the resolved settings are its `config.json`):", "",
                  "```", *commands, "```", ""]
    else:
        lines += ["No sweep command was recorded for these runs (they predate its logging).", ""]
    found = {name: ", ".join(sorted(set(used[col].dropna().astype(str)))) for name, col in VERSION_PARAMS.items()
             if col in used}
    found["device"] = ", ".join(sorted(set(points["device"].astype(str)))) if "device" in points else ""
    for name in ("deterministic", "feed"):          # recorded since harness/backend.py and device augmentation
        col = f"tags.{name}"
        found[name] = ", ".join(sorted(set(used[col].dropna().astype(str)))) if col in used else ""
    lines += ["Recorded by the runs: " + "; ".join(f"{k} {v}" for k, v in found.items() if v) + ".", "",
              f"This report: `{command}`.", ""]
    return "\n".join(lines)


def compare_pipelines(cfg: Config, summary: pd.DataFrame, tracking_uri: str) -> str:
    """Where the same experiment also ran through the other pipeline (same settings otherwise),
    its verdicts, mIoU and seconds per epoch side by side."""
    if cfg["speed"]["device_augment"]:
        mine, other, overrides = "device augment", "tfdata", {"speed.device_augment": False}
    else:
        mine = cfg["pipeline"]
        other = "imagedatagenerator" if mine == "tfdata" else "tfdata"
        overrides = {"pipeline": other}
    try:
        other_cfg = cfg.with_overrides(overrides)
    except ConfigError:
        return ""             # the host pipelines under a backend other than TensorFlow: none can have run
    theirs = study_summary(other_cfg, tracking_uri)
    table = comparison_table(summary, theirs, mine, other)
    if table.empty:
        return ""
    return "\n".join(["## Pipelines compared", "",
                      f"The same variants and settings through the `{other}` pipeline (read from the same MLflow "
                      f"experiment, study `{other_cfg.study_name}`).", "",
                      markdown_table(table, list(table.columns)), ""])


def study_summary(cfg: Config, tracking_uri: str, study: str | None = None) -> pd.DataFrame:
    """One row per variant of a study (default: the config's own), as in summary.csv; empty if no runs."""
    runs = runs_of_grid(load_runs(tracking_uri, cfg.name, study=study or cfg.study_name), cfg)
    points = point_rows(runs, cfg)
    return pd.DataFrame() if points.empty else summarize(points)


def comparison_table(a: pd.DataFrame, b: pd.DataFrame, label_a: str, label_b: str) -> pd.DataFrame:
    """Variants of two summaries side by side, in A's order (those in both): verdicts, val_miou and
    its difference (B - A), seconds per epoch. Shared by the report and `harness compare`."""
    if a.empty or b.empty:
        return pd.DataFrame()
    theirs = b.set_index("variant")
    rows = []
    for _, row in a.iterrows():
        if row["variant"] not in theirs.index:
            continue
        t = theirs.loc[row["variant"]]
        rows.append({"variant": row["variant"], f"verdict ({label_a})": row["verdict"],
                     f"verdict ({label_b})": t["verdict"], "same verdict": row["verdict"] == t["verdict"],
                     f"val_miou ({label_a})": row["val_miou"], f"val_miou ({label_b})": t["val_miou"],
                     "val_miou difference": t["val_miou"] - row["val_miou"],
                     f"s/epoch ({label_a})": row["seconds_per_epoch"], f"s/epoch ({label_b})": t["seconds_per_epoch"]})
    return pd.DataFrame(rows)


def compare_labels(cfg_a: Config, study_a: str, cfg_b: Config, study_b: str) -> tuple[str, str]:
    """Name each side by what tells them apart: the experiment, else the pipeline, else the study."""
    if cfg_a.name != cfg_b.name:
        return cfg_a.name, cfg_b.name
    if cfg_a["pipeline"] != cfg_b["pipeline"]:
        return cfg_a["pipeline"], cfg_b["pipeline"]
    return study_a, study_b


def compare_studies(cfg_a: Config, study_a: str, cfg_b: Config, study_b: str, tracking_uri: str) -> tuple[str, pd.DataFrame]:
    """`harness compare`: Markdown (heading, what is compared, the table) and the table itself."""
    label_a, label_b = compare_labels(cfg_a, study_a, cfg_b, study_b)
    a, b = study_summary(cfg_a, tracking_uri, study_a), study_summary(cfg_b, tracking_uri, study_b)
    table = comparison_table(a, b, label_a, label_b)
    head = [f"# Compared: {label_a} and {label_b}", "",
            f"A: experiment `{cfg_a.name}`, study `{study_a}` ({len(a)} variants with finished runs); "
            f"B: experiment `{cfg_b.name}`, study `{study_b}` ({len(b)}). `val_miou difference` is B - A.", ""]
    if table.empty:
        return "\n".join(head + ["No variant has finished runs in both.", ""]), table
    return "\n".join(head + [markdown_table(table, list(table.columns)), ""]), table


def tune_rows(cfg: Config, tracking_uri: str) -> pd.DataFrame:
    """One row per `harness tune` trial tuned from this setting of the experiment, verdicts
    recomputed from each run's history as for the grid."""
    runs = load_runs(tracking_uri, cfg.name, study=None, kind="tune", base_study=cfg.study_name)
    if runs.empty:
        return pd.DataFrame()
    rows = []
    for _, run in runs[runs["status"] == "FINISHED"].iterrows():
        history = run.get("history") or {}
        tuned = {k.removeprefix("params.tuned."): v for k, v in run.items()
                 if k.startswith("params.tuned.") and isinstance(v, str)}
        state = run.get("tags.tune.state", "complete")
        judged = judge(history, float(run.get("tags.loss_floor", 0.0) or 0.0),
                       float(run.get("tags.trivial_miou", 0.5) or 0.5), cfg["verdict"],
                       diverged=run.get("tags.diverged") == "True",
                       diverged_epoch=tag_int(run.get("tags.diverged_epoch")))
        rows.append({"variant": run["variant"], "trial": int(run.get("tags.optuna.trial", -1)), "state": state,
                     "verdict": judged["verdict"] if state == "complete" else state,
                     "val_miou": judged["final_miou"], "min_loss": judged["min_loss"],
                     "loss_floor": float(run.get("tags.loss_floor", "nan")),
                     "trivial_miou": float(run.get("tags.trivial_miou", "nan")),
                     "epochs_run": len(history.get("loss", [])), "tuned": tuned})
    return pd.DataFrame(rows)


def tune_section(cfg: Config, tracking_uri: str, out: Path, summary: pd.DataFrame | None) -> str:
    """"Best tuned result per variant", beside the fixed-setting grid: a variant that fails at every
    learning rate fails for its own reasons; one rescued by tuning failed for its learning rate."""
    trials = tune_rows(cfg, tracking_uri)
    if trials.empty:
        return ""
    grid = summary.set_index("variant") if summary is not None and not summary.empty else pd.DataFrame()
    rows, lines = [], []
    order = {v.name: i for i, v in enumerate(cfg.variants)}
    trials = trials.sort_values(["variant", "trial"], key=lambda c: c.map(order) if c.name == "variant" else c)
    for variant, group in trials.groupby("variant", sort=False):
        best, all_failed = pick_best(group)
        fixed = grid.loc[variant] if variant in grid.index else None
        row = {"variant": variant, "trials": len(group), "pruned": int((group["state"] == "pruned").sum()),
               "best_setting": ", ".join(f"{k}={float(v):.4g}" for k, v in best["tuned"].items()) if best is not None else "",
               "best_val_miou": best["val_miou"] if best is not None else float("nan"),
               "best_verdict": best["verdict"] if best is not None else "",
               "grid_val_miou": fixed["val_miou"] if fixed is not None else float("nan"),
               "grid_verdict": fixed["verdict"] if fixed is not None else "",
               "verdicts_over_trials": " ".join(f"{v}:{n}" for v, n in group["verdict"].value_counts().items()),
               "every_trial_failed": all_failed}
        rows.append(row)
        lines.append(f"- **{variant}**: {tune_reading(row, best)}")
    table = pd.DataFrame(rows)
    table.to_csv(out / "tuned.csv", index=False, float_format="%.6g", lineterminator="\n")
    fig = plots.tuning_scatter(trials, cfg["tune"]["ranges"])
    fig.savefig(out / "tuning.png", dpi=90, bbox_inches="tight")
    plots.close_all()
    ranges = ", ".join(f"`{k}` {fmt_range(v)}" for k, v in cfg["tune"]["ranges"].items())
    return "\n".join([
        "## Best tuned result per variant", "",
        f"`harness tune VARIANT`: Optuna's TPE sampler over {ranges}, seed {cfg['tune']['seed']}, with a median "
        f"pruner on the per-epoch val_miou averaged over the last {cfg['verdict']['window']} epochs (no pruning "
        f"before epoch {cfg['tune']['pruner_warmup_epochs']}; pruned trials are not candidates for best). "
        "`grid_*` is the fixed-setting grid above (mean over seeds); a verdict that holds at the best tuned "
        "setting is the variant's own, not its learning rate's.", "",
        markdown_table(table, list(table.columns)), "", *lines, "",
        "![tuning](tuning.png)", ""])


def pick_best(trials: pd.DataFrame):
    """The best finished trial by val_miou among those that did not fail (diverged, negative loss,
    ...); only when every trial failed, the best of those, flagged. -> (row or None, every_failed)."""
    complete = trials[trials["state"] == "complete"].dropna(subset=["val_miou"])
    if complete.empty:
        return None, bool(len(trials))
    healthy = complete[~complete["verdict"].isin(FAILED)]
    pool = healthy if not healthy.empty else complete
    return pool.loc[pool["val_miou"].idxmax()], healthy.empty


def fmt_range(spec: dict) -> str:
    if "choices" in spec:
        return "in {" + ", ".join(map(str, spec["choices"])) + "}"
    return f"in [{spec['low']:g}, {spec['high']:g}]" + (" (log scale)" if spec.get("log") else "")


TRAINS = HEALTHY


def tune_reading(row: dict, best) -> str:
    """One sentence: does the variant fail at every setting tried, or did tuning change the verdict?"""
    if best is None:
        return f"no trial finished ({row['verdicts_over_trials']})."
    text = ("every trial failed; the best of the failed ones: " if row["every_trial_failed"] else "") + (
        f"best val_miou {row['best_val_miou']:.3f} (`{row['best_verdict']}`) at {row['best_setting']}, "
            f"over {row['trials']} trials ({row['verdicts_over_trials']})")
    grid, tuned = row["grid_verdict"], row["best_verdict"]
    if not grid:
        return text + "; no grid run to compare with."
    if tuned not in TRAINS and grid not in TRAINS + ("unstable",):
        return text + f"; it fails at the best setting found as at the fixed one (`{grid}`): the failure is the variant's."
    if tuned in TRAINS and grid not in TRAINS + ("unstable",):
        return (text + f"; the grid's `{grid}` (val_miou {row['grid_val_miou']:.3f}) came from the fixed setting: "
                "tuning rescues the variant.")
    if tuned in TRAINS:
        return (text + f"; it trains at the fixed setting (`{grid}`, val_miou {row['grid_val_miou']:.3f}) and at "
                "the best tuned one: no failure to explain.")
    return text + f"; the grid's `{grid}` trains while the best tuned trial does not: see the trials."


def collect_samples(points: pd.DataFrame, tracking_uri: str, out: Path) -> list[str]:
    """Copy each variant's prediction figure (first seed) next to the report."""
    names = []
    for variant, group in points.groupby("variant", sort=False):
        path = artifact_path(tracking_uri, group.iloc[0]["run_id"], "predictions.png")
        if path:
            target = out / f"predictions_{variant}.png"
            target.write_bytes(Path(path).read_bytes())
            names.append(target.name)
    return names


def render_markdown(cfg, summary, points, failed, samples, command) -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    devices = ", ".join(sorted(set(points["device"].astype(str))))
    parts = [
        f"# Report: {cfg.name}",
        "",
        f"{cfg['description']}".strip(),
        "",
        f"Produced by `{command}` on {when}; device: {devices}. Runs are read back from the MLflow store.",
        "",
        "## Verdicts",
        "",
        markdown_table(marked_verdicts(summary), ["variant", "seeds", "seeds_scored", "verdict", "predicted", "agrees", "negative_loss",
                                 "diverged",
                                 "converged",
                                 "min_loss", "loss_floor", "final_loss", "val_miou", "val_miou_std",
                                 "val_as_train_miou", "trivial_miou", "val_iou", "val_dice"]),
        "",
        "Numbers are means over the seeds that could be scored (`seeds_scored`; a run that diverged is "
        "scored on its epochs before the divergence, or not at all), `_std` the spread over seeds; IoU/Dice "
        f"over the last {cfg['verdict']['window']} scored epochs. `loss_floor` is measured: the loss at perfect "
        "predictions of valid targets. `val_as_train_miou` is shown where validation was fed raw.",
        "",
        validation_paragraph(summary),
        "",
        "## Why",
        "",
        explain(summary),
        "",
        "## Loss curves", "", "![loss curves](loss_curves.png)", "",
        "## Validation mIoU per variant", "",
        "Bars: mean over seeds; whiskers: ±1 standard deviation over seeds (the seed spread).", "",
        "![mIoU](miou.png)", "",
        *sample_lines(samples),
        "## Predicted before training (`harness check`)",
        "",
        "Flags measured on the data and probed on the loss before any training; `predicted` is "
        "`negative_loss_or_diverged` when the loss is unbounded below or not minimized at the target, "
        "else `trains`; `agrees` compares it with every seed's observed verdict. `loss_floor` and "
        "`threshold` are measured by the same probe; `loss_floor_declared` is what the loss declares "
        "(nan: nothing declared).",
        "",
        markdown_table(summary, ["variant", "check_flags", "predicted", "verdict", "agrees", "loss_floor",
                                 "loss_floor_declared", "threshold"]),
        "",
    ]
    if not failed.empty:
        parts += ["## Crashed or interrupted points", "", markdown_table(failed, list(failed.columns)), ""]
    parts += [
        "## Rules", "", rules_markdown(cfg["verdict"]), "",
        leakage.rule_text(cfg["leakage"]["margin"], cfg["leakage"]["far_fraction"], cfg["leakage"]["side"]), "",
        split_rule(cfg["data"]), "",
        "## Per seed", "",
        markdown_table(points, ["variant", "seed", "verdict", "min_loss", "final_loss", "val_miou",
                                "val_as_train_miou", "diverged_at", "seconds_per_epoch"]),
        "",
    ]
    parts += ["## Variants", "", markdown_table(pd.DataFrame([{"variant": v.name, **v.axes()} for v in cfg.variants]),
                                                ["variant", "images", "masks", "head", "loss", "validation"]), ""]
    return "\n".join(parts)


def split_rule(data: dict) -> str:
    """The train/validation split these settings make, in words."""
    if data["split"] == "contiguous":
        return (f"Split (`data.split = \"contiguous\"`): the last {data['val_fraction']:g} of the source files in natural "
                "sort order validate, a block of the volume or video; the file just before it is dropped, so the "
                "block's first slice has no direct neighbour in training.")
    return (f"Split (`data.split = \"random\"`): {data['val_fraction']:g} of the source files, drawn with seed "
            f"{data['split_seed']}, validate; tiles of one file stay on one side. Slices of a volume or frames of a "
            f"video then have neighbours on both sides: `{NEAR_TRAINING}` says whether that happened, and "
            f"`{SPLIT_FIX}` holds out a block instead.")


VERDICT_TONE = {"converged": "good", "learning": "warn", "unstable": "warn", "not_learning": "warn",
                "negative_loss": "bad", "diverged": "bad", "crashed": "bad"}
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml",
               ".gif": "image/gif", ".webp": "image/webp"}
STYLE = """
body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222;line-height:1.4}
h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
.scroll{overflow-x:auto;max-width:100%;margin:1em 0}
table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#eef1f5;vertical-align:bottom}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
td.num{white-space:nowrap}
tbody tr:nth-child(even) td{background:#fafafa}
th:first-child,td:first-child{position:sticky;left:0;background:#fff;font-weight:600}
th:first-child{background:#eef1f5}
td.good{background:#dff3e0 !important;color:#135c1c;font-weight:600}
td.warn{background:#fff3d6 !important;color:#6b4d00;font-weight:600}
td.bad{background:#fbe0e0 !important;color:#8a1414;font-weight:600}
td code{background:transparent;padding:0}
code{background:#f3f3f3;padding:0 3px}
img{max-width:100%;height:auto}
figure{margin:1em 0}
.gallery{display:flex;flex-wrap:wrap;gap:1em 2em;align-items:flex-start}
.gallery figure{margin:0}
figcaption{font-size:13px;text-align:center;color:#444}
.missing{color:#8a1414}
"""


def sample_lines(samples: list[str]) -> list[str]:
    if not samples:
        return []
    return (["## Sample predictions", "", "Per variant (first seed): input image, ground truth, raw output, "
             "output thresholded through the head.", ""]
            + [f"![predictions: {name.removeprefix('predictions_').removesuffix('.png')}]({name})" for name in samples]
            + [""])


def render_html(md: str, folder: Path) -> str:
    """A self-contained page from the report's Markdown, parsed by markdown-it-py (CommonMark with
    tables): wide tables scroll sideways, numbers are right-aligned, verdict cells coloured, figures
    embedded as base64 (consecutive figures side by side, each captioned). No external CSS, JS or fonts."""
    from markdown_it import MarkdownIt
    parser = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = parser.parse(md)
    mark_headings(tokens)
    mark_tables(tokens)
    mark_galleries(tokens)
    parser.add_render_rule("image", lambda renderer, tokens, i, options, env: html_image(tokens[i], folder))
    parser.add_render_rule("table_open", lambda *args: "<div class='scroll'><table>\n")
    parser.add_render_rule("table_close", lambda *args: "</table></div>\n")
    body = parser.renderer.render(tokens, parser.options, {})
    titles = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open" and t.tag == "h1"]
    title = titles[0].replace("`", "") if titles else "harness report"
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>\n"
            + body + "</body></html>\n")


def mark_headings(tokens) -> None:
    """Headings get ids (links into the report: report.html#verdicts)."""
    for i, token in enumerate(tokens):
        if token.type == "heading_open":
            slug = re.sub(r"[^a-z0-9]+", "-", tokens[i + 1].content.lower()).strip("-")
            token.attrSet("id", slug)


def mark_tables(tokens) -> None:
    """Per table: columns whose cells are all numbers are right-aligned (class num); cells of
    `verdict` columns are coloured by verdict, `false` in `agrees`/`same verdict` as bad."""
    start = None
    for i, token in enumerate(tokens):
        if token.type == "table_open":
            start = i
        elif token.type == "table_close" and start is not None:
            mark_table(tokens[start:i + 1])
            start = None


def mark_table(tokens) -> None:
    rows, row = [], []
    for i, token in enumerate(tokens):
        if token.type in ("th_open", "td_open"):
            row.append((token, tokens[i + 1].content))
        elif token.type == "tr_close":
            rows.append(row)
            row = []
    if not rows:
        return
    head, rest = [text for _, text in rows[0]], rows[1:]
    for i, name in enumerate(head):
        cells = [r[i] for r in rest if i < len(r)]
        numeric = bool(cells) and any(text for _, text in cells) and all(not text or is_number(text)
                                                                         for _, text in cells)
        rows[0][i][0].attrSet("scope", "col")
        for token, text in ([rows[0][i]] if numeric else []) + cells:
            classes = ["num"] if numeric else []
            tone = cell_tone(name, text) if token.type == "td_open" else ""
            if classes or tone:
                token.attrSet("class", " ".join(filter(None, classes + [tone])))


def cell_tone(column: str, text: str) -> str:
    # "converged (validation near training)" is coloured as converged; the note stays visible.
    name, value = column.strip("`").lower(), text.strip("`").split(" (")[0]
    if name.startswith("verdict") and value in VERDICT_TONE:
        return VERDICT_TONE[value]
    if name in ("agrees", "same verdict") and value == "false":
        return "bad"
    return ""


def mark_galleries(tokens) -> None:
    """A paragraph of figures only becomes one figure, or a captioned gallery when there are several."""
    for i, token in enumerate(tokens):
        if token.type != "paragraph_open":
            continue
        children = tokens[i + 1].children or []
        images = [c for c in children if c.type == "image"]
        if not images or any(c.type not in ("image", "softbreak") and c.content.strip() for c in children):
            continue
        if len(images) > 1:
            token.tag, tokens[i + 2].tag = "div", "div"
            token.attrSet("class", "gallery")
            for image in images:
                image.meta["caption"] = True
        else:
            token.hidden = tokens[i + 2].hidden = True       # a lone figure needs no <p> around it


def is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def html_image(token, folder: Path) -> str:
    """One figure, embedded as base64; captioned in a gallery; a missing file is said, not hidden."""
    name, alt = token.attrGet("src") or "", token.content
    path = folder / name
    if not path.is_file():
        return f"<span class='missing'>Figure missing: <code>{html.escape(name)}</code></span>"
    mime = IMAGE_TYPES.get(path.suffix.lower(), "image/png")
    data = base64.b64encode(path.read_bytes()).decode()
    caption = Path(alt).stem if Path(alt).suffix.lower() in IMAGE_TYPES else alt
    return (f'<figure><img alt="{html.escape(alt)}" title="{html.escape(name)}" src="data:{mime};base64,{data}">'
            + (f"<figcaption>{html.escape(caption)}</figcaption>" if token.meta.get("caption") else "")
            + "</figure>")
