"""Layers of the NumPy network, each with its forward maths beside its backward rule.

The contract every layer follows:

- ``forward(x, training)`` computes the output and caches only what ``backward`` needs;
- ``backward(grad_out)`` fills ``self.grads`` (same keys as ``self.params``) and returns
  the gradient of the loss with respect to the layer's input;
- images are channels-last, ``(N, H, W, C)``, and everything is float32 in training.

Channels-last lets im2col be one ``sliding_window_view`` and 2x2 max-pooling be four
strided slices; both are many times faster than the channels-first equivalents here.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

Array = np.ndarray

# Conv2D's forward builds im2col rows in chunks of about this many bytes, small
# enough to still be in the L2 cache (1 MiB or more per core) when the GEMM reads
# them.
_CHUNK_BYTES = 2**20


class Layer:
    """Base class: a layer with no parameters that passes gradients through."""

    # The parameters that are weights (multiplied with the input), which L2
    # regularisation shrinks; biases are not penalised.
    weights: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.params: dict[str, Array] = {}
        self.grads: dict[str, Array] = {}
        # The first layer of a model never needs dL/dx during training; skipping it
        # saves the most expensive GEMM of conv1's backward pass.
        self.needs_input_grad = True

    def forward(self, x: Array, training: bool = False) -> Array:
        raise NotImplementedError

    def backward(self, grad_out: Array) -> Array | None:
        raise NotImplementedError

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of one sample's output, given one sample's input shape."""
        return input_shape

    def config(self) -> dict:
        """JSON-able constructor arguments, enough to rebuild the layer."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


class Conv2D(Layer):
    """2-D convolution, stride 1, "valid" or "same" padding.

    Parameters ``W`` (kh, kw, C_in, C_out) and ``b`` (C_out,). Input ``x``
    (N, H, W, C_in); output (N, H_out, W_out, C_out), where H_out = H - kh + 1 for
    "valid" and H for "same"::

        out[n, i, j, o] = b[o] + sum_(di,dj,c) x[n, i+di, j+dj, c] W[di, dj, c, o]

    As a matrix product: every kh x kw window of x flattened to a row ("im2col",
    rows (N*H_out*W_out, kh*kw*C_in)), times W reshaped to (kh*kw*C_in, C_out). Its
    backward: dW = cols^T g, db = the sum of g's rows, and dx = g W^T added back
    into the windows the rows came from ("col2im").

    :meth:`forward_reference` and :meth:`backward_reference` do exactly that, and
    nothing more. :meth:`forward` and :meth:`backward` compute the same numbers
    faster, and the tests check one against the other:

    - with one input channel, im2col is 25 contiguous copies, and a column of ones
      carries the bias through the GEMM;
    - with more, im2col and the GEMM go a few images at a time through one buffer
      small enough to stay in cache, and backward rebuilds the columns the same way
      instead of keeping them (13 MB for 64 images of 12x12x32);
    - dx is one small GEMM per kernel offset, added into a window of dx, instead
      of one big GEMM scattered back by col2im.
    """

    weights = ("W",)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 5,
        padding: str = "valid",
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        if padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', not {padding!r}")
        rng = rng or np.random.default_rng(0)
        k = kernel_size
        fan_in = k * k * in_channels
        # He initialisation keeps the activations' variance steady through ReLUs.
        w = rng.standard_normal((k, k, in_channels, out_channels)) * np.sqrt(2 / fan_in)
        self.params = {
            "W": w.astype(np.float32),
            "b": np.zeros(out_channels, np.float32),
        }
        self.grads = {k_: np.zeros_like(v) for k_, v in self.params.items()}
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.padding = kernel_size, padding

    def config(self) -> dict:
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": self.kernel_size,
            "padding": self.padding,
        }

    def _pads(self) -> tuple[int, int]:
        if self.padding == "valid":
            return 0, 0
        k = self.kernel_size
        return (k - 1) // 2, k // 2  # even kernels pad one more after than before

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        h, w, _ = input_shape
        lo, hi = self._pads()
        k = self.kernel_size
        return (h + lo + hi - k + 1, w + lo + hi - k + 1, self.out_channels)

    def _padded(self, x: Array) -> tuple[Array, int, int]:
        """x (N, H, W, C) zero-padded for "same", and the output's (H_out, W_out)."""
        lo, hi = self._pads()
        if lo or hi:
            x = np.pad(x, ((0, 0), (lo, hi), (lo, hi), (0, 0)))
        k, (hp, wp) = self.kernel_size, x.shape[1:3]
        if hp < k or wp < k:
            raise ValueError(f"Conv2D: a {k}x{k} kernel does not fit a {hp}x{wp} input")
        return x, hp - k + 1, wp - k + 1

    def _crop(self, dx: Array) -> Array:
        """dL/d(padded input) -> dL/dx: the padding's gradient is dropped."""
        lo, hi = self._pads()
        return dx[:, lo : dx.shape[1] - hi, lo : dx.shape[2] - hi]

    def forward(self, x: Array, training: bool = False) -> Array:
        x, ho, wo = self._padded(x)
        n, c, k = len(x), x.shape[3], self.kernel_size
        w2 = self.params["W"].reshape(k * k * c, self.out_channels)
        self._x, self._cols = x, None
        if c == 1:
            cols = _im2col_one_channel(x, k, ho, wo)  # (N*Ho*Wo, kh*kw + 1)
            # The last column of cols is ones, so the bias rides in the GEMM
            # instead of costing a pass over the (large) output.
            out = cols @ np.vstack([w2, self.params["b"]])
            self._cols = cols
        else:
            out = np.empty((n * ho * wo, self.out_channels), dtype=x.dtype)
            for s, e, chunk in _im2col_chunks(x, k, ho, wo):
                o = out[s * ho * wo : e * ho * wo]  # images s..e-1
                np.matmul(chunk, w2, out=o)
                o += self.params["b"]
        return out.reshape(n, ho, wo, self.out_channels)

    def backward(self, grad_out: Array) -> Array | None:
        x, cols, k = self._x, self._cols, self.kernel_size
        ho, wo = grad_out.shape[1:3]
        g = grad_out.reshape(-1, self.out_channels)  # (N*Ho*Wo, C_out)
        w_shape = self.params["W"].shape
        if cols is not None:  # one channel: the ones column's row of dW is db
            dw = cols.T @ g  # (kh*kw + 1, C_out)
            self.grads["W"][...] = dw[:-1].reshape(w_shape)
            self.grads["b"][...] = dw[-1]
        else:  # rebuild the columns chunk by chunk, as forward did
            dw = np.zeros((np.prod(w_shape[:3]), self.out_channels), dtype=g.dtype)
            for s, e, chunk in _im2col_chunks(x, k, ho, wo):
                dw += chunk.T @ g[s * ho * wo : e * ho * wo]
            self.grads["W"][...] = dw.reshape(w_shape)
            self.grads["b"][...] = _column_sums(g)
        if not self.needs_input_grad:
            return None
        return self._crop(_input_gradient(grad_out, self.params["W"], x.shape))

    def forward_reference(self, x: Array) -> Array:
        """What :meth:`forward` computes, plainly: im2col, then one GEMM."""
        x, ho, wo = self._padded(x)
        cols = _windows(x, self.kernel_size).reshape(len(x) * ho * wo, -1)
        out = cols @ self.params["W"].reshape(len(cols[0]), -1) + self.params["b"]
        self._x, self._cols = x, None
        return out.reshape(len(x), ho, wo, self.out_channels)

    def backward_reference(self, grad_out: Array) -> Array:
        """What :meth:`backward` computes, plainly: dW = cols^T g, db = the sum of
        g's rows, and dx = g W^T added back into each window (col2im)."""
        x, k = self._x, self.kernel_size
        n, ho, wo, _ = grad_out.shape
        windows = _windows(x, k)  # (N, Ho, Wo, kh, kw, C_in)
        cols = windows.reshape(n * ho * wo, -1)
        g = grad_out.reshape(-1, self.out_channels)
        w2 = self.params["W"].reshape(len(cols[0]), -1)
        self.grads["W"][...] = (cols.T @ g).reshape(self.params["W"].shape)
        self.grads["b"][...] = g.sum(axis=0)
        dcols = (g @ w2.T).reshape(windows.shape)
        dx = np.zeros_like(x)
        for i in range(k):
            for j in range(k):
                dx[:, i : i + ho, j : j + wo] += dcols[:, :, :, i, j]
        return self._crop(dx)


