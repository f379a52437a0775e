"""The CLS token as a regressor: one box per image, alone or together with the class.

  images (B, H, W, C)
    -> ViT.forward_tokens                 tokens (B, T, D) after the final layer norm
    -> box pool  (BoxConfig.box_pool)     (B, D)
         "cls"   token 0, the CLS token (the one the class head reads too, with pool="cls")
         "mean"  the mean of the patch tokens
         "reg"   token 1: a separate [REG] token next to CLS (TransVG's idea: one token for
                 the class, one for the box). It is register 0 of a model with
                 ViTConfig.num_registers >= 1 (timm's reg_token, right after CLS)
         "attn"  one learned query attends over the patch tokens (layers.query_pool_*)
         "map"   timm's attention pooling (AttentionPoolLatent) from tinyvit.layers'
                 attn_pool_forward, when the layer set has it, with its own parameters
    -> box head  sigmoid(pooled @ W + b)  boxes (B, 4) as (cx, cy, w, h) in [0, 1]
  and, for task "class+box", the class head of the ViT on its own pooling (pool="cls"/"mean").

  loss = class_weight * cross-entropy + l1_weight * L1 + giou_weight * (1 - GIoU)

The backward adds the box head's and the class head's gradients at the tokens and hands
them to ViT.backward_tokens. Data: the built-in shapes with the box of each object's mask,
and MNIST digits pasted at random positions and scales on a larger canvas.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import layers as reference_layers
from ._checks import check_array, check_choice, check_float, check_int, describe
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .layers import box as bx
from .model import ViT, ViTConfig
from .optim import AdamW, clip_grad_norm, make_schedule
from .train import normalize_images

TASKS = ("box", "class+box")
BOX_POOLS = ("cls", "mean", "reg", "attn", "map")
CHECKPOINT_NAME = "checkpoint.npz"
INIT_STD = 0.02


# =========================================================== data

@dataclass
class BoxDataset:
    """Images with one object each: its class and its box.

    images       (N, H, W, C) float32 in [0, 1]
    labels       (N,) int64 class indices
    boxes        (N, 4) float64 (cx, cy, w, h) as fractions of the width and height
    class_names  list of K names
    """

    images: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    class_names: list
    name: str = ""

    def __post_init__(self):
        check_array("images", self.images, ndim=4, kind="f")
        n = self.images.shape[0]
        check_array("labels", self.labels, ndim=1, kind="i")
        check_array("boxes", self.boxes, ndim=2, kind="f")
        if self.labels.shape[0] != n or self.boxes.shape != (n, 4):
            raise ValueError(f"labels, boxes: expected shapes ({n},) and ({n}, 4) for {n} images, "
                             f"got {self.labels.shape} and {self.boxes.shape}")
        if n and (self.boxes.min() < 0 or self.boxes.max() > 1):
            raise ValueError(f"boxes: expected (cx, cy, w, h) in [0, 1], got values in "
                             f"[{self.boxes.min():.3g}, {self.boxes.max():.3g}]")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_shape(self) -> tuple:
        return tuple(self.images.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, idx, name: str | None = None) -> "BoxDataset":
        idx = np.asarray(idx)
        return BoxDataset(self.images[idx], self.labels[idx], self.boxes[idx], list(self.class_names),
                          self.name if name is None else name)

    def summary(self) -> str:
        H, W, C = self.image_shape
        return (f"{self.name}: {len(self)} images {H}x{W}x{C}, {self.num_classes} classes, "
                f"mean box {self.boxes[:, 2].mean():.2f} x {self.boxes[:, 3].mean():.2f} of the image")


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """masks (N, H, W) bool -> boxes (N, 4) (cx, cy, w, h): the tightest box around each mask's
    pixels, a pixel counting as the unit square it covers (so a one-pixel mask is 1/W wide)."""
    check_array("masks", masks, ndim=3, kind=None)
    if masks.dtype != np.bool_:
        raise TypeError(f"masks: expected dtype bool, got {masks.dtype}")
    N, H, W = masks.shape
    rows, cols = masks.any(axis=2), masks.any(axis=1)         # (N, H), (N, W)
    empty = ~rows.any(axis=1)
    if empty.any():
        raise ValueError(f"masks: expected every mask to cover a pixel, got {int(empty.sum())} empty "
                         f"(first at index {int(np.argmax(empty))})")
    y0 = rows.argmax(axis=1)
    y1 = H - rows[:, ::-1].argmax(axis=1)                     # one past the last covered row
    x0 = cols.argmax(axis=1)
    x1 = W - cols[:, ::-1].argmax(axis=1)
    return np.stack([(x0 + x1) / (2 * W), (y0 + y1) / (2 * H), (x1 - x0) / W, (y1 - y0) / H], axis=1)


def make_shape_boxes(n: int = 10000, image_size: int = 32, seed: int = 0) -> BoxDataset:
    """The built-in shapes (tinyvit.datasets.make_shapes) with the box of each object's mask."""
    from .datasets import make_shapes
    ds = make_shapes(n, image_size=image_size, seed=seed)
    return BoxDataset(ds.images, ds.labels, boxes_from_masks(ds.masks), list(ds.class_names),
                      f"shapes{image_size}-boxes")


