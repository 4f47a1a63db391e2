"""The only module that speaks to MLflow: a parent run per sweep, a nested run per (variant, seed),
and the runs read back as a pandas DataFrame (MLflow is the source of truth for every report)."""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from harness.errors import HarnessError, StorageError

POINT_TAG = "harness.point"        # "variant/seed" on every nested run
KIND_TAG = "harness.kind"          # "sweep" (parent) or "point" (nested)
COMMANDS_TAG = "harness.commands"  # every command that ran the parent's study, one per line
EXPERIMENT_TAG = "harness.experiment"  # the experiment's name, on a sweep's or a tune's parent run
OPTUNA_STUDY_TAG = "optuna.study"  # the Optuna study a grid point or tune trial belongs to
OPTUNA_TRIAL_TAG = "optuna.trial"  # its trial's number in that study
TUNE_BASE_STUDY_TAG = "tune.base_study"  # a tune trial's grid study: the setting it was tuned from
GIT_COMMIT_TAG = "mlflow.source.git.commit"  # the harness checkout's commit (MLflow's own name)
GIT_DIRTY_TAG = "mlflow.source.git.dirty"    # "true" where tracked code had uncommitted changes
TAG_COLUMN = "tags."               # load_runs' column of a tag: "tags." + its name
# MLflow 3's UI opens an experiment of this kind on its training runs, not on the GenAI (traces) view.
KIND_OF_EXPERIMENT = ("mlflow.experimentKind", "custom_model_development")


def default_tracking_uri(results: Path) -> str:
    return f"sqlite:///{(results / 'mlflow.db').resolve()}"


def client_for(tracking_uri: str):
    # Fail fast on an unreachable server instead of MLflow's default minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # "Creating initial MLflow database tables..." on a fresh SQLite store is MLflow's INFO, not ours.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    from mlflow.tracking import MlflowClient
    return MlflowClient(tracking_uri=tracking_uri)


