import fcntl
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# As every harness process does (harness/backend.py prepare_process): the tests that train in their
# own process run the kernels the harness runs, on every kind of CPU.
from harness.backend import same_cpu_kernels  # noqa: E402 - light: the standard library alone

same_cpu_kernels()

ROOT = Path(__file__).resolve().parent.parent
ISBI = ROOT.parent / "shared" / "data" / "isbi2012-membrane"
TINY = ROOT / "tests" / "data" / "tiny.toml"
# What tests that stop, kill and resume sweeps set: a point's liveness written every second, and
# another process may take a point over 8 s after its owner stopped writing (defaults: 5 s, 20 s).
QUICK_TAKEOVER = {"HARNESS_HEARTBEAT_S": "1", "HARNESS_GRACE_S": "8"}

# `harness sweep tests/data/tiny.toml` (one seed, 12 epochs of 256 images 32x32) under TensorFlow, as
# measured on 2 cores of an AMD EPYC (AVX2) on 2026-12-07. The posted tanh loss goes negative but
# reaches no NaN in 12 epochs there (the default experiment's longer runs do:
# tests/test_default_sweep.py); under JAX it reaches NaN in the first epoch, so the backends are
# compared on the other four variants. Whether a healthy 12-epoch run still gains 0.05 a window
# (learning) or has reached its plateau (converged) moves with the augmentation stream: the tests
# hold the failures exactly and the healthy variants healthy (verdict.HEALTHY).
TINY_VERDICTS = {"seed": "negative_loss", "no_featurewise": "converged", "image_only": "learning",
                 "tanh_posted": "negative_loss", "tanh_corrected": "learning"}
TINY_VERDICTS_ON_EVERY_BACKEND = ("seed", "no_featurewise", "image_only", "tanh_corrected")


def missing(reason: str):
    """Something a test needs is absent. Locally the test skips and says why; in CI (CI=true) it
    fails instead, so CI can never pass by checking less."""
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


# The single longest test (444 s of CI's 37-minute first pass on 2 cores of the AMD EPYC): started
# first, so that no worker is left running it alone at the end.
LONGEST = "test_default_sweep.py::test_the_default_sweep_gives_the_committed_report"


def pytest_collection_modifyitems(config, items):
    """The slow tests first, the longest of all at the head, then the fast ones: with several xdist
    workers (CI's `-n 2 --dist worksteal`), the many short tests fill the end evenly instead of one
    worker finishing a long test while the other idles (the longest-first rule of scheduling).

    Under `mutmut run` (docs/development/mutation.md), a mutant's tests run fastest first instead, by
    mutmut's own timings: a killed mutant then stops at its cheapest failing test, not after a
    Keras-heavy one."""
    stats = Path("mutmut-stats.json")          # mutmut runs the tests from its mutants/ folder
    if "__mutmut_" in os.environ.get("MUTANT_UNDER_TEST", "") and stats.is_file():
        durations = json.loads(stats.read_text())["duration_by_test"]
        items.sort(key=lambda item: durations.get(item.nodeid, 0.0))
        return
    items.sort(key=lambda item: (not item.nodeid.endswith(LONGEST), item.get_closest_marker("slow") is None))


@pytest.fixture(autouse=True)
def no_kept_model():
    """Each test trains from its own compiled model: one kept by an earlier test in this worker
    (harness/compiled.py) would skip the traces a test counts, and hold its memory."""
    from harness import compiled
    compiled.forget()
    yield
    compiled.forget()