def place_digits(digits: np.ndarray, labels: np.ndarray, n: int, canvas: int = 56,
                 scale_range=(0.5, 1.5), seed: int = 0, noise: float = 0.05,
                 class_names=None) -> BoxDataset:
    """MNIST digits pasted at random positions and scales on a larger dark canvas.

    digits (M, 28, 28) or (M, 28, 28, 1) in [0, 1]; each of the n images takes a random one,
    resizes it by a factor drawn from scale_range (bilinear), and pastes it where it fits
    whole; Gaussian noise (std ``noise``) is added. The box is the tightest one around the
    digit's ink (pixels >= 0.5 after resizing), not around its 28x28 frame. Seeded.
    """
    from PIL import Image

    n = check_int("n", n, minimum=1)
    S = check_int("canvas", canvas, minimum=8)
    seed = check_int("seed", seed, minimum=0)
    check_array("digits", digits, kind="f")
    d = digits[..., 0] if digits.ndim == 4 else digits
    if d.ndim != 3:
        raise ValueError(f"digits: expected (M, h, w) or (M, h, w, 1), got shape {digits.shape}")
    lo = check_float("scale_range[0]", scale_range[0], minimum=0.1)
    hi = check_float("scale_range[1]", scale_range[1], minimum=lo)
    side = max(d.shape[1:])
    if round(side * hi) > S:
        raise ValueError(f"scale_range: expected digits that fit the {S}-pixel canvas (at most "
                         f"{S / side:.3g}x), got up to {hi}x")
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, d.shape[0], size=n)
    scales = rng.uniform(lo, hi, size=n)
    images = np.zeros((n, S, S, 1), dtype=np.float32)
    boxes = np.zeros((n, 4))
    for i in range(n):                                     # a Pillow resize per digit
        img = d[pick[i]]
        h = max(1, int(round(img.shape[0] * scales[i])))
        w = max(1, int(round(img.shape[1] * scales[i])))
        small = np.asarray(Image.fromarray(img.astype(np.float32)).resize((w, h), Image.BILINEAR))
        top, left = rng.integers(0, S - h + 1), rng.integers(0, S - w + 1)
        images[i, top:top + h, left:left + w, 0] = np.clip(small, 0.0, 1.0)
        ink = small >= 0.5
        if not ink.any():                                  # a faint digit: its whole frame
            ink = np.ones_like(ink)
        rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
        y0, y1 = top + rows[0], top + rows[-1] + 1
        x0, x1 = left + cols[0], left + cols[-1] + 1
        boxes[i] = ((x0 + x1) / (2 * S), (y0 + y1) / (2 * S), (x1 - x0) / S, (y1 - y0) / S)
    if noise:
        images += rng.standard_normal(images.shape, dtype=np.float32) * np.float32(noise)
        np.clip(images, 0.0, 1.0, out=images)
    names = list(class_names) if class_names is not None else [str(k) for k in range(10)]
    return BoxDataset(images, labels[pick].astype(np.int64), boxes, names, f"mnist-on-{S}")


DATA_NAMES = ("shapes", "mnist")


def load_box_data(name: str = "shapes", *, data_dir="data", seed: int = 0, n_train: int = 20000,
                  n_val: int = 2000, image_size: int | None = None, download: bool = True):
    """(train, val) BoxDatasets.

    "shapes"  the built-in shapes (image_size default 32) with mask boxes
    "mnist"   digits of MNIST's t10k files (data_dir/mnist/, e.g. data_dir="../shared/data"):
              8,000 of them are pasted into the training images and the other 2,000 into the
              held-out ones, on a canvas of image_size (default 56) pixels
    """
    check_choice("name", name, DATA_NAMES)
    if name == "shapes":
        size = 32 if image_size is None else check_int("image_size", image_size, minimum=8)
        full = make_shape_boxes(n_train + n_val, size, seed)
        idx = np.arange(n_train + n_val)
        return full.subset(idx[:n_train], f"{full.name}/train"), full.subset(idx[n_train:], f"{full.name}/val")
    from .datasets import load_dataset
    size = 56 if image_size is None else check_int("image_size", image_size, minimum=28)
    tr, va = load_dataset("mnist-test-split", data_dir, download=download, seed=seed)
    hi = min(1.5, size / 28)
    train = place_digits(tr.images, tr.labels, n_train, size, (0.5, hi), seed, class_names=tr.class_names)
    val = place_digits(va.images, va.labels, n_val, size, (0.5, hi), seed + 1, class_names=va.class_names)
    train.name, val.name = f"mnist-on-{size}/train", f"mnist-on-{size}/val"
    return train, val


