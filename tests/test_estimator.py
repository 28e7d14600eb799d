"""CNNClassifier: the scikit-learn contract, training behaviour and saving."""

from __future__ import annotations

import json
import pickle
import threading

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import check_estimator

from digits.engine.flat import pack
from digits.errors import ConfigError, TrainingDiverged
from digits.estimator import CNNClassifier
from digits.nn.callbacks import Callback, EarlyStopping, History, StopOnEvent

SMALL = {"conv_channels": (4,), "hidden_layer_sizes": (16,), "kernel_size": 3}


def test_check_estimator_passes_for_the_dense_network():
    # Plain feature vectors of any width; every check applies. scikit-learn itself
    # skips check_array_api_input unless SCIPY_ARRAY_API=1 is set (the one
    # SkipTestWarning). max_iter=60: with 3 epochs of cosine-annealed steps the
    # toy problems of check_classifiers_train do not reach its 0.83 bar.
    check_estimator(CNNClassifier(conv_channels=(), max_iter=60, random_state=0))


def test_init_only_stores_and_clone_keeps_params():
    est = CNNClassifier(conv_channels=(8, 16), alpha=0.1, random_state=3)
    assert est.get_params()["conv_channels"] == (8, 16)
    twin = clone(est).set_params(alpha=0.5)
    assert twin.alpha == 0.5 and twin.conv_channels == (8, 16) and est.alpha == 0.1
    assert not hasattr(est, "model_")


def test_reaches_high_accuracy_on_a_mnist_subset(mnist):
    est = CNNClassifier(max_iter=1, random_state=0)
    history = History()
    fitted = est.fit(mnist.x_train[:12000], mnist.y_train[:12000], callbacks=[history])
    assert fitted is est
    assert est.score(mnist.x_test, mnist.y_test) >= 0.95
    assert est.n_iter_ == 1 and len(est.loss_curve_) == 1 and len(history.epochs) == 1
    logs = est.history_[0]
    for key in ("loss", "accuracy", "seconds", "images_per_second"):
        assert np.isfinite(logs[key])


def test_tiny_model_overfits_64_images(mnist):
    x, y = mnist.x_train[:64], mnist.y_train[:64]
    est = CNNClassifier(
        conv_channels=(8,),
        hidden_layer_sizes=(32,),
        dropout=0,
        batch_size=16,
        max_iter=40,
        learning_rate_init=3e-3,
        random_state=0,
    )
    est.fit(x, y)
    assert est.loss_curve_[-1] < est.loss_curve_[0] / 20
    assert est.score(x, y) == 1.0


def test_same_seed_gives_bit_identical_weights(mnist):
    x, y = mnist.x_train[:1000], mnist.y_train[:1000]
    a = CNNClassifier(**SMALL, max_iter=2, augment=True, random_state=7).fit(x, y)
    b = CNNClassifier(**SMALL, max_iter=2, augment=True, random_state=7).fit(x, y)
    c = CNNClassifier(**SMALL, max_iter=2, augment=True, random_state=8).fit(x, y)
    for key, value in a.model_.state_dict().items():
        np.testing.assert_array_equal(value, b.model_.state_dict()[key])
    assert not np.array_equal(
        a.model_.state_dict()["0.W"], c.model_.state_dict()["0.W"]
    )


@pytest.mark.parametrize("layout", ["images", "channel", "flat", "float"])
def test_accepts_every_input_layout(mnist, layout):
    x, y = mnist.x_train[:300], mnist.y_train[:300]
    shaped = {
        "images": x,
        "channel": x[:, None],
        "flat": x.reshape(300, -1),
        "float": x.astype(np.float32) / 255,
    }[layout]
    est = CNNClassifier(**SMALL, max_iter=1, random_state=0).fit(shaped, y)
    assert est.input_shape_ == (28, 28)
    # A model trained on any layout predicts the same for every other layout.
    np.testing.assert_array_equal(est.predict(x), est.predict(x.reshape(300, -1)))
    assert est.predict_proba(x[:5]).shape == (5, 10)


