"""The fast layers: the same functions as tinyvit.layers, with the speed tricks.

tinyvit.layers holds every layer in its textbook form; this module holds the
versions training and the benchmark run. Each function here has the signature
of the reference function of the same name and must return the same numbers
(tests/test_fast_layers.py holds them equal to 1e-12 in float64, outputs and
every gradient). What they do differently:

- sums written as products with a vector of ones (BLAS adds faster than NumPy's
  reduction loop at these shapes);
- output buffers reused as scratch, elementwise work done in place;
- attention gradients written straight into the layout of the fused qkv product;
- a softmax over attention scores with no shift at all when no score can
  overflow exp, else one shift per matrix instead of one per row;
- a float32 GELU from one rational formula (Abramowitz & Stegun 7.1.26) instead
  of the float64-accurate erf, in cache-sized blocks, keeping phi(x) for the
  backward;
- n_queries=n in attention_forward and block_forward: only the first n tokens ask
  (the model's CLS-only last block, ViT.forward(last_block_cls_only=True)).

Caches are this module's own: pair a forward from here with a backward from here.
Functions with no trick (patchify, tokens, loss, pooling, registers) are the reference ones.
"""

from __future__ import annotations

import numpy as np

from .layers import (BLOCK_PARAMS, EPS, block_param_shapes, cls_backward, cls_forward,  # noqa: F401
                     log_softmax, merge_heads, patchify, patchify_backward, patchify_forward,
                     pos_backward, pos_forward, sincos_pos_embed, softmax_cross_entropy,
                     split_heads, unpatchify)
# Pooling and register tokens: no trick, the reference functions (their backward pairs with
# the reference forward; the attention pool's inner layers are the reference ones too).
from .layers import (ATTN_POOL_PARAMS, attn_pool_backward, attn_pool_forward,  # noqa: F401
                     attn_pool_param_shapes, mean_pool_backward, mean_pool_forward,
                     registers_backward, registers_forward)
from .special import erf
from .layers.box import *  # noqa: F401,F403  (box head, box losses, query pool: the reference forms)

SUPPORTS_QUERIES = True      # attention_forward and block_forward take n_queries=n


# --- linear ---------------------------------------------------------------------------------
# Sums written as matrix-vector products with a vector of ones. They add the
# same numbers as ``.sum``, but inside BLAS, which at these shapes is several
# times faster than NumPy's generic reduction loop (a speed trick, not math).
def _sum_last(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """x.sum(axis=axis, keepdims=True); a product with ones when axis is the last."""
    if axis in (-1, x.ndim - 1):
        n = x.shape[-1]                                  # one (rows, n) @ (n,) product
        return (x.reshape(-1, n) @ np.ones(n, dtype=x.dtype)).reshape(*x.shape[:-1], 1)
    return x.sum(axis=axis, keepdims=True)


def _column_sums(x2: np.ndarray) -> np.ndarray:
    """x2 (R, n) -> x2.sum(axis=0) (n,): the sum of each column, as ones (R,) @ x2."""
    return np.ones(x2.shape[0], dtype=x2.dtype) @ x2


def linear_forward(x: np.ndarray, W: np.ndarray, b: np.ndarray):
    """x (..., in), W (in, out), b (out,) -> out (..., out), cache.

    Leading axes are flattened so the product is one 2-D BLAS call on
    (rows, in) @ (in, out), the fastest shape for NumPy's matmul.

    Equals tinyvit.layers.linear_forward.
    """
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])                      # (R, in), R = prod(lead)
    out = x2 @ W                                         # (R, out)
    out += b
    return out.reshape(*lead, W.shape[1]), (x2, W, lead)


def linear_backward(dout: np.ndarray, cache):
    """dout (..., out) -> dx (..., in), dW (in, out), db (out,).

    Equals tinyvit.layers.linear_backward.
    """
    # Reverses out = x @ W + b:
    #   dx = dout @ W.T          (each input feeds every output through W)
    #   dW = x.T @ dout          (summed over all rows: batch and tokens)
    #   db = sum of dout over rows
    x2, W, lead = cache
    dout2 = dout.reshape(-1, W.shape[1])                 # (R, out)
    dx = (dout2 @ W.T).reshape(*lead, W.shape[0])        # (..., in)
    dW = x2.T @ dout2                                    # (in, out)
    db = _column_sums(dout2)                             # (out,) = dout2.sum(axis=0)
    return dx, dW, db


