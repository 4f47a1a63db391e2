"""harness check: flags from measurement, on crafted losses and data."""
import math
import re

import keras
import numpy as np
import pytest

from harness.check import check_variant, predicted_verdict
from harness.probe import probe_loss
from harness.config import Variant, load_config
from harness.data import Dataset, make_synthetic

from conftest import ROOT


@pytest.fixture(scope="module")
def setup():
    cfg = load_config(ROOT / "experiments" / "whitening.toml",
                      ["data.n_images=24", "data.image_size=32", "augment.stats_rounds=1", "train.batch_size=8"])
    x, m = make_synthetic(24, 32, 0.15, seed=0)
    return cfg, Dataset(x[:18], m[:18], x[18:], m[18:], "test")


def flags(setup, **axes):
    cfg, ds = setup
    base = dict(images="featurewise", masks="binary", head="sigmoid", loss="bce", validation="like_training")
    return check_variant(Variant(name="v", **{**base, **axes}), ds, cfg).flags


# Crafted user losses, named as module:function like a user's.
def sign_flipped_bce(y, p):
    return -keras.losses.binary_crossentropy(y, p)


def bce_plus_shift(y, p):
    return keras.losses.binary_crossentropy(y, p) - 0.5


bce_plus_shift.lower_bound = -0.5


def smoothed_bce(y, p):
    return keras.losses.binary_crossentropy(y, p, label_smoothing=0.1)


smoothed_bce.lower_bound = 0.2


def summed_shifted_bce(y, p):        # BCE - 0.5 a pixel, summed over the batch and the pixels
    return keras.ops.sum(keras.losses.binary_crossentropy(y, p)[..., None] - 0.5)


def test_builtin_variants_flag_as_the_case_predicts(setup):
    seed = flags(setup, masks="featurewise", validation="raw")
    assert {"targets_outside_loss_domain", "loss_unbounded_below", "validation_not_transformed_like_training"} <= set(seed)
    assert "loss_not_minimized_at_target" not in seed
    posted = flags(setup, masks="featurewise", head="tanh", loss="modified_bce_posted", validation="raw")
    assert "loss_not_minimized_at_target" in posted
    assert flags(setup) == []                                                           # image_only
    assert flags(setup, images="scaled") == []                                          # no_featurewise
    assert flags(setup, masks="signed", head="tanh", loss="modified_bce_corrected") == []  # tanh_corrected
    assert predicted_verdict(seed) == predicted_verdict(posted) == "negative_loss_or_diverged"


def test_posted_formula_is_not_minimized_even_on_proper_targets(setup):
    f = flags(setup, masks="signed", head="tanh", loss="modified_bce_posted")
    assert "loss_not_minimized_at_target" in f and "targets_outside_loss_domain" not in f


def test_unshifted_tanh_loss_has_a_floor_below_zero_and_nothing_else(setup):
    assert flags(setup, masks="signed", head="tanh", loss="modified_bce_signed") == ["loss_floor_not_zero"]


def test_user_losses_are_probed_like_builtin_ones(setup):
    assert "loss_not_minimized_at_target" in flags(setup, loss="test_check:sign_flipped_bce")
    assert flags(setup, loss="test_check:bce_plus_shift") == ["loss_floor_not_zero"]
    assert flags(setup, loss="test_check:smoothed_bce") == []
    assert flags(setup, loss="dice") == []


def test_a_summed_loss_is_flagged_and_shows_a_training_batch_floor(setup):
    cfg, ds = setup
    variant = Variant(name="v", images="featurewise", masks="binary", head="sigmoid",
                      loss="test_check:summed_shifted_bce", validation="like_training")
    row = check_variant(variant, ds, cfg)
    assert row.flags == ["loss_floor_not_zero", "loss_summed"]
    assert row.loss_floor == pytest.approx(-0.5 * 8 * 32 * 32, rel=1e-3)   # 18 images: batches of 8, 8, 2
    assert row.details["loss_summed"] == "value ~ batch^1 x pixels^1; floor -8 on a 4x4 probe, -4096 for a training batch"
    assert predicted_verdict(row.flags) == "trains"


def test_raw_validation_is_flagged_and_standardized_is_not(setup):
    assert "validation_not_transformed_like_training" in flags(setup, validation="raw")
    assert "validation_not_transformed_like_training" not in flags(setup, validation="like_training")
    # Scaled images fed raw (0..255 against 0..1) are caught too.
    assert "validation_not_transformed_like_training" in flags(setup, images="scaled", validation="raw")


