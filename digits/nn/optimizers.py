"""Optimizers: one object updates every parameter of a model in place.

An optimizer holds aligned lists of parameter and gradient arrays; ``step()`` applies
one update to each parameter from its gradient. Its state (velocities, moments) is a
list aligned with the parameters, never keyed by layer names.

There is no ``zero_grad()``: every layer's ``backward`` overwrites its gradients
rather than adding to them.

Each subclass writes its update rule once, in ``apply(param, grad, **state)``, for
one parameter array and its state arrays; ``step()`` applies it to each parameter.
"""

from __future__ import annotations

import numpy as np


class Optimizer:
    """Base class: subclasses implement ``apply`` and list their state arrays."""

    def __init__(self, params: list[np.ndarray], grads: list[np.ndarray], lr: float):
        if lr <= 0 or not np.isfinite(lr):
            raise ValueError(f"learning rate must be a positive number, not {lr}")
        self.params, self.grads, self.lr = params, grads, lr
        self.t = 0  # steps taken

    def step(self) -> None:
        """One update of every parameter from its gradient."""
        self.t += 1
        states = self.state_arrays()
        for i, (p, g) in enumerate(zip(self.params, self.grads, strict=True)):
            self.apply(p, g, **{name: arrays[i] for name, arrays in states.items()})

    def apply(self, param: np.ndarray, grad: np.ndarray, **state: np.ndarray) -> None:
        """Update ``param`` in place from ``grad``, for step ``self.t``; ``state``
        holds this parameter's arrays from :meth:`state_arrays`, updated in place."""
        raise NotImplementedError

    def state_arrays(self) -> dict[str, list[np.ndarray]]:
        """The state arrays, by name: lists aligned with ``params``."""
        return {}

    def state(self) -> dict[str, np.ndarray]:
        """The state as ``"<name>.<i>"`` arrays (the live ones) plus the step
        count ``"t"``: what :meth:`load_state` puts back."""
        arrays = {
            f"{name}.{i}": a
            for name, states in self.state_arrays().items()
            for i, a in enumerate(states)
        }
        return arrays | {"t": np.array(self.t)}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Copy ``state`` (keyed as :meth:`state`) into the optimizer's arrays."""
        for key, a in self.state().items():
            if key != "t":
                a[...] = state[key]
        self.t = int(state["t"])

    def config(self) -> dict:
        """Constructor arguments besides the arrays: enough to build an equal one."""
        return {"lr": self.lr}


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with (Nesterov) momentum.

    Plain:     p -= lr * g
    Momentum:  v = mu * v - lr * g ;  p += v
    Nesterov:  v = mu * v - lr * g ;  p += mu * v - lr * g   (look-ahead form,
    the one scikit-learn's SGDOptimizer uses)
    """

    def __init__(self, params, grads, lr=0.01, momentum=0.0, nesterov=False):
        super().__init__(params, grads, lr)
        self.momentum, self.nesterov = momentum, nesterov
        self.velocity = [np.zeros_like(p) for p in params]

    def config(self):
        return {"lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov}

    def state_arrays(self):
        return {"velocity": self.velocity}

    def apply(self, param, grad, velocity):
        if self.momentum == 0:
            param -= self.lr * grad
            return
        velocity *= self.momentum
        velocity -= self.lr * grad
        if self.nesterov:
            param += self.momentum * velocity - self.lr * grad
        else:
            param += velocity


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015) with bias correction folded into the step size.

    m = b1 * m + (1 - b1) * g ;  v = b2 * v + (1 - b2) * g^2
    p -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)
    """

    def __init__(self, params, grads, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
        super().__init__(params, grads, lr)
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]

    def config(self):
        return {
            "lr": self.lr,
            "beta1": self.beta1,
            "beta2": self.beta2,
            "eps": self.eps,
        }

    def state_arrays(self):
        return {"m": self.m, "v": self.v}

    def apply(self, param, grad, m, v):
        b1, b2, t = self.beta1, self.beta2, self.t
        # A rate too large for float32 becomes inf, and the weights non-finite,
        # which the trainer reports as divergence: no warning needed.
        with np.errstate(over="ignore"):
            lr_t = np.float32(self.lr * np.sqrt(1 - b2**t) / (1 - b1**t))
        m *= b1
        m += (1 - b1) * grad
        v *= b2
        v += (1 - b2) * grad * grad
        param -= lr_t * m / (np.sqrt(v) + self.eps)


OPTIMIZERS: dict[str, type[Optimizer]] = {cls.__name__: cls for cls in (SGD, Adam)}
