"""harness/leakage.py: near-copies across the split are measured and flagged, independent images not."""
import numpy as np
import pytest

from harness import leakage
from harness.data import make_synthetic, split_groups
from scenes import moving_scene

MARGIN = 0.2


def measure_split(images, train, val, split, n_files=None):
    return leakage.measure(images[train], images[val], train, n_files or len(images), split)


def contiguous(n, n_val):
    """The last n_val of n in order validate; one dropped at the border."""
    return np.arange(n - n_val - 1), np.arange(n - n_val, n)


def test_signatures_are_unit_rows_blind_to_brightness_and_contrast():
    x, _ = make_synthetic(6, 48, 0.15, seed=0)
    sig = leakage.signatures(np.concatenate([x, 0.5 * x + 40]), side=16)
    assert sig.shape == (12, 256)
    np.testing.assert_allclose(np.linalg.norm(sig, axis=1), 1.0, rtol=1e-9)
    np.testing.assert_allclose(sig.sum(axis=1), 0.0, atol=1e-9)
    np.testing.assert_allclose(sig[:6], sig[6:], atol=1e-6)           # a brighter, flatter copy is a copy
    blank = leakage.signatures(np.full((1, 48, 48, 3), 7.0), side=16)
    assert not blank.any()                                              # correlates 0 with everything


def test_a_size_not_a_multiple_of_the_grid_is_cropped_and_a_small_one_kept():
    assert leakage.signatures(np.random.default_rng(0).normal(size=(2, 50, 40, 1)), 16).shape == (2, 256)
    assert leakage.signatures(np.random.default_rng(0).normal(size=(2, 8, 8, 1)), 16).shape == (2, 64)


def test_far_pairs_skip_neighbours():
    # Rows 0..3 with ranks 0..3; row 1 equals row 2 exactly, but they are neighbours.
    sig = leakage.signatures(np.random.default_rng(0).normal(size=(4, 16, 16, 1)), 16)
    sig[2] = sig[1]
    near_all = leakage.nearest(sig[[1]], sig[[0, 2, 3]])
    assert near_all[0] == pytest.approx(1.0)
    far = leakage.far_nearest(sig, np.arange(4), far=2, rows=np.array([1]))
    assert far[0] == pytest.approx(float(sig[1] @ sig[3]))             # only rank 3 is 2 apart


def test_frames_of_a_moving_scene_are_flagged_split_at_random_and_not_as_a_block():
    x, _ = moving_scene(40, 64, speed=3)
    train, val = split_groups(np.arange(40), 0.2, seed=0)
    shuffled = measure_split(x, train, val, "random")
    assert shuffled.val_median > 0.6 and shuffled.typical < 0.3
    assert leakage.near_training(shuffled, MARGIN)
    assert "data.split=\"contiguous\"" in leakage.fix_for(shuffled, MARGIN)
    block = measure_split(x, *contiguous(40, 8), "contiguous")
    assert block.val_median - block.typical < MARGIN / 2
    assert not leakage.near_training(block, MARGIN) and not block.duplicates


def test_independent_images_are_not_flagged_under_either_split():
    x, _ = make_synthetic(384, 48, 0.15, seed=0)
    for split, (train, val) in (("random", split_groups(np.arange(384), 0.2, 0)), ("contiguous", contiguous(384, 77))):
        m = measure_split(x, train, val, split)
        assert abs(m.val_median - m.typical) < 0.1, m
        assert not leakage.near_training(m, MARGIN)


def test_exact_duplicates_across_the_split_are_named_and_flag_alone():
    x, _ = make_synthetic(40, 32, 0.15, seed=0)
    x[35] = x[3]                                                        # a file copied under another name
    x[36] = x[37] = 9.0                                                 # blank tiles are no leak
    names = lambda side, i: f"{side} #{i}"
    m = leakage.measure(x[:30], x[30:], np.arange(30), 40, "random", names=names)
    assert m.duplicates == ["validation #5 = training #3"]
    assert leakage.near_training(m, MARGIN) and not leakage.closer_than_typical(m, MARGIN)
    assert leakage.fix_for(m, MARGIN) == "remove the duplicated files"
    assert "1 exact duplicate(s) across the split: validation #5 = training #3" in leakage.describe(m)


def test_duplicated_tiles_of_one_file_are_named_once_with_their_count():
    x, _ = make_synthetic(8, 16, 0.15, seed=0)
    m = leakage.measure(x[:4], x[:2].copy(), np.arange(4), 6, "random", names=lambda side, i: f"{side} f{i // 2}")
    assert m.duplicates == ["validation f0 = training f0 (2 samples)"]


def test_too_few_files_for_unrelated_pairs_leaves_the_typical_value_unmeasured():
    x, _ = moving_scene(3, 32)
    m = leakage.measure(x[:2], x[2:], np.arange(2), 3, "random")
    assert np.isnan(m.typical) and not leakage.near_training(m, MARGIN)
    assert "not measured" in leakage.describe(m)


def test_the_module_imports_nothing_of_the_harness():
    import ast
    tree = ast.parse(open(leakage.__file__).read())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not any(name.startswith("harness") for name in imported)
