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
weights' backup and the optimizer's state), the training images and labels, the
half-batch's indices, its loss and a few control words. Per step:

1. the parent writes the indices and bumps ``go``;
2. each side runs forward and backward on its half; the twin bumps ``done``;
3. the parent adds the losses and, if the sum is finite, bumps ``update``;
4. each side takes the optimizer step on its half of the flat arrays, as the
   trainer's two threads do; the twin bumps ``updated``.

The twin is a fresh ``python -m digits.nn.twin``, so nothing of the parent (its
threads, its locks) is inherited, and, unlike multiprocessing's "spawn", it never
re-runs the parent's main script (a learner's script without a ``__main__`` guard
would otherwise train again inside it). Its arguments arrive pickled on its stdin
from its parent (never anything a user supplied). It exits when told to or when its
parent dies.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

SPIN_SECONDS = 0.05  # then sleep in naps of NAP_SECONDS, checking the other side
NAP_SECONDS = 0.0005
START_TIMEOUT = 120.0  # seconds for the twin to import NumPy and build its model

# Control words.
_GO, _DONE, _EXIT, _FAILED, _READY, _N, _N_TOTAL = range(7)
_UPDATE, _UPDATED, _FINITE, _T = range(7, 11)
_N_CONTROL = 11
_LOSS, _CORRECT, _LR = range(3)  # slots of the float64 "result" array
_MESSAGE_BYTES = 4096
_PREFIX = "digits-twin-"  # then the creating process's id, "-", and a random part


class TwinFailed(RuntimeError):
    """The twin process raised or died; the message says what happened."""


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
        if old and pid.isdigit() and not _pid_alive(int(pid)):
            try:
                path.unlink()
                removed.append(str(path))
            except OSError:  # another process's cleanup got there first
                pass
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's process
        return True
    return True


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


class TwinProcess:
    """A process running ``forward_backward`` on the second half of each batch, and
    the optimizer step on the second half of the flat arrays.

    ``config`` and ``seed`` rebuild the same replica a thread would use (the same
    dropout streams), ``aug_seed`` its augmentation stream (None: no augmentation),
    and ``prepare`` (picklable) turns raw rows into network input, as in the trainer.
    ``storage`` names the trainer's flat arrays (params, grads, backup and the
    optimizer's state, see ``Trainer._storage``); ``self.shared`` holds shared ones
    shaped like them, for the trainer to move into. ``optimizer`` is the optimizer's
    class name and ``config()``; ``n_weights`` and ``alpha`` as in ``FlatUpdate``.
    """

    def __init__(
        self,
        config: list[dict],
        storage: dict[str, np.ndarray],
        x: np.ndarray,
        y: np.ndarray,
        batch_size: int,
        prepare: Callable,
        seed: int,
        aug_seed: int | None,
        optimizer: tuple[str, dict],
        n_weights: int,
        alpha: float,
    ) -> None:
        self._paths: list[str] = []
        self.x_source, self.y_source = x, y
        try:
            params = storage["params"]
            specs = {key: (a.shape, a.dtype) for key, a in storage.items()}
            specs.update(
                {
                    "twin_grads": (params.shape, params.dtype),
                    "x": (x.shape, x.dtype),
                    "y": (y.shape, y.dtype),
                    "idx": ((batch_size,), np.int64),
                    "ctl": ((_N_CONTROL,), np.int64),
                    "result": ((3,), np.float64),
                    "message": ((_MESSAGE_BYTES,), np.uint8),
                }
            )
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
            self._idx, self._ctl = arrays["idx"], arrays["ctl"]
            self._result, self._message = arrays["result"], arrays["message"]
            args = (
                names,
                config,
                prepare,
                seed,
                aug_seed,
                optimizer,
                n_weights,
                alpha,
                os.getpid(),
            )
            # The folder holding the digits package, so the child imports this one.
            root = str(Path(__file__).resolve().parents[2])
            paths = [root, *filter(None, [os.environ.get("PYTHONPATH")])]
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
            self._process = subprocess.Popen(
                [sys.executable, "-m", "digits.nn.twin"],
                stdin=subprocess.PIPE,
                env=env,
            )
            self._process.stdin.write(pickle.dumps(args))
            self._process.stdin.close()
            # Filled while the twin starts (it reads them only at the first step).
            arrays["x"][...] = x
            arrays["y"][...] = y
            self._step = 0
            started = time.perf_counter()
            alive = self._alive
            ok = _wait(
                lambda: bool(self._ctl[_READY] or self._ctl[_FAILED]),
                lambda: alive() and time.perf_counter() - started < START_TIMEOUT,
                spin=False,
            )
            if not ok or self._ctl[_FAILED]:
                raise TwinFailed(self._failure("could not start"))
        except BaseException:
            self.close()
            raise
        finally:
            self._unlink()  # both sides have mapped the files, or never will

    def start(self, idx: np.ndarray, n_total: int) -> None:
        """Start the twin on rows ``idx`` of x (a half of ``n_total``); don't wait."""
        self._idx[: len(idx)] = idx
        self._ctl[_N], self._ctl[_N_TOTAL] = len(idx), n_total
        self._step += 1
        self._ctl[_GO] = self._step

    def result(self) -> tuple[float, int]:
        """Wait for the half started last; (loss, n_correct). Its gradients are in
        ``self.grads``. Raises TwinFailed if the twin raised or died."""
        self._await(_DONE)
        return float(self._result[_LOSS]), int(self._result[_CORRECT])

    def update(self, lr: float, t: int) -> None:
        """Let the twin take its half of the optimizer step ``t`` (learning rate
        ``lr``) on the half-batch started last; don't wait."""
        self._result[_LR], self._ctl[_T] = lr, t
        self._ctl[_UPDATE] = self._step

    def updated(self) -> bool:
        """Wait for the twin's half of the step; whether its new weights are finite.

        Raises TwinFailed if the twin raised or died (its half of the weights may
        then be partly updated).
        """
        self._await(_UPDATED)
        return bool(self._ctl[_FINITE])

    def _await(self, word: int) -> None:
        """Wait until control word ``word`` reports the current step."""
        step = self._step
        ok = _wait(lambda: self._ctl[word] == step, self._alive, _may_spin())
        if not ok or self._ctl[_FAILED]:
            raise TwinFailed(self._failure("stopped"))

    def _failure(self, what: str) -> str:
        text = bytes(self._message).rstrip(b"\0").decode("utf-8", "replace")
        process = getattr(self, "_process", None)
        code = process.poll() if process is not None else None
        detail = text or f"its exit code was {code}"
        return f"The second training process {what}: {detail}"

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
        self._unlink()

    def _unlink(self) -> None:
        for path in self._paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self._paths = []


