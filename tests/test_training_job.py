"""Tests for digits.training_job: background training with live progress and Stop.

Jobs train small models on real MNIST subsets; each test has its own runs dir.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from digits import slots, store, training, training_job
from digits.errors import ConfigError
from digits.jobs import lower_priority
from digits.training_job import VALIDATION_SIZE, TrainingJob

TIMEOUT = 60  # seconds a job may take before a test gives up on it
TINY_CNN = {"conv_channels": (4,), "hidden_layer_sizes": (16,)}


@pytest.fixture(autouse=True)
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv(store.RUNS_DIR_ENV, str(tmp_path / "runs"))
    return tmp_path / "runs"


@pytest.fixture(autouse=True)
def one_slot(monkeypatch):
    """A fresh queue with one training slot, as on the 2-core machines."""
    monkeypatch.setattr(slots, "_shared", slots.TrainingSlots(1))


def wait_for(condition, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_job_trains_saves_and_reports_progress(mnist):
    job = TrainingJob("cnn", mnist, {**TINY_CNN, "max_iter": 2}, train_size=600)
    assert job.status == "pending"
    job.start()
    assert job.join(TIMEOUT)
    snap = job.snapshot()
    assert snap.status == "done" and snap.error is None
    assert snap.fraction == 1.0 and snap.eta == 0.0
    assert [e["epoch"] for e in snap.epochs] == [1, 2]
    assert all({"val_loss", "val_accuracy"} <= set(e) for e in snap.epochs)
    # The curve's x is epochs done: increasing, ending at exactly 2.
    xs = [p[0] for p in snap.points]
    assert xs == sorted(xs) and xs[-1] == 2.0
    run = store.open_run(snap.run.name)
    assert run.meta["dataset"]["n_train"] == 600
    assert run.meta["validation"] == (
        f"{VALIDATION_SIZE:,} of the last 5,000 training images "
        "(held out, never trained on)"
    )
    assert run.meta["stopped"] is None
    # Scored on the whole test set, and the Evaluate page's cache is filled.
    proba = store.predictions(run, mnist)
    assert run.test_accuracy == pytest.approx(
        np.mean(proba.argmax(axis=1) == mnist.y_test)
    )


def test_stop_ends_training_within_a_second_and_keeps_the_model(mnist):
    job = TrainingJob("cnn", mnist, {**TINY_CNN, "max_iter": 100}, train_size=2000)
    job.start()
    wait_for(lambda: len(job.snapshot().points) >= 2)
    job.stop()
    assert job.status in ("stopping", "saving")
    assert job.join(TIMEOUT)
    snap = job.snapshot()
    assert snap.status == "stopped"
    assert snap.stop_latency is not None and snap.stop_latency < 1.0
    assert snap.fraction < 0.5
    assert store.open_run(snap.run.name).meta["stopped"] == "interrupted"
    job.stop()  # stopping a finished job changes nothing
    assert job.status == "stopped"


def test_mlp_reports_each_epoch(mnist):
    job = TrainingJob(
        "mlp", mnist, {"hidden_layer_sizes": (16,), "max_iter": 3}, train_size=500
    ).start()
    assert job.join(TIMEOUT)
    snap = job.snapshot()
    assert snap.status in ("done", "stopped") and snap.run is not None
    assert [p[0] for p in snap.points] == [e["epoch"] for e in snap.epochs]


# Overflow warnings are how divergence shows inside the engine.
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_divergence_is_a_failed_job_with_the_message(mnist, runs):
    job = TrainingJob(
        "dense",
        mnist,
        {"hidden_layer_sizes": (32,), "solver": "sgd", "learning_rate_init": 1e6},
        train_size=500,
    ).start()
    assert job.join(TIMEOUT)
    snap = job.snapshot()
    assert snap.status == "failed"
    assert "diverged" in snap.error and "learning rate" in snap.error
    assert snap.run is None
    saved = [p for p in runs.glob("*") if not p.name.startswith(".")]
    assert saved == []


def test_unexpected_errors_are_caught_with_a_short_message(mnist, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    # train_run (digits.training) saves through its own name for save_run.
    monkeypatch.setattr(training, "save_run", broken)
    job = TrainingJob("mlp", mnist, {"max_iter": 1}, train_size=300).start()
    assert job.join(TIMEOUT)
    snap = job.snapshot()
    assert snap.status == "failed"
    assert "disk on fire" in snap.error and "Traceback" not in snap.error


def test_bad_settings_are_refused_before_the_thread_starts(mnist):
    with pytest.raises(ConfigError, match="no parameter"):
        TrainingJob("cnn", mnist, {"convolutions": 3})
    job = TrainingJob("mlp", mnist, {"max_iter": 1}, train_size=300).start()
    with pytest.raises(RuntimeError, match="already been started"):
        job.start()
    job.join(TIMEOUT)


def test_two_jobs_at_once_queue_for_the_slot_and_keep_their_own_state(mnist):
    """Two browser sessions each hold a job: on 2 cores the second waits in line
    for the one training slot, then both finish with their own results."""
    jobs = [
        TrainingJob("mlp", mnist, {"max_iter": 2}, train_size=400, name="alice"),
        TrainingJob(
            "cnn", mnist, {**TINY_CNN, "max_iter": 1}, train_size=400, name="bob"
        ),
    ]
    for job in jobs:
        job.start()
    wait_for(lambda: jobs[0].status != "queued")
    assert jobs[0].status == "running"
    queued = jobs[1].snapshot()
    assert queued.status == "queued" and queued.queue_position == 1
    assert all(job.join(TIMEOUT) for job in jobs)
    alice, bob = (job.snapshot() for job in jobs)
    assert alice.run.name == "alice" and bob.run.name == "bob"
    assert alice.run.kind == "mlp" and bob.run.kind == "cnn"
    assert len(alice.epochs) == 2 and len(bob.epochs) == 1
    assert alice.status == bob.status == "done"
    # One after the other: bob's training began once alice's had ended.
    assert jobs[1]._started >= jobs[0]._ended - 1e-3


def test_a_job_stopped_in_the_queue_leaves_it_without_training(mnist):
    first = TrainingJob("cnn", mnist, {**TINY_CNN, "max_iter": 3}, train_size=2000)
    second = TrainingJob("mlp", mnist, {"max_iter": 1}, train_size=300, name="never")
    first.start()
    second.start()
    assert second.snapshot().queue_position == 1
    second.stop()
    assert second.join(TIMEOUT)
    snap = second.snapshot()
    assert snap.status == "stopped" and snap.run is None and snap.points == []
    assert "never" not in [run.name for run in store.list_runs()[0]]
    wait_for(lambda: first.snapshot().points)  # a model worth saving
    first.stop()
    assert first.join(TIMEOUT) and first.snapshot().run is not None


def test_curve_points_average_back_to_each_epochs_loss(mnist):
    """Each point is the mean over the batches since the previous one, so the
    points of an epoch, weighted by their batches, give the epoch's mean loss."""
    batches = 8
    job = TrainingJob(
        "dense",
        mnist,
        {"hidden_layer_sizes": (32,), "batch_size": 64, "max_iter": 3},
        train_size=64 * batches,
    ).start()
    assert job.join(TIMEOUT)
    snap = job.snapshot()
    previous = 0.0
    for epoch in snap.epochs:
        points = [p for p in snap.points if previous < p[0] <= epoch["epoch"]]
        weights = np.diff([previous] + [p[0] for p in points]) * batches
        assert weights.sum() == pytest.approx(batches)
        mean = np.average([p[1] for p in points], weights=weights)
        assert mean == pytest.approx(epoch["loss"], rel=1e-6)
        previous = epoch["epoch"]


