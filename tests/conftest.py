import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parent.parent
ISBI = ROOT.parent / "shared" / "data" / "isbi2012-membrane"


def pytest_collection_modifyitems(config, items):
    """Under `mutmut run` (README: "Mutation testing"), a mutant's tests run fastest first, by
    mutmut's own timings: a killed mutant then stops at its cheapest failing test, not after a
    Keras-heavy one. Nothing changes outside mutmut."""
    stats = Path("mutmut-stats.json")          # mutmut runs the tests from its mutants/ folder
    if "__mutmut_" not in os.environ.get("MUTANT_UNDER_TEST", "") or not stats.is_file():
        return
    durations = json.loads(stats.read_text())["duration_by_test"]
    items.sort(key=lambda item: durations.get(item.nodeid, 0.0))


@pytest.fixture
def isbi_path():
    if not (ISBI / "image").is_dir():
        pytest.skip(f"shared ISBI data not found at {ISBI} (only present beside the project checkout)")
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
