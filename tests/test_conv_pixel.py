"""digits.explain.conv_pixel: one pixel of a conv layer worked out by hand.

The window times the kernel, summed, plus the bias, must equal what the network's
own forward pass gave at that pixel, for every channel, on real MNIST digits:
the shipped CNN (valid padding, a 32-channel second conv layer) and a small CNN
trained here with "same" padding. Through the pooling and the ReLU after a conv,
the value shown must be the largest of the pooled window, then clipped at 0.
"""

from __future__ import annotations

import numpy as np
import pytest

from digits import explain, store
from digits.errors import ConfigError
from digits.estimator import CNNClassifier

N_FIT = 600  # MNIST images for the small "same" model


def digit(mnist, i: int) -> np.ndarray:
    return mnist.x_test[i].astype(np.float32) / 255


@pytest.fixture(scope="module")
def shipped_cnn():
    return store.load_model("default-cnn")


@pytest.fixture(scope="module")
def same_cnn(mnist):
    model = CNNClassifier(
        max_iter=1,
        random_state=0,
        conv_channels=(4, 6),
        hidden_layer_sizes=(16,),
        padding="same",
    )
    return model.fit(mnist.x_train[:N_FIT], mnist.y_train[:N_FIT])


def check_every_channel(model, image, conv: str, row: int, col: int) -> int:
    """conv_pixel's sum + bias against the forward pass, every channel of ``conv``
    at (row, col); returns how many channels were checked."""
    outputs = {o.name: o.values for o in explain.activations(model, image)}
    real = outputs[conv][row, col]  # (C_out,)
    for channel, value in enumerate(real):
        px = explain.conv_pixel(model, image, conv, row, col, channel)
        assert px.window.shape == px.kernel.shape == px.products.shape
        np.testing.assert_allclose(px.products, px.window * px.kernel)
        assert px.total == pytest.approx(px.products.sum())
        assert px.pre_activation == pytest.approx(px.total + px.bias)
        assert px.pre_activation == pytest.approx(float(value), rel=1e-5, abs=1e-5)
        assert px.activation == pytest.approx(float(value), rel=1e-5, abs=1e-5)
    return len(real)


@pytest.mark.parametrize("i", [0, 1])
def test_sum_plus_bias_is_the_shipped_cnns_output(shipped_cnn, mnist, i):
    image = digit(mnist, i)
    assert check_every_channel(shipped_cnn, image, "conv1", 10, 12) == 32
    # The second conv layer reads all 32 maps of the first.
    px = explain.conv_pixel(shipped_cnn, image, "conv2", 3, 4, 0)
    assert px.window.shape == (5, 5, 32)
    assert check_every_channel(shipped_cnn, image, "conv2", 3, 4) == 64


def test_same_padding_at_the_edge_reads_zeros(same_cnn, mnist):
    image = digit(mnist, 2)
    assert check_every_channel(same_cnn, image, "conv1", 0, 0) == 4
    assert check_every_channel(same_cnn, image, "conv1", 27, 13) == 4
    assert check_every_channel(same_cnn, image, "conv2", 0, 13) == 6
    # The top two rows and left two columns of a corner's 5x5 window are padding.
    px = explain.conv_pixel(same_cnn, image, "conv1", 0, 0, 0)
    assert px.window.shape == (5, 5, 1)
    assert not px.window[:2].any() and not px.window[:, :2].any()


@pytest.mark.parametrize("layer", ["pool1", "relu1", "pool2", "relu2"])
def test_through_pooling_and_relu(shipped_cnn, mnist, layer):
    image = digit(mnist, 0)
    outputs = {o.name: o.values for o in explain.activations(shipped_cnn, image)}
    h, w, channels = outputs[layer].shape
    for channel in range(0, channels, 7):
        row, col = channel % h, (3 * channel) % w
        px = explain.conv_pixel(shipped_cnn, image, layer, row, col, channel)
        shown = float(outputs[layer][row, col, channel])
        assert px.activation == pytest.approx(shown, rel=1e-6, abs=1e-6)
        assert px.pooled.max() == pytest.approx(px.pre_activation, rel=1e-5, abs=1e-5)
        assert (px.conv_row // 2, px.conv_col // 2) == (row, col)
        if layer.startswith("relu"):
            assert px.activation == pytest.approx(max(px.pooled.max(), 0), abs=1e-5)
        assert px.steps[0][0] == px.conv and px.steps[-1][0] == layer


def test_bad_requests_say_what_is_wrong(shipped_cnn, mnist):
    image = digit(mnist, 0)
    with pytest.raises(ConfigError, match="dense1"):
        explain.conv_pixel(shipped_cnn, image, "dense1", 0, 0, 0)
    with pytest.raises(ConfigError, match="outside conv1"):
        explain.conv_pixel(shipped_cnn, image, "conv1", 24, 0, 0)
    with pytest.raises(ConfigError, match="No layer"):
        explain.conv_pixel(shipped_cnn, image, "conv9", 0, 0, 0)


def test_the_strips_on_draw(shipped_cnn, mnist):
    image = digit(mnist, 0)
    strips = explain.layer_strips(shipped_cnn, image)
    assert [s.name for s in strips] == [
        "conv1",
        "relu1",
        "conv2",
        "relu2",
        "relu3",
        "dense2",
    ]
    all_layers = {o.name: o.values for o in explain.activations(shipped_cnn, image)}
    for s in strips:
        np.testing.assert_array_equal(s.values, all_layers[s.name])


def test_the_mlps_hidden_layers_from_its_weights(mnist):
    mlp = store.load_model("default-mlp")
    images = mnist.x_test[:5].astype(np.float32) / 255
    for image in images:
        layers = explain.layer_strips(mlp, image)
        assert [la.name for la in layers[:-1]] == [
            f"hidden{i + 1}" for i in range(len(layers) - 1)
        ]
        assert all((la.values >= 0).all() for la in layers[:-1])  # ReLU
        scores = layers[-1].values.astype(np.float64)
        p = np.exp(scores - scores.max())
        np.testing.assert_allclose(
            p / p.sum(), mlp.predict_proba(image[None])[0], atol=1e-5
        )
