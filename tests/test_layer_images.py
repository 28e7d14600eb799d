"""digits.figures.strip_image, the pictures of Draw's layer strips: each map and
unit where it belongs, in the heat maps' colours, on a real digit's activations."""

from __future__ import annotations

import numpy as np

from digits import explain, figures, store


def strips(mnist, index: int = 0):
    model = store.load_model("default-cnn")
    image = mnist.x_test[index].astype(np.float32) / 255
    return {o.name: o.values for o in explain.layer_strips(model, image)}


def test_each_map_is_drawn_where_it_belongs_in_its_colours(mnist):
    for name, maps in strips(mnist).items():
        if maps.ndim != 3:
            continue
        h, w, c = maps.shape
        picture = figures.strip_image(maps, list(range(10)))
        columns = min(figures.STRIP_MAPS, c)
        factor = picture.shape[1] // (columns * (w + 1) - 1)
        assert picture.shape[1] == factor * (columns * (w + 1) - 1)
        grid = figures.tile(maps.transpose(2, 0, 1), columns)
        colours = figures.coloured(grid, signed=bool(maps.min() < 0))
        for channel in (0, c // 2, c - 1):
            r, col = divmod(channel, columns)
            top, left = r * (h + 1) * factor, col * (w + 1) * factor
            tile = picture[
                top : top + h * factor : factor, left : left + w * factor : factor
            ]
            expected = colours[
                r * (h + 1) : r * (h + 1) + h, col * (w + 1) : col * (w + 1) + w
            ]
            np.testing.assert_array_equal(
                tile, expected, err_msg=f"{name} map {channel}"
            )


def test_colours_follow_the_sign_and_the_size():
    signed = figures.coloured(np.array([[-2.0, 0.0, 2.0, np.nan]]), signed=True)
    blue, white, red, gap = (tuple(int(v) for v in px) for px in signed[0])
    assert blue[2] > blue[0] and red[0] > red[2]  # blue negative, red positive
    assert min(white) > 240 and gap == figures.GAP_RGB
    grey = figures.coloured(np.array([[0.0, 0.5, 3.0]]), signed=False)
    assert [int(px[0]) for px in grey[0]] == [0, 42, 255]  # black at 0, white at max
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()


def test_the_scores_strip_names_each_class_and_changes_with_the_digit(mnist):
    names = [str(d) for d in range(10)]
    one = strips(mnist, 2)["dense2"]  # test image 2 is a 1, test image 0 a 7
    seven = strips(mnist, 0)["dense2"]
    assert one.argmax() == 1 and seven.argmax() == 7
    a, b = figures.strip_image(one, names), figures.strip_image(seven, names)
    assert a.shape == b.shape and a.shape[1] == 10 * (a.shape[1] // 10)
    assert not np.array_equal(a, b)
    cell = a.shape[1] // 10
    # The written name changes a cell's pixels from its plain colour.
    plain = figures.coloured(one[None], signed=True)[0]
    for d in range(10):
        square = a[:, d * cell : (d + 1) * cell].reshape(-1, 3)
        assert (square != plain[d]).any(axis=1).sum() > 20, f"no label on {d}"
