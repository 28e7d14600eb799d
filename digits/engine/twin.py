"""The second half of every batch, run in a second process that shares the weights.

The trainer splits each batch in two and runs the halves at once. It used to run the
second half in a thread; on these virtual machines that was the slow part. A thread
that waits (for the GIL, which two NumPy threads hand back and forth hundreds of
times a step, or for the other half) lets its virtual CPU halt, and a busy host then
gives the core to another machine and is slow to give it back (the kernel counts
that as "steal"). Measured on the same 64-image steps while the host was busy:
52-101 ms per step with two threads (29-49 % steal) against 26-32 ms with two
processes (1-10 % steal). A process has its own GIL, and it waits by spinning on
shared memory, so its CPU never halts during a step. The parent spins too when it
trains on its main thread (a script, the CLI); a training thread inside a server
naps instead, so that it leaves the GIL to the threads answering other sessions.
Between steps and epochs the wait turns into short sleeps after ``SPIN_SECONDS``,
so an idle twin costs nothing.

Shared memory (files in /dev/shm, mapped by both processes and unlinked as soon as
the twin has mapped them; files whose creator died before that are removed by the
next twin's start, since their names carry the creator's process id) holds the
trainer's flat arrays while the twin lives (parameters, both halves' gradients, the
weights' backup and the optimizer's state), the twin's half of the batch (its
network input, labels and dropout masks), both halves' losses and a few control
words. The twin draws no random numbers: the parent augments the whole batch and
draws its dropout masks, as the plain loop does. Per step:

1. the parent writes the twin's half of the batch, the learning rate and the L2
   term of the loss, and bumps ``go``;
2. each side runs forward on its half and publishes its loss, then runs backward,
   publishing how far it has got after each layer;
3. each side adds the two losses and the L2 term; if the sum is sane (finite,
   and at most the trainer's ``max_loss``), each takes blocks of the optimizer
   step (``flat.update_blocks``), whichever block comes next, as soon as both
   sides' gradients for it are final. The side that finished its half first
   thus updates the last layers' weights while the other is still working back
   through the first ones. A block is taken under a file lock, so each is updated
   once; the update is element-wise, so who takes which block never changes the
   numbers;
4. the twin bumps ``updated`` when no block is left.

The twin is a fresh ``python -m digits.engine.twin``, so nothing of the parent (its
threads, its locks) is inherited, and, unlike multiprocessing's "spawn", it never
re-runs the parent's main script (a learner's script without a ``__main__`` guard
would otherwise train again inside it). Its arguments arrive pickled on its stdin
from its parent (never anything a user supplied). It exits when told to or when its
parent dies.

If the twin dies instead (the out-of-memory killer, say), the parent's next wait
for it raises ``TwinFailed``, a ``TrainingInterrupted`` naming the signal. The
step may be half done, some blocks updated and others not, so ``CNNClassifier``
then puts back the weights and optimizer state it copied at the end of the last
finished epoch.
"""

from __future__ import annotations

import functools
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from digits.engine.system import pid_alive
from digits.errors import TrainingInterrupted

try:
    import fcntl
except ImportError:  # Windows: the trainer then runs the second half in a thread
    fcntl = None

SPIN_SECONDS = 0.05  # then sleep in naps of NAP_SECONDS, checking the other side
NAP_SECONDS = 0.0005
START_TIMEOUT = 120.0  # seconds for the twin to import NumPy and build its model

# Control words; the last two pairs have one word per side (parent, twin).
_GO, _EXIT, _FAILED, _READY, _N, _N_TOTAL, _T, _CLAIM, _UPDATED, _FINITE = range(10)
_LOSS_AT, _PROGRESS = 10, 12
_N_CONTROL = 14
# Slots of the float64 "result" array; loss and correct have one per side.
_LR, _L2, _LOSS, _CORRECT = 0, 1, 2, 4
_MOMENTUM = 6  # SGD's, which may be changed mid-run like the learning rate
_N_RESULT = 7
PARENT, TWIN = 0, 1
_MESSAGE_BYTES = 4096
_PREFIX = "digits-twin-"  # then the creating process's id, "-", and a random part


