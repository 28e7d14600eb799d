"""The loss: softmax and cross-entropy fused into one step, and when it has exploded."""

from __future__ import annotations

import math

import numpy as np

# A training loss above this many times the chance level means the weights have
# blown up; see exploding_loss.
EXPLODING_LOSS_FACTOR = 100.0


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``logits`` (N, K), shifted by the row max for stability."""
    z = logits - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def softmax_cross_entropy(
    logits: np.ndarray, y: np.ndarray
) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of softmax(logits) against integer labels, and its gradient.

    Parameters
    ----------
    logits : ndarray of shape (N, K)
    y : ndarray of shape (N,), integer class indices in [0, K)

    Returns
    -------
    loss : float, ``-sum(log p[i, y_i]) / N`` where ``p = softmax(logits)``
    dlogits : ndarray (N, K), ``(p - onehot(y)) / N``. Softmax's Jacobian and the
        log's derivative cancel to this simple form, which is why they are fused.
    """
    n = len(y)
    p = softmax(logits)
    rows = np.arange(n)
    # The smallest positive float instead of 0 keeps the log finite.
    picked = np.maximum(p[rows, y], np.finfo(p.dtype).tiny)
    loss = float(-np.log(picked, dtype=np.float64).sum() / n)
    p[rows, y] -= 1
    p /= n
    return loss, p


def exploding_loss(n_classes: int) -> float:
    """The training loss above which training has diverged even though it is finite:
    ``EXPLODING_LOSS_FACTOR`` times the chance level ``ln(n_classes)`` (and at least
    that many nats, for 2 classes).

    The loss meant is the one training reports: the batch's mean cross-entropy plus
    the L2 term. An untrained network predicts nearly uniform probabilities, so its
    loss is about ``ln K`` (2.30 for 10 classes), and learning lowers it. Healthy
    runs on MNIST stay far below 100 times that: the default CNN peaks at 1.6x
    (its second batch), SGD at a learning rate of 0.05 at 2.1x and 0.1 at 4x, Adam
    at 0.01 at 7x; even Adam at 0.05, 25 times the default rate, spikes to 30x on
    its second batch and then recovers to 86% accuracy. The cross-entropy itself
    cannot pass 87.3 nats an image (38x for 10 classes; float32 probabilities are
    floored at the smallest normal float32), so beyond the limit only the L2 term
    is growing: for alpha 1e-4 and batches of 64, the weights' squared norm has
    grown about a million times. Runs that blow up pass the limit within a few
    batches and keep growing: the default CNN with SGD at 1.0 reached 4,700x at
    batch 4; the scikit-learn MLP with SGD at 10 was at 470x after its first
    chunk. With ``alpha=0`` the loss cannot pass the limit; then only a non-finite
    loss or weights stop training.
    """
    return EXPLODING_LOSS_FACTOR * max(math.log(n_classes), 1.0)
