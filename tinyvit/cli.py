"""tinyvit: train, evaluate and run a NumPy Vision Transformer from the command line.

  tinyvit train                          train a small ViT on synthetic shapes (no download)
  tinyvit train --dataset mnist-test-split --data-dir ../shared/data --model mnist
  tinyvit eval runs/shapes/checkpoint.npz               accuracy, per class, confusion matrix
  tinyvit predict runs/shapes/checkpoint.npz img.png    top-5 classes of image files
  tinyvit attention runs/shapes img.png  what the CLS token attends to (PNG figures)
  tinyvit demo                           a model summary and a gradient check
  tinyvit bench                          time training steps, next to PyTorch when installed
  tinyvit assignment build hw1           a student edition with blanked backward passes
  tinyvit assignment grade hw1           grade it with the gradient checks

Run ``tinyvit COMMAND --help`` for the options of each command.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

import numpy as np

from ._env import THREAD_VARS, tuned_env


class CLIError(Exception):
    """A user mistake on the command line: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one line (plus a pointer to --help), not the usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def cmd_demo(args) -> int:
    """Build a small model, print its summary, and check its gradients."""
    from . import ViT, ViTConfig
    from .gradcheck import check_model, format_errors

    cfg = ViTConfig(image_size=8, in_channels=1, patch_size=4, dim=8, depth=2, heads=2, mlp_dim=16,
                    num_classes=3, dtype="float64", seed=args.seed)
    model = ViT(cfg)
    print(model.summary())
    rng = np.random.default_rng(args.seed)
    images = rng.random((2, 8, 8, 1))
    errors = check_model(model, images)          # random upstream gradient on the logits
    print("\nGradient check (float64, centred differences), relative error per tensor:")
    print(format_errors(errors, 1e-7))
    return 0 if max(errors.values()) < 1e-7 else 1


# =========================================================== train

# Model presets: (image side, patch, dim, depth, heads, mlp_dim). image side None = the dataset's.
MODEL_PRESETS = {
    "tiny":  dict(patch_size=8, dim=64, depth=3, heads=4, mlp_dim=128),
    "small": dict(patch_size=4, dim=128, depth=6, heads=4, mlp_dim=256),
    "mnist": dict(patch_size=7, dim=64, depth=3, heads=4, mlp_dim=128),
}
DEFAULT_PRESET = "tiny"

# Per dataset: (image side for the data, channels, the data's own image size is fixed?)
DATASET_SHAPES = {"shapes": (32, 3), "mnist": (28, 1), "mnist-test-split": (28, 1), "fashion-mnist": (28, 1),
                  "cifar10": (32, 3), "digits": (8, 1), "folder": (32, 3)}

# Training defaults per dataset (anything not listed comes from TrainConfig).
TRAIN_DEFAULTS = {
    "shapes": dict(epochs=8, batch_size=64, lr=3e-3, warmup=1.0, augment_flip=True),
    "mnist-test-split": dict(epochs=30, batch_size=64, lr=3e-3, warmup=1.0, augment_pad=1),
    "mnist": dict(epochs=5, batch_size=128, lr=1e-3, warmup=1.0, augment_pad=2),
    "fashion-mnist": dict(epochs=10, batch_size=128, lr=1e-3, warmup=1.0, augment_pad=2),
    "cifar10": dict(epochs=20, batch_size=128, lr=1e-3, warmup=1.0, augment_pad=4, augment_flip=True),
    "digits": dict(epochs=30, batch_size=32, lr=2e-3, warmup=1.0),
    "folder": dict(epochs=20, batch_size=32, lr=1e-3, warmup=1.0, augment_pad=2, augment_flip=True),
}
SHAPES_N_TRAIN, SHAPES_N_VAL = 20000, 2000
DEFAULT_WORKERS = 2            # `tinyvit train` splits each batch over 2 processes (TrainConfig's default: 1)

# Options that may be given with --resume (they do not change the numbers).
_RESUME_OK = {"out", "quiet", "max_steps", "data_dir", "threads", "resume", "command", "func", "log_every"}


def _number(kind, minimum):
    """An argparse type: a whole number (kind=int) or a finite number (kind=float) >= minimum."""
    what = "a whole number" if kind is int else "a finite number"

    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not np.isfinite(v) or v < minimum:
            raise argparse.ArgumentTypeError(f"expected {what} >= {minimum}, got {text}")
        return v
    return parse