def test_non_binary_masks_are_flagged(setup):
    cfg, ds = setup
    soft = ds.train_masks.copy()
    soft[:, :2, :2] = 0.5
    grey = Dataset(ds.train_images, soft, ds.val_images, ds.val_masks, "soft")
    row = check_variant(Variant("v", "featurewise", "binary", "sigmoid", "bce", "like_training"), grey, cfg)
    assert "masks_not_binary" in row.flags


def test_probe_sees_bce_fall_without_bound_above_one():
    z, values = probe_loss(keras.losses.binary_crossentropy, "sigmoid", {1: 2.0})
    v = values[1]
    assert v[-1] < -10 and np.all(np.diff(v[-20:]) < 0) and math.isfinite(v[-1])


def two_channel_net(input_shape, activation):
    inputs = keras.Input(input_shape)
    return keras.Model(inputs, keras.layers.Conv2D(2, 1, activation=activation)(inputs))


def test_a_model_builder_without_one_mask_channel_is_a_finding(setup):
    from harness.check import safe_check
    cfg, ds = setup
    bad = cfg.with_overrides({"model.builder": "test_check:two_channel_net"})
    row = safe_check(Variant("v", "featurewise", "binary", "sigmoid", "bce", "like_training"), ds, bad)
    assert row.flags == ["check_failed"] and "one mask channel" in row.details["check_failed"]
    assert predicted_verdict(row.flags) == "crashed"


def test_declared_and_measured_floors_are_cross_checked(setup):
    cfg, ds = setup
    row = check_variant(Variant("v", "featurewise", "binary", "sigmoid", "test_check:bce_plus_shift",
                                "like_training"), ds, cfg)
    assert row.loss_floor == pytest.approx(-0.5, abs=1e-3) and row.declared_floor == -0.5
    posted = check_variant(Variant("v", "featurewise", "signed", "tanh", "modified_bce_posted", "like_training"),
                           ds, cfg)
    assert "declared_floor_differs" in posted.flags and posted.threshold == pytest.approx(0.0, abs=1e-6)


# validation_near_training: measured once per dataset, on every variant's row.
QUICK = ["variants=[\"image_only\"]", "augment.stats_rounds=1", "train.batch_size=8"]


def test_cli_check_flags_neighbouring_frames_split_at_random_and_not_as_a_block(cli, tmp_path):
    import json
    from scenes import moving_scene, write_folder
    images, masks = moving_scene(40, 64, speed=3)
    folder = write_folder(tmp_path / "frames", images, masks, [f"frame_{i}" for i in range(1, 41)])
    common = ["check", "--json", "--set", "data.source=folder", "--set", f"data.path={folder}",
              "--set", "data.image_size=64", *[a for s in QUICK for a in ("--set", s)]]
    code, out, _ = cli(*common)
    row = json.loads(out)[0]
    assert code == 0 and "validation_near_training" in row["flags"]
    assert row["validation"]["val_median"] - row["validation"]["typical"] > 0.4
    assert 'data.split="contiguous"' in row["explanations"]["validation_near_training"]["fix"]
    code, out, _ = cli(*common, "--set", 'data.split="contiguous"')
    row = json.loads(out)[0]
    assert code == 0 and "validation_near_training" not in row["flags"], row["validation"]
    assert row["validation"]["split"].startswith("contiguous: the last 8 of 40 files")
    code, out, _ = cli(*common[:1], *common[2:])                    # the text output says it too
    assert out.startswith("validation: split random") and "validation_near_training:" in out


def test_duplicated_files_across_the_split_are_flagged_and_named(tmp_path):
    from harness.check import check_experiment
    from harness.data import load_dataset
    from scenes import write_folder
    x, m = make_synthetic(10, 32, 0.15, seed=0)
    names = [f"a{i}" for i in range(10)] + [f"copy_of_a{i}" for i in range(10)]
    write_folder(tmp_path, np.concatenate([x, x])[..., :1], np.concatenate([m, m]), names)
    cfg = load_config(None, ["data.source=folder", f"data.path={tmp_path}", "data.image_size=32", "data.channels=1",
                             *QUICK])
    rows = check_experiment(cfg, load_dataset(cfg["data"]))
    assert rows[0].flags == ["validation_near_training"]
    measured = rows[0].details["validation_near_training"]
    assert "exact duplicate(s) across the split" in measured and ".png = training " in measured
    pairs = re.findall(r"validation (\S+\.png) = training (\S+\.png)", measured)
    # Each validation file is named with its own copy on the training side.
    assert pairs and all(v != t and v.removeprefix("copy_of_") == t.removeprefix("copy_of_") for v, t in pairs), pairs
    assert rows[0].fix("validation_near_training").startswith("remove the duplicated files")


