# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Worked solutions: 2. The CLS token and the position embeddings
#
# Withhold this folder from students if you grade the exercises (see
# `01_solutions.py`). Every answer is computed and checked below.

# %%
import numpy as np

from tinyvit import ViT, ViTConfig
from tinyvit.datasets import make_shapes
from tinyvit.gradcheck import numerical_vjp, rel_error
from tinyvit.layers import patchify, pos_backward, pos_forward, unpatchify

# %% [markdown]
# ## Exercise 1: check `pos_backward` numerically
#
# The table is broadcast over the batch, so its gradient is the batch sum.

# %%
rng = np.random.default_rng(0)
x = rng.standard_normal((3, 5, 4))
pos = rng.standard_normal((1, 5, 4))
dout = rng.standard_normal(x.shape)
_, cache = pos_forward(x, pos)
dx, dpos = pos_backward(dout, cache)
num = numerical_vjp(lambda: pos_forward(x, pos)[0], pos, dout)
err = rel_error(dpos, num)
print(f"dpos relative error {err:.1e}; equals dout.sum(axis=0): {np.allclose(dpos, dout.sum(0, keepdims=True))}")
assert err < 1e-8

# %% [markdown]
# ## Exercises 2 and 3: the shuffle test with `pool="mean"` and with sin-cos positions
#
# With `pool="mean"` and no positions, a shuffle only reorders the patch
# tokens; attention is permutation-equivariant, so every output row moves with
# its token, and the mean over the rows is unchanged: same logits. With
# positions the patches meet different embeddings, and the output changes.
#
# With `pos_embed="sincos"` the table is fixed, kept outside `model.params`
# (there is no `"pos_embed"` parameter to zero), so the positions cannot be
# switched off by editing the parameters, and the shuffle changes the output.

# %%
def shuffle_change(model, image, perm):
    P = model.config.patch_size
    shuffled = unpatchify(patchify(image, P)[:, perm], model.config.image_hw, P, 3)
    a, b = model(image), model(shuffled)
    return float(np.abs(a - b).max() / np.abs(a).max())


image = make_shapes(1, image_size=16, seed=1).images.astype(np.float64)
perm = np.random.default_rng(3).permutation(16)
for pos_kind in ("learned", "sincos"):
    cfg = ViTConfig(image_size=16, patch_size=4, dim=32, depth=2, heads=4, mlp_dim=64, num_classes=6,
                    dtype="float64", seed=0, pool="mean", pos_embed=pos_kind)
    model = ViT(cfg)
    for name, value in model.params.items():
        if name.endswith(".W"):
            value *= 10.0                            # as in tutorial 2: attention far from uniform
    print(f"pool=mean, pos_embed={pos_kind}: 'pos_embed' in params: {'pos_embed' in model.params}")
    if "pos_embed" in model.params:
        model.params["pos_embed"][:] = np.random.default_rng(4).standard_normal(
            model.params["pos_embed"].shape) * 0.5
        with_pos = shuffle_change(model, image, perm)
        model.params["pos_embed"][:] = 0.0
        without = shuffle_change(model, image, perm)
        print(f"  relative change of the logits: with positions {with_pos:.2e}, without {without:.2e}")
        assert without < 1e-10 < with_pos
    else:
        change = shuffle_change(model, image, perm)
        print(f"  relative change of the logits with the fixed sin-cos table: {change:.2e}")
        assert change > 1e-6

# %% [markdown]
# ## Exercise 4: why the CLS token starts near zero
#
# The CLS token is added to its position embedding, `pos_embed[0]`, before the
# first block. Starting near zero, the CLS input is just that position
# embedding: the same small vector for every image, carrying no information of
# its own, so at first everything the CLS token ends up holding comes from
# attention over the patches. A large random start would be a fixed offset the
# model has to learn around. The numbers for a fresh default model:

# %%
m = ViT(ViTConfig())
cls, pos0 = m.params["cls_token"][0, 0], m.params["pos_embed"][0, 0]
print(f"|cls_token| {np.linalg.norm(cls):.2e}, |pos_embed[0]| {np.linalg.norm(pos0):.2e}: "
      f"the CLS input is the position embedding to {np.linalg.norm(cls) / np.linalg.norm(pos0):.0e} relative")
