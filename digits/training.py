"""Training a model and saving it as a run: ``train_run``.

This is the one path from hyperparameters to a saved run that the CLI, the
dashboard's Train page and the sweeps share: refuse what can be refused before
training (bad sizes, a folder that cannot hold the run), train on a subset if
asked, watch a validation set after each epoch, score the whole test set, save
the run (``digits.store``) and fill its prediction cache. If training fails
partway (divergence, or the second training process dying), the last good
weights are still saved, and the error says which run holds them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from digits import registry
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
# How many test images the dashboard's training and the sweeps score after each
# epoch for the curves (a whole test set would cost a CNN a fifth of an epoch).
VALIDATION_SIZE = 2000
# What a run's "stopped" field says when training failed partway and the last
# good weights were saved anyway.
_STOPPED_BY = {
    TrainingDiverged: "diverged",
    TrainingInterrupted: "second process died",
}


def validation_images(
    params: Mapping[str, Any],
    n_test: int,
    validation_size: int | None = VALIDATION_SIZE,
) -> int:
    """How many test images ``train_run`` scores after each epoch for the curves:
    none with early stopping (the estimator holds out part of the training set
    instead), else ``validation_size`` of them (all ``n_test`` if None)."""
    if params.get("early_stopping"):
        return 0
    return n_test if validation_size is None else min(validation_size, n_test)


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
    ``params``. ``train_size`` trains on a random subset of that many images.
    Without early stopping the test set (or a fixed random subset of
    ``validation_size`` test images, quicker for a CNN) is scored after every
    epoch for the curves (``val_*`` logs; the run records which in
    ``validation``); it never steers training. With early stopping the estimator
    holds out part of the training set instead. The saved run is always scored
    on the whole test set. If a callback stops training, the model as it is then
    is saved, with ``stopped: "interrupted"``. If training diverges or its second
    process dies, the last good weights the estimator kept are scored and saved
    (``stopped: "diverged"`` or ``"second process died"``) and the error is raised
    again with the saved run's name added; when no weights are worth keeping, the
    error (whose message says so) is raised as it is and nothing is saved.
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
    keep = _subset(len(dataset.x_train), train_size, hyper.get("random_state"))
    x, y = dataset.x_train[keep], dataset.y_train[keep]
    n_val = validation_images(hyper, len(dataset.x_test), validation_size)
    validation_data = None
    if not n_val:  # early stopping: the estimator holds out training images
        validation = "validation_fraction of train"
    else:
        val = _subset(len(dataset.x_test), n_val, VALIDATION_SEED)
        validation_data = (dataset.x_test[val], dataset.y_test[val])
        n_test = len(dataset.x_test)
        validation = "test" if n_val == n_test else f"{n_val} test images"
    callbacks = list(callbacks)
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
        validation=validation,
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
