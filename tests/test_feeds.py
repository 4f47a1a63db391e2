"""harness/feeds/: every feed gives the one interface, choose_feed's rules pick it, and the imports of
the data flow point one way (transforms <- feeds <- train/check/bench, data <- feeds)."""
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, TINY, need_module
from test_layout import cycles, import_graph
from harness import backend
from harness.backend import Machine
from harness.config import load_config
from harness.data import load_dataset
from harness.errors import ConfigError
from harness.feeds.base import Feed
from harness.feeds.choose import choose_feed
from harness.transforms import Transform

SMALL = ["data.n_images=12", "data.image_size=16", "model.start_depth=4", "train.batch_size=4",
         "augment.stats_rounds=1", 'variants=["seed"]']
HARNESS = ROOT / "harness"


def setup(*sets, machine=None):
    cfg = load_config(TINY, SMALL + list(sets), machine)
    return cfg, load_dataset(cfg["data"])


def check_interface(feed, cfg, dataset):
    from harness.models import build_model
    assert isinstance(feed, Feed) and isinstance(feed.transform, Transform)
    batches = list(feed.sample_batches(max_batches=2))
    assert len(batches) == 2
    for images, masks in batches:
        assert images.shape == (4, 16, 16, 3) and masks.shape == (4, 16, 16, 1)
    model = build_model(cfg, dataset.train_images.shape[1:], "sigmoid")
    trained, fit_args = feed.fit_inputs(model, 4)
    assert "x" in fit_args and hasattr(trained, "fit")
    return trained, fit_args


@pytest.mark.skipif(backend.backend_name() != "tensorflow", reason="tf.data needs TensorFlow")
def test_tfdata_feed_by_default_on_a_cpu():
    cfg, dataset = setup(machine=Machine("tensorflow", accelerator=False))
    feed = choose_feed(cfg, dataset, cfg.variants[0], 1)
    assert feed.name == "tfdata"
    trained, fit_args = check_interface(feed, cfg, dataset)
    assert fit_args["shuffle"] is False                  # the pipeline shuffles


