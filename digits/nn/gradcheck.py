"""Finite-difference gradient checks, in float64, for every layer, the loss and models.

For a layer ``f`` and a fixed random projection ``R``, the scalar ``L = sum(f(x) * R)``
has ``dL/d(out) = R``; backpropagating ``R`` must give the same gradients as central
differences ``(L(v + eps) - L(v - eps)) / (2 eps)`` for the input and every parameter.

The error of a tensor is ``||analytic - numeric|| / (||analytic|| + ||numeric||)``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

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

EPS = 1e-6
TOLERANCE = 1e-5


def relative_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """||a - n|| / (||a|| + ||n||); 0 when both are zero."""
    denom = np.linalg.norm(analytic) + np.linalg.norm(numeric)
    return float(np.linalg.norm(analytic - numeric) / denom) if denom else 0.0


def numeric_gradient(f: Callable[[], float], v: np.ndarray, eps: float = EPS):
    """Central differences of the scalar ``f()`` with respect to ``v``."""
    grad = np.zeros_like(v)
    flat, gflat = v.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = f()
        flat[i] = old - eps
        down = f()
        flat[i] = old
        gflat[i] = (up - down) / (2 * eps)
    return grad


def to_float64(layer: Layer) -> Layer:
    for name in layer.params:
        layer.params[name] = layer.params[name].astype(np.float64)
        layer.grads[name] = np.zeros_like(layer.params[name])
    return layer


def check_layer(layer: Layer, x: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Relative errors of dL/dx and of each parameter's gradient for one layer."""
    layer = to_float64(layer)
    layer.needs_input_grad = True
    x = x.astype(np.float64)
    reseed = isinstance(layer, Dropout)

    def forward(training: bool = True) -> np.ndarray:
        if reseed:  # the same dropout mask on every call
            layer.rng = np.random.default_rng(layer.seed)
        return layer.forward(x, training)

    r = np.random.default_rng(seed).standard_normal(forward().shape)
    forward()
    dx = layer.backward(r.copy())
    errors = {
        "input": relative_error(dx, numeric_gradient(lambda: np.vdot(forward(), r), x))
    }
    for name, p in layer.params.items():
        forward()
        layer.backward(r.copy())
        analytic = layer.grads[name].copy()
        numeric = numeric_gradient(lambda: np.vdot(forward(), r), p)
        errors[name] = relative_error(analytic, numeric)
    return errors


def check_loss(n: int = 6, k: int = 5, seed: int = 0) -> dict[str, float]:
    """Gradient of the fused softmax cross-entropy with respect to the logits."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n, k)) * 3
    y = rng.integers(k, size=n)
    _, analytic = softmax_cross_entropy(logits, y)
    numeric = numeric_gradient(lambda: softmax_cross_entropy(logits, y)[0], logits)
    return {"logits": relative_error(analytic, numeric)}


def check_model(model: Sequential, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Every parameter of a whole model, through the loss, in float64."""
    for layer in model.layers:
        to_float64(layer)
    x = x.astype(np.float64)

    def forward() -> np.ndarray:
        for layer in model.layers:
            if isinstance(layer, Dropout):  # the same mask on every call
                layer.rng = np.random.default_rng(layer.seed)
        return model.forward(x, training=True)

    def loss() -> float:
        return softmax_cross_entropy(forward(), y)[0]

    _, dlogits = softmax_cross_entropy(forward(), y)
    model.backward(dlogits)
    analytic = {key: g.copy() for key, _, g in model.parameters()}
    return {
        key: relative_error(analytic[key], numeric_gradient(loss, p))
        for key, p, _ in model.parameters()
    }


def _away_from_zero(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    # ReLU's kink and max-pool's ties make finite differences meaningless within eps
    # of them; inputs at least 0.1 from zero avoid both.
    x = rng.standard_normal(shape)
    return np.sign(x) * (0.1 + np.abs(x))


def standard_checks(seed: int = 0) -> list[dict]:
    """The checks ``python -m digits gradcheck`` runs: every layer type and the loss.

    Returns one dict per check: ``name``, ``max_relative_error`` and ``passed``.
    """
    rng = np.random.default_rng(seed)
    cases: list[tuple[str, Callable[[], dict[str, float]]]] = []

    def add(name: str, layer_fn: Callable[[], Layer], shape: tuple[int, ...]):
        cases.append(
            (name, lambda: check_layer(layer_fn(), _away_from_zero(rng, shape), seed))
        )

    for k, pad, hw in [(3, "valid", (7, 6)), (5, "same", (6, 7)), (4, "same", (5, 5))]:
        add(
            f"Conv2D k={k} {pad} {hw[0]}x{hw[1]}",
            lambda k=k, pad=pad: Conv2D(2, 3, k, pad, np.random.default_rng(seed)),
            (2, *hw, 2),
        )
    add(
        "Conv2D k=3 valid 1 channel",
        lambda: Conv2D(1, 2, 3, "valid", rng),
        (2, 6, 5, 1),
    )
    add("MaxPool2D 6x6", MaxPool2D, (2, 6, 6, 3))
    add("MaxPool2D 7x5 (odd)", MaxPool2D, (2, 7, 5, 2))
    add("Dense", lambda: Dense(7, 4, np.random.default_rng(seed)), (3, 7))
    add("ReLU", ReLU, (3, 8))
    add("Sigmoid", Sigmoid, (3, 8))
    add("Tanh", Tanh, (3, 8))
    add("Dropout", lambda: Dropout(0.4, seed=seed), (3, 8))
    add("Flatten", Flatten, (2, 3, 4, 2))
    cases.append(("softmax cross-entropy", lambda: check_loss(seed=seed)))

    def tiny_cnn() -> dict[str, float]:
        r = np.random.default_rng(seed)
        model = Sequential(
            [
                Conv2D(1, 3, 3, "same", r),
                MaxPool2D(),
                ReLU(),
                Conv2D(3, 4, 3, "valid", r),
                MaxPool2D(),
                Tanh(),
                Flatten(),
                Dense(4, 5, r),
                Sigmoid(),
                Dropout(0.3, seed=seed),
                Dense(5, 3, r),
            ]
        )
        x = r.standard_normal((4, 9, 9, 1))
        return check_model(model, x, r.integers(3, size=4))

    cases.append(("whole model (conv, pool, activations, dropout)", tiny_cnn))
    results = []
    for name, run in cases:
        errors = run()
        worst = max(errors.values())
        results.append(
            {
                "name": name,
                "max_relative_error": worst,
                "errors": errors,
                "passed": worst <= TOLERANCE,
            }
        )
    return results
