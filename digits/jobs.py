"""Background jobs: work that runs in a daemon thread, behind a training slot.

The dashboard's Train page (``digits.training_job.TrainingJob``) and Experiments
page (``digits.experiments.SweepJob``) each keep one job per browser tab, in the
process-wide ``JobRegistry`` at the end of this file, so that a tab reloaded
mid-run finds its job again. A job waits in line for a training slot
(``digits.slots``), then works in its own thread, so page switches, reruns and
reloads do not interrupt it. The thread writes to the job only under its lock
and never touches the user interface; the page polls ``snapshot()`` and calls
``stop()``.

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
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
    # While queued: about how many seconds until it starts (None: unknown).
    queue_wait: float | None = None

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

    def owned_by(self, owner: str) -> None:
        """The job belongs to ``owner`` (a browser tab): the line gives each owner
        one running job at a time, and its further jobs wait behind the other
        owners' first ones (``digits.slots``)."""
        self._slots.set_owner(self._ticket, owner)

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
        self._slots.wake()  # a job waiting in line leaves it now

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

    def _queue_wait(self) -> float | None:
        """About how many seconds the job still waits in line (None: not waiting,
        or unknown)."""
        if self._status == "queued" and self._started is None:
            return self._slots.wait_seconds(self._ticket)
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
            if self.niceness:
                lower_priority(self.niceness)
            self._execute()

    def _execute(self) -> None:
        """Work in this thread, from "running" to a final status."""
        with self._lock:
            if self._status in ("pending", "queued"):
                self._status = "running"
            self._started = time.perf_counter()
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


# -- which browser tab a job belongs to ------------------------------------------

# A tab's session runs at least this often while it has an unfinished job (the
# sidebar's progress refreshes every second), so this long without a sign of
# life means the tab was closed or reloaded: four missed refreshes.
CLIENT_TIMEOUT = 4.0
# A session that finds its tab's client id owned by another session waits this
# long before a sign of life of the owner counts: an owner's run that was already
# under way when its tab reloaded still stamps its heartbeat just after.
CLIENT_GRACE = 2.0
POLL_SECONDS = 0.25  # how often a waiting session looks again
# A tab whose jobs have all finished is forgotten this long after it was last
# seen, and the number of such tabs is bounded, so the registry stays small.
KEEP_SECONDS = 30 * 60
MAX_IDLE_CLIENTS = 500

# What ``JobRegistry.claim`` found (and ``attach``'s outcome): the session
# already owned the client id, it was unknown (now the session's), the owner was
# gone so the session took it over, or the owner is alive (not claimed).
OWN, NEW, TAKEN, LIVE = "own", "new", "taken", "live"
# attach only: the owner was alive, so the session got a new client id.
MOVED = "moved"


@dataclass
class _Client:
    """One browser tab: who owns it, when the owner was last seen, its jobs."""

    owner: str  # the token of the session that owns the tab
    seen: float  # when the owner last ran a page or a fragment (registry clock)
    jobs: dict[str, BackgroundJob] = field(default_factory=dict)

    def busy(self) -> bool:
        """Whether a job of the tab has not finished."""
        return any(job.status not in FINAL for job in self.jobs.values())


