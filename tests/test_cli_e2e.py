"""End to end through the real CLI, with its own MLflow (SQLite) and Optuna stores in a temp folder."""
import csv
import math
import subprocess
from pathlib import Path

import pytest

from conftest import TINY, TINY_VERDICTS, free_port, need_module, read_until, run_harness, start_harness
from harness.verdict import HEALTHY



def harness(*args, cwd=None, timeout=900, env_extra=None):
    return run_harness(*args, cwd=cwd, env=env_extra, timeout=timeout)


def summary(results: Path, name: str) -> dict[str, dict]:
    with open(results / name / "summary.csv") as f:
        return {row["variant"]: row for row in csv.DictReader(f)}


@pytest.mark.slow
def test_sweep_reaches_the_case_verdicts_and_resumes(tiny_tf_sweep):
    # The session's tiny TensorFlow sweep (conftest.tiny_tf_sweep), shared with the JAX comparison
    # (tests/test_augment.py); this test then resumes it, reports it and serves it.
    results, tmp_path = Path(tiny_tf_sweep["results"]), Path(tiny_tf_sweep["cwd"])
    assert tiny_tf_sweep["returncode"] == 0, tiny_tf_sweep["stderr"][-3000:]
    rows = summary(results, "tiny")
    assert rows == tiny_tf_sweep["summary"]
    verdicts = {name: row["verdict"] for name, row in rows.items()}
    # The failed variants exactly; the healthy ones healthy (conftest.TINY_VERDICTS says why).
    assert set(verdicts) == set(TINY_VERDICTS)
    for name, expected in TINY_VERDICTS.items():
        assert verdicts[name] in (HEALTHY if expected in HEALTHY else (expected,)), verdicts
    assert rows["seed"]["negative_loss"] == "true" and rows["tanh_posted"]["negative_loss"] == "true"
    for name in ("no_featurewise", "image_only", "tanh_corrected"):
        assert rows[name]["negative_loss"] == "false"
        assert float(rows[name]["val_miou"]) > float(rows[name]["trivial_miou"]) + 0.1
        assert rows[name]["causes"] == "none", rows[name]          # a healthy run carries no cause
    # harness check ran first and predicted what the sweep then observed.
    for name in ("seed", "tanh_posted", "image_only", "tanh_corrected"):
        assert rows[name]["agrees"] == "true", rows[name]
    assert "loss_not_minimized_at_target" in rows["tanh_posted"]["check_flags"]
    # Raw validation hides what the seed model learned; fed like training it is far better.
    assert float(rows["seed"]["val_as_train_miou"]) > float(rows["seed"]["val_miou"])

    folder = results / "tiny"
    for name in ("report.md", "report.html", "summary.csv", "runs.csv", "loss_curves.png", "miou.png"):
        assert (folder / name).stat().st_size > 0, name
    md = (folder / "report.md").read_text()
    assert "harness sweep" in md and "## Rules" in md and "negative_loss" in md
    assert "data:image/png;base64," in (folder / "report.html").read_text()
    # Stores live under the results folder, nothing in the working directory.
    assert (results / "mlflow.db").exists() and (results / "optuna.db").exists()
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()

    # MLflow holds one parent and a nested run per point, with per-epoch metrics and no NaN.
    import harness as harness_pkg
    runs = harness_pkg.load_runs(results, "tiny")          # the notebook entry point, on a results folder
    assert len(runs) == 5 and set(runs["status"]) == {"FINISHED"}
    assert runs["tags.mlflow.parentRunId"].nunique() == 1
    for _, run in runs.iterrows():
        history = run["history"]
        assert {"loss", "val_iou", "val_miou", "val_dice"} <= set(history)
        assert all(math.isfinite(v) for values in history.values() for v in values)
        # val_loss is logged while finite; where it was not, a tag says when it went NaN/Inf.
        assert "val_loss" in history or isinstance(run.get("tags.nonfinite.val_loss"), str)
    assert {"dataset_fingerprint", "version.tensorflow", "git_commit", "axis.masks", "device"} <= {
        c.removeprefix("params.") for c in runs.columns}
    from harness.backend import host_cpu
    assert set(runs["tags.device"]) == {f"CPU ({host_cpu()})"} or all(d.startswith("GPU") for d in runs["tags.device"])

    again = harness("sweep", TINY, "--results", results, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "5 already finished, 0 to train" in again.stdout
    assert len(harness_pkg.load_runs(f"sqlite:///{results / 'mlflow.db'}", "tiny")) == 5

    report = harness("report", TINY, "--results", results, cwd=tmp_path)
    assert report.returncode == 0 and "report:" in report.stdout
    assert_ui_serves_the_runs(results, tmp_path)


def mlflow_api(port: int, path: str, body: dict | None = None, timeout: float = 5):
    """A call to the REST API of the MLflow server on this port: GET, or POST with a JSON body."""
    import json
    import urllib.request
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/2.0/mlflow/{path}", data=data,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)


def assert_ui_serves_the_runs(results: Path, cwd: Path) -> None:
    """`harness ui` starts the MLflow UI on the same store and prints the experiment's training-runs
    page; its REST API lists the sweep's runs, and the parent run's artifacts hold the report and config."""
    import re
    import time
    port = free_port()
    ui = start_harness("ui", "--results", results, "--port", port, cwd=cwd, stderr=subprocess.STDOUT)

    def api(path: str, body: dict | None = None):
        return mlflow_api(port, path, body)

    try:
        page = re.search(rf"http://127\.0\.0\.1:{port}/#/experiments/(\d+)/runs", read_until(ui, "http://", 120))
        assert page, "harness ui must print the experiment's training-runs page"
        deadline, exp = time.time() + 90, None
        while time.time() < deadline and exp is None:
            try:
                exp = api("experiments/get-by-name?experiment_name=tiny")["experiment"]
            except OSError:
                time.sleep(1)
        assert exp is not None, "MLflow UI did not answer"
        assert exp["experiment_id"] == page.group(1)
        assert {"key": "mlflow.experimentKind", "value": "custom_model_development"} in exp["tags"]
        found = api("runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 100})["runs"]
        assert len(found) == 6          # the sweep's parent run and its 5 nested runs
        parent = [r for r in found if "mlflow.parentRunId" not in {t["key"] for t in r["data"]["tags"]}]
        assert len(parent) == 1
        for run in found:
            tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
            assert tags["mlflow.source.name"].startswith("harness sweep") and "mlflow.source.git.commit" in tags
            assert run["inputs"]["dataset_inputs"][0]["dataset"]["digest"]
        listed = api(f"artifacts/list?run_id={parent[0]['info']['run_id']}")
        assert {"config.json", "report.md", "report.html", "summary.csv"} <= {f["path"] for f in listed["files"]}
        # Pointed at a running server, `harness ui` starts nothing and names the same runs page.
        named = harness("ui", "tiny", "--tracking-uri", f"http://127.0.0.1:{port}", cwd=cwd, timeout=120)
        assert named.returncode == 0 and page.group(0) in named.stdout, named.stdout + named.stderr[-2000:]
    finally:
        ui.terminate()
        ui.wait(timeout=30)


@pytest.mark.parametrize("args, message", [
    (["--set", 'variants=["nope"]'], "unknown variant 'nope'; valid variants: seed"),
    (["--set", "train.epoch=2"], "unknown key 'train.epoch'"),
    (["--set", "data.source=folder", "--set", "data.path=/no/such/folder"], "data folder not found"),
    (["--storage", "sqlite:////no/such/dir/optuna.db"], "Optuna storage"),
    (["--tracking-uri", "http://127.0.0.1:9"], "MLflow tracking store http://127.0.0.1:9 is not usable"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, cli, args, message):
    code, out, err = cli("sweep", TINY, "--results", tmp_path / "r", *args, "--set", "train.epochs=1")
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("harness: error:")]
    assert len(errors) == 1 and message in errors[0]


def test_missing_experiment_and_malformed_toml(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\n")
    for target, message in ((tmp_path / "none.toml", "experiment not found"), (bad, "malformed TOML")):
        run = harness("sweep", target, "--results", tmp_path / "r", cwd=tmp_path, timeout=60)
        assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr


def test_check_json_lists_the_flags_per_variant(tmp_path, cli):
    import json
    code, out, err = cli("check", TINY, "--json")
    assert code == 0, err[-2000:]
    rows = {r["variant"]: r for r in json.loads(out)}
    assert {"targets_outside_loss_domain", "loss_unbounded_below"} <= set(rows["seed"]["flags"])
    assert "loss_not_minimized_at_target" in rows["tanh_posted"]["flags"]
    for name in ("image_only", "no_featurewise", "tanh_corrected"):
        assert rows[name]["flags"] == [], rows[name]


@pytest.mark.slow   # a fresh process or a real training: the full suite runs it, not the fast set
def test_check_in_a_fresh_process_prints_no_tensorflow_noise(tmp_path):
    text = harness("check", TINY, "--set", 'variants=["seed"]', "--set", "data.n_images=48", cwd=tmp_path,
                   timeout=300)
    assert text.returncode == 0 and "fix:" in text.stdout and "predicted: negative_loss_or_diverged" in text.stdout
    # TensorFlow's start-up lines (printed from C++ before any log level applies) are held back.
    noise = [line for line in text.stderr.splitlines()
             if "I0000" in line or "absl::InitializeLog" in line or "cudart_stub" in line]
    assert not noise, noise


def test_version_is_one_line_and_exit_0(tmp_path):
    run = harness("--version", cwd=tmp_path, timeout=60)
    assert run.returncode == 0 and run.stdout.startswith("harness ") and len(run.stdout.splitlines()) == 1


@pytest.mark.slow
def test_imagedatagenerator_pipeline_reproduces_the_case(tmp_path):
    need_module("tf_keras", "pip install '.[legacy]'")
    results = tmp_path / "results"
    run = harness("sweep", TINY, "--results", results, "--set", "pipeline=imagedatagenerator",
                  "--set", 'variants=["seed","image_only"]', cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = summary(results, "tiny-imagedatagenerator")
    assert rows["seed"]["negative_loss"] == "true"
    assert rows["image_only"]["negative_loss"] == "false"
    assert rows["image_only"]["verdict"] in ("converged", "learning")
    from harness.tracking import load_runs
    runs = load_runs(f"sqlite:///{results / 'mlflow.db'}", "tiny", with_history=False)
    assert set(runs["params.pipeline"]) == {"imagedatagenerator"}


@pytest.mark.slow
def test_a_sweep_on_neighbouring_frames_logs_and_reports_validation_near_training(tmp_path, cli):
    from scenes import moving_scene, write_folder
    images, masks = moving_scene(40, 32, speed=2)
    folder = write_folder(tmp_path / "frames", images, masks, [f"frame_{i}" for i in range(1, 41)])
    code, out, err = cli("sweep", TINY, "--set", "data.source=folder", "--set", f"data.path={folder}",
                         "--set", 'variants=["image_only"]', "--set", "train.epochs=2", "--results", tmp_path / "r")
    assert code == 0, err[-2000:]
    assert "split random (seed 0): 8 of 40 files validate" in out
    assert "check validation: split random" in out and 'validation_near_training (fix: hold out a block' in out
    report = (tmp_path / "r" / "tiny" / "report.md").read_text()
    assert "| image_only | 1 | 1 | " in report and " (validation near training) |" in report
    assert "Validation: split random (seed 0): 8 of 40 files validate: validation's nearest training image" in report
    why = report[report.index("## Why"):report.index("## Loss curves")]
    assert "`validation_near_training`" in why and '`--set data.split="contiguous"`' in why
    assert summary(tmp_path / "r", "tiny")["image_only"]["check_flags"] == "validation_near_training"