# =========================================================== the model

class _DictConfig:
    """to_dict / from_dict for the JSON in checkpoints (a dataclass mixin)."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        known = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(d, dict) or set(d) - known:
            raise ValueError(f"{cls.__name__}: expected a dict with keys from {sorted(known)}, got {d!r}")
        return cls(**d)


@dataclass
class BoxConfig(_DictConfig):
    """What sits on the ViT's tokens besides its class head, and how the losses are weighed."""

    task: str = "box"              # "box": boxes only; "class+box": the class head trains too
    box_pool: str = "cls"          # which state the box head reads: see the module docstring
    class_weight: float = 1.0      # cross-entropy weight (task "class+box" only)
    l1_weight: float = 5.0         # L1 weight (DETR's)
    giou_weight: float = 2.0       # 1 - GIoU weight (DETR's)

    def __post_init__(self):
        check_choice("task", self.task, TASKS)
        check_choice("box_pool", self.box_pool, BOX_POOLS)
        for k in ("class_weight", "l1_weight", "giou_weight"):
            setattr(self, k, check_float(k, getattr(self, k), minimum=0.0))
        if self.l1_weight == 0 and self.giou_weight == 0:
            raise ValueError("l1_weight, giou_weight: expected at least one above 0, got both 0")



def _has_map_pool(layers) -> bool:
    return all(callable(getattr(layers, f, None))
               for f in ("attn_pool_forward", "attn_pool_backward", "attn_pool_param_shapes"))


def box_param_shapes(vcfg: ViTConfig, bcfg: BoxConfig) -> dict:
    """Names and shapes of the parameters outside the ViT: the box head and its pool's."""
    D = vcfg.dim
    shapes = {"box_head.W": (D, 4), "box_head.b": (4,)}
    if bcfg.box_pool == "attn":
        shapes["box_pool.query"] = (D,)
    elif bcfg.box_pool == "map":
        shapes.update({f"box_pool.{k}": s for k, s in
                       reference_layers.attn_pool_param_shapes(D, vcfg.mlp_dim).items()})
    return shapes


def init_box_params(vcfg: ViTConfig, bcfg: BoxConfig) -> dict:
    """Box head weights normal(0.02) and bias 0, so every first box is near the centred
    (0.5, 0.5, 0.5, 0.5); the query normal(D^-1/2); "map" pools initialised as the model's."""
    rng = np.random.default_rng([vcfg.seed, 16])
    out = {}
    for name, shape in box_param_shapes(vcfg, bcfg).items():
        if name == "box_pool.query" or name == "box_pool.latent":
            v = rng.standard_normal(shape) * vcfg.dim ** -0.5
        elif name.endswith(".W"):
            v = rng.standard_normal(shape) * INIT_STD
        elif name.endswith(".gamma"):
            v = np.ones(shape)
        else:
            v = np.zeros(shape)
        out[name] = v.astype(vcfg.dtype)
    return out


