"""The model kinds the app can train, and everything pages and the CLI need about each.

``MODELS`` maps a kind's name to a ``ModelKind``: its label, how to build it, its
default hyperparameters and named presets, how to save it to and load it from a
run folder, and the hyperparameters (with slider ranges) the dashboard offers.
Pages and the CLI treat every kind alike through this table:

    kind = get("mlp")
    model = kind.build("quick", max_iter=5)   # preset, then overrides
    model.fit(X, y, callbacks=[...])

Kinds:

- ``cnn``: the NumPy convolutional network (``digits.estimator.CNNClassifier``);
- ``dense``: the same estimator without convolutions (``conv_channels=()``);
- ``mlp``: scikit-learn's ``MLPClassifier`` as a baseline (``digits.baseline``).

Every kind is saved as JSON settings plus ``.npz`` arrays and loaded with
``allow_pickle=False``: nothing in a run folder is ever unpickled, because a
pickle runs whatever code its author put in it. Weights that are not finite are
refused. Call ``load`` only through ``digits.store``, which checks the files
against the run's metadata first.

Estimators are imported when first built, so importing this module stays cheap.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from digits import files
from digits.errors import ConfigError, ModelFileError

# -- hyperparameters --------------------------------------------------------------


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _parse_layers(text: str) -> tuple[int, ...]:
    """ "256,128" -> (256, 128); "" or "none" -> ()."""
    text = text.strip().strip("()[]")
    if text.lower() in ("", "none"):
        return ()
    return tuple(int(part) for part in text.replace(" ", ",").split(",") if part)


# How the CLI reads each type of value from text.
PARSERS: dict[str, Callable[[str], Any]] = {
    "int": int,
    "float": float,
    "log": float,  # a float whose slider is on a log scale
    "bool": _parse_bool,
    "layers": _parse_layers,  # a tuple of layer widths
    "choice": str,  # refined by Hyperparameter.parse
}


@dataclass(frozen=True)
class Hyperparameter:
    """One estimator parameter as the dashboard's widget and the CLI's flag show it.

    ``low``/``high`` bound the slider (for ``layers``: the width of each layer);
    they are suggestions for the widget, not limits the estimator enforces.
    """

    name: str  # the estimator's parameter name
    label: str  # short label for the widget
    type: str  # a key of PARSERS
    low: float | None = None
    high: float | None = None
    choices: tuple = ()
    # What the dashboard shows for each choice, in the same order (its value if
    # empty): words for learners where a value is code ("True", "writers").
    choice_labels: tuple = ()
    max_layers: int = 3  # for type "layers": how many widths the widget offers
    help: str = ""

    def parse(self, text: str) -> Any:
        """The value of ``text`` as this parameter's type; ConfigError if invalid."""
        try:
            if self.type == "choice":
                # Case-blind, so that "true" picks True as "writers" picks "writers".
                given = text.strip().lower()
                matches = [c for c in self.choices if str(c).lower() == given]
                if not matches:
                    raise ValueError(
                        f"expected one of {', '.join(map(str, self.choices))}"
                    )
                return matches[0]
            return PARSERS[self.type](text)
        except ValueError as err:
            raise ConfigError(
                f"Invalid value {text!r} for {self.name} ({self.label}): {err}."
            ) from err


