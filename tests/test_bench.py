"""harness bench runs on a tiny config and writes well-formed output (no timing is asserted)."""
import json
import math

import pytest

from harness.bench import run_bench

from conftest import ROOT

TINY = ["data.image_size=32", "data.n_images=40", "model.start_depth=4", "train.epochs=1", "augment.stats_rounds=0",
        'variants=["image_only"]']


@pytest.mark.slow
def test_bench_writes_every_figure(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_BENCH_REPS", "1")
    out = run_bench(ROOT / "tests" / "data" / "tiny.toml", tmp_path, quick=True, command="pytest", log=lambda _: None,
                    overrides=TINY)
    saved = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert saved["figures"].keys() == out["figures"].keys()
    for key in ("pipeline_speedup", "train_vs_bound", "tracking_overhead", "peak_memory_gib"):
        assert math.isfinite(saved["figures"][key]) and saved["figures"][key] > 0, key
    assert set(saved["figures"]["option_speedups"]) == {"jit_compile", "mixed_precision"}
    assert {"platform", "cpus", "device", "version.tensorflow"} <= set(saved["machine"])
    md = (tmp_path / "bench" / "bench.md").read_text()
    assert "pipeline_speedup:" in md and "(target >= 10)" in md and "Produced by `pytest`" in md
