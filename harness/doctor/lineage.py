"""Where a user's script made, fitted and flowed its data objects, and which of them transformed the
targets that reached `fit`.

`harness doctor` records each ImageDataGenerator (Keras' legacy one and tf-keras') and each Keras
`Normalization` layer the script builds, with the file, line and source of the script's own call that
made, fitted (adapted) and flowed it, and a summary of the data each call saw. When the targets that
reach `fit` are standardized, `target_transformer` finds the object whose fitted statistics map the
binary levels it was fitted on onto exactly the targets' range. No Keras in here: the hooks
(harness/doctor/hooks.py) hand plain values in.
"""
from __future__ import annotations

import linecache
import math
import os
import re
import sys
from dataclasses import dataclass, field

import numpy as np

# ImageDataGenerator's arguments that standardize what it flows (targets included, if it flows masks).
STANDARDIZING = ("featurewise_center", "featurewise_std_normalization", "samplewise_center",
                 "samplewise_std_normalization", "zca_whitening", "zca_epsilon", "rescale")
SUMMARY_SAMPLES = 64      # samples of an array whose levels are counted (the whole array can be GBs)
MANY_LEVELS = 256         # counting stops here: "many"
MATCH = 1e-3              # relative tolerance of a target range matching a transform's output


@dataclass(frozen=True)
class Site:
    """A line of the user's code: its file, line number and source text."""
    file: str
    line: int
    code: str = ""

    def __str__(self) -> str:
        return f"{os.path.basename(self.file)}:{self.line}"

    def to_dict(self) -> dict:
        return {"file": self.file, "line": self.line, "code": self.code, "at": str(self)}


@dataclass(frozen=True)
class Summary:
    """What a call saw of an array: its shape, range and how many distinct values (capped)."""
    shape: tuple
    lo: float
    hi: float
    levels: int

    @property
    def binary(self) -> bool:
        return self.levels <= 2

    def __str__(self) -> str:
        many = f"{self.levels}+" if self.levels >= MANY_LEVELS else str(self.levels)
        return f"shape {self.shape}, values [{self.lo:.3g}, {self.hi:.3g}], {many} levels"


def summarize(x) -> Summary | None:
    """A Summary of an array-like (NumPy, a framework tensor); None for anything else (a dataset)."""
    try:
        a = np.asarray(x)
    except Exception:  # noqa: BLE001 - a tf.data.Dataset or a directory iterator has no array
        return None
    if a.dtype == object or a.ndim == 0 or a.size == 0:
        return None
    sample = np.asarray(a[:SUMMARY_SAMPLES], np.float64)
    return Summary(tuple(a.shape), float(np.min(sample)), float(np.max(sample)), count_levels(sample))


def count_levels(a: np.ndarray) -> int:
    """Distinct values at 4 decimals, up to MANY_LEVELS."""
    return int(min(len(np.unique(np.round(np.asarray(a, np.float64).ravel(), 4))), MANY_LEVELS))


def library_dirs() -> tuple[str, ...]:
    """Folders whose frames are not the user's: the harness, the standard library, installed packages
    and their console scripts (`harness` itself)."""
    import sysconfig
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib", "scripts")}
    return tuple(sorted({os.path.join(p, "") for p in (here, *paths)}))


LIBRARIES = library_dirs()


def call_site(skip: tuple[str, ...] = LIBRARIES) -> Site | None:
    """The innermost frame of the caller's stack that is the user's code (not the harness, the
    standard library or an installed package)."""
    frame = sys._getframe(1)
    while frame is not None:
        name = os.path.abspath(frame.f_code.co_filename)
        if not name.startswith(skip) and not frame.f_code.co_filename.startswith("<frozen"):
            return Site(frame.f_code.co_filename, frame.f_lineno,
                        linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip())
        frame = frame.f_back
    return None


