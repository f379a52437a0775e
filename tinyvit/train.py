"""The training loop, evaluation, history and learning-curve plot.

    >>> from tinyvit import ViT, ViTConfig
    >>> from tinyvit.datasets import load_dataset
    >>> from tinyvit.train import TrainConfig, train, evaluate
    >>> train_ds, val_ds = load_dataset("shapes", image_size=16)
    >>> model = ViT(ViTConfig(image_size=16, patch_size=4, num_classes=8))
    >>> history = train(model, train_ds, val_ds, TrainConfig(epochs=3), out_dir="runs/demo")
    >>> evaluate(model, val_ds, normalize="image")["accuracy"]

One step of training, the heart of it all:

    images, labels = next batch            (B, H, W, C) float32, (B,) int64
    loss, grads, logits = model.loss_and_grads(images, labels, label_smoothing)
                                           (config.workers > 1: the same up to float rounding,
                                           the batch split over processes: parallel.ProcessSplitter)
    clip_grad_norm(grads, clip)            scale all gradients so their global norm <= clip
    optimizer.step(model.params, grads, lr=schedule(step))   parameters change in place

Determinism and resume: the model starts from ``config.seed``; the batch order
and the augmentation of epoch ``e`` come from a generator seeded with
``(TrainConfig.seed, e)`` (see tinyvit.datasets.BatchIterator). So the position
``(epoch, batch)`` is the whole random state. A checkpoint stores it, the
parameters and the optimizer moments; resuming replays epoch ``e``'s batch
order, skips the batches already done, and continues bit for bit as if
training had never stopped (also in the middle of an epoch). The last float
bits depend on ``config.workers``, which the checkpoint stores with the rest.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._checks import (NonFiniteError, check_choice, check_float, check_int, check_normalize,
                      dataclass_from_dict, describe)
from ._files import atomic_open, check_memory
from .checkpoint import CheckpointError, config_mismatch, load_checkpoint, save_checkpoint
from .datasets import Augment, BatchIterator, ImageDataset
from .model import ViT
from .optim import SGD, AdamW, clip_grad_norm, global_norm, make_schedule
from .parallel import HelperLost, ProcessSplitter

__all__ = ["TrainConfig", "TrainingDiverged", "TrainingStopped", "train", "evaluate", "predict_logits",
           "normalize_images", "write_history", "plot_history", "format_confusion",
           "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "checkpoint.npz"

# TrainConfig fields that may differ between a run and its resumption without changing
# the numbers it produces.
RESUME_FREE = ("log_every", "max_steps")


class TrainingDiverged(RuntimeError):
    """The loss (or the gradient norm) became NaN or inf."""


class TrainingStopped(RuntimeError):
    """Training could not go on (a helper process was lost); the checkpoint holds the last step."""


@dataclass
class TrainConfig:
    """Everything that decides how training runs (JSON-serialisable, stored in checkpoints).

    epochs           passes over the training set
    batch_size       B, images per step
    lr               peak learning rate (reached after the warm-up)
    weight_decay     AdamW's decoupled decay (SGD: coupled), applied to weight matrices only
    warmup           warm-up length in epochs (may be fractional), linear from lr/warmup_steps to lr
    min_lr           learning rate at the end of the cosine decay
    schedule         "cosine", "linear" or "constant"
    clip             maximum global gradient norm; 0 turns clipping off
    label_smoothing  in [0, 1)
    optimizer        "adamw" or "sgd" (momentum 0.9, Nesterov)
    momentum         SGD momentum
    augment_pad      random crop after zero padding by this many pixels (0: off)
    augment_flip     random horizontal flips
    normalize        "image": each image to zero mean and unit standard deviation;
                     [mean, std] (numbers or per-channel lists): (x - mean) / std; None: as loaded
    seed             data seed (batch order, augmentation); the model's own seed is in ViTConfig
    log_every        plain-text progress line every this many steps (when not on a terminal)
    max_steps        stop after this many optimizer steps in total (the schedule still spans
                     all epochs, so a stopped run can be resumed exactly); None: run all epochs
    workers          processes the batch is split over: this one and workers - 1 helpers
                     (tinyvit.parallel.ProcessSplitter); 1: no split.
                     Results are deterministic for a given value but differ from other values in
                     the last float bits
    """

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: float = 1.0
    min_lr: float = 1e-5
    schedule: str = "cosine"
    clip: float = 1.0
    label_smoothing: float = 0.0
    optimizer: str = "adamw"
    momentum: float = 0.9
    augment_pad: int = 0
    augment_flip: bool = False
    normalize: object = "image"
    seed: int = 0
    log_every: int = 50
    max_steps: int | None = None
    workers: int = 1

    def __post_init__(self):
        check_int("epochs", self.epochs, minimum=1)
        check_int("batch_size", self.batch_size, minimum=1)
        self.lr = check_float("lr", self.lr, minimum=0.0, open_min=True)
        self.weight_decay = check_float("weight_decay", self.weight_decay, minimum=0.0)
        self.warmup = check_float("warmup", self.warmup, minimum=0.0)
        self.min_lr = check_float("min_lr", self.min_lr, minimum=0.0, maximum=self.lr)
        check_choice("schedule", self.schedule, ("cosine", "linear", "constant"))
        self.clip = check_float("clip", self.clip, minimum=0.0)
        self.label_smoothing = check_float("label_smoothing", self.label_smoothing, minimum=0.0)
        if self.label_smoothing >= 1.0:
            raise ValueError(f"label_smoothing: expected a number in [0, 1), got {self.label_smoothing}")
        check_choice("optimizer", self.optimizer, ("adamw", "sgd"))
        self.momentum = check_float("momentum", self.momentum, minimum=0.0, maximum=0.999)
        check_int("augment_pad", self.augment_pad, minimum=0)
        if not isinstance(self.augment_flip, bool):
            raise TypeError(f"augment_flip: expected True or False, got {describe(self.augment_flip)}")
        self.normalize = check_normalize("normalize", self.normalize)
        check_int("seed", self.seed, minimum=0)
        check_int("log_every", self.log_every, minimum=1)
        if self.max_steps is not None:
            check_int("max_steps", self.max_steps, minimum=0)
        check_int("workers", self.workers, minimum=1)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return dataclass_from_dict(cls, d, "train_config")


# =========================================================== preprocessing and evaluation

def normalize_images(images: np.ndarray, normalize) -> np.ndarray:
    """Apply a TrainConfig.normalize setting to images (B, H, W, C); returns a new float32 array.

    "image": per image, subtract its mean and divide by its standard deviation
    (+1e-3), which removes the random colours and contrast of the shapes data.
    [mean, std]: per channel (or one number for all). None: a float32 copy.
    """
    x = np.array(images, dtype=np.float32, copy=True)                 # (B, H, W, C)
    if normalize is None:
        return x
    if normalize == "image":
        x -= x.mean(axis=(1, 2, 3), keepdims=True)
        x /= x.std(axis=(1, 2, 3), keepdims=True) + np.float32(1e-3)
        return x
    mean = np.asarray(normalize[0], dtype=np.float32)
    std = np.asarray(normalize[1], dtype=np.float32)
    x -= mean
    x /= std
    return x


def _batches(ds: ImageDataset, batch_size: int, normalize):
    """(images, labels) in dataset order, images normalised and cast to float32."""
    for start in range(0, len(ds), batch_size):
        yield (normalize_images(ds.images[start:start + batch_size], normalize),
               ds.labels[start:start + batch_size])


def predict_logits(model: ViT, images: np.ndarray, batch_size: int = 256, normalize=None) -> np.ndarray:
    """Logits (B, K) for images (B, H, W, C), computed batch_size images at a time."""
    batch_size = check_int("batch_size", batch_size, minimum=1)
    dtype = np.dtype(model.config.dtype)
    out = []
    for start in range(0, images.shape[0], batch_size):
        x = normalize_images(images[start:start + batch_size], normalize).astype(dtype, copy=False)
        out.append(model(x))
    return np.concatenate(out) if out else np.zeros((0, model.config.num_classes), dtype)


def _log_softmax_nll(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-example cross-entropy (B,) in float64 from logits (B, K)."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    return lse - z[np.arange(len(labels)), labels]


def evaluate(model: ViT, ds: ImageDataset, batch_size: int = 256, normalize=None) -> dict:
    """Accuracy and loss of ``model`` on ``ds``, batched.

    normalize   the TrainConfig.normalize the model was trained with
    Returns a dict:
      accuracy            fraction correct (float)
      loss                mean cross-entropy (float, no label smoothing)
      per_class_accuracy  (K,) float64, NaN for a class with no examples
      confusion           (K, K) int64, rows = true class, columns = predicted class
      n                   number of examples
    """
    if not isinstance(model, ViT):
        raise TypeError(f"model: expected a ViT, got {describe(model)}")
    if not isinstance(ds, ImageDataset):
        raise TypeError(f"ds: expected an ImageDataset, got {describe(ds)}")
    K = model.config.num_classes
    if ds.num_classes > K:
        raise ValueError(f"ds: expected at most {K} classes (the model's num_classes), got {ds.num_classes}")
    batch_size = check_int("batch_size", batch_size, minimum=1)
    check_memory("model num_classes", K, K * K * 8, "the confusion matrix")
    confusion = np.zeros((K, K), dtype=np.int64)
    total_loss = 0.0
    dtype = np.dtype(model.config.dtype)
    for x, y in _batches(ds, batch_size, normalize):
        logits = model(x.astype(dtype, copy=False))                    # (B, K)
        total_loss += float(_log_softmax_nll(logits, y).sum())
        np.add.at(confusion, (y, logits.argmax(axis=1)), 1)
    n = len(ds)
    counts = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(counts > 0, np.diag(confusion) / np.maximum(counts, 1), np.nan)
    return {"accuracy": float(np.trace(confusion) / n) if n else float("nan"),
            "loss": total_loss / n if n else float("nan"),
            "per_class_accuracy": per_class, "confusion": confusion, "n": n}


def format_confusion(confusion: np.ndarray, class_names) -> str:
    """The confusion matrix (K, K) as a text table: rows true class, columns predicted."""
    K = confusion.shape[0]
    names = [str(c) for c in class_names][:K]
    short = [n[:8] for n in names]
    w = max(4, max(len(s) for s in short), len(str(int(confusion.max()))) if confusion.size else 1)
    rw = max(len(n) for n in names) if names else 4
    head = " " * (rw + 2) + " ".join(f"{s:>{w}}" for s in short)
    lines = ["rows: true class, columns: predicted", head]
    for i in range(K):
        lines.append(f"{names[i]:<{rw}}  " + " ".join(f"{int(v):>{w}}" for v in confusion[i]))
    return "\n".join(lines)


# =========================================================== progress output

def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def val_text(row: dict, has_val: bool) -> str:
    """The validation part of an epoch line; says so when there is no validation set
    (rather than printing NaNs, which read like a diverged run)."""
    if not has_val:
        return "no validation set"
    return f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}"


class _Progress:
    """One line updated in place on a terminal; plain lines every log_every steps otherwise."""

    def __init__(self, enabled: bool, stream=None, log_every: int = 50, total_steps: int = 1):
        self.stream = stream if stream is not None else sys.stdout
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.log_every = log_every
        self.total = total_steps
        self._last = 0.0
        self._open = False                      # a \r line is on screen

    def step(self, step: int, epoch: int, epochs: int, loss: float, acc: float, lr: float,
             ips: float, eta: float):
        if not self.enabled:
            return
        text = (f"step {step}/{self.total}  epoch {epoch}/{epochs}  loss {loss:.4f}  acc {acc:.3f}  "
                f"lr {lr:.2e}  {ips:,.0f} img/s  ETA {_fmt_time(eta)}")
        if self.tty:
            now = time.perf_counter()
            if now - self._last >= 0.1 or step == self.total:
                self.stream.write("\r" + text + "\033[K")
                self.stream.flush()
                self._open = True
                self._last = now
        elif step % self.log_every == 0:
            self.line(text)

    def line(self, text: str):
        if not self.enabled:
            return
        if self._open:
            self.stream.write("\r\033[K")
            self._open = False
        self.stream.write(text + "\n")
        self.stream.flush()


# =========================================================== the loop

def _make_optimizer(cfg: TrainConfig):
    if cfg.optimizer == "adamw":
        return AdamW(lr=cfg.lr, weight_decay=cfg.weight_decay)
    return SGD(lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0, weight_decay=cfg.weight_decay)


def _new_history() -> dict:
    return {"steps": {"step": [], "epoch": [], "loss": [], "lr": [], "grad_norm": []},
            "epochs": [], "running": {"loss_sum": 0.0, "correct": 0, "seen": 0}}


def _checked_history(history: dict, path) -> dict:
    """A checkpoint's history, checked to have the layout training appends to."""
    fresh = _new_history()
    steps, epochs = history.get("steps"), history.get("epochs")
    ok = isinstance(steps, dict) and set(fresh["steps"]) <= set(steps) and \
        all(isinstance(steps[k], list) for k in fresh["steps"]) and isinstance(epochs, list) and \
        all(isinstance(r, dict) and isinstance(r.get("wall_time"), (int, float)) for r in epochs)
    running = history.setdefault("running", dict(fresh["running"]))
    ok = ok and isinstance(running, dict) and all(
        isinstance(running.get(k), (int, float)) for k in fresh["running"])
    if not ok:
        raise CheckpointError(f"{path}: entry 'history': expected the layout training writes "
                              f"(steps: {{{', '.join(fresh['steps'])}: lists}}, epochs: a list of "
                              f"objects), got keys {sorted(history)}")
    return history


