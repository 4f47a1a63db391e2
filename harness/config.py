"""Experiment file (TOML) + `--set key=value` overrides -> one validated, frozen config.

Everything the rest of the harness reads comes from here as plain data. Two steps, kept apart:
- `validate` checks the file and the overrides, and nothing else: unknown keys, unknown variants
  and values of the wrong type fail at once, with the list of what is valid;
- `resolve` settles what depends on the machine (a `backend.Machine`: the Keras backend, an
  accelerator) and records it in the config: `speed.device_augment = "auto"` becomes true or false in
  the settings that are logged and hashed into the study's name, and the backend joins that name
  where it is not TensorFlow.
`load_config` does both, for this process's machine unless it is given another.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.backend import Machine, this_machine
from harness.errors import ConfigError, needs_tensorflow

# The axes a variant is made of. Each value is looked up in one registry: transforms in data.py,
# heads and losses in losses.py. Kept here as names so that the config can be checked before
# TensorFlow is imported.
AXES: dict[str, tuple[str, ...]] = {
    # How training images are fed: "featurewise" = ImageDataGenerator's featurewise_center +
    # featurewise_std_normalization; "scaled" = divided by 255.
    "images": ("featurewise", "scaled"),
    # How training masks (the targets) are fed: "featurewise" = whitened like the images, as in the
    # case; "binary" = {0, 1}; "signed" = {-1, +1}.
    "masks": ("featurewise", "binary", "signed"),
    # Output activation of the 1x1 head.
    "head": ("sigmoid", "tanh"),
    # Loss; see losses.py for each one's valid targets and lower bound. A user's loss is named
    # "module:function" (the function may declare `target_range` and `lower_bound` attributes).
    "loss": ("bce", "modified_bce_posted", "modified_bce_signed", "modified_bce_corrected", "dice"),
    # Validation inputs: "raw" = images and masks as loaded (the case); "like_training" = the same
    # transform as training (no augmentation).
    "validation": ("raw", "like_training"),
}

# The variants of the case (docs/guides/variants.md). A new variant is one line: a name and its axes.
BUILTIN_VARIANTS: dict[str, dict[str, str]] = {
    "seed": dict(images="featurewise", masks="featurewise", head="sigmoid", loss="bce", validation="raw"),
    "no_featurewise": dict(images="scaled", masks="binary", head="sigmoid", loss="bce", validation="like_training"),
    "image_only": dict(images="featurewise", masks="binary", head="sigmoid", loss="bce", validation="like_training"),
    "tanh_posted": dict(images="featurewise", masks="featurewise", head="tanh", loss="modified_bce_posted", validation="raw"),
    "tanh_corrected": dict(images="featurewise", masks="signed", head="tanh", loss="modified_bce_corrected", validation="like_training"),
}

# Defaults of every section; an experiment file or --set may change values, never add keys.
DEFAULTS: dict[str, Any] = {
    "name": "experiment",           # the MLflow experiment and the report folder <results>/<name>/
    "description": "",              # one line shown at the top of the report
    "variants": list(BUILTIN_VARIANTS),   # the named variants to train, built-in or under [define]
    # Extra variants defined in the file: {name: {axis: value}}; missing axes come from "seed".
    "define": {},
    # Full factorial grid over the axes instead of named variants: {axis: [values]}, plus
    # "exclude": [{axis: value, ...}] dropping every combination that matches one entry.
    "factorial": {},
    "pipeline": "tfdata",            # the host feed: "tfdata", or "imagedatagenerator" (the case's own code path)
    "data": {
        "source": "synthetic",       # "synthetic" or "folder"
        "path": "",                  # folder with images/ and masks/ (source = "folder")
        "n_images": 384,             # synthetic: images made; folder: at most this many samples (0 = all)
        "image_size": 64,            # model input is image_size x image_size x channels
        "channels": 3,               # 1 or 3: image channels (folder images are converted to this many)
        "foreground_fraction": 0.15, # synthetic only: mean share of foreground pixels (0.01-0.5)
        "fit": "tile",               # folder images larger than the input: "tile" or "resize"
        "mask_threshold": 0.5,       # folder masks: foreground where value >= threshold * max level
        # Folder masks coded with labels ({0, 1, 2}, or 0/1 with a 255 "void" border): the values
        # that are foreground; every other value is background. Empty: masks must have two levels.
        "foreground_values": [],
        "val_fraction": 0.2,         # share of the source files held out for validation
        # How validation is held out, always by source file (tiles of one file stay on one side):
        # "random": a seeded draw of files; "contiguous": the last val_fraction of the files in natural
        # sort order, one file before them dropped: a block of a volume or video, whose neighbouring
        # slices or frames would otherwise sit on both sides (harness check: validation_near_training).
        "split": "random",
        "split_seed": 0,             # the random split depends on this only
        "data_seed": 0,              # synthetic images depend on this only
    },
    "augment": {                     # the case's ImageDataGenerator arguments, and how they are applied
        "rotation_range": 30.0,      # degrees
        "width_shift_range": 0.2,    # fraction of width
        "height_shift_range": 0.2,   # fraction of height
        "zoom_range": 0.2,           # zoom in [1 - z, 1 + z]
        "horizontal_flip": True,     # flip half the images left to right
        "fill_mode": "nearest",      # how pixels shifted in from outside are filled
        "stats_rounds": 2,           # fit(..., augment=True, rounds=2): stats over augmented copies
        # "affine": one combined transform, one resampling (as ImageDataGenerator); "layers": Keras'
        # RandomRotation -> RandomTranslation -> RandomZoom -> RandomFlip, one resampling each.
        "engine": "affine",
    },
    "model": {
        # A user's model as "module:function": function((H, W, C), head_activation) -> keras.Model
        # with output (H, W, 1). Empty: the case's U-Net, from the settings below.
        "builder": "",
        "start_depth": 16,           # filters of the U-Net's first block, doubled at each level down
        "levels": 4,                 # levels down (and up) of the U-Net
        # Keras' default; a short run with few steps per epoch needs a faster moving average
        # (e.g. 0.9), or validation, which uses the moving statistics, lags training.
        "bn_momentum": 0.99,
    },
    "train": {
        "epochs": 15,                # epochs of every grid point
        "batch_size": 32,            # training batch size
        "learning_rate": 1e-3,       # Adam's learning rate
        "seeds": [1],                # one grid point per variant and seed
        "deterministic": True,       # TensorFlow op determinism: same seed, same metrics on the CPU
    },
    # Speed options, off unless `harness bench` shows a gain on the device. Keras ignores XLA while
    # op determinism is on; mixed precision keeps the head, loss and metrics in float32. jit_compile
    # changes only how fast a point trains; the other three change its numbers (another random stream
    # or other arithmetic), so a value other than the default starts an Optuna study of its own
    # (RESULT_SPEED_KEYS).
    "speed": {
        "mixed_precision": False,    # Keras' mixed_float16 policy
        "jit_compile": False,        # XLA compilation of the train step
        # Augment batches on all cores, each from its own stateless key (affine engine): as
        # reproducible, another random stream. What it gives: `harness bench` (parallel_augment).
        "parallel_augment": False,
        # Augment on the device, inside the compiled train step (harness/feeds/device.py): the training
        # arrays live on the accelerator and no host pipeline can starve it; the only choice under a
        # Keras backend other than TensorFlow. "auto": on where KERAS_BACKEND is not tensorflow or an
        # accelerator is visible, else off; settled by `resolve` (the resolved value is what the
        # study's name and the logged config carry). Another random stream than tf.data's.
        "device_augment": "auto",
    },
    # `harness tune VARIANT`: Optuna's TPE sampler over these ranges, one seed, a median pruner on
    # the per-epoch val_miou. Each range is "section.key" = {low, high, log} or {choices = [...]};
    # an integer key draws integers. Tuning never changes the grid's study.
    "tune": {
        "trials": 12,                # trials of one `harness tune` call
        "seed": 1,                   # the sampler's seed and the trials' training seed
        "pruner_warmup_epochs": 4,   # epochs every trial runs before the pruner may stop it
        # what is tuned: "section.key" = {low, high, log} or {choices = [...]}
        "ranges": {"train.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}},
    },
    # harness check's validation_near_training (harness/leakage.py): measured on the data before
    # training; it changes no trained number, so it is not part of the study's name.
    "leakage": {
        "side": 16,                  # images compared as side x side block means, standardized
        "far_fraction": 0.25,        # training images this share of the files apart count as unrelated
        # Flag when validation's median nearest-training correlation exceeds the unrelated pairs'
        # by this much. Measured: 0.6 or more on neighbouring frames, under 0.1 on independent images.
        "margin": 0.2,
    },
    # Training health (harness/monitor.py measures it per epoch: the gradients in the train steps, the
    # rest on one fixed training batch; harness/health.py names the causes by these thresholds). It
    # changes no trained number: not part of the study's name.
    "health": {
        "measure": True,             # off only to measure what it costs (harness bench)
        "batch": 8,                  # images in the fixed batch: the first training images
        "update_ratio_high": 1.0,    # learning_rate_too_high: weights moved this share of their norm in an epoch
        "spread_high": 1.0,          # ... or batch losses this spread while no better than trivial
        "exploding_growth": 100.0,   # exploding_gradients: gradient norm this many times its first epoch's
        "vanishing_ratio": 1e-3,     # vanishing_gradients: first layer's gradient norm over the head's
        "dead_fraction": 0.5,        # dead_units: share of ReLU channels never active
        "saturated_fraction": 0.5,   # saturated_head: share of head outputs at its bounds
        "update_ratio_low": 1e-7,    # no_updates: weights moved at most this share in every epoch
        "signal_margin": 0.05,       # no_signal: the loss never this share below the trivial predictor's
        "signal_epochs": 5,          # ... over at least this many epochs (a healthy run starts above it)
    },
    "verdict": {
        # converged: mean val_miou over the last `window` epochs >= trivial + margin, and it exceeds
        # the mean of the `window` epochs before by less than `tolerance` (mIoU is noisy per epoch).
        "margin": 0.1,
        "window": 3,                 # epochs averaged at the end (and compared with the window before)
        "tolerance": 0.05,           # a plateau: mIoU moved less than this between the two windows
        # negative_loss: some epoch's training loss < the loss's lower bound - this much.
        "bound_slack": 1e-3,
    },
}

# Settings that tell the grid's points apart (harness/points.py) or change no numbers: left out of
# the study's digest. Everything else, every key of every other section, is in it, so a key added
# later is covered without being listed here.
NOT_IN_STUDY = ("variants", "define", "factorial", "description", "name", "tune", "leakage", "health")

# `speed` options that change the numbers: parallel augmentation draws another random stream, mixed
# precision other arithmetic. `jit_compile` is left out: Keras ignores XLA while train.deterministic
# is on, and with determinism off no two runs agree to the bit anyway, so XLA's rounding is within
# the noise such a study already has; it only changes how fast a point trains.
RESULT_SPEED_KEYS = ("parallel_augment", "mixed_precision", "device_augment")

# Keys added after studies existed, at the value that reproduces the numbers from before they
# existed: left out of the digest at that value, so studies (and their runs) made before the key
# keep their names. Any other value is in the digest.
NEUTRAL: dict[str, Any] = {"speed.parallel_augment": False, "speed.mixed_precision": False,
                           "speed.device_augment": False,
                           "model.builder": "", "data.foreground_values": [], "data.split": "random"}

PIPELINES = ("tfdata", "imagedatagenerator")
DATA_SOURCES = ("synthetic", "folder")
FIT_MODES = ("tile", "resize")
SPLITS = ("random", "contiguous")


@dataclass(frozen=True)
class Variant:
    name: str
    images: str
    masks: str
    head: str
    loss: str
    validation: str

    def axes(self) -> dict[str, str]:
        return {axis: getattr(self, axis) for axis in AXES}


@dataclass(frozen=True)
class Config:
    name: str
    raw: dict = field(repr=False)           # the experiment, plain data (logged as params): resolved once machine is set
    variants: tuple[Variant, ...] = ()
    source_dir: str = ""                    # the experiment file's folder: user modules are found there
    machine: Machine | None = None          # what `resolve` settled the settings for; None: not yet
    given: dict | None = field(default=None, repr=False, compare=False)   # raw before `resolve`

    def __getitem__(self, section: str) -> Any:
        return self.raw[section]

    @property
    def seeds(self) -> list[int]:
        return list(self.raw["train"]["seeds"])

    @property
    def study_name(self) -> str:
        """The experiment's name plus a digest of every setting that changes a point's numbers, except
        what tells the points apart (variants, their definitions, seeds: see harness/points.py).
        Change a hyperparameter and a new study starts; add a seed or a variant and the finished
        points are kept."""
        return f"{self.name}-{settings_digest(self.raw, self.resolved_for.backend)}"

    @property
    def report_name(self) -> str:
        """Folder of the report: the experiment's name, plus the pipeline and the Keras backend where
        they are not the defaults (a JAX sweep never overwrites TensorFlow's report)."""
        name = self.name if self.raw["pipeline"] == "tfdata" else f"{self.name}-{self.raw['pipeline']}"
        backend = self.resolved_for.backend
        return name if backend == "tensorflow" else f"{name}-{backend}"

    @property
    def resolved_for(self) -> Machine:
        if self.machine is None:
            raise RuntimeError(f"config {self.name!r} is not resolved for a machine yet (config.resolve)")
        return self.machine

    def with_overrides(self, overrides: dict) -> "Config":
        """The same experiment with `overrides` ({"section.key": value}), resolved for the same machine:
        a setting left at "auto" is settled again with the others."""
        raw = copy.deepcopy(self.raw if self.given is None else self.given)
        for key, value in overrides.items():
            set_dotted(raw, key, value)
        cfg = validate(raw, self.source_dir)
        return cfg if self.machine is None else resolve(cfg, self.machine)


def settings_digest(raw: dict, backend: str = "tensorflow") -> str:
    """8 hex digits over the resolved settings that make a point's numbers, seeds and variants aside."""
    settings = {k: copy.deepcopy(v) for k, v in raw.items() if k not in NOT_IN_STUDY}
    settings["train"].pop("seeds")
    settings["speed"] = {k: v for k, v in settings["speed"].items() if k in RESULT_SPEED_KEYS}
    for key, value in NEUTRAL.items():
        section, name = key.split(".")
        if settings.get(section, {}).get(name, value) == value:
            settings.get(section, {}).pop(name, None)
    if not settings["speed"]:
        del settings["speed"]          # the digest of studies made before speed options counted
    if backend != "tensorflow":
        # Another backend draws other random numbers (and rounds otherwise): a study of its own.
        # Not a setting but the machine (KERAS_BACKEND); TensorFlow is neutral.
        settings["keras_backend"] = backend
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]


