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
