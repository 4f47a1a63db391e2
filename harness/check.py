"""Explain before training: measure each variant's targets, probe its loss, and flag what will fail.

Every flag comes from a measurement on the actual data and loss function, not from the variant's
name, so it holds for variants and losses a user adds (`loss = "module:function"`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from harness.config import Config, Variant
from harness.data import Dataset, load_dataset
from harness.feeds.choose import choose_feed, validation_arrays
from harness import leakage, probe
from harness.losses import get_head, get_loss

# Each flag: what it means and the fix, one line each (also docs/reference/causes.md, generated from it).
FLAGS = {
    "targets_outside_loss_domain": (
        "training targets leave the range the loss is defined for",
        "feed binary masks (do not whiten them), or use a loss defined for these targets"),
    "loss_unbounded_below": (
        "on these targets the loss can be driven below any bound: its value stops meaning anything",
        "keep targets inside the loss's domain; a lower loss will not mean a better model"),
    "loss_not_minimized_at_target": (
        "the loss is lowest on the wrong side of the measured threshold: minimizing it learns the wrong class",
        "fix the loss's sign (e.g. -0.5*((1-y)log(1-p) + (1+y)log(1+p)) for tanh)"),
    "loss_floor_not_zero": (
        "the loss's minimum at a perfect prediction is below 0, so negative values are expected, not a bug",
        "nothing to fix: the verdicts compare the loss with its measured floor (shift it to make 0 its floor)"),
    "loss_summed": (
        "the loss sums over the batch or the pixels instead of averaging: its value, and its floor, grow with them",
        "nothing to fix: the floor is scaled to the training batches (average instead, to compare across sizes)"),
    "declared_floor_differs": (
        "the loss's declared lower_bound is not the floor measured at perfect predictions",
        "fix the declared lower_bound (the verdicts use the measured floor)"),
    "validation_not_transformed_like_training": (
        "validation inputs or targets skip a transform the training data gets",
        "apply the training statistics to validation inputs (and targets) before evaluating"),
    "check_failed": (
        "measuring this variant raised an error (e.g. its loss fails on probe inputs): training it will likely crash",
        "fix the error shown; run `harness check` again"),
    "masks_not_binary": (
        "masks have more than two levels, before or after augmentation",
        "binarize masks and augment them with nearest-neighbour interpolation"),
    "validation_near_training": (
        "validation images sit markedly closer to training images than unrelated images do (neighbouring "
        "slices or frames on both sides, or duplicated files): validation scores measure recall of near-copies, "
        "not generalization, and every verdict built on them is optimistic",
        'hold out a block of the volume or video: --set data.split="contiguous"; remove duplicated files'),
}
TOLERANCE = 1e-3
SAMPLE_BATCHES = 8      # augmented training batches the targets are measured on
# A declared floor differing from the measured one by more than this is reported.
FLOOR_AGREEMENT = 0.01


@dataclass
class CheckRow:
    variant: str
    target_range: tuple[float, float]          # measured on augmented, transformed training batches
    target_levels: dict[str, float]            # transformed value of background / foreground pixels
    head_range: tuple[float, float]
    loss_domain: tuple[float, float]
    loss_floor: float                          # measured floor: the verdicts compare the loss with it
    declared_floor: float | None               # what the loss declares (None: nothing declared)
    threshold: float                           # measured: prediction >= threshold means foreground
    probed_min: float                          # least value found anywhere in the probe
    flags: list[str] = field(default_factory=list)
    details: dict[str, str] = field(default_factory=dict)
    # The dataset's, the same for every variant: how validation was held out and how close it sits to
    # training (validation_near_training); see validation_leakage.
    validation: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["explanations"] = {f: {"why": FLAGS[f][0], "fix": self.fix(f), "measured": self.details.get(f, "")}
                             for f in self.flags}
        return d

    def fix(self, flag: str) -> str:
        """The flag's fix; validation_near_training's fits what was measured (duplicates, the split)."""
        if flag == "validation_near_training" and self.validation.get("fix"):
            return self.validation["fix"]
        return FLAGS[flag][1]


def predicted_verdict(flags: list[str]) -> str:
    """What the flags predict the sweep will observe (see `agrees`)."""
    if "check_failed" in flags:
        return "crashed"
    if "loss_unbounded_below" in flags or "loss_not_minimized_at_target" in flags:
        return "negative_loss_or_diverged"
    return "trains"


def check_variant(variant: Variant, dataset: Dataset, cfg: Config, seed: int = 1) -> CheckRow:
    head, loss = get_head(variant.head), get_loss(variant.loss, cfg.source_dir)
    batch = cfg["train"]["batch_size"]
    # The feed training will use: its statistics, and a few of its augmented batches.
    feed = choose_feed(cfg, dataset, variant, seed)
    transform = feed.transform
    check_model(cfg, dataset, head.activation)

    # Targets as training sees them: a few augmented batches through the variant's transform.
    raw_batches = list(feed.sample_batches(max_batches=SAMPLE_BATCHES))
    aug_masks = np.concatenate([m for _, m in raw_batches])
    targets = np.asarray(transform.mask(aug_masks), np.float32)
    t_lo, t_hi = float(targets.min()), float(targets.max())
    levels = target_levels(transform)
    measured = probe.measure(loss, head.activation, levels, head.threshold)
    # The floor the sweep's verdicts will use: for a summed loss, a training batch's, not a probe's.
    train_floor = measured.epoch_floor(dataset.train_images, batch)
    findings = loss_findings(measured, levels, (t_lo, t_hi), loss.target_range, loss.lower_bound, train_floor)

    val_x, val_y = validation_arrays(dataset, transform, variant.validation)
    train_x = np.asarray(transform.image(np.concatenate([x for x, _ in raw_batches])), np.float32)
    findings |= data_findings(train_x, val_x, targets, val_y, count_levels(dataset.train_masks),
                              count_levels(aug_masks))
    return CheckRow(variant.name, (t_lo, t_hi), {"background": levels[0], "foreground": levels[1]},
                    head.output_range, loss.target_range, train_floor, loss.lower_bound, measured.threshold,
                    probed_min(measured), list(findings), findings)


def probed_min(measured: probe.Measured) -> float:
    """The least loss value anywhere in the probe's curves: -inf where one reached it, NaN where no
    value is finite."""
    values = measured.curves.values()
    if any(np.any(v == -math.inf) for v in values):
        return -math.inf
    finite = [float(v[np.isfinite(v)].min()) for v in values if np.isfinite(v).any()]
    return min(finite) if finite else math.nan


def loss_findings(measured: probe.Measured, levels: dict[int, float], targets: tuple[float, float],
                  domain: tuple[float, float], declared: float | None, train_floor: float) -> dict[str, str]:
    """The loss's flags, {flag: measured detail} in the order they are reported, from the probe's
    curves and the targets training sees (`targets`: their least and greatest value). Pure: plain
    numbers and arrays in, no Keras."""
    found = {}
    t_lo, t_hi = targets
    if t_lo < domain[0] - TOLERANCE or t_hi > domain[1] + TOLERANCE:
        found["targets_outside_loss_domain"] = (f"targets span [{t_lo:.3g}, {t_hi:.3g}], "
                                                f"loss domain [{domain[0]:g}, {domain[1]:g}]")
    outputs = measured.outputs           # the curves the floor and threshold came from
    floor = measured.floor if math.isfinite(measured.floor) else 0.0
    wrong_side, falling = [], []
    for cls, v in measured.curves.items():
        v = np.where(np.isnan(v), np.inf, v)
        best = int(np.argmin(v))
        right = outputs >= measured.threshold if cls == 1 else outputs < measured.threshold
        if right.any() and not right[best] and v[best] < np.min(v[right]) - TOLERANCE:
            wrong_side.append(f"class {cls} (target {levels[cls]:.3g}): lowest {v[best]:.3g} at p={outputs[best]:.3g}, "
                              f"threshold {measured.threshold:.3g}")
        # Still falling at the probe's edge (as the probe tells it), and already well below the floor.
        inner = best + (probe.EDGE_STEPS if best == 0 else -probe.EDGE_STEPS)
        if best in (0, len(outputs) - 1) and v[best] < floor - 1.0 and v[best] < v[inner] - probe.FALLING:
            falling.append(f"class {cls} (target {levels[cls]:.3g}): {v[inner]:.3g} -> {v[best]:.3g} toward p={outputs[best]:.3g}")
    if falling:
        found["loss_unbounded_below"] = "; ".join(falling)
    if wrong_side:
        found["loss_not_minimized_at_target"] = "; ".join(wrong_side)
    if floor < -TOLERANCE and not wrong_side and not falling:
        found["loss_floor_not_zero"] = f"least value at perfect predictions {floor:.4g}"
    if measured.exponents != (0.0, 0.0):
        e_b, e_p = measured.exponents
        found["loss_summed"] = (f"value ~ batch^{e_b:.2g} x pixels^{e_p:.2g}; floor {measured.floor:.4g} on a "
                                f"{'x'.join(map(str, probe.PIXELS))} probe, {train_floor:.4g} for a training batch")
    if declared is not None and not abs(declared - measured.floor) <= FLOOR_AGREEMENT:
        found["declared_floor_differs"] = f"declared {declared:.4g}, measured {measured.floor:.4g}"
    return found


def data_findings(train_x: np.ndarray, val_x: np.ndarray, train_y: np.ndarray, val_y: np.ndarray,
                  raw_levels: int, augmented_levels: int) -> dict[str, str]:
    """The data's flags, {flag: measured detail}: validation fed otherwise than training (inputs as
    training sees them against validation's, targets likewise), and masks with more than two levels
    as loaded or after augmentation. Pure."""
    found = {}
    mismatch = input_mismatch(train_x, val_x) + target_mismatch(train_y, val_y)
    if mismatch:
        found["validation_not_transformed_like_training"] = "; ".join(mismatch)
    if raw_levels > 2 or augmented_levels > 2:
        found["masks_not_binary"] = f"{raw_levels} levels as loaded, {augmented_levels} after augmentation"
    return found


def target_levels(transform) -> dict[int, float]:
    """What a background (0) and a foreground (1) pixel become under the variant's mask transform."""
    return {c: float(np.asarray(transform.mask(np.float32(c))).ravel()[0]) for c in (0, 1)}