DEFAULT_EXPERIMENT = "whitening"


def find_experiment(name: str | None) -> Path:
    """A path, or a name looked up in ./experiments/ and then in the source checkout's experiments/."""
    name = name or DEFAULT_EXPERIMENT
    candidates = [Path(name), Path("experiments") / f"{name}.toml",
                  Path(__file__).resolve().parent.parent / "experiments" / f"{name}.toml"]
    for path in candidates:
        if path.is_file():
            return path
    raise ConfigError(f"experiment not found: {name} (give a .toml path or a name in experiments/)")


def load_config(path: str | Path | None, overrides: list[str] = (), machine: Machine | None = None) -> Config:
    """Read an experiment file (or the defaults), apply `key=value` overrides, validate, and resolve
    for `machine` (default: this process's)."""
    raw = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"experiment file not found: {path}")
        try:
            from_file = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: malformed TOML: {e}") from None
        merge(raw, from_file, where=str(path))
        if "name" not in from_file:
            raw["name"] = path.stem
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(raw, key, value)
    cfg = validate(raw, str(path.resolve().parent) if path is not None else "")
    return resolve(cfg, machine or this_machine())


def load_logged(raw: dict, machine: Machine | None = None) -> Config:
    """A config a sweep logged (config.json), perhaps before some keys existed: those take their
    defaults, which reproduce what the sweep computed (see NEUTRAL)."""
    full = copy.deepcopy(DEFAULTS)
    merge(full, raw, where="logged config")
    return resolve(validate(full), machine or this_machine())


