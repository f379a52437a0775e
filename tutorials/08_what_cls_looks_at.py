# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 8. What the CLS token looks at
#
# With `pool="cls"` the classifier reads only the final state of the CLS
# token, and the CLS token learns about the image only through attention. So
# its attention is a window onto what the model uses. This tutorial trains a
# ViT on the shapes data and looks through that window:
#
# 1. the CLS attention of every head, block by block, over the image;
# 2. **attention rollout** (Abnar & Zuidema, 2020), which follows the attention
#    through all blocks at once;
# 3. a number for it, the **localisation score**: the share of the rollout
#    that lands on patches overlapping the object, against the share a uniform
#    map would get;
# 4. the same model trained with `pool="mean"` (the head reads the mean of the
#    patch tokens, not the CLS token), and what changes, including what happens
#    to a CLS token the head never reads;
# 5. what training did to the position embeddings.
#
# Open it as a notebook or run it as a script; it needs tinyvit installed and
# runs from any folder. Full mode runs `tinyvit train --pool cls` and `tinyvit
# train --pool mean` with every other setting at its default (the "tiny" model
# on 32x32 images: 8x8 patches, so a 4x4 grid, D = 64, 3 blocks of 4 heads;
# AdamW lr 3e-3, random flips, 8 epochs of 20,000 shapes) and scores them on the
# 2,000 images those runs hold out; each training cell prints how long it took.
# The runs are kept and reused the next time (delete `figures/runs/` to train
# again). `TINYVIT_QUICK=1`, the fast mode the tests use: tiny models on a few
# hundred 16x16 images (the maps are then mostly noise). To use models trained
# elsewhere, point `TINYVIT_CKPT_CLS` and `TINYVIT_CKPT_MEAN` at their
# checkpoints (e.g. `runs/<name>/checkpoint.npz` from `tinyvit train`). Figures
# show inline and are saved to `figures/` under the current folder (or
# `$TINYVIT_FIGURES`).

# %%
import os

import numpy as np

from tinyvit.tutorial import QUICK, display_figure, run_datasets, show, trained_run
from tinyvit import ViT, ViTConfig, viz
from tinyvit.checkpoint import load_checkpoint
from tinyvit.datasets import load_dataset
from tinyvit.train import evaluate, normalize_images

# %% [markdown]
# ## 8.1 Two models: pool="cls" and pool="mean"
#
# Identical except for the pooling: `tinyvit train` gives both the same data in
# the same order and the same initialisation (its seed). Each runs in a process
# of its own, with the thread and memory settings of `tinyvit train` (see
# tutorial 7, 7.4).

# %%
# Quick mode: tiny models on 256 16x16 images. Full mode: `tinyvit train`'s defaults, nothing changed.
OPTIONS = dict(image_size=16, patch_size=4, dim=32, depth=2, heads=2, mlp_dim=64, n_train=256, epochs=2,
               batch_size=32) if QUICK else {}


def get_checkpoint(pool):
    """The checkpoint in $TINYVIT_CKPT_<POOL> if set, else a `tinyvit train --pool <pool>` run."""
    path = os.environ.get(f"TINYVIT_CKPT_{pool.upper()}")
    if not path:
        path = trained_run(f"08_{pool}_{'quick' if QUICK else 'full'}", pool=pool, **OPTIONS)
    ck = load_checkpoint(path)
    if ck.model_config.pool != pool:
        raise ValueError(f"{path}: expected a pool={pool!r} model, got pool={ck.model_config.pool!r}")
    print(f"pool={pool}: {path} (step {ck.step})")
    return ck


ck_cls = get_checkpoint("cls")
ck_mean = get_checkpoint("mean")

# %%
model_cls, norm_cls = ck_cls.model(), (ck_cls.train_config or {}).get("normalize", "image")
model_mean, norm_mean = ck_mean.model(), (ck_mean.train_config or {}).get("normalize", "image")
if ck_cls.meta.get("dataset", {}).get("name") == "shapes":
    _, test_ds = run_datasets(ck_cls)               # the images the run held out
else:                                               # other checkpoints: fresh shapes of their size
    _, test_ds = load_dataset("shapes", image_size=model_cls.config.image_hw[0], n_train=1, n_test=2000, seed=1)
