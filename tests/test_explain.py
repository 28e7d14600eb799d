"""digits.explain: what the Inspect page and the Train page's health view show.

Saliency is checked against finite differences on a small float64 network, the
activations against the architecture's arithmetic, the probe's transforms against
the ink they must keep, and the training-health numbers on a real tiny run.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from digits import explain
from digits.errors import ConfigError, PreprocessError
from digits.estimator import CNNClassifier
from digits.nn import gradcheck
from digits.nn.layers import (
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    MaxPool2D,
    ReLU,
    Sigmoid,
    Tanh,
)
from digits.nn.model import Sequential
from digits.training_job import TrainingJob

N_FIT = 600  # MNIST images for the tiny models


def fitted(mnist, **params) -> CNNClassifier:
    """A CNNClassifier trained one epoch on a small MNIST subset."""
    model = CNNClassifier(max_iter=1, random_state=0, **params)
    return model.fit(mnist.x_train[:N_FIT], mnist.y_train[:N_FIT])


def digit(mnist, i: int = 0) -> np.ndarray:
    """Test image ``i`` as the models' float input (28, 28) in 0..1."""
    return mnist.x_test[i].astype(np.float32) / 255


@pytest.fixture(scope="module")
def tiny_cnn(mnist) -> CNNClassifier:
    return fitted(mnist, conv_channels=(4, 6), hidden_layer_sizes=(16,))


# -- saliency ------------------------------------------------------------------------


def small_float64_network(seed: int = 0) -> Sequential:
    r = np.random.default_rng(seed)
    net = Sequential(
        [
            Conv2D(1, 3, 3, "same", r),
            MaxPool2D(),
            ReLU(),
            Conv2D(3, 4, 3, "valid", r),
            MaxPool2D(),
            Tanh(),
            Flatten(),
            Dense(4, 6, r),
            ReLU(),
            Dropout(0.5, seed=seed),
            Dense(6, 3, r),
        ]
    )
    for layer in net.layers:
        gradcheck.to_float64(layer)
        if "b" in layer.params:
            layer.params["b"] += 0.05  # not all zero, so biases matter too
    return net


@pytest.mark.parametrize("target", [None, 0, 2])
def test_saliency_matches_finite_differences(target):
    net = small_float64_network()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((9, 9, 1))
    x = np.sign(x) * (0.1 + np.abs(x))  # away from ReLU kinks and pooling ties
    result = explain.saliency(net, x, target)
    k = int(net.forward(x[None])[0].argmax()) if target is None else target
    assert result.target == k

    def logit() -> float:  # inference mode: dropout off
        return float(net.forward(x[None], training=False)[0, k])

    numeric = gradcheck.numeric_gradient(logit, x)
    assert result.gradient.shape == x.shape
    assert np.abs(result.gradient).max() > 0
    assert gradcheck.relative_error(result.gradient, numeric) < 1e-6


def test_saliency_of_the_estimator_is_its_networks(tiny_cnn, mnist):
    image = digit(mnist)
    by_estimator = explain.saliency(tiny_cnn, image)
    by_network = explain.saliency(tiny_cnn.model_, image[..., None])
    assert by_estimator.gradient.shape == (28, 28)
    np.testing.assert_array_equal(by_estimator.gradient, by_network.gradient[..., 0])
    # The target is the predicted class, and the model is left as it was.
    assert by_estimator.target == tiny_cnn.predict(image[None])[0]
    assert tiny_cnn.model_.layers[0].needs_input_grad is False
    np.testing.assert_array_equal(
        by_estimator.gradient, explain.saliency(tiny_cnn, image).gradient
    )


def test_saliency_refuses_the_sklearn_mlp_and_bad_targets(tiny_cnn, mnist):
    from digits.baseline import MLPBaseline

    mlp = MLPBaseline(hidden_layer_sizes=(8,), max_iter=1, random_state=0)
    mlp.fit(mnist.x_train[:300], mnist.y_train[:300])
    assert explain.capabilities(mlp) == {
        "filters": False,
        "activations": False,
        "saliency": False,
        "occlusion": True,
        "probe": True,
    }
    with pytest.raises(ConfigError, match="scikit-learn"):
        explain.saliency(mlp, digit(mnist))
    with pytest.raises(ConfigError, match="target 10"):
        explain.saliency(tiny_cnn, digit(mnist), target=10)


