"""Faults through the real CLI: kill and resume, two workers, crashes, Ctrl-C, determinism."""
import contextlib
import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from conftest import QUICK_TAKEOVER, TINY, read_until, run_harness, start_harness

FAST = ["--set", "train.epochs=4", "--set", "data.n_images=96", "--set", "augment.stats_rounds=0"]


def start(*args, cwd):
    return start_harness("sweep", TINY, *args, cwd=cwd, env=QUICK_TAKEOVER)


def run(*args, cwd, timeout=600):
    p = start(*args, cwd=cwd)
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


def wait_for(proc, text: str, timeout=300) -> str:
    """Read the sweep's stdout until a line contains `text` (failing after `timeout` s)."""
    return read_until(proc, text, timeout)


def mlflow_runs(results: Path, name="tiny"):
    from harness.tracking import load_runs
    return load_runs(f"sqlite:///{results / 'mlflow.db'}", name, with_history=True)


def finished_per_point(runs):
    done = runs[runs["status"] == "FINISHED"]
    return Counter(zip(done["variant"], done["seed"]))


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_loses_nothing(tmp_path):
    results = tmp_path / "r"
    args = [*FAST, "--set", 'variants=["image_only","seed","tanh_corrected"]', "--set", "train.seeds=[1,2]",
            "--results", results]
    rng = random.Random(7)
    kills = 0
    for when in ("after_first_point", "random", "random"):
        p = start(*args, cwd=tmp_path)
        if when == "after_first_point":
            wait_for(p, "s on ", timeout=300)           # a point's verdict line: "... 12s on CPU"
        else:
            wait_for(p, "training (", timeout=300)
            time.sleep(rng.uniform(0.5, 6.0))
        p.send_signal(signal.SIGKILL)
        p.wait()
        kills += 1
        runs = mlflow_runs(results)
        before = {r.run_id: r.history for r in runs.itertuples() if r.status == "FINISHED"}
    code, out, err = run(*args, cwd=tmp_path)
    assert code == 0, err[-3000:]
    runs = mlflow_runs(results)
    # Exactly one finished run per point; nothing left RUNNING; killed runs are FAILED with a reason.
    assert finished_per_point(runs) == {(v, s): 1 for v in ("image_only", "seed", "tanh_corrected") for s in (1, 2)}
    assert "RUNNING" not in set(runs["status"])
    failed = runs[runs["status"] == "FAILED"]
    assert len(failed) >= 1 and failed["tags.failure"].str.contains("interrupted").all()
    # Finished runs kept every metric.
    after = {r.run_id: r.history for r in runs.itertuples() if r.status == "FINISHED"}
    for run_id, history in before.items():
        assert after[run_id] == history
    import csv
    with open(results / "tiny" / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["variant"] for r in rows) == ["image_only", "seed", "tanh_corrected"]
    assert all(r["seeds"] == "2" for r in rows)


@pytest.mark.slow
def test_two_workers_share_one_study_and_train_each_point_once(tmp_path):
    import optuna
    journal = tmp_path / "optuna.journal"
    args = [*FAST, "--set", 'variants=["image_only","no_featurewise"]', "--set", "train.seeds=[1,2]",
            "--storage", f"journal:{journal}", "--results", tmp_path / "r"]
    workers = [start(*args, cwd=tmp_path) for _ in range(2)]
    outputs = [w.communicate(timeout=600) for w in workers]
    for w, (out, err) in zip(workers, outputs):
        assert w.returncode == 0, err[-3000:]
    trained = sum(out.count(": min loss ") for out, _ in outputs)     # a verdict line per trained point
    assert trained == 4
    runs = mlflow_runs(tmp_path / "r")
    assert finished_per_point(runs) == {(v, s): 1 for v in ("image_only", "no_featurewise") for s in (1, 2)}
    from optuna.storages.journal import JournalFileBackend
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    (summary,) = optuna.get_all_study_summaries(storage)
    complete = [t for t in optuna.load_study(study_name=summary.study_name, storage=storage).trials
                if t.state == optuna.trial.TrialState.COMPLETE]
    assert Counter(t.user_attrs["point"].split("/")[0] for t in complete) == {"image_only": 2, "no_featurewise": 2}


@pytest.mark.slow
def test_n_jobs_shares_the_grid_between_worker_processes(tmp_path):
    """`--n-jobs 2` on the default SQLite stores: each point trained once, one parent run, one report."""
    results = tmp_path / "r"
    p = start(*FAST, "--set", "train.epochs=2", "--set", 'variants=["image_only","no_featurewise"]',
              "--set", "train.seeds=[1,2]", "--n-jobs", "2", "--results", results, cwd=tmp_path)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    assert "2 workers started" in out and "[worker 1]" in out and "[worker 2]" in out
    per_worker = Counter(line.split("]")[0] for line in out.splitlines()
                         if line.startswith("[worker") and "training (" in line)
    assert sum(per_worker.values()) == 4
    runs = mlflow_runs(results)
    assert finished_per_point(runs) == {(v, s): 1 for v in ("image_only", "no_featurewise") for s in (1, 2)}
    assert runs["tags.mlflow.parentRunId"].nunique() == 1
    from harness.tracking import client_for
    parent = client_for(f"sqlite:///{results / 'mlflow.db'}").get_run(runs["tags.mlflow.parentRunId"].iloc[0])
    assert parent.info.status == "FINISHED"
    assert (results / "tiny" / "summary.csv").read_text().count("\n") == 3     # header + 2 variants