@pytest.mark.parametrize("experiment", [None, ROOT / "experiments" / "whitening.toml"])
def test_the_embedded_synthetic_set_is_not_flagged(experiment):
    from harness.check import validation_leakage
    from harness.data import load_dataset
    cfg = load_config(experiment)
    found = validation_leakage(load_dataset(cfg["data"]), cfg["leakage"])
    assert not found["flagged"] and abs(found["val_median"] - found["typical"]) < 0.1, found["measured"]


# The check's plain parts: what a row says, and the measurements behind two of its flags.
from harness.check import (FLAGS, CheckRow, count_levels, format_rows, input_mismatch, safe_check,  # noqa: E402
                           target_levels, target_mismatch)


def test_flags_predict_a_crash_then_a_failure_then_training():
    assert predicted_verdict(["loss_floor_not_zero", "check_failed", "loss_unbounded_below"]) == "crashed"
    assert predicted_verdict(["loss_unbounded_below"]) == "negative_loss_or_diverged"
    assert predicted_verdict(["masks_not_binary", "loss_not_minimized_at_target"]) == "negative_loss_or_diverged"
    assert predicted_verdict(["loss_floor_not_zero", "loss_summed", "targets_outside_loss_domain"]) == "trains"
    assert predicted_verdict([]) == "trains"


def row(**changed):
    base = dict(variant="seed", target_range=(-0.446, 2.43), target_levels={"background": -0.446, "foreground": 2.43},
                head_range=(0.0, 1.0), loss_domain=(0.0, 1.0), loss_floor=0.0, declared_floor=0.0, threshold=0.5,
                probed_min=-12.5)
    return CheckRow(**{**base, **changed})


def test_a_row_reads_as_its_measurements_its_flags_and_their_fixes():
    r = row(flags=["targets_outside_loss_domain"], details={"targets_outside_loss_domain": "targets span [-0.446, 2.43]"})
    assert format_rows([r, row(variant="image_only", target_range=(0.0, 1.0))]).splitlines() == [
        "seed: targets [-0.446, 2.43] (background -0.446, foreground 2.43), head [0, 1], loss domain [0, 1], "
        "floor 0, threshold 0.5 -> predicted: trains",
        "  targets_outside_loss_domain: training targets leave the range the loss is defined for "
        "(targets span [-0.446, 2.43])",
        "    fix: feed binary masks (do not whiten them), or use a loss defined for these targets",
        "image_only: targets [0, 1] (background -0.446, foreground 2.43), head [0, 1], loss domain [0, 1], "
        "floor 0, threshold 0.5 -> predicted: trains",
        "  no flag"]
    d = r.to_dict()
    assert d["explanations"] == {"targets_outside_loss_domain": {
        "why": "training targets leave the range the loss is defined for",
        "fix": "feed binary masks (do not whiten them), or use a loss defined for these targets",
        "measured": "targets span [-0.446, 2.43]"}}
    assert d["variant"] == "seed" and d["probed_min"] == -12.5


def test_a_variant_whose_check_raises_is_a_check_failed_row(setup):
    cfg, ds = setup
    r = safe_check(Variant("v", "featurewise", "binary", "sigmoid", "no_such_loss", "like_training"), ds, cfg)
    assert r.variant == "v" and r.flags == ["check_failed"]
    assert r.details["check_failed"].startswith("ConfigError: unknown loss 'no_such_loss'")
    assert math.isnan(r.loss_floor) and math.isnan(r.threshold) and r.declared_floor is None
    assert math.isnan(r.target_levels["background"]) and math.isnan(r.target_levels["foreground"])
    assert math.isnan(r.probed_min)
    # ... and it prints like any row: NaN where nothing was measured.
    assert format_rows([r]).splitlines()[0] == ("v: targets [nan, nan] (background nan, foreground nan), head [nan, nan], "
                                                "loss domain [nan, nan], floor nan, threshold nan -> predicted: crashed")


def test_the_check_measures_the_first_seed_training_data(setup):
    # Whitened masks: the targets' levels come from augmented statistics, which depend on the seed.
    cfg, ds = setup
    variant = Variant("seed", "featurewise", "featurewise", "sigmoid", "bce", "like_training")
    first = safe_check(variant, ds, cfg.with_overrides({"train.seeds": [3, 1]}))
    assert first.flags and "check_failed" not in first.flags
    assert first.target_levels != check_variant(variant, ds, cfg, seed=1).target_levels


