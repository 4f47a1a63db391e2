"""harness bench runs on a tiny config and writes well-formed output (no timing is asserted)."""
import json
import math

import pytest

from conftest import ROOT
from test_cli_e2e import harness

TINY_TOML = ROOT / "tests" / "data" / "tiny.toml"
TINY = ["data.image_size=32", "data.n_images=40", "model.start_depth=4", "train.epochs=1", "augment.stats_rounds=0",
        'variants=["image_only"]']


@pytest.mark.slow
def test_bench_command_writes_every_figure(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_BENCH_REPS", "1")
    run = harness("bench", TINY_TOML, "--quick", "--results", tmp_path, *[a for o in TINY for a in ("--set", o)],
                  cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    for name in ("pipeline_speedup", "train_vs_bound", "tracking_overhead", "peak_memory", "n_jobs_2_speedup",
                 "parallel_augment_pipeline_speedup"):
        assert f"{name}: " in run.stdout, name
    assert (tmp_path / "bench" / "bench.json").exists(), run.stdout[-2000:]
    saved = json.loads((tmp_path / "bench" / "bench.json").read_text())
    for key in ("pipeline_speedup", "train_vs_bound", "tracking_overhead", "peak_memory_gib", "n_jobs_2_speedup"):
        assert math.isfinite(saved["figures"][key]) and saved["figures"][key] > 0, key
    assert set(saved["figures"]["option_speedups"]) == {"jit_compile", "mixed_precision"}
    assert set(saved["figures"]["n_jobs_seconds"]) == {"1", "2"}
    assert {"platform", "cpus", "device", "version.tensorflow"} <= set(saved["machine"])
    assert set(saved["stage_seconds"]) == {"pipeline", "train", "tracking", "options", "memory and --n-jobs"}
    md = (tmp_path / "bench" / "bench.md").read_text()
    assert "pipeline_speedup:" in md and "(target >= 10)" in md and "Produced by `harness bench" in md


@pytest.mark.slow
def test_gpu_check_runs_on_the_cpu_and_extrapolates_the_full_sweep(tmp_path, monkeypatch):
    from harness.bench import run_gpu_check
    monkeypatch.setenv("HARNESS_BENCH_REPS", "1")
    lines = []
    out = run_gpu_check(tmp_path, "pytest", log=lines.append, bench_experiment=TINY_TOML, full_experiment=TINY_TOML,
                        overrides=TINY, full_overrides=["data.n_images=40", "data.image_size=32", "train.epochs=6",
                                                        "train.seeds=[1,2]", 'variants=["image_only","seed"]'])
    assert lines[0].startswith("device: CPU") or lines[0].startswith("device: GPU")
    sweep = out["full_sweep"]
    assert sweep["measured_points"] == 2 and sweep["full_points"] == 4 and sweep["full_epochs"] == 6
    # Only 2 of the 6 epochs were trained, one seed: the other 4 epochs of each point, and the second
    # seed, are extrapolated from the measured epochs (the first, which also traces, left out).
    measured = sweep["measured_epoch_seconds"]
    assert sorted(measured) == ["image_only", "seed"] and all(len(s) == 2 for s in measured.values())
    for variant, seconds in measured.items():
        assert sweep["seconds_per_point_at_full_epochs"][variant] == pytest.approx(sum(seconds) + 4 * seconds[1])
    assert sweep["estimated_full_sweep_s"] >= 2 * sum(sweep["seconds_per_point_at_full_epochs"].values())
    assert any("estimated at" in line for line in lines)
    saved = json.loads((tmp_path / "bench" / "gpu-check.json").read_text())
    assert saved["device"]["used"] and saved["full_sweep"]["experiment"] == "tiny"
    assert "Full-scale sweep, extrapolated" in (tmp_path / "bench" / "gpu-check.md").read_text()
