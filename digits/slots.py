"""Training slots: at most a few training jobs run at once; the rest wait in line.

Training a CNN keeps both cores of a 2-core machine busy (two threads, one per
batch half). Two jobs at once would each run at less than half speed, so instead
jobs beyond the capacity wait, and can tell the user where they are in the queue
and about how long the wait is. The line is per process: the dashboard's server
is one process, shared by every browser session.

Fair shares: a job may belong to an owner (the browser tab that asked for it).
An owner has at most one job running at a time. A job asked for while its owner
already had k jobs running or waiting is a further job of rank k; the line is
ordered by rank, then by ticket, so further jobs wait behind the other owners'
first ones. Jobs without an owner are each their own.

The capacity is where the jobs run. On this machine it is ``$DIGITS_TRAINING_SLOTS``
if set, otherwise one slot per two cores (at least one): 1 on the 2-core machines
this project runs on. With a Dask cluster (``digits.cluster``) it is the number of
the cluster's worker threads, looked up as workers come and go. Dask runs the
jobs and decides which worker takes each; it has no notion of a browser tab or
of a place in line, so this queue keeps deciding the order on both. It is also
what runs the jobs of a plain install, which has no Dask.
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from digits.errors import ConfigError

SLOTS_ENV = "DIGITS_TRAINING_SLOTS"
CORES_PER_SLOT = 2  # a CNN job trains on two threads


def default_capacity() -> int:
    """``$DIGITS_TRAINING_SLOTS``, or one slot per two cores (at least one)."""
    value = os.environ.get(SLOTS_ENV)
    if value:
        try:
            capacity = int(value)
        except ValueError:
            capacity = 0
        if capacity < 1:
            raise ConfigError(
                f"{SLOTS_ENV}={value!r} is not a positive whole number of training "
                "slots; set it to 1 or more, or unset it."
            )
        return capacity
    return max(1, (os.cpu_count() or 1) // CORES_PER_SLOT)


class TrainingSlots:
    """A fair queue in front of ``capacity`` slots (a number, or a function that
    gives the number now).

    ``slot(ticket, stop)`` is the way in: a context manager that waits for a free
    slot and yields True, or yields False if ``stop`` was set while waiting (the
    job was cancelled in the queue). ``position(ticket)`` says where a waiting
    job is: 0 once it holds a slot, 1 for the first in line, and so on;
    ``wait_seconds(ticket)`` about how long it has left to wait.
    """

    def __init__(self, capacity: int | Callable[[], int]) -> None:
        if not callable(capacity) and capacity < 1:
            raise ConfigError(
                f"Training slots need a capacity of 1 or more, not {capacity}."
            )
        self._capacity = capacity
        self._cond = threading.Condition()
        self._tickets = itertools.count(1)
        self._waiting: set[int] = set()
        self._running: dict[int, float] = {}  # ticket -> when it got its slot
        self._owners: dict[int, str] = {}
        self._ranks: dict[int, int] = {}  # ticket -> 0 for a first job, 1, 2...
        self._expected: dict[int, float] = {}  # ticket -> seconds it should take

    def __repr__(self) -> str:
        with self._cond:
            return (
                f"TrainingSlots(capacity={self.capacity}, "
                f"running={len(self._running)}, waiting={len(self._waiting)})"
            )

    @property
    def capacity(self) -> int:
        """How many jobs may run at once, now (at least 1)."""
        value = self._capacity() if callable(self._capacity) else self._capacity
        return max(1, int(value))

    def use_capacity(self, capacity: int | Callable[[], int]) -> None:
        """Run as many jobs at once as ``capacity`` says from now on."""
        with self._cond:
            self._capacity = capacity
            self._cond.notify_all()

    def ticket(self, owner: str | None = None) -> int:
        """A place in line, taken now, for a job of ``owner`` (None: a job of its
        own). ``slot(ticket)`` waits behind the earlier tickets of the line's
        order (see the module's docstring)."""
        ticket = next(self._tickets)
        if owner is not None:
            self.set_owner(ticket, owner)
        return ticket

    def set_owner(self, ticket: int, owner: str) -> None:
        """Say whose job ``ticket`` is (a job may be handed to its tab after it
        was queued); its rank is how many of the owner's jobs have not finished."""
        with self._cond:
            # The owner's other tickets not yet finished (a ticket is
            # forgotten when its job ends or leaves the line).
            self._ranks[ticket] = sum(
                o == owner for t, o in self._owners.items() if t != ticket
            )
            self._owners[ticket] = owner
            self._cond.notify_all()

    def expect(self, ticket: int, seconds: float | None) -> None:
        """The job of ``ticket`` should take about ``seconds`` once it runs."""
        with self._cond:
            if seconds is None or not seconds > 0:
                self._expected.pop(ticket, None)
            else:
                self._expected[ticket] = float(seconds)

    def _owner(self, ticket: int) -> object:
        return self._owners.get(ticket, ticket)

    def _line(self) -> list[int]:
        """The waiting tickets in the order they will start. Under the lock."""
        return sorted(self._waiting, key=lambda t: (self._ranks.get(t, 0), t))

    def _may_start(self, ticket: int) -> bool:
        """Whether ``ticket`` starts now: a slot is free, its owner runs nothing,
        and no ticket before it in the line could start instead. Under the lock."""
        if len(self._running) >= self.capacity:
            return False
        busy = {self._owner(t) for t in self._running}
        for waiting in self._line():
            if self._owner(waiting) not in busy:
                return waiting == ticket
        return False

    def position(self, ticket: int) -> int | None:
        """0 if ``ticket`` holds a slot, n if it is n-th in line, None otherwise."""
        with self._cond:
            if ticket in self._running:
                return 0
            if ticket in self._waiting:
                return self._line().index(ticket) + 1
            return None

    def wait_seconds(self, ticket: int) -> float | None:
        """About how long ``ticket`` still waits: the line played forward with each
        job's expected time (``expect``; the mean of the known ones for the
        others), on ``capacity`` slots. 0 once it runs; None if it is not in line
        or no job's time is known."""
        with self._cond:
            if ticket in self._running:
                return 0.0
            if ticket not in self._waiting:
                return None
            known = list(self._expected.values())
            if not known:
                return None
            typical = sum(known) / len(known)
            now = time.monotonic()
            free = [
                max(0.0, self._expected.get(t, typical) - (now - started))
                for t, started in self._running.items()
            ]
            free += [0.0] * max(0, self.capacity - len(free))
            heapq.heapify(free)
            for waiting in self._line():
                start = heapq.heappop(free)
                if waiting == ticket:
                    return start
                heapq.heappush(free, start + self._expected.get(waiting, typical))
            return None

    @property
    def busy(self) -> int:
        """How many slots are taken."""
        with self._cond:
            return len(self._running)

    @property
    def queued(self) -> int:
        """How many jobs wait for a slot."""
        with self._cond:
            return len(self._waiting)

    @contextmanager
    def slot(
        self,
        ticket: int | None = None,
        stop: threading.Event | None = None,
        poll: float = 1.0,
    ) -> Iterator[bool]:
        """Hold a slot for the ``with`` block; yields False if stopped while waiting.

        A waiting job looks again whenever the line changes (a job starts or
        ends, an owner or the capacity is set, ``wake()`` is called: call it
        after setting ``stop``, to leave the line at once), and every ``poll``
        seconds in any case. Thirty waiting jobs cost nothing between changes.
        """
        ticket = self.ticket() if ticket is None else ticket
        with self._cond:
            self._waiting.add(ticket)
            try:
                while not self._may_start(ticket):
                    if stop is not None and stop.is_set():
                        break
                    self._cond.wait(poll)
                got = not (stop is not None and stop.is_set())
                if got:
                    self._running[ticket] = time.monotonic()
            finally:
                self._waiting.discard(ticket)
                if not got:
                    self._forget(ticket)
                self._cond.notify_all()
        try:
            yield got
        finally:
            if got:
                with self._cond:
                    del self._running[ticket]
                    self._forget(ticket)
                    self._cond.notify_all()

    def wake(self) -> None:
        """Have the waiting jobs look again now (one of them was stopped)."""
        with self._cond:
            self._cond.notify_all()

    def release(self, ticket: int) -> None:
        """Forget a ticket that will never wait in line (its owner, its time)."""
        with self._cond:
            if ticket not in self._waiting and ticket not in self._running:
                self._forget(ticket)

    def _forget(self, ticket: int) -> None:
        self._owners.pop(ticket, None)
        self._ranks.pop(ticket, None)
        self._expected.pop(ticket, None)


_shared: TrainingSlots | None = None
_shared_lock = threading.Lock()


def shared() -> TrainingSlots:
    """This process's training slots, made on first use (see ``default_capacity``)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = TrainingSlots(default_capacity())
        return _shared
