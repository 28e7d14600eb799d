"""Flat parameter buffers: every parameter of a model in one array, every gradient in
another, and the optimizer step on slices of them.

``pack(model)`` moves the layers' parameters into one 1-D array and their gradients
into another, and makes each layer's ``params`` and ``grads`` entries views into
them. A training step can then add two halves' gradients, add the L2 term, back up
the weights, update them and check that they are finite with a few NumPy calls in
all instead of a few per array, on slices that two threads or two processes take at
once; and a second process can share the whole model as a few files of shared
memory. The weights (the parameters that layers declare in ``weights``, which L2
shrinks) come first, so that L2 applies to one leading slice.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np

from digits.nn.layers import Layer
from digits.nn.model import Sequential
from digits.nn.optimizers import Optimizer

# On the twin path the optimizer step goes in blocks of at most this many values,
# so that whichever process is free can take the next one.
UPDATE_BLOCK = 32768


@dataclass
class Flat:
    """A packed model's storage."""

    params: np.ndarray  # (P,) every parameter, the weights first
    grads: np.ndarray  # (P,) their gradients, in the same order
    n_weights: int  # params[:n_weights] are the weights


# The storage of every packed model, kept beside it rather than on it: the lesson's
# objects stay as the lesson wrote them.
_PACKED: weakref.WeakKeyDictionary[Sequential, Flat] = weakref.WeakKeyDictionary()


def pack(model: Sequential) -> Flat:
    """Move ``model``'s parameters and gradients into flat arrays (once; later calls
    return the same ones)."""
    if model in _PACKED:
        return _PACKED[model]
    slots = _weights_first(model.layers)
    dtypes = [layer.params[name].dtype for layer, name in slots]
    params = np.empty(sum(_size(slot) for slot in slots), np.result_type(*dtypes))
    for (layer, name), view in zip(slots, _views(params, slots), strict=True):
        view[...] = layer.params[name]
    share(model, params, np.zeros_like(params))
    return _PACKED[model]


def packed(model: Sequential) -> Flat | None:
    """``model``'s flat storage, or None if it was never packed."""
    return _PACKED.get(model)


def share(model: Sequential, params: np.ndarray, grads: np.ndarray) -> None:
    """Make ``model``'s layers use ``params`` and ``grads`` (flat, in :func:`pack`'s
    order) as their storage, without copying."""
    slots = _weights_first(model.layers)
    for (layer, name), p, g in zip(
        slots, _views(params, slots), _views(grads, slots), strict=True
    ):
        layer.params[name], layer.grads[name] = p, g
    n_weights = sum(_size(slot) for slot in slots if slot[1] in slot[0].weights)
    _PACKED[model] = Flat(params, grads, n_weights)


def flat_ranges(model: Sequential) -> list[tuple[int, int, int]]:
    """``(layer index, start, stop)`` of every parameter in :func:`pack`'s flat
    arrays, in their order."""
    index = {id(layer): i for i, layer in enumerate(model.layers)}
    slots = _weights_first(model.layers)
    return [
        (index[id(layer)], start, stop)
        for (layer, _), (start, stop) in zip(slots, _offsets(slots), strict=True)
    ]


def update_blocks(
    model: Sequential, block: int = UPDATE_BLOCK
) -> list[tuple[int, int, int]]:
    """Slices of the flat arrays for one optimizer step, in the order backward
    finishes their gradients: ``(layer, start, stop)``, to be updated once both
    halves' backward passes are done with layer ``layer``.

    The weights go in pieces of at most ``block`` values, the last layers' first;
    the biases, a few hundred values, go in one last piece.
    """
    n_weights = pack(model).n_weights
    ranges = flat_ranges(model)
    weights = sorted((r for r in ranges if r[1] < n_weights), key=lambda r: -r[0])
    blocks = [
        (layer, s, min(stop, s + block))
        for layer, start, stop in weights
        for s in range(start, stop, block)
    ]
    biases = [r for r in ranges if r[1] >= n_weights]
    if biases:
        blocks.append((min(r[0] for r in biases), biases[0][1], biases[-1][2]))
    return blocks


class FlatUpdate:
    """One optimizer step on a slice of the flat arrays.

    ``optimizer`` updates ``[params]`` from ``[grads]``, 1-D with the weights in the
    first ``n_weights``; ``backup`` is shaped like them. Called as
    ``update(n, others, start, stop)``: adds the other half-batches' gradients
    (``others``, flat) and the L2 term's to ``grads``, backs up the weights and
    applies the optimizer's rule to ``[start, stop)``; returns whether every new
    weight there is finite. Element-wise throughout, so slices updated in two
    threads or two processes give the numbers one call would, and the numbers the
    plain loop's ``optimizer.step()`` gives for the same gradients.
    """

    def __init__(
        self, optimizer: Optimizer, backup: np.ndarray, n_weights: int, alpha: float
    ) -> None:
        self.optimizer, self.backup = optimizer, backup
        self.n_weights, self.alpha = n_weights, alpha

    def __call__(self, n: int, others: list[np.ndarray], start: int, stop: int) -> bool:
        part = slice(start, stop)
        opt = self.optimizer
        p, g, backup = opt.params[0][part], opt.grads[0][part], self.backup[part]
        for other in others:
            g += other[part]
        w = slice(0, max(0, min(stop, self.n_weights) - start))  # weights in part
        if self.alpha and w.stop:
            # alpha * W / n, as the plain loop adds it, through the backup (refilled
            # just below) rather than a temporary array.
            np.multiply(p[w], np.float32(self.alpha / n), out=backup[w])
            g[w] += backup[w]
        np.copyto(backup, p)
        state = {name: arrays[0][part] for name, arrays in opt.state_arrays().items()}
        # Overflow shows as the non-finite weights this returns, which the trainer
        # reports, so NumPy's warnings are only noise. (Per call: errstate is per
        # thread, and this runs in two.)
        with np.errstate(over="ignore", invalid="ignore"):
            opt.apply(p, g, **state)
        return bool(np.isfinite(p).all())


def _weights_first(layers: list[Layer]) -> list[tuple[Layer, str]]:
    """(layer, param name) for every parameter: all weights first, then the rest."""
    slots = [(layer, name) for layer in layers for name in layer.params]
    return sorted(slots, key=lambda slot: slot[1] not in slot[0].weights)  # stable


def _size(slot: tuple[Layer, str]) -> int:
    layer, name = slot
    return layer.params[name].size


def _offsets(slots: list[tuple[Layer, str]]) -> list[tuple[int, int]]:
    """(start, stop) of each slot's parameter in the flat arrays, one after another."""
    offsets, at = [], 0
    for slot in slots:
        offsets.append((at, at + _size(slot)))
        at += _size(slot)
    return offsets


def _views(flat: np.ndarray, slots: list[tuple[Layer, str]]) -> list[np.ndarray]:
    """Consecutive views of ``flat`` shaped like each slot's parameter."""
    return [
        flat[start:stop].reshape(layer.params[name].shape)
        for (layer, name), (start, stop) in zip(slots, _offsets(slots), strict=True)
    ]