print("test set:", test_ds.summary())
show("test images", test_ds.images)
show("test masks", test_ds.masks)
for name, m, nz in [("cls", model_cls, norm_cls), ("mean", model_mean, norm_mean)]:
    print(f"pool={name}: test accuracy {evaluate(m, test_ds, normalize=nz)['accuracy']:.3f}")
cfg = model_cls.config
grid, P = cfg.grid, cfg.patch_size
print("grid", grid, "patch size", P, "tokens", cfg.num_tokens)

# %% [markdown]
# ## 8.2 The CLS attention of every head
#
# `model.attention_maps(x)` returns one (B, h, T, T) array per block. Row 0 is
# the CLS query; its columns 1..N, reshaped to the grid, are a map over the
# patches (`viz.cls_attention`). The overlays are drawn with `imshow(extent=...)`
# so each cell lies exactly on its patch. The cyan mark on the colour bar is
# 1/T: a raw CLS row spreads over all T tokens (the CLS token itself included),
# so a uniform row gives each patch 1/T.

# %%
n_show = 3
images = test_ds.images[:n_show]                    # (3, H, W, C), for display
x = normalize_images(images, norm_cls)              # what the model sees
show("x (normalised)", x)
attn = model_cls.attention_maps(x)                  # list of (B, h, T, T)
for i, a in enumerate(attn):
    show(f"attention block {i}", a)
maps = viz.cls_attention(attn, grid)                # (L, B, h, gh, gw)
show("CLS maps (L, B, h, gh, gw)", maps)
pred = model_cls(x).argmax(axis=1)                  # (3,) predicted classes


def about(b):
    """'a star, predicted star': what image b shows and what the pool=cls model says."""
    return f"a {test_ds.class_names[test_ds.labels[b]]}, predicted {test_ds.class_names[pred[b]]}"


# %%
last = cfg.depth - 1
display_figure(viz.plot_cls_attention(images[0], attn[last], grid, index=0, block=last,
                                      title=f"pool=cls model, last block ({last}): CLS attention per head "
                                            f"({about(0)})"),
               "08_cls_heads_last_block.png")

# %%
display_figure(viz.plot_attention_grid(images[0], attn, grid, index=0,
                                       title=f"pool=cls model: CLS attention,\nblocks (rows) x heads "
                                             f"(columns)\n{about(0)}"),
               "08_cls_attention_grid.png")

# %% [markdown]
# Single heads of single blocks are noisy pictures: some heads look at the
# object, some at its edges, some at the background (which tells the model
# where the object is *not*), and in the early blocks the CLS token has not
# gathered anything yet. Rollout combines them.
#
# ## 8.3 Attention rollout
#
# Every block mixes the tokens: token i's attention output is
# `sum_j A[i, j] v_j`, a weighted sum of the tokens' *values* `v_j` (then the
# output projection), added to the residual `x_i`. Rollout models a block as `A' = 0.5 A + 0.5 I` (heads
# averaged; rows renormalised) and multiplies through the blocks,
# `R = A'_L ... A'_1`. Row 0 of R says how much of each input patch has reached
# the CLS token by the end.

# %%
rollout = viz.attention_rollout(attn, grid)          # (B, gh, gw)
show("rollout (B, gh, gw)", rollout)
for b in range(n_show):
    display_figure(viz.plot_rollout(images[b], rollout[b], mask=test_ds.masks[b],
                                    title=f"pool=cls: rollout over {about(b)} (cyan: object outline)"),
                   f"08_rollout_cls_{b}.png")

# %% [markdown]
# ## 8.4 The localisation score
#
# How much of the rollout falls on the object? For each test image:
# `share` = rollout mass on patches that overlap the object mask (normalised
# over the patches), `uniform` = the fraction of patches that overlap the
# object (what a flat map would get). Their ratio says how many times more
# object-focused the map is than chance (1 = no better). The last two columns
# count only patches that are more than half object
# (`localisation_score(..., min_fraction=0.5)`), a stricter test on coarse grids.
#
# For comparison: an untrained model, and the `pool="mean"` model read two ways:
# its CLS row (the CLS token is still in the sequence, but the head never reads
# it) and the mean of the patch rows (`query="patches"`), which is what the
# mean-pooling head reads.

# %%
def rollout_maps(model, normalize, query="cls", batch=250):
    out = []
    for s in range(0, len(test_ds), batch):
        xb = normalize_images(test_ds.images[s:s + batch], normalize)
        out.append(viz.attention_rollout(model.attention_maps(xb), grid, query=query))
    return np.concatenate(out)                       # (B, gh, gw)


