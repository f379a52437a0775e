# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 7. Training on the CPU
#
# A model with correct gradients (tutorial 6) still has to learn. One training
# step is four lines:
#
#     loss, grads, logits = model.loss_and_grads(images, labels)   forward + backward
#     clip_grad_norm(grads, 1.0)                                   tame rare huge steps
#     lr = schedule(step)                                          warm-up, then cosine decay
#     optimizer.step(model.params, grads, lr=lr)                   AdamW updates in place
#
# This tutorial does one step by hand, looks at the learning-rate schedule,
# then lets `tinyvit.train.train` run the loop (batches, evaluation, history,
# checkpoints), draws the learning curves and the confusion matrix, and
# reloads the model from its checkpoint.
#
# Open it as a notebook or run it as a script; it needs tinyvit installed and runs
# from any folder. Full mode trains on 8,000 32x32 shapes for 8 epochs (the
# training cell prints how long it took); `TINYVIT_QUICK=1`, the fast mode the
# tests use, trains on a few hundred 16x16 images for two epochs. Figures show
# inline and are saved, with the run's files, to `figures/` under the current
# folder (or `$TINYVIT_FIGURES`). A finished run is reused when the training cell
# runs again with the same settings.

# %%
import numpy as np

from tinyvit.tutorial import QUICK, display_figure, show, trained_run
from tinyvit import ViT, ViTConfig, viz
from tinyvit.checkpoint import load_checkpoint
from tinyvit.datasets import load_dataset
from tinyvit.optim import AdamW, clip_grad_norm, make_schedule
from tinyvit.train import evaluate, format_confusion, normalize_images

# %% [markdown]
# ## 7.1 The data
#
# The synthetic shapes (tutorial 1), made on the fly, with a fixed seed:
# `load_dataset("shapes")` returns a training and a test set. Colours are drawn
# independently of the class, so only the shape tells the classes apart. The
# default training setting `normalize="image"` scales each image to zero mean
# and unit variance, which removes most of the colour and contrast differences.

# %%
# Full mode: the recipe of `tinyvit train` (its "tiny" model: 32x32 images, 8x8 patches, so a
# 4x4 grid, D = 64, 3 blocks of 4 heads; AdamW lr 3e-3, random flips, 8 epochs) on fewer images.
# The 2,000 held-out images are the ones `tinyvit train` holds out (same seed).
LR = 3e-3
N_TEST = 2000
if QUICK:
    N_TRAIN, EPOCHS, BATCH = 256, 2, 32
    arch = dict(image_size=16, patch_size=4, dim=32, depth=2, heads=2, mlp_dim=64)
else:
    N_TRAIN, EPOCHS, BATCH = 8000, 8, 64
    arch = dict(image_size=32, patch_size=8, dim=64, depth=3, heads=4, mlp_dim=128)

train_ds, test_ds = load_dataset("shapes", image_size=arch["image_size"], n_train=N_TRAIN, n_test=N_TEST)
print(train_ds.summary())
print(test_ds.summary())
show("train images", train_ds.images)
show("train labels", train_ds.labels)
model_cfg = ViTConfig(**arch, num_classes=train_ds.num_classes)

# %% [markdown]
# ## 7.2 One step by hand
#
# Take one batch, compute the loss and gradients, clip, and let AdamW update the
# parameters *in place*. On the same batch the loss goes down.

# %%
model = ViT(model_cfg)
print(model.summary().splitlines()[0], f"({model.num_params():,} parameters)")
x = normalize_images(train_ds.images[:BATCH], "image")        # (B, H, W, C) float32
y = train_ds.labels[:BATCH]                                   # (B,)
show("batch images", x)
show("batch labels", y)
opt = AdamW(lr=LR, weight_decay=0.05)
loss0, grads, logits = model.loss_and_grads(x, y)
show("logits", logits)
show("grads['blocks.0.attn.qkv.W']", grads["blocks.0.attn.qkv.W"])
norm = clip_grad_norm(grads, 1.0)
w_before = model.params["head.W"].copy()
opt.step(model.params, grads, lr=LR)
loss1 = model.loss_and_grads(x, y)[0]
print(f"loss before {loss0:.4f}, after one step {loss1:.4f}; gradient norm before clipping {norm:.3f}")
print(f"head.W changed by at most {np.abs(model.params['head.W'] - w_before).max():.2e} (about lr: "
      f"Adam's first step moves every weight by roughly lr); optimizer step count {opt.step_count}")

# %% [markdown]
# ## 7.3 The learning-rate schedule
#
# Transformers are trained with a short linear **warm-up** (Adam's moment
# estimates are poor in the first steps; a small learning rate keeps the first
# updates from wrecking the initialisation) followed by a **cosine decay** to a
# small final rate. `make_schedule` returns a function `step -> lr`.

