"""digits.figures for Draw's layer strips: a clicked map or pixel names the map or
pixel whose values the chart shows there, on a real digit's activations."""

from __future__ import annotations

import numpy as np

from digits import explain, figures, store


def activations(mnist):
    model = store.load_model("default-cnn")
    image = mnist.x_test[0].astype(np.float32) / 255
    return {o.name: o.values for o in explain.activations(model, image)}


def test_each_strip_marker_sits_on_its_own_map(mnist):
    maps = activations(mnist)["relu1"]  # (12, 12, 32)
    fig = figures.layer_strip(maps, list(range(10)))
    grid, markers = np.asarray(fig.data[0].z, np.float64), fig.data[1]
    h, w, c = maps.shape
    assert len(markers.x) == c
    for channel in range(c):
        x, y = markers.x[channel], markers.y[channel]
        top, left = int(y - (h - 1) / 2), int(x - (w - 1) / 2)
        tile = grid[top : top + h, left : left + w]
        np.testing.assert_allclose(tile, maps[..., channel], rtol=1e-6, atol=1e-6)


def test_a_clicked_pixel_is_the_value_at_its_row_and_column(mnist):
    one_map = activations(mnist)["conv1"][..., 3]  # (24, 24)
    fig = figures.feature_map(one_map)
    markers = fig.data[1]
    index = int(one_map.argmax())
    event = {"selection": {"points": [{"point_index": index}]}}
    row, col = divmod(figures.clicked_point(event), one_map.shape[1])
    assert (markers.y[index], markers.x[index]) == (row, col)
    assert one_map[row, col] == one_map.max()
    assert figures.clicked_point({"selection": {"points": []}}) is None
    assert figures.clicked_point(None) is None


def test_dense_strips_show_every_unit_and_name_the_classes(mnist):
    outputs = activations(mnist)
    hidden = figures.layer_strip(outputs["relu3"], list(range(10)))
    z = np.asarray(hidden.data[0].z, np.float64)
    np.testing.assert_allclose(z.ravel()[:128], outputs["relu3"], rtol=1e-6)
    scores = figures.layer_strip(outputs["dense2"], [str(d) for d in range(10)])
    assert list(np.asarray(scores.data[0].text).ravel()) == [str(d) for d in range(10)]
    assert len(scores.data) == 1  # nothing to click on dense layers
