"""The sweep's progress display: live line on a terminal, plain periodic lines otherwise."""
import io

from harness.progress import Progress, clock


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_plain_lines_are_periodic_and_complete():
    out = io.StringIO()
    p = Progress(total=4, done=1, stream=out, every_s=0)
    p.start_point("seed", 2, epochs=3)
    p.epoch(1, 0.5)
    p.epoch(2, -0.25)
    p.end_point()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in out.getvalue()
    assert lines[0].startswith("[1/4 done] seed seed=2 epoch 1/3 loss 0.5 | elapsed ")
    assert "loss -0.25" in lines[1] and "left ~" in lines[1]
    assert p.done == 2


def test_plain_lines_are_throttled():
    out = io.StringIO()
    p = Progress(total=2, done=0, stream=out, every_s=3600)
    p.start_point("a", 1, epochs=5)
    for epoch in range(1, 6):
        p.epoch(epoch, 0.1)
    assert len(out.getvalue().splitlines()) == 1       # the first, then silence for an hour


def test_terminal_line_is_rewritten_in_place_and_cleared():
    out = FakeTerminal()
    p = Progress(total=2, done=0, stream=out)
    p.start_point("image_only", 1, epochs=2)
    p.batch(1, 3, 0.7)
    p.epoch(1, 0.6)
    text = out.getvalue()
    assert "\n" not in text and text.count("\r") == 3
    assert "epoch 1/2 batch 3 loss 0.7" in text and "epoch 1/2 loss 0.6" in text
    p.end_point()
    assert out.getvalue().endswith("\r") and p.done == 1


def test_estimate_uses_finished_points():
    p = Progress(total=3, done=0, stream=io.StringIO(), every_s=0)
    p.point_seconds = [10.0]
    p.done = 1
    p.start_point("a", 1, epochs=2)
    assert 19 <= p.remaining_s(0) <= 20                   # two points left at 10 s each
    assert clock(3725) == "1:02:05" and clock(65) == "1:05" and clock(float("nan")) == "?"



def test_estimate_before_any_point_finished_discounts_the_first_epoch():
    p = Progress(total=2, done=0, stream=io.StringIO(), every_s=3600)
    p.start_point("a", 1, epochs=11)
    start = p.point_started
    p.epoch_ends = [start + 20.0, start + 21.0, start + 22.0]      # 20 s to build and trace, then 1 s/epoch
    left = p.remaining_s(3)                    # (the real clock has barely moved since start_point)
    assert 59 <= left <= 60                    # 2 points x (20 s + 10 x 1 s), not 2 x 11 x 7.3 s
    p2 = Progress(total=2, done=0, stream=io.StringIO(), every_s=3600)
    p2.start_point("a", 1, epochs=5)
    p2.epoch(1, 0.5)
    assert "left ~?" in p2.line(1, 0.5)                           # one epoch says nothing about the pace yet
