"""`harness status`: every point of the current grid with its state, from the Optuna study alone.

No TensorFlow and no MLflow on this path (grid.point_trials reads the study), so it answers in
about a second, also while a sweep trains. The verdict shown is the one the sweep recorded on the
trial; the report recomputes verdicts from the runs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from harness.config import Config
from harness.grid import GRACE_S, point_trials
from harness.points import grid_points


@dataclass
class PointState:
    variant: str
    seed: int
    state: str          # finished, running, failed or pending
    detail: str


@dataclass
class GridStatus:
    study: str
    storage: str
    exists: bool        # False before the first sweep of these settings
    points: list[PointState]


def read_status(cfg: Config, storage: str) -> GridStatus:
    trials = point_trials(cfg, storage)
    now = time.time()
    points = [PointState(variant.name, seed, *state_of((trials or {}).get(key, []), now))
              for key, (variant, seed) in grid_points(cfg).items()]
    return GridStatus(cfg.study_name, storage, trials is not None, points)


def state_of(trials: list[dict], now: float) -> tuple[str, str]:
    """One point's state from its trials (oldest first): a finished trial wins, then a running one,
    then a queued one, then the newest failure; a point never tried is pending."""
    by_state = {}
    for t in trials:
        by_state.setdefault(t["state"], []).append(t)
    if "COMPLETE" in by_state:
        t = by_state["COMPLETE"][-1]
        return "finished", f"{t['attrs'].get('verdict', 'finished')}, val_miou {t['value']:.3f}"
    if "RUNNING" in by_state:
        t = by_state["RUNNING"][-1]
        beat = t["attrs"].get("heartbeat", t["start"] or now)
        silent = now - beat
        note = f", silent for {silent:.0f}s: its worker may have died" if silent > GRACE_S else ""
        return "running", f"on {t['attrs'].get('host', '?')}, heartbeat {max(silent, 0):.0f}s ago{note}"
    if "WAITING" in by_state:
        return "pending", "queued"
    if "FAIL" in by_state:
        t = by_state["FAIL"][-1]
        why = t["attrs"].get("error") or "interrupted (Ctrl-C, or its worker died); retrained by the next sweep"
        return "failed", why
    return "pending", ""


def format_status(status: GridStatus) -> str:
    counts = {}
    for p in status.points:
        counts[p.state] = counts.get(p.state, 0) + 1
    lines = [f"study {status.study} in {status.storage}"
             + ("" if status.exists else " (not created yet: no sweep of these settings has run)"),
             f"{len(status.points)} points: " + ", ".join(f"{counts.get(s, 0)} {s}"
                                                         for s in ("finished", "running", "failed", "pending")),
             f"{'variant':<24} {'seed':>4}  {'state':<8}  detail"]
    lines += [f"{p.variant:<24} {p.seed:>4}  {p.state:<8}  {p.detail}".rstrip() for p in status.points]
    return "\n".join(lines)
