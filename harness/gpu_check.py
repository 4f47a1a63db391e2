"""`harness bench --gpu-check`: one short run on a GPU host, with Keras alone.

The GPU host has JAX and no TensorFlow, Optuna or MLflow, so this path imports none of them: run it
under KERAS_BACKEND=jax (scripts/gpu-check.sh carries the Keras wheels and gives the command). At the
case's full size (experiments/whitening-full.toml: 1,840 training pairs of 128x128x3, U-Net depth
16, batch 32) it measures, in this order, and writes <results>/bench/gpu-check.json and .md:

1. the full sweep's wall time (5 variants x 3 seeds x 50 epochs), estimated from 2 epochs of every
   variant trained by the harness's own training path (train_variant: device augmentation,
   validation and metrics included); the first epoch, which also compiles, is counted once per point;
2. training images/s per head kind (sigmoid + BCE, tanh), from the last measured epoch's batches;
3. the augmentation pipeline alone, on the device and on the host CPU, and pipeline_headroom =
   pipeline images/s / training images/s on the same device (the pipeline must not starve the model);
4. mixed precision against float32 (and, under TensorFlow, XLA against none) for a bare fit;
5. the aggregate training images/s of 1, 2 and 4 worker processes sharing the device, each capped
   at its share of the device's memory.

A stage that would start after the time budget (HARNESS_GPU_CHECK_BUDGET_S, 360 s) is skipped, and
the output says so: what was measured is written either way.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from harness import environment
from harness.config import Config, load_config

KINDS = {"sigmoid_bce": "image_only", "tanh": "tanh_corrected"}   # a variant of each head kind
WORKERS = environment.gpu_check_workers()
BUDGET_S = environment.number(environment.GPU_CHECK_BUDGET_S)
TARGETS = {"estimated_full_sweep_min": "< 5 on one H200", "pipeline_headroom": ">= 2"}


def check_config(experiment: Path, overrides: list[str] = ()) -> Config:
    """The full-scale case with augmentation on the device (the only choice without TensorFlow)."""
    return load_config(experiment, [*overrides, "speed.device_augment=true"])


class BatchClock:
    """Wall time at every epoch and batch end, from train_variant's callbacks."""

    def __init__(self):
        self.started = time.perf_counter()
        self.epoch_ends: list[float] = []
        self.batches: dict[int, list[float]] = {}

    def on_epoch(self, epoch: int, _metrics: dict) -> None:
        self.epoch_ends.append(time.perf_counter())

    def on_batch(self, epoch: int, batch: int, _loss) -> None:
        self.batches.setdefault(epoch, []).append(time.perf_counter())

    def epoch_seconds(self) -> list[float]:
        starts = [self.started] + self.epoch_ends[:-1]
        return [end - start for start, end in zip(starts, self.epoch_ends)]

    def train_images_per_s(self, batch_size: int) -> float | None:
        """Over the batches of the last epoch, its first batch left out (it waits for the epoch start)."""
        ends = self.batches.get(max(self.batches, default=0), [])
        if len(ends) < 3:
            return None
        return (len(ends) - 1) * batch_size / (ends[-1] - ends[0])


