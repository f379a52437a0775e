# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 10. What the CLS token carries
#
# Is the CLS token needed at all? Many ViTs do without it: they average the
# patch tokens instead (d2l's exercise, CS231n's starter code, timm's
# `class_token=False`). This tutorial compares the choices on the same small
# model and data:
#
# 1. the pooling choices in tinyvit: `pool="cls"`, `"mean"` (patch tokens),
#    `"mean_with_cls"` (a common bug, for comparison), `"attn"` (a learned query
#    attends over the patches: timm's `global_pool="map"`), no CLS token at all,
#    and register tokens;
# 2. the **learning-rate trap** (ViT paper, appendix D.3): a mean-pooled model
#    first looked much worse than a CLS one, until it got its own learning rate;
# 3. **linear probes** after every block (Raghu et al., 2021): how much of the
#    class the CLS token, the patch mean and a single patch token carry, and how
#    big the residual stream is against what each block adds;
# 4. **registers** (Darcet et al., 2023): which tokens receive the attention,
#    with and without extra tokens that nothing pools.
#
# Open it as a notebook or run it as a script; it needs tinyvit installed and
# runs from any folder. Full mode reuses what `tinyvit lr-grid` and `tinyvit
# registers` saved in `runs/lr-grid/` and `runs/registers/` under the current
# folder (or `$TINYVIT_LRGRID`, `$TINYVIT_REGISTERS`), and trains what is missing
# there: up to 30 short runs for the grid (a few minutes on two quiet cores) and
# four models for sections 3 and 4. `TINYVIT_QUICK=1`: tiny runs of one epoch,
# seconds (the numbers are then noise). Figures show inline and are saved to
# `figures/` under the current folder (or `$TINYVIT_FIGURES`).

# %%
import os
from pathlib import Path

import numpy as np

from tinyvit import ViT, ViTConfig
from tinyvit import layers as L
from tinyvit import lrgrid, probes, registers
from tinyvit.gradcheck import check_layer, numerical_vjp, rel_error
from tinyvit.tutorial import FIGURES, QUICK, display_figure, show

# %% [markdown]
# ## 10.1 Five ways to turn tokens into one vector
#
# The head reads one vector per image. With `pool="cls"` it is the CLS token's
# final state; with `"mean"` the mean of the patch tokens; `"attn"` learns a
# query that attends over the patch tokens once more (its own small attention
# layer and MLP). `num_registers=R` adds R learned tokens right after the CLS
# token: every block reads and writes them, no pooling reads them.
# `class_token=False` drops the CLS token (then pool "mean" or "attn").

# %%
arch = dict(image_size=32, patch_size=8, dim=64, depth=3, heads=4, mlp_dim=128, num_classes=6)
x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
for kw in [dict(pool="cls"), dict(pool="mean"), dict(pool="mean_with_cls"), dict(pool="attn"),
           dict(pool="mean", class_token=False), dict(pool="cls", num_registers=4)]:
    model = ViT(ViTConfig(**arch, **kw))
    logits, cache = model.forward(x)
    extra = [k for k in model.params if k.startswith(("reg_token", "attn_pool"))]
    print(f"{str(kw):<40} T = {model.config.num_tokens:>2}  params {model.num_params():>7,}  "
          f"new: {', '.join(extra[:3]) + (' ...' if len(extra) > 3 else '') or '-'}")
    show("  attention of block 0", cache["attn"][0])
attn_model = ViT(ViTConfig(**arch, pool="attn"))
show("attention pool: the query's weights", attn_model.forward(x)[1]["attn_pool"])

# %% [markdown]
# Each new layer has a hand-written backward, checked like every other one:
# centred differences in float64 with a random upstream gradient.