def test_validation_inputs_must_match_training_within_one_std_and_a_factor_two():
    rng = np.random.default_rng(0)
    train = rng.normal(0.0, 1.0, (4, 8, 8, 2)).astype(np.float32)
    standardized = (train - train.mean(axis=(0, 1, 2))) / train.std(axis=(0, 1, 2))
    assert input_mismatch(standardized, standardized * 1.9 + 0.9) == []
    assert input_mismatch(standardized, standardized * 0.55 - 0.9) == []
    assert input_mismatch(standardized, standardized + 1.1) != []           # mean off by more than one std
    assert input_mismatch(standardized, standardized - 1.1) != []
    assert input_mismatch(standardized, standardized * 2.1) != []           # twice as wide
    assert input_mismatch(standardized, standardized * 0.45) != []          # half as wide
    shifted = standardized.copy()
    shifted[..., 1] += 1.5                                                  # one channel off is enough
    (message,) = input_mismatch(standardized, shifted)
    assert message.startswith("inputs: training mean [") and "validation mean [" in message


def test_validation_targets_must_span_the_training_range_within_five_percent():
    train = np.array([-0.5, 2.5])                  # span 3: 0.15 either way is allowed
    assert target_mismatch(train, np.array([-0.64, 2.64])) == []
    assert target_mismatch(train, np.array([-0.36, 2.36])) == []
    assert target_mismatch(train, np.array([0.0, 1.0])) == ["targets: training [-0.5, 2.5], validation [0, 1]"]
    assert target_mismatch(train, np.array([-0.66, 2.5])) != []
    assert target_mismatch(train, np.array([-0.5, 2.34])) != []


def test_mask_levels_are_counted_to_four_decimals():
    assert count_levels(np.array([0.0, 1.0, 1.00001, 0.0])) == 2
    assert count_levels(np.array([0.0, 0.5, 1.0, 1.0])) == 3


def test_target_levels_are_what_a_background_and_a_foreground_pixel_become():
    class Whiten:
        def mask(self, m):
            return (np.asarray(m, np.float32) - 0.15) / 0.5
    assert target_levels(Whiten()) == {0: pytest.approx(-0.3), 1: pytest.approx(1.7)}


def test_an_experiment_is_checked_on_its_own_data():
    from harness.check import check_experiment
    cfg = load_config(ROOT / "experiments" / "whitening.toml",
                      ["data.n_images=24", "data.image_size=32", "augment.stats_rounds=1", "train.batch_size=8",
                       'variants=["image_only"]'])
    assert [(r.variant, r.flags) for r in check_experiment(cfg)] == [("image_only", [])]


def test_the_posted_case_row_states_what_was_measured(setup):
    # tanh_posted as in the case: whitened masks, the posted formula, raw validation. Every finding
    # states its numbers, one entry per class where both classes show it.
    cfg, ds = setup
    r = check_variant(Variant("tanh_posted", "featurewise", "featurewise", "tanh", "modified_bce_posted", "raw"), ds, cfg)
    assert r.flags == ["targets_outside_loss_domain", "loss_unbounded_below", "loss_not_minimized_at_target",
                       "declared_floor_differs", "validation_not_transformed_like_training"]
    bg, fg = r.target_levels["background"], r.target_levels["foreground"]
    assert r.target_range == pytest.approx((bg, fg)) and -1 < bg < 0 and fg > 2       # binary masks, whitened
    assert (r.head_range, r.loss_domain, r.threshold) == ((-1.0, 1.0), (-1.0, 1.0), 0.0)
    assert r.declared_floor == pytest.approx(-math.log(2)) and r.loss_floor == pytest.approx(0.0, abs=1e-3)
    assert math.isfinite(r.probed_min) and r.probed_min < -20           # the foreground curve at p = -1
    number = r"-?[\d.]+(e-?\d+)?"
    assert re.fullmatch(rf"targets span \[{number}, {number}\], loss domain \[-1, 1\]", r.details["targets_outside_loss_domain"])
    assert re.fullmatch(rf"class 0 \(target {number}\): {number} -> {number} toward p=1; "
                        rf"class 1 \(target {number}\): {number} -> {number} toward p=-1", r.details["loss_unbounded_below"])
    assert re.fullmatch(rf"class 0 \(target {number}\): lowest {number} at p=1, threshold 0; "
                        rf"class 1 \(target {number}\): lowest {number} at p=-1, threshold 0", r.details["loss_not_minimized_at_target"])
    assert r.details["declared_floor_differs"] == "declared -0.6931, measured 0"
    assert re.fullmatch(r"inputs: training mean \[.*\] std \[.*\], validation mean \[.*\] std \[.*\]; "
                        rf"targets: training \[{number}, {number}\], validation \[0, 1\]",
                        r.details["validation_not_transformed_like_training"])


def test_targets_exactly_five_percent_off_still_match_and_lists_print_plainly():
    from harness.check import fmt_list
    assert target_mismatch(np.array([0.0, 1.0]), np.array([0.05, 1.0])) == []
    assert target_mismatch(np.array([-1.0, 0.0]), np.array([-1.0, -0.05])) == []
    assert fmt_list(np.array([0.5, 1.25, 158.0])) == "[0.5, 1.25, 158]"