class BoxViT:
    """A ViT with a box head on a pooled state (and its class head for task "class+box").

    >>> model = BoxViT(ViTConfig(num_classes=6), BoxConfig(box_pool="cls"))
    >>> boxes, logits, cache = model.forward(images)      # (B, 4) in [0, 1], (B, K)
    >>> grads = model.backward(dboxes, dlogits, cache)   # same names as model.params

    model.params holds the ViT's parameters and the box ones ("box_head.*", "box_pool.*")
    in one dict, sharing the arrays of model.vit.params.
    """

    def __init__(self, vit_config: ViTConfig | None = None, box_config: BoxConfig | None = None,
                 params: dict | None = None, layers=None):
        vcfg = vit_config if vit_config is not None else ViTConfig()
        self.box_config = bcfg = box_config if box_config is not None else BoxConfig()
        if not isinstance(bcfg, BoxConfig):
            raise TypeError(f"box_config: expected a BoxConfig, got {describe(bcfg)}")
        if bcfg.box_pool == "reg" and getattr(vcfg, "num_registers", 0) < 1:
            if not hasattr(vcfg, "num_registers"):
                raise ValueError("box_pool: 'reg' reads register 0 (token 1), but this ViTConfig "
                                 "has no num_registers field (register tokens are not in this tinyvit)")
            raise ValueError(f"box_pool: 'reg' reads register 0 (token 1); expected "
                             f"ViTConfig(num_registers >= 1), got num_registers={vcfg.num_registers}")
        if bcfg.box_pool == "map" and not _has_map_pool(reference_layers):
            raise ValueError("box_pool: 'map' needs tinyvit.layers.attn_pool_forward (timm's "
                             "attention pooling, ViTConfig pool='attn'), which this tinyvit lacks; "
                             "'attn' is the one-query pool of tinyvit.layers.box")
        if not getattr(vcfg, "class_token", True) and (bcfg.box_pool in ("cls", "reg")
                                                        or bcfg.task == "class+box" and vcfg.pool == "cls"):
            raise ValueError(f"box_pool: {bcfg.box_pool!r} (or a class head on 'cls') needs the CLS "
                             f"token, got ViTConfig(class_token=False)")
        if bcfg.task == "class+box" and vcfg.pool not in ("cls", "mean"):
            raise ValueError(f"pool: the class head of task 'class+box' reads 'cls' or 'mean', "
                             f"got {vcfg.pool!r}")
        vit_params = None
        box_names = box_param_shapes(vcfg, bcfg)
        if params is not None:
            vit_params = {k: v for k, v in params.items() if k not in box_names}
        self.vit = ViT(vcfg, vit_params, layers)
        if params is None:
            box_params = init_box_params(vcfg, bcfg)
        else:
            box_params = {}
            for k, shape in box_names.items():
                if k not in params:
                    raise ValueError(f"params: missing {k} {shape}")
                check_array(f"params[{k!r}]", params[k], kind="f", dtype=vcfg.dtype)
                if tuple(params[k].shape) != shape:
                    raise ValueError(f"params[{k!r}]: expected shape {shape}, got {params[k].shape}")
                box_params[k] = params[k]
        self.box_params = box_params
        self.params = {**self.vit.params, **box_params}

    @property
    def config(self) -> ViTConfig:
        return self.vit.config

    def using(self, layers) -> "BoxViT":
        """The same model (the same parameter arrays) running another layer set."""
        other = BoxViT(self.config, self.box_config, self.params, layers)
        other.params = self.params
        other.vit.params = self.vit.params
        other.box_params = self.box_params
        return other

    def _prefix(self) -> int:
        """Tokens before the patch tokens: CLS and any registers (ViTConfig.num_prefix_tokens
        where the config has it)."""
        cfg = self.config
        return getattr(cfg, "num_prefix_tokens", 1 + getattr(cfg, "num_registers", 0))

    # --- forward and backward ------------------------------------------------------------
    def _box_pool_forward(self, tokens):
        pool, P = self.box_config.box_pool, self._prefix()
        if pool == "cls":
            return tokens[:, 0, :], None                                        # (B, D)
        if pool == "reg":
            return tokens[:, 1, :], None                                        # (B, D): register 0
        if pool == "mean":
            return tokens[:, P:, :].mean(axis=1), None                          # (B, D)
        if pool == "attn":
            return bx.query_pool_forward(tokens[:, P:, :], self.box_params["box_pool.query"])
        p = {k[len("box_pool."):]: v for k, v in self.box_params.items() if k.startswith("box_pool.")}
        return reference_layers.attn_pool_forward(tokens[:, P:, :], p, self.config.heads, self.config.gelu)

    def _box_pool_backward(self, dpooled, cache, dtokens, grads):
        pool, P = self.box_config.box_pool, self._prefix()
        if pool == "cls":
            dtokens[:, 0, :] += dpooled
        elif pool == "reg":
            dtokens[:, 1, :] += dpooled
        elif pool == "mean":
            dtokens[:, P:, :] += dpooled[:, None, :] / (dtokens.shape[1] - P)   # each got 1/N
        elif pool == "attn":
            dx, grads["box_pool.query"] = bx.query_pool_backward(dpooled, cache)
            dtokens[:, P:, :] += dx
        else:
            dx, g = reference_layers.attn_pool_backward(dpooled, cache)
            dtokens[:, P:, :] += dx
            grads.update({f"box_pool.{k}": v for k, v in g.items()})

    def forward(self, images: np.ndarray):
        """images (B, H, W, C) -> (boxes (B, 4), logits (B, K), cache). cache["attn"] holds
        the blocks' attention probabilities; cache["box_attn"] what the box pool reads
        over the patches (B, N) for "attn" and "map", else None."""
        p, L = self.params, self.vit.layers
        tokens, cache = self.vit.forward_tokens(images)                         # (B, T, D)
        pooled, cache["box_pool"] = self._box_pool_forward(tokens)              # (B, D)
        boxes, cache["box_head"] = bx.box_head_forward(pooled, p["box_head.W"], p["box_head.b"])
        P = self._prefix()
        cls_in = tokens[:, 0, :] if self.config.pool == "cls" else tokens[:, P:, :].mean(axis=1)
        logits, cache["head"] = L.linear_forward(cls_in, p["head.W"], p["head.b"])   # (B, K)
        cache["box_attn"] = None
        if cache["box_pool"] is not None:            # "attn": (B, N); "map": (B, h, 1, N), heads averaged
            A = cache["box_pool"]["attn"]
            cache["box_attn"] = A.reshape(A.shape[0], -1, A.shape[-1]).mean(axis=1)   # (B, N)
        return boxes, logits, cache

    def backward(self, dboxes: np.ndarray, dlogits: np.ndarray | None, cache) -> dict:
        """dboxes (B, 4), dlogits (B, K) or None -> grads, the names of ``params``."""
        L, cfg = self.vit.layers, self.config
        B, T, D = cache["shape"]
        check_array("dboxes", dboxes, ndim=2, kind="f", dtype=cfg.dtype)
        if dboxes.shape != (B, 4):
            raise ValueError(f"dboxes: expected shape {(B, 4)}, got {dboxes.shape}")
        grads = {}
        dtokens = np.zeros((B, T, D), dtype=dboxes.dtype)
        dpooled, grads["box_head.W"], grads["box_head.b"] = bx.box_head_backward(dboxes, cache["box_head"])
        self._box_pool_backward(dpooled, cache["box_pool"], dtokens, grads)
        if dlogits is None:
            dlogits = np.zeros((B, cfg.num_classes), dtype=dboxes.dtype)
        dcls, grads["head.W"], grads["head.b"] = L.linear_backward(dlogits, cache["head"])
        P = self._prefix()
        if cfg.pool == "cls":
            dtokens[:, 0, :] += dcls
        else:
            dtokens[:, P:, :] += dcls[:, None, :] / (T - P)
        vit_grads, _ = self.vit.backward_tokens(dtokens, cache)
        grads.update(vit_grads)
        return {k: grads[k] for k in self.params}

    def loss(self, boxes, logits, target_boxes, labels):
        """-> (loss, parts dict, dboxes, dlogits or None): the weighted sum of the mean losses."""
        c = self.box_config
        B = boxes.shape[0]
        l1, c_l1 = bx.l1_loss_forward(boxes, target_boxes)                      # (B,)
        gl, c_g = bx.giou_loss_forward(boxes, target_boxes)                     # (B,)
        ones = np.full(B, 1.0 / B, dtype=boxes.dtype)                           # d mean / d each
        dboxes = c.l1_weight * bx.l1_loss_backward(ones, c_l1) + c.giou_weight * bx.giou_loss_backward(ones, c_g)
        parts = {"l1": float(l1.mean()), "giou": float(gl.mean()), "iou": float(c_g["iou"].mean())}
        loss = c.l1_weight * parts["l1"] + c.giou_weight * parts["giou"]
        dlogits = None
        if c.task == "class+box":
            ce, dlogits = self.vit.layers.softmax_cross_entropy(logits, labels)
            parts["ce"] = ce
            parts["acc"] = float((logits.argmax(axis=1) == labels).mean())
            loss += c.class_weight * ce
            dlogits = dlogits * np.asarray(c.class_weight, dtype=dlogits.dtype)
        return loss, parts, dboxes.astype(boxes.dtype, copy=False), dlogits

    def loss_and_grads(self, images, target_boxes, labels=None):
        """-> (loss, parts, grads, boxes): one training step's numbers."""
        check_array("target_boxes", target_boxes, ndim=2, kind="f")
        if target_boxes.shape != (images.shape[0], 4):
            raise ValueError(f"target_boxes: expected shape {(images.shape[0], 4)}, got {target_boxes.shape}")
        if self.box_config.task == "class+box" and labels is None:
            raise ValueError("labels: task 'class+box' needs the class labels, got None")
        boxes, logits, cache = self.forward(images)
        loss, parts, dboxes, dlogits = self.loss(boxes, logits, target_boxes.astype(boxes.dtype), labels)
        return loss, parts, self.backward(dboxes, dlogits, cache), boxes


