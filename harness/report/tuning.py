"""The report's "Best tuned result per variant": `harness tune`'s trials beside the fixed-setting grid
(tuned.csv, tuning.png and the section's Markdown)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness import plots
from harness.config import Config
from harness.report.markdown import markdown_table
from harness.report.tables import tag_int
from harness.runs import Tag, tag
from harness.tracking import OPTUNA_TRIAL_TAG, load_runs
from harness.verdict import FAILED, HEALTHY, judge


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
        state = tag(run, Tag.TUNE_STATE, "complete")
        judged = judge(history, float(tag(run, Tag.LOSS_FLOOR, 0.0) or 0.0),
                       float(tag(run, Tag.TRIVIAL_MIOU, 0.5) or 0.5), cfg["verdict"],
                       diverged=tag(run, Tag.DIVERGED) == "True",
                       diverged_epoch=tag_int(tag(run, Tag.DIVERGED_EPOCH)))
        rows.append({"variant": run["variant"], "trial": int(tag(run, OPTUNA_TRIAL_TAG, -1)), "state": state,
                     "verdict": judged["verdict"] if state == "complete" else state,
                     "val_miou": judged["final_miou"], "min_loss": judged["min_loss"],
                     "loss_floor": float(tag(run, Tag.LOSS_FLOOR, "nan")),
                     "trivial_miou": float(tag(run, Tag.TRIVIAL_MIOU, "nan")),
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


def tuned_reading(folder: Path, variant: str) -> str | None:
    """The report's sentence on `variant`'s tuning, read back from the tuned.csv the report just wrote:
    what `harness tune` prints last says what the report says."""
    path = folder / "tuned.csv"
    if not path.is_file():
        return None
    table = pd.read_csv(path, keep_default_na=False, na_values=["nan"])
    rows = table[table["variant"] == variant]
    if rows.empty:
        return None
    row = rows.iloc[0].to_dict()
    row["every_trial_failed"] = str(row["every_trial_failed"]) == "True"
    best = None if pd.isna(row["best_val_miou"]) else row
    return tune_reading(row, best)


def fmt_range(spec: dict) -> str:
    if "choices" in spec:
        return "in {" + ", ".join(map(str, spec["choices"])) + "}"
    return f"in [{spec['low']:g}, {spec['high']:g}]" + (" (log scale)" if spec.get("log") else "")


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
    if tuned not in HEALTHY and grid not in HEALTHY + ("unstable",):
        return text + f"; it fails at the best setting found as at the fixed one (`{grid}`): the failure is the variant's."
    if tuned in HEALTHY and grid not in HEALTHY + ("unstable",):
        return (text + f"; the grid's `{grid}` (val_miou {row['grid_val_miou']:.3f}) came from the fixed setting: "
                "tuning rescues the variant.")
    if tuned in HEALTHY:
        return (text + f"; it trains at the fixed setting (`{grid}`, val_miou {row['grid_val_miou']:.3f}) and at "
                "the best tuned one: no failure to explain.")
    return text + f"; the grid's `{grid}` trains while the best tuned trial does not: see the trials."
