# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 1. Images into patches
#
# A transformer reads a *sequence* of vectors. A Vision Transformer (ViT) makes
# one out of an image by cutting it into a grid of non-overlapping P x P
# patches and flattening each patch into a vector of P*P*C numbers. Those
# vectors play the part that words play in a language model: one patch, one
# token.
#
# In this tutorial:
# 1. `patchify` on a tiny image whose pixels are numbered, so the order is visible;
# 2. the patch grid of a real image (the synthetic shapes data), with the patch indices;
# 3. `unpatchify`, the exact inverse;
# 4. the patch embedding: one linear layer that turns each patch vector into a
#    D-wide token, and why it is the same thing as a convolution with stride P.
#
# Open it as a notebook (figures show inline) or run it as a script,
# `python 01_patches.py`. Either way each figure is also saved to `figures/` under
# the current folder, or to the folder named by the environment variable
# `TINYVIT_FIGURES`. `TINYVIT_QUICK=1` makes every tutorial run fast with smaller
# data; this one is fast either way. It needs tinyvit installed (`pip install -e .`
# in a checkout) and runs from any folder.
#
# Shape letters: B batch, H W C image, P patch size, N = (H/P)(W/P) patches, D width.

# %%
import numpy as np

from tinyvit.tutorial import display_figure, show
from tinyvit import viz
from tinyvit.datasets import make_shapes
from tinyvit.layers import linear_forward, patchify, unpatchify

# %% [markdown]
# ## 1.1 A tiny image whose pixels say where they are
#
# A 4x4 image with one channel, pixel value = 10 * row + column, cut into 2x2
# patches. The grid is 2x2, so N = 4 patches of P*P*C = 4 numbers each.
# Patches are numbered row by row over the grid; inside a patch the numbers run
# in (row, column, channel) order.

# %%
rows, cols = np.meshgrid(np.arange(4), np.arange(4), indexing="ij")
tiny = (10 * rows + cols).astype(np.float64)[None, :, :, None]   # (B=1, H=4, W=4, C=1)
show("tiny image", tiny)
print(tiny[0, :, :, 0])
tiny_patches = patchify(tiny, 2)                                   # (1, N=4, P*P*C=4)
show("patchify(tiny, 2)", tiny_patches)
for n in range(4):
    print(f"patch {n} (grid row {n // 2}, col {n % 2}):", tiny_patches[0, n])

# %% [markdown]
# Patch 1 is the top-right 2x2 block, `[2, 3, 12, 13]`: its first row, then
# its second. Patch 2 is the bottom-left block. That is all `patchify` does:
# a reshape to (B, gh, P, gw, P, C) that splits each image axis into
# "which patch" and "where inside the patch", a transpose that brings the two
# grid axes together, and a reshape to (B, N, P*P*C). No pixel is changed.

