"""The report's figures beside report.md: every variant's loss curves, the mIoU bars, each failed
variant's training health, and each variant's prediction samples copied from its run."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness import plots
from harness.health import measured
from harness.tracking import artifact_path
from harness.verdict import HEALTHY


def write_figures(points: pd.DataFrame, summary: pd.DataFrame, out: Path) -> list[str]:
    """loss_curves.png (every run's loss against its floor), miou.png (mean and spread over seeds) and
    health_<variant>.png for each variant that failed and has health metrics. -> the health figures' names."""
    floors = dict(zip(summary["variant"], summary["loss_floor"]))
    curves = {v: [(int(r.seed), r.history) for r in g.itertuples()] for v, g in points.groupby("variant", sort=False)}
    figures = {"loss_curves.png": plots.all_loss_curves(curves, floors),
               "miou.png": plots.miou_bars(summary, float(points["trivial_miou"].mean()))}
    for variant, verdict in zip(summary["variant"], summary["verdict"]):
        if verdict not in HEALTHY and any(measured(h) for _, h in curves[variant]):
            figures[f"health_{variant}.png"] = plots.health_curves(curves[variant], variant)
    for name, fig in figures.items():
        fig.savefig(out / name, dpi=90, bbox_inches="tight")
    return [name for name in figures if name.startswith("health_")]


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
