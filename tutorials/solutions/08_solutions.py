# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Worked solutions: 8. What the CLS token looks at
#
# Withhold this folder from students if you grade the exercises (see
# `01_solutions.py`). Uses tutorial 8's `pool="cls"` run (reused from
# `figures/runs/` when tutorial 8 ran in the same folder, else trained here).
# Every number is printed by the code; in quick mode the model is barely
# trained and the answers mean little.

# %%
import numpy as np

from tinyvit import viz
from tinyvit.checkpoint import load_checkpoint
from tinyvit.train import normalize_images
from tinyvit.tutorial import QUICK, run_datasets, trained_run

OPTIONS = dict(image_size=16, patch_size=4, dim=32, depth=2, heads=2, mlp_dim=64, n_train=256, epochs=2,
               batch_size=32) if QUICK else {}
ck = load_checkpoint(trained_run(f"08_cls_{'quick' if QUICK else 'full'}", pool="cls", **OPTIONS))
model, normalize = ck.model(), ck.train_config["normalize"]
_, test_ds = run_datasets(ck)
grid, P = model.config.grid, model.config.patch_size
x = normalize_images(test_ds.images, normalize)
attn = model.attention_maps(x)                      # list of (B, h, T, T)
rollout = viz.attention_rollout(attn, grid)         # (B, gh, gw)
base = viz.localisation_score(rollout, test_ds.masks, P)
print(f"rollout (residual 0.5): ratio {base['ratio']:.3f}")

# %% [markdown]
# ## Exercise 1: the last block's raw CLS attention instead of the rollout
#
# The raw row of one block says where the CLS token reads in that block only;
# rollout also follows what the patches it reads had gathered before. Which
# one is more object-focused is printed here.

# %%
raw = viz.cls_attention(attn[-1], grid).mean(axis=1)                 # (B, gh, gw), heads averaged
s_raw = viz.localisation_score(raw, test_ds.masks, P)
print(f"last block, raw CLS attention: ratio {s_raw['ratio']:.3f}; rollout: {base['ratio']:.3f}; "
      f"raw is {'higher' if s_raw['ratio'] > base['ratio'] else 'lower'}")

# %% [markdown]
# ## Exercise 2: the residual weight of the rollout
#
# residual = 0 multiplies the raw attention matrices (as if there were no
# residual path); a larger weight says each block changes the tokens less, so
# more of the rollout stays with the tokens it started in. How the score moves
# is printed; look at a map or two as well (\`viz.plot_rollout\`).

# %%
for r in (0.0, 0.5, 0.9):
    s = viz.localisation_score(viz.attention_rollout(attn, grid, residual=r), test_ds.masks, P)
    print(f"residual {r}: ratio {s['ratio']:.3f}")

# %% [markdown]
# ## Exercise 3: occlusion
#
# Replace the k patches the rollout ranks highest by the image's mean colour,
# and compare the accuracy drop with replacing k random patches. If the model
# relies on the patches the rollout points at, the first drop is larger.

# %%
def occlude(images, order, k):
    out = images.copy()
    gh, gw = grid
    for b in range(len(images)):
        mean = images[b].mean(axis=(0, 1))
        for n in order[b, :k]:
            i, j = divmod(int(n), gw)
            out[b, i * P:(i + 1) * P, j * P:(j + 1) * P] = mean
    return out


def accuracy(images):
    return float((model(normalize_images(images, normalize)).argmax(1) == test_ds.labels).mean())


k = 3
top = np.argsort(-rollout.reshape(len(rollout), -1), axis=1)
rand = np.argsort(np.random.default_rng(0).random(top.shape), axis=1)
print(f"accuracy: clean {accuracy(test_ds.images):.3f}, top-{k} rollout patches occluded "
      f"{accuracy(occlude(test_ds.images, top, k)):.3f}, {k} random patches occluded "
      f"{accuracy(occlude(test_ds.images, rand, k)):.3f}")

# %% [markdown]
# ## Exercise 4: the localisation score per class
#
# A class whose objects cover most patches has a high `uniform` share and so
# little room above it; the ring's hole is background inside the object's
# patches. Both the ratio and the uniform share are printed per class.

# %%
for c, name in enumerate(test_ds.class_names):
    sel = test_ds.labels == c
    s = viz.localisation_score(rollout[sel], test_ds.masks[sel], P)
    print(f"{name:<9} ratio {s['ratio']:.3f}  share {s['share']:.3f}  uniform {s['uniform']:.3f}")
