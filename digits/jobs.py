"""Background jobs: work that runs in a daemon thread, behind a training slot.

The dashboard's Train page (``digits.training_job.TrainingJob``) and Experiments
page (``digits.experiments.SweepJob``) each keep one job per browser session. A
job waits in line for a training slot (``digits.slots``), then works in its own
thread, so page switches and reruns do not interrupt it. The thread writes to
the job only under its lock and never touches the user interface; the page
polls ``snapshot()`` and calls ``stop()``.

A job's status moves along::

    pending -> queued -> running -> saving -> done, stopped or failed

``stop()`` turns a queued or running job into ``stopping``; ``saving`` is the
training job's (its model is being scored and saved). A job stopped while
queued ends ``stopped`` without working. How a job ends:

- its work returns: ``done``, or ``stopped`` if it was stopped along the way;
- a ``DigitsError`` (the user's doing: bad data, a diverged model, a full
  disk): ``failed``, with the error's message for the user;
- anything else: ``failed``, with the traceback in the server's log and one line
  for the user (the subclass's ``unexpected``);
- the interpreter exiting under the job (Ctrl-C on the server): ``stopped``,
  quietly, as nobody is left to tell.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Self

from digits import slots
from digits.errors import DigitsError

FINAL = ("done", "stopped", "failed")
STATES = ("pending", "queued", "running", "stopping", "saving", *FINAL)


@dataclass(frozen=True, kw_only=True)
class JobProgress:
    """What every job's snapshot has; each job adds its own fields."""

    status: str  # one of STATES
    elapsed: float  # seconds since the job got its slot (0 while queued)
    error: str | None  # for the user, when status is "failed"
    # While queued: 1 for the next job to start, 2 after it, ...; else None.
    queue_position: int | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINAL


class BackgroundJob:
    """The state machine, thread, lock and error handling every job shares.

    A subclass sets ``noun`` and ``unexpected``, implements ``_work`` (which
    runs in the thread once the job holds a slot, checks ``self._stop`` as it
    goes, and returns the final status), and builds its ``snapshot`` under
    ``self._lock`` with ``_elapsed`` and ``_queue_position``.
    """

    noun = "job"  # in "This job has already been started."
    # The one line a user sees for an error that is not theirs; {error} is
    # "TypeName: message". The traceback goes to the server's log.
    unexpected = (
        "The job failed unexpectedly ({error}). The details are in the server's log."
    )
    niceness = 0  # added to the thread's nice value once it holds a slot

    def __init__(self, thread_name: str) -> None:
        self._thread_name = thread_name
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._status = "pending"
        self._error: str | None = None
        self._started: float | None = None  # perf_counter when it got its slot
        self._ended: float | None = None
        self._stop_requested: float | None = None
        self._thread: threading.Thread | None = None
        self._slots = slots.shared()
        self._ticket = self._slots.ticket()  # its place in line, from now

    # -- control ------------------------------------------------------------------

    def start(self) -> Self:
        """Start the job in a daemon thread; returns self.

        The job first waits for a training slot (status "queued"), then works
        (status "running").
        """
        if self._thread is not None:
            raise RuntimeError(f"This {self.noun} has already been started.")
        with self._lock:
            self._status = "queued"
        self._thread = threading.Thread(
            target=self._run, name=self._thread_name, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ask the job to stop (at the work's next check); a finished job is left
        as it is."""
        with self._lock:
            if self._status in FINAL or self._stop.is_set():
                return
            self._stop_requested = time.perf_counter()
            if self._status in ("queued", "running"):
                self._status = "stopping"
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end; True if the job has finished."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.status in FINAL

    @property
    def status(self) -> str:
        with self._lock:
            return self._status

    # -- for snapshot(), under self._lock -----------------------------------------

    def _elapsed(self) -> float:
        if self._started is None:
            return 0.0
        return (self._ended or time.perf_counter()) - self._started

    def _queue_position(self) -> int | None:
        if self._status in ("queued", "stopping") and self._started is None:
            return self._slots.position(self._ticket)
        return None

    # -- the thread ---------------------------------------------------------------

    def _work(self) -> str:
        """Do the job; return "done" or "stopped". Runs in the job's thread."""
        raise NotImplementedError

    def _finish(self, status: str, error: str | None = None) -> None:
        with self._lock:
            self._status, self._error = status, error
            self._ended = time.perf_counter()

    def _run(self) -> None:
        with self._slots.slot(self._ticket, self._stop) as got:
            if not got:  # stopped while waiting in the queue
                self._finish("stopped")
                return
            with self._lock:
                if self._status == "queued":
                    self._status = "running"
                self._started = time.perf_counter()
            if self.niceness:
                lower_priority(self.niceness)
            try:
                final = self._work()
            except DigitsError as err:
                self._finish("failed", str(err))
            except Exception as err:
                if exiting(err):
                    # The server is shutting down under the job (Ctrl-C in its
                    # terminal): nobody is left to show it to, and a traceback
                    # would only alarm.
                    self._finish("stopped")
                    return
                # Not the user's doing; the full traceback goes to the server's
                # log, under the subclass's module's name.
                log = logging.getLogger(type(self).__module__)
                log.exception("%s failed", repr(self))  # as it was when it failed
                error = f"{type(err).__name__}: {err}"
                self._finish("failed", self.unexpected.format(error=error))
            else:
                self._finish(final)


def exiting(err: Exception) -> bool:
    """Whether ``err`` is the interpreter's exit catching up with a job's thread:
    once exit begins, a thread pool (the trainer's, for half of each batch)
    refuses work ("after interpreter shutdown", or "after shutdown" once its
    worker has ended)."""
    return isinstance(err, RuntimeError) and "cannot schedule new futures" in str(err)


def lower_priority(niceness: int) -> None:
    """Raise the calling thread's nice value by ``niceness`` (at most 19).

    On Linux the nice value belongs to the thread, and threads it starts (the
    trainer's half-batch worker) inherit it; elsewhere this does nothing.
    """
    try:
        tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + niceness))
    except (AttributeError, OSError):
        pass  # no per-thread priorities here: work at the normal one
