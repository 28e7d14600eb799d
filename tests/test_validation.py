"""Validation comes from training images, never the test set.

One rule holds out the validation images (``data.validation_split``): MNIST and
Fashion-MNIST their last 5,000 training images, other datasets a stratified 10%.
These tests check the rule, then follow the images every training path hands to
the estimators (``train_run`` for the CLI, the dashboard's ``TrainingJob``, a
sweep's trials, early stopping) and check that no figure of the curves is
computed from a test image: the test set is touched only for the final score.
"""

from __future__ import annotations

import numpy as np
import pytest

from digits import data, experiments, store, training
from digits.baseline import MLPBaseline
from digits.estimator import CNNClassifier
from digits.training_job import TrainingJob

TINY_CNN = dict(conv_channels=(4,), kernel_size=3, hidden_layer_sizes=(16,))


@pytest.fixture(autouse=True)
def runs_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(store.RUNS_DIR_ENV, str(tmp_path / "runs"))


@pytest.fixture(scope="module")
def digits():
    return data.load_dataset("sklearn-digits")


@pytest.fixture
def poisoned(mnist):
    """MNIST with a test set no real image can be mistaken for: every test pixel
    is 255. Any such image in what a model trains or validates on is a leak."""
    x_test = np.full((300, 28, 28), 255, dtype=np.uint8)
    y_test = np.arange(300, dtype=np.int64) % 10
    return mnist._replace(x_test=x_test, y_test=y_test)


@pytest.fixture
def seen(monkeypatch):
    """Every (images, validation images) pair given to an estimator's fit."""
    calls = []
    for cls in (CNNClassifier, MLPBaseline):
        real = cls.fit

        def spy(self, X, y, *args, _real=real, **kwargs):
            val = kwargs.get("validation_data")
            calls.append((np.asarray(X), None if val is None else np.asarray(val[0])))
            return _real(self, X, y, *args, **kwargs)

        monkeypatch.setattr(cls, "fit", spy)
    return calls


def _rows(images: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in images.reshape(len(images), -1)}


def _assert_no_test_image(calls, ds) -> None:
    test_rows = _rows(ds.x_test)
    assert calls, "no estimator was trained"
    for x, val in calls:
        assert val is not None and len(val), "the curves had no validation images"
        assert not (_rows(x) & test_rows), "a test image was trained on"
        assert not (_rows(val) & test_rows), "a test image was validated on"
        assert not (_rows(x) & _rows(val)), "a validation image was trained on"


# -- the rule ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_mnist_and_fashion_hold_out_their_last_5000_training_images(name):
    ds = data.load_dataset(name)
    split = data.validation_split(ds)
    assert split.validation.tolist() == list(range(55_000, 60_000))
    assert split.train.tolist() == list(range(55_000))
    assert split.rule == "the last 5,000 training images"


def test_other_datasets_hold_out_a_stratified_tenth_the_same_every_time(digits):
    split = data.validation_split(digits)
    n = len(digits.x_train)
    assert sorted([*split.train, *split.validation]) == list(range(n))
    assert len(split.validation) == pytest.approx(0.1 * n, abs=1)
    # Stratified: each class is held out in proportion to its share.
    held = np.bincount(digits.y_train[split.validation], minlength=10)
    share = np.bincount(digits.y_train, minlength=10) * 0.1
    assert np.all(np.abs(held - share) <= 1)
    again = data.validation_split(digits)
    assert np.array_equal(again.validation, split.validation)


def test_a_training_set_too_small_to_spare_an_image_holds_none_out(digits):
    tiny = digits._replace(x_train=digits.x_train[:3], y_train=np.array([0, 1, 2]))
    split = data.validation_split(tiny)
    assert split.train.tolist() == [0, 1, 2] and split.validation.size == 0


