"""Segmentation quality against the binary ground truth: IoU, Dice, and the trivial predictor."""
from __future__ import annotations

import numpy as np


def trivial_miou(masks: np.ndarray) -> float:
    """Mean IoU of predicting every pixel as the majority class: the floor a model must beat."""
    f = float(masks.mean())
    return max(f, 1 - f) / 2


def confusion_ious(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Foreground IoU, background IoU, their mean and Dice, pooled over every pixel given."""
    p, t = pred.astype(bool), truth.astype(bool)
    tp = np.sum(p & t)
    fp = np.sum(p & ~t)
    fn = np.sum(~p & t)
    tn = np.sum(~p & ~t)
    iou = tp / (tp + fp + fn) if tp + fp + fn else 1.0
    bg_iou = tn / (tn + fp + fn) if tn + fp + fn else 1.0
    dice = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
    return {"iou": float(iou), "bg_iou": float(bg_iou), "miou": float((iou + bg_iou) / 2), "dice": float(dice)}
