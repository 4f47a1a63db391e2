"""What the doctor says and writes: a block on stderr after each fit, a summary at the end, the JSON,
the report folder (report.md, report.html, each fit's loss and health figures), and one MLflow run per
fit in the same store as sweeps (through harness/tracking.py)."""
from __future__ import annotations

import json
import math
from pathlib import Path

from harness.paths import DEFAULT_RESULTS
from harness.causes import ORDER
from harness.health import CAUSES as HEALTH_CAUSES

RULE = "harness doctor:"


def fmt(x, digits: int = 4) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


def fit_block(d) -> str:
    """The diagnosis of one fit, as printed on stderr when it ends."""
    capped = f" (capped from {d.epochs_asked}: --epochs)" if d.epochs_run < d.epochs_asked else ""
    n = d.numbers
    lines = [f"{RULE} fit #{d.index} at {d.site or 'an unknown line'}: {d.epochs_run} epoch(s){capped}, "
             f"verdict {d.verdict}"]
    if d.error:
        lines.append(f"  the fit raised {d.error}; diagnosed on the epochs that ran")
    lines.append(f"  training loss {fmt(n['final_loss'])} (least {fmt(n['min_loss'])}) against its measured floor "
                 f"{fmt(n['loss_floor'])}; validation mIoU {fmt(n['val_miou'], 3)} against the trivial predictor's "
                 f"{fmt(n['trivial_miou'], 3)}")
    causes = [f for f in d.findings if f.kind == "cause"]
    if not causes:
        lines.append("  no cause found")
    for f in d.findings:
        if f.kind == "symptom":
            continue
        lines.append(f"  {f.kind} {f.name}: {f.evidence}")
        if f.where:
            lines.append(f"    where: {f.where}")
        if f.fix and f.kind in ("cause", "warning"):
            lines.append(f"    fix:   {f.fix}")
    symptoms = [f for f in d.findings if f.kind == "symptom"]
    if symptoms:
        by_cause: dict[str, list[str]] = {}
        for f in symptoms:
            by_cause.setdefault(f.explains, []).append(f.name)
        for cause, names in by_cause.items():
            lines.append(f"  symptoms of {cause}, not causes of their own: {', '.join(names)}")
    for note in d.not_measured:
        lines.append(f"  not measured: {note}")
    for note in d.assumed:
        lines.append(f"  assumed: {note}")
    return "\n".join(lines)


def summary_lines(fits: list, never_fitted: list[str], causes: list[str]) -> list[str]:
    if not fits:
        lines = [f"{RULE} no model.fit call was made, so nothing was diagnosed"]
        if never_fitted:
            lines.append(f"{RULE} compiled but never trained through fit (a custom training loop or a fit of its "
                         f"own): the model(s) compiled at {', '.join(never_fitted)}")
        return lines
    return [f"{RULE} {len(fits)} fit(s) diagnosed; causes: {', '.join(causes) or 'none'}"]


def document(script: str, args: list[str], exit_code: int, session) -> dict:
    """The JSON: the union of the causes at the top, then one entry per fit."""
    return {"script": script, "args": list(args), "exit_code": exit_code, "causes": session.causes,
            "fits": [d.to_dict() for d in session.fits],
            "data_objects": [r.to_dict() for r in session.records],
            "never_fitted": session.never_fitted(), "vocabulary": list(ORDER)}


def write_json(doc: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, default=json_default, allow_nan=True) + "\n")