LEAKAGE = {"side": 8, "far_fraction": 0.5, "margin": 0.2}


def hand_built(train_images, val_images) -> Dataset:
    """Arrays given directly (no source files): each image its own file, training first."""
    masks = lambda x: (x[..., :1] > 127).astype("float32")   # noqa: E731
    return Dataset(train_images, masks(train_images), val_images, masks(val_images), "by hand")


def test_leakage_of_hand_built_arrays_names_images_by_index_and_states_every_number():
    from harness.check import validation_leakage
    x, _ = make_synthetic(8, 16, 0.15, seed=3)
    found = validation_leakage(hand_built(x[:6], x[[6, 2]]), LEAKAGE)        # validation image 1 = training image 2
    assert set(found) == {"split", "flagged", "measured", "fix", "val_median", "typical", "margin", "duplicates"}
    assert found["split"] == "as given" and found["flagged"] and found["duplicates"] == 1
    assert found["margin"] == 0.2
    # 8 files in all (6 + 2), far_fraction 0.5: unrelated means at least 4 files apart.
    assert "validation image 1 = training image 2" in found["measured"]
    assert "at least 4 files apart" in found["measured"] and "over 2 validation images" in found["measured"]
    assert found["fix"].startswith("remove the duplicated files")


def test_leakage_not_flagged_has_no_fix():
    from harness.check import validation_leakage
    x, _ = make_synthetic(12, 16, 0.15, seed=4)
    found = validation_leakage(hand_built(x[:9], x[9:]), {**LEAKAGE, "margin": 5.0})   # no correlation beats +5
    assert not found["flagged"] and found["fix"] == "" and found["duplicates"] == 0
    assert "at least 6 files apart" in found["measured"]


def test_a_flags_fix_is_its_own_even_on_a_flagged_validation_set():
    r = row(flags=["masks_not_binary", "validation_near_training"],
            validation={"fix": "remove the duplicated files", "flagged": True})
    assert r.fix("validation_near_training") == "remove the duplicated files"
    assert r.fix("masks_not_binary") == FLAGS["masks_not_binary"][1] != "remove the duplicated files"


def test_inputs_are_compared_per_channel_and_a_constant_channel_matches_itself():
    rng = np.random.default_rng(0)
    two = np.concatenate([rng.normal(0, 1, (4, 8, 8, 1)), rng.normal(10, 1, (4, 8, 8, 1))], axis=-1)
    assert input_mismatch(two, two) == []            # each channel against its own mean, not the pooled one
    assert input_mismatch(3 * two, 3 * two) == []    # stds of 3 on both sides: a ratio of 1, whatever the scale
    flat = np.zeros((2, 4, 4, 1))
    assert input_mismatch(flat, flat) == []          # std 0 on both sides: the same, not a mismatch


# The rules of the check on plain numbers: a probe's curves built here, no Keras.
from harness.check import TOLERANCE, data_findings, loss_findings, probed_min  # noqa: E402
from harness.probe import Measured  # noqa: E402

SIGMOID_OUT = 1.0 / (1.0 + np.exp(-np.linspace(-14.0, 14.0, 141)))


def bce(y, p):
    return -(y * np.log(p) + (1.0 - y) * np.log(1.0 - p))


def probed(loss, levels, floor=0.0, threshold=0.5, exponents=(0.0, 0.0), outputs=SIGMOID_OUT):
    curves = {cls: loss(y, outputs) for cls, y in levels.items()}
    return Measured(floor, threshold, outputs, curves, exponents)


BINARY = {0: 0.0, 1: 1.0}


def findings(measured, levels=BINARY, targets=(0.0, 1.0), declared=0.0, train_floor=0.0, domain=(0.0, 1.0)):
    return loss_findings(measured, levels, targets, domain, declared, train_floor)


def test_a_proper_loss_on_binary_targets_raises_no_flag():
    assert findings(probed(bce, BINARY)) == {}
    assert findings(probed(bce, BINARY), declared=None) == {}


def test_targets_outside_the_domain_by_more_than_the_tolerance_are_flagged_with_both_ranges():
    m = probed(bce, BINARY)
    assert findings(m, targets=(-TOLERANCE, 1 + TOLERANCE)) == {}
    assert findings(m, targets=(-0.4, 2.5)) == {"targets_outside_loss_domain": "targets span [-0.4, 2.5], loss domain [0, 1]"}
    assert list(findings(m, targets=(-0.0011, 1.0))) == ["targets_outside_loss_domain"]
    assert list(findings(m, targets=(0.0, 1.0011))) == ["targets_outside_loss_domain"]


