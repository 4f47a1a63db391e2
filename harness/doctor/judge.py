"""One examined fit -> its diagnosis: the check's data rules on the batches fit received, the verdict
against the trivial predictor on the validation data, the health causes, and the differential that
tells causes from their symptoms (harness/causes.py). Each finding says what was measured, where in
the script it comes from (lineage.py) and how to fix it. The rules are the check's, the verdicts' and
the health monitor's own, called on plain arrays; none is written a second time here.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from harness import leakage, metrics
from harness.causes import differential, kind_of
from harness.check import FLAGS, count_levels, data_findings
from harness.doctor import lineage
from harness.doctor.fit import FitRecord, binary_truth, scored_arrays
from harness.health import PREFIX, RULES as HEALTH_RULES, diagnose
from harness.verdict import judge, rose_above_trivial

NOT_SCORED = "not_scored"     # the verdict where no validation data could be scored


@dataclass
class Finding:
    name: str
    kind: str                 # cause, symptom, warning or note (harness/causes.py)
    evidence: str             # what was measured
    where: str = ""           # the script's line it comes from
    fix: str = ""
    explains: str = ""        # a symptom: the cause that produces it


@dataclass
class FitDiagnosis:
    index: int
    site: str
    epochs_asked: int
    epochs_run: int
    verdict: str
    causes: list[str]
    findings: list[Finding]
    numbers: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)
    not_measured: list[str] = field(default_factory=list)
    assumed: list[str] = field(default_factory=list)      # what the doctor took where the script did not say
    history: dict = field(default_factory=dict)
    error: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def rules() -> dict:
    """The verdict, health and leakage rules at the harness's defaults (harness/config.py)."""
    from harness.config import DEFAULTS
    return {section: dict(DEFAULTS[section]) for section in ("verdict", "health", "leakage")}


def diagnose_fit(record: FitRecord, records: list[lineage.Record], given: dict | None = None) -> FitDiagnosis:
    """The diagnosis of one examined fit, with the script's data objects `records`."""
    given = given or rules()
    history = record.history()
    val = scored_arrays(record.val, record.batch_size or 32)
    flags = dict(record.loss_flags)
    flags.update(data_flags(record, records, val))
    flags.update(leakage_flags(record, records, given["leakage"]))

    scored = {"loss": history.get("loss", []), "val_miou": history.get("doctor/val_miou", [])}
    trivial = metrics.trivial_miou(binary_truth(val[1])) if val is not None else math.nan
    floor = record.floor if math.isfinite(record.floor) or record.floor == -math.inf else -math.inf
    diverged_epoch = record.diverged_at[0] if record.diverged_at else None
    judged = judge(scored, floor, trivial, given["verdict"], diverged=record.diverged_at is not None,
                   diverged_epoch=diverged_epoch)
    verdict = judged["verdict"]
    has_val = bool(scored["val_miou"]) and val is not None
    if not has_val and verdict not in ("diverged", "negative_loss"):
        verdict = NOT_SCORED
    learned = has_val and rose_above_trivial(scored, trivial, given["verdict"], diverged_epoch)
    health = {k: v for k, v in history.items() if k.startswith(PREFIX)}
    health_causes = diagnose(health, given["health"], learned)
    found = differential(flags, health_causes, verdict)

    findings = [flag_finding(name, detail, record, records) for name, detail in flags.items()
                if name in found.causes or kind_of(name) != "cause"]
    findings += [Finding(name, "cause", detail, str_site(record.site), HEALTH_RULES[name][1])
                 for name, detail in health_causes.items() if name in found.causes]
    findings += [Finding(name, "symptom", health_causes.get(name, symptom_evidence(name, judged, record)),
                         str_site(record.site), f"fix {cause}", explains=cause)
                 for name, cause in found.symptoms.items()]
    order = {"cause": 0, "symptom": 1, "warning": 2, "note": 3}
    findings.sort(key=lambda f: order[f.kind])
    numbers = {"min_loss": judged["min_loss"], "final_loss": judged["final_loss"], "loss_floor": record.floor,
               "val_miou": judged["final_miou"], "trivial_miou": trivial,
               "threshold": record.measured.threshold if record.measured is not None else math.nan,
               "preflight_seconds": record.preflight_seconds}
    notes = list(record.notes)
    if not has_val:
        notes.append("the validation mIoU: fit was given no validation data the doctor could score, so whether "
                      "the model learned is not judged")
    return FitDiagnosis(record.index, str_site(record.site), record.epochs_asked, len(record.epochs), verdict,
                        list(found.causes), findings, numbers,
                        {"training": record.train.kind, "validation": record.val.kind if record.val else "none"},
                        notes, [record.domain_note] if record.domain_note else [], history, record.error)


def str_site(site: lineage.Site | None) -> str:
    return f"{site}  {site.code}".strip() if site else ""


def data_flags(record: FitRecord, records: list[lineage.Record], val) -> dict[str, str]:
    """The check's data rules (check.data_findings) on the batches fit received and the validation
    data: validation fed otherwise than training, masks with more than two levels."""
    train_x, train_y = record.train.x(), record.train.y()
    if train_x is None or train_x.ndim != 4:
        return {}
    transformer = targets_source(record, records)
    raw = next((s.levels for _, s in reversed(transformer.flowed) if s is not None), None) if transformer else None
    augmented = count_levels(train_y)
    val_x, val_y = val if val is not None else (train_x, train_y)
    if val_x.shape[1:] != train_x.shape[1:]:
        val_x, val_y = train_x, train_y
    return data_findings(np.asarray(train_x, np.float32), np.asarray(val_x, np.float32), train_y, val_y,
                         raw if raw is not None else augmented, augmented)


