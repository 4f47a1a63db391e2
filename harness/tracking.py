"""The only module that speaks to MLflow: a parent run per sweep, a nested run per (variant, seed),
and the runs read back as a pandas DataFrame (MLflow is the source of truth for every report)."""
from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from pathlib import Path

import pandas as pd

from harness.errors import StorageError

POINT_TAG = "harness.point"        # "variant/seed" on every nested run
KIND_TAG = "harness.kind"          # "sweep" (parent) or "point" (nested)


def default_tracking_uri(results: Path) -> str:
    return f"sqlite:///{(results / 'mlflow.db').resolve()}"


def client_for(tracking_uri: str):
    # Fail fast on an unreachable server instead of MLflow's default minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow.tracking import MlflowClient
    return MlflowClient(tracking_uri=tracking_uri)


class Tracker:
    """Logs one sweep. `results` is only used to place artifacts beside a local SQLite store."""

    def __init__(self, tracking_uri: str, experiment: str, results: Path):
        self.uri = tracking_uri
        self.local = tracking_uri.startswith("sqlite:") or tracking_uri.startswith("file:")
        # Two workers opening one fresh SQLite store race in its schema migration: take turns.
        with local_lock(results / ".mlflow.lock" if self.local else None):
            try:
                self.client = client_for(tracking_uri)
            except Exception as e:  # noqa: BLE001 - the store cannot even be opened
                raise StorageError(f"MLflow tracking store {tracking_uri} is not usable: {first_line(e)}") from None
            self.experiment_id = self.ensure_experiment(experiment, results)
        self.parent_id: str | None = None
        self.nonfinite: dict[str, set] = {}

    def ensure_experiment(self, name: str, results: Path) -> str:
        try:
            found = self.client.get_experiment_by_name(name)
            if found is not None:
                return found.experiment_id
            # Artifacts beside a local store, never in the current directory.
            location = (results / "mlartifacts").resolve().as_uri() if self.local else None
            try:
                return self.client.create_experiment(name, artifact_location=location)
            except Exception:  # noqa: BLE001 - workers starting together race to create it: use the winner's
                found = self.client.get_experiment_by_name(name)
                if found is None:
                    raise
                return found.experiment_id
        except Exception as e:  # noqa: BLE001 - any failure here means the store is unusable
            raise StorageError(f"MLflow tracking store {self.uri} is not usable: {first_line(e)}") from None

    def start_sweep(self, run_id: str | None, params: dict, tags: dict) -> str:
        """Open the sweep's parent run, or reopen it when resuming (one parent run per study)."""
        if run_id is not None:
            try:
                self.client.update_run(run_id, status="RUNNING")
                self.parent_id = run_id
                return run_id
            except Exception:  # noqa: BLE001 - deleted or foreign run: start a new parent
                pass
        run = self.client.create_run(self.experiment_id, run_name=tags.get("harness.experiment", "sweep"),
                                     tags={KIND_TAG: "sweep", **tags})
        self.parent_id = run.info.run_id
        self.log_params(self.parent_id, params)
        return self.parent_id

    def end_sweep(self, status: str = "FINISHED") -> None:
        if self.parent_id:
            self.client.set_terminated(self.parent_id, status=status)

    def start_point(self, variant: str, seed: int, params: dict, tags: dict) -> str:
        run = self.client.create_run(
            self.experiment_id, run_name=f"{variant}-s{seed}",
            tags={"mlflow.parentRunId": self.parent_id, KIND_TAG: "point", POINT_TAG: f"{variant}/{seed}",
                  "variant": variant, "seed": str(seed), **tags})
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def log_params(self, run_id: str, params: dict) -> None:
        from mlflow.entities import Param
        items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i:i + 100])

    def log_epoch(self, run_id: str, epoch: int, metrics: dict) -> None:
        """Per-epoch metrics. NaN/Inf are never logged as metric values (they break MLflow's UI);
        the first epoch each metric went non-finite is kept as a tag `nonfinite.<metric>`."""
        from mlflow.entities import Metric, RunTag
        now = int(1000 * time.time())
        numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        finite = [Metric(k, v, now, epoch) for k, v in numbers.items() if math.isfinite(v)]
        seen = self.nonfinite.setdefault(run_id, set())
        fresh = [k for k, v in numbers.items() if not math.isfinite(v) and k not in seen]
        seen.update(fresh)
        tags = [RunTag(f"nonfinite.{k}", f"{numbers[k]} at epoch {epoch}") for k in fresh]
        if finite or tags:
            self.client.log_batch(run_id, metrics=finite, tags=tags)

    def set_tags(self, run_id: str, tags: dict) -> None:
        from mlflow.entities import RunTag
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_figure(self, run_id: str, figure, name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            figure.savefig(path, dpi=80, bbox_inches="tight")
            self.client.log_artifact(run_id, str(path))

    def end_point(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status=status)

    def fail_if_running(self, run_ids: list[str], reason: str) -> int:
        """Mark the given runs FAILED, with `reason`, where they are still RUNNING."""
        failed = 0
        for run_id in run_ids:
            try:
                if self.client.get_run(run_id).info.status != "RUNNING":
                    continue
            except Exception:  # noqa: BLE001 - a run deleted by hand is nothing to fix
                continue
            self.client.set_tag(run_id, "failure", reason)
            self.client.set_terminated(run_id, status="FAILED")
            failed += 1
        return failed


@contextlib.contextmanager
def local_lock(path: Path | None):
    """An exclusive lock on a file beside a local store (processes on one machine); None: no lock."""
    if path is None:
        yield
        return
    import fcntl
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def load_runs(tracking_uri: str, experiment: str, with_history: bool = True, study: str | None = None,
              kind: str = "point", base_study: str | None = None) -> pd.DataFrame:
    """Every finished (variant, seed) run of `experiment`, newest first per point, as a DataFrame.

    Columns: run_id, variant, seed, status, params.*, metrics.* (last values), tags.*, and with
    `with_history` a `history` column holding {metric: [values per epoch]}. With `study`, only the
    runs of that Optuna study (one setting of the experiment). `kind="tune"` gives `harness tune`'s
    trials instead, and `base_study` those tuned from one setting of the experiment.
    """
    client = client_for(tracking_uri)
    try:
        exp = client.get_experiment_by_name(experiment)
    except Exception as e:  # noqa: BLE001
        raise StorageError(f"MLflow tracking store {tracking_uri} is not usable: {first_line(e)}") from None
    if exp is None:
        return pd.DataFrame()
    where = f"tags.`{KIND_TAG}` = '{kind}'" + (f" and tags.`optuna.study` = '{study}'" if study else "")
    where += f" and tags.`tune.base_study` = '{base_study}'" if base_study else ""
    runs = client.search_runs([exp.experiment_id], filter_string=where,
                              order_by=["attributes.start_time DESC"], max_results=10000)
    rows = []
    for run in runs:
        row = {"run_id": run.info.run_id, "status": run.info.status, "start_time": run.info.start_time,
               "variant": run.data.tags.get("variant"), "seed": int(run.data.tags.get("seed", -1))}
        row.update({f"params.{k}": v for k, v in run.data.params.items()})
        row.update({f"metrics.{k}": v for k, v in run.data.metrics.items()})
        row.update({f"tags.{k}": v for k, v in run.data.tags.items()})
        if with_history and run.info.status == "FINISHED":
            row["history"] = {key: [m.value for m in sorted(client.get_metric_history(run.info.run_id, key),
                                                             key=lambda m: m.step)]
                              for key in run.data.metrics}
        rows.append(row)
    return pd.DataFrame(rows)


def artifact_path(tracking_uri: str, run_id: str, name: str) -> str | None:
    """Download one artifact of a run to a temporary folder; None when it is not there."""
    client = client_for(tracking_uri)
    try:
        return client.download_artifacts(run_id, name, tempfile.mkdtemp(prefix="harness-"))
    except Exception:  # noqa: BLE001 - a missing figure should not stop a report
        return None
