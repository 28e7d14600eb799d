"""Training on a Dask cluster: where a training job runs when a scheduler is set.

With ``$DIGITS_SCHEDULER`` set (``tcp://HOST:PORT``), the dashboard's training
jobs and ``digits train`` run on that cluster's workers, and the server only
draws pages and predicts::

    dask scheduler --host 10.0.0.5            # on one machine
    dask worker tcp://10.0.0.5:8786 --nworkers 1 --nthreads 1   # on each
    DIGITS_SCHEDULER=tcp://10.0.0.5:8786 digits app

A worker runs one training job per thread; a CNN job keeps two cores busy, so
give a worker one thread per two cores. Without a scheduler (or without Dask,
which a plain install lacks) jobs train in the server's own threads as before.

How a job talks to its worker (``run_remote``): the server submits
``train_on_worker`` with the job's settings and the dataset (sent to the cluster
once, ``dataset_future``). On the worker it builds the same ``TrainingJob`` as a
local one, and every ``REPORT_SECONDS`` a thread there publishes the job's
snapshot in a Dask ``Variable`` and reads the server's controls (Stop, Pause,
Resume, a new learning rate or momentum) from another. The worker saves the
finished run to its own temporary folder and returns its files' bytes; the
server checks them and places the run in its run store in one step
(``store.receive_run``), so a run whose worker dies is never listed half-written.

Faults: if a worker dies mid-job, Dask runs the job again on another worker (its
``allowed-failures``, 3 by default, then ``KilledWorker``); the page shows the
new attempt's progress from the start. If the scheduler cannot be reached, or
cannot load a job (digits missing there, or another version),
``client()`` returns None with a notice (``notice()``) and training falls back to
this machine; it tries the cluster again after ``RETRY_SECONDS``. So does a job
on a cluster left with no workers for ``NO_WORKERS_SECONDS`` (a worker without
digits closes itself when given a job).

Trust: Dask's protocol pickles what it sends, so the scheduler and workers must
be trusted machines on a private network (or use Dask's TLS; see the README).
The run files a worker sends back are checked like any other run's: no model
file is unpickled.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from digits import slots, store
from digits.errors import DigitsError
from digits.jobs import lower_priority

log = logging.getLogger(__name__)

SCHEDULER_ENV = "DIGITS_SCHEDULER"
CONNECT_SECONDS = 5  # to wait for the scheduler before training here instead
RETRY_SECONDS = 30  # after a failed connection, before trying again
REPORT_SECONDS = 0.25  # how often a worker publishes progress and reads controls
CAPACITY_SECONDS = 2.0  # how long the count of worker threads is trusted
# A job waits this long on a cluster with no workers before it trains here: a
# worker restarted by its nanny is back within seconds, but one that cannot
# load digits' jobs (digits missing on its machine) closes itself for good.
NO_WORKERS_SECONDS = 30.0


def address() -> str | None:
    """The scheduler address in ``$DIGITS_SCHEDULER``, or None (train here)."""
    value = os.environ.get(SCHEDULER_ENV, "").strip()
    return value or None


@dataclass
class _Connection:
    """The process's client for one address, or why there is none."""

    address: str
    client: Any = None  # a distributed.Client once connected
    notice: str | None = None  # why jobs train here instead
    failed_at: float = -float("inf")
    threads: tuple[float, int] = (-float("inf"), 0)  # (when counted, count)
    counting: bool = False  # a thread is counting them now
    datasets: dict = field(default_factory=dict)  # checksum -> Future


# _lock guards _connection and is only ever held for a moment: pages read it.
# _connecting lets one thread at a time wait for a scheduler, outside _lock.
_lock = threading.Lock()
_connecting = threading.Lock()
_connection: _Connection | None = None


def _current(wanted: str | None) -> _Connection | None:
    """The connection for ``wanted`` (made anew for a new address). Under _lock."""
    global _connection
    if wanted is None:
        _connection = None
    elif _connection is None or _connection.address != wanted:
        _connection = _Connection(wanted)
    return _connection