@pytest.mark.skipif(backend.backend_name() != "tensorflow", reason="tf.data needs TensorFlow")
def test_fit_trains_on_exactly_the_pipelines_own_passes():
    """Every batch fit trains on, epoch after epoch, is the tf.data pipeline's own: its first pass,
    then its second. A finite pipeline handed to Keras 3.15 gave other batches from epoch 2 on (a
    discarded iterator drew first), so the 3rd epoch's batches are compared too."""
    import keras
    cfg, dataset = setup("train.batch_size=3")
    feed = choose_feed(cfg, dataset, cfg.variants[0], seed=1)
    seen = []

    class Recording(keras.Model):
        def train_step(self, data):           # eager (run_eagerly): each batch as fit hands it over
            seen.append(np.asarray(data[0]).copy())
            return super().train_step(data)

    inputs = keras.Input(dataset.train_images.shape[1:])
    model = Recording(inputs, keras.layers.Conv2D(1, 1, activation="sigmoid")(inputs))
    model.compile(optimizer="adam", loss="binary_crossentropy", run_eagerly=True)
    trained, fit_args = feed.fit_inputs(model, 3)
    trained.fit(**fit_args, epochs=3, verbose=0)
    again = choose_feed(cfg, dataset, cfg.variants[0], seed=1)      # the same seed: the same draws
    passes = [np.asarray(images) for _ in range(3) for images, _ in again.pipeline]
    steps = -(-len(dataset.train_images) // 3)
    assert len(seen) == len(passes) == 3 * steps
    for fitted, own in zip(seen, passes):
        np.testing.assert_array_equal(fitted, own)


@pytest.mark.skipif(backend.backend_name() != "tensorflow", reason="the generator pair needs TensorFlow")
def test_imagedatagenerator_feed_for_the_case_pipeline():
    need_module("tf_keras", "pip install tf-keras")
    cfg, dataset = setup("pipeline=imagedatagenerator")
    feed = choose_feed(cfg, dataset, cfg.variants[0], 1)
    assert feed.name == "imagedatagenerator"
    _, fit_args = check_interface(feed, cfg, dataset)
    assert fit_args["steps_per_epoch"] == -(-len(dataset.train_images) // 4)


@pytest.mark.backend
def test_device_feed_resident_or_streamed_by_the_device_data_limit(monkeypatch):
    cfg, dataset = setup("speed.device_augment=true")
    feed = choose_feed(cfg, dataset, cfg.variants[0], 1)
    assert feed.name == "device augment"
    trained, fit_args = check_interface(feed, cfg, dataset)
    assert fit_args["shuffle"] is True and fit_args["x"].dtype == np.int32      # indices into the arrays
    monkeypatch.setenv("HARNESS_DEVICE_DATA_MB", "0")
    streamed = choose_feed(cfg, dataset, cfg.variants[0], 1)
    assert streamed.name == "device augment, streamed"
    _, fit_args = check_interface(streamed, cfg, dataset)
    assert set(fit_args["x"]) == {"images", "masks"}
    np.testing.assert_array_equal(streamed.transform.image_stats.mean, feed.transform.image_stats.mean)


@pytest.mark.backend
def test_tensorflow_feeds_are_refused_under_another_backend_in_one_line(monkeypatch):
    # Configs resolved for TensorFlow, then run where Keras runs JAX: the feed refuses them too.
    cfg, dataset = setup("speed.device_augment=false", machine=Machine("tensorflow"))
    idg, _ = setup("pipeline=imagedatagenerator", machine=Machine("tensorflow"))
    monkeypatch.setattr(backend, "backend_name", lambda: "jax")
    with pytest.raises(ConfigError, match='^pipeline "tfdata" needs KERAS_BACKEND=tensorflow; under jax use '
                                          "--set speed.device_augment=true$"):
        choose_feed(cfg, dataset, cfg.variants[0], 1)
    with pytest.raises(ConfigError, match="--set pipeline=tfdata$"):
        choose_feed(idg, dataset, idg.variants[0], 1)


def test_imports_point_down_the_data_flow():
    graph = import_graph()                    # every module of harness/, imports inside functions too
    assert graph["harness.transforms"] == set()
    assert graph["harness.data"] <= {"harness.errors", "harness.backend"}
    feeds = [m for m in graph if m.startswith("harness.feeds")]
    for m in feeds:
        assert not graph[m] & {"harness.train", "harness.check", "harness.bench", "harness.config"}, m
        assert "harness.feeds" not in graph[m], m            # the package's __init__ imports nothing

    for m in [*feeds, "harness.transforms", "harness.data", "harness.train", "harness.check"]:
        assert not any(m in group for group in cycles(graph)), f"{m} imports itself back"
    assert not (HARNESS / "augment.py").exists()


def test_a_seeds_statistics_are_computed_once_for_all_its_variants(monkeypatch):
    """The statistics pass depends on the arrays, the augmentation and its seed only: every variant
    of a seed gets the same statistics, computed once; another seed or array, its own."""
    from harness.feeds import base
    monkeypatch.setattr(base, "_STATS", {})
    passes = []

    def augment_array(aug, x, seed):
        passes.append(seed)
        return np.roll(x, seed * aug["shift"], axis=1)

    x = np.arange(2 * 4 * 4 * 3, dtype=np.float32).reshape(2, 4, 4, 3)
    aug = {"stats_rounds": 2, "shift": 1, "fill": Path("nearest")}       # a value JSON has no type for
    first = base.augmented_stats(x, aug, 2, 1, augment_array)
    assert passes == [1, 2]
    assert base.augmented_stats(x.copy(), dict(aug), 2, 1, augment_array) is first and passes == [1, 2]
    assert base.augmented_stats(x, aug, 2, 2, augment_array) is not first and passes == [1, 2, 2, 3]
    assert base.augmented_stats(x + 1, aug, 2, 1, augment_array).mean[0] == pytest.approx(first.mean[0] + 1)
    reordered = {"fill": Path("nearest"), "shift": 1, "stats_rounds": 2}
    assert base.augmented_stats(x, reordered, 2, 1, augment_array) is first                 # the same settings
    assert base.augmented_stats(x, {**aug, "shift": 0}, 2, 1, augment_array) is not first
    assert base.augmented_stats(x.reshape(2, 4, 2, 6), aug, 2, 1, augment_array) is not first   # same bytes
    assert len(passes) == 10


# Larger than any free block a test process's heap is likely to hold, smaller than the threshold the
# feed puts back (backend.MMAP_THRESHOLD_MAX): mapped under TensorFlow's setting, from the heap after.
BELOW_GLIBC_MAX = 30 * 2 ** 20


def mmapped_by_malloc(nbytes: int) -> bool | None:
    """Whether glibc serves a malloc of `nbytes` by mmap (its mmap threshold is below it), read from
    mallinfo2's mmapped bytes around one allocation by this (the main) thread; None where this C
    library has no mallinfo2."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                         "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype, libc.malloc.restype, libc.free.argtypes = MallInfo2, ctypes.c_void_p, [ctypes.c_void_p]
    libc.malloc_trim(0)              # the heap's free top given back: it cannot serve the request
    before = libc.mallinfo2().hblkhd
    block = libc.malloc(nbytes)
    try:
        return libc.mallinfo2().hblkhd - before >= nbytes
    finally:
        libc.free(block)


@pytest.mark.skipif(backend.backend_name() != "tensorflow", reason="the generator pair needs TensorFlow")
def test_the_generator_pair_leaves_large_buffers_to_the_heap():
    """TensorFlow's generator dataset sets glibc's mmap threshold to 128 KiB under Python 3.11, and
    training then maps and unmaps its buffers at every step (harness/backend.py, about twice as slow
    an epoch on the AMD EPYC). The case's feed puts the threshold back once its generator starts."""
    import tensorflow as tf
    need_module("tf_keras", "pip install tf-keras")
    bare = tf.data.Dataset.from_generator(lambda: iter([np.zeros(1, np.float32)]),
                                          output_signature=tf.TensorSpec((1,), tf.float32))
    next(iter(bare))
    if not mmapped_by_malloc(BELOW_GLIBC_MAX):
        pytest.skip("this TensorFlow, Python or C library leaves malloc's thresholds alone")
    cfg, dataset = setup("pipeline=imagedatagenerator")
    next(iter(choose_feed(cfg, dataset, cfg.variants[0], 1).pipeline))
    assert mmapped_by_malloc(BELOW_GLIBC_MAX) is False
