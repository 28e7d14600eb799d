"""Tests for digits.polish: the default CNN's last step, on real MNIST."""

from __future__ import annotations

import numpy as np
import pytest

from digits import data, polish, store
from digits.estimator import CNNClassifier

SMALL_CNN = {"conv_channels": (8, 16), "kernel_size": 3, "hidden_layer_sizes": (32,)}


@pytest.fixture(scope="module")
def small(mnist):
    """MNIST's last 6,000 training images (the last 5,000 validate, as in the
    whole set) and 500 test images."""
    return mnist._replace(
        x_train=mnist.x_train[-6000:],
        y_train=mnist.y_train[-6000:],
        x_test=mnist.x_test[:500],
        y_test=mnist.y_test[:500],
    )


@pytest.fixture(scope="module")
def trained(small):
    split = data.validation_split(small)
    model = CNNClassifier(**SMALL_CNN, max_iter=1, augment="writers", random_state=0)
    return model.fit(small.x_train[split.train], small.y_train[split.train])


def test_polish_learns_from_the_training_split_only_and_leaves_the_model(
    small, trained, monkeypatch
):
    split = data.validation_split(small)
    seen = []
    styles = polish.european_styles

    def spy(rows, labels, rng, shape, share):
        seen.append((rows, labels, share))
        return styles(rows, labels, rng, shape, share)

    monkeypatch.setattr(polish, "european_styles", spy)
    before = {k: v.copy() for k, v in trained.model_.state_dict().items()}
    polished, history = polish.polish(trained, small, epochs=2, european_share=0.5)
    # Each epoch styles the training split, as written, and nothing else.
    assert len(seen) == 2
    for rows, labels, share in seen:
        assert np.array_equal(rows, small.x_train[split.train].reshape(len(rows), -1))
        assert np.array_equal(labels, small.y_train[split.train]) and share == 0.5
    after = trained.model_.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)  # unchanged
    moved = polished.model_.state_dict()
    assert any(not np.array_equal(before[k], moved[k]) for k in before)
    # Epochs numbered after the model's own, marked, scored on validation.
    assert [row["epoch"] for row in history] == [2.0, 3.0]
    assert all(row["polish"] == 1.0 for row in history)
    # The same figures as the epochs of a model trained with validation images
    # (the shipped CNN's first), which Evaluate's curves read.
    shipped = store.open_run("default-cnn").meta["history"][0]
    assert set(history[0]) == set(shipped) | {"polish"}
    x_val, y_val = small.x_train[split.validation], small.y_train[split.validation]
    assert history[-1]["val_accuracy"] == (polished.predict(x_val) == y_val).mean()
    assert polished.history_[-2:] == history and len(polished.history_) == 3


def test_polish_keeps_the_flags_it_is_asked_for(small, trained, monkeypatch):
    styled = []
    styles = polish.european_styles
    monkeypatch.setattr(
        polish,
        "european_styles",
        lambda *args: styled.append(styles(*args)) or styled[-1],
    )
    split = data.validation_split(small)
    rows = small.x_train[split.train].reshape(len(split.train), -1)
    ones = small.y_train[split.train] == 1
    polish.polish(trained, small, epochs=1, european_share=1.0)
    assert (styled[0][ones] != rows[ones]).any(axis=1).all()  # every 1 flagged
    assert np.array_equal(
        styled[0][~ones & (small.y_train[split.train] != 7)],
        rows[~ones & (small.y_train[split.train] != 7)],
    )
    styled.clear()
    polish.polish(trained, small, epochs=1, european_share=0.0)
    assert np.array_equal(styled[0], rows)  # as written


@pytest.mark.parametrize(
    "settings", [{"epochs": 0}, {"learning_rate": 0.0}, {"european_share": 1.5}]
)
def test_polish_refuses_settings_out_of_range(small, trained, settings):
    with pytest.raises(polish.ConfigError):
        polish.polish(trained, small, **settings)


def test_the_command_saves_a_polished_run(tmp_path, monkeypatch, mnist, capsys):
    monkeypatch.setenv(store.RUNS_DIR_ENV, str(tmp_path / "runs"))
    split = data.validation_split(mnist)
    model = CNNClassifier(**SMALL_CNN, max_iter=1, random_state=0)
    model.fit(mnist.x_train[split.train][:3000], mnist.y_train[split.train][:3000])
    parent = store.save_run(
        model, kind="cnn", dataset=mnist, command="digits train ...", name="parent"
    )
    out = tmp_path / "polished"
    assert polish.main([str(parent.path), "--out", str(out), "--epochs", "1"]) == 0
    assert "polish epoch 1/1: validation accuracy" in capsys.readouterr().out
    run = store.open_run(out, allow_paths=True)
    assert run.meta["command"].startswith("digits train ... && python -m digits.polish")
    assert [row.get("polish") for row in run.meta["history"]] == [None, 1.0]
    assert run.meta["test"]["accuracy"] == pytest.approx(
        (store.load_model(run).predict(mnist.x_test) == mnist.y_test).mean()
    )
    # A run that is not there: one line, no traceback.
    assert polish.main(["no-such-run", "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("digits.polish:") and "Traceback" not in err