@pytest.mark.slow
def test_a_crashing_variant_is_recorded_and_the_sweep_goes_on(tmp_path):
    results = tmp_path / "r"
    spec = tmp_path / "e.toml"
    spec.write_text((TINY.read_text().replace('variants = ["seed", "no_featurewise", "image_only", "tanh_posted", '
                                              '"tanh_corrected"]', 'variants = ["broken", "image_only"]')
                     + '\n[define.broken]\nmasks = "binary"\nloss = "faulty_losses:exploding"\n'))
    p = run_harness("sweep", spec, *FAST, "--results", results, cwd=tmp_path, env=QUICK_TAKEOVER)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "[broken seed=1] crashed: ValueError: this loss always fails" in p.stdout
    runs = mlflow_runs(results, "tiny")
    assert set(runs.loc[runs["variant"] == "broken", "status"]) == {"FAILED"}
    assert runs.loc[runs["variant"] == "broken", "tags.failure"].str.contains("this loss always fails").all()
    assert set(runs.loc[runs["variant"] == "image_only", "status"]) == {"FINISHED"}
    report = (results / "tiny" / "report.md").read_text()
    assert "Crashed or interrupted points" in report and "this loss always fails" in report
    strict = run_harness("sweep", spec, *FAST, "--results", results, "--strict", cwd=tmp_path, env=QUICK_TAKEOVER)
    assert strict.returncode == 1, strict.stderr[-2000:]


@pytest.mark.slow
# 0.0 lands in the session reset right after "training (" (gc.collect() runs finalizers there).
# SIGTERM (pre-emption, `docker stop`) is handled as a Ctrl-C.
@pytest.mark.parametrize("sig, delay", [(signal.SIGINT, 0.0), (signal.SIGINT, 1.0), (signal.SIGINT, 4.0),
                                        (signal.SIGTERM, 1.0)])
def test_ctrl_c_marks_the_run_and_exits_130(tmp_path, sig, delay):
    results = tmp_path / "r"
    # Many epochs: training must still run when the signal comes (an epoch here takes a fraction of a second).
    p = start(*FAST, "--set", "train.epochs=500", "--set", 'variants=["image_only"]', "--results", results,
              cwd=tmp_path)
    wait_for(p, "training (")
    time.sleep(delay)
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-2000:]
    assert "interrupted" in err and "Traceback" not in err and "Exception ignored" not in err, err[-2000:]
    runs = mlflow_runs(results)
    assert list(runs["status"]) == ["KILLED"]
    assert runs.iloc[0]["tags.failure"] == ("interrupted (SIGTERM)" if sig == signal.SIGTERM else "interrupted (Ctrl-C)")


@pytest.mark.slow
def test_ctrl_c_at_the_n_jobs_parent_alone_stops_every_worker(tmp_path):
    """`kill -INT` to the parent only (a terminal's Ctrl-C reaches the workers too, and they leave it to
    the parent): each worker is asked once, marks its run KILLED, and the parent run ends KILLED."""
    results = tmp_path / "r"
    p = start(*FAST, "--set", "train.epochs=500", "--set", 'variants=["image_only","no_featurewise"]',
              "--n-jobs", "2", "--results", results, cwd=tmp_path)
    wait_for(p, "training (")
    wait_for(p, "training (")                    # both workers train
    time.sleep(1.0)
    workers = psutil.Process(p.pid).children()
    os.kill(p.pid, signal.SIGINT)
    try:
        _, err = p.communicate(timeout=120)
    finally:
        for proc in [*workers, p]:               # never leave 500-epoch workers behind a failed test
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
    assert p.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "Exception ignored" not in err, err[-2000:]
    assert err.count("harness: interrupted") == 3, err[-2000:]       # two workers and the parent
    runs = mlflow_runs(results)
    assert sorted(runs["status"]) == ["KILLED", "KILLED"]
    assert (runs["tags.failure"] == "interrupted (SIGTERM)").all()     # what the parent asked them with
    from harness.tracking import client_for
    parent = client_for(f"sqlite:///{results / 'mlflow.db'}").get_run(runs["tags.mlflow.parentRunId"].iloc[0])
    assert parent.info.status == "KILLED"


