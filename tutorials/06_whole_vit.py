# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 6. The whole ViT: forward, backward, end-to-end gradient check
#
# Tutorials 1-5 built every piece. `tinyvit.model.ViT` chains them:
#
#     images (B, H, W, C)
#      -> patchify                    (B, N, P*P*C)
#      -> patch embedding (linear)    (B, N, D)
#      -> prepend CLS                 (B, T, D)
#      -> + position embeddings       (B, T, D)
#      -> depth x block               (B, T, D)
#      -> final layer norm            (B, T, D)
#      -> pool: CLS state (B, D)  or  mean of the patch tokens (B, D)
#      -> head (linear)               (B, K) logits
#
# Here we run one forward pass ourselves, stage by stage with the model's own
# parameters, check we get the model's logits, then run the backward and check
# every parameter's gradient against finite differences.
#
# Open it as a notebook or run it as a script; it needs tinyvit installed and runs
# from any folder. Figures show inline and are saved to `figures/` under the
# current folder (or `$TINYVIT_FIGURES`). `TINYVIT_QUICK=1` (the fast mode the
# tests use) checks a sample of the entries of each large tensor instead of all
# of them.

# %%
import time

import numpy as np

from tinyvit.tutorial import QUICK, display_figure, show
from tinyvit import ViT, ViTConfig
from tinyvit.datasets import make_shapes
from tinyvit.gradcheck import check_model, format_errors
from tinyvit.layers import (BLOCK_PARAMS, block_forward, cls_forward, layernorm_forward, linear_forward,
                            patchify, softmax_cross_entropy)

# %% [markdown]
# ## 6.1 A small model and its summary
#
# 16x16 RGB shapes, 4x4 patches (a 4x4 grid, N = 16, T = 17), D = 16, two
# blocks of two heads. float64, because we will check gradients numerically.

# %%
cfg = ViTConfig(image_size=16, in_channels=3, patch_size=4, dim=16, depth=2, heads=2, mlp_dim=32,
                num_classes=6, dtype="float64", seed=0)
model = ViT(cfg)
print(model.summary())

data = make_shapes(4, image_size=16, seed=0)
images = data.images.astype(np.float64)             # the model's dtype: float64
labels = data.labels
show("images", images)
show("labels", labels)

# %% [markdown]
# ## 6.2 The forward pass, stage by stage

# %%
p = model.params
x = patchify(images, cfg.patch_size)                                   # (B, N, P*P*C)
show("patchify", x)
x, _ = linear_forward(x, p["patch_embed.W"], p["patch_embed.b"])        # (B, N, D)
show("patch embedding", x)
x, _ = cls_forward(x, p["cls_token"])                                   # (B, T, D)
show("prepend CLS", x)
x = x + p["pos_embed"]                                                  # (B, T, D)
show("+ pos_embed", x)
attn = []
for i in range(cfg.depth):
    bp = {k: p[f"blocks.{i}.{k}"] for k in BLOCK_PARAMS}
    x, cache = block_forward(x, bp, cfg.heads, cfg.gelu)                # (B, T, D)
    attn.append(cache[1]["attn"])                                       # (B, h, T, T)
    show(f"block {i}", x)
    show(f"  block {i} attention", attn[-1])
x, _ = layernorm_forward(x, p["norm.gamma"], p["norm.beta"])            # (B, T, D)
show("final layer norm", x)
pooled = x[:, 0]                                                        # (B, D) the CLS state
show("pool (CLS state)", pooled)
logits, _ = linear_forward(pooled, p["head.W"], p["head.b"])            # (B, K)
show("logits", logits)

print("same as model(images):", np.allclose(logits, model(images), rtol=0, atol=1e-14))
loss, _ = softmax_cross_entropy(logits, labels)
print(f"loss {loss:.4f}; an untrained model should be close to ln K = ln {cfg.num_classes} = "
      f"{np.log(cfg.num_classes):.4f}")

# %% [markdown]
# Only row 0 of the final tokens reaches the head (with `pool="cls"`). The other
# T - 1 rows matter only through what the CLS token read from them in the
# attention layers, which is why its attention is worth looking at (tutorial 8).
#
# ## 6.3 The backward pass
#
# `model.loss_and_grads` runs the forward (with a shortcut in its last block,
# shown below), the loss, and `model.backward`, which walks the same stages in reverse: head, pool (the gradient enters the
# tokens at row 0 only), final norm, blocks in reverse order, position
# embedding, CLS token (batch sum, tutorial 2), patch embedding. It returns one
# gradient per parameter, under the parameter's name.

# %%
loss, grads, logits = model.loss_and_grads(images, labels)
print(f"loss {loss:.4f}; {len(grads)} gradient tensors, same names as the parameters:",
      list(grads) == list(model.params))
for name in ["patch_embed.W", "cls_token", "pos_embed", "blocks.0.attn.qkv.W", "blocks.1.mlp.fc2.W",
             "norm.gamma", "head.W"]:
    show(f"grad {name}", grads[name])

