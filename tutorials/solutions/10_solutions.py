# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Worked solutions: 10. What the CLS token carries
#
# Withhold this folder from students if you grade the exercises (see
# `01_solutions.py`). Every number is printed by the code. In quick mode every
# model sees 64 images for one epoch, so the answers are noise; in full mode the
# runs are those of `tinyvit lr-grid` and `tinyvit registers` (reused from
# `runs/` under the current folder when they are there, trained otherwise).

# %%
import numpy as np

from tinyvit import lrgrid, probes, registers
from tinyvit.tutorial import FIGURES, QUICK

if QUICK:
    GRID, REG, REG1 = FIGURES / "10_quick_grid", FIGURES / "10_quick_registers", FIGURES / "10s_quick_reg1"
    kw = dict(epochs=1, n_train=64, jobs=1)
    grid_lrs, seeds, n_held = [1e-3, 1e-2], [0], 200
else:
    from pathlib import Path
    GRID, REG, REG1 = Path("runs/lr-grid"), Path("runs/registers"), Path("runs/registers-1")
    kw, grid_lrs, seeds, n_held = {}, list(lrgrid.DEFAULT_LRS), list(lrgrid.DEFAULT_SEEDS), 2000

# %% [markdown]
# ## Exercise 1: the attention pool and the pitfall on the grid
#
# The grid resumes: the cls and mean runs already in GRID are reused, only the two
# new poolings train.

# %%
results = lrgrid.run_grid(GRID, pools=["cls", "mean", "attn", "mean_with_cls"], lrs=grid_lrs,
                          seeds=seeds, **kw)
summary = lrgrid.summarize(results)
print(lrgrid.format_table(summary))
for pool, row in lrgrid.best_lr(summary).items():
    print(f"pool={pool:<14} best learning rate {row['lr']:g}: {100 * row['mean']:.1f} %")

# %% [markdown]
# Read the attention pool's column for its best learning rate, and compare "mean"
# with "mean_with_cls" at each rate: the pitfall changes the function the head sees
# (the CLS token is averaged in), which the numbers above may or may not show at
# this scale.
#
# ## Exercise 2: one patch position at a time

# %%
models = registers.train_models(REG, 4, **kw)
held, labels = registers.held_out(n_held, kw.get("n_train", 8000))
half = len(held) // 2
model = models["cls_reg0"][0]
train_f = probes.stage_features(model, held[:half])["patch"][-1]     # (n, N, D) after the last block
test_f = probes.stage_features(model, held[half:])["patch"][-1]
K, N = model.config.num_classes, model.config.num_patches
acc = np.array([np.mean(probes.probe_predict(probes.fit_ridge(train_f[:, j], labels[:half], K),
                                             test_f[:, j]) == labels[half:]) for j in range(N)])
gh, gw = model.config.grid
print(f"probe accuracy (%) of the patch token at each grid position, pool=cls model ({gh}x{gw}):")
print(np.round(100 * acc.reshape(gh, gw), 1))
best, worst = (tuple(int(i) for i in np.unravel_index(f(acc), (gh, gw))) for f in (np.argmax, np.argmin))
print(f"best position (row, column): {best}, worst: {worst}")

# %% [markdown]
# The shapes sit near the centre of the image, so the central positions tend to read
# best; compare with the printed grid.
#
# ## Exercise 3: mean pooling without a CLS token

# %%
settings = registers.grid_settings("shapes", epochs=kw.get("epochs", 8), n_train=kw.get("n_train", 8000))
no_cls, record = lrgrid.train_model(settings, "mean", 3e-3, 0, {"class_token": False})
print(f"pool=mean, class_token=False: held-out accuracy {record.get('val_acc', float('nan')):.3f}")
curves = {"mean_reg0 (with an unused CLS token)": probes.run_probes(models["mean_reg0"][0], held[:half],
                                                                    labels[:half], held[half:], labels[half:]),
          "no CLS token": probes.run_probes(no_cls, held[:half], labels[:half], held[half:], labels[half:])}
for name, a in curves.items():
    print(f"{name}: mean-of-patches probe per stage (%):", " ".join(f"{100 * v:.1f}" for v in a["mean"]),
          "| one patch:", " ".join(f"{100 * v:.1f}" for v in a["patch"]))

# %% [markdown]
# If the two curves are close, the unused CLS token of the mean model did not change
# what the patch tokens carry; it still gathers attention (tutorial 8) and is trained
# through it, like a register.
#
# ## Exercise 4: one register instead of four

# %%
one = registers.train_models(REG1, 1, pools=("cls",), **kw)
diag = registers.token_diagnostics(one["cls_reg1"][0], held)
last = registers.summarize(diag)[-1]
print(f"cls model with 1 register, last block: uniform {100 * last['uniform']:.1f} % per token; "
      f"the register receives {100 * last['to_registers']:.1f} %, the busiest patch "
      f"{100 * last['to_patch_max']:.1f} %")
four = registers.summarize(registers.token_diagnostics(models["cls_reg4"][0], held))[-1]
print(f"with 4 registers they received {100 * four['to_registers']:.1f} % together")
