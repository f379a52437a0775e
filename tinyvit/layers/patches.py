"""Cutting images into patches and putting them back.

A ViT reads an image as a sequence: it cuts the (H, W) image into a grid of
(H/P) x (W/P) non-overlapping P x P patches and flattens each one into a vector
of P*P*C numbers. Those vectors are the "words" the transformer reads.

Layout: patches are numbered row by row over the grid, and inside a patch the
numbers run in (row, column, channel) order, so entry ``(py*P + px)*C + c`` of
patch ``gy*gw + gx`` is pixel ``(gy*P + py, gx*P + px, c)``. With channels-last
images this is exactly the order in which the original Google ViT checkpoints
flatten their (P, P, C, D) patch-embedding kernel.
"""

from __future__ import annotations

import numpy as np

from .._checks import check_array, check_int


def _grid(H: int, W: int, P: int) -> tuple[int, int]:
    if H % P or W % P:
        raise ValueError(f"patch_size: expected a divisor of the image size {H}x{W}, got {P} "
                         f"({H} % {P} = {H % P}, {W} % {P} = {W % P})")
    return H // P, W // P


def patchify(x: np.ndarray, patch_size: int) -> np.ndarray:
    """Images (B, H, W, C) -> patches (B, N, P*P*C), N = (H/P) * (W/P)."""
    check_array("x", x, ndim=4, kind=None, finite=False)
    P = check_int("patch_size", patch_size, minimum=1)
    B, H, W, C = x.shape
    gh, gw = _grid(H, W, P)
    # BEGIN SOLUTION patchify
    # (B, gh, P, gw, P, C): split each image axis into (grid index, offset in patch)
    x = x.reshape(B, gh, P, gw, P, C)
    # bring the two grid axes together, then the three within-patch axes
    x = x.transpose(0, 1, 3, 2, 4, 5)                    # (B, gh, gw, P, P, C)
    return x.reshape(B, gh * gw, P * P * C)              # (B, N, P*P*C), a copy
    # END SOLUTION


def unpatchify(patches: np.ndarray, image_size, patch_size: int, channels: int) -> np.ndarray:
    """Patches (B, N, P*P*C) -> images (B, H, W, C); the exact inverse of patchify."""
    check_array("patches", patches, ndim=3, kind=None, finite=False)
    P = check_int("patch_size", patch_size, minimum=1)
    C = check_int("channels", channels, minimum=1)
    H, W = (image_size, image_size) if np.isscalar(image_size) else tuple(image_size)
    gh, gw = _grid(H, W, P)
    B, N, L = patches.shape
    if (N, L) != (gh * gw, P * P * C):
        raise ValueError(f"patches: expected shape (B, {gh * gw}, {P * P * C}) for a {H}x{W}x{C} image "
                         f"with patch size {P}, got {patches.shape}")
    x = patches.reshape(B, gh, gw, P, P, C)
    x = x.transpose(0, 1, 3, 2, 4, 5)                    # (B, gh, P, gw, P, C)
    return x.reshape(B, H, W, C)


def patchify_forward(x: np.ndarray, patch_size: int):
    """Forward of patchify: returns (patches (B, N, P*P*C), cache)."""
    out = patchify(x, patch_size)
    cache = (x.shape, patch_size)
    return out, cache


def patchify_backward(dout: np.ndarray, cache) -> np.ndarray:
    """dout (B, N, P*P*C) -> dx (B, H, W, C), the gradient of the images."""
    # BEGIN SOLUTION patchify_backward
    # out = patchify(x): it only moves numbers around, so its gradient moves them back.
    (B, H, W, C), P = cache
    return unpatchify(dout, (H, W), P, C)
    # END SOLUTION
