"""The loss: softmax and cross-entropy fused into one step, plus L2 regularisation."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``logits`` (N, K), shifted by the row max for stability."""
    z = logits - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def softmax_cross_entropy(
    logits: np.ndarray, y: np.ndarray, n_total: int | None = None
) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of softmax(logits) against integer labels, and its gradient.

    Parameters
    ----------
    logits : ndarray of shape (N, K)
    y : ndarray of shape (N,), integer class indices in [0, K)
    n_total : the batch size to average over; defaults to N. When a batch is split
        across threads, each part passes the whole batch's size so that the parts'
        losses and gradients simply add up.

    Returns
    -------
    loss : float, ``-sum(log p[i, y_i]) / n_total``
    dlogits : ndarray (N, K), ``(p - onehot(y)) / n_total``. Softmax's Jacobian and
        the log's derivative cancel to this simple form, which is why they are fused.
    """
    n = len(y) if n_total is None else n_total
    p = softmax(logits)
    rows = np.arange(len(y))
    picked = np.maximum(p[rows, y], np.finfo(p.dtype).tiny)
    loss = float(-np.log(picked, dtype=np.float64).sum() / n)
    p[rows, y] -= 1
    p /= n
    return loss, p


def l2_penalty(weights: list[np.ndarray], alpha: float, n: int) -> float:
    """``alpha / 2 * sum(||W||^2) / n``, scaled by the batch as scikit-learn's MLP does.

    Its gradient, ``alpha * W / n``, is added to each weight's gradient by the trainer.
    Biases are not penalised.
    """
    return 0.5 * alpha * sum(float(np.vdot(w, w)) for w in weights) / n
