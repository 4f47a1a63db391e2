"""harness bench runs on a tiny config and writes well-formed output (no timing is asserted)."""
import json
import math
import os
import statistics
import time

import numpy as np
import pytest

from conftest import ROOT, need_module
from test_cli_e2e import harness

TINY_TOML = ROOT / "tests" / "data" / "tiny.toml"
# A U-Net of one level: what the bench computes is the same at any depth, and a deeper one only adds
# compile time (the GPU check's JAX processes: 216 s at four levels, 131 s at one, on 2 cores).
TINY = ["data.image_size=32", "data.n_images=40", "model.start_depth=4", "model.levels=1", "train.epochs=1", "augment.stats_rounds=0",
        'variants=["image_only"]']


@pytest.mark.slow
def test_bench_command_writes_every_figure(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_BENCH_REPS", "1")
    run = harness("bench", TINY_TOML, "--quick", "--results", tmp_path, *[a for o in TINY for a in ("--set", o)],
                  cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    for name in ("pipeline_speedup", "train_vs_handwritten", "train_vs_bound", "tracking_overhead", "sweep_vs_bound",
                 "health_overhead", "peak_memory", "n_jobs_2_speedup", "parallel_augment_pipeline_speedup"):
        assert f"{name}: " in run.stdout, name
    assert (tmp_path / "bench" / "bench.json").exists(), run.stdout[-2000:]
    saved = json.loads((tmp_path / "bench" / "bench.json").read_text())
    for key in ("pipeline_speedup", "train_vs_handwritten", "train_vs_bound", "tracking_overhead", "sweep_vs_bound",
                "health_overhead", "peak_memory_gib", "n_jobs_2_speedup"):
        assert math.isfinite(saved["figures"][key]) and saved["figures"][key] > 0, key
    assert set(saved["figures"]["train_images_per_s"]) == {"harness", "handwritten", "bare_fit"}
    # The train figure: each reference's epochs paired with the harness epochs just before them
    # (HARNESS_BENCH_REPS=1: one run of 2 timed epochs), the median pair inside its quartiles.
    assert saved["figures"]["train_epochs_timed"] == 2
    for name, figure in (("handwritten", "train_vs_handwritten"), ("bare_fit", "train_vs_bound")):
        pairs = saved["figures"]["train_ratio_pairs"][name]
        assert len(pairs) == 2 and all(r > 0 for r in pairs)
        assert saved["figures"][figure] == pytest.approx(statistics.median(pairs)), name
        assert saved["figures"]["train_ratio_quartiles"][name] == pytest.approx(list(np.percentile(pairs, [25, 75])))
    # Where one point's time went: every stage measured, the sweep's own share the two sides' difference.
    breakdown = saved["figures"]["point_breakdown_seconds"]
    assert len(breakdown) == 5 and all(math.isfinite(s) for s in breakdown.values())
    tracking = saved["figures"]["tracking_seconds"]
    assert breakdown["tracking and figures (the sweep's own)"] == pytest.approx(tracking["with"] - tracking["without"])
    # The overhead: the direct point plus the sweep's own seconds, measured inside the tracked run;
    # the whole tracked point, end to end, beside it.
    (own,) = tracking["sweep_own_per_round"]
    assert 0 < own < tracking["end_to_end_with"] and tracking["with"] == pytest.approx(tracking["without"] + own)
    assert saved["figures"]["tracking_overhead"] == pytest.approx(1 + own / tracking["without"])
    assert saved["figures"]["tracking_overhead_end_to_end"] == pytest.approx(
        tracking["end_to_end_with"] / tracking["without"])
    assert tracking["rounds"] == 1 and saved["figures"]["health_seconds"]["rounds"] == 1
    assert "Where one point's time goes" in (tmp_path / "bench" / "bench.md").read_text()
    assert set(saved["figures"]["option_speedups"]) == {"jit_compile", "mixed_precision"}
    # pipeline_headroom for the host tf.data pipeline and device augmentation, and under JAX (a child
    # process) for device augmentation, where JAX is installed (the test extra installs it).
    per_backend = saved["figures"]["per_backend"]
    assert set(per_backend["tensorflow"]["pipeline_headroom"]) == {"tfdata", "device_augment"}
    need_module("jax", "pip install 'jax[cpu]'")       # the test extra installs it: CI=true fails without it
    assert set(per_backend["jax"]["pipeline_headroom"]) == {"device_augment"}, per_backend["jax"]
    assert per_backend["jax"]["pipeline_headroom"]["device_augment"] > 0
    assert "pipeline_headroom under jax: device_augment" in run.stdout
    assert set(saved["figures"]["n_jobs_seconds"]) == {"1", "2"}
    assert {"platform", "cpus", "device", "version.tensorflow"} <= set(saved["machine"])
    assert {"pipeline", "train", "tracking", "health", "doctor", "options", "feeds",
            "memory and --n-jobs"} <= set(saved["stage_seconds"])
    # The feeds figure: one point swept on each feed (one turn), the ratio of their seconds per epoch.
    feeds = saved["figures"]["feeds_seconds_per_epoch"]
    assert all(len(seconds) == 1 and seconds[0] > 0 for seconds in feeds.values()), feeds
    assert saved["figures"]["feeds_ratios"] == pytest.approx([feeds["imagedatagenerator"][0] / feeds["tfdata"][0]])
    assert saved["figures"]["imagedatagenerator_vs_tfdata_epoch"] == pytest.approx(saved["figures"]["feeds_ratios"][0])
    assert "imagedatagenerator_vs_tfdata_epoch: " in run.stdout
    # The doctor figure: the default point's fit with and without the doctor, epochs in turn (one run
    # of 3 epochs, the first left out), and the preflight timed alone.
    doctor = saved["figures"]
    assert doctor["doctor_epochs_timed"] == len(doctor["doctor_overhead_pairs"]) == 2
    assert doctor["doctor_preflight_seconds"] > 0 and "doctor_overhead: " in run.stdout
    assert doctor["doctor_overhead"] == pytest.approx(statistics.median(doctor["doctor_overhead_pairs"]))
    assert doctor["doctor_overhead_quartiles"] == pytest.approx(list(np.percentile(doctor["doctor_overhead_pairs"], [25, 75])))
    assert set(saved["figures"]["health_seconds"]) == {"with", "without", "per_epoch", "rounds"}
    md = (tmp_path / "bench" / "bench.md").read_text()
    assert "pipeline_speedup:" in md and "(target >= 10)" in md and "Produced by `harness bench" in md


# What the GPU host lacks, refused here as it would be there: gpu-check must not need any of them.
BLOCKER = """
import importlib.abc, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tf_keras", "optuna", "mlflow"):
            raise ImportError(f"{name} is not installed on the GPU host")
sys.meta_path.insert(0, Absent())
"""


@pytest.mark.slow
def test_gpu_check_runs_under_jax_without_tensorflow_optuna_or_mlflow(tmp_path):
    need_module("jax", "pip install 'jax[cpu]'")
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    env = {"KERAS_BACKEND": "jax", "HARNESS_BENCH_REPS": "1", "HARNESS_GPU_CHECK_WORKERS": "1,2",
           "HARNESS_GPU_CHECK_BUDGET_S": "3600",          # every stage runs, however loaded the machine
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    sets = ["data.n_images=80", "data.image_size=32", "model.start_depth=4", "model.levels=1", "train.batch_size=16",
            "augment.stats_rounds=1", "train.epochs=6", "train.seeds=[1,2]", 'variants=["image_only","tanh_corrected"]']
    run = harness("bench", TINY_TOML, "--gpu-check", "--results", tmp_path / "r", *[a for o in sets for a in ("--set", o)],
                  cwd=tmp_path, env_extra=env)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads((tmp_path / "r" / "bench" / "gpu-check.json").read_text())
    assert out["device"]["backend"] == "jax" and "version.tensorflow" not in out["device"] and not out["skipped"]
    sweep = out["full_sweep"]
    # Only 2 of the 6 epochs were trained, one seed of two: each point's other 4 epochs, and the
    # second seed, are extrapolated from the measured epochs (the first, which also compiles, once).
    measured = sweep["measured_epoch_seconds"]
    assert sorted(measured) == ["image_only", "tanh_corrected"] and all(len(s) == 2 for s in measured.values())
    for variant, seconds in measured.items():
        assert sweep["seconds_per_point_at_full_epochs"][variant] == pytest.approx(sum(seconds) + 4 * seconds[1])
    assert sweep["estimated_full_sweep_s"] == pytest.approx(2 * sum(sweep["seconds_per_point_at_full_epochs"].values()))
    assert set(sweep["feed"].values()) == {"device augment"}
    figures = out["figures"]
    assert all(rate > 0 for rate in figures["train_images_per_s"].values())
    assert set(figures["pipeline_images_per_s"]) == {"device_augment", "host_keras_ops"}
    assert set(figures["pipeline_headroom"]) == {"device_augment", "host_keras_ops"}
    assert figures["option_speedups"]["mixed_precision"] > 0 and "jit_compile" not in figures["option_speedups"]
    assert set(figures["workers_images_per_s"]) == {"1", "2"} and figures["best_workers"] in (1, 2)
    md = (tmp_path / "r" / "bench" / "gpu-check.md").read_text()
    assert "estimated" in md and "pipeline_headroom" in md and "Produced by `KERAS_BACKEND=jax harness bench" in md


def test_gpu_check_skips_the_stages_past_its_budget_and_still_writes(tmp_path):
    from harness.gpu_check import run_gpu_check
    lines = []
    out = run_gpu_check(tmp_path, "pytest", log=lines.append, experiment=TINY_TOML,
                        overrides=["data.n_images=16", "data.image_size=16"], budget_s=0)
    assert out["skipped"] == ["full sweep", "pipeline", "precision", "workers"] and out["figures"] == {}
    assert "skipped (time budget): workers" in lines
    saved = json.loads((tmp_path / "bench" / "gpu-check.json").read_text())
    assert saved["skipped"] == out["skipped"] and saved["device"]["used"]
    assert "skipped (time budget): full sweep" in (tmp_path / "bench" / "gpu-check.md").read_text()


def test_point_seconds_takes_the_fixed_part_and_the_median_epoch_over_runs():
    """A point's seconds from several runs: the median of what lies outside the later epochs, plus
    the later epochs at their median over every run. One slow epoch moves neither."""
    from harness.bench import point_seconds
    runs = [(10.0, [4.0, 1.0, 1.0, 1.0]),          # outside the later epochs: 7
            (13.0, [4.5, 1.0, 5.0, 1.0]),          # one slow epoch: outside 6
            (11.0, [5.0, 1.0, 1.0, 1.0])]          # outside 8
    assert point_seconds(runs) == pytest.approx(7.0 + 3 * 1.0)
    assert point_seconds([(9.0, [6.0, 1.5, 1.5])]) == pytest.approx(9.0)
    assert point_seconds([(5.0, [5.0])]) == pytest.approx(5.0)
    assert point_seconds([(10.0, [5.0, 3.0, 2.0])]) == pytest.approx(5.0 + 2 * 2.5)     # every later epoch counts


def test_contenders_take_turns_first_and_last_every_other_round():
    from harness.bench import in_turn
    assert [in_turn(["a", "b", "c"], rep) for rep in range(3)] == [["a", "b", "c"], ["c", "b", "a"], ["a", "b", "c"]]
    assert in_turn(("direct", "tracked"), 1) == ["tracked", "direct"]


def test_bench_rounds_give_the_quick_ratios_the_most_and_one_variable_sets_them_all(monkeypatch):
    from harness.bench import bench_rounds
    monkeypatch.delenv("HARNESS_BENCH_REPS", raising=False)
    quick = bench_rounds(True)
    assert quick["train"] == 3 and quick["train_epochs"] == 20 and quick["tracking"] == 5
    assert quick["pipeline"] == 3 and quick["health"] == 3
    assert quick["doctor"] == 3 and quick["doctor_epochs"] == 8 and quick["feeds"] == 2
    assert bench_rounds(False) == {"pipeline": 5, "train": 3, "train_epochs": 6, "tracking": 3, "health": 3,
                                   "doctor": 3, "doctor_epochs": 8, "feeds": 3}
    monkeypatch.setenv("HARNESS_BENCH_REPS", "3")
    rounds = bench_rounds(True)
    # The doctor's fits: 3 epochs, the first (tracing) left out, so 2 timed pairs, as the train figure's.
    assert rounds.pop("train_epochs") == 2 and rounds.pop("doctor_epochs") == 3
    assert set(rounds.values()) == {3} and set(bench_rounds(False)) == set(quick)


def tiny_fit(record: list, main: dict, fail_at: int | None = None):
    """fit(epochs, callbacks) of a one-layer model on 8 samples; `record` gets, at each epoch's
    begin and end, whether the main thread said it was busy then."""
    import keras
    import numpy as np
    x, y = np.ones((8, 3), np.float32), np.zeros((8, 1), np.float32)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == fail_at:
                raise ValueError(f"reference failed at epoch {epoch}")
            record.append(("begin", epoch, main["busy"]))

        def on_epoch_end(self, epoch, logs=None):
            record.append(("end", epoch, main["busy"]))
    return lambda epochs, callbacks: model.fit(x, y, epochs=epochs, callbacks=[*callbacks, Record()], verbose=0)


def test_a_reference_trains_one_epoch_per_turn_and_never_while_the_harness_run_does():
    from harness.bench import Turns
    record, main = [], {"busy": True}
    reference = Turns(tiny_fit(record, main), epochs=5)
    for _ in range(2):
        main["busy"] = False
        reference.epoch()
        main["busy"] = True            # the harness run's next epoch: time enough for a reference
        time.sleep(0.3)                # that did not wait for its turn to run ahead and be recorded
    assert record == [("begin", 0, False), ("end", 0, False), ("begin", 1, False), ("end", 1, False)]
    assert len(reference.seconds) == 2 and all(s > 0 for s in reference.seconds)
    reference.close()                  # the harness run ended first: the reference stops at its next epoch
    assert not reference.thread.is_alive() and reference.error is None and len(record) == 4


def test_a_reference_that_fails_raises_in_the_harness_run_at_its_turn():
    from harness.bench import Turns
    reference = Turns(tiny_fit([], {"busy": False}, fail_at=1), epochs=3)
    reference.epoch()
    with pytest.raises(ValueError, match="reference failed at epoch 1"):
        reference.epoch()
    reference.close()
    assert not reference.thread.is_alive()


@pytest.mark.slow
def test_bench_only_measures_the_stages_it_is_given(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_BENCH_REPS", "1")
    code, out, err = cli("bench", TINY_TOML, "--quick", "--only", "options", "--results", tmp_path,
                         *[a for o in TINY for a in ("--set", o)])
    assert code == 0, err[-2000:]
    saved = json.loads((tmp_path / "bench" / "bench-options.json").read_text())
    assert set(saved["stage_seconds"]) == {"options"}
    assert set(saved["figures"]) == {"option_speedups", "per_backend"}
    assert "jit_compile_speedup: " in out and "train_vs_handwritten" not in out
    assert "wrote " in out and "bench-options.json" in out


def test_the_options_figure_fits_each_option_as_it_names_it(monkeypatch):
    """Each bare fit of the options figure runs under what it measures: the mixed-precision fit under
    Keras' mixed_float16 policy (until 2026-12-07 the session's start put float32 back, and the figure
    compared float32 with float32), the XLA fit compiled with jit_compile; float32 again afterwards."""
    import keras
    from harness import bench
    from harness.config import load_config
    seen = []

    def recording_fit(cfg, dataset, **compile_kw):
        seen.append((keras.mixed_precision.global_policy().name, compile_kw.get("jit_compile", False),
                     cfg["train"]["deterministic"]))
        return lambda epochs, callbacks: time.sleep(0.001)       # a fit: some time, never none
    monkeypatch.setattr(bench, "bare_fit", recording_fit)
    cfg = load_config(TINY_TOML, TINY)
    figure = bench.options_figure(cfg, dataset=None, epochs=1)
    assert seen == [("float32", False, False), ("float32", True, False), ("mixed_float16", False, False)]
    assert set(figure["option_speedups"]) == {"jit_compile", "mixed_precision"}
    assert keras.mixed_precision.global_policy().name == "float32"
