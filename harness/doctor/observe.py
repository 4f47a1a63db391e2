"""What `fit` receives, observed as it passes: the first batches are recorded, and every batch reaches
the model unchanged and in the same order as without the doctor.

Nothing is read ahead. Reading a Python generator ahead would run the user's code early; indexing a
PyDataset or iterating a tf.data.Dataset a second time draws from their random streams (an
ImageDataGenerator iterator reseeds NumPy from how many batches it has served, a dataset's shuffle
reseeds on every iteration), so the batches fit then sees would differ. Instead each kind is watched
where fit itself takes its batches:
- arrays (NumPy or a framework's tensors): sliced, as fit will batch them;
- a Python generator: a generator that yields what it yields, recording on the way;
- a keras.utils.PyDataset (ImageDataGenerator's iterators are ones): its class becomes a subclass
  whose `__getitem__` records, and is given back after fit;
- a tf.data.Dataset: an identity `map` whose side effect records (tf.py_function).
Anything else (a bare `zip`, which Keras rejects) is handed to fit as it came.
"""
from __future__ import annotations

import threading
import types

import numpy as np

LIMIT = 8          # batches recorded, as `harness check` samples (check.SAMPLE_BATCHES)


class Observed:
    """The first batches of one input of fit, as (x, y) NumPy arrays, recorded as they pass. `arrays`:
    the whole (x, y) where fit was given arrays. `note`: why nothing could be recorded."""

    def __init__(self, kind: str, limit: int = LIMIT):
        self.kind, self.limit = kind, limit
        self.batches: list[tuple[np.ndarray, np.ndarray]] = []
        self.arrays: tuple | None = None
        self.note = ""
        self.lock = threading.Lock()

    @property
    def full(self) -> bool:
        return len(self.batches) >= self.limit

    def record(self, batch) -> None:
        if self.full:
            return
        pair = as_pair(batch)
        if pair is None:
            self.note = self.note or f"its batches are not (inputs, targets) arrays ({type(batch).__name__})"
            return
        with self.lock:
            if not self.full:
                self.batches.append(pair)

    def x(self) -> np.ndarray | None:
        return np.concatenate([x for x, _ in self.batches]) if self.batches else None

    def y(self) -> np.ndarray | None:
        return np.concatenate([y for _, y in self.batches]) if self.batches else None


def as_pair(batch) -> tuple[np.ndarray, np.ndarray] | None:
    """(x, y) as NumPy copies from a batch `(x, y)` or `(x, y, sample_weight)`; None for one model
    input of several (a dict or a list of inputs) or a batch without targets."""
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        return None
    x, y = batch[0], batch[1]
    if isinstance(x, (dict, list, tuple)) or isinstance(y, (dict, list, tuple)):
        return None
    try:
        return np.array(x, copy=True), np.array(y, copy=True)
    except Exception:  # noqa: BLE001 - anything that is not an array is simply not observed
        return None


def is_array(x) -> bool:
    """NumPy arrays and the frameworks' tensors (what fit batches itself)."""
    if isinstance(x, np.ndarray):
        return True
    module = type(x).__module__
    return module.startswith(("tensorflow", "jax", "jaxlib", "torch")) and hasattr(x, "shape") and hasattr(x, "dtype") \
        and not hasattr(x, "element_spec")


def observe_arrays(x, y, batch_size: int | None, observed: Observed) -> None:
    """The first LIMIT batches of arrays as fit batches them (in order; fit may shuffle them)."""
    observed.arrays = (x, y)
    size = batch_size or 32
    for start in range(0, min(len(x), size * observed.limit), size):
        observed.record((x[start:start + size], y[start:start + size]))


def observe(data, observed: Observed):
    """-> (what to hand fit instead of `data`, a function that undoes any change made to `data`)."""
    if isinstance(data, types.GeneratorType):
        return passing(data, observed), nothing
    if is_py_dataset(data):
        if getattr(data, "use_multiprocessing", False):
            observed.note = "a PyDataset served by several processes is not observed"
            return data, nothing
        return data, observe_py_dataset(data, observed)
    if is_tf_dataset(data):
        return observe_tf_dataset(data, observed), nothing
    observed.note = f"{type(data).__name__} inputs are not observed"
    return data, nothing


def nothing() -> None:
    return None


def passing(source, observed: Observed):
    """A generator yielding what `source` yields, recording the first batches."""
    for batch in source:
        observed.record(batch)
        yield batch


def is_py_dataset(data) -> bool:
    import sys
    keras = sys.modules.get("keras")
    return keras is not None and isinstance(data, keras.utils.PyDataset)


def is_tf_dataset(data) -> bool:
    import sys
    tf = sys.modules.get("tensorflow")
    return tf is not None and hasattr(tf, "data") and isinstance(data, tf.data.Dataset)


def observe_py_dataset(data, observed: Observed):
    """Its class becomes a subclass whose __getitem__ records; -> the function that gives it back."""
    cls = type(data)
    getitem = cls.__getitem__

    def __getitem__(self, index):
        batch = getitem(self, index)
        observed.record(batch)
        return batch

    data.__class__ = type(cls.__name__, (cls,), {"__getitem__": __getitem__, "__module__": cls.__module__,
                                                 "__qualname__": cls.__qualname__})
    return lambda: setattr(data, "__class__", cls)


def observe_tf_dataset(data, observed: Observed):
    """The dataset with an identity map whose side effect records the first batches: the elements
    are the same tensors (tf.identity after the recording), the order and the cardinality unchanged."""
    import tensorflow as tf
    spec = data.element_spec

    def record(*flat):
        if not observed.full:
            observed.record(tf.nest.pack_sequence_as(spec, [t.numpy() for t in flat]))
        return True

    def passthrough(*element):
        element = element[0] if len(element) == 1 else element
        flat = tf.nest.flatten(element)
        done = tf.py_function(record, flat, Tout=tf.bool)
        with tf.control_dependencies([done]):
            return tf.nest.map_structure(tf.identity, element)

    return data.map(passthrough)
