"""Command line: parse arguments, hand off, turn known errors into one clear line and an exit code."""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from harness.paths import DEFAULT_RESULTS
from harness.backend import command_prefix, import_tensorflow_quietly
from harness.config import DEFAULT_EXPERIMENT, find_experiment
from harness.errors import (EXIT_CRASHED, EXIT_DONE, EXIT_INTERNAL, EXIT_INTERRUPTED, HarnessError,
                            exit_code_of, interrupt_handlers)
from harness.workers import resolve_n_jobs, run_workers, workers_exit

TRAINING_COMMANDS = ("sweep", "tune", "check", "bench")      # the commands that import TensorFlow


def add_experiment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", nargs="?", help=f"experiment .toml file or name (default: {DEFAULT_EXPERIMENT})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, read as TOML (e.g. --set train.seeds=[1,2])")
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="reports and default stores (default: runs/, ignored by git)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<results>/mlflow.db)")


class UsageError(HarnessError):
    """A command line that does not parse: an unknown command or option, a missing argument."""


class Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one `harness: error:` line (exit 2) like any other bad
    input: argparse's own error() prints its usage block first. Subcommand parsers inherit this
    class (argparse builds them with type(parent))."""

    def error(self, message: str):
        raise UsageError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="harness", allow_abbrev=False, description="Compare Keras training variants (first case: 'negative loss when whitening input data'): sweep, tune, check, report, ui, bench; doctor diagnoses your own training script.")
    # allow_abbrev=False everywhere: an abbreviated option ("--n-j 3") would slip past what
    # run_workers strips from the workers' arguments, and a later option could make it ambiguous.
    parser.add_argument("--version", action="version", version=f"%(prog)s {harness_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    sweep = sub.add_parser("sweep", allow_abbrev=False, help="train every variant x seed, track in MLflow, write the report")
    add_experiment_args(sweep)
    sweep.add_argument("--storage", help="Optuna storage URL (default: sqlite:///<results>/optuna.db)")
    sweep.add_argument("--strict", action="store_true", help="exit 1 if any grid point crashed")
    sweep.add_argument("--n-jobs", default="1", metavar="N",
                       help="train N grid points at once, in N worker processes sharing the study "
                            "(GPUs: round-robin via CUDA_VISIBLE_DEVICES, workers sharing one each capped at "
                            "their share of its memory); auto: the worker count `harness bench` found fastest here")
    sweep.add_argument("--system-metrics", action="store_true",
                       help="log MLflow's system metrics (CPU, memory, disk, network, GPU) for each point's run")
    sweep.add_argument("--save-models", action="store_true",
                       help="keep each point's trained model as a model.keras artifact of its run")
    status = sub.add_parser("status", allow_abbrev=False, help="every point of the grid with its state, and the study (no training)")
    add_experiment_args(status)
    status.add_argument("--storage", help="Optuna storage URL (default: sqlite:///<results>/optuna.db)")
    tune = sub.add_parser("tune", allow_abbrev=False, help="tune one variant's learning rate (TPE + pruner), then rewrite the report")
    tune.add_argument("variant", help="a variant of the experiment, e.g. seed")
    add_experiment_args(tune)
    tune.add_argument("--trials", type=int, help="trials in all, counting finished ones (default: tune.trials)")
    tune.add_argument("--storage", help="Optuna storage URL (default: sqlite:///<results>/optuna.db)")
    check = sub.add_parser(
        "check", allow_abbrev=False, help="predict each variant's failure before training, and say why",
        description="Judged here, before training: what the data and the loss decide (targets outside the "
                    "loss's domain, an unbounded loss, one minimized on the wrong side, validation fed or split "
                    "unlike training). Judged only after training, from each run's health/ metrics (the "
                    "`causes` column): learning_rate_too_high, exploding_gradients, vanishing_gradients, "
                    "dead_units, saturated_head, no_updates, no_signal.")
    check.add_argument("experiment", nargs="?", help=f"experiment .toml file or name (default: {DEFAULT_EXPERIMENT})")
    check.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    check.add_argument("--json", action="store_true", help="print one JSON array, an object per variant")
    check.add_argument("--strict", action="store_true", help="exit 1 if any variant is predicted to fail (for CI)")
    bench = sub.add_parser("bench", allow_abbrev=False, help="measure speed and memory as ratios in one run")
    bench.add_argument("experiment", nargs="?", help=f"experiment to shrink (default: {DEFAULT_EXPERIMENT})")
    bench.add_argument("--quick", action="store_true", help="small sizes, but the tracking figure's one point at the experiment's own size (the committed results/bench/bench.json: 28 minutes on 2 cores of an AMD EPYC)")
    bench.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="writes <results>/bench/ (default: runs/; the committed record: --results results)")
    bench.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a value of the benchmarked experiment")
    bench.add_argument("--only", action="append", default=[], metavar="STAGE",
                       choices=("pipeline", "train", "tracking", "health", "doctor", "options", "feeds", "memory"),
                       help="measure only this stage (repeatable): pipeline, train, tracking, health, doctor, options, feeds, "
                            "memory; writes <results>/bench/bench-<stages>.json and .md")
    bench.add_argument("--gpu-check", action="store_true",
                       help="for a GPU machine: device, every figure at full size, and whitening-full's sweep "
                            "time extrapolated from 2 epochs; writes <results>/bench/gpu-check.{json,md}")
    report = sub.add_parser("report", allow_abbrev=False, help="write the report from the runs in MLflow")
    add_experiment_args(report)
    report.add_argument("--study", help="report an older study of the experiment (its Optuna study name, "
                                        "as `harness report` and the MLflow runs' optuna.study tag show it)")
    ui = sub.add_parser("ui", allow_abbrev=False, help="serve the MLflow UI on the results store; prints the training-runs page")
    ui.add_argument("experiment", nargs="?", help="experiment whose runs page to print (default: the one whose run started last)")
    ui.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    ui.add_argument("--tracking-uri", help="an MLflow store; an http(s) server is not started again, only named")
    ui.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1; 0.0.0.0: all)")
    ui.add_argument("--port", type=int, default=5000)
    add_compare_args(sub)
    add_doctor_args(sub)
    return parser


def add_doctor_args(sub) -> None:
    doctor = sub.add_parser(
        "doctor", allow_abbrev=False, help="run your own Keras training script unchanged and diagnose each model.fit",
        description="Runs SCRIPT as `python SCRIPT ARGS...` would, with every model.fit diagnosed: the targets "
                    "against the compiled loss, where in the script they were transformed, the validation data, "
                    "training health each epoch, and the verdict against the trivial predictor. Prints a "
                    "diagnosis after each fit and a summary at the end, writes <results>/doctor/<script>/ "
                    "(report.md, report.html, doctor.json) and one MLflow run per fit; exits with the script's "
                    "own exit code.")
    doctor.add_argument("--epochs", type=int, default=5, metavar="N",
                        help="cap every fit at N epochs (default 5; 0 keeps the script's own count)")
    doctor.add_argument("--json", type=Path, metavar="FILE", help="also write the diagnosis as JSON to FILE")
    doctor.add_argument("--results", type=Path, default=DEFAULT_RESULTS,
                        help="writes <results>/doctor/<script>/ and tracks in <results>/mlflow.db (default: runs/, ignored by git)")
    doctor.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<results>/mlflow.db)")
    doctor.add_argument("script", type=Path, help="your training script")
    doctor.add_argument("args", nargs=argparse.REMAINDER, help="the script's own arguments")


def add_compare_args(sub) -> None:
    compare = sub.add_parser("compare", allow_abbrev=False, help="two studies or two experiments side by side: verdicts, mIoU, difference")
    compare.add_argument("a", help="an experiment (name or .toml) or an Optuna study name (EXPERIMENT-DIGEST)")
    compare.add_argument("b", help="the other one")
    compare.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="settings of both experiments, as for sweep (e.g. --set pipeline=imagedatagenerator)")
    compare.add_argument("--set-b", dest="overrides_b", action="append", default=[], metavar="KEY=VALUE",
                         help="settings of B only, on top of --set")
    compare.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    compare.add_argument("--tracking-uri")
    compare.add_argument("--csv", type=Path, help="also write the table as CSV to this file")


def harness_version() -> str:
    import importlib.metadata as md
    try:
        return md.version("harness")
    except md.PackageNotFoundError:
        return "unknown (not installed)"


def load(args):
    from harness.config import load_config
    return load_config(find_experiment(args.experiment), args.overrides)


def check_writable(results: Path) -> None:
    import tempfile
    try:
        results.mkdir(parents=True, exist_ok=True)
        # A uniquely named probe: several workers may start on one results folder at once.
        with tempfile.NamedTemporaryFile(dir=results, prefix=".write-test-"):
            pass
    except OSError as e:
        raise HarnessError(f"results folder {results} cannot be written: {e.strerror}") from None


def cmd_sweep(args, command: str) -> int:
    from harness.sweep import run_sweep
    from harness.report import summary_lines, write_report
    from harness.tracking import default_tracking_uri
    cfg = load(args)
    check_writable(args.results)
    args.n_jobs = resolve_n_jobs(args.n_jobs, args.results)
    # TensorFlow (seconds to import) only once the settings are known good, and only where this
    # process trains: an --n-jobs parent leaves it to its workers.
    if args.n_jobs > 1:
        import uuid
        from harness.sweep import workers_parent_run
        with workers_parent_run(cfg, args.results, args.storage, args.tracking_uri, command) as parent:
            codes = run_workers(worker_spec(args, command), args.n_jobs, sweep_id=uuid.uuid4().hex[:12])
            failed = workers_exit(codes)
            parent["failed"] = failed == EXIT_INTERNAL
            parent["interrupted"] = failed == EXIT_INTERRUPTED
        if failed:
            return failed
        crashed = EXIT_CRASHED in codes
    else:
        import_tensorflow_quietly()
        outcomes = run_sweep(cfg, args.results, args.storage, args.tracking_uri, command=command,
                             system_metrics=args.system_metrics, save_models=args.save_models)
        crashed = any(o.verdict == "crashed" for o in outcomes)
    done = EXIT_CRASHED if (args.strict and crashed) else EXIT_DONE
    report, summary = write_report(cfg, args.results, args.tracking_uri or default_tracking_uri(args.results), command)
    print(f"report: {report}")
    print("\n".join(summary_lines(summary)))
    return done


def worker_spec(args, command: str) -> dict:
    """What an --n-jobs worker is told, as plain data (harness/workers.py): the same experiment and
    options as its parent, and the parent's command for the record."""
    return {"experiment": str(find_experiment(args.experiment).resolve()), "overrides": list(args.overrides),
            "results": str(args.results), "storage": args.storage, "tracking_uri": args.tracking_uri,
            "system_metrics": args.system_metrics, "save_models": args.save_models, "strict": args.strict,
            "command": command}