def estimate_full_sweep(cfg: Config, dataset, epochs: int, log: Callable[[str], None]) -> dict:
    """Train every variant for `epochs` epochs, one seed; extrapolate each point to the experiment's
    epochs (a point that diverged stops early at full length too: its epochs count as they ran)."""
    from harness.train import train_variant
    run_cfg = cfg.with_overrides({"train.epochs": epochs, "train.seeds": cfg.seeds[:1]})
    full_epochs, bs = cfg["train"]["epochs"], cfg["train"]["batch_size"]
    measured, per_point, rates, feeds = {}, {}, {}, {}
    for variant in run_cfg.variants:
        clock = BatchClock()
        result = train_variant(run_cfg, variant, cfg.seeds[0], dataset, on_epoch=clock.on_epoch,
                               on_batch=clock.on_batch)
        seconds = clock.epoch_seconds()
        measured[variant.name], feeds[variant.name] = seconds, result.feed
        rates[variant.name] = clock.train_images_per_s(bs)
        stopped = result.diverged_at is not None or len(seconds) < epochs
        later = statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]
        per_point[variant.name] = sum(seconds) + (0 if stopped else (full_epochs - len(seconds)) * later)
        log(f"gpu-check: {variant.name}: {len(seconds)} epochs, "
            + ", ".join(f"{s:.1f}s" for s in seconds) + f" -> {per_point[variant.name]:.0f}s at {full_epochs} epochs")
    total = len(cfg.seeds) * sum(per_point.values())
    return {"experiment": cfg.name, "measured_epochs": epochs, "full_epochs": full_epochs,
            "full_seeds": len(cfg.seeds), "full_points": len(cfg.seeds) * len(per_point),
            "measured_epoch_seconds": measured, "seconds_per_point_at_full_epochs": per_point,
            "estimated_full_sweep_s": total, "train_images_per_s": rates, "feed": feeds}


def compiled_fed_model(cfg: Config, dataset, jit_compile: bool | str = "auto"):
    """image_only's setup (sigmoid + BCE, featurewise images, binary masks) behind the device feed,
    compiled: -> (model, its fit input)."""
    import keras
    from harness.feeds.choose import fit_transform
    from harness.feeds.device import build_fed_model
    from harness.models import build_model
    transform = fit_transform(dataset, "featurewise", "binary", cfg["augment"], 1)
    inner = build_model(cfg, dataset.train_images.shape[1:], "sigmoid")
    model, x, _ = build_fed_model(inner, dataset.train_images, dataset.train_masks, transform, cfg["augment"], 1)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy", jit_compile=jit_compile)
    return model, x


def fed_fit_rate(cfg: Config, dataset, epochs: int = 2, mixed_precision: bool = False,
                 jit_compile: bool | str = "auto") -> float:
    """Training images/s of a bare fit through the device feed (sigmoid + BCE, image_only's transform),
    no callbacks; one warm-up epoch (it compiles) left out."""
    from harness import backend
    backend.start_clean_session(1, False, mixed_precision)
    try:
        model, x = compiled_fed_model(cfg, dataset, jit_compile)
        bs = cfg["train"]["batch_size"]
        model.fit(x, batch_size=bs, epochs=1, shuffle=True, verbose=0)
        start = time.perf_counter()
        model.fit(x, batch_size=bs, epochs=epochs, shuffle=True, verbose=0)
        return epochs * len(dataset.train_images) / (time.perf_counter() - start)
    finally:
        backend.set_precision(False)


def pipeline_rates(cfg: Config, dataset, reps: int) -> dict:
    """Device augmentation alone (gather, affine maps, transform, compiled), on the training device
    and on the host CPU; where TensorFlow is the backend, also the host tf.data pipeline."""
    import keras
    from harness.backend import backend_name
    from harness.bench import device_augment_epoch, median_rates
    from harness.feeds.choose import fit_transform
    transform = fit_transform(dataset, "featurewise", "featurewise", cfg["augment"], 1)
    contenders = {"device_augment": device_augment_epoch(cfg, dataset, transform)}
    with keras.device("cpu:0"):
        host = device_augment_epoch(cfg, dataset, transform)

    def host_epoch() -> int:
        with keras.device("cpu:0"):
            return host()
    contenders["host_keras_ops"] = host_epoch
    if backend_name() == "tensorflow":
        from harness.feeds.tfdata import train_pipeline
        batches = train_pipeline(dataset, transform, cfg["augment"], cfg["train"]["batch_size"], seed=1)
        contenders["host_tfdata"] = lambda: sum(int(x.shape[0]) for x, _ in batches)
    return median_rates(contenders, reps)


