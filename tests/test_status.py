"""`harness status` before, during and after a sweep, through the real CLI, without TensorFlow."""
import os
import platform
import re
import signal
import subprocess
import sys

import pytest

from conftest import QUICK_TAKEOVER, ROOT, TINY, read_until, run_harness, start_harness

GRID = ["--set", "data.n_images=48", "--set", "augment.stats_rounds=0", "--set", 'variants=["image_only"]',
        "--set", "train.seeds=[1, 2]"]


def status(*args, cwd):
    p = run_harness("status", TINY, *GRID, *args, cwd=cwd, env=QUICK_TAKEOVER, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout


def test_status_imports_neither_tensorflow_nor_mlflow(tmp_path):
    code = ("import sys; from harness.cli import main; "
            f"assert main(['status', {str(TINY)!r}, '--results', {str(tmp_path / 'r')!r}]) == 0; "
            "print(sorted(m for m in ('tensorflow', 'keras', 'mlflow') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                       capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip().splitlines()[-1] == "[]"
    assert not (tmp_path / "r" / "optuna.db").exists()         # status creates no store


@pytest.mark.slow
def test_status_before_during_and_after_a_sweep(tmp_path):
    results = tmp_path / "r"
    before = status("--set", "train.epochs=2", "--results", results, cwd=tmp_path)
    assert "not created yet" in before and "2 points: 0 finished, 0 running, 0 failed, 2 pending" in before

    # During: a long point is running on this host; Ctrl-C leaves it failed as interrupted.
    sweep = start_harness("sweep", TINY, *GRID, "--set", "train.epochs=500", "--results", results, cwd=tmp_path,
                          env=QUICK_TAKEOVER, stderr=subprocess.DEVNULL)
    try:
        read_until(sweep, "] training (")
        during = status("--set", "train.epochs=500", "--results", results, cwd=tmp_path)
    finally:
        sweep.send_signal(signal.SIGINT)
        sweep.communicate(timeout=120)
    assert sweep.returncode == 130
    assert "2 points: 0 finished, 1 running, 0 failed, 1 pending" in during, during
    (running,) = [line for line in during.splitlines() if " running " in line]
    assert running.split()[:3] == ["image_only", "1", "running"] and f"on {platform.node()}," in running
    stopped = status("--set", "train.epochs=500", "--results", results, cwd=tmp_path)
    assert "failed    interrupted" in stopped, stopped

    # After a finished sweep of 2 epochs: both points finished, each with its verdict.
    p = run_harness("sweep", TINY, *GRID, "--set", "train.epochs=2", "--results", results, cwd=tmp_path,
                    env=QUICK_TAKEOVER)
    assert p.returncode == 0, p.stderr[-2000:]
    after = status("--set", "train.epochs=2", "--results", results, cwd=tmp_path)
    assert "2 points: 2 finished, 0 running, 0 failed, 0 pending" in after, after
    rows = [line.split() for line in after.splitlines() if line.startswith("image_only")]
    assert [r[:3] for r in rows] == [["image_only", "1", "finished"], ["image_only", "2", "finished"]]
    assert all(re.fullmatch(r"\w+, val_miou \d\.\d{3}", " ".join(r[3:])) for r in rows), after   # verdict, score
    study = [line for line in after.splitlines() if line.startswith("study ")][0]
    assert "optuna.db" in study and "not created" not in study