_LAYERS = Hyperparameter(
    "hidden_layer_sizes",
    "Hidden layers",
    "layers",
    8,
    512,
    help="How many units each fully connected hidden layer has.",
)
_ACTIVATION_HELP = (
    "What each unit does to the sum of its inputs before passing it on; relu "
    "(negative sums become 0) usually learns fastest."
)
_ACTIVATION = Hyperparameter(
    "activation",
    "Activation",
    "choice",
    choices=("relu", "tanh", "logistic"),
    help=_ACTIVATION_HELP,
)
_SOLVER = Hyperparameter(
    "solver",
    "Optimizer",
    "choice",
    choices=("adam", "sgd"),
    help="How the weights change after each batch: 'sgd' steps down the slope of "
    "the loss; 'adam' also adapts the step of each weight as it goes.",
)
_ALPHA = Hyperparameter(
    "alpha",
    "L2 penalty (alpha)",
    "log",
    1e-6,
    1e-1,
    help="A cost on large weights, which keeps the model from memorising its "
    "training images: higher pushes harder toward small weights.",
)
_BATCH = Hyperparameter(
    "batch_size",
    "Batch size",
    "int",
    16,
    512,
    help="How many images the model looks at before each change of its weights.",
)
_LR = Hyperparameter(
    "learning_rate_init",
    "Learning rate",
    "log",
    1e-4,
    1e-1,
    help="How big a step each change of the weights takes: too small learns "
    "slowly, too large makes the loss jump about.",
)
_EPOCHS = Hyperparameter(
    "max_iter",
    "Epochs",
    "int",
    1,
    100,
    help="How many times training goes through all of its images.",
)
_EARLY = Hyperparameter(
    "early_stopping",
    "Early stopping",
    "bool",
    help="Stop before the last epoch once the accuracy on the validation images "
    "(training images held out from learning) stops improving.",
)
_PATIENCE = Hyperparameter(
    "n_iter_no_change",
    "Patience (epochs)",
    "int",
    1,
    50,
    help="How many epochs without improvement early stopping waits before it stops.",
)
_SEED = Hyperparameter(
    "random_state",
    "Random seed",
    "int",
    0,
    9999,
    help="Fixes the random starting weights and the order of the images: the "
    "same settings and seed train the same model again.",
)

_NUMPY_COMMON = (_LAYERS, _ACTIVATION, _SOLVER, _ALPHA, _BATCH, _LR, _EPOCHS)
_AUGMENT = Hyperparameter(
    "augment",
    "Augment",
    "choice",
    choices=(False, True, "writers"),
    choice_labels=("Off", "Shift and rotate", "Like other writers"),
    help="Change each training image a little, at random, every epoch. Shift "
    "and rotate moves it, so that the model learns a moved digit is the same "
    "digit; like other writers also stretches, slants, bends and thickens or "
    "thins it, and gives some 1s a flag and some 7s a crossbar, as many people "
    "write them.",
)
_NUMPY_EXTRA = (
    Hyperparameter(
        "learning_rate",
        "Learning-rate schedule",
        "choice",
        choices=("cosine", "constant"),
        help="'cosine' lowers the learning rate smoothly to 0 by the last epoch; "
        "'constant' keeps it as set.",
    ),
    Hyperparameter(
        "dropout",
        "Dropout",
        "float",
        0.0,
        0.7,
        help="The share of units switched off at random during training, so that "
        "the model cannot lean on any single one.",
    ),
    _AUGMENT,
    _EARLY,
    _PATIENCE,
    _SEED,
)
_CONV = (
    Hyperparameter(
        "conv_channels",
        "Conv channels",
        "layers",
        1,
        128,
        help="How many filters each conv + 2x2 max-pool block learns.",
    ),
    Hyperparameter(
        "kernel_size",
        "Kernel size",
        "choice",
        choices=(3, 5, 7),
        help="The side of each filter in pixels: how large the patterns are that "
        "a conv layer looks for.",
    ),
    Hyperparameter(
        "padding",
        "Padding",
        "choice",
        choices=("valid", "same"),
        help="'same' adds a border of zeros, so a conv layer keeps the image's size; "
        "with 'valid' the image shrinks a little at each conv layer.",
    ),
)
_MLP = (
    _LAYERS,
    Hyperparameter(
        "activation",
        "Activation",
        "choice",
        choices=("relu", "tanh", "logistic", "identity"),
        help=_ACTIVATION_HELP,
    ),
    _SOLVER,
    _ALPHA,
    _BATCH,
    _LR,
    Hyperparameter(
        "learning_rate",
        "Learning-rate schedule",
        "choice",
        choices=("constant", "invscaling", "adaptive"),
        help="How the learning rate changes during training (with the sgd "
        "optimizer only).",
    ),
    Hyperparameter(
        "momentum",
        "Momentum",
        "float",
        0.0,
        0.99,
        help="With the sgd optimizer only: how much of its last step each step "
        "keeps, which smooths the way down the loss.",
    ),
    _EPOCHS,
    _AUGMENT,
    _EARLY,
    _PATIENCE,
    _SEED,
)

# -- saving and loading -----------------------------------------------------------

ARCHITECTURE_FILE = "model.json"
WEIGHTS_FILE = "weights.npz"


def _save_numpy(model, folder: Path) -> None:
    """Write the architecture as JSON and the weights as .npz (no pickle)."""
    config, arrays = model.get_state()
    (folder / ARCHITECTURE_FILE).write_text(json.dumps(config, indent=1))
    np.savez(folder / WEIGHTS_FILE, **arrays)


