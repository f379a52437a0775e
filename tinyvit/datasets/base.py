"""The container every loader returns: ImageDataset, and the class names of the published sets."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .._checks import check_array, describe


DEFAULT_DATA_DIR = "data"

MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]


@dataclass
class ImageDataset:
    """A labelled image set held in memory.

    images      (N, H, W, C) floating point, normally float32 in [0, 1]
    labels      (N,) int64 class indices in [0, len(class_names))
    class_names list of K names; class k is class_names[k]
    masks       (N, H, W) bool object masks, or None (only synthetic data has them)
    name        a short description, e.g. "mnist/train"
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list = field(default_factory=list)
    masks: np.ndarray | None = None
    name: str = "dataset"

    def __post_init__(self):
        check_array("images", self.images, ndim=4, kind="f", finite=False)
        check_array("labels", self.labels, ndim=1, kind="i")
        n = self.images.shape[0]
        if self.labels.shape[0] != n:
            raise ValueError(f"labels: expected {n} labels (one per image), got {self.labels.shape[0]}")
        self.labels = self.labels.astype(np.int64, copy=False)
        self.class_names = [str(c) for c in self.class_names]
        k = len(self.class_names)
        if k == 0:
            raise ValueError("class_names: expected at least one class name, got an empty list")
        if n and (self.labels.min() < 0 or self.labels.max() >= k):
            bad = self.labels[(self.labels < 0) | (self.labels >= k)][0]
            raise ValueError(f"labels: expected values in [0, {k - 1}] ({k} class names), got {int(bad)}")
        if self.masks is not None:
            check_array("masks", self.masks, ndim=3, kind=None)
            if self.masks.dtype != np.bool_:
                raise TypeError(f"masks: expected dtype bool, got {self.masks.dtype}")
            if self.masks.shape != self.images.shape[:3]:
                raise ValueError(f"masks: expected shape {self.images.shape[:3]} (N, H, W), got {self.masks.shape}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        return tuple(int(s) for s in self.images.shape[1:])

    def class_counts(self) -> np.ndarray:
        """(K,) number of examples of each class."""
        return np.bincount(self.labels, minlength=self.num_classes)

    def subset(self, indices, name: str | None = None) -> "ImageDataset":
        """A new dataset holding copies of the examples at ``indices``."""
        idx = np.asarray(indices)
        if idx.dtype == np.bool_:
            idx = np.flatnonzero(idx)
        if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
            raise TypeError(f"indices: expected a 1-D integer or boolean array, got {describe(idx)}")
        return ImageDataset(self.images[idx], self.labels[idx], list(self.class_names),
                            None if self.masks is None else self.masks[idx],
                            self.name if name is None else name)

    def summary(self) -> str:
        h, w, c = self.image_shape
        counts = ", ".join(str(int(x)) for x in self.class_counts())
        return (f"{self.name}: {len(self)} images {h}x{w}x{c} {self.images.dtype}, "
                f"{self.num_classes} classes (counts {counts})")

    def __repr__(self) -> str:
        return (f"ImageDataset(name={self.name!r}, images={self.images.shape}, "
                f"classes={self.num_classes}, masks={'yes' if self.masks is not None else 'no'})")


def _to_float01(x: np.ndarray, scale: float) -> np.ndarray:
    """uint8 (or small int) array -> float32 divided by ``scale``, one pass."""
    out = x.astype(np.float32)
    out /= np.float32(scale)
    return out