# =========================================================== training

@dataclass
class BoxTrainConfig(_DictConfig):
    epochs: int = 10
    batch_size: int = 64
    lr: float = 2e-3
    min_lr: float = 1e-5
    warmup: float = 1.0             # epochs of linear warm-up, then cosine decay
    weight_decay: float = 0.05
    clip: float = 1.0               # max gradient norm (0: off)
    seed: int = 0                   # batch order: epoch e's from a generator seeded (seed, e)
    max_steps: int | None = None    # stop early (resume continues); the schedule still spans all epochs
    log_every: int = 50
    workers: int = 1                # threads the batch is split over (2: both cores; see parallel.py)

    def __post_init__(self):
        check_int("workers", self.workers, minimum=1)
        check_int("epochs", self.epochs, minimum=1)
        check_int("batch_size", self.batch_size, minimum=1)
        self.lr = check_float("lr", self.lr, minimum=0.0, open_min=True)
        self.min_lr = check_float("min_lr", self.min_lr, minimum=0.0, maximum=self.lr)
        self.warmup = check_float("warmup", self.warmup, minimum=0.0)
        self.weight_decay = check_float("weight_decay", self.weight_decay, minimum=0.0)
        self.clip = check_float("clip", self.clip, minimum=0.0)
        check_int("seed", self.seed, minimum=0)
        if self.max_steps is not None:
            check_int("max_steps", self.max_steps, minimum=0)
        check_int("log_every", self.log_every, minimum=1)