def train(model: ViT, train_ds: ImageDataset, val_ds: ImageDataset | None = None,
          config: TrainConfig | None = None, *, out_dir=None, resume_from=None, progress: bool = True,
          stream=None, meta: dict | None = None, layers="fast", **overrides) -> dict:
    """Train ``model`` in place on ``train_ds``; evaluate on ``val_ds`` after every epoch.

    config      a TrainConfig; keyword overrides (epochs=..., lr=...) replace its fields
    out_dir     if given: out_dir/checkpoint.npz after every epoch and at the end (or at
                max_steps, or on Ctrl-C), plus history.json, history.csv, steps.csv
    resume_from a checkpoint path: continue exactly where it stopped. The model config
                must match the checkpoint's; so must the TrainConfig (except log_every,
                max_steps). Its parameters are copied into ``model``.
    progress    print progress (an in-place line on a terminal, plain lines otherwise)
    stream      where progress goes (default sys.stdout)
    meta        extra JSON-able facts for the checkpoint (class names, dataset, ...)
    layers      the layer set the steps run: "fast" (the default: tinyvit.fast_layers, the
                same numbers as the reference, faster), "reference", or "model" (the
                model's own, e.g. a student's layers); the parameters are the model's either way

    Returns the history dict:
      steps    {"step", "epoch", "loss", "lr", "grad_norm"}: one entry per optimizer step
      epochs   list of dicts: epoch, step, train_loss, train_acc, val_loss, val_acc, lr,
               images_per_s, epoch_time, wall_time
    Raises TrainingDiverged when the loss or gradient norm is NaN or inf.

    The loop: restore the state (a fresh start or a checkpoint), then _Run.epochs: one step
    per batch, each recorded; at the end of each epoch, evaluate, record and save.
    """
    cfg = _checked_inputs(model, train_ds, val_ds, config, overrides)
    run = _Run(model, train_ds, cfg, meta, out_dir, progress, stream)
    if resume_from is not None:
        run.restore(resume_from)
    run.announce(resumed=resume_from is not None)
    runner = model if layers == "model" else model.using(layers)   # shares model.params
    splitter = ProcessSplitter(runner, cfg.workers)         # workers=1: runner.loss_and_grads itself
    # NaN and inf are caught after each step and reported in one line (TrainingDiverged), so
    # NumPy's overflow warnings on the way there would only bury that line
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        try:
            run.epochs(splitter, runner, val_ds)
        except KeyboardInterrupt:
            run.save()                                    # resumable from the last finished step
            if run.ckpt_path is not None:
                run.bar.line(f"interrupted at step {run.step}; checkpoint saved to {run.ckpt_path}")
            raise
        except HelperLost as e:                           # lost twice in one step: give up
            run.save()
            where = (f"; checkpoint saved to {run.ckpt_path} (continue with --resume)"
                     if run.ckpt_path else "")
            raise TrainingStopped(f"{e}; training stopped after step {run.step} (epoch "
                                  f"{run.epoch + 1}, batch {run.batch_done}){where}") from None
        finally:
            splitter.close()                              # the helper processes end here
    if run.batch_done:                                    # stopped mid-epoch (max_steps)
        run.save()
        run.bar.line(f"stopped at step {run.step} (max_steps); resume from {run.ckpt_path}"
                     if run.ckpt_path else f"stopped at step {run.step} (max_steps)")
    return run.history


