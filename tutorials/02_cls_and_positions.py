# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 2. The CLS token and the position embeddings
#
# After tutorial 1 an image is N patch tokens of width D. Two things are added
# before the transformer blocks:
#
# * the **CLS token**: one learned D-vector, the same for every image, put in
#   front of the patch tokens, so the sequence is `[CLS, patch 0, ..., patch N-1]`
#   and T = N + 1. It carries no pixels. Through attention it collects a summary
#   of the image, and with `pool="cls"` the classifier reads only its final state;
# * the **position embeddings**: a learned (1, T, D) array added to the tokens,
#   one row per position, so the model can tell where each patch came from.
#
# This tutorial shows the prepend, works out the CLS token's gradient (a sum over
# the batch, checked numerically), and shows *why* positions matter: without
# them, shuffling the patches of an image does not change the model's output at all.
#
# Open it as a notebook or run it as a script; it needs tinyvit installed and runs
# from any folder. Figures show inline and are saved to `figures/` under the
# current folder (or `$TINYVIT_FIGURES`); `TINYVIT_QUICK=1` is the fast mode the
# tests use.

# %%
import numpy as np

from tinyvit.tutorial import display_figure, show
from tinyvit import ViT, ViTConfig, viz
from tinyvit.datasets import make_shapes
from tinyvit.gradcheck import numerical_vjp, rel_error
from tinyvit.layers import cls_backward, cls_forward, patchify, pos_forward, sincos_pos_embed, unpatchify

# %% [markdown]
# ## 2.1 Prepending the CLS token
#
# `cls_forward(x (B, N, D), cls (1, 1, D))` makes a (B, T, D) array whose row 0
# is the CLS vector, copied into every image, and rows 1..N the patch tokens.

# %%
rng = np.random.default_rng(0)
B, N, D = 3, 4, 5
x = rng.standard_normal((B, N, D))                  # patch tokens (B, N, D)
cls = rng.standard_normal((1, 1, D))                # the CLS token (1, 1, D)
show("patch tokens x", x)
show("cls", cls)
tokens, _ = cls_forward(x, cls)                     # (B, T, D)
show("tokens = [CLS, patches]", tokens)
print("row 0 is the CLS token in every image:", all(np.array_equal(tokens[b, 0], cls[0, 0]) for b in range(B)))
print("rows 1.. are the patches unchanged:  ", np.array_equal(tokens[:, 1:], x))

# %% [markdown]
# ## 2.2 The CLS token's gradient is a sum over the batch
#
# Suppose the loss L depends on the tokens and we know `dout = dL/dtokens`
# (B, T, D). The patch part of the gradient passes straight through:
# `dx = dout[:, 1:]`. The CLS vector, though, was *copied* B times; a change
# `e` to it changes `tokens[b, 0]` by `e` for every b, so
#
#     dL/dcls = sum over b of dout[b, 0]          (1, 1, D)
#
# This is the general rule "the gradient of a broadcast is a sum". The same
# holds for the position embeddings (added to every image) and for every bias.
# Let us check it against a numerical gradient.

# %%
dout = rng.standard_normal(tokens.shape)            # a random upstream gradient (B, T, D)
show("dout", dout)
dx, dcls = cls_backward(dout, None)
show("dx", dx)
show("dcls", dcls)
by_hand = dout[:, 0, :].sum(axis=0)                 # (D,)
print("dcls           :", np.round(dcls[0, 0], 4))
print("sum_b dout[b,0]:", np.round(by_hand, 4))
num = numerical_vjp(lambda: cls_forward(x, cls)[0], cls, dout)   # centred differences w.r.t. cls
show("numerical dcls", num)
print(f"relative error analytic vs numerical: {rel_error(dcls, num):.2e}")
print("per-image contributions dout[b, 0, 0]:", np.round(dout[:, 0, 0], 4),
      "sum:", round(float(dout[:, 0, 0].sum()), 4), "= dcls[0, 0, 0]:", round(float(dcls[0, 0, 0]), 4))

# %% [markdown]
# ## 2.3 Why positions matter
#
# Attention compares every token with every other; nothing in it knows about
# order. So if we shuffle the patches of an image *and remove the position
# embeddings*, every patch token is still there, just in another row, and the
# CLS token ends up with exactly the same state. The prediction cannot change.
# With position embeddings each patch token carries "I was at position n", the
# shuffled image is a different input, and the output changes.
#
# We test this on a small float64 model and a shapes image.

# %%
cfg = ViTConfig(image_size=16, in_channels=3, patch_size=4, dim=32, depth=2, heads=4, mlp_dim=64,
                num_classes=6, dtype="float64", seed=0)
