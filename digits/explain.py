"""Inside the network: filters, activations, saliency, occlusion, a robustness probe,
a gradient check of the architecture and the training-health callback.

Every function here computes; the dashboard's Inspect and Train pages only show the
results. The NumPy network is ours, so its weights, every layer's output and the
gradient of a class score with respect to the input are all reachable. The
scikit-learn MLP baseline is a black box here: only what needs nothing but
``predict_proba`` (occlusion, the probe) applies to it; ``capabilities`` says which.

Images are one preprocessed input, ``(h, w)`` float in 0..1 (white ink on black),
as ``digits.preprocess`` makes them and as the test set is after scaling by 1/255.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from digits.engine.halves import replica
from digits.engine.system import blas_threads
from digits.errors import ConfigError, PreprocessError
from digits.nn import gradcheck
from digits.nn.callbacks import Callback
from digits.nn.layers import Conv2D, Dense, Dropout, Layer, ReLU
from digits.nn.model import Sequential

# Short names for layers, numbered per type: conv1, pool1, relu1, ..., dense2.
SHORT_NAMES = {
    "Conv2D": "conv",
    "MaxPool2D": "pool",
    "Dense": "dense",
    "ReLU": "relu",
    "Sigmoid": "sigmoid",
    "Tanh": "tanh",
    "Dropout": "dropout",
    "Flatten": "flatten",
}
PARAM_LAYERS = (Conv2D, Dense)

OCCLUSION_PATCH = 4  # side of the blanked square, in pixels of a 28x28 image
OCCLUSION_STRIDE = 2
# Probabilities are clipped to [p, 1 - p] before log-odds: float32 (the MLP's
# output) cannot tell 1 - 1e-8 from 1.
MIN_PROBABILITY = 1e-7
INK = 1e-3  # values above this count as ink when the probe looks for its edges

# The gradient check's copy of the architecture: at most this many channels and
# units per layer, so a full finite-difference pass takes well under a second.
CHECK_CHANNELS = 3
CHECK_UNITS = 8
CHECK_IMAGES = 2

HEALTH_EVERY = 10  # the training-health callback measures one batch in this many


# -- what applies to which model --------------------------------------------------


def network(model) -> Sequential | None:
    """The NumPy network inside ``model`` (a fitted CNNClassifier or a Sequential);
    None for a model whose internals are not ours (the scikit-learn MLP)."""
    if isinstance(model, Sequential):
        return model
    net = getattr(model, "model_", None)
    return net if isinstance(net, Sequential) else None


def capabilities(model) -> dict[str, bool]:
    """Which views apply to ``model``: ``filters`` (it has conv layers),
    ``activations`` and ``saliency`` (our own network), ``occlusion`` and ``probe``
    (anything with ``predict_proba``)."""
    net = network(model)
    ours = net is not None
    return {
        "filters": ours and any(isinstance(la, Conv2D) for la in net.layers),
        "activations": ours,
        "saliency": ours,
        "occlusion": True,
        "probe": True,
    }


def _our_network(model) -> Sequential:
    net = network(model)
    if net is None:
        raise ConfigError(
            f"{type(model).__name__} is scikit-learn's network, not the NumPy one: "
            "its layers and backpropagation are not reachable from digits. Pick a "
            "CNN or dense NumPy model to see inside it."
        )
    return net


def layer_names(net: Sequential) -> list[str]:
    """ "conv1", "pool1", "relu1", ..., "dense2": one short name per layer."""
    counts: dict[str, int] = {}
    names = []
    for layer in net.layers:
        short = SHORT_NAMES.get(type(layer).__name__, type(layer).__name__.lower())
        counts[short] = counts.get(short, 0) + 1
        names.append(short if short == "flatten" else f"{short}{counts[short]}")
    return names


def network_input(model, image: np.ndarray) -> np.ndarray:
    """``image`` (h, w) as the network's input batch of one: (1, h, w, 1) for a
    CNN, (1, h*w) for a dense network. A bare Sequential takes ``image`` as its
    input already (any shape), with a batch axis added."""
    if isinstance(model, Sequential):
        return np.asarray(image)[None]
    _our_network(model)
    return model.network_input(np.asarray(image)[None])


# -- filters and activations ------------------------------------------------------


@dataclass(frozen=True)
class LayerOutput:
    """One layer's output for one image.

    values : (h, w, c) for conv, pool and the activations after them; (units,) for
        dense layers and what follows them.
    """

    name: str
    kind: str  # the layer's class name, "Conv2D"
    values: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return self.values.shape


def conv_filters(model) -> dict[str, np.ndarray]:
    """Every conv layer's learned kernels, by layer name.

    Returns {name: array (C_out, C_in, k, k)}: kernel ``[o, i]`` is what output
    channel ``o`` correlates with input channel ``i``. Empty for a network without
    conv layers.
    """
    net = _our_network(model)
    return {
        name: np.ascontiguousarray(layer.params["W"].transpose(3, 2, 0, 1))
        for name, layer in zip(layer_names(net), net.layers, strict=True)
        if isinstance(layer, Conv2D)
    }


@dataclass(frozen=True)
class Kernels:
    """Some kernels of one conv layer, chosen to be shown (``strongest_kernels``).

    kernels : (n, k, k), one per filter shown, strongest filter first.
    filters : (n,) the output channel (filter) each kernel belongs to.
    channels : (n,) the input channel each kernel reads.
    norms : (n,) each filter's norm, over all its input channels.
    """

    kernels: np.ndarray
    filters: np.ndarray
    channels: np.ndarray
    norms: np.ndarray


def strongest_kernels(
    w: np.ndarray, top: int | None = None, channel: int | None = None
) -> Kernels:
    """A readable view of a conv layer's weights ``w`` (C_out, C_in, k, k), as
    ``conv_filters`` returns them: its filters ordered by their L2 norm (all
    their weights, on every input channel), strongest first, the first ``top``
    of them (all if None); of each, one k x k kernel: the one on input channel
    ``channel``, or, if None, on the input channel where the filter's weights
    are largest (by norm).

    A filter with C_in > 1 is C_in kernels; a whole layer, C_out * C_in of them
    (2,048 for 64 filters on 32 channels), too many small squares to read.
    """
    c_in = w.shape[1]
    if channel is not None and not 0 <= channel < c_in:
        raise ValueError(f"input channel {channel} is not in 0..{c_in - 1}")
    per_kernel = np.sqrt((w.astype(np.float64) ** 2).sum(axis=(2, 3)))  # (C_out, C_in)
    norms = np.sqrt((per_kernel**2).sum(axis=1))  # (C_out,)
    order = np.argsort(-norms, kind="stable")[:top]
    if channel is None:
        channels = per_kernel[order].argmax(axis=1)
    else:
        channels = np.full(len(order), channel)
    return Kernels(w[order, channels], order, channels, norms[order])


def activations(model, image: np.ndarray) -> list[LayerOutput]:
    """The output of every layer for ``image`` (h, w), in inference mode (dropout is
    the identity). The shapes follow ``Layer.output_shape`` along the network."""
    net = _our_network(model)
    x = network_input(model, image)
    twin = replica(net)  # own caches: the cached model may serve other sessions
    outputs = []
    with blas_threads(1):  # one image: BLAS's thread hand-offs cost more than maths
        for name, layer in zip(layer_names(net), twin.layers, strict=True):
            x = layer.forward(x, training=False)
            outputs.append(LayerOutput(name, type(layer).__name__, x[0].copy()))
    return outputs


# -- the layers beside a drawing, and one convolution by hand ----------------------

# Layers that pass their input on unchanged at inference: not worth a strip.
SAME_AS_INPUT = ("Flatten", "Dropout")
PARAM_KINDS = tuple(cls.__name__ for cls in PARAM_LAYERS)


def strip_layers(outputs: Sequence[LayerOutput]) -> list[LayerOutput]:
    """The layers worth a strip on the Draw page, from ``activations``' list: each
    conv layer (what its filters see, before pooling), and the output of each
    stage (what is passed on: after the pooling and the activation that follow a
    layer with weights), the last layer included. Flatten and dropout, which
    change nothing at inference, are left out."""
    kept = [o for o in outputs if o.kind not in SAME_AS_INPUT]
    shown = []
    for i, out in enumerate(kept):
        last_of_stage = i + 1 == len(kept) or kept[i + 1].kind in PARAM_KINDS
        if out.kind == "Conv2D" or last_of_stage:
            shown.append(out)
    return shown


# The scikit-learn MLP's hidden activations (MLPClassifier's ``activation``).
MLP_ACTIVATIONS = {
    "identity": lambda z: z,
    "relu": lambda z: np.maximum(z, 0),
    "tanh": np.tanh,
    "logistic": lambda z: 1 / (1 + np.exp(-z)),
}


def mlp_layers(model, image: np.ndarray) -> list[LayerOutput]:
    """The hidden layers of the scikit-learn MLP baseline for ``image`` (h, w),
    from its own weights (``coefs_``, ``intercepts_``): for each hidden layer,
    ``activation(x @ W + b)``, (units,); and the output layer's scores (logits),
    (n_classes,), before its softmax."""
    from digits.baseline import as_features  # the MLP's own input scaling

    mlp = model.model_
    x = as_features(np.asarray(image)[None], model.input_shape_)[0].astype(np.float64)
    act = MLP_ACTIVATIONS[mlp.activation]
    outputs = []
    last = len(mlp.coefs_) - 1
    for i, (w, b) in enumerate(zip(mlp.coefs_, mlp.intercepts_, strict=True)):
        z = x @ w + b
        x = z if i == last else act(z)
        name = "output" if i == last else f"hidden{i + 1}"
        outputs.append(LayerOutput(name, "Dense", x.astype(np.float32)))
    return outputs


def layer_strips(model, image: np.ndarray) -> list[LayerOutput]:
    """What the Draw page shows of a model reading ``image`` (h, w): for our own
    networks, ``strip_layers(activations(...))``; for the scikit-learn MLP, its
    hidden layers and scores (``mlp_layers``); empty for anything else."""
    if network(model) is not None:
        return strip_layers(activations(model, image))
    if hasattr(getattr(model, "model_", None), "coefs_"):
        return mlp_layers(model, image)
    return []


@dataclass(frozen=True)
class ConvPixel:
    """What one output pixel of a conv layer computes, with the real numbers.

    The conv layer ``conv`` read ``window`` (k, k, C_in), the k x k patch of its
    input (zeros where "same" padding reaches past the edge) whose top-left is at
    (``conv_row``, ``conv_col``) of the padded input, and multiplied it element by
    element with ``kernel`` (k, k, C_in), its weights for output channel
    ``channel``: ``products`` = window * kernel. Then::

        total = products.sum()
        pre_activation = total + bias          # conv's output at that pixel

    When the pixel asked for is a later layer's (the pooling and activation
    after the conv), ``steps`` follows the number through them: the pooling took
    the largest of a 2x2 window of its input (``pooled``; the largest comes from
    conv pixel (``conv_row``, ``conv_col``)), and the activation. ``activation`` is the
    value shown at the pixel asked for.
    """

    layer: str  # the layer whose pixel was asked for ("relu1")
    conv: str  # the conv layer that computed it ("conv1")
    row: int  # the pixel asked for, in ``layer``'s output
    col: int
    channel: int
    conv_row: int  # the conv output pixel it comes from
    conv_col: int
    window: np.ndarray
    kernel: np.ndarray
    products: np.ndarray
    total: float
    bias: float
    pre_activation: float
    pooled: np.ndarray | None  # (2, 2) the pooling's input window, if one came
    steps: tuple[tuple[str, str, float], ...]  # (name, kind, value), conv first
    activation: float


def conv_pixel(
    model, image: np.ndarray, layer: str, row: int, col: int, channel: int
) -> ConvPixel:
    """One pixel of a conv layer's output, or of the pooling and activation after
    it (``layer``: "conv2", "pool2" or "relu2"), computed by hand for ``image``
    (h, w): the input window the conv read, its kernel, their products and sum,
    the bias, and the pooling and activation on the way to ``layer``.

    The numbers come from ``activations`` (the network's own forward pass) and
    the layer's own weights, in float64; ``pre_activation`` equals the conv
    layer's output at that pixel to float32 rounding.
    """
    net = _our_network(model)
    names = layer_names(net)
    if layer not in names:
        raise ConfigError(f"No layer {layer!r} in this network; one of {names}.")
    at = names.index(layer)
    first = at  # back to the conv layer, through pooling and activations only
    while first >= 0 and not isinstance(net.layers[first], Conv2D):
        if isinstance(net.layers[first], PARAM_LAYERS) or names[first] == "flatten":
            first = -1
        else:
            first -= 1
    if first < 0:
        raise ConfigError(
            f"{layer} does not come from a conv layer: pick a conv layer or the "
            "pooling and activation right after one."
        )
    outputs = activations(model, image)
    shape = outputs[at].shape
    if len(shape) != 3 or not (
        0 <= row < shape[0] and 0 <= col < shape[1] and 0 <= channel < shape[2]
    ):
        raise ConfigError(
            f"Pixel ({row}, {col}) of channel {channel} is outside {layer}'s "
            f"output {'x'.join(map(str, shape))}."
        )
    # Back from the pixel asked for to the conv output pixel it comes from.
    r, c, pooled = row, col, None
    for i in range(at, first, -1):
        if type(net.layers[i]).__name__ == "MaxPool2D":
            below = outputs[i - 1].values[..., channel]  # (H, W) before pooling
            block = below[2 * r : 2 * r + 2, 2 * c : 2 * c + 2]
            dr, dc = np.unravel_index(int(block.argmax()), block.shape)
            r, c = 2 * r + int(dr), 2 * c + int(dc)
            pooled = block.astype(np.float64)
    conv = net.layers[first]
    below = network_input(model, image)[0] if first == 0 else outputs[first - 1].values
    x = below.astype(np.float64)  # (H, W, C_in), the conv layer's input
    lo, hi = conv._pads()  # the layer's own padding rule, so "same" matches it
    x = np.pad(x, ((lo, hi), (lo, hi), (0, 0)))
    k = conv.kernel_size
    window = x[r : r + k, c : c + k]  # (k, k, C_in)
    kernel = conv.params["W"][..., channel].astype(np.float64)  # (k, k, C_in)
    products = window * kernel
    total = float(products.sum())
    bias = float(conv.params["b"][channel])
    steps = []
    pr, pc = r, c
    for i in range(first, at + 1):
        if type(net.layers[i]).__name__ == "MaxPool2D":
            pr, pc = pr // 2, pc // 2
        value = float(outputs[i].values[pr, pc, channel])
        steps.append((names[i], type(net.layers[i]).__name__, value))
    return ConvPixel(
        layer=layer,
        conv=names[first],
        row=row,
        col=col,
        channel=channel,
        conv_row=r,
        conv_col=c,
        window=window,
        kernel=kernel,
        products=products,
        total=total,
        bias=bias,
        pre_activation=total + bias,
        pooled=pooled,
        steps=tuple(steps),
        activation=steps[-1][2],
    )


# -- saliency and occlusion --------------------------------------------------------


@dataclass(frozen=True)
class Saliency:
    """d(logit of ``target``) / d(input pixel), one value per pixel of the image.

    The score is the class's logit (the input of the softmax), not its
    probability: the probability saturates near 1 and its gradient vanishes.
    """

    target: int  # the class (column of predict_proba) whose logit was differentiated
    gradient: np.ndarray  # same shape as the image
    logits: np.ndarray  # (n_classes,)


def saliency(model, image: np.ndarray, target: int | None = None) -> Saliency:
    """Gradient of the ``target`` class's logit (default: the predicted class) with
    respect to every input pixel, by the network's own backward pass.

    Inference mode: dropout is off. ``model`` is a fitted CNNClassifier, or a bare
    Sequential whose input ``image`` already is (the tests use one in float64).
    """
    net = _our_network(model)
    x = network_input(model, image)
    twin = replica(net)
    twin.layers[0].needs_input_grad = True  # the one gradient training never needs
    with blas_threads(1):
        logits = twin.forward(x, training=False)  # (1, K)
        k = int(logits[0].argmax()) if target is None else int(target)
        if not 0 <= k < logits.shape[1]:
            raise ConfigError(
                f"target {k} is not a class index 0..{logits.shape[1] - 1}"
            )
        seed = np.zeros_like(logits)
        seed[0, k] = 1  # dL/dlogits for L = logit_k
        dx = twin.backward(seed)
    return Saliency(k, dx[0].reshape(np.shape(image)), logits[0].copy())


@dataclass(frozen=True)
class Occlusion:
    """How much the evidence for ``target`` falls when a patch hides each pixel.

    drop : (h, w) the mean fall of the log-odds ln(P / (1 - P)) of ``target``,
        over the patches covering the pixel (negative where hiding helps the
        class). Log-odds, because a confident model's probability sits at 1.0
        until a patch changes its mind, which would leave every other patch at 0.
    """

    target: int
    probability: float  # of ``target`` on the whole image
    drop: np.ndarray
    patch: int
    stride: int


def log_odds(p: np.ndarray) -> np.ndarray:
    """ln(p / (1 - p)), with p clipped to [MIN_PROBABILITY, 1 - MIN_PROBABILITY]."""
    p = np.clip(np.asarray(p, dtype=np.float64), MIN_PROBABILITY, 1 - MIN_PROBABILITY)
    return np.log(p) - np.log1p(-p)


def _starts(size: int, patch: int, stride: int) -> list[int]:
    """Patch positions along one axis, the last one flush with the edge."""
    starts = list(range(0, max(size - patch, 0) + 1, stride))
    if starts[-1] != max(size - patch, 0):
        starts.append(size - patch)
    return starts


def occlusion(
    model,
    image: np.ndarray,
    patch: int = OCCLUSION_PATCH,
    stride: int = OCCLUSION_STRIDE,
    target: int | None = None,
) -> Occlusion:
    """Occlusion sensitivity of any model with ``predict_proba`` (CNN or MLP).

    Each ``patch`` x ``patch`` square, every ``stride`` pixels, is set to 0 (the
    background) and all the occluded images are scored in one batch.
    """
    h, w = image.shape
    if not 1 <= patch <= min(h, w) or stride < 1:
        raise ConfigError(
            f"occlusion needs 1 <= patch <= {min(h, w)} and stride >= 1; got "
            f"patch={patch}, stride={stride}"
        )
    spots = [
        (t, left)
        for t in _starts(h, patch, stride)
        for left in _starts(w, patch, stride)
    ]
    batch = np.repeat(np.asarray(image, np.float32)[None], len(spots) + 1, axis=0)
    for i, (t, left) in enumerate(spots, start=1):
        batch[i, t : t + patch, left : left + patch] = 0
    # ~170 small images: one BLAS thread measured 2-4x faster than two on the
    # shared 2 cores, and leaves the other core to other sessions.
    with blas_threads(1):
        proba = model.predict_proba(batch)  # (1 + n_spots, K)
    k = int(proba[0].argmax()) if target is None else int(target)
    odds = log_odds(proba[:, k])
    falls = odds[0] - odds[1:]
    total, count = np.zeros((h, w)), np.zeros((h, w))
    for fall, (t, left) in zip(falls, spots, strict=True):
        total[t : t + patch, left : left + patch] += fall
        count[t : t + patch, left : left + patch] += 1
    return Occlusion(k, float(proba[0, k]), total / np.maximum(count, 1), patch, stride)


# -- the robustness probe ----------------------------------------------------------


@dataclass(frozen=True)
class Transformed:
    """The probe's image and the transform actually applied.

    shift is (right, down) in pixels. When the requested transform would push ink
    out of the frame, the shift (or the scale) is reduced just enough to keep all
    of it, and ``notes`` says so.
    """

    image: np.ndarray  # (h, w) float32 in 0..1
    shift: tuple[int, int]
    rotate: float
    scale: float
    thicken: int
    notes: tuple[str, ...] = ()


def _disk(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return r[:, None] ** 2 + r[None, :] ** 2 <= radius * radius


def _rotate_scale(canvas: np.ndarray, rotate: float, scale: float) -> np.ndarray:
    """``canvas`` rotated anticlockwise by ``rotate`` degrees and scaled by
    ``scale`` about its ink's centre of mass (bilinear)."""
    if rotate == 0 and scale == 1:
        return canvas
    centre = np.array(ndimage.center_of_mass(canvas))
    a = -np.deg2rad(rotate)  # rows grow downwards, so anticlockwise is negative
    # affine_transform maps each output (row, col) back to the input position it
    # reads: the inverse rotation and scaling, in row-down coordinates.
    inverse = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) / scale
    out = ndimage.affine_transform(
        canvas, inverse, offset=centre - inverse @ centre, order=1
    )
    return np.clip(out, 0, 1, out=out)


