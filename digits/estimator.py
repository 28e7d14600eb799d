"""CNNClassifier: the NumPy network behind a scikit-learn estimator's interface.

Parameter names follow ``sklearn.neural_network.MLPClassifier`` where the meaning is
the same, so pages and scripts treat this model and the MLP baseline alike.
``conv_channels=()`` gives a plain fully connected network.
"""

from __future__ import annotations

import copy
import functools
import os
import sys
from collections.abc import Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets, unique_labels
from sklearn.utils.validation import check_is_fitted, validate_data

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
    raise_problems,
    training_classes,
)
from digits.engine import trainer as engine
from digits.engine.flat import pack
from digits.engine.twin import TwinFailed
from digits.errors import (
    ConfigError,
    TrainingDataError,
    TrainingDiverged,
    TrainingInterrupted,
)
from digits.humanize import plural
from digits.nn.callbacks import Callback, EarlyStopping
from digits.nn.layers import ACTIVATIONS, Conv2D, Dense, Dropout, Flatten, MaxPool2D
from digits.nn.losses import exploding_loss, softmax, softmax_cross_entropy
from digits.nn.model import Sequential
from digits.nn.optimizers import SGD, Adam, Optimizer
from digits.nn.training import Trainer, predict_logits

FORMAT_VERSION = 1
# "plain" trains with the lesson's loop (digits.nn.training) when trainer="auto".
ENGINE_VARIABLE = "DIGITS_ENGINE"
TRAINERS = ("auto", "engine", "plain")
# augment's values besides True and False (see digits.augment.STYLES).
AUGMENT_STYLES = ("writers",)


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

    ``augment`` varies each training image every epoch (``digits.augment``):
    False not at all; True shifts and rotates it a little; "writers" writes it as
    other people might (x and y scaled apart, slanted, rotated, shifted, bent,
    strokes thicker or thinner, some stretched as a square-filling crop leaves
    them) and, before training, gives some of the 1s a European flag and some of
    the 7s a crossbar (for integer labels 1 and 7).

    ``trainer`` chooses the training loop. "plain" is ``digits.nn.training``'s,
    the loop a learner reads; "engine" is ``digits.engine``'s, about twice as fast
    on two cores, which runs each batch in two halves at once and gives the same
    weights within float32 rounding (``tests/test_engine.py``); "auto", the
    default, is the engine unless the environment variable ``DIGITS_ENGINE`` is
    "plain" (which also reaches the CLI and the dashboard). The choice is made
    when training starts from a fresh network, and holds for its ``partial_fit``
    calls.

    Fitted attributes: ``classes_``, ``model_`` (a :class:`Sequential`),
    ``n_iter_`` (epochs), ``loss_curve_``, ``validation_scores_``, ``history_``
    (one logs dict per epoch), ``input_shape_``, ``n_features_in_``.

    Bad settings raise ConfigError, and training sets it cannot learn from
    (empty, a single class, labels outside ``classes``, too few images to hold
    some out for early stopping) raise TrainingDataError, both before training.
    When training goes wrong partway it raises a ``TrainingStopped`` whose
    ``usable`` says whether the estimator now holds weights worth saving (if not,
    it is as if unfitted), and whose message says which:

    - ``TrainingDiverged``: a batch's loss was non-finite or exploded (see
      ``digits.nn.losses.exploding_loss``), or an update made a weight non-finite.
      The estimator keeps the last weights that gave a sane loss, and a fresh
      optimizer state.
    - ``TrainingInterrupted``: the engine's second training process died (see
      ``digits.engine.twin``). The estimator keeps the weights, and optimizer state,
      of the end of the last finished epoch.

    Either way ``history_`` and ``n_iter_`` list only the finished epochs.
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
        augment: bool | str = False,
        padding: str = "valid",
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        n_iter_no_change: int = 10,
        n_threads: int = 2,
        trainer: str = "auto",
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
        self.trainer = trainer
        self.random_state = random_state
        self.verbose = verbose

    # -- public API -----------------------------------------------------------------

    def fit(
        self,
        X,
        y,
        *,
        classes=None,
        callbacks: Sequence[Callback] = (),
        validation_data: tuple | None = None,
    ) -> CNNClassifier:
        """Train from scratch for ``max_iter`` epochs (fewer if a callback stops it).

        ``classes``, if given, are every label the model should know, as in
        ``partial_fit``: a class missing from ``y`` is still one of ``classes_``
        (and predicted with a low probability). ``y`` needs at least 2 classes.
        """
        self._initialised = False
        return self._fit(X, y, self.max_iter, callbacks, validation_data, classes)

    def partial_fit(
        self,
        X,
        y,
        classes=None,
        *,
        callbacks: Sequence[Callback] = (),
        validation_data: tuple | None = None,
    ) -> CNNClassifier:
        """Train one more epoch, keeping the weights and optimizer state.

        The first call needs ``classes`` (every label, at least 2) unless ``y``
        has images of every class.
        """
        return self._fit(X, y, 1, callbacks, validation_data, classes, whole=False)

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

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "model_")

    def _check_params(self) -> None:
        """ConfigError listing every bad setting: NaN, infinite, negative or zero
        where that makes no sense, wrong types, unknown choices."""
        problems: list[str] = []
        check_choice(problems, "activation", self.activation, sorted(ACTIVATIONS))
        check_choice(problems, "solver", self.solver, ("adam", "sgd"))
        check_choice(
            problems, "learning_rate", self.learning_rate, ("constant", "cosine")
        )
        check_choice(problems, "padding", self.padding, ("valid", "same"))
        check_choice(problems, "trainer", self.trainer, TRAINERS)
        loop = os.environ.get(ENGINE_VARIABLE) or "engine"
        if self.trainer == "auto" and loop not in ("engine", "plain"):
            problems.append(
                f"the environment variable {ENGINE_VARIABLE} must be 'engine' or "
                f"'plain', not {loop!r}"
            )
        check_layers(problems, "conv_channels", self.conv_channels, "(32, 64)")
        check_layers(problems, "hidden_layer_sizes", self.hidden_layer_sizes)
        for name in ("kernel_size", "batch_size", "n_iter_no_change"):
            check_int(problems, name, getattr(self, name))
        check_int(problems, "max_iter (epochs)", self.max_iter)
        check_int(problems, "n_threads", self.n_threads)
        check_real(problems, "alpha", self.alpha, 0)
        check_real(
            problems, "learning_rate_init", self.learning_rate_init, 0, low_open=True
        )
        check_real(problems, "momentum", self.momentum, 0, 1)
        check_real(problems, "dropout", self.dropout, 0, 1, high_open=True)
        check_real(
            problems,
            "validation_fraction",
            self.validation_fraction,
            0,
            1,
            low_open=True,
            high_open=True,
        )
        for name in ("nesterovs_momentum", "shuffle", "early_stopping"):
            check_bool(problems, name, getattr(self, name))
        if not isinstance(self.augment, bool | np.bool_):
            check_choice(problems, "augment", self.augment, AUGMENT_STYLES)
        check_seed(problems, "random_state", self.random_state)
        raise_problems("CNNClassifier", problems)

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
            style=self.augment if isinstance(self.augment, str) else "shift",
        )

    def check_fits(self, image_shape: tuple[int, ...], n_classes: int = 10) -> None:
        """ConfigError unless these settings build a network for images of
        ``image_shape`` (h, w) and ``n_classes`` classes: the layers fit the images
        and the size is sane. Nothing is built, nothing is learned."""
        self._check_params()
        self._check_architecture(n_classes, tuple(int(s) for s in image_shape))

    def _check_architecture(
        self, n_classes: int, input_shape: tuple[int, ...] | None = None
    ) -> None:
        """ConfigError unless the layers fit the images (``input_shape``, default
        the fitted ``input_shape_``) and the network's size is sane; computed from
        the shapes alone, before any weight is allocated."""
        input_shape = input_shape or self.input_shape_
        k, n_params = int(self.kernel_size), 0
        if self.conv_channels:
            h, w = input_shape
            if k > min(h, w):
                raise ConfigError(
                    f"Invalid CNNClassifier settings: kernel_size={k} is larger than "
                    f"the {h}x{w} images; use a kernel of at most {min(h, w)}."
                )
            pad = 0 if self.padding == "valid" else k - 1
            c_in = 1
            for c in self.conv_channels:
                h, w = h + pad - k + 1, w + pad - k + 1
                if min(h, w) < 2:
                    raise ConfigError(
                        f"{len(self.conv_channels)} conv blocks with {k}x{k} "
                        f"kernels do not fit {input_shape[0]}x"
                        f"{input_shape[1]} images; use fewer blocks, a "
                        "smaller kernel or padding='same'"
                    )
                n_params += k * k * c_in * int(c) + int(c)
                h, w, c_in = h // 2, w // 2, int(c)
            width = h * w * c_in
        else:
            width = int(np.prod(input_shape))
        for units in (*self.hidden_layer_sizes, n_classes):
            n_params += width * int(units) + int(units)
            width = int(units)
        problems: list[str] = []
        check_size(problems, n_params, "This network")
        raise_problems("CNNClassifier", problems)

    def _build(self, n_classes: int, rng: np.random.Generator) -> Sequential:
        act = ACTIVATIONS[self.activation]
        init = "he" if self.activation == "relu" else "glorot"
        layers: list = []
        if self.conv_channels:
            shape = (*self.input_shape_, 1)
            for c in self.conv_channels:
                conv = Conv2D(shape[-1], int(c), self.kernel_size, self.padding, rng)
                layers += [conv, MaxPool2D(), act()]
                shape = layers[-2].output_shape(conv.output_shape(shape))
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

    def _uses_engine(self) -> bool:
        """Whether to train with digits.engine rather than the lesson's loop."""
        if self.trainer != "auto":
            return self.trainer == "engine"
        return os.environ.get(ENGINE_VARIABLE) != "plain"

    def _make_optimizer(self) -> Optimizer:
        if self._on_engine:
            # The engine's flat arrays: a few NumPy calls per step in all, rather
            # than a few per parameter array.
            flat = pack(self.model_)
            params, grads = [flat.params], [flat.grads]
        else:
            params = [p for _, p, _ in self.model_.parameters()]
            grads = [g for _, _, g in self.model_.parameters()]
        if self.solver == "adam":
            return Adam(params, grads, lr=self.learning_rate_init)
        return SGD(
            params,
            grads,
            lr=self.learning_rate_init,
            momentum=self.momentum,
            nesterov=self.nesterovs_momentum,
        )

    def _initialise(self, classes: np.ndarray) -> None:
        """A fresh network and optimizer for ``classes``; assigns nothing unless
        all of it succeeds."""
        self._check_architecture(len(classes))
        rng = np.random.default_rng(self.random_state)
        model = self._build(len(classes), rng)
        self.classes_, self._rng, self.model_ = classes, rng, model
        self._on_engine = self._uses_engine()
        self.optimizer_ = self._make_optimizer()
        self.history_, self.loss_curve_, self.validation_scores_ = [], [], []
        self.n_iter_ = 0
        self._trained = False  # whether model_ holds weights of a finished batch
        self._initialised = True

    def _forget(self) -> None:
        """Back to unfitted: what a failed first fit, or a divergence before any
        batch finished, leaves."""
        for name in (
            "model_",
            "optimizer_",
            "classes_",
            "input_shape_",
            "n_features_in_",
            "history_",
            "loss_curve_",
            "validation_scores_",
            "n_iter_",
        ):
            self.__dict__.pop(name, None)
        self._initialised = self._trained = False

    def _setup(self, X, y, validation_data, classes, first: bool, whole: bool):
        """Check the data and, on the first call, the settings, then build the
        model; returns (X2, y_idx, validation_data). Nothing is trained yet."""
        if first:
            self._check_params()
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, "
                "but the target y is None"
            )
        if hasattr(X, "__len__"):
            check_not_empty(len(X))
        X2, y = self._flatten(X, y, reset=first)
        check_classification_targets(y)
        if first:
            known = training_classes(y, classes, fit=whole)
        else:
            known = self.classes_
            if classes is not None and not np.array_equal(
                unique_labels(np.asarray(classes)), known
            ):
                raise TrainingDataError(
                    f"classes {few(unique_labels(np.asarray(classes)))} differ from "
                    f"the model's {few(known)}, given when it started training."
                )
            self._check_labels(y, known, "training set")
        if validation_data is not None:
            Xv, yv = self._flatten(validation_data[0]), np.asarray(validation_data[1])
            if yv.shape != (len(Xv),):
                raise TrainingDataError(
                    f"The validation set has {len(Xv)} images but labels of shape "
                    f"{yv.shape}; it needs one label per image."
                )
            self._check_labels(yv, known, "validation set")
            validation_data = (Xv, np.searchsorted(known, yv))
        n_val = self._holdout_size(len(X2)) if self.early_stopping else 0
        if first:
            self._initialise(known)
        y_idx = np.searchsorted(self.classes_, y)
        if n_val and validation_data is None:
            X2, y_idx, validation_data = self._split_validation(X2, y_idx, n_val)
        return X2, y_idx, validation_data

    @staticmethod
    def _check_labels(y: np.ndarray, classes: np.ndarray, what: str) -> None:
        unknown = np.setdiff1d(y, classes)
        if unknown.size:
            raise TrainingDataError(
                f"Labels {few(unknown)} of the {what} are not among the model's "
                f"classes {few(classes)}."
            )

    def _holdout_size(self, n: int) -> int:
        """How many of ``n`` training images early stopping holds out; refuses a
        set too small to leave any for training."""
        n_val = max(1, round(self.validation_fraction * n))
        if n - n_val >= 1:
            return n_val
        fraction = self.validation_fraction
        need = next(m for m in range(2, n + 10**6) if m - max(1, round(fraction * m)))
        raise TrainingDataError(
            f"Early stopping holds out validation_fraction={self.validation_fraction:g}"
            f" of the training set for validation ({n_val} of {n} images), which "
            f"leaves none to train on: it needs at least {need} images. Use more "
            "images, or turn early stopping off."
        )

    def _fit(self, X, y, epochs, callbacks, validation_data, classes, whole=True):
        first = not getattr(self, "_initialised", False)
        try:
            X2, y_idx, validation_data = self._setup(
                X, y, validation_data, classes, first, whole
            )
        except BaseException:
            if first:
                self._forget()  # a refused first fit leaves no half-built model
            raise

        callbacks = list(callbacks)
        if self.early_stopping:
            callbacks.append(EarlyStopping("val_accuracy", self.n_iter_no_change))

        if self.augment == "writers":
            X2 = self._european(X2, y_idx)
        trainer = self._trainer(min(int(self.batch_size), len(X2)))
        # fit knows how many epochs it will run, so it can anneal the learning rate
        # to zero over them; partial_fit cannot, and keeps it constant.
        if self.learning_rate == "cosine" and epochs > 1:
            trainer.anneal(self.learning_rate_init, epochs)
        # The weights and optimizer state at the end of the last finished epoch,
        # put back if the second process dies mid-step (leaving an update half
        # done). One copy per epoch, not per batch.
        trained_before = getattr(self, "_trained", False)
        saved = self._snapshot() if trained_before else None
        epoch = self.n_iter_
        for cb in callbacks:
            cb.set_model(self.model_)
            cb.set_trainer(trainer)
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
                self._trained = True
                saved = self._snapshot(saved)
                for cb in callbacks:
                    cb.on_epoch_end(epoch, logs)
                if stopped:
                    break
        except TwinFailed as exc:
            self._close(trainer)
            raise self._interrupted(exc, epoch, saved) from exc
        except TrainingDiverged as exc:
            self._close(trainer)
            raise self._diverged(exc, trained_before) from exc
        finally:
            self._close(trainer)
            for cb in callbacks:
                cb.on_train_end({"epochs": getattr(self, "n_iter_", 0)})
        return self

    def _european(self, X2: np.ndarray, y_idx: np.ndarray) -> np.ndarray:
        """The training rows (n, h*w) with some 1s given a flag and some 7s a
        crossbar, drawn afresh each fit or partial_fit; unchanged for flat input
        or labels that are not integers."""
        if len(self.input_shape_) != 2 or self.classes_.dtype.kind not in "iu":
            return X2
        return european_styles(
            X2, self.classes_[y_idx], self._rng, tuple(self.input_shape_)
        )

    def _trainer(self, batch_size: int) -> Trainer:
        """The trainer for one call of fit or partial_fit: the engine's or the
        lesson's, as chosen when the network was built."""
        settings = dict(
            batch_size=batch_size,
            alpha=self.alpha,
            prepare=self._preparer(),
            rng=self._rng,
            augment=bool(self.augment) and len(self.input_shape_) == 2,
            shuffle=self.shuffle,
            max_loss=exploding_loss(len(self.classes_)),
        )
        if self._on_engine:
            return engine.Trainer(
                self.model_, self.optimizer_, n_threads=self.n_threads, **settings
            )
        return Trainer(self.model_, self.optimizer_, **settings)

    @staticmethod
    def _close(trainer: Trainer) -> None:
        """Stop the engine's second process, if it runs."""
        if isinstance(trainer, engine.Trainer):
            trainer.close()

    def _snapshot(self, into: tuple | None = None) -> tuple:
        """(weights, optimizer state) copied, into ``into``'s arrays if given."""
        arrays = (self.model_.state_dict(), self.optimizer_.state())
        if into is None:
            return tuple(
                {k: np.array(a, copy=True) for k, a in d.items()} for d in arrays
            )
        for saved, live in zip(into, arrays, strict=True):
            for key, a in live.items():
                np.copyto(saved[key], a)
        return into

    def _interrupted(
        self, exc: TwinFailed, epoch: int, saved: tuple | None
    ) -> TrainingInterrupted:
        """Put back the weights of the last finished epoch after the second
        process died; the error to raise."""
        if saved is None:
            self._forget()
            holds = "no epoch had finished, so there is no model to save"
        else:
            self.model_.load_state_dict(saved[0])
            self.optimizer_.load_state(saved[1])
            done = self.n_iter_
            holds = (
                f"the model now holds the weights from the end of epoch {done} "
                f"({done} finished), which can be saved"
            )
        return TrainingInterrupted(
            f"The second training process stopped ({exc.reason}) in epoch "
            f"{epoch + 1}; {holds}. Free some memory and train again, or set "
            "DIGITS_TWIN=thread to train in one process.",
            usable=saved is not None,
        )

    def _diverged(
        self, exc: TrainingDiverged, trained_before: bool
    ) -> TrainingDiverged:
        """The error to raise after the trainer put back the last good weights;
        the optimizer starts afresh, its state may hold the blow-up."""
        epoch, batch = exc.at
        usable = trained_before or exc.steps_kept > 0
        if not usable:
            self._forget()
            holds = (
                "Nothing had trained before it diverged, so there is no model to "
                "keep or save."
            )
        else:
            self.optimizer_ = self._make_optimizer()
            self._trained = True
            done = f"{plural(self.n_iter_, 'epoch')} finished"
            if exc.steps_kept > 0:
                e, b = exc.kept_before
                which = f"from before batch {b + 1} of epoch {e + 1} ({done})"
            else:
                which = f"it had before this training ({done})"
            holds = (
                f"The model now holds the last weights that gave a sane loss, the "
                f"ones {which}; they are finite and can be saved."
            )
        return TrainingDiverged(
            f"Training diverged in epoch {epoch + 1}, batch {batch + 1}: "
            f"{exc.what}. {holds} Try a lower learning rate (learning_rate_init is "
            f"{self.learning_rate_init:g}).",
            usable=usable,
        )

    def _split_validation(self, X2, y_idx, n_val: int):
        order = self._rng.permutation(len(X2))
        val, train = order[:n_val], order[n_val:]
        return X2[train], y_idx[train], (X2[val], y_idx[val])

    def _predict_logits(self, X2: np.ndarray) -> np.ndarray:
        """Logits (n, n_classes) of the validated rows X2: with the engine's two
        threads, or the lesson's plain loop."""
        engine_on = getattr(self, "_on_engine", None)
        if engine_on if engine_on is not None else self._uses_engine():
            return engine.predict_logits(
                self.model_, X2, self._prepare, n_threads=self.n_threads
            )
        return predict_logits(self.model_, X2, self._prepare)

    def _validation_logs(self, Xv, yv) -> dict:
        logits = self._predict_logits(Xv)
        # The guesses of the last epoch, for a live view of what it still gets
        # wrong (digits.training_job); class indices (n,).
        self.validation_predictions_ = logits.argmax(axis=1)
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
        return self._predict_logits(self._flatten(X))

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
