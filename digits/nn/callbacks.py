"""Keras-style callbacks: hooks the training loop calls, and a flag to stop it.

``logs`` holds plain floats. Epoch logs have ``loss``, ``accuracy``, ``val_loss``,
``val_accuracy`` (when there is validation data), ``seconds`` and
``images_per_second``; batch logs have the running ``loss`` and ``accuracy`` of the
epoch so far, plus ``epoch``, ``batch``, ``batches`` and, from the NumPy networks'
loop, the batch's ``learning_rate``.

A callback stops training by setting ``self.stop_training = True``; the loop checks
between batches, so the model always holds the weights of a completed batch.
``Steering`` pauses training and changes its learning rate from another thread.
"""

from __future__ import annotations

import math
import threading


def batch_logs(
    *,
    loss: float,
    accuracy: float,
    seen: int,
    seconds: float,
    epoch: int,
    batch: int,
    batches: int,
    learning_rate: float | None = None,
) -> dict:
    """The logs ``on_batch_end`` receives: running means over the ``seen`` images
    of the epoch so far, its elapsed ``seconds`` and rate, where it stands, and
    the ``learning_rate`` the batch was trained with (if given)."""
    logs = {
        "loss": float(loss),
        "accuracy": float(accuracy),
        "seconds": seconds,
        "images_per_second": seen / max(seconds, 1e-9),
        "epoch": epoch,
        "batch": batch,
        "batches": batches,
    }
    if learning_rate is not None:
        logs["learning_rate"] = float(learning_rate)
    return logs


class Callback:
    """Base class with empty hooks."""

    stop_training: bool = False
    model = None  # the network being trained, when the trainer calls set_model
    trainer = None  # the NumPy networks' training loop, when set_trainer is called

    def set_model(self, model) -> None:
        """Called before ``on_train_begin`` with the model (a ``Sequential``)."""
        self.model = model

    def set_trainer(self, trainer) -> None:
        """Called before ``on_train_begin`` with the ``Trainer`` of a NumPy network."""
        self.trainer = trainer

    def on_train_begin(self, logs: dict | None = None) -> None:
        pass

    def on_batch_end(self, step: int, logs: dict) -> None:
        pass

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        pass

    def on_train_end(self, logs: dict | None = None) -> None:
        pass


class History(Callback):
    """Records every epoch's logs."""

    def on_train_begin(self, logs=None):
        self.epochs: list[dict] = []

    def on_epoch_end(self, epoch, logs):
        self.epochs.append(dict(logs))


class EarlyStopping(Callback):
    """Stops when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.

    Works for any model that reports epoch logs, including scikit-learn's MLP trained
    with ``partial_fit`` (which refuses its own ``early_stopping``).
    """

    def __init__(
        self, monitor: str = "val_accuracy", patience: int = 10, min_delta: float = 1e-4
    ) -> None:
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.mode = -1 if "loss" in monitor else 1  # losses fall, accuracies rise

    def on_train_begin(self, logs=None):
        self.best, self.wait, self.stop_training = -math.inf, 0, False
        self.stopped_epoch: int | None = None

    def on_epoch_end(self, epoch, logs):
        value = logs.get(self.monitor)
        if value is None:
            return
        if self.mode * value > self.best + self.min_delta:
            self.best, self.wait = self.mode * value, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stop_training, self.stopped_epoch = True, epoch


class StopOnEvent(Callback):
    """Stops when a ``threading.Event`` is set: the dashboard's Stop button, Ctrl-C."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    @property
    def stop_training(self) -> bool:  # type: ignore[override]
        return self.event.is_set()


class Steering(Callback):
    """Pause, resume and a new learning rate or momentum, asked for from another
    thread (the dashboard's buttons) and carried out between batches.

    ``pause()`` makes ``on_batch_end`` wait until ``resume()``: the weights and the
    random numbers are left exactly as they were, so a paused run ends with the
    weights of an unpaused one. A learning rate or momentum asked for with
    ``set_learning_rate``/``set_momentum`` is handed to the trainer at the next
    ``on_batch_end``, so the next batch uses it. ``changes`` lists what was
    applied: ``{"step": batches of the run done before it, name: value}``.
    """

    def __init__(self) -> None:
        self._running = threading.Event()
        self._running.set()
        self._lock = threading.Lock()
        self._pending: dict[str, float] = {}
        self.changes: list[dict] = []
        self.batches = 0  # of the whole run (``step`` starts at 0 each epoch)
        self.holding = False  # whether training is held now (paused asks for it)

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def set_learning_rate(self, lr: float) -> None:
        self._ask("learning_rate", lr)

    def set_momentum(self, momentum: float) -> None:
        self._ask("momentum", momentum)

    def _ask(self, name: str, value: float) -> None:
        with self._lock:
            self._pending[name] = float(value)

    def on_batch_end(self, step, logs):
        self.batches += 1
        if self.paused:
            self.holding = True  # training is held here, between two batches
            self._running.wait()
            self.holding = False
        with self._lock:
            pending, self._pending = self._pending, {}
        if self.trainer is None:
            return  # not a NumPy network: nothing to change
        for name, value in pending.items():
            getattr(self.trainer, f"set_{name}")(value)
            self.changes.append({"step": self.batches, name: value})
