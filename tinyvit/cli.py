"""tinyvit: train, evaluate and run a NumPy Vision Transformer from the command line.

  tinyvit train                          train a small ViT on synthetic shapes (no download)
  tinyvit train --dataset mnist-test-split --data-dir ../shared/data --model mnist
  tinyvit eval runs/shapes/checkpoint.npz               accuracy, per class, confusion matrix
  tinyvit predict runs/shapes/checkpoint.npz img.png    top-5 classes of image files
  tinyvit attention runs/shapes img.png  what the CLS token attends to (PNG figures)
  tinyvit explain runs/shapes img.png    every attribution method's map, side by side
  tinyvit faithfulness runs/shapes       how faithful each map is: methods x metrics table
  tinyvit demo                           a model summary and a gradient check
  tinyvit bench                          time training steps, next to PyTorch when installed
  tinyvit assignment build hw1           a student edition with blanked backward passes
  tinyvit assignment grade hw1           grade it with the gradient checks

Run ``tinyvit COMMAND --help`` for the options of each command.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
from pathlib import Path

import numpy as np

from ._env import THREAD_VARS, tuned_env
from .datasets import DATASET_SHAPES, SHAPES_N_TRAIN, SHAPES_N_VAL, TRAIN_DEFAULTS


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

# Model presets, the architecture of each --model choice (image size and channels come from the data).
MODEL_PRESETS = {
    "tiny":  dict(patch_size=8, dim=64, depth=3, heads=4, mlp_dim=128),
    "small": dict(patch_size=4, dim=128, depth=6, heads=4, mlp_dim=256),
    "mnist": dict(patch_size=7, dim=64, depth=3, heads=4, mlp_dim=128),
}
DEFAULT_PRESET = "tiny"

DEFAULT_WORKERS = 2            # `tinyvit train` splits each batch over 2 processes (TrainConfig's default: 1)

# Options that are not training settings: --resume allows them, and the training settings that
# do not change the numbers (tinyvit.train.RESUME_FREE).
_NOT_SETTINGS = {"out", "quiet", "data_dir", "threads", "resume", "command", "func"}


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
    from .datasets import dataset_key
    try:
        return dataset_key(name)
    except ValueError as e:
        raise CLIError(f"--{e}") from None


def _load_data(spec: dict):
    """(train, val) from a dataset spec dict (stored in the checkpoint's meta). A stored spec
    may be damaged: every field is checked by load_dataset, which names it."""
    from ._checks import describe
    from .datasets import load_dataset

    key, data_dir = spec.get("name"), spec.get("data_dir") or "data"
    if not isinstance(key, str):
        raise CLIError(f"dataset: expected a dataset name, got {describe(key)}")
    if not isinstance(data_dir, str):
        raise CLIError(f"dataset data_dir: expected a folder name, got {describe(data_dir)}")
    kw = dict(download=spec.get("download", True), seed=spec.get("seed", 0))
    if key == "shapes":
        kw.update(image_size=spec.get("image_size"), n_train=spec.get("n_train", SHAPES_N_TRAIN),
                  n_test=spec.get("n_val", SHAPES_N_VAL))
    elif key == "folder":
        kw.update(image_size=spec.get("image_size", 32), channels=spec.get("channels", 3))
    return load_dataset(key, data_dir, **kw)


def _default_out(key: str) -> Path:
    base = Path("runs") / key
    out, i = base, 2
    while (out / "checkpoint.npz").exists():
        out = Path(f"{base}-{i}")
        i += 1
    return out


def cmd_train(args) -> int:
    """Train a model: a new run from the options, or one continued with --resume."""
    from . import ViT
    from ._files import atomic_open
    from .train import CHECKPOINT_NAME, plot_history, train

    run = _resumed_run(args) if args.resume is not None else _new_run(args)
    out = run["out"]
    try:                                       # an unwritable --out fails now, not after an epoch
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CLIError(f"--out: expected a folder that can be created and written, got {out} "
                       f"({e.strerror or e})") from None
    if not os.access(out, os.W_OK):
        raise CLIError(f"--out: expected a folder that can be written, got {out} (permission denied)")
    model, train_ds, val_ds, tcfg, spec = ViT(run["mcfg"]), run["train"], run["val"], run["tcfg"], run["spec"]
    if not args.quiet:
        c = model.config
        print(f"data:  {train_ds.summary()}\n       {val_ds.summary()}")
        print(f"model: {c.image_hw[0]}x{c.image_hw[1]}x{c.in_channels} images, patch {c.patch_size} "
              f"(T={c.num_tokens} tokens), dim {c.dim}, depth {c.depth}, heads {c.heads}, mlp {c.mlp_dim}, "
              f"{c.num_classes} classes, {model.num_params():,} parameters")
        print(f"out:   {out}")
    meta = {"class_names": list(train_ds.class_names), "dataset": spec}
    history = train(model, train_ds, val_ds, tcfg, out_dir=out, resume_from=run["resume"],
                    progress=not args.quiet, meta=meta)
    fig = plot_history(history, title=f"{spec['name']}: {model.num_params():,}-parameter ViT")
    with atomic_open(out / "curves.png") as f:                  # whole or not at all
        fig.savefig(f, format="png", dpi=100)
    last = history["epochs"][-1] if history["epochs"] else None
    if last is not None and last["epoch"] == tcfg.epochs:
        print(f"done: validation accuracy {last['val_acc']:.4f} (loss {last['val_loss']:.4f}) after "
              f"{tcfg.epochs} epochs, {last['wall_time']:.1f} s of training")
    elif last is not None:
        print(f"stopped after epoch {last['epoch']}: validation accuracy {last['val_acc']:.4f}")
    print(f"saved: {out / CHECKPOINT_NAME}, {out / 'history.json'}, {out / 'history.csv'}, "
          f"{out / 'curves.png'}")
    return 0


def _resumed_run(args) -> dict:
    """--resume: the dataset, model and settings stored in the checkpoint."""
    from .checkpoint import load_checkpoint
    from .train import CHECKPOINT_NAME, RESUME_FREE, TrainConfig

    resume = Path(args.resume)
    if resume.is_dir():
        resume = resume / CHECKPOINT_NAME
    given = sorted(k for k, v in vars(args).items()
                   if k not in _NOT_SETTINGS | set(RESUME_FREE) and v not in (None, False))
    if given:
        opts = ", ".join("--" + k.replace("_", "-") for k in given)
        raise CLIError(f"--resume continues a run with the settings stored in its checkpoint; drop "
                       f"{opts} (allowed with --resume: --out, --data-dir, --max-steps, --log-every, "
                       "--quiet, --threads)")
    ck = load_checkpoint(resume)
    if ck.train_config is None or "dataset" not in ck.meta:
        raise CLIError(f"--resume: {resume} holds no training run to continue")
    spec = dict(ck.meta["dataset"])
    if args.data_dir is not None:
        spec["data_dir"] = args.data_dir
    tcfg = TrainConfig.from_dict({**ck.train_config, "max_steps": args.max_steps})
    train_ds, val_ds = _load_data(spec)
    return {"spec": spec, "tcfg": tcfg, "mcfg": ck.model_config, "train": train_ds, "val": val_ds,
            "out": Path(args.out) if args.out else resume.parent, "resume": resume}


def _new_run(args) -> dict:
    """A new run: the dataset from --dataset (checked before anything is loaded or drawn), the
    model from its preset and the options, the settings from the dataset's defaults and the
    options."""
    from . import ViTConfig

    key = _dataset_key(args.dataset or "shapes")
    side, channels = _image_side_and_channels(args, key)
    seed = 0 if args.seed is None else args.seed
    n_train = args.n_train or SHAPES_N_TRAIN
    if key == "folder" and args.data_dir is None:
        raise CLIError("--data-dir: --dataset folder needs the image folder (one subfolder per class)")
    spec = {"name": key, "data_dir": str(args.data_dir or "data"), "seed": seed,
            "download": not args.no_download, "image_size": side, "channels": channels,
            "n_train": n_train, "n_val": SHAPES_N_VAL}
    if key == "shapes":                                # before anything is drawn
        from ._files import check_memory
        from .datasets import shapes_bytes
        check_memory("--n-train, --image-size", f"{n_train:,} + {SHAPES_N_VAL:,} images of "
                     f"{side}x{side}", shapes_bytes(n_train + SHAPES_N_VAL, side), "the data")
    preset = _model_preset(args, key, side)
    _check_model_memory(ViTConfig(image_size=side, in_channels=channels, num_classes=2, seed=seed,
                                  **preset))
    train_ds, val_ds = _load_data(spec)
    mcfg = ViTConfig(image_size=side, in_channels=train_ds.image_shape[2],
                     num_classes=train_ds.num_classes, seed=seed, **preset)
    return {"spec": spec, "tcfg": _train_config(args, key, seed, train_ds), "mcfg": mcfg,
            "train": train_ds, "val": val_ds, "resume": None,
            "out": Path(args.out) if args.out else _default_out(key)}


def _image_side_and_channels(args, key: str) -> tuple[int, int]:
    """The image side and channels of a new run's data, with the options checked against the
    dataset."""
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
    if key == "shapes" and side < 8:
        raise CLIError(f"--image-size: expected at least 8 for the shapes data, got {side}")
    if side < 2:
        raise CLIError(f"--image-size: expected at least 2 (two patches of one pixel), got {side}")
    return side, channels


def _model_preset(args, key: str, side: int) -> dict:
    """The model preset for the dataset (--model), a patch size that fits the image, and the
    architecture options on top."""
    mnist_like = key in ("mnist", "mnist-test-split", "fashion-mnist")
    preset = dict(MODEL_PRESETS[args.model or ("mnist" if mnist_like else DEFAULT_PRESET)])
    if args.patch_size is None and (side % preset["patch_size"] or side // preset["patch_size"] < 2):
        preset["patch_size"] = next(p for p in (8, 7, 4, 2, 1) if side % p == 0 and side // p >= 2)
    for k in ("patch_size", "dim", "depth", "heads", "mlp_dim", "pool", "gelu", "pos_embed",
              "num_registers"):
        if getattr(args, k) is not None:
            preset[k] = getattr(args, k)
    return preset


def _check_model_memory(mcfg) -> None:
    from ._files import check_memory
    from .model import param_shapes
    nparams = sum(math.prod(s) for s in param_shapes(mcfg).values())
    check_memory("--image-size, --patch-size, --dim, --depth", f"a model of {nparams:,} parameters",
                 nparams * np.dtype(mcfg.dtype).itemsize * 4, "them, their gradients and optimizer moments")


def _train_config(args, key: str, seed: int, train_ds):
    """The dataset's training defaults, the options on top, workers and normalisation."""
    from .datasets import channel_stats
    from .train import TrainConfig
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
    return TrainConfig(**tdict)


# =========================================================== eval and predict

def _is_tinyvit(path: Path) -> bool:
    """True for a tinyvit checkpoint, damaged ones included (their own loader then says
    what is wrong): an .npz with a 'format' or 'model_config' entry."""
    from ._files import NpzReader
    try:
        with NpzReader(path) as r:
            return "format" in r or "model_config" in r
    except (ValueError, OSError):                      # not an .npz: interop's reader says so
        return False


def _foreign_model(path: Path):
    """(model, info) from tinyvit.interop.load_model for Google/timm files."""
    from ._files import NpzError
    from .interop import load_model
    try:
        return load_model(path)
    except NpzError:                                   # not an .npz at all: says so, names the file
        raise
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
    from .datasets import read_image
    return read_image(path, hw, channels).astype(np.float32) / np.float32(255.0)


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

    model, info = _foreign_model(path)
    for note in info.get("notes") or []:
        print(f"note: {note}")
    names = info.get("class_names") or [str(k) for k in range(model.config.num_classes)]
    from .imagenet import preprocess_imagenet, preprocess_kwargs
    kw = preprocess_kwargs(info)

    def prepare(p):
        x = preprocess_imagenet(str(p), dtype=model.config.dtype, **kw)        # (1, H, W, 3) in [-1, 1]
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


def _resize_warnings(path: Path, hw, stretches: bool) -> list[str]:
    """What `tinyvit attention` says when an image is changed a lot before the model sees it:
    its aspect ratio changed (a tinyvit checkpoint stretches to the model's size; the
    Google/timm path keeps the ratio and crops the centre), or it shrank by more than 4x."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size                                # reads the header only
    except OSError:
        return []                                         # unreadable: prepare() reports it
    H, W = hw
    notes = []
    if stretches and abs((w / h) / (W / H) - 1) > 0.01:
        notes.append(f"{path}: the {w}x{h} image (aspect ratio {w / h:.2f}) is stretched to the model's "
                     f"{W}x{H} (aspect ratio {W / H:.2f}); the attention maps are drawn on the stretched image")
    shrink = min(w / W, h / H) if not stretches else max(w / W, h / H)
    if shrink > 4:
        notes.append(f"{path}: the {w}x{h} image is shrunk {shrink:.1f}x to {W}x{H} for the model; "
                     "small details may be lost")
    return notes


def cmd_attention(args) -> int:
    from .viz import attention_rollout, plot_attention_grid, plot_cls_attention, plot_rollout

    model, names, prepare = _model_for_images(args.checkpoint)
    stretches = _is_tinyvit(_resolve_checkpoint(args.checkpoint))
    depth = model.config.depth
    if not -depth <= args.block < depth:
        raise CLIError(f"--block: expected a block index in [{-depth}, {depth - 1}], got {args.block}")
    block = args.block % depth
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    grid = model.config.grid
    for img in args.images:
        x, shown = prepare(Path(img))
        for note in _resize_warnings(Path(img), model.config.image_hw, stretches):
            print(f"tinyvit attention: warning: {note}", file=sys.stderr)
        logits, cache = model.forward(x)
        attn = cache["attn"]                                                   # depth x (1, h, T, T)
        probs = _softmax(logits)[0]
        _print_top_k(img, probs, names, args.top_k)
        top = int(np.argmax(probs))
        about = f"{Path(img).name}, predicted {names[top]} ({probs[top]:.2f})"
        stem = Path(img).stem
        saved = [out / f"{stem}_cls_block{block}.png", out / f"{stem}_rollout.png"]
        plot_cls_attention(shown, attn[block], grid, block=block, save=saved[0],      # figures use no
                           title=f"{about}: block {block}, CLS attention per head")     # pyplot state
        plot_rollout(shown, attention_rollout(attn, grid)[0], save=saved[1],
                     title=f"{about}: attention rollout")
        if args.all_blocks:
            saved.append(out / f"{stem}_cls_all_blocks.png")
            plot_attention_grid(shown, attn, grid, save=saved[-1],
                                title=f"{about}\nCLS attention, blocks (rows) x heads (columns)")
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

COMMAND_MODULES = ("bench", "assignment", "explain_cli", "box_cli", "lrgrid", "probes", "registers")


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
        importlib.import_module(f"tinyvit.{name}").add_command(sub)
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
    from .train import TrainingDiverged, TrainingStopped
    try:
        return args.func(args)
    except CLIError as err:
        print(f"tinyvit {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (TrainingDiverged, TrainingStopped) as err:
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
