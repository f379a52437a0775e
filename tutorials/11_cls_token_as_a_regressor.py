# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 11. The CLS token as a regressor: where is the object?
#
# So far the CLS token has only been trained to say *what* is in the image. Real
# models also ask it *where*: TransVG regresses a box from a learned [REG] token,
# YOLOS replaces [CLS] with a set of [DET] tokens. Raghu et al. (2021) found that a
# ViT trained with a CLS token keeps spatial information in its patch tokens. Can a
# single pooled vector say where the object is, and which pooling says it best?
#
# This tutorial:
#
# 1. makes the targets: the box around each shape's mask;
# 2. builds the box head and its two losses, L1 and the generalised IoU (GIoU,
#    Rezatofighi et al., 2019), and checks their backward passes;
# 3. trains the same ViT with the box head on the CLS token, on the mean of the patch
#    tokens, and on a learned attention query, and compares them on held-out images;
# 4. looks at what the box token attends to, next to the box it predicts;
# 5. trains classification and localisation together.
#
# Open it as a notebook or run it as a script; it needs tinyvit installed and runs
# from any folder. Full mode trains four models as `tinyvit box train` does by
# default (the "tiny" ViT on 32x32 shapes, 20,000 training and 2,000 held-out
# images, 5 epochs); each training cell prints how long it took.
# `TINYVIT_QUICK=1`: tiny models on a few hundred 16x16 images, seconds (the boxes
# are then poor). Figures show inline and are saved to `figures/` under the
# current folder (or `$TINYVIT_FIGURES`).

# %%
import dataclasses
import time

import numpy as np

from tinyvit import ViTConfig, viz
from tinyvit.box import (BoxConfig, BoxTrainConfig, BoxViT, boxes_from_masks, draw_box, evaluate_box,
                         load_box_data, plot_box_attention, predict, train_box)
from tinyvit.gradcheck import check_layer
from tinyvit.layers import box as bx
from tinyvit.tutorial import QUICK, display_figure, show

# %% [markdown]
# ## 11.1 Targets: a box from each mask
#
# The shapes data comes with a mask per image (which pixels the object covers).
# The tightest box around the mask is the target, written (cx, cy, w, h): centre
# and size as fractions of the image, so every number lies in [0, 1] whatever the
# image size. A pixel counts as the unit square it covers.

# %%
mask = np.zeros((1, 8, 8), dtype=bool)
mask[0, 2:5, 1:7] = True                     # rows 2..4, columns 1..6
print("box of a 3-row, 6-column block in an 8x8 image:", boxes_from_masks(mask)[0])

if QUICK:
    SIZE, N_TRAIN, N_VAL, EPOCHS = 16, 384, 128, 2
    arch = dict(image_size=16, patch_size=4, dim=32, depth=2, heads=2, mlp_dim=64)
else:
    SIZE, N_TRAIN, N_VAL, EPOCHS = 32, 20000, 2000, 5            # as `tinyvit box train`
    arch = dict(image_size=32, patch_size=8, dim=64, depth=3, heads=4, mlp_dim=128)
train_ds, val_ds = load_box_data("shapes", n_train=N_TRAIN, n_val=N_VAL, image_size=SIZE)
print(train_ds.summary())
print(val_ds.summary())
show("images", train_ds.images)
show("boxes (cx, cy, w, h)", train_ds.boxes)

