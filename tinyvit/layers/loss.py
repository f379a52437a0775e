"""Softmax cross-entropy, averaged over the batch, with optional label smoothing.

With smoothing s and K classes the target is (1 - s) on the true class plus
s / K spread over all classes (as torch's CrossEntropyLoss does):
  loss = mean_b( -sum_k target[b, k] * log softmax(logits[b])_k )
  dlogits = (softmax(logits) - target) / B
"""

from __future__ import annotations

import numpy as np


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """log(softmax(x)) along ``axis``, computed without overflow: x - max - log(sum(exp(x - max)))."""
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray, label_smoothing: float = 0.0):
    """logits (B, K), labels (B,) integers in [0, K) -> (loss (float), dlogits (B, K))."""
    B, K = logits.shape
    log_probs = log_softmax(logits, axis=1)                         # (B, K)
    target = np.full((B, K), label_smoothing / K, dtype=logits.dtype)
    target[np.arange(B), labels] += 1.0 - label_smoothing
    loss = float(-(target * log_probs).sum() / B)
    dlogits = (np.exp(log_probs) - target) / B
    return loss, dlogits.astype(logits.dtype, copy=False)