def targets_source(record: FitRecord, records: list[lineage.Record]) -> lineage.Record | None:
    """The data object that transformed the targets (lineage.target_transformer), else the one that
    flowed them (a single-channel flow of binary data)."""
    targets = record.train.y()
    if targets is None:
        return None
    found, _ = lineage.target_transformer(records, (float(np.min(targets)), float(np.max(targets))))
    if found is not None:
        return found
    return next((r for r in reversed(records) if any(s is not None and s.shape and s.shape[-1] == 1 and s.binary
                                                     for _, s in r.flowed)), None)


def leakage_flags(record: FitRecord, records: list[lineage.Record], settings: dict) -> dict[str, str]:
    """validation_near_training, where the whole training and validation images are reachable: fit's
    arrays, or the images the script flowed through a generator (harness/leakage.py's rule)."""
    if record.val is None or record.val.arrays is None:
        return {}
    val_x = np.asarray(record.val.arrays[0])
    if record.train.arrays is not None:
        train_x = np.asarray(record.train.arrays[0])
    else:
        flowed = [a for r in records for a in r.arrays if np.ndim(a) == 4 and np.shape(a)[1:] == val_x.shape[1:]]
        if not flowed:
            return {}
        train_x = np.asarray(flowed[-1])
    if train_x.ndim != 4 or len(train_x) < 4 or len(val_x) < 2:
        return {}
    m = leakage.measure(np.asarray(train_x, np.float32), np.asarray(val_x, np.float32), np.arange(len(train_x)),
                        len(train_x) + len(val_x), "as given", settings["side"], settings["far_fraction"])
    if not leakage.near_training(m, settings["margin"]):
        return {}
    return {"validation_near_training": leakage.describe(m)}


def flag_finding(name: str, detail: str, record: FitRecord, records: list[lineage.Record]) -> Finding:
    """A check flag with the script's line it comes from and the fix as code, where known."""
    kind = kind_of(name)
    where, fix = str_site(record.site), FLAGS[name][1]
    if name in ("targets_outside_loss_domain", "masks_not_binary"):
        source = targets_source(record, records)
        targets = record.train.y()
        if name == "targets_outside_loss_domain" and source is not None and source.standardizes:
            return Finding(name, kind, f"{detail}; {standardized_story(source)}", str_site(source.made),
                           lineage.fix_for_targets(source))
        if name == "targets_outside_loss_domain" and targets is not None and count_levels(targets) == 2:
            lo, hi = float(np.min(targets)), float(np.max(targets))
            fix = f"y = (y > {(lo + hi) / 2:g}).astype('float32')  # binary masks, {{0, 1}}, before fit"
        if name == "masks_not_binary" and source is not None:
            where = str_site(source.made)
            order = source.settings.get("interpolation_order", 1)
            if source.kind == "ImageDataGenerator" and order != 0:
                detail += (f"; {source.name or 'the mask generator'} resamples masks with interpolation_order="
                           f"{order}, which blends the two levels at every edge")
                fix = "yield x, (m > 0.5).astype('float32')  # binarize the augmented masks where the pair is zipped"
    elif name == "validation_not_transformed_like_training":
        fix = lineage.fix_for_validation(lineage.input_transformer(records))
    elif name in ("loss_unbounded_below", "loss_not_minimized_at_target", "loss_floor_not_zero", "loss_summed",
                  "declared_floor_differs"):
        where = str_site(record.compiled_at) or where
    elif name == "validation_near_training":
        fix = "validate on images from other files, volumes or videos than training's; remove duplicated files"
    return Finding(name, kind, detail, where, fix)


def standardized_story(record: lineage.Record) -> str:
    """What the object did to the targets, in words: fitted on binary masks, then whitened them."""
    fitted = next(((s, d) for s, d in reversed(record.fitted) if d is not None and d.binary), None)
    parts = []
    if fitted:
        site, data = fitted
        parts.append(f"{record.name or record.kind} was fitted on binary masks ({data}) at {site}"
                     + (f" (`{site.code}`)" if site and site.code else ""))
    if record.mean is not None:
        parts.append(f"so it whitens them with mean {float(np.ravel(record.mean)[0]):.4g} and std "
                     f"{float(np.ravel(record.std)[0]) if record.std is not None else 1.0:.4g}")
    flowed = next((s for s, _ in reversed(record.flowed) if s is not None), None)
    if flowed:
        parts.append(f"and flowed them at {flowed}")
    return ", ".join(parts) if parts else f"{record.kind} standardized the masks"


def symptom_evidence(name: str, judged: dict, record: FitRecord) -> str:
    if name == "negative_loss":
        return f"least training loss {judged['min_loss']:.4g} against the loss's floor {record.floor:.4g}"
    if name == "diverged":
        where = f" at epoch {record.diverged_at[0]} batch {record.diverged_at[1]}" if record.diverged_at else ""
        return f"the training loss reached NaN or Inf{where}"
    return ""
