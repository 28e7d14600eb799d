"""Tests for digits.baseline: scikit-learn's MLP trained epoch by epoch.

Real data throughout: 10,000 MNIST training images for the accuracy check
(full-size figures are in the report: `digits train --model mlp ...`), and
scikit-learn's 8x8 digits where only behaviour matters.
"""

import numpy as np
import pytest
from sklearn.neural_network import MLPClassifier

from digits import data
from digits.baseline import MLPBaseline, as_features, image_shape
from digits.errors import ConfigError, DataError, TrainingDiverged
from digits.nn.callbacks import Callback

EPOCH_KEYS = {"epoch", "loss", "accuracy", "seconds", "images_per_second"}
BATCH_KEYS = {"loss", "accuracy", "seconds", "images_per_second", "epoch", "batch"}


@pytest.fixture(scope="module")
def small():
    """scikit-learn's 8x8 digits: 1,437 training and 360 test images."""
    return data.load_dataset("sklearn-digits")


class Recorder(Callback):
    """Records every hook call; stops after ``stop_after`` epochs if given."""

    def __init__(self, stop_after=None):
        self.calls, self.epochs, self.batches = [], [], []
        self.stop_after = stop_after

    def on_train_begin(self, logs=None):
        self.calls.append("begin")

    def on_batch_end(self, step, logs):
        self.batches.append((step, dict(logs)))

    def on_epoch_end(self, epoch, logs):
        self.epochs.append((epoch, dict(logs)))
        if self.stop_after is not None and len(self.epochs) >= self.stop_after:
            self.stop_training = True

    def on_train_end(self, logs=None):
        self.calls.append(("end", dict(logs or {})))


def test_mlp_learns_mnist(mnist):
    # 10k images, 8 epochs: the quick version of the >= 97.5% full-size figure.
    model = MLPBaseline(
        (100,), max_iter=8, learning_rate_init=0.003, batch_size=100, random_state=0
    )
    model.fit(mnist.x_train[:10_000], mnist.y_train[:10_000])
    assert model.score(mnist.x_test, mnist.y_test) >= 0.94
    assert model.n_iter_ == 8 == len(model.loss_curve_) == len(model.history_)
    assert model.loss_curve_[-1] < model.loss_curve_[0]
    assert model.input_shape_ == (28, 28)
    assert model.classes_.tolist() == list(range(10))
    assert model.model_.coefs_[0].dtype == np.float32


def test_parameters_are_mlpclassifiers(small):
    ours = set(MLPBaseline().get_params())
    theirs = set(MLPClassifier().get_params()) - {"max_fun", "verbose"}
    assert theirs <= ours
    model = MLPBaseline(hidden_layer_sizes=(20, 10), activation="tanh", max_iter=2)
    model.fit(small.x_train, small.y_train)
    assert [c.shape for c in model.model_.coefs_] == [(64, 20), (20, 10), (10, 10)]
    assert model.model_.activation == "tanh"


def test_callbacks_see_the_cnn_logs(small):
    rec = Recorder()
    model = MLPBaseline((32,), max_iter=3, random_state=0)
    model.fit(
        small.x_train,
        small.y_train,
        callbacks=[rec],
        validation_data=(small.x_test, small.y_test),
    )
    assert rec.calls == ["begin", ("end", {"epochs": 3})]
    assert [e for e, _ in rec.epochs] == [0, 1, 2]
    for i, (_, logs) in enumerate(rec.epochs):
        assert EPOCH_KEYS | {"val_loss", "val_accuracy"} <= set(logs)
        assert logs["epoch"] == i + 1
        assert all(isinstance(v, float | int) for v in logs.values())
    assert [b["epoch"] for _, b in rec.batches] == [0, 1, 2]
    assert all(BATCH_KEYS | {"batches"} <= set(b) for _, b in rec.batches)
    assert model.validation_scores_ == [logs["val_accuracy"] for _, logs in rec.epochs]
    # The reported validation accuracy is the model's accuracy on that data.
    assert model.score(small.x_test, small.y_test) == pytest.approx(
        model.validation_scores_[-1]
    )
    assert model.history_ == [logs for _, logs in rec.epochs]


def test_callback_stops_between_epochs(small):
    rec = Recorder(stop_after=2)
    model = MLPBaseline((16,), max_iter=50, random_state=0)
    model.fit(small.x_train, small.y_train, callbacks=[rec])
    assert model.n_iter_ == 2
    assert rec.calls[-1] == ("end", {"epochs": 2})


def test_partial_fit_trains_one_epoch_per_call(small):
    model = MLPBaseline((32,), random_state=0)
    for _ in range(3):
        model.partial_fit(small.x_train, small.y_train, classes=range(10))
    assert model.n_iter_ == 3
    assert model.loss_curve_[2] < model.loss_curve_[0]
    assert [h["epoch"] for h in model.history_] == [1, 2, 3]


def test_epochs_get_different_batch_orders(small):
    # scikit-learn re-seeds partial_fit's shuffle from random_state on each call;
    # MLPBaseline must not replay one order, yet stay reproducible.
    def losses(seed):
        m = MLPBaseline((16,), max_iter=3, random_state=seed)
        return m.fit(small.x_train, small.y_train).loss_curve_

    assert losses(0) == losses(0)
    assert losses(0) != losses(1)


def test_early_stopping_restores_the_best_epoch(small):
    model = MLPBaseline(
        (16,),
        max_iter=200,
        early_stopping=True,
        n_iter_no_change=3,
        learning_rate_init=0.01,
        random_state=0,
    )
    model.fit(
        small.x_train, small.y_train, validation_data=(small.x_test, small.y_test)
    )
    assert model.n_iter_ < 200
    best = max(model.validation_scores_)
    assert model.score(small.x_test, small.y_test) == pytest.approx(best)


