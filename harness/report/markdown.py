"""The report as Markdown: tables as Markdown, the grid's sections (verdicts, why, figures, check,
rules, per seed, variants) and how to reproduce the runs."""
from __future__ import annotations

import math
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from harness import leakage
from harness.causes import DATA_AND_LOSS_CAUSES, LOSS_CAUSES
from harness.report.explain import explain, marked_verdicts, split_rule, validation_paragraph
from harness.health import rules_markdown as health_rules_markdown
from harness.runs import Tag
from harness.tracking import GIT_COMMIT_TAG, GIT_DIRTY_TAG, TAG_COLUMN
from harness.verdict import rules_markdown


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


def render_markdown(cfg, summary, points, failed, samples, command, health_figures=()) -> str:
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
        markdown_table(marked_verdicts(summary), ["variant", "seeds", "seeds_scored", "verdict", "causes", "symptoms", "predicted", "agrees", "negative_loss",
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
        *health_lines(health_figures),
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
        "Causes (`causes`, tag `causes`): what to fix, in one vocabulary. Before training, `harness check`'s "
        "flags that make a run fail by themselves (`" + "`, `".join(DATA_AND_LOSS_CAUSES) + "`); during training, "
        f"once per epoch (the gradients over the epoch's training steps, the rest on one fixed batch of "
        f"{cfg['health']['batch']} training images as training feeds them), the causes below (tag "
        "`health.causes`), judged on every run whatever its verdict. A training-health cause or a verdict that a "
        "loss cause (`" + "`, `".join(LOSS_CAUSES) + "`) produces is listed as its symptom (`symptoms`), not "
        "as a cause of its own:", "",
        health_rules_markdown(cfg["health"]), "",
        leakage.rule_text(cfg["leakage"]["margin"], cfg["leakage"]["far_fraction"], cfg["leakage"]["side"]), "",
        split_rule(cfg["data"]), "",
        "## Per seed", "",
        markdown_table(points, ["variant", "seed", "verdict", "causes", "symptoms", "min_loss", "final_loss", "val_miou",
                                "val_as_train_miou", "diverged_at", "seconds_per_epoch"]),
        "",
    ]
    parts += ["## Variants", "", markdown_table(pd.DataFrame([{"variant": v.name, **v.axes()} for v in cfg.variants]),
                                                ["variant", "images", "masks", "head", "loss", "validation"]), ""]
    return "\n".join(parts)


def health_lines(names) -> list[str]:
    """The failed variants' training-health figures (harness/monitor.py), if any."""
    if not names:
        return []
    lines = ["## Training health of the failed variants", "",
             "Per epoch: the gradient norm of the first layer, the last one before the head, and the head "
             "(left, log scale; the root mean square over the epoch's training steps); on one fixed training "
             "batch, the share of ReLU channels never active and of head outputs at its bounds (right). "
             "Solid: first seed.", ""]
    for name in names:
        lines += [f"![{name[:-4]}]({name})", ""]
    return lines


def sample_lines(samples: list[str]) -> list[str]:
    if not samples:
        return []
    return (["## Sample predictions", "", "Per variant (first seed): input image, ground truth, raw output, "
             "output thresholded through the head.", ""]
            + [f"![predictions: {name.removeprefix('predictions_').removesuffix('.png')}]({name})" for name in samples]
            + [""])


VERSION_PARAMS = {"python": "params.python", "tensorflow": "params.version.tensorflow",
                  "keras": "params.version.keras", "jax": "params.version.jax", "optuna": "params.version.optuna",
                  "mlflow": "params.version.mlflow", "harness commit": TAG_COLUMN + GIT_COMMIT_TAG,
                  "uncommitted changes": TAG_COLUMN + GIT_DIRTY_TAG}


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
    for name in (Tag.DETERMINISTIC, Tag.FEED):      # recorded since harness/backend.py and device augmentation
        col = TAG_COLUMN + name
        found[name] = ", ".join(sorted(set(used[col].dropna().astype(str)))) if col in used else ""
    lines += ["Recorded by the runs: " + "; ".join(f"{k} {v}" for k, v in found.items() if v) + ".", "",
              f"This report: `{command}`.", ""]
    return "\n".join(lines)