def worker_rates(experiment: Path, overrides: list[str], counts=WORKERS, epochs: int = 2) -> dict:
    """Aggregate training images/s of n worker processes on one device, each with 1/n of its memory
    (XLA_PYTHON_CLIENT_MEM_FRACTION under JAX). Every worker compiles and warms up, waits for the
    others at a barrier, then times `epochs` epochs: the aggregate is all timed images over the span
    from the first start to the last end."""
    out = {}
    for n in counts:
        with tempfile.TemporaryDirectory() as barrier:
            env = dict(os.environ, XLA_PYTHON_CLIENT_MEM_FRACTION=f"{0.9 / n:.3f}", TF_CPP_MIN_LOG_LEVEL="3")
            cmd = [sys.executable, "-m", "harness.gpu_check", "worker", str(experiment), str(n), barrier, str(epochs),
                   *overrides]
            procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for _ in range(n)]
            results = []
            for p in procs:
                stdout, stderr = p.communicate()
                if p.returncode != 0:
                    raise RuntimeError(f"gpu-check worker exited with {p.returncode}: {stderr.strip()[-500:]}")
                results.append(json.loads(stdout.strip().splitlines()[-1]))
        span = max(r["end"] for r in results) - min(r["start"] for r in results)
        out[str(n)] = sum(r["images"] for r in results) / span
    return out


def worker(experiment: Path, n: int, barrier: str, epochs: int, overrides: list[str]) -> None:
    """One worker of worker_rates: warm up, meet the others, time `epochs` epochs, print JSON."""
    from harness import backend
    from harness.data import load_dataset
    cfg = check_config(experiment, overrides)
    dataset = load_dataset(cfg["data"])
    backend.start_clean_session(os.getpid(), False)
    model, x = compiled_fed_model(cfg, dataset)
    bs = cfg["train"]["batch_size"]
    model.fit(x, batch_size=bs, epochs=1, verbose=0)
    Path(barrier, str(os.getpid())).touch()
    while len(os.listdir(barrier)) < n:
        time.sleep(0.05)
    start = time.time()
    model.fit(x, batch_size=bs, epochs=epochs, verbose=0)
    print(json.dumps({"images": epochs * len(x), "start": start, "end": time.time()}))


def device_info() -> dict:
    import importlib.metadata as md
    from harness.backend import backend_name, select_device
    info = {"used": select_device(), "backend": backend_name(), "cpus": os.cpu_count()}
    for pkg in ("keras", "jax", "jaxlib", "tensorflow", "torch"):
        if pkg not in sys.modules:          # installed but not used here: not part of this run
            continue
        try:
            info[f"version.{pkg}"] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return info


def run_gpu_check(results: Path, command: str, log: Callable[[str], None] = print, experiment: Path | None = None,
                  overrides: list[str] = (), epochs: int = 2, workers=WORKERS, budget_s: float = BUDGET_S) -> dict:
    from harness.data import load_dataset
    experiment = experiment or Path(__file__).resolve().parent.parent / "experiments" / "whitening-full.toml"
    started = time.perf_counter()
    cfg = check_config(experiment, list(overrides))
    device = device_info()
    log(f"device: {device['used']}, Keras {device.get('version.keras')} on {device['backend']}")
    dataset = load_dataset(cfg["data"])
    out: dict = {"command": command, "device": device, "data": dataset.description,
                 "model": {"image_size": cfg["data"]["image_size"], "start_depth": cfg["model"]["start_depth"],
                           "batch_size": cfg["train"]["batch_size"]},
                 "targets": TARGETS, "figures": {}, "stage_seconds": {}, "skipped": []}
    figures = out["figures"]
    reps = environment.bench_reps()
    reps = 3 if reps is None else reps

    def full_sweep():
        sweep = estimate_full_sweep(cfg, dataset, epochs, log)
        out["full_sweep"] = sweep
        figures["estimated_full_sweep_min"] = sweep["estimated_full_sweep_s"] / 60
        figures["train_images_per_s"] = {kind: sweep["train_images_per_s"].get(name) for kind, name in KINDS.items()}

    def pipeline():
        rates = pipeline_rates(cfg, dataset, reps)
        figures["pipeline_images_per_s"] = rates
        train = figures.get("train_images_per_s", {}).get("sigmoid_bce")
        if train:
            figures["pipeline_headroom"] = {name: rate / train for name, rate in rates.items()}

    def precision():
        base = fed_fit_rate(cfg, dataset)
        speedups = {"mixed_precision": fed_fit_rate(cfg, dataset, mixed_precision=True) / base}
        from harness.backend import backend_name
        if backend_name() == "tensorflow":        # JAX always compiles with XLA
            speedups["jit_compile"] = fed_fit_rate(cfg, dataset, jit_compile=True) / fed_fit_rate(
                cfg, dataset, jit_compile=False)
        figures["option_speedups"] = speedups
        figures["bare_fed_fit_images_per_s"] = base

    def shared_device():
        rates = worker_rates(experiment, list(overrides), workers)
        figures["workers_images_per_s"] = rates
        best = max(rates, key=rates.get)
        figures["best_workers"] = int(best)
        sweep = out.get("full_sweep")
        if sweep:
            figures["estimated_full_sweep_min_best_workers"] = (
                figures["estimated_full_sweep_min"] * rates["1"] / rates[best])

    for stage, measure in (("full sweep", full_sweep), ("pipeline", pipeline), ("precision", precision),
                           ("workers", shared_device)):
        if time.perf_counter() - started > budget_s:
            out["skipped"].append(stage)
            log(f"gpu-check: {stage} skipped: the {budget_s:.0f}s budget is spent")
            continue
        t = time.perf_counter()
        measure()
        out["stage_seconds"][stage] = time.perf_counter() - t
        log(f"gpu-check: {stage} measured in {out['stage_seconds'][stage]:.0f}s")
    out["total_seconds"] = time.perf_counter() - started
    for line in figure_lines(out):
        log(line)
    folder = results / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gpu-check.json").write_text(json.dumps(out, indent=1, default=float) + "\n")
    (folder / "gpu-check.md").write_text(render(out))
    return out


