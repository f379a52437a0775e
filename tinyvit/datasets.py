"""Datasets: built-in synthetic shapes, MNIST-style IDX files, CIFAR-10 binary,
the UCI 8x8 digits, image folders, verified downloads and batching.

Every loader returns an ``ImageDataset``: channels-last float32 images in
[0, 1] with shape (N, H, W, C), int64 labels (N,), the class names and a
name. ``load_dataset(name, data_dir)`` is the single entry point used by the
command line; it always returns ``(train, test)``.

Data files are read in their original published formats and parsed here with
NumPy (no pickle anywhere). Downloads go to ``data/`` (relative to the current
directory) by default, are checked against a published checksum and are
written atomically (temporary file in the same directory, then rename).

A note on MNIST without its training files: ``load_dataset("mnist-test-split")``
uses only the 10,000 t10k images, shuffles them with a fixed seed and returns
8,000 for training and 2,000 held out. Report results from it as "accuracy on
a held-out part of the MNIST test set", not as standard MNIST test accuracy.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import tarfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw

from tinyvit._checks import check_array, check_choice, check_float, check_int, check_normalize, describe
from tinyvit._files import atomic_open, check_memory, format_bytes, open_image

__all__ = [
    "ImageDataset", "make_shapes", "SHAPE_CLASSES", "DEFAULT_SHAPES",
    "read_idx", "read_image", "shapes_bytes", "load_mnist", "load_cifar10", "load_uci_digits", "load_image_folder",
    "RemoteFile", "REGISTRY", "DownloadError", "download", "fetch", "extract_tar",
    "load_dataset", "dataset_key", "DATASET_NAMES", "DATASET_SHAPES", "TRAIN_DEFAULTS",
    "SHAPES_N_TRAIN", "SHAPES_N_VAL", "train_val_split", "channel_stats",
    "Augment", "BatchIterator",
    "MNIST_CLASSES", "FASHION_CLASSES", "CIFAR10_CLASSES",
]

DEFAULT_DATA_DIR = "data"

MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]


# =========================================================== the container

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


# =========================================================== synthetic shapes

# All shapes that can be drawn; the default set is the six most distinct ones.
SHAPE_CLASSES = ("circle", "square", "triangle", "cross", "ring", "star", "diamond", "frame")
DEFAULT_SHAPES = SHAPE_CLASSES[:6]
SHAPES_N_TRAIN, SHAPES_N_VAL = 20000, 2000      # the built-in data's training and held-out sizes


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    """Rotate (k, 2) points about the origin by ``angle`` radians."""
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _regular(k: int, radius: float, start: float = -math.pi / 2) -> np.ndarray:
    a = start + 2 * math.pi * np.arange(k) / k
    return radius * np.stack([np.cos(a), np.sin(a)], axis=1)


def _outline(kind: str, r: float) -> list[tuple[np.ndarray, int]]:
    """Polygons (vertices relative to the centre, fill value) for one shape of radius r.

    Each shape fits in the disc of radius r, so a centre at least r from every
    border keeps it inside the image (also after the small rotation).
    """
    if kind in ("square", "frame"):
        sq = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float) * (0.75 * r)
        polys = [(sq, 255)]
        if kind == "frame":
            polys.append((sq * 0.55, 0))
        return polys
    if kind == "triangle":
        tri = _regular(3, r)
        tri[:, 1] += 0.25 * r                    # centre the bounding box vertically
        return [(tri, 255)]
    if kind == "diamond":                        # a rhombus, taller than wide
        return [(np.array([[0, -1], [0.6, 0], [0, 1], [-0.6, 0]], float) * r, 255)]
    if kind == "cross":                          # a plus sign, arms 0.55 r thick
        t = 0.275 * r
        a = min(0.95 * r, math.sqrt(r * r - t * t))   # arm ends stay inside the disc
        pts = [(-t, -a), (t, -a), (t, -t), (a, -t), (a, t), (t, t),
               (t, a), (-t, a), (-t, t), (-a, t), (-a, -t), (-t, -t)]
        return [(np.array(pts, float), 255)]
    if kind == "star":                           # five points, inner radius 0.42 r
        outer = _regular(5, r)
        inner = _regular(5, 0.42 * r, start=-math.pi / 2 + math.pi / 5)
        star = np.empty((10, 2))
        star[0::2], star[1::2] = outer, inner
        return [(star, 255)]
    raise ValueError(f"kind: expected one of {SHAPE_CLASSES}, got {kind!r}")  # pragma: no cover


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, X: float, Y: float, R: float, angle: float) -> None:
    """Draw one filled shape (value 255, holes 0) centred at (X, Y) with radius R, in canvas pixels."""
    if kind in ("circle", "ring"):
        draw.ellipse([X - R, Y - R, X + R, Y + R], fill=255)
        if kind == "ring":
            q = 0.55 * R
            draw.ellipse([X - q, Y - q, X + q, Y + q], fill=0)
        return
    for pts, fill in _outline(kind, R):
        pts = _rotate(pts, angle) + (X, Y)
        draw.polygon([tuple(p) for p in pts.tolist()], fill=fill)


_STRIP = 64     # images drawn side by side on one canvas


def _draw_coverages(kinds, cx, cy, r, angle, size: int, ss: int) -> np.ndarray:
    """Anti-aliased coverage (n, size, size) uint8 0..255 of n shapes.

    Shapes are drawn at ``ss`` times the resolution, _STRIP of them side by
    side on one canvas (each stays inside its own tile), and the canvas is
    box-averaged down by ``ss``: edges get fractional coverage instead of
    jaggies, and Pillow is called once per strip rather than once per image.
    """
    n = len(kinds)
    out = np.empty((n, size, size), dtype=np.uint8)                   # (n, S, S)
    tile = size * ss
    for start in range(0, n, _STRIP):
        stop = min(start + _STRIP, n)
        canvas = Image.new("L", (tile * (stop - start), tile), 0)
        draw = ImageDraw.Draw(canvas)
        for j, i in enumerate(range(start, stop)):
            _draw_shape(draw, kinds[i], (cx[i] + j * size) * ss, cy[i] * ss, r[i] * ss, angle[i])
        small = np.asarray(canvas.reduce(ss)) if ss > 1 else np.asarray(canvas)   # (S, S * tiles)
        out[start:stop] = small.reshape(size, stop - start, size).transpose(1, 0, 2)
    return out


def shapes_bytes(n: int, image_size: int) -> int:
    """Memory make_shapes needs for n images of side S: float32 RGB, plus the coverage and mask."""
    return n * image_size * image_size * (3 * 4 + 2)


def make_shapes(n: int = SHAPES_N_TRAIN, image_size: int = 32, seed: int = 0, *,
                classes: Sequence[str] | None = None, size_range=(0.5, 0.85),
                max_rotation: float = 10.0, noise: float = 0.05, min_contrast: float = 0.3,
                supersample: int = 4) -> ImageDataset:
    """Synthetic coloured shapes on a noisy background, with object masks.

    n            number of images; classes are balanced (counts differ by at most one)
    image_size   side S of the square images (S >= 8)
    seed         same seed -> identical arrays; different seeds -> different images
    classes      names from SHAPE_CLASSES (default DEFAULT_SHAPES: circle, square,
                 triangle, cross, ring, star; add "diamond", "frame" for a harder set)
    size_range   shape diameter as a fraction of S, drawn uniformly
    max_rotation rotation in degrees drawn from [-max_rotation, max_rotation];
                 kept small so a rotated square never looks like a diamond
    noise        std of the Gaussian pixel noise added everywhere
    min_contrast minimum brightness difference |Y(fg) - Y(bg)| (Y = 0.299 R +
                 0.587 G + 0.114 B); objects may be lighter or darker than the
                 background, so brightness does not give the class away either
    supersample  drawing resolution factor (anti-aliasing)

    Colours are drawn independently of the class, so only the shape tells the
    classes apart. Returns images (n, S, S, 3) float32 in [0, 1], labels (n,),
    masks (n, S, S) bool (object covers at least half of the pixel).
    """
    n = check_int("n", n, minimum=1)
    S = check_int("image_size", image_size, minimum=8)
    seed = check_int("seed", seed, minimum=0)
    ss = check_int("supersample", supersample, minimum=1, maximum=16)
    classes = tuple(DEFAULT_SHAPES if classes is None else classes)
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ValueError(f"classes: expected at least two distinct names from {SHAPE_CLASSES}, got {classes}")
    for c in classes:
        check_choice("classes", c, SHAPE_CLASSES)
    if not isinstance(size_range, (tuple, list)) or len(size_range) != 2:
        raise TypeError(f"size_range: expected a pair (low, high) of fractions, got {describe(size_range)}")
    lo = check_float("size_range[0]", size_range[0], minimum=0.05, maximum=1.0)
    hi = check_float("size_range[1]", size_range[1], minimum=lo, maximum=1.0)
    max_rot = check_float("max_rotation", max_rotation, minimum=0.0, maximum=180.0)
    noise = check_float("noise", noise, minimum=0.0, maximum=1.0)
    min_contrast = check_float("min_contrast", min_contrast, minimum=0.0, maximum=0.8)
    check_memory("image_size", S, 2 * (S * ss) ** 2, f"drawing one image at {ss}x supersampling")
    check_memory("n", n, shapes_bytes(n, S), f"{n} images of {S}x{S} with their masks")

    rng = np.random.default_rng(seed)
    K = len(classes)
    labels = rng.permutation(np.arange(n) % K).astype(np.int64)
    radius = rng.uniform(lo, hi, size=n) * S / 2                       # (n,)
    cx = rng.uniform(radius, S - radius)                              # centre keeps the shape inside
    cy = rng.uniform(radius, S - radius)
    angle = np.deg2rad(rng.uniform(-max_rot, max_rot, size=n))
    bg = rng.uniform(0.0, 1.0, size=(n, 3))
    fg = rng.uniform(0.0, 1.0, size=(n, 3))
    luma = np.array([0.299, 0.587, 0.114])                           # brightness of an RGB colour
    for _ in range(1000):                                             # redraw low-contrast pairs
        low = np.abs((fg - bg) @ luma) < min_contrast
        if not low.any():
            break
        k = int(low.sum())
        bg[low] = rng.uniform(0.0, 1.0, size=(k, 3))
        fg[low] = rng.uniform(0.0, 1.0, size=(k, 3))

    kinds = [classes[k] for k in labels]
    cover = _draw_coverages(kinds, cx, cy, radius, angle, S, ss)     # (n, S, S) 0..255

    # Blend colours by coverage and add noise, a chunk of images at a time so the
    # temporaries stay small: image = bg + alpha * (fg - bg) + noise * N(0, 1).
    images = np.empty((n, S, S, 3), dtype=np.float32)                 # (n, S, S, 3)
    bg32 = bg.astype(np.float32)[:, None, None, :]                    # (n, 1, 1, 3)
    diff32 = (fg - bg).astype(np.float32)[:, None, None, :]
    chunk = 256
    for s0 in range(0, n, chunk):
        s1 = min(s0 + chunk, n)
        out = images[s0:s1]
        alpha = cover[s0:s1, :, :, None].astype(np.float32)
        alpha /= np.float32(255.0)                                    # (b, S, S, 1)
        np.multiply(alpha, diff32[s0:s1], out=out)
        out += bg32[s0:s1]
        if noise > 0:
            z = rng.standard_normal(out.shape, dtype=np.float32)
            z *= np.float32(noise)
            out += z
        np.clip(out, 0.0, 1.0, out=out)
    masks = cover >= 128
    return ImageDataset(images, labels, list(classes), masks, name=f"shapes{S}")


# =========================================================== IDX (MNIST family)

def _read_bytes(path: Path, what: str, limit: int) -> bytes:
    """All bytes of a small file, decompressing .gz; more than ``limit`` bytes (a gzip that
    inflates without end) is an error, found after reading limit + 1 bytes. Errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: file not found: {path}")
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            data = f.read(limit + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{what}: could not read {path}: {e} "
                         "(the file is truncated or corrupt; delete it and download it again)") from e
    if len(data) > limit:
        raise ValueError(f"{path}: expected at most {format_bytes(limit)} of data, got more "
                         "(not the file it should be?)")
    return data


