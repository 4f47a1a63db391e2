"""Runs (read back from MLflow) -> summary.csv, report.md, report.html and figures. No TensorFlow."""
from __future__ import annotations

import base64
import html
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from harness import plots
from harness.config import Config
from harness.tracking import artifact_path, load_runs
from harness.verdict import judge, rules_markdown

PREDICTED = {"negative_loss_or_diverged": ("negative_loss", "diverged"), "trains": ("converged", "learning"),
             "crashed": ("crashed",)}


def agrees(predicted: str, observed: str) -> bool:
    """The check's prediction (harness/check.py) against the verdict the sweep observed."""
    return observed in PREDICTED.get(predicted, ())

NUMERIC = ["final_loss", "min_loss", "loss_floor", "val_iou", "val_miou", "val_dice", "val_as_train_miou",
           "trivial_miou", "seconds_per_epoch"]
FLAGS = ["negative_loss", "diverged", "converged"]

WHY = {
    "negative_loss": "the targets leave the loss's valid range (e.g. whitened masks fed to BCE), so the loss "
                     "can fall below its lower bound without limit; a lower loss no longer means a better model",
    "diverged": "a loss reached NaN/Inf: e.g. the posted modified BCE, whose missing minus sign makes "
                "minimizing push tanh outputs to +-1 where log(0) = -inf",
    "converged": "targets inside the loss's domain and validation fed like training: the loss is bounded by "
                 "its floor and validation mIoU settles clearly above the trivial predictor",
    "learning": "validation mIoU is clearly above the trivial predictor and still improving: more epochs needed",
    "not_learning": "validation mIoU stays at the trivial predictor's level",
    "unstable": "seeds disagree on the verdict",
    "crashed": "an exception ended the run; its reason is recorded in MLflow",
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
        judged = judge(history, floor, trivial, cfg["verdict"], diverged=diverged)
        epochs = max(1, int(run.get("tags.epochs_run", 1) or 1))
        recent = cfg["verdict"]["window"]
        rows.append({
            "variant": run["variant"], "seed": int(run["seed"]), "run_id": run["run_id"],
            "final_loss": judged["final_loss"], "min_loss": judged["min_loss"], "loss_floor": floor,
            "val_iou": tail_mean(history.get("val_iou", []), recent),
            "val_miou": judged["final_miou"],
            "val_dice": tail_mean(history.get("val_dice", []), recent),
            "val_as_train_miou": tail_mean(history.get("val_as_train_miou", []), recent),
            "trivial_miou": trivial,
            "seconds_per_epoch": float(run.get("tags.seconds", "nan")) / epochs,
            "negative_loss": judged["negative_loss"], "diverged": judged["diverged"],
            "converged": judged["converged"], "verdict": judged["verdict"],
            "diverged_at": (f"epoch {run.get('tags.diverged_epoch')} batch {run.get('tags.diverged_batch')}"
                            if diverged and isinstance(run.get("tags.diverged_epoch"), str) else ""),
            "device": run.get("tags.device", ""), "history": history,
            "predicted": run.get("tags.check.predicted") if isinstance(run.get("tags.check.predicted"), str) else "",
            "check_flags": run.get("tags.check.flags") if isinstance(run.get("tags.check.flags"), str) else "",
        })
    if not rows:
        return pd.DataFrame()
    order = {name: i for i, name in enumerate(v.name for v in cfg.variants)}
    df = pd.DataFrame(rows)
    df["order"] = df["variant"].map(order).fillna(len(order))
    return df.sort_values(["order", "seed"]).drop(columns="order").reset_index(drop=True)


def tail_mean(values, n: int) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite[-n:])) if finite else float("nan")


