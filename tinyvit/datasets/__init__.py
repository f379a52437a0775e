"""Datasets: built-in synthetic shapes, MNIST-style IDX files, CIFAR-10 binary,
the UCI 8x8 digits, image folders, verified downloads and batching.

The package, by subject:
  base.py       ImageDataset, the container every loader returns
  shapes.py     drawing the built-in synthetic shapes (with object masks)
  formats.py    the published file formats: IDX, CIFAR-10 binary, the digits CSV, image folders
  downloads.py  checked downloads and safe archive extraction
  catalog.py    datasets by name: load_dataset, their image shapes and training defaults
  batching.py   splits, channel statistics, augmentation and mini-batches

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

from .base import CIFAR10_CLASSES, DEFAULT_DATA_DIR, FASHION_CLASSES, MNIST_CLASSES, ImageDataset
from .batching import Augment, BatchIterator, channel_stats, train_val_split
from .catalog import (DATASET_NAMES, DATASET_SHAPES, TRAIN_DEFAULTS, dataset_key, load_dataset)
from .downloads import REGISTRY, DownloadError, RemoteFile, download, extract_tar, fetch
from .formats import (load_cifar10, load_image_folder, load_mnist, load_uci_digits, read_idx,
                      read_image)
from .shapes import (DEFAULT_SHAPES, SHAPE_CLASSES, SHAPES_N_TRAIN, SHAPES_N_VAL, make_shapes,
                     shapes_bytes)

__all__ = [
    "ImageDataset", "make_shapes", "SHAPE_CLASSES", "DEFAULT_SHAPES",
    "read_idx", "read_image", "shapes_bytes", "load_mnist", "load_cifar10", "load_uci_digits", "load_image_folder",
    "RemoteFile", "REGISTRY", "DownloadError", "download", "fetch", "extract_tar",
    "load_dataset", "dataset_key", "DATASET_NAMES", "DATASET_SHAPES", "TRAIN_DEFAULTS",
    "SHAPES_N_TRAIN", "SHAPES_N_VAL", "train_val_split", "channel_stats",
    "Augment", "BatchIterator", "DEFAULT_DATA_DIR",
    "MNIST_CLASSES", "FASHION_CLASSES", "CIFAR10_CLASSES",
]