def _load_numpy(folder: Path):
    """Rebuild a CNNClassifier from ``model.json`` and ``weights.npz``."""
    from digits.estimator import CNNClassifier

    config_path, weights_path = folder / ARCHITECTURE_FILE, folder / WEIGHTS_FILE
    config = _read_json(config_path)
    arrays = _read_npz(weights_path)
    try:
        return CNNClassifier.from_state(config, arrays)
    except (ValueError, KeyError, TypeError, ConfigError) as err:
        raise ModelFileError(
            f"Weights file {weights_path} does not fit its architecture in "
            f"{config_path} ({err}). Retrain the model."
        ) from err


# The scikit-learn MLP's file format, version 1. Its settings and fitted scalars go
# in MLP_FILE (JSON), its arrays in WEIGHTS_FILE: coef_0..coef_{L-1},
# intercept_0..intercept_{L-1} and classes. Nothing is pickled.
MLP_FILE = "mlp.json"
# The largest settings file digits reads (the default MLP's, with its history,
# is 20 kB): a planted one cannot exhaust memory.
MAX_SETTINGS_BYTES = 4 << 20
MLP_FORMAT = 1
# What runs saved by digits 0.1 hold instead: a joblib pickle. Never loaded; only
# `digits convert --trust-pickle` reads one (``convert_legacy_mlp``).
LEGACY_PICKLE_FILE = "model.joblib"
# Output activations scikit-learn uses: softmax for 3+ classes, logistic for 2.
_OUT_ACTIVATIONS = ("softmax", "logistic")


def _check_finite(arrays: Mapping[str, np.ndarray], path: Path) -> None:
    """ModelFileError naming the first array with a NaN or infinite value."""
    for key, array in arrays.items():
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            raise ModelFileError(
                f"Weights file {path} holds non-finite values (NaN or infinity) in "
                f"{key!r}: the model diverged or the file was damaged. Retrain the "
                f"model."
            )


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of the .npz at ``path``, without pickle; ModelFileError if the
    file is damaged or holds non-finite weights."""
    # Reading a member of a damaged .npz can fail in the zip layer, in zlib or in
    # NumPy's header parser; all of them mean the same thing to the user.
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise ModelFileError(
            f"Weights file {path} is corrupt or truncated ({err}). Retrain the model."
        ) from err
    _check_finite(arrays, path)
    return arrays


def _read_json(path: Path) -> dict:
    """A model's settings file, read as the store reads metadata: bounded, strict."""
    try:
        config = files.read_json(path, MAX_SETTINGS_BYTES)
    except (OSError, ValueError, RecursionError) as err:
        raise ModelFileError(
            f"Model file {path} cannot be read ({err}). Retrain the model."
        ) from err
    if not isinstance(config, dict):
        raise ModelFileError(f"Model file {path} is not a JSON object. Retrain it.")
    return config


def _save_mlp(model, folder: Path) -> None:
    """Write an ``MLPBaseline`` as JSON settings plus ``.npz`` arrays (no pickle).

    Like the NumPy kinds' files, this holds no optimizer state (Adam's moment
    estimates) and no copies of earlier weights: further training of a loaded
    model restarts the optimizer.
    """
    mlp = model.model_
    config = {
        "format": MLP_FORMAT,
        "params": model.get_params(),
        "input_shape": list(model.input_shape_),
        "n_iter": model.n_iter_,
        "loss_curve": list(model.loss_curve_),
        "validation_scores": list(model.validation_scores_),
        "history": list(model.history_),
        # scikit-learn's own fitted scalars, which its predict and partial_fit read.
        "sklearn": {
            "out_activation": mlp.out_activation_,
            "t": int(mlp.t_),
            "loss": float(mlp.loss_),
            "best_loss": None if mlp.best_loss_ is None else float(mlp.best_loss_),
            "loss_curve": [float(v) for v in mlp.loss_curve_],
        },
    }
    from digits.store import jsonable  # one JSON-cleaning rule for every file

    arrays = {f"coef_{i}": c for i, c in enumerate(mlp.coefs_)}
    arrays |= {f"intercept_{i}": b for i, b in enumerate(mlp.intercepts_)}
    arrays["classes"] = np.asarray(model.classes_)
    (folder / MLP_FILE).write_text(json.dumps(jsonable(config), indent=1))
    np.savez(folder / WEIGHTS_FILE, **arrays)


