"""How big a model is and how long an epoch of it takes, measured on this machine.

Before training, the dashboard shows the parameter count and an estimated time per
epoch. Both come from one probe: the chosen architecture is built and trained for
two short epochs on random images of the right shape (two batches each for the
NumPy kinds); the second epoch, free of start-up costs, gives the seconds per
training image, and a prediction over the same images the seconds per predicted
image. An epoch of ``n`` images then takes about ``n`` times the first, plus the
validation images times the second. The probe is cached per architecture, so it
runs once per process for each setting of the parameters that affect speed.

Left out: the estimate does not know about other processes that may compete for
the cores later; it reflects the load at the time of the probe.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from digits import registry
from digits.errors import ConfigError

PROBE_BATCHES = 2  # batches per probe epoch (NumPy kinds)
MIN_PROBE_IMAGES = 2000  # scikit-learn's per-epoch overhead needs a larger probe
# Parameters that change what an epoch computes; the others (learning rate,
# epochs, seeds...) only change the numbers, not the time.
SPEED_PARAMS = (
    "conv_channels",
    "kernel_size",
    "padding",
    "hidden_layer_sizes",
    "activation",
    "solver",
    "batch_size",
    "dropout",
    "augment",
    "n_threads",  # the CNN trainer's threads (sweeps run trials on one each)
)
# scikit-learn's MLP scores training accuracy on up to this many images per epoch
# (digits.baseline.ACCURACY_SAMPLE); it costs a prediction over them.
MLP_ACCURACY_SAMPLE = 10_000


@dataclass(frozen=True)
class Calibration:
    """What the probe measured for one architecture."""

    n_params: int  # trainable parameters (weights and biases)
    train_seconds_per_image: float  # forward + backward + update, per image
    predict_seconds_per_image: float  # forward only, per image


def _speed_key(kind: str, params: Mapping[str, Any]) -> str:
    """The parameters that affect speed, as a canonical (hashable) JSON string."""
    spec = registry.get(kind)
    full = spec.params(**{k: v for k, v in params.items() if k in SPEED_PARAMS})
    relevant = {k: full[k] for k in SPEED_PARAMS if k in full}
    return json.dumps(relevant, sort_keys=True, default=list)


@functools.lru_cache(maxsize=64)
def _calibrate(
    kind: str, key: str, image_shape: tuple[int, ...], n_classes: int
) -> Calibration:
    spec = registry.get(kind)
    params = {
        k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(key).items()
    }
    model = spec.build(**params, max_iter=2, early_stopping=False, random_state=0)
    batch = int(model.get_params().get("batch_size", 200))
    n = max(PROBE_BATCHES * batch, n_classes)
    if kind == "mlp":
        n = max(n, MIN_PROBE_IMAGES)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(n, *image_shape), dtype=np.uint8)
    y = np.arange(n) % n_classes  # every class present, as in real data
    model.fit(x, y)
    if len(model.history_) < 2:
        raise ConfigError(f"The {spec.label} stopped before the probe's second epoch.")
    # The second epoch runs without first-call costs (allocations, imports).
    train = model.history_[-1]["seconds"] / n
    start = time.perf_counter()
    model.predict_proba(x)
    predict = (time.perf_counter() - start) / n
    return Calibration(model.n_params(), train, predict)


def calibrate(
    kind: str,
    params: Mapping[str, Any],
    image_shape: tuple[int, ...] = (28, 28),
    n_classes: int = 10,
) -> Calibration:
    """Probe the ``kind`` model with ``params`` (cached; see the module docstring).

    params : hyperparameters as ``registry.get(kind).params`` takes them; only
        those in ``SPEED_PARAMS`` matter. Raises ConfigError if they are invalid.
    image_shape : (h, w) of the images; n_classes : number of classes.
    """
    key = _speed_key(kind, params)
    return _calibrate(kind, key, tuple(int(s) for s in image_shape), int(n_classes))


def count_params(
    kind: str,
    params: Mapping[str, Any],
    image_shape: tuple[int, ...] = (28, 28),
    n_classes: int = 10,
) -> int:
    """Number of trainable parameters of the ``kind`` model with ``params``."""
    return calibrate(kind, params, image_shape, n_classes).n_params


def estimate_epoch_seconds(
    kind: str,
    params: Mapping[str, Any],
    n_images: int,
    *,
    n_validation: int = 0,
    image_shape: tuple[int, ...] = (28, 28),
    n_classes: int = 10,
) -> float:
    """Estimated seconds for one epoch over ``n_images`` training images.

    n_validation : images scored after each epoch (the validation set).
    """
    cal = calibrate(kind, params, image_shape, n_classes)
    predicted = n_validation
    if kind == "mlp":
        predicted += min(n_images, MLP_ACCURACY_SAMPLE)
    return n_images * cal.train_seconds_per_image + (
        predicted * cal.predict_seconds_per_image
    )