def test_bce_on_whitened_targets_falls_without_bound_toward_the_head_bound():
    whitened = {0: -0.4, 1: 2.5}
    found = findings(probed(bce, whitened), whitened, targets=(-0.4, 2.5))
    assert list(found) == ["targets_outside_loss_domain", "loss_unbounded_below"]
    # Both classes fall at p -> 1 (BCE is linear in y), toward the last output probed.
    assert found["loss_unbounded_below"].startswith("class 0 (target -0.4): ")
    assert "; class 1 (target 2.5): " in found["loss_unbounded_below"]
    assert found["loss_unbounded_below"].endswith("toward p=1")


def test_a_loss_least_on_the_wrong_side_of_the_threshold_is_flagged_per_class():
    flipped = probed(lambda y, p: (p - (1.0 - y)) ** 2, BINARY)        # learns the other class
    found = findings(flipped)
    assert list(found) == ["loss_not_minimized_at_target"]
    assert found["loss_not_minimized_at_target"] == (
        "class 0 (target 0): lowest 6.91e-13 at p=1, threshold 0.5; class 1 (target 1): lowest 6.91e-13 at p=8.32e-07, "
        "threshold 0.5")


def test_a_wrong_side_within_the_tolerance_is_not_flagged():
    # Background's loss is least just past the threshold, by less than the tolerance.
    def nearly(y, p):
        return np.where(y == 0, np.where(p < 0.5, 1e-4, 0.0) + (p > 0.6) * 1.0, (p - 1.0) ** 2)
    assert findings(probed(nearly, BINARY)) == {}


def test_only_an_edge_well_below_the_floor_and_still_falling_is_unbounded():
    def shallow(y, p):           # least at the edge, but within 1 of the floor
        return -0.5 * p if y else p
    assert "loss_unbounded_below" not in findings(probed(shallow, BINARY), declared=None)

    def flat_edge(y, p):         # far below the floor at the edge, but no longer falling there
        return np.full_like(p, -3.0) if y else p
    assert "loss_unbounded_below" not in findings(probed(flat_edge, BINARY), declared=None)

    def steep(y, p):             # toward p = 0: the edge at index 0
        return np.log(p) if y == 0 else (p - 1.0) ** 2
    (where,) = [d for f, d in findings(probed(steep, BINARY, threshold=0.5), declared=None).items()
                if f == "loss_unbounded_below"]
    assert where.startswith("class 0 (target 0): ") and where.endswith("toward p=8.32e-07")


def test_a_floor_below_zero_is_flagged_unless_explained_otherwise():
    shifted = probed(lambda y, p: bce(y, p) - 0.5, BINARY, floor=-0.5)
    assert findings(shifted, declared=None) == {"loss_floor_not_zero": "least value at perfect predictions -0.5"}
    assert findings(probed(bce, BINARY, floor=-TOLERANCE), declared=None) == {}
    assert list(findings(probed(bce, BINARY, floor=-0.0011), declared=None)) == ["loss_floor_not_zero"]
    assert findings(probed(bce, BINARY, floor=float("nan")), declared=None) == {}     # not measurable: 0


def test_a_summed_loss_states_how_it_grows_and_both_floors():
    found = findings(probed(bce, BINARY, floor=-0.25, exponents=(1.0, 1.0)), declared=None, train_floor=-512.0)
    assert found["loss_summed"] == ("value ~ batch^1 x pixels^1; floor -0.25 on a 4x4 probe, -512 for a "
                                    "training batch")
    assert list(findings(probed(bce, BINARY, exponents=(0.0, 1.0)))) == ["loss_summed"]
    assert list(findings(probed(bce, BINARY, exponents=(1.0, 0.0)))) == ["loss_summed"]


def test_a_declared_floor_is_held_to_the_measured_one_within_a_hundredth():
    m = probed(bce, BINARY, floor=0.2)
    assert findings(m, declared=0.2) == {}
    assert findings(m, declared=0.21) == {}
    assert findings(m, declared=0.195) == {}
    assert findings(m, declared=0.0) == {"declared_floor_differs": "declared 0, measured 0.2"}
    assert list(findings(m, declared=0.2101)) == ["declared_floor_differs"]
    assert list(findings(probed(bce, BINARY, floor=float("nan")), declared=0.0)) == ["declared_floor_differs"]


def test_the_flags_come_in_the_reported_order():
    whitened = {0: -0.4, 1: 2.5}
    m = probed(bce, whitened, floor=-0.5, exponents=(1.0, 0.0))
    assert list(findings(m, whitened, targets=(-0.4, 2.5), declared=0.0)) == [
        "targets_outside_loss_domain", "loss_unbounded_below", "loss_summed", "declared_floor_differs"]