# with pool="cls", the final tokens' rows 1.. get no gradient from the head:
_, cache = model.forward(images)
from tinyvit.layers import linear_backward

dlogits = softmax_cross_entropy(logits, labels)[1]                     # (B, K)
dpooled = linear_backward(dlogits, cache["head"])[0]                   # (B, D)
show("dlogits", dlogits)
show("dpooled", dpooled)
dtokens = np.zeros((images.shape[0], cfg.num_tokens, cfg.dim))
dtokens[:, 0] = dpooled                                                # only row 0
print("non-zero rows of the gradient at the final tokens:", np.flatnonzero(np.abs(dtokens).sum((0, 2))))

# %% [markdown]
# Only row 0 reaches the head, so in the **last** block the outputs of the
# other T - 1 tokens are computed for nothing. The last block still needs every
# token's key and value (the CLS token attends to them all), but only the CLS
# token's query, attention row, residuals and MLP. That is a speed trick, so it
# lives in the fast layers (`tinyvit.fast_layers`), not in the reference ones
# this tutorial reads: `model.using("fast")` is the same model (the same
# parameter arrays) running the fast set, and its `forward(...,
# last_block_cls_only=True)` computes the last block for the CLS token alone.
# The last attention matrix is then (B, h, 1, T), and the logits and every
# gradient are unchanged. Training (`tinyvit train`, `tinyvit.train.train`)
# runs the fast set, and with `pool="cls"` it trains this way.

# %%
full_logits, full_cache = model.forward(images)                     # reference layers, every token
fast = model.using("fast")
cls_logits, cls_cache = fast.forward(images, last_block_cls_only=True)
show("last block's attention, full", full_cache["attn"][-1])
show("last block's attention, CLS only", cls_cache["attn"][-1])
print("same logits:", np.allclose(full_logits, cls_logits, rtol=1e-12, atol=1e-12))
g_full = model.backward(dlogits, full_cache)
g_cls = fast.backward(dlogits, cls_cache)
print("largest gradient difference:", max(np.abs(g_full[k] - g_cls[k]).max() for k in g_full))

# %% [markdown]
# ## 6.4 End-to-end gradient check
#
# `check_model` perturbs parameters one entry at a time, re-runs the whole
# model, and compares the loss change with the backward's gradient. In quick
# mode it checks 40 random entries of each large tensor; in full mode every
# entry, two forward passes each.

# %%
max_entries = 40 if QUICK else None
t0 = time.perf_counter()
errors = check_model(model, images, labels, max_entries=max_entries)
print(f"checked {len(errors)} tensors in {time.perf_counter() - t0:.1f} s")
print(format_errors(errors, threshold=1e-6))
worst = max(errors, key=errors.get)
print(f"worst: {worst} {errors[worst]:.1e}; median over the tensors {np.median(list(errors.values())):.1e}; "
      f"all below 1e-6: {max(errors.values()) < 1e-6}")

# %%
from matplotlib.figure import Figure

names = list(errors)
fig = Figure(figsize=(9, 4.8), layout="constrained")
ax1, ax2 = fig.subplots(1, 2, sharey=True)
ypos = np.arange(len(names))
ax1.barh(ypos, [np.linalg.norm(grads[n]) if n in grads else np.nan for n in names], color="tab:blue")
ax1.set_xscale("log")
ax1.set_title("gradient norm per tensor", fontsize=9)
ax2.barh(ypos, [errors[n] for n in names], color="tab:orange")
ax2.axvline(1e-6, color="red", ls="--", lw=1, label="threshold 1e-6")
ax2.set_xscale("log")
ax2.set_title("relative error vs finite differences", fontsize=9)
ax2.legend(fontsize=7)
ax1.set_yticks(ypos)
ax1.set_yticklabels(names, fontsize=6)
ax1.invert_yaxis()
for ax in (ax1, ax2):
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(alpha=0.3, axis="x")
display_figure(fig, "06_gradcheck.png")

# %% [markdown]
# Every tensor, from the head back to the pixels of the input images, agrees
# with finite differences below the 1e-6 threshold: the worst tensor and the
# median are printed above. The tensors whose gradients are small and whose
# finite differences go through the whole model (the images, the layer-norm
# parameters) sit nearest the threshold: there the rounding of the differences
# weighs most. The model is ready to be trained (tutorial 7).
#
# ## Exercises
#
# Worked solutions, each checked by its own code: `solutions/06_solutions.py`
# (a teacher can leave that folder out of what students get).
#
# 1. Repeat 6.2 with `pool="mean"`. Which rows of `dtokens` are non-zero now,
#    and with what value?
# 2. `model.backward_with_input(dlogits, cache)` also returns the gradient
#    with respect to the images. Plot its absolute value summed over channels
#    for one image: which pixels would change the loss most?
# 3. Count the parameters by hand from the config (patch embedding, CLS, position
#    table, per block, final norm, head) and compare with `model.num_params()`.
# 4. Make the model float32 (`dtype="float32"`) and run the gradient check. Why
#    do the errors grow by several orders of magnitude?
