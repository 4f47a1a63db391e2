"""Several hosts, one study: two workers, each with its own results folder (as if on its own machine),
share one Optuna study in a real PostgreSQL server and log to one real `mlflow server` (PostgreSQL
backend, artifacts proxied by the server). Every grid point must be trained exactly once, and the
report written from a third "host" must be complete."""
import csv
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import QUICK_TAKEOVER, TINY, free_port, missing, run_harness, start_harness

SETTINGS = ["--set", "train.epochs=2", "--set", "train.seeds=[1,2]", "--set", 'variants=["seed","image_only"]',
            "--set", "data.n_images=96", "--set", "data.image_size=32"]
POINTS = {(variant, seed) for variant in ("seed", "image_only") for seed in (1, 2)}
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")


def tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return f"({path} not readable)"


def postgres_bin() -> Path:
    def version(d: str) -> float:
        try:
            return float(Path(d).parent.name)
        except ValueError:
            return 0.0
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if (Path(d) / "initdb").is_file() and (Path(d) / "pg_ctl").is_file():
            return Path(d)
    missing("PostgreSQL not installed (Debian package postgresql): no initdb and pg_ctl under "
                "/usr/lib/postgresql/*/bin")


class Postgres:
    """A throwaway server on 127.0.0.1, trust auth, data in a fresh temp folder. As root, every
    server command runs as the `postgres` OS user (the server refuses to run as root)."""

    def __init__(self, bin_dir: Path):
        self.bin = bin_dir
        self.root = os.geteuid() == 0
        # Not under pytest's tmp_path: its parents are private to root, where `postgres` cannot enter.
        self.base = Path(tempfile.mkdtemp(prefix="harness-pg-"))
        self.data, self.sock, self.log = self.base / "data", self.base / "sock", self.base / "server.log"
        self.sock.mkdir()
        self.port = None
        if self.root:
            import pwd
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(self.base)
                raise RuntimeError("running as root, but there is no `postgres` OS user to run the server as "
                                   "(the Debian package postgresql creates it)") from None
            for path in (self.base, self.sock):
                os.chown(path, user.pw_uid, user.pw_gid)

    def as_owner(self, *cmd) -> list[str]:
        return (["runuser", "-u", "postgres", "--"] if self.root else []) + [str(c) for c in cmd]

    def run(self, *cmd, timeout=120):
        done = subprocess.run(self.as_owner(*cmd), capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({done.returncode}): "
                               f"{(done.stdout + done.stderr)[-2000:]}\nserver log:\n{tail(self.log)}")
        return done

    def start(self) -> None:
        self.run(self.bin / "initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
                 "--no-sync", "--no-instructions")
        for attempt in range(3):           # the free port may be taken between the probe and the bind
            self.port = free_port()
            try:
                self.run(self.bin / "pg_ctl", "start", "-w", "-t", "60", "-D", self.data, "-l", self.log,
                         "-o", f"-k {self.sock} -c listen_addresses=127.0.0.1 -p {self.port} -c fsync=off")
                return
            except RuntimeError:
                if attempt == 2:
                    raise

    def url(self, db: str) -> str:
        # The driver is named: SQLAlchemy 2.1 maps a bare `postgresql://` to psycopg 3, while the
        # `postgres` extra installs psycopg2.
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{db}"

    def createdb(self, name: str) -> None:
        done = subprocess.run([str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                               name], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr

    def stop(self) -> None:
        """Stop the server whatever state it is in, then remove its folder."""
        try:
            if (self.data / "postmaster.pid").exists():
                try:
                    self.run(self.bin / "pg_ctl", "stop", "-D", self.data, "-m", "fast", "-w", "-t", "60")
                except (RuntimeError, subprocess.TimeoutExpired):
                    self.kill_postmaster()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def kill_postmaster(self) -> None:
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGQUIT)   # immediate shutdown; the postmaster takes its children along
            deadline = time.time() + 30
            while time.time() < deadline:
                os.kill(pid, 0)
                time.sleep(0.2)
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass


