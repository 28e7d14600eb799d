"""Teaching a copy of a model: one step of backprop on one drawing, and fine-tuning
on the learner's saved drawings ("teach it my handwriting").

Both work on a **copy**: the model passed in (often the dashboard's cached one,
shared by every session) is only read. ``copy_model`` makes the copy and
``network_of`` gives the lesson's layers (``digits.nn``) that compute it:

- the NumPy CNN and dense nets (``CNNClassifier``): its own ``Sequential``;
- scikit-learn's MLP baseline (``MLPBaseline``): a ``Sequential`` of ``Dense`` and
  activation layers whose parameters *are* the MLP's ``coefs_`` and
  ``intercepts_`` arrays, so that training the layers trains the MLP. Its output
  layer must be a softmax, as it is for three or more classes.

``one_step`` runs one drawing forward, backpropagates the cross-entropy of the
label the learner picked, keeps the gradient arriving at every layer (dL/d of
that layer's output) and takes one optimizer step. Dropout is off in that
forward pass, so the gradient is exactly that of the loss shown before and after.

``fine_tune`` splits the saved drawings once, by a fixed seed and stratified by
digit where the counts allow (``split_drawings``); it learns from one part, mixed
with a replay sample of MNIST *training* images (never the validation or test
images) so that it does not forget MNIST, at a small learning rate for a few
epochs, and scores the other part and the MNIST test set before and after.
``save_taught`` keeps the fine-tuned copy as a new run, with the ids of the
drawings it learned from in its metadata (``taught_on``); ``unseen_drawings``
gives the saved drawings a run never learned from, the only ones that test it
fairly.

Images are (n, 28, 28) uint8 (saved drawings, MNIST) or (28, 28) float in 0..1
(one preprocessed drawing), white ink on black.
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from digits import data, explain, handwriting
from digits.baseline import MLPBaseline, as_features
from digits.engine.system import blas_threads
from digits.errors import ConfigError
from digits.estimator import CNNClassifier
from digits.nn.callbacks import Callback
from digits.nn.layers import ACTIVATIONS, Dense, Layer
from digits.nn.losses import softmax, softmax_cross_entropy
from digits.nn.model import Sequential
from digits.nn.optimizers import OPTIMIZERS, Adam
from digits.nn.training import Trainer

if TYPE_CHECKING:  # the store is imported only where a run is saved
    from digits.store import Run

# One step on one drawing: plain SGD at this rate lowered the loss of each of 30
# MNIST test digits given a wrong label, with both shipped models, and moved the
# probabilities visibly; at 0.2 a step can overshoot and raise the loss.
STEP_RATE = 0.01
STEP_OPTIMIZER = "SGD"

# Fine-tuning on the saved drawings.
MIN_DRAWINGS = 10  # fewer leave too little to learn from and to hold out
HELD_OUT_FRACTION = 0.3  # of the saved drawings, scored and never learned from
SPLIT_SEED = 0  # the split of the drawings is the same every time
REPLAY_PER_DRAWING = 8  # MNIST training images mixed in per drawing learned
REPLAY_MIN = 256  # and at least this many, so that few drawings still get a mix
FINE_TUNE_EPOCHS = 5
FINE_TUNE_RATE = 3e-4  # Adam's rate: a third of the usual, to nudge, not retrain
FINE_TUNE_BATCH = 32
FINE_TUNE_SEED = 0

Progress = Callable[[float, str], None]  # (fraction done, what is happening)


# -- the copy and its layers --------------------------------------------------------


def unsupported(model) -> str | None:
    """Why ``model`` cannot be taught here, in words for learners; None if it can."""
    if isinstance(model, CNNClassifier) and explain.network(model) is not None:
        return None
    mlp = getattr(model, "model_", None)
    if isinstance(model, MLPBaseline) and hasattr(mlp, "coefs_"):
        if mlp.out_activation_ != "softmax":
            return (
                "This scikit-learn network ends in a "
                f"{mlp.out_activation_} output, not a softmax over the classes."
            )
        if mlp.activation != "identity" and mlp.activation not in ACTIVATIONS:
            return f"Its hidden layers use {mlp.activation!r}, unknown here."
        return None
    return f"{type(model).__name__} is not a network made by this project."


def _check(model) -> None:
    reason = unsupported(model)
    if reason is not None:
        raise ConfigError(f"This model cannot be taught here: {reason}")


def copy_model(model):
    """An independent copy of a fitted ``CNNClassifier`` or ``MLPBaseline``:
    training the copy never writes to ``model``'s arrays."""
    _check(model)
    if isinstance(model, CNNClassifier):
        # Through its saved form: fresh arrays, no optimizer state, no caches.
        return CNNClassifier.from_state(*model.get_state())
    return copy.deepcopy(model)