def _mlp_layers(arrays: Mapping[str, np.ndarray], path: Path):
    """The coefficient and intercept lists in ``arrays``, checked to chain."""
    n = sum(1 for key in arrays if key.startswith("coef_"))
    try:
        coefs = [arrays[f"coef_{i}"] for i in range(n)]
        intercepts = [arrays[f"intercept_{i}"] for i in range(n)]
        classes = arrays["classes"]
    except KeyError as err:
        raise ModelFileError(f"Weights file {path} lacks array {err}.") from None
    if n == 0 or len(arrays) != 2 * n + 1:
        raise ModelFileError(
            f"Weights file {path} holds arrays {sorted(arrays)}; an MLP needs "
            f"coef_i and intercept_i for each layer, and classes."
        )
    for i, (w, b) in enumerate(zip(coefs, intercepts, strict=True)):
        chained = i == 0 or w.shape[0] == coefs[i - 1].shape[1]
        if w.ndim != 2 or b.shape != (w.shape[1],) or not chained:
            raise ModelFileError(
                f"Weights file {path}: layer {i} has weights {w.shape} and biases "
                f"{b.shape}, which do not fit together. Retrain the model."
            )
    return coefs, intercepts, classes


def _load_mlp(folder: Path):
    """Rebuild an ``MLPBaseline`` with a working ``MLPClassifier`` inside from
    ``mlp.json`` and ``weights.npz``, unpickling nothing."""
    from sklearn.preprocessing import LabelBinarizer

    from digits.baseline import MLPBaseline

    config_path, weights_path = folder / MLP_FILE, folder / WEIGHTS_FILE
    config = _read_json(config_path)
    arrays = _read_npz(weights_path)
    coefs, intercepts, classes = _mlp_layers(arrays, weights_path)
    try:
        if config.get("format") != MLP_FORMAT:
            raise ValueError(f"format {config.get('format')!r}, not {MLP_FORMAT}")
        sk = config["sklearn"]
        if sk["out_activation"] not in _OUT_ACTIVATIONS:
            raise ValueError(f"unknown output activation {sk['out_activation']!r}")
        shape = tuple(int(v) for v in config["input_shape"])
        n_outputs = 1 if len(classes) == 2 else len(classes)
        if coefs[0].shape[0] != int(np.prod(shape)) or coefs[-1].shape[1] != n_outputs:
            raise ValueError(
                f"the layers take {coefs[0].shape[0]} inputs and give "
                f"{coefs[-1].shape[1]} outputs, for {shape} images and "
                f"{len(classes)} classes"
            )
        model = MLPBaseline(**config["params"])
        model._start(
            np.zeros((1, *shape), np.float32), classes=classes, y=classes, whole=False
        )
        model.n_iter_ = int(config["n_iter"])
        model.loss_curve_ = [float(v) for v in config["loss_curve"]]
        model.validation_scores_ = [float(v) for v in config["validation_scores"]]
        model.history_ = list(config["history"])
        mlp = model.model_
        mlp.coefs_, mlp.intercepts_ = coefs, intercepts
        mlp.n_layers_ = len(coefs) + 1
        mlp.n_outputs_ = n_outputs
        mlp.n_features_in_ = coefs[0].shape[0]
        mlp.out_activation_ = sk["out_activation"]
        mlp.classes_ = classes
        mlp._label_binarizer = LabelBinarizer().fit(classes)
        mlp.t_ = int(sk["t"])
        mlp.loss_ = float(sk["loss"])
        mlp.best_loss_ = sk["best_loss"]
        mlp.loss_curve_ = [float(v) for v in sk["loss_curve"]]
        mlp._no_improvement_count = 0
    except (KeyError, TypeError, ValueError, ConfigError) as err:
        raise ModelFileError(
            f"Model file {config_path} does not describe the weights in "
            f"{weights_path} ({type(err).__name__}: {err}). Retrain the model."
        ) from err
    return model