def cmd_tune(args, command: str) -> int:
    from harness.report import write_report
    from harness.report.tuning import tuned_reading
    from harness.tracking import default_tracking_uri
    from harness.tune import run_tune
    cfg = load(args)
    trials = cfg["tune"]["trials"] if args.trials is None else args.trials
    if trials < 1:
        raise HarnessError("--trials must be >= 1")
    check_writable(args.results)
    import_tensorflow_quietly()
    run_tune(cfg, args.variant, trials, args.results, args.storage, args.tracking_uri, command)
    report = write_report(cfg, args.results, args.tracking_uri or default_tracking_uri(args.results), command).path
    reading = tuned_reading(report.parent, args.variant)
    if reading:
        print(f"tune {args.variant}: {reading}")
    print(f"report: {report}")
    return 0


def cmd_report(args, command: str) -> int:
    """The current settings' report, or with --study an older study's, beside it in
    <results>/<experiment>/<study>/ (read with the config that study's sweep logged)."""
    from harness.report import write_report
    from harness.tracking import default_tracking_uri, resolve_study
    uri = args.tracking_uri or default_tracking_uri(args.results)
    cfg, folder = load(args), None
    study = cfg.study_name
    if args.study and args.study != cfg.study_name:
        named = args.experiment is not None
        cfg, study = resolve_study(args.study, args.overrides, uri)
        if named and load(args).name != cfg.name:
            raise HarnessError(f"study {args.study} is not a study of experiment {load(args).name}")
        folder = args.results / cfg.report_name / study
    check_writable(args.results)
    report = write_report(cfg, args.results, uri, command, study=study, folder=folder).path
    print(f"report: {report}")
    return 0