def network_of(model) -> Sequential:
    """The lesson's layers that compute ``model``: its own ``Sequential`` for a
    ``CNNClassifier``; for an ``MLPBaseline``, Dense and activation layers that
    share (not copy) its ``coefs_`` and ``intercepts_``, input (n, h*w)."""
    _check(model)
    if isinstance(model, CNNClassifier):
        return model.model_
    mlp = model.model_
    layers: list[Layer] = []
    last = len(mlp.coefs_) - 1
    for i, (w, b) in enumerate(zip(mlp.coefs_, mlp.intercepts_, strict=True)):
        dense = Dense(*w.shape)
        dense.params = {"W": w, "b": b}  # the MLP's own arrays
        dense.grads = {"W": np.zeros_like(w), "b": np.zeros_like(b)}
        layers.append(dense)
        if i < last and mlp.activation != "identity":
            layers.append(ACTIVATIONS[mlp.activation]())
    return Sequential(layers)


def network_input(model, images: np.ndarray) -> np.ndarray:
    """``images`` (n, h, w) as ``network_of(model)`` takes them: (n, h, w, 1)
    float32 for a CNN, (n, h*w) for a dense net or the MLP; uint8 scaled by
    1/255."""
    if isinstance(model, CNNClassifier):
        return model.network_input(images)
    return as_features(images, model.input_shape_)


# -- one step on one drawing ----------------------------------------------------------


def backprop(net: Sequential, x: np.ndarray, y: np.ndarray):
    """Forward ``x`` (n, ...) through ``net`` in inference mode (no dropout), the
    mean cross-entropy against labels ``y`` (n,), and backward through every layer.

    Returns (logits (n, K), loss, arriving), where ``arriving[i]`` is dL/d(output
    of layer i), the gradient arriving at layer i from above, shaped like that
    output ((n, h, w, c) or (n, units)). Every layer's ``grads`` are filled.
    """
    logits = net.forward(x, training=False)
    loss, grad = softmax_cross_entropy(logits, y)  # grad = (p - onehot) / n
    arriving: list[np.ndarray] = [grad] * len(net.layers)
    for i in reversed(range(len(net.layers))):
        arriving[i] = grad
        grad = net.layers[i].backward(grad)
    return logits, loss, arriving


@dataclass(frozen=True)
class Step:
    """One optimizer step on one drawing, in a copy of the model.

    gradients : one ``explain.LayerOutput`` per stage of the network (conv layers
        with their pooling and activation, dense layers with theirs, the scores
        last), whose ``values`` are dL/d(that output) for the drawing: (h, w, c)
        maps or (units,). ``weight_steps`` gives, for each layer with weights,
        (name, ||update|| / ||weights||): how much the step changed it.
    """

    label: int
    optimizer: str
    learning_rate: float
    loss_before: float
    loss_after: float
    proba_before: np.ndarray  # (K,)
    proba_after: np.ndarray  # (K,)
    gradients: list[explain.LayerOutput]
    weight_steps: list[tuple[str, float]]
    seconds: float
    model: object  # the stepped copy