class TwinFailed(TrainingInterrupted):
    """The twin process raised or died; ``reason`` says how ("killed by signal 9,
    SIGKILL, as the out-of-memory killer does", or the twin's exception).

    Raised mid-step, it leaves some weights updated and others not: the trainer's
    caller puts back weights it saved (``CNNClassifier`` keeps each epoch's end).
    """

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"The second training process {what} ({reason})")
        self.reason = reason


def exit_reason(code: int | None) -> str:
    """How a process ended, from its ``returncode``, for a message."""
    if code is None:
        return "it stopped answering"
    if code >= 0:
        return f"it exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = "an unknown signal"
    oom = ", as the out-of-memory killer does" if -code == signal.SIGKILL else ""
    return f"killed by signal {-code}, {name}{oom}"


def _shm_dir(nbytes: int) -> str | None:
    """/dev/shm if it has room for twice ``nbytes`` (a full tmpfs would crash the
    process that writes to it), else the temp folder (then the page cache shares)."""
    try:
        stat = os.statvfs("/dev/shm")
    except OSError:
        return None
    return "/dev/shm" if stat.f_bavail * stat.f_frsize > 2 * nbytes else None


def remove_orphans(folder: str | None) -> list[str]:
    """Delete the shared files of twins whose creator has died; returns their paths.

    A parent killed between creating the files and its twin mapping them (the twin
    takes a second or two to start) leaves them behind, 50 MB for MNIST. Only files
    older than a twin's start-up limit go, in case the id belongs to a process that
    this one cannot see (another container sharing /dev/shm).
    """
    removed, now = [], time.time()
    for path in Path(folder or tempfile.gettempdir()).glob(f"{_PREFIX}*-*"):
        pid = path.name[len(_PREFIX) :].split("-", 1)[0]
        try:
            old = now - path.stat().st_mtime > START_TIMEOUT
        except OSError:  # already gone
            continue
        if old and pid.isdigit() and not pid_alive(int(pid)):
            try:
                path.unlink()
                removed.append(str(path))
            except OSError:  # another process's cleanup got there first
                pass
    return removed


def _map(path: str, shape: tuple[int, ...], dtype, mode: str) -> np.ndarray:
    return np.memmap(path, dtype=np.dtype(dtype), mode=mode, shape=tuple(shape))


def _wait(ready: Callable[[], bool], alive: Callable[[], bool], spin: bool) -> bool:
    """Wait until ``ready()``: spin for up to SPIN_SECONDS if ``spin``, then nap.

    Returns False if ``alive()`` turns False first.
    """
    deadline = time.perf_counter() + (SPIN_SECONDS if spin else 0.0)
    while not ready():
        if time.perf_counter() > deadline:
            if not alive():
                return ready()
            time.sleep(NAP_SECONDS)
    return True


def _may_spin() -> bool:
    """Spin only on the main thread. A training thread in a server (the dashboard)
    naps instead: a spinning Python thread holds the GIL that the threads answering
    other sessions need, which made their predictions measurably slower."""
    return threading.current_thread() is threading.main_thread()