# -- activations and filters ---------------------------------------------------------


def expected_shapes(channels, k, padding, hidden, dropout) -> list[tuple]:
    """The architecture's arithmetic, written out: conv, pool, act per block."""
    side, shapes = 28, []
    for c in channels:
        side = side if padding == "same" else side - k + 1
        shapes += [
            (side, side, c),
            (side // 2, side // 2, c),
            (side // 2, side // 2, c),
        ]
        side //= 2
    width = side * side * channels[-1] if channels else 28 * 28
    if channels:
        shapes.append((width,))
    for units in hidden:
        shapes += [(units,), (units,)] + ([(units,)] if dropout else [])
    return [*shapes, (10,)]


@pytest.mark.parametrize(
    "channels, k, padding, hidden, dropout",
    [
        ((4, 6), 5, "valid", (16,), 0.25),
        ((3,), 3, "same", (8, 8), 0.0),
        ((2, 3, 4), 3, "same", (8,), 0.5),
        ((), 5, "valid", (12, 8), 0.25),
    ],
)
def test_activation_shapes_follow_the_architecture(
    mnist, channels, k, padding, hidden, dropout
):
    model = fitted(
        mnist,
        conv_channels=channels,
        kernel_size=k,
        padding=padding,
        hidden_layer_sizes=hidden,
        dropout=dropout,
    )
    image = digit(mnist, 3)
    outs = explain.activations(model, image)
    assert [o.shape for o in outs] == expected_shapes(
        channels, k, padding, hidden, dropout
    )
    assert [o.name for o in outs] == explain.layer_names(model.model_)
    assert [o.kind for o in outs] == [type(la).__name__ for la in model.model_.layers]
    # The last layer's output are the logits predict_proba turns into probabilities.
    logits = outs[-1].values.astype(np.float64)
    proba = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(proba, model.predict_proba(image[None])[0], atol=1e-5)
    filters = explain.conv_filters(model)
    assert list(filters) == [o.name for o in outs if o.kind == "Conv2D"]
    c_in = 1
    for (name, w), c in zip(filters.items(), channels, strict=True):
        assert w.shape == (c, c_in, k, k), name
        c_in = c
    if channels:
        w = model.model_.layers[0].params["W"]  # (k, k, 1, C_out)
        np.testing.assert_array_equal(filters["conv1"][1, 0], w[:, :, 0, 1])


def test_layer_names_are_numbered_per_type():
    net = small_float64_network()
    assert explain.layer_names(net) == [
        "conv1",
        "pool1",
        "relu1",
        "conv2",
        "pool2",
        "tanh1",
        "flatten",
        "dense1",
        "relu2",
        "dropout1",
        "dense2",
    ]


# -- occlusion -----------------------------------------------------------------------


def test_occlusion_is_zero_where_only_background_is_hidden(tiny_cnn, mnist):
    image = digit(mnist)
    result = explain.occlusion(tiny_cnn, image, patch=4, stride=2)
    assert result.drop.shape == (28, 28)
    assert result.target == tiny_cnn.predict(image[None])[0]
    # A pixel every one of whose patches holds no ink: hiding it changes nothing.
    ink = ndimage.maximum_filter(image > 0, size=7)  # ink within 3 px
    assert (~ink).any()
    # (Up to float32 rounding: a batch's rows may sum in another order.)
    assert np.abs(result.drop[~ink]).max() < 1e-6
    # Hiding the strokes does lower the predicted class's probability.
    assert result.drop[image > 0.5].max() > 0.1


@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_occlusion_of_the_whole_image_is_the_blank_images_drop(mnist, tiny_cnn, kind):
    from digits.baseline import MLPBaseline

    model = tiny_cnn
    if kind == "mlp":
        model = MLPBaseline(hidden_layer_sizes=(16,), max_iter=2, random_state=0)
        model.fit(mnist.x_train[:N_FIT], mnist.y_train[:N_FIT])
    image = digit(mnist, 1)
    result = explain.occlusion(model, image, patch=28, stride=1)
    p = model.predict_proba(np.stack([image, np.zeros_like(image)]))
    k = int(p[0].argmax())
    q = np.clip(p[:, k].astype(np.float64), 1e-7, 1 - 1e-7)
    fall = np.log(q[0] / (1 - q[0])) - np.log(q[1] / (1 - q[1]))
    np.testing.assert_allclose(result.drop, fall, rtol=1e-4)
    assert result.probability == pytest.approx(p[0, k])
    with pytest.raises(ConfigError, match="patch"):
        explain.occlusion(model, image, patch=40)


# -- the probe -----------------------------------------------------------------------


def test_neutral_transform_is_the_identity(mnist):
    for i in range(5):
        image = digit(mnist, i)
        out = explain.transform(image)
        np.testing.assert_array_equal(out.image, image)
        assert out.shift == (0, 0) and out.scale == 1 and not out.notes


def test_shifts_move_the_ink_but_never_cut_it(mnist):
    image = digit(mnist, 0)
    rows = np.flatnonzero(image.any(axis=1))
    cols = np.flatnonzero(image.any(axis=0))
    for dx in range(-14, 15, 2):
        for dy in (-14, -5, 0, 3, 14):
            out = explain.transform(image, shift=(dx, dy))
            # Nothing lost: a pure shift only crops, so all the ink is there.
            assert out.image.sum() == pytest.approx(image.sum(), rel=1e-6)
            # The shift is the requested one, limited by the room the digit has.
            room_x = (-cols[0], 27 - cols[-1])
            room_y = (-rows[0], 27 - rows[-1])
            assert out.shift == (int(np.clip(dx, *room_x)), int(np.clip(dy, *room_y)))
            assert bool(out.notes) == (out.shift != (dx, dy))
            np.testing.assert_array_equal(
                out.image, np.roll(image, (out.shift[1], out.shift[0]), axis=(0, 1))
            )


@pytest.mark.parametrize("seed", range(4))
def test_random_transforms_keep_all_the_ink(mnist, seed):
    rng = np.random.default_rng(seed)
    for i in rng.choice(len(mnist.x_test), 6, replace=False):
        image = digit(mnist, int(i))
        shift = tuple(int(v) for v in rng.integers(-10, 11, size=2))
        rotate = float(rng.uniform(-60, 60))
        scale = float(rng.uniform(0.6, 1.8))
        thicken = int(rng.integers(0, 4))
        out = explain.transform(
            image, shift=shift, rotate=rotate, scale=scale, thicken=thicken
        )
        assert out.image.shape == (28, 28) and out.image.dtype == np.float32
        assert 0 <= out.image.min() and out.image.max() <= 1
        assert out.scale <= scale
        # The thickened digit on a canvas large enough that nothing can leave it,
        # then rotated and scaled by scipy.ndimage's own routines: bilinear
        # resampling keeps the mass, times scale squared, to within a few percent.
        big = np.pad(image, 28)
        if thicken:
            r = np.arange(-thicken, thicken + 1)
            disk = r[:, None] ** 2 + r[None, :] ** 2 <= thicken**2
            big = ndimage.grey_dilation(big, footprint=disk)
        reference = ndimage.zoom(
            ndimage.rotate(big, rotate, reshape=False, order=1), out.scale, order=1
        )
        assert out.image.sum() == pytest.approx(reference.sum(), rel=0.04)


def test_rotation_is_anticlockwise_and_scale_is_limited_to_the_frame():
    ell = np.zeros((28, 28), np.float32)
    ell[8:20, 12] = 1  # a vertical stem...
    ell[19, 12:18] = 1  # ...with a foot to the right: an "L"
    out = explain.transform(ell, rotate=90).image
    rows, cols = np.nonzero(out > 0.5)
    # Anticlockwise by 90 degrees, the stem lies flat and the foot points up.
    assert np.ptp(cols) == pytest.approx(11, abs=1) and np.ptp(rows) == pytest.approx(
        5, abs=1
    )
    corner_row = rows.max()
    assert (out[corner_row] > 0.5).sum() >= 10  # the stem along the bottom row
    big = explain.transform(ell, scale=4)
    assert big.scale < 4 and "Scale reduced" in big.notes[0]
    r, c = np.nonzero(big.image > explain.INK)
    assert r.min() >= 0 and r.max() <= 27 and c.min() >= 0 and c.max() <= 27
    with pytest.raises(PreprocessError, match="blank"):
        explain.transform(np.zeros((28, 28)))
    with pytest.raises(ConfigError, match="scale"):
        explain.transform(ell, scale=0)


def test_probe_and_sweep_score_the_transformed_images(tiny_cnn, mnist):
    from digits.baseline import MLPBaseline

    mlp = MLPBaseline(hidden_layer_sizes=(16,), max_iter=2, random_state=0)
    mlp.fit(mnist.x_train[:N_FIT], mnist.y_train[:N_FIT])
    models = {"cnn": tiny_cnn, "mlp": mlp}
    image = digit(mnist, 2)
    result = explain.probe(models, image, shift=(3, -2), rotate=15, thicken=1)
    moved = explain.transform(image, shift=(3, -2), rotate=15, thicken=1).image
    np.testing.assert_array_equal(result.transformed.image, moved)
    for name, model in models.items():
        np.testing.assert_allclose(
            result.probabilities[name], model.predict_proba(moved[None])[0], rtol=1e-6
        )
    values = [-6, -3, 0, 3, 6]
    curves = explain.sweep(models, image, "shift_x", values, target=1)
    for name, model in models.items():
        assert curves[name].shape == (5,)
        assert curves[name][2] == pytest.approx(model.predict_proba(image[None])[0, 1])
        shifted = explain.transform(image, shift=(6, 0)).image
        assert curves[name][4] == pytest.approx(
            model.predict_proba(shifted[None])[0, 1], rel=1e-5
        )
    # The other settings hold while one varies.
    tilted = explain.sweep(models, image, "shift_y", [1], 4, rotate=20, shift=(2, 0))
    moved = explain.transform(image, shift=(2, 1), rotate=20).image
    for name, model in models.items():
        assert tilted[name][0] == pytest.approx(
            model.predict_proba(moved[None])[0, 4], rel=1e-5
        )
    with pytest.raises(ConfigError, match="setting"):
        explain.sweep(models, image, "blur", values, target=1)


# -- gradient check ------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"conv_channels": (4, 6), "hidden_layer_sizes": (16,)},
        {
            "conv_channels": (5,),
            "kernel_size": 3,
            "padding": "same",
            "activation": "tanh",
        },
        {"conv_channels": (), "hidden_layer_sizes": (12, 10), "activation": "logistic"},
    ],
)
def test_gradient_check_of_the_architecture_passes(mnist, params):
    model = fitted(mnist, **params)
    rows = explain.gradient_check(model)
    layers = model.model_.layers
    names = [
        n
        for n, la in zip(explain.layer_names(model.model_), layers, strict=True)
        if la.params
    ]
    assert [r["layer"] for r in rows] == names
    assert all(r["passed"] and 0 <= r["relative_error"] < 1e-6 for r in rows), rows
    shape = (28, 28, 1) if params["conv_channels"] else (784,)
    copy = explain.small_copy(model.model_, shape)
    assert [type(la) for la in copy.layers] == [type(la) for la in layers]
    assert all(p.dtype == np.float64 for _, p, _ in copy.parameters())
    assert copy.layers[-1].params["b"].size == 10


