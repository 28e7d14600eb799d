"""Tests for digits.slots: the first-come, first-served queue of training slots."""

from __future__ import annotations

import threading
import time

import pytest

from digits import slots
from digits.errors import ConfigError

TIMEOUT = 10


def hold(queue: slots.TrainingSlots, ticket, log, release, stop=None):
    """A job: wait for a slot, note when it got it, hold it until ``release``."""

    def work():
        with queue.slot(ticket, stop) as got:
            log.append((ticket, got, time.monotonic()))
            if got:
                release.wait(TIMEOUT)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def wait_for(condition) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_jobs_beyond_capacity_wait_in_ticket_order():
    queue = slots.TrainingSlots(2)
    tickets = [queue.ticket() for _ in range(5)]
    log, releases = [], [threading.Event() for _ in tickets]
    threads = [hold(queue, tickets[i], log, releases[i]) for i in (0, 1)]
    wait_for(lambda: queue.busy == 2)
    # The waiting threads start in reverse order; they are served by ticket.
    threads += [hold(queue, tickets[i], log, releases[i]) for i in (4, 3, 2)]
    wait_for(lambda: queue.queued == 3)
    assert [queue.position(t) for t in tickets] == [0, 0, 1, 2, 3]
    for release in releases:
        release.set()
        time.sleep(0.02)
    for thread in threads:
        thread.join(TIMEOUT)
    assert [t for t, _, _ in log] == tickets
    assert all(got for _, got, _ in log)
    assert queue.busy == queue.queued == 0
    assert queue.position(tickets[0]) is None


def test_a_job_stopped_while_waiting_leaves_the_queue_without_a_slot():
    queue = slots.TrainingSlots(1)
    log, release, stop = [], threading.Event(), threading.Event()
    first = hold(queue, queue.ticket(), log, release)
    wait_for(lambda: queue.busy == 1)
    waiting_ticket = queue.ticket()
    waiting = hold(queue, waiting_ticket, log, threading.Event(), stop)
    wait_for(lambda: queue.position(waiting_ticket) == 1)
    stop.set()
    queue.wake()  # as BackgroundJob.stop does
    waiting.join(TIMEOUT)
    assert log[-1][:2] == (waiting_ticket, False)
    assert queue.queued == 0 and queue.busy == 1
    release.set()
    first.join(TIMEOUT)
    assert queue.busy == 0


def test_a_slot_is_given_back_when_the_job_fails():
    queue = slots.TrainingSlots(1)
    with pytest.raises(RuntimeError, match="job failed"), queue.slot() as got:
        assert got
        raise RuntimeError("job failed")
    assert queue.busy == 0
    with queue.slot() as got:
        assert got


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_a_bad_capacity_setting_names_the_variable(monkeypatch, value):
    monkeypatch.setenv(slots.SLOTS_ENV, value)
    with pytest.raises(ConfigError, match=f"DIGITS_TRAINING_SLOTS='{value}'"):
        slots.default_capacity()


def test_capacity_is_one_slot_per_two_cores_unless_set(monkeypatch):
    monkeypatch.delenv(slots.SLOTS_ENV, raising=False)
    monkeypatch.setattr(slots.os, "cpu_count", lambda: 2)
    assert slots.default_capacity() == 1
    monkeypatch.setattr(slots.os, "cpu_count", lambda: 8)
    assert slots.default_capacity() == 4
    monkeypatch.setenv(slots.SLOTS_ENV, "3")
    assert slots.default_capacity() == 3


def test_an_owner_runs_one_job_at_a_time_and_its_next_waits_behind_others():
    queue = slots.TrainingSlots(2)
    # Tab "a" asks for three jobs, then tabs "b" and "c" for one each.
    tickets = {
        name: queue.ticket(owner)
        for name, owner in [("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b")]
    }
    tickets["c1"] = queue.ticket()  # no owner: a job of its own
    log, releases = [], {name: threading.Event() for name in tickets}
    threads = {name: hold(queue, t, log, releases[name]) for name, t in tickets.items()}
    # Two slots, but "a" has one job running: the second slot goes to "b".
    wait_for(lambda: queue.busy == 2)
    started = {t for t, _, _ in log}
    assert started == {tickets["a1"], tickets["b1"]}
    # In line: c's first job, then a's second and third.
    assert [queue.position(tickets[n]) for n in ("c1", "a2", "a3")] == [1, 2, 3]
    releases["a1"].set()
    wait_for(lambda: len(log) == 3)
    assert log[-1][0] == tickets["c1"]  # not a2: c had nothing running
    for name in ("b1", "c1"):
        releases[name].set()
    wait_for(lambda: len(log) == 4)
    assert log[-1][0] == tickets["a2"]
    assert queue.position(tickets["a3"]) == 1
    assert queue.busy == 1  # a slot is free, but only a3 waits: a's next
    for release in releases.values():
        release.set()
    for thread in threads.values():
        thread.join(TIMEOUT)
    assert [t for t, _, _ in log][-1] == tickets["a3"]


def test_the_wait_is_the_line_played_forward_with_each_jobs_time():
    queue = slots.TrainingSlots(1)
    running, first, second = queue.ticket("a"), queue.ticket("b"), queue.ticket("c")
    for ticket, seconds in ((running, 100.0), (first, 30.0), (second, 50.0)):
        queue.expect(ticket, seconds)
    log, release = [], threading.Event()
    threads = [hold(queue, t, log, release) for t in (running, first, second)]
    wait_for(lambda: queue.busy == 1 and queue.queued == 2)
    assert queue.wait_seconds(running) == 0.0
    assert queue.wait_seconds(first) == pytest.approx(100.0, abs=1.0)
    assert queue.wait_seconds(second) == pytest.approx(130.0, abs=1.0)
    # Two slots: the first in line starts now, the second when a job ends.
    queue.use_capacity(lambda: 2)
    wait_for(lambda: queue.busy == 2)
    assert queue.wait_seconds(second) == pytest.approx(30.0, abs=1.0)
    release.set()
    for thread in threads:
        thread.join(TIMEOUT)
    assert queue.wait_seconds(second) is None  # gone from the line
