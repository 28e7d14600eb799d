"""A model is an ordered list of layers: Sequential."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from digits.nn.layers import LAYERS, Layer


class Sequential:
    """Layers applied in order; backward runs them in reverse.

    ``state_dict()`` names each array ``"<layer index>.<param>"`` (``"0.W"``), and
    ``config()`` is the JSON-able architecture, so a model saves to plain arrays plus
    JSON and loads back with no pickle.
    """

    def __init__(self, layers: list[Layer]) -> None:
        self.layers = list(layers)
        if self.layers:
            self.layers[0].needs_input_grad = False
        # (all params, all grads, number of weights) once pack() has run.
        self.packed: tuple[np.ndarray, np.ndarray, int] | None = None

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        for layer in self.layers:
            x = layer.forward(x, training)
        return x

    def backward(
        self, grad: np.ndarray, done: Callable[[int], None] | None = None
    ) -> np.ndarray | None:
        """Backpropagate dL/d(out); returns dL/d(in) unless the first layer skips it.

        ``done(i)``, if given, is called once layer ``i``'s gradients are final: the
        trainer's second process starts updating those weights while this pass
        goes on through the earlier layers.
        """
        for i in reversed(range(len(self.layers))):
            grad = self.layers[i].backward(grad)
            if done is not None:
                done(i)
        return grad

    def parameters(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """``(key, param, grad)`` for every parameter, in a fixed order."""
        return [
            (f"{i}.{name}", p, layer.grads[name])
            for i, layer in enumerate(self.layers)
            for name, p in layer.params.items()
        ]

    def pack(self) -> tuple[np.ndarray, np.ndarray, int]:
        """Move every parameter into one flat array, and every gradient into another.

        Each layer's ``params`` and ``grads`` become views into them, so a training
        step can add the threads' gradients, run the optimizer, back up and check the
        weights with one NumPy call each instead of one per array. The weights
        (``W``, the L2-penalised ones) come first. Returns ``(params, grads,
        n_weights)``: two 1-D arrays and the length of the weights' part.
        """
        if self.packed is None:
            slots = _weights_first(self.layers)
            dtypes = [layer.params[name].dtype for layer, name in slots]
            flat = np.empty(self.n_params(), np.result_type(*dtypes))
            for (layer, name), view in zip(slots, _views(flat, slots), strict=True):
                view[...] = layer.params[name]
                layer.params[name] = view
            self.packed = (flat, _pack_grads(slots, flat.dtype), _n_weights(slots))
        return self.packed

    def share(self, params: np.ndarray, grads: np.ndarray) -> None:
        """Make the layers use ``params`` and ``grads`` (flat, in :meth:`pack`'s
        order) as their storage, without copying: how a twin process runs on the
        weights its parent keeps in shared memory."""
        slots = _weights_first(self.layers)
        for (layer, name), p, g in zip(
            slots, _views(params, slots), _views(grads, slots), strict=True
        ):
            layer.params[name], layer.grads[name] = p, g
        self.packed = (params, grads, _n_weights(slots))

    def flat_ranges(self) -> list[tuple[int, int, int]]:
        """``(layer index, start, stop)`` of every parameter in :meth:`pack`'s flat
        arrays, in their order."""
        index = {id(layer): i for i, layer in enumerate(self.layers)}
        slots = _weights_first(self.layers)
        return [
            (index[id(layer)], start, stop)
            for (layer, _), (start, stop) in zip(slots, _offsets(slots), strict=True)
        ]

    def n_params(self) -> int:
        return sum(p.size for _, p, _ in self.parameters())

    def state_dict(self) -> dict[str, np.ndarray]:
        return {key: p for key, p, _ in self.parameters()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Copy arrays into the parameters; keys and shapes must match exactly."""
        own = {key: p for key, p, _ in self.parameters()}
        if set(own) != set(state):
            missing, extra = (
                sorted(set(own) - set(state)),
                sorted(set(state) - set(own)),
            )
            raise ValueError(
                f"state does not fit: missing {missing}, unexpected {extra}"
            )
        for key, p in own.items():
            if state[key].shape != p.shape:
                raise ValueError(
                    f"state does not fit: {key} has shape {state[key].shape}, "
                    f"the model expects {p.shape}"
                )
            p[...] = state[key]

    def config(self) -> list[dict]:
        return [
            {"type": type(layer).__name__, **layer.config()} for layer in self.layers
        ]

    @classmethod
    def from_config(cls, config: list[dict]) -> Sequential:
        layers = []
        for spec in config:
            spec = dict(spec)
            layer_type = LAYERS[spec.pop("type")]
            layers.append(layer_type(**spec))
        return cls(layers)

    def replica(self, seed: int) -> Sequential:
        """A twin that shares the weights but has its own gradients and caches."""
        twin = Sequential([layer.replica(seed) for layer in self.layers])
        twin.layers[0].needs_input_grad = self.layers[0].needs_input_grad
        if self.packed is not None:  # same params; its own flat grads
            params, _, n_weights = self.packed
            grads = _pack_grads(_weights_first(twin.layers), params.dtype)
            twin.packed = (params, grads, n_weights)
        return twin

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(layer) for layer in self.layers)
        return f"Sequential(\n  {inner}\n)"


def _weights_first(layers: list[Layer]) -> list[tuple[Layer, str]]:
    """(layer, param name) for every parameter: all weights "W" first, then the rest."""
    slots = [(layer, name) for layer in layers for name in layer.params]
    return sorted(slots, key=lambda slot: slot[1] != "W")  # stable sort


def _n_weights(slots: list[tuple[Layer, str]]) -> int:
    """How many values the weights ("W") take: the flat arrays' first part."""
    return sum(layer.params[n].size for layer, n in slots if n == "W")


def _offsets(slots: list[tuple[Layer, str]]) -> list[tuple[int, int]]:
    """(start, stop) of each slot's parameter in the flat arrays, one after another."""
    offsets, at = [], 0
    for layer, name in slots:
        size = layer.params[name].size
        offsets.append((at, at + size))
        at += size
    return offsets


def _views(flat: np.ndarray, slots: list[tuple[Layer, str]]) -> list[np.ndarray]:
    """Consecutive views of ``flat`` shaped like each slot's parameter."""
    return [
        flat[start:stop].reshape(layer.params[name].shape)
        for (layer, name), (start, stop) in zip(slots, _offsets(slots), strict=True)
    ]


def _pack_grads(slots: list[tuple[Layer, str]], dtype: np.dtype) -> np.ndarray:
    """A zeroed flat gradient array; each slot's ``grads`` entry becomes its view."""
    flat = np.zeros(sum(layer.params[n].size for layer, n in slots), dtype)
    for (layer, name), view in zip(slots, _views(flat, slots), strict=True):
        layer.grads[name] = view
    return flat
