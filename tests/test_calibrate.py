"""Tests for digits.calibrate: parameter counts and measured epoch-time estimates."""

from __future__ import annotations

import numpy as np
import pytest

from digits import calibrate, registry
from digits.errors import ConfigError

TINY_CNN = {"conv_channels": (4,), "hidden_layer_sizes": (16,), "batch_size": 64}


def fitted(kind: str, params: dict, shape=(28, 28)):
    rng = np.random.default_rng(1)
    n = 256  # at least one batch of each kind
    x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    return registry.get(kind).build(**params, max_iter=1).fit(x, np.arange(n) % 10)


def test_reference_cnn_has_the_documented_parameter_count():
    # PERF-NOTES.md: the 5x5 32-64 conv net with a 128-unit layer has 184,586.
    params = registry.get("cnn").params("default")
    assert calibrate.count_params("cnn", params) == 184_586


@pytest.mark.parametrize(
    ("kind", "params", "shape"),
    [
        ("cnn", TINY_CNN, (28, 28)),
        ("dense", {"hidden_layer_sizes": (32, 16)}, (28, 28)),
        ("mlp", {"hidden_layer_sizes": (24,)}, (28, 28)),
        ("mlp", {"hidden_layer_sizes": (24,)}, (8, 8)),
    ],
)
def test_parameter_count_matches_the_trained_model(kind, params, shape):
    model = fitted(kind, params, shape)
    if kind == "mlp":
        expected = sum(a.size for a in model.model_.coefs_ + model.model_.intercepts_)
    else:
        expected = model.n_params()
    assert calibrate.count_params(kind, params, shape, 10) == expected


def test_estimate_is_the_probe_rate_times_the_images():
    # How close the estimate comes to a real epoch is a timing, measured in
    # benchmarks/ rather than asserted here on a noisy shared machine.
    cal = calibrate.calibrate("cnn", TINY_CNN)
    assert cal.train_seconds_per_image > 0 and cal.predict_seconds_per_image > 0
    estimate = calibrate.estimate_epoch_seconds("cnn", TINY_CNN, 1000, n_validation=500)
    assert estimate == pytest.approx(
        1000 * cal.train_seconds_per_image + 500 * cal.predict_seconds_per_image
    )


def test_estimate_grows_with_images_and_validation():
    one = calibrate.estimate_epoch_seconds("mlp", {}, 1000)
    two = calibrate.estimate_epoch_seconds("mlp", {}, 2000)
    val = calibrate.estimate_epoch_seconds("mlp", {}, 1000, n_validation=5000)
    assert 0 < one < two < 2.5 * one
    assert val > one


def test_probe_is_cached_and_ignores_settings_that_do_not_change_speed():
    first = calibrate.calibrate("dense", {"hidden_layer_sizes": (8,)})
    hits = calibrate._calibrate.cache_info().hits
    again = calibrate.calibrate(
        "dense",
        {"hidden_layer_sizes": (8,), "learning_rate_init": 0.01, "max_iter": 40},
    )
    assert calibrate._calibrate.cache_info().hits == hits + 1
    assert again is first


def test_invalid_settings_are_config_errors():
    with pytest.raises(ConfigError):
        calibrate.calibrate("cnn", {"activation": "swish"})
    with pytest.raises(ConfigError):
        calibrate.calibrate("gpt", {})


# -- the clock that corrects the estimate from real batches ------------------------


class _Ticks:
    """A stand-in for time.perf_counter that moves only when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _batch(clock, ticks, seconds, epoch, batch, batches):
    ticks.now += seconds
    clock.on_batch_end(0, {"epoch": epoch, "batch": batch, "batches": batches})


def test_the_clock_replaces_the_probe_by_the_rate_of_real_batches(monkeypatch):
    ticks = _Ticks()
    monkeypatch.setattr(calibrate.time, "perf_counter", ticks)
    clock = calibrate.EpochClock(estimate=50.0, validation_seconds=2.0)
    clock.on_train_begin()
    _batch(clock, ticks, 5.0, 0, 1, 100)  # start-up costs: left out
    for b in range(2, calibrate.CLOCK_BATCHES + 1):
        _batch(clock, ticks, 0.3, 0, b, 100)
        assert clock.seconds == 50.0 and not clock.corrected  # too few batches yet
    _batch(clock, ticks, 0.3, 0, calibrate.CLOCK_BATCHES + 1, 100)
    assert clock.corrected
    assert clock.seconds == pytest.approx(0.3 * 100 + 2.0)


def test_after_an_epoch_the_clock_is_the_mean_measured_epoch(monkeypatch):
    ticks = _Ticks()
    monkeypatch.setattr(calibrate.time, "perf_counter", ticks)
    clock = calibrate.EpochClock(estimate=50.0)
    clock.on_train_begin()
    for seconds in (12.0, 8.0):
        ticks.now += seconds
        clock.on_epoch_end(0, {})
    assert clock.seconds == pytest.approx(10.0)
    _batch(clock, ticks, 30.0, 2, 5, 10)  # later batches no longer move it
    assert clock.seconds == pytest.approx(10.0)


def test_the_clock_follows_a_real_training_run():
    """As a training callback: corrected in the first epoch once enough batches
    ran, then the mean of the measured epochs. (How close it comes is measured in
    benchmarks/epoch_estimate.py, not here: these machines are noisy.)"""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(64 * 12, 28, 28), dtype=np.uint8)
    y = np.arange(len(x)) % 10
    clock = calibrate.epoch_clock("cnn", TINY_CNN, len(x))
    first_epoch = []

    class Watch(calibrate.Callback):
        def on_batch_end(self, step, logs):
            if logs["epoch"] == 0:
                first_epoch.append((logs["batch"], clock.corrected))

    walls = []

    class Walls(calibrate.Callback):
        def on_train_begin(self, logs=None):
            walls.append(calibrate.time.perf_counter())

        def on_epoch_end(self, epoch, logs):
            walls.append(calibrate.time.perf_counter())

    model = registry.get("cnn").build(**TINY_CNN, max_iter=3)
    model.fit(x, y, callbacks=[Walls(), clock, Watch()])
    corrected_from = min(batch for batch, corrected in first_epoch if corrected)
    assert corrected_from == calibrate.CLOCK_BATCHES + 1
    assert clock.seconds == pytest.approx((walls[-1] - walls[0]) / 3, rel=0.01)
