"""The Keras backend in use: its name, its device, and a clean, seeded (and where possible deterministic) session.

The only training-path module that knows which backend runs (KERAS_BACKEND: tensorflow, the default,
jax, or torch); everything else speaks keras / keras.ops. What `train.deterministic` does:
- tensorflow: op determinism (`tf.config.experimental.enable_op_determinism`). On a GPU some ops
  have no deterministic kernel and raise when they run; train.py then reruns the point without it
  and the run records deterministic = False.
- jax: XLA on the CPU is deterministic. On a GPU, XLA needs `--xla_gpu_deterministic_ops=true` in
  XLA_FLAGS before JAX starts its backend (it cannot be turned on later): `prepare_process` adds it
  while it still can. XLA documents that under this flag compilation FAILS on select-and-scatter,
  which has no deterministic GPU kernel, and the gradient of max pooling (the U-Net's) is one; so the
  flag is only added after a child process compiled a max-pool gradient with it. Where that fails,
  or JAX started without the flag, runs train and record deterministic = False.
- torch: `torch.use_deterministic_algorithms(True, warn_only=True)`; recorded True on the CPU only.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import sys
from dataclasses import dataclass

from harness import environment

XLA_DETERMINISM = "--xla_gpu_deterministic_ops=true"
# A max-pool gradient (select-and-scatter), jitted: what the U-Net's train step needs from XLA.
PROBE = ("import jax, jax.numpy as jnp\n"
         "pool = lambda x: jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), 'VALID').sum()\n"
         "jax.jit(jax.grad(pool))(jnp.arange(64.0).reshape(1, 8, 8, 1)).block_until_ready()\n")


def backend_name() -> str:
    """The backend Keras uses or will use, without importing Keras (and so TensorFlow) to find out:
    KERAS_BACKEND, else keras.json's "backend", else tensorflow; Keras' own answer once it is imported."""
    if "keras" in sys.modules and hasattr(sys.modules["keras"], "backend"):
        return sys.modules["keras"].backend.backend()
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json")) as f:
            return str(json.load(f).get("backend", "tensorflow"))
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


def accelerator_visible() -> bool:
    """A cheap guess, before any framework is imported: an NVIDIA device node that
    CUDA_VISIBLE_DEVICES does not hide. (`speed.device_augment = "auto"` is resolved with it, in
    `config.resolve`, and `harness status` must answer without importing TensorFlow.)"""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*"))


@dataclass(frozen=True)
class Machine:
    """What an experiment's resolved settings depend on, as plain data: the Keras backend and whether
    an accelerator is visible. `config.resolve` reads it; tests pass one of their own."""
    backend: str = "tensorflow"
    accelerator: bool = False


def this_machine() -> Machine:
    """This process's machine, found cheaply (no framework imported)."""
    return Machine(backend_name(), accelerator_visible())


def command_prefix() -> str:
    """`KERAS_BACKEND=jax ` where another backend than TensorFlow runs: part of the command that
    reproduces a sweep (the report's "Reproduce" section quotes it)."""
    name = backend_name()
    return "" if name == "tensorflow" else f"KERAS_BACKEND={name} "


def jax_started() -> bool:
    """Whether JAX has created its backends (after which XLA_FLAGS are read and fixed)."""
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge   # private, but the only place that says so
        return bool(xla_bridge._backends)
    except (ImportError, AttributeError):
        return True                     # cannot tell: assume the flags are already read


# TensorFlow turns its oneDNN kernels on by itself on CPUs with AVX512_VNNI, AVX512_BF16 or AMX (the
# Xeon) and leaves them off on others (the AMD EPYC, AVX2): so the same sweep ran other kernels on the
# two kinds of CPU, with sums in another order. Measured on the EPYC (the tiny experiment's image_only
# and seed, docs/record/reports.md): turning oneDNN on there moves 22 of summary.csv's cells, up to
# 0.06 in val_miou, the size of the difference between the two kinds; off, as TensorFlow leaves it
# there, every cell is as before. Off everywhere, each kind runs TensorFlow's own (Eigen) kernels,
# compiled into the wheel for one instruction set. TF_ENABLE_ONEDNN_OPTS=1 in the environment keeps
# TensorFlow's choice.
ONEDNN = "TF_ENABLE_ONEDNN_OPTS"


def same_cpu_kernels() -> None:
    """oneDNN off before TensorFlow starts (ONEDNN above), unless the environment already says."""
    os.environ.setdefault(ONEDNN, "0")