def check_model(cfg: Config, dataset: Dataset, activation: str) -> None:
    """The model (the built-in U-Net or the user's `model.builder`) must map the images to one
    output channel of the same size; a builder that does not is a finding before any training."""
    from harness.models import build_model
    if not cfg["model"]["builder"]:
        return                      # the built-in U-Net: right by construction (tests/test_check.py: test_the_builtin_unet_maps_...)
    shape = dataset.train_images.shape[1:]
    model = build_model(cfg, shape, activation)
    out = tuple(model.output_shape[1:])
    if out != (shape[0], shape[1], 1):
        raise ValueError(f"model output shape {out}, expected {(shape[0], shape[1], 1)} (one mask channel)")


def input_mismatch(train_x: np.ndarray, val_x: np.ndarray) -> list[str]:
    """Per-channel mean more than one training std apart, or std off by more than 2x."""
    t_mean, t_std = train_x.mean(axis=(0, 1, 2)), train_x.std(axis=(0, 1, 2)) + 1e-6
    v_mean, v_std = val_x.mean(axis=(0, 1, 2)), val_x.std(axis=(0, 1, 2)) + 1e-6
    if np.any(np.abs(v_mean - t_mean) > t_std) or np.any(v_std / t_std > 2) or np.any(v_std / t_std < 0.5):
        return [f"inputs: training mean {fmt_list(t_mean)} std {fmt_list(t_std)}, "
                f"validation mean {fmt_list(v_mean)} std {fmt_list(v_std)}"]
    return []


