"""How big a model is and how long an epoch of it takes, measured on this machine.

Before training, the dashboard shows the parameter count and an estimated time per
epoch. Both come from one probe: the chosen architecture is built and trained for
two short epochs on random images of the right shape (two batches each for the
NumPy kinds); the second epoch, free of start-up costs, gives the seconds per
training image, and a prediction over the same images the seconds per predicted
image. An epoch of ``n`` images then takes about ``n`` times the first, plus the
validation images times the second. The probe is cached per architecture, so it
runs once per process for each setting of the parameters that affect speed.

Once training starts, ``EpochClock`` (a training callback) corrects the estimate
from the real batches: after the first few batches of the first epoch it goes by
their rate (the first batch, which pays for start-up, left out), and after each
epoch by the measured epochs. ``benchmarks/epoch_estimate.py`` measures both
against the epochs that follow.

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
from digits.nn.callbacks import Callback

PROBE_BATCHES = 8  # batches per probe epoch (NumPy kinds): 7 timed in the second
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
    batches = _BatchTimes()
    model.fit(x, y, callbacks=[batches])
    if len(model.history_) < 2:
        raise ConfigError(f"The {spec.label} stopped before the probe's second epoch.")
    # The second epoch runs without first-call costs (allocations, imports); the
    # median batch of it ignores a batch that another process held up.
    gaps = np.diff(batches.ends[-1]) if len(batches.ends[-1]) > 2 else []
    if kind == "mlp" or not len(gaps):  # whole-epoch calls: no batches to time
        train = model.history_[-1]["seconds"] / n
    else:
        train = float(np.median(gaps)) / batch
    predict = np.inf
    for _ in range(2):  # the second, warm
        start = time.perf_counter()
        model.predict_proba(x)
        predict = min(predict, (time.perf_counter() - start) / n)
    return Calibration(model.n_params(), train, predict)


class _BatchTimes(Callback):
    """When each batch of each epoch ended (perf_counter seconds)."""

    def __init__(self) -> None:
        super().__init__()
        self.ends: list[list[float]] = [[]]

    def on_batch_end(self, step, logs):
        self.ends[-1].append(time.perf_counter())

    def on_epoch_end(self, epoch, logs):
        self.ends.append([])

    def on_train_end(self, logs=None):
        if not self.ends[-1]:
            self.ends.pop()


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


# Batches of the first epoch to time before their rate replaces the probe's
# estimate (after the first batch, which pays for start-up: a second process,
# first-call allocations).
CLOCK_BATCHES = 8


class EpochClock(Callback):
    """The time per epoch of a training run, corrected as it goes.

    ``seconds`` starts as the probe's ``estimate`` (training plus scoring the
    ``n_validation`` images). After ``CLOCK_BATCHES`` batches past the first, it
    is their median time times the epoch's batches, plus the probe's time for the
    validation images; once an epoch has finished, the mean wall time of
    the finished epochs (validation included). ``corrected`` says whether real
    batches went into it. Read it from another thread: it is one float, written
    whole.
    """

    def __init__(self, estimate: float, validation_seconds: float = 0.0) -> None:
        super().__init__()
        self.seconds = float(estimate)
        self.corrected = False
        self._validation = float(validation_seconds)
        self._epoch_edges: list[float] = []  # when training began, each epoch ended
        self._epoch: int | None = None  # the epoch whose batch ends are timed
        self._ends: list[float] = []  # when its batches ended, from the first

    @property
    def validation_seconds(self) -> float:
        """The probe's time for scoring the validation images, each epoch."""
        return self._validation

    def on_train_begin(self, logs=None):
        self._epoch_edges = [time.perf_counter()]

    def on_batch_end(self, step, logs):
        if len(self._epoch_edges) > 1:
            return  # whole epochs are the better measure now
        now = time.perf_counter()
        epoch, batch, batches = int(logs["epoch"]), logs["batch"], logs["batches"]
        if batch <= 1 or self._epoch != epoch:
            self._epoch, self._ends = epoch, [now]
            return
        self._ends.append(now)
        if len(self._ends) > min(CLOCK_BATCHES, batches - 1):
            # The median batch: one held up by another process moves it little.
            per_batch = float(np.median(np.diff(self._ends)))
            self.seconds = per_batch * batches + self._validation
            self.corrected = True

    def on_epoch_end(self, epoch, logs):
        self._epoch_edges.append(time.perf_counter())
        edges = self._epoch_edges
        self.seconds = (edges[-1] - edges[0]) / (len(edges) - 1)
        self.corrected = True


def epoch_clock(
    kind: str,
    params: Mapping[str, Any],
    n_images: int,
    *,
    n_validation: int = 0,
    image_shape: tuple[int, ...] = (28, 28),
    n_classes: int = 10,
) -> EpochClock:
    """An ``EpochClock`` that starts from the probe's estimate for these settings
    (``estimate_epoch_seconds``)."""
    estimate = estimate_epoch_seconds(
        kind,
        params,
        n_images,
        n_validation=n_validation,
        image_shape=image_shape,
        n_classes=n_classes,
    )
    cal = calibrate(kind, params, image_shape, n_classes)
    return EpochClock(estimate, n_validation * cal.predict_seconds_per_image)
