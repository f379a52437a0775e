"""Multi-head self-attention, all heads at once.

For tokens x (B, T, D) and h heads of width d = D / h:

  q, k, v = split(x @ Wqkv + bqkv)      one fused product, (B, T, 3D) -> 3 x (B, h, T, d)
  S = q @ k^T / sqrt(d)                 (B, h, T, T) scores: token i asking token j
  A = softmax(S) over the last axis     each row sums to one
  o = A @ v                             (B, h, T, d) a weighted mix of values
  out = merge_heads(o) @ Wproj + bproj  (B, T, D)

Row 0 of A is what the CLS token attends to: the model keeps A in its cache
so the tutorials and plots can show it. The heads are never looped over in
Python; np.matmul batches over the leading (B, h) axes.

queries=n lets only the first n tokens ask: q keeps n rows, A is (B, h, n, T)
and the output (B, n, D), while every token still offers its key and value.
The model uses n = 1 in its last block, where only the CLS token's output
reaches the classifier (see ViT.forward).

Column layout of Wqkv (D, 3D): [q | k | v], each block D columns, head-major
inside the block (head j owns columns j*d .. j*d + d - 1). This is the layout
of timm's ``qkv`` weight, transposed.
"""

from __future__ import annotations

import numpy as np

from .linear import linear_backward, linear_forward, sum_keepdims


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax: subtracting the row max leaves the result
    unchanged (it cancels in the ratio) but keeps exp from overflowing."""
    # BEGIN SOLUTION softmax
    e = x - x.max(axis=axis, keepdims=True)
    np.exp(e, out=e)                                     # e = exp(x - max), in place
    e /= sum_keepdims(e, axis)                           # e.sum(axis, keepdims=True)
    return e
    # END SOLUTION


def softmax_forward(x: np.ndarray):
    """Softmax over the last axis: x (..., T) -> (probabilities (..., T), cache)."""
    A = _softmax_matrix_shift(x) if x.ndim >= 3 else None
    if A is None:
        A = softmax(x, axis=-1)
    return A, A


def _softmax_matrix_shift(x: np.ndarray):
    """softmax(x) over the last axis for x (..., T, T), such as attention scores,
    without a max per row; None when unsafe.

    Any constant per row cancels in the softmax ratio. The row max is the usual
    choice, but NumPy takes ~45 ns per short row to find it (a third of the
    softmax's time). Scores are rarely above a few tens: when nothing in the
    whole array exceeds 60, exp cannot overflow (e^60 is about 1e26, and a row
    sum of T such terms stays far below float32's 3e38), so no shift is needed
    at all. Otherwise the max of each (T, T) matrix is subtracted, which keeps
    exp from overflowing just as well. Either way it can only fail if a whole
    row lies so far down that all its exps underflow: a row sum under 1e-20
    flags that, and the caller falls back to the row-max softmax.
    """
    if x.max() <= 60.0:                                  # (False for NaN)
        e = np.exp(x)                                    # no shift needed
    else:
        m = x.reshape(*x.shape[:-2], -1).max(axis=-1)    # (...,) one max per matrix
        e = x - m[..., None, None]
        np.exp(e, out=e)
    total = sum_keepdims(e)                              # (..., T, 1) row sums
    if not total.min() >= 1e-20:                         # (also catches NaN)
        return None
    e /= total
    return e


def softmax_backward(dA: np.ndarray, cache) -> np.ndarray:
    """dA (..., T) -> dS (..., T), the gradient at the softmax input."""
    # BEGIN SOLUTION softmax_backward
    # The Jacobian of one softmax row is diag(A) - A A^T, so
    #   dS = A * (dA - sum_j(dA_j * A_j))
    # The subtracted row sum is the "missing softmax term" a gradient check catches.
    A = cache
    dS = dA * A
    np.subtract(dA, sum_keepdims(dS, -1), out=dS)        # dA - sum_j(dA_j * A_j)
    dS *= A                                              # A * (dA - sum_j(dA_j * A_j))
    return dS
    # END SOLUTION


def split_heads(qkv: np.ndarray, heads: int):
    """(B, T, 3D) -> q, k, v, each (B, h, T, d): views, no copy."""
    B, T, threeD = qkv.shape
    d = threeD // (3 * heads)
    qkv = qkv.reshape(B, T, 3, heads, d).transpose(2, 0, 3, 1, 4)   # (3, B, h, T, d)
    return qkv[0], qkv[1], qkv[2]


def merge_heads(o: np.ndarray) -> np.ndarray:
    """(B, h, T, d) -> (B, T, D) with D = h * d, heads side by side."""
    B, h, T, d = o.shape
    return o.transpose(0, 2, 1, 3).reshape(B, T, h * d)


def attention_forward(x, Wqkv, bqkv, Wproj, bproj, heads: int, queries: int | None = None):
    """x (B, T, D) -> out (B, n, D), cache; cache["attn"] is A (B, h, n, T).

    n = T, or the first ``queries`` tokens only (they alone ask; all T answer)."""
    B, T, D = x.shape
    d = D // heads
    qkv, qkv_cache = linear_forward(x, Wqkv, bqkv)       # (B, T, 3D)
    q, k, v = split_heads(qkv, heads)                    # 3 x (B, h, T, d)
    if queries is not None:
        q = q[:, :, :queries]                            # (B, h, n, d): the first n tokens ask
    n = q.shape[2]
    scale = float(d) ** -0.5                             # a Python float: keeps float32 float32
    # k^T copied to contiguous (B, h, d, T) first: BLAS runs the many small
    # products faster from it than from the strided view of qkv.
    S = q @ np.ascontiguousarray(k.swapaxes(-1, -2))     # (B, h, n, T)
    S *= scale                                           # S = q @ k^T * scale, in place
    A, _ = softmax_forward(S)                            # (B, h, n, T)
    # o = A @ v (B, h, n, d), written straight into a (B, n, h, d) buffer: that is
    # merge_heads(o)'s layout, so the merge below is a free reshape, not a copy.
    merged = np.empty((B, n, heads, d), dtype=A.dtype)
    np.matmul(A, v, out=merged.transpose(0, 2, 1, 3))    # o = A @ v
    out, proj_cache = linear_forward(merged.reshape(B, n, D), Wproj, bproj)   # (B, n, D)
    cache = {"attn": A, "q": q, "k": k, "v": v, "scale": scale, "heads": heads,
             "qkv_cache": qkv_cache, "proj_cache": proj_cache}
    return out, cache


def attention_backward(dout, cache):
    """dout (B, n, D) -> dx (B, T, D), dWqkv (D, 3D), dbqkv (3D,), dWproj (D, D), dbproj (D,).

    n = T, or the ``queries`` given to attention_forward."""
    # BEGIN SOLUTION attention_backward
    A, q, k, v, scale = cache["attn"], cache["q"], cache["k"], cache["v"], cache["scale"]
    B, h, n, T = A.shape                                 # n query rows (n = T unless queries=n)
    d = q.shape[-1]
    # out = merge_heads(o) @ Wproj + bproj
    dmerged, dWproj, dbproj = linear_backward(dout, cache["proj_cache"])    # (B, n, D)
    do = dmerged.reshape(B, n, h, d).transpose(0, 2, 1, 3)                 # (B, h, n, d)
    # q, k, v = split_heads(qkv): their gradients are written straight into one
    # (B, T, 3, h, d) buffer, the layout of qkv, through the same head views
    # (the plain form: np.stack([dq, dk, dv]), transposed back and reshaped).
    dqkv = np.empty((B, T, 3, h, d), dtype=dout.dtype)
    dqkv[:, n:, 0] = 0.0                                 # tokens that asked nothing: dq = 0
    dq, dk, dv = dqkv.transpose(2, 0, 3, 1, 4)           # 3 x (B, h, T, d) views
    dq = dq[:, :, :n]                                    # (B, h, n, d)
    # o = A @ v
    dA = do @ v.swapaxes(-1, -2)                         # (B, h, n, T)
    np.matmul(A.swapaxes(-1, -2), do, out=dv)            # dv = A^T @ do
    # A = softmax(S)
    dS = softmax_backward(dA, A)                         # (B, h, n, T)
    # S = q @ k^T * scale
    dS *= scale                                          # the scale, applied once to dS
    np.matmul(dS, k, out=dq)                             # dq = dS @ k * scale
    np.matmul(dS.swapaxes(-1, -2), q, out=dk)            # dk = dS^T @ q * scale
    dqkv = dqkv.reshape(B, T, 3 * h * d)                 # (B, T, 3D), no copy
    dx, dWqkv, dbqkv = linear_backward(dqkv, cache["qkv_cache"])          # (B, T, D)
    return dx, dWqkv, dbqkv, dWproj, dbproj
    # END SOLUTION
