"""The Train page's steering and live views, at the job level
(digits.training_job): Pause holds a running job between batches and Resume
carries on; a learning rate set mid-run reaches the next batch and the saved run's
history; the live views (first filters, the probe digit through every layer, the
validation images still wrong) update while the job trains. Real MNIST subsets."""

from __future__ import annotations

import time

import numpy as np

# The training-job tests' fixtures: a runs dir per test, one training slot.
from test_training_job import one_slot, runs, wait_for  # noqa: F401

from digits import store
from digits.training_job import LIVE_SECONDS, TrainingJob

TIMEOUT = 120  # seconds a job may take before a test gives up on it
SMALL_CNN = {"conv_channels": (4,), "hidden_layer_sizes": (16,), "max_iter": 3}


def test_pause_holds_the_job_and_a_new_rate_is_used_and_saved(mnist):
    job = TrainingJob("cnn", mnist, SMALL_CNN | {"max_iter": 2}, train_size=3000)
    job.start()
    wait_for(lambda: job.snapshot().fraction > 0.1)
    job.pause()
    wait_for(lambda: job.snapshot().paused)
    held = job.snapshot().fraction
    time.sleep(1.0)
    assert job.snapshot().fraction == held  # no batch while paused
    job.set_learning_rate(3e-4)
    job.resume()
    assert job.join(TIMEOUT)
    snap = job.snapshot()
    assert snap.status == "done" and not snap.paused
    [(at, words)] = snap.changes
    assert words == "learning rate 0.0003"
    assert held <= at / snap.max_epochs <= held + 0.05  # right after the pause
    history = snap.run.meta["history"]
    assert [h.get("learning_rate_set") for h in history].count(3e-4) == 1
    assert store.open_run(snap.run.path, allow_paths=True).meta["history"] == history


def test_stop_wakes_a_paused_job(mnist):
    job = TrainingJob("cnn", mnist, SMALL_CNN, train_size=3000).start()
    wait_for(lambda: job.snapshot().fraction > 0.05)
    job.pause()
    wait_for(lambda: job.snapshot().paused)
    job.stop()
    assert job.join(TIMEOUT)
    assert job.snapshot().status == "stopped"


def test_the_live_views_update_while_the_job_trains(mnist):
    job = TrainingJob("cnn", mnist, SMALL_CNN | {"max_iter": 4}, train_size=6000)
    job.start()
    wait_for(lambda: job.snapshot().live is not None)
    first = job.snapshot().live
    assert first.probe_source.startswith("the first validation image")
    assert first.filters.shape == (4, 5, 5)  # 4 filters of 5x5
    assert first.layers[0].name == "conv1"
    assert first.probabilities.shape == (10,)
    assert np.isclose(first.probabilities.sum(), 1)
    wait_for(lambda: job.snapshot().live.at > first.at + 0.2)
    later = job.snapshot().live
    assert not np.array_equal(later.filters, first.filters)  # it learns
    wait_for(lambda: job.snapshot().live.mistakes_epoch >= 1)
    view = job.snapshot().live
    assert len(view.mistakes) == len(view.guesses) == len(view.truths) > 0
    assert (view.guesses != view.truths).all()
    job.stop()
    job.join(TIMEOUT)
    assert LIVE_SECONDS <= 5  # "every few seconds"


def test_the_probe_is_the_learners_drawing_when_given(mnist):
    drawing = np.zeros((28, 28), np.float32)
    drawing[4:24, 13:15] = 1.0  # a 1
    job = TrainingJob("cnn", mnist, SMALL_CNN, train_size=2000, probe=drawing)
    job.start()
    wait_for(lambda: job.snapshot().live is not None)
    live = job.snapshot().live
    assert live.probe_source == "your last drawing"
    np.testing.assert_array_equal(live.probe, drawing)
    job.stop()
    job.join(TIMEOUT)