def _split_loss_and_grads(runner: BoxViT, pool, workers: int, images, boxes, labels):
    """runner.loss_and_grads on the whole batch, computed in ``workers`` parts on threads (as
    tinyvit.parallel.BatchSplitter does for the classifier): every loss is a batch mean, so
    the batch's loss and gradients are the size-weighted means of the parts'."""
    B = len(images)
    if pool is None or B < 2 * workers:
        return runner.loss_and_grads(images, boxes, labels)
    from .parallel import _bounds
    bounds = _bounds(B, workers)
    (a0, b0), *rest = bounds
    futures = [pool.submit(runner.loss_and_grads, images[a:b], boxes[a:b], labels[a:b]) for a, b in rest]
    try:
        first = runner.loss_and_grads(images[a0:b0], boxes[a0:b0], labels[a0:b0])
    finally:
        for f in futures:
            f.exception()                                # wait for the others, even on an error
    results = [first] + [f.result() for f in futures]   # (loss, parts, grads, boxes)
    w = [float(b - a) / B for a, b in bounds]
    loss = sum(wi * r[0] for wi, r in zip(w, results))
    parts = {k: sum(wi * r[1][k] for wi, r in zip(w, results)) for k in results[0][1]}
    grads = {}
    for name, g0 in results[0][2].items():
        g = g0 * w[0]
        for wi, r in zip(w[1:], results[1:]):
            g += r[2][name] * wi
        grads[name] = g
    return loss, parts, grads, np.concatenate([r[3] for r in results])


def evaluate_box(model: BoxViT, ds: BoxDataset, batch_size: int = 256) -> dict:
    """Mean IoU, the shares of boxes with IoU >= 0.5 and >= 0.75, the mean L1, and the class
    accuracy (None for task "box", whose class head is not trained)."""
    boxes, logits = predict(model, ds.images, batch_size)
    iou = bx.box_iou(boxes.astype(np.float64), ds.boxes)
    acc = float((logits.argmax(axis=1) == ds.labels).mean()) if model.box_config.task == "class+box" else None
    return {"mean_iou": float(iou.mean()), "iou50": float((iou >= 0.5).mean()),
            "iou75": float((iou >= 0.75).mean()), "l1": float(np.abs(boxes - ds.boxes).sum(1).mean()),
            "accuracy": acc, "n": len(ds)}


def predict(model: BoxViT, images: np.ndarray, batch_size: int = 256):
    """images (N, H, W, C) in [0, 1] -> (boxes (N, 4), logits (N, K)); each image standardised."""
    dtype = np.dtype(model.config.dtype)
    bs, ls = [], []
    for s in range(0, images.shape[0], batch_size):
        x = normalize_images(images[s:s + batch_size], "image").astype(dtype, copy=False)
        b, lg, _ = model.forward(x)
        bs.append(b)
        ls.append(lg)
    return np.concatenate(bs), np.concatenate(ls)


def _check_data(model: BoxViT, ds, name):
    if not isinstance(ds, BoxDataset):
        raise TypeError(f"{name}: expected a BoxDataset, got {describe(ds)}")
    H, W = model.config.image_hw
    if ds.image_shape != (H, W, model.config.in_channels):
        raise ValueError(f"{name}: expected images of shape {(H, W, model.config.in_channels)} (the "
                         f"model's), got {ds.image_shape}")


def save_box_checkpoint(path, model: BoxViT, *, optimizer=None, train_config=None, meta=None,
                        history=None, epoch=0, batch=0, step=0, seed=0) -> Path:
    """One .npz (tinyvit.checkpoint's format, written atomically): the ViT as usual, the
    box parameters as extra/<name>, the BoxConfig in meta["box_config"]."""
    meta = {**(meta or {}), "box_config": model.box_config.to_dict()}
    return save_checkpoint(path, model.vit, optimizer=optimizer, train_config=train_config, meta=meta,
                           history=history, epoch=epoch, batch=batch, step=step, seed=seed,
                           extra=model.box_params)


