"""Optimizers: one object updates every parameter of a model in place.

An optimizer holds aligned lists of parameter and gradient arrays; ``step()`` applies
one update and ``zero_grad()`` clears the gradients. Its state (velocities, moments)
is a list aligned with the parameters, never keyed by layer names.

``step()`` is ``start_step()`` then ``update()`` of everything. The trainer instead
calls ``update(part)`` on slices of one flat parameter array, a cache-sized block at
a time and from two threads at once; the update is element-wise, so that gives the
same numbers.
"""

from __future__ import annotations

import numpy as np

_STORAGE_PREFIX = "optimizer."


class Optimizer:
    """Base class: subclasses implement ``_step(i, param, grad, part)``."""

    def __init__(self, params: list[np.ndarray], grads: list[np.ndarray], lr: float):
        if lr <= 0 or not np.isfinite(lr):
            raise ValueError(f"learning rate must be a positive number, not {lr}")
        self.params, self.grads, self.lr = params, grads, lr
        self.t = 0  # steps taken

    def zero_grad(self) -> None:
        for g in self.grads:
            g.fill(0)

    def step(self) -> None:
        """One update of every parameter."""
        self.start_step()
        self.update()

    def start_step(self) -> None:
        """Count the step about to be taken; call once before its ``update`` calls."""
        self.t += 1

    def update(self, part: slice = slice(None)) -> None:
        """Update ``part`` (a slice of the first axis) of every parameter array."""
        for i, (p, g) in enumerate(zip(self.params, self.grads, strict=True)):
            self._step(i, p[part], g[part], part)

    def _step(self, i: int, param: np.ndarray, grad: np.ndarray, part: slice) -> None:
        """Update ``param`` (= ``self.params[i][part]``) from ``grad``; state arrays
        are sliced with the same ``part``."""
        raise NotImplementedError

    def state(self) -> dict[str, np.ndarray]:
        """The optimizer's arrays, ``"<name>.<i>"``, for saving beside the weights."""
        return {
            f"{name}.{i}": a
            for name, states in self.state_arrays().items()
            for i, a in enumerate(states)
        }

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Copy ``state`` (keyed as ``state()``) into the optimizer's arrays."""
        for key, a in Optimizer.state(self).items():
            a[...] = state[key]

    def config(self) -> dict:
        """Constructor arguments besides the arrays: enough to build an equal one."""
        return {"lr": self.lr}

    def state_arrays(self) -> dict[str, list[np.ndarray]]:
        """The state arrays that follow the parameters element by element, by name:
        lists aligned with ``params``."""
        return {}

    def state_storage(self) -> dict[str, np.ndarray]:
        """The state arrays keyed ``"optimizer.<name>.<i>"``, beside other arrays."""
        return {_STORAGE_PREFIX + k: a for k, a in Optimizer.state(self).items()}

    def share_state(self, arrays: dict[str, np.ndarray], copy: bool = True) -> None:
        """Keep the state in ``arrays`` (keyed as in ``state_storage()``; other keys
        are ignored) from now on, after copying the current state into them unless
        ``copy`` is False: how a twin process and its parent update one optimizer
        state in shared memory."""
        for name, states in self.state_arrays().items():
            for i, old in enumerate(states):
                new = arrays[f"{_STORAGE_PREFIX}{name}.{i}"]
                if new is not old:
                    if copy:
                        np.copyto(new, old)
                    states[i] = new


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

    def _step(self, i, param, grad, part):
        if self.momentum == 0:
            param -= self.lr * grad
            return
        v = self.velocity[i][part]
        v *= self.momentum
        v -= self.lr * grad
        if self.nesterov:
            param += self.momentum * v - self.lr * grad
        else:
            param += v


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
        self._scratch = tuple([np.empty_like(p) for p in params] for _ in range(2))

    def config(self):
        return {
            "lr": self.lr,
            "beta1": self.beta1,
            "beta2": self.beta2,
            "eps": self.eps,
        }

    def state_arrays(self):
        return {"m": self.m, "v": self.v}

    def start_step(self):
        super().start_step()
        t = self.t
        # A rate too large for float32 becomes inf, and the weights non-finite,
        # which the trainer reports as divergence: no warning needed.
        with np.errstate(over="ignore"):
            self._lr_t = np.float32(
                self.lr * np.sqrt(1 - self.beta2**t) / (1 - self.beta1**t)
            )

    def _step(self, i, param, grad, part):
        m, v = self.m[i][part], self.v[i][part]
        # The formulas above, computed in two scratch arrays instead of temporaries;
        # the scratch is sliced like the parameter, so parts updated in two threads
        # at once don't share it.
        t, d = (s[i][part] for s in self._scratch)
        m *= self.beta1
        np.multiply(grad, 1 - self.beta1, out=t)
        m += t
        v *= self.beta2
        np.multiply(grad, 1 - self.beta2, out=t)
        t *= grad
        v += t
        np.sqrt(v, out=d)
        d += self.eps
        np.multiply(m, self._lr_t, out=t)
        t /= d
        param -= t

    def state(self):
        return super().state() | {"t": np.array(self.t)}

    def load_state(self, state):
        super().load_state(state)
        self.t = int(state["t"])


OPTIMIZERS: dict[str, type[Optimizer]] = {cls.__name__: cls for cls in (SGD, Adam)}
