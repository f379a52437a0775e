# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Worked solutions: 1. Images into patches
#
# For teachers: this folder (`tutorials/solutions/`) holds the worked solutions
# of every tutorial's exercises; leave it out of what you hand to students if
# you grade the exercises. Each solution computes its answer and checks it, so
# the answers printed here come from the code, not from the text. Runs like the
# tutorials (any folder, tinyvit installed; `TINYVIT_QUICK=1` for the fast mode).

# %%
import time

import numpy as np

from tinyvit.datasets import make_shapes
from tinyvit.layers import patchify

# %% [markdown]
# ## Exercise 1: a 28x28x1 image with P = 7, and P = 5
#
# The grid is (28/7) x (28/7) = 4x4, so N = 16 patches of 7*7*1 = 49 numbers.
# P = 5 does not divide 28, so the patches would not tile the image; `patchify`
# refuses with an error naming the argument and both values.

# %%
img = np.zeros((1, 28, 28, 1), dtype=np.float32)
p = patchify(img, 7)
print("P = 7:", p.shape, "-> N =", p.shape[1], "patch length", p.shape[2])
assert p.shape == (1, 16, 49)
try:
    patchify(img, 5)
except ValueError as err:
    print("P = 5: ValueError:", err)
else:
    raise AssertionError("P = 5 should fail")

# %% [markdown]
# ## Exercise 2: patchify with two loops
#
# The loops do one small copy per patch in Python; the library's reshape and
# transpose move the whole batch in one NumPy operation. Compare the printed
# times; the gap grows with the number of patches (try P = 2).

# %%
def patchify_loops(x, P):
    B, H, W, C = x.shape
    gh, gw = H // P, W // P
    out = np.empty((B, gh * gw, P * P * C), dtype=x.dtype)
    for i in range(gh):
        for j in range(gw):
            out[:, i * gw + j] = x[:, i * P:(i + 1) * P, j * P:(j + 1) * P, :].reshape(B, -1)
    return out


images = make_shapes(64, image_size=32, seed=0).images
assert np.array_equal(patchify_loops(images, 4), patchify(images, 4))
for f in (patchify_loops, patchify):
    t0 = time.perf_counter()
    for _ in range(20):
        f(images, 4)
    print(f"{f.__name__:<15} {(time.perf_counter() - t0) / 20 * 1e3:.2f} ms per batch of 64")

# %% [markdown]
# ## Exercise 3: P = 2 on a 32x32 image
#
# N = (32/2)^2 = 256 patches, so T = 257 tokens instead of 65 with P = 4.
# Attention builds a T x T matrix, so its cost grows by (257/65)^2.

# %%
T4, T2 = (32 // 4) ** 2 + 1, (32 // 2) ** 2 + 1
print(f"T with P=4: {T4}, with P=2: {T2}; attention cost grows by (T2/T4)^2 = {(T2 / T4) ** 2:.1f}x")

# %% [markdown]
# ## Exercise 4: no transpose
#
# Without the transpose the axes stay in (B, gh, P, gw, P, C) order, which is
# just the image's own memory order, so the final reshape cuts the pixels in
# reading order: each "patch" is the next four pixels, and "patch 1" is the whole
# of image row 1, a 1x4 strip rather than a 2x2 block.

# %%
rows, cols = np.meshgrid(np.arange(4), np.arange(4), indexing="ij")
tiny = (10 * rows + cols).astype(np.float64)[None, :, :, None]
wrong = tiny.reshape(1, 2, 2, 2, 2, 1).reshape(1, 4, 4)
print("patch 1 without the transpose:", wrong[0, 1], " with it:", patchify(tiny, 2)[0, 1])
assert not np.array_equal(wrong[0, 1], patchify(tiny, 2)[0, 1])
