"""Point and study identity: what makes a point's numbers names it; nothing else does."""
import pandas as pd

from conftest import TINY
from harness.backend import Machine
from harness.config import load_config
from harness.points import grid_points, runs_of_grid
from harness.tune import tune_study_name



# The names a machine without an accelerator gives, whatever this one has: `speed.device_augment =
# "auto"` resolves to on where one is visible, which starts a study of its own (tested below).
CPU, GPU = Machine("tensorflow", accelerator=False), Machine("tensorflow", accelerator=True)


def study(*overrides, machine=CPU):
    return load_config(TINY, list(overrides), machine).study_name


def test_auto_device_augmentation_on_a_visible_gpu_is_a_study_of_its_own():
    base = study()
    assert load_config(TINY, machine=GPU).raw["speed"]["device_augment"] is True
    assert study(machine=GPU) == study("speed.device_augment=true") != base
    assert study("speed.device_augment=false", machine=GPU) == base


def test_study_names_of_the_default_settings_are_unchanged():
    # The digest from before speed options counted: stores made then still resume, reports still read.
    assert study() == "tiny-619f5822"


def test_settings_that_change_numbers_start_a_new_study_and_the_grid_does_not():
    base = study()
    for changed in ("speed.parallel_augment=true", "speed.mixed_precision=true", "train.epochs=3",
                    "data.data_seed=1", "model.bn_momentum=0.5", "model.builder='my_models:unet'",
                    "data.foreground_values=[1, 2]"):
        assert study(changed) != base, changed
    # jit_compile is ignored under determinism and within the noise without it (config.py).
    for same in ("speed.jit_compile=true", "train.seeds=[1,2,3]", 'variants=["seed"]', "description='x'",
                 'define.x={loss="dice"}', 'tune.ranges={"train.epochs"={low=2, high=4}}'):
        assert study(same) == base, same


def test_a_point_key_names_the_variants_axes_and_seed():
    first = grid_points(load_config(TINY, ['define.x={masks="binary"}', 'variants=["x"]']))
    redefined = grid_points(load_config(TINY, ['define.x={masks="binary", loss="tests_loss:fn"}', 'variants=["x"]']))
    assert len(first) == len(redefined) == 1 and set(first).isdisjoint(redefined)
    assert "loss=tests_loss:fn" in next(iter(redefined))
    grown = grid_points(load_config(TINY, ['define.x={masks="binary"}', 'variants=["x"]', "train.seeds=[1,2]"]))
    assert set(first) < set(grown)


def test_the_report_keeps_only_runs_of_the_current_definitions():
    cfg = load_config(TINY, ['define.x={masks="binary"}', 'variants=["x", "seed"]'])
    axes = {v.name: v.axes() for v in cfg.variants}

    def run(run_id, variant, seed, **changed):
        return {"run_id": run_id, "variant": variant, "seed": seed,
                **{f"params.axis.{k}": v for k, v in {**axes[variant], **changed}.items()}}
    runs = pd.DataFrame([run("a", "x", 1), run("b", "x", 1, loss="dice"), run("c", "seed", 1),
                         run("d", "seed", 2)])
    assert list(runs_of_grid(runs, cfg)["run_id"]) == ["a", "c"]      # old definition and dropped seed out


def test_changed_tune_ranges_get_a_tuning_study_of_their_own():
    cfg = load_config(TINY)
    log = load_config(TINY, ['tune.ranges={"train.learning_rate"={low=1e-4, high=1e-2, log=true}}'])
    lin = load_config(TINY, ['tune.ranges={"train.learning_rate"={low=1e-4, high=1e-2}}'])
    choices = load_config(TINY, ['tune.ranges={"train.learning_rate"={choices=[1e-3, 1e-2]}}'])
    names = {tune_study_name(c, "image_only") for c in (log, lin, choices)}
    assert len(names) == 3
    assert tune_study_name(cfg, "image_only") == tune_study_name(log, "image_only")   # same ranges as the default
    assert tune_study_name(cfg, "image_only").startswith(cfg.study_name + "-tune-image_only-")


def test_a_point_key_has_the_stored_format():
    # Every trial in a study is stored under this exact string: changing it orphans existing stores.
    cfg = load_config(TINY, ['define.x={images="scaled", masks="binary", head="tanh", loss="dice"}', 'variants=["x"]'])
    assert list(grid_points(cfg)) == ["x/1/images=scaled,masks=binary,head=tanh,loss=dice,validation=raw"]


def test_no_runs_means_no_runs_of_the_grid():
    empty = pd.DataFrame(columns=["run_id", "variant", "seed"])
    assert runs_of_grid(empty, load_config(TINY)).empty