def test_the_data_rules_compare_validation_with_training_and_count_mask_levels():
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype(np.float32)
    y = np.array([0.0, 1.0], np.float32)
    assert data_findings(x, x, y, y, 2, 2) == {}
    found = data_findings(x, x + 5.0, y, y, 2, 2)
    assert list(found) == ["validation_not_transformed_like_training"] and found[
        "validation_not_transformed_like_training"].startswith("inputs: training mean [")
    whitened = np.array([-0.4, 2.5], np.float32)
    assert data_findings(x, x, whitened, y, 2, 2) == {
        "validation_not_transformed_like_training": "targets: training [-0.4, 2.5], validation [0, 1]"}
    both = data_findings(x, x + 5.0, whitened, y, 2, 2)["validation_not_transformed_like_training"]
    assert both.startswith("inputs: ") and both.endswith("; targets: training [-0.4, 2.5], validation [0, 1]")
    assert data_findings(x, x, y, y, 2, 3) == {"masks_not_binary": "2 levels as loaded, 3 after augmentation"}
    assert data_findings(x, x, y, y, 3, 2) == {"masks_not_binary": "3 levels as loaded, 2 after augmentation"}


def test_the_least_probed_value_skips_what_is_not_finite_but_keeps_minus_infinity():
    curves = {0: np.array([np.nan, 2.0, np.inf]), 1: np.array([0.5, np.nan, 3.0])}
    assert probed_min(Measured(0.0, 0.5, np.zeros(3), curves)) == 0.5
    curves[1] = np.array([0.5, -np.inf, 3.0])
    assert probed_min(Measured(0.0, 0.5, np.zeros(3), curves)) == -math.inf
    assert probed_min(Measured(0.0, 0.5, np.zeros(3), {0: np.array([-2.0]), 1: np.array([1.0])})) == -2.0


def test_a_loss_least_exactly_at_the_threshold_is_foreground_least():
    # Prediction >= threshold means foreground: a background loss least there is on the wrong side.
    at_threshold = probed(lambda y, p: (p - 0.5) ** 2, BINARY)
    assert findings(at_threshold, declared=None) == {
        "loss_not_minimized_at_target": "class 0 (target 0): lowest 0 at p=0.5, threshold 0.5"}


def test_the_wrong_side_must_be_lower_by_more_than_the_tolerance():
    def curve(low):
        def loss(y, p):
            v = np.where(p >= 0.5, 1.0, 2.0) if y else np.where(p < 0.5, 1.0, 2.0)
            v = v.copy()
            v[0 if y else -1] = low                # the far end of the wrong side
            return v
        return loss
    assert findings(probed(curve(1.0 - TOLERANCE), BINARY), declared=None) == {}
    assert list(findings(probed(curve(1.0 - 2 * TOLERANCE), BINARY), declared=None)) == ["loss_not_minimized_at_target"]


def test_curves_with_nan_are_read_as_if_the_nan_were_not_there():
    def flipped_with_nan(y, p):
        v = (p - (1.0 - y)) ** 2
        v[-1 if y else 0] = np.nan                 # on each class's own side
        return v
    found = findings(probed(flipped_with_nan, BINARY), declared=None)
    assert list(found) == ["loss_not_minimized_at_target"]
    assert found["loss_not_minimized_at_target"].count("class ") == 2


def edge_curve(edge: float, inner: float, next_inner: float | None = None, at_start=False):
    """A class-1 curve of 0 everywhere but its last (or first) EDGE_STEPS + 1 points: `edge` at the
    bound, `inner` from there to EDGE_STEPS inside, `next_inner` one step further in."""
    from harness.probe import EDGE_STEPS

    def loss(y, p):
        v = (p - 1.0) ** 2 + 5.0 if not y else np.zeros_like(p)
        if y:
            idx = np.arange(len(p)) if at_start else np.arange(len(p))[::-1]
            v[idx[1:EDGE_STEPS + 1]] = inner
            v[idx[0]] = edge
            if next_inner is not None:
                v[idx[EDGE_STEPS + 1]] = next_inner
        return v
    return loss


def unbounded(loss, floor=0.0, threshold=0.5):
    return "loss_unbounded_below" in findings(probed(loss, BINARY, floor=floor, threshold=threshold), declared=None)


