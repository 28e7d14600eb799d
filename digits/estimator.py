"""CNNClassifier: the NumPy network behind a scikit-learn estimator's interface.

Parameter names follow ``sklearn.neural_network.MLPClassifier`` where the meaning is
the same, so pages and scripts treat this model and the MLP baseline alike.
``conv_channels=()`` gives a plain fully connected network.
"""

from __future__ import annotations

import copy
import functools
import sys
from collections.abc import Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets, unique_labels
from sklearn.utils.validation import check_is_fitted, validate_data

from digits.augment import network_input
from digits.errors import ConfigError
from digits.nn.callbacks import Callback, EarlyStopping
from digits.nn.layers import ACTIVATIONS, Conv2D, Dense, Dropout, Flatten, MaxPool2D
from digits.nn.losses import softmax, softmax_cross_entropy
from digits.nn.model import Sequential
from digits.nn.optimizers import SGD, Adam, Optimizer
from digits.nn.training import Trainer, predict_logits

FORMAT_VERSION = 1


class CNNClassifier(ClassifierMixin, BaseEstimator):
    """A convolutional network trained by backpropagation, written in NumPy.

    Architecture: for each entry of ``conv_channels`` a block of conv
    (``kernel_size``), 2x2 max-pool and activation; then a dense layer with
    activation and dropout for each of ``hidden_layer_sizes``; then a dense output
    layer with softmax. (Pooling before the activation computes the same thing as
    after it, because every activation here is increasing, and is 4x cheaper.)

    Input ``X``: images ``(n, h, w)`` or ``(n, 1, h, w)``, or flat ``(n, h*w)`` for
    square images; with ``conv_channels=()`` flat input of any width. uint8 input is
    scaled by 1/255; float input is used as given (expected in [0, 1] for images).

    ``learning_rate="cosine"`` anneals the step size from ``learning_rate_init`` to 0
    along a half cosine over the ``max_iter`` epochs of ``fit``. With it and batches
    of 64, the default network reaches 99.26-99.37% on MNIST in 3 epochs (three
    seeds), against 99.16-99.27% with batches of 128 (see benchmarks/README.md).

    Fitted attributes: ``classes_``, ``model_`` (a :class:`Sequential`),
    ``n_iter_`` (epochs), ``loss_curve_``, ``validation_scores_``, ``history_``
    (one logs dict per epoch), ``input_shape_``, ``n_features_in_``.
    """

    def __init__(
        self,
        conv_channels: Sequence[int] = (32, 64),
        kernel_size: int = 5,
        hidden_layer_sizes: Sequence[int] = (128,),
        activation: str = "relu",
        solver: str = "adam",
        alpha: float = 1e-4,
        batch_size: int = 64,
        learning_rate_init: float = 2e-3,
        learning_rate: str = "cosine",
        momentum: float = 0.9,
        nesterovs_momentum: bool = True,
        max_iter: int = 3,
        shuffle: bool = True,
        dropout: float = 0.25,
        augment: bool = False,
        padding: str = "valid",
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        n_iter_no_change: int = 10,
        n_threads: int = 2,
        random_state: int | None = None,
        verbose: bool = False,
    ) -> None:
        self.conv_channels = conv_channels
        self.kernel_size = kernel_size
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.dropout = dropout
        self.augment = augment
        self.padding = padding
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.n_threads = n_threads
        self.random_state = random_state
        self.verbose = verbose

    # -- public API -----------------------------------------------------------------

    def fit(
        self,
        X,
        y,
        *,
        callbacks: Sequence[Callback] = (),
        validation_data: tuple | None = None,
    ) -> CNNClassifier:
        """Train from scratch for ``max_iter`` epochs (fewer if a callback stops it)."""
        self._initialised = False
        return self._fit(X, y, self.max_iter, callbacks, validation_data, None)

    def partial_fit(
        self,
        X,
        y,
        classes=None,
        *,
        callbacks: Sequence[Callback] = (),
        validation_data: tuple | None = None,
    ) -> CNNClassifier:
        """Train one more epoch, keeping the weights and optimizer state."""
        return self._fit(X, y, 1, callbacks, validation_data, classes)

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, shape (n, n_classes), rows summing to 1."""
        return softmax(self._logits(X).astype(np.float64))

    def predict(self, X) -> np.ndarray:
        logits = self._logits(X)
        return self.classes_[logits.argmax(axis=1)]

    def network_input(self, X) -> np.ndarray:
        """X as the fitted network takes it: (n, h, w, 1) float32 in [0, 1] for a
        CNN, (n, features) for a dense network; what ``predict_proba`` feeds it."""
        check_is_fitted(self)
        return self._prepare(self._flatten(X), None)

    def n_params(self) -> int:
        """Number of trainable parameters of the fitted network."""
        check_is_fitted(self)
        return self.model_.n_params()

    def get_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """The fitted model as (JSON-able config, arrays). No pickle involved."""
        check_is_fitted(self)
        params = {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in self.get_params().items()
        }
        config = {
            "format_version": FORMAT_VERSION,
            "estimator": type(self).__name__,
            "params": params,
            "classes": self.classes_.tolist(),
            "input_shape": list(self.input_shape_),
            "n_features_in": int(self.n_features_in_),
            "layers": self.model_.config(),
            "history": self.history_,
        }
        return config, dict(self.model_.state_dict())

    @classmethod
    def from_state(cls, config: dict, arrays: dict[str, np.ndarray]) -> CNNClassifier:
        """Rebuild a fitted classifier from :meth:`get_state`'s output.

        Raises ValueError if the config's format version or the arrays do not fit.
        """
        version = config.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"model format version {version!r} is not supported "
                f"(this version of digits reads version {FORMAT_VERSION})"
            )
        params = dict(config["params"])
        for key in ("conv_channels", "hidden_layer_sizes"):
            params[key] = tuple(params[key])
        est = cls(**params)
        est.model_ = Sequential.from_config(config["layers"])
        est.model_.load_state_dict(arrays)
        est.classes_ = np.asarray(config["classes"])
        est.input_shape_ = tuple(config["input_shape"])
        est.n_features_in_ = int(config["n_features_in"])
        est.history_ = list(config.get("history", []))
        est.loss_curve_ = [h["loss"] for h in est.history_]
        est.validation_scores_ = [
            h["val_accuracy"] for h in est.history_ if "val_accuracy" in h
        ]
        est.n_iter_ = len(est.history_)
        est._initialised = False  # optimizer state is not saved; fit starts afresh
        return est

    # -- internals ------------------------------------------------------------------

    def _check_params(self) -> None:
        problems = []
        if self.activation not in ACTIVATIONS:
            problems.append(f"activation must be one of {sorted(ACTIVATIONS)}")
        if self.solver not in ("sgd", "adam"):
            problems.append("solver must be 'sgd' or 'adam'")
        if self.learning_rate not in ("constant", "cosine"):
            problems.append("learning_rate must be 'constant' or 'cosine'")
        if self.padding not in ("valid", "same"):
            problems.append("padding must be 'valid' or 'same'")
        if not (isinstance(self.batch_size, int | np.integer) and self.batch_size > 0):
            problems.append(
                f"batch_size must be a positive integer, not {self.batch_size!r}"
            )
        if not (isinstance(self.max_iter, int | np.integer) and self.max_iter > 0):
            problems.append(
                f"max_iter must be a positive integer, not {self.max_iter!r}"
            )
        if not (self.learning_rate_init > 0 and np.isfinite(self.learning_rate_init)):
            problems.append("learning_rate_init must be positive")
        if not 0 <= self.dropout < 1:
            problems.append("dropout must be in [0, 1)")
        if self.alpha < 0:
            problems.append("alpha must be >= 0")
        if not 0 < self.validation_fraction < 1:
            problems.append("validation_fraction must be in (0, 1)")
        if any(int(c) < 1 for c in self.conv_channels):
            problems.append("conv_channels must be positive integers")
        if any(int(u) < 1 for u in self.hidden_layer_sizes):
            problems.append("hidden_layer_sizes must be positive integers")
        if self.kernel_size < 1:
            problems.append("kernel_size must be >= 1")
        if problems:
            raise ConfigError("Invalid CNNClassifier settings: " + "; ".join(problems))

    def _flatten(self, X, y=None, reset: bool = False):
        """Validate X (and y); return X as 2-D (n, features), keeping uint8 as uint8."""
        X_in = X
        if not hasattr(X_in, "ndim"):
            X_in = np.asarray(X_in)
        shape = None
        if X_in.ndim == 4:
            if X_in.shape[1] != 1:
                raise ValueError(
                    f"4-D input must be (n, 1, h, w) grayscale; got shape {X_in.shape}"
                )
            shape = X_in.shape[2:]
        elif X_in.ndim == 3:
            shape = X_in.shape[1:]
        if shape is not None:
            X_in = X_in.reshape(len(X_in), -1)
        if (
            not reset
            and shape is not None
            and len(self.input_shape_) == 2
            and tuple(shape) != tuple(self.input_shape_)
        ):
            raise ValueError(
                f"images are {shape[0]}x{shape[1]} but the model was trained on "
                f"{self.input_shape_[0]}x{self.input_shape_[1]} images"
            )
        kwargs = {"dtype": [np.float32, np.float64, np.uint8]}
        if y is None:
            X2 = validate_data(self, X_in, reset=reset, **kwargs)
        else:
            X2, y = validate_data(self, X_in, y, reset=reset, **kwargs)
        if reset:
            d = X2.shape[1]
            if shape is None and self.conv_channels:
                side = round(np.sqrt(d))
                if side * side != d:
                    raise ValueError(
                        f"flat input has {d} features, which is not a square image; "
                        "pass images as (n, h, w), or use conv_channels=() for "
                        "non-image features"
                    )
                shape = (side, side)
            self.input_shape_ = tuple(int(s) for s in shape) if shape else (d,)
        return X2 if y is None else (X2, y)

    def _prepare(self, xb: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        """Raw rows (n, features) -> network input: (n, h, w, 1) or (n, features)."""
        return self._preparer()(xb, rng)

    def _preparer(self) -> functools.partial:
        """``_prepare`` as a picklable function, for the trainer's second process."""
        return functools.partial(
            network_input,
            input_shape=tuple(self.input_shape_),
            images=bool(self.conv_channels),
        )

    def _build(self, n_classes: int, rng: np.random.Generator) -> Sequential:
        act = ACTIVATIONS[self.activation]
        init = "he" if self.activation == "relu" else "glorot"
        layers: list = []
        if self.conv_channels:
            shape = (*self.input_shape_, 1)
            for c in self.conv_channels:
                conv = Conv2D(shape[-1], int(c), self.kernel_size, self.padding, rng)
                out = conv.output_shape(shape)
                if min(out[:2]) < 2:
                    raise ConfigError(
                        f"{len(self.conv_channels)} conv blocks with {self.kernel_size}"
                        f"x{self.kernel_size} kernels do not fit "
                        f"{self.input_shape_[0]}x{self.input_shape_[1]} images; use "
                        "fewer blocks, a smaller kernel or padding='same'"
                    )
                layers += [conv, MaxPool2D(), act()]
                shape = layers[-2].output_shape(out)
            layers.append(Flatten())
            width = int(np.prod(shape))
        else:
            width = int(np.prod(self.input_shape_))
        for units in self.hidden_layer_sizes:
            layers += [Dense(width, int(units), rng, init), act()]
            if self.dropout:
                layers.append(Dropout(self.dropout, seed=int(rng.integers(2**31))))
            width = int(units)
        layers.append(Dense(width, n_classes, rng, init))
        return Sequential(layers)

    def _make_optimizer(self) -> Optimizer:
        # One flat array of all weights, so the optimizer makes a few NumPy calls
        # per step rather than a few per parameter array.
        flat_params, flat_grads, _ = self.model_.pack()
        params, grads = [flat_params], [flat_grads]
        if self.solver == "adam":
            return Adam(params, grads, lr=self.learning_rate_init)
        return SGD(
            params,
            grads,
            lr=self.learning_rate_init,
            momentum=self.momentum,
            nesterov=self.nesterovs_momentum,
        )

    def _initialise(self, X2, y, classes) -> None:
        self._check_params()
        self.classes_ = unique_labels(y if classes is None else classes)
        self._rng = np.random.default_rng(self.random_state)
        self.model_ = self._build(len(self.classes_), self._rng)
        self.optimizer_ = self._make_optimizer()
        self.history_, self.loss_curve_, self.validation_scores_ = [], [], []
        self.n_iter_ = 0
        self._initialised = True

    def _fit(self, X, y, epochs, callbacks, validation_data, classes):
        first = not getattr(self, "_initialised", False)
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, "
                "but the target y is None"
            )
        X2, y = self._flatten(X, y, reset=first)
        check_classification_targets(y)
        if first:
            self._initialise(X2, y, classes)
        unknown = np.setdiff1d(y, self.classes_)
        if unknown.size:
            raise ValueError(f"labels {unknown.tolist()} are not in classes_")
        y_idx = np.searchsorted(self.classes_, y)

        callbacks = list(callbacks)
        if validation_data is None and self.early_stopping:
            X2, y_idx, validation_data = self._split_validation(X2, y_idx)
        elif validation_data is not None:
            Xv, yv = validation_data
            validation_data = (self._flatten(Xv), np.searchsorted(self.classes_, yv))
        if self.early_stopping:
            callbacks.append(EarlyStopping("val_accuracy", self.n_iter_no_change))

        trainer = Trainer(
            self.model_,
            self.optimizer_,
            batch_size=min(int(self.batch_size), len(X2)),
            alpha=self.alpha,
            prepare=self._preparer(),
            rng=self._rng,
            augment=self.augment and len(self.input_shape_) == 2,
            n_threads=self.n_threads,
            shuffle=self.shuffle,
        )
        # fit knows how many epochs it will run, so it can anneal the learning rate
        # to zero over them; partial_fit cannot, and keeps it constant.
        if self.learning_rate == "cosine" and epochs > 1:
            trainer.anneal(self.learning_rate_init, epochs)
        for cb in callbacks:
            cb.set_model(self.model_)
            cb.on_train_begin()
        try:
            for _ in range(epochs):
                if any(cb.stop_training for cb in callbacks):
                    break
                epoch = self.n_iter_
                logs = trainer.run_epoch(X2, y_idx, epoch, callbacks)
                if logs.pop("batches_done") == 0:
                    break
                stopped = logs.pop("stopped")
                if validation_data is not None:
                    logs.update(self._validation_logs(*validation_data))
                logs["epoch"] = epoch + 1
                self._record(logs)
                for cb in callbacks:
                    cb.on_epoch_end(epoch, logs)
                if stopped:
                    break
        finally:
            trainer.close()
            for cb in callbacks:
                cb.on_train_end({"epochs": self.n_iter_})
        return self

    def _split_validation(self, X2, y_idx):
        order = self._rng.permutation(len(X2))
        n_val = max(1, round(self.validation_fraction * len(X2)))
        val, train = order[:n_val], order[n_val:]
        return X2[train], y_idx[train], (X2[val], y_idx[val])

    def _validation_logs(self, Xv, yv) -> dict:
        logits = predict_logits(
            self.model_, Xv, self._prepare, n_threads=self.n_threads
        )
        loss, _ = softmax_cross_entropy(logits.astype(np.float64), yv)
        return {
            "val_loss": loss,
            "val_accuracy": float((logits.argmax(axis=1) == yv).mean()),
        }

    def _record(self, logs: dict) -> None:
        self.n_iter_ += 1
        self.history_.append({k: float(v) for k, v in logs.items()})
        self.loss_curve_.append(float(logs["loss"]))
        if "val_accuracy" in logs:
            self.validation_scores_.append(float(logs["val_accuracy"]))
        if self.verbose:
            extra = (
                f", val_accuracy = {logs['val_accuracy']:.4f}"
                if "val_accuracy" in logs
                else ""
            )
            print(
                f"Iteration {self.n_iter_}, loss = {logs['loss']:.6f}{extra}",
                file=sys.stdout,
            )

    def _logits(self, X) -> np.ndarray:
        check_is_fitted(self)
        X2 = self._flatten(X)
        return predict_logits(self.model_, X2, self._prepare, n_threads=self.n_threads)

    def __getstate__(self):
        # Layer caches hold the last batch's activations; they are not model state.
        state = self.__dict__.copy()
        if "model_" in state:
            state["model_"] = _without_caches(state["model_"])
        return state


def _without_caches(model: Sequential) -> Sequential:
    """A shallow twin of ``model`` without the layers' cached activations.

    The twin shares the parameter and gradient arrays, so a pickle of the estimator
    keeps the optimizer's references to them intact.
    """
    layers = []
    for layer in model.layers:
        twin = copy.copy(layer)
        for name in [k for k in vars(twin) if k.startswith("_")]:
            delattr(twin, name)
        layers.append(twin)
    out = Sequential(layers)
    out.layers[0].needs_input_grad = model.layers[0].needs_input_grad
    return out
