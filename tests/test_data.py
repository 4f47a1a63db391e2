import numpy as np
import pytest
from PIL import Image

from conftest import need_module

from harness.config import DEFAULTS
from harness.data import load_dataset, make_synthetic, split_groups
from harness.feeds.choose import augment_array
from harness.transforms import featurewise_stats, make_augmenter, standardize
from harness.metrics import confusion_ious, trivial_miou
from harness.errors import DataError

from conftest import ROOT


def test_featurewise_stats_match_imagedatagenerator_formula():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (6, 8, 8, 3)).astype(np.float32) + np.array([40, 0, -20], np.float32)
    stats = featurewise_stats(x)
    # ImageDataGenerator.fit: mean and std over axes (0, 1, 2); standardize: (x - mean) / (std + 1e-6)
    ref_mean, ref_std = x.mean(axis=(0, 1, 2)), x.std(axis=(0, 1, 2))
    np.testing.assert_allclose(stats.mean, ref_mean, rtol=1e-5)
    np.testing.assert_allclose(stats.std, ref_std, rtol=1e-5)
    np.testing.assert_allclose(standardize(x, stats), (x - ref_mean) / (ref_std + 1e-6), rtol=1e-4, atol=1e-5)


def test_featurewise_stats_equal_tf_keras_imagedatagenerator():
    idg = need_module("tf_keras.preprocessing.image", "pip install '.[legacy]'")
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 255, (5, 8, 8, 3)).astype(np.float32)
    gen = idg.ImageDataGenerator(featurewise_center=True, featurewise_std_normalization=True)
    gen.fit(x)
    stats = featurewise_stats(x)
    np.testing.assert_allclose(stats.mean, gen.mean.ravel(), rtol=1e-5)
    np.testing.assert_allclose(stats.std, gen.std.ravel(), rtol=1e-5)
    np.testing.assert_allclose(standardize(x[0], stats), gen.standardize(x[0].copy()), rtol=1e-4, atol=1e-4)


def test_whitened_binary_masks_span_the_stated_range():
    f = 0.15
    m = np.zeros((1, 20, 20, 1), np.float32)
    m.reshape(-1)[: int(400 * f)] = 1
    w = standardize(m, featurewise_stats(m))
    assert w.min() == pytest.approx(-np.sqrt(f / (1 - f)), rel=1e-4)
    assert w.max() == pytest.approx(np.sqrt((1 - f) / f), rel=1e-4)


def test_stats_over_augmented_rounds_differ_from_plain_but_stay_close():
    x, _ = make_synthetic(16, 32, 0.15, seed=0)
    plain = featurewise_stats(x)
    rounds = featurewise_stats(x, lambda a, s: augment_array(DEFAULTS["augment"], a, s), rounds=2)
    assert not np.allclose(plain.mean, rounds.mean)
    np.testing.assert_allclose(plain.mean, rounds.mean, rtol=0.05)


@pytest.mark.parametrize("engine", ["affine", "layers"])
def test_augmentation_keeps_image_and_mask_aligned(engine):
    import tensorflow as tf
    _, m = make_synthetic(16, 32, 0.2, seed=3)
    image = np.repeat(m, 3, axis=-1) * 255.0          # the image *is* the mask
    augment = make_augmenter(dict(DEFAULTS["augment"], engine=engine), 32, seed=1)
    a, b = next(iter(tf.data.Dataset.from_tensor_slices((image, m)).batch(16).map(augment)))
    a, b = a.numpy(), b.numpy()
    assert set(np.unique(b)) <= {0.0, 1.0}                            # masks stay binary
    assert not np.allclose(b, m)                                       # something moved
    mismatch = np.mean((a[..., 0] >= 127.5) != (b[..., 0] >= 0.5))
    assert mismatch < (0.01 if engine == "affine" else 0.03)           # only resampled edges differ


def test_parallel_augmentation_is_reproducible_aligned_and_new_each_epoch():
    """speed.parallel_augment: stateless per-batch keys, so the parallel map gives the same batches
    for the same seed, other batches each epoch, and masks still on their images."""
    from harness.data import Dataset
    from harness.feeds.tfdata import train_pipeline
    from harness.transforms import Transform
    from harness.transforms import featurewise_stats as stats
    _, m = make_synthetic(48, 32, 0.2, seed=3)
    image = np.repeat(m, 3, axis=-1) * 255.0          # the image *is* the mask
    data = Dataset(train_images=image, train_masks=m, val_images=image[:4], val_masks=m[:4],
                   description="")
    plain = Transform("scaled", "binary", stats(image), stats(m))
    aug = dict(DEFAULTS["augment"])

    def epoch(pipeline):
        return [(x.numpy(), y.numpy()) for x, y in pipeline]

    first = train_pipeline(data, plain, aug, 16, seed=5, parallel=True)
    one, two = epoch(first), epoch(first)
    again = epoch(train_pipeline(data, plain, aug, 16, seed=5, parallel=True))
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(one, again))
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(one, two))
    for x, y in one:
        assert set(np.unique(y)) <= {0.0, 1.0}
        assert np.mean((x[..., 0] >= 0.5) != (y[..., 0] >= 0.5)) < 0.01


