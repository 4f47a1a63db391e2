"""`sweep --n-jobs`: how many workers, each one's GPU and memory share, starting and stopping them,
and the parent's exit code from theirs. Each worker is a process of its own, `python -m harness.workers
SPEC` (its entry point is `main` below, told what to run as plain JSON), running the sweep loop
(harness/sweep.py) on the parent's study and claiming points until none is left; the parent owns the
MLflow parent run and writes the report."""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from harness import environment
from harness.backend import gpu_count, gpu_memory_mib
from harness.errors import (EXIT_BAD_INPUT, EXIT_CRASHED, EXIT_DONE, EXIT_INTERNAL, EXIT_INTERRUPTED,
                            HarnessError, exit_code_of, interrupt_handlers)


def workers_exit(codes: list[int]) -> int:
    """The --n-jobs parent's exit code from its workers' (0 when they all finished their share).
    Each worker has printed its own error line; a worker that died is named here."""
    if EXIT_INTERRUPTED in codes:
        return EXIT_INTERRUPTED
    died = [(i + 1, code) for i, code in enumerate(codes)
            if code not in (EXIT_DONE, EXIT_CRASHED, EXIT_BAD_INPUT, EXIT_INTERRUPTED)]
    for worker, code in died:
        why = f"was killed by signal {-code}" if code < 0 else f"exited with {code}"
        print(f"harness: internal error: worker {worker} of {len(codes)} {why}"
              + (" (an internal error, its line is above)" if code == EXIT_INTERNAL else "")
              + "; finished runs are kept, rerun the same command to train what is left", file=sys.stderr)
    if died:
        return EXIT_INTERNAL
    return EXIT_BAD_INPUT if EXIT_BAD_INPUT in codes else EXIT_DONE


def resolve_n_jobs(value: str, results: Path) -> int:
    """--n-jobs N, or auto: per GPU, the worker count that `harness bench --gpu-check` measured fastest
    on a GPU (<results>/bench/gpu-check.json, best_workers); on the CPU, 2 where `harness bench` measured
    --n-jobs 2 faster than one worker (bench.json, n_jobs_2_speedup > 1), else 1. Says which it took."""
    import json
    if value != "auto":
        try:
            n = int(value)
        except ValueError:
            raise HarnessError(f"--n-jobs must be an integer >= 1 or auto, got {value!r}") from None
        if n < 1:
            raise HarnessError("--n-jobs must be >= 1")
        return n
    gpus = gpu_count()
    name, key = ("gpu-check.json", "best_workers") if gpus else ("bench.json", "n_jobs_2_speedup")
    path = results / "bench" / name
    try:
        figure = json.loads(path.read_text())["figures"][key]
    except (OSError, ValueError, KeyError):
        n = max(gpus, 1)
        print(f"harness: --n-jobs auto: {n} (no {key} in {path}; run `harness bench"
              + (" --gpu-check`" if gpus else "`") + " to measure it)", flush=True)
        return n
    n = int(figure) * gpus if gpus else (2 if figure > 1 else 1)
    print(f"harness: --n-jobs auto: {n} ({key} {figure:g} in {path})", flush=True)
    return n


def worker_env(i: int, n: int, gpus: int, memory_mib: int | None) -> dict:
    """Worker i of n: its GPU (i mod count) and, where several share one, a cap at their share of its
    memory (JAX: XLA_PYTHON_CLIENT_MEM_FRACTION; TensorFlow: a logical device of that many MiB,
    harness/backend.py), so one worker cannot take what the others need."""
    # HARNESS_WORKER: the worker's number, for a user's code that wants to know (the tests break one
    # worker on purpose through it); the harness itself is told in the worker's spec.
    env = {environment.PROGRESS_LIVE: "0", environment.WORKER: str(i + 1)}
    if not gpus:
        return env
    env["CUDA_VISIBLE_DEVICES"] = str(i % gpus)
    sharing = len(range(i % gpus, n, gpus))          # workers on this worker's GPU
    if sharing > 1:
        share = 0.9 / sharing                         # a tenth left for the CUDA context and fragmentation
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{share:.3f}"
        if memory_mib:
            env[environment.GPU_MEMORY_MB] = str(int(memory_mib * share))
    return env


def run_workers(spec: dict, n: int, sweep_id: str) -> list[int]:
    """The sweep in n worker processes on the same study: each claims points until none is left
    (grid.next_trial), so the points are shared out without a coordinator. `spec`: the sweep's
    settings as plain data (cli.worker_spec). With GPUs, worker i sees GPU i mod count (worker_env).
    Returns exit codes."""
    import subprocess
    gpus = gpu_count()
    memory = gpu_memory_mib() if gpus and n > gpus else None
    procs = []
    for i in range(n):
        env = dict(os.environ, **worker_env(i, n, gpus, memory))
        told = json.dumps({**spec, "sweep_id": sweep_id, "worker": i + 1})
        procs.append(subprocess.Popen([sys.executable, "-m", "harness.workers", told], env=env))
    print(f"harness: {n} workers started" + (f" on {gpus} GPU(s)" if gpus else " on the CPU"), flush=True)
    try:
        return [p.wait() for p in procs]
    except KeyboardInterrupt:
        stop_workers(procs)
        raise


def stop_workers(procs) -> None:
    """Ctrl-C or SIGTERM at the --n-jobs parent: each worker is asked to stop with a SIGTERM (it
    marks its run KILLED at its next batch and exits 130); pressed again, asked again, at once.
    Workers ignore the terminal's SIGINT (main), so one Ctrl-C is one request, whether it reached
    the whole process group from a terminal or only the parent from `kill -INT`."""
    while True:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        try:
            for p in procs:
                p.wait()
            return
        except KeyboardInterrupt:
            continue


def run_worker(spec: dict) -> int:
    """One worker's share of the sweep: no parent run and no report of its own (its parent's)."""
    from harness.backend import import_tensorflow_quietly
    from harness.config import load_config
    from harness.sweep import run_sweep
    cfg = load_config(spec["experiment"], spec["overrides"])
    import_tensorflow_quietly()
    outcomes = run_sweep(cfg, Path(spec["results"]), spec["storage"], spec["tracking_uri"], command=spec["command"],
                         sweep_id=spec["sweep_id"], worker=spec["worker"], system_metrics=spec["system_metrics"],
                         save_models=spec["save_models"])
    crashed = any(o.verdict == "crashed" for o in outcomes)
    return EXIT_CRASHED if (spec["strict"] and crashed) else EXIT_DONE


def main(argv: list[str]) -> int:
    """The worker's entry point: `python -m harness.workers SPEC`, SPEC the JSON run_workers wrote.
    It leaves the terminal's Ctrl-C to its parent, which passes it on as SIGTERM (stop_workers)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with interrupt_handlers(worker=True):
        return exit_code_of(lambda: run_worker(json.loads(argv[0])))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