def load_box_model(path):
    """-> (BoxViT, Checkpoint) from a checkpoint written by save_box_checkpoint."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    ck = load_checkpoint(path)
    if "box_config" not in ck.meta:
        raise CheckpointError(f"{path}: not a box model (no box_config in its meta); "
                              "`tinyvit box train` writes those")
    try:
        model = BoxViT(ck.model_config, BoxConfig.from_dict(ck.meta["box_config"]),
                       {**ck.params, **ck.extra})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: box parameters do not match: {' '.join(str(e).split())}") from e
    return model, ck


def train_box(model: BoxViT, train_ds: BoxDataset, val_ds: BoxDataset | None = None,
              config: BoxTrainConfig | None = None, *, out_dir=None, resume_from=None,
              progress: bool = True, stream=None, meta: dict | None = None, layers="fast") -> dict:
    """Train ``model`` in place; evaluate on ``val_ds`` after every epoch.

    out_dir: checkpoint.npz after every epoch, at max_steps and on Ctrl-C (then re-raised);
    resume_from: continue that checkpoint exactly (same model, settings and data order).
    Returns the history: {"steps": [{step, loss, lr}], "epochs": [{epoch, step, train_loss,
    val_mean_iou, val_iou50, val_iou75, val_accuracy, wall_time}]}.
    """
    cfg = config if config is not None else BoxTrainConfig()
    if not isinstance(cfg, BoxTrainConfig):
        raise TypeError(f"config: expected a BoxTrainConfig, got {describe(cfg)}")
    _check_data(model, train_ds, "train_ds")
    if val_ds is not None:
        _check_data(model, val_ds, "val_ds")
    stream = stream if stream is not None else sys.stdout
    runner = model.using(layers) if layers != "model" else model
    dtype = np.dtype(model.config.dtype)
    n = len(train_ds)
    per_epoch = -(-n // cfg.batch_size)
    total = cfg.epochs * per_epoch
    schedule = make_schedule("cosine", cfg.lr, total, min(total, int(round(cfg.warmup * per_epoch))), cfg.min_lr)
    opt = AdamW(lr=cfg.lr, weight_decay=cfg.weight_decay)
    meta = dict(meta or {})
    epoch, batch_done, step = 0, 0, 0
    history = {"steps": [], "epochs": []}
    if resume_from is not None:
        ck = load_checkpoint(resume_from)
        saved = {**ck.train_config, "max_steps": None, "log_every": None} if ck.train_config else None
        given = {**cfg.to_dict(), "max_steps": None, "log_every": None}
        if saved != json.loads(json.dumps(given)) or ck.meta.get("box_config") != model.box_config.to_dict() \
                or ck.model_config.to_dict() != model.config.to_dict():
            raise CheckpointError(f"{resume_from}: checkpoint was trained with another model or other "
                                  f"settings; resume with the ones stored in it")
        for k, v in {**ck.params, **ck.extra}.items():
            model.params[k][...] = v
        opt.load_state_dict(ck.optim_state)
        epoch, batch_done, step = ck.epoch, ck.batch, ck.step
        history = ck.history or history
        meta = {**ck.meta, **meta}
    ckpt = Path(out_dir) / CHECKPOINT_NAME if out_dir is not None else None

    def save():
        if ckpt is not None:
            save_box_checkpoint(ckpt, model, optimizer=opt, train_config=cfg.to_dict(), meta=meta,
                                history=history, epoch=epoch, batch=batch_done, step=step, seed=cfg.seed)

    from concurrent.futures import ThreadPoolExecutor
    pool = ThreadPoolExecutor(cfg.workers - 1) if cfg.workers > 1 else None
    t_start = time.perf_counter()
    wall0 = history["epochs"][-1]["wall_time"] if history["epochs"] else 0.0
    try:
        while epoch < cfg.epochs:
            order = np.random.default_rng([cfg.seed, epoch]).permutation(n)
            losses = []
            while batch_done < per_epoch:
                if cfg.max_steps is not None and step >= cfg.max_steps:
                    save()
                    return history
                idx = order[batch_done * cfg.batch_size:(batch_done + 1) * cfg.batch_size]
                x = normalize_images(train_ds.images[idx], "image").astype(dtype, copy=False)
                lr = schedule(step)
                loss, parts, grads, _ = _split_loss_and_grads(runner, pool, cfg.workers, x,
                                                              train_ds.boxes[idx], train_ds.labels[idx])
                if not math.isfinite(loss):
                    raise FloatingPointError(f"training diverged at step {step}: loss {loss}")
                if cfg.clip:
                    clip_grad_norm(grads, cfg.clip)
                opt.step(model.params, grads, lr=lr)
                step += 1
                batch_done += 1
                losses.append(loss)
                history["steps"].append({"step": step, "loss": loss, "iou": parts["iou"], "lr": lr})
                if progress and step % cfg.log_every == 0:
                    stream.write(f"step {step}/{total}  epoch {epoch + 1}/{cfg.epochs}  loss {loss:.4f}  "
                                 f"batch IoU {parts['iou']:.3f}  lr {lr:.2e}\n")
                    stream.flush()
            wall = wall0 + time.perf_counter() - t_start
            row = {"epoch": epoch + 1, "step": step, "train_loss": float(np.mean(losses)) if losses else None,
                   "wall_time": wall}
            if val_ds is not None:
                ev = evaluate_box(model, val_ds)
                row.update({f"val_{k}": v for k, v in ev.items() if k != "n"})
            history["epochs"].append(row)
            epoch, batch_done = epoch + 1, 0
            if progress:
                extra = (f"  held-out mean IoU {row['val_mean_iou']:.3f}  IoU>=0.5 {row['val_iou50']:.3f}  "
                         f"IoU>=0.75 {row['val_iou75']:.3f}" if val_ds is not None else "")
                acc = row.get("val_accuracy")
                stream.write(f"epoch {epoch}/{cfg.epochs}  train loss {row['train_loss']:.4f}{extra}"
                             f"{'' if acc is None else f'  accuracy {acc:.3f}'}  ({wall:.1f} s)\n")
                stream.flush()
            save()
    except KeyboardInterrupt:
        save()
        raise
    finally:
        if pool is not None:
            pool.shutdown()
    return history


# =========================================================== figures

def draw_box(ax, box, H, W, color, style="-", label=None):
    """Draw box (cx, cy, w, h) in fractions on a matplotlib axis showing an H x W image."""
    from matplotlib.patches import Rectangle
    cx, cy, w, h = (float(v) for v in box)
    ax.add_patch(Rectangle(((cx - w / 2) * W, (cy - h / 2) * H), w * W, h * H, fill=False,
                           edgecolor=color, linestyle=style, linewidth=2, label=label))


def box_attention_maps(model: BoxViT, image: np.ndarray):
    """-> (box, logits, maps): the predicted box and, over the patch grid (gh, gw), what the
    box head's state and the CLS token attend to in the last block (heads averaged), and for
    box_pool "attn"/"map" the pool's own weights. maps is a dict name -> (gh, gw)."""
    x = normalize_images(image[None], "image").astype(model.config.dtype, copy=False)
    boxes, logits, cache = model.forward(x)
    gh, gw = model.config.grid
    P = model._prefix()
    A = cache["attn"][-1][0].mean(axis=0)                    # (T, T), heads averaged
    T = A.shape[0]
    maps = {"CLS attends to (last block)": (A[0, P:].reshape(gh, gw), 1.0 / T)}
    pool = model.box_config.box_pool
    if pool == "reg":
        maps["[REG] attends to (last block)"] = (A[1, P:].reshape(gh, gw), 1.0 / T)
    elif pool == "mean":
        maps["patches attend to, averaged (last block)"] = (A[P:, P:].mean(axis=0).reshape(gh, gw), 1.0 / T)
    elif pool in ("attn", "map"):
        maps[f"box pool ({pool}) weights"] = (cache["box_attn"][0].reshape(gh, gw), 1.0 / (gh * gw))
    return boxes[0], logits[0], maps


