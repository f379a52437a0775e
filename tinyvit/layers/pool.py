"""Pooling: how the final tokens (B, T, D) become one vector per image (B, D) for the head.

The head reads one vector per image. Which one is a design choice:

  cls            the CLS token's final state, x[:, 0]           (the model does this by indexing)
  mean           the mean of the patch tokens, x[:, first:]     mean_pool_forward(x, first)
  mean_with_cls  the mean of every token, CLS included          mean_pool_forward(x, 0): a pitfall
  attn           a learned query attends over the patch tokens  attn_pool_forward

Attention pooling is timm's ``global_pool="map"`` (``AttentionPoolLatent``), the
"multihead attention pooling" head of big_vision and SigLIP, a class-attention head
in the spirit of CaiT: one learned latent vector asks, every patch token answers.

  q   = latent @ Wq + bq                      (1, 1, D) the same query for every image
  k,v = split(x @ Wkv + bkv)                  (B, N, 2D) -> 2 x (B, h, N, d)
  A   = softmax(q k^T / sqrt(d))              (B, h, 1, N) one attention row per head
  y   = merge_heads(A @ v) @ Wproj + bproj    (B, 1, D)
  out = y + MLP(LayerNorm(y))                 (B, 1, D) -> (B, D)

Column layout of Wkv (D, 2D): [k | v], head-major inside each block, as timm's
``attn_pool.kv.weight`` transposed.

Register tokens (Darcet et al. 2023, "Vision Transformers Need Registers") live here too:
learned tokens inserted after the CLS token that every block reads and writes but no
pooling ever reads (registers_forward / registers_backward).
"""

from __future__ import annotations

import numpy as np

from .attention import merge_heads, softmax_backward, softmax_forward
from .layernorm import layernorm_backward, layernorm_forward
from .linear import linear_backward, linear_forward
from .mlp import mlp_backward, mlp_forward


def mean_pool_forward(x: np.ndarray, first: int = 0):
    """x (B, T, D) -> the mean of tokens first .. T-1 (B, D), cache."""
    pooled = x[:, first:, :].mean(axis=1)                # (B, D)
    return pooled, (x.shape, first)


def mean_pool_backward(dout: np.ndarray, cache) -> np.ndarray:
    """dout (B, D) -> dx (B, T, D): each averaged token gets 1/n of dout, the others zero."""
    shape, first = cache
    B, T, D = shape
    dx = np.zeros(shape, dtype=dout.dtype)
    dx[:, first:, :] = dout[:, None, :] / (T - first)    # n = T - first tokens were averaged
    return dx


# The attention pool's parameter names and shapes (prefix-free; the model prepends "attn_pool.").
ATTN_POOL_PARAM_SHAPES = {
    "latent": ("1", "1", "D"),
    "q.W": ("D", "D"), "q.b": ("D",),
    "kv.W": ("D", "2D"), "kv.b": ("2D",),
    "proj.W": ("D", "D"), "proj.b": ("D",),
    "norm.gamma": ("D",), "norm.beta": ("D",),
    "mlp.fc1.W": ("D", "M"), "mlp.fc1.b": ("M",),
    "mlp.fc2.W": ("M", "D"), "mlp.fc2.b": ("D",),
}
ATTN_POOL_PARAMS = tuple(ATTN_POOL_PARAM_SHAPES)


def attn_pool_param_shapes(D: int, M: int) -> dict[str, tuple[int, ...]]:
    """The attention pool's parameter shapes for width D and MLP width M."""
    size = {"1": 1, "D": D, "2D": 2 * D, "M": M}
    return {name: tuple(size[s] for s in dims) for name, dims in ATTN_POOL_PARAM_SHAPES.items()}