def read_idx(path) -> np.ndarray:
    """Parse an IDX file (optionally gzip-compressed) of unsigned bytes.

    Header, big-endian: two zero bytes, a type code (0x08 = unsigned byte),
    the number of dimensions n, then n uint32 sizes. The payload must hold
    exactly prod(sizes) bytes. Returns a uint8 array of those sizes.

    The header is read and checked first (sizes multiplied as Python integers,
    which do not wrap around; compared with the file's size, or for a .gz with
    the machine's memory), and only then the data, so a bad header never makes
    this decompress or allocate more than the file really holds.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: file not found: {path}")
    gz = path.suffix == ".gz"
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            head = f.read(4)
            if len(head) < 4:
                raise ValueError(f"{path}: expected an IDX header of at least 4 bytes, got {len(head)} bytes")
            if head[0] != 0 or head[1] != 0:
                raise ValueError(f"{path}: expected an IDX magic number starting with two zero bytes, "
                                 f"got 0x{head.hex()} (not an IDX file?)")
            if head[2] != 0x08:
                raise ValueError(f"{path}: expected IDX type code 0x08 (unsigned byte), got 0x{head[2]:02x}")
            ndim = head[3]
            if not 1 <= ndim <= 4:
                raise ValueError(f"{path}: expected 1 to 4 IDX dimensions, got {ndim}")
            sizes = f.read(4 * ndim)
            if len(sizes) < 4 * ndim:
                raise ValueError(f"{path}: expected a {4 + 4 * ndim}-byte IDX header, got only "
                                 f"{4 + len(sizes)} bytes (truncated)")
            dims = tuple(int.from_bytes(sizes[4 * i:4 * i + 4], "big") for i in range(ndim))
            need = math.prod(dims)                              # exact: no int64 wrap-around
            if not gz:
                have = path.stat().st_size - 4 - 4 * ndim
                if have != need:
                    state = "truncated" if have < need else "trailing bytes"
                    raise ValueError(f"{path}: expected {need} data bytes for shape {dims}, got {have} ({state})")
            check_memory(str(path), f"IDX shape {dims}", need, "its data")
            data = f.read(need + 1)                             # one more: trailing bytes show
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"path: could not read {path}: {e} "
                         "(the file is truncated or corrupt; delete it and download it again)") from e
    if len(data) != need:
        state = "truncated" if len(data) < need else "trailing bytes"
        raise ValueError(f"{path}: expected {need} data bytes for shape {dims}, got "
                         f"{len(data) if len(data) < need else 'more'} ({state})")
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


_IDX_STEMS = {"train": "train", "test": "t10k"}


def _idx_path(root: Path, split: str, part: str) -> Path:
    """Path of e.g. t10k-images-idx3-ubyte(.gz); prefers the .gz when both exist."""
    dims = "idx3" if part == "images" else "idx1"
    base = f"{_IDX_STEMS[split]}-{part}-{dims}-ubyte"
    for candidate in (root / f"{base}.gz", root / base):
        if candidate.is_file():
            return candidate
    return root / f"{base}.gz"


def load_mnist(root, split: str = "train", kind: str = "mnist") -> ImageDataset:
    """MNIST or Fashion-MNIST from the original IDX files in ``root``.

    root   directory holding {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
    split  "train" (60,000 images) or "test" (10,000, the t10k files)
    kind   "mnist" or "fashion" (only the class names differ)
    Returns images (N, 28, 28, 1) float32 in [0, 1] and labels (N,) int64.
    """
    check_choice("split", split, ("train", "test"))
    check_choice("kind", kind, ("mnist", "fashion"))
    root = Path(root)
    img_path, lab_path = _idx_path(root, split, "images"), _idx_path(root, split, "labels")
    for p in (img_path, lab_path):
        if not p.is_file():
            raise FileNotFoundError(f"root: expected the {kind} {split} file {p.name} in {root}, "
                                    f"not found")
    images = read_idx(img_path)
    labels = read_idx(lab_path)
    if images.ndim != 3:
        raise ValueError(f"{img_path}: expected 3 IDX dimensions (N, H, W), got shape {images.shape}")
    if labels.ndim != 1:
        raise ValueError(f"{lab_path}: expected 1 IDX dimension (N,), got shape {labels.shape}")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"{lab_path}: expected {images.shape[0]} labels (one per image in {img_path.name}), "
                         f"got {labels.shape[0]}")
    if labels.size and labels.max() > 9:
        raise ValueError(f"{lab_path}: expected labels in [0, 9], got {int(labels.max())}")
    names = MNIST_CLASSES if kind == "mnist" else FASHION_CLASSES
    return ImageDataset(_to_float01(images, 255.0)[..., None], labels.astype(np.int64),
                        list(names), None, name=f"{'mnist' if kind == 'mnist' else 'fashion-mnist'}/{split}")


# =========================================================== CIFAR-10 binary

_CIFAR_RECORD = 1 + 32 * 32 * 3          # label byte + 3072 bytes (R plane, G plane, B plane)
_CIFAR_FILES = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}


def _cifar_dir(root: Path) -> Path:
    for d in (root, root / "cifar-10-batches-bin", root / "cifar10" / "cifar-10-batches-bin"):
        if (d / "test_batch.bin").is_file() or (d / "data_batch_1.bin").is_file():
            return d
    return root / "cifar-10-batches-bin"


def load_cifar10(root, split: str = "train") -> ImageDataset:
    """CIFAR-10 from its binary release (never the pickled Python version).

    root   directory holding data_batch_1..5.bin and test_batch.bin, or its
           parent with a cifar-10-batches-bin/ folder
    Each record is 1 label byte then 3072 pixel bytes in (C, H, W) order.
    Returns images (N, 32, 32, 3) float32 in [0, 1], labels (N,) int64.
    """
    check_choice("split", split, ("train", "test"))
    d = _cifar_dir(Path(root))
    paths = [d / f for f in _CIFAR_FILES[split]]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"root: expected the CIFAR-10 binary files {missing} in {d}, not found")
    chunks = []
    total = sum(p.stat().st_size for p in paths)
    check_memory(str(d), f"{format_bytes(total)} of CIFAR-10 records", total * 5, "them as float32 images")
    for p in paths:
        raw = np.fromfile(p, dtype=np.uint8)
        if raw.size == 0 or raw.size % _CIFAR_RECORD:
            raise ValueError(f"{p}: expected a whole number of {_CIFAR_RECORD}-byte records, got {raw.size} bytes "
                             "(truncated or not a CIFAR-10 binary batch)")
        recs = raw.reshape(-1, _CIFAR_RECORD)
        if recs[:, 0].max() > 9:
            raise ValueError(f"{p}: expected label bytes in [0, 9], got {int(recs[:, 0].max())} "
                             "(is this CIFAR-100 or a corrupt file?)")
        chunks.append(recs)
    recs = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
    labels = recs[:, 0].astype(np.int64)
    chw = recs[:, 1:].reshape(-1, 3, 32, 32)                  # (N, C, H, W)
    images = _to_float01(chw.transpose(0, 2, 3, 1), 255.0)     # (N, H, W, C)
    names = list(CIFAR10_CLASSES)
    meta = d / "batches.meta.txt"
    if meta.is_file():
        listed = [line.strip() for line in meta.read_text(errors="replace").splitlines() if line.strip()]
        if len(listed) == 10:
            names = listed
    return ImageDataset(images, labels, names, None, name=f"cifar10/{split}")


# =========================================================== UCI 8x8 digits

_DIGITS_MAX_BYTES = 64 << 20      # the real CSV holds about 0.5 MB; anything far larger is not it


def load_uci_digits(path_or_root="data") -> ImageDataset:
    """The UCI 8x8 optical digits as shipped by scikit-learn (digits.csv.gz).

    path_or_root  the .csv(.gz) file, or a directory holding digits.csv.gz
                  directly or in a uci-digits/ subfolder
    Each row: 64 counts 0..16 (an 8x8 image, row-major) then the label 0..9.
    Returns images (N, 8, 8, 1) float32 (counts / 16) and labels (N,) int64.
    """
    p = Path(path_or_root)
    if not p.exists():
        raise FileNotFoundError(f"path_or_root: expected digits.csv.gz or a directory holding it, got {p} (not found)")
    if p.is_dir():
        for cand in (p / "digits.csv.gz", p / "uci-digits" / "digits.csv.gz", p / "digits.csv"):
            if cand.is_file():
                p = cand
                break
        else:
            raise FileNotFoundError(f"path_or_root: expected digits.csv.gz in {p} or {p / 'uci-digits'}, not found")
    text = _read_bytes(p, "path_or_root", _DIGITS_MAX_BYTES).decode("ascii", errors="replace")
    rows = [line for line in text.splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{p}: expected rows of 65 comma-separated integers, got an empty file")
    try:
        table = np.loadtxt(rows, delimiter=",", ndmin=2)
    except ValueError as e:
        raise ValueError(f"{p}: expected rows of 65 comma-separated integers, could not parse: {e}") from e
    if table.shape[1] != 65:
        raise ValueError(f"{p}: expected 65 columns (64 pixels + label), got {table.shape[1]}")
    if not np.array_equal(table, np.round(table)):
        raise ValueError(f"{p}: expected integer values, got non-integers")
    pix, lab = table[:, :64], table[:, 64]
    if pix.min() < 0 or pix.max() > 16:
        raise ValueError(f"{p}: expected pixel counts in [0, 16], got range [{pix.min():g}, {pix.max():g}]")
    if lab.min() < 0 or lab.max() > 9:
        raise ValueError(f"{p}: expected labels in [0, 9], got range [{lab.min():g}, {lab.max():g}]")
    images = (pix.reshape(-1, 8, 8, 1) / 16.0).astype(np.float32)
    return ImageDataset(images, lab.astype(np.int64), list(MNIST_CLASSES), None, name="uci-digits")


# =========================================================== image folders

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def _size_pair(name: str, size) -> tuple[int, int]:
    if isinstance(size, (tuple, list)):
        if len(size) != 2:
            raise ValueError(f"{name}: expected an int or a pair (H, W), got {size!r}")
        return check_int(f"{name}[0]", size[0], minimum=1), check_int(f"{name}[1]", size[1], minimum=1)
    s = check_int(name, size, minimum=1)
    return s, s


def read_image(path, hw, channels: int) -> np.ndarray:
    """An image file -> (H, W, C) uint8: converted to RGB (C=3) or grey (C=1), resized
    bilinearly to hw = (H, W). Files too large to decode safely, or unreadable, raise a
    one-line ValueError naming the file (tinyvit._files.open_image)."""
    H, W = hw
    with open_image(path) as im:
        im = im.convert("RGB" if channels == 3 else "L")
        if im.size != (W, H):
            im = im.resize((W, H), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8).reshape(H, W, channels)


def load_image_folder(root, image_size=32, channels: int = 3, name: str | None = None) -> ImageDataset:
    """Images in ``root/<class name>/*.png|jpg|...``, one subfolder per class.

    Class names are the sorted subfolder names. Files are opened with Pillow,
    converted to RGB (channels=3) or grey "L" (channels=1) and resized to
    image_size (int or (H, W)) with bilinear filtering. Files with other
    extensions and hidden files are ignored; an image that cannot be read
    raises ValueError naming the file.
    """
    root = Path(root)
    H, W = _size_pair("image_size", image_size)
    channels = check_int("channels", channels)
    if channels not in (1, 3):
        raise ValueError(f"channels: expected 1 (grey) or 3 (RGB), got {channels}")
    if not root.is_dir():
        raise FileNotFoundError(f"root: expected a directory with one subfolder per class, got {root} (not found)")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise ValueError(f"root: expected one subfolder per class in {root}, found none")
    images, labels, counted = [], [], 0
    for k, d in enumerate(class_dirs):
        files = sorted(f for f in d.iterdir()
                       if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise ValueError(f"root: expected images ({', '.join(IMAGE_EXTENSIONS)}) in class folder {d}, found none")
        counted += len(files)
        check_memory("image_size", f"{H}x{W}", counted * H * W * channels * 5,
                     f"{counted} images as uint8 and float32")
        for f in files:
            images.append(read_image(f, (H, W), channels))
            labels.append(k)
    batch = _to_float01(np.stack(images), 255.0)              # (N, H, W, C)
    return ImageDataset(batch, np.array(labels, dtype=np.int64), [d.name for d in class_dirs], None,
                        name=name or f"folder:{root.name}")


# =========================================================== downloads

@dataclass(frozen=True)
class RemoteFile:
    """A published file: its name, where to get it, and its checksum(s).

    urls are tried in order (the official source first, then mirrors). At
    least one of sha256 / md5 is given; every given checksum must match.
    """

    filename: str
    urls: tuple
    sha256: str | None = None
    md5: str | None = None


_MNIST_URLS = ("https://yann.lecun.com/exdb/mnist/",                 # official (often refuses robots)
               "https://ossci-datasets.s3.amazonaws.com/mnist/",       # PyTorch's mirror
               "https://storage.googleapis.com/cvdf-datasets/mnist/")  # TensorFlow's mirror
_FASHION_URLS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                 "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/")


def _idx_files(urls, checksums):
    return [RemoteFile(fn, tuple(u + fn for u in urls), **ck) for fn, ck in checksums.items()]


# Checksums and how sure we are of them:
# * MNIST t10k files: SHA-256 and md5 checked against the byte-identical copies
#   described in ../shared/data/README.md (sha256sum run on those files).
# * MNIST train files, all Fashion-MNIST files and cifar-10-binary.tar.gz:
#   the md5 values published by the dataset authors (LeCun's page / the
#   Fashion-MNIST README / the CIFAR page), the same values torchvision uses.
#   They were not re-computed here (no network); SHA-256 is deliberately not
#   given for them rather than guessed.
# * digits.csv.gz: SHA-256 of ../shared/data/uci-digits/digits.csv.gz (the
#   file scikit-learn ships).
REGISTRY: dict[str, list[RemoteFile]] = {
    "mnist": _idx_files(_MNIST_URLS, {
        "train-images-idx3-ubyte.gz": dict(md5="f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        "train-labels-idx1-ubyte.gz": dict(md5="d53e105ee54ea40749a09fcbcd1e9432"),
        "t10k-images-idx3-ubyte.gz": dict(
            md5="9fb629c4189551a2d022fa330f9573f3",
            sha256="8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
        "t10k-labels-idx1-ubyte.gz": dict(
            md5="ec29112dd5afa0611ce80d1b7f02629c",
            sha256="f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
    }),
    "fashion-mnist": _idx_files(_FASHION_URLS, {
        "train-images-idx3-ubyte.gz": dict(md5="8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        "train-labels-idx1-ubyte.gz": dict(md5="25c81989df183df01b3e8a0aad5dffbe"),
        "t10k-images-idx3-ubyte.gz": dict(md5="bef4ecab320f06d8554ea6380940ec79"),
        "t10k-labels-idx1-ubyte.gz": dict(md5="bb300cfdad3c16e7a12a480ee83cd310"),
    }),
    "cifar10": [RemoteFile("cifar-10-binary.tar.gz",
                           ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",),
                           md5="c32a1d4ab5d03f1284b67883e8d87530")],
    "digits": [RemoteFile("digits.csv.gz",
                          ("https://raw.githubusercontent.com/scikit-learn/scikit-learn/main/"
                           "sklearn/datasets/data/digits.csv.gz",),
                          sha256="09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22")],
}

# Sub-directory of data_dir where each dataset lives.
_SUBDIR = {"mnist": "mnist", "fashion-mnist": "fashion-mnist", "cifar10": "cifar10", "digits": "uci-digits"}


class DownloadError(OSError):
    """No source could deliver a file with the expected checksum."""


class _ChecksumMismatch(Exception):
    pass


def _checksums_match(path: Path, sha256: str | None, md5: str | None) -> tuple[bool, str]:
    """(all given checksums match, description of the first mismatch)."""
    h_sha, h_md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            if sha256:
                h_sha.update(chunk)
            if md5:
                h_md5.update(chunk)
    if sha256 and h_sha.hexdigest() != sha256.lower():
        return False, f"sha256 {h_sha.hexdigest()} != expected {sha256}"
    if md5 and h_md5.hexdigest() != md5.lower():
        return False, f"md5 {h_md5.hexdigest()} != expected {md5}"
    return True, ""


def _describe_checksums(sha256, md5) -> str:
    return ", ".join(f"{k} {v}" for k, v in (("sha256", sha256), ("md5", md5)) if v)


def download(urls, dest, sha256: str | None = None, md5: str | None = None,
             timeout: float = 60.0, quiet: bool = True) -> Path:
    """Fetch ``dest`` from the first of ``urls`` that delivers the right bytes.

    urls     a URL or a list of URLs, tried in order (official source first,
             then mirrors); file:// URLs work too
    dest     where the file goes; its directory is created if needed
    sha256, md5  expected checksums (at least one; every one given must match)

    A file already at ``dest`` with the right checksum is used as is (no
    network). Each attempt streams into a temporary file in dest's directory
    and is renamed onto dest only after the checksum matched, so an
    interrupted or corrupt download never leaves a bad file behind. When every
    source fails, DownloadError says which file to place where.
    """
    if isinstance(urls, str):
        urls = [urls]
    urls = list(urls)
    if not urls or not all(isinstance(u, str) for u in urls):
        raise TypeError(f"urls: expected a URL or a non-empty list of URLs, got {describe(urls)}")
    if not sha256 and not md5:
        raise ValueError("sha256/md5: expected at least one checksum to verify the download, got neither")
    dest = Path(dest)
    if dest.is_file():
        ok, _ = _checksums_match(dest, sha256, md5)
        if ok:
            return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in urls:
        try:
            with atomic_open(dest) as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                for chunk in iter(lambda: resp.read(1 << 20), b""):
                    out.write(chunk)
                out.flush()
                ok, why = _checksums_match(Path(out.name), sha256, md5)
                if not ok:                               # leaving the block this way: no rename
                    raise _ChecksumMismatch(why)
            if not quiet:
                print(f"downloaded {dest} from {url}")
            return dest
        except _ChecksumMismatch as e:
            failures.append(f"{url}: checksum mismatch ({e})")
        except (urllib.error.URLError, OSError, ValueError) as e:
            failures.append(f"{url}: {type(e).__name__}: {e}")
    tried = "\n  ".join(failures)
    raise DownloadError(
        f"could not download {dest.name}; tried:\n  {tried}\n"
        f"If you are offline, fetch the file by other means and place it at {dest} "
        f"({_describe_checksums(sha256, md5)}).")


def fetch(dataset: str, data_dir=DEFAULT_DATA_DIR, download_missing: bool = True,
          files: Sequence[str] | None = None) -> Path:
    """Make sure the registry files of ``dataset`` are in data_dir/<subdir>/.

    dataset  "mnist", "fashion-mnist", "cifar10" or "digits"
    files    only these file names (default: all files of the dataset)
    download_missing  False: never touch the network, just check presence
    Returns the dataset directory. An IDX file present uncompressed (without
    .gz) counts as present.
    """
    check_choice("dataset", dataset, tuple(REGISTRY))
    folder = Path(data_dir) / _SUBDIR[dataset]
    entries = [f for f in REGISTRY[dataset] if files is None or f.filename in files]
    missing = []
    for f in entries:
        dest = folder / f.filename
        plain = folder / f.filename[:-3] if f.filename.endswith(".gz") else None
        if not dest.is_file() and plain is not None and plain.is_file():
            continue
        if download_missing:
            download(f.urls, dest, sha256=f.sha256, md5=f.md5)
        elif not dest.is_file():
            missing.append(f)
    if missing:
        lines = "\n  ".join(f"{folder / f.filename}  ({_describe_checksums(f.sha256, f.md5)}; "
                            f"from {f.urls[0]})" for f in missing)
        raise FileNotFoundError(f"{dataset}: expected these files, not found (download=False):\n  {lines}")
    return folder


def _safe_member_name(member: tarfile.TarInfo) -> str:
    name = member.name
    parts = Path(name).parts
    if name.startswith(("/", "\\")) or os.path.isabs(name) or (parts and ":" in parts[0]) or ".." in parts:
        raise ValueError(f"archive member {name!r}: expected a relative path inside the archive "
                         "(absolute paths and '..' are refused)")
    if not (member.isfile() or member.isdir()):
        raise ValueError(f"archive member {name!r}: expected a regular file or directory, "
                         "got a link or special file (refused)")
    return name


def extract_tar(archive, dest_dir) -> list[Path]:
    """Extract a .tar(.gz) archive safely into dest_dir.

    Every member is checked before anything is written: absolute paths, '..'
    components, links and device files are refused. Files are written through
    a temporary name and renamed. Returns the extracted file paths.
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for m in members:
                _safe_member_name(m)
            dest_dir.mkdir(parents=True, exist_ok=True)
            root = dest_dir.resolve()
            written = []
            for m in members:
                target = (dest_dir / m.name).resolve()
                if root != target and root not in target.parents:   # belt and braces
                    raise ValueError(f"archive member {m.name!r}: resolves outside {dest_dir} (refused)")
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                src = tar.extractfile(m)
                with atomic_open(target) as out:
                    for chunk in iter(lambda: src.read(1 << 20), b""):
                        out.write(chunk)
                written.append(target)
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise ValueError(f"{archive}: could not read the archive ({e}); it is truncated or corrupt") from e
    return written


# =========================================================== entry point

DATASET_NAMES = ("shapes", "mnist", "mnist-test-split", "fashion-mnist", "cifar10", "digits", "folder")
_ALIASES = {"fashion": "fashion-mnist", "fashion_mnist": "fashion-mnist", "cifar-10": "cifar10",
            "uci-digits": "digits", "mnist_test_split": "mnist-test-split"}

# Per dataset: the side and channels of its images (shapes and folder: the defaults).
DATASET_SHAPES = {"shapes": (32, 3), "mnist": (28, 1), "mnist-test-split": (28, 1),
                  "fashion-mnist": (28, 1), "cifar10": (32, 3), "digits": (8, 1), "folder": (32, 3)}

# Training defaults per dataset for `tinyvit train` (anything not listed comes from TrainConfig).
TRAIN_DEFAULTS = {
    "shapes": dict(epochs=8, batch_size=64, lr=3e-3, warmup=1.0, augment_flip=True),
    "mnist-test-split": dict(epochs=30, batch_size=64, lr=3e-3, warmup=1.0, augment_pad=1),
    "mnist": dict(epochs=5, batch_size=128, lr=1e-3, warmup=1.0, augment_pad=2),
    "fashion-mnist": dict(epochs=10, batch_size=128, lr=1e-3, warmup=1.0, augment_pad=2),
    "cifar10": dict(epochs=20, batch_size=128, lr=1e-3, warmup=1.0, augment_pad=4, augment_flip=True),
    "digits": dict(epochs=30, batch_size=32, lr=2e-3, warmup=1.0),
    "folder": dict(epochs=20, batch_size=32, lr=1e-3, warmup=1.0, augment_pad=2, augment_flip=True),
}


def dataset_key(name: str) -> str:
    """The canonical name of a dataset ("Fashion" -> "fashion-mnist"); ValueError if unknown."""
    if not isinstance(name, str):
        raise TypeError(f"dataset: expected a name, got {describe(name)}")
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in DATASET_NAMES:
        raise ValueError(f"dataset: expected one of {', '.join(DATASET_NAMES)}, got {name!r}")
    return key


def _ensure_cifar(data_dir: Path, download_missing: bool) -> Path:
    folder = Path(data_dir) / _SUBDIR["cifar10"]
    batches = folder / "cifar-10-batches-bin"
    needed = _CIFAR_FILES["train"] + _CIFAR_FILES["test"]
    if all((batches / f).is_file() for f in needed):
        return batches
    archive = folder / "cifar-10-binary.tar.gz"
    if not archive.is_file():
        if not download_missing:
            raise FileNotFoundError(
                f"cifar10: expected {batches}/ with {', '.join(needed)} or the archive {archive} "
                f"(md5 {REGISTRY['cifar10'][0].md5}, from {REGISTRY['cifar10'][0].urls[0]}), not found "
                "(download=False)")
        fetch("cifar10", data_dir, download_missing=True)
    extract_tar(archive, folder)
    return batches


def load_dataset(name: str, data_dir=DEFAULT_DATA_DIR, download: bool = True, *, seed: int = 0,
                 val_fraction: float = 0.2, root=None, image_size=None, channels: int = 3,
                 n_train: int = SHAPES_N_TRAIN, n_test: int = SHAPES_N_VAL):
    """Load a dataset by name and return ``(train, test)`` ImageDatasets.

    name              "shapes"            synthetic shapes (n_train + n_test images, image_size default 32)
                      "mnist"             MNIST 60k/10k from data_dir/mnist/ (downloaded if allowed)
                      "mnist-test-split"  only the 10k t10k files: shuffled with ``seed``, 8,000 train /
                                          2,000 held out (val_fraction 0.2); for use when the train files
                                          are absent, e.g. data_dir="../shared/data"
                      "fashion-mnist"     from data_dir/fashion-mnist/
                      "cifar10"           binary release in data_dir/cifar10/ (archive extracted safely)
                      "digits"            UCI 8x8 digits (data_dir/uci-digits/digits.csv.gz), seeded split
                      "folder"            image folder at ``root`` (default data_dir): root/train and
                                          root/test if both exist, otherwise one folder split with ``seed``
    data_dir          where datasets live (default "data", relative to the current directory)
    download          allow network downloads of missing files (verified by checksum)
    seed, val_fraction  the seeded split for datasets shipped without a test part
    """
    if not isinstance(name, str):
        raise TypeError(f"name: expected a dataset name string, got {describe(name)}")
    key = _ALIASES.get(name.lower(), name.lower())
    check_choice("name", key, DATASET_NAMES)
    if not isinstance(download, bool):
        raise TypeError(f"download: expected True or False, got {describe(download)}")
    seed = check_int("seed", seed, minimum=0)
    data_dir = Path(data_dir)

    if key == "shapes":
        n_train = check_int("n_train", n_train, minimum=1)
        n_test = check_int("n_test", n_test, minimum=1)
        size = 32 if image_size is None else check_int("image_size", image_size, minimum=8)
        full = make_shapes(n_train + n_test, image_size=size, seed=seed)
        idx = np.arange(n_train + n_test)
        return full.subset(idx[:n_train], f"shapes{size}/train"), full.subset(idx[n_train:], f"shapes{size}/test")

    if key in ("mnist", "fashion-mnist"):
        kind = "mnist" if key == "mnist" else "fashion"
        try:
            folder = fetch(key, data_dir, download_missing=download)
        except (FileNotFoundError, DownloadError) as e:
            hint = ""
            if key == "mnist" and _idx_path(data_dir / "mnist", "test", "images").is_file():
                hint = ("\nOnly the test files are present: load_dataset('mnist-test-split', ...) trains on "
                        "8,000 of them and holds out 2,000.")
            raise type(e)(f"{e}{hint}") from e
        return load_mnist(folder, "train", kind), load_mnist(folder, "test", kind)

    if key == "mnist-test-split":
        folder = fetch("mnist", data_dir, download_missing=download,
                       files=("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"))
        test = load_mnist(folder, "test", "mnist")
        train, held = train_val_split(test, val_fraction=val_fraction, seed=seed)
        train.name, held.name = "mnist-t10k/train-part", "mnist-t10k/held-out"
        return train, held

    if key == "cifar10":
        batches = _ensure_cifar(data_dir, download)
        return load_cifar10(batches, "train"), load_cifar10(batches, "test")

    if key == "digits":
        folder = fetch("digits", data_dir, download_missing=download)
        full = load_uci_digits(folder / "digits.csv.gz" if (folder / "digits.csv.gz").is_file() else folder)
        return train_val_split(full, val_fraction=val_fraction, seed=seed)

    # folder
    base = Path(root) if root is not None else data_dir
    size = 32 if image_size is None else image_size
    if (base / "train").is_dir() and (base / "test").is_dir():
        train = load_image_folder(base / "train", size, channels, name=f"folder:{base.name}/train")
        test = load_image_folder(base / "test", size, channels, name=f"folder:{base.name}/test")
        if train.class_names != test.class_names:
            raise ValueError(f"root: expected the same class folders in {base / 'train'} and {base / 'test'}, "
                             f"got {train.class_names} and {test.class_names}")
        return train, test
    return train_val_split(load_image_folder(base, size, channels), val_fraction=val_fraction, seed=seed)


# =========================================================== splitting and stats

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


# =========================================================== batching

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

