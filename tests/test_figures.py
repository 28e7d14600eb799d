"""The dashboard's figures (``digits.figures``) draw exactly what they are given:
the right images in the right rows, the counts of the matrix, the clicked cell,
the maps of a layer in a grid, the front of a sweep. No server needed."""

from __future__ import annotations

import base64
import io
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from digits import experiments, figures
from digits.data import load_dataset


@pytest.fixture(scope="module")
def digits8():
    return load_dataset("sklearn-digits")


def shown_image(fig) -> np.ndarray:
    """The pixels of a ``px.imshow(..., binary_string=True)`` figure."""
    url = fig.data[0].source
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",")[1]))))


def test_class_samples_puts_each_class_in_its_labelled_row(digits8):
    per_class = 6
    fig = figures.class_samples(
        digits8.x_train, digits8.y_train, digits8.class_names, per_class, seed=3
    )
    image = shown_image(fig)
    factor = 3  # 8x8 images are enlarged to 24x24
    side, pad = 8 * factor, figures.SAMPLE_PAD
    assert image.shape == (10 * (side + pad) - pad, per_class * (side + pad) - pad)
    centres = fig.layout.yaxis.tickvals
    assert list(fig.layout.yaxis.ticktext) == list(digits8.class_names)
    originals = digits8.x_train.reshape(len(digits8.x_train), -1)
    for c in range(10):
        top = c * (side + pad)
        assert centres[c] == pytest.approx(top + side / 2)
        for j in range(per_class):
            left = j * (side + pad)
            tile = image[top : top + side, left : left + side]
            small = tile[::factor, ::factor]
            np.testing.assert_array_equal(tile, small.repeat(3, 0).repeat(3, 1))
            match = np.flatnonzero((originals == small.ravel()).all(axis=1))
            assert len(match) and set(digits8.y_train[match]) == {c}
        # The grey gap below each row but the last.
        if c < 9:
            assert (image[top + side : top + side + pad] == 96).all()


def test_class_samples_shows_black_where_a_class_runs_short():
    x = np.full((5, 4, 4), 200, np.uint8)
    y = np.array([0, 0, 0, 1, 1])
    fig = figures.class_samples(x, y, ["a", "b"], per_class=3, seed=0)
    image = shown_image(fig)
    side = 4 * 6  # enlarged to 24
    last = image[side + 2 :, 2 * (side + 2) :]  # class b, third place
    assert (last == 0).all()
    assert (image[:side, :side] == 200).all()


def test_confusion_shows_the_counts_and_a_click_names_its_cell():
    matrix = np.array([[50, 2, 0], [7, 40, 1], [0, 0, 60]])
    fig = figures.confusion(matrix, ["a", "b", "c"])
    np.testing.assert_array_equal(np.asarray(fig.data[0].z), matrix)
    assert fig.data[0].zmax == 7 * 1.5  # topped above the largest mistake
    hits = fig.data[1]
    assert len(hits.x) == 9 and list(hits.customdata) == matrix.ravel().tolist()
    event = {"selection": {"points": [{"x": "a", "y": "b"}]}}
    assert figures.clicked_cell(event, ["a", "b", "c"]) == (1, 0)
    assert figures.clicked_cell({"selection": {"points": []}}, ["a"]) is None
    assert figures.clicked_cell(None, ["a"]) is None
    other = {"selection": {"points": [{"x": "z", "y": "a"}]}}
    assert figures.clicked_cell(other, ["a", "b", "c"]) is None


def test_heatmap_of_signed_values_is_centred_on_white_at_zero():
    z = np.array([[-3.0, 1.0], [np.nan, 0.5]])
    trace = figures.heatmap(z, signed=True).data[0]
    assert (trace.zmin, trace.zmax) == (-3.0, 3.0)
    grey = figures.heatmap(np.array([[0.0, 0.2]]), signed=False).data[0]
    assert (grey.zmin, grey.zmax) == (0, 1.0)


def test_layer_output_tiles_maps_and_draws_vectors_as_bars():
    maps = np.arange(3 * 4 * 5, dtype=np.float64).reshape(3, 4, 5)  # (h, w, c)
    z = np.asarray(figures.layer_output(maps, list("0123456789"), 2).data[0].z)
    assert z.shape == (3 * 4 - 1, 2 * 5 - 1)  # 3 rows of 2 maps, 1 px apart
    np.testing.assert_array_equal(z[:3, :4], maps[:, :, 0])
    np.testing.assert_array_equal(z[4:7, 5:9], maps[:, :, 3])
    assert np.isnan(z[3]).all()
    bars = figures.layer_output(np.linspace(0, 1, 10), list("0123456789")).data[0]
    assert list(bars.x) == list("0123456789")
    units = figures.layer_output(np.ones(16), list("0123456789")).data[0]
    assert list(units.x) == list(range(16))


