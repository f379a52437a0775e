"""`tinyvit box ...`: train, evaluate and look at a ViT whose pooled state regresses a box.

  tinyvit box train                              # shapes, task "box", the box head on CLS
  tinyvit box train --task class+box --box-pool mean
  tinyvit box train --data mnist --data-dir ../shared/data
  tinyvit box train --resume runs/box-shapes    # continue a stopped run exactly
  tinyvit box eval runs/box-shapes               # mean IoU, IoU >= 0.5 / 0.75, accuracy
  tinyvit box predict runs/box-shapes img.png    # prints the box, saves the image with it drawn
  tinyvit box attention runs/box-shapes --index 3   # attention maps next to the box

(Registered by tinyvit.cli through COMMAND_MODULES; the model is tinyvit.box.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .cli import CLIError, MODEL_PRESETS, _load_image, _nonneg_float, _nonneg_int, _positive_int

DEFAULTS = {"shapes": dict(n_train=20000, n_val=2000, preset="tiny", epochs=5),
            "mnist": dict(n_train=20000, n_val=2000, preset="tiny", epochs=8)}


def _default_out(data: str) -> Path:
    base = Path("runs") / f"box-{data}"
    out, i = base, 2
    while (out / "checkpoint.npz").exists():
        out = Path(f"{base}-{i}")
        i += 1
    return out


def _load(spec: dict):
    from .box import load_box_data
    return load_box_data(spec["name"], data_dir=spec["data_dir"], seed=spec["seed"],
                         n_train=spec["n_train"], n_val=spec["n_val"], image_size=spec["image_size"],
                         download=spec["download"])


def _restart_with_one_blas_thread() -> None:
    """As `tinyvit train` does: BLAS reads its thread count when NumPy loads, so a command run
    from the shell restarts itself with one BLAS thread per worker thread (and the malloc
    settings of tinyvit._env) unless the user set the thread variables."""
    import os
    import sys
    from ._env import THREAD_VARS, tuned_env
    if sys.argv[1:3] != ["box", "train"] or any(v in os.environ for v in THREAD_VARS):
        return
    env = tuned_env(threads=1)
    if env != dict(os.environ):
        os.execve(sys.executable, [sys.executable, "-m", "tinyvit", *sys.argv[1:]], env)


def cmd_box_train(args) -> int:
    from .box import BoxConfig, BoxTrainConfig, BoxViT, CHECKPOINT_NAME, train_box
    from .checkpoint import load_checkpoint
    from .model import ViTConfig

    _restart_with_one_blas_thread()
    resume = None
    if args.resume is not None:
        resume = Path(args.resume)
        if resume.is_dir():
            resume = resume / CHECKPOINT_NAME
        fixed = [k for k in ("task", "data", "box_pool", "epochs", "lr", "batch_size", "seed", "n_train",
                             "patch_size", "dim", "depth", "num_registers", "class_weight", "l1_weight",
                             "giou_weight", "image_size", "workers") if getattr(args, k) is not None]
        if fixed:
            raise CLIError(f"--resume continues a run with its stored settings; drop "
                           f"{', '.join('--' + k.replace('_', '-') for k in fixed)}")
        ck = load_checkpoint(resume)
        if "box_config" not in ck.meta or ck.train_config is None:
            raise CLIError(f"--resume: {resume} holds no box training run to continue")
        spec = dict(ck.meta["dataset"])
        if args.data_dir is not None:
            spec["data_dir"] = args.data_dir
        vcfg, bcfg = ck.model_config, BoxConfig.from_dict(ck.meta["box_config"])
        tcfg = BoxTrainConfig.from_dict({**ck.train_config, "max_steps": args.max_steps})
        out = Path(args.out) if args.out else resume.parent
    else:
        data = args.data or "shapes"
        d = DEFAULTS[data]
        seed = args.seed or 0
        size = args.image_size or (32 if data == "shapes" else 56)
        spec = {"name": data, "data_dir": args.data_dir or "data", "seed": seed,
                "n_train": args.n_train or d["n_train"], "n_val": d["n_val"], "image_size": size,
                "download": not args.no_download}
        preset = dict(MODEL_PRESETS[d["preset"]])
        for k in ("patch_size", "dim", "depth", "heads", "mlp_dim", "pool"):
            if getattr(args, k, None) is not None:
                preset[k] = getattr(args, k)
        box_pool = args.box_pool or "cls"
        if args.num_registers is not None or box_pool == "reg":
            if "num_registers" not in {f for f in ViTConfig.__dataclass_fields__}:
                raise CLIError("--box-pool reg / --num-registers: this tinyvit's ViTConfig has no "
                               "num_registers field (register tokens)")
            preset["num_registers"] = max(args.num_registers or 0, 1 if box_pool == "reg" else 0)
        bcfg = BoxConfig(task=args.task or "box", box_pool=box_pool,
                         **{k: getattr(args, k) for k in ("class_weight", "l1_weight", "giou_weight")
                            if getattr(args, k) is not None})
        tdict = {"epochs": d["epochs"], "seed": seed, "max_steps": args.max_steps, "workers": 2}
        for k in ("epochs", "lr", "batch_size", "workers"):
            if getattr(args, k) is not None:
                tdict[k] = getattr(args, k)
        tcfg = BoxTrainConfig(**tdict)
        out = Path(args.out) if args.out else _default_out(data)
        vcfg = None
    train_ds, val_ds = _load(spec)
    if vcfg is None:
        vcfg = ViTConfig(image_size=spec["image_size"], in_channels=train_ds.image_shape[2],
                         num_classes=train_ds.num_classes, seed=spec["seed"], **preset)
    model = BoxViT(vcfg, bcfg)
    if not args.quiet:
        c = vcfg
        print(f"data:  {train_ds.summary()}\n       {val_ds.summary()}")
        print(f"model: patch {c.patch_size} (T={c.num_tokens} tokens), dim {c.dim}, depth {c.depth}, "
              f"heads {c.heads}; task {bcfg.task}, box head on {bcfg.box_pool!r}; "
              f"{sum(v.size for v in model.params.values()):,} parameters")
        print(f"out:   {out}")
    meta = {"class_names": list(train_ds.class_names), "dataset": spec}
    history = train_box(model, train_ds, val_ds, tcfg, out_dir=out, resume_from=resume,
                        progress=not args.quiet, meta=meta)
    last = history["epochs"][-1] if history["epochs"] else None
    if last is not None:
        acc = last.get("val_accuracy")
        print(f"{'done' if last['epoch'] == tcfg.epochs else 'stopped'} after epoch {last['epoch']}: held-out "
              f"mean IoU {last['val_mean_iou']:.4f}, IoU>=0.5 {last['val_iou50']:.4f}, "
              f"IoU>=0.75 {last['val_iou75']:.4f}" + ("" if acc is None else f", accuracy {acc:.4f}")
              + f", {last['wall_time']:.1f} s of training")
    print(f"saved: {out / CHECKPOINT_NAME}")
    return 0


def _model(path):
    from .box import load_box_model
    return load_box_model(Path(path))


def cmd_box_eval(args) -> int:
    from .box import evaluate_box
    model, ck = _model(args.checkpoint)
    spec = dict(ck.meta["dataset"])
    if args.data_dir is not None:
        spec["data_dir"] = args.data_dir
    _, val = _load(spec)
    r = evaluate_box(model, val)
    print(f"{val.name}: {r['n']} held-out images")
    print(f"mean IoU    {r['mean_iou']:.4f}\nIoU >= 0.5  {r['iou50']:.4f}\nIoU >= 0.75 {r['iou75']:.4f}")
    print(f"accuracy    {'-- (task box: the class head is not trained)' if r['accuracy'] is None else format(r['accuracy'], '.4f')}")
    return 0


def _images(args, model, ck):
    """(name, image (H, W, C), true box or None) for the image files or --index of the held-out set."""
    if args.index is not None:
        spec = dict(ck.meta["dataset"])
        if args.data_dir is not None:
            spec["data_dir"] = args.data_dir
        _, val = _load(spec)
        if args.index >= len(val):
            raise CLIError(f"--index: expected below {len(val)} (held-out images), got {args.index}")
        return [(f"held-out-{args.index}", val.images[args.index], val.boxes[args.index])]
    if not args.images:
        raise CLIError("images: expected image files or --index N (a held-out image)")
    c = model.config
    return [(Path(p).stem, _load_image(Path(p), c.image_hw, c.in_channels), None) for p in args.images]


def cmd_box_predict(args) -> int:
    from .box import box_attention_maps, plot_box_attention
    from .viz import save_figure
    model, ck = _model(args.checkpoint)
    names, pool = ck.class_names, model.box_config.box_pool
    for name, image, true in _images(args, model, ck):
        box, logits, _ = box_attention_maps(model, image)
        cx, cy, w, h = (float(v) for v in box)
        cls = names[int(np.argmax(logits))] if model.box_config.task == "class+box" else None
        title = f"{name}: box head on {pool!r}" + ("" if cls is None else f", class {cls}")
        out = save_figure(plot_box_attention(model, image, true, title=title), Path(args.out) / f"{name}-box.png")
        print(f"{name}: box (cx, cy, w, h) = ({cx:.3f}, {cy:.3f}, {w:.3f}, {h:.3f})"
              + ("" if cls is None else f", class {cls}") + f"; saved {out}")
    return 0


def add_command(subparsers) -> None:
    from .box import BOX_POOLS, DATA_NAMES, TASKS
    p = subparsers.add_parser("box", help="a box head on the CLS token (or mean, [REG], attention): "
                              "train, eval, predict",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="box_command", metavar="BOX_COMMAND")
    t = sub.add_parser("train", help="train a box model (default: shapes, about a minute)")
    t.add_argument("--task", choices=TASKS, default=None, help="box (default) or class+box")
    t.add_argument("--data", choices=DATA_NAMES, default=None,
                   help="shapes (default) or mnist (digits of the t10k files on a 56-pixel canvas)")
    t.add_argument("--data-dir", default=None, help="for mnist: the folder with mnist/ (e.g. ../shared/data)")
    t.add_argument("--no-download", action="store_true")
    t.add_argument("--n-train", type=_positive_int, default=None, help="training images (default 20000)")
    t.add_argument("--image-size", type=_positive_int, default=None, help="shapes 32, mnist 56 by default")
    t.add_argument("--box-pool", choices=BOX_POOLS, default=None,
                   help="what the box head reads: cls (default), mean, reg ([REG]: register 0, needs "
                        "register tokens), attn (a learned query), map (timm's attention pool, if present)")
    t.add_argument("--pool", choices=("cls", "mean"), default=None, help="the class head's pooling")
    t.add_argument("--num-registers", type=_nonneg_int, default=None)
    for k in ("patch_size", "dim", "depth", "heads", "mlp_dim"):
        t.add_argument("--" + k.replace("_", "-"), type=_positive_int, default=None)
    for k in ("class_weight", "l1_weight", "giou_weight"):
        t.add_argument("--" + k.replace("_", "-"), type=_nonneg_float, default=None,
                       help={"class_weight": "cross-entropy weight (default 1)",
                             "l1_weight": "L1 weight (default 5)", "giou_weight": "1 - GIoU weight (default 2)"}[k])
    t.add_argument("--epochs", type=_positive_int, default=None, help="default 5 (shapes), 8 (mnist)")
    t.add_argument("--batch-size", type=_positive_int, default=None, help="default 64")
    t.add_argument("--lr", type=_nonneg_float, default=None, help="peak learning rate (default 2e-3)")
    t.add_argument("--seed", type=_nonneg_int, default=None)
    t.add_argument("--workers", type=_positive_int, default=None,
                   help="threads each batch is split over, one BLAS thread each (default 2)")
    t.add_argument("--max-steps", type=_nonneg_int, default=None, help="stop after this many steps")
    t.add_argument("--out", default=None, help="run folder (default runs/box-<data>)")
    t.add_argument("--resume", default=None, metavar="CHECKPOINT")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_box_train)
    e = sub.add_parser("eval", help="mean IoU, IoU >= 0.5 and >= 0.75, accuracy on the held-out images")
    e.add_argument("checkpoint")
    e.add_argument("--data-dir", default=None)
    e.set_defaults(func=cmd_box_eval)
    for name, helptext in (("predict", "print the box of each image and save it drawn, with the attention maps"),
                           ("attention", "the attention maps next to the predicted box (same figure as predict)")):
        q = sub.add_parser(name, help=helptext)
        q.add_argument("checkpoint")
        q.add_argument("images", nargs="*", help="image files")
        q.add_argument("--index", type=_nonneg_int, default=None, help="a held-out image instead of files")
        q.add_argument("--data-dir", default=None)
        q.add_argument("--out", default="boxes", help="folder for the figures (default boxes/)")
        q.set_defaults(func=cmd_box_predict)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