# TensorFlow's generator dataset (tf.data.Dataset.from_generator, which the ImageDataGenerator feed
# and Keras' own Python-generator input go through) calls glibc's mallopt(M_MMAP_THRESHOLD, 128 KiB)
# when its op is built under Python 3.11 (TensorFlow's answer to memory growth with generators there,
# tensorflow/tensorflow#65675). A set threshold also turns off glibc's sliding one, so from then on
# every buffer over 128 KiB a train step allocates is mmapped and unmapped again. Measured at the
# default point (image_only, 64x64, 2 cores of the AMD EPYC): 7,370 mmap/munmap pairs an epoch
# against 78, about 21 GB unmapped an epoch, and epochs twice as long (page faults and TLB
# shootdowns; the whole process pays, tf.data feeds started after it too). Put back where glibc's
# sliding threshold ends (32 MiB, its maximum, and the trim threshold twice that), large buffers are
# reused again. Allocation only: not one number moves. No library sets this: mallopt through ctypes
# is glibc's documented interface; elsewhere (musl, macOS) this does nothing.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_MAX = 32 * 2 ** 20


def keep_large_buffers_reused() -> bool:
    """Undo TensorFlow's generator-dataset malloc setting (above): call it after such a dataset's op
    was built (from the generator itself, which runs after). -> whether glibc took the setting."""
    import ctypes
    try:
        mallopt = ctypes.CDLL(None).mallopt      # the C library this process runs on
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) and mallopt(M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD_MAX))


def prepare_process() -> None:
    """Before TensorFlow is imported: the same CPU kernels on every kind of CPU (ONEDNN above).
    Before the first Keras op: under JAX with a GPU visible, ask XLA for deterministic GPU kernels
    while it still can, if they compile the U-Net's ops (`xla_determinism_compiles`). Set for the whole
    process, also for runs with train.deterministic = false: such a run is then deterministic anyway,
    and says so. A flag already in XLA_FLAGS (either way) is the user's choice and kept."""
    same_cpu_kernels()
    if backend_name() != "jax" or jax_started() or not accelerator_visible():
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_gpu_deterministic_ops" in flags or environment.text(environment.XLA_DETERMINISM):
        return
    if xla_determinism_compiles():
        os.environ["XLA_FLAGS"] = f"{flags} {XLA_DETERMINISM}".strip()
    else:
        os.environ[environment.XLA_DETERMINISM] = "unavailable"     # the processes it starts inherit it


def xla_determinism_compiles(timeout: float = 180.0) -> bool:
    """Whether JAX, with XLA's deterministic GPU ops, compiles and runs a max-pool gradient (in a child
    process: in this one the flag could not be taken back). A few seconds, once per process tree."""
    import subprocess
    env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {XLA_DETERMINISM}".strip())
    try:
        return subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                              timeout=timeout).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


# The vector extensions that oneDNN (TensorFlow's CPU kernels) dispatches on at run time.
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile")


def host_cpu() -> str:
    """The CPU in words: its model, the vector extensions kernels are chosen by, and its cache.
    Float results on the CPU repeat exactly on CPUs that share this text, not across them: the CPU
    kernels pick their instructions and blocking by these (measured: the default sweep's `seed`
    variant, seed 1, ends at loss -2.42001 on an AVX-512/AMX Xeon, -2.42007 there with oneDNN capped
    at AVX2, and -2.42047 in the report committed from another machine)."""
    try:
        with open("/proc/cpuinfo") as f:
            first = f.read().split("\n\n")[0]          # the first processor's block
    except OSError:
        import platform
        return platform.processor() or platform.machine() or "unknown CPU"
    fields = dict((k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in first.splitlines()))
    flags = set(fields.get("flags", "").split())
    isa = " ".join(f for f in ISA_FLAGS if f in flags) or "no avx2"
    return f"{fields.get('model name', 'unknown CPU')}; {isa}; {fields.get('cache size', '? KB')} cache"


def select_device() -> str:
    """The device training runs on, in words ("CPU (Intel(R) Xeon(R) ...; avx2 avx512f; 16384 KB
    cache)", "GPU:0 (NVIDIA H200)"); under a backend other than TensorFlow the backend is named too
    ("CPU (jax; Intel(R) ...)")."""
    name = backend_name()
    if name == "tensorflow":
        return select_tensorflow_device()
    if name == "jax":
        prepare_process()
        import jax
        device = jax.devices()[0]
        if device.platform == "cpu":
            return f"CPU (jax; {host_cpu()})"
        return f"{device.platform.upper()}:0 {device.device_kind} (jax)"
    if name == "torch":
        import torch
        return f"GPU:0 {torch.cuda.get_device_name(0)} (torch)" if torch.cuda.is_available() else f"CPU (torch; {host_cpu()})"
    return f"unknown ({name})"


