"""harness: compare Keras training variants (the whitening case first); see README.md."""
from __future__ import annotations

from pathlib import Path

from harness.paths import DEFAULT_RESULTS


def load_runs(source: str | Path, experiment: str, kind: str = "point"):
    """Every (variant, seed) run of `experiment` as a pandas DataFrame, for notebooks.

    `source` is a results folder (its MLflow store `mlflow.db`) or any MLflow tracking URI;
    `kind="tune"` gives the trials of `harness tune` instead of the grid's runs."""
    from harness.tracking import default_tracking_uri, load_runs as read
    text = str(source)
    uri = text if ("://" in text or text.startswith("sqlite:")) else default_tracking_uri(Path(source))
    return read(uri, experiment, kind=kind)


def autolog(epochs: int = 0, results: str | Path | None = DEFAULT_RESULTS, tracking_uri: str | None = None):
    """Diagnose every `model.fit` of this process from here on, as `harness doctor` does for a script:
    each fit's diagnosis is printed on stderr when it ends and kept in the returned session
    (`session.fits[-1].causes`, `.findings`; `session.causes` over every fit). `epochs`: cap every fit
    (0: as asked). Each fit is also an MLflow run in <results>/mlflow.db (`results=None`: not tracked).
    `harness.doctor.stop()` undoes it."""
    from harness.doctor import autolog as start
    return start(epochs=epochs, results=None if results is None else str(results), tracking_uri=tracking_uri)