def _ink_box(canvas: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) rows and columns holding ink, inclusive."""
    rows = np.flatnonzero((canvas > INK).any(axis=1))
    cols = np.flatnonzero((canvas > INK).any(axis=0))
    return rows[0], rows[-1], cols[0], cols[-1]


def transform(
    image: np.ndarray,
    shift: tuple[int, int] = (0, 0),
    rotate: float = 0.0,
    scale: float = 1.0,
    thicken: int = 0,
) -> Transformed:
    """``image`` (h, w) thickened, rotated, scaled and shifted, ink kept in frame.

    thicken : grow the strokes by this many pixels (grey dilation with a disk).
    rotate : degrees anticlockwise, about the ink's centre of mass.
    scale : size factor about the same centre.
    shift : whole pixels (right, down).

    The work happens on a canvas three frames wide, so nothing is cut on the way;
    the frame is then cropped from it. With every argument neutral the result
    equals the input.
    """
    if scale <= 0 or thicken < 0:
        raise ConfigError(f"scale must be > 0 and thicken >= 0; got {scale}, {thicken}")
    image = np.asarray(image, dtype=np.float32)
    h, w = image.shape
    canvas = np.zeros((3 * h, 3 * w), np.float32)
    canvas[h : 2 * h, w : 2 * w] = image
    if not (canvas > INK).any():
        raise PreprocessError("The probe needs an image with ink; this one is blank.")
    if thicken:
        canvas = ndimage.grey_dilation(canvas, footprint=_disk(int(thicken)))
    notes = []
    used = float(scale)
    moved = _rotate_scale(canvas, rotate, used)
    top, bottom, left, right = _ink_box(moved)
    # Too big for the frame: shrink until it fits (bilinear spreads ink by a
    # pixel, so the factor is recomputed from the result).
    while bottom - top + 1 > h or right - left + 1 > w:
        used *= min(h / (bottom - top + 1), w / (right - left + 1)) * 0.98
        moved = _rotate_scale(canvas, rotate, used)
        top, bottom, left, right = _ink_box(moved)
    if used != scale:
        notes.append(f"Scale reduced to {used:.2f} so that the digit fits the frame.")
    dx, dy = int(shift[0]), int(shift[1])
    # The frame's top-left corner on the canvas: at (h, w) for no shift, clamped so
    # that the ink's box stays inside.
    row0 = int(np.clip(h - dy, bottom - h + 1, top))
    col0 = int(np.clip(w - dx, right - w + 1, left))
    applied = (w - col0, h - row0)
    if applied != (dx, dy):
        notes.append(
            f"Shift limited to ({applied[0]:+d}, {applied[1]:+d}) px, right and down, "
            "to keep the ink inside the frame."
        )
    out = np.ascontiguousarray(moved[row0 : row0 + h, col0 : col0 + w])
    return Transformed(out, applied, float(rotate), used, int(thicken), tuple(notes))


@dataclass(frozen=True)
class Probe:
    """The transformed image and each model's class probabilities on it."""

    transformed: Transformed
    probabilities: dict[str, np.ndarray]  # name -> (n_classes,)


