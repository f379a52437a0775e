# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Worked solutions: 11. The CLS token as a regressor
#
# Withhold this folder from students if you grade the exercises (see
# `01_solutions.py`). Every number is printed by the code. In quick mode the models
# see a few hundred 16x16 images for two epochs, so the comparisons mean little; run
# it in full mode (a few minutes a model) for answers worth reading.

# %%
import time

import numpy as np

from tinyvit import ViTConfig
from tinyvit.box import BoxConfig, BoxTrainConfig, BoxViT, evaluate_box, load_box_data, train_box
from tinyvit.layers import box as bx
from tinyvit.tutorial import QUICK

if QUICK:
    SIZE, N_TRAIN, N_VAL, EPOCHS = 16, 384, 128, 2
    arch = dict(image_size=16, patch_size=4, dim=32, depth=2, heads=2, mlp_dim=64)
else:
    SIZE, N_TRAIN, N_VAL, EPOCHS = 32, 20000, 2000, 5
    arch = dict(image_size=32, patch_size=8, dim=64, depth=3, heads=4, mlp_dim=128)
train_ds, val_ds = load_box_data("shapes", n_train=N_TRAIN, n_val=N_VAL, image_size=SIZE)
cfg = BoxTrainConfig(epochs=EPOCHS, batch_size=32 if QUICK else 64, workers=2, log_every=10 ** 6)


def run(box_config, task_classes=None):
    """Train a BoxViT on the shapes boxes; returns its held-out evaluation and the seconds taken."""
    model = BoxViT(ViTConfig(**arch, num_classes=train_ds.num_classes), box_config)
    t0 = time.perf_counter()
    train_box(model, train_ds, val_ds, cfg, progress=False)
    return evaluate_box(model, val_ds), time.perf_counter() - t0


# %% [markdown]
# ## Exercise 1: L1 alone, GIoU alone
#
# The default weighs both (5 x L1 + 2 x (1 - GIoU), DETR's weights). Each alone:

# %%
for name, bc in (("L1 alone", BoxConfig(giou_weight=0.0)), ("GIoU alone", BoxConfig(l1_weight=0.0)),
                 ("both (default)", BoxConfig())):
    ev, sec = run(bc)
    print(f"{name:<15} mean IoU {ev['mean_iou']:.3f}  IoU>=0.75 {ev['iou75']:.3f}  ({sec:.0f} s)")

# %% [markdown]
# What to expect: GIoU optimises the overlap itself, L1 gives every coordinate a
# gradient of the same size however far off it is (useful early, when boxes do not
# overlap at all). Which wins here is what the printed numbers say for this run; in
# quick mode the differences are within what another seed would change.
#
# ## Exercise 2: no sigmoid
#
# Without the sigmoid the head's raw outputs are the box. A fresh head gives numbers
# near its bias, here zero, so the first widths and heights are about as often
# negative as positive. A negative width makes the "area" w * h negative and the
# corners swap: the GIoU formula then computes nonsense.

# %%
rng = np.random.default_rng(0)
x = rng.standard_normal((8, 16))
W, b = rng.standard_normal((16, 4)) * 0.1, np.zeros(4)
raw = x @ W + b                                         # what the head gives without a sigmoid
print("raw widths:", np.round(raw[:, 2], 3))
print("share of negative widths or heights:", float((raw[:, 2:] < 0).mean()))
target = np.array([[0.5, 0.5, 0.3, 0.3]])
for w in (0.3, 0.1, -0.1, -0.3):
    loss, cache = bx.giou_loss_forward(np.array([[0.5, 0.5, w, 0.3]]), target)
    print(f"predicted width {w:+.1f}: 1 - GIoU = {loss[0]:.3f}, IoU = {cache['iou'][0]:+.3f}")
boxes, _ = bx.box_head_forward(x, W, b)
print("with the sigmoid every width lies in (0, 1):", bool(((boxes[:, 2:] > 0) & (boxes[:, 2:] < 1)).all()))

# %% [markdown]
# As printed: a box of negative width overlaps nothing (IoU 0 wherever it sits) and its
# 1 - GIoU exceeds 1, because its "area" w * h is negative and enters the union and the
# enclosing-box penalty with the wrong sign. The loss then no longer measures overlap.
# The sigmoid keeps all four numbers in (0, 1), so every prediction is a real box from
# the first step on.
#
# ## Exercise 3: one token for both tasks

# %%
for pool in ("mean", "cls"):
    ev, sec = run(BoxConfig(task="class+box", box_pool=pool, class_weight=1.0))
    print(f"box head on {pool!r:<7} accuracy {ev['accuracy']:.3f}  mean IoU {ev['mean_iou']:.3f}  "
          f"({sec:.0f} s)")

# %% [markdown]
# With the box on "cls" the CLS token must carry both what and where. Compare the two
# printed lines: on the shapes, the class is easy, so any cost shows in the IoU first.
#
# ## Exercise 4: MNIST digits on a larger canvas
#
# `tinyvit box train --data mnist --data-dir ../shared/data --box-pool cls` (and
# `mean`, `attn`) trains on digits pasted at random positions and scales (0.5x-1.5x)
# on a 56-pixel canvas, from the t10k files. Here a short version of the same
# comparison, when the data is beside this checkout:

# %%
from pathlib import Path

data_dir = next((d for d in (Path("../shared/data"), Path("../../shared/data"), Path("data"))
                 if (d / "mnist" / "t10k-images-idx3-ubyte.gz").is_file()), None)
if data_dir is None:
    print("no MNIST t10k files found (looked in ../shared/data, ../../shared/data, data): skipped")
else:
    n_train, n_val = (256, 64) if QUICK else (8000, 2000)
    mtrain, mval = load_box_data("mnist", data_dir=data_dir, n_train=n_train, n_val=n_val)
    print(mtrain.summary())
    side = mtrain.images.shape[1]
    march = dict(image_size=side, patch_size=side // 4 if QUICK else side // 8, dim=32 if QUICK else 64,
                 depth=2 if QUICK else 3, heads=2 if QUICK else 4, mlp_dim=64 if QUICK else 128)
    for pool in ("cls", "mean", "attn"):
        model = BoxViT(ViTConfig(**march, in_channels=mtrain.images.shape[3],
                                 num_classes=mtrain.num_classes), BoxConfig(box_pool=pool))
        train_box(model, mtrain, mval, cfg, progress=False)
        ev = evaluate_box(model, mval)
        print(f"MNIST boxes, head on {pool!r:<7} mean IoU {ev['mean_iou']:.3f}  IoU>=0.5 {ev['iou50']:.3f}")
