"""harness/runs.py: one run's lifecycle (start, judge, end, tell) as a sweep's point and a tune trial
both use it, with a recording tracker and trial instead of MLflow and Optuna."""
import pytest

from fake_runs import PLATEAU, finished_result
from harness.runs import TrackedRun

class Recorder:
    """A Tracker's point calls and a trial's tell/note calls, in order."""

    def __init__(self):
        self.calls = []

    def start_point(self, variant, seed, params, tags):
        self.calls.append(("start", variant, seed))
        return "run-1"

    def set_tags(self, run_id, tags):
        self.calls.append(("tags", tags))

    def end_point(self, run_id, status):
        self.calls.append(("end", status))

    def tell(self, state, value=None):
        self.calls.append(("tell", state, value))

    def note(self, key, value):
        self.calls.append(("note", key, value))

    def run(self, **kwargs):
        return TrackedRun(self, self.tell, self.note, lambda line: self.calls.append(("log", line)), "[v seed=1]",
                          **kwargs)


def history():
    return {"loss": [0.5 / e for e in range(1, 9)], "val_miou": PLATEAU, "val_iou": PLATEAU, "val_dice": PLATEAU}


def test_a_finished_run_is_judged_tagged_ended_then_told():
    from harness.config import DEFAULTS
    rec = Recorder()
    run = rec.run(state_tag="tune.state")
    with run.started("v", 1, {}, {}):
        judged = run.judge(finished_result(history()), DEFAULTS["verdict"])
        run.end()
        run.complete(judged["final_miou"])
    kinds = [c[0] for c in rec.calls]
    assert kinds == ["start", "note", "tags", "end", "tell"] and run.ended == "finished"
    assert rec.calls[2][1]["verdict"] == judged["verdict"] and rec.calls[2][1]["tune.state"] == "complete"
    assert rec.calls[3] == ("end", "FINISHED") and rec.calls[4] == ("tell", "complete", judged["final_miou"])


def test_a_crash_is_data_failed_told_and_not_raised():
    rec = Recorder()
    run = rec.run()
    with run.started("v", 1, {}, {}):
        raise ValueError("shapes (2|3) differ\nmore")
    assert run.ended == "crashed" and run.reason == "ValueError: shapes (2|3) differ"
    assert ("tags", {"failure": run.reason, "verdict": "crashed"}) in rec.calls
    assert rec.calls[-4:] == [("end", "FAILED"), ("note", "error", run.reason), ("tell", "fail", None),
                              ("log", "[v seed=1] crashed: ValueError: shapes (2|3) differ")]


@pytest.mark.parametrize("where", ["right after the run exists", "while training"])
def test_ctrl_c_ends_the_run_killed_and_is_raised_again(where):
    rec = Recorder()
    if where == "right after the run exists":
        def note(key, value):
            raise KeyboardInterrupt
        rec.note = note
    run = rec.run()
    with pytest.raises(KeyboardInterrupt):
        with run.started("v", 1, {}, {}):
            raise KeyboardInterrupt
    assert rec.calls[-2:] == [("end", "KILLED"), ("tell", "interrupted", None)]
    assert rec.calls[-3][1]["verdict"] == "interrupted" and rec.calls[-3][1]["failure"].startswith("interrupted (")


def test_a_pruned_trial_ends_finished_as_pruned():
    class Pruned(Exception):
        pass
    rec = Recorder()
    run = rec.run(state_tag="tune.state")
    with run.started("v", 1, {}, {}, pruned=Pruned):
        raise Pruned("val_miou 0.1 trails")
    assert run.ended == "pruned"
    assert rec.calls[-4:] == [("tags", {"tune.state": "pruned", "verdict": "pruned", "tune.pruned": "val_miou 0.1 trails"}),
                              ("end", "FINISHED"), ("tell", "pruned", None), ("log", "[v seed=1] pruned: val_miou 0.1 trails")]


def test_a_diverged_run_ends_finished_and_its_trial_fails_with_the_reason():
    rec = Recorder()
    run = rec.run()
    with run.started("v", 1, {}, {}):
        run.end()
        run.fail("diverged at epoch 2")
    assert rec.calls[-3:] == [("end", "FINISHED"), ("note", "error", "diverged at epoch 2"), ("tell", "fail", None)]
