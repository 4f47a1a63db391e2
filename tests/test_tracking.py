"""MLflow as its users expect, without training: runs logged through the Tracker into a temporary
SQLite store carry MLflow's source and git tags, the dataset input and the config; the report found
from the runs names its sweep command and is attached to the parent run; `harness compare` gives the
report's "Pipelines compared" table."""
import json

import pandas as pd
import pytest

from conftest import ROOT, run_harness
from harness.config import load_config
from fake_runs import COMMAND, PLATEAU, STUCK, log_sweep
from harness.tracking import Tracker, attach_report, experiment_id, study_config, sweep_commands



@pytest.fixture(scope="module")
def cfg():
    return load_config(ROOT / "tests" / "data" / "tiny.toml",
                       ["train.epochs=8", 'variants=["seed","image_only"]'])


def test_runs_carry_source_git_dataset_and_config(tmp_path, cfg):
    tracker = log_sweep(tmp_path, cfg, {"seed": STUCK, "image_only": PLATEAU})
    client = tracker.client
    exp = client.get_experiment(tracker.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([tracker.experiment_id])
    assert len(runs) == 3
    for run in runs:
        tags = run.data.tags
        assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"] == "harness sweep"
        assert len(tags["mlflow.source.git.commit"]) == 40 and tags["mlflow.source.git.dirty"] in ("true", "false")
        inputs = run.inputs.dataset_inputs
        assert [d.dataset.digest for d in inputs] == ["0123456789ab"] and inputs[0].dataset.name == "synthetic"
        assert {t.key: t.value for t in inputs[0].tags} == {"mlflow.data.context": "training"}
    assert study_config(tracker.uri, cfg.name, cfg.study_name) == json.loads(json.dumps(cfg.raw, default=str))
    assert experiment_id(tracker.uri) == (tracker.experiment_id, "tiny")
    tracker.client.create_experiment("later, without runs")
    assert experiment_id(tracker.uri) == (tracker.experiment_id, "tiny")     # the one whose run started last
    assert experiment_id(tracker.uri, "nope") is None


def test_a_resumed_sweep_adds_its_command_once(tmp_path, cfg):
    tracker = log_sweep(tmp_path, cfg, {"seed": STUCK})
    more = COMMAND + " --set train.seeds=[1,2]"
    for command in (more, more):
        tracker.start_sweep(tracker.parent_id, params={"command": command}, tags={})
    # An --n-jobs worker reopens the run with its parent's command, which its parent recorded.
    tracker.start_sweep(tracker.parent_id, params={"command": "harness sweep tiny --n-jobs 2"}, tags={},
                        record_command=False)
    assert sweep_commands(tracker.uri, cfg.name, cfg.study_name) == [COMMAND, more]


def test_report_names_its_sweep_and_is_attached_to_the_parent_run(tmp_path, cfg):
    from harness.report import write_report
    tracker = log_sweep(tmp_path, cfg, {"seed": STUCK, "image_only": PLATEAU})
    md = write_report(cfg, tmp_path, tracker.uri, "harness report tiny").path.read_text()
    section = md[md.index("## Reproduce"):]
    assert f"```\n{COMMAND}\n```" in section
    assert "python 3.11" in section and "device CPU" in section and "harness commit " in section
    artifacts = {a.path for a in tracker.client.list_artifacts(tracker.parent_id)}
    assert {"config.json", "report.md", "report.html", "summary.csv"} <= artifacts
    assert attach_report(tracker.uri, cfg.name, "tiny-00000000", []) is None          # no such study


def test_an_empty_study_gives_a_report_that_says_so(tmp_path, cfg):
    from harness.report import write_report
    Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", cfg.name, tmp_path)
    md = write_report(cfg, tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}", "harness report").path.read_text()
    assert "No finished grid runs yet" in md and cfg.study_name in md
    assert "<p>No finished grid runs yet" in (tmp_path / "tiny" / "report.html").read_text()


def test_compare_gives_the_reports_pipelines_table(tmp_path, cfg):
    from harness.report import compare_studies, write_report
    log_sweep(tmp_path, cfg, {"seed": STUCK, "image_only": PLATEAU})
    legacy = cfg.with_overrides({"pipeline": "imagedatagenerator"})
    log_sweep(tmp_path, legacy, {"seed": STUCK, "image_only": STUCK},
              command=COMMAND + " --set pipeline=imagedatagenerator")
    md = write_report(cfg, tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}", "harness report").path.read_text()
    section = md[md.index("## Pipelines compared"):].split("\n\n")[2]
    text, table = compare_studies(cfg, cfg.study_name, legacy, legacy.study_name, f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert section in text
    assert list(table["variant"]) == ["seed", "image_only"]
    assert list(table["same verdict"]) == [True, False]
    assert table.loc[1, "val_miou difference"] == pytest.approx(0.42 - 0.86, abs=1e-6)

    # The CLI, on the same store: study names resolve through the config each sweep logged.
    out = run_harness("compare", cfg.study_name, legacy.study_name, "--results", tmp_path, "--csv",
                      tmp_path / "c.csv", cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert section in out.stdout
    assert list(pd.read_csv(tmp_path / "c.csv")["variant"]) == ["seed", "image_only"]


def test_report_of_an_older_study_uses_the_config_its_sweep_logged(tmp_path, cfg, capsys):
    from harness.cli import main
    older = cfg.with_overrides({"train.epochs": 6})
    log_sweep(tmp_path, older, {"seed": STUCK[:6], "image_only": PLATEAU[:6]}, command="harness sweep tiny --set train.epochs=6")
    log_sweep(tmp_path, cfg, {"seed": STUCK})
    assert main(["report", str(ROOT / "tests" / "data" / "tiny.toml"), "--results", str(tmp_path),
                 "--study", older.study_name]) == 0
    md = (tmp_path / "tiny" / older.study_name / "report.md").read_text()
    assert "harness sweep tiny --set train.epochs=6" in md and "| image_only |" in md
    assert main(["report", "--results", str(tmp_path), "--study", "tiny-0000000f"]) == 2
    assert "harness: error: neither an experiment nor a study" in capsys.readouterr().err


def test_the_study_names_its_metric_and_settings(tmp_path, cfg):
    import optuna
    from harness.grid import open_study
    study = open_study(cfg, f"sqlite:///{tmp_path / 'optuna.db'}")
    loaded = optuna.load_study(study_name=cfg.study_name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert loaded.metric_names == ["val_miou"]
    attrs = loaded.user_attrs
    assert attrs["experiment"] == "tiny" and attrs["pipeline"] == "tfdata" and attrs["train"]["epochs"] == 8
    assert "seeds" not in attrs["train"] and attrs["grid_at_creation"] == {"variants": ["seed", "image_only"],
                                                                         "seeds": [1]}
    # Settings are written by whoever creates the study; a grown grid does not rewrite them.
    open_study(cfg.with_overrides({"train.seeds": [1, 2]}), f"sqlite:///{tmp_path / 'optuna.db'}")
    assert optuna.load_study(study_name=cfg.study_name, storage=f"sqlite:///{tmp_path / 'optuna.db'}"
                             ).user_attrs["grid_at_creation"]["seeds"] == [1]


def test_ui_on_an_unreachable_server_is_one_line(tmp_path, capsys):
    from harness.cli import main
    assert main(["ui", "--tracking-uri", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("harness: error: MLflow tracking store http://127.0.0.1:9")


def test_every_epoch_write_is_in_the_store_once_logged_and_a_failed_one_raises(tmp_path):
    from harness.tracking import default_tracking_uri
    tracker = Tracker(default_tracking_uri(tmp_path), "writes", tmp_path)
    run_id = tracker.start_point("v", 1, {}, {})
    for epoch in range(1, 6):
        tracker.log_epoch(run_id, epoch, {"loss": 1.0 / epoch, "val_miou": float("nan") if epoch == 3 else 0.1})
    client = tracker.client
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == [1.0 / e for e in range(1, 6)]
    assert [m.step for m in client.get_metric_history(run_id, "val_miou")] == [1, 2, 4, 5]
    assert client.get_run(run_id).data.tags["nonfinite.val_miou"] == "nan at epoch 3"
    tracker.end_point(run_id, "FINISHED")
    assert client.get_run(run_id).info.status == "FINISHED"
    # Written on the training thread: a write that fails raises there, and the run crashes.
    with pytest.raises(Exception):
        tracker.log_epoch("no-such-run", 1, {"loss": 0.5})
