import pytest

from harness.backend import Machine
from harness.config import BUILTIN_VARIANTS, load_config, load_logged, resolve, validate, DEFAULTS, parse_override
from harness.errors import ConfigError

from conftest import ROOT

CPU, GPU, JAX = Machine("tensorflow", False), Machine("tensorflow", True), Machine("jax", False)

DEFAULT = ROOT / "experiments" / "whitening.toml"


def test_default_experiment_loads_with_the_five_variants():
    cfg = load_config(DEFAULT)
    assert cfg.name == "whitening"
    assert [v.name for v in cfg.variants] == list(BUILTIN_VARIANTS)
    assert cfg["data"]["image_size"] == 48


def test_full_experiment_is_the_case_at_scale():
    cfg = load_config(ROOT / "experiments" / "whitening-full.toml")
    assert cfg["data"]["image_size"] == 128 and cfg["model"]["start_depth"] == 16
    assert cfg["train"]["batch_size"] == 32 and cfg["train"]["epochs"] >= 50 and len(cfg.seeds) == 3
    assert round(cfg["data"]["n_images"] * (1 - cfg["data"]["val_fraction"])) == 1840


def test_overrides_are_read_as_toml_values():
    cfg = load_config(DEFAULT, ["train.seeds=[3,4]", 'variants=["seed","image_only"]', "train.learning_rate=1e-2",
                                "data.path=/some/where", "train.epochs=2"])
    assert cfg.seeds == [3, 4]
    assert [v.name for v in cfg.variants] == ["seed", "image_only"]
    assert cfg["train"]["learning_rate"] == 0.01
    assert cfg["data"]["path"] == "/some/where"
    assert parse_override("a.b=true") == ("a.b", True)


@pytest.mark.parametrize("override, message", [
    ("train.epoch=3", "unknown key 'train.epoch'"),
    ("nosuch=1", "unknown key 'nosuch'"),
    ('variants=["seed","nope"]', "unknown variant 'nope'; valid variants: seed, no_featurewise"),
    ("train.epochs=abc", "train.epochs: expected int"),
    ("train.epochs=0", "train.epochs must be an integer >= 1"),
    ("data.source=web", "data.source: unknown value 'web'"),
    ("train.seeds=[]", "train.seeds must be a non-empty list"),
    ("data.image_size=50", "divisible by 2**model.levels"),
    ("pipeline=keras2", "pipeline: unknown value"),
    ("noequals", "--set expects key=value"),
])
def test_bad_overrides_fail_with_the_valid_choices(override, message):
    with pytest.raises(ConfigError, match=message.replace("*", r"\*").replace("(", r"\(")):
        load_config(DEFAULT, [override])