untrained = ViT(ViTConfig(**{**cfg.to_dict(), "pool": "cls"}))
rows = [("pool=cls, CLS rollout", model_cls, norm_cls, "cls"),
        ("pool=mean, CLS rollout", model_mean, norm_mean, "cls"),
        ("pool=mean, patch-mean rollout", model_mean, norm_mean, "patches"),
        ("pool=cls, patch-mean rollout", model_cls, norm_cls, "patches"),
        ("untrained, CLS rollout", untrained, norm_cls, "cls")]
scores, strict = {}, {}
print(f"{len(test_ds)} test images, {grid[0]}x{grid[1]} grid")
print(f"{'':<30} {'share':>6} {'uniform':>8} {'ratio':>6}   {'>50% object: share':>19} {'uniform':>8} {'ratio':>6}")
for label, m, nz, query in rows:
    r = rollout_maps(m, nz, query)
    s = scores[label] = viz.localisation_score(r, test_ds.masks, P)
    t = strict[label] = viz.localisation_score(r, test_ds.masks, P, min_fraction=0.5)
    print(f"{label:<30} {s['share']:6.3f} {s['uniform']:8.3f} {s['ratio']:6.2f}   "
          f"{t['share']:19.3f} {t['uniform']:8.3f} {t['ratio']:6.2f}")

# %%
xm = normalize_images(images, norm_mean)
display_figure(viz.plot_rollout(images[0], viz.attention_rollout(model_mean.attention_maps(xm), grid)[0],
                                mask=test_ds.masks[0],
                                title="pool=mean model: CLS rollout (the head never reads the CLS token)"),
               "08_rollout_mean_0.png")

# %%
display_figure(viz.plot_rollout(images[0],
                                viz.attention_rollout(model_mean.attention_maps(xm), grid, query="patches")[0],
                                mask=test_ds.masks[0],
                                title="pool=mean model: rollout averaged over the patch tokens"),
               "08_rollout_mean_patches_0.png")

# %% [markdown]
# ### How to read the table
#
# The untrained model scores a ratio of 1: its attention is nearly uniform.
# The comparisons that matter are printed below from the table itself, so they
# hold for whichever models this notebook ran (full mode: the two `tinyvit
# train` runs; quick mode's barely trained models can say anything).

# %%
c, mc, mp = scores["pool=cls, CLS rollout"], scores["pool=mean, CLS rollout"], scores["pool=mean, patch-mean rollout"]
print(f"pool=cls CLS rollout: {c['ratio']:.2f} x chance; pool=mean CLS rollout: {mc['ratio']:.2f} x; "
      f"pool=mean patch-mean rollout: {mp['ratio']:.2f} x")
print(f"the never-read CLS token of the pool=mean model still lands above chance: {mc['ratio'] > 1}")
print(f"more than half object patches only: pool=cls {strict['pool=cls, CLS rollout']['ratio']:.2f} x, "
      f"pool=mean {strict['pool=mean, CLS rollout']['ratio']:.2f} x")

# %% [markdown]
# Why the grid matters: on a coarse grid almost every patch touches the object,
# so even a perfect map cannot score much above 1. The cell below takes the
# same kind of images at 16x16 pixels with 8x8 patches (a 2x2 grid, `tinyvit
# train`'s former default) and prints the largest ratio any map could reach
# there, `1 / uniform`, next to the same bound for the grid used above.

# %%
_, small = load_dataset("shapes", image_size=16, n_train=1, n_test=2000, seed=1)
flat = np.ones((len(small), 2, 2))                  # any map: only its 'uniform' column is used
u_small = viz.localisation_score(flat, small.masks, 8)["uniform"]
u_here = scores["untrained, CLS rollout"]["uniform"]
print(f"2x2 grid (16x16 images, 8x8 patches): {u_small:.3f} of the patches touch the object, "
      f"so the ratio is at most {1 / u_small:.2f}")
print(f"{grid[0]}x{grid[1]} grid used above: {u_here:.3f} touch the object, the ratio is at most {1 / u_here:.2f}")

