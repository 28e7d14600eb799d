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
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.utils.validation import check_is_fitted

from digits.errors import ConfigError, DataError, TrainingDiverged
from digits.nn.callbacks import EarlyStopping, batch_logs
from digits.nn.training import blas_threads, one_blas_thread_if_small

# scikit-learn solvers that train in epochs of minibatches (lbfgs does not).
SOLVERS = ("adam", "sgd")
# Training accuracy is measured after each epoch on at most this many training
# images: a full pass would cost a quarter of an epoch, this costs a few percent.
ACCURACY_SAMPLE = 10_000
# Images per partial_fit call. An epoch is several calls, so a Stop is seen within
# a fraction of a second even on 60,000 images, not only between epochs.
CHUNK = 4096


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

    # -- training ---------------------------------------------------------------

    def fit(self, X, y, *, callbacks=None, validation_data=None) -> MLPBaseline:
        """Train for up to ``max_iter`` epochs (from scratch unless ``warm_start``).

        X : (n, h, w) or (n, h*w) images, uint8 or float in 0..1; y : (n,) labels.
        ``validation_data`` is an optional ``(X_val, y_val)`` pair.
        """
        if not (self.warm_start and hasattr(self, "model_")):
            self._start(X, classes=None, y=y)
        return self._train(
            X, y, self.max_iter, callbacks, validation_data, converge=True
        )

    def partial_fit(
        self, X, y, classes=None, *, callbacks=None, validation_data=None
    ) -> MLPBaseline:
        """Train one more epoch; the first call needs ``classes`` or all labels."""
        if not hasattr(self, "model_"):
            self._start(X, classes=classes, y=y)
        return self._train(X, y, 1, callbacks, validation_data, converge=False)

    def _start(self, X, *, classes, y) -> None:
        """Forget any previous training and set up a fresh scikit-learn model."""
        if self.solver not in SOLVERS:
            raise ConfigError(
                f"solver must be one of {', '.join(SOLVERS)} (they train in epochs); "
                f"got {self.solver!r}."
            )
        self.classes_ = np.unique(y if classes is None else classes)
        self.input_shape_ = image_shape(X)
        self.n_iter_ = 0
        self.loss_curve_: list[float] = []
        self.validation_scores_: list[float] = []
        self.history_: list[dict] = []
        self._rng = np.random.default_rng(self.random_state)
        self.model_ = MLPClassifier(
            hidden_layer_sizes=tuple(np.atleast_1d(self.hidden_layer_sizes).tolist()),
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

    def _train(self, X, y, epochs, callbacks, validation_data, *, converge):
        """Run up to ``epochs`` epochs, calling the callbacks' hooks."""
        X = as_features(X, self.input_shape_)
        y = self._check_labels(y, len(X))
        callbacks = list(callbacks or [])
        early = self.early_stopping and converge
        if validation_data is not None:
            X_val = as_features(validation_data[0], self.input_shape_)
            y_val = self._check_labels(validation_data[1], len(X_val))
        elif early:
            X, X_val, y, y_val = self._split_validation(X, y)
        else:
            X_val = y_val = None
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
        best = (-math.inf, None)  # (validation accuracy, weights) for early stopping

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
                    best = (logs["val_accuracy"], self._weights())
                for cb in callbacks:
                    cb.on_epoch_end(epoch, logs)
        finally:
            if best[1] is not None:
                self._set_weights(best[1])
            for cb in callbacks:
                cb.on_train_end({"epochs": self.n_iter_})
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
            self._partial_fit(X[idx], y[idx])
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

    def _partial_fit(self, X, y) -> None:
        """One scikit-learn ``partial_fit`` call; divergence raises TrainingDiverged."""
        # partial_fit re-seeds its shuffling from random_state on every call, so a
        # fixed seed would replay one batch order; draw a new seed per call.
        self.model_.set_params(random_state=int(self._rng.integers(2**31)))
        saved = self._weights() if hasattr(self.model_, "coefs_") else None
        # Overflow is how divergence shows; it is detected and reported below.
        with np.errstate(over="ignore", invalid="ignore"):
            try:
                self.model_.partial_fit(X, y, classes=self.classes_)
            except ValueError as err:
                if hasattr(self.model_, "coefs_") and not self._finite():
                    self._diverged(saved)
                raise ConfigError(
                    f"scikit-learn rejected the MLP settings: {err}"
                ) from err
        if not (math.isfinite(self.model_.loss_) and self._finite()):
            self._diverged(saved)

    def _record(self, logs: dict) -> None:
        self.n_iter_ += 1
        self.history_.append(logs)
        self.loss_curve_.append(logs["loss"])
        if "val_accuracy" in logs:
            self.validation_scores_.append(logs["val_accuracy"])

    def _split_validation(self, X, y):
        """Hold out a stratified ``validation_fraction`` of (X, y)."""
        if not 0 < self.validation_fraction < 1:
            raise ConfigError(
                f"validation_fraction must be between 0 and 1 for early stopping; "
                f"got {self.validation_fraction}."
            )
        try:
            return train_test_split(
                X,
                y,
                test_size=self.validation_fraction,
                stratify=y,
                random_state=int(self._rng.integers(2**31)),
            )
        except ValueError as err:
            raise DataError(
                f"Too few images to hold out a validation set for early stopping "
                f"({len(y)} images): {err}"
            ) from err

    def _check_labels(self, y, n: int) -> np.ndarray:
        y = np.asarray(y)
        if y.shape != (n,):
            raise DataError(f"Expected {n} labels of shape ({n},); got {y.shape}.")
        unknown = np.setdiff1d(y, self.classes_)
        if unknown.size:
            raise DataError(
                f"Labels {unknown[:5].tolist()} are not among the model's classes "
                f"{self.classes_.tolist()}."
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

    def _diverged(self, saved: list[np.ndarray] | None) -> None:
        """Put back the weights from before this epoch (or, in the first epoch,
        forget the model) and raise TrainingDiverged."""
        if saved is not None:
            self._set_weights(saved)
            kept = "The weights from before that epoch were kept."
        else:
            del self.model_
            kept = "No epoch finished, so there is no model to keep."
        raise TrainingDiverged(
            f"Training diverged in epoch {self.n_iter_ + 1}: the loss became "
            f"non-finite. {kept} Try a lower learning_rate_init (now "
            f"{self.learning_rate_init:g})."
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