def target_mismatch(train_y: np.ndarray, val_y: np.ndarray) -> list[str]:
    t = (float(train_y.min()), float(train_y.max()))
    v = (float(val_y.min()), float(val_y.max()))
    if abs(t[0] - v[0]) > 0.05 * (t[1] - t[0]) or abs(t[1] - v[1]) > 0.05 * (t[1] - t[0]):
        return [f"targets: training [{t[0]:.3g}, {t[1]:.3g}], validation [{v[0]:.3g}, {v[1]:.3g}]"]
    return []


def count_levels(masks: np.ndarray) -> int:
    return int(len(np.unique(np.round(masks, 4))))


def fmt_list(a) -> str:
    return "[" + ", ".join(f"{x:.3g}" for x in np.ravel(a)) + "]"


def check_experiment(cfg: Config, dataset: Dataset | None = None) -> list[CheckRow]:
    dataset = dataset or load_dataset(cfg["data"])
    validation = validation_leakage(dataset, cfg["leakage"])
    rows = [safe_check(v, dataset, cfg) for v in cfg.variants]
    for row in rows:                # every variant is scored on this validation set
        row.validation = validation
        if validation["flagged"]:
            row.flags.append("validation_near_training")
            row.details["validation_near_training"] = validation["measured"]
    return rows