def test_training_threads_yield_the_cores_to_the_pages():
    """The job's thread lowers its own priority, and the trainer's worker thread
    (started by it) inherits it; the server's other threads keep theirs."""
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen = {}

    def worker():
        seen["worker"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    def job_thread():
        lower_priority(training_job.TRAINING_NICENESS)
        seen["job"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()

    thread = threading.Thread(target=job_thread)
    thread.start()
    thread.join()
    expected = min(19, own + training_job.TRAINING_NICENESS)
    assert seen == {"job": expected, "worker": expected}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own


def test_a_server_exiting_mid_training_prints_no_traceback(tmp_path):
    """Ctrl-C on the server exits Python under a running job. Its thread pool then
    refuses work; that is an exit, not a failure to log with a traceback."""
    script = tmp_path / "server.py"
    script.write_text(
        textwrap.dedent(
            """
            import threading, time
            # Registered before concurrent.futures is imported, so it runs after the
            # pool's own exit hook (they run in reverse order): it holds the process
            # in the window where the training thread's next submit fails.
            threading._register_atexit(lambda: time.sleep(1.5))
            from digits.data import load_dataset
            from digits.training_job import TrainingJob
            job = TrainingJob("cnn", load_dataset("mnist"), {"max_iter": 1},
                              train_size=5000).start()
            while job.status != "running":
                time.sleep(0.05)
            time.sleep(1.0)
            print("exiting while", job.status, flush=True)
            """
        )
    )
    env = dict(os.environ, DIGITS_RUNS_DIR=str(tmp_path / "runs"))
    out = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "exiting while running"
    assert "Traceback" not in out.stderr and "failed" not in out.stderr


def test_the_time_per_epoch_starts_as_the_estimate_then_follows_the_run(mnist):
    """Before training the job shows the probe's estimate for its settings; once
    batches run it is measured (calibrate.EpochClock), and at the end it is the
    mean of the epochs it ran."""
    from digits import calibrate

    job = TrainingJob("cnn", mnist, {**TINY_CNN, "max_iter": 2}, train_size=2000)
    before = job.snapshot()
    n_val = training.validation_images(mnist, VALIDATION_SIZE)
    params = job.params
    assert not before.epoch_measured
    assert before.epoch_seconds == pytest.approx(
        calibrate.estimate_epoch_seconds("cnn", params, 2000, n_validation=n_val)
    )
    job.start()
    assert job.join(TIMEOUT)
    after = job.snapshot()
    assert after.status == "done" and after.epoch_measured
    # The two epochs' own timings (training only) bound it from below.
    epochs = store.open_run(after.run.name).meta["history"]
    assert after.epoch_seconds >= min(e["seconds"] for e in epochs)
