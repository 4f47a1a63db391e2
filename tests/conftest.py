import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parent.parent
ISBI = ROOT.parent / "shared" / "data" / "isbi2012-membrane"


@pytest.fixture
def isbi_path():
    if not (ISBI / "image").is_dir():
        pytest.skip(f"shared ISBI data not found at {ISBI} (only present beside the project checkout)")
    return ISBI