def validation_leakage(dataset: Dataset, settings: dict) -> dict:
    """How close validation sits to training (harness/leakage.py), as plain data: `split`, `measured`
    (one line with the numbers), `flagged`, `fix`, and the numbers themselves."""
    n_train, n_val = len(dataset.train_images), len(dataset.val_images)
    if dataset.train_sources is None:          # arrays built by hand: each image its own file, in order
        train_sources, names = np.arange(n_train), ()
        n_files = n_train + n_val
    else:
        train_sources, names = dataset.train_sources, dataset.source_names
        n_files = len(names)

    def name(side: str, i: int) -> str:
        if not names:
            return f"{side} image {i}"
        sources = dataset.train_sources if side == "training" else dataset.val_sources
        return f"{side} {names[sources[i]]}"

    m = leakage.measure(dataset.train_images, dataset.val_images, train_sources, n_files,
                        dataset.split or "as given", settings["side"], settings["far_fraction"], names=name)
    flagged = leakage.near_training(m, settings["margin"])
    return {"split": m.split, "flagged": flagged, "measured": leakage.describe(m),
            "fix": leakage.fix_for(m, settings["margin"]),          # "" where nothing is flagged
            "val_median": m.val_median, "typical": m.typical, "margin": settings["margin"],
            "duplicates": len(m.duplicates)}


def safe_check(variant: Variant, dataset: Dataset, cfg: Config) -> CheckRow:
    """A variant whose check raises is a finding about that variant, not a reason to stop."""
    try:
        return check_variant(variant, dataset, cfg, seed=cfg.seeds[0])
    except Exception as e:  # noqa: BLE001
        nan = (math.nan, math.nan)
        return CheckRow(variant.name, nan, {"background": math.nan, "foreground": math.nan}, nan, nan, math.nan,
                        None, math.nan, math.nan, ["check_failed"], {"check_failed": f"{type(e).__name__}: {e}"})


def format_rows(rows: list[CheckRow]) -> str:
    lines = [f"validation: {rows[0].validation['measured']}"] if rows and rows[0].validation else []
    for r in rows:
        lines.append(f"{r.variant}: targets [{r.target_range[0]:.3g}, {r.target_range[1]:.3g}] "
                     f"(background {r.target_levels['background']:.3g}, foreground {r.target_levels['foreground']:.3g}), "
                     f"head {fmt_range(r.head_range)}, loss domain {fmt_range(r.loss_domain)}, "
                     f"floor {r.loss_floor:.3g}, threshold {r.threshold:.3g} -> predicted: {predicted_verdict(r.flags)}")
        if not r.flags:
            lines.append("  no flag")
        for f in r.flags:
            lines.append(f"  {f}: {FLAGS[f][0]} ({r.details[f]})")
            lines.append(f"    fix: {r.fix(f)}")
    return "\n".join(lines)


def fmt_range(r) -> str:
    return f"[{r[0]:g}, {r[1]:g}]"