def test_early_stopping_holds_out_validation_fraction(small):
    model = MLPBaseline((16,), max_iter=3, early_stopping=True, random_state=0)
    rec = Recorder()
    model.fit(small.x_train, small.y_train, callbacks=[rec])
    assert all("val_accuracy" in logs for _, logs in rec.epochs)
    per_epoch = rec.epochs[0][1]["images_per_second"] * rec.epochs[0][1]["seconds"]
    assert per_epoch == pytest.approx(len(small.x_train) * 0.9, rel=0.01)


def test_training_loss_plateau_stops_like_sklearn(small):
    # With tol this large no epoch counts as an improvement after the first.
    model = MLPBaseline((16,), max_iter=50, tol=1e3, n_iter_no_change=2)
    model.fit(small.x_train, small.y_train)
    assert model.n_iter_ == 3


def test_inputs_any_shape_and_dtype_give_same_predictions(small):
    model = MLPBaseline((32,), max_iter=5, random_state=0)
    model.fit(small.x_train.reshape(len(small.x_train), -1), small.y_train)
    x = small.x_test
    expected = model.predict_proba(x)
    assert expected.shape == (len(x), 10)
    np.testing.assert_allclose(model.predict_proba(x.reshape(len(x), -1)), expected)
    np.testing.assert_allclose(model.predict_proba(x[:, None]), expected)
    np.testing.assert_allclose(model.predict_proba(x / 255.0), expected, atol=1e-6)
    assert model.input_shape_ == (8, 8)


def test_as_features_and_image_shape():
    x = np.full((2, 4, 4), 255, dtype=np.uint8)
    feats = as_features(x)
    assert feats.shape == (2, 16) and feats.dtype == np.float32 and feats.max() == 1
    assert image_shape(x) == (4, 4)
    assert image_shape(np.zeros((3, 64))) == (8, 8)
    assert image_shape(np.zeros((3, 10))) == (1, 10)
    with pytest.raises(DataError, match="4x4 images"):
        as_features(np.zeros((2, 5, 5)), (4, 4))
    with pytest.raises(DataError, match="NaN"):
        as_features(np.array([[0.5, np.nan]]))
    with pytest.raises(DataError, match="shape"):
        as_features(np.zeros(5))


def test_wrong_image_size_is_a_clear_error(small, mnist):
    model = MLPBaseline((8,), max_iter=1).fit(small.x_train, small.y_train)
    with pytest.raises(DataError, match="8x8 images"):
        model.predict(mnist.x_test[:5])


def test_bad_settings_raise_config_error(small):
    with pytest.raises(ConfigError, match="solver"):
        MLPBaseline(solver="lbfgs").fit(small.x_train, small.y_train)
    with pytest.raises(ConfigError, match="activation"):
        MLPBaseline(activation="swish").fit(small.x_train, small.y_train)
    with pytest.raises(ConfigError, match="not trained"):
        MLPBaseline().predict(small.x_test)


def test_unknown_labels_are_rejected(small):
    model = MLPBaseline((8,)).partial_fit(small.x_train, small.y_train)
    with pytest.raises(DataError, match="not among"):
        model.partial_fit(small.x_train[:3], np.array([1, 2, 42]))


def test_divergence_keeps_last_good_weights(small):
    settings = dict(
        hidden_layer_sizes=(16,), activation="identity", solver="sgd",
        learning_rate_init=1.0, random_state=0,
    )  # fmt: skip
    model = MLPBaseline(max_iter=5, **settings)
    with pytest.raises(TrainingDiverged, match=r"epoch 2.*exploded") as caught:
        model.fit(small.x_train, small.y_train)
    assert caught.value.usable
    assert model.n_iter_ == 1 == len(model.history_)
    assert all(np.isfinite(c).all() for c in model.model_.coefs_)
    assert np.isfinite(model.predict_proba(small.x_test)).all()
    # The weights from before the failing chunk: here the end of epoch 1.
    one = MLPBaseline(max_iter=1, **settings).fit(small.x_train, small.y_train)
    for kept, expected in zip(model._weights(), one._weights(), strict=True):
        np.testing.assert_array_equal(kept, expected)


def test_divergence_in_first_epoch_leaves_no_model(small):
    model = MLPBaseline(
        (16,), activation="identity", solver="sgd", learning_rate_init=1e3,
        max_iter=5, random_state=0,
    )  # fmt: skip
    with pytest.raises(TrainingDiverged, match="no model to keep") as caught:
        model.fit(small.x_train, small.y_train)
    assert not caught.value.usable
    with pytest.raises(ConfigError, match="not trained"):
        model.predict(small.x_test)


def test_stop_is_honoured_within_an_epoch(mnist):
    # 20,000 images are five partial_fit chunks; a Stop after the first chunk ends
    # the epoch there, so the dashboard's Stop does not wait for a whole epoch.
    class StopAfterFirstChunk(Recorder):
        def on_batch_end(self, step, logs):
            super().on_batch_end(step, logs)
            self.stop_training = True

    rec = StopAfterFirstChunk()
    model = MLPBaseline((16,), max_iter=3, random_state=0)
    model.fit(mnist.x_train[:20_000], mnist.y_train[:20_000], callbacks=[rec])
    assert [b["batch"] for _, b in rec.batches] == [1]
    assert rec.batches[0][1]["batches"] == 5
    assert model.n_iter_ == 1
    assert model.predict(mnist.x_test[:10]).shape == (10,)
