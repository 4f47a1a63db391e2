"""Errors the CLI turns into one clear line and exit code 2 (bad input, unreachable stores), and
the interrupt request that Ctrl-C sets."""
import contextlib
import threading

# Set by the CLI's SIGINT handler and checked by training between batches: a KeyboardInterrupt
# raised while TensorFlow's C++ code runs can be swallowed (seen: tf.data ended the epoch
# instead), so training also stops itself at the next batch.
INTERRUPTED = threading.Event()
# While set (training), the first Ctrl-C only sets INTERRUPTED. Python runs a signal handler at
# any bytecode, also in a finalizer that gc.collect() calls (seen: in keras' clear_session),
# where the KeyboardInterrupt is swallowed half-way through releasing TensorFlow's objects and
# the process later died of SIGSEGV. Training stops itself at its next safe point instead.
DEFERRING = threading.Event()
# What asked: "Ctrl-C" or "SIGTERM", for the interrupted run's `failure` tag.
INTERRUPTED_BY = {"signal": "Ctrl-C"}


def interrupted_reason() -> str:
    return f"interrupted ({INTERRUPTED_BY['signal']})"


def stop_if_interrupted() -> None:
    """A safe point: raise the KeyboardInterrupt that a Ctrl-C asked for."""
    if INTERRUPTED.is_set():
        raise KeyboardInterrupt


@contextlib.contextmanager
def interrupts_deferred():
    """Ctrl-C inside this block is acted on at the next stop_if_interrupted(), and at its end."""
    stop_if_interrupted()
    DEFERRING.set()
    try:
        yield
    finally:
        DEFERRING.clear()
    stop_if_interrupted()


class HarnessError(Exception):
    """A problem with what the user gave us, told in one line."""


class ConfigError(HarnessError):
    """An experiment file or --set override that is not valid."""


class DataError(HarnessError):
    """A dataset that cannot be read or paired, or has the wrong shape or values."""


class StorageError(HarnessError):
    """An Optuna storage, MLflow tracking store or results folder that cannot be used."""