class JobRegistry:
    """The jobs of every browser tab, keyed by the tab's client id, for the whole
    server process (the dashboard holds one).

    A reload ends a browser tab's session, but not its jobs: the tab's URL keeps
    its client id, and the session that the reload starts finds the tab's jobs
    here again. Each session has a random token of its own; the session that
    owns a client id stamps a heartbeat whenever it runs. A session that arrives
    with a client id owned by another token (``attach``):

    - takes it over if the owner has not run for ``timeout`` seconds: that was
      the same tab before a reload (or a tab closed long ago);
    - otherwise gets a new client id: the owner is another tab alive, or another
      person who shared the link, whose jobs and Stop are not the newcomer's.

    That is for a session's first run. A session that had a client id and finds
    it taken over (``rejoin``) moves to a new one.

    Tabs whose jobs have all finished are forgotten ``keep`` seconds after their
    last heartbeat, and at most ``max_idle`` of them are kept.
    """

    def __init__(
        self,
        *,
        timeout: float = CLIENT_TIMEOUT,
        grace: float = CLIENT_GRACE,
        keep: float = KEEP_SECONDS,
        max_idle: int = MAX_IDLE_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout, self.grace, self.keep = timeout, grace, keep
        self.max_idle = max_idle
        self._clock = clock
        self._lock = threading.Lock()
        self._clients: dict[str, _Client] = {}

    def __repr__(self) -> str:
        with self._lock:
            busy = sum(c.busy() for c in self._clients.values())
            return f"JobRegistry({len(self._clients)} tabs, {busy} busy)"

    def __len__(self) -> int:
        with self._lock:
            return len(self._clients)

    def claim(self, client_id: str, token: str) -> str:
        """Take ``client_id`` for the session ``token`` if it may, at one look:
        OWN (and a heartbeat), NEW, TAKEN (the owner had not run for
        ``timeout`` seconds), or LIVE (the owner is alive; nothing changes)."""
        with self._lock:
            client, outcome = self._own(client_id, token)
            now = self._clock()
            if outcome is None and now - client.seen > self.timeout:
                client.owner, client.seen = token, now
                outcome = TAKEN
            return outcome or LIVE

    def rejoin(self, client_id: str, token: str) -> bool:
        """Whether a session that already had ``client_id`` keeps it: True if it
        still owns it (a heartbeat) or nobody does any more (it was forgotten
        while idle, and is claimed anew); False if another session took it over
        meanwhile. A session never takes its tab back: it moves to a new id, so
        that two sessions with one id cannot hand it to and fro."""
        with self._lock:
            return self._own(client_id, token)[1] is not None

    def _own(self, client_id: str, token: str) -> tuple[_Client, str | None]:
        """Under the lock, after pruning: the tab and NEW (made for ``token``),
        OWN (``token``'s: a heartbeat) or None (another session's)."""
        now = self._clock()
        self._prune(now)
        client = self._clients.get(client_id)
        if client is None:
            client = self._clients[client_id] = _Client(token, now)
            return client, NEW
        if client.owner == token:
            client.seen = now
            return client, OWN
        return client, None

    def attach(
        self,
        client_id: str,
        token: str,
        new_id: Callable[[], str],
        sleep: Callable[[float], None] = time.sleep,
    ) -> tuple[str, str]:
        """Claim ``client_id`` for ``token``, waiting to tell a reload from
        another live tab; returns (the session's client id, outcome).

        While the owner is LIVE, look again every ``POLL_SECONDS``: if the owner
        stops running for ``timeout`` seconds, its tab was reloaded or closed, and
        the id is TAKEN; if it runs again more than ``grace`` seconds after this
        session arrived, it is alive, and this session gets ``new_id()`` (MOVED).
        Either comes within ``grace + timeout`` seconds.
        """
        arrived = self._clock()
        while (outcome := self.claim(client_id, token)) == LIVE:
            if self.last_seen(client_id) > arrived + self.grace:
                fresh = new_id()
                self.claim(fresh, token)
                return fresh, MOVED
            sleep(POLL_SECONDS)
        return client_id, outcome

    def last_seen(self, client_id: str) -> float:
        """When the owner of ``client_id`` last ran (-inf for an unknown id)."""
        with self._lock:
            client = self._clients.get(client_id)
            return client.seen if client is not None else -math.inf

    def heartbeat(self, client_id: str, token: str) -> bool:
        """The owner ``token`` of ``client_id`` is running now; False (and no
        heartbeat) if ``token`` does not own it."""
        with self._lock:
            client = self._clients.get(client_id)
            if client is None or client.owner != token:
                return False
            client.seen = self._clock()
            return True

    def job(self, client_id: str, name: str) -> BackgroundJob | None:
        """The tab's job called ``name`` ("training-job", "sweep-job"), if any."""
        with self._lock:
            client = self._clients.get(client_id)
            return client.jobs.get(name) if client is not None else None

    def put(self, client_id: str, token: str, name: str, job: BackgroundJob) -> bool:
        """Keep ``job`` as the tab's ``name`` (replacing the previous one); only
        the owner ``token`` may: False, and nothing kept, for another."""
        with self._lock:
            client = self._clients.get(client_id)
            if client is None or client.owner != token:
                return False
            client.jobs[name] = job
            client.seen = self._clock()
            return True

    def _prune(self, now: float) -> None:
        """Forget the tabs that are idle (no unfinished job) and unseen for
        ``keep`` seconds, then the least recently seen idle ones beyond
        ``max_idle``. Under the lock."""
        idle = sorted((c.seen, cid) for cid, c in self._clients.items() if not c.busy())
        stale = [cid for seen, cid in idle if now - seen > self.keep]
        fresh = [cid for seen, cid in idle if now - seen <= self.keep]
        for cid in stale + fresh[: max(0, len(fresh) - self.max_idle)]:
            del self._clients[cid]
