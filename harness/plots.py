"""Figures (matplotlib only, no TensorFlow): per-run loss curves and prediction samples, and the
report's all-variant figures."""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def subplots(*args, figsize, squeeze=True):
    """A figure outside pyplot's registry: nothing global, so figures can be drawn off the main thread
    (the sweep draws each run's figures while the next point trains) and are freed with their object."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*args, squeeze=squeeze)


def finite_points(values):
    xs = [i + 1 for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    return xs, [values[i - 1] for i in xs]


def loss_curve(history: dict, floor: float, title: str):
    fig, ax = subplots(1, 2, figsize=(9, 3.2))
    for key, style in (("loss", "-"), ("val_loss", "--")):
        if key in history:
            ax[0].plot(*finite_points(history[key]), style, label=key)
    if math.isfinite(floor):
        ax[0].axhline(floor, color="k", lw=0.8, ls=":", label=f"measured floor {floor:.3g}")
    else:
        ax[0].plot([], [], " ", label="no floor: the loss falls without bound")
    ax[0].set(xlabel="epoch", ylabel="loss", title=f"{title}: loss")
    ax[0].ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))   # short labels fit the fixed margin
    ax[0].legend(fontsize=7)
    for key in ("val_miou", "val_iou", "val_as_train_miou"):
        if key in history:
            ax[1].plot(*finite_points(history[key]), label=key)
    ax[1].set(xlabel="epoch", ylim=(0, 1), title="validation IoU vs binary truth")
    if ax[1].lines:
        ax[1].legend(fontsize=7)
    # Fixed margins, not tight_layout: a sweep draws this after every point, and tight_layout's extra
    # draw pass was half of its 0.19 s (harness bench: "tracking and figures").
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.15, top=0.9, wspace=0.22)
    return fig


SAMPLE_ROWS = ("image", "truth", "output", "thresholded")


def scaled(a: np.ndarray) -> np.ndarray:
    """`a` mapped onto [0, 1] by its own range (a flat one to 0), as imshow scales an image by default."""
    from matplotlib.colors import Normalize
    return np.asarray(Normalize()(np.asarray(a, float)))


def as_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(gray, float)[..., None], 3, axis=-1)


def sample_tiles(samples: dict) -> list[list[np.ndarray]]:
    """RGB tiles in [0, 1], one row per SAMPLE_ROWS: the raw input (RGB over 255, one channel scaled
    by its range), the truth, the raw output (viridis, scaled by its range) and the output
    thresholded through the head."""
    from matplotlib import colormaps
    images, truth, pred = samples["images"], samples["truth"], samples["prediction"]
    shown = [np.clip(im[..., :3] / 255.0, 0, 1) if im.shape[-1] >= 3 else as_rgb(scaled(im[..., 0])) for im in images]
    return [shown, [as_rgb(np.clip(t[..., 0], 0, 1)) for t in truth],
            [colormaps["viridis"](scaled(p[..., 0]))[..., :3] for p in pred],
            [as_rgb(p[..., 0] >= samples["threshold"]) for p in pred]]


def sample_mosaic(samples: dict, border: int = 1) -> np.ndarray:
    """The sample tiles as one RGB image, each tile framed by `border` white pixels."""
    framed = [[np.pad(tile, ((border, border), (border, border), (0, 0)), constant_values=1.0) for tile in row]
              for row in sample_tiles(samples)]
    return np.concatenate([np.concatenate(row, axis=1) for row in framed], axis=0)


def prediction_samples(samples: dict, title: str):
    """Rows: input image (raw), ground truth, raw prediction, prediction thresholded through the head."""
    # One image in one axes: sixteen axes (one per tile) took 0.27 s to draw, after every point.
    mosaic = sample_mosaic(samples)
    width, height, label_width = 1.2 + 1.6 * len(samples["images"]), 6.9, 1.1          # inches
    fig = Figure(figsize=(width, height))
    ax = fig.add_axes((label_width / width, 0.1 / height, 1 - (label_width + 0.1) / width, 1 - 0.5 / height))
    ax.imshow(mosaic, interpolation="nearest")
    row = mosaic.shape[0] / len(SAMPLE_ROWS)
    ax.set_yticks([row * (i + 0.5) for i in range(len(SAMPLE_ROWS))], SAMPLE_ROWS)
    ax.set_xticks([])
    ax.tick_params(length=0)
    fig.suptitle(title, fontsize=10)
    return fig


def all_loss_curves(histories: dict[str, list[tuple[int, dict]]], floors: dict[str, float]):
    """One panel per variant: training loss per seed, its lower bound, and val mIoU on a twin axis."""
    names = list(histories)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = subplots(rows, cols, figsize=(4.6 * cols, 3.3 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        twin = ax.twinx()
        for seed, hist in histories[name]:
            line, = ax.plot(*finite_points(hist.get("loss", [])), label=f"loss s{seed}")
            twin.plot(*finite_points(hist.get("val_miou", [])), ls="--", color=line.get_color(), alpha=0.7)
        if math.isfinite(floors[name]):
            ax.axhline(floors[name], color="k", lw=0.8, ls=":")
        ax.set(title=name, xlabel="epoch", ylabel="training loss (solid)")
        twin.set(ylim=(0, 1), ylabel="val mIoU (dashed)")
        ax.legend(fontsize=7, loc="upper right")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def miou_bars(summary, trivial: float):
    """Mean validation mIoU per variant with the seed spread, against the trivial predictor."""
    # At least 7 in wide: the legend sits beside the bars and needs about 3.6 in (one variant left
    # tight_layout no room, and matplotlib warned "Tight layout not applied" on the terminal).
    fig, ax = subplots(figsize=(max(1.3 * len(summary) + 2, 7.0), 3.2))
    x = np.arange(len(summary))
    ax.bar(x, summary["val_miou"].fillna(0), yerr=summary["val_miou_std"].fillna(0), capsize=4, color="tab:blue",
           label="val mIoU as fed: mean over seeds, whisker ±1 std (seed spread)")
    if "val_as_train_miou" in summary:
        ax.scatter(x, summary["val_as_train_miou"], color="tab:orange", zorder=3,
                   label="val mIoU, inputs transformed like training")
    ax.axhline(trivial, color="k", ls=":", label=f"trivial predictor {trivial:.3f}")
    ax.set_xticks(x, summary["variant"], rotation=20)
    ax.set(ylim=(0, 1), ylabel="mIoU")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)  # beside, never over a bar
    fig.tight_layout()
    return fig


def tuning_scatter(trials, ranges: dict):
    """`harness tune`: each trial's val_miou against the first tuned setting, per variant; pruned
    trials hollow (their mIoU is where they were stopped)."""
    key = next(iter(ranges))
    fig, ax = subplots(figsize=(6.5, 3.4))
    for i, (variant, group) in enumerate(trials.groupby("variant", sort=False)):
        color = f"C{i % 10}"
        x = [float(t.get(key, "nan")) for t in group["tuned"]]
        done = (group["state"] == "complete").to_numpy()
        xs = np.array(x)
        ax.scatter(xs[done], group["val_miou"][done], color=color, label=variant)
        ax.scatter(xs[~done], group["val_miou"][~done], facecolors="none", edgecolors=color)
    trivial = trials["trivial_miou"].dropna()
    if len(trivial):
        ax.axhline(float(trivial.mean()), color="k", ls=":", label="trivial predictor")
    if ranges[key].get("log"):
        ax.set_xscale("log")
    ax.set(xlabel=key, ylabel="val mIoU", ylim=(0, 1), title="tuned trials (hollow: pruned)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def health_curves(histories: list[tuple[int, dict]], title: str):
    """A failed variant's training health over epochs (harness/monitor.py), one line style per seed:
    the gradient norm per layer group (log scale), and the dead-unit and saturated-head fractions."""
    fig, ax = subplots(1, 2, figsize=(9, 3.2))
    for i, (seed, hist) in enumerate(histories):
        style = ("-", "--", ":", "-.")[i % 4]
        for j, group in enumerate(("first", "last", "head")):
            xs, ys = finite_points(hist.get(f"health/grad_norm_{group}", []))
            kept = [(x, y) for x, y in zip(xs, ys) if y > 0]       # a zero norm has no place on a log axis
            ax[0].plot([x for x, _ in kept], [y for _, y in kept], style, color=f"C{j}", label=f"{group} s{seed}")
        for j, key in enumerate(("dead_units", "saturated_head")):
            ax[1].plot(*finite_points(hist.get(f"health/{key}", [])), style, color=f"C{j + 3}", label=f"{key} s{seed}")
    ax[0].set(xlabel="epoch", ylabel="gradient norm", title=f"{title}: gradient norm per layer group")
    if ax[0].lines and any(len(line.get_xdata()) for line in ax[0].lines):
        ax[0].set_yscale("log")
    ax[1].set(xlabel="epoch", ylim=(-0.02, 1.02), ylabel="share", title="dead ReLU channels, saturated head")
    for a in ax:
        if a.lines:
            a.legend(fontsize=6)
    fig.tight_layout()
    return fig