def test_ctrl_c_during_training_waits_for_a_safe_point_and_twice_interrupts_at_once():
    from harness.errors import on_sigint
    from harness.errors import INTERRUPTED, interrupted_reason, interrupts_deferred, stop_if_interrupted
    INTERRUPTED.clear()
    try:
        reached = []
        with pytest.raises(KeyboardInterrupt):
            with interrupts_deferred():
                on_sigint(signal.SIGINT, None)           # a first Ctrl-C inside training: no raise here
                reached.append("after the first")
                with pytest.raises(KeyboardInterrupt):
                    stop_if_interrupted()                # the next safe point raises it
                reached.append("after the safe point")
        assert reached == ["after the first", "after the safe point"]   # and the block's end raised again
        with pytest.raises(KeyboardInterrupt):
            on_sigint(signal.SIGINT, None)               # outside training: at once
        INTERRUPTED.clear()
        with pytest.raises(KeyboardInterrupt):
            with interrupts_deferred():
                on_sigint(signal.SIGINT, None)
                on_sigint(signal.SIGINT, None)           # pressed again: at once
                reached.append("never")
        assert "never" not in reached
        assert interrupted_reason() == "interrupted (Ctrl-C)"
        INTERRUPTED.clear()
        with pytest.raises(KeyboardInterrupt):
            on_sigint(signal.SIGTERM, None)
        assert interrupted_reason() == "interrupted (SIGTERM)"     # the run's failure tag says which
    finally:
        INTERRUPTED.clear()


@pytest.mark.slow   # a fresh process or a real training: the full suite runs it, not the fast set
def test_same_seed_gives_identical_metrics_on_the_cpu():
    from harness.config import load_config
    from harness.data import load_dataset
    from harness.train import train_variant
    cfg = load_config(TINY, ["train.epochs=2", "data.n_images=32", "augment.stats_rounds=1", "model.start_depth=4"])
    ds = load_dataset(cfg["data"])
    variant = cfg.variants[2]
    first = train_variant(cfg, variant, 3, ds).history
    second = train_variant(cfg, variant, 3, ds).history
    assert first == second
    assert train_variant(cfg, variant, 4, ds).history != first


def make_folder(root: Path, n=4, size=32) -> Path:
    import numpy as np
    from PIL import Image
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        mask = np.zeros((size, size), np.uint8)
        mask[: size // 2] = 255
        Image.fromarray(mask).save(root / "masks" / f"{i}.png")
    return root


def unpaired(root):
    (root / "masks" / "2.png").unlink()
    (root / "masks" / "3.png").unlink()


def grey_mask(root):
    import numpy as np
    from PIL import Image
    Image.fromarray(np.tile(np.arange(32, dtype=np.uint8) * 8, (32, 1))).save(root / "masks" / "1.png")


def truncated(root):
    data = (root / "images" / "0.png").read_bytes()
    (root / "images" / "0.png").write_bytes(data[: len(data) // 2])


def empty(root):
    for p in (root / "images").iterdir():
        p.unlink()
    for p in (root / "masks").iterdir():
        p.unlink()


def one_image(root):
    for name in ("1", "2", "3"):
        (root / "images" / f"{name}.png").unlink()
        (root / "masks" / f"{name}.png").unlink()


@pytest.mark.parametrize("damage, message", [
    (unpaired, "2 unpaired file stem(s) between images/ and masks/: 2, 3"),
    (grey_mask, "is not binary"),
    (truncated, "cannot read image"),
    (empty, "no images"),
    (one_image, "need at least 2 source images for a train/validation split"),
])
def test_bad_folders_are_one_line_exit_2_before_training(tmp_path, cli, damage, message):
    folder = make_folder(tmp_path / "data")
    damage(folder)
    code, out, err = cli("sweep", TINY, "--results", tmp_path / "r", "--set", "data.source=folder",
                         "--set", f"data.path={folder}", "--set", "data.image_size=16")
    assert code == 2, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("harness: error:")]
    assert len(errors) == 1 and message in errors[0], err[-2000:]
    assert "Traceback" not in err
    assert not (tmp_path / "r" / "optuna.db").exists()          # nothing half-written


@pytest.mark.parametrize("setting, message", [
    ('--set=define.x={images="sideways"}', "unknown value 'sideways' for axis 'images'"),
    ('--set=define.x={colour="red"}', "unknown axis 'colour'"),
    ("--set=train.batch_size=0", "train.batch_size must be an integer >= 1"),
    ('--set=factorial={head=["tanh"], exclude=[{head="tanh"}]}', "every combination is excluded"),
])
def test_bad_settings_are_one_line_exit_2(tmp_path, cli, setting, message):
    code, out, err = cli("sweep", TINY, setting, "--results", tmp_path / "r")
    assert code == 2 and message in err and "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines() == [f"harness: error: {err.split('harness: error: ')[1].strip()}"]


def test_unwritable_results_folder(tmp_path, cli):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, out, err = cli("sweep", TINY, "--results", blocker / "r")
    assert code == 2 and "results folder" in err and "cannot be written" in err