def probe(models: Mapping[str, object], image: np.ndarray, **settings) -> Probe:
    """``transform(image, **settings)``, then ``predict_proba`` of each model.

    models : {name: fitted model}; each must take images of ``image``'s shape.
    """
    moved = transform(image, **settings)
    return Probe(
        moved,
        {name: m.predict_proba(moved.image[None])[0] for name, m in models.items()},
    )


def sweep(
    models: Mapping[str, object],
    image: np.ndarray,
    setting: str,
    values: Sequence[float],
    target: int,
    **settings,
) -> dict[str, np.ndarray]:
    """The probability of class ``target`` as one setting varies, the others fixed.

    setting : "shift_x", "shift_y", "rotate", "scale" or "thicken".
    settings : the other ``transform`` arguments, as the probe's sliders stand.
    Returns {name: (len(values),)}: all transformed images go in one batch.
    """
    dx, dy = settings.get("shift", (0, 0))
    axes = {
        "shift_x": lambda v: {"shift": (int(v), dy)},
        "shift_y": lambda v: {"shift": (dx, int(v))},
        "rotate": lambda v: {"rotate": float(v)},
        "scale": lambda v: {"scale": float(v)},
        "thicken": lambda v: {"thicken": int(v)},
    }
    if setting not in axes:
        raise ConfigError(f"Unknown probe setting {setting!r}; one of {sorted(axes)}.")
    batch = np.stack(
        [transform(image, **{**settings, **axes[setting](v)}).image for v in values]
    )
    return {name: m.predict_proba(batch)[:, target] for name, m in models.items()}