def select_tensorflow_device() -> str:
    import tensorflow as tf
    # Every run builds a new model, so its functions are traced anew: TensorFlow's "retracing"
    # warning says nothing useful here.
    tf.get_logger().setLevel("ERROR")
    gpus = tf.config.list_physical_devices("GPU")
    limit = environment.optional_number(environment.GPU_MEMORY_MB)   # `sweep --n-jobs`: workers sharing a GPU
    for gpu in gpus:
        try:
            if limit:
                tf.config.set_logical_device_configuration(
                    gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=int(limit))])
            else:
                tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass  # already initialized in this process
    return f"GPU:0 ({tf.config.experimental.get_device_details(gpus[0]).get('device_name', 'GPU')})" if gpus else f"CPU ({host_cpu()})"


def set_precision(mixed: bool) -> None:
    """Keras' global dtype policy, process-wide: mixed_float16 or float32. Set here alone: every
    session sets it as it starts (start_clean_session), so one session's choice never leaks into the next."""
    import keras
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")


def start_clean_session(seed: int, deterministic: bool, mixed_precision: bool = False) -> bool:
    """A fresh Keras graph and the same random streams for the same seed. -> whether the run IS
    deterministic (what was asked, as far as this backend and device can give it)."""
    prepare_process()
    import keras
    keras.backend.clear_session()
    set_precision(mixed_precision)
    keras.utils.set_random_seed(seed)
    name = backend_name()
    if name == "tensorflow":
        import tensorflow as tf
        if deterministic:
            tf.config.experimental.enable_op_determinism()
        else:
            # No public switch back; the internal one keeps a process that benchmarks both honest.
            from tensorflow.python.framework import config as tf_config
            tf_config.disable_op_determinism()
        return deterministic
    if name == "jax":
        import jax
        if jax.devices()[0].platform == "cpu":
            return True          # XLA on the CPU: same program, same inputs, same bits
        return "xla_gpu_deterministic_ops=true" in os.environ.get("XLA_FLAGS", "").replace(" ", "")
    if name == "torch":
        import torch
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
        return deterministic and not torch.cuda.is_available()
    return False


def is_determinism_error(error: BaseException) -> bool:
    """TensorFlow's refusal to run an op that has no deterministic kernel (on a GPU, under op determinism)."""
    return type(error).__name__ == "UnimplementedError" and "determinis" in str(error).lower()


def device_memory_bytes() -> int | None:
    """The accelerator's memory where the backend says (JAX); None on the CPU or where unknown."""
    if backend_name() != "jax":
        return None
    import jax
    device = jax.devices()[0]
    if device.platform == "cpu":
        return None
    try:
        return int((device.memory_stats() or {}).get("bytes_limit")) or None
    except (TypeError, ValueError, AttributeError):
        return None


def gpu_count() -> int:
    """GPUs on this host, without starting TensorFlow in the parent process."""
    import shutil
    import subprocess
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def gpu_memory_mib() -> int | None:
    """The first GPU's memory in MiB (nvidia-smi), None where unknown."""
    import subprocess
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20).stdout
        return int(out.split()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


@contextlib.contextmanager
def quiet_native_stderr():
    """Hold the C-level stderr (fd 2) while TensorFlow is imported: it prints `WARNING: All log
    messages before absl::InitializeLog()` and `I0000 ... cudart_stub` lines there before any Python
    log level applies. What it printed is shown after all if the import fails, or with HARNESS_DEBUG=1."""
    import tempfile
    if environment.debug():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def import_tensorflow_quietly() -> None:
    """Keras and TensorFlow (where installed) imported with the native start-up lines held. Under JAX,
    XLA is first asked for deterministic GPU kernels where they compile; it reads that once."""
    prepare_process()
    with quiet_native_stderr():
        try:
            import keras  # noqa: F401 - with the default backend this imports TensorFlow
            # Under another backend too, where installed: keras.utils.set_random_seed imports it
            # (to seed tf.data) at every run's start, and its start-up lines would come then.
            import tensorflow  # noqa: F401
        except ImportError:
            pass          # the command itself says what is missing, in one line


def compiled(fn):
    """`fn` (stateless: Model.stateless_call) compiled into one graph by the backend and traced once
    per input shape. Keras 3 has no backend-neutral way to compile a function of one's own (only its
    trainers' step functions), so this is the one place that picks: tf.function, jax.jit; torch runs
    it op by op."""
    name = backend_name()
    if name == "tensorflow":
        import tensorflow as tf
        return tf.function(fn, reduce_retracing=True, autograph=False)
    if name == "jax":
        import jax
        return jax.jit(fn)
    return fn