def _checked_inputs(model, train_ds, val_ds, config, overrides) -> "TrainConfig":
    """train's arguments checked against each other; returns the TrainConfig to use."""
    if not isinstance(model, ViT):
        raise TypeError(f"model: expected a ViT, got {describe(model)}")
    if not isinstance(train_ds, ImageDataset):
        raise TypeError(f"train_ds: expected an ImageDataset, got {describe(train_ds)}")
    if val_ds is not None and not isinstance(val_ds, ImageDataset):
        raise TypeError(f"val_ds: expected an ImageDataset or None, got {describe(val_ds)}")
    cfg = config if config is not None else TrainConfig()
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"config: expected a TrainConfig, got {describe(cfg)}")
    if overrides:
        cfg = TrainConfig.from_dict({**cfg.to_dict(), **overrides})
    mcfg = model.config
    H, W = mcfg.image_hw
    for name, ds in (("train_ds", train_ds), ("val_ds", val_ds)):
        if ds is None:
            continue
        if ds.image_shape != (H, W, mcfg.in_channels):
            raise ValueError(f"{name}: expected images of shape (H, W, C) = {(H, W, mcfg.in_channels)} "
                             f"(the model's), got {ds.image_shape}")
        if ds.num_classes > mcfg.num_classes:
            raise ValueError(f"{name}: expected at most {mcfg.num_classes} classes (the model's "
                             f"num_classes), got {ds.num_classes}")
    if len(train_ds) == 0:
        raise ValueError("train_ds: expected at least one image, got an empty dataset")
    if cfg.augment_pad > max(H, W):
        raise ValueError(f"augment_pad: expected at most the image side {max(H, W)} (a crop from "
                         f"further out is all padding), got {cfg.augment_pad}")
    return cfg


