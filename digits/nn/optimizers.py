"""Optimizers: one object updates every parameter of a model in place.

An optimizer holds aligned lists of parameter and gradient arrays; ``step()`` applies
one update and ``zero_grad()`` clears the gradients. Its state (velocities, moments)
is a list aligned with the parameters, never keyed by layer names.
"""

from __future__ import annotations

import numpy as np


class Optimizer:
    """Base class: subclasses implement ``_step(i, param, grad)``."""

    def __init__(self, params: list[np.ndarray], grads: list[np.ndarray], lr: float):
        if lr <= 0 or not np.isfinite(lr):
            raise ValueError(f"learning rate must be a positive number, not {lr}")
        self.params, self.grads, self.lr = params, grads, lr
        self.t = 0  # steps taken

    def zero_grad(self) -> None:
        for g in self.grads:
            g.fill(0)

    def step(self, pool=None) -> None:
        """One update of every parameter (``pool`` is a hint some optimizers use)."""
        self.t += 1
        for i, (p, g) in enumerate(zip(self.params, self.grads, strict=True)):
            self._step(i, p, g)

    def _step(self, i: int, param: np.ndarray, grad: np.ndarray) -> None:
        raise NotImplementedError

    def state(self) -> dict[str, np.ndarray]:
        """The optimizer's arrays, for saving alongside the weights."""
        return {}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        pass


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

    def _step(self, i, param, grad):
        if self.momentum == 0:
            param -= self.lr * grad
            return
        v = self.velocity[i]
        v *= self.momentum
        v -= self.lr * grad
        if self.nesterov:
            param += self.momentum * v - self.lr * grad
        else:
            param += v

    def state(self):
        return {f"velocity.{i}": v for i, v in enumerate(self.velocity)}

    def load_state(self, state):
        for i, v in enumerate(self.velocity):
            v[...] = state[f"velocity.{i}"]


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

    # Arrays larger than this are updated half by the caller and half by ``pool``.
    SPLIT_SIZE = 8192

    def step(self, pool=None):
        """One Adam update; with a thread ``pool``, the big arrays' halves run at once.

        Every element's update is independent, so splitting the flat arrays in two
        gives bit-for-bit the same result as one pass.
        """
        self.t += 1
        lr_t = self.lr * np.sqrt(1 - self.beta2**self.t) / (1 - self.beta1**self.t)
        self._lr_t = np.float32(lr_t)
        if pool is None:
            self._update(0, 1)
            return
        future = pool.submit(self._update, 1, 2)
        self._update(0, 2)
        future.result()

    def _update(self, part: int, parts: int) -> None:
        """Update share ``part`` of ``parts`` of the big arrays (part 0: small ones)."""
        for i, p in enumerate(self.params):
            n = p.size
            if parts > 1 and n < self.SPLIT_SIZE:
                if part == 0:
                    self._step(i, p, self.grads[i])
                continue
            lo, hi = n * part // parts, n * (part + 1) // parts
            self._step(i, p, self.grads[i], slice(lo, hi))

    def _step(self, i, param, grad, sl=slice(None)):
        # Flat views (never copies: .shape= raises instead) of the slice to update;
        # scratch buffers replace the temporaries of the textbook formula.
        p, g, m, v = (_flat(a)[sl] for a in (param, grad, self.m[i], self.v[i]))
        tmp, tmp2 = self._scratch(i, sl, len(p))
        m *= self.beta1
        np.multiply(g, 1 - self.beta1, out=tmp)
        m += tmp
        v *= self.beta2
        np.multiply(g, 1 - self.beta2, out=tmp)
        tmp *= g
        v += tmp
        np.sqrt(v, out=tmp)  # denominator: sqrt(v) + eps
        tmp += self.eps
        np.multiply(m, self._lr_t, out=tmp2)
        tmp2 /= tmp
        p -= tmp2

    def _scratch(self, i, sl, n):
        """Two float32 buffers of length n, kept per (array, slice) for reuse."""
        if not hasattr(self, "_buffers"):
            self._buffers = {}
        key = (i, sl.start, sl.stop)
        buf = self._buffers.get(key)
        if buf is None or buf.shape[1] != n:
            buf = self._buffers[key] = np.empty((2, n), self.m[i].dtype)
        return buf[0], buf[1]

    def state(self):
        out = {f"m.{i}": m for i, m in enumerate(self.m)}
        out.update({f"v.{i}": v for i, v in enumerate(self.v)})
        out["t"] = np.array(self.t)
        return out

    def load_state(self, state):
        for i in range(len(self.m)):
            self.m[i][...] = state[f"m.{i}"]
            self.v[i][...] = state[f"v.{i}"]
        self.t = int(state["t"])


def _flat(a: np.ndarray) -> np.ndarray:
    """A 1-D view of a contiguous array (raises rather than silently copying)."""
    view = a.view()
    view.shape = (a.size,)
    return view


OPTIMIZERS: dict[str, type[Optimizer]] = {"sgd": SGD, "adam": Adam}
