"""A training run in a background thread, with live progress and a Stop button.

The dashboard's Train page keeps one ``TrainingJob`` per browser tab, in the
process-wide ``digits.jobs.JobRegistry``, so a reload finds it again. It is a
``digits.jobs.BackgroundJob``: it waits for a training slot, then trains in a
daemon thread, so page switches, reruns and reloads do not interrupt it. The
page polls ``snapshot()`` to draw curves, a progress bar, images/s and the ETA,
and ``stop()`` sets a ``threading.Event`` that ``StopOnEvent`` checks between
batches (between 4096-image chunks for the MLP).

The thread runs ``digits.training.train_run`` with ``validation_size`` set: the
per-epoch validation curves use a fixed subset (``VALIDATION_SIZE`` images) of
the dataset's validation split, held out of the training images, so that
validating a CNN takes a fraction of a second and a Stop is never held up by it.
The test images are scored once, on the saved run.

With a Dask scheduler configured (``digits.cluster``), the job trains on a
worker instead of in its thread: the thread still waits in line, then follows
the worker's progress, passes on Stop, Pause and new settings, and places the
run the worker sends back in this machine's run store.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from digits import calibrate, cluster, data, explain, registry, store
from digits.errors import DigitsError
from digits.estimator import CNNClassifier
from digits.jobs import FINAL, BackgroundJob, JobProgress
from digits.nn.callbacks import Callback, Steering, StopOnEvent
from digits.training import VALIDATION_SIZE, plan, train_run, validation_images

POINT_SECONDS = 0.25  # record a point of the live training curve this often
# Look inside the network this often (its first filters and the probe digit
# through every layer): a copy of a few kernels and one image's forward pass,
# a few milliseconds every few seconds (benchmarks/live_views.py).
LIVE_SECONDS = 2.0
MAX_MISTAKES = 12  # validation images the model still gets wrong, shown per epoch
# Training runs at a lower CPU priority than the server's other threads, so that
# the pages (a drawing's prediction) stay quick while a model trains.
TRAINING_NICENESS = 10


@dataclass(frozen=True, kw_only=True)
class Progress(JobProgress):
    """A consistent copy of a job's state, safe to read while the thread runs.

    points : (epochs done, loss, accuracy), the training curve: the mean loss and
        accuracy of the batches since the previous point, every ``POINT_SECONDS``.
    epochs : one logs dict per finished epoch (with ``val_loss`` and
        ``val_accuracy``).
    """

    fraction: float  # of all epochs' batches done, 0..1
    epoch: int  # the epoch in progress, 1-based
    max_epochs: int
    images_per_second: float
    eta: float | None  # seconds left, None until there is a rate to go by
    points: list[tuple[float, float, float]]
    epochs: list[dict]
    run: store.Run | None  # the saved run, once there is one
    # Seconds that training went on after stop(): until the end of the batch it
    # was in (0 if it came between batches, or after the last one).
    stop_latency: float | None
    # Per-layer training health of a NumPy model (explain.TrainingHealth.rows);
    # empty for the scikit-learn MLP.
    health: list[dict] = field(default_factory=list)
    # Seconds per epoch (training and validation): the probe's estimate before
    # training, then corrected from the real batches (calibrate.EpochClock);
    # epoch_measured says whether real batches went into it.
    epoch_seconds: float | None = None
    epoch_measured: bool = False
    paused: bool = False  # held between two batches now
    pausing: bool = False  # asked to pause, finishing the batch it is in
    # Settings changed by hand: (epochs done when it took effect, words).
    changes: list[tuple[float, str]] = field(default_factory=list)
    live: LiveView | None = None  # inside the network, for the NumPy networks
    # Something the learner should know that is not an error (a job that started
    # again on another computer of the cluster).
    notice: str | None = None
    # Why a job meant for the Dask cluster trains here instead, in the words of
    # whoever runs the cluster (digits.cluster.SchedulerLost); None if it does not.
    fallback: str | None = None


@dataclass(frozen=True)
class LiveView:
    """A look inside the network while it trains (``_Watcher``).

    at : epochs done when the look was taken.
    filters : (n, k, k) the first conv layer's kernels, or None without conv layers.
    probe : the probe digit (h, w) as given; ``probe_source`` says which it is.
    layers : the probe's activations, layer by layer (``explain.strip_layers``).
    probabilities : (K,) the model's class probabilities for the probe.
    mistakes : up to ``MAX_MISTAKES`` validation images (n, h, w) the model got
        wrong after the last finished epoch (``mistakes_epoch``, 1-based), with its
        guesses and the true labels, as class indices (n,).
    """

    at: float
    filters: np.ndarray | None
    probe: np.ndarray
    probe_source: str
    layers: list
    probabilities: np.ndarray
    mistakes: np.ndarray | None = None
    guesses: np.ndarray | None = None
    truths: np.ndarray | None = None
    mistakes_epoch: int = 0


@dataclass
class _State:
    """What training adds to a job's state (written under the job's lock)."""

    fraction: float = 0.0
    epoch: int = 0
    images_per_second: float = 0.0
    points: list = field(default_factory=list)
    epochs: list = field(default_factory=list)
    run: store.Run | None = None
    last_batch: float | None = None  # when the last batch ended
    train_ended: float | None = None  # when the training loop returned
    batches: int = 0  # per epoch, once the first batch has ended
    live: LiveView | None = None


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
            state.batches = int(logs["batches"])
            if point is not None:
                state.points.append((done, *point))
                self._last_point = now

    def on_epoch_end(self, epoch, logs):
        with self.job._lock:
            self.job._state.epochs.append(dict(logs))

    def on_train_end(self, logs=None):
        with self.job._lock:
            self.job._state.train_ended = time.perf_counter()
            self.job._status = "saving"  # train_run now scores and saves


class _Watcher(Callback):
    """Looks inside the network every ``LIVE_SECONDS`` (between two batches, in
    the training thread, so the weights are those of a whole batch): copies the
    first conv layer's kernels and runs the probe digit through a replica of the
    network (``explain.activations``). After each epoch, it picks the validation
    images the model got wrong from the estimator's validation guesses, which
    cost nothing more to get. NumPy networks only (the estimator has a
    ``model_``)."""

    def __init__(self, job: TrainingJob, probe: np.ndarray, source: str) -> None:
        self.job, self.probe, self.source = job, probe, source
        self.estimator = None
        self._last = -np.inf
        self._mistakes: tuple = (None, None, None, 0)

    def set_estimator(self, estimator) -> None:
        self.estimator = estimator

    def on_batch_end(self, step, logs):
        now = time.perf_counter()
        if self.model is None or now - self._last < LIVE_SECONDS:
            return
        self._last = now
        self._look(logs["epoch"] + logs["batch"] / logs["batches"])

    def on_epoch_end(self, epoch, logs):
        guesses = getattr(self.estimator, "validation_predictions_", None)
        if self.model is None or guesses is None:
            return
        x, y = self.job._validation
        wrong = np.flatnonzero(guesses != y)[:MAX_MISTAKES]
        self._mistakes = (x[wrong], guesses[wrong], y[wrong], epoch + 1)
        self._look(float(epoch + 1))

    def _look(self, at: float) -> None:
        est = self.estimator
        filters = next(iter(explain.conv_filters(est).values()), None)
        outputs = explain.activations(est, self.probe)
        logits = outputs[-1].values.astype(np.float64)
        p = np.exp(logits - logits.max())
        mistakes, guesses, truths, epoch = self._mistakes
        view = LiveView(
            at=at,
            filters=None if filters is None else filters[:, 0],
            probe=self.probe,
            probe_source=self.source,
            layers=explain.strip_layers(outputs),
            probabilities=p / p.sum(),
            mistakes=mistakes,
            guesses=guesses,
            truths=truths,
            mistakes_epoch=epoch,
        )
        with self.job._lock:
            self.job._state.live = view


class TrainingJob(BackgroundJob):
    """Train a ``kind`` model on ``dataset`` in a background thread; save it as a run.

    params : hyperparameters on top of the kind's defaults (see ``registry``).
    train_size : train on a random subset of this many images (None: all).
    name : the run's name (default: time-kind-dataset).
    probe : the image (h, w) to follow through the network as it trains (the
        learner's drawing, preprocessed); None: the first validation image.
    live : whether to take the views inside the network (``LiveView``); off
        to measure what they cost (benchmarks/live_views.py), and on the command
        line, which does not show them.
    preset, command : recorded in the run's metadata (``params`` already has
        the preset's values); the command line that trained it.

    ``pause()``, ``resume()``, ``set_learning_rate()`` and ``set_momentum()`` steer
    a NumPy network's training between batches (``steerable``).
    """

    noun = "training job"
    unexpected = (
        "Training failed unexpectedly ({error}). The details are in the server's "
        "log; try other settings."
    )
    niceness = TRAINING_NICENESS

    def __init__(
        self,
        kind: str,
        dataset,
        params: Mapping[str, Any] | None = None,
        *,
        train_size: int | None = None,
        name: str | None = None,
        validation_size: int = VALIDATION_SIZE,
        probe: np.ndarray | None = None,
        live: bool = True,
        clock: tuple[float, float] | None = None,
        preset: str | None = None,
        command: str = "dashboard",
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
        self.preset, self.command = preset, command  # for the run's metadata
        self._state = _State()
        self._health = explain.TrainingHealth()
        # (estimate, validation seconds): the server's, for a job on a worker.
        self._clock = (
            calibrate.EpochClock(*clock) if clock is not None else self._epoch_clock()
        )
        self._steering = Steering()
        self._asked: list[tuple[str, float]] = []  # settings, for a worker
        self._remote: Progress | None = None  # a worker's last snapshot
        self._notice: str | None = None  # for the learner (Progress.notice)
        self._fallback: str | None = None  # Progress.fallback
        self._wake = threading.Event()  # a control changed: send it to the worker
        self._probe, self._live = probe, live
        self._out: Path | None = None  # the run's folder, on a worker
        # The validation images the curves use (plan's rule: the same for every
        # seed), for the strip of images the model still gets wrong.
        val = plan(dataset, train_size, validation_size).validation
        self._validation = (dataset.x_train[val], dataset.y_train[val])
        # Steering and the views inside are for the NumPy networks, whose loop
        # and layers are ours (not scikit-learn's MLP).
        self.steerable = isinstance(self.spec.build(), CNNClassifier)
        if probe is not None and probe.shape == dataset.x_train.shape[1:]:
            source = "your last drawing"
            image = probe
        elif len(val):
            label = dataset.class_names[int(dataset.y_train[val[0]])]
            source = f"the first validation image (a {label})"
            image = dataset.x_train[val[0]]
        else:
            source, image = "the first training image", dataset.x_train[0]
        self._watcher = _Watcher(self, image, source) if live else Callback()
        super().__init__(f"digits-train-{kind}")
        self._slots.expect(self._ticket, self._clock.seconds * self.max_epochs)

    # -- steering, from the page ------------------------------------------------

    def pause(self) -> None:
        """Hold training after the batch it is in, until ``resume()``."""
        self._steering.pause()
        self._wake.set()

    def resume(self) -> None:
        self._steering.resume()
        self._wake.set()

    def stop(self) -> None:
        super().stop()
        self._steering.resume()  # a paused job must wake to stop
        self._wake.set()

    def set_learning_rate(self, lr: float) -> None:
        """Train at ``lr`` from the next batch, for the rest of the run."""
        self._steering.set_learning_rate(lr)
        self._asked.append(("learning_rate", float(lr)))
        self._wake.set()

    def set_momentum(self, momentum: float) -> None:
        """SGD's momentum, from the next batch."""
        self._steering.set_momentum(momentum)
        self._asked.append(("momentum", float(momentum)))
        self._wake.set()

    def _epoch_clock(self) -> calibrate.EpochClock:
        """The time per epoch, from the probe (the Train page has just run it for
        these settings, so it is cached) until real batches correct it."""
        ds = self.dataset
        pool = len(data.validation_split(ds).train)
        n_train = min(self.train_size or pool, pool)
        return calibrate.epoch_clock(
            self.kind,
            self.params,
            n_train,
            n_validation=validation_images(ds, self.validation_size),
            image_shape=tuple(ds.x_train.shape[1:]),
            n_classes=len(ds.class_names),
        )

    def __repr__(self) -> str:
        return f"TrainingJob({self.kind!r}, {self.dataset.name!r}, {self.status})"

    def snapshot(self) -> Progress:
        """The job's state now (see ``Progress``)."""
        with self._lock:
            s, stopped_at = self._state, self._stop_requested
            elapsed = self._elapsed()
            eta = None  # unknown: before the first batch, or while saving
            if self._status in FINAL:
                eta = 0.0
            elif self._status == "running" and 0 < s.fraction < 1:
                eta = elapsed * (1 - s.fraction) / s.fraction
            latency = None
            if stopped_at is not None and s.train_ended is not None:
                last = s.last_batch if s.last_batch is not None else stopped_at
                latency = max(0.0, last - stopped_at)
            progress = Progress(
                status=self._status,
                fraction=s.fraction,
                epoch=max(1, s.epoch),
                max_epochs=self.max_epochs,
                images_per_second=s.images_per_second,
                elapsed=elapsed,
                eta=eta,
                points=list(s.points),
                epochs=[dict(e) for e in s.epochs],
                run=s.run,
                error=self._error,
                stop_latency=latency,
                queue_position=self._queue_position(),
                health=self._health.rows(),
                epoch_seconds=self._clock.seconds,
                epoch_measured=self._clock.corrected,
                paused=self._steering.holding and self._status == "running",
                pausing=self._steering.paused
                and not self._steering.holding
                and self._status == "running",
                changes=[
                    (c["step"] / max(s.batches, 1), _described(c))
                    for c in list(self._steering.changes)
                ],
                live=s.live,
                queue_wait=self._queue_wait(),
                notice=self._notice,
                fallback=self._fallback,
            )
            if self._remote is not None:
                return self._on_worker(progress)
            return progress

    # -- the thread -------------------------------------------------------------

    def _on_worker(self, here: Progress) -> Progress:
        """The worker's last snapshot, with what only this side knows: the job's
        status once it ends or is being stopped, its error, the saved run, and
        the time since it got its slot. Under the lock."""
        remote = self._remote
        status = here.status
        if status == "running" and remote.status == "saving":
            status = "saving"
        return dataclasses.replace(
            remote,
            status=status,
            error=here.error,
            run=here.run,
            elapsed=here.elapsed,
            eta=0.0 if here.finished else remote.eta,
            queue_position=None,
            queue_wait=None,
        )

    def _work(self) -> str:
        # A job on a worker trains there, even if that worker's environment names
        # the scheduler too.
        dask_client = cluster.client() if self._out is None else None
        if dask_client is not None:
            try:
                return self._work_on(dask_client)
            except cluster.SchedulerLost as lost:
                with self._lock:  # what follows is this machine's progress
                    self._remote, self._notice = None, None
                    self._fallback = str(lost)
        run = self._train_and_save()
        with self._lock:
            self._state.run = run
        return "stopped" if self._stop.is_set() else "done"

    def run_here(self, out: Path) -> tuple[str, str | None, store.Run | None]:
        """Train in this thread (a Dask worker's), saving the run to ``out``;
        return the final status, the error for the user, and the run (if any was
        saved, which a diverged model's also is)."""
        self._out = out
        self._slots.release(self._ticket)  # a worker's job never waits in its line
        self._execute()
        with self._lock:
            run = self._state.run
        if run is None and out.is_dir():
            run = store.open_run(out, allow_paths=True)  # saved, then failed
        return self.status, self._error, run

    def _work_on(self, dask_client) -> str:
        """Train on the Dask cluster (``cluster.run_remote``) and place the run
        it sends back in this machine's run store."""
        stem = Path(self.dataset.name).stem
        name = self.name or f"{datetime.now():%Y%m%d-%H%M%S}-{self.kind}-{stem}"
        settings = {
            "kind": self.kind,
            "params": self.params,
            "train_size": self.train_size,
            "name": name,
            "validation_size": self.validation_size,
            "probe": self._probe,
            "live": self._live,
            "clock": (self._clock.seconds, self._clock.validation_seconds),
            "preset": self.preset,
            "command": self.command,
        }
        result = cluster.run_remote(
            settings,
            self.dataset,
            self._controls,
            self._on_progress,
            dask_client=dask_client,
            wake=self._wake,
        )
        if result["run"] is not None:
            run = store.receive_run(result["run"], name)
            with self._lock:
                self._state.run = run
        if result["status"] == "failed":
            raise DigitsError(result["error"])
        return result["status"]

    def _controls(self) -> cluster.Controls:
        return cluster.Controls(
            stop=self._stop.is_set(),
            paused=self._steering.paused,
            settings=list(self._asked),
        )

    def _on_progress(self, snapshot: Progress, attempt: int) -> None:
        notice = None
        if attempt > 1:
            notice = (
                "The computer training this model stopped, so the cluster started "
                f"it again from the beginning on another (attempt {attempt})."
            )
        with self._lock:
            self._remote = dataclasses.replace(snapshot, notice=notice)

    def _train_and_save(self) -> store.Run:
        out = self._out
        return train_run(
            self.kind,
            self.dataset,
            params=self.params,
            callbacks=[
                _Recorder(self),
                StopOnEvent(self._stop),
                self._health,
                self._clock,
                self._watcher,
                self._steering,  # last: a pause holds after the others ran
            ],
            train_size=self.train_size,
            validation_size=self.validation_size,
            name=None if out is not None else self.name,
            out=out,
            preset=self.preset,
            command=self.command,
        )


def _described(change: dict) -> str:
    """A change of ``Steering.changes`` in words: "learning rate 0.001"."""
    ((name, value),) = ((k, v) for k, v in change.items() if k != "step")
    return f"{name.replace('_', ' ')} {value:g}"