# -- gradient check of the architecture ---------------------------------------------


def small_copy(net: Sequential, input_shape: tuple[int, ...], seed: int = 0):
    """The same layer types, kernels, padding and order as ``net``, with at most
    ``CHECK_CHANNELS`` channels per conv and ``CHECK_UNITS`` units per hidden dense
    layer (the output layer keeps its classes), freshly initialised, in float64.

    input_shape : one sample's input, (h, w, 1) or (features,).
    """
    rng = np.random.default_rng(seed)
    layers: list[Layer] = []
    shape = tuple(input_shape)
    last_dense = max(i for i, la in enumerate(net.layers) if isinstance(la, Dense))
    for i, layer in enumerate(net.layers):
        if isinstance(layer, Conv2D):
            c = min(layer.out_channels, CHECK_CHANNELS)
            new: Layer = Conv2D(shape[-1], c, layer.kernel_size, layer.padding, rng)
        elif isinstance(layer, Dense):
            units = layer.params["b"].size
            units = units if i == last_dense else min(units, CHECK_UNITS)
            new = Dense(int(np.prod(shape)), units, rng)
        elif isinstance(layer, Dropout):
            new = Dropout(layer.rate, seed=int(rng.integers(2**31)))
        else:
            new = type(layer)()
        layers.append(gradcheck.to_float64(new))
        shape = new.output_shape(shape)
    return Sequential(layers)