class _Run:
    """The state of one training run: where it is (epoch, batch, step), its optimizer,
    schedule, history and output files, and the pieces of the loop that change them."""

    def __init__(self, model, train_ds, cfg, meta, out_dir, progress, stream):
        self.model, self.cfg = model, cfg
        self.dtype = np.dtype(model.config.dtype)
        augment = Augment(pad=cfg.augment_pad, flip=cfg.augment_flip) \
            if (cfg.augment_pad or cfg.augment_flip) else None
        self.batches = BatchIterator(train_ds, cfg.batch_size, shuffle=True, seed=cfg.seed,
                                     augment=augment)
        self.steps_per_epoch = len(self.batches)
        total_steps = cfg.epochs * self.steps_per_epoch
        warmup_steps = int(round(min(cfg.warmup * self.steps_per_epoch, total_steps)))  # no int(inf)
        self.schedule = make_schedule(cfg.schedule, cfg.lr, total_steps, warmup_steps, cfg.min_lr)
        self.optimizer = _make_optimizer(cfg)
        self.meta = dict(meta or {})
        self.meta.setdefault("class_names", list(train_ds.class_names))
        self.meta["normalize"] = cfg.normalize
        self.epoch, self.batch_done, self.step = 0, 0, 0
        self.history = _new_history()
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.ckpt_path = self.out_dir / CHECKPOINT_NAME if self.out_dir is not None else None
        self.stop_at = total_steps if cfg.max_steps is None else min(total_steps, cfg.max_steps)
        self.bar = _Progress(progress, stream, cfg.log_every, total_steps)
        self.num_images = len(train_ds)

    # -- restore ------------------------------------------------------------------------------
    def restore(self, path):
        """Continue from a checkpoint: its parameters (copied into the model in place),
        optimizer state, position and history; refused if the model or settings differ."""
        model, cfg = self.model, self.cfg
        ck = load_checkpoint(path)
        diff = config_mismatch(ck.model_config, model.config)
        if diff:
            raise CheckpointError(f"{path}: checkpoint is for another model config ({'; '.join(diff)})")
        if ck.train_config is None or not ck.optim_state:
            raise CheckpointError(f"{path}: checkpoint holds no training state to resume from")
        # a key missing from an older checkpoint means that run used the field's default
        saved = {**TrainConfig().to_dict(), **ck.train_config}
        saved = {k: v for k, v in saved.items() if k not in RESUME_FREE}
        given = {k: v for k, v in json.loads(json.dumps(cfg.to_dict())).items() if k not in RESUME_FREE}
        tdiff = [f"{k}: checkpoint {saved.get(k)!r}, given {given.get(k)!r}"
                 for k in sorted(set(saved) | set(given)) if saved.get(k) != given.get(k)]
        if tdiff:
            raise CheckpointError(f"{path}: checkpoint was trained with other settings ({'; '.join(tdiff)})")
        for name, value in ck.params.items():
            model.params[name][...] = value              # in place: callers' references stay valid
        try:
            self.optimizer.load_state_dict(ck.optim_state)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: optimizer state does not fit: {e}") from e
        self.epoch, self.batch_done, self.step = ck.epoch, ck.batch, ck.step
        if ck.history:
            self.history = _checked_history(ck.history, path)
        self.meta = {**ck.meta, **self.meta}
        if self.batch_done >= self.steps_per_epoch:
            raise CheckpointError(f"{path}: batch {self.batch_done}: expected fewer than the "
                                  f"{self.steps_per_epoch} batches per epoch (another dataset?)")
        if self.step != self.epoch * self.steps_per_epoch + self.batch_done:
            raise CheckpointError(f"{path}: step {self.step} does not match epoch {self.epoch}, batch "
                                  f"{self.batch_done} with {self.steps_per_epoch} batches per epoch "
                                  "(another dataset?)")

    def announce(self, resumed: bool):
        cfg = self.cfg
        what = f"resuming at step {self.step}" if resumed else "training"
        split = f" split over {cfg.workers} processes" if cfg.workers > 1 else ""
        self.bar.line(f"{what}: {self.num_images} images, {self.steps_per_epoch} steps/epoch x "
                      f"{cfg.epochs} epochs, batch {cfg.batch_size}{split}, {cfg.optimizer} lr "
                      f"{cfg.lr:g}, {self.model.num_params():,} parameters")
        self.wall0 = time.perf_counter()
        self.wall_before = self.history["epochs"][-1]["wall_time"] if self.history["epochs"] else 0.0
        self.steps_this_run, self.train_time = 0, 0.0

    # -- the epochs -------------------------------------------------------------------------------
    def epochs(self, splitter, runner, val_ds):
        """Epoch after epoch: one step per batch, each recorded; at each epoch's end,
        evaluate, record and save. Returns at the end, or at stop_at inside an epoch."""
        while self.epoch < self.cfg.epochs and self.step < self.stop_at:
            self.start_epoch()
            for x, y in self.batches_left():
                self.record(*self.one_step(splitter, x, y), len(y))
            if self.batch_done < self.steps_per_epoch:   # stopped inside the epoch
                return
            self.end_epoch(runner, val_ds)

    def start_epoch(self):
        self.epoch_t0 = time.perf_counter()
        self.epoch_images, self.epoch_train_time = 0, 0.0

    def batches_left(self):
        """This epoch's batches from the resume point on, until stop_at."""
        for b, (x, y) in enumerate(self.batches.epoch(self.epoch)):
            if b < self.batch_done:                      # replay to the resume point
                continue
            if self.step >= self.stop_at:
                return
            self.t0 = time.perf_counter()
            yield normalize_images(x, self.cfg.normalize).astype(self.dtype, copy=False), y

    def one_step(self, splitter, x, y):
        """loss_and_grads, clipping and the optimizer step on one batch: (loss, lr, grad norm,
        correct predictions). Raises TrainingDiverged on NaN or inf."""
        cfg, model, step = self.cfg, self.model, self.step
        lr = self.schedule(step)
        advice = (f"at step {step + 1} (epoch {self.epoch + 1}, learning rate {lr:.3g}); try a "
                  "lower --lr, a longer --warmup or gradient clipping (--clip)")
        try:
            loss, grads, logits = splitter.loss_and_grads(x, y, cfg.label_smoothing)
        except ValueError as e:                          # NaN/inf fail the model's own checks
            if isinstance(e, NonFiniteError) or not all(np.isfinite(v).all()
                                                        for v in model.params.values()):
                raise TrainingDiverged("training diverged: non-finite values in the forward or "
                                       f"backward pass {advice}") from e
            raise
        loss = float(loss)
        gnorm = (clip_grad_norm(grads, cfg.clip, error_if_nonfinite=False) if cfg.clip > 0
                 else global_norm(grads))
        if not (math.isfinite(loss) and math.isfinite(gnorm)):
            what = f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {gnorm}"
            raise TrainingDiverged(f"training diverged: {what} {advice}")
        self.optimizer.step(model.params, grads, lr=lr)
        return loss, lr, gnorm, int((logits.argmax(axis=1) == y).sum())

    def record(self, loss, lr, gnorm, correct, n):
        """Counts one finished step of n images: position, running means, history, progress."""
        self.step += 1
        self.batch_done += 1
        dt = time.perf_counter() - self.t0
        self.steps_this_run += 1
        self.train_time += dt
        self.epoch_train_time += dt
        self.epoch_images += n
        run = self.history["running"]
        run["loss_sum"] += loss * n
        run["correct"] += correct
        run["seen"] += n
        for key, value in zip(("step", "epoch", "loss", "lr", "grad_norm"),
                              (self.step, self.epoch + 1, loss, lr, gnorm)):
            self.history["steps"][key].append(value)
        ips = self.epoch_images / self.epoch_train_time if self.epoch_train_time > 0 else 0.0
        eta = (self.stop_at - self.step) * self.train_time / self.steps_this_run
        self.bar.step(self.step, self.epoch + 1, self.cfg.epochs, run["loss_sum"] / run["seen"],
                      run["correct"] / run["seen"], lr, ips, eta)

    # -- end of epoch -------------------------------------------------------------------------
    def end_epoch(self, runner, val_ds):
        """Evaluate, add the epoch's row to the history, print it, save."""
        cfg, run, history = self.cfg, self.history["running"], self.history
        row = {"epoch": self.epoch + 1, "step": self.step,
               "train_loss": run["loss_sum"] / max(run["seen"], 1),
               "train_acc": run["correct"] / max(run["seen"], 1),
               "val_loss": float("nan"), "val_acc": float("nan"),
               "lr": history["steps"]["lr"][-1] if history["steps"]["lr"] else cfg.lr,
               "images_per_s": (self.epoch_images / self.epoch_train_time
                                if self.epoch_train_time > 0 else 0.0)}
        if val_ds is not None and len(val_ds):
            ev = evaluate(runner, val_ds, max(cfg.batch_size, 256), cfg.normalize)
            row["val_loss"], row["val_acc"] = ev["loss"], ev["accuracy"]
        row["epoch_time"] = time.perf_counter() - self.epoch_t0
        row["wall_time"] = self.wall_before + (time.perf_counter() - self.wall0)
        history["epochs"].append(row)
        history["running"] = {"loss_sum": 0.0, "correct": 0, "seen": 0}
        self.epoch += 1
        self.batch_done = 0
        has_val = val_ds is not None and len(val_ds) > 0
        self.bar.line(f"epoch {row['epoch']}/{cfg.epochs}  step {self.step}  train loss "
                      f"{row['train_loss']:.4f} acc {row['train_acc']:.4f}  {val_text(row, has_val)}  "
                      f"lr {row['lr']:.2e}  {row['images_per_s']:,.0f} img/s  {_fmt_time(row['wall_time'])}")
        self.save()

    def save(self):
        """Writes the checkpoint and the history files (when there is an out_dir)."""
        if self.ckpt_path is None:
            return
        save_checkpoint(self.ckpt_path, self.model, optimizer=self.optimizer,
                        train_config=self.cfg.to_dict(), meta=self.meta, history=self.history,
                        epoch=self.epoch, batch=self.batch_done, step=self.step, seed=self.cfg.seed)
        write_history(self.history, self.out_dir)


