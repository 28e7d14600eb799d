"""Tests for digits.metrics: hand-checkable cases, and agreement with scikit-learn."""

import json

import numpy as np
import pytest
from sklearn.metrics import classification_report, confusion_matrix, log_loss

from digits import metrics

# Four examples, three classes; predictions 0, 1, 1, 2 against truth 0, 1, 2, 2.
Y = np.array([0, 1, 2, 2])
PROBA = np.array(
    [
        [0.8, 0.1, 0.1],
        [0.2, 0.7, 0.1],
        [0.1, 0.6, 0.3],  # wrong: true 2, p(true) = 0.3
        [0.0, 0.1, 0.9],
    ]
)
NAMES = ("zero", "one", "two")


def test_report_by_hand():
    report = metrics.report(Y, PROBA, NAMES)
    assert report["n"] == 4
    assert report["accuracy"] == 0.75
    assert report["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    one, two = report["per_class"][1], report["per_class"][2]
    assert (one["class"], one["precision"], one["recall"]) == ("one", 0.5, 1.0)
    assert (two["precision"], two["recall"], two["support"]) == (1.0, 0.5, 2)
    assert report["loss"] == pytest.approx(log_loss(Y, PROBA))
    json.dumps(report)  # plain Python types only


def test_report_agrees_with_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(10, size=500)
    proba = rng.dirichlet(np.ones(10), size=500)
    proba[np.arange(250), y[:250]] += 2  # half of them right
    proba /= proba.sum(axis=1, keepdims=True)
    ours = metrics.report(y, proba, [str(i) for i in range(10)])
    theirs = classification_report(y, proba.argmax(axis=1), output_dict=True)
    for row in ours["per_class"]:
        assert row["precision"] == pytest.approx(theirs[row["class"]]["precision"])
        assert row["recall"] == pytest.approx(theirs[row["class"]]["recall"])
        assert row["f1"] == pytest.approx(theirs[row["class"]]["f1-score"])
    assert ours["macro"]["f1"] == pytest.approx(theirs["macro avg"]["f1-score"])
    assert ours["accuracy"] == pytest.approx(theirs["accuracy"])


def test_classes_never_predicted_score_zero_without_warnings():
    proba = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0]])
    with np.errstate(all="raise"):
        report = metrics.report(np.array([0, 1]), proba, NAMES)
    assert report["per_class"][2] == {
        "class": "two", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0,
    }  # fmt: skip


def test_misclassified_orders():
    y = np.array([0, 0, 0, 1])
    proba = np.array(
        [
            [0.4, 0.6],  # wrong, p(true) 0.4, confidence 0.6
            [0.9, 0.1],  # right
            [0.1, 0.9],  # wrong, p(true) 0.1, confidence 0.9
            [0.45, 0.55],  # right
        ]
    )
    assert metrics.misclassified(y, proba).tolist() == [2, 0]
    assert metrics.misclassified(y, proba, order="confidence").tolist() == [2, 0]
    # The two orders differ when a mistake is confident but not the costliest.
    proba3 = np.array([[0.05, 0.5, 0.45], [0.02, 0.49, 0.49]])
    y3 = np.array([0, 0])
    assert metrics.misclassified(y3, proba3, order="loss").tolist() == [1, 0]
    assert metrics.misclassified(y3, proba3, order="confidence").tolist() == [0, 1]
    with pytest.raises(ValueError, match="order"):
        metrics.misclassified(y, proba, order="random")


def test_disagreement():
    a = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    b = np.array([[0.8, 0.2], [0.7, 0.3], [0.4, 0.6], [0.1, 0.9]])
    y = np.array([0, 1, 1, 0])
    result = metrics.disagreement(a, b, y)
    assert result["indices"] == [1, 2] and result["rate"] == 0.5
    assert (result["only_a_right"], result["only_b_right"]) == (1, 1)
    assert (result["both_right"], result["both_wrong"]) == (1, 1)
    assert "only_a_right" not in metrics.disagreement(a, b)
    with pytest.raises(ValueError, match="same shape"):
        metrics.disagreement(a, b[:2])


def test_shape_errors():
    with pytest.raises(ValueError, match=r"shape \(n, k\)"):
        metrics.report(Y, PROBA[:2], NAMES)


def test_confusion_cell_lists_its_examples_most_confident_first():
    y = np.array([3, 3, 3, 5, 3])
    proba = np.zeros((5, 6))
    proba[:, 3] = [0.9, 0.2, 0.4, 0.1, 0.3]  # examples 1, 2 and 4 read as 5
    proba[:, 5] = 1 - proba[:, 3]
    assert metrics.confusion_cell(y, proba, 3, 5).tolist() == [1, 4, 2]
    assert metrics.confusion_cell(y, proba, 3, 3).tolist() == [0]
    assert metrics.confusion_cell(y, proba, 5, 3).tolist() == []
    # As many as the confusion matrix counts in that cell.
    matrix = confusion_matrix(y, proba.argmax(axis=1), labels=range(6))
    assert matrix[3, 5] == len(metrics.confusion_cell(y, proba, 3, 5))
