"""Training a model and saving it as a run: ``train_run``.

This is the one path from hyperparameters to a saved run that the CLI, the
dashboard's Train page and the sweeps share: refuse what can be refused before
training (bad sizes, a folder that cannot hold the run), train on a subset if
asked, watch a validation set after each epoch, score the whole test set, save
the run (``digits.store``) and fill its prediction cache. The validation images
are held out of the training set by one rule (``digits.data.validation_split``):
the test set is scored once, for the final figures, and never shapes a curve or
a decision. If training fails
partway (divergence, or the second training process dying), the last good
weights are still saved, and the error says which run holds them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from digits import data, registry
from digits.errors import (
    ConfigError,
    DigitsError,
    TrainingDiverged,
    TrainingInterrupted,
    TrainingStopped,
)
from digits.store import (
    Run,
    check_can_save,
    check_out,
    predict_proba_full,
    predictions,
    sanitize_name,
    save_run,
)

VALIDATION_SEED = 0  # train_run's validation subset is the same for every run
# How many of the held-out validation images the dashboard's training and the
# sweeps score after each epoch for the curves (all 5,000 of MNIST's would cost a
# CNN on a small training subset a large share of each epoch).
VALIDATION_SIZE = 2000
# What a run's "stopped" field says when training failed partway and the last
# good weights were saved anyway.
_STOPPED_BY = {
    TrainingDiverged: "diverged",
    TrainingInterrupted: "second process died",
}


class TrainingPlan(NamedTuple):
    """Which training images train and which validate (indices into x_train).

    train : the ``train_size`` random subset of the images left for training.
    validation : the validation images scored after each epoch (``validation_size``
        of the held-out ones at most); empty if the training set is too small.
    described : where the validation figures come from, in words (the run's
        ``validation`` field, and the captions of its curves).
    """

    train: np.ndarray
    validation: np.ndarray
    described: str


def plan(
    dataset: data.Dataset,
    train_size: int | None = None,
    validation_size: int | None = None,
    seed: int | None = None,
) -> TrainingPlan:
    """The images ``train_run`` trains and validates on: the dataset's validation
    split (``data.validation_split``), a random ``train_size`` of the rest (all if
    None) drawn with ``seed``, and at most ``validation_size`` of the held-out
    images (a fixed random subset; all if None). No test image is ever in it."""
    split = data.validation_split(dataset)
    train = split.train[_subset(len(split.train), train_size, seed)]
    held = _subset(len(split.validation), validation_size, VALIDATION_SEED)
    val = split.validation[held]
    if not len(val):
        described = "none (too few training images to hold any out)"
    elif len(val) == len(split.validation):
        described = f"{split.rule} (held out, never trained on)"
    else:
        described = f"{len(val):,} of {split.rule} (held out, never trained on)"
    return TrainingPlan(train, val, described)


def validation_images(
    dataset: data.Dataset, validation_size: int | None = VALIDATION_SIZE
) -> int:
    """How many held-out training images ``train_run`` scores after each epoch
    (for the curves and early stopping) with this ``validation_size``."""
    n = len(data.validation_split(dataset).validation)
    return n if validation_size is None else min(validation_size, n)


def _subset(n: int, size: int | None, seed: int | None) -> slice | np.ndarray:
    """Sorted indices of ``size`` random items of ``n`` (all of them if None)."""
    if size is None or size >= n:
        return slice(None)
    return np.sort(np.random.default_rng(seed).permutation(n)[:size])


def train_run(
    kind: str,
    dataset,
    *,
    preset: str | None = None,
    params: dict | None = None,
    callbacks: Sequence = (),
    train_size: int | None = None,
    validation_size: int | None = None,
    name: str | None = None,
    out: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    command: str | None = None,
) -> Run:
    """Train a ``kind`` model on ``dataset``, score it on the test set, save a run.

    The hyperparameters are the kind's defaults, then ``preset``, then
    ``params``. The images are ``plan``'s: the dataset's validation images are
    held out of training (``data.validation_split``), ``train_size`` trains on a
    random subset of the rest, and ``validation_size`` scores only that many of
    the held-out images after each epoch (quicker for a CNN). The validation
    figures (``val_*`` logs) draw the curves and, with early stopping, decide
    when to stop; the run records where they come from in ``validation``. The
    test set is scored once, on the trained model. If a callback stops training,
    the model as it is then is saved, with ``stopped: "interrupted"``. If
    training diverges or its second process dies, the last good weights the
    estimator kept are scored and saved (``stopped: "diverged"`` or ``"second
    process died"``) and the error is raised again with the saved run's name
    added; when no weights are worth keeping, the error (whose message says so)
    is raised as it is and nothing is saved.
    """
    spec = registry.get(kind)
    hyper = spec.params(preset, **(params or {}))
    model = spec.constructor(**spec.fixed, **hyper)
    # Everything that can be refused is refused before training starts.
    for what, size in (
        ("train_size", train_size),
        ("validation_size", validation_size),
    ):
        if size is not None and size < 1:
            raise ConfigError(f"{what} must be at least 1; got {size}.")
    if name is not None:
        sanitize_name(name)
    if out is not None:
        check_out(out, overwrite)
    check_can_save(Path(out).parent if out is not None else None)
    images = plan(dataset, train_size, validation_size, hyper.get("random_state"))
    x, y = dataset.x_train[images.train], dataset.y_train[images.train]
    validation_data = None
    if len(images.validation):
        val = images.validation
        validation_data = (dataset.x_train[val], dataset.y_train[val])
    elif hyper.get("early_stopping"):
        raise ConfigError(
            f"Early stopping needs validation images, but these {len(x)} training "
            "images are too few to hold any out. Use more images, or turn early "
            "stopping off."
        )
    callbacks = list(callbacks)
    for cb in callbacks:
        # A hook for callbacks that read the estimator itself (the TensorBoard
        # callback reads the MLP's learning rate there).
        if hasattr(cb, "set_estimator"):
            cb.set_estimator(model)
    start = time.perf_counter()
    failure = None
    try:
        # Every class of the dataset, even one this training subset lacks, so the
        # saved model fits the run's class names.
        model.fit(
            x,
            y,
            classes=np.arange(len(dataset.class_names)),
            callbacks=callbacks,
            validation_data=validation_data,
        )
    except TrainingStopped as err:
        if not err.usable:
            raise  # its message already says there is no model to save
        failure = err  # the estimator kept its last good weights: save those
    seconds = time.perf_counter() - start
    if failure is None and not model.n_iter_:
        raise DigitsError(
            "Training was stopped before the first batch finished, so there is "
            "no model to save. Start again and let it run a moment."
        )
    if failure is not None:
        stopped = next(v for k, v in _STOPPED_BY.items() if isinstance(failure, k))
    elif any(cb.stop_training for cb in callbacks):
        stopped = "interrupted"
    elif model.n_iter_ < hyper.get("max_iter", model.n_iter_):
        stopped = "early stopping" if hyper.get("early_stopping") else "converged"
    else:
        stopped = None
    # Imported here: sklearn.metrics takes a second to import, and listing or
    # loading runs (the CLI's `runs`, `predict`) does not need it.
    from digits import metrics

    proba = predict_proba_full(model, dataset.x_test, len(dataset.class_names))
    test = metrics.report(dataset.y_test, proba, dataset.class_names)
    run = save_run(
        model,
        kind=kind,
        dataset=dataset,
        params=hyper,
        preset=preset,
        test=test,
        train_seconds=seconds,
        n_train=len(x),
        stopped=stopped,
        validation=images.described,
        command=command,
        name=name,
        out=out,
        overwrite=overwrite,
    )
    predictions(run, dataset, proba=proba)  # fills the cache for the Evaluate page
    if failure is not None:
        raise type(failure)(
            f"{failure} Those weights were saved as run {run.name} in {run.path} "
            f"(test accuracy {test['accuracy']:.2%}), marked '{stopped}'.",
            usable=True,
        ) from failure
    return run