model = ViT(cfg)
data = make_shapes(2, image_size=16, seed=1)
image = data.images[:1].astype(np.float64)          # (1, 16, 16, 3)
show("image", image)

P, (gh, gw) = cfg.patch_size, cfg.grid
perm = np.random.default_rng(3).permutation(gh * gw)          # a shuffle of the N patches
shuffled = unpatchify(patchify(image, P)[:, perm], cfg.image_hw, P, 3)   # (1, 16, 16, 3)
show("shuffled image", shuffled)
print("patch order after shuffling:", perm)

# A fresh model (weights std 0.02) attends almost uniformly, and a uniform average
# ignores order even with positions. Trained weights are larger: scale them up, and
# give the model clearly non-zero position embeddings, as a trained model has.
for name, value in model.params.items():
    if name.endswith(".W"):
        value *= 10.0                               # in place: std 0.02 -> 0.2
model.params["pos_embed"][:] = np.random.default_rng(4).standard_normal(model.params["pos_embed"].shape) * 0.5
logits = model(image)                               # (1, K)
show("logits", logits)
scale = np.abs(logits).max()                        # an untrained model's logits are small
with_pos = np.abs(logits - model(shuffled)).max() / scale

saved = model.params["pos_embed"].copy()
model.params["pos_embed"][:] = 0.0                  # no position information at all
logits0 = model(image)
without_pos = np.abs(logits0 - model(shuffled)).max() / np.abs(logits0).max()
model.params["pos_embed"][:] = saved
print(f"max |logits(image) - logits(shuffled)| / max |logits|, with position embeddings:    {with_pos:.3e}")
print(f"max |logits(image) - logits(shuffled)| / max |logits|, without position embeddings: {without_pos:.3e}")

# %% [markdown]
# Without positions the relative difference printed above is at the level of
# float64 rounding; with them the logits change by a sizeable fraction (try it
# without the `*= 10.0` to see how little an almost-uniform attention cares).
# Without positions the model literally cannot see the arrangement of the patches, only
# which patches there are. For a star vs a cross that may be enough from local
# texture alone, but a shape *is* an arrangement; the position embeddings are
# what lets the model use it.
#
# ## 2.4 Learned and fixed position embeddings
#
# The default `pos_embed="learned"` starts as small random numbers
# (normal, std 0.02) and is trained. The alternative `pos_embed="sincos"` is a
# fixed table: half the channels encode the patch row and half the column as
# sines and cosines of several frequencies; the CLS position gets zeros.
# The plots show, for each patch position, how similar its embedding is (cosine)
# to every other position's: random embeddings are similar only to themselves,
# the sin-cos table has a smooth 2-D structure. Tutorial 8 shows what training
# does to the learned ones.

# %%
table = sincos_pos_embed(8, 8, 64)                  # (1, T=65, D=64)
show("sincos_pos_embed(8, 8, 64)", table)
print("CLS row is zero:", not table[0, 0].any())
learned = ViT(ViTConfig()).params["pos_embed"]      # default model: (1, 65, 64), random at init
show("fresh learned pos_embed", learned)
sim = viz.pos_embed_similarity(table, (8, 8))
show("similarity (gh, gw, gh, gw)", sim)

pos = rng.standard_normal((1, tokens.shape[1], D)) * 0.02   # a (1, T, D) table for 2.1's tokens
out, _ = pos_forward(tokens, pos)                    # (B, T, D) + (1, T, D): broadcast over the batch
show("pos", pos)
show("tokens + pos", out)

# %%
display_figure(viz.plot_pos_embed_similarity(
    table, (8, 8), title="fixed sin-cos position embeddings: cosine similarity"), "02_pos_sincos.png")

# %%
display_figure(viz.plot_pos_embed_similarity(
    learned, (8, 8), title="learned position embeddings at initialisation (random)"), "02_pos_random.png")

# %% [markdown]
# ## Exercises
#
# Worked solutions, each checked by its own code: `solutions/02_solutions.py`
# (a teacher can leave that folder out of what students get).
#
# 1. `pos_backward` returns `dpos = dout.sum(axis=0, keepdims=True)`. Check it
#    numerically the way 2.2 checks `dcls`.
# 2. In 2.3, switch the model to `pool="mean"` (`ViTConfig(..., pool="mean")`) and
#    repeat the shuffle test with and without position embeddings. Is the mean of
#    the patch tokens also unchanged by the shuffle? Why?
# 3. Make a model with `pos_embed="sincos"` and repeat 2.3. Does the shuffle
#    change the output? Why can you not "turn off" the positions there by editing
#    `model.params`?
# 4. Why is the CLS token initialised near zero (std 1e-6) rather than at random
#    like the other weights? (Hint: what does it start out as after the position
#    embedding is added?)
