"""The training loop: minibatches, callbacks, divergence checks, two-thread batches.

Each batch is split in two halves that run forward and backward at the same time,
each on a replica of the model that shares its weights, with BLAS limited to one
thread per replica: measured 1.55-1.75x faster than one thread here and, unlike
2-thread BLAS, it holds up when another process competes for the cores. The second
half runs in a thread for small training sets and in a second process
(``digits.nn.twin``) for large ones, where it measured 2x faster when the host was
busy. The halves' gradients add up exactly because each half's loss is divided by
the whole batch's size, so either way gives the same weights.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from digits.engine.system import (
    blas_threads,
    keep_freed_memory,
    one_blas_thread_if_small,
)
from digits.errors import TrainingDiverged
from digits.nn.callbacks import Callback, batch_logs
from digits.nn.losses import EXPLODING_LOSS_FACTOR, softmax_cross_entropy
from digits.nn.model import Sequential
from digits.nn.optimizers import Optimizer
from digits.nn.twin import TwinFailed, TwinProcess

# Below this many images per half, a thread hand-off costs more than it saves.
MIN_HALF_BATCH = 16

# From this many training images, the second half of each batch runs in a process
# (digits/nn/twin.py) rather than a thread: starting one takes about 0.3 s.
TWIN_PROCESS_MIN_IMAGES = 10_000

Prepare = Callable[[np.ndarray, np.random.Generator | None], np.ndarray]


def _forward_backward(
    model: Sequential,
    x: np.ndarray,
    y: np.ndarray,
    n_total: int,
    loss_ready: Callable[[float, int], None] | None = None,
    layer_done: Callable[[int], None] | None = None,
) -> tuple[float, int]:
    """One forward and backward pass on part of a batch; returns (loss, n_correct).

    ``loss_ready(loss, n_correct)`` is called between the two passes, and
    ``layer_done`` as in ``Sequential.backward``: how the two processes of the
    twin path tell each other how far they are.
    """
    # Overflow is how divergence shows; the trainer checks the loss and weights and
    # reports it with TrainingDiverged, so NumPy's warnings would only be noise.
    with np.errstate(over="ignore", invalid="ignore"):
        logits = model.forward(x, training=True)
        correct = int((logits.argmax(axis=1) == y).sum())
        loss, dlogits = softmax_cross_entropy(logits, y, n_total)
        if loss_ready is not None:
            loss_ready(loss, correct)
        model.backward(dlogits, layer_done)
    return loss, correct


# On the twin path the optimizer step goes in blocks of at most this many values,
# so that whichever process is free can take the next one.
UPDATE_BLOCK = 32768


def update_blocks(
    model: Sequential, block: int = UPDATE_BLOCK
) -> list[tuple[int, int, int]]:
    """Slices of the flat arrays (see ``Sequential.pack``) for one optimizer step,
    in the order backward finishes their gradients: ``(layer, start, stop)``, to be
    updated once both halves' backward passes are done with layer ``layer``.

    The weights go in pieces of at most ``block`` values, the last layers' first;
    the biases, a few hundred values, go in one last piece.
    """
    _, _, n_weights = model.pack()
    ranges = model.flat_ranges()
    weights = sorted((r for r in ranges if r[1] < n_weights), key=lambda r: -r[0])
    blocks = [
        (layer, s, min(stop, s + block))
        for layer, start, stop in weights
        for s in range(start, stop, block)
    ]
    biases = [r for r in ranges if r[1] >= n_weights]
    if biases:
        blocks.append((min(r[0] for r in biases), biases[0][1], biases[-1][2]))
    return blocks


class FlatUpdate:
    """One optimizer step on a slice of the flat arrays (see ``Sequential.pack``).

    ``params``, ``grads`` and ``backup`` are 1-D, the weights (L2-penalised) in the
    first ``n_weights``. Called as ``update(n, others, start, stop)``: adds the other
    half-batches' gradients (``others``, flat) and the L2 term's to ``grads``, backs
    up the weights and runs ``optimizer.update`` on ``[start, stop)``; returns
    whether every new weight there is finite. Element-wise throughout, so slices
    updated in two threads or two processes give the numbers one call would.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        params: np.ndarray,
        grads: np.ndarray,
        backup: np.ndarray,
        n_weights: int,
        alpha: float,
    ) -> None:
        self.optimizer, self.n_weights, self.alpha = optimizer, n_weights, alpha
        self.params, self.grads, self.backup = params, grads, backup

    def __call__(self, n: int, others: list[np.ndarray], start: int, stop: int) -> bool:
        part = slice(start, stop)
        p, g, backup = self.params[part], self.grads[part], self.backup[part]
        for other in others:
            g += other[part]
        w = slice(0, max(0, min(stop, self.n_weights) - start))  # weights in part
        if self.alpha and w.stop:
            # alpha * W / n goes through the backup (refilled just below) rather
            # than a temporary array.
            np.multiply(p[w], np.float32(self.alpha / n), out=backup[w])
            g[w] += backup[w]
        np.copyto(backup, p)
        # As in _forward_backward: overflow shows as the non-finite weights this
        # returns, which the trainer reports, so NumPy's warnings are only noise.
        # (Per call: errstate is per thread, and this runs in two.)
        with np.errstate(over="ignore", invalid="ignore"):
            self.optimizer.update(part)
        return bool(np.isfinite(p).all())


