"""``tinyvit explain`` and ``tinyvit faithfulness``: attribution maps, and how faithful each is.

  tinyvit explain runs/shapes img.png          every method's map side by side (PNG per image)
  tinyvit explain runs/shapes --held-out 4     the same for the first 4 held-out images
  tinyvit faithfulness runs/shapes             methods x metrics over the held-out part:
                                               table (printed, CSV, JSON) and the deletion /
                                               insertion curves (PNG)

The methods are in tinyvit/explain.py, the metrics in tinyvit/faithfulness.py.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from .explain import METHODS, QUERIES, attribution_maps, method_label, plot_attribution_maps


def _write_text(path: Path, text: str) -> None:
    """Write atomically: a temporary file in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def held_out_part(checkpoint, data_dir=None):
    """(checkpoint, the held-out part of the dataset it was trained on, its normalize setting)
    for a tinyvit checkpoint (a file or a run directory); data_dir overrides the stored one."""
    from .checkpoint import load_checkpoint
    from .cli import CLIError, SHAPES_N_TRAIN, SHAPES_N_VAL, _load_data, _resolve_checkpoint

    path = _resolve_checkpoint(str(checkpoint))
    ck = load_checkpoint(path)
    spec = dict(ck.meta.get("dataset") or {})
    if "name" not in spec:
        raise CLIError(f"{path}: the checkpoint does not say which dataset it was trained on")
    if data_dir is not None:
        spec["data_dir"] = data_dir
    spec.setdefault("image_size", ck.model_config.image_hw[0])
    spec.setdefault("channels", ck.model_config.in_channels)
    spec.setdefault("n_train", SHAPES_N_TRAIN)
    spec.setdefault("n_val", SHAPES_N_VAL)
    _, ds = _load_data(spec)
    normalize = (ck.train_config or {}).get("normalize", ck.meta.get("normalize"))
    return ck, ds, normalize


def _masks_of(ds, ink: float | None):
    """The dataset's object masks; for grey images without them, the pixels brighter than ``ink``
    (the strokes of a digit); else None."""
    if ds.masks is not None:
        return ds.masks, "object masks"
    if ink is not None and ds.image_shape[2] == 1:
        return ds.images[..., 0] > ink, f"ink masks (pixels > {ink:g})"
    return None, "no masks"


def _map_kw(args) -> dict:
    return dict(block=args.block, head=args.head, query=args.query)


def cmd_explain(args) -> int:
    from .cli import CLIError, _model_for_images, _print_top_k, _softmax

    out = Path(args.out)
    methods = tuple(args.methods)
    if args.held_out:
        if args.images:
            raise CLIError("--held-out: give either image files or --held-out N, not both")
        ck, ds, normalize = held_out_part(args.checkpoint, args.data_dir)
        from .train import normalize_images
        model, names = ck.model(), ck.class_names
        n = min(args.held_out, len(ds))
        shown = ds.images[:n]
        xs = normalize_images(shown, normalize).astype(model.config.dtype, copy=False)
        items = [(f"held-out {i} (label {names[ds.labels[i]]})", f"heldout{i}", xs[i:i + 1], shown[i],
                  None if ds.masks is None else ds.masks[i]) for i in range(n)]
    else:
        if not args.images:
            raise CLIError("IMAGE: give image files, or --held-out N for images of the checkpoint's dataset")
        model, names, prepare = _model_for_images(args.checkpoint)
        items = []
        for img in args.images:
            x, shown = prepare(Path(img))
            items.append((img, Path(img).stem, x, shown, None))
    K = model.config.num_classes
    if args.cls is not None and not 0 <= args.cls < K:
        raise CLIError(f"--class: expected a class index in [0, {K - 1}], got {args.cls}")
    depth = model.config.depth
    if not -depth <= args.block < depth:
        raise CLIError(f"--block: expected a block index in [{-depth}, {depth - 1}], got {args.block}")
    if not 0 <= args.head < model.config.heads:
        raise CLIError(f"--head: expected a head index in [0, {model.config.heads - 1}], got {args.head}")
    for label, stem, x, shown, mask in items:
        classes = None if args.cls is None else np.array([args.cls])
        maps = attribution_maps(model, x, classes, methods, **_map_kw(args))
        c = int(maps["classes"][0])
        _print_top_k(label, _softmax(maps["logits"])[0], names, args.top_k)
        if "flow" in methods and "flow" not in maps:
            print("  note: attention flow skipped: the layer graph is too large for exact max-flow "
                  "in Python (see attribution_maps' max_flow_nodes)")
        title = (f"{label}: maps for class {names[c]} "
                 f"(p = {_softmax(maps['logits'])[0, c]:.3f}; query {args.query}, "
                 f"cls_attention: block {args.block % depth}, head {args.head})")
        save = out / f"{stem}_maps.png"
        plot_attribution_maps(shown, maps, title=title, mask=mask, save=save)
        if "occlusion" in maps:
            from .faithfulness import spearman
            occ = maps["occlusion"]
            print("  Spearman with occlusion: " + ", ".join(
                f"{m} {spearman(maps[m], occ)[0]:.2f}" for m in methods if m in maps and m != "occlusion"))
        print(f"  saved: {save}")
    return 0


def _csv_text(result: dict) -> str:
    buf = io.StringIO()
    keys = list(next(iter(result["rows"].values())).keys())
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", *keys])
    for m, row in result["rows"].items():
        w.writerow([m, *[row[k] for k in keys]])
    return buf.getvalue()


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return [_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, (np.floating, np.integer)):
        return _jsonable(obj.item())
    return obj