def convert_legacy_mlp(folder: Path, *, trust_pickle: bool) -> None:
    """Rewrite the old pickled MLP in ``folder`` as ``mlp.json`` + ``weights.npz``.

    This unpickles ``model.joblib``, which runs whatever code its author put in it,
    so it refuses unless ``trust_pickle`` says the caller trusts the file's author.
    Only ``digits.store.convert_legacy_run`` calls this, on a copy of the run.
    """
    if not trust_pickle:
        raise ConfigError(
            f"Converting {folder / LEGACY_PICKLE_FILE} means unpickling it, which "
            f"runs any code its author put in it. Only do it for a file you made "
            f"or trust, and say so with --trust-pickle."
        )
    import joblib

    from digits.baseline import MLPBaseline

    path = folder / LEGACY_PICKLE_FILE
    # Unpickling a damaged file can raise almost anything (EOFError,
    # UnpicklingError, KeyError, AttributeError...); each means "unusable file".
    try:
        model = joblib.load(path)  # the user vouched for this file (trust_pickle)
    except Exception as err:
        raise ModelFileError(
            f"Model file {path} cannot be loaded ({type(err).__name__}: {err}). "
            f"Retrain the model."
        ) from err
    if not isinstance(model, MLPBaseline):
        raise ModelFileError(
            f"Model file {path} holds a {type(model).__name__}, not an MLPBaseline."
        )
    _save_mlp(model, folder)
    path.unlink()


# -- the kinds --------------------------------------------------------------------


def _cnn(**params):
    from digits.estimator import CNNClassifier

    return CNNClassifier(**params)


def _mlp(**params):
    from digits.baseline import MLPBaseline

    return MLPBaseline(**params)


@dataclass(frozen=True)
class ModelKind:
    """A kind of model: how to build, configure, save and load it."""

    name: str
    label: str
    description: str
    constructor: Callable[..., Any]  # keyword parameters -> unfitted estimator
    defaults: Mapping[str, Any]  # on top of the estimator's own defaults
    presets: Mapping[str, Mapping[str, Any]]  # name -> overrides of defaults
    hyperparameters: tuple[Hyperparameter, ...]  # what the dashboard offers
    save: Callable[[Any, Path], None]  # (fitted model, folder) -> writes files
    load: Callable[[Path], Any]  # folder -> fitted model; via digits.store only
    files: tuple[str, ...]  # the files ``save`` writes
    fixed: Mapping[str, Any] = field(default_factory=dict)  # not settable

    def hyperparameter(self, name: str) -> Hyperparameter:
        """The widget description of parameter ``name``."""
        for hp in self.hyperparameters:
            if hp.name == name:
                return hp
        raise ConfigError(f"{self.label} has no hyperparameter {name!r}.")

    def param_names(self) -> list[str]:
        """Every parameter the estimator accepts, except the fixed ones."""
        names = self.constructor(**self.fixed).get_params().keys()
        return sorted(set(names) - set(self.fixed))

    def params(self, preset: str | None = None, **overrides) -> dict[str, Any]:
        """Hyperparameters: the defaults, then ``preset``'s, then ``overrides``."""
        if preset is not None and preset not in self.presets:
            raise ConfigError(
                f"Unknown preset {preset!r} for {self.name}. "
                f"Presets: {', '.join(self.presets)}."
            )
        params = {**self.defaults, **(self.presets[preset] if preset else {})}
        params.update(overrides)
        names = self.param_names()
        unknown = sorted(set(params) - set(names))
        if unknown:
            raise ConfigError(
                f"{self.label} has no parameter {', '.join(unknown)}. "
                f"Its parameters: {', '.join(names)}."
            )
        return params

    def build(self, preset: str | None = None, **overrides):
        """An unfitted estimator with ``params(preset, **overrides)``."""
        return self.constructor(**self.fixed, **self.params(preset, **overrides))

    def presets_for(
        self, image_shape: tuple[int, ...], n_classes: int = 10
    ) -> list[str]:
        """The presets whose network fits images of ``image_shape`` (h, w): all of
        them but, say, the 5x5-kernel default CNN for the 8x8 digits."""
        fitting = []
        for preset in self.presets:
            model = self.build(preset)
            try:
                if hasattr(model, "check_fits"):
                    model.check_fits(image_shape, n_classes)
            except ConfigError:
                continue
            fitting.append(preset)
        return fitting


