"""The address `harness ui` prints, opened in headless Chromium as a newcomer would: MLflow's UI shows
the experiment's training runs (not its GenAI view), the dataset with the harness's digest, the source,
and, with the parent run expanded, one child run per (variant, seed). The sweep is logged through the
real Tracker with hand-made histories (no training). Skips where Chromium or playwright is missing."""
import re
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import ROOT
from fake_runs import PLATEAU, log_sweep
from test_cli_e2e import free_port
from test_report_browser import browser  # noqa: F401 - the shared Chromium fixture

from harness.config import load_config


@pytest.mark.slow
def test_the_printed_address_shows_the_training_runs(tmp_path, browser):  # noqa: F811
    cfg = load_config(ROOT / "tests" / "data" / "tiny.toml", ["train.epochs=8", "train.seeds=[1]"])
    log_sweep(tmp_path, cfg, {v.name: PLATEAU for v in cfg.variants})
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "harness.cli", "ui", "--results", str(tmp_path), "--port", str(port)],
                          cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        address = re.search(r"http://127\.0\.0\.1:\d+/#/experiments/\d+/runs", ui.stdout.readline())
        assert address, "harness ui must print the training-runs page"
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except OSError:
                time.sleep(1)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        try:
            page.goto(address.group(0), wait_until="load")
            page.get_by_text("Training runs").first.wait_for(timeout=60_000)
            rows = page.get_by_role("row")
            parent = rows.filter(has_text=cfg.name).first
            parent.wait_for(timeout=60_000)
            assert page.get_by_text("synthetic (0123456789ab)").count() >= 1      # the dataset input, our digest
            assert page.get_by_text("harness sweep").count() >= 1                 # mlflow.source.name
            parent.get_by_role("button").first.click()                            # expand the nested runs
            names = [f"{v.name}-s1" for v in cfg.variants]
            page.get_by_text(names[0], exact=True).wait_for(timeout=30_000)
            shown = " ".join(rows.nth(i).inner_text() for i in range(rows.count()))
            assert all(name in shown for name in names), shown
        finally:
            page.close()
    finally:
        ui.terminate()
        ui.wait(timeout=30)