# %%
steps_per_epoch = -(-N_TRAIN // BATCH)
total = EPOCHS * steps_per_epoch
sched = make_schedule("cosine", base_lr=LR, total_steps=total, warmup_steps=steps_per_epoch, min_lr=1e-5)
lrs = np.array([sched(s) for s in range(total)])
show("learning rate per step", lrs)
print(f"{total} steps: lr at step 0 {lrs[0]:.2e}, peak {lrs.max():.2e} at step {lrs.argmax()}, last {lrs[-1]:.2e}")

# %% [markdown]
# ## 7.4 The training loop
#
# `train(model, train_ds, val_ds, TrainConfig(...), out_dir=...)` in
# `tinyvit.train` runs the epochs: shuffled batches, the step above, an
# evaluation on the validation set after every epoch, a checkpoint and the
# history files (`history.json`, `history.csv`, `steps.csv`) in `out_dir`. It
# returns the history. The `tinyvit train` command is that loop plus its
# options, and it is what we run here, in a process of its own
# (`tinyvit.tutorial.trained_run`): NumPy's BLAS reads its thread count, and the
# C library its memory settings, only when a process starts, and `tinyvit
# train` starts with the settings that keep these small matrices fast (one BLAS
# thread per worker; `tinyvit train --help` and `tinyvit/_env.py` say why). A
# notebook kernel has long started without them, so training inside it would
# be slower. Running the cell again with the same options reuses the finished
# run.

# %%
ckpt_path = trained_run("07_quick" if QUICK else "07_full", n_train=N_TRAIN, epochs=EPOCHS,
                        batch_size=BATCH, lr=LR, flip=True, **arch)
ck = load_checkpoint(ckpt_path)
run_dir = ckpt_path.parent
model = ck.model()
history = ck.history
print("training settings:", ck.train_config)
last = history["epochs"][-1]
print(f"after {last['epoch']} epochs: train acc {last['train_acc']:.3f}, validation acc {last['val_acc']:.3f} "
      f"(chance: 1/K = {1 / train_ds.num_classes:.3f})")
show("history['steps']['loss']", history["steps"]["loss"])
print("files written:", sorted(p.name for p in run_dir.iterdir()))

# %% [markdown]
# In quick mode the model has taken only a few dozen steps, and its accuracy
# stays near chance (it can even land below it): the curves are there to show the
# mechanics. Full mode learns the task.

# %%
display_figure(viz.plot_history(history, title="learning curves (dashed: learning rate)"),
               "07_learning_curves.png")

# %% [markdown]
# ## 7.5 Evaluation and the confusion matrix
#
# `evaluate` runs the model on a whole set, in batches, with the same
# normalisation as in training, and returns the accuracy, the mean loss and the
# confusion matrix (rows: true class, columns: predicted class).

# %%
normalize = ck.train_config["normalize"]            # how the run prepared its images
ev = evaluate(model, test_ds, normalize=normalize)
show("confusion", ev["confusion"])
print(f"test accuracy {ev['accuracy']:.3f}, loss {ev['loss']:.3f} on {ev['n']} images "
      f"(the run's last validation accuracy: {last['val_acc']:.3f})")
print(format_confusion(ev["confusion"], test_ds.class_names))

# %%
display_figure(viz.plot_confusion(ev["confusion"], test_ds.class_names), "07_confusion.png")

# %% [markdown]
# ## 7.6 Checkpoints
#
# The checkpoint is one `.npz` file: the model config, every parameter, the
# optimizer's moments, the training settings, the history and where training
# stopped (so a run can be resumed exactly with `train(..., resume_from=path)`).
# It loads without pickle. We loaded the run's model from it in 7.4; loading it
# again gives the same logits.

# %%
ck2 = load_checkpoint(run_dir / "checkpoint.npz")
print(f"checkpoint: epoch {ck2.epoch}, step {ck2.step}, {len(ck2.params)} parameter arrays, "
      f"{len(ck2.optim_state)} optimizer arrays, classes {ck2.class_names}")
reloaded = ck2.model()
xt = normalize_images(test_ds.images[:8], normalize)
same = np.array_equal(reloaded(xt), model(xt))
print("reloaded model gives identical logits:", same)

# %% [markdown]
# ## Exercises
#
# Worked solutions, each checked by its own code: `solutions/07_solutions.py`
# (a teacher can leave that folder out of what students get).
#
# 1. Train with `warmup=0, lr=1e-2` (in `trained_run`, or
#    `TrainConfig(warmup=0, lr=1e-2)` with `train`). Does it still learn? Look
#    at the first steps of `history["steps"]["loss"]` and `["grad_norm"]`.
# 2. Replace AdamW by SGD (`optimizer="sgd"`, try `lr=0.05`). How do the curves compare?
# 3. Call the loop yourself: `train(ViT(model_cfg), train_ds, test_ds,
#    TrainConfig(...), out_dir=..., max_steps=...)` from `tinyvit.train`, stop it
#    after a few steps, then resume it with `resume_from=<out_dir>/checkpoint.npz`
#    and the same TrainConfig. Check that the final parameters equal those of an
#    uninterrupted run.
# 4. Which classes does the confusion matrix above mix up? Look at a few of those
#    test images. What is left of a small star's points at 32x32 pixels? Does
#    training on all 20,000 images, as `tinyvit train` does, fix it?
