"""Tests for digits.jobs.JobRegistry: whose browser tab a client id is, and its jobs.

The registry runs on a fake clock here, and ``attach``'s waiting on a fake sleep
that moves the clock on (and lets the other tab run, or not), so each rule is
checked at exact times: a reload takes the tab over once the old session has
been silent for the timeout; a live owner (another tab, a shared link) keeps it
and the newcomer gets a new id; idle tabs are forgotten, busy ones never.
"""

from __future__ import annotations

import itertools

import pytest

from digits.jobs import (
    CLIENT_GRACE,
    CLIENT_TIMEOUT,
    LIVE,
    MOVED,
    NEW,
    OWN,
    POLL_SECONDS,
    TAKEN,
    JobRegistry,
)

TAB, OLD, NEWCOMER = "tab-aaaaaaaa", "token-old", "token-new"


class Clock:
    """Time that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Job:
    """Stands in for a BackgroundJob: the registry only reads its status."""

    def __init__(self, status: str = "running") -> None:
        self.status = status


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def registry(clock) -> JobRegistry:
    return JobRegistry(clock=clock)


def fresh_ids():
    """new_id for attach: tab-1, tab-2, ..."""
    counter = itertools.count(1)
    return lambda: f"tab-{next(counter)}"


def sleeper(clock: Clock, owner_runs_every: float | None, registry, token=OLD):
    """A sleep for attach that moves the clock on; if ``owner_runs_every`` is a
    number, the owner ``token`` heartbeats that often meanwhile (a live tab)."""
    slept = []

    def sleep(seconds: float) -> None:
        before = clock.now
        clock.now += seconds
        slept.append(seconds)
        if owner_runs_every is not None:
            beats = int(clock.now / owner_runs_every) - int(before / owner_runs_every)
            if beats:
                registry.heartbeat(TAB, token)

    sleep.slept = slept
    return sleep


def test_a_new_id_is_the_sessions_and_its_heartbeat_is_its_own(registry, clock):
    assert registry.claim(TAB, OLD) == NEW
    clock.now += 100  # however long: the same session never loses its own tab
    assert registry.claim(TAB, OLD) == OWN
    assert registry.last_seen(TAB) == clock.now
    clock.now += 1
    assert registry.heartbeat(TAB, OLD)
    assert not registry.heartbeat(TAB, NEWCOMER)  # only the owner's counts
    assert registry.last_seen(TAB) == clock.now
    assert not registry.heartbeat("tab-unknown", OLD)


def test_another_session_may_not_claim_a_tab_whose_owner_ran_lately(registry, clock):
    registry.claim(TAB, OLD)
    clock.now += CLIENT_TIMEOUT  # exactly the timeout: still alive
    assert registry.claim(TAB, NEWCOMER) == LIVE
    clock.now += 0.01
    assert registry.claim(TAB, NEWCOMER) == TAKEN
    assert registry.claim(TAB, NEWCOMER) == OWN
    # The old session is now the stranger: its heartbeat no longer counts.
    assert not registry.heartbeat(TAB, OLD)
    assert registry.claim(TAB, OLD) == LIVE


def test_a_reload_waits_for_the_old_session_to_fall_silent_then_takes_its_jobs(
    registry, clock
):
    registry.claim(TAB, OLD)
    job = Job()
    assert registry.put(TAB, OLD, "training-job", job)
    clock.now += 1.5  # the page reloads: the new session arrives 1.5 s later
    sleep = sleeper(clock, None, registry)  # the old tab is gone: no heartbeat
    assert registry.attach(TAB, NEWCOMER, fresh_ids(), sleep) == (TAB, TAKEN)
    waited = sum(sleep.slept)
    assert CLIENT_TIMEOUT - 1.5 <= waited <= CLIENT_TIMEOUT - 1.5 + POLL_SECONDS
    assert registry.job(TAB, "training-job") is job
    assert registry.heartbeat(TAB, NEWCOMER)


def test_a_run_of_the_old_session_just_after_the_reload_is_not_a_live_tab(
    registry, clock
):
    # A fragment run that was under way when the tab reloaded stamps the
    # heartbeat once more, within the grace: the newcomer still takes over.
    registry.claim(TAB, OLD)
    clock.now += 0.5
    sleep = sleeper(clock, None, registry)
    arrived = clock.now

    def late_run_then_silence(seconds: float) -> None:
        sleep(seconds)
        if clock.now - arrived < CLIENT_GRACE and not getattr(sleep, "done", False):
            registry.heartbeat(TAB, OLD)
            sleep.done = True

    outcome = registry.attach(TAB, NEWCOMER, fresh_ids(), late_run_then_silence)
    assert outcome == (TAB, TAKEN)


def test_a_shared_link_of_a_live_tab_gets_a_new_id_and_none_of_its_jobs(
    registry, clock
):
    registry.claim(TAB, OLD)
    registry.put(TAB, OLD, "training-job", Job())
    sleep = sleeper(clock, 1.0, registry)  # the owner's sidebar runs every second
    client, outcome = registry.attach(TAB, NEWCOMER, fresh_ids(), sleep)
    assert (client, outcome) == ("tab-1", MOVED)
    assert CLIENT_GRACE <= sum(sleep.slept) <= CLIENT_GRACE + 1 + POLL_SECONDS
    assert registry.job(client, "training-job") is None
    assert registry.claim(client, NEWCOMER) == OWN
    # The owner keeps its tab and its job.
    assert registry.claim(TAB, OLD) == OWN
    assert registry.job(TAB, "training-job") is not None


def test_only_the_owner_keeps_a_job_in_its_tab(registry):
    registry.claim(TAB, OLD)
    assert not registry.put(TAB, NEWCOMER, "training-job", Job())
    assert not registry.put("tab-unknown", OLD, "training-job", Job())
    assert registry.job(TAB, "training-job") is None
    first, second = Job("done"), Job()
    assert registry.put(TAB, OLD, "training-job", first)
    assert registry.put(TAB, OLD, "training-job", second)  # the next Start
    assert registry.job(TAB, "training-job") is second
    assert registry.job(TAB, "sweep-job") is None


def test_idle_tabs_are_forgotten_after_a_while_busy_ones_never(clock):
    registry = JobRegistry(clock=clock, keep=60)
    registry.claim("tab-idle", "a")
    registry.claim("tab-finished", "b")
    registry.put("tab-finished", "b", "training-job", Job("stopped"))
    registry.claim("tab-busy", "c")
    busy = Job("running")
    registry.put("tab-busy", "c", "sweep-job", busy)
    clock.now += 60
    registry.claim("tab-other", "d")  # every claim prunes
    assert len(registry) == 4  # not yet: exactly the keep time
    clock.now += 1
    registry.claim("tab-other", "d")
    assert len(registry) == 2
    assert registry.job("tab-finished", "training-job") is None
    assert registry.job("tab-busy", "sweep-job") is busy
    busy.status = "done"  # finished and unseen for long: now it goes too
    clock.now += 61
    registry.claim("tab-other", "d")
    assert len(registry) == 1
    assert registry.claim("tab-busy", "c") == NEW  # a fresh tab, without jobs


def test_a_finished_job_stays_visible_to_its_tab_while_it_is_used(clock):
    registry = JobRegistry(clock=clock, keep=60)
    registry.claim(TAB, OLD)
    job = Job("done")
    registry.put(TAB, OLD, "training-job", job)
    for _ in range(5):  # the tab keeps running pages now and then
        clock.now += 50
        assert registry.claim(TAB, OLD) == OWN
    assert registry.job(TAB, "training-job") is job


def test_at_most_max_idle_tabs_are_kept_the_least_recently_seen_go_first(clock):
    registry = JobRegistry(clock=clock, max_idle=3)
    busy = Job("running")
    registry.claim("tab-busy", "x")
    registry.put("tab-busy", "x", "training-job", busy)
    for i in range(6):
        clock.now += 1
        registry.claim(f"tab-{i}", f"token-{i}")
    # The claim of tab-5 pruned before adding it: tab-2, 3, 4, 5 and the busy
    # one are left; the next claim prunes down to three idle tabs.
    clock.now += 1
    registry.claim("tab-5", "token-5")
    assert len(registry) == 4
    assert registry.job("tab-busy", "training-job") is busy
    assert [registry.claim(f"tab-{i}", f"token-{i}") for i in (3, 4, 5)] == [OWN] * 3
    assert registry.claim("tab-0", "token-0") == NEW


def test_a_session_whose_tab_was_taken_over_never_takes_it_back(registry, clock):
    registry.claim(TAB, OLD)
    assert registry.rejoin(TAB, OLD)  # still its own: a heartbeat
    assert registry.last_seen(TAB) == clock.now
    clock.now += CLIENT_TIMEOUT + 1  # the old session is idle: no timer runs
    assert registry.claim(TAB, NEWCOMER) == TAKEN  # a link opened elsewhere
    clock.now += CLIENT_TIMEOUT + 1  # the newcomer is idle in its turn
    assert not registry.rejoin(TAB, OLD)  # the old session moves instead
    assert registry.claim(TAB, NEWCOMER) == OWN


def test_a_session_whose_tab_was_forgotten_gets_it_again(clock):
    registry = JobRegistry(clock=clock, keep=60)
    registry.claim(TAB, OLD)
    clock.now += 61
    registry.claim("tab-other", NEWCOMER)  # prunes the idle tab
    assert registry.job(TAB, "training-job") is None and len(registry) == 1
    assert registry.rejoin(TAB, OLD)
    assert registry.claim(TAB, OLD) == OWN
