"""`tinyvit lr-grid`: the learning-rate trap of CLS versus mean pooling, at laptop scale.

The ViT paper (Dosovitskiy et al. 2021, appendix D.3, figure 9) first found that a model
classifying from the mean of its patch tokens "performed very poorly" next to one reading
the CLS token, and then that "the difference in performance is fully explained by the
requirement for a different learning-rate". This command trains the same small ViT with
each pooling at each learning rate, several seeds each, and reports held-out accuracy
against learning rate per pooling, so the comparison at one learning rate and the
comparison at each pooling's best one can be read off the same table.

    tinyvit lr-grid                                   # shapes, cls and mean, 5 lrs, 3 seeds
    tinyvit lr-grid --pools cls mean attn --lrs 1e-3 3e-3
    tinyvit lr-grid --dataset mnist-test-split --data-dir ../shared/data --out runs/lr-grid-mnist

Each run's result is written to OUT/runs/<pool>_lr<lr>_seed<seed>.json (atomically) as
soon as it finishes; a rerun with the same OUT skips the runs already there, so an
interrupted grid resumes where it stopped. OUT/results.csv has one row per run,
OUT/summary.csv and OUT/summary.md the mean and spread over seeds, OUT/lr_grid.png the
figure. The runs go to --jobs processes at once, each with one BLAS thread.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from ._env import THREAD_VARS

DEFAULT_POOLS = ("cls", "mean")
DEFAULT_LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
DEFAULT_SEEDS = (0, 1, 2)
DATASETS = ("shapes", "mnist-test-split")
# The model and data of the default grid: the `tinyvit train` tiny preset on shapes, on
# fewer images and epochs (30 runs must finish in minutes on two cores).
MODELS = {"shapes": dict(image_size=32, in_channels=3, patch_size=8, dim=64, depth=3, heads=4,
                         mlp_dim=128),
          "mnist-test-split": dict(image_size=28, in_channels=1, patch_size=7, dim=64, depth=3,
                                   heads=4, mlp_dim=128)}
SHAPES_N_VAL = 2000


# --- one run ---------------------------------------------------------------------------------
def run_key(pool: str, lr: float, seed: int) -> str:
    """The run's file name stem, e.g. "cls_lr0.001_seed0"."""
    return f"{pool}_lr{lr:g}_seed{seed}"


_DATA = {}


def _data(settings: dict):
    """(train, val) for the settings, loaded once per process."""
    from .datasets import load_dataset
    key = json.dumps({k: settings[k] for k in ("dataset", "data_dir", "n_train")}, sort_keys=True)
    if key not in _DATA:
        if settings["dataset"] == "shapes":
            _DATA[key] = load_dataset("shapes", image_size=32, n_train=settings["n_train"],
                                      n_test=SHAPES_N_VAL, seed=0)
        else:
            _DATA[key] = load_dataset(settings["dataset"], settings["data_dir"],
                                      download=settings["download"], seed=0)
    return _DATA[key]


def train_model(settings: dict, pool: str, lr: float, seed: int, model_kw: dict | None = None):
    """Train one model as the grid does -> (model, result record (JSON-able)).

    model_kw: more ViTConfig fields (e.g. num_registers) on top of the grid's model."""
    from .model import ViT, ViTConfig
    from .train import TrainConfig, TrainingDiverged, train
    train_ds, val_ds = _data(settings)
    mcfg = ViTConfig(**MODELS[settings["dataset"]], num_classes=train_ds.num_classes, pool=pool,
                     seed=seed, **(model_kw or {}))
    tcfg = TrainConfig(epochs=settings["epochs"], batch_size=settings["batch_size"], lr=lr,
                       min_lr=min(1e-5, lr), warmup=1.0, seed=seed, workers=1,
                       augment_flip=settings["dataset"] == "shapes",
                       augment_pad=1 if settings["dataset"] != "shapes" else 0)
    model = ViT(mcfg)
    start = time.perf_counter()
    record = {"pool": pool, "lr": lr, "seed": seed, "diverged": False}
    try:
        history = train(model, train_ds, val_ds, tcfg, progress=False)
        last = history["epochs"][-1]
        record.update(val_acc=last["val_acc"], val_loss=last["val_loss"],
                      train_acc=last["train_acc"], train_loss=last["train_loss"],
                      best_val_acc=max(e["val_acc"] for e in history["epochs"]))
    except TrainingDiverged as err:
        record.update(diverged=True, error=str(err), val_acc=None)
    record["seconds"] = round(time.perf_counter() - start, 2)
    return model, record


def train_one(settings: dict, pool: str, lr: float, seed: int) -> dict:
    """Train one model of the grid; returns its result record (JSON-able)."""
    return train_model(settings, pool, lr, seed)[1]


