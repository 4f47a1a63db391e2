"""CI cannot pass by checking less: what a test needs and lacks fails it under CI=true (skips
locally, with the reason), and a test that hangs is stopped by its timeout with a traceback."""
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT, missing


def test_missing_skips_locally_and_fails_in_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no PostgreSQL"):
        missing("no PostgreSQL")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true and no PostgreSQL"):
        missing("no PostgreSQL")


def pytest_run(*args, env_extra=None, cwd=ROOT):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", *args],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


@pytest.mark.slow   # a fresh process or a real training: the full suite runs it, not the fast set
def test_the_browser_test_fails_in_ci_without_chromium_and_says_so():
    run = pytest_run("tests/test_report_browser.py::test_verdict_table_comes_first_with_one_row_per_variant",
                     env_extra={"CI": "true", "HARNESS_CHROMIUM": "/no/such/chromium"})
    assert run.returncode == 1, run.stdout[-2000:]
    assert "CI=true and Chromium not found at /no/such/chromium" in run.stdout


def test_a_test_blocked_on_a_silent_child_is_stopped_by_the_timeout(tmp_path):
    (tmp_path / "test_hangs.py").write_text(textwrap.dedent("""
        import subprocess, sys
        def test_reads_a_child_that_never_prints():
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                     stdout=subprocess.PIPE, text=True)
            try:
                child.stdout.readline()          # blocks: the child prints nothing
            finally:
                child.kill()
    """))
    # The project's own pytest settings, its `timeout` line shortened to 3 s: without that line in
    # pyproject.toml there is nothing to shorten, and this test fails.
    run = pytest_run("-c", str(settings_with_timeout(tmp_path, 3)), "--rootdir", str(tmp_path),
                     str(tmp_path / "test_hangs.py"), cwd=tmp_path)
    assert run.returncode == 1, run.stdout[-2000:]
    assert "Timeout" in run.stdout and "readline" in run.stdout      # failed, with where it hung


def settings_with_timeout(folder, seconds: int):
    """A copy of the project's pyproject.toml whose pytest-timeout `timeout` is `seconds`."""
    import re
    text = (ROOT / "pyproject.toml").read_text()
    shortened, found = re.subn(r"(?m)^timeout = \d+$", f"timeout = {seconds}", text)
    assert found == 1, "pyproject.toml sets no pytest-timeout `timeout` for the suite"
    path = folder / "pyproject.toml"
    path.write_text(shortened)
    return path


def test_a_child_of_a_test_that_timed_out_is_killed_with_its_own_children(tmp_path):
    """A test that starts `harness` (here `harness doctor` on a script that starts a grandchild and
    sleeps) and then hangs: pytest-timeout fails it, and neither the child nor the grandchild survives."""
    pids = tmp_path / "pids"
    (tmp_path / "sleeper.py").write_text(textwrap.dedent(f"""
        import os, subprocess, sys, time
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        open({str(pids)!r}, "w").write(f"{{os.getpid()}} {{grandchild.pid}}")
        time.sleep(600)
    """))
    (tmp_path / "test_orphan.py").write_text(textwrap.dedent(f"""
        import time
        from conftest import start_harness
        def test_starts_a_child_and_hangs():
            start_harness("doctor", {str(tmp_path / "sleeper.py")!r}, cwd={str(tmp_path)!r})
            time.sleep(600)
    """))
    run = pytest_run("-c", str(settings_with_timeout(tmp_path, 20)), "--rootdir", str(tmp_path), "-p", "conftest",
                     str(tmp_path / "test_orphan.py"), cwd=tmp_path,
                     env_extra={"PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])})
    assert run.returncode == 1 and "Timeout" in run.stdout, run.stdout[-2000:]
    started = [int(p) for p in pids.read_text().split()]
    assert len(started) == 2
    for pid in started:
        assert not alive(pid), f"process {pid} outlived its test"


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie that its parent has not reaped yet counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_ci_runs_the_backend_tests_again_under_jax():
    """.ci/run's second pass: the training-path tests, under KERAS_BACKEND=jax (tests/test_backend.py
    asserts, under that pass, that Keras really runs on JAX)."""
    script = (ROOT / ".ci" / "run").read_text()
    assert "&& KERAS_BACKEND=jax .venv/bin/pytest -q -n 2 -m backend" in script


def test_the_readme_states_the_test_command_ci_runs():
    """The README's quick start runs the tests as `.ci/run` runs them on a fresh clone (its install is
    quiet there), the 25 slowest tests printed in the output."""
    ci = next(line for line in (ROOT / ".ci" / "run").read_text().splitlines() if "pytest" in line)
    command = ci[ci.index(".venv/bin/pytest"):]
    assert command in (ROOT / "README.md").read_text()
    assert "--durations=25" in command


def test_the_slow_tests_run_first_and_the_longest_at_the_head():
    """CI's two workers share the end evenly only if the long tests start first (conftest's
    pytest_collection_modifyitems); the order within each group stays the files' own."""
    import conftest

    class Item:
        def __init__(self, nodeid, slow):
            self.nodeid, self.slow = nodeid, slow

        def get_closest_marker(self, name):
            return object() if name == "slow" and self.slow else None

    items = [Item("tests/test_a.py::fast_one", False), Item("tests/test_a.py::slow_one", True),
             Item(f"tests/{conftest.LONGEST}", True), Item("tests/test_b.py::fast_two", False),
             Item("tests/test_b.py::slow_two", True)]
    conftest.pytest_collection_modifyitems(None, items)
    assert [i.nodeid.split("::")[-1] for i in items] == [conftest.LONGEST.split("::")[-1], "slow_one", "slow_two",
                                                         "fast_one", "fast_two"]