def test_gradient_check_catches_a_wrong_backward(mnist, monkeypatch):
    model = fitted(mnist, conv_channels=(3,), hidden_layer_sizes=(8,))
    right = Dense.backward

    def wrong(self, grad_out):
        dx = right(self, grad_out)
        self.grads["W"] *= 1.01  # a 1% error in dL/dW
        return dx

    monkeypatch.setattr(Dense, "backward", wrong)
    rows = {r["layer"]: r for r in explain.gradient_check(model)}
    assert not rows["dense1"]["passed"] and not rows["dense2"]["passed"]
    assert rows["conv1"]["passed"]


# -- training health -----------------------------------------------------------------


def test_health_measures_one_update_exactly():
    rng = np.random.default_rng(0)
    net = Sequential([Dense(6, 4, rng), ReLU(), Dense(4, 3, rng), Sigmoid()])
    net.layers[0].params["b"][:] = [5, 5, -50, -50]  # two units dead for any input
    health = explain.TrainingHealth(every=1)
    health.set_model(net)
    health.on_train_begin()
    logs = {"epoch": 0, "batch": 1, "batches": 4}
    net.forward(rng.uniform(0, 1, (8, 6)), training=True)
    health.on_batch_end(0, logs)  # remembers the weights
    assert health.rows() == []
    w0 = net.layers[0].params["W"].copy()
    net.layers[0].params["W"] *= 1.01  # an "update" of 1% of the weights
    net.layers[2].params["W"] *= 0.95
    for layer in (net.layers[0], net.layers[2]):
        layer.grads["W"][:] = 3.0
        layer.grads["b"][:] = 4.0
    health.on_batch_end(1, {**logs, "batch": 2})
    first, second = health.rows()
    assert first["layer"] == "dense1" and second["layer"] == "dense2"
    assert first["epoch"] == 0.5
    assert first["update_ratio"] == pytest.approx(0.01, rel=1e-5)
    assert second["update_ratio"] == pytest.approx(0.05, rel=1e-5)
    assert first["grad_norm"] == pytest.approx(np.sqrt(24 * 9 + 4 * 16))
    assert first["dead_fraction"] == 0.5
    assert np.isnan(second["dead_fraction"])  # a sigmoid follows, not a ReLU
    assert not np.allclose(w0, net.layers[0].params["W"])


