"""The writers augmentation and the European 1s and 7s (issue 18, item 2).

Each component is switched on alone (``Writers`` with the others off) and
measured on real MNIST training digits: the ink box, the ink area, where ink
was added.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from digits import augment
from digits.augment import Writers, add_crossbars, add_flags, european_styles, ink_box
from digits.baseline import MLPBaseline
from digits.errors import ConfigError
from digits.estimator import CNNClassifier

# Every component off: the identity, up to bilinear resampling at whole pixels.
NONE = Writers(
    x_scale=(1.0, 1.0),
    y_scale=(1.0, 1.0),
    shear=0.0,
    rotation=0.0,
    shift=0.0,
    elastic=0.0,
    thick=0.0,
    thin=0.0,
    stretched=0.0,
)
SMALL = {"conv_channels": (4,), "hidden_layer_sizes": (16,), "kernel_size": 3}


@pytest.fixture(scope="module")
def digits(mnist) -> tuple[np.ndarray, np.ndarray]:
    """The first 200 training digits as (200, 28, 28) floats in [0, 1], labels."""
    x = mnist.x_train[:200].reshape(-1, 28, 28).astype(np.float32) / 255
    return x, mnist.y_train[:200]


def only(**changes) -> Writers:
    return dataclasses.replace(NONE, **changes)


def box_sizes(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Heights and widths (N,) of each image's ink box."""
    box = ink_box(images)
    return box[:, 1] - box[:, 0] + 1, box[:, 3] - box[:, 2] + 1


def ink_area(images: np.ndarray) -> np.ndarray:
    return (images >= 0.5).sum(axis=(1, 2))


def test_writers_keeps_shape_dtype_and_range_and_is_seeded(digits):
    x, _ = digits
    a = augment.writers(x, np.random.default_rng(3))
    b = augment.writers(x, np.random.default_rng(3))
    c = augment.writers(x, np.random.default_rng(4))
    assert a.shape == x.shape and a.dtype == np.float32
    assert a.min() >= 0 and a.max() <= 1
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 0.01
    assert not np.array_equal(a, x)


def test_with_every_component_off_writers_is_the_identity(digits):
    x, _ = digits
    np.testing.assert_allclose(
        augment.writers(x, np.random.default_rng(0), NONE), x, atol=1e-5
    )


def test_x_scale_changes_the_width_only(digits):
    x, _ = digits
    h0, w0 = box_sizes(x)
    h1, w1 = box_sizes(
        augment.writers(x, np.random.default_rng(0), only(x_scale=(1.3, 1.3)))
    )
    assert np.median(w1 / w0) == pytest.approx(1.3, abs=0.1)
    assert np.abs(h1 - h0).max() <= 1


def test_y_scale_changes_the_height_only(digits):
    x, _ = digits
    h0, w0 = box_sizes(x)
    out = augment.writers(x, np.random.default_rng(0), only(y_scale=(0.8, 0.8)))
    h1, w1 = box_sizes(out)
    assert np.median(h1 / h0) == pytest.approx(0.8, abs=0.06)
    assert np.abs(w1 - w0).max() <= 1


def test_shear_slants_a_vertical_bar():
    bar = np.zeros((1, 28, 28), np.float32)
    bar[0, 4:24, 13:15] = 1
    out = augment.writers(bar, np.random.default_rng(0), only(shear=0.3))
    cols = np.arange(28)
    # The bar's column at the top and the bottom: 0.3 px per row apart, one way.
    top, bottom = (float((out[0, r] * cols).sum() / out[0, r].sum()) for r in (6, 21))
    assert abs(top - bottom) == pytest.approx(0.3 * 15, abs=1.0)


def test_rotation_and_shift_move_ink_but_keep_it(digits):
    x, _ = digits
    for spec in (only(rotation=10.0), only(shift=2.0)):
        out = augment.writers(x, np.random.default_rng(0), spec)
        assert np.abs(out - x).mean() > 0.01
        np.testing.assert_allclose(out.sum(axis=(1, 2)), x.sum(axis=(1, 2)), rtol=0.1)


