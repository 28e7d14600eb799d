"""Tests for the calibration scores in digits.metrics: by hand, then on the shipped
CNN's real predictions for MNIST test images, checked against scikit-learn."""

import numpy as np
import pytest
from sklearn.calibration import calibration_curve

from digits import metrics, store

# Four examples, two classes. Confidences 0.9 (right), 0.7 (right), 0.6 (wrong:
# true 1, predicted 0) and 0.55 (right).
Y = np.array([0, 1, 1, 0])
PROBA = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.55, 0.45]])
N_REAL = 2000  # MNIST test images scored by default-cnn (a few seconds)


@pytest.fixture(scope="module")
def real(mnist, tmp_path_factory):
    """(y, proba) of the shipped default-cnn on the first MNIST test images."""
    mp = pytest.MonkeyPatch()
    mp.setenv(store.RUNS_DIR_ENV, str(tmp_path_factory.mktemp("runs")))
    model = store.load_model("default-cnn")
    proba = store.predict_proba_full(model, mnist.x_test[:N_REAL], 10)
    mp.undo()
    return mnist.y_test[:N_REAL], proba


def test_reliability_by_hand():
    r = metrics.reliability(Y, PROBA, n_bins=5)  # bins of width 0.2
    # 0.55 and 0.6 fall in (0.4, 0.6] (right edges included), 0.7 and 0.9 above.
    assert r["count"] == [0, 0, 2, 1, 1]
    assert r["confidence"] == pytest.approx([None, None, 0.575, 0.7, 0.9])
    assert r["accuracy"] == [None, None, 0.5, 1.0, 1.0]
    # (2 * |0.5 - 0.575| + |1 - 0.7| + |1 - 0.9|) / 4
    assert r["ece"] == pytest.approx(0.1375)
    assert r["edges"] == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1])


def test_coverage_by_hand():
    c = metrics.coverage_curve(Y, PROBA)
    assert c["threshold"] == [0.9, 0.7, 0.6, 0.55]
    assert c["coverage"] == [0.25, 0.5, 0.75, 1.0]
    assert c["accuracy"] == pytest.approx([1, 1, 2 / 3, 3 / 4])
    assert metrics.selective(Y, PROBA, 0.6) == {
        "n": 4,
        "kept": 3,
        "coverage": 0.75,
        "accuracy": pytest.approx(2 / 3),
        "errors": 1,
    }
    nobody = metrics.selective(Y, PROBA, 0.95)
    assert (nobody["kept"], nobody["accuracy"], nobody["coverage"]) == (0, None, 0)


def test_tied_confidences_are_one_point():
    y = np.array([0, 1, 0])
    proba = np.array([[0.8, 0.2], [0.8, 0.2], [0.6, 0.4]])  # the second is wrong
    c = metrics.coverage_curve(y, proba)
    assert c["threshold"] == [0.8, 0.6]
    assert c["kept"] == [2, 3]
    assert c["accuracy"] == pytest.approx([0.5, 2 / 3])


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="shape"):
        metrics.reliability(Y, PROBA[:3])
    with pytest.raises(ValueError, match="n_bins"):
        metrics.reliability(Y, PROBA, n_bins=0)


def test_reliability_on_real_predictions_agrees_with_sklearn(real):
    y, proba = real
    r = metrics.reliability(y, proba, n_bins=10)
    assert sum(r["count"]) == N_REAL
    confidence = proba.max(axis=1)
    right = proba.argmax(axis=1) == y
    prob_true, prob_pred = calibration_curve(right, confidence, n_bins=10)
    filled = [i for i, c in enumerate(r["count"]) if c]
    assert len(filled) == len(prob_true)
    assert [r["accuracy"][i] for i in filled] == pytest.approx(prob_true)
    assert [r["confidence"][i] for i in filled] == pytest.approx(prob_pred)
    # A 10-class model is never below 10% sure: the lowest bin is empty.
    assert r["count"][0] == 0 and r["accuracy"][0] is None
    gaps = [
        c * abs(a - p)
        for c, a, p in zip(r["count"], r["accuracy"], r["confidence"], strict=True)
        if c
    ]
    assert r["ece"] == pytest.approx(sum(gaps) / N_REAL)
    # The shipped CNN (99.3% on MNIST) is close to calibrated, but not perfectly.
    assert 0 < r["ece"] < 0.02


def test_coverage_on_real_predictions(real):
    y, proba = real
    c = metrics.coverage_curve(y, proba)
    overall = float(np.mean(proba.argmax(axis=1) == y))
    assert c["coverage"][-1] == 1.0
    assert c["accuracy"][-1] == pytest.approx(overall)
    assert np.all(np.diff(c["threshold"]) < 0)
    assert np.all(np.diff(c["coverage"]) > 0)
    # Every point is what `selective` finds at its threshold.
    for i in np.linspace(0, len(c["threshold"]) - 1, 7).astype(int):
        s = metrics.selective(y, proba, c["threshold"][i])
        assert s["kept"] == c["kept"][i]
        assert s["accuracy"] == pytest.approx(c["accuracy"][i])
    # Answering only when 99% sure drops some images and makes fewer mistakes.
    sure = metrics.selective(y, proba, 0.99)
    assert 0.5 < sure["coverage"] < 1
    assert sure["accuracy"] > overall
