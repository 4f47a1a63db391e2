"""The per-run figures a sweep draws after every point: what their pixels show."""
import io

import numpy as np
import pytest

from harness import plots


def samples(n=2, channels=3, size=6):
    rng = np.random.default_rng(0)
    return {"images": rng.uniform(0, 255, (n, size, size, channels)).astype("float32"),
            "truth": (rng.random((n, size, size, 1)) > 0.5).astype("float32"),
            "prediction": rng.uniform(-1, 1, (n, size, size, 1)).astype("float32"), "threshold": 0.0}


def tile(mosaic, row, col, size=6, border=1):
    step = size + 2 * border
    return mosaic[row * step + border:(row + 1) * step - border, col * step + border:(col + 1) * step - border]


def test_the_mosaic_holds_every_row_and_sample_framed_in_white():
    s = samples(n=3)
    mosaic = plots.sample_mosaic(s)
    assert mosaic.shape == (4 * 8, 3 * 8, 3)
    assert np.all(mosaic[0] == 1.0) and np.all(mosaic[:, 0] == 1.0) and np.all(mosaic[7] == 1.0)
    for col in range(3):
        np.testing.assert_allclose(tile(mosaic, 0, col), s["images"][col] / 255.0, rtol=1e-6)
        np.testing.assert_array_equal(tile(mosaic, 1, col)[..., 0], s["truth"][col, ..., 0])
        np.testing.assert_array_equal(tile(mosaic, 3, col)[..., 1], s["prediction"][col, ..., 0] >= 0.0)


def test_the_output_row_is_scaled_by_each_samples_own_range_as_imshow_would():
    from matplotlib import colormaps
    s = samples(n=2)
    s["prediction"][1] *= 0.01                  # a second sample with a hundredth of the range
    mosaic = plots.sample_mosaic(s)
    for col in range(2):
        p = s["prediction"][col, ..., 0]
        expected = colormaps["viridis"]((p - p.min()) / (p.max() - p.min()))[..., :3]
        np.testing.assert_allclose(tile(mosaic, 2, col), expected, atol=1e-6)
    assert tile(mosaic, 2, 1).std() > 0.1      # not a flat tile: its own range spans the colormap


def test_a_one_channel_input_is_scaled_by_its_range_and_a_flat_output_is_one_colour():
    s = samples(n=1, channels=1)
    s["images"][0] = s["images"][0] * 0.1 + 50   # a dim image still spans black to white
    s["prediction"][0] = 0.3
    mosaic = plots.sample_mosaic(s)
    shown = tile(mosaic, 0, 0)
    assert shown.min() == 0.0 and shown.max() == pytest.approx(1.0)
    assert np.all(shown[..., 0] == shown[..., 2])
    assert len(np.unique(tile(mosaic, 2, 0).reshape(-1, 3), axis=0)) == 1


@pytest.mark.parametrize("n", [1, 4])
def test_the_figures_render_to_png(n):
    s = samples(n=n)
    history = {"loss": [0.7, -3e5], "val_loss": [0.6, 0.5], "val_miou": [0.1, 0.4]}
    for fig in (plots.loss_curve(history, float("nan"), "whitened_masks_tanh"), plots.prediction_samples(s, "x")):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        assert buf.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"


def test_out_of_range_inputs_are_clipped_a_prediction_at_the_threshold_counts_and_a_flat_output_is_the_lowest_colour():
    from matplotlib import colormaps
    s = samples(n=1, channels=4)
    s["images"][0, 0, 0] = [300.0, -20.0, 100.0, 900.0]        # a fourth channel is not shown
    s["truth"][0, 0, 0, 0], s["truth"][0, 0, 1, 0] = 2.0, -1.0
    s["prediction"][0] = 0.25
    s["threshold"] = 0.25
    mosaic = plots.sample_mosaic(s)
    np.testing.assert_allclose(tile(mosaic, 0, 0)[0, 0], [1.0, 0.0, 100.0 / 255.0], rtol=1e-6)
    assert tile(mosaic, 1, 0)[0, 0, 0] == 1.0 and tile(mosaic, 1, 0)[0, 1, 0] == 0.0
    np.testing.assert_allclose(tile(mosaic, 2, 0), np.broadcast_to(colormaps["viridis"](0.0)[:3], (6, 6, 3)))
    assert np.all(tile(mosaic, 3, 0) == 1.0)