class Trainer:
    """Trains a Sequential model one epoch at a time.

    ``prepare(raw_batch, rng)`` turns raw images into the model's float32 input and
    augments them when given an rng; it runs inside the worker threads too.

    Divergence: a batch whose loss (with the L2 term) is not finite or exceeds
    ``max_loss`` (see ``losses.exploding_loss``), or an update that makes a weight
    non-finite, raises TrainingDiverged after putting back the last weights that
    gave a sane loss; the exception's ``steps_kept`` counts this trainer's updates
    in them and ``kept_before`` names the batch ``(epoch, batch)``, both 0-based,
    whose update they precede (None: the weights the trainer started with).
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
        n_threads: int = 2,
        shuffle: bool = True,
        twin: str = "auto",
        max_loss: float = math.inf,
    ) -> None:
        keep_freed_memory()
        self.shuffle, self.max_loss = shuffle, float(max_loss)
        self.model, self.optimizer = model, optimizer
        self.batch_size, self.alpha = batch_size, alpha
        self.prepare, self.rng, self.augment = prepare, rng, augment
        seeds = rng.integers(2**31, size=2)
        self._seeds = [int(s) for s in seeds]
        model.pack()  # before replicas are made, so they get flat gradients too
        self.replicas = [model] + (
            [model.replica(int(seeds[0]))] if n_threads > 1 else []
        )
        self.aug_rngs = [np.random.default_rng(int(s)) for s in seeds]
        # Where the second half of each batch runs: "thread", "process", or "auto"
        # (a process for large training sets); $DIGITS_TWIN overrides "auto".
        if twin == "auto":
            twin = os.environ.get("DIGITS_TWIN", "auto")
        if twin not in ("auto", "thread", "process"):
            raise ValueError(f"twin must be auto, thread or process, not {twin!r}")
        self.twin_mode = twin
        self._twin: TwinProcess | None = None
        # One flat array holds every parameter, weights first: the L2 penalty
        # applies to that first part (biases are not penalised).
        self._params, self._grads, self._n_weights = model.pack()
        if len(optimizer.params) != 1 or optimizer.params[0] is not self._params:
            raise ValueError("the optimizer must update model.pack()'s flat arrays")
        self._backup = self._params.copy()
        self._flat = FlatUpdate(
            optimizer, self._params, self._grads, self._backup, self._n_weights, alpha
        )
        # Where the arrays live without a twin; with one they move to shared memory.
        self._own_storage = self._storage()
        self._schedule: tuple[float, int] | None = None
        self._steps = 0
        # The last update that finished, (epoch, batch), and how many did: what the
        # backup holds after a batch whose loss shows that update went wrong.
        self._last: tuple[int, int] | None = None
        self._updates = 0

    def anneal(self, lr: float, epochs: int) -> None:
        """Cosine-anneal the learning rate from ``lr`` to 0 over ``epochs`` epochs."""
        self._schedule = (lr, epochs)

    def run_epoch(
        self,
        x: np.ndarray,
        y: np.ndarray,
        epoch: int,
        callbacks: Sequence[Callback] = (),
        step0: int = 0,
    ) -> dict:
        """Train on all of (x, y) once, in a fresh random order (unless shuffle=False).

        Returns the epoch's logs: mean ``loss`` and ``accuracy`` over the batches that
        ran, ``seconds``, ``images_per_second``, ``batches_done`` and ``stopped``.
        """
        n = len(x)
        order = self.rng.permutation(n) if self.shuffle else np.arange(n)
        batches = -(-n // self.batch_size)
        loss_sum = correct = seen = 0.0
        stopped, done = False, 0
        twin = self._twin_for(x, y)
        start = time.perf_counter()
        threads = len(self.replicas) > 1 and twin is None
        pool = ThreadPoolExecutor(1) if threads else None
        try:
            with blas_threads(1 if len(self.replicas) > 1 else None):
                for b in range(batches):
                    if any(cb.stop_training for cb in callbacks):
                        stopped = True
                        break
                    idx = order[b * self.batch_size : (b + 1) * self.batch_size]
                    loss, n_correct = self._step(x, y, idx, pool, epoch, b, twin)
                    loss_sum += loss * len(idx)
                    correct += n_correct
                    seen += len(idx)
                    done = b + 1
                    elapsed = time.perf_counter() - start
                    logs = batch_logs(
                        loss=loss_sum / seen,
                        accuracy=correct / seen,
                        seen=seen,
                        seconds=elapsed,
                        epoch=epoch,
                        batch=b + 1,
                        batches=batches,
                    )
                    for cb in callbacks:
                        cb.on_batch_end(step0 + b, logs)
        finally:
            if pool:
                pool.shutdown()
        elapsed = time.perf_counter() - start
        return {
            "loss": loss_sum / seen if seen else float("nan"),
            "accuracy": correct / seen if seen else float("nan"),
            "seconds": elapsed,
            "images_per_second": seen / max(elapsed, 1e-9),
            "batches_done": done,
            "stopped": stopped,
        }

    def _twin_for(self, x: np.ndarray, y: np.ndarray) -> TwinProcess | None:
        """The twin process for training on (x, y), started on first use; None when
        the second half runs in a thread (or there is no second half)."""
        auto = len(x) >= TWIN_PROCESS_MIN_IMAGES
        wanted = len(self.replicas) > 1 and (
            self.twin_mode == "process" or (self.twin_mode == "auto" and auto)
        )
        if self._twin is not None and (
            not wanted or self._twin.x_source is not x or self._twin.y_source is not y
        ):
            self.close()
        if wanted and self._twin is None:
            try:
                self._twin = TwinProcess(
                    self.model.config(),
                    self._storage(),
                    x,
                    y,
                    self.batch_size,
                    self.prepare,
                    seed=self._seeds[0],
                    aug_seed=self._seeds[1] if self.augment else None,
                    optimizer=(type(self.optimizer).__name__, self.optimizer.config()),
                    n_weights=self._n_weights,
                    alpha=self.alpha,
                    blocks=update_blocks(self.model),
                    max_loss=self.max_loss,
                )
                self._adopt(self._twin.shared)
            except (OSError, TwinFailed) as exc:
                # The thread path computes the same weights, only slower here.
                warnings.warn(
                    f"Training the second half of each batch in a thread: {exc}",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self.twin_mode = "thread"
        return self._twin

    def close(self) -> None:
        """Stop the twin process, if one runs. The trainer starts a new one if used."""
        if self._twin is not None:
            twin, self._twin = self._twin, None
            self._adopt(self._own_storage)
            twin.close()

    def _storage(self) -> dict[str, np.ndarray]:
        """The flat arrays a training step updates: what a twin process shares."""
        arrays = {"params": self._params, "grads": self._grads, "backup": self._backup}
        return arrays | self.optimizer.state_storage()

    def _adopt(self, arrays: dict[str, np.ndarray]) -> None:
        """Copy the current values into ``arrays`` (shaped like ``_storage()``) and
        keep them there: the model, optimizer and this trainer all switch to them."""
        for key, old in self._storage().items():
            if arrays[key] is not old:
                np.copyto(arrays[key], old)
        params, grads = arrays["params"], arrays["grads"]
        self.model.share(params, grads)
        self.optimizer.params[0], self.optimizer.grads[0] = params, grads
        self.optimizer.share_state(arrays, copy=False)  # copied above
        self._params, self._grads, self._backup = params, grads, arrays["backup"]
        self._flat = FlatUpdate(
            self.optimizer, params, grads, self._backup, self._n_weights, self.alpha
        )

    def _step(
        self, x, y, idx, pool, epoch: int, batch: int, twin: TwinProcess | None = None
    ) -> tuple[float, int]:
        """Forward, backward and one optimizer update on the batch ``idx``."""
        n = len(idx)
        aug = self.aug_rngs if self.augment else [None, None]
        split = (pool is not None or twin is not None) and n >= 2 * MIN_HALF_BATCH
        l2 = 0.0
        if self.alpha:
            w = self._params[: self._n_weights]
            l2 = 0.5 * self.alpha * float(np.vdot(w, w)) / n
        lr = self.optimizer.lr
        if self._schedule:
            lr0, epochs = self._schedule
            total = epochs * -(-len(x) // self.batch_size)
            # A Python float, like a constant rate: NumPy keeps float32 arithmetic
            # with it (an np.float64 would turn SGD's products into float64 ones).
            lr = float(lr0 * 0.5 * (1 + np.cos(np.pi * self._steps / total)))
        i0, i1 = idx[: n // 2], idx[n // 2 :]
        if not split:
            # Too few images to halve: this side runs them all, and updates alone.
            pool = twin = None
            xb = self.prepare(x[idx], aug[0])
            loss, correct = _forward_backward(self.model, xb, y[idx], n)
            others = []
        elif twin is not None:
            side = twin.start(i1, n, lr, self.optimizer.t + 1, l2)
            xb = self.prepare(x[i0], aug[0])
            hooks = side.loss_ready, side.layer_done
            _forward_backward(self.model, xb, y[i0], n, *hooks)
            loss, correct = side.losses()
            others = [twin.grads]
        else:
            second_half = pool.submit(
                lambda: _forward_backward(
                    self.replicas[1], self.prepare(x[i1], aug[1]), y[i1], n
                )
            )
            loss, correct = _forward_backward(
                self.model, self.prepare(x[i0], aug[0]), y[i0], n
            )
            loss1, c1 = second_half.result()
            loss, correct = loss + loss1, correct + c1
            others = [self.replicas[1].packed[1]]
        loss += l2
        if not loss <= self.max_loss:  # NaN and infinity fail too
            if twin is not None:
                twin.finish()  # it saw the same loss, and skipped the update
            # The last update made weights that are finite but blow up the loss:
            # go back to the weights before it, which gave a sane loss.
            np.copyto(self._params, self._backup)
            what = (
                f"the loss exploded to {loss:.3g}, over the limit of "
                f"{self.max_loss:.3g} ({EXPLODING_LOSS_FACTOR:g} times chance level)"
                if np.isfinite(loss)
                else f"the loss became non-finite ({loss})"
            )
            kept = max(self._updates - 1, 0)
            self._diverged(epoch, batch, what, kept, self._last)
        self.optimizer.lr = lr
        self._steps += 1
        if not self._update(n, pool, others, twin):
            np.copyto(self._params, self._backup)
            what = "the weights became non-finite"
            self._diverged(epoch, batch, what, self._updates, (epoch, batch))
        self._last = (epoch, batch)
        self._updates += 1
        return loss, correct

    def _update(
        self,
        n: int,
        pool: ThreadPoolExecutor | None,
        others: list[np.ndarray],
        twin: TwinProcess | None = None,
    ) -> bool:
        """Add the other half-batch's gradients (``others``) and the L2 term's, back
        up the weights and take one optimizer step: in blocks shared with the twin
        process, or half of the flat arrays here and half in the ``pool``'s thread.
        Returns whether every new weight is finite.
        """
        self.optimizer.start_step()
        size = len(self._params)
        if twin is not None:
            ok = twin.side.update(self._flat, n, others)
            return twin.finish() and ok
        if pool is None:
            return self._flat(n, others, 0, size)
        # One slice per thread, not cache-sized blocks: blocks measured slower, since
        # the two threads then take turns at the GIL for every small NumPy call.
        future = pool.submit(self._flat, n, others, size // 2, size)
        ok = self._flat(n, others, 0, size // 2)
        return future.result() and ok

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
    model: Sequential,
    x: np.ndarray,
    prepare: Prepare,
    chunk: int = 128,
    n_threads: int = 2,
) -> np.ndarray:
    """Logits (N, K) for raw images ``x``, chunk by chunk, two chunks at a time."""
    keep_freed_memory()
    starts = range(0, len(x), chunk)
    if n_threads < 2 or len(x) <= chunk:
        with one_blas_thread_if_small(len(x)):
            return np.concatenate(
                [model.forward(prepare(x[s : s + chunk], None)) for s in starts]
            )
    twins = [model, model.replica(0)]

    def run(k: int) -> list[np.ndarray]:
        return [
            twins[k].forward(prepare(x[s : s + chunk], None))
            for s in starts[k :: len(twins)]
        ]

    with blas_threads(1), ThreadPoolExecutor(1) as pool:
        future = pool.submit(run, 1)
        parts = [run(0), future.result()]
    # Re-interleave: chunk i came from twin i % 2.
    out = [parts[i % 2][i // 2] for i in range(len(starts))]
    return np.concatenate(out)