def shared_dir(tmp_path_factory) -> Path:
    """A folder every xdist worker of this test session shares (the session's base temp), else this
    process's own base temp."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def tiny_tf_sweep(tmp_path_factory) -> dict:
    """`harness sweep tests/data/tiny.toml` under TensorFlow, once per test session however many workers
    ask (the first takes a lock and sweeps, the others wait and read): {"results": its folder,
    "returncode", "stdout", "stderr", "summary": {variant: summary.csv row} as swept, before any test
    touches the folder}."""
    root = shared_dir(tmp_path_factory)
    folder, record = root / "tiny-tf-sweep", root / "tiny-tf-sweep.json"
    with open(root / "tiny-tf-sweep.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not record.exists():
            folder.mkdir(exist_ok=True)
            results = folder / "results"
            run = run_harness("sweep", TINY, "--results", results, cwd=folder, env={"KERAS_BACKEND": "tensorflow"},
                              timeout=1500)
            summary = {}
            if run.returncode == 0:
                import csv
                with open(results / "tiny" / "summary.csv") as f:
                    summary = {row["variant"]: row for row in csv.DictReader(f)}
            record.write_text(json.dumps({"results": str(results), "cwd": str(folder), "returncode": run.returncode,
                                          "stdout": run.stdout, "stderr": run.stderr, "summary": summary}))
    return json.loads(record.read_text())


@pytest.fixture
def isbi_path():
    if not (ISBI / "image").is_dir():
        missing(f"shared ISBI data not found at {ISBI} (only present beside the project checkout)")
    return ISBI


@pytest.fixture
def cli(capfd, monkeypatch, tmp_path):
    """The real `harness` command line, in this process (TensorFlow is imported once per test session,
    not once per call), from tmp_path. Returns (exit code, stdout, stderr), read at the file
    descriptors, so what native code writes to stderr is seen too."""
    from harness.cli import main
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HARNESS_DEBUG", raising=False)

    def run(*args):
        capfd.readouterr()
        code = main([str(a) for a in args])
        out, err = capfd.readouterr()
        return code, out, err
    return run


# Every child the tests start, each the leader of a process group of its own: killed with its group
# when its test ends, however it ends (a failed assert, pytest-timeout's limit, Ctrl-C), by no_orphans.
CHILDREN: list[subprocess.Popen] = []


def kill_group(child: subprocess.Popen) -> None:
    """SIGKILL to the child's process group (its own workers and grandchildren too), then reap it."""
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass                       # nothing of the group is left
    try:
        child.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass


@pytest.fixture(autouse=True)
def no_orphans():
    """No child outlives its test: pytest-timeout fails a test by raising in it, so this teardown runs
    then too (tests/test_ci_guards.py proves it)."""
    yield
    while CHILDREN:
        kill_group(CHILDREN.pop())


def start_harness(*args, cwd=None, env=None, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                  **popen) -> subprocess.Popen:
    """The real `harness` command line in a child process: the one way the tests start it. `env`: variables
    set on top of this process's (None unsets one); tests/ is importable, for the user code of the test
    experiments; TensorFlow's C++ log is quiet and the output unbuffered, so the tests can read it live.
    The child leads a process group of its own, killed when the test ends (no_orphans)."""
    full = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1",
                PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    full.pop("HARNESS_DEBUG", None)
    for key, value in (env or {}).items():
        if value is None:
            full.pop(key, None)
        else:
            full[key] = value
    popen.setdefault("start_new_session", True)
    child = subprocess.Popen([sys.executable, "-m", "harness.cli", *map(str, args)], cwd=cwd or ROOT, env=full,
                             stdout=stdout, stderr=stderr, text=True, **popen)
    CHILDREN.append(child)
    return child


def run_harness(*args, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """start_harness, waited for: (returncode, stdout, stderr) as a CompletedProcess. A child still
    running after `timeout` s is killed and the test fails with what it printed."""
    child = start_harness(*args, **kwargs)
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(child)
        out, err = child.communicate()
        pytest.fail(f"harness {' '.join(map(str, args))} still running after {timeout} s:\n{(out or '')[-2000:]}"
                    f"\n{(err or '')[-2000:]}")
    return subprocess.CompletedProcess(child.args, child.returncode, out, err)


def free_port() -> int:
    """A TCP port nothing listens on now (for an MLflow UI or server a test starts)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_until(proc, text: str, timeout: float = 300) -> str:
    """Read a child's stdout until a line contains `text`, and return what was read. A child that
    hangs or ends first fails the test with what it printed, after `timeout` seconds at most: a
    plain readline() would block the test (and CI) for ever. Reads the pipe's file descriptor
    directly (select + os.read), so a later communicate() on the same child still works."""
    import select
    import time
    fd = proc.stdout.fileno()
    seen = getattr(proc, "_unread", b"")
    deadline = time.monotonic() + timeout
    while True:
        lines = seen.split(b"\n")
        for i, line in enumerate(lines[:-1]):
            if text.encode() in line:
                proc._unread = b"\n".join(lines[i + 1:])
                return b"\n".join(lines[:i + 1]).decode(errors="replace") + "\n"
        left = deadline - time.monotonic()
        ready = select.select([fd], [], [], max(0.0, left))[0] if left > 0 else []
        chunk = os.read(fd, 65536) if ready else b""
        if not chunk:
            reason = "ended" if ready else f"printed no such line within {timeout:.0f} s"
            raise AssertionError(f"the child {reason} before a line with {text!r}; it printed:\n"
                                 + seen.decode(errors="replace")[-3000:])
        seen += chunk


def need_module(name: str, install: str):
    """importorskip that fails under CI=true (the test extra installs it there)."""
    import importlib
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"{name} is not importable ({install})")
