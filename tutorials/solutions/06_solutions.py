# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Worked solutions: 6. The whole ViT
#
# Withhold this folder from students if you grade the exercises (see
# `01_solutions.py`). Every answer is computed and checked below.

# %%
import numpy as np

from tinyvit import ViT, ViTConfig
from tinyvit.datasets import make_shapes
from tinyvit.gradcheck import check_model, numerical_vjp, rel_error
from tinyvit.layers import linear_backward, softmax_cross_entropy
from tinyvit.tutorial import QUICK

arch = dict(image_size=16, in_channels=3, patch_size=4, dim=16, depth=2, heads=2, mlp_dim=32, num_classes=6, seed=0)
data = make_shapes(4, image_size=16, seed=0)
images, labels = data.images.astype(np.float64), data.labels

# %% [markdown]
# ## Exercise 1: which rows of `dtokens` are non-zero with `pool="mean"`
#
# The head reads the mean of the N patch rows, so each patch row gets
# `dpooled / N` and the CLS row (row 0) gets nothing from the head.

# %%
model = ViT(ViTConfig(**arch, pool="mean", dtype="float64"))
logits, cache = model.forward(images)
dlogits = softmax_cross_entropy(logits, labels)[1]
dpooled = linear_backward(dlogits, cache["head"])[0]                 # (B, D)
N = model.config.num_tokens - 1
dtokens = np.zeros((len(images), N + 1, model.config.dim))
dtokens[:, 1:] = dpooled[:, None, :] / N
print("non-zero rows:", np.flatnonzero(np.abs(dtokens).sum((0, 2))), f"(all but row 0), each dpooled / {N}")

# %% [markdown]
# ## Exercise 2: the gradient with respect to the images
#
# `model.backward_with_input` gives it analytically; centred differences of the
# loss, one pixel at a time, check it. Its absolute value summed over the
# channels marks the pixels that change the loss most.

# %%
model = ViT(ViTConfig(**arch, dtype="float64"))
one = images[:1].copy()


def loss():
    return np.array(softmax_cross_entropy(model(one), labels[:1])[0])


logits, cache = model.forward(one)
_, dimg = model.backward_with_input(softmax_cross_entropy(logits, labels[:1])[1], cache)  # (1, H, W, C)
num = numerical_vjp(loss, one, np.array(1.0))
print(f"backward vs centred differences: relative error {rel_error(dimg, num):.1e}")
assert rel_error(dimg, num) < 1e-6
saliency = np.abs(dimg[0]).sum(-1)                                   # (H, W)
r, c = np.unravel_index(saliency.argmax(), saliency.shape)
print(f"image gradient {dimg.shape}; largest |gradient| (summed over channels) at pixel row {r}, column {c}")

# %% [markdown]
# ## Exercise 3: counting the parameters
#
# patch embedding P*P*C*D + D; CLS D; positions T*D; per block two layer norms
# (4D), qkv D*3D + 3D, proj D*D + D, MLP D*M + M + M*D + D; final norm 2D;
# head D*K + K.

# %%
cfg = model.config
P, C, D, M, K, L, T = cfg.patch_size, cfg.in_channels, cfg.dim, cfg.mlp_dim, cfg.num_classes, cfg.depth, cfg.num_tokens
per_block = 4 * D + (D * 3 * D + 3 * D) + (D * D + D) + (D * M + M + M * D + D)
by_hand = (P * P * C * D + D) + D + T * D + L * per_block + 2 * D + (D * K + K)
print(f"by hand {by_hand:,}, model.num_params() {model.num_params():,}")
assert by_hand == model.num_params()

# %% [markdown]
# ## Exercise 4: the gradient check in float32
#
# float32 keeps about 7 significant digits. A centred difference divides a
# difference of two nearly equal losses by 2h: with h small the rounding of the
# losses dominates, with h large the curvature does, and no h gives more than a
# few correct digits. The printed errors are many orders of magnitude above
# float64's.

# %%
for dtype in ("float64", "float32"):
    m = ViT(ViTConfig(**arch, dtype=dtype))
    h = 1e-6 if dtype == "float64" else 1e-2
    errs = check_model(m, images.astype(dtype), labels, h=h, max_entries=10 if QUICK else 40)
    print(f"{dtype}: worst relative error {max(errs.values()):.1e}, median {np.median(list(errs.values())):.1e}")
