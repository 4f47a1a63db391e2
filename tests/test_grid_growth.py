"""A grid that grows and changes, through the real CLI: seeds and variants added, a variant
redefined, an interrupted sweep of another grid, a crash under --n-jobs, a worker's internal error."""
import os
import re
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from conftest import QUICK_TAKEOVER, ROOT, TINY, read_until, run_harness, start_harness

# One level of U-Net: these tests count points, runs and trials, never a score, and a shallower
# model traces in less time.
FAST = ["--set", "train.epochs=2", "--set", "data.n_images=48", "--set", "augment.stats_rounds=0", "--set", "model.levels=1"]
MINE = 'masks = "binary"\nimages = "scaled"\nvalidation = "like_training"\n'
BROKEN = 'masks = "binary"\nloss = "faulty_losses:exploding"\n'


def experiment(tmp_path: Path) -> Path:
    """tiny.toml plus a user variant `mine` and a crashing one `broken`."""
    spec = tmp_path / "grow.toml"
    spec.write_text(TINY.read_text().replace('name = "tiny"', 'name = "grow"')
                    + f"\n[define.mine]\n{MINE}\n[define.broken]\n{BROKEN}")
    return spec


def harness(*args, cwd, env=QUICK_TAKEOVER, timeout=600):
    p = run_harness(*args, cwd=cwd, env=env, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def sweep(spec, variants, seeds, *extra, cwd):
    return harness("sweep", spec, *FAST, "--set", f"variants={variants}", "--set", f"train.seeds={seeds}",
                   "--results", cwd / "r", *extra, cwd=cwd)


def trained(out: str) -> Counter:
    """(variant, seed) of every point this sweep started training (worker prefixes aside)."""
    return Counter(re.findall(r"\[(\S+) seed=(\d+)\] training \(", out))


def runs(results: Path, name="grow"):
    from harness.tracking import load_runs
    return load_runs(f"sqlite:///{results / 'mlflow.db'}", name, with_history=False)


def report_runs(results: Path, name="grow") -> dict:
    """variant -> the run ids the report shows for it."""
    import csv
    with open(results / name / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    out = {}
    for r in rows:
        out.setdefault(r["variant"], set()).add(r["run_id"])
    return out


@pytest.mark.slow
def test_seeds_and_variants_added_and_a_variant_redefined_train_only_what_is_new(tmp_path):
    spec = experiment(tmp_path)
    code, out, err = sweep(spec, '["image_only"]', "[1]", cwd=tmp_path)
    assert code == 0, err[-3000:]
    assert trained(out) == {("image_only", "1"): 1}

    code, out, err = sweep(spec, '["image_only"]', "[1, 2]", cwd=tmp_path)      # once CategoricalDistribution error
    assert code == 0, err[-3000:]
    assert "2 grid points, 1 already finished, 1 to train" in out
    assert trained(out) == {("image_only", "2"): 1}

    code, out, err = sweep(spec, '["image_only", "mine"]', "[1, 2]", cwd=tmp_path)
    assert code == 0, err[-3000:]
    assert trained(out) == {("mine", "1"): 1, ("mine", "2"): 1}
    first_mine = report_runs(tmp_path / "r")["mine"]

    # Redefined: `mine` now trains with Dice. Both of its points are new; image_only's are kept.
    dice = "define.mine={" + MINE.replace("\n", ", ").rstrip(", ") + ', loss = "dice"}'
    code, out, err = sweep(spec, '["image_only", "mine"]', "[1, 2]", "--set", dice, cwd=tmp_path)
    assert code == 0, err[-3000:]
    assert "4 grid points, 2 already finished, 2 to train" in out
    assert trained(out) == {("mine", "1"): 1, ("mine", "2"): 1}
    all_runs = runs(tmp_path / "r").set_index("run_id")
    shown = report_runs(tmp_path / "r")
    assert shown["mine"].isdisjoint(first_mine) and len(shown["mine"]) == 2
    assert set(all_runs.loc[list(shown["mine"]), "params.axis.loss"]) == {"dice"}

    # Back to the first definition: nothing to train, and the report shows the first runs again,
    # not the newer Dice runs of the same (variant, seed).
    code, out, err = sweep(spec, '["image_only", "mine"]', "[1, 2]", cwd=tmp_path)
    assert code == 0, err[-3000:]
    assert "4 grid points, 4 already finished, 0 to train" in out
    assert report_runs(tmp_path / "r")["mine"] == first_mine
    assert set(all_runs.loc[list(first_mine), "params.axis.loss"]) == {"bce"}


@pytest.mark.slow
def test_an_interrupted_sweep_then_a_smaller_grid_skips_the_leftovers(tmp_path):
    spec = experiment(tmp_path)
    big = start_harness("sweep", spec, *FAST, "--set", 'variants=["image_only", "mine"]', "--set",
                        "train.seeds=[1, 2]", "--results", tmp_path / "r", cwd=tmp_path, env=QUICK_TAKEOVER,
                        stderr=subprocess.DEVNULL)
    read_until(big, "] training (")              # killed as its first point starts: 3 queued, 1 running
    big.send_signal(signal.SIGKILL)
    big.wait()
    code, out, err = sweep(spec, '["image_only"]', "[1]", cwd=tmp_path)
    assert code == 0, err[-3000:]
    assert "Traceback" not in err and "internal error" not in err
    skipped = [line for line in out.splitlines() if "skipping queued trial" in line and "not in this grid" in line]
    assert len(skipped) == 3, out
    done = runs(tmp_path / "r")
    done = done[done["status"] == "FINISHED"]
    assert Counter(zip(done["variant"], done["seed"])) == {("image_only", 1): 1}
    # The bigger grid's next sweep queues what was skipped: `status` shows it pending, not lost.
    code, out, err = harness("status", spec, *FAST, "--set", 'variants=["image_only", "mine"]', "--set",
                             "train.seeds=[1, 2]", "--results", tmp_path / "r", cwd=tmp_path)
    assert code == 0, err
    assert "4 points: 1 finished, 0 running, 0 failed, 3 pending" in out, out


@pytest.mark.slow
def test_n_jobs_2_tries_a_crashing_point_once_and_the_next_sweep_retries_it(tmp_path):
    spec = experiment(tmp_path)
    # image_only trains for several heartbeats while the other worker, its point crashed, waits:
    # it must not queue the crashed point again.
    code, out, err = sweep(spec, '["broken", "image_only"]', "[1]", "--set", "train.epochs=6", "--n-jobs", "2",
                           cwd=tmp_path)
    assert code == 0, err[-3000:]
    failed = runs(tmp_path / "r")
    failed = failed[failed["variant"] == "broken"]
    assert list(failed["status"]) == ["FAILED"], out
    assert out.count("[broken seed=1] crashed: ValueError: this loss always fails") == 1
    code, out, err = harness("status", spec, *FAST, "--set", 'variants=["broken", "image_only"]',
                             "--set", "train.epochs=6", "--results", tmp_path / "r", cwd=tmp_path)
    assert code == 0, err
    assert "failed    ValueError: this loss always fails" in out and "image_only" in out, out

    code, out, err = sweep(spec, '["broken", "image_only"]', "[1]", "--set", "train.epochs=6", "--strict",
                           cwd=tmp_path)
    assert code == 1, err[-3000:]                          # --strict: a point crashed
    assert trained(out) == {("broken", "1"): 1}            # retried once; image_only kept
    failed = runs(tmp_path / "r")
    assert list(failed.loc[failed["variant"] == "broken", "status"]) == ["FAILED", "FAILED"]


@pytest.mark.slow
def test_a_workers_internal_error_makes_the_n_jobs_parent_exit_3_naming_it(tmp_path):
    # A bug in worker 1 only, simulated from outside the product: Python imports sitecustomize
    # from PYTHONPATH at start-up, in every process; this one breaks worker 1's queueing.
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('HARNESS_WORKER') == '1':\n"
        "    import harness.grid\n"
        "    def broken(*args, **kwargs):\n"
        "        raise RuntimeError('simulated bug in worker 1')\n"
        "    harness.grid.enqueue_missing = broken\n")
    env = dict(QUICK_TAKEOVER, PYTHONPATH=os.pathsep.join([str(hook), str(ROOT), str(ROOT / "tests")]))
    code, out, err = harness("sweep", TINY, *FAST, "--set", 'variants=["image_only"]', "--n-jobs", "2",
                             "--results", tmp_path / "r", cwd=tmp_path, env=env)
    assert code == 3, err[-3000:]
    assert "harness: internal error: RuntimeError: simulated bug in worker 1" in err, err[-3000:]
    assert "harness: internal error: worker 1 of 2 exited with 3" in err, err[-3000:]
    done = runs(tmp_path / "r", "tiny")
    assert list(done["status"]) == ["FINISHED"]           # worker 2 trained the grid
    from harness.tracking import load_runs
    parent = load_runs(f"sqlite:///{tmp_path / 'r' / 'mlflow.db'}", "tiny", with_history=False, kind="sweep")
    assert list(parent["status"]) == ["FAILED"]           # the sweep's parent run says a worker died