# %%
fig = viz._new_figure(12, 2.4)
axes = fig.subplots(1, 6)
for i, ax in enumerate(axes):
    ax.imshow(val_ds.images[i], extent=(0, SIZE, SIZE, 0), interpolation="nearest")
    draw_box(ax, val_ds.boxes[i], SIZE, SIZE, "lime", "--")
    ax.set_title(f"{val_ds.class_names[val_ds.labels[i]]}, w={val_ds.boxes[i, 2]:.2f}", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
fig.suptitle("Held-out shapes and their target boxes (from the masks)")
display_figure(fig, "11_boxes.png")

# %% [markdown]
# ## 11.2 The box head and its losses
#
# The head is a linear layer to four numbers and a sigmoid, so the box stays
# inside [0, 1]: `boxes = sigmoid(pooled @ W + b)`. With W small and b zero, every
# first prediction is near the centred box (0.5, 0.5, 0.5, 0.5).
#
# Two losses per box, as DETR uses them (weights 5 and 2):
#
# - **L1**: `sum_j |pred_j - target_j|` over the four numbers;
# - **GIoU**: `1 - GIoU`, with `GIoU = IoU - (|C| - |union|) / |C|` and C the smallest
#   box enclosing both. Plain `1 - IoU` is flat (gradient zero) as soon as the boxes
#   stop overlapping; the enclosing term still pulls them together.
#
# The cell computes one example by hand: the boxes [0, 0.5]^2 and [0.25, 0.75]^2.

# %%
a = np.array([[0.25, 0.25, 0.5, 0.5]])
b = np.array([[0.5, 0.5, 0.5, 0.5]])
loss, cache = bx.giou_loss_forward(a, b)
inter, union, C = 0.25 * 0.25, 0.25 + 0.25 - 0.25 * 0.25, 0.75 * 0.75
print(f"by hand: intersection {inter}, union {union}, enclosing {C}, IoU {inter / union:.4f}, "
      f"GIoU {inter / union - (C - union) / C:.4f}")
print(f"giou_loss_forward: IoU {cache['iou'][0]:.4f}, GIoU {1 - loss[0]:.4f}")

# %% [markdown]
# Slide a predicted box of the target's size from far left to far right of the
# target and watch both losses and their gradients with respect to cx:

# %%
target = np.array([[0.5, 0.5, 0.2, 0.2]])
offsets = np.linspace(-0.45, 0.45, 181)
preds = np.stack([np.full_like(offsets, 0.5) + offsets] + [np.full_like(offsets, v) for v in (0.5, 0.2, 0.2)], 1)
targets = np.repeat(target, len(offsets), 0)
gl, gc = bx.giou_loss_forward(preds, targets)
dg = bx.giou_loss_backward(np.ones(len(offsets)), gc)[:, 0]          # d(1 - GIoU)/dcx
iou_loss = 1 - gc["iou"]
d_iou = np.gradient(iou_loss, offsets)                               # d(1 - IoU)/dcx, numerically
far = np.argmin(np.abs(offsets - 0.3))
print(f"at offset {offsets[far]:.2f} (no overlap): d(1-IoU)/dcx = {d_iou[far]:.3f}, "
      f"d(1-GIoU)/dcx = {dg[far]:.3f}")
fig = viz._new_figure(9, 3.2)
ax1, ax2 = fig.subplots(1, 2)
ax1.plot(offsets, iou_loss, label="1 - IoU")
ax1.plot(offsets, gl, label="1 - GIoU")
ax1.set_xlabel("offset of the predicted centre from the target's (image widths)")
ax1.set_ylabel("loss")
ax1.legend()
ax1.set_title("Loss against position (box 0.2 x 0.2)", fontsize=9)
ax2.plot(offsets, d_iou, label="d(1 - IoU)/dcx (centred differences)")
ax2.plot(offsets, dg, label="d(1 - GIoU)/dcx (giou_loss_backward)")
ax2.axhline(0, color="grey", lw=0.5)
ax2.set_xlabel("offset (image widths)")
ax2.set_ylabel("gradient")
ax2.legend(fontsize=7)
ax2.set_title("IoU gives no gradient once the boxes miss", fontsize=9)
display_figure(fig, "11_iou_vs_giou.png")

# %% [markdown]
# ## 11.3 Checking the backward passes
#
# Each pair is checked like every other layer: float64, centred differences, a
# random upstream gradient (one per box, since the losses return one value per box).
# The random boxes include pairs that overlap and pairs that do not.

# %%
rng = np.random.default_rng(0)
pred = np.concatenate([rng.uniform(0.2, 0.8, (16, 2)), rng.uniform(0.1, 0.6, (16, 2))], 1)
tgt = np.concatenate([rng.uniform(0.2, 0.8, (16, 2)), rng.uniform(0.1, 0.6, (16, 2))], 1)
print("pairs that overlap:", int((bx.box_iou(pred, tgt) > 0).sum()), "of 16")
x, W, bb = rng.standard_normal((5, 8)), rng.standard_normal((8, 4)) * 0.5, rng.standard_normal(4)
checks = {
    "box head (x, W, b)": check_layer(bx.box_head_forward, bx.box_head_backward, dict(x=x, W=W, b=bb)),
    "L1 loss (pred)": check_layer(bx.l1_loss_forward, bx.l1_loss_backward, dict(pred=pred, target=tgt), wrt=["pred"]),
    "GIoU loss (pred)": check_layer(bx.giou_loss_forward, bx.giou_loss_backward, dict(pred=pred, target=tgt), wrt=["pred"]),
    "query pool (x, query)": check_layer(bx.query_pool_forward, bx.query_pool_backward,
                                         dict(x=rng.standard_normal((3, 6, 8)), query=rng.standard_normal(8))),
}
for name, errs in checks.items():
    print(f"{name:<24}", "  ".join(f"{k}: {v:.1e}" for k, v in errs.items()))

# %% [markdown]
# ## 11.4 Which state should the box head read?
#
# `BoxViT` runs the ViT's `forward_tokens` (the transformer without pool and head)
# and puts the box head on one of:
#
# - `"cls"`: the CLS token's final state, as the classifier reads it;
# - `"mean"`: the mean of the patch tokens;
# - `"attn"`: a learned query that attends over the patch tokens (one softmax over N);
# - `"reg"`: a separate [REG] token next to CLS (register 0 of a model with register
#   tokens), when this tinyvit has them.
#
# The same ViT, the same data in the same order, the same number of steps; only the
# pooling differs. Time is the wall-clock time of `train_box` on this machine,
# an evaluation on the held-out images after each epoch included (on a shared
# machine, only roughly comparable).

# %%
POOLS = ["cls", "mean", "attn"]
if "num_registers" in {f.name for f in dataclasses.fields(ViTConfig)}:
    POOLS.append("reg")
else:
    print("this tinyvit's ViTConfig has no num_registers: the [REG] run is skipped")
cfg = BoxTrainConfig(epochs=EPOCHS, batch_size=64 if not QUICK else 32, workers=2, log_every=10 ** 6)
models, rows = {}, []
for pool in POOLS:
    extra = dict(num_registers=1) if pool == "reg" else {}
    model = BoxViT(ViTConfig(**arch, num_classes=train_ds.num_classes, **extra), BoxConfig(box_pool=pool))
    t0 = time.perf_counter()
    history = train_box(model, train_ds, val_ds, cfg, progress=False)
    seconds = time.perf_counter() - t0
    ev = evaluate_box(model, val_ds)
    models[pool] = model
    rows.append((pool, ev["mean_iou"], ev["iou50"], ev["iou75"], seconds))
    print(f"box_pool={pool}: held-out mean IoU {ev['mean_iou']:.3f} after {seconds:.0f} s")
print(f"\n{'box head reads':<16}{'mean IoU':>9}{'IoU>=0.5':>10}{'IoU>=0.75':>11}{'time (s)':>10}")
for pool, m, i50, i75, s in rows:
    print(f"{pool:<16}{m:>9.3f}{i50:>10.3f}{i75:>11.3f}{s:>10.0f}")

# %% [markdown]
# ## 11.5 What the box token looks at
#
# Left: the image, the true box (green, dashed) and the predicted one (red). Then, on
# the 4x4 patch grid (8x8 patches; 4x4 of 4x4 patches in quick mode), what the
# CLS token attends to in the last block, heads averaged, and for the attention
# pool its own weights over the patches. The cyan mark on each colour bar is a
# uniform map's value: 1/T for a block's attention row (it spreads over all T
# tokens, CLS included), 1/N for the pool's weights.

# %%
i = 0
for pool in ("cls", "attn"):
    title = (f"box head on {pool!r}: held-out image {i} "
             f"(a {val_ds.class_names[val_ds.labels[i]]})")
    display_figure(plot_box_attention(models[pool], val_ds.images[i], val_ds.boxes[i], title=title),
                   f"11_box_attention_{pool}.png")
boxes, _ = predict(models["cls"], val_ds.images[:3])
show("predicted boxes (first 3)", boxes)
print(np.round(boxes, 3))
print("true:\n", np.round(val_ds.boxes[:3], 3))

# %% [markdown]
# ## 11.6 What and where, together
#
# Task `"class+box"` trains the ViT's class head (on CLS) and the box head together:
# `loss = class_weight * cross-entropy + 5 * L1 + 2 * (1 - GIoU)`. Here the box head
# reads the mean of the patch tokens, so the CLS token is left to the class.

# %%
both = BoxViT(ViTConfig(**arch, num_classes=train_ds.num_classes),
              BoxConfig(task="class+box", box_pool="mean", class_weight=1.0))
t0 = time.perf_counter()
train_box(both, train_ds, val_ds, cfg, progress=False)
ev = evaluate_box(both, val_ds)
print(f"class+box: held-out accuracy {ev['accuracy']:.3f}, mean IoU {ev['mean_iou']:.3f}, "
      f"IoU>=0.5 {ev['iou50']:.3f} ({time.perf_counter() - t0:.0f} s)")

# %% [markdown]
# The same from the command line: `tinyvit box train` (add `--task class+box`,
# `--box-pool mean`, or `--data mnist --data-dir ../shared/data` for MNIST digits
# pasted at random positions and scales on a 56-pixel canvas), then
# `tinyvit box eval runs/box-shapes` and `tinyvit box predict runs/box-shapes --index 0`.
#
# ## Exercises
#
# Worked solutions, each checked by its own code: `solutions/11_solutions.py`
# (a teacher can leave that folder out of what students get).
#
# 1. Train with `giou_weight=0` (L1 alone) and with `l1_weight=0` (GIoU alone).
#    Which reaches the higher mean IoU? Which the higher share at IoU >= 0.75?
# 2. Replace the sigmoid by no activation at all. What goes wrong in the first steps
#    (look at the widths), and why does the GIoU loss need positive widths?
# 3. In 11.6, let the box head read `"cls"` instead of `"mean"`: does sharing one token
#    between the two tasks cost accuracy, IoU, or neither?
# 4. Try `tinyvit box train --data mnist --data-dir ../shared/data`: the digits vary in
#    size much more than the shapes. Which pooling copes best?
