"""Errors the CLI turns into one clear line and exit code 2 (bad input, unreachable stores), and
the interrupt request that Ctrl-C sets."""
import threading

# Set by the CLI's SIGINT handler and checked by training between batches: a KeyboardInterrupt
# raised while TensorFlow's C++ code runs can be swallowed (seen: tf.data ended the epoch
# instead), so training also stops itself at the next batch.
INTERRUPTED = threading.Event()


class HarnessError(Exception):
    """A problem with what the user gave us, told in one line."""


class ConfigError(HarnessError):
    """An experiment file or --set override that is not valid."""


class DataError(HarnessError):
    """A dataset that cannot be read or paired, or has the wrong shape or values."""


class StorageError(HarnessError):
    """An Optuna storage, MLflow tracking store or results folder that cannot be used."""
