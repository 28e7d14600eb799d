"""The lesson (digits.nn): gradients, fast forms against plain ones, the plain loop."""

from __future__ import annotations

import numpy as np
import pytest

from digits.errors import TrainingDiverged
from digits.nn.callbacks import Callback, History
from digits.nn.gradcheck import (
    TOLERANCE,
    check_layer,
    check_loss,
    standard_checks,
    to_float64,
)
from digits.nn.layers import (
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    Layer,
    MaxPool2D,
    ReLU,
    Sigmoid,
    Tanh,
)
from digits.nn.losses import softmax_cross_entropy
from digits.nn.model import Sequential
from digits.nn.optimizers import SGD, Adam
from digits.nn.training import Trainer, predict_logits


def naive_conv(x, w, b, padding):
    """Direct loops over every output pixel and channel: the obvious, slow version."""
    k = w.shape[0]
    if padding == "same":
        lo, hi = (k - 1) // 2, k // 2
        x = np.pad(x, ((0, 0), (lo, hi), (lo, hi), (0, 0)))
    n, h, wd, _ = x.shape
    out = np.zeros((n, h - k + 1, wd - k + 1, w.shape[3]))
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            patch = x[:, i : i + k, j : j + k, :]  # (N, k, k, C_in)
            for o in range(w.shape[3]):
                out[:, i, j, o] = (patch * w[:, :, :, o]).sum(axis=(1, 2, 3)) + b[o]
    return out