def test_affine_augmentation_resamples_once():
    """One affine resampling keeps more detail than three chained Keras layers (why 'affine' is default)."""
    import tensorflow as tf
    x, m = make_synthetic(32, 48, 0.15, seed=0)
    detail = {}
    for engine in ("affine", "layers"):
        augment = make_augmenter(dict(DEFAULTS["augment"], engine=engine), 48, seed=1)
        a, _ = next(iter(tf.data.Dataset.from_tensor_slices((x, m)).batch(32).map(augment)))
        detail[engine] = np.abs(np.diff(a.numpy(), axis=2)).mean()
    assert detail["affine"] > 1.3 * detail["layers"]


def test_synthetic_is_deterministic_rgb_and_near_the_asked_fraction():
    a, ma = make_synthetic(40, 32, 0.1, seed=5)
    b, mb = make_synthetic(40, 32, 0.1, seed=5)
    c, _ = make_synthetic(40, 32, 0.1, seed=6)
    assert a.shape == (40, 32, 32, 3) and ma.shape == (40, 32, 32, 1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert 0.07 < ma.mean() < 0.16
    assert set(np.unique(ma)) == {0.0, 1.0}
    assert 0 <= a.min() and a.max() <= 255


def test_split_is_deterministic_and_by_group():
    groups = np.repeat(np.arange(10), 4)
    t1, v1 = split_groups(groups, 0.2, seed=0)
    t2, v2 = split_groups(groups, 0.2, seed=0)
    np.testing.assert_array_equal(v1, v2)
    assert len(v1) == 8 and not set(groups[t1]) & set(groups[v1])
    with pytest.raises(DataError, match="at least 2"):
        split_groups(np.zeros(5, int), 0.2, 0)


def test_ious_and_trivial_predictor():
    truth = np.zeros((1, 4, 4, 1), bool)
    truth[0, :2, :2] = True                       # 4 of 16 pixels
    r = confusion_ious(truth, truth)
    assert r["iou"] == r["bg_iou"] == r["miou"] == r["dice"] == 1.0
    none = confusion_ious(np.zeros_like(truth), truth)
    assert none["iou"] == 0 and none["bg_iou"] == pytest.approx(12 / 16) and none["miou"] == pytest.approx(0.375)
    assert trivial_miou(truth.astype(np.float32)) == pytest.approx(0.375)


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def folder(tmp_path, n=4, size=32):
    rng = np.random.default_rng(0)
    for i in range(n):
        save(tmp_path / "images" / f"im{i}.png", rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
        mask = np.zeros((size, size), np.uint8)
        mask[: size // 2] = 255
        save(tmp_path / "masks" / f"im{i}.png", mask)
    return tmp_path


def data_cfg(path, **kw):
    return dict(DEFAULTS["data"], source="folder", path=str(path), image_size=16, **kw)


def test_folder_pairs_tiles_and_binarizes(tmp_path):
    ds = load_dataset(data_cfg(folder(tmp_path)))
    n = len(ds.train_images) + len(ds.val_images)
    assert n == 4 * 4                              # 32x32 -> four 16x16 tiles each
    assert ds.train_images.shape[1:] == (16, 16, 3)
    assert set(np.unique(ds.train_masks)) == {0.0, 1.0}
    resized = load_dataset(data_cfg(tmp_path, fit="resize"))
    assert len(resized.train_images) + len(resized.val_images) == 4


@pytest.mark.parametrize("mode", ["L", "RGBA", "LA", "P", "I;16"])
def test_folder_reads_common_image_modes(tmp_path, mode):
    folder(tmp_path)
    rgb = np.asarray(Image.open(tmp_path / "images" / "im0.png"))
    img = Image.fromarray(rgb).convert(mode) if mode != "I;16" else Image.fromarray(
        rgb[..., 0].astype(np.uint16) * 257)            # 16-bit grey, 0..65535
    img.save(tmp_path / "images" / ("im0.tif" if mode == "I;16" else "im0.png"))
    if mode == "I;16":
        (tmp_path / "images" / "im0.png").unlink()
    ds = load_dataset(data_cfg(tmp_path))
    assert ds.train_images.shape[-1] == 3
    assert 0 <= ds.train_images.min() and ds.train_images.max() <= 255.0


def test_masks_as_0_1_and_with_jpeg_noise(tmp_path):
    folder(tmp_path)
    for i in range(4):                                                # a 0/1 set
        mask = np.zeros((32, 32), np.uint8)
        mask[:16] = 1
        save(tmp_path / "masks" / f"im{i}.png", mask)
    ds = load_dataset(data_cfg(tmp_path))
    assert np.concatenate([ds.train_masks, ds.val_masks]).mean() == pytest.approx(0.5)
    noisy = np.zeros((32, 32), np.uint8)                              # a 0/255 set, one of them JPEG
    noisy[:16] = 255
    for i in range(4):
        save(tmp_path / "masks" / f"im{i}.png", noisy)
    Image.fromarray(noisy).save(tmp_path / "masks" / "im1.jpg", quality=80)
    (tmp_path / "masks" / "im1.png").unlink()
    ds = load_dataset(data_cfg(tmp_path))
    allm = np.concatenate([ds.train_masks, ds.val_masks])
    assert set(np.unique(allm)) == {0.0, 1.0}
    assert allm.mean() == pytest.approx(0.5, abs=0.02)


def label_masks(tmp_path, values_per_file):
    folder(tmp_path)
    for i, (low, high) in enumerate(values_per_file):
        mask = np.full((32, 32), low, np.uint8)
        mask[:16] = high
        save(tmp_path / "masks" / f"im{i}.png", mask)


def test_mask_levels_are_decided_for_the_whole_set(tmp_path):
    # One file 0/1, the others 0/255: per file each looks binary, as a set 1 is ambiguous.
    label_masks(tmp_path, [(0, 1), (0, 255), (0, 255), (0, 255)])
    with pytest.raises(DataError, match=r"3 levels \(0, 1, 255\).*foreground_values"):
        load_dataset(data_cfg(tmp_path))
    ds = load_dataset(data_cfg(tmp_path, foreground_values=[1, 255]))
    assert np.concatenate([ds.train_masks, ds.val_masks]).mean() == pytest.approx(0.5)


def test_label_coded_and_void_bordered_masks_map_by_foreground_values(tmp_path):
    label_masks(tmp_path, [(0, 1), (0, 2), (1, 2), (0, 2)])          # labels {0, 1, 2}
    with pytest.raises(DataError, match=r"3 levels \(0, 1, 2\)"):
        load_dataset(data_cfg(tmp_path))
    ds = load_dataset(data_cfg(tmp_path, foreground_values=[2]))
    allm = np.concatenate([ds.train_masks, ds.val_masks])
    assert set(np.unique(allm)) == {0.0, 1.0} and allm.mean() == pytest.approx(3 / 8)
    mask = np.zeros((32, 32), np.uint8)                               # 0/1 with a 255 "void" border
    mask[:16] = 1
    mask[:2], mask[:, :2] = 255, 255
    for i in range(4):
        save(tmp_path / "masks" / f"im{i}.png", mask)
    with pytest.raises(DataError, match=r"\(0, 1, 255\)"):
        load_dataset(data_cfg(tmp_path))
    ds = load_dataset(data_cfg(tmp_path, foreground_values=[1]))
    assert np.concatenate([ds.train_masks, ds.val_masks]).mean() == pytest.approx((14 * 30) / 1024)
    with pytest.raises(DataError, match="none of data.foreground_values"):
        load_dataset(data_cfg(tmp_path, foreground_values=[7]))


def test_16_bit_images_share_one_intensity_scale(tmp_path):
    folder(tmp_path)
    for i, top in enumerate((4095, 1000, 4095, 2000)):               # 12-bit data in 16-bit files
        Image.fromarray(np.full((32, 32), top, np.uint16)).save(tmp_path / "images" / f"im{i}.tif")
        (tmp_path / "images" / f"im{i}.png").unlink()
    ds = load_dataset(data_cfg(tmp_path, fit="resize"))
    levels = sorted({round(float(a.max()), 1) for a in np.concatenate([ds.train_images, ds.val_images])})
    # One scale (255 / 4095) for all: a dimmer file stays dimmer, it is not stretched to 255 on its own.
    assert levels == [round(1000 * 255 / 4095, 1), round(2000 * 255 / 4095, 1), 255.0]


@pytest.mark.parametrize("break_it, message", [
    (lambda p: (p / "masks" / "im1.png").unlink(), "unpaired file stem.*im1"),
    (lambda p: save(p / "masks" / "im2.png", np.tile(np.arange(32, dtype=np.uint8) * 8, (32, 1))), "not binary"),
    (lambda p: (p / "images" / "im3.png").write_bytes(b"\x89PNG\r\n\x1a\n broken"), "cannot read image"),
    (lambda p: save(p / "masks" / "im0.png", np.zeros((24, 24), np.uint8)), "its mask is 24x24"),
])
def test_folder_errors_are_clear(tmp_path, break_it, message):
    folder(tmp_path)
    break_it(tmp_path)
    with pytest.raises(DataError, match=message):
        load_dataset(data_cfg(tmp_path))


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_dataset(data_cfg(tmp_path / "nope"))
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="missing masks/"):
        load_dataset(data_cfg(tmp_path))


def test_isbi_folder_reads(isbi_path):
    ds = load_dataset(dict(DEFAULTS["data"], source="folder", path=str(isbi_path), image_size=64, n_images=128))
    assert len(ds.train_images) + len(ds.val_images) == 128
    assert ds.train_images.shape[1:] == (64, 64, 3)
    assert len(np.unique(ds.train_images[:, 0, 0, 0])) > 1
    assert 0.6 < ds.foreground_fraction < 0.9       # ~78 % of pixels are cell interior


# The default experiment's validation images at main before data.split existed (split_groups over
# 384 images, seed 0), and the fingerprints (every pixel and the split) of its datasets then.
MAIN_VAL_INDICES = [0, 5, 18, 31, 36, 38, 39, 44, 54, 55, 63, 71, 75, 83, 84, 85, 88, 90, 93, 107, 114, 119, 124,
                    126, 128, 133, 141, 144, 145, 157, 160, 161, 162, 164, 189, 190, 195, 198, 200, 202, 204, 208,
                    210, 212, 213, 214, 220, 221, 229, 230, 235, 242, 246, 248, 249, 251, 259, 264, 266, 274, 284,
                    291, 293, 297, 305, 309, 311, 320, 334, 336, 345, 359, 370, 372, 373, 374, 375]


def test_the_random_split_is_the_split_from_before_data_split_existed():
    from harness.config import load_config
    _, v = split_groups(np.arange(384), 0.2, seed=0)
    assert v.tolist() == MAIN_VAL_INDICES
    cfg = load_config(ROOT / "experiments" / "whitening.toml", ["data.split=random"])
    data = load_dataset(cfg["data"])
    images, _ = make_synthetic(384, 48, 0.15, seed=0)
    np.testing.assert_array_equal(data.val_images, images[MAIN_VAL_INDICES])
    assert data.fingerprint == "a89ac368b542"
    assert load_dataset(load_config(None)["data"]).fingerprint == "29efb2540ef2"
    assert data.split == "random (seed 0): 77 of 384 images validate"


def test_the_isbi_random_split_is_unchanged(isbi_path):
    from harness.config import load_config
    cfg = load_config(ROOT / "experiments" / "whitening-isbi.toml", [f"data.path={isbi_path}"])
    data = load_dataset(cfg["data"])
    assert data.fingerprint == "70731196c521"
    assert {data.source_names[r] for r in data.val_sources} == {f"{i}.png" for i in (2, 4, 10, 11, 21, 26)}


def test_natural_order_reads_digit_runs_as_numbers():
    from harness.data import natural_ranks
    names = ["frame_10.png", "frame_9.png", "Frame_1.png", "frame_2b.png", "frame_2a.png"]
    assert natural_ranks(names).tolist() == [4, 3, 0, 2, 1]


def test_a_contiguous_split_holds_out_the_last_files_in_natural_order_and_drops_one(tmp_path):
    from harness.config import load_config
    from scenes import moving_scene, write_folder
    images, masks = moving_scene(12, 32)
    stems = [f"frame_{i}" for i in range(1, 13)]          # unpadded: frame_10 sorts before frame_2 as text
    write_folder(tmp_path, images, masks, stems)
    cfg = load_config(None, ["data.source=folder", f"data.path={tmp_path}", "data.image_size=32",
                             "data.split=contiguous", "data.val_fraction=0.25"])
    data = load_dataset(cfg["data"])
    assert [data.source_names[r] for r in data.val_sources] == ["frame_10.png", "frame_11.png", "frame_12.png"]
    assert [data.source_names[r] for r in data.train_sources] == [f"frame_{i}.png" for i in range(1, 9)]
    np.testing.assert_array_equal(data.val_images[..., 0], images[9:, ..., 0].astype(np.uint8))  # as written
    assert data.split == ("contiguous: the last 3 of 12 files in natural order validate (frame_10.png to "
                          "frame_12.png), frame_9.png dropped at the border")


def test_a_contiguous_split_of_two_files_drops_none():
    from harness.data import split_contiguous
    train, val, text = split_contiguous(np.array([0, 0, 1, 1]), 0.2)
    assert train.tolist() == [0, 1] and val.tolist() == [2, 3] and "none to spare" in text