# =========================================================== history files and plot

def _atomic_write_text(path: Path, text: str):
    with atomic_open(path, "w") as f:
        f.write(text)


def _json_safe(obj):
    """NaN/inf -> None so the JSON is standard (json.dumps would write NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def write_history(history: dict, out_dir) -> list[Path]:
    """Write history.json (everything), history.csv (one row per epoch) and steps.csv
    (one row per step) into out_dir. Returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    public = {k: v for k, v in history.items() if k != "running"}
    paths = [out / "history.json", out / "history.csv", out / "steps.csv"]
    _atomic_write_text(paths[0], json.dumps(_json_safe(public), indent=1) + "\n")
    import io
    cols = ["epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr",
            "images_per_s", "epoch_time", "wall_time"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    for row in history["epochs"]:
        w.writerow([row.get(c) for c in cols])
    _atomic_write_text(paths[1], buf.getvalue())
    buf = io.StringIO()
    w = csv.writer(buf)
    steps = history["steps"]
    scols = list(steps)
    w.writerow(scols)
    for vals in zip(*(steps[c] for c in scols)):
        w.writerow(vals)
    _atomic_write_text(paths[2], buf.getvalue())
    return paths


def plot_history(history: dict, title: str | None = None):
    """Learning curves as a matplotlib Figure: loss (per step and per epoch) and accuracy.

    Uses matplotlib.figure.Figure directly (no pyplot), so it works without a display.
    Save it with fig.savefig("curves.png").
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), constrained_layout=True)
    ax_loss, ax_acc = fig.subplots(1, 2)
    steps = history["steps"]
    epochs = history["epochs"]
    if steps["step"]:
        ax_loss.plot(steps["step"], steps["loss"], color="0.75", lw=0.8, label="train (per step)")
    if epochs:
        es = [r["step"] for r in epochs]
        ax_loss.plot(es, [r["train_loss"] for r in epochs], "o-", label="train (epoch mean)")
        ax_loss.plot(es, [r["val_loss"] for r in epochs], "s-", label="validation")
        ax_acc.plot([r["epoch"] for r in epochs], [r["train_acc"] for r in epochs], "o-", label="train")
        ax_acc.plot([r["epoch"] for r in epochs], [r["val_acc"] for r in epochs], "s-", label="validation")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.set_yscale("log")
    if steps["step"] or epochs:
        ax_loss.legend()
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy")
    ax_acc.set_ylim(0, 1.01)
    ax_acc.grid(alpha=0.3)
    if epochs:                                           # none yet if stopped in the first epoch
        ax_acc.legend()
    else:
        ax_acc.text(0.5, 0.5, "no epoch finished yet", ha="center", va="center",
                    transform=ax_acc.transAxes, color="0.5")
    if title:
        fig.suptitle(title)
    return fig