def plot_box_attention(model: BoxViT, image: np.ndarray, true_box=None, title: str | None = None, save=None):
    """The image with the predicted box (and the true one), next to the attention maps of
    box_attention_maps over the same image, each with the predicted box drawn on it. The
    cyan mark on a colour bar is a uniform map's value: 1/T for a row of a block's attention
    (it spreads over all T tokens), 1/N for the pool's weights (over the N patches)."""
    from .viz import _display, _new_figure, _overlay, _finish
    box, logits, maps = box_attention_maps(model, image)
    H, W = image.shape[:2]
    fig = _new_figure(3.0 * (1 + len(maps)), 3.4)
    axes = fig.subplots(1, 1 + len(maps))
    shown, cmap = _display(np.asarray(image, dtype=np.float64))
    axes[0].imshow(shown, cmap=cmap, vmin=0, vmax=1, extent=(0, W, H, 0), interpolation="nearest")
    if true_box is not None:
        draw_box(axes[0], true_box, H, W, "lime", "--", "true")
    draw_box(axes[0], box, H, W, "red", "-", "predicted")
    axes[0].legend(loc="lower right", fontsize=7)
    axes[0].set_xticks([])
    axes[0].set_yticks([])
    sub = "predicted box (red)"
    if true_box is not None:
        iou = float(bx.box_iou(np.asarray(box, np.float64)[None], np.asarray(true_box, np.float64)[None])[0])
        sub += f", IoU {iou:.2f} with the true one (green)"
    axes[0].set_title(sub, fontsize=8)
    for ax, (name, (amap, uniform)) in zip(axes[1:], maps.items()):
        im = _overlay(ax, np.asarray(image, np.float64), amap, vmax=float(amap.max()))
        draw_box(ax, box, H, W, "red")
        ax.set_title(name, fontsize=8)
        cb = fig.colorbar(im, ax=ax, fraction=0.046)
        cb.ax.axhline(uniform, color="cyan", lw=1.5)                 # what a uniform map gives
        cb.set_label(f"attention (cyan: uniform 1/{round(1 / uniform)})", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _finish(fig, save)