class _Side:
    """One process's end of a step: it publishes its half's loss and how far its
    backward pass has got, reads the other side's, and takes blocks of the
    optimizer step.

    ``blocks`` are ``(layer, start, stop)`` slices of the flat arrays, as from
    ``flat.update_blocks``; ``lock`` is a file descriptor to ``flock``; ``alive()``
    says whether the other process still runs, ``spin()`` whether to spin while
    waiting; ``gone()`` makes the exception to raise when the other side failed.
    """

    def __init__(
        self,
        ctl: np.ndarray,
        result: np.ndarray,
        lock: int,
        blocks: list[tuple[int, int, int]],
        n_layers: int,
        side: int,
        alive: Callable[[], bool],
        spin: Callable[[], bool],
        gone: Callable[[], BaseException],
    ) -> None:
        self.ctl, self.result, self.lock, self.blocks = ctl, result, lock, blocks
        self.n_layers, self.side = n_layers, side
        self.alive, self.spin, self.gone = alive, spin, gone
        self.step = 0

    def loss_ready(self, loss: float, correct: int) -> None:
        """Publish this half's loss and number of correct predictions."""
        self.result[_LOSS + self.side] = loss
        self.result[_CORRECT + self.side] = correct
        self.ctl[_LOSS_AT + self.side] = self.step

    def layer_done(self, layer: int) -> None:
        """Publish that this half's gradients of ``layer`` and later are final."""
        self.ctl[_PROGRESS + self.side] = self._progress(layer)

    def _progress(self, layer: int) -> int:
        # Counts up across steps, so that no word needs resetting between them.
        return self.step * (self.n_layers + 1) + self.n_layers - layer

    def losses(self) -> tuple[float, int]:
        """Both halves' loss (without the L2 term) and number correct, once the
        other side has published its half's."""
        other = 1 - self.side
        self._wait(lambda: self.ctl[_LOSS_AT + other] == self.step)
        r = self.result
        loss = float(r[_LOSS + PARENT]) + float(r[_LOSS + TWIN])
        return loss, int(r[_CORRECT + PARENT]) + int(r[_CORRECT + TWIN])

    def update(self, flat: Callable[..., bool], n: int, others: list) -> bool:
        """Take blocks of the optimizer step until none is left, each once both
        halves' gradients for it are final; ``flat(n, others, start, stop)`` updates
        one. Returns whether every weight this side updated is finite."""
        ok = True
        while (k := self._claim()) is not None:
            layer, start, stop = self.blocks[k]
            self._wait(functools.partial(self._both_past, self._progress(layer)))
            ok = flat(n, others, start, stop) and ok
        return ok

    def _both_past(self, progress: int) -> bool:
        return min(self.ctl[_PROGRESS], self.ctl[_PROGRESS + 1]) >= progress

    def _claim(self) -> int | None:
        """The next block nobody has taken yet, or None."""
        fcntl.flock(self.lock, fcntl.LOCK_EX)
        try:
            k = int(self.ctl[_CLAIM])
            if k >= len(self.blocks):
                return None
            self.ctl[_CLAIM] = k + 1
            return k
        finally:
            fcntl.flock(self.lock, fcntl.LOCK_UN)

    def _wait(self, ready: Callable[[], bool]) -> None:
        stop = lambda: bool(self.ctl[_FAILED] or self.ctl[_EXIT])  # noqa: E731
        if not _wait(lambda: ready() or stop(), self.alive, self.spin()) or stop():
            raise self.gone()


class _ParentGone(Exception):
    """The parent stopped the twin, or died, in the middle of a step."""


