"""The affine layer y = x @ W + b.

Used for the patch embedding, the fused qkv projection, the attention output
projection, both MLP layers and the classifier head. W is stored (in, out), so
the forward is a single matrix product with no transpose.
"""

from __future__ import annotations

import numpy as np


def linear_forward(x: np.ndarray, W: np.ndarray, b: np.ndarray):
    """x (..., in), W (in, out), b (out,) -> out (..., out), cache."""
    out = x @ W + b                                      # (..., out): every row times W
    cache = (x, W)
    return out, cache


def linear_backward(dout: np.ndarray, cache):
    """dout (..., out) -> dx (..., in), dW (in, out), db (out,)."""
    # BEGIN SOLUTION linear_backward
    x, W = cache
    # out = x @ W + b
    dx = dout @ W.T                                      # (..., in): each input fed every output
    x2 = x.reshape(-1, x.shape[-1])                      # (R, in): all rows, batch and tokens alike
    dout2 = dout.reshape(-1, dout.shape[-1])             # (R, out)
    dW = x2.T @ dout2                                    # (in, out): summed over the R rows
    db = dout2.sum(axis=0)                               # (out,): b was added to every row
    return dx, dW, db
    # END SOLUTION
