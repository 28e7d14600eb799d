"""A model is an ordered list of layers: Sequential."""

from __future__ import annotations

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
            # Nothing trains the input, so the first layer can skip dL/dx.
            self.layers[0].needs_input_grad = False

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        for layer in self.layers:
            x = layer.forward(x, training)
        return x

    def backward(self, grad: np.ndarray) -> np.ndarray | None:
        """Backpropagate dL/d(out) through every layer, filling their ``grads``;
        returns dL/d(in), or None when the first layer skips it."""
        for layer in reversed(self.layers):
            grad = layer.backward(grad)
        return grad

    def parameters(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """``(key, param, grad)`` for every parameter, in a fixed order."""
        return [
            (f"{i}.{name}", p, layer.grads[name])
            for i, layer in enumerate(self.layers)
            for name, p in layer.params.items()
        ]

    def weights(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(param, grad)`` for every parameter a layer declares in its
        ``weights``: the ones L2 regularisation shrinks."""
        return [
            (layer.params[name], layer.grads[name])
            for layer in self.layers
            for name in layer.weights
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

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(layer) for layer in self.layers)
        return f"Sequential(\n  {inner}\n)"