class MaxPool2D(Layer):
    """2x2 max-pooling with stride 2; an odd last row or column is dropped.

    Input (N, H, W, C); output (N, H // 2, W // 2, C). The gradient flows to the
    position that held the maximum (to every tied position, which only happens
    for exactly equal inputs).
    """

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        h, w, c = input_shape
        return (h // 2, w // 2, c)

    def forward(self, x: Array, training: bool = False) -> Array:
        h2, w2 = x.shape[1] // 2, x.shape[2] // 2
        # The four corners of every 2x2 window are four strided views of x.
        a, b = (
            x[:, 0 : 2 * h2 : 2, 0 : 2 * w2 : 2],
            x[:, 0 : 2 * h2 : 2, 1 : 2 * w2 : 2],
        )
        cc, d = (
            x[:, 1 : 2 * h2 : 2, 0 : 2 * w2 : 2],
            x[:, 1 : 2 * h2 : 2, 1 : 2 * w2 : 2],
        )
        out = np.maximum(a, b)
        np.maximum(out, cc, out=out)
        np.maximum(out, d, out=out)
        self._cache = (x, out)
        return out

    def backward(self, grad_out: Array) -> Array:
        x, out = self._cache
        n, h, w, c = x.shape
        h2, w2 = h // 2, w // 2
        # View the (even part of the) input as (N, H/2, 2, W/2, 2, C) windows and
        # route each window's gradient to where the input equals the window's max.
        even = x[:, : 2 * h2, : 2 * w2]
        windows = even.reshape(n, h2, 2, w2, 2, c)
        # The comparison writes its 0/1 straight into a float array (one pass instead
        # of bool + astype), since NumPy's mixed-dtype multiply is twice as slow.
        dx_even = np.empty(windows.shape, dtype=x.dtype)
        np.equal(windows, out[:, :, None, :, None, :], out=dx_even, casting="unsafe")
        dx_even *= grad_out[:, :, None, :, None, :]
        if (h, w) == (2 * h2, 2 * w2):
            return dx_even.reshape(x.shape)
        dx = np.zeros_like(x)
        dx[:, : 2 * h2, : 2 * w2] = dx_even.reshape(even.shape)
        return dx


class Dense(Layer):
    """Fully connected layer: ``y = x @ W + b``.

    ``W`` (in_features, out_features), ``b`` (out_features,); x (N, in_features),
    y (N, out_features).
    """

    weights = ("W",)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rng: np.random.Generator | None = None,
        init: str = "he",
    ) -> None:
        super().__init__()
        rng = rng or np.random.default_rng(0)
        # He for ReLU; Glorot (what scikit-learn's MLP uses) for tanh and sigmoid.
        scale = (
            np.sqrt(2 / in_features)
            if init == "he"
            else np.sqrt(2 / (in_features + out_features))
        )
        w = rng.standard_normal((in_features, out_features)) * scale
        self.params = {
            "W": w.astype(np.float32),
            "b": np.zeros(out_features, np.float32),
        }
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.in_features, self.out_features, self.init = in_features, out_features, init

    def config(self) -> dict:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "init": self.init,
        }

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (self.out_features,)

    def forward(self, x: Array, training: bool = False) -> Array:
        self._x = x
        out = x @ self.params["W"]
        out += self.params["b"]
        return out

    def backward(self, grad_out: Array) -> Array | None:
        # dL/dW = x^T . delta ; dL/db = sum over the batch ; dL/dx = delta . W^T
        np.matmul(self._x.T, grad_out, out=self.grads["W"])
        self.grads["b"][...] = _column_sums(grad_out)
        if not self.needs_input_grad:
            return None
        return grad_out @ self.params["W"].T