def test_conv_kernels_shows_each_kernel_square_titled_in_order():
    rng = np.random.default_rng(0)
    kernels = rng.normal(size=(6, 5, 5))
    fig = figures.conv_kernels(kernels, [4, 0, 2, 1, 5, 3], [7, 7, 1, 0, 2, 2], 4)
    assert len(fig.data) == 6
    for trace, kernel in zip(fig.data, kernels, strict=True):
        np.testing.assert_array_equal(np.asarray(trace.z), kernel)
        assert trace.coloraxis == "coloraxis"  # one colour scale for all
    titles = [a.text for a in fig.layout.annotations]
    expected = ["#4 in 7", "#0 in 7", "#2 in 1", "#1 in 0", "#5 in 2"]
    assert titles == [*expected, "#3 in 2"]
    # Four to a row: the fifth kernel starts the second row, under the first.
    assert fig.data[4].xaxis == "x5" and fig.layout.xaxis5.domain == (
        fig.layout.xaxis.domain
    )
    assert fig.layout.yaxis5.domain[1] < fig.layout.yaxis.domain[0]
    for i in ("", "2", "6"):  # square pixels in every kernel
        assert fig.layout[f"yaxis{i}"].scaleanchor == f"x{i}"
    top = np.abs(kernels).max()
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (-top, top)
    # Two rows of large kernels: four to a row are shown at the largest size.
    assert fig.layout.height >= 2 * figures.KERNEL_PIXELS
    single = figures.conv_kernels(kernels[:2], [9, 3])
    assert [a.text for a in single.layout.annotations] == ["#9", "#3"]


def test_pareto_stars_and_joins_the_front_only():
    summary = [
        {"n_params": 10, "accuracy_mean": 0.9, "accuracy_std": 0.0, "label": "a"},
        {"n_params": 20, "accuracy_mean": 0.8, "accuracy_std": 0.0, "label": "b"},
        {"n_params": 30, "accuracy_mean": 0.95, "accuracy_std": 0.0, "label": "c"},
    ]
    fig = figures.pareto(summary, "n_params", [True, False, True], "t", True)
    line, points = fig.data
    assert list(line.x) == [10, 30] and list(line.y) == [0.9, 0.95]
    assert list(points.marker.symbol) == ["star", "circle", "star"]
    assert fig.layout.xaxis.type == "log"


def test_sweep_charts_plot_the_score_configurations_are_compared_by():
    """The validation accuracy when the sweep recorded it; never the test set's
    under a validation label."""
    summary = [
        {"label": "a", "depth": 1, "width": 8, "n_params": 10, "val_mean": 0.91,
         "val_std": 0.01, "accuracy_mean": 0.5, "accuracy_std": 0.0},
        {"label": "b", "depth": 2, "width": 8, "n_params": 20, "val_mean": 0.93,
         "val_std": 0.02, "accuracy_mean": 0.6, "accuracy_std": 0.0},
    ]  # fmt: skip
    score = experiments.compared_by(summary)
    assert score == ("val_mean", "val_std", "validation accuracy")
    fig = figures.accuracy_against(summary, "depth", "width", "t", score)
    assert list(fig.data[0].y) == [0.91, 0.93]
    assert fig.layout.yaxis.title.text == "validation accuracy"
    front = experiments.pareto_front([10, 20], [0.91, 0.93])
    fig = figures.pareto(summary, "n_params", front, "t", False, score)
    assert list(fig.data[1].y) == [0.91, 0.93]
    assert fig.layout.yaxis.title.text == "validation accuracy"
    old_table = [
        {k: v for k, v in r.items() if not k.startswith("val")} for r in summary
    ]
    assert experiments.compared_by(old_table)[2] == "test accuracy"


def test_training_curves_put_a_stopped_epochs_validation_where_it_stopped():
    snap = SimpleNamespace(
        points=[(0.5, 2.0, 0.4), (1.0, 1.0, 0.7), (1.4, 0.8, 0.8)],
        epochs=[
            {"epoch": 1, "val_loss": 1.1, "val_accuracy": 0.65},
            {"epoch": 2, "val_loss": 0.9, "val_accuracy": 0.75},
        ],
        max_epochs=3,
    )
    fig = figures.training_curves(snap)
    train_loss, val_loss, _, val_acc = fig.data
    assert list(train_loss.y) == [2.0, 1.0, 0.8]
    assert list(val_loss.x) == [1, 1.4]  # the second epoch stopped at 1.4
    assert list(val_acc.y) == [0.65, 0.75]
    assert fig.layout.xaxis.range == (0, 3)


def test_misreads_are_framed_in_red():
    images = np.full((3, 28, 28), 7, np.uint8)
    rgb = figures.framed(images, np.array([False, True, False]))
    assert rgb.shape == (3, 28, 28, 3)
    assert (rgb[[0, 2]] == 7).all()  # right readings: unchanged grey
    frame = np.ones((28, 28), bool)
    frame[1:-1, 1:-1] = False
    assert (rgb[1][frame] == figures.MISREAD_RGB).all()
    assert (rgb[1][~frame] == 7).all()


def test_tile_lays_maps_out_in_rows_with_blank_gaps():
    maps = np.arange(5 * 2 * 3).reshape(5, 2, 3)
    out = figures.tile(maps, n_cols=3)
    assert out.shape == (2 * 2 + 1, 3 * 3 + 2)
    np.testing.assert_array_equal(out[0:2, 4:7], maps[1])
    np.testing.assert_array_equal(out[3:5, 4:7], maps[4])
    assert np.isnan(out[2]).all() and np.isnan(out[3:5, 8:]).all()
