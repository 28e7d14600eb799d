"""The training loop: minibatches in a fresh random order every epoch.

Each minibatch ``(x, y)`` of ``n`` images goes through one step::

    logits = model.forward(x, training=True)
    loss, dlogits = softmax_cross_entropy(logits, y)   # the mean over the batch
    loss += alpha / 2 * sum(||W||^2) / n               # L2 on the weights
    model.backward(dlogits)                            # fills every layer's grads
    grad_W += alpha * W / n                            # the L2 term's gradient
    optimizer.step()

and then every callback's ``on_batch_end``. A callback may pause training there
(it simply does not return until resumed) or call the trainer's
``set_learning_rate`` or ``set_momentum``: the next batch uses the new value.

L2 is scaled by the batch size as in scikit-learn's MLP, and applies to the
parameters each layer declares as its ``weights``, never to the biases.

When training diverges (a batch's loss is not finite or is over ``max_loss``, see
``losses.exploding_loss``, or an update makes a weight non-finite), the trainer puts
back the last weights that gave a sane loss and raises ``TrainingDiverged``.

``digits.engine`` trains the same network faster, with each batch split in two
halves that run at the same time. It builds on :class:`Trainer`, and its tests check
that it gives the weights this loop gives.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np

from digits.errors import TrainingDiverged
from digits.nn.callbacks import Callback, batch_logs
from digits.nn.losses import EXPLODING_LOSS_FACTOR, softmax_cross_entropy
from digits.nn.model import Sequential
from digits.nn.optimizers import Optimizer

# prepare(raw rows, rng or None) -> the network's input, augmented when given an rng.
Prepare = Callable[[np.ndarray, np.random.Generator | None], np.ndarray]


class Trainer:
    """Trains a Sequential model one epoch at a time.

    ``prepare(raw_batch, rng)`` turns raw rows into the model's float32 input and
    augments them when given an rng. ``rng`` shuffles the training set every epoch
    (unless ``shuffle=False``) and, with ``augment``, draws the augmentations.

    When training diverges, ``TrainingDiverged`` carries ``steps_kept``, the number
    of this trainer's updates in the weights it put back, and ``kept_before``, the
    batch ``(epoch, batch)``, both 0-based, whose update they precede (None: the
    weights the trainer started with).
    """

    def __init__(
        self,
        model: Sequential,
        optimizer: Optimizer,
        *,
        batch_size: int,
        alpha: float,
        prepare: Prepare,
        rng: np.random.Generator,
        augment: bool = False,
        shuffle: bool = True,
        max_loss: float = math.inf,
    ) -> None:
        self.model, self.optimizer = model, optimizer
        self.batch_size, self.alpha = batch_size, alpha
        self.prepare, self.rng, self.augment = prepare, rng, augment
        self.shuffle, self.max_loss = shuffle, float(max_loss)
        # The weights before the last update, to put back if it made them blow up.
        self.backup = [p.copy() for p in optimizer.params]
        self.steps = 0  # updates made
        self._last: tuple[int, int] | None = None  # (epoch, batch) of the last one
        self._schedule: tuple[float, int] | None = None
        # Settings changed by hand mid-run: (steps before it, name, new value).
        self.changes: list[tuple[int, str, float]] = []

    def anneal(self, lr: float, epochs: int) -> None:
        """Cosine-anneal the learning rate from ``lr`` to 0 over ``epochs`` epochs."""
        self._schedule = (lr, epochs)

    def set_learning_rate(self, lr: float) -> None:
        """Train at ``lr`` from the next batch on. A rate set by hand replaces the
        schedule: it stays constant for the rest of the run."""
        if not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"learning rate must be a positive number, not {lr}")
        self._schedule = None
        self.optimizer.lr = float(lr)  # a Python float keeps float32 arithmetic
        self.changes.append((self.steps, "learning_rate", float(lr)))

    def set_momentum(self, momentum: float) -> None:
        """SGD's momentum, from the next batch on."""
        if not hasattr(self.optimizer, "momentum"):
            raise ValueError("only SGD has a momentum to change")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), not {momentum}")
        self.optimizer.momentum = float(momentum)
        self.changes.append((self.steps, "momentum", float(momentum)))

    def run_epoch(
        self,
        x: np.ndarray,
        y: np.ndarray,
        epoch: int,
        callbacks: Sequence[Callback] = (),
        step0: int = 0,
    ) -> dict:
        """Train on all of x (N, features) and y (N,) class indices once.

        Returns the epoch's logs: mean ``loss`` and ``accuracy`` over the batches that
        ran, ``seconds``, ``images_per_second``, ``batches_done`` and ``stopped``;
        and for a setting changed by hand during the epoch, its new value
        (``learning_rate_set``, ``momentum_set``) and the batch of this epoch,
        1-based, that first used it (``learning_rate_set_at_batch``, ...).
        """
        n = len(x)
        steps0 = self.steps
        order = self.rng.permutation(n) if self.shuffle else np.arange(n)
        batches = -(-n // self.batch_size)
        loss_sum = correct = seen = 0.0
        stopped, done = False, 0
        start = time.perf_counter()
        for b in range(batches):
            if any(cb.stop_training for cb in callbacks):
                stopped = True
                break
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            xb = self.prepare(x[idx], self.rng if self.augment else None)
            self.optimizer.lr = self._learning_rate(n)
            loss, n_correct = self.train_batch(xb, y[idx], epoch, b)
            loss_sum += loss * len(idx)
            correct += n_correct
            seen += len(idx)
            done = b + 1
            logs = batch_logs(
                loss=loss_sum / seen,
                accuracy=correct / seen,
                seen=seen,
                seconds=time.perf_counter() - start,
                epoch=epoch,
                batch=b + 1,
                batches=batches,
                learning_rate=self.optimizer.lr,
            )
            for cb in callbacks:
                cb.on_batch_end(step0 + b, logs)
        elapsed = time.perf_counter() - start
        return {
            "loss": loss_sum / seen if seen else float("nan"),
            "accuracy": correct / seen if seen else float("nan"),
            "seconds": elapsed,
            "images_per_second": seen / max(elapsed, 1e-9),
            "batches_done": done,
            "stopped": stopped,
        } | self._changes_since(steps0)

    def _changes_since(self, steps0: int) -> dict[str, float]:
        """The settings changed by hand since update ``steps0`` (the last change
        of each), as epoch logs."""
        logs = {}
        for steps, name, value in self.changes:
            if steps >= steps0:
                logs[f"{name}_set"] = value
                logs[f"{name}_set_at_batch"] = float(steps - steps0 + 1)
        return logs

    def train_batch(
        self, xb: np.ndarray, yb: np.ndarray, epoch: int, batch: int
    ) -> tuple[float, int]:
        """One step on the network input xb (n, ...) with labels yb (n,): forward,
        loss, backward, L2, optimizer update. Returns the loss (with its L2 term) and
        how many images the network got right, both before the update."""
        n = len(yb)
        # Overflow is how divergence shows, which the checks below report: NumPy's
        # warnings would only be noise.
        with np.errstate(over="ignore", invalid="ignore"):
            logits = self.model.forward(xb, training=True)  # (n, K)
            loss, dlogits = softmax_cross_entropy(logits, yb)
            loss += self.l2_loss(n)
            self.check_loss(loss, epoch, batch)
            self.model.backward(dlogits)
            if self.alpha:
                for w, grad in self.model.weights():
                    grad += w * np.float32(self.alpha / n)
            for p, saved in zip(self.optimizer.params, self.backup, strict=True):
                np.copyto(saved, p)
            self.optimizer.step()
        finite = all(np.isfinite(p).all() for p in self.optimizer.params)
        self.check_update(finite, epoch, batch)
        return loss, int((logits.argmax(axis=1) == yb).sum())

    def l2_loss(self, n: int) -> float:
        """``alpha / 2 * sum(||W||^2) / n`` over the model's weights."""
        if not self.alpha:
            return 0.0
        squares = sum(float(np.vdot(w, w)) for w, _ in self.model.weights())
        return 0.5 * self.alpha * squares / n

    def check_loss(self, loss: float, epoch: int, batch: int) -> None:
        """Raise TrainingDiverged if ``loss`` is not finite or over ``max_loss``.

        The weights that gave it came from the last update: the weights from
        before that update, which gave a sane loss, are put back.
        """
        if loss <= self.max_loss:  # NaN fails this test too
            return
        self._restore()
        what = (
            f"the loss exploded to {loss:.3g}, over the limit of "
            f"{self.max_loss:.3g} ({EXPLODING_LOSS_FACTOR:g} times chance level)"
            if np.isfinite(loss)
            else f"the loss became non-finite ({loss})"
        )
        self._diverged(epoch, batch, what, max(self.steps - 1, 0), self._last)

    def check_update(self, finite: bool, epoch: int, batch: int) -> None:
        """Count this batch's update if every new weight is ``finite``; otherwise put
        back the weights from before it and raise TrainingDiverged."""
        if not finite:
            self._restore()
            what = "the weights became non-finite"
            self._diverged(epoch, batch, what, self.steps, (epoch, batch))
        self._last = (epoch, batch)
        self.steps += 1

    def _restore(self) -> None:
        for p, saved in zip(self.optimizer.params, self.backup, strict=True):
            np.copyto(p, saved)

    def _learning_rate(self, n_images: int) -> float:
        if self._schedule is None:
            return self.optimizer.lr
        lr0, epochs = self._schedule
        total = epochs * -(-n_images // self.batch_size)
        # A Python float, like a constant rate: NumPy keeps float32 arithmetic with
        # it (an np.float64 would turn SGD's products into float64 ones).
        return float(lr0 * 0.5 * (1 + np.cos(np.pi * self.steps / total)))

    def _diverged(
        self,
        epoch: int,
        batch: int,
        what: str,
        steps_kept: int,
        kept_before: tuple[int, int] | None,
    ) -> None:
        if kept_before is None:
            kept = "the weights training started from were put back"
        else:
            kept = (
                f"the weights from before batch {kept_before[1] + 1} of epoch "
                f"{kept_before[0] + 1} were put back"
            )
        err = TrainingDiverged(
            f"Training diverged at epoch {epoch + 1}, batch {batch + 1}: {what}; "
            f"{kept}. Try a lower learning rate (now {self.optimizer.lr:g}).",
            usable=steps_kept > 0,
        )
        err.at, err.what = (epoch, batch), what
        err.steps_kept, err.kept_before = steps_kept, kept_before
        raise err


def predict_logits(
    model: Sequential, x: np.ndarray, prepare: Prepare, batch_size: int = 128
) -> np.ndarray:
    """Logits (N, K) for raw rows x (N, features), a batch at a time, so that the
    layers' activations stay small."""
    starts = range(0, len(x), batch_size)
    return np.concatenate(
        [model.forward(prepare(x[s : s + batch_size], None)) for s in starts]
    )