def test_bad_inputs_and_settings_give_clear_errors(mnist):
    with pytest.raises(ValueError, match="not a square image"):
        CNNClassifier(**SMALL).fit(np.zeros((10, 30)), np.arange(10))
    with pytest.raises(ConfigError, match="activation must be one of"):
        CNNClassifier(activation="swish").fit(mnist.x_train[:10], mnist.y_train[:10])
    with pytest.raises(ConfigError, match="do not fit 8x8 images"):
        CNNClassifier(conv_channels=(4, 4, 4), kernel_size=3).fit(
            np.zeros((10, 8, 8), np.uint8), np.arange(10)
        )
    est = CNNClassifier(**SMALL, max_iter=1).fit(mnist.x_train[:50], mnist.y_train[:50])
    with pytest.raises(ValueError, match="trained on 28x28"):
        est.predict(np.zeros((2, 20, 20)))


def test_divergence_keeps_the_last_weights_that_gave_a_sane_loss(mnist):
    """The batch whose loss explodes was computed with the weights of the update
    before it; the model keeps the weights from before that update, exactly those
    of an identical run stopped there, and lists no unfinished epoch."""
    x, y = mnist.x_train[:2000], mnist.y_train[:2000]
    settings = dict(
        conv_channels=(),
        hidden_layer_sizes=(64,),
        solver="sgd",
        momentum=0.99,
        learning_rate_init=3.0,
        max_iter=3,
        random_state=0,
    )
    est = CNNClassifier(**settings)
    with pytest.raises(
        TrainingDiverged, match=r"epoch 1, batch 32: the loss explo"
    ) as caught:
        est.fit(x, y)
    message = str(caught.value)
    assert caught.value.usable
    assert "from before batch 31 of epoch 1 (0 epochs finished)" in message
    assert "can be saved" in message and "learning_rate_init is 3" in message
    assert est.n_iter_ == 0 and est.history_ == []
    assert np.isfinite(est.predict_proba(mnist.x_test[:10])).all()
    stopped = CNNClassifier(**settings).fit(x, y, callbacks=[StopAfter(30)])
    for key, w in stopped.model_.state_dict().items():
        np.testing.assert_array_equal(est.model_.state_dict()[key], w, err_msg=key)
    # Training goes on from the kept weights, with a fresh optimizer state.
    assert est.optimizer_.params[0] is pack(est.model_).params
    assert not est.optimizer_.velocity[0].any()


def test_divergence_before_any_good_update_leaves_the_estimator_unfitted(mnist):
    est = CNNClassifier(
        conv_channels=(),
        hidden_layer_sizes=(64,),
        solver="sgd",
        momentum=0.99,
        learning_rate_init=1e6,
        max_iter=3,
        random_state=0,
    )
    with pytest.raises(
        TrainingDiverged, match=r"epoch 1, batch 2:.*no model"
    ) as caught:
        est.fit(mnist.x_train[:2000], mnist.y_train[:2000])
    assert not caught.value.usable
    assert not hasattr(est, "model_") and not hasattr(est, "classes_")
    with pytest.raises(NotFittedError):
        est.predict(mnist.x_test[:10])


class StopAfter(Callback):
    def __init__(self, batches):
        self.batches, self.seen = batches, 0

    def on_batch_end(self, step, logs):
        self.seen += 1
        self.stop_training = self.seen >= self.batches


def test_a_callback_stops_between_batches_and_the_model_is_usable(mnist):
    stopper = StopAfter(3)
    est = CNNClassifier(**SMALL, batch_size=32, max_iter=5, random_state=0)
    est.fit(mnist.x_train[:3200], mnist.y_train[:3200], callbacks=[stopper])
    assert stopper.seen == 3 and est.n_iter_ == 1  # the partial epoch is recorded
    assert est.predict(mnist.x_test[:20]).shape == (20,)
    event = threading.Event()
    event.set()
    est2 = CNNClassifier(**SMALL, max_iter=5, random_state=0).partial_fit(
        mnist.x_train[:500], mnist.y_train[:500]
    )
    est2.partial_fit(
        mnist.x_train[:500], mnist.y_train[:500], callbacks=[StopOnEvent(event)]
    )
    assert est2.n_iter_ == 1  # nothing ran after the event was set