class TwinProcess:
    """A process running ``forward_backward`` on the second half of each batch, and
    its share of the optimizer step's blocks.

    ``config`` rebuilds the model, as its second half (``halves.second_half``).
    ``storage`` names the trainer's flat arrays (params, grads, backup and the
    optimizer's state, see ``Trainer._storage``); ``self.shared`` holds shared ones
    shaped like them, for the trainer to move into. ``sample`` is one image's
    network input (its shape and dtype), ``mask_shapes`` one image's dropout masks
    (as from
    ``halves.dropout_shapes``). ``optimizer`` is the optimizer's class name and
    ``config()``; ``n_weights`` and ``alpha`` as in ``FlatUpdate``; ``blocks`` as
    from ``flat.update_blocks``.
    """

    def __init__(
        self,
        config: list[dict],
        storage: dict[str, np.ndarray],
        sample: np.ndarray,
        mask_shapes: list[tuple[int, ...]],
        batch_size: int,
        optimizer: tuple[str, dict],
        n_weights: int,
        alpha: float,
        blocks: list[tuple[int, int, int]],
        max_loss: float = float("inf"),
    ) -> None:
        self._paths: list[str] = []
        self._lock: int | None = None
        try:
            if fcntl is None:
                raise OSError("a second process needs fcntl, which Windows lacks")
            params = storage["params"]
            specs = {key: (a.shape, a.dtype) for key, a in storage.items()}
            specs.update(
                {
                    "twin_grads": (params.shape, params.dtype),
                    "x": ((batch_size, *sample.shape), sample.dtype),
                    "y": ((batch_size,), np.int64),
                    "ctl": ((_N_CONTROL,), np.int64),
                    "result": ((_N_RESULT,), np.float64),
                    "message": ((_MESSAGE_BYTES,), np.uint8),
                }
            )
            for k, shape in enumerate(mask_shapes):
                specs[f"mask.{k}"] = ((batch_size, *shape), np.float32)
            arrays, names = {}, {}
            folder = _shm_dir(
                sum(np.dtype(d).itemsize * int(np.prod(s)) for s, d in specs.values())
            )
            remove_orphans(folder)
            prefix = f"{_PREFIX}{os.getpid()}-"
            for key, (shape, dtype) in specs.items():
                fd, path = tempfile.mkstemp(prefix=prefix, dir=folder)
                os.close(fd)
                self._paths.append(path)
                # A plain ndarray view: np.memmap's Python hooks would run on every
                # NumPy call made on these arrays.
                arrays[key] = np.asarray(_map(path, shape, dtype, "w+"))
                names[key] = (path, tuple(shape), np.dtype(dtype).str)
            self.shared = {key: arrays[key] for key in storage}
            self.grads = arrays["twin_grads"]
            self._x, self._y = arrays["x"], arrays["y"]
            self._masks = [arrays[f"mask.{k}"] for k in range(len(mask_shapes))]
            self._ctl = arrays["ctl"]
            self._result, self._message = arrays["result"], arrays["message"]
            self._lock = os.open(names["ctl"][0], os.O_RDWR)
            self.side = _Side(
                self._ctl,
                self._result,
                self._lock,
                blocks,
                len(config),
                PARENT,
                self._alive,
                _may_spin,
                lambda: TwinFailed("stopped", self._failure()),
            )
            args = (
                names,
                config,
                optimizer,
                n_weights,
                alpha,
                blocks,
                max_loss,
                os.getpid(),
            )
            # The folder holding the digits package, so the child imports this one.
            root = str(Path(__file__).resolve().parents[2])
            paths = [root, *filter(None, [os.environ.get("PYTHONPATH")])]
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
            self._process = subprocess.Popen(
                [sys.executable, "-m", "digits.engine.twin"],
                stdin=subprocess.PIPE,
                env=env,
            )
            self._process.stdin.write(pickle.dumps(args))
            self._process.stdin.close()
            self._step = 0
            started = time.perf_counter()
            alive = self._alive
            ok = _wait(
                lambda: bool(self._ctl[_READY] or self._ctl[_FAILED]),
                lambda: alive() and time.perf_counter() - started < START_TIMEOUT,
                spin=False,
            )
            if not ok or self._ctl[_FAILED]:
                raise TwinFailed("could not start", self._failure())
        except BaseException:
            self.close()
            raise
        finally:
            self._unlink()  # both sides have mapped the files, or never will

    def start(
        self,
        x: np.ndarray,
        y: np.ndarray,
        masks: list[np.ndarray],
        n_total: int,
        lr: float,
        t: int,
        l2: float,
        momentum: float = 0.0,
    ) -> _Side:
        """Start the twin on its half of a batch of ``n_total`` images: network
        input x (n, ...), labels y (n,) and its rows of the dropout masks, for the
        optimizer's step ``t`` at learning rate ``lr`` (and SGD's ``momentum``);
        ``l2`` is the loss's L2 term. Returns the parent's side of the step (see
        ``_Side``): run the other half with its hooks, then ``losses()``, then
        ``update()``, then :meth:`finish`."""
        n = len(y)
        self._x[:n], self._y[:n] = x, y
        for shared, mask in zip(self._masks, masks, strict=True):
            shared[:n] = mask
        self._ctl[_N], self._ctl[_N_TOTAL], self._ctl[_T] = n, n_total, t
        self._result[_LR], self._result[_L2] = lr, l2
        self._result[_MOMENTUM] = momentum
        self._ctl[_CLAIM] = 0  # the twin is between steps: nobody claims now
        self._step += 1
        self.side.step = self._step
        self._ctl[_GO] = self._step
        return self.side

    def finish(self) -> bool:
        """Wait until the twin is done with the step (it took no more blocks, or
        none at all for a non-finite loss); whether its new weights are finite.

        Raises TwinFailed if the twin raised or died (some weights may then be
        updated and others not).
        """
        self.side._wait(lambda: self._ctl[_UPDATED] == self._step)
        return bool(self._ctl[_FINITE])

    def _failure(self) -> str:
        """Why the twin failed: its exception's text, or how it ended."""
        text = bytes(self._message).rstrip(b"\0").decode("utf-8", "replace")
        process = getattr(self, "_process", None)
        return text or exit_reason(process.poll() if process is not None else None)

    def _alive(self) -> bool:
        return self._process.poll() is None

    def close(self) -> None:
        """Tell the twin to exit and wait briefly for it (killing it if need be)."""
        process = getattr(self, "_process", None)
        if process is not None:
            if hasattr(self, "_ctl"):
                self._ctl[_EXIT] = 1
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
        self._unlink()

    def _unlink(self) -> None:
        for path in self._paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self._paths = []