def client():
    """The Dask client for ``$DIGITS_SCHEDULER``, connected once per process;
    None when no scheduler is set or it cannot be reached (then ``notice()`` says
    why, and a later call tries again after ``RETRY_SECONDS``). May wait up to
    ``CONNECT_SECONDS``: call it from a job's thread, never while drawing a page
    (``connected()`` is for pages)."""
    wanted = address()
    with _connecting:
        with _lock:
            conn = _current(wanted)
            if conn is None:
                return None
            lost = None
            resting = time.monotonic() - conn.failed_at < RETRY_SECONDS
            if conn.client is not None:
                if conn.client.status == "running":
                    if resting:  # it could not load a job (_unusable)
                        return None
                    conn.notice = None  # tried again
                    return conn.client
                # The scheduler went away: let this client go, connect afresh.
                lost, conn.client, conn.failed_at = conn.client, None, -float("inf")
                resting = False
            if resting:
                return None
        if lost is not None:
            _close(lost)
        try:
            fresh = _connect(wanted)
            threads = _count_threads(fresh)
        except DigitsError as err:
            with _lock:
                conn.notice, conn.failed_at = str(err), time.monotonic()
            log.warning("%s", err)
            return None
        with _lock:
            conn.client, conn.notice = fresh, None
            conn.threads = (time.monotonic(), threads)
            conn.datasets.clear()
    # From now on the line of training jobs is as long as the cluster is wide.
    slots.shared().use_capacity(capacity)
    return fresh


def _close(dask_client) -> None:
    """Close a client whose scheduler may be gone, without waiting long."""
    try:
        dask_client.close(timeout=1)
    except Exception:
        log.debug("could not close the Dask client", exc_info=True)