def one_step(
    model,
    image: np.ndarray,
    label: int,
    learning_rate: float = STEP_RATE,
    optimizer: str = STEP_OPTIMIZER,
) -> Step:
    """Backpropagate ``image`` (h, w) in 0..1 with the true digit ``label``
    through a copy of ``model`` and take one ``optimizer`` step ("SGD" or
    "Adam", from ``digits.nn.optimizers``) at ``learning_rate``; ``model`` is
    not changed."""
    start = time.perf_counter()
    n_classes = len(model.classes_)
    if not 0 <= int(label) < n_classes:
        raise ConfigError(f"Label {label} is not one of 0..{n_classes - 1}.")
    if optimizer not in OPTIMIZERS:
        raise ConfigError(
            f"Unknown optimizer {optimizer!r}; one of {list(OPTIMIZERS)}."
        )
    twin = copy_model(model)
    net = network_of(twin)
    x = network_input(twin, np.asarray(image)[None])  # a batch of one
    y = np.array([int(label)])
    params = [p for _, p, _ in net.parameters()]
    before = [p.copy() for p in params]
    with blas_threads(1):  # one image: BLAS's thread hand-offs cost more than maths
        logits, loss_before, arriving = backprop(net, x, y)
        OPTIMIZERS[optimizer](
            params, [g for _, _, g in net.parameters()], learning_rate
        ).step()
        after = net.forward(x, training=False)
    loss_after, _ = softmax_cross_entropy(after.astype(np.float64), y)
    names = explain.layer_names(net)
    outputs = [
        explain.LayerOutput(name, type(layer).__name__, g[0].copy())
        for name, layer, g in zip(names, net.layers, arriving, strict=True)
    ]
    moved = {
        id(p): np.linalg.norm(p - p0) for p, p0 in zip(params, before, strict=True)
    }
    weight_steps = [
        (
            name,
            float(
                moved[id(layer.params["W"])] / (np.linalg.norm(layer.params["W"]) or 1)
            ),
        )
        for name, layer in zip(names, net.layers, strict=True)
        if "W" in layer.params
    ]
    return Step(
        label=int(label),
        optimizer=optimizer,
        learning_rate=float(learning_rate),
        loss_before=float(loss_before),
        loss_after=float(loss_after),
        proba_before=softmax(logits.astype(np.float64))[0],
        proba_after=softmax(after.astype(np.float64))[0],
        gradients=explain.strip_layers(outputs),
        weight_steps=weight_steps,
        seconds=time.perf_counter() - start,
        model=twin,
    )


# -- teach it my handwriting --------------------------------------------------------


