"""`tinyvit probes`: what the tokens carry after every block, read with linear probes.

A linear probe is a linear classifier fitted on a frozen model's hidden states: if it
reaches high accuracy, the class is linearly readable from those states. After the
embedding and after every block, three probes are fitted on the residual stream:

  cls     the CLS token's state                      (B, D)
  mean    the mean of the patch tokens               (B, D)
  patch   a single patch token: one probe shared by all N positions, fitted on every
          patch token of every training image (labelled with its image's class) and
          scored on every patch token of the held-out images, so its accuracy is
          that of a typical single token

Raghu et al. (2021, "Do Vision Transformers See Like Convolutional Neural Networks?")
found that single patch tokens of a CLS-trained ViT probe poorly in the last blocks,
while those of a mean-pooled ViT probe well: only the CLS token is asked to gather
the class. They also found the skip connections dominate: the residual stream's norm
against the norms of what the attention and MLP branches add shows which tokens a
block changes much and which it passes along. ``branch_norms`` measures that per
block, for the CLS token and the patch tokens apart.

The probes are closed-form ridge regressions onto one-hot targets (features
standardised on the probe's training images; prediction: the largest output). No
iterations, no learning rate: the same numbers for the same inputs.

    tinyvit probes runs/shapes                      # a checkpoint from tinyvit train
    tinyvit probes runs/mnist --n-train 4000

Writes OUT/probes.json, OUT/probes.csv, OUT/probes.png (accuracy against depth) and
OUT/norms.png (OUT defaults to the checkpoint's folder/probes).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import numpy as np

KINDS = ("cls", "mean", "patch")
RIDGE = 1e-2                 # the ridge penalty, relative to the mean feature variance (1 after standardising)


# --- features --------------------------------------------------------------------------------
def stage_features(model, images: np.ndarray, batch_size: int = 256) -> dict:
    """The residual stream after the embedding and after each block, read three ways.

    Returns {"cls": [(B, D)] or None, "mean": [(B, D)], "patch": [(B, N, D)]}, one array
    per stage (depth + 1 stages: the embedding, then every block), in float64.
    """
    cfg = model.config
    first = cfg.num_prefix_tokens
    out = {"cls": [] if cfg.class_token else None, "mean": [], "patch": []}
    parts = []
    for i in range(0, images.shape[0], batch_size):
        s = model.residual_streams(images[i:i + batch_size])
        parts.append([s["embed"]] + [b["out"] for b in s["blocks"]])
    for j in range(cfg.depth + 1):
        x = np.concatenate([p[j] for p in parts]).astype(np.float64)        # (B, T, D)
        if cfg.class_token:
            out["cls"].append(x[:, 0])
        out["mean"].append(x[:, first:].mean(axis=1))
        out["patch"].append(x[:, first:])
    return out


# --- the probe -------------------------------------------------------------------------------
def fit_ridge(X: np.ndarray, y: np.ndarray, num_classes: int, ridge: float = RIDGE):
    """A linear probe by ridge regression onto one-hot targets.

    X (n, D) features, y (n,) labels -> (mu (D,), sd (D,), W (D + 1, K)): the features are
    standardised with mu and sd, then W = argmin |[Xs, 1] W - Y|^2 + ridge * n * |W|^2
    (the bias row unpenalised), solved in closed form.
    """
    X = np.asarray(X, dtype=np.float64)
    n, D = X.shape
    mu = X.mean(axis=0)
    sd = X.std(axis=0)
    sd[sd == 0] = 1.0
    Xs = np.concatenate([(X - mu) / sd, np.ones((n, 1))], axis=1)          # (n, D + 1)
    Y = np.zeros((n, num_classes))
    Y[np.arange(n), y] = 1.0
    penalty = np.full(D + 1, ridge * n)
    penalty[-1] = 0.0                                                      # no penalty on the bias
    W = np.linalg.solve(Xs.T @ Xs + np.diag(penalty), Xs.T @ Y)            # (D + 1, K)
    return mu, sd, W


def probe_predict(probe, X: np.ndarray) -> np.ndarray:
    """Labels (n,) the probe predicts for features X (n, D)."""
    mu, sd, W = probe
    Xs = (np.asarray(X, dtype=np.float64) - mu) / sd
    return np.argmax(Xs @ W[:-1] + W[-1], axis=1)


def run_probes(model, train_images, train_labels, test_images, test_labels,
               ridge: float = RIDGE) -> dict:
    """Probe accuracies on the test images: {"cls": [...] or None, "mean": [...],
    "patch": [...]}, one number per stage (the embedding, then each block)."""
    K = model.config.num_classes
    tr = stage_features(model, train_images)
    te = stage_features(model, test_images)
    N = model.config.num_patches
    acc = {}
    for kind in KINDS:
        if tr[kind] is None:
            acc[kind] = None
            continue
        acc[kind] = []
        for a, b in zip(tr[kind], te[kind]):
            ya, yb = train_labels, test_labels
            if kind == "patch":                          # every patch token, labelled by its image
                a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
                ya, yb = np.repeat(train_labels, N), np.repeat(test_labels, N)
            probe = fit_ridge(a, ya, K, ridge)
            acc[kind].append(float(np.mean(probe_predict(probe, b) == yb)))
    return acc


# --- norms along the residual stream ---------------------------------------------------------
def branch_norms(model, images: np.ndarray, batch_size: int = 256) -> dict:
    """Per block, the mean L2 norm (over images, and over the patch tokens for "patch") of
    the residual stream entering the block, of the attention branch's output and of the MLP
    branch's output, for the CLS token and for the patch tokens.

    Returns {"cls": {"stream": [...], "attn": [...], "mlp": [...]} or None,
             "patch": {...}}, one number per block.
    """
    cfg = model.config
    first = cfg.num_prefix_tokens
    sums = {k: {t: np.zeros(cfg.depth) for t in ("stream", "attn", "mlp")} for k in ("cls", "patch")}
    n = 0
    for i in range(0, images.shape[0], batch_size):
        s = model.residual_streams(images[i:i + batch_size])
        x = s["embed"]
        for j, b in enumerate(s["blocks"]):
            for what, arr in (("stream", x), ("attn", b["attn"]), ("mlp", b["mlp"])):
                norm = np.linalg.norm(arr.astype(np.float64), axis=-1)     # (B, T)
                sums["cls"][what][j] += norm[:, 0].sum()
                sums["patch"][what][j] += norm[:, first:].mean(axis=1).sum()
            x = b["out"]
        n += x.shape[0]
    out = {k: {t: (v / n).tolist() for t, v in d.items()} for k, d in sums.items()}
    if not cfg.class_token:
        out["cls"] = None
    return out


# --- figures ---------------------------------------------------------------------------------
def plot_probes(acc: dict, chance: float, title: str | None = None):
    """Probe accuracy against depth, one line per kind of state."""
    import matplotlib.pyplot as plt
    labels = {"cls": "CLS token", "mean": "mean of patch tokens", "patch": "one patch token"}
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    depth = None
    for kind in KINDS:
        if acc.get(kind) is None:
            continue
        values = 100 * np.asarray(acc[kind])
        depth = len(values) - 1
        ax.plot(np.arange(len(values)), values, "-o", label=labels[kind], lw=2, ms=5)
    ax.axhline(100 * chance, color="0.5", ls=":", label="chance")
    ax.set_xticks(range(depth + 1))
    ax.set_xticklabels(["embed"] + [str(i) for i in range(1, depth + 1)])
    ax.set_xlabel("after block")
    ax.set_ylabel("linear probe accuracy, held out (%)")
    ax.set_title(title or "What a linear probe reads from each kind of token")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_norms(norms: dict, title: str | None = None):
    """Per block: the residual stream's norm against the two branches', CLS and patches apart."""
    import matplotlib.pyplot as plt
    kinds = [k for k in ("cls", "patch") if norms.get(k) is not None]
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.0 * len(kinds), 3.8), squeeze=False)
    names = {"cls": "CLS token", "patch": "patch tokens (mean over tokens)"}
    for ax, kind in zip(axes[0], kinds):
        d = norms[kind]
        blocks = np.arange(1, len(d["stream"]) + 1)
        ax.plot(blocks, d["stream"], "-o", color="k", label="residual stream into the block")
        ax.plot(blocks, d["attn"], "-s", color="C0", label="attention branch adds")
        ax.plot(blocks, d["mlp"], "-^", color="C1", label="MLP branch adds")
        ax.set_xticks(blocks)
        ax.set_xlabel("block")
        ax.set_ylabel("mean L2 norm")
        ax.set_yscale("log")
        ax.set_title(names[kind])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title or "Residual stream against the branches, per block")
    fig.tight_layout()
    return fig


def format_probes(acc: dict) -> str:
    """A markdown table: one row per stage, one column per kind, accuracy in percent."""
    kinds = [k for k in KINDS if acc.get(k) is not None]
    n = len(acc[kinds[0]])
    lines = ["| after | " + " | ".join(kinds) + " |", "|---|" + "---:|" * len(kinds)]
    for j in range(n):
        lines.append(f"| {'embed' if j == 0 else f'block {j}'} | "
                     + " | ".join(f"{100 * acc[k][j]:.1f}" for k in kinds) + " |")
    return "\n".join(lines)


def format_norms(norms: dict) -> str:
    """A markdown table of branch_norms: per block, stream / attention / MLP norms."""
    kinds = [k for k in ("cls", "patch") if norms.get(k) is not None]
    head = " | ".join(f"{k} stream | {k} attn | {k} mlp" for k in kinds)
    lines = [f"| block | {head} |", "|---:|" + "---:|" * (3 * len(kinds))]
    for j in range(len(norms["patch"]["stream"])):
        cells = " | ".join(f"{norms[k]['stream'][j]:.2f} | {norms[k]['attn'][j]:.2f} | "
                           f"{norms[k]['mlp'][j]:.2f}" for k in kinds)
        lines.append(f"| {j + 1} | {cells} |")
    return "\n".join(lines)


# --- command line ----------------------------------------------------------------------------
def _probe_data(ck, n_train: int, n_test: int, data_dir=None):
    """(train images, labels, test images, labels) for a checkpoint trained by tinyvit train:
    its own dataset (meta["dataset"]), normalised as in training."""
    from .cli import _load_data
    from .train import normalize_images
    spec = ck.meta.get("dataset")
    if not spec:
        raise ValueError(f"checkpoint: {ck.path} does not record its dataset (meta['dataset']); "
                         "probe it from Python with run_probes(model, ...)")
    spec = dict(spec)
    if data_dir is not None:
        spec["data_dir"] = str(data_dir)
    train_ds, val_ds = _load_data(spec)
    norm = ck.meta.get("normalize", "image")
    dtype = ck.model_config.dtype
    tr = normalize_images(train_ds.images[:n_train], norm).astype(dtype)
    te = normalize_images(val_ds.images[:n_test], norm).astype(dtype)
    return tr, train_ds.labels[:n_train], te, val_ds.labels[:n_test]


def add_command(subparsers) -> None:
    p = subparsers.add_parser(
        "probes", help="linear probes on the CLS token, the patch mean and single patch tokens, "
                       "after every block; residual-stream norms",
        description="Fit closed-form ridge probes on the residual stream after the embedding and "
                    "every block of a trained model (CLS token, mean of the patch tokens, single "
                    "patch tokens), score them on held-out images, and measure per block the "
                    "norm of the residual stream against the norms of the attention and MLP "
                    "branches.")
    p.add_argument("checkpoint", help="a checkpoint from tinyvit train (file or run folder)")
    p.add_argument("--n-train", type=int, default=2000, help="probe training images (default 2000)")
    p.add_argument("--n-test", type=int, default=1000, help="held-out images to score (default 1000)")
    p.add_argument("--data-dir", default=None, metavar="DIR", help="where the dataset lives, if moved")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default CHECKPOINT's folder/probes)")
    p.set_defaults(func=cmd_probes)


def cmd_probes(args) -> int:
    from .checkpoint import load_checkpoint
    from .train import CHECKPOINT_NAME
    for name in ("n_train", "n_test"):
        if getattr(args, name) < 2:
            raise ValueError(f"--{name.replace('_', '-')}: expected at least 2 images, "
                             f"got {getattr(args, name)}")
    path = Path(args.checkpoint)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    ck = load_checkpoint(path)
    model = ck.model()
    tr, ytr, te, yte = _probe_data(ck, args.n_train, args.n_test, args.data_dir)
    acc = run_probes(model, tr, ytr, te, yte)
    norms = branch_norms(model, te)
    out = Path(args.out) if args.out else path.parent / "probes"
    out.mkdir(parents=True, exist_ok=True)
    from .lrgrid import _write_text
    report = {"checkpoint": str(path), "pool": model.config.pool, "n_train": int(len(ytr)),
              "n_test": int(len(yte)), "ridge": RIDGE, "accuracy": acc, "norms": norms}
    _write_text(out / "probes.json", json.dumps(report, indent=1) + "\n")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["stage"] + [k for k in KINDS if acc[k] is not None])
    for j in range(model.config.depth + 1):
        w.writerow([j] + [f"{acc[k][j]:.4f}" for k in KINDS if acc[k] is not None])
    _write_text(out / "probes.csv", buf.getvalue())
    import matplotlib.pyplot as plt
    name = f"{ck.meta.get('dataset', {}).get('name', 'data')}, pool={model.config.pool}"
    for fname, fig in (("probes.png", plot_probes(acc, 1.0 / model.config.num_classes,
                                                  f"Linear probes after each block ({name})")),
                       ("norms.png", plot_norms(norms, f"Residual stream and branches ({name})"))):
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
    print(f"probes on {len(ytr)} training and {len(yte)} held-out images ({name}):")
    print(format_probes(acc))
    print("\nmean L2 norms per block:")
    print(format_norms(norms))
    print(f"saved: {out / 'probes.json'}, {out / 'probes.csv'}, {out / 'probes.png'}, "
          f"{out / 'norms.png'}", file=sys.stdout)
    return 0