def _connect(wanted: str):
    try:
        from dask.distributed import Client
    except ImportError as err:
        raise DigitsError(
            f"{SCHEDULER_ENV} is set to {wanted}, but Dask is not installed "
            f"({err}), so models train on this machine. Install it with "
            "pip install 'digits[cluster]', or unset the variable."
        ) from None
    try:
        return Client(wanted, timeout=CONNECT_SECONDS, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as err:
        raise DigitsError(
            f"Cannot reach the Dask scheduler at {wanted} ({err}), so models train "
            f"on this machine for now. Check that `dask scheduler` runs there and "
            f"that {SCHEDULER_ENV} has its address (e.g. tcp://10.0.0.5:8786)."
        ) from None


def _count_threads(dask_client) -> int:
    """The cluster's worker threads (a call to the scheduler)."""
    try:
        return sum(dask_client.nthreads().values())
    except Exception as err:  # gone between connecting and counting
        raise DigitsError(f"The Dask scheduler stopped answering ({err}).") from None


def connected() -> bool:
    """Whether jobs go to a cluster now, without trying to connect (for pages,
    which must never wait for a scheduler)."""
    with _lock:
        conn = _connection
    return (
        conn is not None
        and conn.client is not None
        and conn.client.status == "running"
        and time.monotonic() - conn.failed_at >= RETRY_SECONDS
    )


def notice() -> str | None:
    """Why training runs here although a scheduler is set; None if it does not."""
    with _lock:
        return _connection.notice if _connection is not None else None


def capacity() -> int:
    """How many jobs the cluster runs at once: its workers' threads, or this
    machine's slots without a cluster. Never waits: the count is refreshed in
    the background when older than ``CAPACITY_SECONDS`` (the line asks often,
    under its lock)."""
    with _lock:
        conn = _connection
        if conn is None or conn.client is None:
            return slots.default_capacity()
        threads = _counted(conn)
    return max(1, threads)


def _counted(conn: _Connection) -> int:
    """The cluster's worker threads as last counted; recounted in the background
    when the count is older than ``CAPACITY_SECONDS``. Call under ``_lock``."""
    counted, threads = conn.threads
    if time.monotonic() - counted > CAPACITY_SECONDS and not conn.counting:
        conn.counting = True
        threading.Thread(
            target=_recount, args=(conn,), name="digits-cluster-count", daemon=True
        ).start()
    return threads


def _recount(conn: _Connection) -> None:
    try:
        threads = _count_threads(conn.client)
    except DigitsError:
        threads = conn.threads[1]  # the scheduler went away: the last count will do
    with _lock:
        conn.threads, conn.counting = (time.monotonic(), threads), False
    # Outside _lock: the line calls capacity() under its own lock.
    slots.shared().use_capacity(capacity)  # wakes the line to look again


def dataset_future(dask_client, ds):
    """``ds`` on the cluster, sent once per dataset (by checksum) and client.

    It is a task's result, not scattered data: if the worker holding it dies, the
    scheduler still has the task and makes it again on another worker, where
    the job that Dask moves there finds it.
    """
    key = (ds.name, ds.checksum)
    with _lock:
        conn = _connection
        cache = conn.datasets if conn is not None and conn.client is dask_client else {}
        future = cache.get(key)
    if future is None or future.status in ("error", "cancelled"):
        name = f"digits-dataset-{ds.checksum[:16]}-{uuid.uuid4().hex}"
        with warnings.catch_warnings():
            # Dask warns of a large task: this one is, once per dataset. Sent
            # outside _lock, as it takes a moment.
            warnings.filterwarnings("ignore", "Sending large graph")
            future = dask_client.submit(_dataset, ds, key=name)
        with _lock:
            cache[key] = future
    return future


def _dataset(ds):
    """The task that holds a dataset on the cluster (``dataset_future``)."""
    return ds


# -- one job ------------------------------------------------------------------------


class SchedulerLost(DigitsError):
    """The scheduler went away while a job ran there, the cluster cannot load
    digits' jobs at all, or it has no workers (the job may train here)."""


@dataclass
class Controls:
    """What the server asks of a job on a worker (written by the server only)."""

    stop: bool = False
    paused: bool = False
    # ("learning_rate" or "momentum", value), in the order asked; the worker
    # applies the ones it has not applied yet.
    settings: list = field(default_factory=list)


def run_remote(
    settings: dict,
    ds,
    controls: Callable[[], Controls],
    on_progress: Callable[[Any], None],
    *,
    dask_client,
    wake: threading.Event | None = None,
) -> dict:
    """Run ``train_on_worker(settings, ds)`` on the cluster; return its result.

    While it runs, ``controls()`` is sent to the worker whenever it changes and
    every snapshot the worker publishes goes to ``on_progress(snapshot,
    attempt)``, where ``attempt`` counts from 1 and grows when Dask starts the
    job again on another worker. ``wake`` set (by Stop) sends the controls at
    once; Stop also sets a Dask ``Event`` that the worker waits on, so that it
    learns of it without polling. Raises DigitsError with a message for the user
    if the job cannot finish (its worker died more often than Dask retries), and
    SchedulerLost if the scheduler went away.
    """
    from distributed import Event, Variable

    key = f"digits-train-{uuid.uuid4().hex}"
    control = Variable(f"{key}-control", client=dask_client)
    progress = Variable(f"{key}-progress", client=dask_client)
    stop = Event(f"{key}-stop", client=dask_client)
    wake = wake or threading.Event()
    sent = None
    workers: list[str] = []  # the workers' clients that took the job, in order
    future = None
    try:
        control.set(dataclasses.asdict(Controls()))  # plain data: msgpack, no pickle
        progress.set(None)  # so that reading it never waits for the worker
        future = dask_client.submit(
            train_on_worker,
            {**settings, "key": key},
            dataset_future(dask_client, ds),
            key=key,
            pure=False,
        )
        workers_seen = time.monotonic()  # when the cluster last had a worker
        while not future.done():
            if _has_workers(dask_client):
                workers_seen = time.monotonic()
            elif time.monotonic() - workers_seen > NO_WORKERS_SECONDS:
                raise SchedulerLost(_no_workers(dask_client))
            wanted = controls()
            if wanted != sent:
                if wanted.stop and not (sent and sent.stop):
                    stop.set()
                control.set(dataclasses.asdict(wanted))
                sent = Controls(wanted.stop, wanted.paused, list(wanted.settings))
            published = progress.get()
            if published is not None:
                worker, snap = published
                if worker not in workers:
                    workers.append(worker)
                on_progress(snap, workers.index(worker) + 1)
            if wake.wait(REPORT_SECONDS / 2):
                wake.clear()
        result = future.result()
        on_progress(result.pop("snapshot"), len(workers) or 1)
        return result
    except DigitsError:
        raise
    except Exception as err:
        # The worker died too often, the scheduler went away or could not load
        # the job: not the user's doing, and nothing reached the runs folder.
        if _cannot_load(err):
            raise SchedulerLost(_unusable(dask_client, err)) from None
        log.warning("training job %s on the cluster failed", key, exc_info=True)
        if dask_client.status != "running" or isinstance(err, OSError):
            raise SchedulerLost(
                f"The connection to the Dask scheduler at {address()} was lost "
                f"({type(err).__name__}), so this model trains on this machine "
                "instead, from the start."
            ) from None
        raise DigitsError(_lost(err)) from None
    finally:
        if dask_client.status == "running":
            if future is not None and not future.done():
                future.cancel()  # this side gave up: free the worker
            for variable in (control, progress, stop):
                try:
                    # An Event cleared with nobody waiting is forgotten.
                    variable.clear() if variable is stop else variable.delete()
                except Exception:  # the scheduler went away; it forgot them anyway
                    log.debug("could not delete %s", variable.name, exc_info=True)


def _has_workers(dask_client) -> bool:
    """Whether the cluster had a worker at its last count (the one `capacity`
    keeps; True for a client that is not the connection's, whose count is
    not kept)."""
    with _lock:
        conn = _connection
        if conn is None or conn.client is not dask_client:
            return True
        return _counted(conn) > 0


def _cannot_load(err: BaseException) -> bool:
    """Whether a job failed because the cluster could not load it: digits (or a
    library it pickles) is missing on the scheduler, or at another version
    (Dask's "Error during deserialization of the task graph")."""
    return isinstance(err, ImportError) or "deserializ" in str(err).lower()


def _unusable(dask_client, err: BaseException) -> str:
    """Set the cluster aside for ``RETRY_SECONDS`` (jobs train here meanwhile, as
    when the scheduler cannot be reached), because it cannot load digits' jobs;
    the notice, in words for the user."""
    from digits import __version__

    # Dask's message is several sentences wrapped over lines: its first will do.
    cause = " ".join(str(err).split()).split(". ")[0].rstrip(".")[:200]
    message = (
        f"The Dask cluster at {address()} cannot load digits' training jobs "
        f"({type(err).__name__}: {cause}), so models train on this machine for "
        f"now. Install digits {__version__}, this server's version, on the "
        f"scheduler and on every worker: `pip install "
        f"'digits[cluster]=={__version__}'`."
    )
    return _set_aside(dask_client, message)


def _no_workers(dask_client) -> str:
    """Set the cluster aside, as `_unusable`, because it has had no workers for
    ``NO_WORKERS_SECONDS``; the notice, in words for the user."""
    from digits import __version__

    return _set_aside(
        dask_client,
        f"The Dask cluster at {address()} has had no workers for "
        f"{NO_WORKERS_SECONDS:.0f} s, so this model trains on this machine "
        "instead, from the start. Start `dask worker` on the training computers; "
        "a worker that closes as soon as it is given a job most likely lacks "
        f"digits: `pip install 'digits[cluster]=={__version__}'` there.",
    )


def _set_aside(dask_client, message: str) -> str:
    """Jobs train here for ``RETRY_SECONDS``, with ``message`` as the notice."""
    with _lock:
        conn = _connection
        if conn is not None and conn.client is dask_client:
            conn.notice, conn.failed_at = message, time.monotonic()
    log.warning("%s", message)
    return message


def _lost(err: BaseException) -> str:
    """A job that did not come back, in words for the user."""
    name = type(err).__name__
    if name == "KilledWorker":
        return (
            "The computers training this model kept stopping mid-way (their Dask "
            "workers died), so it was given up and nothing was saved. Train it "
            "again; if it happens again, ask whoever runs the cluster."
        )
    return (
        f"Training on the Dask cluster failed ({name}: {err}); nothing was saved. "
        "Train again; if it keeps failing, ask whoever runs the cluster."
    )


def train_on_worker(settings: dict, ds) -> dict:
    """Train one job on a Dask worker (``run_remote``); return how it ended.

    Returns {"status": "done"|"stopped"|"failed", "error": str|None,
    "run": {file name: bytes} or None, "snapshot": the job's last snapshot}.
    """
    from distributed import Event, Variable, get_client

    # Imported here: training_job imports this module. The job is the same as a
    # local one; only its thread and its run folder differ.
    from digits.training_job import TRAINING_NICENESS, TrainingJob

    key = settings["key"]
    # The worker's client, found now: the reporting thread is not the task's,
    # and could not find it by itself.
    worker_client = get_client()
    control = Variable(f"{key}-control", client=worker_client)
    progress = Variable(f"{key}-progress", client=worker_client)
    stop = Event(f"{key}-stop", client=worker_client)
    job = TrainingJob(
        settings["kind"],
        ds,
        settings["params"],
        train_size=settings["train_size"],
        name=settings["name"],
        validation_size=settings["validation_size"],
        probe=settings["probe"],
        live=settings["live"],
        clock=settings["clock"],
        preset=settings["preset"],
        command=settings["command"],
    )
    lower_priority(TRAINING_NICENESS)  # the worker's other work comes first
    done = threading.Event()

    def report() -> None:
        applied = 0
        while not done.wait(REPORT_SECONDS):
            try:
                wanted = Controls(**control.get())
                applied = _apply(job, wanted, applied)
                progress.set((worker_client.id, job.snapshot()))
            except Exception:  # the server went away; training carries on
                log.debug("could not report", exc_info=True)

    def watch_stop() -> None:
        # Waits on the scheduler, which answers the moment Stop is pressed.
        while not done.is_set():
            try:
                if stop.wait(timeout=1.0):
                    job.stop()
                    return
            except Exception:  # the server went away; so has its Stop button
                log.debug("could not watch for Stop", exc_info=True)
                done.wait(REPORT_SECONDS)

    reporter = threading.Thread(target=report, name=f"{key}-report", daemon=True)
    reporter.start()
    stopper = threading.Thread(target=watch_stop, name=f"{key}-stop", daemon=True)
    stopper.start()
    with tempfile.TemporaryDirectory(prefix="digits-worker-") as tmp:
        try:
            status, error, run = job.run_here(out=Path(tmp) / "run")
        finally:
            done.set()
            reporter.join()
            stopper.join()
        return {
            "snapshot": job.snapshot(),  # the last, which no report may have sent
            "status": status,
            "error": error,
            "run": store.pack_run(run) if run is not None else None,
        }


def _apply(job, wanted: Controls, applied: int) -> int:
    """Carry out the server's ``wanted`` controls on the worker's ``job``; return
    how many settings are applied now."""
    if wanted.stop:
        job.stop()
    elif wanted.paused:
        job.pause()
    else:
        job.resume()
    for name, value in wanted.settings[applied:]:
        getattr(job, f"set_{name}")(value)
    return len(wanted.settings)