def parse_override(item: str) -> tuple[str, Any]:
    """`train.seeds=[1,2]` -> ("train.seeds", [1, 2]); a bare word is read as a string."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, text = item.split("=", 1)
    key = key.strip()
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # data.path=/some/folder reads naturally without quotes
    return key, value


def set_dotted(raw: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for depth, part in enumerate(parts[:-1]):
        if part not in node or not isinstance(node[part], dict):
            raise ConfigError(f"unknown key {key!r}; valid keys: {', '.join(valid_keys())}")
        node = node[part]
    last = parts[-1]
    if last not in node and parts[0] not in ("define", "factorial") and parts[:2] != ["tune", "ranges"]:
        raise ConfigError(f"unknown key {key!r}; valid keys: {', '.join(valid_keys())}")
    node[last] = merged_value(node.get(last), value, key)


def merge(base: dict, update: dict, where: str, prefix: str = "") -> None:
    """Merge `update` into `base`, refusing keys that `base` does not have."""
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            raise ConfigError(f"{where}: unknown key {dotted!r}; valid keys: {', '.join(valid_keys())}")
        if isinstance(base[key], dict) and base[key] and isinstance(value, dict) and dotted != "tune.ranges":
            merge(base[key], value, where, prefix=dotted + ".")
        else:
            base[key] = merged_value(base[key], value, dotted)


def merged_value(old: Any, new: Any, key: str) -> Any:
    """Keep types stable: an int may stand for a float, nothing else changes type."""
    if old is None or key.split(".")[0] in ("define", "factorial") or key.startswith("tune.ranges."):
        return new
    if key == "speed.device_augment":
        if new != "auto" and not isinstance(new, bool):
            raise ConfigError(f"{key}: expected true, false or \"auto\", got {new!r}")
        return new
    if isinstance(old, bool) or isinstance(new, bool):
        if not (isinstance(old, bool) and isinstance(new, bool)):
            raise ConfigError(f"{key}: expected a boolean (true/false), got {new!r}")
        return new
    if isinstance(old, float) and isinstance(new, int):
        return float(new)
    if type(old) is not type(new):
        raise ConfigError(f"{key}: expected {type(old).__name__}, got {type(new).__name__} {new!r}")
    return new


def valid_keys() -> list[str]:
    keys = []
    for key, value in DEFAULTS.items():
        if isinstance(value, dict) and value:
            keys += [f"{key}.{sub}" for sub in value]
        else:
            keys.append(key)
    return keys


def validate(raw: dict, source_dir: str = "") -> Config:
    data, train = raw["data"], raw["train"]
    choose("pipeline", raw["pipeline"], PIPELINES)
    choose("data.source", data["source"], DATA_SOURCES)
    choose("data.fit", data["fit"], FIT_MODES)
    choose("data.split", data["split"], SPLITS)
    if data["source"] == "folder" and not data["path"]:
        raise ConfigError("data.source = 'folder' needs data.path (a folder holding images/ and masks/)")
    positive("data.image_size", data["image_size"], minimum=16)
    if not raw["model"]["builder"] and data["image_size"] % 2 ** raw["model"]["levels"]:
        raise ConfigError(f"data.image_size must be divisible by 2**model.levels = {2 ** raw['model']['levels']}")
    if data["channels"] not in (1, 3):
        raise ConfigError("data.channels must be 1 or 3")
    if not 0.01 <= data["foreground_fraction"] <= 0.5:
        raise ConfigError("data.foreground_fraction must be between 0.01 and 0.5")
    if not 0.0 < data["val_fraction"] < 1.0:
        raise ConfigError("data.val_fraction must be between 0 and 1")
    if data["n_images"] < 0:
        raise ConfigError("data.n_images must be >= 0")
    validate_user_names(raw)
    positive("model.start_depth", raw["model"]["start_depth"])
    positive("model.levels", raw["model"]["levels"])
    if not 0.0 < raw["model"]["bn_momentum"] < 1.0:
        raise ConfigError("model.bn_momentum must be between 0 and 1")
    positive("train.epochs", train["epochs"])
    positive("train.batch_size", train["batch_size"])
    if not train["learning_rate"] > 0:
        raise ConfigError("train.learning_rate must be > 0")
    if not train["seeds"] or not all(isinstance(s, int) and not isinstance(s, bool) for s in train["seeds"]):
        raise ConfigError("train.seeds must be a non-empty list of integers, e.g. [1, 2]")
    if len(set(train["seeds"])) != len(train["seeds"]):
        raise ConfigError("train.seeds has duplicates")
    choose("augment.engine", raw["augment"]["engine"], ("affine", "layers"))
    if raw["augment"]["fill_mode"] not in ("nearest", "reflect", "wrap", "constant"):
        raise ConfigError("augment.fill_mode must be one of nearest, reflect, wrap, constant")
    validate_leakage(raw["leakage"])
    validate_health(raw["health"])
    validate_tune(raw)
    validate_device_augment(raw)
    variants = resolve_variants(raw)
    return Config(name=str(raw["name"]), raw=raw, variants=variants, source_dir=source_dir)


def resolve(cfg: Config, machine: Machine) -> Config:
    """The config settled for `machine`: speed.device_augment "auto" -> true or false (in the settings
    that are logged and hashed), and a pipeline that needs TensorFlow refused under another Keras
    backend, naming the alternative. The config it was resolved from is kept as `given`."""
    given = cfg.raw if cfg.given is None else cfg.given
    raw = copy.deepcopy(given)
    speed, pipeline = raw["speed"], raw["pipeline"]
    if speed["device_augment"] == "auto":
        # The case's own ImageDataGenerator pair stays what it is; the layers engine and
        # parallel_augment are tf.data's: asking for them keeps tf.data.
        speed["device_augment"] = (pipeline == "tfdata" and raw["augment"]["engine"] == "affine"
                                   and not speed["parallel_augment"]
                                   and (machine.backend != "tensorflow" or machine.accelerator))
    if machine.backend != "tensorflow" and not speed["device_augment"]:
        raise needs_tensorflow(pipeline, machine.backend)
    return Config(name=cfg.name, raw=raw, variants=cfg.variants, source_dir=cfg.source_dir,
                  machine=machine, given=given)


def validate_device_augment(raw: dict) -> None:
    """speed.device_augment set to true: only with what it can replace (an "auto" is settled by
    `resolve`, which never turns it on where these refuse)."""
    speed, pipeline = raw["speed"], raw["pipeline"]
    if speed["device_augment"] is True:
        if pipeline != "tfdata":
            raise ConfigError(f'speed.device_augment replaces the tfdata pipeline; pipeline "{pipeline}" '
                              "runs the case's own generators (set speed.device_augment=false, under TensorFlow)")
        if raw["augment"]["engine"] != "affine":
            raise ConfigError('speed.device_augment runs augment.engine = "affine" only')
        if speed["parallel_augment"]:
            raise ConfigError("speed.parallel_augment is a tf.data option; it has no meaning with speed.device_augment")


def validate_user_names(raw: dict) -> None:
    """The forms of user-named code and label values; the code itself is imported where it is used."""
    from harness.user_code import parse_spec
    if raw["model"]["builder"]:
        parse_spec(raw["model"]["builder"])
    values = raw["data"]["foreground_values"]
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                               for v in values):
        raise ConfigError("data.foreground_values must be a list of mask values, e.g. [1, 2]")


def validate_leakage(leakage: dict) -> None:
    positive("leakage.side", leakage["side"], minimum=2)
    if not 0.0 < leakage["far_fraction"] < 1.0:
        raise ConfigError("leakage.far_fraction must be between 0 and 1")
    if not 0.0 < leakage["margin"] <= 2.0:
        raise ConfigError("leakage.margin must be a correlation difference in (0, 2]")


def validate_health(health: dict) -> None:
    positive("health.batch", health["batch"])
    positive("health.signal_epochs", health["signal_epochs"])
    for key, value in health.items():
        if isinstance(value, float) and not value >= 0:
            raise ConfigError(f"health.{key} must be >= 0")


def validate_tune(raw: dict) -> None:
    tune = raw["tune"]
    positive("tune.trials", tune["trials"])
    positive("tune.pruner_warmup_epochs", tune["pruner_warmup_epochs"], minimum=0)
    if not isinstance(tune["ranges"], dict) or not tune["ranges"]:
        raise ConfigError("tune.ranges must name at least one range, e.g. "
                          "{\"train.learning_rate\" = {low = 1e-4, high = 1e-2, log = true}}")
    numeric = [k for k in valid_keys() if k.split(".")[0] in ("augment", "model", "train")
               and isinstance(default_of(k), (int, float)) and not isinstance(default_of(k), bool)]
    for key, spec in tune["ranges"].items():
        if key not in numeric:
            raise ConfigError(f"tune.ranges: {key!r} cannot be tuned; numeric keys: {', '.join(numeric)}")
        where = f"tune.ranges.{key}"
        if not isinstance(spec, dict):
            raise ConfigError(f"{where} must be {{low = .., high = ..}} or {{choices = [..]}}")
        if "choices" in spec:
            if set(spec) != {"choices"} or not isinstance(spec["choices"], list) or not spec["choices"]:
                raise ConfigError(f"{where}: choices must be a non-empty list and stand alone")
            continue
        if set(spec) - {"low", "high", "log"} or not {"low", "high"} <= set(spec):
            raise ConfigError(f"{where}: expected keys low, high and optionally log, got {', '.join(spec)}")
        low, high = spec["low"], spec["high"]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or not low < high:
            raise ConfigError(f"{where}: low and high must be numbers with low < high")
        if spec.get("log") and low <= 0:
            raise ConfigError(f"{where}: a log range needs low > 0")


def default_of(key: str) -> Any:
    section, _, name = key.partition(".")
    return DEFAULTS[section].get(name) if isinstance(DEFAULTS.get(section), dict) else DEFAULTS.get(key)


def resolve_variants(raw: dict) -> tuple[Variant, ...]:
    catalog = dict(BUILTIN_VARIANTS)
    for name, axes in raw["define"].items():
        if not isinstance(axes, dict):
            raise ConfigError(f"define.{name} must be a table of axes, e.g. {{images = 'scaled'}}")
        catalog[name] = {**BUILTIN_VARIANTS["seed"], **check_axes(axes, f"define.{name}")}
    if raw["factorial"]:
        variants = factorial_variants(raw["factorial"])
    else:
        names = raw["variants"]
        if not isinstance(names, list) or not names:
            raise ConfigError("variants must be a non-empty list of variant names")
        for name in names:
            if name not in catalog:
                raise ConfigError(f"unknown variant {name!r}; valid variants: {', '.join(catalog)}")
        if len(set(names)) != len(names):
            raise ConfigError("variants has duplicates")
        variants = [Variant(name=name, **catalog[name]) for name in names]
    return tuple(variants)


def check_axes(axes: dict, where: str) -> dict:
    for axis, value in axes.items():
        if axis not in AXES:
            raise ConfigError(f"{where}: unknown axis {axis!r}; valid axes: {', '.join(AXES)}")
        values = value if isinstance(value, list) else [value]
        for v in values:
            if axis == "loss" and isinstance(v, str) and ":" in v:
                continue  # a user's loss, "module:function"; resolved (and checked) in losses.py
            if v not in AXES[axis]:
                raise ConfigError(f"{where}: unknown value {v!r} for axis {axis!r}; valid: {', '.join(AXES[axis])}")
    return axes


def factorial_variants(spec: dict) -> list[Variant]:
    """Every combination of the listed axis values (others fixed at the `seed` variant's), less excludes."""
    spec = dict(spec)
    excludes = spec.pop("exclude", [])
    check_axes(spec, "factorial")
    for rule in excludes:
        if not isinstance(rule, dict):
            raise ConfigError("factorial.exclude must be a list of tables, e.g. [{head = 'tanh', loss = 'bce'}]")
        check_axes(rule, "factorial.exclude")
    axes = {axis: spec.get(axis, [BUILTIN_VARIANTS["seed"][axis]]) for axis in AXES}
    axes = {axis: v if isinstance(v, list) else [v] for axis, v in axes.items()}
    variants = []
    for combo in itertools.product(*axes.values()):
        chosen = dict(zip(axes, combo))
        if any(all(chosen[a] == v for a, v in rule.items()) for rule in excludes):
            continue
        varying = [chosen[a] for a in AXES if len(axes[a]) > 1]
        name = "-".join(varying) if varying else "base"
        variants.append(Variant(name=name, **chosen))
    if not variants:
        raise ConfigError("factorial: every combination is excluded")
    return variants


def choose(key: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"{key}: unknown value {value!r}; valid: {', '.join(valid)}")


def positive(key: str, value: Any, minimum: int = 1) -> None:
    if not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r}")