def summarize(points: pd.DataFrame) -> pd.DataFrame:
    """One row per variant: means over seeds with `<column>_std`, flags true when true for every seed."""
    rows = []
    for variant, group in points.groupby("variant", sort=False):
        row = {"variant": variant, "seeds": len(group)}
        for col in NUMERIC:
            values = group[col].astype(float)
            row[col] = values.mean()
            row[f"{col}_std"] = values.std(ddof=0) if len(values) > 1 else 0.0
        for flag in FLAGS:
            row[flag] = bool(group[flag].all())
        verdicts = list(dict.fromkeys(group["verdict"]))
        row["verdict"] = verdicts[0] if len(verdicts) == 1 else "unstable"
        row["verdict_per_seed"] = " ".join(f"s{s}:{v}" for s, v in zip(group["seed"], group["verdict"]))
        row["predicted"] = group["predicted"].iloc[0]
        row["check_flags"] = group["check_flags"].iloc[0]
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
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(fmt(row[c]) for c in columns) + " |")
    return "\n".join(lines)


def explain(summary: pd.DataFrame) -> str:
    lines = []
    for _, row in summary.iterrows():
        why = WHY.get(row["verdict"], "")
        extra = ""
        if row["negative_loss"]:
            extra = f" Min training loss {row['min_loss']:.3g} against a lower bound of {row['loss_floor']:.3g}."
        if not math.isnan(row["val_as_train_miou"]):
            extra += (f" Validation was fed raw: mIoU {row['val_miou']:.3f} as fed, {row['val_as_train_miou']:.3f} "
                      f"with inputs transformed like training (trivial {row['trivial_miou']:.3f}); ")
            if row["val_as_train_miou"] >= row["trivial_miou"] + 0.1 and row["val_as_train_miou"] > row["val_miou"] + 0.1:
                extra += "the model did learn, and the raw validation inputs hide it."
            else:
                extra += "fed like training it is no better: the model itself did not learn."
        why = why[:1].upper() + why[1:]
        lines.append(f"- **{row['variant']}**: `{row['verdict']}` ({row['verdict_per_seed']}). {why}.{extra}")
    return "\n".join(lines)


