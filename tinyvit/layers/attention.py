"""Multi-head self-attention, all heads at once.

For tokens x (B, T, D) and h heads of width d = D / h:

  q, k, v = split_heads(x @ Wqkv + bqkv)  one fused product, (B, T, 3D) -> 3 x (B, h, T, d)
  S = q @ k^T / sqrt(d)                   (B, h, T, T) scores: token i asking token j
  A = softmax(S) over the last axis       each row sums to one
  o = A @ v                               (B, h, T, d) a weighted mix of the values
  out = merge_heads(o) @ Wproj + bproj    (B, T, D)

Row 0 of A is what the CLS token attends to: the model keeps A in its cache so
the tutorials and plots can show it. The heads are never looped over in Python;
np.matmul batches over the leading (B, h) axes.

Column layout of Wqkv (D, 3D): [q | k | v], each block D columns, head-major
inside the block (head j owns columns j*d .. j*d + d - 1). This is the layout
of timm's ``qkv`` weight, transposed.
"""

from __future__ import annotations

import numpy as np

from .linear import linear_backward, linear_forward


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """exp(x) normalised to sum to one along ``axis``; x is left unchanged."""
    # BEGIN SOLUTION softmax
    # Subtracting the max leaves the result unchanged (it cancels in the ratio)
    # but keeps exp from overflowing.
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)
    # END SOLUTION


def softmax_forward(x: np.ndarray):
    """Softmax over the last axis: x (..., T) -> (A (..., T), cache = A)."""
    A = softmax(x, axis=-1)
    return A, A


def softmax_backward(dA: np.ndarray, cache) -> np.ndarray:
    """dA (..., T) -> dS (..., T), the gradient at the softmax input; cache is A."""
    # BEGIN SOLUTION softmax_backward
    A = cache
    # A = softmax(S): the Jacobian of one row is diag(A) - A A^T, so
    #   dS = A * (dA - sum_j dA_j A_j)
    # Leaving out the subtracted row sum is the "missing softmax term" bug.
    dS = A * (dA - (dA * A).sum(axis=-1, keepdims=True))
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


def attention_forward(x, Wqkv, bqkv, Wproj, bproj, heads: int):
    """x (B, T, D) -> out (B, T, D), cache; cache["attn"] is A (B, h, T, T)."""
    B, T, D = x.shape
    d = D // heads
    qkv, qkv_cache = linear_forward(x, Wqkv, bqkv)       # (B, T, 3D)
    q, k, v = split_heads(qkv, heads)                    # 3 x (B, h, T, d)
    scale = 1.0 / float(np.sqrt(d))                      # a Python float: float32 stays float32
    S = q @ k.swapaxes(-1, -2) * scale                   # (B, h, T, T)
    A, softmax_cache = softmax_forward(S)                # (B, h, T, T)
    o = A @ v                                            # (B, h, T, d)
    out, proj_cache = linear_forward(merge_heads(o), Wproj, bproj)   # (B, T, D)
    cache = {"attn": A, "q": q, "k": k, "v": v, "scale": scale, "qkv_cache": qkv_cache,
             "softmax_cache": softmax_cache, "proj_cache": proj_cache}
    return out, cache


def attention_backward(dout, cache):
    """dout (B, T, D) -> dx (B, T, D), dWqkv (D, 3D), dbqkv (3D,), dWproj (D, D), dbproj (D,)."""
    # BEGIN SOLUTION attention_backward
    A, q, k, v, scale = cache["attn"], cache["q"], cache["k"], cache["v"], cache["scale"]
    B, h, T, d = q.shape
    # out = merge_heads(o) @ Wproj + bproj
    dmerged, dWproj, dbproj = linear_backward(dout, cache["proj_cache"])   # (B, T, D)
    do = dmerged.reshape(B, T, h, d).transpose(0, 2, 1, 3)                # (B, h, T, d)
    # o = A @ v
    dA = do @ v.swapaxes(-1, -2)                         # (B, h, T, T)
    dv = A.swapaxes(-1, -2) @ do                         # (B, h, T, d)
    # A = softmax(S)
    dS = softmax_backward(dA, cache["softmax_cache"])    # (B, h, T, T)
    # S = q @ k^T * scale
    dq = dS @ k * scale                                  # (B, h, T, d)
    dk = dS.swapaxes(-1, -2) @ q * scale                 # (B, h, T, d)
    # q, k, v = split_heads(qkv): stack the three and undo the reshape and transpose
    dqkv = np.stack([dq, dk, dv])                        # (3, B, h, T, d)
    dqkv = dqkv.transpose(1, 3, 0, 2, 4).reshape(B, T, 3 * h * d)          # (B, T, 3D)
    # qkv = x @ Wqkv + bqkv
    dx, dWqkv, dbqkv = linear_backward(dqkv, cache["qkv_cache"])         # (B, T, D)
    return dx, dWqkv, dbqkv, dWproj, dbproj
    # END SOLUTION