class MlflowServer:
    def __init__(self, backend: str, base: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.artifacts = base / "artifacts"
        self.log = base / "mlflow-server.log"
        self.proc = None
        self.backend = backend

    def start(self, timeout: float = 120) -> None:
        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.backend,
               "--artifacts-destination", str(self.artifacts), "--host", "127.0.0.1", "--port", str(self.port),
               "--workers", "1"]
        with open(self.log, "w") as log:
            # Its own process group, so teardown reaches the server's worker processes too.
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.log.parent,
                                         env=ENV, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {self.proc.returncode}:\n{tail(self.log)}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        pytest.fail(f"mlflow server did not answer {self.url}/health within {timeout:.0f}s:\n{tail(self.log)}")

    def stop(self) -> None:
        if self.proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        try:                                # stragglers of the group (uvicorn workers)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def postgres():
    server = Postgres(postgres_bin())
    try:
        server.start()
        server.createdb("optuna")
        server.createdb("mlflow")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def mlflow_server(postgres, tmp_path_factory):
    server = MlflowServer(postgres.url("mlflow"), tmp_path_factory.mktemp("tracking"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


def start_worker(args, cwd: Path, log: Path, env=None) -> subprocess.Popen:
    with open(log, "w") as out:
        return start_harness(*args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_all(procs: list, logs: list, timeout: float) -> None:
    """Wait for every process, within one deadline; on timeout fail with each one's log tail."""
    deadline = time.time() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            raise AssertionError(f"workers still running after {timeout:.0f}s:\n"
                                 + "\n---\n".join(tail(log) for log in logs)) from None


def wait_for_line(log: Path, proc: subprocess.Popen, pattern: re.Pattern, timeout: float = 300) -> re.Match:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = pattern.search(log.read_text())
        if found:
            return found
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"never saw {pattern.pattern!r} (exit {proc.poll()}):\n{tail(log)}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)


TRAINED = re.compile(r"^\[(\w+) seed=(\d+)\] training \(", re.MULTILINE)


@pytest.mark.slow
def test_two_hosts_share_one_study_and_one_tracking_server(postgres, mlflow_server, tmp_path):
    import optuna

    storage = postgres.url("optuna")
    hosts = [tmp_path / f"host{i}" for i in (1, 2)]
    workers = []
    try:
        for host in hosts:
            host.mkdir()
            workers.append(start_worker(["sweep", TINY, *SETTINGS, "--storage", storage,
                                         "--tracking-uri", mlflow_server.url, "--results", host / "results"],
                                        cwd=host, log=host / "worker.log"))
        wait_all(workers, [host / "worker.log" for host in hosts], timeout=600)
    finally:
        for proc in workers:
            stop(proc)
    outputs = [(host / "worker.log").read_text() for host in hosts]
    for proc, out in zip(workers, outputs):
        assert proc.returncode == 0, out[-3000:]

    # Each worker logs `[variant seed=N] training (...)` for every point it trains: 4 in all, none twice.
    trained = [(v, int(s)) for out in outputs for v, s in TRAINED.findall(out)]
    assert sorted(trained) == sorted(POINTS), "\n---\n".join(o[-3000:] for o in outputs)
    assert all("already finished elsewhere" not in out for out in outputs)

    # MLflow (through the server): one FINISHED run per point.
    import harness
    runs = harness.load_runs(mlflow_server.url, "tiny")
    assert len(runs) == 4, runs[["variant", "seed", "status"]]
    assert set(runs["status"]) == {"FINISHED"}
    assert set(zip(runs["variant"], runs["seed"].astype(int))) == POINTS
    # Artifacts went through the server to its --artifacts-destination.
    uploaded = list(mlflow_server.artifacts.rglob("predictions.png"))
    assert len(uploaded) == 4, uploaded
    assert not any((host / "results" / "mlartifacts").exists() for host in hosts)

    # Optuna (in PostgreSQL): one study, exactly one COMPLETE trial per point.
    names = [n for n in optuna.get_all_study_names(storage) if n.startswith("tiny-")]
    assert len(names) == 1, names
    study = optuna.load_study(study_name=names[0], storage=storage)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    points = [t.user_attrs["point"] for t in complete]
    assert len(points) == 4 and len(set(points)) == 4, points
    assert {(p.split("/")[0], int(p.split("/")[1])) for p in points} == POINTS
    assert set(runs["run_id"]) == {t.user_attrs["mlflow_run_id"] for t in complete}

    # A report written from a third host, from the tracking server alone, is complete.
    results = tmp_path / "host3" / "results"
    report = run_harness("report", TINY, *SETTINGS, "--tracking-uri", mlflow_server.url, "--results", results,
                         cwd=tmp_path, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    folder = results / "tiny"
    with open(folder / "summary.csv") as f:
        rows = {row["variant"]: row for row in csv.DictReader(f)}
    assert set(rows) == {"seed", "image_only"}
    assert all(row["seeds"] == "2" for row in rows.values()), rows
    page = (folder / "report.html").read_text()
    assert "data:image/png;base64," in page
    predictions = sorted(p.name for p in folder.glob("predictions_*.png"))
    assert predictions, "no prediction figure was downloaded through the tracking server"
    assert "predictions_" in page
    assert not (results / "mlflow.db").exists() and not (results / "optuna.db").exists()


@pytest.mark.slow
def test_a_dead_workers_point_is_trained_by_a_worker_on_another_host(postgres, mlflow_server, tmp_path):
    """Worker A is killed (SIGKILL) while training its point. Worker B, on another host, trains its own
    point, notices A's trial went silent for longer than the heartbeat grace, fails it (MLflow run
    too) and trains A's point: every point ends with exactly one finished run."""
    import optuna

    import harness
    storage = postgres.url("optuna")
    name = "tiny_failover"
    settings = ["--set", f'name="{name}"', "--set", "train.epochs=1", "--set", "train.seeds=[1,2]",
                "--set", 'variants=["image_only"]', "--set", "data.n_images=96"]
    points = {("image_only", 1), ("image_only", 2)}
    env = dict(QUICK_TAKEOVER, HARNESS_GRACE_S="10")   # the default grace is 20 s
    hosts = {k: tmp_path / k for k in ("a", "b")}
    workers = {}
    try:
        for key, host in hosts.items():
            host.mkdir()
            workers[key] = start_worker(["sweep", TINY, *settings, "--storage", storage, "--tracking-uri",
                                         mlflow_server.url, "--results", host / "results"],
                                        cwd=host, log=host / "worker.log", env=env)
        killed = wait_for_line(hosts["a"] / "worker.log", workers["a"], TRAINED)
        os.killpg(workers["a"].pid, signal.SIGKILL)
        workers["a"].wait(timeout=30)
        wait_all([workers["b"]], [hosts["b"] / "worker.log"], timeout=400)
    finally:
        for proc in workers.values():
            stop(proc)
    dead_point = (killed.group(1), int(killed.group(2)))
    a_out, b_out = ((host / "worker.log").read_text() for host in hosts.values())
    assert workers["b"].returncode == 0, b_out[-3000:]
    assert [(v, int(s)) for v, s in TRAINED.findall(a_out)] == [dead_point], a_out[-3000:]
    assert sorted((v, int(s)) for v, s in TRAINED.findall(b_out)) == sorted(points), b_out[-3000:]

    runs = harness.load_runs(mlflow_server.url, name)
    finished = runs[runs["status"] == "FINISHED"]
    assert sorted(zip(finished["variant"], finished["seed"].astype(int))) == sorted(points)
    failed = runs[runs["status"] == "FAILED"]
    assert len(failed) == 1 and (failed.iloc[0]["variant"], int(failed.iloc[0]["seed"])) == dead_point
    assert "interrupted" in failed.iloc[0]["tags.failure"]
    assert set(runs["status"]) == {"FINISHED", "FAILED"}

    (study_name,) = [n for n in optuna.get_all_study_names(storage) if n.startswith(f"{name}-")]
    trials = optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False)
    state = optuna.trial.TrialState
    complete = sorted(t.user_attrs["point"].split("/")[1] for t in trials if t.state == state.COMPLETE)
    assert complete == ["1", "2"]
    assert [t.user_attrs["point"].split("/")[1] for t in trials if t.state == state.FAIL] == [str(dead_point[1])]
