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
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._checks import check_choice, check_float, check_int, describe
from .checkpoint import CheckpointError, config_mismatch, load_checkpoint, save_checkpoint
from .datasets import Augment, BatchIterator, ImageDataset
from .model import ViT
from .optim import SGD, AdamW, clip_grad_norm, global_norm, make_schedule
from .parallel import ProcessSplitter

__all__ = ["TrainConfig", "TrainingDiverged", "train", "evaluate", "predict_logits",
           "normalize_images", "write_history", "plot_history", "format_confusion",
           "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "checkpoint.npz"

# Settings that may differ between a run and its resumption without changing
# the numbers it produces.
_RESUME_FREE = ("log_every", "max_steps")


class TrainingDiverged(RuntimeError):
    """The loss (or the gradient norm) became NaN or inf."""


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
        if self.normalize is not None and self.normalize != "image":
            n = self.normalize
            if not isinstance(n, (list, tuple)) or len(n) != 2:
                raise ValueError(f"normalize: expected 'image', None or [mean, std], got {n!r}")
            self.normalize = [list(map(float, np.atleast_1d(v))) for v in n]
        check_int("seed", self.seed, minimum=0)
        check_int("log_every", self.log_every, minimum=1)
        if self.max_steps is not None:
            check_int("max_steps", self.max_steps, minimum=0)
        check_int("workers", self.workers, minimum=1)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        if not isinstance(d, dict):
            raise TypeError(f"train_config: expected a dict, got {describe(d)}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"train_config: unexpected keys {unknown}; expected a subset of {sorted(known)}")
        return cls(**d)


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


def train(model: ViT, train_ds: ImageDataset, val_ds: ImageDataset | None = None,
          config: TrainConfig | None = None, *, out_dir=None, resume_from=None, progress: bool = True,
          stream=None, meta: dict | None = None, **overrides) -> dict:
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

    Returns the history dict:
      steps    {"step", "epoch", "loss", "lr", "grad_norm"}: one entry per optimizer step
      epochs   list of dicts: epoch, step, train_loss, train_acc, val_loss, val_acc, lr,
               images_per_s, epoch_time, wall_time
    Raises TrainingDiverged when the loss or gradient norm is NaN or inf.
    """
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

    dtype = np.dtype(mcfg.dtype)
    augment = Augment(pad=cfg.augment_pad, flip=cfg.augment_flip) \
        if (cfg.augment_pad or cfg.augment_flip) else None
    batches = BatchIterator(train_ds, cfg.batch_size, shuffle=True, seed=cfg.seed, augment=augment)
    steps_per_epoch = len(batches)
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = min(total_steps, int(round(cfg.warmup * steps_per_epoch)))
    schedule = make_schedule(cfg.schedule, cfg.lr, total_steps, warmup_steps, cfg.min_lr)
    optimizer = _make_optimizer(cfg)
    meta = dict(meta or {})
    meta.setdefault("class_names", list(train_ds.class_names))
    meta["normalize"] = cfg.normalize

    epoch, batch_done, step = 0, 0, 0
    history = _new_history()
    if resume_from is not None:
        ck = load_checkpoint(resume_from)
        diff = config_mismatch(ck.model_config, mcfg)
        if diff:
            raise CheckpointError(f"{resume_from}: checkpoint is for another model config ({'; '.join(diff)})")
        if ck.train_config is None or not ck.optim_state:
            raise CheckpointError(f"{resume_from}: checkpoint holds no training state to resume from")
        # a key missing from an older checkpoint means that run used the field's default
        saved = {**TrainConfig().to_dict(), **ck.train_config}
        saved = {k: v for k, v in saved.items() if k not in _RESUME_FREE}
        given = {k: v for k, v in json.loads(json.dumps(cfg.to_dict())).items() if k not in _RESUME_FREE}
        tdiff = [f"{k}: checkpoint {saved.get(k)!r}, given {given.get(k)!r}"
                 for k in sorted(set(saved) | set(given)) if saved.get(k) != given.get(k)]
        if tdiff:
            raise CheckpointError(f"{resume_from}: checkpoint was trained with other settings ({'; '.join(tdiff)})")
        for name, value in ck.params.items():
            model.params[name][...] = value                  # in place: callers' references stay valid
        try:
            optimizer.load_state_dict(ck.optim_state)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{resume_from}: optimizer state does not fit: {e}") from e
        epoch, batch_done, step = ck.epoch, ck.batch, ck.step
        if ck.history:
            history = ck.history
            history.setdefault("running", {"loss_sum": 0.0, "correct": 0, "seen": 0})
        meta = {**ck.meta, **meta}
        if step != epoch * steps_per_epoch + batch_done:
            raise CheckpointError(f"{resume_from}: step {step} does not match epoch {epoch}, batch "
                                  f"{batch_done} with {steps_per_epoch} batches per epoch (another dataset?)")

    out_dir = Path(out_dir) if out_dir is not None else None
    ckpt_path = out_dir / CHECKPOINT_NAME if out_dir is not None else None

    def save():
        if ckpt_path is None:
            return
        save_checkpoint(ckpt_path, model, optimizer=optimizer, train_config=cfg.to_dict(), meta=meta,
                        history=history, epoch=epoch, batch=batch_done, step=step, seed=cfg.seed)
        write_history(history, out_dir)

    stop_at = total_steps if cfg.max_steps is None else min(total_steps, cfg.max_steps)
    bar = _Progress(progress, stream, cfg.log_every, total_steps)
    if progress:
        what = f"resuming at step {step}" if resume_from is not None else "training"
        split = f" split over {cfg.workers} processes" if cfg.workers > 1 else ""
        bar.line(f"{what}: {len(train_ds)} images, {steps_per_epoch} steps/epoch x {cfg.epochs} epochs, "
                 f"batch {cfg.batch_size}{split}, {cfg.optimizer} lr {cfg.lr:g}, {model.num_params():,} parameters")
    wall0 = time.perf_counter()
    wall_before = history["epochs"][-1]["wall_time"] if history["epochs"] else 0.0
    steps_this_run, train_time = 0, 0.0
    run = history["running"]
    splitter = ProcessSplitter(model, cfg.workers)          # workers=1: model.loss_and_grads itself
    try:
        while epoch < cfg.epochs and step < stop_at:
            epoch_t0 = time.perf_counter()
            epoch_images, epoch_train_time = 0, 0.0
            it = batches.epoch(epoch)
            for b, (x, y) in enumerate(it):
                if b < batch_done:                            # replay to the resume point
                    continue
                if step >= stop_at:
                    break
                t0 = time.perf_counter()
                x = normalize_images(x, cfg.normalize).astype(dtype, copy=False)   # (B, H, W, C)
                lr = schedule(step)
                try:
                    loss, grads, logits = splitter.loss_and_grads(x, y, cfg.label_smoothing)
                except ValueError as e:                   # NaN/inf logits fail the model's own checks
                    if all(np.isfinite(v).all() for v in model.params.values()) and "finite" not in str(e):
                        raise
                    raise TrainingDiverged(
                        f"training diverged: non-finite values in the forward or backward pass at step "
                        f"{step + 1} (epoch {epoch + 1}, learning rate {lr:.3g}); try a lower --lr, a longer "
                        "--warmup or gradient clipping (--clip)") from e
                loss = float(loss)
                if cfg.clip > 0:
                    gnorm = clip_grad_norm(grads, cfg.clip, error_if_nonfinite=False)
                else:
                    gnorm = global_norm(grads)
                if not (math.isfinite(loss) and math.isfinite(gnorm)):
                    what = f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {gnorm}"
                    raise TrainingDiverged(
                        f"training diverged: {what} at step {step + 1} (epoch {epoch + 1}, learning rate "
                        f"{lr:.3g}); try a lower --lr, a longer --warmup or gradient clipping (--clip)")
                optimizer.step(model.params, grads, lr=lr)
                step += 1
                batch_done = b + 1
                dt = time.perf_counter() - t0
                steps_this_run += 1
                train_time += dt
                epoch_train_time += dt
                epoch_images += len(y)
                correct = int((logits.argmax(axis=1) == y).sum())
                run["loss_sum"] += loss * len(y)
                run["correct"] += correct
                run["seen"] += len(y)
                hs = history["steps"]
                hs["step"].append(step)
                hs["epoch"].append(epoch + 1)
                hs["loss"].append(loss)
                hs["lr"].append(lr)
                hs["grad_norm"].append(gnorm)
                ips = epoch_images / epoch_train_time if epoch_train_time > 0 else 0.0
                eta = (stop_at - step) * train_time / steps_this_run
                bar.step(step, epoch + 1, cfg.epochs, run["loss_sum"] / run["seen"],
                         run["correct"] / run["seen"], lr, ips, eta)
            if batch_done < steps_per_epoch:                  # stopped inside the epoch
                break
            # ---- end of epoch: evaluate, record, checkpoint
            row = {"epoch": epoch + 1, "step": step,
                   "train_loss": run["loss_sum"] / max(run["seen"], 1),
                   "train_acc": run["correct"] / max(run["seen"], 1),
                   "val_loss": float("nan"), "val_acc": float("nan"),
                   "lr": history["steps"]["lr"][-1] if history["steps"]["lr"] else cfg.lr,
                   "images_per_s": epoch_images / epoch_train_time if epoch_train_time > 0 else 0.0,
                   "epoch_time": time.perf_counter() - epoch_t0}
            if val_ds is not None and len(val_ds):
                ev = evaluate(model, val_ds, max(cfg.batch_size, 256), cfg.normalize)
                row["val_loss"], row["val_acc"] = ev["loss"], ev["accuracy"]
            row["epoch_time"] = time.perf_counter() - epoch_t0
            row["wall_time"] = wall_before + (time.perf_counter() - wall0)
            history["epochs"].append(row)
            history["running"] = run = {"loss_sum": 0.0, "correct": 0, "seen": 0}
            epoch += 1
            batch_done = 0
            bar.line(f"epoch {row['epoch']}/{cfg.epochs}  step {step}  train loss {row['train_loss']:.4f} "
                     f"acc {row['train_acc']:.4f}  {val_text(row, val_ds is not None and len(val_ds) > 0)}  "
                     f"lr {row['lr']:.2e}  {row['images_per_s']:,.0f} img/s  {_fmt_time(row['wall_time'])}")
            save()
    except KeyboardInterrupt:
        save()                                                # resumable from the last finished step
        if ckpt_path is not None:
            bar.line(f"interrupted at step {step}; checkpoint saved to {ckpt_path}")
        raise
    finally:
        splitter.close()                                      # the helper processes end here
    if batch_done:                                            # stopped mid-epoch (max_steps)
        save()
        bar.line(f"stopped at step {step} (max_steps); resume from {ckpt_path}" if ckpt_path
                 else f"stopped at step {step} (max_steps)")
    return history


# =========================================================== history files and plot

def _atomic_write_text(path: Path, text: str):
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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