def gradient_check(model, seed: int = 0) -> list[dict]:
    """Finite differences against backprop on a small float64 copy of ``model``'s
    architecture (``small_copy``), through the loss, for every parameter.

    Returns one row per layer with parameters: ``layer`` (name), ``type``,
    ``params`` (how many in the copy), ``relative_error`` (worst of its W and b,
    see ``gradcheck.relative_error``) and ``passed`` (at most
    ``gradcheck.TOLERANCE``).
    """
    net = _our_network(model)
    shape = tuple(
        network_input(model, np.zeros(model.input_shape_, np.float32)).shape[1:]
    )
    copy = small_copy(net, shape, seed)
    rng = np.random.default_rng(seed)
    # Inputs kept 0.1 from zero and random: away from ReLU kinks and pooling ties,
    # where finite differences mean nothing.
    x = rng.standard_normal((CHECK_IMAGES, *shape))
    x = np.sign(x) * (0.1 + np.abs(x))
    n_classes = copy.layers[-1].params["b"].size
    errors = gradcheck.check_model(copy, x, rng.integers(n_classes, size=CHECK_IMAGES))
    rows = []
    for i, (name, layer) in enumerate(zip(layer_names(copy), copy.layers, strict=True)):
        if not layer.params:
            continue
        worst = max(errors[f"{i}.{p}"] for p in layer.params)
        rows.append(
            {
                "layer": name,
                "type": type(layer).__name__,
                "params": sum(p.size for p in layer.params.values()),
                "relative_error": worst,
                "passed": worst <= gradcheck.TOLERANCE,
            }
        )
    return rows