def test_elastic_bends_strokes_by_about_a_pixel(digits):
    x, _ = digits
    out = augment.writers(x, np.random.default_rng(0), only(elastic=1.2))
    assert np.abs(out - x).mean() > 0.01
    # A bend, not a move: the ink stays where it was, give or take the largest
    # displacement, and keeps about its mass.
    h0, w0 = box_sizes(x)
    h1, w1 = box_sizes(out)
    # (A faint stray mark pushed over the ink threshold can move one box's edge
    # further, hence the 95th percentile.)
    assert np.percentile(np.abs(h1 - h0), 95) <= 3
    assert np.percentile(np.abs(w1 - w0), 95) <= 3
    np.testing.assert_allclose(out.sum(axis=(1, 2)), x.sum(axis=(1, 2)), rtol=0.15)


def test_thick_and_thin_strokes_change_the_ink_area(digits):
    x, _ = digits
    rng = np.random.default_rng
    thick = augment.writers(x, rng(0), only(thick=1.0))
    thin = augment.writers(x, rng(0), only(thin=1.0))
    assert np.all(ink_area(thick) > ink_area(x))
    assert np.median(ink_area(thick) / ink_area(x)) > 1.5
    assert np.median(ink_area(thin) / ink_area(x)) < 0.8
    # Thin, not erased: every digit keeps ink at full strength.
    assert np.all(thin.max(axis=(1, 2)) > 0.99)


def test_stretched_digits_fill_the_box_preprocessing_leaves(digits):
    x, y = digits
    out = augment.writers(x, np.random.default_rng(0), only(stretched=1.0))
    heights, widths = box_sizes(out)
    assert np.all(np.abs(heights - 20) <= 2)  # the ink threshold, resampled
    # Each width is 16 px, or 6x its own for the narrowest 1s.
    _, w0 = box_sizes(x)
    off = np.abs(widths - np.minimum(16, 6 * w0))
    assert np.median(off) <= 1 and off.max() <= 3  # the ink threshold, resampled
    assert np.median(widths[y == 1]) >= 14


def test_a_flag_adds_ink_down_and_left_of_the_top_of_a_1(mnist):
    ones = mnist.x_train[mnist.y_train == 1][:100].reshape(-1, 28, 28) / 255.0
    flagged = add_flags(ones.astype(np.float32), np.random.default_rng(0))
    added = flagged - ones
    assert added.min() >= -1e-6  # strokes add ink, never take it away
    # A stroke, not a speck, for all but the few 1s MNIST already gives a flag.
    assert np.mean((added > 0.5).sum(axis=(1, 2)) >= 6) >= 0.95
    box = ink_box(ones)
    cols, rows = np.arange(28), np.arange(28)[:, None]
    for one, extra, (top, bottom, _, _) in zip(ones, added, box, strict=True):
        new = extra > 0.5
        if new.sum() < 6:  # a 1 that had a flag of its own already
            continue
        # Ink is added only from the top of the 1 down to about its middle ...
        assert (rows * new).max() <= top + 0.6 * (bottom - top) + 2
        assert rows[new.any(axis=1)].min() >= top - 2
        # ... and reaches left of where the 1 had ink at that height.
        lowest = int(np.flatnonzero(new.any(axis=1)).max())
        assert cols[new[lowest]].min() < cols[one[lowest] > 0.5].min(initial=28)