class Tracker:
    """Logs one sweep. `results` is only used to place artifacts beside a local SQLite store."""

    def __init__(self, tracking_uri: str, experiment: str, results: Path, system_metrics: bool = False):
        self.uri = tracking_uri
        self.system_metrics = system_metrics
        self.monitors: dict[str, object] = {}
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
        self.source = source_tags("harness")
        self.dataset = None       # an mlflow DatasetInput, attached to every run started after use_dataset

    def ensure_experiment(self, name: str, results: Path) -> str:
        try:
            found = self.client.get_experiment_by_name(name)
            if found is not None:
                if KIND_OF_EXPERIMENT[0] not in found.tags:     # a store written before the kind was set
                    with contextlib.suppress(Exception):          # workers racing to set it: one wins
                        self.client.set_experiment_tag(found.experiment_id, *KIND_OF_EXPERIMENT)
                return found.experiment_id
            # Artifacts beside a local store, never in the current directory.
            location = (results / "mlartifacts").resolve().as_uri() if self.local else None
            try:
                return self.client.create_experiment(name, artifact_location=location, tags=dict([KIND_OF_EXPERIMENT]))
            except Exception:  # noqa: BLE001 - workers starting together race to create it: use the winner's
                found = self.client.get_experiment_by_name(name)
                if found is None:
                    raise
                return found.experiment_id
        except Exception as e:  # noqa: BLE001 - any failure here means the store is unusable
            raise StorageError(f"MLflow tracking store {self.uri} is not usable: {first_line(e)}") from None

    def start_sweep(self, run_id: str | None, params: dict, tags: dict, record_command: bool = True) -> str:
        """Open the sweep's parent run, or reopen it when resuming (one parent run per study).
        `record_command`: False for an --n-jobs worker, whose parent recorded the command."""
        command = params.get("command", "")
        self.source = source_tags(source_name(command))
        if run_id is not None:
            try:
                self.client.update_run(run_id, status="RUNNING")
                self.parent_id = run_id
                if record_command:
                    self.add_command(run_id, command)
                return run_id
            except Exception:  # noqa: BLE001 - deleted or foreign run: start a new parent
                pass
        run = self.client.create_run(self.experiment_id, run_name=tags.get(EXPERIMENT_TAG, "sweep"),
                                     tags={KIND_TAG: "sweep", **self.source, **tags})   # tags may name another kind
        self.parent_id = run.info.run_id
        self.log_params(self.parent_id, params)
        if record_command:
            self.add_command(self.parent_id, command)
        return self.parent_id

    def add_command(self, run_id: str, command: str) -> None:
        """Params cannot change, so a resumed sweep's own command (its --set flags may add seeds or
        variants) is appended to a tag: the report names every command that trained the study."""
        if not command:
            return
        known = self.client.get_run(run_id).data.tags.get(COMMANDS_TAG, "")
        if command not in known.splitlines():
            self.client.set_tag(run_id, COMMANDS_TAG, "\n".join(filter(None, [known, command]))[-5000:])

    def log_config(self, run_id: str, raw: dict) -> None:
        """The resolved experiment (file + --set + defaults) as `config.json`, to rerun it exactly."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "config.json"
            path.write_text(json.dumps(raw, indent=1, sort_keys=True, default=str))
            self.client.log_artifact(run_id, str(path))

    def use_dataset(self, data: dict, digest: str, description: str) -> None:
        """Log the dataset (the config's `data` section) as an MLflow input of the parent run and of
        every run started after, with the harness's own digest (equal digests, equal pixels and split)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag
        source = data["path"] if data["source"] == "folder" else json.dumps(data, sort_keys=True, default=str)
        name = Path(str(data["path"])).name if data["source"] == "folder" else "synthetic"
        dataset = Dataset(name=name, digest=digest, source_type=data["source"], source=str(source),
                          profile=json.dumps({"description": description}))
        self.dataset = DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])
        if self.parent_id:
            self.log_dataset(self.parent_id)

    def log_dataset(self, run_id: str) -> None:
        """MLflow checks for the dataset, then inserts it: --n-jobs workers doing so at once collide on
        its key, and the loser's retry finds the winner's row."""
        for attempt in range(4):
            try:
                self.client.log_inputs(run_id, datasets=[self.dataset])
                return
            except Exception:  # noqa: BLE001 - a unique-key race; anything lasting is raised on the last try
                if attempt == 3:
                    raise
                time.sleep(0.2 + 0.3 * attempt)

    def end_sweep(self, status: str = "FINISHED") -> None:
        if self.parent_id:
            self.client.set_terminated(self.parent_id, status=status)

    def start_point(self, variant: str, seed: int, params: dict, tags: dict) -> str:
        run = self.client.create_run(
            self.experiment_id, run_name=f"{variant}-s{seed}",
            tags={"mlflow.parentRunId": self.parent_id, KIND_TAG: "point", POINT_TAG: f"{variant}/{seed}",
                  "variant": variant, "seed": str(seed), **self.source, **tags})
        self.log_params(run.info.run_id, params)
        if self.dataset is not None:
            self.log_dataset(run.info.run_id)
        if self.system_metrics:
            self.monitors[run.info.run_id] = self.start_system_metrics(run.info.run_id)
        return run.info.run_id

    def start_system_metrics(self, run_id: str):
        """CPU, memory, disk, network (and GPU where pynvml sees one) as `system/*` metrics of the run,
        sampled every 10 s (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL). MLflow's monitor itself: its
        fluent switch (`start_run(log_system_metrics=True)`) needs the fluent active run, and the
        harness logs through MlflowClient so that several runs stay open at once."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
        monitor = SystemMetricsMonitor(run_id, tracking_uri=self.uri)
        monitor.start()
        return monitor

    def log_model(self, run_id: str, model, name: str = "model.keras") -> None:
        """The trained model as a `.keras` file artifact: `keras.saving.load_model` reads it back."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            model.save(path)
            self.client.log_artifact(run_id, str(path))

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
            # Synchronous, 9.6 ms an epoch on SQLite: a failed write raises here, inside the training,
            # and the run crashes. MLflow's async queue (log_batch(synchronous=False)) took the wait
            # off the training thread, but ending a run then shuts the queue down, and its thread
            # sees the stop only at its next 1 s `queue.get` timeout (MLflow 3.17,
            # async_logging_queue.py): 0.94 s a point, more than the 15 writes it saved.
            self.client.log_batch(run_id, metrics=finite, tags=tags)

    def set_tags(self, run_id: str, tags: dict) -> None:
        from mlflow.entities import RunTag
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_figure(self, run_id: str, figure, name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            figure.savefig(path, dpi=80)     # laid out by plots.py: no second, "tight" draw
            self.client.log_artifact(run_id, str(path))

    def end_point(self, run_id: str, status: str) -> None:
        monitor = self.monitors.pop(run_id, None)
        if monitor is not None:
            monitor.finish()
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


def log_finished_run(tracking_uri: str, experiment: str, results: Path, run_name: str, params: dict,
                     history: dict[str, list[float]], tags: dict, kind: str) -> str:
    """One finished run of `kind` (a `harness doctor` fit) in `experiment`: its params, its per-epoch
    history as metrics (non-finite values as tags, as log_epoch does), its tags. -> the run id."""
    tracker = Tracker(tracking_uri, experiment, results)
    run = tracker.client.create_run(tracker.experiment_id, run_name=run_name,
                                    tags={KIND_TAG: kind, **source_tags(f"harness {kind}"),
                                          **{k: str(v) for k, v in tags.items()}})
    run_id = run.info.run_id
    tracker.log_params(run_id, params)
    epochs = max((len(v) for v in history.values()), default=0)
    for epoch in range(epochs):
        tracker.log_epoch(run_id, epoch + 1, {k: v[epoch] for k, v in history.items() if epoch < len(v)})
    tracker.client.set_terminated(run_id, status="FINISHED")
    return run_id


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


def source_name(command: str) -> str:
    """What MLflow's Source column shows: the harness subcommand (the UI keeps the last path part)."""
    words = [w for w in command.split() if not w.startswith("KERAS_BACKEND=")]
    return " ".join(words[:2]) if words[:1] == ["harness"] else "harness"


def source_tags(name: str) -> dict:
    """MLflow's own source tags: the entry point and the harness checkout's git commit and dirty state."""
    tags = {"mlflow.source.name": name, "mlflow.source.type": "LOCAL"}
    tags.update(git_state())
    return tags


@functools.lru_cache(maxsize=1)
def git_state() -> dict:
    """Full commit, branch and dirty state of the harness source checkout; {} when not in git."""
    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        if not commit:
            return {}
        # Only tracked code counts: results and stores written inside the checkout (results/, where
        # the committed reports live and are regenerated) are not code.
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", ":(top)", ":(top,exclude)results"))
        return {GIT_COMMIT_TAG: commit, "mlflow.source.git.branch": git("rev-parse", "--abbrev-ref", "HEAD"),
                GIT_DIRTY_TAG: str(dirty).lower()}
    except (OSError, subprocess.SubprocessError):
        return {}


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
    where = f"tags.`{KIND_TAG}` = '{kind}'" + (f" and tags.`{OPTUNA_STUDY_TAG}` = '{study}'" if study else "")
    where += f" and tags.`{TUNE_BASE_STUDY_TAG}` = '{base_study}'" if base_study else ""
    runs = client.search_runs([exp.experiment_id], filter_string=where,
                              order_by=["attributes.start_time DESC"], max_results=10000)
    rows = []
    for run in runs:
        row = {"run_id": run.info.run_id, "status": run.info.status, "start_time": run.info.start_time,
               "variant": run.data.tags.get("variant"), "seed": int(run.data.tags.get("seed", -1))}
        row.update({f"params.{k}": v for k, v in run.data.params.items()})
        row.update({f"metrics.{k}": v for k, v in run.data.metrics.items()})
        row.update({TAG_COLUMN + k: v for k, v in run.data.tags.items()})
        if with_history and run.info.status == "FINISHED":
            row["history"] = {key: [m.value for m in sorted(client.get_metric_history(run.info.run_id, key),
                                                             key=lambda m: m.step)]
                              for key in run.data.metrics}
        rows.append(row)
    return pd.DataFrame(rows)


def sweep_runs(tracking_uri: str, experiment: str, study: str) -> list:
    """The parent runs of one grid study (normally one; more if a parent was deleted), newest first."""
    client = client_for(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    where = f"tags.`{KIND_TAG}` = 'sweep' and params.study = '{study}'"
    return client.search_runs([exp.experiment_id], filter_string=where, order_by=["attributes.start_time DESC"])


def sweep_commands(tracking_uri: str, experiment: str, study: str) -> list[str]:
    """Every command that trained the study, oldest first (the tag; the param for older stores)."""
    commands: list[str] = []
    for run in reversed(sweep_runs(tracking_uri, experiment, study)):
        listed = run.data.tags.get(COMMANDS_TAG) or run.data.params.get("command", "")
        commands += [c for c in listed.splitlines() if c and c not in commands]
    return commands


def attach_report(tracking_uri: str, experiment: str, study: str, paths: list[Path]) -> str | None:
    """Log the report's files as artifacts of the study's newest parent run (beside config.json), so a
    tracking server shows them to every host. Returns the run id (None: no parent run found)."""
    runs = sweep_runs(tracking_uri, experiment, study)
    if not runs:
        return None
    client = client_for(tracking_uri)
    for path in paths:
        if path.is_file():
            client.log_artifact(runs[0].info.run_id, str(path))
    return runs[0].info.run_id


def study_config(tracking_uri: str, experiment: str, study: str) -> dict | None:
    """The resolved config a study was swept with (its parent run's config.json); None if not logged."""
    for run in sweep_runs(tracking_uri, experiment, study):
        path = artifact_path(tracking_uri, run.info.run_id, "config.json")
        if path:
            return json.loads(Path(path).read_text())
    return None


def experiment_id(tracking_uri: str, name: str | None = None) -> tuple[str, str] | None:
    """(id, name) of the named experiment, or without a name the one whose run started last (not
    MLflow's Default); None when there is none."""
    client = client_for(tracking_uri)
    try:
        if name:
            found = client.get_experiment_by_name(name)
            return (found.experiment_id, found.name) if found is not None else None
        experiments = {e.experiment_id: e for e in client.search_experiments(filter_string="name != 'Default'")}
        if not experiments:
            return None
        newest = client.search_runs(list(experiments), order_by=["attributes.start_time DESC"], max_results=1)
        chosen = experiments[newest[0].info.experiment_id] if newest else next(iter(experiments.values()))
        return chosen.experiment_id, chosen.name
    except Exception as e:  # noqa: BLE001
        raise StorageError(f"MLflow tracking store {tracking_uri} is not usable: {first_line(e)}") from None


def artifact_path(tracking_uri: str, run_id: str, name: str) -> str | None:
    """Download one artifact of a run to a temporary folder; None when it is not there."""
    client = client_for(tracking_uri)
    try:
        return client.download_artifacts(run_id, name, tempfile.mkdtemp(prefix="harness-"))
    except Exception:  # noqa: BLE001 - a missing figure should not stop a report
        return None


def resolve_study(given: str, overrides: list[str], tracking_uri: str):
    """An experiment (file or name, with --set) or an Optuna study name (EXPERIMENT-DIGEST) -> (config,
    study). A study is read with the config its sweep logged (config.json), else its experiment file's."""
    from harness.config import find_experiment, load_config, load_logged
    try:
        cfg = load_config(find_experiment(given), overrides)
        return cfg, cfg.study_name
    except HarnessError:
        if "-" not in given:
            raise
    experiment = given.rsplit("-", 1)[0]
    raw = study_config(tracking_uri, experiment, given)
    if raw is not None:
        return load_logged(raw), given
    try:
        return load_config(find_experiment(experiment), overrides), given
    except HarnessError:
        raise HarnessError(f"neither an experiment nor a study with a logged config: {given}") from None


def experiment_name(given: str) -> str:
    """An experiment file's name (its `name`, else its stem), or the name as given if no file has it."""
    from harness.config import find_experiment, load_config
    try:
        return load_config(find_experiment(given)).name
    except HarnessError:
        return given


def serve_ui(tracking_uri: str, artifact_root: Path | None, experiment: str | None, host: str, port: int) -> None:
    """Serve the MLflow UI on the store and print the address of the experiment's training runs
    (MLflow 3's UI otherwise opens an experiment on its GenAI traces view); this process becomes the
    server. A tracking server (http/https) is already serving: its runs page is printed, nothing is
    started. `artifact_root`: where the harness's own SQLite store keeps its artifacts."""
    remote = tracking_uri.startswith(("http://", "https://"))
    base = tracking_uri.rstrip("/") if remote else f"http://{shown_host(host)}:{port}"
    name = experiment_name(experiment) if experiment else None
    found = experiment_id(tracking_uri, name)
    if found is None and name:
        raise HarnessError(f"no experiment {name!r} in the MLflow store {tracking_uri}")
    page = f"{base}/#/experiments/{found[0]}/runs" if found else base
    what = f"training runs of {found[1]}" if found else "no experiment yet"
    if remote:
        print(f"MLflow UI: {page}  ({what}, served by {base})", flush=True)
        return
    print(f"MLflow UI: {page}  ({what}; store {tracking_uri}; Ctrl-C to stop)", flush=True)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri, "--host", host,
           "--port", str(port)]
    if artifact_root is not None:
        cmd += ["--default-artifact-root", artifact_root.resolve().as_uri()]
    os.execv(sys.executable, cmd)


def shown_host(host: str) -> str:
    """The address to print: a server on every interface is reached through this host's name."""
    import socket
    return socket.gethostname() if host in ("0.0.0.0", "::") else host