# -- training health ---------------------------------------------------------------


class TrainingHealth(Callback):
    """Per-layer health of a NumPy network while it trains, one batch in ``every``.

    For each layer with parameters (conv and dense), measured right after a
    sampled batch's optimizer step:

    - ``grad_norm``: the L2 norm of the layer's gradients (W and b, with the weight
      decay term), i.e. what the optimizer was given;
    - ``update_ratio``: ||W after - W before|| / ||W before|| over that one step;
      around 1e-3 is the usual healthy order of magnitude;
    - ``dead_fraction``: the fraction of the ReLU after the layer whose units
      (channels for conv, neurons for dense) output 0 for every image of the batch
      (the first half of the batch, which the main thread ran); NaN when the layer
      is not followed by a ReLU (the output layer, tanh, logistic).

    The cost is a copy of the weights and a few norms every ``every`` batches. The
    network arrives through ``set_model`` (``CNNClassifier.fit`` calls it); the
    scikit-learn MLP never sets it, so nothing is recorded for it.
    """

    def __init__(self, every: int = HEALTH_EVERY) -> None:
        if every < 1:
            raise ConfigError(f"every must be >= 1, not {every}")
        self.every = every
        self._rows: list[dict] = []
        self._lock = threading.Lock()  # the trainer appends, a page reads
        self._calls = 0
        self._before: list[np.ndarray] | None = None  # W before the sampled step

    def rows(self) -> list[dict]:
        """A copy of the records, oldest first: {"epoch" (fractional), "layer",
        "grad_norm", "update_ratio", "dead_fraction"}."""
        with self._lock:
            return list(self._rows)

    def on_train_begin(self, logs=None):
        self._calls, self._before = 0, None

    def on_batch_end(self, step: int, logs: dict) -> None:
        if self.model is None:
            return
        watched = _watched(self.model)
        if self._before is not None:
            at = logs["epoch"] + logs["batch"] / max(logs["batches"], 1)
            rows = [
                {
                    "epoch": float(at),
                    "layer": name,
                    "grad_norm": _norm(layer.grads.values()),
                    "update_ratio": _ratio(
                        _norm([layer.params["W"] - w0]), _norm([w0])
                    ),
                    "dead_fraction": _dead_fraction(relu),
                }
                for (name, layer, relu), w0 in zip(watched, self._before, strict=True)
            ]
            with self._lock:
                self._rows.extend(rows)
            self._before = None
        self._calls += 1
        if self._calls % self.every == 0:  # measure the next batch's step
            self._before = [layer.params["W"].copy() for _, layer, _ in watched]


def _watched(net: Sequential) -> list[tuple[str, Layer, ReLU | None]]:
    """(name, layer, the ReLU that follows it or None) for each conv and dense."""
    out = []
    for i, (name, layer) in enumerate(zip(layer_names(net), net.layers, strict=True)):
        if not isinstance(layer, PARAM_LAYERS):
            continue
        relu = None
        for later in net.layers[i + 1 :]:
            if isinstance(later, PARAM_LAYERS):
                break
            if isinstance(later, ReLU):
                relu = later
                break
        out.append((name, layer, relu))
    return out


def _norm(arrays) -> float:
    """The L2 norm of several arrays taken together."""
    return math.sqrt(sum(float(np.vdot(a, a)) for a in arrays))


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _dead_fraction(relu: ReLU | None) -> float:
    out = getattr(relu, "_out", None)
    if out is None:
        return float("nan")
    # Units: the last axis (channels of a conv map, neurons of a dense layer).
    alive = (out > 0).reshape(-1, out.shape[-1]).any(axis=0)
    return float(1 - alive.mean())
