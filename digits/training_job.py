"""A training run in a background thread, with live progress and a Stop button.

The dashboard's Train page keeps one ``TrainingJob`` per browser session in its
session state. The job trains in a daemon thread, so page switches and reruns do
not interrupt it; the thread only writes to the job (under a lock) and never
touches the user interface. The page polls ``snapshot()`` to draw curves, a
progress bar, images/s and the ETA, and ``stop()`` sets a ``threading.Event`` that
``StopOnEvent`` checks between batches (between 4096-image chunks for the MLP).

The thread runs ``digits.store.train_run`` with ``validation_size`` set: the
per-epoch validation curves use a fixed random subset of the test set
(``VALIDATION_SIZE`` images) instead of all of it, so that validating a CNN takes
a fraction of a second and a Stop is never held up by it. The saved run is still
scored on the whole test set. The validation images never steer training (unless
early stopping is on, which holds out part of the training set instead).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from digits import explain, registry, slots, store
from digits.errors import DigitsError
from digits.nn.callbacks import Callback, StopOnEvent

log = logging.getLogger(__name__)

VALIDATION_SIZE = 2000  # test images scored after each epoch for the curves
POINT_SECONDS = 0.25  # record a point of the live training curve this often

# A job's status moves along: pending -> queued -> running -> (stopping ->) saving
# -> one of the final states. A job stopped while queued ends "stopped" with no run.
FINAL = ("done", "stopped", "failed")
# Training runs at a lower CPU priority than the server's other threads, so that
# the pages (a drawing's prediction) stay quick while a model trains.
TRAINING_NICENESS = 10


@dataclass(frozen=True)
class Progress:
    """A consistent copy of a job's state, safe to read while the thread runs.

    points : (epochs done, loss, accuracy), the training curve: the mean loss and
        accuracy of the batches since the previous point, every ``POINT_SECONDS``.
    epochs : one logs dict per finished epoch (with ``val_loss`` and
        ``val_accuracy``).
    """

    status: str
    fraction: float  # of all epochs' batches done, 0..1
    epoch: int  # the epoch in progress, 1-based
    max_epochs: int
    images_per_second: float
    elapsed: float  # seconds since training started
    eta: float | None  # seconds left, None until there is a rate to go by
    points: list[tuple[float, float, float]]
    epochs: list[dict]
    run: store.Run | None  # the saved run, once there is one
    error: str | None  # for the user, when status is "failed"
    # Seconds that training went on after stop(): until the end of the batch it
    # was in (0 if it came between batches, or after the last one).
    stop_latency: float | None
    # While queued: 1 for the next job to start, 2 after it, ...; else None.
    queue_position: int | None = None
    # Per-layer training health of a NumPy model (explain.TrainingHealth.rows);
    # empty for the scikit-learn MLP.
    health: list[dict] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.status in FINAL


@dataclass
class _State:
    status: str = "pending"
    fraction: float = 0.0
    epoch: int = 0
    images_per_second: float = 0.0
    started: float | None = None
    ended: float | None = None
    points: list = field(default_factory=list)
    epochs: list = field(default_factory=list)
    run: store.Run | None = None
    error: str | None = None
    stop_requested: float | None = None
    last_batch: float | None = None  # when the last batch ended
    train_ended: float | None = None  # when the training loop returned


class _Recorder(Callback):
    """Copies the training loop's logs into the job's state.

    Batch logs carry the running mean of the epoch so far, which jumps back up at
    each new epoch. A point of the live curve is instead the mean over the
    batches since the previous point: from running means m1 after b1 batches and
    m2 after b2, that is (m2 * b2 - m1 * b1) / (b2 - b1) (exact while batches are
    of equal size).
    """

    def __init__(self, job: TrainingJob) -> None:
        self.job = job
        self._last_point = 0.0
        self._previous: tuple[int, int, float, float] | None = None  # e, b, m, acc

    def _window(self, logs: dict) -> tuple[float, float]:
        """Mean loss and accuracy of the batches since the previous point."""
        epoch, batch = int(logs["epoch"]), int(logs["batch"])
        loss, accuracy = float(logs["loss"]), float(logs["accuracy"])
        previous, self._previous = self._previous, (epoch, batch, loss, accuracy)
        if previous is None or previous[0] != epoch or previous[1] >= batch:
            return loss, accuracy
        _, b1, m1, a1 = previous
        return (
            (loss * batch - m1 * b1) / (batch - b1),
            (accuracy * batch - a1 * b1) / (batch - b1),
        )

    def on_batch_end(self, step, logs):
        now = time.perf_counter()
        done = logs["epoch"] + logs["batch"] / logs["batches"]
        due = now - self._last_point >= POINT_SECONDS
        point = self._window(logs) if due or logs["batch"] == logs["batches"] else None
        with self.job._lock:
            state = self.job._state
            state.last_batch = now
            state.epoch = int(logs["epoch"]) + 1
            state.fraction = min(1.0, done / self.job.max_epochs)
            state.images_per_second = float(logs["images_per_second"])
            if point is not None:
                state.points.append((done, *point))
                self._last_point = now

    def on_epoch_end(self, epoch, logs):
        with self.job._lock:
            self.job._state.epochs.append(dict(logs))

    def on_train_end(self, logs=None):
        with self.job._lock:
            self.job._state.train_ended = time.perf_counter()
            self.job._state.status = "saving"  # train_run now scores and saves


class TrainingJob:
    """Train a ``kind`` model on ``dataset`` in a background thread; save it as a run.

    params : hyperparameters on top of the kind's defaults (see ``registry``).
    train_size : train on a random subset of this many images (None: all).
    name : the run's name (default: time-kind-dataset).
    """

    def __init__(
        self,
        kind: str,
        dataset,
        params: Mapping[str, Any] | None = None,
        *,
        train_size: int | None = None,
        name: str | None = None,
        validation_size: int = VALIDATION_SIZE,
    ) -> None:
        self.kind = kind
        self.spec = registry.get(kind)
        self.dataset = dataset
        # Refused here, in the caller's thread, rather than later in the worker.
        self.params = self.spec.params(**dict(params or {}))
        self.max_epochs = int(self.params.get("max_iter", 1))
        self.train_size = train_size
        self.name = name
        self.validation_size = validation_size
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._state = _State()
        self._health = explain.TrainingHealth()
        self._thread: threading.Thread | None = None
        self._slots = slots.shared()
        self._ticket = self._slots.ticket()

    def __repr__(self) -> str:
        return f"TrainingJob({self.kind!r}, {self.dataset.name!r}, {self.status})"

    # -- control ----------------------------------------------------------------

    def start(self) -> TrainingJob:
        """Start the job in a daemon thread; returns self.

        The job first waits for a training slot (status "queued", see
        ``digits.slots``), then trains (status "running").
        """
        if self._thread is not None:
            raise RuntimeError("This training job has already been started.")
        with self._lock:
            self._state.status = "queued"
        self._thread = threading.Thread(
            target=self._run, name=f"digits-train-{self.kind}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ask training to stop after the current batch; the model is still saved."""
        with self._lock:
            if self._state.status in FINAL or self._stop.is_set():
                return
            self._state.stop_requested = time.perf_counter()
            if self._state.status in ("queued", "running"):
                self._state.status = "stopping"
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end; True if it has."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.status in FINAL

    @property
    def status(self) -> str:
        with self._lock:
            return self._state.status

    def snapshot(self) -> Progress:
        """The job's state now (see ``Progress``)."""
        with self._lock:
            s = self._state
            now = s.ended or time.perf_counter()
            elapsed = now - s.started if s.started is not None else 0.0
            eta = None  # unknown: before the first batch, or while saving
            if s.status in FINAL:
                eta = 0.0
            elif s.status == "running" and 0 < s.fraction < 1:
                eta = elapsed * (1 - s.fraction) / s.fraction
            latency = None
            if s.stop_requested is not None and s.train_ended is not None:
                last = s.last_batch if s.last_batch is not None else s.stop_requested
                latency = max(0.0, last - s.stop_requested)
            return Progress(
                status=s.status,
                fraction=s.fraction,
                epoch=max(1, s.epoch),
                max_epochs=self.max_epochs,
                images_per_second=s.images_per_second,
                elapsed=elapsed,
                eta=eta,
                points=list(s.points),
                epochs=[dict(e) for e in s.epochs],
                run=s.run,
                error=s.error,
                stop_latency=latency,
                queue_position=(
                    self._slots.position(self._ticket)
                    if s.status in ("queued", "stopping") and s.started is None
                    else None
                ),
                health=self._health.rows(),
            )

    # -- the thread -------------------------------------------------------------

    def _set(self, **changes) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(self._state, key, value)

    def _run(self) -> None:
        with self._slots.slot(self._ticket, self._stop) as got:
            if not got:  # stopped while waiting in the queue
                self._set(status="stopped", ended=time.perf_counter())
                return
            with self._lock:
                if self._state.status == "queued":
                    self._state.status = "running"
                self._state.started = time.perf_counter()
            _lower_priority(TRAINING_NICENESS)
            self._train()

    def _train(self) -> None:
        try:
            run = self._train_and_save()
        except DigitsError as err:
            self._set(status="failed", error=str(err), ended=time.perf_counter())
        except Exception as err:
            if _exiting(err):
                # The server is shutting down under the job (Ctrl-C in its terminal):
                # nobody is left to show it to, and a traceback would only alarm.
                self._set(status="stopped", ended=time.perf_counter())
                return
            # Not the user's doing; the full traceback goes to the server's log.
            log.exception("Training job %r failed", self)
            self._set(
                status="failed",
                error=f"Training failed unexpectedly ({type(err).__name__}: {err}). "
                "The details are in the server's log; try other settings.",
                ended=time.perf_counter(),
            )
        else:
            final = "stopped" if self._stop.is_set() else "done"
            self._set(status=final, run=run, ended=time.perf_counter())

    def _train_and_save(self) -> store.Run:
        return store.train_run(
            self.kind,
            self.dataset,
            params=self.params,
            callbacks=[_Recorder(self), StopOnEvent(self._stop), self._health],
            train_size=self.train_size,
            validation_size=self.validation_size,
            name=self.name,
            command="dashboard",
        )


def _exiting(err: Exception) -> bool:
    """Whether ``err`` is the interpreter's exit catching up with a training thread:
    once exit begins, the thread pool that runs half of each batch refuses work
    ("after interpreter shutdown", or "after shutdown" once its worker has ended)."""
    return isinstance(err, RuntimeError) and "cannot schedule new futures" in str(err)


def _lower_priority(niceness: int) -> None:
    """Raise the calling thread's nice value by ``niceness`` (at most 19).

    On Linux the nice value belongs to the thread, and threads it starts (the
    trainer's half-batch worker) inherit it; elsewhere this does nothing.
    """
    try:
        tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + niceness))
    except (AttributeError, OSError):
        pass  # no per-thread priorities here: train at the normal one
