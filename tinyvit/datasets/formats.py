"""Dataset files in their published formats, parsed with NumPy (no pickle): MNIST-style IDX,
CIFAR-10 binary, the UCI 8x8 digits CSV, and folders of images."""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from .._checks import check_choice, check_int
from .._files import check_memory, format_bytes, open_image
from .base import CIFAR10_CLASSES, FASHION_CLASSES, MNIST_CLASSES, ImageDataset, _to_float01


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