class ReLU(Layer):
    """max(x, 0); its derivative is 1 where the output is positive, else 0."""

    def forward(self, x: Array, training: bool = False) -> Array:
        out = np.maximum(x, 0)
        self._out = out
        return out

    def backward(self, grad_out: Array) -> Array:
        grad = (self._out > 0).astype(grad_out.dtype)
        grad *= grad_out
        return grad


class Sigmoid(Layer):
    """1 / (1 + exp(-x)); its derivative is s * (1 - s)."""

    def forward(self, x: Array, training: bool = False) -> Array:
        # tanh form is overflow-free: sigmoid(x) = (1 + tanh(x / 2)) / 2
        out = np.tanh(x * 0.5)
        out += 1
        out *= 0.5
        self._out = out
        return out

    def backward(self, grad_out: Array) -> Array:
        s = self._out
        return grad_out * s * (1 - s)


class Tanh(Layer):
    """tanh(x); its derivative is 1 - tanh(x)^2."""

    def forward(self, x: Array, training: bool = False) -> Array:
        out = np.tanh(x)
        self._out = out
        return out

    def backward(self, grad_out: Array) -> Array:
        return grad_out * (1 - self._out * self._out)


class Dropout(Layer):
    """Inverted dropout: in training, zero a fraction ``rate`` and scale the rest.

    Scaling by 1 / (1 - rate) at training time means inference is the identity.
    """

    def __init__(self, rate: float = 0.5, seed: int = 0) -> None:
        super().__init__()
        if not 0 <= rate < 1:
            raise ValueError(f"dropout rate must be in [0, 1), not {rate}")
        self.rate, self.seed = rate, seed
        self.rng = np.random.default_rng(seed)

    def config(self) -> dict:
        return {"rate": self.rate, "seed": self.seed}

    def mask(self, shape: tuple[int, ...]) -> Array:
        """A fresh random mask of ``shape``: 0 for a dropped unit, 1 / (1 - rate)
        for a kept one."""
        keep = self.rng.random(shape, dtype=np.float32) >= self.rate
        return keep * np.float32(1 / (1 - self.rate))

    def forward(self, x: Array, training: bool = False) -> Array:
        if not training or self.rate == 0:
            self._mask = None
            return x
        self._mask = self.mask(x.shape)
        return x * self._mask

    def backward(self, grad_out: Array) -> Array:
        return grad_out if self._mask is None else grad_out * self._mask


