"""The affine layer y = x @ W + b.

Used for the patch embedding, the fused qkv projection, the attention output
projection, both MLP layers and the classifier head. W is stored (in, out), so
the forward is a single matrix product with no transpose.
"""

from __future__ import annotations

import numpy as np


# Sums written as matrix-vector products with a vector of ones. They add the
# same numbers as ``.sum``, but inside BLAS, which at these shapes is several
# times faster than NumPy's generic reduction loop (a speed trick, not math).
def sum_keepdims(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """x.sum(axis=axis, keepdims=True); a product with ones when axis is the last."""
    if axis in (-1, x.ndim - 1):
        n = x.shape[-1]                                  # one (rows, n) @ (n,) product
        return (x.reshape(-1, n) @ np.ones(n, dtype=x.dtype)).reshape(*x.shape[:-1], 1)
    return x.sum(axis=axis, keepdims=True)


def sum_rows(x2: np.ndarray) -> np.ndarray:
    """x2 (R, n) -> x2.sum(axis=0) (n,), as ones (R,) @ x2."""
    return np.ones(x2.shape[0], dtype=x2.dtype) @ x2


def linear_forward(x: np.ndarray, W: np.ndarray, b: np.ndarray):
    """x (..., in), W (in, out), b (out,) -> out (..., out), cache.

    Leading axes are flattened so the product is one 2-D BLAS call on
    (rows, in) @ (in, out), the fastest shape for NumPy's matmul.
    """
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])                      # (R, in), R = prod(lead)
    out = x2 @ W                                         # (R, out)
    out += b
    return out.reshape(*lead, W.shape[1]), (x2, W, lead)


def linear_backward(dout: np.ndarray, cache):
    """dout (..., out) -> dx (..., in), dW (in, out), db (out,)."""
    # BEGIN SOLUTION linear_backward
    # Reverses out = x @ W + b:
    #   dx = dout @ W.T          (each input feeds every output through W)
    #   dW = x.T @ dout          (summed over all rows: batch and tokens)
    #   db = sum of dout over rows
    x2, W, lead = cache
    dout2 = dout.reshape(-1, W.shape[1])                 # (R, out)
    dx = (dout2 @ W.T).reshape(*lead, W.shape[0])        # (..., in)
    dW = x2.T @ dout2                                    # (in, out)
    db = sum_rows(dout2)                                 # (out,) = dout2.sum(axis=0)
    return dx, dW, db
    # END SOLUTION
