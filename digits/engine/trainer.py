"""The engine's trainer: the lesson's training loop, with each batch in two halves.

Each batch is split in two halves that run forward and backward at the same time,
on the model and on a replica that shares its weights (``halves.py``), each with BLAS
limited to one thread: measured 1.55-1.75x faster than one thread here and, unlike
2-thread BLAS, it holds up when another process competes for the cores. The second
half runs in a thread for small training sets or light networks, and in a second
process (``twin.py``) for large sets of heavy batches (``process_pays_off``), where
it measured 2x faster when the host was busy. The optimizer
step then runs on one flat array of every parameter (``flat.py``): half of it in
each thread, or in blocks that either process takes as soon as both halves are
done with their layer.

The thread and the process give the same weights bit for bit. The plain loop
(``digits.nn.training``) gives the same weights within float32 rounding: the same
random numbers are drawn in the same order, but the two halves' gradients are two
sums added together, where the plain loop's GEMMs sum the whole batch at once.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from digits.engine.flat import FlatUpdate, pack, share, update_blocks
from digits.engine.halves import (
    draw_masks,
    dropout_shapes,
    first_half,
    forward_backward,
    give_masks,
    replica,
    second_half,
)
from digits.engine.system import (
    blas_threads,
    keep_freed_memory,
    one_blas_thread_if_small,
)
from digits.engine.twin import TwinFailed, TwinProcess
from digits.nn import training
from digits.nn.callbacks import Callback
from digits.nn.model import Sequential
from digits.nn.optimizers import Optimizer

# Below this many images per half, a thread hand-off costs more than it saves.
MIN_HALF_BATCH = 16

# From this many training images, the second half of each batch runs in a process
# rather than a thread: starting one takes about 0.3 s...
TWIN_PROCESS_MIN_IMAGES = 10_000
# ...and only for batches with enough arithmetic to hide the per-batch hand-over
# to the process (a wake-up that a busy machine can delay by a scheduler tick).
# Measured at 20,000 images while other processes ran: the quick CNN (8 and 16
# 3x3 channels, 0.3 M multiply-adds an image, 20 M a batch of 64) took 8.3 s an
# epoch with the process against 1.4 s with a thread; the default CNN (4.0 M an
# image, 260 M a batch) gains from it (benchmarks/twin_ab.py).
TWIN_PROCESS_MIN_MULTIPLY_ADDS = 100_000_000  # per batch, forward pass


class Trainer(training.Trainer):
    """The lesson's ``Trainer``, faster; the same arguments, plus:

    ``n_threads``: 1 runs each batch whole, 2 (or more) in two halves at once.
    ``twin``: where the second half runs, "thread", "process", or "auto" (a process
    where ``process_pays_off``: ``TWIN_PROCESS_MIN_IMAGES`` or more training images
    in batches of ``TWIN_PROCESS_MIN_MULTIPLY_ADDS`` or more); ``$DIGITS_TWIN``
    overrides "auto".

    ``optimizer`` must update the model's flat arrays: ``[pack(model).params]``.
    Call :meth:`close` when done, to stop the twin process.
    """

    def __init__(
        self,
        model: Sequential,
        optimizer: Optimizer,
        *,
        n_threads: int = 2,
        twin: str = "auto",
        **settings,
    ) -> None:
        keep_freed_memory()
        flat = pack(model)
        if len(optimizer.params) != 1 or optimizer.params[0] is not flat.params:
            raise ValueError("the optimizer must update pack(model)'s flat arrays")
        super().__init__(model, optimizer, **settings)
        # The first half writes its gradients where the optimizer reads them; the
        # second half's are added in by the update.
        self.halves = [first_half(model)]
        if n_threads > 1:
            self.halves.append(second_half(model))
        if twin == "auto":
            twin = os.environ.get("DIGITS_TWIN", "auto")
        if twin not in ("auto", "thread", "process"):
            raise ValueError(f"twin must be auto, thread or process, not {twin!r}")
        self.twin_mode = twin
        self._twin: TwinProcess | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._update = FlatUpdate(optimizer, self.backup[0], flat.n_weights, self.alpha)
        # Where the arrays live without a twin; with one they move to shared memory.
        self._own_storage = self._storage()

    def run_epoch(
        self,
        x: np.ndarray,
        y: np.ndarray,
        epoch: int,
        callbacks: Sequence[Callback] = (),
        step0: int = 0,
    ) -> dict:
        """As the lesson's, with the second half of each batch in the twin process
        (started on first use) or in a thread."""
        two = len(self.halves) > 1
        twin = self._twin_for(x)
        with blas_threads(1 if two else None), ThreadPoolExecutor(1) as pool:
            self._pool = pool if two and twin is None else None
            try:
                return super().run_epoch(x, y, epoch, callbacks, step0)
            finally:
                self._pool = None

    def train_batch(
        self, xb: np.ndarray, yb: np.ndarray, epoch: int, batch: int
    ) -> tuple[float, int]:
        """The lesson's step, with the batch in two halves at once when it has at
        least ``2 * MIN_HALF_BATCH`` images, then the update on the flat arrays."""
        n = len(yb)
        split = len(self.halves) > 1 and n >= 2 * MIN_HALF_BATCH
        n0 = n // 2 if split else n
        first, rest = slice(0, n0), slice(n0, n)
        masks = draw_masks(self.model, n, xb.shape[1:])
        give_masks(self.halves[0], masks, first)
        l2 = self.l2_loss(n)
        twin = self._twin if split else None
        others = []
        if twin is not None:
            opt = self.optimizer
            masks1 = [m[rest] for m in masks]
            momentum = getattr(opt, "momentum", 0.0)
            side = twin.start(
                xb[rest], yb[rest], masks1, n, opt.lr, opt.t + 1, l2, momentum
            )
            hooks = side.loss_ready, side.layer_done
            forward_backward(self.halves[0], xb[first], yb[first], n, *hooks)
            loss, correct = side.losses()
            others = [twin.grads]
        elif split:
            second = self.halves[1]
            give_masks(second, masks, rest)
            future = self._pool.submit(forward_backward, second, xb[rest], yb[rest], n)
            loss, correct = forward_backward(self.halves[0], xb[first], yb[first], n)
            loss1, correct1 = future.result()
            loss, correct = loss + loss1, correct + correct1
            others = [pack(second).grads]
        else:
            loss, correct = forward_backward(self.halves[0], xb, yb, n)
        loss += l2
        if twin is not None and not loss <= self.max_loss:
            twin.finish()  # it saw the same loss, and skipped the update
        self.check_loss(loss, epoch, batch)
        self.optimizer.t += 1
        self.check_update(self._step(n, others, split, twin), epoch, batch)
        return loss, correct

    def _step(
        self,
        n: int,
        others: list[np.ndarray],
        split: bool,
        twin: TwinProcess | None,
    ) -> bool:
        """Add the other half's gradients (``others``) and the L2 term's, back up
        the weights and update them: in blocks shared with the twin process, or in
        two slices, one of them in the pool's thread. Returns whether every new
        weight is finite."""
        size = len(self.optimizer.params[0])
        if twin is not None:
            ok = twin.side.update(self._update, n, others)
            return twin.finish() and ok
        if not split:
            return self._update(n, others, 0, size)
        # One slice per thread, not cache-sized blocks: blocks measured slower, since
        # the two threads then take turns at the GIL for every small NumPy call.
        future = self._pool.submit(self._update, n, others, size // 2, size)
        ok = self._update(n, others, 0, size // 2)
        return future.result() and ok

    def _twin_for(self, x: np.ndarray) -> TwinProcess | None:
        """The twin process for training on ``x``, started on first use; None when
        the second half runs in a thread (or there is no second half)."""
        auto = process_pays_off(
            self.model, self.prepare(x[:1], None)[0], self.batch_size, len(x)
        )
        wanted = len(self.halves) > 1 and (
            self.twin_mode == "process" or (self.twin_mode == "auto" and auto)
        )
        if self._twin is not None and not wanted:
            self.close()
        if wanted and self._twin is None:
            sample = self.prepare(x[:1], None)[0]
            flat, opt = pack(self.model), self.optimizer
            try:
                self._twin = TwinProcess(
                    self.model.config(),
                    self._storage(),
                    sample,
                    [s for _, s in dropout_shapes(self.model, sample.shape)],
                    self.batch_size,
                    optimizer=(type(opt).__name__, opt.config()),
                    n_weights=flat.n_weights,
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
                    stacklevel=3,
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
        opt = self.optimizer
        arrays = {"params": opt.params[0], "grads": opt.grads[0]}
        arrays["backup"] = self.backup[0]
        for name, states in opt.state_arrays().items():
            arrays[f"optimizer.{name}"] = states[0]
        return arrays

    def _adopt(self, arrays: dict[str, np.ndarray]) -> None:
        """Copy the current values into ``arrays`` (shaped like ``_storage()``) and
        keep them there: the model, its halves, the optimizer and this trainer all
        switch to them."""
        for key, old in self._storage().items():
            if arrays[key] is not old:
                np.copyto(arrays[key], old)
        params, grads = arrays["params"], arrays["grads"]
        share(self.model, params, grads)  # and so the first half's layers
        for half in self.halves[1:]:
            share(half, params, pack(half).grads)
        opt = self.optimizer
        opt.params[0], opt.grads[0] = params, grads
        for name, states in opt.state_arrays().items():
            states[0] = arrays[f"optimizer.{name}"]
        self.backup[0] = arrays["backup"]
        self._update.backup = arrays["backup"]


def predict_logits(
    model: Sequential,
    x: np.ndarray,
    prepare: training.Prepare,
    chunk: int = 128,
    n_threads: int = 2,
) -> np.ndarray:
    """Logits (N, K) for raw images ``x``, chunk by chunk, two chunks at a time:
    the lesson's ``predict_logits`` in two threads."""
    keep_freed_memory()
    if n_threads < 2 or len(x) <= chunk:
        with one_blas_thread_if_small(len(x)):
            return training.predict_logits(model, x, prepare, chunk)
    starts = range(0, len(x), chunk)
    twins = [model, replica(model)]

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


def process_pays_off(
    model: Sequential, sample: np.ndarray, batch_size: int, n_images: int
) -> bool:
    """Whether "auto" runs the second half of each batch in a process: for at
    least ``TWIN_PROCESS_MIN_IMAGES`` images, in batches of at least
    ``TWIN_PROCESS_MIN_MULTIPLY_ADDS`` (``sample``: one prepared input, e.g. of
    shape (28, 28, 1))."""
    work = batch_size * multiply_adds(model, sample.shape)
    return n_images >= TWIN_PROCESS_MIN_IMAGES and work >= (
        TWIN_PROCESS_MIN_MULTIPLY_ADDS
    )


def multiply_adds(model: Sequential, input_shape: tuple[int, ...]) -> int:
    """Multiply-adds of one image's forward pass through ``model``'s weights:
    each conv kernel at every output position, each dense weight once.

    input_shape : one prepared input's, e.g. (28, 28, 1), or (784,) for a dense
        network.
    """
    shape, total = tuple(input_shape), 0
    for layer in model.layers:
        out = layer.output_shape(shape)
        for name in layer.weights:
            positions = int(np.prod(out[:-1])) if len(out) > 1 else 1
            total += layer.params[name].size * positions
        shape = out
    return total
