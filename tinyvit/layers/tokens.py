"""The CLS token and the position embeddings.

CLS token: a learned vector of width D prepended to every image's patch
tokens, so the sequence is [CLS, patch 0, ..., patch N-1] and T = N + 1. It
carries no image content of its own; through attention it gathers a summary of
the whole image, and with pool="cls" the classifier reads only its final state.
Since the same (1, 1, D) vector is copied into every image of the batch, its
gradient is the sum over the batch of the gradient at position 0.

Position embeddings: attention treats its input as a set, so without them the
model could not tell which patch came from where. A learned (1, T, D) array is
added to the tokens (the default, as in ViT), or a fixed 2-D sin-cos table.
"""

from __future__ import annotations

import numpy as np


def cls_forward(x: np.ndarray, cls: np.ndarray):
    """x (B, N, D), cls (1, 1, D) -> tokens (B, T, D) with T = N + 1, cache."""
    # BEGIN SOLUTION cls_forward
    B, N, D = x.shape
    out = np.empty((B, N + 1, D), dtype=x.dtype)
    out[:, 0, :] = cls[0, 0]                             # the same token for every image
    out[:, 1:, :] = x
    return out, None
    # END SOLUTION


def cls_backward(dout: np.ndarray, cache):
    """dout (B, T, D) -> dx (B, N, D), dcls (1, 1, D)."""
    # BEGIN SOLUTION cls_backward
    # out[:, 0] = cls (for every image), out[:, 1:] = x
    # dcls is the batch sum of the gradient at position 0: the token was copied
    # B times, and a copy's gradient adds up (the transpose of a broadcast).
    dx = dout[:, 1:, :]                                  # (B, N, D)
    dcls = dout[:, 0:1, :].sum(axis=0, keepdims=True)    # (1, 1, D)
    return dx, dcls
    # END SOLUTION


def pos_forward(x: np.ndarray, pos: np.ndarray):
    """x (B, T, D) + pos (1, T, D) -> (B, T, D), cache."""
    return x + pos, None


def pos_backward(dout: np.ndarray, cache):
    """dout (B, T, D) -> dx (B, T, D), dpos (1, T, D) (summed over the batch)."""
    # BEGIN SOLUTION pos_backward
    # out = x + pos: pos is broadcast over the batch, so its gradient sums over it
    return dout, dout.sum(axis=0, keepdims=True)
    # END SOLUTION


def sincos_pos_embed(grid_h: int, grid_w: int, dim: int, cls_token: bool = True,
                     dtype=np.float32) -> np.ndarray:
    """Fixed 2-D sin-cos position embeddings, shape (1, T, D) (T = gh*gw + 1 with CLS).

    Half of the D channels encode the patch row and half the column; each half
    is [sin(p * w_k), cos(p * w_k)] over D/4 frequencies w_k = 1 / 10000^(k / (D/4)),
    as in the MAE and "simple ViT" papers. The CLS position gets zeros.
    """
    if dim % 4:
        raise ValueError(f"dim: expected a multiple of 4 for sin-cos position embeddings, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000.0 ** (np.arange(quarter, dtype=np.float64) / quarter)   # (D/4,)
    rows, cols = np.meshgrid(np.arange(grid_h, dtype=np.float64),
                             np.arange(grid_w, dtype=np.float64), indexing="ij")
    def enc(p):                                          # (N,) -> (N, D/2)
        angle = p.reshape(-1, 1) * omega                 # (N, D/4)
        return np.concatenate([np.sin(angle), np.cos(angle)], axis=1)
    table = np.concatenate([enc(rows), enc(cols)], axis=1)                     # (N, D)
    if cls_token:
        table = np.concatenate([np.zeros((1, dim)), table], axis=0)            # (T, D)
    return table[None].astype(dtype)
