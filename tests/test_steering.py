"""Steering a run mid-way (digits.nn.callbacks.Steering): Pause holds training
between batches and Resume ends with the weights of an unpaused run, bit for bit;
a learning rate or momentum set by hand is used from the next batch on, replaces
the schedule, and is written into the run's history. For the lesson's loop and the
engine, on real MNIST images."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from digits.estimator import CNNClassifier
from digits.nn.callbacks import Callback, Steering

N_IMAGES = 640  # 10 batches of 64 an epoch
BOTH_LOOPS = pytest.mark.parametrize(
    "settings",
    [dict(trainer="plain"), dict(trainer="engine", n_threads=2)],
    ids=["plain loop", "engine"],
)


def small_cnn(**settings) -> CNNClassifier:
    params = dict(
        conv_channels=(4,),
        kernel_size=3,
        hidden_layer_sizes=(16,),
        max_iter=2,
        batch_size=64,
        random_state=3,
        augment=True,  # the augmentations draw random numbers: they must line up
    )
    return CNNClassifier(**(params | settings))


def weights(est: CNNClassifier) -> np.ndarray:
    return np.concatenate([p.ravel() for _, p, _ in est.model_.parameters()])


class Steps(Callback):
    """Counts batches; after batch ``at`` (0-based, counted over the whole run:
    ``step`` starts again at 0 each epoch), calls ``then()`` from the training
    thread."""

    def __init__(self, at: int = -1, then=None) -> None:
        self.at, self.then, self.done = at, then, 0
        self.rates: list[float] = []

    def on_batch_end(self, step, logs):
        self.done += 1
        self.rates.append(logs["learning_rate"])
        if self.done - 1 == self.at:
            self.then()


def data(mnist):
    return mnist.x_train[:N_IMAGES], mnist.y_train[:N_IMAGES]


@BOTH_LOOPS
def test_pause_holds_and_resume_gives_the_unpaused_weights_bit_for_bit(mnist, settings):
    x, y = data(mnist)
    unpaused = small_cnn(**settings).fit(x, y)

    steering = Steering()
    steps = Steps(at=4, then=steering.pause)  # pause after the 5th batch
    est = small_cnn(**settings)
    thread = threading.Thread(
        target=est.fit, args=(x, y), kwargs=dict(callbacks=[steps, steering])
    )
    thread.start()
    deadline = time.monotonic() + 60
    while not steering.paused and time.monotonic() < deadline:
        time.sleep(0.01)
    assert steering.paused
    held = steps.done
    time.sleep(0.5)
    assert steps.done == held == 5  # no batch ran while paused
    assert thread.is_alive()
    steering.resume()
    thread.join(60)
    assert steps.done == 20
    np.testing.assert_array_equal(weights(est), weights(unpaused))


@BOTH_LOOPS
def test_a_rate_set_by_hand_is_used_from_the_next_batch_and_stops_the_schedule(
    mnist, settings
):
    x, y = data(mnist)
    steering = Steering()
    steps = Steps(at=6, then=lambda: steering.set_learning_rate(5e-4))
    est = small_cnn(learning_rate="cosine", **settings)
    est.fit(x, y, callbacks=[steps, steering])
    scheduled = est.learning_rate_init
    assert steps.rates[0] == scheduled  # cosine starts at the initial rate
    assert steps.rates[6] < scheduled  # and falls, batch by batch
    assert len(set(steps.rates[:7])) == 7
    # The 8th batch and every one after it: the new rate, unmoved by the schedule.
    assert steps.rates[7:] == [5e-4] * 13
    assert est.optimizer_.lr == 5e-4
    # The run's history says what happened, in the epoch it happened.
    first, second = est.history_
    assert first["learning_rate_set"] == 5e-4
    assert first["learning_rate_set_at_batch"] == 8
    assert "learning_rate_set" not in second
    assert steering.changes == [{"step": 7, "learning_rate": 5e-4}]


def test_a_change_mid_run_gives_the_same_weights_in_the_engine_and_the_lesson(mnist):
    """As tests/test_engine.py proves for a plain run: the engine with whole
    batches and the lesson's loop, steered alike, end bit for bit alike."""
    x, y = data(mnist)
    results = []
    for settings in (dict(trainer="plain"), dict(trainer="engine", n_threads=1)):
        steering = Steering()

        def change(steering=steering):
            steering.set_learning_rate(0.02)
            steering.set_momentum(0.5)

        est = small_cnn(solver="sgd", learning_rate_init=0.05, **settings)
        est.fit(x, y, callbacks=[Steps(at=3, then=change), steering])
        assert est.optimizer_.momentum == 0.5
        assert est.history_[0]["momentum_set"] == 0.5
        results.append(weights(est))
    np.testing.assert_array_equal(*results)


def test_a_momentum_change_reaches_the_engines_second_process(mnist, monkeypatch):
    """The twin process updates half of the weights: it must use the new
    momentum too, or the thread and process paths would part."""
    x, y = data(mnist)
    results = []
    for twin in ("thread", "process"):
        monkeypatch.setenv("DIGITS_TWIN", twin)
        steering = Steering()
        change = Steps(at=3, then=lambda s=steering: s.set_momentum(0.2))
        est = small_cnn(solver="sgd", trainer="engine", n_threads=2)
        est.fit(x, y, callbacks=[change, steering])
        assert est.optimizer_.momentum == 0.2
        results.append(weights(est))
    np.testing.assert_array_equal(*results)


def test_bad_settings_are_refused_with_the_value():
    from digits.nn.model import Sequential
    from digits.nn.optimizers import Adam
    from digits.nn.training import Trainer

    opt = Adam([np.zeros(3, np.float32)], [np.zeros(3, np.float32)])
    trainer = Trainer(
        Sequential([]),
        opt,
        batch_size=1,
        alpha=0,
        prepare=lambda x, rng: x,
        rng=np.random.default_rng(0),
    )
    with pytest.raises(ValueError, match="-1"):
        trainer.set_learning_rate(-1)
    with pytest.raises(ValueError, match="only SGD"):
        trainer.set_momentum(0.5)