def test_partial_fit_is_one_epoch_and_records_validation(mnist):
    est = CNNClassifier(**SMALL, learning_rate_init=5e-3, random_state=0)
    val = (mnist.x_test[:500], mnist.y_test[:500])
    for _ in range(3):
        est.partial_fit(mnist.x_train[:2000], mnist.y_train[:2000], validation_data=val)
    assert est.n_iter_ == 3 and len(est.validation_scores_) == 3
    assert est.validation_scores_[-1] > 0.8
    assert {"val_loss", "val_accuracy"} <= set(est.history_[-1])


def test_early_stopping_uses_patience():
    rng = np.random.default_rng(0)
    x, y = rng.random((400, 6)).astype(np.float32), rng.integers(2, size=400)
    est = CNNClassifier(
        conv_channels=(),
        early_stopping=True,
        n_iter_no_change=2,
        max_iter=50,
        random_state=0,
    ).fit(x, y)  # labels are noise: validation accuracy cannot keep improving
    assert est.n_iter_ < 50
    assert len(est.validation_scores_) == est.n_iter_
    stopper = EarlyStopping("val_loss", patience=1)
    stopper.on_train_begin()
    for epoch, loss in enumerate([1.0, 0.5, 0.6]):
        stopper.on_epoch_end(epoch, {"val_loss": loss})
    assert stopper.stop_training and stopper.stopped_epoch == 2


def test_save_load_gives_identical_predictions(mnist, tmp_path):
    est = CNNClassifier(**SMALL, max_iter=1, random_state=0)
    est.fit(mnist.x_train[:1000], mnist.y_train[:1000])
    config, arrays = est.get_state()
    (tmp_path / "model.json").write_text(json.dumps(config))
    np.savez(tmp_path / "weights.npz", **arrays)
    with np.load(tmp_path / "weights.npz", allow_pickle=False) as f:
        loaded = CNNClassifier.from_state(
            json.loads((tmp_path / "model.json").read_text()), dict(f)
        )
    x = mnist.x_test[:200]
    np.testing.assert_array_equal(loaded.predict_proba(x), est.predict_proba(x))
    assert loaded.history_ == est.history_
    # Pickling (joblib, clone of fitted) drops the activation caches but not the model.
    again = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(again.predict(x), est.predict(x))
    config["format_version"] = 99
    with pytest.raises(ValueError, match="format version 99"):
        CNNClassifier.from_state(config, arrays)


def test_check_fits_says_whether_a_network_fits_an_image_size_before_training():
    model = CNNClassifier(conv_channels=(32, 64), kernel_size=5)
    model.check_fits((28, 28))  # MNIST: fine
    with pytest.raises(ConfigError, match="do not fit 8x8 images"):
        model.check_fits((8, 8))
    assert not hasattr(model, "input_shape_")  # nothing was built


def test_only_presets_that_fit_are_offered_for_small_images():
    from digits import registry

    assert registry.get("cnn").presets_for((28, 28)) == ["default", "quick", "demo"]
    assert registry.get("cnn").presets_for((8, 8)) == ["quick"]
    assert registry.get("mlp").presets_for((8, 8)) == list(registry.get("mlp").presets)


def test_choices_parse_case_blind_and_show_words_for_learners():
    from digits import registry

    augment = registry.get("cnn").hyperparameter("augment")
    assert augment.parse("true") is True and augment.parse("FALSE") is False
    assert augment.parse(" Writers ") == "writers"
    with pytest.raises(ConfigError, match="expected one of False, True, writers"):
        augment.parse("sometimes")
    assert len(augment.choice_labels) == len(augment.choices)
