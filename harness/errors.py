"""Errors the CLI turns into one clear line and exit code 2 (bad input, unreachable stores), and
the interrupt request that Ctrl-C sets."""
import contextlib
import signal
import sys
import threading

from harness import environment

# Exit codes (docs/guides/troubleshooting.md): a script or CI job tells these apart.
EXIT_DONE = 0
EXIT_CRASHED = 1          # some point crashed and --strict was given; `check --strict`: a predicted failure
EXIT_BAD_INPUT = 2        # a `harness: error:` line: bad settings, data or stores (argparse uses 2 too)
EXIT_INTERNAL = 3         # a bug or an unforeseen failure, here or in an --n-jobs worker
EXIT_INTERRUPTED = 130    # Ctrl-C (128 + SIGINT, as shells report it)

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


def on_sigint(signum, frame):
    """Ctrl-C or SIGTERM: during training the first one asks training to stop at its next batch
    (see errors.DEFERRING); elsewhere, or sent again, it interrupts at once."""
    if INTERRUPTED.is_set():                     # sent again
        raise KeyboardInterrupt
    INTERRUPTED_BY["signal"] = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
    INTERRUPTED.set()
    if not DEFERRING.is_set():
        raise KeyboardInterrupt


@contextlib.contextmanager
def interrupt_handlers(worker: bool = False):
    """Ctrl-C and SIGTERM go to on_sigint while a command runs; the previous handlers come back after
    (tests run commands in-process). An --n-jobs worker leaves the terminal's Ctrl-C to its parent,
    which passes it on as SIGTERM (stop_workers). SIGTERM (a scheduler's pre-emption, `docker stop`,
    `timeout`) is a Ctrl-C."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    INTERRUPTED.clear()
    signal.signal(signal.SIGINT, signal.SIG_IGN if worker else on_sigint)
    signal.signal(signal.SIGTERM, on_sigint)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def exit_code_of(command) -> int:
    """Run a command (a function returning its exit code): a known error becomes one line on stderr
    and its exit code, an interrupt 130, anything else an internal error, 3 (HARNESS_DEBUG=1 raises
    it instead, with its traceback). Finished runs are never lost on the way out."""
    try:
        return command()
    except HarnessError as e:
        print(f"harness: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("harness: interrupted; finished runs are kept, rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - a bug or an unforeseen failure: one line, finished runs are kept
        if environment.debug():
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"harness: internal error: {type(e).__name__}: {first}"
              " (finished runs are kept; HARNESS_DEBUG=1 shows the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


def needs_tensorflow(pipeline: str, backend: str) -> ConfigError:
    """The refusal of a TensorFlow-only feed under another Keras backend, naming the alternative."""
    return ConfigError(f'pipeline "{pipeline}" needs KERAS_BACKEND=tensorflow; under {backend} use '
                       f"--set speed.device_augment=true" + (" --set pipeline=tfdata" if pipeline != "tfdata" else ""))
