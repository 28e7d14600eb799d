"""Scores for a classifier's predictions: plain numbers, lists and dicts.

Everything here takes true labels as class indices ``y_true`` of shape (n,) with
values in ``0..k-1`` and predicted probabilities ``proba`` of shape (n, k), whose
column ``j`` is class ``j``. The counting is scikit-learn's; this module only
shapes the results so that they can go straight into JSON, a table or a chart.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn import metrics as skm

# Clip probabilities before the log so a confident mistake costs a large but
# finite loss (the same epsilon scikit-learn's log_loss uses for float32).
_EPS = float(np.finfo(np.float32).eps)


def _losses(proba: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Cross-entropy per example, -log p(true class), shape (n,)."""
    return -np.log(np.clip(proba[np.arange(len(y)), y], _EPS, 1.0))


# How the misclassified examples can be ordered, worst first.
_MISTAKE_ORDERS = {
    # -log p(true class): the examples the model is most wrong about.
    "loss": _losses,
    # p(predicted class): the mistakes the model is most sure of.
    "confidence": lambda proba, y: proba.max(axis=1),
}


def _check(y_true: np.ndarray, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=np.int64)
    proba = np.asarray(proba)
    if proba.ndim != 2 or proba.shape[0] != y_true.shape[0]:
        raise ValueError(
            f"proba must have shape (n, k) with n = {y_true.shape[0]} labels; "
            f"got {proba.shape}"
        )
    return y_true, proba


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of ``y_pred`` (n,) equal to ``y_true`` (n,)."""
    return float(skm.accuracy_score(y_true, y_pred))


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Confusion matrix of shape (k, k): row = true class, column = predicted."""
    return skm.confusion_matrix(y_true, y_pred, labels=np.arange(n_classes))


def report(y_true: np.ndarray, proba: np.ndarray, class_names: Sequence[str]) -> dict:
    """Everything the Evaluate page and ``digits evaluate`` show, JSON-ready.

    Returns a dict with ``n``, ``accuracy``, ``loss`` (mean cross-entropy),
    ``per_class`` (one dict per class: ``class``, ``precision``, ``recall``,
    ``f1``, ``support``), ``macro`` (unweighted means of the three scores) and
    ``confusion_matrix`` (k lists of k counts, row = true class).
    """
    y_true, proba = _check(y_true, proba)
    k = len(class_names)
    labels = np.arange(k)
    y_pred = proba.argmax(axis=1)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    per_class = [
        {
            "class": str(name),
            "precision": float(p),
            "recall": float(r),
            "f1": float(f),
            "support": int(s),
        }
        for name, p, r, f, s in zip(
            class_names, precision, recall, f1, support, strict=True
        )
    ]
    return {
        "n": len(y_true),
        "accuracy": accuracy(y_true, y_pred),
        "loss": float(_losses(proba, y_true).mean()) if len(y_true) else 0.0,
        "per_class": per_class,
        "macro": {
            "precision": float(precision.mean()),
            "recall": float(recall.mean()),
            "f1": float(f1.mean()),
        },
        "confusion_matrix": confusion(y_true, y_pred, k).tolist(),
    }


def misclassified(
    y_true: np.ndarray, proba: np.ndarray, *, order: str = "loss"
) -> np.ndarray:
    """Indices (m,) of the wrongly predicted examples, worst first.

    ``order="loss"`` puts first the examples whose true class got the lowest
    probability; ``order="confidence"`` puts first the mistakes made with the
    highest probability for the (wrong) predicted class.
    """
    y_true, proba = _check(y_true, proba)
    if order not in _MISTAKE_ORDERS:
        raise ValueError(
            f"order must be one of {sorted(_MISTAKE_ORDERS)}; got {order!r}"
        )
    wrong = np.flatnonzero(proba.argmax(axis=1) != y_true)
    badness = _MISTAKE_ORDERS[order](proba[wrong], y_true[wrong])
    # Stable sort keeps ties in dataset order, so the result is reproducible.
    return wrong[np.argsort(-badness, kind="stable")]


def confusion_cell(
    y_true: np.ndarray, proba: np.ndarray, true: int, predicted: int
) -> np.ndarray:
    """Indices of the examples of class ``true`` predicted as ``predicted`` (one
    cell of the confusion matrix), most confident first (ties in dataset order).

    y_true : (n,) labels; proba : (n, k) probabilities.
    """
    y_true, proba = _check(y_true, proba)
    chosen = np.flatnonzero((y_true == true) & (proba.argmax(axis=1) == predicted))
    return chosen[np.argsort(-proba[chosen, predicted], kind="stable")]


