"""Runs (read back from MLflow) -> summary.csv, runs.csv, report.md, report.html and figures. No TensorFlow.

One module per job: tables.py (runs -> per-seed and per-variant tables), explain.py (the "Why" in
words), markdown.py (the report's Markdown), compare.py (two studies side by side, also `harness
compare`), tuning.py (`harness tune`'s trials beside the grid), figures.py, html.py (Markdown ->
report.html). Here: write_report, which computes each section once and writes the files."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pandas as pd

from harness.config import Config
from harness.points import runs_of_grid
from harness.report.compare import compare_pipelines, compare_studies, comparison_table, study_summary
from harness.report.explain import explain, marked_verdicts, split_rule, validation_paragraph
from harness.report.figures import collect_samples, write_figures
from harness.report.html import cell_tone, render_html
from harness.report.markdown import render_markdown, reproduce_section
from harness.report.tables import SUMMARY_COLUMNS, csv_table, failures, point_rows, summarize
from harness.report.tuning import pick_best, tune_section
from harness.tracking import attach_report, load_runs, sweep_commands

__all__ = ["Written", "write_report", "summary_lines", "compare_studies", "comparison_table", "study_summary", "explain",
           "marked_verdicts", "split_rule", "validation_paragraph", "cell_tone", "render_html", "render_markdown",
           "failures", "point_rows", "summarize", "pick_best"]


class Written(NamedTuple):
    """What write_report wrote: report.md's path, and the per-variant summary (summary.csv's rows,
    unrounded; empty when the study has no finished grid run)."""
    path: Path
    summary: pd.DataFrame


def write_report(cfg: Config, results: Path, tracking_uri: str, command: str, study: str | None = None,
                 folder: Path | None = None) -> Written:
    """Read the runs back from MLflow and write <results>/<experiment>/{report.md,html,summary.csv,...}
    (or into `folder`), from the config's study or the given `study`."""
    study = study or cfg.study_name
    runs = runs_of_grid(load_runs(tracking_uri, cfg.name, study=study), cfg)   # current definitions only
    out = folder or results / cfg.report_name
    out.mkdir(parents=True, exist_ok=True)
    points = point_rows(runs, cfg)
    if points.empty:
        md = (f"# Report: {cfg.name}\n\nNo finished grid runs yet in study `{study}` "
              f"(`harness sweep` trains them).\n\n" + tune_section(cfg, tracking_uri, out, summary=None))
        (out / "report.md").write_text(md)
        (out / "report.html").write_text(render_html(md, out))
        return Written(out / "report.md", pd.DataFrame())
    summary = summarize(points)
    csv_table(summary[SUMMARY_COLUMNS]).to_csv(out / "summary.csv", index=False, float_format="%.6g",
                                               na_rep="nan", lineterminator="\n")
    csv_table(points.drop(columns=["history", "check_details", "check_validation", "cause_details", "symptom_details",
                                  "health_measured"])).to_csv(
        out / "runs.csv", index=False, float_format="%.6g", lineterminator="\n")
    health_figures = write_figures(points, summary, out)
    samples = collect_samples(points, tracking_uri, out)

    md = render_markdown(cfg, summary, points, failures(runs), samples, command, health_figures)
    md += "\n" + compare_pipelines(cfg, summary, tracking_uri)
    md += "\n" + tune_section(cfg, tracking_uri, out, summary)
    md += "\n" + reproduce_section(runs, points, sweep_commands(tracking_uri, cfg.name, study), command)
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(render_html(md, out))
    # The parent run keeps the report too, so a tracking server shows it to every host.
    attach_report(tracking_uri, cfg.name, study, [out / n for n in ("report.md", "report.html", "summary.csv")])
    return Written(out / "report.md", summary)


def summary_lines(summary: pd.DataFrame) -> list[str]:
    """The summary (one row per variant; empty: no finished grid run) as a table for the terminal."""
    if summary.empty:
        return []
    lines = [f"{'variant':<18} {'verdict':<15} {'predicted':<27} {'min_loss':>9} {'floor':>7} {'val_miou':>8} {'trivial':>7}"]
    for _, r in summary.iterrows():
        lines.append(f"{r['variant']:<18} {r['verdict']:<15} {r['predicted']:<27} {float(r['min_loss']):>9.3f} "
                     f"{float(r['loss_floor']):>7.3f} {float(r['val_miou']):>8.3f} {float(r['trivial_miou']):>7.3f}")
    return lines