_positive_int = _number(int, 1)
_nonneg_int = _number(int, 0)
_nonneg_float = _number(float, 0)


def _add_train_parser(sub):
    from .datasets import DATASET_NAMES

    p = sub.add_parser(
        "train", help="train a ViT (default: synthetic shapes, a tiny model, about a minute)",
        description="Train a Vision Transformer on the CPU. With no options it trains a tiny ViT on\n"
                    "synthetic coloured shapes (generated on the fly, nothing to download) and writes\n"
                    "the checkpoint, the history (JSON, CSV) and a plot of the learning curves to runs/.",
        epilog="Examples:\n"
               "  tinyvit train                                    # shapes, defaults\n"
               "  tinyvit train --dataset mnist-test-split --data-dir ../shared/data --model mnist\n"
               "  tinyvit train --dataset folder --data-dir my_photos --image-size 32 --epochs 30\n"
               "  tinyvit train --resume runs/shapes               # continue a stopped run exactly\n\n"
               f"Threads: each batch is split over --workers processes (default {DEFAULT_WORKERS}: this one and a helper;\n"
               "--resume keeps the run's), each running NumPy with --threads BLAS threads: workers x threads in all.\n"
               "NumPy's BLAS reads OPENBLAS_NUM_THREADS / OMP_NUM_THREADS / MKL_NUM_THREADS\n"
               "when it starts; --threads N sets them and restarts the command so they take effect.\n"
               "Default: 1 BLAS thread unless one of those variables is set (tiny models gain nothing\n"
               "from more, and extra BLAS threads slow training down badly on a busy machine).\n"
               "Ctrl-C saves a checkpoint that --resume continues from.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default=None, metavar="NAME",
                   help=f"one of {', '.join(DATASET_NAMES)} (default: shapes). mnist-test-split trains on "
                        "8,000 of the 10,000 MNIST t10k images and holds out the other 2,000")
    d.add_argument("--data-dir", default=None, metavar="DIR",
                   help="where datasets live (default: data/); for 'folder', the image folder itself "
                        "(one subfolder per class, or train/ and test/ each with one)")
    d.add_argument("--no-download", action="store_true", help="never download; fail if files are missing")
    d.add_argument("--n-train", type=_positive_int, default=None,
                   help=f"shapes only: training images (default {SHAPES_N_TRAIN}; validation {SHAPES_N_VAL})")
    d.add_argument("--channels", type=int, choices=(1, 3), default=None,
                   help="folder only: 1 grey or 3 RGB (default 3)")
    m = p.add_argument_group("model")
    m.add_argument("--model", default=None, choices=sorted(MODEL_PRESETS),
                   help=f"size preset (default {DEFAULT_PRESET}): " + "; ".join(
                       f"{k}: patch {v['patch_size']}, dim {v['dim']}, depth {v['depth']}, heads {v['heads']}, "
                       f"mlp {v['mlp_dim']}" for k, v in MODEL_PRESETS.items()))
    m.add_argument("--image-size", type=_positive_int, default=None,
                   help="image side in pixels (shapes default 32, folder default 32; fixed for mnist/cifar/digits)")
    m.add_argument("--patch-size", type=_positive_int, default=None, help="P, must divide the image side")
    m.add_argument("--dim", type=_positive_int, default=None, help="D, token width")
    m.add_argument("--depth", type=_positive_int, default=None, help="number of transformer blocks")
    m.add_argument("--heads", type=_positive_int, default=None, help="attention heads (must divide --dim)")
    m.add_argument("--mlp-dim", type=_positive_int, default=None, help="M, MLP hidden width")
    m.add_argument("--pool", choices=("cls", "mean", "mean_with_cls", "attn"), default=None,
                   help="classify from the CLS token (default), the mean of the patch tokens, the mean "
                        "of every token (a common bug, for comparison) or attention pooling")
    m.add_argument("--registers", dest="num_registers", type=_nonneg_int, default=None, metavar="R",
                   help="R learned register tokens after the CLS token, never pooled (default 0)")
    m.add_argument("--gelu", choices=("exact", "tanh"), default=None, help="GELU form (default exact)")
    m.add_argument("--pos-embed", choices=("learned", "sincos"), default=None,
                   help="position embeddings (default learned)")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=_positive_int, default=None)
    t.add_argument("--batch-size", type=_positive_int, default=None)
    t.add_argument("--lr", type=_nonneg_float, default=None, help="peak learning rate")
    t.add_argument("--min-lr", type=_nonneg_float, default=None, help="learning rate at the end of the decay")
    t.add_argument("--warmup", type=_nonneg_float, default=None, help="warm-up length in epochs (default 1)")
    t.add_argument("--schedule", choices=("cosine", "linear", "constant"), default=None)
    t.add_argument("--weight-decay", type=_nonneg_float, default=None, help="default 0.05 (matrices only)")
    t.add_argument("--optimizer", choices=("adamw", "sgd"), default=None, help="default adamw")
    t.add_argument("--clip", type=_nonneg_float, default=None, help="max gradient norm, 0 = off (default 1)")
    t.add_argument("--label-smoothing", type=_nonneg_float, default=None)
    t.add_argument("--augment-pad", type=_nonneg_int, default=None,
                   help="random-crop augmentation: pad by this many pixels (0 = off)")
    t.add_argument("--flip", dest="augment_flip", action="store_true", default=None,
                   help="random horizontal flips (not for digits)")
    t.add_argument("--normalize", choices=("image", "dataset", "none"), default=None,
                   help="image: each image to mean 0, std 1 (default); dataset: per-channel mean/std "
                        "of the training set; none: pixels in [0, 1]")
    t.add_argument("--seed", type=_nonneg_int, default=None,
                   help="seed for the model's initialisation, the data split and the batch order (default 0)")
    t.add_argument("--max-steps", type=_nonneg_int, default=None,
                   help="stop after this many steps (the schedule still covers all epochs; --resume continues)")
    t.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                   help=f"processes the batch is split over (this one and helpers), each with one BLAS thread (default {DEFAULT_WORKERS}; "
                        "1 = no split; results differ from other values in the last float bits)")
    o = p.add_argument_group("output")
    o.add_argument("--out", default=None, metavar="DIR",
                   help="output directory (default runs/<dataset>, or runs/<dataset>-2, ... if taken)")
    o.add_argument("--resume", default=None, metavar="CHECKPOINT",
                   help="continue the run saved in this checkpoint (or run directory) exactly")
    o.add_argument("--threads", type=_positive_int, default=None,
                   help="BLAS threads per worker process, so workers x threads in all (default 1; "
                        "sets OPENBLAS/OMP/MKL_NUM_THREADS and restarts the command)")
    o.add_argument("--quiet", action="store_true", help="no progress output, only the final summary")
    p.set_defaults(func=cmd_train)