class Flatten(Layer):
    """(N, H, W, C) -> (N, H*W*C); backward restores the shape."""

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (int(np.prod(input_shape)),)

    def forward(self, x: Array, training: bool = False) -> Array:
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, grad_out: Array) -> Array:
        return grad_out.reshape(self._shape)


def _windows(x: Array, k: int) -> Array:
    """Every k x k window of x (N, H, W, C) as a view (N, Ho, Wo, kh, kw, C)."""
    windows = sliding_window_view(x, (k, k), axis=(1, 2))  # (N, Ho, Wo, C, kh, kw)
    return windows.transpose(0, 1, 2, 4, 5, 3)


def _im2col_one_channel(x: Array, k: int, ho: int, wo: int) -> Array:
    """im2col of a one-channel x (N, H, W, 1), plus a last column of ones:
    (N*Ho*Wo, k*k + 1).

    Built transposed, one contiguous copy per kernel offset, and returned as a
    transposed view: 4x faster than gathering rows of 25 floats, and BLAS takes
    the transposed operand at no cost.
    """
    n = len(x)
    cols_t = np.empty((k * k + 1, n, ho, wo), dtype=x.dtype)
    for i in range(k):
        for j in range(k):
            cols_t[i * k + j] = x[:, i : i + ho, j : j + wo, 0]
    cols_t[k * k] = 1
    return cols_t.reshape(k * k + 1, n * ho * wo).T


def _im2col_chunks(x: Array, k: int, ho: int, wo: int):
    """im2col of x (N, H, W, C) a few images at a time, in one reused buffer.

    Yields (s, e, cols) for images s..e-1, with cols (Ho*Wo*(e-s), kh*kw*C) in
    the order of W.reshape(kh*kw*C, C_out). Each chunk is about _CHUNK_BYTES.
    """
    n, c = len(x), x.shape[3]
    rows, width = ho * wo, k * k * c
    step = max(1, _CHUNK_BYTES // (rows * width * x.itemsize))
    windows = _windows(x, k)  # (N, Ho, Wo, kh, kw, C) view
    buffer = np.empty((min(n, step) * rows, width), dtype=x.dtype)
    for s in range(0, n, step):
        e = min(n, s + step)
        cols = buffer[: (e - s) * rows]
        cols.reshape(e - s, ho, wo, k, k, c)[...] = windows[s:e]
        yield s, e, cols


def _input_gradient(grad_out: Array, w: Array, x_shape: tuple[int, ...]) -> Array:
    """dL/dx (N, H, W, C_in) of a stride-1 convolution of x, from grad_out
    (N, Ho, Wo, C_out) and w (kh, kw, C_in, C_out).

    Every kernel offset (i, j) sends grad_out @ W[i, j]^T back to the window of x
    it read: one small GEMM per offset, added into a block of dx, is far faster
    than scattering a big col2im matrix. The sum runs in (H, W, N, C) order, where
    such a window is Ho long contiguous runs instead of N*Ho short ones: NumPy adds
    it 3x faster. Returns a transposed view: the layer below reads it once anyway,
    and a copy here would cost a pass of its own.
    """
    n, h, wd, c = x_shape
    k, c_out = w.shape[0], w.shape[3]
    ho, wo = grad_out.shape[1:3]
    w_t = w.transpose(0, 1, 3, 2).copy()  # (kh, kw, C_out, C_in)
    g_hwn = np.ascontiguousarray(grad_out.transpose(1, 2, 0, 3))
    g_hwn = g_hwn.reshape(-1, c_out)  # rows in (Ho, Wo, N) order
    dx_hwn = np.zeros((h, wd, n, c), dtype=grad_out.dtype)
    part = np.empty((len(g_hwn), c), dtype=grad_out.dtype)
    for i in range(k):
        for j in range(k):
            np.matmul(g_hwn, w_t[i, j], out=part)
            dx_hwn[i : i + ho, j : j + wo] += part.reshape(ho, wo, n, c)
    return dx_hwn.transpose(2, 0, 1, 3)


def _column_sums(g: Array) -> Array:
    """Sum of the rows of g (M, K): a GEMV, several times faster than g.sum(0)."""
    return np.ones(len(g), dtype=g.dtype) @ g


LAYERS: dict[str, type[Layer]] = {
    cls.__name__: cls
    for cls in (Conv2D, MaxPool2D, Dense, ReLU, Sigmoid, Tanh, Dropout, Flatten)
}

ACTIVATIONS: dict[str, type[Layer]] = {
    "relu": ReLU,
    "tanh": Tanh,
    "logistic": Sigmoid,
}