# %% [markdown]
# The CLS token shares its query and key weights with the patch tokens, which
# are trained to find the object, so even in the `pool="mean"` model its rollout
# is pulled towards the object. What `pool="cls"` changes is *where* the summary
# is read: from one token whose attention you can plot, instead of from an
# average over all patches.
#
# Rollout is also only a heuristic (it treats all heads alike and ignores the
# MLPs and the sizes of the values). A high score says the attention *flows*
# from the object to the CLS token, not that the decision *depends* on those
# patches; exercise 3 tests that.
#
# ### Is the CLS token of a mean-pooling model trained at all?
#
# Its head never reads it, but the CLS token is still in the sequence: in every
# block the patch tokens attend to it, so its value is mixed into theirs, and
# the gradient of the loss flows back into it through those attention weights.
# So it *is* trained, only not as a summary: it is free to become whatever helps
# the patch tokens, much like the extra "register" tokens of Darcet et al.
# (2023, "Vision Transformers Need Registers"). The cell measures it: the
# gradient its CLS token gets at initialisation, and how far training moved it
# in both models (it starts near zero, std 1e-6).

# %%
fresh_mean = ViT(ViTConfig(**{**cfg.to_dict(), "pool": "mean"}))        # the same initialisation
xb = normalize_images(test_ds.images[:64], norm_mean)
_, g, _ = fresh_mean.loss_and_grads(xb, test_ds.labels[:64])
gnorm = np.linalg.norm(g["cls_token"])
print(f"pool=mean model at initialisation: |cls_token| {np.linalg.norm(fresh_mean.params['cls_token']):.2e}, "
      f"|d loss / d cls_token| {gnorm:.2e} ({'not zero: it is trained' if gnorm > 0 else 'zero: never trained'})")
print(f"after training: |cls_token| {np.linalg.norm(model_mean.params['cls_token']):.3f} in the pool=mean model, "
      f"{np.linalg.norm(model_cls.params['cls_token']):.3f} in the pool=cls model")

# %% [markdown]
# ## 8.5 What training did to the position embeddings
#
# Tutorial 2 showed random embeddings at initialisation: each position similar
# only to itself (cosine about 0 to every other). After training they are no
# longer noise. The random left-right flips in training make left and right
# interchangeable, so a position has reason to resemble its left-right *mirror
# image* (the position at the same distance from the centre on the other side);
# up-down there are no flips. The cell prints the mean cosine similarity of each
# position to its left-right mirror, its up-down mirror and its four neighbours,
# for both trained models.

# %%
display_figure(viz.plot_pos_embed_similarity(model_cls.params["pos_embed"], grid,
                                             title="learned position embeddings after training (pool=cls model)"),
               "08_pos_embed_trained.png")


def mirror_similarity(pos_embed):
    """Mean cosine similarity of a position to its left-right mirror, up-down mirror, 4 neighbours."""
    sim = viz.pos_embed_similarity(pos_embed, grid)  # (gh, gw, gh, gw)
    gh, gw = grid
    lr_mirror, ud_mirror, neighbours = [], [], []
    for i in range(gh):
        for j in range(gw):
            if gw - 1 - j != j:
                lr_mirror.append(sim[i, j, i, gw - 1 - j])
            if gh - 1 - i != i:
                ud_mirror.append(sim[i, j, gh - 1 - i, j])
            for a, b in [(i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)]:
                if 0 <= a < gh and 0 <= b < gw:
                    neighbours.append(sim[i, j, a, b])
    return np.mean(lr_mirror), np.mean(ud_mirror), np.mean(neighbours)


for name, m in [("pool=cls", model_cls), ("pool=mean", model_mean)]:
    lr, ud, nb = mirror_similarity(m.params["pos_embed"])
    print(f"{name:<9} mean cosine to the left-right mirror {lr:.3f}, up-down mirror {ud:.3f}, "
          f"4 neighbours {nb:.3f}; left-right mirror closer than the neighbours: {lr > nb}")

# %% [markdown]
# ## Exercises
#
# Worked solutions, each checked by its own code: `solutions/08_solutions.py`
# (a teacher can leave that folder out of what students get).
#
# 1. Compute the localisation score from the last block's raw CLS attention
#    (heads averaged) instead of the rollout. Is it higher or lower, and why?
# 2. Change the residual weight in `attention_rollout(..., residual=...)` from
#    0.5 to 0.9 and 0.0. How do the maps and the score change?
# 3. Occlusion test: for each test image, replace the patches with the highest
#    rollout by the image mean and measure the drop in accuracy; compare with
#    replacing the same number of random patches.
# 4. Which class has the lowest localisation score? Look at its masks: is it
#    the shape that is hard to find, or the metric (think of the ring's hole)?
