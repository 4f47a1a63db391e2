"""Two studies side by side: the report's "Pipelines compared" section and `harness compare`."""
from __future__ import annotations

import pandas as pd

from harness.config import Config
from harness.errors import ConfigError
from harness.report.markdown import markdown_table
from harness.report.tables import study_summary


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
