"""Datasets by name: the names, their image shapes and training defaults, and load_dataset,
the single entry point of the command line."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._checks import check_choice, check_int, describe
from .base import DEFAULT_DATA_DIR
from .batching import train_val_split
from .downloads import _SUBDIR, REGISTRY, DownloadError, extract_tar, fetch
from .formats import _CIFAR_FILES, _idx_path, load_cifar10, load_image_folder, load_mnist, load_uci_digits
from .shapes import SHAPES_N_TRAIN, SHAPES_N_VAL, make_shapes


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
        return _load_shapes(n_train, n_test, image_size, seed)
    if key in ("mnist", "fashion-mnist"):
        return _load_mnist_family(key, data_dir, download)

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

    return _load_folder(Path(root) if root is not None else data_dir,
                        32 if image_size is None else image_size, channels, val_fraction, seed)


def _load_shapes(n_train, n_test, image_size, seed: int):
    """The built-in shapes: n_train + n_test images drawn with ``seed``, split in that order."""
    n_train = check_int("n_train", n_train, minimum=1)
    n_test = check_int("n_test", n_test, minimum=1)
    size = 32 if image_size is None else check_int("image_size", image_size, minimum=8)
    full = make_shapes(n_train + n_test, image_size=size, seed=seed)
    idx = np.arange(n_train + n_test)
    return full.subset(idx[:n_train], f"shapes{size}/train"), full.subset(idx[n_train:], f"shapes{size}/test")


def _load_mnist_family(key: str, data_dir: Path, download: bool):
    """MNIST or Fashion-MNIST, train and test files (fetched if allowed); a missing training
    part with the test files present points to mnist-test-split."""
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


def _load_folder(base: Path, size, channels: int, val_fraction: float, seed: int):
    """An image folder: base/train and base/test if both exist, else one folder split with seed."""
    if (base / "train").is_dir() and (base / "test").is_dir():
        train = load_image_folder(base / "train", size, channels, name=f"folder:{base.name}/train")
        test = load_image_folder(base / "test", size, channels, name=f"folder:{base.name}/test")
        if train.class_names != test.class_names:
            raise ValueError(f"root: expected the same class folders in {base / 'train'} and {base / 'test'}, "
                             f"got {train.class_names} and {test.class_names}")
        return train, test
    return train_val_split(load_image_folder(base, size, channels), val_fraction=val_fraction, seed=seed)
