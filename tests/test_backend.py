"""harness/backend.py: what `train.deterministic` gives on each backend and device, and that a GPU
without deterministic kernels never fails a run (it records deterministic = False instead)."""
import pytest

from conftest import need_module

from harness import backend, environment, train


class UnimplementedError(Exception):
    """Named as TensorFlow's: raised on a GPU for an op without a deterministic kernel."""


@pytest.mark.backend
def test_a_clean_session_is_deterministic_where_the_backend_can_be():
    deterministic = backend.start_clean_session(1, deterministic=True)
    device = backend.select_device()
    assert device.startswith(("CPU", "GPU")), device
    # The CPU is deterministic under every backend, and TensorFlow's op determinism on a GPU too;
    # JAX on a GPU is only where XLA took the flag (the probe's answer), so any bool is honest there.
    if device.startswith("CPU") or backend.backend_name() == "tensorflow":
        assert deterministic is True
    else:
        assert isinstance(deterministic, bool)


@pytest.mark.parametrize("compiles", [True, False])
def test_xla_determinism_is_asked_for_only_where_it_compiles(monkeypatch, compiles):
    monkeypatch.setattr(backend, "backend_name", lambda: "jax")
    monkeypatch.setattr(backend, "jax_started", lambda: False)
    monkeypatch.setattr(backend, "accelerator_visible", lambda: True)
    monkeypatch.setattr(backend, "xla_determinism_compiles", lambda: compiles)
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    monkeypatch.delenv(environment.XLA_DETERMINISM, raising=False)
    backend.prepare_process()
    import os
    if compiles:
        assert os.environ["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_gpu_deterministic_ops=true"
    else:
        assert os.environ["XLA_FLAGS"] == "--xla_dump_to=/tmp/x"
        assert os.environ[environment.XLA_DETERMINISM] == "unavailable"       # workers inherit the answer


def test_the_probe_compiles_a_max_pool_gradient_where_jax_is_installed():
    need_module("jax", "pip install 'jax[cpu]'")
    assert backend.xla_determinism_compiles()          # on the CPU the flag is known and the gradient runs


def test_an_op_without_a_deterministic_kernel_trains_the_point_without_determinism(monkeypatch):
    from harness.config import load_config
    calls, notes = [], []

    def fit_variant(cfg, variant, seed, dataset, deterministic, *rest):
        calls.append(deterministic)
        if deterministic:
            raise UnimplementedError("A deterministic GPU implementation of MaxPoolGrad is not available")
        return "result"

    monkeypatch.setattr(train, "fit_variant", fit_variant)
    monkeypatch.setattr(backend, "backend_name", lambda: "tensorflow")
    cfg = load_config(None, ["speed.device_augment=false"])
    assert train.train_variant(cfg, cfg.variants[0], 1, None, log=notes.append) == "result"
    assert calls == [True, False] and "without op determinism" in notes[0]
    assert backend.is_determinism_error(UnimplementedError("Deterministic GPU implementation ..."))
    assert not backend.is_determinism_error(ValueError("deterministic"))


@pytest.mark.backend
def test_keras_runs_on_the_backend_this_pass_asked_for():
    """CI's second pass sets KERAS_BACKEND=jax: its tests run on JAX, not on a TensorFlow that a
    keras.json or an earlier import decided (tests/test_ci_guards.py checks that the pass exists)."""
    import os
    import keras
    asked = os.environ.get("KERAS_BACKEND", "tensorflow")
    assert keras.backend.backend() == asked and backend.backend_name() == asked
    if asked == "jax":
        import jax
        assert keras.ops.convert_to_tensor([1.0]).__class__.__module__.startswith(("jax", "jaxlib"))
        assert jax.devices()


# In a fresh process, as a sweep starts: prepare_process, then TensorFlow, then whether it runs oneDNN.
ONEDNN_IN_A_FRESH_PROCESS = """
import os
from harness import backend
backend.prepare_process()
import tensorflow  # noqa: F401
from tensorflow.python.util import _pywrap_util_port
print(os.environ.get(backend.ONEDNN), _pywrap_util_port.IsMklEnabled())
"""


def test_tensorflow_runs_its_own_kernels_on_every_cpu_kind_unless_the_user_asks_for_onednn():
    """oneDNN off before TensorFlow starts, where TensorFlow would turn it on by itself (CPUs with
    AVX512_VNNI or AMX); a user's TF_ENABLE_ONEDNN_OPTS=1 is kept, and TensorFlow then runs oneDNN."""
    import os
    import subprocess
    import sys
    need_module("tensorflow", "pip install tensorflow")

    def onednn(value):
        env = {k: v for k, v in os.environ.items() if k != backend.ONEDNN}
        if value is not None:
            env[backend.ONEDNN] = value
        run = subprocess.run([sys.executable, "-c", ONEDNN_IN_A_FRESH_PROCESS], env=env, capture_output=True,
                             text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        return run.stdout.split()
    assert onednn(None) == ["0", "False"]
    assert onednn("1") == ["1", "True"]
