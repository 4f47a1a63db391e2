"""The address `harness ui` prints after a fresh sweep, opened in headless Chromium as a newcomer
would: MLflow's UI shows the experiment's training runs (not its GenAI view), the dataset with the
harness's digest, the source, and, with the parent run expanded, one child run per (variant, seed).
Through MLflow's REST API on the same server: the parent run's artifacts hold the report and the
config; with `--save-models --system-metrics`, each point's run holds its trained model (loadable by
Keras) and `system/*` metrics. Skips where Chromium or playwright is missing."""
import re
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from conftest import ROOT, free_port, read_until, start_harness
from test_cli_e2e import harness, mlflow_api
from test_report_browser import browser  # noqa: F401 - the shared Chromium fixture

SETS = ["--set", "train.epochs=3", "--set", "train.seeds=[1]", "--set", 'variants=["seed","image_only"]']


@pytest.mark.slow
def test_the_printed_address_shows_the_training_runs(tmp_path, browser):  # noqa: F811
    results = tmp_path / "r"
    sweep = harness("sweep", ROOT / "tests" / "data" / "tiny.toml", *SETS, "--results", results,
                    "--save-models", "--system-metrics", cwd=tmp_path,
                    env_extra={"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"})
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    port = free_port()
    ui = start_harness("ui", "--results", results, "--port", port, cwd=tmp_path, stderr=subprocess.STDOUT)
    try:
        address = re.search(r"http://127\.0\.0\.1:\d+/#/experiments/(\d+)/runs", read_until(ui, "http://", 120))
        assert address, "harness ui must print the training-runs page"
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except OSError:
                time.sleep(1)

        runs = mlflow_api(port, "runs/search", {"experiment_ids": [address.group(1)], "max_results": 100}, 30)["runs"]
        tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
        parent = [r for r, t in zip(runs, tags) if "mlflow.parentRunId" not in t]
        children = {t["mlflow.runName"]: r for r, t in zip(runs, tags) if "mlflow.parentRunId" in t}
        assert len(parent) == 1 and sorted(children) == ["image_only-s1", "seed-s1"]
        listed = mlflow_api(port, f"artifacts/list?run_id={parent[0]['info']['run_id']}", timeout=30)
        assert {"config.json", "report.md", "report.html", "summary.csv"} <= {f["path"] for f in listed["files"]}
        for child in children.values():
            files = {f["path"]: f for f in mlflow_api(port, f"artifacts/list?run_id={child['info']['run_id']}", timeout=30)["files"]}
            assert {"model.keras", "loss_curve.png", "predictions.png"} <= set(files)
            assert any(m["key"].startswith("system/cpu") for m in child["data"]["metrics"]), child["data"]["metrics"]
        model_file = urllib.request.urlopen(f"http://127.0.0.1:{port}/get-artifact?" + urllib.parse.urlencode(
            {"path": "model.keras", "run_uuid": children["image_only-s1"]["info"]["run_id"]}), timeout=60).read()
        check_model_loads(model_file, tmp_path)

        page = browser.new_page(viewport={"width": 1400, "height": 900})
        try:
            page.goto(address.group(0), wait_until="load")
            page.get_by_text("Training runs").first.wait_for(timeout=60_000)
            rows = page.get_by_role("row")
            parent_row = rows.filter(has_text="tiny").first
            parent_row.wait_for(timeout=60_000)
            assert page.get_by_text(re.compile(r"synthetic \([0-9a-f]{12}\)")).count() >= 1   # our digest
            assert page.get_by_text("harness sweep").count() >= 1                 # mlflow.source.name
            parent_row.get_by_role("button").first.click()                        # expand the nested runs
            page.get_by_text("seed-s1", exact=True).wait_for(timeout=30_000)
            shown = " ".join(rows.nth(i).inner_text() for i in range(rows.count()))
            assert "seed-s1" in shown and "image_only-s1" in shown, shown
        finally:
            page.close()
    finally:
        ui.terminate()
        ui.wait(timeout=30)


def check_model_loads(content: bytes, tmp_path) -> None:
    """The artifact is a Keras model file of the tiny U-Net: (32, 32, 3) in, (32, 32, 1) out."""
    import keras
    import numpy as np
    path = tmp_path / "model.keras"
    path.write_bytes(content)
    model = keras.saving.load_model(path, compile=False)
    assert model.predict(np.zeros((1, 32, 32, 3), "float32"), verbose=0).shape == (1, 32, 32, 1)
