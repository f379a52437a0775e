"""Splitting, channel statistics, augmentation and mini-batches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .._checks import check_float, check_int, describe
from .base import ImageDataset


def train_val_split(ds: ImageDataset, val_fraction: float = 0.2, seed: int = 0):
    """Shuffle with ``seed`` and split into (train, val); both keep their original order.

    The validation part has round(N * val_fraction) examples; both parts must
    be non-empty.
    """
    if not isinstance(ds, ImageDataset):
        raise TypeError(f"ds: expected an ImageDataset, got {describe(ds)}")
    val_fraction = check_float("val_fraction", val_fraction, minimum=0.0, maximum=1.0, open_min=True)
    seed = check_int("seed", seed, minimum=0)
    n = len(ds)
    n_val = int(round(n * val_fraction))
    if n_val < 1 or n_val >= n:
        raise ValueError(f"val_fraction: expected a split leaving both parts non-empty for {n} examples, "
                         f"got {val_fraction} ({n_val} validation examples)")
    perm = np.random.default_rng(seed).permutation(n)
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    return ds.subset(train_idx, f"{ds.name}/train"), ds.subset(val_idx, f"{ds.name}/val")


def channel_stats(ds: ImageDataset) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation, for TrainConfig(normalize=[mean, std])."""
    x = ds.images.reshape(-1, ds.images.shape[-1]).astype(np.float64)
    return x.mean(axis=0).tolist(), x.std(axis=0).tolist()


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation, applied to a whole batch at once.

    pad   random crop: zero-pad each side by ``pad`` pixels, then cut a random
          H x W window (pad=0 turns it off)
    flip  mirror left-right with probability 1/2 (leave off for digits and
          text, where a mirror image is a different thing)
    """

    pad: int = 0
    flip: bool = False

    def __post_init__(self):
        check_int("pad", self.pad, minimum=0)
        if not isinstance(self.flip, bool):
            raise TypeError(f"flip: expected True or False, got {describe(self.flip)}")

    def __call__(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """images (B, H, W, C) -> augmented copy (B, H, W, C)."""
        B, H, W, C = images.shape
        out = images
        if self.pad:
            p = self.pad
            padded = np.zeros((B, H + 2 * p, W + 2 * p, C), dtype=images.dtype)   # (B, H+2p, W+2p, C)
            padded[:, p:p + H, p:p + W] = images
            oy = rng.integers(0, 2 * p + 1, size=B)                                # window corners
            ox = rng.integers(0, 2 * p + 1, size=B)
            rows = oy[:, None] + np.arange(H)                                      # (B, H)
            cols = ox[:, None] + np.arange(W)                                      # (B, W)
            out = padded[np.arange(B)[:, None, None], rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
        if self.flip:
            flip = rng.random(B) < 0.5
            if out is images:
                out = images.copy()
            out[flip] = out[flip, :, ::-1]
        return out


class BatchIterator:
    """Mini-batches of (images (B, H, W, C) float32, labels (B,) int64).

    BatchIterator(ds, batch_size, shuffle=True, seed=0, augment=None, drop_last=False)

    Each epoch visits every example exactly once (the last batch may be
    smaller unless drop_last). Shuffling and augmentation draw from a generator
    seeded by (seed, epoch), so epoch e is the same every time it is replayed.
    ``for images, labels in it`` runs the next epoch (0, 1, 2, ...);
    ``it.epoch(e)`` runs a chosen one. Batches are fresh arrays, safe to modify.
    augment    None or an Augment(pad=..., flip=...)
    Batches are the data's own values in [0, 1]; the training loop normalises them
    (tinyvit.train.normalize_images, the one normalisation path).
    """

    def __init__(self, ds: ImageDataset, batch_size: int, shuffle: bool = True, seed: int = 0,
                 augment: Augment | None = None, drop_last: bool = False):
        if not isinstance(ds, ImageDataset):
            raise TypeError(f"ds: expected an ImageDataset, got {describe(ds)}")
        self.ds = ds
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        for nm, v in (("shuffle", shuffle), ("drop_last", drop_last)):
            if not isinstance(v, bool):
                raise TypeError(f"{nm}: expected True or False, got {describe(v)}")
        self.shuffle, self.drop_last = shuffle, drop_last
        self.seed = check_int("seed", seed, minimum=0)
        if augment is not None and not isinstance(augment, Augment):
            raise TypeError(f"augment: expected None or an Augment(pad=..., flip=...), got {describe(augment)}")
        self.augment = augment
        if drop_last and len(ds) < self.batch_size:
            raise ValueError(f"batch_size: expected at most {len(ds)} (the dataset size) with drop_last=True, "
                             f"got {self.batch_size}")
        self.next_epoch = 0

    def __len__(self) -> int:
        n = len(self.ds)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        e = self.next_epoch
        self.next_epoch += 1
        return self.epoch(e)

    def epoch(self, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The batches of epoch ``epoch`` (deterministic for a given seed)."""
        epoch = check_int("epoch", epoch, minimum=0)
        rng = np.random.default_rng([self.seed, epoch])
        n = len(self.ds)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        stop = (n // self.batch_size) * self.batch_size if self.drop_last else n
        images, labels = self.ds.images, self.ds.labels
        for start in range(0, stop, self.batch_size):
            idx = order[start:start + self.batch_size]
            if not self.shuffle:
                x = images[start:start + len(idx)].astype(np.float32, copy=True)
            else:
                x = images[idx].astype(np.float32, copy=False)          # fancy indexing copies
            if self.augment is not None:
                x = self.augment(x, rng)
            yield x, labels[idx].copy()
