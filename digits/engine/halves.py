"""The two halves of a batch, which run forward and backward at the same time.

The first half runs on the model itself (:func:`first_half`), the second on a
replica that shares the model's weights but has gradients and activations of its
own (:func:`second_half`). The two halves' gradients add up to the whole batch's
because each half's loss is divided by the whole batch's size
(:func:`part_cross_entropy`).

The random numbers are the plain loop's: the trainer augments the whole batch
before it splits it, and each Dropout layer's mask is drawn for the whole batch by
the model's own Dropout layer (:func:`draw_masks`), then handed to each half by rows
(:class:`GivenDropout`). What differs from the plain loop is only the order in
which float32 sums run.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np

from digits.engine.flat import packed, share
from digits.nn.layers import Dropout
from digits.nn.losses import softmax_cross_entropy
from digits.nn.model import Sequential


class GivenDropout(Dropout):
    """Dropout that applies the mask it is given, ``given`` (its rows of the whole
    batch's mask, shaped like the input), instead of drawing one."""

    def __init__(self, rate: float) -> None:
        super().__init__(rate)
        self.given: np.ndarray | None = None

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        if not training or self.rate == 0:
            self._mask = None
            return x
        self._mask = self.given
        return x * self._mask


def first_half(model: Sequential) -> Sequential:
    """``model`` itself, with a :class:`GivenDropout` in place of each Dropout
    layer: the first half fills the model's gradients, and leaves its activations
    in the model's layers as the plain loop does (``explain.TrainingHealth`` reads
    them)."""
    first_needs_input_grad = model.layers[0].needs_input_grad
    half = Sequential(
        [
            GivenDropout(layer.rate) if isinstance(layer, Dropout) else layer
            for layer in model.layers
        ]
    )
    half.layers[0].needs_input_grad = first_needs_input_grad
    return half


def replica(model: Sequential) -> Sequential:
    """A model that shares ``model``'s parameters, with gradients and activations
    of its own: every layer keeps its last input, so two threads cannot run one
    model at once (prediction in the dashboard's sessions uses replicas too).

    If ``model`` is packed, so is the replica, on the same flat parameters and
    with flat gradients of its own.
    """
    layers = []
    for layer in model.layers:
        twin = copy.copy(layer)
        twin.params = dict(layer.params)
        twin.grads = {name: np.zeros_like(p) for name, p in layer.params.items()}
        layers.append(twin)
    out = Sequential(layers)
    out.layers[0].needs_input_grad = model.layers[0].needs_input_grad
    flat = packed(model)
    if flat is not None:
        share(out, flat.params, np.zeros_like(flat.grads))
    return out


def second_half(model: Sequential) -> Sequential:
    """A :func:`replica` of ``model`` with a :class:`GivenDropout` in place of
    each Dropout layer: the second half of each batch."""
    half = replica(model)
    half.layers = [
        GivenDropout(layer.rate) if isinstance(layer, Dropout) else layer
        for layer in half.layers
    ]
    return half


def dropout_shapes(
    model: Sequential, sample_shape: tuple[int, ...]
) -> list[tuple[int, tuple[int, ...]]]:
    """``(layer index, one image's input shape)`` of every Dropout layer that drops
    something, for network inputs of one image's shape ``sample_shape``."""
    shapes, shape = [], tuple(sample_shape)
    for i, layer in enumerate(model.layers):
        if isinstance(layer, Dropout) and layer.rate:
            shapes.append((i, shape))
        shape = layer.output_shape(shape)
    return shapes


def draw_masks(
    model: Sequential, n: int, sample_shape: tuple[int, ...]
) -> list[np.ndarray]:
    """The masks of a batch of ``n`` images, one (n, *shape) per Dropout layer of
    :func:`dropout_shapes`, drawn by ``model``'s own Dropout layers exactly as its
    forward pass would draw them."""
    return [
        model.layers[i].mask((n, *shape))
        for i, shape in dropout_shapes(model, sample_shape)
    ]


def give_masks(half: Sequential, masks: list[np.ndarray], rows: slice) -> None:
    """Hand ``half``'s Dropout layers (those of :func:`dropout_shapes`) their
    ``rows`` of the batch's ``masks``."""
    droppers = [layer for layer in half.layers if isinstance(layer, Dropout)]
    for layer, mask in zip([d for d in droppers if d.rate], masks, strict=True):
        layer.given = mask[rows]


def part_cross_entropy(
    logits: np.ndarray, y: np.ndarray, n_total: int
) -> tuple[float, np.ndarray]:
    """``softmax_cross_entropy`` of ``len(y)`` images of a batch of ``n_total``,
    scaled by ``len(y) / n_total``: the parts' losses and gradients then add up to
    the whole batch's mean loss and its gradient."""
    loss, dlogits = softmax_cross_entropy(logits, y)
    share_of_batch = len(y) / n_total
    dlogits *= np.float32(share_of_batch)
    return loss * share_of_batch, dlogits


def forward_backward(
    half: Sequential,
    x: np.ndarray,
    y: np.ndarray,
    n_total: int,
    loss_ready: Callable[[float, int], None] | None = None,
    layer_done: Callable[[int], None] | None = None,
) -> tuple[float, int]:
    """Forward and backward of ``half`` on its part x (n, ...), y (n,) of a batch of
    ``n_total`` images; returns (its share of the loss, how many it got right).

    ``loss_ready(loss, n_correct)`` is called between the two passes, and
    ``layer_done(i)`` once layer ``i``'s gradients are final: how the two processes
    of the twin path tell each other how far they are.
    """
    # Overflow is how divergence shows; the trainer checks the loss and weights and
    # reports it, so NumPy's warnings would only be noise.
    with np.errstate(over="ignore", invalid="ignore"):
        logits = half.forward(x, training=True)
        correct = int((logits.argmax(axis=1) == y).sum())
        loss, grad = part_cross_entropy(logits, y, n_total)
        if loss_ready is not None:
            loss_ready(loss, correct)
        for i in reversed(range(len(half.layers))):
            grad = half.layers[i].backward(grad)
            if layer_done is not None:
                layer_done(i)
    return loss, correct
