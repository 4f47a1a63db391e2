"""A finished sweep logged through the real Tracker with hand-made histories instead of training:
what the report, compare and the browser test read, in seconds."""
from harness.tracking import Tracker

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
        history = {"loss": [], "val_miou": []}
        for epoch, value in enumerate(miou, start=1):
            tracker.log_epoch(run, epoch, {"loss": 0.5 / epoch, "val_miou": value, "val_iou": value,
                                           "val_dice": value})
            history["loss"].append(0.5 / epoch)
            history["val_miou"].append(value)
        tracker.set_tags(run, {"verdict": "x", "loss_floor": 0.0, "trivial_miou": 0.42, "epochs_run": len(miou),
                               "seconds": 8.0, "device": "CPU", "diverged": False, "check.predicted": "trains",
                               "check.flags": "none"})
        if figures:
            log_figures(tracker, run, variant, history)
        tracker.end_point(run, "FINISHED")
    tracker.end_sweep()
    return tracker


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
    plots.close_all()