def test_a_crossbar_crosses_the_stem_of_a_7_half_way_down(mnist):
    sevens = mnist.x_train[mnist.y_train == 7][:100].reshape(-1, 28, 28) / 255.0
    crossed = add_crossbars(sevens.astype(np.float32), np.random.default_rng(0))
    added = crossed - sevens
    assert added.min() >= -1e-6
    assert np.mean((added > 0.3).any(axis=(1, 2))) >= 0.95
    box = ink_box(sevens)
    for seven, new_seven, (top, bottom, _, _) in zip(sevens, crossed, box, strict=True):
        extra = new_seven - seven
        new_rows = np.flatnonzero((extra > 0.3).any(axis=1))
        if not new_rows.size:  # a 7 that had a crossbar of its own already
            continue
        middle = (new_rows.min() + new_rows.max()) / 2
        assert top + 0.3 * (bottom - top) <= middle <= top + 0.7 * (bottom - top)
        # Across, not along: the new ink is wider than it is tall.
        new_cols = np.flatnonzero((extra > 0.3).any(axis=0))
        assert np.ptp(new_cols) >= 4 and np.ptp(new_cols) > np.ptp(new_rows)


def test_european_styles_change_a_share_of_the_1s_and_7s_only(mnist):
    x, y = mnist.x_train[:3000], mnist.y_train[:3000]
    before = x.copy()
    out = european_styles(x, y, np.random.default_rng(0), (28, 28), share=0.3)
    np.testing.assert_array_equal(x, before)  # the caller's rows are left alone
    assert out.dtype == np.uint8 and out.shape == x.shape
    changed = (out != x).reshape(len(x), -1).any(axis=1)
    assert not changed[(y != 1) & (y != 7)].any()
    for digit in (1, 7):
        share = changed[y == digit].mean()
        assert 0.22 < share < 0.38, (digit, share)
    assert np.all(out.astype(int) >= x.astype(int))  # only ink added


def test_the_estimator_trains_with_writers_reproducibly(mnist):
    x, y = mnist.x_train[:600], mnist.y_train[:600]
    settings = dict(SMALL, max_iter=1, augment="writers", random_state=0)
    a = CNNClassifier(**settings).fit(x, y)
    b = CNNClassifier(**settings).fit(x, y)
    shift = CNNClassifier(**dict(settings, augment=True)).fit(x, y)
    for key, w in a.model_.state_dict().items():
        np.testing.assert_array_equal(w, b.model_.state_dict()[key])
    assert not np.array_equal(
        a.model_.state_dict()["0.W"], shift.model_.state_dict()["0.W"]
    )
    assert a.get_params()["augment"] == "writers"


def test_the_engine_and_the_plain_loop_give_the_same_weights_with_writers(mnist):
    x, y = mnist.x_train[:600], mnist.y_train[:600]
    settings = dict(SMALL, max_iter=1, augment="writers", random_state=0, n_threads=1)
    plain = CNNClassifier(**settings, trainer="plain").fit(x, y)
    engine = CNNClassifier(**settings, trainer="engine").fit(x, y)
    for key, w in plain.model_.state_dict().items():
        np.testing.assert_array_equal(w, engine.model_.state_dict()[key])


def test_an_unknown_augment_style_is_refused(mnist):
    with pytest.raises(ConfigError, match="augment must be one of 'writers'"):
        CNNClassifier(**SMALL, augment="sideways").fit(
            mnist.x_train[:100], mnist.y_train[:100]
        )


def test_the_mlp_baseline_augments_too(mnist):
    """The shipped MLP trains with augment="writers" as the CNN does: each chunk
    of images varied afresh, seeded, and a style it does not know refused."""
    x, y = mnist.x_train[:1500], mnist.y_train[:1500]

    def weights(**settings):
        mlp = MLPBaseline((32,), max_iter=1, random_state=0, **settings).fit(x, y)
        return mlp.model_.coefs_[0]

    plain, writers = weights(), weights(augment="writers")
    np.testing.assert_array_equal(writers, weights(augment="writers"))
    assert not np.array_equal(plain, writers)
    assert not np.array_equal(writers, weights(augment=True))
    with pytest.raises(ConfigError, match="augment must be one of 'writers'"):
        MLPBaseline(augment="sideways").fit(x, y)


def test_nothing_in_digits_imports_the_tests():
    """The training data is made apart from the test sets that measure it."""
    package = Path(__file__).resolve().parents[1] / "digits"
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in ("tests", "handwriting_sets"), path
