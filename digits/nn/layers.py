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

import copy

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

Array = np.ndarray

# Conv2D's forward builds im2col rows in chunks of about this many bytes, small
# enough to still be in the L2 cache (1 MiB or more per core) when the GEMM reads
# them.
_CHUNK_BYTES = 2**20


class Layer:
    """Base class: a layer with no parameters that passes gradients through."""

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

    def replica(self, seed: int) -> Layer:
        """A copy sharing ``params`` but with its own grads, cache and randomness.

        Used to run two halves of a batch in two threads at once.
        """
        twin = copy.copy(self)
        twin.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        return twin

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


class Conv2D(Layer):
    """2-D convolution, stride 1, "valid" or "same" padding, as im2col + one GEMM.

    Parameters ``W`` of shape (kh, kw, C_in, C_out) and ``b`` of shape (C_out,).
    Input ``x`` (N, H, W, C_in); output (N, H_out, W_out, C_out), where
    H_out = H - kh + 1 for "valid" and H for "same".
    """

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

    def forward(self, x: Array, training: bool = False) -> Array:
        lo, hi = self._pads()
        if lo or hi:
            x = np.pad(x, ((0, 0), (lo, hi), (lo, hi), (0, 0)))
        n, hp, wp, c = x.shape
        k = self.kernel_size
        ho, wo = hp - k + 1, wp - k + 1
        if ho < 1 or wo < 1:
            raise ValueError(f"Conv2D: a {k}x{k} kernel does not fit a {hp}x{wp} input")
        w2 = self.params["W"].reshape(k * k * c, self.out_channels)
        if c == 1:
            cols = _im2col(x, k, ho, wo)  # (N*Ho*Wo, kh*kw + 1)
            # _im2col appended a column of ones, so the bias rides in the GEMM
            # instead of costing a pass over the (large) output.
            out = cols @ np.vstack([w2, self.params["b"]])
        else:
            # im2col and GEMM a few images at a time, so that each chunk of columns
            # is still in cache when the GEMM reads it. Only the input is kept:
            # backward rebuilds the columns the same way, which measured faster
            # than keeping all of them (13 MB for 64 images of 12x12x32).
            out = np.empty((n * ho * wo, self.out_channels), dtype=x.dtype)
            for s, e, chunk in _im2col_chunks(x, k, ho, wo):
                o = out[s * ho * wo : e * ho * wo]
                np.matmul(chunk, w2, out=o)
                o += self.params["b"]
            cols = x
        self._cache = (cols, x.shape)
        return out.reshape(n, ho, wo, self.out_channels)

    def backward(self, grad_out: Array) -> Array | None:
        cols, (n, hp, wp, c) = self._cache
        k, (lo, hi) = self.kernel_size, self._pads()
        ho, wo = hp - k + 1, wp - k + 1
        g = grad_out.reshape(-1, self.out_channels)  # (N*Ho*Wo, C_out)
        if cols.ndim == 4:  # the (padded) input: rebuild its columns chunk by chunk
            dw = np.zeros((k * k * c, self.out_channels), dtype=g.dtype)
            for s, e, chunk in _im2col_chunks(cols, k, ho, wo):
                dw += chunk.T @ g[s * ho * wo : e * ho * wo]
        else:
            dw = cols.T @ g  # (kh*kw*C_in + 1, C_out)
        n_w = self.params["W"][..., 0].size
        self.grads["W"][...] = dw[:n_w].reshape(self.params["W"].shape)
        # With the ones column, its row of dw is the bias gradient.
        self.grads["b"][...] = dw[n_w] if len(dw) > n_w else _column_sums(g)
        if not self.needs_input_grad:
            return None
        # dL/dx: every kernel offset (i, j) sends g @ W[i, j]^T back to the input
        # window it read. One small GEMM per offset writes a contiguous block, which
        # adds into dx far faster than scattering a big col2im matrix. The sum runs
        # in (H, W, N, C) order, where a window dx[i:i+Ho, j:j+Wo] is Ho long
        # contiguous runs instead of N*Ho short ones: NumPy adds it 3x faster.
        w_t = self.params["W"].transpose(0, 1, 3, 2).copy()  # (kh, kw, C_out, C_in)
        g_hwn = np.ascontiguousarray(grad_out.transpose(1, 2, 0, 3))
        g_hwn = g_hwn.reshape(-1, self.out_channels)  # rows in (Ho, Wo, N) order
        dx_hwn = np.zeros((hp, wp, n, c), dtype=grad_out.dtype)
        part = np.empty((len(g), c), dtype=grad_out.dtype)
        for i in range(k):
            for j in range(k):
                np.matmul(g_hwn, w_t[i, j], out=part)
                dx_hwn[i : i + ho, j : j + wo] += part.reshape(ho, wo, n, c)
        dx = dx_hwn[lo : hp - hi, lo : wp - hi] if lo or hi else dx_hwn
        # A transposed view: the layer below reads it once anyway, and a copy
        # here would cost a pass of its own.
        return dx.transpose(2, 0, 1, 3)


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

    ``W`` (in_features, out_features), ``b`` (out_features,); x (N, in_features).
    """

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

    def replica(self, seed: int) -> Layer:
        twin = super().replica(seed)
        twin.rng = np.random.default_rng([self.seed, seed])
        return twin

    def forward(self, x: Array, training: bool = False) -> Array:
        if not training or self.rate == 0:
            self._mask = None
            return x
        keep = self.rng.random(x.shape, dtype=np.float32) >= self.rate
        self._mask = keep * np.float32(1 / (1 - self.rate))
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


def _im2col(x: Array, k: int, ho: int, wo: int) -> Array:
    """Every k x k window of x (N, H, W, C) as a row: (N*Ho*Wo, k*k*C), (i, j, c) order.

    With one input channel, the matrix is built transposed, one contiguous copy per
    kernel offset, and returned as a transposed view: 4x faster than gathering rows
    of 5 floats, and BLAS takes the transposed operand at no cost. It then also gets
    a last column of ones, for the bias (shape (N*Ho*Wo, k*k + 1)).
    """
    n, _, _, c = x.shape
    if c == 1:
        cols_t = np.empty((k * k + 1, n, ho, wo), dtype=x.dtype)
        for i in range(k):
            for j in range(k):
                cols_t[i * k + j] = x[:, i : i + ho, j : j + wo, 0]
        cols_t[k * k] = 1
        return cols_t.reshape(k * k + 1, n * ho * wo).T
    return _windows(x, k).reshape(n * ho * wo, k * k * c)


def _windows(x: Array, k: int) -> Array:
    """Every k x k window of x (N, H, W, C) as a view (N, Ho, Wo, kh, kw, C)."""
    windows = sliding_window_view(x, (k, k), axis=(1, 2))  # (N, Ho, Wo, C, kh, kw)
    return windows.transpose(0, 1, 2, 4, 5, 3)


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
