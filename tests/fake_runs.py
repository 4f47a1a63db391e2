"""A finished sweep logged through the real Tracker with hand-made histories instead of training:
what the report, compare and the browser test read, in seconds."""
from harness.runs import check_tags, judge_result, result_tags
from harness.tracking import Tracker
from harness.train import RunResult

PLATEAU = [0.5, 0.7, 0.84, 0.85, 0.86, 0.86, 0.86, 0.86]
STUCK = [0.42] * 8
COMMAND = "harness sweep tiny --set train.epochs=8 --set 'variants=[\"seed\",\"image_only\"]'"


def log_sweep(tmp, cfg, miou_by_variant: dict, command: str = COMMAND, figures: bool = False) -> Tracker:
    """What run_sweep logs for a finished sweep (one seed per variant) into <tmp>/mlflow.db; with
    `figures`, each run's loss curve and prediction samples too."""
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    tracker = Tracker(uri, cfg.name, tmp)
    parent = tracker.start_sweep(None, params={"study": cfg.study_name, "storage": "x", "command": command},
                                 tags={"harness.experiment": cfg.name})
    tracker.log_config(parent, cfg.raw)
    tracker.use_dataset(cfg["data"], "0123456789ab", "synthetic: 8 images")
    for variant, miou in miou_by_variant.items():
        run = tracker.start_point(variant, 1, {"variant": variant, "pipeline": cfg["pipeline"], "python": "3.11",
                                               **axis_params(cfg, variant)},
                                  tags={"optuna.study": cfg.study_name})
        history = {"loss": [], "val_miou": [], "val_iou": [], "val_dice": []}
        for epoch, value in enumerate(miou, start=1):
            metrics = {"loss": 0.5 / epoch, "val_miou": value, "val_iou": value, "val_dice": value}
            tracker.log_epoch(run, epoch, metrics)
            for key, metric in metrics.items():
                history[key].append(metric)
        result = finished_result(history)
        # The tags a sweep writes, through the code that defines them (harness/runs.py).
        tracker.set_tags(run, {**result_tags(result, judge_result(result, cfg["verdict"], cfg["health"])),
                               **check_tags([], "trains", {})})
        if figures:
            log_figures(tracker, run, variant, history)
        tracker.end_point(run, "FINISHED")
    tracker.end_sweep()
    return tracker


def finished_result(history: dict) -> RunResult:
    """What train_variant returns for a run that trained these epochs on the CPU (8 s in all)."""
    return RunResult(history=history, diverged_at=None, device="CPU", seconds=8.0,
                     epochs_run=len(history["loss"]), loss_floor=0.0, loss_floor_declared=0.0, threshold=0.5,
                     trivial_miou=0.42, stats={"mean": [0.0], "std": [1.0]}, deterministic=True, feed="tfdata")


def axis_params(cfg, name: str) -> dict:
    """The `axis.*` params every sweep logs: the report keeps only runs of the current definitions."""
    variant = next(v for v in cfg.variants if v.name == name)
    return {f"axis.{axis}": value for axis, value in variant.axes().items()}


def log_figures(tracker: Tracker, run: str, variant: str, history: dict) -> None:
    import numpy as np
    from harness import plots
    rng = np.random.default_rng(0)
    image = (255 * rng.random((2, 16, 16, 3))).astype("float32")
    truth = (image[..., :1] > 128).astype("float32")
    samples = {"images": image, "truth": truth, "prediction": truth * 0.8, "threshold": 0.5}
    tracker.log_figure(run, plots.loss_curve(history, 0.0, variant), "loss_curve.png")
    tracker.log_figure(run, plots.prediction_samples(samples, variant), "predictions.png")
