"""The sweep's progress display: live line on a terminal, plain periodic lines otherwise. Time is a
fake clock that the test moves, so nothing here depends on how fast the machine is."""
import io

from harness.progress import Progress, clock


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def test_plain_lines_are_periodic_and_complete():
    out, now = io.StringIO(), Clock()
    p = Progress(total=4, done=1, stream=out, every_s=0, now=now)
    p.start_point("seed", 2, epochs=3)
    now.advance(65)
    p.epoch(1, 0.5)
    now.advance(5)
    p.epoch(2, -0.25)
    p.end_point()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in out.getvalue()
    assert lines[0] == "[1/4 done] seed seed=2 epoch 1/3 loss 0.5 | elapsed 1:05, left ~?"
    # Pace from epoch 2: 65 s to build and trace + 2 x 5 s = 75 s per point, 3 points left, 70 s in.
    assert lines[1] == "[1/4 done] seed seed=2 epoch 2/3 loss -0.25 | elapsed 1:10, left ~2:35"
    assert p.done == 2 and p.point_seconds == [70.0]


def test_plain_lines_are_throttled():
    out, now = io.StringIO(), Clock()
    p = Progress(total=2, done=0, stream=out, every_s=30, now=now)
    p.start_point("a", 1, epochs=5)
    for epoch in range(1, 5):
        now.advance(10)
        p.epoch(epoch, 0.1)
    lines = out.getvalue().splitlines()
    assert [line.split(" loss")[0] for line in lines] == ["[0/2 done] a seed=1 epoch 1/5",
                                                          "[0/2 done] a seed=1 epoch 4/5"]   # at 10 s and 40 s


def test_terminal_line_is_rewritten_in_place_and_cleared():
    out, now = FakeTerminal(), Clock()
    p = Progress(total=2, done=0, stream=out, now=now)
    p.start_point("image_only", 1, epochs=2)
    now.advance(1)
    p.batch(1, 3, 0.7)
    now.advance(0.1)
    p.batch(1, 4, 0.65)                 # within half a second of the last: not redrawn
    p.epoch(1, 0.6)
    text = out.getvalue()
    assert "\n" not in text and text.count("\r") == 3
    assert "epoch 1/2 batch 3 loss 0.7" in text and "batch 4" not in text and "epoch 1/2 loss 0.6" in text
    p.end_point()
    assert out.getvalue().endswith("\r") and p.done == 1


def test_estimate_uses_finished_points():
    now = Clock()
    p = Progress(total=3, done=0, stream=io.StringIO(), every_s=0, now=now)
    p.point_seconds = [10.0]
    p.done = 1
    p.start_point("a", 1, epochs=2)
    assert p.remaining_s(0) == 20.0                       # two points left at 10 s each
    now.advance(4)
    assert p.remaining_s(0) == 16.0                       # 4 s of the current one are behind us
    assert clock(3725) == "1:02:05" and clock(65) == "1:05" and clock(float("nan")) == "?"


def test_estimate_before_any_point_finished_discounts_the_first_epoch():
    now = Clock()
    p = Progress(total=2, done=0, stream=io.StringIO(), every_s=3600, now=now)
    p.start_point("a", 1, epochs=11)
    for seconds in (20, 1, 1):                  # 20 s to build and trace, then 1 s per epoch
        now.advance(seconds)
        p.epoch(len(p.epoch_ends) + 1, 0.5)
    # 2 points x (20 s + 10 x 1 s) = 60 s, less the 22 s of this point already done.
    assert p.remaining_s(3) == 38.0
    p2 = Progress(total=2, done=0, stream=io.StringIO(), every_s=3600, now=Clock())
    p2.start_point("a", 1, epochs=5)
    p2.epoch(1, 0.5)
    assert "left ~?" in p2.line(1, 0.5)                           # one epoch says nothing about the pace yet
