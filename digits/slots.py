"""Training slots: at most a few training jobs run at once; the rest wait in line.

Training a CNN keeps both cores of a 2-core machine busy (two threads, one per
batch half). Two jobs at once would each run at less than half speed, so instead
jobs beyond the machine's capacity wait, first come first served, and can tell
the user where they are in the queue. The limit is per process: the dashboard's
server is one process, shared by every browser session.

The capacity is ``$DIGITS_TRAINING_SLOTS`` if set, otherwise one slot per two
cores (at least one): 1 on the 2-core machines this project runs on.
"""

from __future__ import annotations

import bisect
import itertools
import os
import threading
from collections.abc import Iterator
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
    """A first-come, first-served queue in front of ``capacity`` slots.

    ``slot(stop)`` is the way in: a context manager that waits for a free slot
    and yields True, or yields False if ``stop`` was set while waiting (the job
    was cancelled in the queue). ``position(ticket)`` says where a waiting job
    is: 0 once it holds a slot, 1 for the first in line, and so on.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ConfigError(
                f"Training slots need a capacity of 1 or more, not {capacity}."
            )
        self.capacity = capacity
        self._cond = threading.Condition()
        self._tickets = itertools.count(1)
        self._waiting: list[int] = []  # tickets, in the order they were handed out
        self._running: set[int] = set()

    def __repr__(self) -> str:
        with self._cond:
            return (
                f"TrainingSlots(capacity={self.capacity}, "
                f"running={len(self._running)}, waiting={len(self._waiting)})"
            )

    def ticket(self) -> int:
        """A place in line, taken now: ``slot(ticket)`` waits behind every
        earlier ticket that is waiting."""
        return next(self._tickets)

    def position(self, ticket: int) -> int | None:
        """0 if ``ticket`` holds a slot, n if it is n-th in line, None otherwise."""
        with self._cond:
            if ticket in self._running:
                return 0
            if ticket in self._waiting:
                return self._waiting.index(ticket) + 1
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
        poll: float = 0.05,
    ) -> Iterator[bool]:
        """Hold a slot for the ``with`` block; yields False if stopped while waiting.

        ``stop`` is checked every ``poll`` seconds while waiting, so that a job
        cancelled in the queue leaves it at once.
        """
        ticket = self.ticket() if ticket is None else ticket
        with self._cond:
            bisect.insort(self._waiting, ticket)  # in ticket order, not thread order
            try:
                while not (
                    self._waiting[0] == ticket and len(self._running) < self.capacity
                ):
                    if stop is not None and stop.is_set():
                        break
                    self._cond.wait(poll)
                got = not (stop is not None and stop.is_set())
                if got:
                    self._running.add(ticket)
            finally:
                self._waiting.remove(ticket)
                self._cond.notify_all()
        try:
            yield got
        finally:
            if got:
                with self._cond:
                    self._running.discard(ticket)
                    self._cond.notify_all()


_shared: TrainingSlots | None = None
_shared_lock = threading.Lock()


def shared() -> TrainingSlots:
    """This process's training slots, made on first use (see ``default_capacity``)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = TrainingSlots(default_capacity())
        return _shared