def cmd_check(args) -> int:
    import json
    cfg = load(args)
    import_tensorflow_quietly()
    from harness.check import check_experiment, format_rows, predicted_verdict
    rows = check_experiment(cfg)
    if args.json:
        print(json.dumps([{**r.to_dict(), "predicted": predicted_verdict(r.flags)} for r in rows], indent=1))
    else:
        print(format_rows(rows))
    failing = [r.variant for r in rows if predicted_verdict(r.flags) != "trains"]
    if args.strict and failing:
        print(f"harness: check: predicted to fail: {', '.join(failing)}", file=sys.stderr)
        return EXIT_CRASHED
    return EXIT_DONE


def cmd_status(args) -> int:
    """No TensorFlow and no MLflow on this path: it reads the Optuna study alone, in about a second."""
    from harness.grid import default_storage
    from harness.status import format_status, read_status
    cfg = load(args)
    storage = args.storage or default_storage(args.results)
    print(format_status(read_status(cfg, storage)))
    return EXIT_DONE


def cmd_ui(args) -> int:
    from harness.tracking import default_tracking_uri, serve_ui
    own_store = not args.tracking_uri
    uri = args.tracking_uri or default_tracking_uri(args.results)
    if own_store and not (args.results / "mlflow.db").exists():
        raise HarnessError(f"no MLflow store at {args.results / 'mlflow.db'}: run `harness sweep` first")
    serve_ui(uri, args.results / "mlartifacts" if own_store else None, args.experiment, args.host, args.port)
    return EXIT_DONE