def _write_text(path: Path, text: str) -> None:
    """Write text atomically (a temporary file in the same folder, then rename)."""
    from .train import _atomic_write_text
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(path, text)


def _write_json(path: Path, obj) -> None:
    _write_text(path, json.dumps(obj, indent=1) + "\n")


def _in_processes(fn, tasks: list, jobs: int):
    """Yield fn(*task) for every task, as each finishes: in this process when jobs == 1 or
    there is one task, else in ``jobs`` fresh processes with one BLAS thread each (fn must
    be a module-level function; its arguments and result go through pipes)."""
    if jobs == 1 or len(tasks) <= 1:
        for task in tasks:
            yield fn(*task)
        return
    import multiprocessing
    saved = {v: os.environ.get(v) for v in THREAD_VARS}
    os.environ.update({v: "1" for v in THREAD_VARS})       # read by each process as it starts
    try:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as ex:
            futures = [ex.submit(fn, *task) for task in tasks]
            for f in as_completed(futures):
                yield f.result()
    finally:
        for v, old in saved.items():
            if old is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = old


def _worker(settings, pool, lr, seed, path):
    record = train_one(settings, pool, lr, seed)
    _write_json(Path(path), record)
    return record


# --- the grid --------------------------------------------------------------------------------
def grid_settings(dataset="shapes", data_dir="data", download=True, epochs=8, n_train=8000,
                  batch_size=64) -> dict:
    """The settings every run of a grid shares (what train_model needs besides pool, lr, seed)."""
    return {"dataset": dataset, "data_dir": str(data_dir), "download": bool(download),
            "epochs": epochs, "n_train": n_train if dataset == "shapes" else None,
            "batch_size": batch_size, "model": MODELS[dataset]}


def run_grid(out, pools=DEFAULT_POOLS, lrs=DEFAULT_LRS, seeds=DEFAULT_SEEDS, *, dataset="shapes",
             data_dir="data", download=True, epochs=8, n_train=8000, batch_size=64, jobs=2,
             stream=None) -> list[dict]:
    """Train every (pool, lr, seed) not yet in out/runs/; returns every run's record.

    The settings that every run shares (dataset, epochs, n_train, batch size, model) are kept
    in out/grid.json: a rerun into the same folder with other settings is refused, so results
    of different grids are never mixed.
    """
    from ._checks import check_choice, check_int
    from .model import POOLS
    stream = sys.stdout if stream is None else stream
    check_choice("dataset", dataset, DATASETS)
    for name, values in (("pools", pools), ("lrs", lrs), ("seeds", seeds)):
        if not values:
            raise ValueError(f"{name}: expected at least one value, got none")
    for p in pools:
        check_choice("pools", p, POOLS)
    for lr in lrs:
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (0 < lr < math.inf):
            raise ValueError(f"lrs: expected positive finite numbers, got {lr!r}")
    for s in seeds:
        check_int("seeds", s, minimum=0)
    for name, v in (("epochs", epochs), ("n_train", n_train), ("batch_size", batch_size), ("jobs", jobs)):
        check_int(name, v, minimum=1)
    out = Path(out)
    settings = grid_settings(dataset, data_dir, download, epochs, n_train, batch_size)
    shared = {k: v for k, v in settings.items() if k not in ("data_dir", "download")}
    grid_file = out / "grid.json"
    if grid_file.is_file():
        old = json.loads(grid_file.read_text(encoding="utf-8"))
        if old != shared:
            diff = ", ".join(f"{k}: {old.get(k)!r} there, {shared.get(k)!r} asked"
                             for k in sorted(set(old) | set(shared)) if old.get(k) != shared.get(k))
            raise ValueError(f"out: {out} holds a grid with other settings ({diff}); "
                             "choose another --out")
    else:
        _write_json(grid_file, shared)

    todo, done = [], []
    for pool in pools:
        for lr in lrs:
            for seed in seeds:
                path = out / "runs" / f"{run_key(pool, lr, seed)}.json"
                if path.is_file():
                    done.append(json.loads(path.read_text(encoding="utf-8")))
                else:
                    todo.append((pool, float(lr), int(seed), path))
    total = len(todo) + len(done)
    print(f"lr-grid: {total} runs ({len(pools)} poolings x {len(lrs)} learning rates x "
          f"{len(seeds)} seeds) on {dataset}, {epochs} epochs each; {len(done)} already done, "
          f"{len(todo)} to train" + (f" with {min(jobs, len(todo))} process(es)" if todo else ""),
          file=stream, flush=True)
    start = time.perf_counter()

    def report(record, i):
        acc = "diverged" if record["diverged"] else f"held-out accuracy {record['val_acc']:.4f}"
        print(f"[{i}/{total}] pool={record['pool']:<13} lr={record['lr']:<7g} seed={record['seed']}: "
              f"{acc} ({record['seconds']:.0f} s; {time.perf_counter() - start:.0f} s so far)",
              file=stream, flush=True)

    results = list(done)
    tasks = [(settings, pool, lr, seed, str(path)) for pool, lr, seed, path in todo]
    for record in _in_processes(_worker, tasks, jobs):
        results.append(record)
        report(record, len(results))
    order = {(p, float(lr), int(s)): i for i, (p, lr, s) in
             enumerate((p, lr, s) for p in pools for lr in lrs for s in seeds)}
    results = [r for r in results if (r["pool"], float(r["lr"]), int(r["seed"])) in order]
    results.sort(key=lambda r: order[(r["pool"], float(r["lr"]), int(r["seed"]))])
    return results


