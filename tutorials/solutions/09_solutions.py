# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Worked solutions: 9. Is the CLS map telling the truth?
#
# Withhold this folder from students if you grade the exercises (see
# `01_solutions.py`). Uses tutorial 8's `pool="cls"` and `pool="mean"` runs
# (reused from `figures/runs/` when tutorial 8 or 9 ran in the same folder,
# else trained here) and scores a subset of their held-out images: 24 in quick
# mode, 200 in full mode. Every number is printed by the code; in quick mode
# the models are barely trained and the answers mean little.

# %%
import numpy as np

from tinyvit import explain, faithfulness
from tinyvit.checkpoint import load_checkpoint
from tinyvit.model import ViT, init_params
from tinyvit.train import normalize_images
from tinyvit.tutorial import QUICK, run_datasets, trained_run

OPTIONS = dict(image_size=16, patch_size=4, dim=32, depth=2, heads=2, mlp_dim=64, n_train=256, epochs=2,
               batch_size=32) if QUICK else {}
N = 24 if QUICK else 200


def load(pool):
    ck = load_checkpoint(trained_run(f"08_{pool}_{'quick' if QUICK else 'full'}", pool=pool, **OPTIONS))
    return ck.model(), ck.train_config["normalize"], ck


model_cls, norm_cls, ck = load("cls")
model_mean, norm_mean, _ = load("mean")
_, test_ds = run_datasets(ck)
images, masks = test_ds.images[:N], test_ds.masks[:N]
x = normalize_images(images, norm_cls)
CHEAP = [m for m in explain.METHODS if m not in ("occlusion", "flow")]   # flow is slow; tutorial 9 has it
print(f"{N} held-out images; maps compared: {', '.join(CHEAP)}")

# %% [markdown]
# ## Exercise 1: `--query patches` on the pool="mean" model
#
# `query="patches"` (what `tinyvit faithfulness --query patches` passes on)
# makes the attention maps the mean of the patch rows instead of the CLS row.
# Raw attention and rollout change only in which rows they read.
# Gradient-weighted attention also changes what it weights: with mean pooling
# the logit's gradient flows into the patch rows directly, so the patch-row
# version follows the gradient of the path the head actually reads, while the
# CLS-row version sees only what leaks back through later blocks. Which
# metrics move, and by how much, is printed.

# %%
methods = tuple(CHEAP) + ("occlusion",)
tables = {q: faithfulness.faithfulness_table(model_mean, images, norm_mean, masks, methods=methods,
                                             randomization_images=0, query=q)["rows"]
          for q in ("cls", "patches")}
metrics = ("spearman_occlusion", "deletion_auc", "insertion_auc", "dino_jaccard")
print(f"{'method':<20} " + " ".join(f"{k:>30}" for k in metrics))
change = {}
for m in CHEAP:
    a, b = tables["cls"][m], tables["patches"][m]
    change[m] = abs(b["spearman_occlusion"] - a["spearman_occlusion"])
    print(f"{m:<20} " + " ".join(f"{a[k]:>13.3f} -> {b[k]:>13.3f}" for k in metrics))
print("largest change of Spearman with occlusion:", max(change, key=change.get))

# %% [markdown]
# ## Exercise 2: another occlusion baseline
#
# Instead of 0 (the image's mean colour), a removed patch gets the same patch
# of another image (image b takes its patches from image b + 1). The ranking
# of the maps by their Spearman correlation with each occlusion is printed,
# with the Spearman correlation of the two method scores: 1 would mean the
# baseline does not matter for the ranking.

# %%
def occlusion_from_donor(model, x, classes, donors):
    """logit_c(x) - logit_c(x with patch n taken from donors[b]) -> (B, gh, gw)."""
    B = x.shape[0]
    gh, gw = model.config.grid
    P = model.config.patch_size
    z0 = model(x)[np.arange(B), classes]
    drops = np.empty((B, gh * gw))
    for n in range(gh * gw):
        r, c = divmod(n, gw)
        xo = x.copy()
        xo[:, r * P:(r + 1) * P, c * P:(c + 1) * P] = donors[:, r * P:(r + 1) * P, c * P:(c + 1) * P]
        drops[:, n] = z0 - model(xo)[np.arange(B), classes]
    return drops.reshape(B, gh, gw)


maps = explain.attribution_maps(model_cls, x, methods=methods)
occ_donor = occlusion_from_donor(model_cls, x, maps["classes"], np.roll(x, 1, axis=0))
score = {}
for name, occ in (("zero (image mean)", maps["occlusion"]), ("another image's patch", occ_donor)):
    score[name] = np.array([np.nanmean(faithfulness.spearman(maps[m], occ)) for m in CHEAP])
    order = [CHEAP[k] for k in np.argsort(-score[name])]
    print(f"baseline {name:<22}: " + ", ".join(f"{m} {score[name][CHEAP.index(m)]:+.2f}" for m in order))