def naive_maxpool(x):
    n, h, w, c = x.shape
    out = np.zeros((n, h // 2, w // 2, c))
    for i in range(h // 2):
        for j in range(w // 2):
            out[:, i, j] = x[:, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].max(axis=(1, 2))
    return out


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize(
    ("k", "c_in", "hw"),
    [(5, 1, (12, 12)), (3, 4, (7, 9)), (4, 2, (6, 5)), (1, 3, (4, 4))],
)
def test_conv_forward_matches_naive_loops(padding, k, c_in, hw):
    rng = np.random.default_rng(1)
    layer = Conv2D(c_in, 3, k, padding, rng)
    layer.params["b"][:] = rng.standard_normal(3)
    x = rng.standard_normal((2, *hw, c_in)).astype(np.float32)
    expected = naive_conv(x, layer.params["W"], layer.params["b"], padding)
    np.testing.assert_allclose(layer.forward(x), expected, rtol=1e-4, atol=1e-4)
    assert layer.output_shape((*hw, c_in)) == expected.shape[1:]


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_conv_in_chunks_gives_the_same_outputs_and_gradients_in_both_modes(padding):
    """Conv2D builds its im2col columns a few images at a time (13 images of
    12x12x32 make three chunks, the last one short); inference keeps only the
    input, and backward rebuilds the columns from it (as saliency maps need)."""
    rng = np.random.default_rng(2)
    layer = Conv2D(32, 8, 5, padding, rng)
    layer.params["b"][:] = rng.standard_normal(8)
    x = rng.standard_normal((13, 12, 12, 32)).astype(np.float32)
    expected = naive_conv(x, layer.params["W"], layer.params["b"], padding)
    g = rng.standard_normal(expected.shape).astype(np.float32)
    results = []
    for training in (True, False):
        out = layer.forward(x, training)
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
        dx = layer.backward(g)
        results.append((dx, layer.grads["W"].copy(), layer.grads["b"].copy()))
    for trained, inferred in zip(*results, strict=True):
        np.testing.assert_allclose(inferred, trained, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hw", [(8, 8), (7, 5), (3, 3)])
def test_maxpool_forward_matches_naive_loops(hw):
    x = np.random.default_rng(2).standard_normal((3, *hw, 4))
    np.testing.assert_array_equal(MaxPool2D().forward(x), naive_maxpool(x))


@pytest.mark.parametrize(
    ("name", "layer", "shape"),
    [
        ("conv 3x3 valid", lambda r: Conv2D(2, 3, 3, "valid", r), (2, 6, 7, 2)),
        ("conv 5x5 same odd", lambda r: Conv2D(3, 2, 5, "same", r), (2, 7, 5, 3)),
        ("conv 2x2 same even", lambda r: Conv2D(2, 2, 2, "same", r), (1, 4, 5, 2)),
        ("conv 1 channel", lambda r: Conv2D(1, 4, 3, "valid", r), (3, 5, 6, 1)),
        ("maxpool even", lambda r: MaxPool2D(), (2, 4, 6, 3)),
        ("maxpool odd", lambda r: MaxPool2D(), (2, 5, 7, 2)),
        ("dense", lambda r: Dense(6, 4, r), (5, 6)),
        ("relu", lambda r: ReLU(), (4, 9)),
        ("sigmoid", lambda r: Sigmoid(), (4, 9)),
        ("tanh", lambda r: Tanh(), (4, 3, 3)),
        ("dropout", lambda r: Dropout(0.5, seed=3), (4, 9)),
    ],
)
def test_layer_gradients_match_finite_differences(name, layer, shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    x = np.sign(x) * (0.1 + np.abs(x))  # keep clear of ReLU's kink and pool ties
    errors = check_layer(layer(rng), x)
    assert max(errors.values()) <= TOLERANCE, errors


def test_loss_gradient_and_value():
    assert check_loss()["logits"] <= TOLERANCE
    logits = np.log(np.array([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]]))
    loss, _ = softmax_cross_entropy(logits, np.array([0, 2]))
    assert loss == pytest.approx(-(np.log(0.7) + np.log(0.5)) / 2)


def test_standard_checks_cover_every_layer_and_a_whole_model():
    results = standard_checks()
    names = " ".join(r["name"] for r in results)
    for kind in ["Conv2D", "MaxPool2D", "Dense", "ReLU", "Sigmoid", "Tanh"]:
        assert kind in names
    assert "whole model" in names and "cross-entropy" in names
    assert all(r["passed"] for r in results), results


def quadratic_params():
    p = [np.array([1.0, -2.0, 3.0]), np.array([[0.5]])]
    g = [np.zeros_like(x) for x in p]
    return p, g


def test_sgd_momentum_and_nesterov_match_the_formulas():
    for nesterov in (False, True):
        p, g = quadratic_params()
        opt = SGD(p, g, lr=0.1, momentum=0.9, nesterov=nesterov)
        ref, v = p[0].copy(), np.zeros(3)
        for _ in range(3):
            g[0][...] = 2 * p[0]
            grad = 2 * ref
            v = 0.9 * v - 0.1 * grad
            ref = ref + (0.9 * v - 0.1 * grad if nesterov else v)
            opt.step()
        np.testing.assert_allclose(p[0], ref)


def test_adam_matches_scikit_learns_adam():
    from sklearn.neural_network._stochastic_optimizers import AdamOptimizer

    p, g = quadratic_params()
    theirs = [x.copy() for x in p]
    opt = Adam(p, g, lr=0.01)
    ref = AdamOptimizer(theirs, learning_rate_init=0.01)
    for _ in range(5):
        for mine, grad in zip(g, p, strict=True):
            mine[...] = 3 * grad
        ref.update_params(theirs, [3 * t for t in theirs])
        opt.step()
    for mine, t in zip(p, theirs, strict=True):
        np.testing.assert_allclose(mine, t, rtol=1e-6)


def test_model_state_round_trip_and_strict_load():
    rng = np.random.default_rng(0)
    model = Sequential([Conv2D(1, 2, 3, rng=rng), MaxPool2D(), ReLU()])
    twin = Sequential.from_config(model.config())
    twin.load_state_dict(model.state_dict())
    x = rng.standard_normal((2, 8, 8, 1)).astype(np.float32)
    np.testing.assert_array_equal(twin.forward(x), model.forward(x))
    assert "Conv2D(in_channels=1" in repr(model)
    bad = dict(model.state_dict())
    bad["0.W"] = np.zeros((5, 5, 1, 2), np.float32)
    with pytest.raises(ValueError, match=r"0\.W has shape"):
        twin.load_state_dict(bad)
    with pytest.raises(ValueError, match="missing"):
        twin.load_state_dict({"0.W": model.state_dict()["0.W"]})


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize(
    ("k", "c_in", "n", "hw"),
    [(5, 1, 3, (12, 12)), (3, 4, 2, (7, 9)), (4, 2, 2, (6, 5)), (5, 32, 13, (12, 12))],
    ids=["one channel", "4 channels", "even kernel", "chunked"],
)
def test_conv_fast_form_gives_the_reference_forms_numbers(padding, k, c_in, n, hw):
    """forward and backward (im2col with a ones column for one channel, chunked
    im2col rebuilt in backward, one GEMM per kernel offset for dx) against
    forward_reference and backward_reference (one im2col, one GEMM, col2im), in
    float64 so that only the order of the sums differs. 13 images of 12x12x32 make
    three chunks, the last one short."""
    rng = np.random.default_rng(4)
    layer = to_float64(Conv2D(c_in, 6, k, padding, rng))
    layer.needs_input_grad = True
    layer.params["b"][:] = rng.standard_normal(6)
    x = rng.standard_normal((n, *hw, c_in))
    expected = layer.forward_reference(x)
    g = rng.standard_normal(expected.shape)
    dx_expected = layer.backward_reference(g)
    grads_expected = {name: grad.copy() for name, grad in layer.grads.items()}
    close = {"rtol": 1e-10, "atol": 1e-10}
    np.testing.assert_allclose(layer.forward(x, training=True), expected, **close)
    dx = layer.backward(g)
    assert dx.shape == x.shape
    np.testing.assert_allclose(dx, dx_expected, **close)
    for name, grad in layer.grads.items():
        np.testing.assert_allclose(grad, grads_expected[name], **close, err_msg=name)


def test_conv_reference_form_matches_naive_loops():
    rng = np.random.default_rng(5)
    layer = Conv2D(3, 4, 3, "same", rng)
    layer.params["b"][:] = rng.standard_normal(4)
    x = rng.standard_normal((2, 6, 5, 3)).astype(np.float32)
    expected = naive_conv(x, layer.params["W"], layer.params["b"], "same")
    np.testing.assert_allclose(
        layer.forward_reference(x), expected, rtol=1e-4, atol=1e-4
    )


class Scale(Layer):
    """y = x * gain: a layer whose weight is not called "W"."""

    weights = ("gain",)

    def __init__(self, n: int) -> None:
        super().__init__()
        self.params = {"gain": np.linspace(0.5, 2.0, n, dtype=np.float32)}
        self.grads = {"gain": np.zeros(n, np.float32)}

    def forward(self, x, training=False):
        self._x = x
        return x * self.params["gain"]

    def backward(self, grad_out):
        self.grads["gain"][...] = (grad_out * self._x).sum(axis=0)
        return grad_out * self.params["gain"]


def tiny_model(rng) -> Sequential:
    return Sequential([Dense(6, 5, rng), ReLU(), Scale(5), Dense(5, 3, rng)])


def test_l2_shrinks_exactly_the_parameters_layers_declare_as_weights():
    """One SGD step at lr 1 with alpha and one without, from the same weights on
    the same batch: they differ by alpha * W / n in every declared weight (Dense's
    "W", Scale's "gain") and not at all in the biases."""
    alpha, n = 0.5, 8
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 6)).astype(np.float32)
    y = rng.integers(3, size=n)
    after = {}
    for a in (0.0, alpha):
        model = tiny_model(np.random.default_rng(1))
        before = {k: p.copy() for k, p in model.state_dict().items()}
        params = [p for _, p, _ in model.parameters()]
        grads = [g for _, _, g in model.parameters()]
        trainer = Trainer(
            model,
            SGD(params, grads, lr=1.0),
            batch_size=n,
            alpha=a,
            prepare=lambda xb, _: xb,
            rng=np.random.default_rng(0),
        )
        trainer.train_batch(x, y, 0, 0)
        after[a] = model.state_dict()
    assert [w.shape for w, _ in model.weights()] == [(6, 5), (5,), (5, 3)]
    for key, p in after[alpha].items():
        shrink = alpha * before[key] / n if key in ("0.W", "2.gain", "3.W") else 0
        np.testing.assert_allclose(after[0.0][key] - p, shrink, atol=1e-6, err_msg=key)


def test_the_plain_loop_learns_64_images():
    """The loss falls tenfold and every image is learnt, in 40 epochs."""
    from digits.augment import network_input
    from digits.data import load_dataset

    mnist = load_dataset("sklearn-digits")
    x, y = mnist.x_train[:64].reshape(64, -1), mnist.y_train[:64]
    rng = np.random.default_rng(0)
    model = Sequential(
        [
            Conv2D(1, 8, 3, "same", rng),
            MaxPool2D(),
            ReLU(),
            Flatten(),
            Dense(128, 32, rng),
            ReLU(),
            Dropout(0.1, seed=1),
            Dense(32, 10, rng),
        ]
    )
    params = [p for _, p, _ in model.parameters()]
    grads = [g for _, _, g in model.parameters()]
    trainer = Trainer(
        model,
        Adam(params, grads, lr=1e-2),
        batch_size=16,
        alpha=1e-4,
        prepare=lambda xb, _: network_input(
            xb / 16, None, input_shape=(8, 8), images=True
        ),
        rng=np.random.default_rng(0),
    )
    history = History()
    history.on_train_begin()
    for epoch in range(40):
        history.on_epoch_end(epoch, trainer.run_epoch(x, y, epoch))
    losses = [h["loss"] for h in history.epochs]
    assert losses[-1] < losses[0] / 10
    logits = predict_logits(model, x, trainer.prepare)
    assert (logits.argmax(axis=1) == y).all()


class StopAfter(Callback):
    def __init__(self, batches: int) -> None:
        self.batches = batches

    def on_batch_end(self, step, logs):
        self.stop_training = step + 1 >= self.batches


def test_the_plain_loop_puts_back_the_last_sane_weights_when_it_diverges():
    """SGD at lr 3: the loss explodes at batch 8, computed with the weights of
    batch 7's update; the trainer puts back those from before it, exactly the
    weights of the same run stopped after 6 batches."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 6)).astype(np.float32)
    y = rng.integers(3, size=256)
    weights = []
    for callbacks in ([], [StopAfter(6)]):
        model = tiny_model(np.random.default_rng(1))
        params = [p for _, p, _ in model.parameters()]
        grads = [g for _, _, g in model.parameters()]
        trainer = Trainer(
            model,
            SGD(params, grads, lr=3.0, momentum=0.9),
            batch_size=8,
            alpha=1e-3,
            prepare=lambda xb, _: xb,
            rng=np.random.default_rng(0),
            max_loss=100.0,
        )
        if not callbacks:
            with pytest.raises(TrainingDiverged) as caught:
                trainer.run_epoch(x, y, 0)
            assert str(caught.value).startswith(
                "Training diverged at epoch 1, batch 8: the loss exploded to "
            )
            assert "from before batch 7 of epoch 1 were put back" in str(caught.value)
            assert caught.value.steps_kept == 6 and caught.value.usable
        else:
            assert trainer.run_epoch(x, y, 0, callbacks)["batches_done"] == 6
        weights.append(model.state_dict())
    for key, w in weights[0].items():
        np.testing.assert_array_equal(w, weights[1][key], err_msg=key)


def test_the_lesson_imports_nothing_of_the_engine():
    """Every module of digits.nn imports, each in a fresh interpreter, with the
    engine made unimportable."""
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    modules = sorted(p.stem for p in (root / "digits" / "nn").glob("*.py"))
    assert {"layers", "training", "optimizers", "model"} <= set(modules)
    code = (
        "import sys, importlib; sys.modules['digits.engine'] = None; "
        "importlib.import_module(sys.argv[1]); "
        "assert not [m for m in sys.modules if m.startswith('digits.engine.')]"
    )
    for name in modules:
        module = "digits.nn" if name == "__init__" else f"digits.nn.{name}"
        out = subprocess.run(
            [sys.executable, "-c", code, module],
            cwd=root,
            capture_output=True,
            text=True,
            check=False,
        )
        assert out.returncode == 0, (module, out.stderr)