# %%
rng = np.random.default_rng(1)
D, M = 8, 12
p = {k: rng.standard_normal(s) * 0.5 for k, s in L.attn_pool_param_shapes(D, M).items()}
tokens = rng.standard_normal((3, 5, D))                  # (B, N, D), float64
out, cache = L.attn_pool_forward(tokens, p, heads=2)
dout = rng.standard_normal(out.shape)                    # a random upstream gradient
dx, grads = L.attn_pool_backward(dout, cache)
f = lambda: L.attn_pool_forward(tokens, p, heads=2)[0]
errors = {"x": rel_error(dx, numerical_vjp(f, tokens, dout))}
errors.update({k: rel_error(grads[k], numerical_vjp(f, p[k], dout)) for k in p})
print("attention pool, largest relative error:", f"{max(errors.values()):.1e}",
      "over", len(errors), "tensors")
errors = check_layer(L.mean_pool_forward, L.mean_pool_backward, {"x": tokens}, kwargs={"first": 1})
print("mean pool (from token 1), relative error:", f"{errors['x']:.1e}")

# %% [markdown]
# **The pitfall.** `x.mean(axis=1)` over all tokens averages the CLS token in.
# It is a different function of the same parameters: the head sees
# (N * mean of patches + CLS) / (N + 1). It trains, so nothing warns you.

# %%
same = ViT(ViTConfig(**arch, pool="mean"))
bug = ViT(ViTConfig(**arch, pool="mean_with_cls"), dict(same.params))
d = np.abs(same(x) - bug(x)).max()
print(f"largest logit difference, same parameters, mean vs mean_with_cls: {d:.2e}")

# %% [markdown]
# ## 10.2 The learning-rate trap
#
# The ViT paper's authors first found average pooling far behind the CLS token,
# then that "the difference in performance is fully explained by the
# requirement for a different learning-rate". The fair comparison is each
# pooling at its own best learning rate. `tinyvit lr-grid` trains the grid:
# poolings x learning rates x seeds, each run a short training of the tiny
# model on 8,000 shapes. Read the table per column (each pooling's best is in
# bold) and then across (the same learning rate for both).

# %%
if QUICK:
    GRID = FIGURES / "10_quick_grid"
    grid_kw = dict(pools=["cls", "mean"], lrs=[1e-3, 1e-2], seeds=[0], epochs=1, n_train=64, jobs=1)
else:
    GRID = Path(os.environ.get("TINYVIT_LRGRID", "runs/lr-grid"))
    grid_kw = {}                                         # the command's defaults
results = lrgrid.run_grid(GRID, **grid_kw)
summary = lrgrid.summarize(results)
print(lrgrid.format_table(summary))
best = lrgrid.best_lr(summary)
for pool, row in best.items():
    print(f"pool={pool}: best learning rate {row['lr']:g}, held-out accuracy "
          f"{100 * row['mean']:.1f} % (mean over {row['seeds']} seeds)")
cls_best = best["cls"]["lr"]
at_cls_best = {r["pool"]: r for r in summary if r["lr"] == cls_best}
print(f"at the CLS model's best learning rate {cls_best:g}: " + ", ".join(
    f"{p} {100 * r['mean']:.1f} %" for p, r in at_cls_best.items()))
display_figure(lrgrid.plot_grid(results, "Held-out accuracy against learning rate, per pooling"),
               "10_lr_grid.png")

# %% [markdown]
# ## 10.3 Probes: where the class lives, block by block
#
# Four models for the rest of the tutorial (`tinyvit registers` trains the same
# four): CLS and mean pooling, each with no register and with four. All see the
# same 8,000 shapes, learning rate 3e-3, 8 epochs.
#
# A linear probe (here a closed-form ridge regression onto one-hot labels) fitted
# on a frozen state tells how linearly readable the class is from it. We probe
# the residual stream after the embedding and after every block, three ways:
# the CLS token, the mean of the patch tokens, and one patch token at a time.

# %%
if QUICK:
    REG = FIGURES / "10_quick_registers"
    reg_kw = dict(epochs=1, n_train=64, jobs=1)
else:
    REG = Path(os.environ.get("TINYVIT_REGISTERS", "runs/registers"))
    reg_kw = {}