def json_default(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def plotted_history(history: dict) -> dict:
    """The doctor's scores under the names the figures read (val_miou, ...)."""
    return {k.removeprefix("doctor/"): v for k, v in history.items()}


def write_figures(diagnosis, folder: Path) -> list[str]:
    from harness import plots
    history = plotted_history(diagnosis.history)
    names = []
    figures = {f"loss_fit{diagnosis.index}.png": plots.loss_curve(history, diagnosis.numbers["loss_floor"],
                                                                   f"fit #{diagnosis.index}"),
               f"health_fit{diagnosis.index}.png": plots.health_curves([(diagnosis.index, history)],
                                                                       f"fit #{diagnosis.index}")}
    for name, fig in figures.items():
        fig.savefig(folder / name, dpi=90, bbox_inches="tight")
        names.append(name)
    return names


def report_markdown(doc: dict, session, figures: dict[int, list[str]]) -> str:
    lines = [f"# harness doctor: `{doc['script']}`", "",
             f"`harness doctor {doc['script']}{' ' + ' '.join(doc['args']) if doc['args'] else ''}` exited "
             f"{doc['exit_code']}. Causes over every fit: {', '.join(f'`{c}`' for c in doc['causes']) or 'none'}.", ""]
    if not session.fits:
        lines += summary_lines([], session.never_fitted(), []) + [""]
    for d in session.fits:
        lines += [f"## Fit #{d.index}: `{d.verdict}`", "", f"At `{d.site}`; {d.epochs_run} of {d.epochs_asked} epoch(s); "
                  f"inputs: training {d.inputs['training']}, validation {d.inputs['validation']}.", ""]
        lines += ["| finding | kind | measured | where | fix |", "|---|---|---|---|---|"]
        for f in d.findings:
            lines.append(f"| `{f.name}` | {f.kind}{' of `' + f.explains + '`' if f.explains else ''} | "
                         f"{cell(f.evidence)} | {cell(f.where)} | {cell(f.fix)} |")
        if not d.findings:
            lines.append("| (none) | | | | |")
        lines += ["", "| number | value |", "|---|---|"]
        lines += [f"| {k} | {fmt(v)} |" for k, v in d.numbers.items()]
        lines.append("")
        if d.not_measured:
            lines += ["Not measured: " + "; ".join(d.not_measured) + ".", ""]
        if d.assumed:
            lines += ["Assumed: " + "; ".join(d.assumed) + ".", ""]
        lines += [f"![{name[:-4]}]({name})" for name in figures.get(d.index, [])] + [""]
    lines += ["## Rules", "", "The causes are `harness check`'s flags and the training-health causes, judged by "
              "the same rules as a sweep (docs/reference/causes.md); a health cause or verdict that a loss cause "
              "produces is listed as its symptom.", ""]
    return "\n".join(lines)


def cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_report(doc: dict, session, folder: Path) -> list[Path]:
    """report.md, report.html, doctor.json and the figures into `folder`."""
    from harness.report.html import render_html
    folder.mkdir(parents=True, exist_ok=True)
    figures = {}
    for d in session.fits:
        try:
            figures[d.index] = write_figures(d, folder)
        except Exception as e:  # noqa: BLE001 - a figure that cannot be drawn never costs the report
            session.say(f"{RULE} could not draw the figures of fit #{d.index}: {type(e).__name__}: {e}")
    md = report_markdown(doc, session, figures)
    (folder / "report.md").write_text(md)
    (folder / "report.html").write_text(render_html(md, folder))
    write_json(doc, folder / "doctor.json")
    return [folder / "report.md", folder / "report.html", folder / "doctor.json"]


def tracker_for(results: str | Path | None, tracking_uri: str | None, experiment: str):
    """The on_diagnosis that makes each fit an MLflow run of `experiment` in the sweeps' store."""
    from harness.tracking import default_tracking_uri
    results = Path(results) if results is not None else DEFAULT_RESULTS
    uri = tracking_uri or default_tracking_uri(results)

    def track(diagnosis, record) -> None:
        from harness.health import joined
        from harness.runs import Tag
        from harness.tracking import log_finished_run
        params = {"fit": diagnosis.index, "site": diagnosis.site, "epochs_asked": diagnosis.epochs_asked,
                  "loss": record.loss_name, "head": record.head, "optimizer": record.optimizer,
                  "batch_size": record.batch_size, "inputs.training": diagnosis.inputs["training"],
                  "inputs.validation": diagnosis.inputs["validation"]}
        findings = json.dumps([{"name": f.name, "kind": f.kind, "where": f.where} for f in diagnosis.findings])
        tags = {Tag.VERDICT: diagnosis.verdict, Tag.CAUSES: joined(diagnosis.causes),
                Tag.HEALTH_CAUSES: joined([c for c in diagnosis.causes if c in HEALTH_CAUSES]),
                Tag.SYMPTOMS: joined([f.name for f in diagnosis.findings if f.kind == "symptom"]),
                Tag.LOSS_FLOOR: diagnosis.numbers["loss_floor"], Tag.TRIVIAL_MIOU: diagnosis.numbers["trivial_miou"],
                Tag.DOCTOR_FINDINGS: findings[:5000]}
        log_finished_run(uri, experiment, results, f"fit-{diagnosis.index}", params,
                         plotted_history(diagnosis.history), tags, kind="doctor")
    return track
