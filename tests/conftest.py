"""Shared fixtures: the real MNIST files, through DIGITS_DATA_DIR."""

from __future__ import annotations

import pytest

from digits.data import Dataset, load_dataset


@pytest.fixture(scope="session")
def mnist() -> Dataset:
    """Real MNIST (60k train, 10k test), from $DIGITS_DATA_DIR or the download cache."""
    return load_dataset("mnist")