def cmd_compare(args) -> int:
    from harness.report import compare_studies
    from harness.tracking import default_tracking_uri, resolve_study
    uri = args.tracking_uri or default_tracking_uri(args.results)
    cfg_a, study_a = resolve_study(args.a, args.overrides, uri)
    cfg_b, study_b = resolve_study(args.b, args.overrides + args.overrides_b, uri)
    md, table = compare_studies(cfg_a, study_a, cfg_b, study_b, uri)
    print(md, end="")
    if args.csv is not None:
        table.to_csv(args.csv, index=False, float_format="%.6g", na_rep="nan", lineterminator="\n")
        print(f"wrote {args.csv}")
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")   # keep TensorFlow's C++ chatter (cuInit, graph attrs) out
    with interrupt_handlers():
        return run_command(sys.argv[1:] if argv is None else argv)


def run_command(argv: list[str]) -> int:
    return exit_code_of(lambda: dispatch(build_parser().parse_args(argv), argv))


def dispatch(args, argv: list[str]) -> int:
    """Hand the parsed command line to its command; returns the exit code."""
    command = command_prefix() + "harness " + shlex.join(argv)
    if args.command == "sweep":
        return cmd_sweep(args, command)
    if args.command == "bench":
        return cmd_bench(args, command)
    if args.command == "tune":
        return cmd_tune(args, command)
    if args.command == "check":
        return cmd_check(args)
    if args.command == "report":
        return cmd_report(args, command)
    if args.command == "ui":
        return cmd_ui(args)
    if args.command == "status":
        return cmd_status(args)
    if args.command == "compare":
        return cmd_compare(args)
    if args.command == "doctor":
        return cmd_doctor(args)
    raise UsageError(f"unknown command {args.command!r}")


def cmd_doctor(args) -> int:
    """The script's own exit code. Keras (and TensorFlow) are imported when the script imports them."""
    from harness.doctor.script import run_doctor
    return run_doctor(args.script, args.args, args.epochs, args.json, args.results, args.tracking_uri)


def cmd_bench(args, command: str) -> int:
    import_tensorflow_quietly()
    check_writable(args.results)
    if args.gpu_check:
        from harness.gpu_check import run_gpu_check      # Keras alone: no TensorFlow, Optuna, MLflow
        run_gpu_check(args.results, command, overrides=args.overrides,
                      experiment=find_experiment(args.experiment) if args.experiment else None)
        print(f"wrote {args.results / 'bench' / 'gpu-check.json'} and gpu-check.md")
        return EXIT_DONE
    from harness.bench import figure_lines, run_bench
    name = "-".join(["bench", *args.only])
    out = run_bench(find_experiment(args.experiment), args.results, args.quick, command, overrides=args.overrides,
                    name=name, only=tuple(args.only))
    print("\n".join(figure_lines(out)))
    print(f"wrote {args.results / 'bench' / (name + '.json')} and {name}.md")
    return EXIT_DONE


if __name__ == "__main__":
    sys.exit(main())