def test_health_on_a_tiny_training_run(mnist):
    health = explain.TrainingHealth(every=3)
    model = CNNClassifier(
        conv_channels=(4,), hidden_layer_sizes=(16,), max_iter=2, random_state=0
    )
    model.fit(mnist.x_train[:N_FIT], mnist.y_train[:N_FIT], callbacks=[health])
    rows = health.rows()
    batches = 2 * -(-N_FIT // 64)
    assert len(rows) == 3 * ((batches - 1) // 3)  # one sample in three, 3 layers
    assert {r["layer"] for r in rows} == {"conv1", "dense1", "dense2"}
    epochs = [r["epoch"] for r in rows]
    assert epochs == sorted(epochs) and 0 < epochs[0] and epochs[-1] <= 2
    for r in rows:
        assert np.isfinite(r["grad_norm"]) and r["grad_norm"] > 0
        assert np.isfinite(r["update_ratio"]) and 0 < r["update_ratio"] < 1
        if r["layer"] == "dense2":
            assert np.isnan(r["dead_fraction"])
        else:
            assert 0 <= r["dead_fraction"] <= 1


def test_training_job_reports_health_for_numpy_models_only(mnist):
    job = TrainingJob(
        "dense", mnist, {"hidden_layer_sizes": (16,), "max_iter": 1}, train_size=1000
    ).start()
    assert job.join(60)
    snap = job.snapshot()
    assert snap.status == "done", snap.error
    assert {r["layer"] for r in snap.health} == {"dense1", "dense2"}
    assert len(snap.health) >= 2
    mlp = TrainingJob(
        "mlp", mnist, {"hidden_layer_sizes": (8,), "max_iter": 1}, train_size=500
    ).start()
    assert mlp.join(60)
    assert mlp.snapshot().status == "done" and mlp.snapshot().health == []


def test_strongest_kernels_orders_filters_by_norm_and_picks_one_kernel_each():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(5, 3, 2, 2)) * 0.1  # (c_out, c_in, k, k)
    w[3] *= 50  # filter 3 the strongest, then 1
    w[1] *= 20
    w[3, 2] *= 4  # filter 3's weights are largest on input channel 2
    w[1, 0] *= 4  # filter 1's on channel 0
    view = explain.strongest_kernels(w, top=2)
    assert view.filters.tolist() == [3, 1]
    assert view.channels.tolist() == [2, 0]
    np.testing.assert_array_equal(view.kernels, w[[3, 1], [2, 0]])
    norms = np.linalg.norm(w[[3, 1]].reshape(2, -1), axis=1)
    np.testing.assert_allclose(view.norms, norms)
    every = explain.strongest_kernels(w, channel=1)
    assert sorted(every.filters.tolist()) == list(range(5))
    assert (np.diff(every.norms) <= 0).all()  # strongest first
    assert every.channels.tolist() == [1] * 5
    np.testing.assert_array_equal(every.kernels, w[every.filters, 1])
    with pytest.raises(ValueError, match="input channel 3"):
        explain.strongest_kernels(w, channel=3)