def layernorm_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = EPS):
    """x (..., D), gamma (D,), beta (D,) -> y (..., D), cache.

    Equals tinyvit.layers.layernorm_forward.
    """
    inv_D = 1.0 / x.shape[-1]
    mu = _sum_last(x) * inv_D                            # (..., 1) mean(x)
    xhat = x - mu                                        # (..., D) x - mu
    out = np.square(xhat)                                # (xc)^2, in the output's buffer
    var = _sum_last(out) * inv_D                         # (..., 1) mean((x - mu)^2)
    rstd = 1.0 / np.sqrt(var + eps)                      # (..., 1)
    xhat *= rstd                                         # xhat = (x - mu) * rstd, in place
    np.multiply(xhat, gamma, out=out)
    out += beta                                          # y = xhat * gamma + beta
    return out, (xhat, rstd, gamma)


def layernorm_backward(dout: np.ndarray, cache):
    """dout (..., D) -> dx (..., D), dgamma (D,), dbeta (D,).

    Equals tinyvit.layers.layernorm_backward.
    """
    # With g = dout * gamma (the gradient reaching xhat), the three paths from
    # x to xhat (directly, through mu, through var) add up to
    #
    #   dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
    #
    # the means taken over the D features of each token. Dropping either mean
    # term is the classic layer-norm bug: the gradient check catches both.
    xhat, rstd, gamma = cache
    D = xhat.shape[-1]
    # The sums over tokens and features below are matrix-vector products on
    # 2-D (rows, D) views: the same sums as .sum()/.mean(), done by BLAS.
    dout2, xhat2 = dout.reshape(-1, D), xhat.reshape(-1, D)
    dbeta = _column_sums(dout2)                          # (D,) dout summed over tokens
    dxh = dout2 * xhat2                                  # (R, D)
    dgamma = _column_sums(dxh)                           # (D,) (dout * xhat) summed over tokens
    g = dout2 * gamma                                    # (R, D) gradient at xhat
    mean_g = (dout2 @ gamma)[:, None] * (1.0 / D)        # (R, 1) mean(g)
    mean_gx = (dxh @ gamma)[:, None] * (1.0 / D)         # (R, 1) mean(g * xhat)
    np.multiply(xhat2, mean_gx, out=dxh)                 # xhat * mean(g * xhat), reusing dxh
    g -= dxh
    g -= mean_g
    g *= rstd.reshape(-1, 1)                             # dx = rstd * (g - mean_g - xhat * mean_gx)
    return g.reshape(dout.shape), dgamma, dbeta


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax: subtracting the row max leaves the result
    unchanged (it cancels in the ratio) but keeps exp from overflowing."""
    e = x - x.max(axis=axis, keepdims=True)
    np.exp(e, out=e)                                     # e = exp(x - max), in place
    e /= _sum_last(e, axis)                              # e.sum(axis, keepdims=True)
    return e


def softmax_forward(x: np.ndarray):
    """Softmax over the last axis: x (..., T) -> (probabilities (..., T), cache).

    Equals tinyvit.layers.softmax.

    Equals tinyvit.layers.softmax_forward.
    """
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
    total = _sum_last(e)                                 # (..., T, 1) row sums
    if not total.min() >= 1e-20:                         # (also catches NaN)
        return None
    e /= total
    return e


def softmax_backward(dA: np.ndarray, cache) -> np.ndarray:
    """dA (..., T) -> dS (..., T), the gradient at the softmax input."""
    # The Jacobian of one softmax row is diag(A) - A A^T, so
    #   dS = A * (dA - sum_j(dA_j * A_j))
    # The subtracted row sum is the "missing softmax term" a gradient check catches.
    A = cache
    dS = dA * A
    np.subtract(dA, _sum_last(dS, -1), out=dS)           # dA - sum_j(dA_j * A_j)
    dS *= A                                              # A * (dA - sum_j(dA_j * A_j))
    return dS


def attention_forward(x, Wqkv, bqkv, Wproj, bproj, heads: int, n_queries: int | None = None):
    """x (B, T, D) -> out (B, n, D), cache; cache["attn"] is A (B, h, n, T).

    n = T, or the first ``n_queries`` tokens only (they alone ask; all T answer).

    Equals tinyvit.layers.softmax_backward.

    Equals tinyvit.layers.attention_forward (which has no n_queries: it is n_queries=None here).
    """
    B, T, D = x.shape
    d = D // heads
    qkv, qkv_cache = linear_forward(x, Wqkv, bqkv)       # (B, T, 3D)
    q, k, v = split_heads(qkv, heads)                    # 3 x (B, h, T, d)
    if n_queries is not None:
        q = q[:, :, :n_queries]                          # (B, h, n, d): the first n tokens ask
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
    cache = {"attn": A, "q": q, "k": k, "v": v, "scale": scale,
             "qkv_cache": qkv_cache, "proj_cache": proj_cache}
    return out, cache


def attention_backward(dout, cache):
    """dout (B, n, D) -> dx (B, T, D), dWqkv (D, 3D), dbqkv (3D,), dWproj (D, D), dbproj (D,).

    n = T, or the ``n_queries`` given to attention_forward.

    Equals tinyvit.layers.attention_backward.
    """
    A, q, k, v, scale = cache["attn"], cache["q"], cache["k"], cache["v"], cache["scale"]
    B, h, n, T = A.shape                                 # n query rows (n = T unless n_queries=n)
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


# --- GELU --------------------------------------------------------------------
_SQRT_HALF = 0.7071067811865476            # 1 / sqrt(2)
_INV_SQRT_2PI = 0.3989422804014327         # 1 / sqrt(2 pi), the normal density at 0
_TANH_C = 0.7978845608028654               # sqrt(2 / pi)
_TANH_A = 0.044715


# A fast float32 path for Phi(x). Training runs in float32, which keeps about 7
# significant digits: tinyvit.special.erf (float64-accurate, three intervals picked
# out by boolean masks) is far more than it needs and slow. One formula covers
# the whole range instead, Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7):
#   erfc(z) ~= t (a1 + a2 t + a3 t^2 + a4 t^3 + a5 t^4) exp(-z^2),  t = 1 / (1 + p z),  z >= 0
# With z = |x| / sqrt(2), Q = erfc(z) / 2 is the normal tail P(N(0, 1) > |x|), and
#   Phi(x) = 1 - Q for x >= 0,  Q for x < 0,   that is  Phi(x) = 0.5 + copysign(0.5 - Q, x).
# (Float32 GELU values land within about 5e-7 of the float64 ones.)
_AS_P = 0.3275911 * _SQRT_HALF             # p / sqrt(2): t = 1 / (1 + p |x| / sqrt(2))
_AS_A = (1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592)   # a5 .. a1
# Q = erfc(z) / 2 = 0.5 t (a1 + ... + a5 t^4) exp(-x^2 / 2) = 0.5 sqrt(2 pi) t (a1 + ...) phi(x),
# phi the normal density: the factor 0.5 sqrt(2 pi) is folded into the coefficients, so the
# code below computes phi once and uses it twice (here, and in the backward, which needs it).
_AS_C = tuple(0.5 / _INV_SQRT_2PI * a for a in _AS_A)      # 0.5 sqrt(2 pi) a_i

_BLOCK = 1 << 18                           # numbers per block in the float32 GELU (1 MB)


def _gelu_exact_float32(x: np.ndarray, out: np.ndarray, cdf: np.ndarray, pdf: np.ndarray) -> None:
    """Fills cdf = Phi(x), pdf = phi(x) and out = x * Phi(x) for a float32 array x (...)."""
    t = np.abs(x)
    t *= _AS_P
    t += 1.0
    np.divide(1.0, t, out=t)                             # t = 1 / (1 + p z)
    q = np.multiply(t, _AS_C[0], out=cdf)                # Horner's rule, a5 first
    for c in _AS_C[1:]:
        q += c
        q *= t
    np.square(x, out=pdf)
    pdf *= -0.5
    np.exp(pdf, out=pdf)
    pdf *= _INV_SQRT_2PI                                 # phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
    q *= pdf                                             # Q = erfc(z) / 2
    np.subtract(0.5, q, out=q)
    np.copysign(q, x, out=q)
    q += 0.5                                             # Phi = 0.5 + copysign(0.5 - Q, x)
    np.multiply(x, q, out=out)                           # GELU = x * Phi(x)


def _gelu_tanh(x: np.ndarray, out: np.ndarray, t: np.ndarray) -> None:
    """Fills t = tanh(sqrt(2/pi) (x + 0.044715 x^3)) and out = 0.5 x (1 + t)."""
    np.square(x, out=t)
    t *= x
    t *= _TANH_A
    t += x
    t *= _TANH_C
    np.tanh(t, out=t)
    np.add(t, 1.0, out=out)
    out *= x
    out *= 0.5


def gelu_forward(x: np.ndarray, kind: str = "exact"):
    """GELU elementwise: x (...) -> (out (...), cache). kind: "exact" or "tanh".

    cache = (x, kind, aux): aux is (Phi(x), phi(x)), the normal CDF and density, for
    "exact", and t = tanh(sqrt(2/pi) (x + 0.044715 x^3)) for "tanh".

    Equals tinyvit.layers.gelu_forward.
    """
    if kind == "exact":
        if x.dtype == np.float32:                        # the fast float32 path
            out, cdf, pdf = np.empty_like(x), np.empty_like(x), np.empty_like(x)
            # Its twenty-odd passes run on blocks of rows, 1 MB per array, which stay in the
            # CPU's cache from one pass to the next (on arrays of several MB, a few % faster).
            n = x.shape[-1] if x.ndim else 1
            x2, o2, c2, p2 = (a.reshape(-1, n) for a in (x, out, cdf, pdf))
            rows = max(1, _BLOCK // n)
            for i in range(0, x2.shape[0], rows):
                _gelu_exact_float32(x2[i:i + rows], o2[i:i + rows], c2[i:i + rows], p2[i:i + rows])
            return out, (x, kind, (cdf, pdf))
        cdf = 0.5 * (1.0 + erf(x * _SQRT_HALF))          # Phi(x)
        pdf = np.exp(-0.5 * x * x) * _INV_SQRT_2PI       # phi(x), kept for the backward
        return x * cdf, (x, kind, (cdf, pdf))
    if kind == "tanh":
        out, t = np.empty_like(x), np.empty_like(x)
        _gelu_tanh(x, out, t)                            # out = 0.5 x (1 + t)
        return out, (x, kind, t)
    raise ValueError(f"kind: expected 'exact' or 'tanh', got {kind!r}")


def gelu_backward(dout: np.ndarray, cache) -> np.ndarray:
    """dout (...) -> dx (...), for the GELU kind stored in the cache."""
    # exact: d/dx [x Phi(x)] = Phi(x) + x phi(x),  phi(x) = exp(-x^2/2) / sqrt(2 pi)
    # tanh:  d/dx [0.5 x (1 + t)] = 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
    x, kind, aux = cache
    # Each line below works in place on one buffer (no temporary arrays);
    # the comment on the right is the plain formula it builds.
    if kind == "exact":
        cdf, pdf = aux                                   # Phi(x) and phi(x), from the forward
        grad = x * pdf
        grad += cdf                                      # Phi(x) + x * phi(x)
        grad *= dout
        return grad
    t = aux
    grad = np.square(x)
    grad *= 3.0 * _TANH_A
    grad += 1.0
    grad *= _TANH_C                                      # sqrt(2/pi) (1 + 3 * 0.044715 x^2)
    one_minus_t2 = np.square(t)
    np.subtract(1.0, one_minus_t2, out=one_minus_t2)
    grad *= one_minus_t2                                 # dt = (1 - t^2) * the line above
    grad *= x
    grad += t
    grad += 1.0
    grad *= 0.5                                          # 0.5 (1 + t) + 0.5 x dt
    grad *= dout
    return grad


# --- MLP ---------------------------------------------------------------------
def mlp_forward(x, W1, b1, W2, b2, gelu: str = "exact"):
    """x (..., D) -> (..., D) through a hidden layer of width M; returns (out, cache).

    Equals tinyvit.layers.gelu_backward.

    Equals tinyvit.layers.mlp_forward.
    """
    hid, c1 = linear_forward(x, W1, b1)                  # (..., M)
    act, cg = gelu_forward(hid, gelu)                    # (..., M)
    out, c2 = linear_forward(act, W2, b2)                # (..., D)
    return out, (c1, cg, c2)


def mlp_backward(dout, cache):
    """dout (..., D) -> dx (..., D), dW1 (D, M), db1 (M,), dW2 (M, D), db2 (D,).

    Equals tinyvit.layers.mlp_backward.
    """
    c1, cg, c2 = cache
    dact, dW2, db2 = linear_backward(dout, c2)           # (..., M)
    dhid = gelu_backward(dact, cg)                       # (..., M)
    dx, dW1, db1 = linear_backward(dhid, c1)             # (..., D)
    return dx, dW1, db1, dW2, db2


def block_forward(x, p: dict, heads: int, gelu: str = "exact", n_queries: int | None = None):
    """x (B, T, D), p the block's parameters by prefix-free name -> (out (B, n, D), cache).

    n = T, or the first ``n_queries`` tokens only.

    Equals tinyvit.layers.block_forward (which has no n_queries: it is n_queries=None here).
    """
    n1, c_n1 = layernorm_forward(x, p["norm1.gamma"], p["norm1.beta"])
    a, c_attn = attention_forward(n1, p["attn.qkv.W"], p["attn.qkv.b"],
                                  p["attn.proj.W"], p["attn.proj.b"], heads, n_queries)   # (B, n, D)
    x = x[:, :a.shape[1]] + a                            # residual 1 (all T rows unless n_queries=n)
    n2, c_n2 = layernorm_forward(x, p["norm2.gamma"], p["norm2.beta"])
    m, c_mlp = mlp_forward(n2, p["mlp.fc1.W"], p["mlp.fc1.b"],
                           p["mlp.fc2.W"], p["mlp.fc2.b"], gelu)
    out = x + m                                          # residual 2
    return out, (c_n1, c_attn, c_n2, c_mlp)


def block_backward(dout, cache):
    """dout (B, n, D) -> dx (B, T, D), grads (dict, same prefix-free names as the parameters).

    Equals tinyvit.layers.block_backward.
    """
    c_n1, c_attn, c_n2, c_mlp = cache
    g = {}
    # out = x + m: the gradient reaches x directly and through the MLP branch
    dn2, g["mlp.fc1.W"], g["mlp.fc1.b"], g["mlp.fc2.W"], g["mlp.fc2.b"] = mlp_backward(dout, c_mlp)
    dx_branch, g["norm2.gamma"], g["norm2.beta"] = layernorm_backward(dn2, c_n2)
    dx = dout + dx_branch
    # x = x_in + a: the same two paths around the attention branch
    dn1, g["attn.qkv.W"], g["attn.qkv.b"], g["attn.proj.W"], g["attn.proj.b"] = \
        attention_backward(dx, c_attn)
    dx_branch, g["norm1.gamma"], g["norm1.beta"] = layernorm_backward(dn1, c_n1)   # (B, T, D)
    dx_branch[:, :dx.shape[1]] += dx                     # + the straight path (the first n rows)
    return dx_branch, g


def layerscale_block_forward(x, p: dict, heads: int, gelu: str = "exact"):
    """The block with LayerScale, on this module's layers (its caches are this module's).

    Equals tinyvit.layers.layerscale_block_forward.
    """
    n1, c_n1 = layernorm_forward(x, p["norm1.gamma"], p["norm1.beta"])
    a, c_attn = attention_forward(n1, p["attn.qkv.W"], p["attn.qkv.b"],
                                  p["attn.proj.W"], p["attn.proj.b"], heads)
    x = x + p["ls1.gamma"] * a
    n2, c_n2 = layernorm_forward(x, p["norm2.gamma"], p["norm2.beta"])
    m, c_mlp = mlp_forward(n2, p["mlp.fc1.W"], p["mlp.fc1.b"], p["mlp.fc2.W"], p["mlp.fc2.b"], gelu)
    return x + p["ls2.gamma"] * m, (c_n1, c_attn, a, p["ls1.gamma"], c_n2, c_mlp, m, p["ls2.gamma"])


def layerscale_block_backward(dout, cache):
    """Equals tinyvit.layers.layerscale_block_backward."""
    c_n1, c_attn, a, ls1, c_n2, c_mlp, m, ls2 = cache
    D = dout.shape[-1]
    g = {"ls2.gamma": _column_sums((dout * m).reshape(-1, D))}
    dn2, g["mlp.fc1.W"], g["mlp.fc1.b"], g["mlp.fc2.W"], g["mlp.fc2.b"] = \
        mlp_backward(dout * ls2, c_mlp)
    dx, g["norm2.gamma"], g["norm2.beta"] = layernorm_backward(dn2, c_n2)
    dx += dout                                           # + the straight path of residual 2
    g["ls1.gamma"] = _column_sums((dx * a).reshape(-1, D))
    dn1, g["attn.qkv.W"], g["attn.qkv.b"], g["attn.proj.W"], g["attn.proj.b"] = \
        attention_backward(dx * ls1, c_attn)
    dx_attn, g["norm1.gamma"], g["norm1.beta"] = layernorm_backward(dn1, c_n1)
    dx_attn += dx                                        # + the straight path of residual 1
    return dx_attn, g