def figure_lines(out: dict) -> list[str]:
    f, lines = out["figures"], []
    if "estimated_full_sweep_min" in f:
        sweep = out["full_sweep"]
        lines.append(f"full sweep ({sweep['full_points']} points x {sweep['full_epochs']} epochs, one worker): "
                     f"estimated {f['estimated_full_sweep_min']:.1f} min (target {TARGETS['estimated_full_sweep_min']})")
    if "estimated_full_sweep_min_best_workers" in f:
        lines.append(f"  with {f['best_workers']} workers on the device: {f['estimated_full_sweep_min_best_workers']:.1f} min")
    for kind, rate in f.get("train_images_per_s", {}).items():
        lines.append(f"training {kind}: {rate:.0f} img/s" if rate else f"training {kind}: not measured")
    for name, rate in f.get("pipeline_images_per_s", {}).items():
        room = f.get("pipeline_headroom", {}).get(name)
        lines.append(f"pipeline {name}: {rate:.0f} img/s" + (f", pipeline_headroom {room:.2f} (target >= 2)" if room else ""))
    for name, ratio in f.get("option_speedups", {}).items():
        lines.append(f"{name}: {ratio:.2f}x the float32 bare fit" if name == "mixed_precision"
                     else f"{name}: {ratio:.2f}x")
    for n, rate in f.get("workers_images_per_s", {}).items():
        lines.append(f"{n} worker(s) on the device: {rate:.0f} img/s together")
    lines += [f"skipped (time budget): {stage}" for stage in out["skipped"]]
    return lines


def render(out: dict) -> str:
    return (f"# GPU check\n\nProduced by `{out['command']}` in {out['total_seconds']:.0f} s.\n\n"
            f"- device: {out['device']['used']} (Keras {out['device'].get('version.keras')}, backend "
            f"{out['device']['backend']})\n- data: {out['data']}\n- model: {out['model']}\n\n"
            + "\n".join(f"- {line}" for line in figure_lines(out))
            + "\n\n```json\n" + json.dumps({k: out[k] for k in ("figures", "full_sweep", "stage_seconds")
                                            if k in out}, indent=1, default=float) + "\n```\n")


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        experiment_arg, n_arg, barrier_arg, epochs_arg, *rest = sys.argv[2:]
        worker(Path(experiment_arg), int(n_arg), barrier_arg, int(epochs_arg), rest)