def test_unknown_key_in_file_and_malformed_toml(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nepochz = 3\n")
    with pytest.raises(ConfigError, match="unknown key 'train.epochz'; valid keys: .*train.epochs"):
        load_config(bad)
    bad.write_text("[train\nepochs = 3\n")
    with pytest.raises(ConfigError, match="malformed TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")


def test_defined_variant_is_one_table(tmp_path):
    f = tmp_path / "e.toml"
    f.write_text('variants = ["seed", "dice_binary"]\n[define.dice_binary]\nmasks = "binary"\nloss = "dice"\n')
    cfg = load_config(f)
    v = cfg.variants[1]
    assert (v.name, v.masks, v.loss, v.head, v.images) == ("dice_binary", "binary", "dice", "sigmoid", "featurewise")
    f.write_text('variants = ["x"]\n[define.x]\nmasks = "whitened"\n')
    with pytest.raises(ConfigError, match="unknown value 'whitened' for axis 'masks'"):
        load_config(f)


def test_factorial_grid_expands_and_excludes(tmp_path):
    f = tmp_path / "f.toml"
    f.write_text('[factorial]\nmasks = ["featurewise", "binary", "signed"]\nhead = ["sigmoid", "tanh"]\n'
                 'exclude = [{head = "sigmoid", masks = "signed"}, {head = "tanh", masks = "binary"}]\n')
    cfg = load_config(f)
    combos = {(v.masks, v.head) for v in cfg.variants}
    assert combos == {("featurewise", "sigmoid"), ("binary", "sigmoid"), ("featurewise", "tanh"), ("signed", "tanh")}
    assert len({v.name for v in cfg.variants}) == 4
    f.write_text('[factorial]\nheads = ["tanh"]\n')
    with pytest.raises(ConfigError, match="unknown axis 'heads'"):
        load_config(f)


def test_study_names_of_existing_experiments_are_unchanged():
    """Values at main before data.split and [leakage] existed: their defaults leave the digest alone,
    and the leakage thresholds change no trained number, so no value of them renames a study."""
    assert load_config(None, machine=CPU).study_name == "experiment-a48efbff"
    assert load_config(ROOT / "experiments" / "whitening.toml", machine=CPU).study_name == "whitening-8cc43140"
    assert load_config(ROOT / "experiments" / "whitening-isbi.toml", machine=CPU).study_name == "whitening-isbi-78818db9"
    assert load_config(None, ["data.split=random", "leakage.margin=0.5"], CPU).study_name == "experiment-a48efbff"
    assert load_config(None, ["data.split=contiguous"], CPU).study_name != "experiment-a48efbff"


@pytest.mark.parametrize("override, message", [("data.split=blocks", "valid: random, contiguous"),
                                               ("leakage.far_fraction=1.5", "between 0 and 1"),
                                               ("leakage.margin=0", "leakage.margin")])
def test_split_and_leakage_settings_are_validated(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_a_config_logged_before_split_and_leakage_existed_still_loads():
    from harness.config import load_logged
    raw = load_config(DEFAULT).raw
    old = {k: v for k, v in raw.items() if k != "leakage"}
    old["data"] = {k: v for k, v in raw["data"].items() if k != "split"}
    cfg = load_logged(old)
    assert cfg["data"]["split"] == "random" and cfg.study_name == "whitening-8cc43140"


def test_validation_reads_the_settings_only_and_resolve_settles_the_machine():
    import copy
    given = validate(copy.deepcopy(DEFAULTS))
    assert given.raw["speed"]["device_augment"] == "auto" and given.machine is None
    with pytest.raises(RuntimeError, match="not resolved"):
        given.study_name
    on_cpu, on_gpu = resolve(given, CPU), resolve(given, GPU)
    assert (on_cpu["speed"]["device_augment"], on_gpu["speed"]["device_augment"]) == (False, True)
    assert given.raw["speed"]["device_augment"] == "auto"               # resolving copies
    assert on_cpu.study_name == load_config(None, ["speed.device_augment=false"], GPU).study_name
    assert on_gpu.study_name == load_config(None, ["speed.device_augment=true"], CPU).study_name
    assert on_cpu.study_name != on_gpu.study_name


def test_auto_resolves_again_under_overrides_and_keeps_tf_data_choices():
    on_gpu = load_config(None, machine=GPU)
    assert on_gpu.with_overrides({"speed.parallel_augment": True})["speed"]["device_augment"] is False
    assert on_gpu.with_overrides({"pipeline": "imagedatagenerator"})["speed"]["device_augment"] is False
    assert on_gpu.with_overrides({"train.epochs": 3}).machine == GPU
    assert load_config(None, ["augment.engine=layers"], GPU)["speed"]["device_augment"] is False
    with pytest.raises(ConfigError, match="true, false or"):
        load_config(None, ["speed.device_augment=yes"], CPU)
    with pytest.raises(ConfigError, match="replaces the tfdata pipeline"):
        load_config(None, ["speed.device_augment=true", "pipeline=imagedatagenerator"], CPU)


def test_another_backend_is_its_own_study_and_refuses_tf_only_pipelines():
    assert load_config(None, machine=JAX)["speed"]["device_augment"] is True          # "auto" under jax
    assert load_config(None, machine=JAX).study_name != load_config(None, ["speed.device_augment=true"], CPU).study_name
    assert load_config(None, machine=JAX).report_name == "experiment-jax"
    assert load_config(None, ["pipeline=imagedatagenerator"], CPU).report_name == "experiment-imagedatagenerator"
    with pytest.raises(ConfigError) as e:
        load_config(None, ["speed.device_augment=false"], JAX)
    assert str(e.value) == ('pipeline "tfdata" needs KERAS_BACKEND=tensorflow; under jax use '
                            "--set speed.device_augment=true")
    with pytest.raises(ConfigError, match="--set pipeline=tfdata"):
        load_config(None, ["pipeline=imagedatagenerator"], JAX)


def test_a_logged_config_resolves_to_its_study():
    cfg = load_config(ROOT / "experiments" / "whitening.toml", machine=CPU)
    assert load_logged(cfg.raw, CPU).study_name == cfg.study_name == "whitening-8cc43140"
