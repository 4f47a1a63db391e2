"""Progress of a sweep while it runs: points done/total, the current variant and seed, epoch, loss,
elapsed time and an estimate of what is left. One live line on a terminal; on a pipe or a CI log,
plain lines at most every HARNESS_PROGRESS_S seconds (default 30), so logs stay readable."""
from __future__ import annotations

import math
import sys
import time
from typing import Callable

from harness import environment


def clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    def __init__(self, total: int, done: int, stream=None, every_s: float | None = None,
                 now: Callable[[], float] = time.monotonic):
        self.now = now              # seconds; injected by tests, so no test depends on the wall clock
        self.stream = stream or sys.stderr
        self.live = (hasattr(self.stream, "isatty") and self.stream.isatty()
                     and environment.progress_live())
        self.every_s = environment.number(environment.PROGRESS_S) if every_s is None else every_s
        self.total, self.done = total, done
        self.started = self.now()
        self.point_seconds: list[float] = []       # wall time of points finished by this worker
        self.point = ""
        self.epochs = 1
        self.epoch_ends: list[float] = []
        self.point_started = self.started
        self.last_line = self.last_batch = -math.inf
        self.width = 0

    def set_done(self, done: int) -> None:
        """Points finished by any worker (read back from the study)."""
        self.done = max(self.done, done)

    def start_point(self, variant: str, seed: int, epochs: int) -> None:
        self.point, self.epochs = f"{variant} seed={seed}", max(1, epochs)
        self.point_started = self.now()
        self.epoch_ends: list[float] = []
        if self.live:
            self.show(epoch=0, loss=None)

    def epoch(self, epoch: int, loss: float | None) -> None:
        self.epoch_ends.append(self.now())
        self.show(epoch, loss)

    def batch(self, epoch: int, batch: int, loss) -> None:
        """Within an epoch, only the live line moves (at most twice a second)."""
        now = self.now()
        if self.live and now - self.last_batch >= 0.5:
            self.last_batch = now
            self.show(epoch - 1, None if loss is None else float(loss), note=f"epoch {epoch}/{self.epochs} batch {batch}")

    def end_point(self) -> None:
        self.point_seconds.append(self.now() - self.point_started)
        self.done += 1
        self.clear()

    def remaining_s(self, epoch: int) -> float:
        """Points left x seconds per point: the mean of this worker's finished points, or while none
        has finished, the current point's pace per epoch."""
        left = max(0, self.total - self.done)
        if self.point_seconds:
            per_point = sum(self.point_seconds) / len(self.point_seconds)
        elif len(self.epoch_ends) >= 2:
            # The first epoch also builds the model and traces it: time it once, pace the rest by the others.
            first = self.epoch_ends[0] - self.point_started
            pace = (self.epoch_ends[-1] - self.epoch_ends[0]) / (len(self.epoch_ends) - 1)
            per_point = first + pace * (self.epochs - 1)
        else:
            return math.nan
        in_point = (self.now() - self.point_started)
        return max(0.0, left * per_point - min(in_point, per_point))

    def line(self, epoch: int, loss: float | None, note: str = "") -> str:
        """`epoch`: epochs finished in the current point; `note` replaces the default position text."""
        loss_text = "" if loss is None else f" loss {loss:.4g}"
        where = note or f"epoch {epoch}/{self.epochs}"
        return (f"[{self.done}/{self.total} done] {self.point} {where}{loss_text} | "
                f"elapsed {clock(self.now() - self.started)}, left ~{clock(self.remaining_s(epoch))}")

    def show(self, epoch: int, loss: float | None, note: str = "") -> None:
        text = self.line(epoch, loss, note)
        if self.live:
            self.stream.write("\r" + text.ljust(self.width))
            self.width = len(text)
            self.stream.flush()
        elif self.now() - self.last_line >= self.every_s:
            self.stream.write(text + "\n")
            self.stream.flush()
            self.last_line = self.now()

    def clear(self) -> None:
        """Wipe the live line so ordinary log lines print cleanly."""
        if self.live and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0
