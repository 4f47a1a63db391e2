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
    # The project's own pytest settings (pytest-timeout's `timeout`), with a 3 s limit for this run.
    run = pytest_run("-c", str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path), "-o", "timeout=3",
                     str(tmp_path / "test_hangs.py"), cwd=tmp_path)
    assert run.returncode == 1, run.stdout[-2000:]
    assert "Timeout" in run.stdout and "readline" in run.stdout      # failed, with where it hung