def _twin_main(
    names, config, optimizer, n_weights, alpha, blocks, max_loss, parent_pid
) -> None:
    """The twin's loop: wait for ``go``, run the half-batch, publishing its loss
    and progress; take blocks of the optimizer step; report; repeat."""
    arrays = {
        key: np.asarray(_map(path, shape, dtype, "r+"))
        for key, (path, shape, dtype) in names.items()
    }
    ctl, message = arrays["ctl"], arrays["message"]
    lock = os.open(names["ctl"][0], os.O_RDWR)
    for path, _, _ in names.values():
        # Mapped, so the names can go now, even if the parent is killed before it
        # gets to unlink them.
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    try:
        from digits.engine.flat import FlatUpdate, share
        from digits.engine.halves import forward_backward, give_masks, second_half
        from digits.engine.system import blas_threads, keep_freed_memory
        from digits.nn.model import Sequential
        from digits.nn.optimizers import OPTIMIZERS

        keep_freed_memory()
        params, grads = arrays["params"], arrays["grads"]
        own_grads = arrays["twin_grads"]
        half = second_half(Sequential.from_config(config))
        share(half, params, own_grads)
        name, settings = optimizer
        opt = OPTIMIZERS[name]([params], [grads], **settings)
        for key, states in opt.state_arrays().items():
            states[0] = arrays[f"optimizer.{key}"]  # the parent fills them
        flat = FlatUpdate(opt, arrays["backup"], n_weights, alpha)
        x, y, result = arrays["x"], arrays["y"], arrays["result"]
        n_masks = sum(key.startswith("mask.") for key in names)
        masks = [arrays[f"mask.{k}"] for k in range(n_masks)]
        parent_alive = lambda: os.getppid() == parent_pid  # noqa: E731
        side = _Side(
            ctl,
            result,
            lock,
            blocks,
            len(config),
            TWIN,
            parent_alive,
            lambda: True,  # the twin's only thread
            _ParentGone,
        )
        ctl[_READY] = 1
        with blas_threads(1):
            while True:
                _wait(
                    lambda: ctl[_GO] > side.step or bool(ctl[_EXIT]),
                    parent_alive,
                    spin=True,
                )
                if ctl[_EXIT] or not parent_alive():
                    break
                side.step = step = int(ctl[_GO])
                n, n_total = int(ctl[_N]), int(ctl[_N_TOTAL])
                opt.lr, opt.t = float(result[_LR]), int(ctl[_T])
                if hasattr(opt, "momentum"):
                    opt.momentum = float(result[_MOMENTUM])
                give_masks(half, masks, slice(0, n))
                try:
                    forward_backward(
                        half, x[:n], y[:n], n_total, side.loss_ready, side.layer_done
                    )
                    # Both sides skip the update if the batch's loss (the same
                    # sum the parent makes) is not finite or exploded; the parent
                    # then stops.
                    finite = True
                    if side.losses()[0] + float(result[_L2]) <= max_loss:
                        finite = side.update(flat, n_total, [own_grads])
                except _ParentGone:
                    break
                ctl[_FINITE] = finite
                ctl[_UPDATED] = step
    except BaseException as exc:  # reported to the parent, which raises it
        text = f"{type(exc).__name__}: {exc}".encode()[: _MESSAGE_BYTES - 1]
        message[: len(text)] = np.frombuffer(text, np.uint8)
        ctl[_FAILED] = 1


if __name__ == "__main__":
    _twin_main(*pickle.load(sys.stdin.buffer))
    # Skip the interpreter's teardown, about 60 ms of freeing objects that the
    # parent, which waits for this exit at the end of every fit, would wait for.
    # Nothing needs it: the shared arrays are mappings, written through already.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