def disagreement(
    proba_a: np.ndarray, proba_b: np.ndarray, y_true: np.ndarray | None = None
) -> dict:
    """Where two models predict different classes for the same examples.

    ``proba_a`` and ``proba_b`` have shape (n, k). Returns ``n``, ``rate`` (the
    fraction of examples predicted differently) and ``indices`` (those examples).
    With ``y_true`` (n,) it also counts ``only_a_right``, ``only_b_right``,
    ``both_right`` and ``both_wrong``.
    """
    proba_a, proba_b = np.asarray(proba_a), np.asarray(proba_b)
    if proba_a.shape != proba_b.shape or proba_a.ndim != 2:
        raise ValueError(
            f"both models need probabilities of the same shape (n, k); "
            f"got {proba_a.shape} and {proba_b.shape}"
        )
    pred_a, pred_b = proba_a.argmax(axis=1), proba_b.argmax(axis=1)
    differ = np.flatnonzero(pred_a != pred_b)
    n = len(pred_a)
    result: dict = {
        "n": n,
        "rate": len(differ) / n if n else 0.0,
        "indices": differ.tolist(),
    }
    if y_true is not None:
        y_true = np.asarray(y_true, dtype=np.int64)
        right_a, right_b = pred_a == y_true, pred_b == y_true
        result |= {
            "only_a_right": int(np.sum(right_a & ~right_b)),
            "only_b_right": int(np.sum(right_b & ~right_a)),
            "both_right": int(np.sum(right_a & right_b)),
            "both_wrong": int(np.sum(~right_a & ~right_b)),
        }
    return result


# -- calibration ---------------------------------------------------------------------

RELIABILITY_BINS = 10  # equal-width confidence bins of the reliability diagram


def _top_label(y_true: np.ndarray, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Confidence (the top probability, (n,)) and whether that class is right (n,)."""
    y_true, proba = _check(y_true, proba)
    return proba.max(axis=1).astype(np.float64), proba.argmax(axis=1) == y_true


def reliability(
    y_true: np.ndarray, proba: np.ndarray, n_bins: int = RELIABILITY_BINS
) -> dict:
    """Reliability diagram data: does "90% sure" come true 90% of the time?

    Each prediction's confidence (its top probability) falls in one of ``n_bins``
    equal-width bins of [0, 1], right edges included (as scikit-learn's
    ``calibration.calibration_curve`` bins them). Returns ``edges`` (n_bins + 1),
    per bin ``count``, ``confidence`` (mean top probability) and ``accuracy``
    (share right), both None for an empty bin, and ``ece``, the expected
    calibration error: sum over bins of count / n * |accuracy - confidence|.
    (``calibration_curve`` itself drops empty bins and gives no counts, hence the
    counting here; the tests check the two agree.)
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1; got {n_bins}")
    confidence, right = _top_label(y_true, proba)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.searchsorted(edges[1:-1], confidence)  # right edge in the lower bin
    count = np.bincount(bins, minlength=n_bins)
    conf_sum = np.bincount(bins, weights=confidence, minlength=n_bins)
    right_sum = np.bincount(bins, weights=right, minlength=n_bins)
    filled = count > 0
    n = len(confidence)
    gap = np.abs(right_sum[filled] - conf_sum[filled]).sum()
    return {
        "edges": edges.tolist(),
        "count": count.tolist(),
        "confidence": [
            float(s / c) if c else None for s, c in zip(conf_sum, count, strict=True)
        ],
        "accuracy": [
            float(s / c) if c else None for s, c in zip(right_sum, count, strict=True)
        ],
        "ece": float(gap / n) if n else 0.0,
    }


def coverage_curve(y_true: np.ndarray, proba: np.ndarray) -> dict:
    """Accuracy against coverage when the model answers only when sure enough.

    For every distinct confidence ``t`` (top probability), highest first: the
    share of examples with confidence >= t (``coverage``) and the accuracy on
    those (``accuracy``). Returns lists ``threshold``, ``coverage``,
    ``accuracy`` and ``kept`` (the number of examples answered), all of one
    length (the number of distinct confidences); empty for no examples.
    """
    confidence, right = _top_label(y_true, proba)
    order = np.argsort(-confidence, kind="stable")
    confidence, right = confidence[order], right[order]
    kept = np.arange(1, len(order) + 1)
    correct = np.cumsum(right)
    # Tied confidences are all kept or all dropped: one point per distinct value,
    # at the last example of its run.
    last = np.flatnonzero(np.append(np.diff(confidence) != 0, True))
    if not len(order):
        last = last[:0]
    return {
        "threshold": confidence[last].tolist(),
        "coverage": (kept[last] / len(order)).tolist(),
        "accuracy": (correct[last] / kept[last]).tolist(),
        "kept": kept[last].tolist(),
    }


def selective(y_true: np.ndarray, proba: np.ndarray, threshold: float) -> dict:
    """Answer only when the top probability is at least ``threshold``.

    Returns ``n``, ``kept`` (examples answered), ``coverage`` (kept / n),
    ``accuracy`` on the kept ones (None if none is kept) and ``errors`` (wrong
    answers among the kept).
    """
    confidence, right = _top_label(y_true, proba)
    keep = confidence >= threshold
    kept, n = int(keep.sum()), len(confidence)
    return {
        "n": n,
        "kept": kept,
        "coverage": kept / n if n else 0.0,
        "accuracy": float(right[keep].mean()) if kept else None,
        "errors": int(kept - right[keep].sum()),
    }