def split_drawings(
    labels: np.ndarray, fraction: float = HELD_OUT_FRACTION, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted positions (learned, held out) of the drawings with ``labels`` (n,):
    about ``fraction`` held out, stratified by digit whenever every digit has
    enough drawings, else without taking any digit's last learned drawing. The
    same labels and seed give the same split."""
    labels = np.asarray(labels)
    if len(labels) < MIN_DRAWINGS:
        raise ConfigError(too_few(len(labels)))
    learned, held = data._split_indices(labels, fraction, seed)
    return np.sort(learned), np.sort(held)


def too_few(n: int) -> str:
    """The message for ``n`` saved drawings, fewer than ``MIN_DRAWINGS``."""
    more = MIN_DRAWINGS - n
    return (
        f"Teaching needs at least {MIN_DRAWINGS} saved drawings (you have {n}): "
        f"save {more} more with 'Save to my handwriting'. Some are kept aside to "
        "check whether it learned your style or only memorised those drawings."
    )


@dataclass(frozen=True)
class FineTune:
    """A copy of a model fine-tuned on some of the saved drawings, and its scores.

    learned, held_out : the saved drawings' ids learned from and kept aside.
    replay : indices into MNIST's training images mixed in (never validation).
    held_before, held_after : accuracy on the held-out drawings.
    test_before, test_after : accuracy on the MNIST test images scored
        (``n_test`` of them); ``test_proba`` (n_test, K) the copy's probabilities.
    losses : the mean training loss of each epoch.
    """

    model: object
    learned: np.ndarray
    held_out: np.ndarray
    replay: np.ndarray
    held_before: float
    held_after: float
    test_before: float
    test_after: float
    n_test: int
    test_proba: np.ndarray
    losses: list[float]
    epochs: int
    learning_rate: float
    seconds: float


class _EpochProgress(Callback):
    """Reports each batch of each epoch to ``progress``, between ``lo`` and ``hi``."""

    def __init__(
        self, progress: Progress, epoch: int, epochs: int, lo: float, hi: float
    ):
        self.progress, self.epoch, self.epochs = progress, epoch, epochs
        self.lo, self.hi = lo, hi

    def on_batch_end(self, step: int, logs: dict) -> None:
        done = (self.epoch + logs["batch"] / logs["batches"]) / self.epochs
        self.progress(
            self.lo + (self.hi - self.lo) * done,
            f"Learning: epoch {self.epoch + 1} of {self.epochs}",
        )


def _accuracy(
    model, images: np.ndarray, labels: np.ndarray
) -> tuple[float, np.ndarray]:
    proba = model.predict_proba(images)
    return float((proba.argmax(axis=1) == labels).mean()), proba


def fine_tune(
    model,
    images: np.ndarray,
    labels: np.ndarray,
    ids: np.ndarray,
    mnist: data.Dataset,
    *,
    epochs: int = FINE_TUNE_EPOCHS,
    learning_rate: float = FINE_TUNE_RATE,
    test_images: int | None = None,
    progress: Progress | None = None,
    already_learned: Sequence[int] = (),
) -> FineTune:
    """Fine-tune a copy of ``model`` on the saved drawings ``images`` (n, 28, 28)
    uint8 with true ``labels`` (n,) and store ``ids`` (n,).

    The drawings are split by ``split_drawings``, except those of
    ``already_learned`` (the ids a taught model learned from, ``taught_on``):
    they are learned again and never held out, since a test on them would
    flatter it. The copy learns from the first
    part mixed with a fresh replay sample of ``mnist``'s training images each
    epoch (``REPLAY_PER_DRAWING`` per drawing, at least ``REPLAY_MIN``; never its
    validation images, ``data.validation_split``), with Adam at
    ``learning_rate`` in batches of ``FINE_TUNE_BATCH``, through the lesson's
    training loop. Scores the held-out drawings and the first ``test_images`` of
    the MNIST test set (all if None), before and after. ``model`` is unchanged.
    """
    start = time.perf_counter()
    report = progress or (lambda fraction, text: None)
    images, labels, ids = np.asarray(images), np.asarray(labels), np.asarray(ids)
    seen = np.isin(ids, np.asarray(list(already_learned), dtype=ids.dtype))
    fresh = np.flatnonzero(~seen)
    learned, held = split_drawings(labels[fresh])
    learned = np.sort(np.concatenate([fresh[learned], np.flatnonzero(seen)]))
    held = fresh[held]
    n_test = len(mnist.x_test) if test_images is None else int(test_images)
    x_test, y_test = mnist.x_test[:n_test], mnist.y_test[:n_test]
    report(0.0, "Scoring the model before teaching")
    held_before, _ = _accuracy(model, images[held], labels[held])
    test_before, _ = _accuracy(model, x_test, y_test)

    twin = copy_model(model)
    net = network_of(twin)
    params = [p for _, p, _ in net.parameters()]
    trainer = Trainer(
        net,
        Adam(params, [g for _, _, g in net.parameters()], lr=learning_rate),
        batch_size=FINE_TUNE_BATCH,
        alpha=0.0,
        prepare=lambda rows, rng: rows,  # rows are the network's input already
        rng=np.random.default_rng(FINE_TUNE_SEED),
    )
    pool = data.validation_split(mnist).train  # training images only
    n_replay = max(REPLAY_MIN, REPLAY_PER_DRAWING * len(learned))
    x_draw = network_input(twin, images[learned])
    replayed, losses = [], []
    for epoch in range(epochs):
        replay = np.sort(trainer.rng.choice(pool, n_replay, replace=False))
        replayed.append(replay)
        x = np.concatenate([x_draw, network_input(twin, mnist.x_train[replay])])
        y = np.concatenate([labels[learned], mnist.y_train[replay]])
        tick = _EpochProgress(report, epoch, epochs, 0.2, 0.8)
        losses.append(trainer.run_epoch(x, y, epoch, callbacks=[tick])["loss"])

    report(0.8, "Scoring the taught copy")
    held_after, _ = _accuracy(twin, images[held], labels[held])
    test_after, test_proba = _accuracy(twin, x_test, y_test)
    report(1.0, "Done")
    return FineTune(
        model=twin,
        learned=ids[learned],
        held_out=ids[held],
        replay=np.unique(np.concatenate(replayed)),
        held_before=held_before,
        held_after=held_after,
        test_before=test_before,
        test_after=test_after,
        n_test=n_test,
        test_proba=test_proba,
        losses=[float(v) for v in losses],
        epochs=epochs,
        learning_rate=float(learning_rate),
        seconds=time.perf_counter() - start,
    )


def save_taught(taught: FineTune, run, mnist: data.Dataset, name: str | None = None):
    """Save ``taught.model`` as a new run (``digits.store``: name sanitised and made
    unique, written atomically), scored on the whole MNIST test set, with its
    prediction cache filled; returns the ``store.Run``. ``run`` is the run it was
    taught from. Its metadata's ``taught_on`` lists the drawings it learned from:
    ``taught.learned`` and those ``run`` itself learned from."""
    from digits import metrics, store  # the store is needed only when saving

    proba = taught.test_proba
    if taught.n_test != len(mnist.x_test):
        proba = store.predict_proba_full(
            taught.model, mnist.x_test, len(mnist.class_names)
        )
    test = metrics.report(mnist.y_test, proba, mnist.class_names)
    base = name or f"{run.name}-my-handwriting"
    saved = store.save_run(
        taught.model,
        kind=run.kind,
        dataset=mnist,
        params=dict(run.meta.get("params") or {}),
        preset=run.meta.get("preset"),
        test=test,
        train_seconds=taught.seconds,
        n_train=len(taught.learned) + len(taught.replay),
        validation=run.meta.get("validation"),
        command=(
            f"fine-tuned from {run.name} on {len(taught.learned)} saved drawings "
            f"(ids {', '.join(map(str, taught.learned))}) and "
            f"{len(taught.replay):,} MNIST training images, {taught.epochs} epochs "
            f"of Adam at {taught.learning_rate:g}"
        ),
        # A copy of a taught run learned, through it, from its drawings too.
        taught_on=sorted(set(taught_on(run)) | {int(i) for i in taught.learned}),
        name=base,
    )
    store.predictions(saved, mnist, proba=proba)
    return saved


# -- scoring a run on drawings it never learned from --------------------------------

# Runs saved before ``taught_on`` existed name their drawings in the command only.
_COMMAND_IDS = re.compile(r"on \d+ saved drawings \(ids ([\d, ]*)\)")


def taught_on(run: Run) -> list[int]:
    """The ids of the saved drawings ``run`` (a ``store.Run``) learned from, sorted:
    its metadata's ``taught_on``, or for a run saved before that field, the ids
    its ``command`` lists; [] for a run never taught on drawings."""
    meta = run.meta
    if meta.get("taught_on") is not None:
        return sorted({int(i) for i in meta["taught_on"]})
    found = _COMMAND_IDS.search(meta.get("command") or "")
    if found is None:
        return []
    return sorted({int(i) for i in re.findall(r"\d+", found.group(1))})


def unseen_drawings(
    saved: handwriting.Drawings, run: Run
) -> tuple[handwriting.Drawings, int]:
    """The drawings of ``saved`` that ``run`` never learned from (oldest first, as
    saved), and how many of ``saved`` were left out because it learned from them.

    A model scored on drawings it was taught with would look better than it is,
    as it would on its own training images."""
    keep = ~np.isin(saved.ids, taught_on(run))
    unseen = handwriting.Drawings(
        images=saved.images[keep],
        labels=saved.labels[keep],
        ids=saved.ids[keep],
        times=saved.times[keep],
        sources=tuple(s for s, k in zip(saved.sources, keep, strict=True) if k),
    )
    return unseen, int((~keep).sum())
