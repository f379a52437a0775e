# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 4. Attention
#
# Self-attention is how tokens exchange information, and how the CLS token
# gathers its summary of the image. For tokens x (B, T, D) and one head:
#
#     q = x Wq,  k = x Wk,  v = x Wv         (B, T, d) each: queries, keys, values
#     S = q k^T / sqrt(d)                    (B, T, T) score of token i asking token j
#     A = softmax(S) over j                  (B, T, T) each row sums to one
#     o = A v                                (B, T, d) each token: a weighted mix of values
#
# Row 0 of A says how the CLS token spreads its attention over itself and the
# patches. With h heads, D is split into h slices of width d = D / h, each head
# does the above on its slice, and the outputs are put side by side and mixed
# by one more linear layer (proj).
#
# This tutorial does one head by hand, then all heads at once without a Python
# loop, derives the softmax backward, checks the whole layer's gradients, and
# draws the attention matrix.
#
# Open it as a notebook or run it as a script; it needs tinyvit installed and runs
# from any folder. Figures show inline and are saved to `figures/` under the
# current folder (or `$TINYVIT_FIGURES`); `TINYVIT_QUICK=1` is the fast mode the
# tests use.

# %%
import inspect

import numpy as np

from tinyvit.tutorial import display_figure, show
from tinyvit import ViT, ViTConfig, viz
from tinyvit.datasets import make_shapes
from tinyvit.gradcheck import check_layer, format_errors, numerical_vjp, rel_error
from tinyvit.layers import (attention_backward, attention_forward, merge_heads, softmax,
                            softmax_backward, softmax_forward, split_heads)

# %% [markdown]
# ## 4.1 One head by hand
#
# A batch of one sequence with T = 5 tokens (think: CLS + a 2x2 patch grid),
# width D = 8, h = 2 heads of width d = 4. The fused weight `Wqkv` (D, 3D) holds
# `[q | k | v]`, each D columns, and inside each block head j owns columns
# j*d .. j*d + d - 1. Head 0's query weights are therefore `Wqkv[:, 0:4]`, its
# key weights `Wqkv[:, 8:12]`, its value weights `Wqkv[:, 16:20]`.

# %%
rng = np.random.default_rng(0)
B, T, D, h = 1, 5, 8, 2
d = D // h
x = rng.standard_normal((B, T, D))
Wqkv = rng.standard_normal((D, 3 * D)) * 0.5
bqkv = rng.standard_normal(3 * D) * 0.1
Wproj = rng.standard_normal((D, D)) * 0.3
bproj = rng.standard_normal(D) * 0.1
show("x", x)
show("Wqkv", Wqkv)
show("Wproj", Wproj)

j = 0                                                # head 0
cols = slice(j * d, (j + 1) * d)
q0 = x @ Wqkv[:, 0 * D:1 * D][:, cols] + bqkv[0 * D:1 * D][cols]   # (B, T, d)
k0 = x @ Wqkv[:, 1 * D:2 * D][:, cols] + bqkv[1 * D:2 * D][cols]
v0 = x @ Wqkv[:, 2 * D:3 * D][:, cols] + bqkv[2 * D:3 * D][cols]
show("q (head 0)", q0)
S0 = q0 @ k0.transpose(0, 2, 1) / np.sqrt(d)         # (B, T, T)
show("S = q k^T / sqrt(d)", S0)
E = np.exp(S0 - S0.max(axis=-1, keepdims=True))      # subtracting the row max: same result, no overflow
A0 = E / E.sum(axis=-1, keepdims=True)               # (B, T, T)
show("A = softmax(S)", A0)
o0 = A0 @ v0                                         # (B, T, d)
show("o = A v", o0)
print("row sums of A:", np.round(A0.sum(-1), 12))
print("CLS row of A (what token 0 attends to):", np.round(A0[0, 0], 3))

# %% [markdown]
# ## 4.2 All heads at once
#
# Looping over heads in Python is slow (it was the mistake of many NumPy ViTs).
# Instead: one product `x @ Wqkv` (B, T, 3D), a reshape to (B, T, 3, h, d) and
# a transpose to (3, B, h, T, d). q, k, v are then (B, h, T, d) views, and
# `np.matmul` treats (B, h) as batch axes: `q @ k^T` is (B, h, T, T) in one call.

# %%
qkv = x @ Wqkv + bqkv                                # (B, T, 3D)
show("qkv", qkv)
q, k, v = split_heads(qkv, h)                        # (B, h, T, d) each
show("q", q)
S = q @ k.swapaxes(-1, -2) / np.sqrt(d)              # (B, h, T, T)
A = softmax(S)                                       # (B, h, T, T)
o = A @ v                                            # (B, h, T, d)
show("S", S)
show("A", A)
show("o", o)
print("head 0 batched == head 0 by hand:", np.allclose(A[:, 0], A0), np.allclose(o[:, 0], o0))
merged = merge_heads(o)                              # (B, T, D): heads side by side
show("merge_heads(o)", merged)
out = merged @ Wproj + bproj                         # (B, T, D)
show("out", out)
out_lib, cache = attention_forward(x, Wqkv, bqkv, Wproj, bproj, heads=h)
print("matches attention_forward:", np.allclose(out, out_lib), "; cache['attn'] is A:",
      np.allclose(cache["attn"], A))

