"""harness: compare Keras training variants (the whitening case first); see README.md."""
from __future__ import annotations

from pathlib import Path


def load_runs(source: str | Path, experiment: str, kind: str = "point"):
    """Every (variant, seed) run of `experiment` as a pandas DataFrame, for notebooks.

    `source` is a results folder (its MLflow store `mlflow.db`) or any MLflow tracking URI;
    `kind="tune"` gives the trials of `harness tune` instead of the grid's runs."""
    from harness.tracking import default_tracking_uri, load_runs as read
    text = str(source)
    uri = text if ("://" in text or text.startswith("sqlite:")) else default_tracking_uri(Path(source))
    return read(uri, experiment, kind=kind)