def attn_pool_forward(x: np.ndarray, p: dict, heads: int, gelu: str = "exact"):
    """x (B, N, D), p the pool's parameters by prefix-free name -> (out (B, D), cache).

    cache["attn"] is A (B, h, 1, N): how much of each token the learned query takes.
    """
    B, N, D = x.shape
    d = D // heads
    q, c_q = linear_forward(p["latent"], p["q.W"], p["q.b"])          # (1, 1, D)
    q = q.reshape(1, 1, heads, d).transpose(0, 2, 1, 3)                # (1, h, 1, d)
    kv, c_kv = linear_forward(x, p["kv.W"], p["kv.b"])                 # (B, N, 2D)
    kv = kv.reshape(B, N, 2, heads, d).transpose(2, 0, 3, 1, 4)        # (2, B, h, N, d)
    k, v = kv[0], kv[1]                                                # (B, h, N, d) each
    scale = 1.0 / float(np.sqrt(d))
    S = q @ k.swapaxes(-1, -2) * scale                                 # (B, h, 1, N)
    A, c_soft = softmax_forward(S)                                     # (B, h, 1, N)
    o = A @ v                                                          # (B, h, 1, d)
    y, c_proj = linear_forward(merge_heads(o), p["proj.W"], p["proj.b"])   # (B, 1, D)
    n, c_norm = layernorm_forward(y, p["norm.gamma"], p["norm.beta"])
    m, c_mlp = mlp_forward(n, p["mlp.fc1.W"], p["mlp.fc1.b"], p["mlp.fc2.W"], p["mlp.fc2.b"], gelu)
    out = (y + m)[:, 0, :]                                             # (B, D): the one latent
    cache = {"attn": A, "q": q, "k": k, "v": v, "scale": scale, "q_cache": c_q, "kv_cache": c_kv,
             "softmax_cache": c_soft, "proj_cache": c_proj, "norm_cache": c_norm, "mlp_cache": c_mlp}
    return out, cache


def attn_pool_backward(dout: np.ndarray, cache):
    """dout (B, D) -> dx (B, N, D), grads (dict, the prefix-free names of ATTN_POOL_PARAMS)."""
    A, q, k, v, scale = cache["attn"], cache["q"], cache["k"], cache["v"], cache["scale"]
    B, h, N, d = k.shape
    g = {}
    dy = dout[:, None, :]                                # (B, 1, D)
    # out = y + MLP(LayerNorm(y)): two paths from y, as in a block's residual
    dn, g["mlp.fc1.W"], g["mlp.fc1.b"], g["mlp.fc2.W"], g["mlp.fc2.b"] = \
        mlp_backward(dy, cache["mlp_cache"])
    dy_branch, g["norm.gamma"], g["norm.beta"] = layernorm_backward(dn, cache["norm_cache"])
    dy = dy + dy_branch
    # y = merge_heads(o) @ Wproj + bproj
    dmerged, g["proj.W"], g["proj.b"] = linear_backward(dy, cache["proj_cache"])   # (B, 1, D)
    do = dmerged.reshape(B, 1, h, d).transpose(0, 2, 1, 3)                        # (B, h, 1, d)
    # o = A @ v
    dA = do @ v.swapaxes(-1, -2)                         # (B, h, 1, N)
    dv = A.swapaxes(-1, -2) @ do                         # (B, h, N, d)
    dS = softmax_backward(dA, cache["softmax_cache"])    # (B, h, 1, N)
    # S = q @ k^T * scale; q is one query shared by the batch, so its gradient sums over B
    dq = (dS @ k * scale).sum(axis=0, keepdims=True)     # (1, h, 1, d)
    dk = dS.swapaxes(-1, -2) @ q * scale                 # (B, h, N, d)
    # k, v = split(x @ Wkv + bkv): stack them back in the layout of kv
    dkv = np.stack([dk, dv]).transpose(1, 3, 0, 2, 4).reshape(B, N, 2 * h * d)    # (B, N, 2D)
    dx, g["kv.W"], g["kv.b"] = linear_backward(dkv, cache["kv_cache"])            # (B, N, D)
    # q = latent @ Wq + bq
    dq = merge_heads(dq)                                 # (1, 1, D)
    g["latent"], g["q.W"], g["q.b"] = linear_backward(dq, cache["q_cache"])
    return dx, {name: g[name] for name in ATTN_POOL_PARAMS}


def registers_forward(x: np.ndarray, reg: np.ndarray, at: int):
    """x (B, S, D), reg (1, R, D) -> (B, S + R, D): the R register tokens inserted at position
    ``at`` (1, right after the CLS token, as timm places its reg_token; 0 without CLS)."""
    B, S, D = x.shape
    R = reg.shape[1]
    out = np.empty((B, S + R, D), dtype=x.dtype)
    out[:, :at] = x[:, :at]
    out[:, at:at + R] = reg                              # the same R tokens for every image
    out[:, at + R:] = x[:, at:]
    return out, (at, R)


def registers_backward(dout: np.ndarray, cache):
    """dout (B, S + R, D) -> dx (B, S, D), dreg (1, R, D) (summed over the batch)."""
    at, R = cache
    dx = np.concatenate([dout[:, :at], dout[:, at + R:]], axis=1)
    dreg = dout[:, at:at + R].sum(axis=0, keepdims=True)
    return dx, dreg
