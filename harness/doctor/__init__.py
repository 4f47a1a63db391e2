"""`harness doctor`: the diagnosis in a user's own, unchanged Keras training script.

One module per job: script.py runs the script as Python would; hooks.py attaches to Keras and to the
data objects when the script imports them; lineage.py records where the script made, fitted and
flowed its data objects; observe.py watches what each fit receives; fit.py examines one fit (its
inputs, the loss probe, the honest metric, training health); judge.py turns that into findings with
the check's, the verdicts' and the health monitor's own rules (harness/causes.py tells causes from
symptoms); output.py prints, writes the JSON and the report, and tracks each fit in MLflow;
session.py holds one session, and `autolog` starts one from inside a script or a notebook.
"""
from __future__ import annotations

from harness.paths import DEFAULT_RESULTS


def autolog(epochs: int = 0, results=DEFAULT_RESULTS, tracking_uri: str | None = None):
    """Diagnose every `model.fit` of this process from here on (see harness.doctor.session.autolog)."""
    from harness.doctor.session import autolog as start
    return start(epochs=epochs, results=results, tracking_uri=tracking_uri)


def stop() -> None:
    """Undo `autolog`."""
    from harness.doctor.session import stop as end
    end()


def callback(train_sample=None, validation_data=None):
    """A Keras callback that diagnoses the fit it is handed to (see harness.doctor.session.callback)."""
    from harness.doctor.session import callback as make
    return make(train_sample, validation_data)
