"""`tinyvit registers`: which tokens act as sinks, with and without register tokens.

Darcet et al. (2023, "Vision Transformers Need Registers") saw large ViTs take over a few
low-information patch tokens for global computation: those tokens grow a much larger norm
than the rest and draw much of the attention. Extra learned tokens that nothing pools,
"registers", take that role over and leave the patch tokens clean. In tinyvit's tutorial
8 the unused CLS token of a mean-pooled model still gathers attention, like a register.

This command trains (or reuses) four models on the same data: CLS and mean pooling, each
with 0 and with R registers, and measures per block, on held-out images:

  norms     the L2 norm of every token's output: patch tokens as a histogram, the CLS
            token and the registers marked apart
  received  the attention mass each token receives: A (B, h, T, T) averaged over images,
            heads and the asking tokens, so the T numbers of a block sum to one and a
            uniform spread gives 1/T each

    tinyvit registers                        # shapes, R = 4, 8000 images, 8 epochs each
    tinyvit registers --registers 2 --out runs/registers-2

Writes OUT/models/<name>.npz (reused on a rerun), OUT/registers.json, the figures
OUT/registers_norms.png and OUT/registers_attention.png, and prints a table.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from .lrgrid import SHAPES_N_VAL, _positive_float, _positive_int, _write_text, grid_settings


def model_name(pool: str, registers: int) -> str:
    return f"{pool}_reg{registers}"


# --- measurements ----------------------------------------------------------------------------
def token_roles(config) -> list[str]:
    """The role of each of the T tokens: "cls", "reg" or "patch"."""
    return (["cls"] if config.class_token else []) + ["reg"] * config.num_registers + \
        ["patch"] * config.num_patches


def token_diagnostics(model, images: np.ndarray, batch_size: int = 256) -> dict:
    """Per block: every token's output norm and the attention mass every token receives.

    Returns {"roles": [T roles], "norms": [(B, T) per block], "received": [(T,) per block]}.
    received[i][j] is block i's attention to token j, averaged over images, heads and
    asking tokens (each block's sums to one; uniform is 1/T).
    """
    cfg = model.config
    norms = [[] for _ in range(cfg.depth)]
    received = [np.zeros(cfg.num_tokens) for _ in range(cfg.depth)]
    n = 0
    for i in range(0, images.shape[0], batch_size):
        x = images[i:i + batch_size]
        streams = model.residual_streams(x)
        attn = model.forward(x)[1]["attn"]
        for j in range(cfg.depth):
            out = streams["blocks"][j]["out"].astype(np.float64)
            norms[j].append(np.linalg.norm(out, axis=-1))                  # (b, T)
            received[j] += attn[j].astype(np.float64).mean(axis=(1, 2)).sum(axis=0)   # (T,)
        n += x.shape[0]
    return {"roles": token_roles(cfg), "norms": [np.concatenate(v) for v in norms],
            "received": [r / n for r in received]}


def summarize(diag: dict) -> list[dict]:
    """Per block: the attention received by the CLS token, by all registers together, by the
    average and by the most-attended patch token; the mean output norm of the CLS token, the
    registers and the patch tokens, and the largest patch-token norm."""
    roles = np.array(diag["roles"])
    rows = []
    for j, (norm, rec) in enumerate(zip(diag["norms"], diag["received"])):
        patch = roles == "patch"
        row = {"block": j + 1, "T": int(roles.size), "uniform": 1.0 / roles.size,
               "to_cls": float(rec[roles == "cls"].sum()) if "cls" in roles else None,
               "to_registers": float(rec[roles == "reg"].sum()) if "reg" in roles else None,
               "to_patch_mean": float(rec[patch].mean()), "to_patch_max": float(rec[patch].max()),
               "norm_cls": float(norm[:, roles == "cls"].mean()) if "cls" in roles else None,
               "norm_registers": float(norm[:, roles == "reg"].mean()) if "reg" in roles else None,
               "norm_patch_mean": float(norm[:, patch].mean()),
               "norm_patch_max": float(norm[:, patch].max())}
        rows.append(row)
    return rows


def format_summary(results: dict) -> str:
    """A markdown table over models and blocks (attention shares in percent)."""
    lines = ["| model | block | to CLS | to registers | to a patch (mean / max) | uniform | "
             "norm CLS | norm registers | norm patches (mean / max) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"
    num = lambda v: "-" if v is None else f"{v:.1f}"
    for name, rows in results.items():
        for r in rows:
            lines.append(f"| {name} | {r['block']} | {pct(r['to_cls'])} | {pct(r['to_registers'])} | "
                         f"{pct(r['to_patch_mean'])} / {pct(r['to_patch_max'])} | {pct(r['uniform'])} | "
                         f"{num(r['norm_cls'])} | {num(r['norm_registers'])} | "
                         f"{num(r['norm_patch_mean'])} / {num(r['norm_patch_max'])} |")
    return "\n".join(lines)


# --- figures ---------------------------------------------------------------------------------
def plot_norms(diags: dict, title: str | None = None):
    """Rows: models; columns: blocks. Histogram of the patch tokens' output norms; the CLS
    token's and the registers' mean norms as vertical lines."""
    import matplotlib.pyplot as plt
    names = list(diags)
    depth = len(next(iter(diags.values()))["norms"])
    fig, axes = plt.subplots(len(names), depth, figsize=(3.0 * depth, 2.2 * len(names)),
                             squeeze=False)
    for r, name in enumerate(names):
        d = diags[name]
        roles = np.array(d["roles"])
        for j in range(depth):
            ax = axes[r, j]
            norm = d["norms"][j]
            ax.hist(norm[:, roles == "patch"].ravel(), bins=40, color="0.6", label="patch tokens")
            if "cls" in roles:
                ax.axvline(norm[:, roles == "cls"].mean(), color="C3", lw=2, label="CLS")
            for k, idx in enumerate(np.flatnonzero(roles == "reg")):
                ax.axvline(norm[:, idx].mean(), color="C0", lw=1.5, ls="--",
                           label="registers" if k == 0 else None)
            if r == 0:
                ax.set_title(f"block {j + 1}")
            if j == 0:
                ax.set_ylabel(f"{name}\ntokens")
            if r == len(names) - 1:
                ax.set_xlabel("output norm")
            if r == 0 and j == depth - 1:
                ax.legend(fontsize=7)
    fig.suptitle(title or "Token output norms per block (patch tokens: histogram; CLS, registers: lines)")
    fig.tight_layout()
    return fig


def plot_received(diags: dict, title: str | None = None):
    """Rows: models; columns: blocks. Bars: the attention mass each token receives, the CLS
    token and registers coloured; the dotted line is the uniform 1/T."""
    import matplotlib.pyplot as plt
    names = list(diags)
    depth = len(next(iter(diags.values()))["received"])
    fig, axes = plt.subplots(len(names), depth, figsize=(3.0 * depth, 2.2 * len(names)),
                             squeeze=False)
    colors = {"cls": "C3", "reg": "C0", "patch": "0.6"}
    for r, name in enumerate(names):
        d = diags[name]
        T = len(d["roles"])
        for j in range(depth):
            ax = axes[r, j]
            ax.bar(np.arange(T), 100 * d["received"][j], color=[colors[x] for x in d["roles"]],
                   width=0.9)
            ax.axhline(100.0 / T, color="k", ls=":", lw=1)
            if r == 0:
                ax.set_title(f"block {j + 1}")
            if j == 0:
                ax.set_ylabel(f"{name}\nreceived (%)")
            if r == len(names) - 1:
                ax.set_xlabel("token (CLS red, registers blue)")
    fig.suptitle(title or "Attention mass each token receives, per block (dotted: uniform 1/T)")
    fig.tight_layout()
    return fig


# --- training the four models ----------------------------------------------------------------
def _train_and_save(settings, pool, lr, seed, registers, path):
    """(In a worker process.) Train one model and save it with its record in its meta."""
    from .checkpoint import save_checkpoint
    from .lrgrid import train_model
    model, record = train_model(settings, pool, lr, seed, {"num_registers": registers})
    record["num_registers"] = registers
    save_checkpoint(path, model, meta={"record": record, "normalize": "image"})
    return record


def train_models(out, registers: int = 4, pools=("cls", "mean"), *, lr=3e-3, seed=0, epochs=8,
                 n_train=8000, jobs=2, stream=None) -> dict:
    """Train (or load from out/models/) one model per pooling with 0 and with ``registers``
    register tokens; returns {name: ViT}."""
    from .checkpoint import load_checkpoint
    from .lrgrid import _in_processes
    stream = sys.stdout if stream is None else stream
    settings = grid_settings("shapes", epochs=epochs, n_train=n_train)
    out = Path(out)
    (out / "models").mkdir(parents=True, exist_ok=True)
    wanted = [(pool, r) for pool in pools for r in (0, registers)]
    todo = [(settings, pool, lr, seed, r, str(out / "models" / f"{model_name(pool, r)}.npz"))
            for pool, r in wanted if not (out / "models" / f"{model_name(pool, r)}.npz").is_file()]
    print(f"registers: {len(wanted)} models, {len(wanted) - len(todo)} already trained, "
          f"{len(todo)} to train", file=stream, flush=True)
    start = time.perf_counter()
    for rec in _in_processes(_train_and_save, todo, jobs):
        print(f"  trained pool={rec['pool']} registers={rec['num_registers']}: held-out accuracy "
              f"{rec['val_acc']:.4f} ({time.perf_counter() - start:.0f} s so far)", file=stream, flush=True)
    models = {}
    for pool, r in wanted:
        ck = load_checkpoint(out / "models" / f"{model_name(pool, r)}.npz")
        models[model_name(pool, r)] = (ck.model(), ck.meta.get("record", {}))
    return models


def held_out(n: int = 500, n_train: int = 8000):
    """(images (n, H, W, C), labels (n,)): the first n held-out images of the shapes data
    the models trained beside (n_train training images), normalised per image as in training."""
    from .lrgrid import _data
    from .train import normalize_images
    _, val_ds = _data(grid_settings("shapes", n_train=n_train))
    return normalize_images(val_ds.images[:n], "image"), val_ds.labels[:n]


# --- command line ----------------------------------------------------------------------------
def add_command(subparsers) -> None:
    p = subparsers.add_parser(
        "registers", help="token norms and the attention each token receives, with and without "
                          "register tokens, for CLS and mean pooling",
        description="Train CLS- and mean-pooled models with 0 and with R register tokens on the "
                    "shapes data (or reuse them from OUT/models/), then measure per block the "
                    "output norm of every token and the attention mass each token receives.")
    p.add_argument("--registers", type=_positive_int, default=4, help="R (default 4)")
    p.add_argument("--lr", type=_positive_float, default=3e-3, help="peak learning rate (default 3e-3)")
    p.add_argument("--epochs", type=_positive_int, default=8, help="default 8")
    p.add_argument("--n-train", type=_positive_int, default=8000,
                   help=f"training images (default 8000; {SHAPES_N_VAL} held out)")
    p.add_argument("--n-images", type=_positive_int, default=500,
                   help="held-out images measured (default 500)")
    p.add_argument("--seed", type=int, default=0, help="default 0")
    p.add_argument("--jobs", type=_positive_int, default=2, help="models trained at once (default 2)")
    p.add_argument("--out", default="runs/registers", metavar="DIR", help="default runs/registers")
    p.set_defaults(func=cmd_registers)


def cmd_registers(args) -> int:
    import matplotlib.pyplot as plt
    if args.seed < 0:
        raise ValueError(f"--seed: expected a whole number >= 0, got {args.seed}")
    out = Path(args.out)
    models = train_models(out, args.registers, lr=args.lr, seed=args.seed, epochs=args.epochs,
                          n_train=args.n_train, jobs=args.jobs)
    images = held_out(min(args.n_images, SHAPES_N_VAL), args.n_train)[0]
    diags = {name: token_diagnostics(m, images) for name, (m, _) in models.items()}
    results = {name: summarize(d) for name, d in diags.items()}
    report = {"registers": args.registers, "n_images": int(images.shape[0]),
              "accuracy": {name: rec.get("val_acc") for name, (_, rec) in models.items()},
              "blocks": results,
              "received": {name: [r.tolist() for r in d["received"]] for name, d in diags.items()},
              "roles": {name: d["roles"] for name, d in diags.items()}}
    _write_text(out / "registers.json", json.dumps(report, indent=1) + "\n")
    paths = [out / "registers_norms.png", out / "registers_attention.png"]
    for path, fig in zip(paths, (plot_norms(diags), plot_received(diags))):
        fig.savefig(path, dpi=100)
        plt.close(fig)
    for name, acc in report["accuracy"].items():
        print(f"{name}: held-out accuracy {acc:.4f}")
    print(format_summary(results))
    print("saved: " + ", ".join(str(p) for p in [out / "registers.json", *paths]))
    return 0