@dataclass
class Record:
    """One data object of the user's script and what was done with it."""
    kind: str                                   # "ImageDataGenerator" or "Normalization"
    made: Site | None
    settings: dict = field(default_factory=dict)   # the constructor's arguments, as the script passed them
    fitted: list = field(default_factory=list)     # [(Site, Summary | None)] fit() / adapt() calls
    flowed: list = field(default_factory=list)     # [(Site, Summary | None)] flow() calls
    mean: np.ndarray | None = None              # the fitted statistics, per channel
    std: np.ndarray | None = None
    arrays: list = field(default_factory=list, repr=False)   # the arrays it flowed (leakage is measured on them)

    @property
    def name(self) -> str:
        """The variable the script assigned the object to (`mask_datagen = ImageDataGenerator(...)`)."""
        code = self.made.code if self.made else ""
        match = re.match(r"\s*([A-Za-z_][\w.]*)\s*=[^=]", code) or re.match(r"\s*([A-Za-z_][\w.]*)\.\w+\(", code)
        return match.group(1) if match else ""

    @property
    def standardizes(self) -> bool:
        if self.kind == "Normalization":
            return True
        return any(self.settings.get(k) for k in STANDARDIZING if k not in ("zca_epsilon", "rescale"))

    def transformed(self, value: float) -> float | None:
        """What a pixel of `value` becomes (one channel: statistics fitted on masks); None where the
        transform depends on the sample (samplewise) or is not known (never fitted)."""
        if self.kind == "ImageDataGenerator":
            if self.settings.get("samplewise_center") or self.settings.get("samplewise_std_normalization"):
                return None
            rescale = self.settings.get("rescale")
            value = value * rescale if rescale else value
            if self.settings.get("featurewise_center"):
                if self.mean is None:
                    return None
                value -= float(np.ravel(self.mean)[0])
            if self.settings.get("featurewise_std_normalization"):
                if self.std is None:
                    return None
                value /= float(np.ravel(self.std)[0]) + 1e-6         # ImageDataGenerator.standardize's epsilon
            return value
        if self.mean is None or self.std is None:
            return None
        return (value - float(np.ravel(self.mean)[0])) / max(float(np.ravel(self.std)[0]), 1e-7)

    def fitted_levels(self) -> tuple[float, float] | None:
        """The least and greatest value of the data the object was fitted on, where that was binary."""
        binary = [s for _, s in self.fitted if s is not None and s.binary]
        return (binary[-1].lo, binary[-1].hi) if binary else None

    def channels(self) -> int:
        return int(np.size(self.mean)) if self.mean is not None else 0

    def to_dict(self) -> dict:
        return {"kind": self.kind, "name": self.name, "made": self.made.to_dict() if self.made else None,
                "settings": {k: repr(v) for k, v in self.settings.items()},
                "fitted": [{"at": s.to_dict() if s else None, "data": str(d) if d else None} for s, d in self.fitted],
                "flowed": [{"at": s.to_dict() if s else None, "data": str(d) if d else None} for s, d in self.flowed]}


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=MATCH, abs_tol=MATCH)


def target_transformer(records: list[Record], target_range: tuple[float, float]) -> tuple[Record | None, str]:
    """The object that standardized the targets: -> (record, "exact") where one record, fitted on
    binary data, maps its two levels onto `target_range` (the targets' least and greatest value,
    which augmentation cannot widen); (record, "likely") where none matches exactly but one single-
    channel standardizer flowed binary data (a samplewise one); (None, "") otherwise."""
    lo, hi = target_range
    for record in reversed(records):          # the latest first: the one the script last made
        levels = record.fitted_levels()
        if not record.standardizes or levels is None or record.channels() > 1:
            continue
        ends = [record.transformed(v) for v in levels]
        if None not in ends and close(min(ends), lo) and close(max(ends), hi):
            return record, "exact"
    for record in reversed(records):
        flowed_binary = any(s is not None and s.binary and (not s.shape or s.shape[-1] == 1) for _, s in record.flowed)
        if record.standardizes and flowed_binary:
            return record, "likely"
    return None, ""


def input_transformer(records: list[Record]) -> Record | None:
    """The object that standardized the training inputs: the latest standardizer fitted on images
    (more than two levels)."""
    for record in reversed(records):
        if record.standardizes and any(s is not None and not s.binary for _, s in record.fitted):
            return record
    return None


def constructor_without_standardizing(record: Record) -> str:
    """The record's constructor call, rewritten without the arguments that standardize."""
    kept = {k: v for k, v in record.settings.items() if k not in STANDARDIZING}
    args = ", ".join(f"{k}={v!r}" for k, v in kept.items())
    return f"{record.name or 'mask_datagen'} = {record.kind}({args})"


def fix_for_targets(record: Record) -> str:
    """The fix, as code, for a record that standardized the targets."""
    if record.kind == "Normalization":
        return (f"leave the targets as they are: apply {record.name or 'the Normalization layer'} to the "
                "images only (it was adapted on masks)")
    code = constructor_without_standardizing(record)
    name = record.name or "mask_datagen"
    return (f"{code}  # masks are targets: no featurewise_center / featurewise_std_normalization, "
            f"and no {name}.fit(...)")


def fix_for_validation(record: Record | None) -> str:
    """The fix, as code, for validation inputs that skip the training inputs' standardization."""
    if record is None:
        return "apply the training inputs' transform to the validation inputs before passing validation_data"
    name = record.name or "image_datagen"
    if record.kind == "Normalization":
        return f"x_val = {name}(x_val)  # the same statistics as training"
    return f"x_val = {name}.standardize(x_val.astype('float32'))  # the statistics it fitted on the training images"