def _dataset_key(name: str) -> str:
    from .datasets import DATASET_NAMES, _ALIASES
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in DATASET_NAMES:
        raise CLIError(f"--dataset: expected one of {', '.join(DATASET_NAMES)}, got {name!r}")
    return key


def _load_data(spec: dict):
    """(train, val) from a dataset spec dict (stored in the checkpoint's meta)."""
    from .datasets import load_dataset

    key = spec["name"]
    kw = dict(download=spec.get("download", True), seed=spec.get("seed", 0))
    if key == "shapes":
        kw.update(image_size=spec["image_size"], n_train=spec["n_train"], n_test=spec["n_val"])
    elif key == "folder":
        kw.update(image_size=spec["image_size"], channels=spec["channels"])
    data_dir = spec.get("data_dir") or "data"
    return load_dataset(key, data_dir, **kw)


def _default_out(key: str) -> Path:
    base = Path("runs") / key
    out, i = base, 2
    while (out / "checkpoint.npz").exists():
        out = Path(f"{base}-{i}")
        i += 1
    return out


def cmd_train(args) -> int:
    from . import ViT, ViTConfig
    from .checkpoint import load_checkpoint
    from .datasets import channel_stats
    from .train import CHECKPOINT_NAME, TrainConfig, plot_history, train

    resume = None
    if args.resume is not None:
        resume = Path(args.resume)
        if resume.is_dir():
            resume = resume / CHECKPOINT_NAME
        given = sorted(k for k, v in vars(args).items()
                       if k not in _RESUME_OK and v not in (None, False))
        if given:
            opts = ", ".join("--" + k.replace("_", "-") for k in given)
            raise CLIError(f"--resume continues a run with the settings stored in its checkpoint; "
                           f"drop {opts} (allowed with --resume: --out, --data-dir, --max-steps, --quiet, --threads)")
        ck = load_checkpoint(resume)
        if ck.train_config is None or "dataset" not in ck.meta:
            raise CLIError(f"--resume: {resume} holds no training run to continue")
        spec = dict(ck.meta["dataset"])
        if args.data_dir is not None:
            spec["data_dir"] = args.data_dir
        cfg_dict = dict(ck.train_config)
        if args.max_steps is not None:
            cfg_dict["max_steps"] = args.max_steps
        else:
            cfg_dict["max_steps"] = None
        tcfg = TrainConfig.from_dict(cfg_dict)
        mcfg = ck.model_config
        out = Path(args.out) if args.out else resume.parent
        train_ds, val_ds = _load_data(spec)
    else:
        key = _dataset_key(args.dataset or "shapes")
        side, channels = DATASET_SHAPES[key]
        if key in ("shapes", "folder"):
            side = args.image_size or side
            if key == "folder":
                channels = args.channels or channels
        elif args.image_size is not None and args.image_size != side:
            raise CLIError(f"--image-size: {key} images are {side}x{side}, got {args.image_size} "
                           "(only shapes and folder data can be resized)")
        if args.n_train is not None and key != "shapes":
            raise CLIError("--n-train: only for --dataset shapes")
        if args.channels is not None and key != "folder":
            raise CLIError("--channels: only for --dataset folder")
        data_dir = args.data_dir or "data"
        if key == "folder" and args.data_dir is None:
            raise CLIError("--data-dir: --dataset folder needs the image folder (one subfolder per class)")
        n_train = args.n_train or SHAPES_N_TRAIN
        seed = 0 if args.seed is None else args.seed
        spec = {"name": key, "data_dir": str(data_dir), "seed": seed, "download": not args.no_download,
                "image_size": side, "channels": channels, "n_train": n_train, "n_val": SHAPES_N_VAL}
        preset = dict(MODEL_PRESETS[args.model or ("mnist" if key in ("mnist", "mnist-test-split",
                                                                       "fashion-mnist") else DEFAULT_PRESET)])
        if args.patch_size is None and (side % preset["patch_size"] or side // preset["patch_size"] < 2):
            preset["patch_size"] = next(p for p in (8, 7, 4, 2, 1) if side % p == 0 and side // p >= 2)
        for k in ("patch_size", "dim", "depth", "heads", "mlp_dim", "pool", "gelu", "pos_embed",
                  "num_registers"):
            if getattr(args, k) is not None:
                preset[k] = getattr(args, k)
        train_ds, val_ds = _load_data(spec)
        mcfg = ViTConfig(image_size=side, in_channels=train_ds.image_shape[2],
                         num_classes=train_ds.num_classes, seed=seed, **preset)
        tdict = dict(TRAIN_DEFAULTS.get(key, {}))
        for k in ("epochs", "batch_size", "lr", "min_lr", "warmup", "schedule", "weight_decay", "optimizer",
                  "clip", "label_smoothing", "augment_pad", "augment_flip", "max_steps"):
            if getattr(args, k) is not None:
                tdict[k] = getattr(args, k)
        tdict["workers"] = DEFAULT_WORKERS if args.workers is None else args.workers
        if "min_lr" not in tdict:
            tdict["min_lr"] = min(1e-5, tdict.get("lr", 1e-3))
        norm = args.normalize or "image"
        if norm == "dataset":
            tdict["normalize"] = list(channel_stats(train_ds))
        else:
            tdict["normalize"] = None if norm == "none" else "image"
        tdict["seed"] = seed
        tcfg = TrainConfig(**tdict)
        out = Path(args.out) if args.out else _default_out(key)

    model = ViT(mcfg)
    quiet = args.quiet
    if not quiet:
        print(f"data:  {train_ds.summary()}\n       {val_ds.summary()}")
        c = mcfg
        print(f"model: {c.image_hw[0]}x{c.image_hw[1]}x{c.in_channels} images, patch {c.patch_size} "
              f"(T={c.num_tokens} tokens), dim {c.dim}, depth {c.depth}, heads {c.heads}, mlp {c.mlp_dim}, "
              f"{c.num_classes} classes, {model.num_params():,} parameters")
        print(f"out:   {out}")
    meta = {"class_names": list(train_ds.class_names), "dataset": spec}
    history = train(model, train_ds, val_ds, tcfg, out_dir=out, resume_from=resume,
                    progress=not quiet, meta=meta)
    fig = plot_history(history, title=f"{spec['name']}: {model.num_params():,}-parameter ViT")
    fig.savefig(out / "curves.png", dpi=100)
    last = history["epochs"][-1] if history["epochs"] else None
    if last is not None and last["epoch"] == tcfg.epochs:
        print(f"done: validation accuracy {last['val_acc']:.4f} (loss {last['val_loss']:.4f}) after "
              f"{tcfg.epochs} epochs, {last['wall_time']:.1f} s of training")
    elif last is not None:
        print(f"stopped after epoch {last['epoch']}: validation accuracy {last['val_acc']:.4f}")
    print(f"saved: {out / CHECKPOINT_NAME}, {out / 'history.json'}, {out / 'history.csv'}, "
          f"{out / 'curves.png'}")
    return 0


# =========================================================== eval and predict

def _is_tinyvit(path: Path) -> bool:
    from .checkpoint import is_checkpoint
    return is_checkpoint(path)


def _foreign_model(path: Path):
    """(model, info) from tinyvit.interop.load_model for Google/timm files, else None."""
    try:
        interop = importlib.import_module("tinyvit.interop")
    except ModuleNotFoundError:
        return None
    loader = getattr(interop, "load_model", None)
    if loader is None:
        return None
    try:
        return loader(path)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: neither a tinyvit checkpoint nor a model interop can read: {e}") from e


def _resolve_checkpoint(text: str) -> Path:
    from .train import CHECKPOINT_NAME
    path = Path(text)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: file not found: {path}")
    return path


def cmd_eval(args) -> int:
    from .checkpoint import load_checkpoint
    from .train import evaluate, format_confusion

    path = _resolve_checkpoint(args.checkpoint)
    ck = load_checkpoint(path)          # a clear one-line error for anything else (Google/timm: use predict)
    spec = dict(ck.meta.get("dataset") or {})
    if args.dataset is not None:
        spec["name"] = _dataset_key(args.dataset)
    if args.data_dir is not None:
        spec["data_dir"] = args.data_dir
    if "name" not in spec:
        raise CLIError(f"{path}: the checkpoint does not say which dataset it was trained on; pass --dataset")
    spec.setdefault("image_size", ck.model_config.image_hw[0])
    spec.setdefault("channels", ck.model_config.in_channels)
    spec.setdefault("n_train", SHAPES_N_TRAIN)
    spec.setdefault("n_val", SHAPES_N_VAL)
    train_ds, val_ds = _load_data(spec)
    ds = train_ds if args.split == "train" else val_ds
    model = ck.model()
    if ds.image_shape != (*ck.model_config.image_hw, ck.model_config.in_channels):
        raise CLIError(f"--dataset: {ds.name} has images {ds.image_shape}, the model expects "
                       f"{(*ck.model_config.image_hw, ck.model_config.in_channels)}")
    res = evaluate(model, ds, args.batch_size, (ck.train_config or {}).get("normalize", ck.meta.get("normalize")))
    names = ck.class_names
    print(f"{path}: {ds.name}, {res['n']} images")
    print(f"accuracy {res['accuracy']:.4f}   loss {res['loss']:.4f}\n")
    w = max(len(str(n)) for n in names)
    print(f"{'class':<{w}}  accuracy   images")
    counts = res["confusion"].sum(axis=1)
    for k, name in enumerate(names):
        acc = res["per_class_accuracy"][k]
        print(f"{name:<{w}}  {'   -  ' if np.isnan(acc) else f'{acc:.4f}'}   {int(counts[k]):>6}")
    print()
    print(format_confusion(res["confusion"], names))
    return 0


def _load_image(path: Path, hw, channels: int) -> np.ndarray:
    """An image file -> (H, W, C) float32 in [0, 1], converted and resized like the folder loader."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise FileNotFoundError(f"image: file not found: {path}")
    try:
        with Image.open(path) as im:
            im = im.convert("RGB" if channels == 3 else "L")
            H, W = hw
            if im.size != (W, H):
                im = im.resize((W, H), Image.BILINEAR)
            a = np.asarray(im, dtype=np.float32) / np.float32(255.0)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"{path}: could not read this image ({type(e).__name__}: {e})") from e
    return a.reshape(H, W, channels)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _model_for_images(checkpoint: str):
    """Load a tinyvit checkpoint, or a Google/timm file through interop, and say how its images
    are prepared. Returns (model, class names, prepare) where prepare(path) gives
    (x (1, H, W, C) as the model takes it, the same image in [0, 1] for display (H, W, C))."""
    from .checkpoint import load_checkpoint
    from .train import normalize_images

    path = _resolve_checkpoint(checkpoint)
    if _is_tinyvit(path):
        ck = load_checkpoint(path)
        model = ck.model()
        names = ck.class_names
        normalize = (ck.train_config or {}).get("normalize", ck.meta.get("normalize"))
        cfg = model.config

        def prepare(p):
            shown = _load_image(p, cfg.image_hw, cfg.in_channels)             # (H, W, C) in [0, 1]
            x = normalize_images(shown[None], normalize).astype(cfg.dtype, copy=False)
            return x, shown
        return model, names, prepare

    loaded = _foreign_model(path)
    if loaded is None:
        raise CLIError(f"{path}: not a tinyvit checkpoint (and tinyvit.interop is not available "
                       "to read Google/timm files)")
    model, info = loaded
    for note in info.get("notes") or []:
        print(f"note: {note}")
    names = info.get("class_names") or [str(k) for k in range(model.config.num_classes)]
    from .imagenet import preprocess_imagenet, preprocess_kwargs
    kw = preprocess_kwargs(info)

    def prepare(p):
        if not Path(p).is_file():
            raise FileNotFoundError(f"image: file not found: {p}")
        try:
            x = preprocess_imagenet(str(p), dtype=model.config.dtype, **kw)    # (1, H, W, 3) in [-1, 1]
        except (OSError, SyntaxError) as e:
            raise ValueError(f"{p}: could not read this image ({type(e).__name__}: {e})") from e
        mean, std = np.asarray(kw.get("mean", 0.5)), np.asarray(kw.get("std", 0.5))
        return x, np.clip(x[0] * std + mean, 0.0, 1.0)
    return model, names, prepare


def _print_top_k(label, probs, names, k):
    top = np.argsort(-probs, kind="stable")[:min(k, len(names))]
    print(f"{label}:")
    for rank, c in enumerate(top, 1):
        print(f"  {rank}. {names[c]:<24} {probs[c]:.4f}")


def cmd_predict(args) -> int:
    model, names, prepare = _model_for_images(args.checkpoint)
    for img in args.images:
        x, _ = prepare(Path(img))
        _print_top_k(img, _softmax(model(x))[0], names, args.top_k)           # probs (K,)
    return 0


def cmd_attention(args) -> int:
    from .viz import attention_rollout, plot_attention_grid, plot_cls_attention, plot_rollout

    model, names, prepare = _model_for_images(args.checkpoint)
    depth = model.config.depth
    if not -depth <= args.block < depth:
        raise CLIError(f"--block: expected a block index in [{-depth}, {depth - 1}], got {args.block}")
    block = args.block % depth
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    grid = model.config.grid
    for img in args.images:
        x, shown = prepare(Path(img))
        logits, cache = model.forward(x)
        attn = cache["attn"]                                                   # depth x (1, h, T, T)
        _print_top_k(img, _softmax(logits)[0], names, args.top_k)
        stem = Path(img).stem
        saved = [out / f"{stem}_cls_block{block}.png", out / f"{stem}_rollout.png"]
        plot_cls_attention(shown, attn[block], grid, block=block, save=saved[0])   # figures use no
        plot_rollout(shown, attention_rollout(attn, grid)[0], save=saved[1])       # pyplot state
        if args.all_blocks:
            saved.append(out / f"{stem}_cls_all_blocks.png")
            plot_attention_grid(shown, attn, grid, save=saved[-1])
        print(f"  saved: {', '.join(map(str, saved))}")
    return 0


def _add_eval_parsers(sub):
    p = sub.add_parser("eval", help="accuracy, per-class accuracy and confusion matrix of a checkpoint",
                       description="Evaluate a tinyvit checkpoint on the validation split of the dataset it "
                                   "was trained on (stored in the checkpoint), or on another with --dataset.")
    p.add_argument("checkpoint", help="a checkpoint.npz or the run directory holding it")
    p.add_argument("--dataset", default=None, help="evaluate on this dataset instead (same image size)")
    p.add_argument("--data-dir", default=None, help="where the dataset lives (default: as in training)")
    p.add_argument("--split", choices=("val", "train"), default="val",
                   help="which part: the held-out part (default) or the training part")
    p.add_argument("--batch-size", type=_positive_int, default=256)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="top-k classes of image files",
                       description="Classify image files with a tinyvit checkpoint (or a Google ViT / timm "
                                   ".npz through tinyvit.interop). Images are converted to the model's "
                                   "channels, resized to its image size and normalised as in training.")
    p.add_argument("checkpoint", help="a checkpoint.npz (or run directory), or a Google/timm ViT .npz")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files Pillow can open")
    p.add_argument("--top-k", type=_positive_int, default=5, help="how many classes to show (default 5)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("attention", help="what the CLS token attends to in image files (PNG figures)",
                       description="Run a tinyvit checkpoint (or a Google ViT / timm .npz) on image files "
                                   "and save, for each, the CLS token's attention in one block (every "
                                   "head over the image) and the attention rollout through all blocks.")
    p.add_argument("checkpoint", help="a checkpoint.npz (or run directory), or a Google/timm ViT .npz")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files Pillow can open")
    p.add_argument("--block", type=int, default=-1, help="which block's attention to show (default -1, the last)")
    p.add_argument("--all-blocks", action="store_true", help="also save every block and head in one grid")
    p.add_argument("--out", default="attention", help="folder for the PNG figures (default: attention/)")
    p.add_argument("--top-k", type=_positive_int, default=3, help="how many classes to print (default 3)")
    p.set_defaults(func=cmd_attention)


# =========================================================== parser and main

COMMAND_MODULES = ("bench", "assignment", "lrgrid", "probes", "registers")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tinyvit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_train_parser(sub)
    _add_eval_parsers(sub)
    demo = sub.add_parser("demo", help="print a small model's summary and check its gradients")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)
    # Commands that live in their own modules: each module has add_command(subparsers),
    # which adds its parser and sets func=... on it.
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"tinyvit.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"tinyvit.{name}":
                continue
            raise
        module.add_command(sub)
    return parser


def _maybe_reexec_for_threads(argv, args) -> None:
    """Restart `tinyvit train` with its process-wide settings (tinyvit/_env.py): BLAS reads
    its thread count, and glibc its malloc tuning, only when the process starts.

    --threads N asks for N. Without it, and with none of the thread variables set, training
    runs ONE BLAS thread in each --workers process: the matrices of these tiny models are too
    small to gain from more, and on a busy machine extra BLAS threads that spin and wait made
    training ten times slower. The malloc settings (kept if the user set them) save 20-40%
    of each step.
    """
    if getattr(args, "func", None) is not cmd_train:      # other commands manage threads themselves
        return
    threads = args.threads
    if threads is None and not any(v in os.environ for v in THREAD_VARS):
        threads = 1
    env = tuned_env(threads=threads)
    if env == dict(os.environ):
        return
    os.execve(sys.executable, [sys.executable, "-m", "tinyvit", *argv], env)


def main(argv=None) -> int:
    parser = build_parser()
    from_shell = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if from_shell:
        _maybe_reexec_for_threads(argv, args)
    from .checkpoint import CheckpointError
    from .train import TrainingDiverged
    try:
        return args.func(args)
    except CLIError as err:
        print(f"tinyvit {args.command}: error: {err}", file=sys.stderr)
        return 2
    except TrainingDiverged as err:
        print(f"tinyvit {args.command}: error: {err}", file=sys.stderr)
        return 1
    except (CheckpointError, ValueError, TypeError, OSError) as err:
        msg = " ".join(str(err).split())                   # multi-line messages folded into one line
        print(f"tinyvit {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tinyvit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