def test_unbounded_means_more_than_one_below_the_floor_and_still_falling_over_the_last_steps():
    assert unbounded(edge_curve(-1.5, 0.0))
    assert not unbounded(edge_curve(-1.0, 0.0))                 # exactly one below: not more
    assert not unbounded(edge_curve(-0.5, 0.0))
    assert unbounded(edge_curve(-2.5, 0.0))
    assert not unbounded(edge_curve(-2.0 - 0.1, -2.0))          # fell by exactly FALLING: not more
    assert unbounded(edge_curve(-2.2, -2.0))
    # The last EDGE_STEPS points, not one more: nearly flat over them, steep just beyond.
    assert not unbounded(edge_curve(-5.0, -4.95, next_inner=0.0))
    # At the other bound, measured inward too (not wrapped around to the far end).
    assert unbounded(edge_curve(-5.0, 0.0, at_start=True), threshold=0.0)
    assert not unbounded(edge_curve(-5.0, -4.95, next_inner=0.0, at_start=True), threshold=0.0)


def test_a_floor_that_could_not_be_measured_counts_as_zero_for_the_falling_edge():
    nan = float("nan")
    assert unbounded(edge_curve(-1.5, 0.0), floor=nan)
    assert not unbounded(edge_curve(-0.5, 0.0), floor=nan)


def test_a_declared_floor_exactly_a_hundredth_off_still_agrees():
    assert findings(probed(bce, BINARY, floor=0.0), declared=0.01) == {}
    assert findings(probed(bce, BINARY, floor=0.0), declared=-0.01) == {}


def one_channel_net(input_shape, activation):
    inputs = keras.Input(input_shape)
    BUILT_WITH.append(activation)
    return keras.Model(inputs, keras.layers.Conv2D(1, 1, activation=activation)(inputs))


BUILT_WITH: list = []


class NonSquare:
    train_images = np.zeros((2, 8, 16, 3), np.float32)


def test_a_user_model_is_built_with_the_variants_head_and_checked_on_non_square_images(setup):
    from harness.check import check_model
    cfg, _ = setup
    BUILT_WITH.clear()
    check_model(cfg.with_overrides({"model.builder": "test_check:one_channel_net"}), NonSquare, "tanh")
    assert BUILT_WITH == ["tanh"]
    with pytest.raises(ValueError) as e:
        check_model(cfg.with_overrides({"model.builder": "test_check:two_channel_net"}), NonSquare, "sigmoid")
    assert str(e.value) == "model output shape (8, 16, 2), expected (8, 16, 1) (one mask channel)"


def test_the_check_finds_a_loss_beside_the_experiment_and_builds_the_model_with_the_variants_head(setup, tmp_path):
    import dataclasses
    cfg, ds = setup
    (tmp_path / "beside_only_losses.py").write_text(
        "import keras\n\n\ndef nan_loss(y, p):\n    return keras.ops.mean(p * float('nan'), axis=(1, 2, 3))\n")
    beside = dataclasses.replace(cfg, source_dir=str(tmp_path)).with_overrides(
        {"model.builder": "test_check:one_channel_net"})
    BUILT_WITH.clear()
    row = check_variant(Variant("v", "featurewise", "signed", "tanh", "beside_only_losses:nan_loss", "like_training"),
                        ds, beside)
    assert BUILT_WITH == ["tanh"]
    # Nothing finite to measure: the floor is NaN and the threshold the head's own (tanh: 0).
    assert math.isnan(row.loss_floor) and row.threshold == 0.0


def test_the_least_probed_value_of_curves_with_nothing_finite_is_nan():
    curves = {0: np.array([np.nan, np.nan]), 1: np.array([0.5, np.nan])}
    assert probed_min(Measured(0.0, 0.5, np.zeros(2), curves)) == 0.5
    assert math.isnan(probed_min(Measured(0.0, 0.5, np.zeros(2), {0: np.array([np.nan]), 1: np.array([np.inf])})))


def test_a_check_without_a_seed_measures_seed_1(setup):
    cfg, ds = setup
    variant = Variant("v", "featurewise", "featurewise", "sigmoid", "bce", "raw")
    default, first, second = (check_variant(variant, ds, cfg, **s).target_range for s in ({}, {"seed": 1}, {"seed": 2}))
    assert default == first != second            # each seed augments (and so whitens) otherwise


@pytest.mark.parametrize("size, levels, head", [(16, 2, "sigmoid"), (32, 4, "tanh")])
def test_the_builtin_unet_maps_images_to_one_channel_of_the_same_size(size, levels, head):
    """Why the check skips check_model for the built-in U-Net: its output is (H, W, 1), in the head's range."""
    from harness.models import build_unet
    model = build_unet(size, 3, 4, levels, head)
    out = np.asarray(model(np.random.default_rng(0).normal(size=(2, size, size, 3)).astype("float32")))
    assert out.shape == (2, size, size, 1)
    assert out.min() >= (0 if head == "sigmoid" else -1) and out.max() <= 1