models = registers.train_models(REG, 4, **reg_kw)
for name, (m, rec) in models.items():
    print(f"{name}: held-out accuracy {rec['val_acc']:.3f}")
held, labels = registers.held_out(200 if QUICK else 2000, reg_kw.get("n_train", 8000))
half = len(held) // 2                                    # probes: fit on one half, score the other
probe_train, probe_test = held[:half], held[half:]
y_train, y_test = labels[:half], labels[half:]
show("probe training images", probe_train)
acc = {}
for name in ("cls_reg0", "mean_reg0"):
    acc[name] = probes.run_probes(models[name][0], probe_train, y_train, probe_test, y_test)
    print(f"\n{name}: held-out probe accuracy (%) after each stage")
    print(probes.format_probes(acc[name]))
    display_figure(probes.plot_probes(acc[name], 1 / 6, f"Linear probes, pool={name.split('_')[0]} model"),
                   f"10_probes_{name.split('_')[0]}.png")

# %% [markdown]
# Compare the last row of the two tables: in the CLS model, is one patch token
# as good a read-out as in the mean model, where the head trains every patch
# token directly? And in the CLS model, from which block on does the CLS token
# carry the class?
#
# Next, the size of what each block adds. A pre-norm block adds its attention
# and MLP outputs to the residual stream; when they are small against it, the
# block passes the token along almost unchanged.

# %%
norms = probes.branch_norms(models["cls_reg0"][0], probe_test)
print(probes.format_norms(norms))
for kind in ("cls", "patch"):
    ratio = np.array(norms[kind]["stream"]) / (np.array(norms[kind]["attn"]) + np.array(norms[kind]["mlp"]))
    print(f"{kind}: stream norm / (attention + MLP branch norms) per block:",
          " ".join(f"{r:.2f}" for r in ratio))
display_figure(probes.plot_norms(norms, "pool=cls model: residual stream and branches per block"),
               "10_norms_cls.png")

# %% [markdown]
# ## 10.4 Registers and attention sinks
#
# For each of the four models: per block, the attention mass every token
# receives (averaged over images, heads and asking tokens; uniform is 1/T) and
# the norms of the tokens' outputs. Large ViTs turn a few patch tokens into
# high-norm sinks that draw the attention; registers take that job over. Does
# a 3-block model on 32x32 images do it at all? The table says.

# %%
diags = {name: registers.token_diagnostics(m, probe_test) for name, (m, _) in models.items()}
rows = {name: registers.summarize(d) for name, d in diags.items()}
print(registers.format_summary(rows))
for name, r in rows.items():
    last = r[-1]
    sinks = [f"CLS {100 * last['to_cls']:.1f} %" if last["to_cls"] is not None else None,
             f"registers {100 * last['to_registers']:.1f} %" if last["to_registers"] is not None else None,
             f"busiest patch {100 * last['to_patch_max']:.1f} %"]
    print(f"{name}, last block, uniform {100 * last['uniform']:.1f} % per token: "
          + ", ".join(s for s in sinks if s))
display_figure(registers.plot_received(diags), "10_register_attention.png")
display_figure(registers.plot_norms(diags), "10_register_norms.png")

# %% [markdown]
# ## Exercises
#
# Worked solutions, each checked by its own code: `solutions/10_solutions.py`
# (a teacher can leave that folder out of what students get).
#
# 1. Add `attn` and `mean_with_cls` to the grid (`tinyvit lr-grid --pools cls
#    mean attn mean_with_cls`). Where does the attention pool's best learning
#    rate lie? Does the pitfall cost accuracy at this scale?
# 2. Probe with a single patch token at a fixed position (say the centre one)
#    instead of all positions pooled. Which positions carry the class best?
# 3. Train `pool="mean", class_token=False` and compare its probe curves with
#    the `mean_reg0` model's: what did the unused CLS token do?
# 4. Repeat section 10.4 with `--registers 1`. Does one register take all the
#    mass the four shared?