def summarize(results: list[dict]) -> list[dict]:
    """One row per (pool, lr): mean, sample standard deviation, min and max of the final
    held-out accuracy over the seeds (diverged runs counted apart)."""
    rows = {}
    for r in results:
        rows.setdefault((r["pool"], float(r["lr"])), []).append(r)
    out = []
    for (pool, lr), runs in rows.items():
        accs = np.array([r["val_acc"] for r in runs if not r["diverged"]], dtype=np.float64)
        out.append({"pool": pool, "lr": lr, "seeds": len(runs), "diverged": len(runs) - accs.size,
                    "mean": float(accs.mean()) if accs.size else float("nan"),
                    "std": float(accs.std(ddof=1)) if accs.size > 1 else float("nan"),
                    "min": float(accs.min()) if accs.size else float("nan"),
                    "max": float(accs.max()) if accs.size else float("nan")})
    return out


def best_lr(summary: list[dict]) -> dict:
    """pool -> the row of its best mean accuracy."""
    best = {}
    for row in summary:
        if not math.isnan(row["mean"]) and (row["pool"] not in best or row["mean"] > best[row["pool"]]["mean"]):
            best[row["pool"]] = row
    return best


def format_table(summary: list[dict]) -> str:
    """A markdown table: one row per learning rate, one column per pooling,
    "mean ± std (min-max)" of the held-out accuracy in percent."""
    pools = list(dict.fromkeys(r["pool"] for r in summary))
    lrs = sorted({r["lr"] for r in summary})
    cell = {(r["pool"], r["lr"]): r for r in summary}
    best = best_lr(summary)
    lines = ["| learning rate | " + " | ".join(pools) + " |",
             "|---:|" + "---:|" * len(pools)]
    for lr in lrs:
        cells = []
        for p in pools:
            r = cell.get((p, lr))
            if r is None:
                cells.append("")
                continue
            if math.isnan(r["mean"]):
                text = "diverged"
            elif math.isnan(r["std"]):                   # one seed: no spread to show
                text = f"{100 * r['mean']:.1f}"
            else:
                text = (f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f} "
                        f"({100 * r['min']:.1f}-{100 * r['max']:.1f})")
            if r["diverged"] and not math.isnan(r["mean"]):
                text += f", {r['diverged']} diverged"
            if best.get(p) is r:
                text = f"**{text}**"
            cells.append(text)
        lines.append(f"| {lr:g} | " + " | ".join(cells) + " |")
    n = max(r["seeds"] for r in summary)
    lines.append("")
    lines.append(f"Held-out accuracy (%) after the last epoch: mean ± sample standard deviation "
                 f"(min-max) over {n} seeds; bold: each pooling's best learning rate.")
    return "\n".join(lines)


def _csv_text(rows: list[dict], fields) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


def plot_grid(results: list[dict], title: str | None = None):
    """Held-out accuracy against learning rate (log scale), one line per pooling: the mean over
    seeds with a band from min to max, each seed's run as a dot."""
    import matplotlib.pyplot as plt
    summary = summarize(results)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, pool in enumerate(dict.fromkeys(r["pool"] for r in summary)):
        rows = sorted((r for r in summary if r["pool"] == pool), key=lambda r: r["lr"])
        lrs = np.array([r["lr"] for r in rows])
        mean = 100 * np.array([r["mean"] for r in rows])
        color = f"C{i}"
        ax.plot(lrs, mean, "-o", color=color, label=pool, lw=2, ms=5)
        ax.fill_between(lrs, [100 * r["min"] for r in rows], [100 * r["max"] for r in rows],
                        color=color, alpha=0.15, lw=0)
        runs = [r for r in results if r["pool"] == pool and not r["diverged"]]
        ax.scatter([r["lr"] for r in runs], [100 * r["val_acc"] for r in runs], s=10,
                   color=color, alpha=0.6)
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate (AdamW, cosine schedule)")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title(title or "Held-out accuracy against learning rate, per pooling")
    ax.grid(alpha=0.3)
    ax.legend(title="pool")
    fig.tight_layout()
    return fig