MODELS: dict[str, ModelKind] = {
    "cnn": ModelKind(
        name="cnn",
        label="CNN (NumPy)",
        description="A convolutional network written in NumPy: blocks that look "
        "for small patterns anywhere in the image (convolution) and shrink it "
        "(max-pooling), then fully connected layers that give the answer.",
        constructor=_cnn,
        defaults={"random_state": 0},
        presets={
            # The shipped default CNN: the reference network of PERF-NOTES.md.
            # Five epochs: chosen on the validation images (99.38% after 5 against
            # 99.22% after 3, trained on the other 55,000 training images).
            "default": {
                "conv_channels": (32, 64),
                "kernel_size": 5,
                "hidden_layer_sizes": (128,),
                "max_iter": 5,
            },
            # The Train page's first choice, so it must fit every dataset's images,
            # down to the 8x8 digits the app falls back to offline: 3x3 kernels
            # with 'same' padding keep each block's size, and the two 2x2 pools
            # leave 8 -> 4 -> 2 pixels (28 -> 14 -> 7 for MNIST). 5x5 'valid'
            # kernels would leave nothing after the first pool of an 8x8 image.
            "quick": {
                "conv_channels": (8, 16),
                "kernel_size": 3,
                "padding": "same",
                "hidden_layer_sizes": (64,),
                "max_iter": 1,
            },
            # A lesson-sized run: 99% on MNIST's test set in less training time
            # than one epoch of "default" (benchmarks/demo_preset.py). Half the
            # default's filters: a third of its multiply-adds, so two epochs fit.
            # Batches of 128 are heavy enough for the engine's second process
            # (digits.engine.trainer.process_pays_off), as the default's 64 are:
            # at 64 this network's epoch took 6.7 s, not 4.5 s. Chosen on the
            # validation images (5,000 held out, trained on the other 55,000),
            # seeds 0, 1, 2: rate 4e-3 and dropout 0.1 gave 99.20, 99.14, 99.12%;
            # dropout 0 at 3e-3 gave 99.20, 98.92, 98.98%; the default's dropout
            # 0.25 gave 99.06% (3e-3) and 99.06% (4e-3) with seed 0.
            "demo": {
                "conv_channels": (16, 32),
                "kernel_size": 5,
                "hidden_layer_sizes": (128,),
                "dropout": 0.1,
                "batch_size": 128,
                "learning_rate_init": 4e-3,
                "learning_rate": "cosine",
                "augment": False,  # two epochs are too few to gain from it
                "max_iter": 2,
            },
        },
        hyperparameters=(*_CONV, *_NUMPY_COMMON, *_NUMPY_EXTRA),
        save=_save_numpy,
        load=_load_numpy,
        files=(ARCHITECTURE_FILE, WEIGHTS_FILE),
    ),
    "dense": ModelKind(
        name="dense",
        label="Dense network (NumPy)",
        description="A fully connected network written in NumPy: every unit "
        "looks at every pixel, or at every unit of the layer before (the CNN "
        "without its convolution blocks).",
        constructor=_cnn,
        defaults={"random_state": 0, "hidden_layer_sizes": (256, 128)},
        presets={
            "default": {"hidden_layer_sizes": (256, 128), "max_iter": 10},
            "quick": {"hidden_layer_sizes": (100,), "max_iter": 3},
        },
        hyperparameters=(*_NUMPY_COMMON, *_NUMPY_EXTRA),
        save=_save_numpy,
        load=_load_numpy,
        files=(ARCHITECTURE_FILE, WEIGHTS_FILE),
        fixed={"conv_channels": ()},
    ),
    "mlp": ModelKind(
        name="mlp",
        label="MLP baseline (scikit-learn)",
        description="scikit-learn's fully connected network (a multi-layer "
        "perceptron), trained one epoch at a time: a baseline to compare with.",
        constructor=_mlp,
        # scikit-learn's "auto" batch size is 200; max_iter=200 would take minutes.
        defaults={"random_state": 0, "batch_size": 200, "max_iter": 20},
        presets={
            # The shipped default MLP.
            "default": {"hidden_layer_sizes": (256, 128), "max_iter": 30},
            "quick": {"hidden_layer_sizes": (100,), "max_iter": 10},
            "small": {"hidden_layer_sizes": (30,), "max_iter": 30},
        },
        hyperparameters=_MLP,
        save=_save_mlp,
        load=_load_mlp,
        files=(MLP_FILE, WEIGHTS_FILE),
    ),
}


def get(name: str) -> ModelKind:
    """The kind called ``name``; ConfigError listing the kinds if there is none."""
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(
            f"Unknown model kind {name!r}. Kinds: {', '.join(MODELS)}."
        ) from None
