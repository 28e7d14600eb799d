"""The scikit-learn baseline: an ``MLPClassifier`` trained one epoch at a time.

``MLPBaseline`` wraps scikit-learn's multilayer perceptron so that it trains,
reports and stops exactly like the NumPy CNN (``digits.estimator.CNNClassifier``):
the same ``fit``/``partial_fit``/``predict_proba`` methods, the same callbacks, the
same epoch logs, and the same fitted attributes. Each epoch is one call to
scikit-learn's ``partial_fit``, so callbacks run, and training can stop, between
epochs.

What it leaves out: the ``lbfgs`` solver (it has no epochs) and scikit-learn's own
``early_stopping`` inside ``partial_fit`` (which scikit-learn refuses); patience
is the ``EarlyStopping`` callback instead, and the best weights are restored as
scikit-learn would.

What it adds, as the CNN does: bad settings and training sets it cannot learn
from are refused before training (ConfigError, TrainingDataError), and
divergence (a non-finite or exploding loss, non-finite weights) is caught after
every chunk of images, raising TrainingDiverged with the last good weights kept.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

from digits.augment import european_styles, network_input
from digits.checks import (
    check_bool,
    check_choice,
    check_int,
    check_layers,
    check_not_empty,
    check_real,
    check_seed,
    check_size,
    few,
    label,
    raise_problems,
    training_classes,
)
from digits.engine.system import blas_threads, one_blas_thread_if_small
from digits.errors import (
    ConfigError,
    DataError,
    TrainingDataError,
    TrainingDiverged,
)
from digits.estimator import AUGMENT_STYLES
from digits.humanize import plural
from digits.nn.callbacks import EarlyStopping, batch_logs
from digits.nn.losses import EXPLODING_LOSS_FACTOR, exploding_loss

# scikit-learn solvers that train in epochs of minibatches (lbfgs does not).
SOLVERS = ("adam", "sgd")
# Training accuracy is measured after each epoch on at most this many training
# images: a full pass would cost a quarter of an epoch, this costs a few percent.
ACCURACY_SAMPLE = 10_000
# Images per partial_fit call. An epoch is several calls, so a Stop is seen within
# a fraction of a second even on 60,000 images, not only between epochs.
CHUNK = 4096
ACTIVATIONS = ("identity", "logistic", "tanh", "relu")
LEARNING_RATES = ("constant", "invscaling", "adaptive")


class _Diverged(Exception):
    """A chunk diverged; its weights were replaced by ``saved`` (None: there were
    none before it). Turned into TrainingDiverged by ``MLPBaseline._train``."""

    def __init__(self, what: str, saved: list[np.ndarray] | None) -> None:
        super().__init__(what)
        self.what, self.saved = what, saved
        self.chunk = self.chunks = self.start = self.stop = 0


def as_features(X, input_shape: tuple[int, int] | None = None) -> np.ndarray:
    """Images as float32 feature rows in 0..1.

    Parameters
    ----------
    X : array of shape (n, h, w), (n, 1, h, w), (n, h, w, 1) or (n, h*w)
        uint8 images in 0..255 are scaled by 1/255; floats are taken as 0..1.
    input_shape : (h, w), optional
        When given, the images must have ``h*w`` pixels.

    Returns
    -------
    ndarray of shape (n, h*w), float32
    """
    X = np.asarray(X)
    if X.ndim == 4 and 1 in (X.shape[1], X.shape[3]):
        X = X.reshape(X.shape[0], -1)
    elif X.ndim in (2, 3):
        X = X.reshape(X.shape[0], -1)
    else:
        raise DataError(
            f"Expected images of shape (n, h, w) or (n, h*w); got shape {X.shape}."
        )
    if input_shape is not None and X.shape[1] != math.prod(input_shape):
        h, w = input_shape
        raise DataError(
            f"The model takes {h}x{w} images ({h * w} pixels); these have "
            f"{X.shape[1]} pixels. Use a dataset with {h}x{w} images."
        )
    if X.dtype == np.uint8:
        return X.astype(np.float32) / np.float32(255)
    if not np.issubdtype(X.dtype, np.number):
        raise DataError(f"Images must be numbers; got dtype {X.dtype}.")
    X = X.astype(np.float32, copy=False)
    if not np.isfinite(X).all():
        raise DataError("Images contain NaN or infinite pixel values.")
    return X


def image_shape(X) -> tuple[int, int]:
    """(h, w) of images given as (n, h, w), (n, 1, h, w), (n, h, w, 1) or flat.

    Flat rows of ``d`` pixels are taken as square when ``d`` is a square number,
    otherwise as one row of ``d`` pixels.
    """
    shape = np.shape(X)
    if len(shape) == 3:
        return int(shape[1]), int(shape[2])
    if len(shape) == 4:
        return (int(shape[2]), int(shape[3])) if shape[1] == 1 else shape[1:3]
    d = int(shape[1])
    side = math.isqrt(d)
    return (side, side) if side * side == d else (1, d)


class MLPBaseline(ClassifierMixin, BaseEstimator):
    """scikit-learn's ``MLPClassifier``, trained epoch by epoch with callbacks.

    The parameters are ``MLPClassifier``'s and mean the same; ``max_iter`` is the
    number of epochs. Training stops early, as in scikit-learn, when the training
    loss has not improved by ``tol`` for ``n_iter_no_change`` epochs, or, with
    ``early_stopping=True``, when the validation accuracy has not; then the
    weights of the best validation epoch are restored. The validation data is
    ``validation_data`` when given, else a stratified ``validation_fraction`` of
    the training set when ``early_stopping`` is on.

    Fitted attributes: ``classes_``, ``n_iter_`` (epochs trained), ``loss_curve_``
    and ``validation_scores_`` (per epoch), ``history_`` (per-epoch logs dicts),
    ``input_shape_`` (h, w), ``model_`` (the ``MLPClassifier``).

    Divergence is checked after every ``partial_fit`` chunk: a non-finite loss, a
    loss over ``digits.nn.losses.exploding_loss``, or non-finite weights raise
    TrainingDiverged, with the weights from before that chunk put back (or, with
    early stopping, the best epoch's) and a fresh optimizer state; its ``usable``
    is False, and the estimator unfitted, when no chunk had finished before.
    ``history_`` and ``n_iter_`` list only finished epochs.
    """

    def __init__(
        self,
        hidden_layer_sizes: Sequence[int] = (100,),
        activation: str = "relu",
        *,
        solver: str = "adam",
        alpha: float = 1e-4,
        batch_size: int | str = "auto",
        learning_rate: str = "constant",
        learning_rate_init: float = 1e-3,
        power_t: float = 0.5,
        max_iter: int = 200,
        shuffle: bool = True,
        random_state: int | None = None,
        tol: float = 1e-4,
        warm_start: bool = False,
        momentum: float = 0.9,
        nesterovs_momentum: bool = True,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        n_iter_no_change: int = 10,
        augment: bool | str = False,
    ) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.augment = augment

    # -- training ---------------------------------------------------------------

    def fit(
        self, X, y, *, classes=None, callbacks=None, validation_data=None
    ) -> MLPBaseline:
        """Train for up to ``max_iter`` epochs (from scratch unless ``warm_start``).

        X : (n, h, w) or (n, h*w) images, uint8 or float in 0..1; y : (n,) labels,
        of at least 2 classes. ``classes``, if given, are every label the model
        should know, as in ``partial_fit``: a class missing from ``y`` is still
        one of ``classes_``. ``validation_data`` is an optional ``(X_val, y_val)``.
        """
        fresh = not (self.warm_start and hasattr(self, "model_"))
        if fresh:
            self._start(X, classes=classes, y=y, whole=True)
        return self._train(
            X, y, self.max_iter, callbacks, validation_data, converge=True, fresh=fresh
        )

    def partial_fit(
        self, X, y, classes=None, *, callbacks=None, validation_data=None
    ) -> MLPBaseline:
        """Train one more epoch; the first call needs ``classes`` (at least 2)
        unless ``y`` has images of every class."""
        fresh = not hasattr(self, "model_")
        if fresh:
            self._start(X, classes=classes, y=y, whole=False)
        return self._train(
            X, y, 1, callbacks, validation_data, converge=False, fresh=fresh
        )

    def _check_params(self) -> None:
        """ConfigError listing every bad setting, before scikit-learn sees them."""
        problems: list[str] = []
        layers = self.hidden_layer_sizes
        if not (isinstance(layers, int | np.integer) and layers >= 1):
            check_layers(problems, "hidden_layer_sizes", layers, "(100,)")
        check_choice(problems, "activation", self.activation, ACTIVATIONS)
        if self.solver not in SOLVERS:
            problems.append(
                f"solver must be one of {', '.join(SOLVERS)} (they train in "
                f"epochs), not {self.solver!r}"
            )
        check_choice(problems, "learning_rate", self.learning_rate, LEARNING_RATES)
        if self.batch_size != "auto":
            check_int(problems, "batch_size", self.batch_size)
        check_int(problems, "max_iter (epochs)", self.max_iter)
        check_int(problems, "n_iter_no_change", self.n_iter_no_change)
        check_real(problems, "alpha", self.alpha, 0)
        check_real(
            problems, "learning_rate_init", self.learning_rate_init, 0, low_open=True
        )
        check_real(problems, "power_t", self.power_t, 0)
        check_real(problems, "tol", self.tol, 0)
        check_real(problems, "momentum", self.momentum, 0, 1)
        check_real(
            problems,
            "validation_fraction",
            self.validation_fraction,
            0,
            1,
            low_open=True,
            high_open=True,
        )
        check_real(problems, "beta_1", self.beta_1, 0, 1, high_open=True)
        check_real(problems, "beta_2", self.beta_2, 0, 1, high_open=True)
        check_real(problems, "epsilon", self.epsilon, 0, low_open=True)
        for name in ("shuffle", "warm_start", "nesterovs_momentum", "early_stopping"):
            check_bool(problems, name, getattr(self, name))
        check_seed(problems, "random_state", self.random_state)
        if not isinstance(self.augment, bool | np.bool_):
            check_choice(problems, "augment", self.augment, AUGMENT_STYLES)
        raise_problems("MLP", problems)

    def _start(self, X, *, classes, y, whole: bool) -> None:
        """Forget any previous training and set up a fresh scikit-learn model.

        Checks the settings and the training labels first (``whole``: ``y`` is a
        whole training set, so it needs 2 classes itself), and assigns nothing
        unless all of them pass.
        """
        self._check_params()
        check_not_empty(len(X))
        y = np.asarray(y)
        if y.ndim != 1:
            raise TrainingDataError(
                f"Expected labels of shape (n,); got shape {y.shape}."
            )
        try:
            check_classification_targets(y)
        except ValueError as err:
            raise TrainingDataError(f"The labels are not classes: {err}") from err
        known = training_classes(y, classes, fit=whole)
        shape = image_shape(X)
        layers = np.atleast_1d(self.hidden_layer_sizes).tolist()
        widths = [math.prod(shape), *layers, len(known)]
        problems: list[str] = []
        check_size(
            problems,
            sum(a * b + b for a, b in itertools.pairwise(widths)),
            "This network",
        )
        raise_problems("MLP", problems)
        self.classes_ = known
        self.input_shape_ = shape
        self.n_iter_ = 0
        self.loss_curve_: list[float] = []
        self.validation_scores_: list[float] = []
        self.history_: list[dict] = []
        self._rng = np.random.default_rng(self.random_state)
        self.model_ = MLPClassifier(
            hidden_layer_sizes=tuple(layers),
            activation=self.activation,
            solver=self.solver,
            alpha=self.alpha,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            learning_rate_init=self.learning_rate_init,
            power_t=self.power_t,
            shuffle=self.shuffle,
            momentum=self.momentum,
            nesterovs_momentum=self.nesterovs_momentum,
            beta_1=self.beta_1,
            beta_2=self.beta_2,
            epsilon=self.epsilon,
            tol=self.tol,
            n_iter_no_change=self.n_iter_no_change,
        )
        # Check the settings now rather than inside the first epoch.
        try:
            self.model_._validate_params()
        except ValueError as err:
            del self.model_
            raise ConfigError(f"Invalid MLP settings: {err}") from err

    def _forget(self) -> None:
        """Back to unfitted: what a refused first fit, or a divergence before any
        chunk finished, leaves."""
        for name in (
            "model_",
            "classes_",
            "input_shape_",
            "n_iter_",
            "loss_curve_",
            "validation_scores_",
            "history_",
        ):
            self.__dict__.pop(name, None)

    def _train(
        self, X, y, epochs, callbacks, validation_data, *, converge, fresh=False
    ):
        """Run up to ``epochs`` epochs, calling the callbacks' hooks."""
        try:
            X, y = as_features(X, self.input_shape_), np.asarray(y)
            y = self._check_labels(y, len(X), "training set")
            early = self.early_stopping and converge
            if validation_data is not None:
                X_val = as_features(validation_data[0], self.input_shape_)
                y_val = self._check_labels(
                    validation_data[1], len(X_val), "validation set"
                )
            elif early:
                X, X_val, y, y_val = self._split_validation(X, y)
            else:
                X_val = y_val = None
        except BaseException:
            if fresh:
                self._forget()  # a refused first fit leaves no half-built model
            raise
        if self.augment == "writers" and self.classes_.dtype.kind in "iu":
            # Some 1s get a flag and some 7s a crossbar, drawn afresh each call.
            X = european_styles(
                X,
                self.classes_[np.searchsorted(self.classes_, y)],
                self._rng,
                self.input_shape_,
            )
        callbacks = list(callbacks or [])
        if converge:
            # scikit-learn's own stopping rules, as callbacks.
            monitor = "val_accuracy" if early else "loss"
            callbacks.append(
                EarlyStopping(
                    monitor, patience=self.n_iter_no_change, min_delta=self.tol
                )
            )
        sample = self._rng.choice(len(X), min(len(X), ACCURACY_SAMPLE), replace=False)
        X_acc, y_acc = X[sample], y[sample]
        # (validation accuracy, weights, epoch) of the best epoch, for early stopping
        best = (-math.inf, None, 0)
        self._max_loss = exploding_loss(len(self.classes_))

        for cb in callbacks:
            cb.on_train_begin()
        try:
            for _ in range(epochs):
                if any(cb.stop_training for cb in callbacks):
                    break
                epoch = self.n_iter_
                # One BLAS thread: the MLP's GEMMs are small (batch x 784 x 100);
                # two threads gained ~10% on an idle machine but were 2-8x slower
                # whenever another process competed for the two cores.
                with blas_threads(1):
                    logs = self._epoch(X, y, X_acc, y_acc, X_val, y_val, callbacks)
                if logs is None:  # stopped before the epoch's first chunk
                    break
                self._record(logs)
                if early and logs["val_accuracy"] > best[0]:
                    best = (logs["val_accuracy"], self._weights(), self.n_iter_)
                for cb in callbacks:
                    cb.on_epoch_end(epoch, logs)
            if best[1] is not None:
                self._set_weights(best[1])
        except _Diverged as exc:
            raise self._diverged(exc, best) from None
        finally:
            for cb in callbacks:
                cb.on_train_end({"epochs": getattr(self, "n_iter_", 0)})
        return self

    def _epoch(self, X, y, X_acc, y_acc, X_val, y_val, callbacks) -> dict | None:
        """One pass over (X, y) in ``CHUNK``-image ``partial_fit`` calls.

        Calls ``on_batch_end`` after each chunk and stops early if a callback asks;
        returns the epoch's logs, or None if no chunk ran.
        """
        order = self._rng.permutation(len(X))
        chunks = -(-len(X) // CHUNK)
        epoch = self.n_iter_
        loss_sum = seen = 0
        start = time.perf_counter()
        for i in range(chunks):
            if any(cb.stop_training for cb in callbacks):
                break
            idx = order[i * CHUNK : (i + 1) * CHUNK]
            try:
                self._partial_fit(self._augmented(X[idx]), y[idx])
            except _Diverged as exc:
                exc.chunk, exc.chunks = i, chunks
                exc.start, exc.stop = i * CHUNK, i * CHUNK + len(idx)
                raise
            loss_sum += float(self.model_.loss_) * len(idx)
            seen += len(idx)
            elapsed = time.perf_counter() - start
            sample = idx[:512]  # the running accuracy, on part of this chunk
            logs = batch_logs(
                loss=loss_sum / seen,
                accuracy=np.mean(self.model_.predict(X[sample]) == y[sample]),
                seen=seen,
                seconds=elapsed,
                epoch=epoch,
                batch=i + 1,
                batches=chunks,
            )
            for cb in callbacks:
                cb.on_batch_end(epoch * chunks + i, logs)
        if seen == 0:
            return None
        seconds = time.perf_counter() - start
        logs = {
            "epoch": self.n_iter_ + 1,  # 1-based, as in the CNN's logs
            "loss": loss_sum / seen,
            "accuracy": float(np.mean(self.model_.predict(X_acc) == y_acc)),
        }
        if X_val is not None:
            proba = self.model_.predict_proba(X_val)
            cols = np.searchsorted(self.classes_, y_val)
            p_true = np.clip(proba[np.arange(len(y_val)), cols], 1e-7, 1.0)
            logs["val_loss"] = float(-np.log(p_true).mean())
            logs["val_accuracy"] = float(np.mean(proba.argmax(axis=1) == cols))
        logs["seconds"] = seconds
        logs["images_per_second"] = seen / max(seconds, 1e-9)
        return logs

    def _augmented(self, X: np.ndarray) -> np.ndarray:
        """Rows (n, h*w) of one chunk, each image varied afresh (as the CNN's
        ``augment``: ``digits.augment``), or as they are without ``augment``."""
        if not self.augment:
            return X
        style = self.augment if isinstance(self.augment, str) else "shift"
        return network_input(
            X, self._rng, input_shape=self.input_shape_, images=False, style=style
        )

    def _partial_fit(self, X, y) -> None:
        """One scikit-learn ``partial_fit`` call. Divergence puts back the weights
        from before it (or forgets them, if there were none) and raises
        ``_Diverged``."""
        # partial_fit re-seeds its shuffling from random_state on every call, so a
        # fixed seed would replay one batch order; draw a new seed per call.
        self.model_.set_params(random_state=int(self._rng.integers(2**31)))
        # scikit-learn warns, then clips, a batch larger than the images it is
        # given (a small training set, or an epoch's last chunk); clip it quietly.
        if self.batch_size != "auto":
            self.model_.batch_size = min(int(self.batch_size), len(X))
        saved = self._weights() if hasattr(self.model_, "coefs_") else None
        what = None
        # Overflow is how divergence shows; it is detected and reported below.
        with np.errstate(over="ignore", invalid="ignore"):
            try:
                self.model_.partial_fit(X, y, classes=self.classes_)
            except ValueError as err:
                if not (hasattr(self.model_, "coefs_") and not self._finite()):
                    raise ConfigError(
                        f"scikit-learn rejected the MLP settings: {err}"
                    ) from err
                what = "the weights became non-finite"
        loss = float(self.model_.loss_) if what is None else math.nan
        if what is not None:
            pass
        elif not math.isfinite(loss):
            what = f"the loss became non-finite ({loss})"
        elif loss > self._max_loss:
            what = (
                f"the loss exploded to {loss:.3g}, over the limit of "
                f"{self._max_loss:.3g} ({EXPLODING_LOSS_FACTOR:g} times chance level)"
            )
        elif not self._finite():
            what = "the weights became non-finite"
        else:
            return
        # The optimizer's state (momentum, Adam's moments) may hold the blow-up:
        # scikit-learn makes a fresh one when it has none.
        self.model_.__dict__.pop("_optimizer", None)
        if saved is not None:
            self._set_weights(saved)
        raise _Diverged(what, saved)

    def _record(self, logs: dict) -> None:
        self.n_iter_ += 1
        self.history_.append(logs)
        self.loss_curve_.append(logs["loss"])
        if "val_accuracy" in logs:
            self.validation_scores_.append(logs["val_accuracy"])

    def _split_validation(self, X, y):
        """Hold out a stratified ``validation_fraction`` of (X, y)."""
        self._check_holdout(y)
        try:
            return train_test_split(
                X,
                y,
                test_size=self.validation_fraction,
                stratify=y,
                random_state=int(self._rng.integers(2**31)),
            )
        except ValueError as err:
            raise TrainingDataError(
                f"Too few images to hold out a validation set for early stopping "
                f"({len(y)} images): {err}"
            ) from err

    def _check_holdout(self, y: np.ndarray) -> None:
        """TrainingDataError unless a stratified ``validation_fraction`` of the
        labels ``y`` can be held out: each part needs an image of every class,
        so every class needs 2 images, and each part at least one per class."""
        labels, counts = np.unique(y, return_counts=True)
        n, k, fraction = len(y), len(labels), self.validation_fraction
        n_val = math.ceil(fraction * n)
        if counts.min() >= 2 and min(n_val, n - n_val) >= k:
            return
        # The smallest set that works: 2 images a class, and enough images that
        # the held-out fraction, and the rest, each have one per class.
        need = next(
            m
            for m in itertools.count(2 * k)
            if min(math.ceil(fraction * m), m - math.ceil(fraction * m)) >= k
        )
        scarce = labels[counts.argmin()]
        raise TrainingDataError(
            f"Early stopping holds out validation_fraction={fraction:g} of the "
            f"training set, stratified, so it needs at least 2 images of every "
            f"class and at least {need:,} images for {k} classes; this set has "
            f"{n:,} images, {counts.min()} of class {label(scarce)}. Use more "
            "images, or turn early stopping off."
        )

    def _check_labels(self, y, n: int, what: str) -> np.ndarray:
        y = np.asarray(y)
        if y.shape != (n,):
            raise TrainingDataError(
                f"The {what} has {n} images but labels of shape {y.shape}; it needs "
                "one label per image."
            )
        unknown = np.setdiff1d(y, self.classes_)
        if unknown.size:
            raise TrainingDataError(
                f"Labels {few(unknown)} of the {what} are not among the model's "
                f"classes {few(self.classes_)}."
            )
        return y

    def n_params(self) -> int:
        """Number of trainable parameters of the fitted network (as CNNClassifier)."""
        check_is_fitted(self)
        return int(sum(a.size for a in self.model_.coefs_ + self.model_.intercepts_))

    def _weights(self) -> list[np.ndarray]:
        return [a.copy() for a in self.model_.coefs_ + self.model_.intercepts_]

    def _set_weights(self, weights: list[np.ndarray]) -> None:
        for a, saved in zip(
            self.model_.coefs_ + self.model_.intercepts_, weights, strict=True
        ):
            a[...] = saved

    def _finite(self) -> bool:
        return all(np.isfinite(a).all() for a in self.model_.coefs_)

    def _diverged(self, exc: _Diverged, best: tuple) -> TrainingDiverged:
        """The error to raise for a diverged chunk, whose weights ``_partial_fit``
        replaced already; with early stopping, the best epoch's weights go back."""
        where = (
            f"Training diverged in epoch {self.n_iter_ + 1} (images "
            f"{exc.start + 1:,}-{exc.stop:,}, chunk {exc.chunk + 1} of "
            f"{exc.chunks}): {exc.what}."
        )
        done = f"{plural(self.n_iter_, 'epoch')} finished"
        if best[1] is not None:
            self._set_weights(best[1])
            holds = (
                f"The model now holds the weights of epoch {best[2]}, the best on "
                f"validation ({done}); they are finite and can be saved."
            )
        elif exc.saved is not None:
            holds = (
                f"The model now holds the last good weights, from before that chunk "
                f"({done}); they are finite and can be saved."
            )
        else:
            self._forget()
            holds = (
                "Nothing had trained before it diverged, so there is no model to "
                "keep or save."
            )
        return TrainingDiverged(
            f"{where} {holds} Try a lower learning rate (learning_rate_init is "
            f"{self.learning_rate_init:g}).",
            usable=exc.saved is not None,
        )

    # -- prediction -------------------------------------------------------------

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, shape (n, len(classes_)), float32."""
        if not hasattr(self, "model_") or not hasattr(self.model_, "coefs_"):
            raise ConfigError("This MLPBaseline is not trained yet; call fit first.")
        features = as_features(X, self.input_shape_)
        with one_blas_thread_if_small(len(features)):
            return self.model_.predict_proba(features)

    def predict(self, X) -> np.ndarray:
        """Predicted labels, shape (n,), taken from ``classes_``."""
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(axis=1)]

    # score(X, y) is ClassifierMixin's: the accuracy of predict(X).
