"""The NumPy engine: gradients, the forward pass against naive loops, training."""

from __future__ import annotations

import numpy as np
import pytest

from digits.nn.gradcheck import TOLERANCE, check_layer, check_loss, standard_checks
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
from digits.nn.losses import softmax_cross_entropy
from digits.nn.model import Sequential
from digits.nn.optimizers import SGD, Adam


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


def small_model(rng):
    return Sequential(
        [Conv2D(1, 3, 3, rng=rng), MaxPool2D(), ReLU(), Flatten(), Dense(27, 4, rng)]
    )


def test_pack_moves_parameters_into_one_array_weights_first():
    rng = np.random.default_rng(0)
    model = small_model(rng)
    before = {k: p.copy() for k, p in model.state_dict().items()}
    flat, grads, n_weights = model.pack()
    assert model.pack()[0] is flat  # packing twice changes nothing
    assert flat.shape == grads.shape == (model.n_params(),)
    assert n_weights == 3 * 3 * 3 + 27 * 4
    for key, p in model.state_dict().items():
        np.testing.assert_array_equal(p, before[key])
        assert np.shares_memory(p, flat)
        assert key.endswith(".W") == np.shares_memory(p, flat[:n_weights])
    # Writing through the flat array is writing the layers' parameters, and
    # backward writes its gradients into the flat gradient array.
    flat[:] = 0.5
    assert (model.layers[4].params["W"] == 0.5).all()
    x = rng.standard_normal((2, 8, 8, 1)).astype(np.float32)
    model.backward(model.forward(x, training=True))
    assert np.count_nonzero(grads) > 0
    # A replica shares the parameters but gets its own flat gradients.
    twin = model.replica(1)
    assert twin.packed[0] is flat and not np.shares_memory(twin.packed[1], grads)
    twin.backward(twin.forward(x, training=True))
    np.testing.assert_array_equal(twin.packed[1], grads)


def test_update_blocks_cover_every_parameter_once_last_layers_first():
    """The twin path's optimizer step goes in these blocks; each is ready once both
    halves' backward passes have finished its layer, so the order must follow
    backward's, and the blocks must cover the flat array exactly once."""
    from digits.nn.training import update_blocks

    model = small_model(np.random.default_rng(0))
    flat, _, n_weights = model.pack()
    blocks = update_blocks(model, block=50)
    covered = np.zeros(len(flat), int)
    for _, start, stop in blocks:
        assert 0 < stop - start <= 50 or start >= n_weights
        covered[start:stop] += 1
    assert (covered == 1).all()
    layers = [layer for layer, _, _ in blocks]
    assert layers == sorted(layers, reverse=True)
    # A block's layer owns its weights, or (the biases' block) comes first.
    owner = {}
    for layer, start, stop in model.flat_ranges():
        owner.update(dict.fromkeys(range(start, stop), layer))
    for layer, start, stop in blocks:
        assert min(owner[i] for i in range(start, stop)) == layer
    # Backward reports each layer as done, last layer first.
    done = []
    x = np.random.default_rng(1).standard_normal((2, 8, 8, 1)).astype(np.float32)
    model.backward(model.forward(x, training=True), done.append)
    assert done == list(reversed(range(len(model.layers))))


@pytest.mark.parametrize("alpha", [0.0, 1e-2])
def test_update_split_across_two_threads_equals_one_thread(alpha):
    """Each thread updates half of the flat array: together, every element once."""
    from concurrent.futures import ThreadPoolExecutor

    from digits.nn.training import Trainer

    results = []
    for threads in (1, 2):
        rng = np.random.default_rng(0)
        model = small_model(rng)
        flat, grads, _ = model.pack()
        opt = Adam([flat], [grads], lr=0.01)
        trainer = Trainer(
            model,
            opt,
            batch_size=8,
            alpha=alpha,
            prepare=lambda xb, _: xb,
            rng=np.random.default_rng(0),
        )
        other = trainer.replicas[1].packed[1]
        for step in range(3):
            grads[:] = np.random.default_rng(step).standard_normal(grads.shape)
            other[:] = np.random.default_rng(step + 10).standard_normal(grads.shape)
            with ThreadPoolExecutor(1) as pool:
                chosen = pool if threads == 2 else None
                assert trainer._update(8, chosen, [other])
        results.append(flat.copy())
    np.testing.assert_array_equal(results[0], results[1])
    initial = small_model(np.random.default_rng(0)).pack()[0]
    assert not np.array_equal(results[0], initial)


def test_trainer_refuses_an_optimizer_on_other_arrays():
    from digits.nn.training import Trainer

    model = small_model(np.random.default_rng(0))
    params = [p for _, p, _ in model.parameters()]
    grads = [g for _, _, g in model.parameters()]
    with pytest.raises(ValueError, match="pack"):
        Trainer(
            model,
            Adam(params, grads),
            batch_size=8,
            alpha=0.0,
            prepare=lambda xb, _: xb,
            rng=np.random.default_rng(0),
        )