def cmd_faithfulness(args) -> int:
    from .faithfulness import METRICS, faithfulness_table, format_table, plot_curves

    ck, ds, normalize = held_out_part(args.checkpoint, args.data_dir)
    model = ck.model()
    n = len(ds) if args.images is None else min(args.images, len(ds))
    masks, mask_kind = _masks_of(ds, None if args.ink is None or args.ink < 0 else args.ink)
    images = ds.images[:n]
    masks = None if masks is None else masks[:n]
    cfg = model.config
    print(f"{ck.path}: pool={cfg.pool}, {cfg.grid[0]}x{cfg.grid[1]} patches, depth {cfg.depth}; "
          f"{ds.name}: {n} images, {mask_kind}")
    print(f"maps of the predicted class; query {args.query}; cls_attention: block {args.block % cfg.depth}, "
          f"head {args.head}; occlusion baseline 0 in the model's input space; "
          f"randomisation check on the first {min(n, args.randomization_images)} images")
    result = faithfulness_table(model, images, normalize, masks, methods=tuple(args.methods),
                                batch_size=args.batch_size, randomization_images=args.randomization_images,
                                seed=args.seed, progress=sys.stdout, **_map_kw(args))
    result["settings"] = {"checkpoint": str(ck.path), "dataset": ds.name, "masks": mask_kind,
                          "pool": cfg.pool, "query": args.query, "block": args.block % cfg.depth,
                          "head": args.head, "seed": args.seed, "baseline": 0.0}
    table = format_table(result, METRICS)
    print()
    print(table)
    print("\nrandomisation check, Spearman of original and randomised maps (mean over images):")
    levels = list(result["randomization"])
    width = max(len(method_label(m)) for m in args.methods)
    print(f"  {'':<{width}}  " + "  ".join(f"{lv:>20}" for lv in levels))
    for m in args.methods:
        print(f"  {method_label(m):<{width}}  " +
              "  ".join(f"{result['randomization'][lv][m]:>20.3f}" for lv in levels))
    out = Path(args.out)
    _write_text(out / "faithfulness.json", json.dumps(_jsonable(result), indent=1) + "\n")
    _write_text(out / "faithfulness.csv", _csv_text(result))
    _write_text(out / "faithfulness.md", table + "\n")
    plot_curves(result, title=f"{ds.name}, pool={cfg.pool}: deletion and insertion "
                              f"(mean over {n} images)", save=out / "faithfulness_curves.png")
    print(f"\nsaved: {out / 'faithfulness.json'}, {out / 'faithfulness.csv'}, {out / 'faithfulness.md'}, "
          f"{out / 'faithfulness_curves.png'}")
    return 0


def add_command(subparsers) -> None:
    from .cli import _positive_int

    def common(p):
        p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), metavar="METHOD",
                       help=f"which maps (default all: {', '.join(METHODS)})")
        p.add_argument("--query", choices=QUERIES, default="cls",
                       help="maps of what reaches the CLS token (default) or the patch tokens on average "
                            "(what a pool=mean head reads)")
        p.add_argument("--block", type=int, default=-1, help="cls_attention's block (default -1, the last)")
        p.add_argument("--head", type=int, default=0, help="cls_attention's head (default 0)")
        p.add_argument("--data-dir", default=None, help="where the checkpoint's dataset lives (default: as in training)")

    p = subparsers.add_parser(
        "explain", help="every attribution method's map side by side (PNG per image)",
        description="Maps of what a class logit depends on, by every method (CLS attention, rollout, "
                    "attention flow, gradient-weighted attention, input gradient, gradient x input, "
                    "occlusion), for image files (a tinyvit checkpoint or a Google/timm .npz) or for "
                    "the first held-out images of a tinyvit checkpoint's dataset.")
    p.add_argument("checkpoint", help="a checkpoint.npz (or run directory), or a Google/timm ViT .npz")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files Pillow can open")
    p.add_argument("--held-out", type=_positive_int, default=None, metavar="N",
                   help="explain the first N held-out images of the checkpoint's dataset instead")
    p.add_argument("--class", dest="cls", type=int, default=None,
                   help="explain this class index (default: the predicted class)")
    p.add_argument("--out", default="explain", help="folder for the PNG figures (default: explain/)")
    p.add_argument("--top-k", type=_positive_int, default=3, help="how many classes to print (default 3)")
    common(p)
    p.set_defaults(func=cmd_explain)

    p = subparsers.add_parser(
        "faithfulness", help="how faithful each attribution method is: a methods x metrics table",
        description="Score every attribution method over the held-out part of a tinyvit checkpoint's "
                    "dataset: Spearman correlation with occlusion, deletion and insertion areas, the "
                    "localisation ratio and the DINO Jaccard index against object masks, and the "
                    "model-randomisation check. Writes faithfulness.json, .csv, .md and a figure of the "
                    "deletion and insertion curves.")
    p.add_argument("checkpoint", help="a tinyvit checkpoint.npz or the run directory holding it")
    p.add_argument("--images", type=_positive_int, default=None,
                   help="use the first N held-out images (default: all)")
    p.add_argument("--batch-size", type=_positive_int, default=100, help="images per batch (default 100)")
    p.add_argument("--randomization-images", type=_positive_int, default=200,
                   help="run the randomisation check on the first N images (default 200)")
    p.add_argument("--ink", type=float, default=0.5,
                   help="grey datasets without masks (MNIST): use pixels above this as the object "
                        "mask (default 0.5; negative: no masks)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random map and of tie-breaking (default 0)")
    p.add_argument("--out", default="faithfulness", help="output folder (default: faithfulness/)")
    common(p)
    p.set_defaults(func=cmd_faithfulness)
