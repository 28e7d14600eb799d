"""Checks the estimators share, made before any training: settings and labels.

``CNNClassifier`` and ``MLPBaseline`` refuse a bad setting (NaN, infinite, negative
or zero where that makes no sense) with one ``ConfigError`` that lists every bad
value, and a training set they cannot learn from (empty, one class, labels outside
``classes``) with a ``TrainingDataError``, so that nothing fails halfway through
training with an IndexError or ZeroDivisionError instead.

Collect problems in a list with the ``check_*`` helpers, then call
:func:`raise_problems`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
from sklearn.utils.multiclass import unique_labels

from digits.errors import ConfigError, TrainingDataError
from digits.humanize import plural

# The most weights a network may have. Training keeps about nine float32 arrays of
# this size (the weights, both halves' gradients, the backup, Adam's two moments
# and the temporary arrays of its update), so 50 million weights take about 1.8 GB:
# more than a laptop spares, and 300 times the default CNN.
MAX_PARAMS = 50_000_000


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_int(problems: list[str], name: str, value, low: int = 1) -> None:
    """``value`` must be an integer ``>= low``."""
    if not (_is_int(value) and value >= low):
        what = "a positive integer" if low == 1 else f"an integer >= {low}"
        problems.append(f"{name} must be {what}, not {value!r}")


def check_real(
    problems: list[str],
    name: str,
    value,
    low: float,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """``value`` must be a finite number in the interval from ``low`` to ``high``
    (None: no upper bound); ``*_open`` excludes that end. NaN and infinity never
    pass."""
    ok = _is_real(value) and math.isfinite(value)
    if ok:
        ok = (value > low) if low_open else (value >= low)
    if ok and high is not None:
        ok = (value < high) if high_open else (value <= high)
    if ok:
        return
    if high is None:
        what = f"a finite number {'>' if low_open else '>='} {low:g}"
    else:
        what = (
            f"a number in {'(' if low_open else '['}{low:g}, {high:g}"
            f"{')' if high_open else ']'}"
        )
    problems.append(f"{name} must be {what}, not {value!r}")


def check_bool(problems: list[str], name: str, value) -> None:
    if not isinstance(value, bool | np.bool_):
        problems.append(f"{name} must be True or False, not {value!r}")


def check_choice(problems: list[str], name: str, value, choices: Sequence) -> None:
    if not isinstance(value, str) or value not in choices:
        options = ", ".join(repr(c) for c in choices)
        problems.append(f"{name} must be one of {options}, not {value!r}")


def check_seed(problems: list[str], name: str, value) -> None:
    """None or a non-negative integer, as ``np.random.default_rng`` takes."""
    if value is not None and not (_is_int(value) and value >= 0):
        problems.append(f"{name} must be None or an integer >= 0, not {value!r}")


def check_layers(
    problems: list[str], name: str, value, example: str = "(128,)"
) -> tuple[int, ...] | None:
    """A sequence of positive integers (possibly empty); returns it as a tuple, or
    None after noting the problem."""
    if _is_int(value) or isinstance(value, str) or not isinstance(value, Sequence):
        sizes = None
    else:
        sizes = tuple(value)
    if sizes is None or not all(_is_int(s) and s >= 1 for s in sizes):
        problems.append(
            f"{name} must be a sequence of positive integers such as {example}, "
            f"not {value!r}"
        )
        return None
    return tuple(int(s) for s in sizes)


def check_size(problems: list[str], n_params: int, what: str) -> None:
    """At most MAX_PARAMS weights."""
    if n_params > MAX_PARAMS:
        problems.append(
            f"{what} would have {n_params:,} weights (about "
            f"{n_params * 36 / 1e9:,.0f} GB to train), more than the limit of "
            f"{MAX_PARAMS:,}; use fewer or smaller layers"
        )


def raise_problems(owner: str, problems: list[str]) -> None:
    """ConfigError listing every problem, if there is any."""
    if problems:
        raise ConfigError(f"Invalid {owner} settings: " + "; ".join(problems) + ".")


def label(value) -> str:
    """One label for a message: ``3`` or ``'cat'``, never ``np.int64(3)``."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def few(values, limit: int = 10) -> str:
    """``values`` as a short list for a message: the first ``limit`` and a count."""
    values = [v.item() if hasattr(v, "item") else v for v in values]
    if len(values) <= limit:
        return str(values)
    return f"{values[:limit]} and {len(values) - limit} more"


def check_not_empty(n_images: int) -> None:
    """TrainingDataError for a training set of no images."""
    if n_images == 0:
        raise TrainingDataError(
            "The training set is empty (0 images); training needs images of at "
            "least 2 classes."
        )


def training_classes(y: np.ndarray, classes=None, *, fit: bool) -> np.ndarray:
    """The classes a model trained on labels ``y`` knows: ``classes`` when given
    (as scikit-learn's ``partial_fit`` takes them, so a class missing from the
    training set is still known and predicted with a low probability), else the
    labels in ``y``; sorted.

    Raises TrainingDataError for an empty training set, labels outside
    ``classes``, fewer than 2 classes, and, when ``fit`` (a whole training set
    rather than ``partial_fit``'s first batch), a ``y`` of a single class.
    """
    n = len(y)
    check_not_empty(n)
    present = unique_labels(y)
    known = present if classes is None else unique_labels(np.asarray(classes))
    unknown = np.setdiff1d(present, known)
    if unknown.size:
        raise TrainingDataError(
            f"Labels {few(unknown)} of the training set are not among the classes "
            f"given, {few(known)}; pass every class the labels use."
        )
    if fit and len(present) < 2:
        start = (
            f"The training set has 1 image, so only one class ({label(present[0])})"
            if n == 1
            else f"The training set's {plural(n, 'image')} are all of one class "
            f"({label(present[0])})"
        )
        raise TrainingDataError(
            f"{start}; a classifier needs images of at least 2 classes to learn "
            "to tell them apart. Add images of the other classes."
        )
    if len(known) < 2:
        raise TrainingDataError(
            f"Training with only one class ({label(known[0])}) is not possible: a "
            "classifier needs at least 2. Pass every class with classes=..., or "
            "images of at least 2 classes."
        )
    return known
