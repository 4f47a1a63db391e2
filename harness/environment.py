"""Every HARNESS_* environment variable: named, described and read here, and nowhere else.

The configuration is the experiment file and `--set` (harness/config.py). These variables are not a
second one: they are for debugging, the tests, the bench and the processes a sweep starts itself,
and none of them changes a trained number. The reference page (docs/reference/environment.md) is
made from VARIABLES. Variables of other programs (KERAS_BACKEND, XLA_FLAGS, TF_ENABLE_ONEDNN_OPTS,
MLFLOW_*) are set where their program is started: harness/backend.py and harness/tracking.py."""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Variable:
    default: str          # what an unset variable means ("" for nothing)
    meaning: str          # what it does, for the reference page
    set_by: str = "you"   # "you", or the part of the harness that sets it for a process it starts


DEBUG = "HARNESS_DEBUG"
HEARTBEAT_S = "HARNESS_HEARTBEAT_S"
GRACE_S = "HARNESS_GRACE_S"
PROGRESS_LIVE = "HARNESS_PROGRESS_LIVE"
PROGRESS_S = "HARNESS_PROGRESS_S"
WORKER = "HARNESS_WORKER"
GPU_MEMORY_MB = "HARNESS_GPU_MEMORY_MB"
DEVICE_DATA_MB = "HARNESS_DEVICE_DATA_MB"
XLA_DETERMINISM = "HARNESS_XLA_DETERMINISM"
BENCH_REPS = "HARNESS_BENCH_REPS"
BENCH_BACKENDS = "HARNESS_BENCH_BACKENDS"
GPU_CHECK_WORKERS = "HARNESS_GPU_CHECK_WORKERS"
GPU_CHECK_BUDGET_S = "HARNESS_GPU_CHECK_BUDGET_S"

VARIABLES = {
    DEBUG: Variable("", "set (to 1, say): an internal error raises with its traceback instead of one line, and TensorFlow's "
                        "start-up lines are shown"),
    HEARTBEAT_S: Variable("5", "seconds between a training worker's stamps on its trial"),
    GRACE_S: Variable("20", "seconds without a stamp after which a trial's worker counts as dead, and its point "
                            "is trained again"),
    PROGRESS_LIVE: Variable("1", "0: no live progress line, even on a terminal", "sweep --n-jobs, for its workers"),
    PROGRESS_S: Variable("30", "seconds between progress lines where the output is not a terminal"),
    WORKER: Variable("", "the worker's number (1, 2, ...) in a process of `sweep --n-jobs`, for a user's code",
                     "sweep --n-jobs, for its workers"),
    GPU_MEMORY_MB: Variable("", "TensorFlow: a GPU capped at this many MiB (workers sharing a GPU)",
                            "sweep --n-jobs, for workers sharing a GPU"),
    DEVICE_DATA_MB: Variable("", "arrays larger than this many MiB are streamed from the host instead of held on "
                                 "the device (default: a quarter of the device's memory, else 2048)"),
    XLA_DETERMINISM: Variable("", "unavailable: JAX's deterministic GPU kernels did not compile here; the "
                                  "processes a sweep starts do not probe again", "the first process that probed"),
    BENCH_REPS: Variable("", "rounds of every bench figure (the tests: 1); unset, the bench's own"),
    BENCH_BACKENDS: Variable("", "current: the bench measures the running Keras backend alone"),
    GPU_CHECK_WORKERS: Variable("1,2,4", "the worker counts the GPU check measures"),
    GPU_CHECK_BUDGET_S: Variable("360", "seconds after which the GPU check starts no further stage"),
}


def text(name: str) -> str:
    """The variable's value, or its default."""
    return os.environ.get(name, VARIABLES[name].default)


def number(name: str) -> float:
    return float(text(name))


def optional_number(name: str) -> float | None:
    """None where the variable is unset or empty (the caller's own default applies)."""
    value = text(name)
    return float(value) if value else None


def debug() -> bool:
    return bool(text(DEBUG))


def progress_live() -> bool:
    return text(PROGRESS_LIVE) != "0"


def bench_reps() -> int | None:
    value = optional_number(BENCH_REPS)
    return None if value is None else int(value)


def gpu_check_workers() -> tuple[int, ...]:
    return tuple(int(n) for n in text(GPU_CHECK_WORKERS).split(","))