a, b = score.values()
print(f"Spearman between the two method scores: {faithfulness.spearman(a[None], b[None])[0]:+.2f}; "
      f"same best method: {CHEAP[int(np.argmax(a))] == CHEAP[int(np.argmax(b))]}")

# %% [markdown]
# ## Exercise 3: |A v W| through the blocks
#
# For every block, the norm of what token j sends to token i,
# `||sum_h A[h, i, j] v_j W_proj[h]||`, rows normalised to sum 1, mixed half
# and half with the identity for the residual, and multiplied through the
# blocks as rollout multiplies attention; the map is the CLS row. The table
# lines for it and for rollout are printed, with which one wins on each metric.

# %%
def norm_rollout(model, x):
    """Rollout of the value-weighted norms |A v W| -> (B, gh, gw)."""
    _, cache = model.forward(x)
    B, T = x.shape[0], model.config.num_tokens
    R = np.broadcast_to(np.eye(T), (B, T, T)).copy()
    for k, (_, c_attn, *_) in enumerate(cache["blocks"]):
        A, v = c_attn["attn"].astype(np.float64), c_attn["v"].astype(np.float64)   # (B,h,T,T), (B,h,T,d)
        h, d = v.shape[1], v.shape[3]
        W = model.params[f"blocks.{k}.attn.proj.W"].reshape(h, d, -1)
        sent = np.einsum("bhij,bhjd,hde->bije", A, v, W)                              # (B, T, T, D)
        Nm = np.linalg.norm(sent, axis=-1)
        Nm = Nm / Nm.sum(axis=2, keepdims=True)
        M = 0.5 * Nm + 0.5 * np.eye(T)
        R = M @ R
    return R[:, 0, 1:].reshape(B, *model.config.grid)


nr = norm_rollout(model_cls, x)
occ = maps["occlusion"]
d_nr, i_nr = faithfulness.deletion_insertion(model_cls, x, maps["classes"], nr)
d_ro, i_ro = faithfulness.deletion_insertion(model_cls, x, maps["classes"], maps["rollout"])
res = {"|A v W| rollout": (np.nanmean(faithfulness.spearman(nr, occ)), faithfulness.curve_area(d_nr).mean(),
                           faithfulness.curve_area(i_nr).mean()),
       "rollout": (np.nanmean(faithfulness.spearman(maps["rollout"], occ)), faithfulness.curve_area(d_ro).mean(),
                   faithfulness.curve_area(i_ro).mean())}
for k, (sp, de, ins) in res.items():
    print(f"{k:<16} Spearman with occlusion {sp:+.3f}  deletion AUC {de:.3f}  insertion AUC {ins:.3f}")
(a_sp, a_de, a_in), (b_sp, b_de, b_in) = res.values()
print(f"|A v W| rollout beats rollout on: Spearman {a_sp > b_sp}, deletion {a_de < b_de}, insertion {a_in > b_in}")

# %% [markdown]
# ## Exercise 4: re-initialise the bottom block only
#
# The top-down check replaces the head and the top blocks. Here only block 0
# gets fresh weights (head and the rest kept). The attention maps of the later
# blocks are built from what block 0 hands them, so if their structure came
# from the input's content passed through block 0, they should change a lot
# here even though their own weights are untouched. The Spearman correlation of
# each map with the original, for both checks, is printed.

# %%
def with_fresh_blocks(model, blocks, seed=12345):
    fresh = init_params(type(model.config).from_dict({**model.config.to_dict(), "seed": seed}))
    redo = tuple(f"blocks.{i}." for i in blocks)
    return ViT(model.config, {k: (fresh[k] if k.startswith(redo) else v) for k, v in model.params.items()},
               model.layers)


classes = maps["classes"]
bottom = explain.attribution_maps(with_fresh_blocks(model_cls, [0]), x, classes, CHEAP)
top = explain.attribution_maps(faithfulness.randomized_model(model_cls, 1), x, classes, CHEAP)
print(f"{'method':<20} {'bottom block fresh':>18} {'head + top block fresh':>22}")
for m in CHEAP:
    print(f"{m:<20} {np.nanmean(faithfulness.spearman(maps[m], bottom[m])):>+18.2f} "
          f"{np.nanmean(faithfulness.spearman(maps[m], top[m])):>+22.2f}")