def _twin_main(
    names, config, prepare, seed, aug_seed, optimizer, n_weights, alpha, parent_pid
) -> None:
    """The twin's loop: wait for ``go``, run the half-batch, report; wait for
    ``update``, take its half of the optimizer step, report; repeat."""
    arrays = {
        key: np.asarray(_map(path, shape, dtype, "r+"))
        for key, (path, shape, dtype) in names.items()
    }
    ctl, message = arrays["ctl"], arrays["message"]
    for path, _, _ in names.values():
        # Mapped, so the names can go now, even if the parent is killed before it
        # gets to unlink them.
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    try:
        from digits.nn.model import Sequential
        from digits.nn.optimizers import OPTIMIZERS
        from digits.nn.training import (
            FlatUpdate,
            _forward_backward,
            blas_threads,
            keep_freed_memory,
        )

        keep_freed_memory()
        params, grads, own_grads = (
            arrays["params"],
            arrays["grads"],
            arrays["twin_grads"],
        )
        model = Sequential.from_config(config).replica(seed)
        model.share(params, own_grads)
        name, settings = optimizer
        opt = OPTIMIZERS[name]([params], [grads], **settings)
        opt.share_state(arrays, copy=False)  # the parent fills them
        flat = FlatUpdate(opt, params, grads, arrays["backup"], n_weights, alpha)
        aug = None if aug_seed is None else np.random.default_rng(aug_seed)
        x, y, idx, result = arrays["x"], arrays["y"], arrays["idx"], arrays["result"]
        parent_alive = lambda: os.getppid() == parent_pid  # noqa: E731
        ctl[_READY] = 1
        step = 0
        with blas_threads(1):
            while True:
                _wait(
                    lambda last=step: ctl[_GO] > last or bool(ctl[_EXIT]),
                    parent_alive,
                    spin=True,  # the twin's only thread
                )
                if ctl[_EXIT] or not parent_alive():
                    break
                step = int(ctl[_GO])
                rows = idx[: ctl[_N]]
                n_total = int(ctl[_N_TOTAL])
                loss, correct = _forward_backward(
                    model, prepare(x[rows], aug), y[rows], n_total
                )
                result[_LOSS], result[_CORRECT] = loss, correct
                ctl[_DONE] = step
                # The parent adds the losses; it lets the update go ahead only if
                # the batch's loss is finite (else it stops training).
                _wait(
                    lambda s=step: ctl[_UPDATE] == s or ctl[_GO] > s or ctl[_EXIT],
                    parent_alive,
                    spin=True,
                )
                if ctl[_UPDATE] != step:
                    continue
                opt.lr, opt.t = float(result[_LR]), int(ctl[_T]) - 1
                opt.start_step()
                size = len(params)
                ctl[_FINITE] = flat(n_total, [own_grads], size // 2, size)
                ctl[_UPDATED] = step
    except BaseException as exc:  # reported to the parent, which raises it
        text = f"{type(exc).__name__}: {exc}".encode()[: _MESSAGE_BYTES - 1]
        message[: len(text)] = np.frombuffer(text, np.uint8)
        ctl[_FAILED] = 1
        ctl[_DONE] = ctl[_GO]
        ctl[_UPDATED] = ctl[_GO]


if __name__ == "__main__":
    _twin_main(*pickle.load(sys.stdin.buffer))
