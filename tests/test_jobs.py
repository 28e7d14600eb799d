"""Tests for digits.jobs: the background-job base that TrainingJob and SweepJob share.

Each test runs a small job whose work is a real function in the job's thread
(waiting on events, raising what a real job can raise), so the state machine,
the slot queue and the error handling are checked without training a model.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest

from digits import slots
from digits.errors import DataError
from digits.jobs import FINAL, BackgroundJob, JobProgress

TIMEOUT = 10


@pytest.fixture(autouse=True)
def one_slot(monkeypatch):
    """A fresh queue with one training slot, as on the 2-core machines."""
    monkeypatch.setattr(slots, "_shared", slots.TrainingSlots(1))


class Job(BackgroundJob):
    """Runs ``work`` in its thread; ``entered`` is set once it has begun."""

    noun = "test job"
    unexpected = "The test job failed unexpectedly ({error}). See the log."

    def __init__(self, work) -> None:
        self.work = work
        self.entered = threading.Event()
        self.calls = 0
        super().__init__("digits-test-job")

    def __repr__(self) -> str:
        return f"Job({self.status})"

    def snapshot(self) -> JobProgress:
        with self._lock:
            return JobProgress(
                status=self._status,
                elapsed=self._elapsed(),
                error=self._error,
                queue_position=self._queue_position(),
            )

    def _work(self) -> str:
        self.calls += 1
        self.entered.set()
        return self.work(self)


def until_stopped(job: Job) -> str:
    """Work until stop() is called, as a training loop checks between batches."""
    assert job._stop.wait(TIMEOUT)
    return "stopped"


def test_a_job_goes_from_pending_to_done():
    release = threading.Event()
    job = Job(lambda job: "done" if release.wait(TIMEOUT) else "stopped")
    assert job.status == "pending" and not job.snapshot().finished
    job.start()
    assert job.entered.wait(TIMEOUT)
    assert job.status == "running"
    assert job.snapshot().queue_position is None  # it holds the slot
    release.set()
    assert job.join(TIMEOUT)
    snap = job.snapshot()
    assert (snap.status, snap.error, snap.finished) == ("done", None, True)
    assert snap.elapsed > 0 and job.calls == 1
    assert job._thread.name == "digits-test-job"


def test_stop_while_running_ends_stopped_and_a_second_stop_changes_nothing():
    job = Job(until_stopped).start()
    assert job.entered.wait(TIMEOUT)
    job.stop()
    assert job.status in ("stopping", "stopped")
    assert job.join(TIMEOUT)
    assert job.snapshot().status == "stopped"
    ended = job._ended
    job.stop()
    assert job.status == "stopped" and job._ended == ended


def test_a_job_waits_in_line_and_a_stop_there_ends_it_without_working():
    first = Job(until_stopped).start()
    assert first.entered.wait(TIMEOUT)
    second = Job(lambda job: "done").start()
    deadline = time.monotonic() + TIMEOUT
    while second.snapshot().queue_position is None:
        assert time.monotonic() < deadline, "the second job never queued"
        time.sleep(0.01)
    snap = second.snapshot()
    assert (snap.status, snap.queue_position, snap.elapsed) == ("queued", 1, 0.0)
    second.stop()
    assert second.status in ("stopping", "stopped")
    assert second.join(TIMEOUT)
    assert second.snapshot().status == "stopped" and second.calls == 0
    first.stop()
    assert first.join(TIMEOUT) and first.calls == 1


def test_the_users_error_is_shown_as_it_is_and_not_logged(caplog):
    message = "The file digits.csv has no label column; add one named 'label'."

    def bad_data(job):
        raise DataError(message)

    job = Job(bad_data).start()
    assert job.join(TIMEOUT)
    snap = job.snapshot()
    assert (snap.status, snap.error) == ("failed", message)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_an_unexpected_error_is_one_line_for_the_user_and_a_traceback_in_the_log(
    caplog,
):
    def bug(job):
        return {}["missing"]

    job = Job(bug).start()
    assert job.join(TIMEOUT)
    snap = job.snapshot()
    assert snap.status == "failed"
    assert snap.error == (
        "The test job failed unexpectedly (KeyError: 'missing'). See the log."
    )
    assert "\n" not in snap.error and "Traceback" not in snap.error
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.name == __name__  # the job's own module's logger
    assert record.getMessage() == "Job(running) failed"
    assert record.exc_info is not None and record.exc_info[0] is KeyError


def test_the_interpreter_exiting_under_a_job_is_a_quiet_stop(caplog):
    def shutting_down(job):
        raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    job = Job(shutting_down).start()
    assert job.join(TIMEOUT)
    snap = job.snapshot()
    assert (snap.status, snap.error) == ("stopped", None)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_job_starts_once():
    job = Job(lambda job: "done").start()
    with pytest.raises(RuntimeError, match="This test job has already been started"):
        job.start()
    assert job.join(TIMEOUT) and job.status in FINAL