def write_outputs(out, results: list[dict], title: str | None = None) -> list[Path]:
    """results.csv, summary.csv, summary.md and lr_grid.png in out; returns their paths."""
    out = Path(out)
    summary = summarize(results)
    paths = [out / "results.csv", out / "summary.csv", out / "summary.md", out / "lr_grid.png"]
    _write_text(paths[0], _csv_text(results, ["pool", "lr", "seed", "val_acc", "best_val_acc",
                                              "val_loss", "train_acc", "train_loss", "diverged",
                                              "seconds"]))
    _write_text(paths[1], _csv_text(summary, ["pool", "lr", "seeds", "diverged", "mean", "std",
                                              "min", "max"]))
    _write_text(paths[2], format_table(summary) + "\n")
    fig = plot_grid(results, title)
    fd, tmp = tempfile.mkstemp(prefix=".lr_grid.", suffix=".png", dir=out)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, paths[3])
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
        import matplotlib.pyplot as plt
        plt.close(fig)
    return paths


# --- command line ----------------------------------------------------------------------------
def _number(kind, minimum, strict):
    """An argparse type: a finite number of ``kind`` above minimum (strict) or at least it."""
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not math.isfinite(v) or v < minimum or (strict and v == minimum):
            raise argparse.ArgumentTypeError(
                f"expected a finite number {'>' if strict else '>='} {minimum}, got {text!r}")
        return v
    return parse


_positive_float = _number(float, 0, strict=True)
_positive_int = _number(int, 1, strict=False)
_nonneg_int = _number(int, 0, strict=False)


def add_command(subparsers) -> None:
    from .model import POOLS
    p = subparsers.add_parser(
        "lr-grid", help="train a grid of poolings x learning rates x seeds (the CLS learning-rate trap)",
        description="Train the same small ViT with each pooling at each learning rate, several "
                    "seeds each, and report held-out accuracy against learning rate per pooling "
                    "(the ViT paper's appendix D.3: average pooling first looked worse than the CLS "
                    "token, until its own learning rate was tuned). Finished runs are kept in "
                    "OUT/runs/ and skipped when the command is run again.")
    p.add_argument("--pools", nargs="+", choices=POOLS, default=list(DEFAULT_POOLS),
                   help="poolings to compare (default: cls mean)")
    p.add_argument("--lrs", nargs="+", type=_positive_float, default=list(DEFAULT_LRS),
                   help="peak learning rates (default: " + " ".join(f"{v:g}" for v in DEFAULT_LRS) + ")")
    p.add_argument("--seeds", nargs="+", type=_nonneg_int, default=list(DEFAULT_SEEDS),
                   help="seeds: initialisation and batch order (default: 0 1 2)")
    p.add_argument("--dataset", choices=DATASETS, default="shapes",
                   help="shapes (built in, the default) or mnist-test-split (MNIST t10k files in --data-dir)")
    p.add_argument("--data-dir", default="data", metavar="DIR",
                   help="where MNIST lives (default data/; ../shared/data has the t10k files)")
    p.add_argument("--no-download", action="store_true", help="never download; fail if files are missing")
    p.add_argument("--epochs", type=_positive_int, default=8, help="epochs per run (default 8)")
    p.add_argument("--n-train", type=_positive_int, default=8000,
                   help=f"shapes: training images (default 8000; {SHAPES_N_VAL} held out)")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="default 64")
    p.add_argument("--jobs", type=_positive_int, default=2,
                   help="runs trained at once, one process and one BLAS thread each (default 2)")
    p.add_argument("--out", default="runs/lr-grid", metavar="DIR",
                   help="output folder (default runs/lr-grid); a rerun into it skips finished runs")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_lr_grid)


def cmd_lr_grid(args) -> int:
    stream = open(os.devnull, "w") if args.quiet else sys.stdout
    try:
        results = run_grid(args.out, args.pools, args.lrs, args.seeds, dataset=args.dataset,
                           data_dir=args.data_dir, download=not args.no_download, epochs=args.epochs,
                           n_train=args.n_train, batch_size=args.batch_size, jobs=args.jobs,
                           stream=stream)
    finally:
        if args.quiet:
            stream.close()
    title = f"{args.dataset}: held-out accuracy against learning rate"
    paths = write_outputs(args.out, results, title)
    print(format_table(summarize(results)))
    print("saved: " + ", ".join(str(p) for p in paths))
    return 0
