"""Training curves as TensorBoard event files: the ``TensorBoard`` callback.

A Keras-style callback (``digits.nn.callbacks``) that writes what the training loop
reports, so that a run opens in TensorBoard beside runs from other tools::

    from digits import registry
    from digits.tensorboard import TensorBoard

    model = registry.get("cnn").build("quick", max_iter=3)
    model.fit(x, y, validation_data=(x_val, y_val),
              callbacks=[TensorBoard("logs/quick-cnn")])
    # then: tensorboard --logdir logs

``digits train --tensorboard DIR`` does the same. As Keras's callback does, it
writes two TensorBoard runs in ``log_dir``: ``train/`` and ``validation/``, with
the same tags, so that each chart shows the training and validation curves
together:

- ``batch_loss``, ``batch_accuracy``, ``batch_learning_rate`` (``train/`` only),
  at step = batches done since training began, every ``update_freq`` batches.
  Loss and accuracy are the epoch's running means so far, as the progress bar and
  the batch logs give them (so each epoch's curve starts afresh);
- ``epoch_loss``, ``epoch_accuracy`` (``validation/``: ``val_loss`` and
  ``val_accuracy``), ``epoch_learning_rate`` (the last batch's), at step = epochs
  done (1, 2, ...).

The learning rate comes from the batch logs (the NumPy networks report it), else
from the estimator given (scikit-learn's MLP: its optimizer's rate). Steps go on
from where they were when the same callback trains again (``partial_fit``). The
files are written with ``tensorboardX``, which needs no TensorFlow.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from digits.nn.callbacks import Callback

log = logging.getLogger(__name__)

SPLITS = ("train", "validation")  # the TensorBoard runs written in log_dir


def learning_rate_of(estimator) -> float | None:
    """The learning rate ``estimator`` trains with now, or None if it has none.

    scikit-learn's MLP (``digits.baseline``): with sgd, its optimizer's current
    rate (``invscaling`` lowers it); with adam, ``learning_rate_init``, the rate
    that adam's per-weight steps scale (as the NumPy networks report it).
    """
    optimizer = getattr(getattr(estimator, "model_", None), "_optimizer", None)
    if optimizer is not None and getattr(estimator, "solver", None) == "sgd":
        return float(optimizer.learning_rate)
    rate = getattr(estimator, "learning_rate_init", None)
    return None if rate is None else float(rate)


class TensorBoard(Callback):
    """Writes loss, accuracy and learning rate per batch and per epoch to
    ``log_dir``/train and ``log_dir``/validation as TensorBoard event files.

    log_dir : the folder for this training run (made if missing).
    update_freq : write the batch scalars every this many batches.
    estimator : where to read the learning rate when the batch logs lack it
        (``digits.training.train_run`` passes it through ``set_estimator``).
    """

    def __init__(
        self, log_dir: str | os.PathLike[str], update_freq: int = 1, estimator=None
    ) -> None:
        if update_freq < 1:
            raise ValueError(f"update_freq must be at least 1, not {update_freq}")
        self.log_dir = Path(log_dir)
        self.update_freq = update_freq
        self.estimator = estimator
        self.writers: dict = {}
        self._learning_rate: float | None = None  # the last batch's

    def set_estimator(self, estimator) -> None:
        """Called by ``train_run`` with the estimator about to be fitted."""
        self.estimator = estimator

    def on_train_begin(self, logs=None):
        from tensorboardX import SummaryWriter

        if any(self.log_dir.glob("*/events.out.tfevents.*")):
            log.warning(
                "%s already holds TensorBoard events; this run's curves will be "
                "drawn over theirs. Give each run its own folder.",
                self.log_dir,
            )
        self.writers = {
            split: SummaryWriter(str(self.log_dir / split)) for split in SPLITS
        }
        log.info("Writing TensorBoard events to %s", self.log_dir)

    def _rate(self, logs: dict) -> float | None:
        if "learning_rate" in logs:
            return float(logs["learning_rate"])
        if self.estimator is not None:
            return learning_rate_of(self.estimator)
        return None

    def _scalars(self, split: str, prefix: str, values: dict, step: int) -> None:
        for name, value in values.items():
            if value is not None:
                self.writers[split].add_scalar(f"{prefix}_{name}", value, step)

    def on_batch_end(self, step, logs):
        self._learning_rate = self._rate(logs)
        done = int(logs["epoch"]) * int(logs["batches"]) + int(logs["batch"])
        if self.writers and done % self.update_freq == 0:
            values = {
                "loss": logs["loss"],
                "accuracy": logs["accuracy"],
                "learning_rate": self._learning_rate,
            }
            self._scalars("train", "batch", values, done)

    def on_epoch_end(self, epoch, logs):
        if not self.writers:
            return
        done = int(logs.get("epoch", epoch + 1))
        train = {
            "loss": logs.get("loss"),
            "accuracy": logs.get("accuracy"),
            "learning_rate": self._learning_rate,
        }
        self._scalars("train", "epoch", train, done)
        val = {"loss": logs.get("val_loss"), "accuracy": logs.get("val_accuracy")}
        self._scalars("validation", "epoch", val, done)
        for writer in self.writers.values():
            writer.flush()

    def on_train_end(self, logs=None):
        for writer in self.writers.values():
            writer.close()
        self.writers = {}