def test_the_plan_draws_the_training_subset_from_the_rest_only(mnist):
    images = training.plan(mnist, train_size=1000, validation_size=300, seed=0)
    assert len(images.train) == 1000 and images.train.max() < 55_000
    assert len(images.validation) == 300 and images.validation.min() >= 55_000
    assert images.described == (
        "300 of the last 5,000 training images (held out, never trained on)"
    )


# -- every path that trains -------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "params"),
    [("cnn", TINY_CNN), ("mlp", {"hidden_layer_sizes": (16,)}), ("dense", {})],
)
def test_train_run_curves_come_from_held_out_training_images(
    poisoned, seen, kind, params
):
    run = training.train_run(
        kind,
        poisoned,
        params={**params, "max_iter": 1},
        train_size=600,
        validation_size=400,
    )
    _assert_no_test_image(seen, poisoned)
    # The last validation figure is the saved model's accuracy on exactly the
    # plan's held-out images: the curve was computed from them.
    images = training.plan(poisoned, 600, 400, run.meta["params"]["random_state"])
    model = store.load_model(run)
    val = images.validation
    accuracy = np.mean(model.predict(poisoned.x_train[val]) == poisoned.y_train[val])
    assert run.meta["history"][-1]["val_accuracy"] == pytest.approx(accuracy)
    assert run.meta["validation"] == images.described
    assert run.meta["test"]["n"] == len(poisoned.x_test)  # scored once, at the end


def test_early_stopping_watches_the_held_out_images(poisoned, seen):
    run = training.train_run(
        "mlp",
        poisoned,
        params={"hidden_layer_sizes": (16,), "early_stopping": True, "max_iter": 3},
        train_size=600,
    )
    _assert_no_test_image(seen, poisoned)
    [(_, val)] = seen
    assert len(val) == 5000  # all of them: the CLI scores the whole split
    assert run.meta["validation"].startswith("the last 5,000 training images")


def test_the_dashboard_job_validates_on_held_out_training_images(poisoned, seen):
    job = TrainingJob("cnn", poisoned, {**TINY_CNN, "max_iter": 1}, train_size=500)
    # Building the job may time its network on random images (calibrate's probe,
    # for the time per epoch): not a fit of this dataset, so not counted.
    seen.clear()
    job.start()
    assert job.join(120)
    snap = job.snapshot()
    assert snap.status == "done", snap.error
    _assert_no_test_image(seen, poisoned)
    assert "held out" in snap.run.meta["validation"]


def test_a_sweeps_trials_validate_on_held_out_training_images(poisoned):
    sweep = experiments.plan(
        "dense",
        {"hidden_layer_sizes": [(8,), (16,)]},
        seeds=(0,),
        train_size=500,
        params={"max_iter": 1},
    )
    outcome = experiments.run_sweep(sweep, poisoned, n_jobs=1)
    assert [row["status"] for row in outcome.rows] == ["done", "done"]
    images = training.plan(poisoned, 500, training.VALIDATION_SIZE, 0)
    val = images.validation
    for row in outcome.rows:
        run = store.open_run(row["run"])
        predicted = store.load_model(run).predict(poisoned.x_train[val])
        accuracy = np.mean(predicted == poisoned.y_train[val])
        assert run.meta["history"][-1]["val_accuracy"] == pytest.approx(accuracy)
        assert run.meta["validation"] == images.described
        # The table compares configurations by it, the test score kept apart.
        assert row["val_accuracy"] == pytest.approx(accuracy)
    summary = experiments.summarise(outcome.rows)
    assert [c["val_mean"] for c in summary] == [
        pytest.approx(row["val_accuracy"]) for row in outcome.rows
    ]


def test_a_table_from_before_validation_was_recorded_still_summarises():
    row = {"label": "a", "status": "done", "test_accuracy": 0.9, "train_seconds": 1}
    row |= {"conv_channels": [], "hidden_layer_sizes": [8], "n_params": 10}
    [config] = experiments.summarise([row])
    assert config["val_mean"] is None and config["accuracy_mean"] == 0.9