# %% [markdown]
# ## 4.3 The softmax backward
#
# For one row, `A_i = exp(S_i) / sum_k exp(S_k)`. Its derivatives are
# `dA_i/dS_j = A_i (delta_ij - A_j)`, i.e. the Jacobian is `J = diag(A) - A A^T`
# (symmetric). The backward of a row is `dS = J^T dA = A * dA - A (A . dA)`:
#
#     dS = A * (dA - sum_j dA_j A_j)
#
# The subtracted sum is the term people forget; without it the result is just
# `A * dA`. Below: the explicit Jacobian of one row, the formula, the library,
# and a numerical check.

# %%
row = S[0, 0, 0]                                     # (T,) scores of the CLS query in head 0
a = softmax(row)                                     # (T,)
J = np.diag(a) - np.outer(a, a)                      # (T, T)
show("Jacobian of one softmax row", J)
dA_row = rng.standard_normal(T)
print("J^T dA           :", np.round(J.T @ dA_row, 5))
print("A * (dA - A.dA)  :", np.round(a * (dA_row - a @ dA_row), 5))
print("softmax_backward :", np.round(softmax_backward(dA_row, a), 5))
print("A * dA (the bug) :", np.round(a * dA_row, 5))

Ssm = rng.standard_normal((B, h, T, T))
dA = rng.standard_normal((B, h, T, T))
_, c = softmax_forward(Ssm)
num = numerical_vjp(lambda: softmax_forward(Ssm)[0], Ssm, dA)
print(f"softmax backward, relative error vs numerical: {rel_error(softmax_backward(dA, c), num):.1e}")

# %% [markdown]
# ## 4.4 The whole attention backward, checked
#
# `attention_backward` walks 4.2 in reverse: proj, `o = A v` (gives dA and dv),
# the softmax (dS), `S = q k^T * scale` (dq, dk), then stacks dq, dk, dv back
# into the fused (B, T, 3D) layout and goes through the qkv linear layer. The
# check perturbs every entry of every input and compares. Here is the library's
# code, printed from the installed package:

# %%
print(inspect.getsource(attention_backward))

# %%
errors = check_layer(attention_forward, attention_backward,
                     {"x": x, "Wqkv": Wqkv, "bqkv": bqkv, "Wproj": Wproj, "bproj": bproj},
                     kwargs={"heads": h})
print(format_errors(errors, threshold=1e-7))

# %% [markdown]
# ## 4.5 The attention matrix of a ViT
#
# A ViT on a 32x32 shapes image with 8x8 patches has T = 17 tokens (CLS + 16
# patches). Here is block 0's attention for each head of an *untrained*
# model, and the CLS row laid over the image. At initialisation the weights are
# small, so the scores are all close to zero and every row is nearly uniform
# (1/T everywhere): the CLS token looks at everything equally. Training is what
# will make it look somewhere (tutorial 8).

# %%
cfg = ViTConfig(image_size=32, patch_size=8, dim=32, depth=2, heads=4, mlp_dim=64, num_classes=6)
model = ViT(cfg)
data = make_shapes(2, image_size=32, seed=0)
attn = model.attention_maps(data.images)            # list of (B, h, T, T), one per block
show("attention, block 0", attn[0])
print(f"untrained: CLS row ranges {attn[0][0, :, 0].min():.4f} .. {attn[0][0, :, 0].max():.4f}, "
      f"uniform would be 1/T = {1 / cfg.num_tokens:.4f}")

# %%
from matplotlib.figure import Figure

fig = Figure(figsize=(2.6 * cfg.heads + 0.8, 2.9), layout="constrained")
axes = fig.subplots(1, cfg.heads)
for j, ax in enumerate(axes):
    im = ax.imshow(attn[0][0, j], cmap="viridis", vmin=0, interpolation="nearest")
    ax.set_title(f"head {j}", fontsize=9)
    ax.set_xlabel("key token j (0 = CLS)", fontsize=7)
    ax.set_ylabel("query token i", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.axhline(0.5, color="red", lw=1)                # the CLS row is above this line
fig.suptitle("block 0 attention matrices A (T x T), untrained model; row 0 = CLS", fontsize=10)
fig.colorbar(im, ax=list(axes), fraction=0.02)
display_figure(fig, "04_attention_matrix.png")

# %% [markdown]
# The CLS row of block 0 laid over the image, one panel per head. The cyan mark
# on the colour bar is 1/T, the weight of a perfectly uniform row (the row also
# gives a weight to the CLS token itself, which the map leaves out).

# %%
display_figure(viz.plot_cls_attention(data.images[0], attn[0], cfg.grid, block=0,
                                      title="untrained model, block 0: CLS attention per head"),
               "04_cls_attention_untrained.png")

# %% [markdown]
# ## Exercises
#
# Worked solutions, each checked by its own code: `solutions/04_solutions.py`
# (a teacher can leave that folder out of what students get).
#
# 1. Replace `/ np.sqrt(d)` by nothing and give `x` a 10x larger scale. What
#    happens to the rows of A, and to the softmax gradient? (This is why the
#    scores are scaled.)
# 2. Write attention with a Python loop over heads and check it against
#    `attention_forward`; time both for B = 64, T = 65, D = 64, h = 4.
# 3. In `attention_backward`, drop the subtracted row sum in the softmax
#    backward and run the gradient check of 4.4. Which tensors fail?
# 4. Show that attention is permutation-equivariant: shuffle the T tokens of `x`
#    and check that the output rows are shuffled the same way.