def write_report(cfg: Config, results: Path, tracking_uri: str, command: str) -> Path:
    """Read the runs back from MLflow and write <results>/<experiment>/{report.md,html,summary.csv,...}."""
    runs = load_runs(tracking_uri, cfg.name, study=cfg.study_name)
    out = results / cfg.report_name
    out.mkdir(parents=True, exist_ok=True)
    points = point_rows(runs, cfg)
    if points.empty:
        (out / "report.md").write_text(f"# {cfg.name}\n\nNo finished runs yet.\n")
        return out / "report.md"
    summary = summarize(points)
    summary_cols = (["variant", "seeds"] + [c for n in NUMERIC for c in (n, f"{n}_std")] + FLAGS
                    + ["verdict", "predicted", "agrees", "check_flags"])
    csv_table(summary[summary_cols]).to_csv(out / "summary.csv", index=False, float_format="%.6g",
                                            na_rep="nan", lineterminator="\n")
    csv_table(points.drop(columns="history")).to_csv(out / "runs.csv", index=False, float_format="%.6g",
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
    md += compare_pipelines(cfg, summary, tracking_uri)
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(render_html(md, out))
    return out / "report.md"


def compare_pipelines(cfg: Config, summary: pd.DataFrame, tracking_uri: str) -> str:
    """Where the same experiment also ran through the other pipeline (same settings otherwise),
    its verdicts, mIoU and seconds per epoch side by side."""
    mine = cfg["pipeline"]
    other = "imagedatagenerator" if mine == "tfdata" else "tfdata"
    other_cfg = cfg.with_overrides({"pipeline": other})
    points = point_rows(load_runs(tracking_uri, cfg.name, study=other_cfg.study_name), other_cfg)
    if points.empty:
        return ""
    theirs = summarize(points).set_index("variant")
    rows = []
    for _, row in summary.iterrows():
        if row["variant"] not in theirs.index:
            continue
        t = theirs.loc[row["variant"]]
        rows.append({"variant": row["variant"], f"verdict ({mine})": row["verdict"], f"verdict ({other})": t["verdict"],
                     "same verdict": row["verdict"] == t["verdict"],
                     f"val_miou ({mine})": row["val_miou"], f"val_miou ({other})": t["val_miou"],
                     f"s/epoch ({mine})": row["seconds_per_epoch"], f"s/epoch ({other})": t["seconds_per_epoch"]})
    if not rows:
        return ""
    table = pd.DataFrame(rows)
    return "\n".join(["## Pipelines compared", "",
                      f"The same variants and settings through the `{other}` pipeline (read from the same MLflow "
                      f"experiment, study `{other_cfg.study_name}`).", "",
                      markdown_table(table, list(table.columns)), ""])


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
        markdown_table(summary, ["variant", "seeds", "verdict", "predicted", "agrees", "negative_loss", "diverged",
                                 "converged",
                                 "min_loss", "loss_floor", "final_loss", "val_miou", "val_miou_std",
                                 "val_as_train_miou", "trivial_miou", "val_iou", "val_dice"]),
        "",
        "Numbers are means over seeds (`_std`: spread over seeds); IoU/Dice over the last "
        f"{cfg['verdict']['window']} epochs. `val_as_train_miou` is shown where validation was fed raw.",
        "",
        "## Why",
        "",
        explain(summary),
        "",
        "## Predicted before training (`harness check`)",
        "",
        "Flags measured on the data and probed on the loss before any training; `predicted` is "
        "`negative_loss_or_diverged` when the loss is unbounded below or not minimized at the target, "
        "else `trains`; `agrees` compares it with every seed's observed verdict.",
        "",
        markdown_table(summary, ["variant", "check_flags", "predicted", "verdict", "agrees"]),
        "",
    ]
    if not failed.empty:
        parts += ["## Crashed or interrupted points", "", markdown_table(failed, list(failed.columns)), ""]
    parts += [
        "## Rules", "", rules_markdown(cfg["verdict"]), "",
        "## Per seed", "",
        markdown_table(points, ["variant", "seed", "verdict", "min_loss", "final_loss", "val_miou",
                                "val_as_train_miou", "diverged_at", "seconds_per_epoch"]),
        "",
        "## Loss curves", "", "![loss curves](loss_curves.png)", "",
        "## Validation mIoU per variant", "", "![mIoU](miou.png)", "",
    ]
    if samples:
        parts += ["## Sample predictions", ""]
        parts += [f"![{name}]({name})" for name in samples] + [""]
    parts += ["## Variants", "", markdown_table(pd.DataFrame([{"variant": v.name, **v.axes()} for v in cfg.variants]),
                                                ["variant", "images", "masks", "head", "loss", "validation"]), ""]
    return "\n".join(parts)


def render_html(md: str, folder: Path) -> str:
    """A self-contained page: the Markdown's tables, lists and text, figures embedded as base64."""
    body, table = [], []

    def flush_table():
        if not table:
            return
        rows = [r.strip("|").split("|") for r in table if not set(r.replace("|", "").strip()) <= {"-"}]
        head, *rest = rows
        body.append("<table><thead><tr>" + "".join(f"<th>{inline(c)}</th>" for c in head) + "</tr></thead><tbody>"
                    + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in rest)
                    + "</tbody></table>")
        table.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        if line.startswith("# "):
            body.append(f"<h1>{inline(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{inline(line[3:])}</h2>")
        elif line.startswith("!["):
            name = line[line.index("(") + 1:-1]
            data = base64.b64encode((folder / name).read_bytes()).decode()
            body.append(f'<p><img alt="{html.escape(name)}" src="data:image/png;base64,{data}"></p>')
        elif line.startswith("- "):
            body.append(f"<li>{inline(line[2:])}</li>")
        elif line.strip():
            body.append(f"<p>{inline(line)}</p>")
    flush_table()
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;font-size:13px;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}img{max-width:100%}"
             "code{background:#f3f3f3;padding:0 3px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>harness report</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def inline(text: str) -> str:
    """Escape, then `code` and **bold**."""
    out = html.escape(text.strip())
    parts = out.split("`")
    out = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    parts = out.split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