# %%
B, H, W, C = tiny.shape
P = 2
step1 = tiny.reshape(B, H // P, P, W // P, P, C)
show("reshape (B, gh, P, gw, P, C)", step1)
step2 = step1.transpose(0, 1, 3, 2, 4, 5)
show("transpose (B, gh, gw, P, P, C)", step2)
step3 = step2.reshape(B, (H // P) * (W // P), P * P * C)
show("reshape (B, N, P*P*C)", step3)
assert np.array_equal(step3, tiny_patches)

# %% [markdown]
# ## 1.2 The patch grid of a real image
#
# The default training data are synthetic shapes: a coloured shape on a noisy
# background, 32x32x3, with an object mask (we will need the masks in
# tutorial 8). With P = 4 the grid is 8x8: N = 64 patches of 4*4*3 = 48 numbers.

# %%
data = make_shapes(4, image_size=32, seed=0)
images = data.images                                # (B, 32, 32, 3) float32 in [0, 1]
show("images", images)
show("labels", data.labels)
show("masks", data.masks)
print("classes:", data.class_names, "-> first image is a", data.class_names[data.labels[0]])

P = 4
patches = patchify(images, P)                       # (B, 64, 48)
show("patches = patchify(images, 4)", patches)
gh, gw = 32 // P, 32 // P
print(f"grid {gh}x{gw}, N = {gh * gw}, each patch {P}*{P}*3 = {P * P * 3} numbers")

# patch n is the pixel block at grid row n // gw, column n % gw:
n = 27
r, c = divmod(n, gw)
block = images[0, r * P:(r + 1) * P, c * P:(c + 1) * P, :]     # (P, P, C)
show(f"pixels of patch {n}", block)
assert np.array_equal(block.reshape(-1), patches[0, n])
print(f"patch {n} = pixels rows {r * P}..{r * P + P - 1}, columns {c * P}..{c * P + P - 1}: matches")

# %% [markdown]
# The image with its 8x8 grid and the patch indices (`01_patch_grid.png`):

# %%
display_figure(viz.plot_patch_grid(images[0], P), "01_patch_grid.png")

# %% [markdown]
# The same patches as the sequence the transformer will read, with a slot for the
# CLS token at position 0 (tutorial 2) (`01_token_sequence.png`):

# %%
display_figure(viz.plot_token_sequence(images[0], P), "01_token_sequence.png")

# %% [markdown]
#
# ## 1.3 unpatchify: the way back
#
# `unpatchify` undoes the reshapes in reverse order. Because patchify only moves
# numbers, the round trip is exact (not just close), and patchify's backward pass
# is unpatchify applied to the gradient.

# %%
back = unpatchify(patches, (32, 32), P, 3)
show("unpatchify(patches)", back)
print("round trip exact:", np.array_equal(back, images))

# %% [markdown]
# ## 1.4 Why a patch is a token: the patch embedding
#
# A patch vector has P*P*C = 48 entries; the transformer works at width D.
# One linear layer, shared by all patches, maps each patch to a D-vector:
# `tokens = patches @ W + b` with W (P*P*C, D). This is exactly a convolution
# with a P x P kernel, D output channels and stride P, which is how timm and
# the original ViT write it. Below we compute the convolution the slow way,
# one grid position at a time, and compare.

# %%
D = 16
rng = np.random.default_rng(0)
W_embed = (rng.standard_normal((P * P * 3, D)) * 0.02).astype(np.float32)   # (P*P*C, D)
b_embed = np.zeros(D, dtype=np.float32)                                     # (D,)
show("W_embed", W_embed)
tokens, _ = linear_forward(patches, W_embed, b_embed)                        # (B, N, D)
show("tokens = patches @ W + b", tokens)

kernel = W_embed.reshape(P, P, 3, D)                  # (P, P, C, D): a conv kernel
show("kernel (P, P, C, D)", kernel)
conv = np.zeros((images.shape[0], gh, gw, D), dtype=np.float32)
for i in range(gh):                                   # a slow, obviously correct convolution
    for j in range(gw):
        window = images[:, i * P:(i + 1) * P, j * P:(j + 1) * P, :]   # (B, P, P, C)
        conv[:, i, j, :] = np.einsum("bpqc,pqcd->bd", window, kernel) + b_embed
show("stride-P convolution output", conv)
print("max |conv - linear| =", float(np.abs(conv.reshape(-1, gh * gw, D) - tokens).max()))

# %% [markdown]
# The two agree to float32 rounding. From here on the image is gone: the model
# sees 64 tokens of width D, and nothing in them says where each patch came
# from. Tutorial 2 adds that information back (position embeddings) and adds
# one extra token, the CLS token.
#
# ## Exercises
#
# Worked solutions, each checked by its own code: `solutions/01_solutions.py`
# (a teacher can leave that folder out of what students get).
#
# 1. Patchify a 28x28x1 image with P = 7. What are N and the patch length? Why
#    does P = 5 fail, and what does the error message say?
# 2. Write `patchify` with two Python loops over the grid and check it against
#    the library's on the shapes images. Why does the library avoid the loops?
# 3. Halve the patch size to P = 2. How many tokens does a 32x32 image become?
#    Attention costs grow with T^2: by what factor does that cost grow?
# 4. Change the transpose in 1.1 to `(0, 1, 2, 3, 4, 5)` (no transpose). Which
#    pixels end up in "patch 1" now, and why is that not a patch?
