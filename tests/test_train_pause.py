"""Issue 19's first test, at the level the Train page uses (``TrainingJob``): a
job paused mid-run and resumed ends with the same weights, bit for bit, as the
same job never paused. (tests/test_steering.py proves it for the estimator
alone, in both training loops.) Real MNIST subset."""

from __future__ import annotations

import time

import numpy as np

# The training-job tests' fixtures: a runs dir per test, one training slot.
from test_training_job import one_slot, runs, wait_for  # noqa: F401

from digits import store
from digits.training_job import TrainingJob

TIMEOUT = 120  # seconds a job may take before a test gives up on it
SMALL_CNN = {"conv_channels": (4,), "hidden_layer_sizes": (16,), "max_iter": 2}


def saved_weights(job: TrainingJob) -> np.ndarray:
    assert job.join(TIMEOUT)
    snap = job.snapshot()
    assert snap.status == "done", snap.error
    model = store.load_model(snap.run.path, allow_paths=True)
    return np.concatenate([p.ravel() for _, p, _ in model.model_.parameters()])


def test_a_paused_and_resumed_job_ends_as_if_never_paused(mnist):
    unpaused = saved_weights(
        TrainingJob("cnn", mnist, SMALL_CNN, train_size=3000).start()
    )

    job = TrainingJob("cnn", mnist, SMALL_CNN, train_size=3000).start()
    wait_for(lambda: job.snapshot().fraction > 0.2)
    job.pause()
    wait_for(lambda: job.snapshot().paused)
    held = job.snapshot().fraction
    time.sleep(1.0)
    assert job.snapshot().fraction == held  # no batch while paused
    job.resume()
    paused = saved_weights(job)
    assert held < 1.0  # it did pause mid-run
    np.testing.assert_array_equal(paused, unpaused)
