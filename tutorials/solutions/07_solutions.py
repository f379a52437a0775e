# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Worked solutions: 7. Training on the CPU
#
# Withhold this folder from students if you grade the exercises (see
# `01_solutions.py`). Exercises 1 and 2 train two more runs of tutorial 7's
# recipe (quick mode: the tiny quick settings, seconds); each run is kept under
# `figures/runs/` and reused.

# %%
import numpy as np

from tinyvit import ViT, ViTConfig
from tinyvit.checkpoint import load_checkpoint
from tinyvit.datasets import load_dataset
from tinyvit.train import TrainConfig, evaluate, train
from tinyvit.tutorial import FIGURES, QUICK, trained_run

if QUICK:
    N_TRAIN, EPOCHS, BATCH = 256, 2, 32
    arch = dict(image_size=16, patch_size=4, dim=32, depth=2, heads=2, mlp_dim=64)
else:
    N_TRAIN, EPOCHS, BATCH = 8000, 8, 64
    arch = dict(image_size=32, patch_size=8, dim=64, depth=3, heads=4, mlp_dim=128)
recipe = dict(n_train=N_TRAIN, epochs=EPOCHS, batch_size=BATCH, flip=True, **arch)
mode = "quick" if QUICK else "full"

# %% [markdown]
# ## Exercises 1 and 2: no warm-up with lr 1e-2, and SGD
#
# Compare the first steps' loss and gradient norm, and the final validation
# accuracy, with tutorial 7's run (lr 3e-3, one epoch of warm-up). Without
# warm-up the first updates are full-size while Adam's moment estimates are
# still poor; the printed first losses and gradient norms show whether that
# hurts here. Plain SGD has one step size for every weight, where Adam scales
# each weight's step by its own gradient history; compare the final accuracies.

# %%
runs = {"tutorial 7 (AdamW lr 3e-3, warm-up 1 epoch)": dict(lr=3e-3),
        "no warm-up, lr 1e-2": dict(lr=1e-2, warmup=0),
        "SGD, lr 0.05": dict(lr=0.05, optimizer="sgd")}
for label, extra in runs.items():
    name = f"07_{mode}" if extra == dict(lr=3e-3) else f"07_{mode}_" + "_".join(f"{k}{v}" for k, v in extra.items())
    ck = load_checkpoint(trained_run(name, **recipe, **extra))
    steps, last = ck.history["steps"], ck.history["epochs"][-1]
    print(f"{label:<44} first 5 losses {np.round(steps['loss'][:5], 2)}, "
          f"largest gradient norm in them {max(steps['grad_norm'][:5]):.2f}; "
          f"final validation accuracy {last['val_acc']:.3f}")

# %% [markdown]
# ## Exercise 3: stop, resume, and compare with an uninterrupted run
#
# The checkpoint holds the parameters, the optimizer's moments, the position in
# the epoch and the random state of the batches, so the resumed run takes
# exactly the steps the uninterrupted one took: the parameters are equal bit for
# bit. (Small settings here: the point is the equality, not the accuracy.)

# %%
train_ds, val_ds = load_dataset("shapes", image_size=16, n_train=128, n_test=64)
cfg = TrainConfig(epochs=2, batch_size=32, lr=3e-3, augment_flip=True)
model_cfg = ViTConfig(image_size=16, patch_size=4, dim=16, depth=1, heads=2, mlp_dim=32,
                      num_classes=train_ds.num_classes)
straight = ViT(model_cfg)
train(straight, train_ds, val_ds, cfg, progress=False)
out = FIGURES / "runs" / "07_resume"
first = ViT(model_cfg)
train(first, train_ds, val_ds, cfg, out_dir=out, progress=False, max_steps=5)
print("stopped at step", load_checkpoint(out / "checkpoint.npz").step)
resumed = ViT(model_cfg)
train(resumed, train_ds, val_ds, cfg, out_dir=out, progress=False, resume_from=out / "checkpoint.npz")
same = all(np.array_equal(resumed.params[k], straight.params[k]) for k in straight.params)
print("resumed parameters equal the uninterrupted run's:", same)
assert same

# %% [markdown]
# ## Exercise 4: which classes are mixed up
#
# The largest off-diagonal entries of the confusion matrix of tutorial 7's run
# (printed from the run itself; in quick mode the model is near chance and
# the answer means nothing).

# %%
ck = load_checkpoint(trained_run(f"07_{mode}", **recipe, lr=3e-3))
test_ds = load_dataset("shapes", image_size=arch["image_size"], n_train=N_TRAIN, n_test=2000)[1]
conf = evaluate(ck.model(), test_ds, normalize=ck.train_config["normalize"])["confusion"]
off = conf.copy()
np.fill_diagonal(off, 0)
names = test_ds.class_names
for flat in np.argsort(-off, axis=None)[:3]:
    t, p = divmod(int(flat), len(names))
    print(f"{off[t, p]:4d} test images of a {names[t]} taken for a {names[p]}")
