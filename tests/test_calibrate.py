"""Tests for digits.calibrate: parameter counts and measured epoch-time estimates."""

from __future__ import annotations

import time

import numpy as np
import pytest

from digits import calibrate, registry
from digits.errors import ConfigError
from digits.nn.callbacks import History

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


def test_estimate_is_close_to_a_real_epoch():
    """The estimate for 1,000 images is within a factor of 2.5 of a real epoch
    (generous: the machine is shared, and timings are noisy)."""
    estimate = calibrate.estimate_epoch_seconds("cnn", TINY_CNN, 1000)
    history = History()
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, size=(1000, 28, 28), dtype=np.uint8)
    model = registry.get("cnn").build(**TINY_CNN, max_iter=2)
    model.fit(x, np.arange(1000) % 10, callbacks=[history])
    real = history.epochs[-1]["seconds"]
    assert real / 2.5 < estimate < real * 2.5


def test_estimate_grows_with_images_and_validation():
    one = calibrate.estimate_epoch_seconds("mlp", {}, 1000)
    two = calibrate.estimate_epoch_seconds("mlp", {}, 2000)
    val = calibrate.estimate_epoch_seconds("mlp", {}, 1000, n_validation=5000)
    assert 0 < one < two < 2.5 * one
    assert val > one


def test_probe_is_cached_and_ignores_settings_that_do_not_change_speed():
    calibrate.calibrate("dense", {"hidden_layer_sizes": (8,)})
    start = time.perf_counter()
    again = calibrate.calibrate(
        "dense",
        {"hidden_layer_sizes": (8,), "learning_rate_init": 0.01, "max_iter": 40},
    )
    assert time.perf_counter() - start < 0.05
    assert again == calibrate.calibrate("dense", {"hidden_layer_sizes": (8,)})


def test_invalid_settings_are_config_errors():
    with pytest.raises(ConfigError):
        calibrate.calibrate("cnn", {"activation": "swish"})
    with pytest.raises(ConfigError):
        calibrate.calibrate("gpt", {})
