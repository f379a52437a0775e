"""Tests for tinyvit.datasets.

Every loader is run on small files in the original formats, written by the
tests themselves; the real files in ../shared/data are used when present. No
test touches the network: downloads use file:// URLs into a temporary
directory, or a urlopen replaced by one that fails.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import struct
import tarfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tinyvit import datasets as D
from tinyvit.datasets import (Augment, BatchIterator, DownloadError, ImageDataset, download, extract_tar,
                              fetch, load_cifar10, load_dataset, load_image_folder,
                              load_mnist, load_uci_digits, make_shapes, read_idx, train_val_split)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def no_network(monkeypatch):
    """Make every urlopen fail, as on an offline machine; returns the list of tried URLs."""
    tried = []

    def fail(url, *args, **kwargs):
        tried.append(getattr(url, "full_url", url))
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", fail)
    return tried


# =========================================================== helpers that write files

def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(folder: Path, split: str, images: np.ndarray, labels: np.ndarray, gz: bool = True):
    stem = "train" if split == "train" else "t10k"
    folder.mkdir(parents=True, exist_ok=True)
    for part, arr in (("images-idx3", images), ("labels-idx1", labels)):
        data = idx_bytes(arr)
        name = f"{stem}-{part}-ubyte"
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)


def tiny_mnist(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8), rng.integers(0, 10, size=n).astype(np.uint8)


def cifar_records(labels, seed=0):
    """Records of 1 label byte + R, G, B planes; returns (bytes, (N, 32, 32, 3) uint8 expected)."""
    rng = np.random.default_rng(seed)
    hwc = rng.integers(0, 256, size=(len(labels), 32, 32, 3), dtype=np.uint8)
    chw = hwc.transpose(0, 3, 1, 2).reshape(len(labels), -1)
    recs = np.concatenate([np.array(labels, np.uint8)[:, None], chw], axis=1)
    return recs.tobytes(), hwc


def write_cifar(folder: Path, n_per_batch=2, n_test=3):
    folder.mkdir(parents=True, exist_ok=True)
    expected = {"train": [], "test": []}
    labels = {"train": [], "test": []}
    for i in range(1, 6):
        lab = [(i + j) % 10 for j in range(n_per_batch)]
        data, hwc = cifar_records(lab, seed=i)
        (folder / f"data_batch_{i}.bin").write_bytes(data)
        expected["train"].append(hwc)
        labels["train"] += lab
    lab = list(range(n_test))
    data, hwc = cifar_records(lab, seed=99)
    (folder / "test_batch.bin").write_bytes(data)
    expected["test"].append(hwc)
    labels["test"] += lab
    return {k: np.concatenate(v) for k, v in expected.items()}, labels


def indexed_dataset(n=23, k=3, size=4, channels=1):
    """Images whose every pixel holds the example's index, to track examples through batching."""
    images = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, size, size, channels)).copy()
    return ImageDataset(images, np.arange(n) % k, [f"c{i}" for i in range(k)], name="indexed")


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# =========================================================== ImageDataset

def test_image_dataset_validation():
    imgs = np.zeros((3, 4, 4, 1), np.float32)
    ds = ImageDataset(imgs, np.array([0, 1, 1]), ["a", "b"])
    assert len(ds) == 3 and ds.num_classes == 2 and ds.image_shape == (4, 4, 1)
    assert ds.labels.dtype == np.int64
    np.testing.assert_array_equal(ds.class_counts(), [1, 2])
    assert "3 images" in ds.summary()
    with pytest.raises(ValueError, match="labels: expected 3 labels"):
        ImageDataset(imgs, np.array([0, 1]), ["a", "b"])
    with pytest.raises(ValueError, match=r"labels: expected values in \[0, 1\].*got 2"):
        ImageDataset(imgs, np.array([0, 1, 2]), ["a", "b"])
    with pytest.raises(ValueError, match="images: expected 4 dimensions"):
        ImageDataset(imgs[0], np.array([0]), ["a"])
    with pytest.raises(TypeError, match="images: expected a floating-point"):
        ImageDataset(imgs.astype(np.uint8), np.array([0, 1, 1]), ["a", "b"])
    with pytest.raises(TypeError, match="masks: expected dtype bool"):
        ImageDataset(imgs, np.array([0, 1, 1]), ["a", "b"], masks=np.zeros((3, 4, 4)))
    with pytest.raises(ValueError, match="masks: expected shape"):
        ImageDataset(imgs, np.array([0, 1, 1]), ["a", "b"], masks=np.zeros((3, 4, 5), bool))


# =========================================================== shapes

def test_shapes_deterministic_and_seed_dependent():
    a = make_shapes(96, image_size=16, seed=3)
    b = make_shapes(96, image_size=16, seed=3)
    c = make_shapes(96, image_size=16, seed=4)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.masks, b.masks)
    assert not np.array_equal(a.images, c.images)
    assert not np.array_equal(a.labels, c.labels)


def test_shapes_format_and_balance():
    ds = make_shapes(203, image_size=32, seed=0)
    assert ds.images.shape == (203, 32, 32, 3) and ds.images.dtype == np.float32
    assert ds.labels.dtype == np.int64 and ds.masks.shape == (203, 32, 32) and ds.masks.dtype == bool
    assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0
    assert ds.num_classes >= 6 and len(set(ds.class_names)) == ds.num_classes
    counts = ds.class_counts()
    assert counts.max() - counts.min() <= 1 and counts.sum() == 203


def test_shapes_masks_nonempty_inside_and_cover_the_object():
    S = 32
    ds = make_shapes(160, image_size=S, seed=1, noise=0.0)
    area = ds.masks.sum(axis=(1, 2))
    # smallest shape: diameter 0.4 S; even a thin frame covers a good number of pixels
    assert area.min() >= 15
    # shapes stay inside the image: hardly any mask pixel on the outer border
    border = ds.masks.copy()
    border[:, 1:-1, 1:-1] = False
    assert border.sum() <= 0.01 * ds.masks.sum()
    # with no noise the background is one flat colour; the corner pixel is background
    bg = ds.images[:, :1, :1, :]                                   # (N, 1, 1, 3)
    differs = np.abs(ds.images - bg).max(axis=-1) > 1e-6          # (N, S, S)
    assert np.all(differs[ds.masks])                               # every mask pixel shows the object
    # pixels that differ from the background lie in the mask or next to it: anti-aliased edges
    # (coverage below one half) form a rim one pixel wide, two at sharp star tips and corners
    def grow(m):
        g = m.copy()
        g[:, 1:] |= m[:, :-1]
        g[:, :-1] |= m[:, 1:]
        g[:, :, 1:] |= m[:, :, :-1]
        g[:, :, :-1] |= m[:, :, 1:]
        return g

    m = ds.masks
    assert not np.any(differs & ~grow(grow(grow(m))))
    assert (differs & ~grow(m)).sum() <= 0.02 * differs.sum()
    assert (differs & m).sum() >= 0.6 * differs.sum()              # mostly inside the mask


def test_shapes_colour_does_not_determine_class():
    ds = make_shapes(800, image_size=16, seed=2, noise=0.0)
    obj = np.array([ds.images[i][ds.masks[i]].mean(axis=0) for i in range(len(ds))])   # (N, 3)
    bg = ds.images[:, 0, 0, :]
    overall_obj, overall_bg = obj.mean(axis=0), bg.mean(axis=0)
    for k in range(ds.num_classes):
        sel = ds.labels == k
        assert np.abs(obj[sel].mean(axis=0) - overall_obj).max() < 0.12
        assert np.abs(bg[sel].mean(axis=0) - overall_bg).max() < 0.12
        assert obj[sel].std(axis=0).min() > 0.15                  # colours vary within a class


def test_shapes_classes_subset_and_errors():
    ds = make_shapes(12, image_size=16, classes=["circle", "star", "cross"])
    assert ds.class_names == ["circle", "star", "cross"] and set(ds.labels) == {0, 1, 2}
    for kwargs, word in [(dict(n=0), "n"), (dict(image_size=4), "image_size"),
                         (dict(classes=["circle", "hexagon"]), "classes"), (dict(classes=["circle"]), "classes"),
                         (dict(size_range=(0.5, 0.3)), "size_range"), (dict(seed=-1), "seed"),
                         (dict(noise=2.0), "noise")]:
        with pytest.raises((ValueError, TypeError), match=word):
            make_shapes(**{"n": 4, **kwargs})


# =========================================================== IDX / MNIST

@pytest.mark.parametrize("kind, gz", [("mnist", True), ("fashion", True), ("mnist", False)])
def test_load_mnist_tiny_files(tmp_path, kind, gz):
    tr_x, tr_y = tiny_mnist(7, 0)
    te_x, te_y = tiny_mnist(4, 1)
    write_mnist(tmp_path, "train", tr_x, tr_y, gz)
    write_mnist(tmp_path, "test", te_x, te_y, gz)
    train = load_mnist(tmp_path, "train", kind)
    test = load_mnist(tmp_path, "test", kind)
    assert train.images.shape == (7, 28, 28, 1) and train.images.dtype == np.float32
    np.testing.assert_allclose(train.images[..., 0], tr_x / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(test.labels, te_y)
    assert test.labels.dtype == np.int64
    assert train.class_names[0] == ("0" if kind == "mnist" else "T-shirt/top")
    assert len(train.class_names) == 10


def test_read_idx_errors(tmp_path):
    x, _ = tiny_mnist(3, 0)
    good = idx_bytes(x)
    cases = {
        "truncated.gz": gzip.compress(good)[:-30],                # cut gzip stream
        "short_payload": good[:-5],                               # header says more than present
        "long_payload": good + b"\x00",
        "bad_magic": b"\x01\x02" + good[2:],
        "float_type": bytes([0, 0, 0x0D]) + good[3:],
        "tiny": b"\x00\x00",
        "bad_ndim": bytes([0, 0, 8, 9]) + good[4:],
    }
    words = {"truncated.gz": "truncated or corrupt", "short_payload": "truncated",
             "long_payload": "trailing", "bad_magic": "magic", "float_type": "type code 0x08",
             "tiny": "header", "bad_ndim": "dimensions"}
    for name, data in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(ValueError, match=words[name]) as info:
            read_idx(p)
        assert name in str(info.value)                            # the message names the file
    with pytest.raises(FileNotFoundError, match="nothere"):
        read_idx(tmp_path / "nothere")


def test_load_mnist_inconsistent_files(tmp_path):
    x, y = tiny_mnist(5, 0)
    write_mnist(tmp_path, "train", x, y[:4])
    with pytest.raises(ValueError, match="expected 5 labels"):
        load_mnist(tmp_path, "train")
    write_mnist(tmp_path, "train", x, np.array([1, 2, 3, 4, 12], np.uint8))
    with pytest.raises(ValueError, match=r"labels in \[0, 9\]"):
        load_mnist(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="t10k-images"):
        load_mnist(tmp_path, "test")
    with pytest.raises(ValueError, match="split"):
        load_mnist(tmp_path, "val")
    with pytest.raises(ValueError, match="kind"):
        load_mnist(tmp_path, "train", kind="kmnist")


# =========================================================== CIFAR-10 binary

def test_load_cifar10_tiny_files(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    expected, labels = write_cifar(folder)
    (folder / "batches.meta.txt").write_text("\n".join(f"name{i}" for i in range(10)) + "\n\n")
    for root in (folder, tmp_path):                               # the folder itself or its parent
        train = load_cifar10(root, "train")
        test = load_cifar10(root, "test")
        assert train.images.shape == (10, 32, 32, 3) and test.images.shape == (3, 32, 32, 3)
        np.testing.assert_allclose(train.images, expected["train"] / 255.0, rtol=1e-6)
        np.testing.assert_allclose(test.images, expected["test"] / 255.0, rtol=1e-6)
        np.testing.assert_array_equal(train.labels, labels["train"])
        assert train.class_names[3] == "name3"


def test_cifar_channel_order_is_chw_in_the_file(tmp_path):
    # one record: R plane all 10, G plane all 20, B plane 30 except pixel (row 1, col 2) = 99
    planes = np.zeros((3, 32, 32), np.uint8)
    planes[0], planes[1], planes[2] = 10, 20, 30
    planes[2, 1, 2] = 99
    rec = bytes([7]) + planes.tobytes()
    for f in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        (tmp_path / f).write_bytes(rec)
    ds = load_cifar10(tmp_path, "test")
    assert ds.labels.tolist() == [7] and ds.class_names[7] == "horse"
    np.testing.assert_allclose(ds.images[0, 0, 0], np.array([10, 20, 30]) / 255, rtol=1e-6)
    np.testing.assert_allclose(ds.images[0, 1, 2], np.array([10, 20, 99]) / 255, rtol=1e-6)


def test_cifar_errors(tmp_path):
    write_cifar(tmp_path)
    good = (tmp_path / "test_batch.bin").read_bytes()
    (tmp_path / "test_batch.bin").write_bytes(good[:-100])
    with pytest.raises(ValueError, match="test_batch.bin.*3073-byte records"):
        load_cifar10(tmp_path, "test")
    (tmp_path / "test_batch.bin").write_bytes(bytes([55]) + good[1:])
    with pytest.raises(ValueError, match=r"label bytes in \[0, 9\]"):
        load_cifar10(tmp_path, "test")
    (tmp_path / "data_batch_3.bin").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3.bin"):
        load_cifar10(tmp_path, "train")


# =========================================================== UCI digits CSV

def write_digits(path: Path, rows):
    text = "\n".join(",".join(str(v) for v in r) for r in rows) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(text.encode()))


def test_load_uci_digits_tiny_file(tmp_path):
    rows = [list(range(16)) * 4 + [3], [16] * 64 + [9], [0] * 64 + [0]]
    path = tmp_path / "uci-digits" / "digits.csv.gz"
    write_digits(path, rows)
    for arg in (path, tmp_path, tmp_path / "uci-digits"):
        ds = load_uci_digits(arg)
        assert ds.images.shape == (3, 8, 8, 1) and ds.images.dtype == np.float32
        np.testing.assert_array_equal(ds.labels, [3, 9, 0])
        assert ds.images[0, 0, 5, 0] == pytest.approx(5 / 16)     # row-major: column 5 of row 0
        assert ds.images[0, 1, 0, 0] == pytest.approx(8 / 16)     # row 1 starts at value 8
        assert ds.images[1].min() == 1.0


def test_load_uci_digits_errors(tmp_path):
    cases = {"cols": [[1] * 64], "range": [[17] * 64 + [1]], "label": [[1] * 64 + [10]],
             "frac": [[0.5] * 64 + [1]]}
    words = {"cols": "65 columns", "range": r"\[0, 16\]", "label": r"labels in \[0, 9\]", "frac": "integer"}
    for name, rows in cases.items():
        p = tmp_path / f"{name}.csv.gz"
        write_digits(p, rows)
        with pytest.raises(ValueError, match=words[name]):
            load_uci_digits(p)
    p = tmp_path / "junk.csv.gz"
    p.write_bytes(gzip.compress(b"1,2,x\n"))
    with pytest.raises(ValueError, match="junk.csv.gz"):
        load_uci_digits(p)
    p = tmp_path / "cut.csv.gz"
    p.write_bytes(gzip.compress(b"1,2,3\n" * 100)[:-20])
    with pytest.raises(ValueError, match="cut.csv.gz.*truncated or corrupt"):
        load_uci_digits(p)
    with pytest.raises(FileNotFoundError, match="digits.csv.gz"):
        load_uci_digits(tmp_path / "empty_dir_does_not_exist")


# =========================================================== image folder

def test_load_image_folder(tmp_path):
    (tmp_path / "dog").mkdir()
    (tmp_path / "cat").mkdir()
    Image.new("RGB", (20, 10), (255, 0, 0)).save(tmp_path / "cat" / "red.png")
    Image.new("RGBA", (8, 8), (0, 0, 255, 255)).save(tmp_path / "cat" / "blue.png")
    Image.new("L", (5, 5), 128).save(tmp_path / "dog" / "grey.png")
    Image.new("RGB", (8, 8), (0, 255, 0)).save(tmp_path / "dog" / "green.jpg", quality=100)
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    (tmp_path / "dog" / ".hidden.png").write_bytes(b"junk")
    ds = load_image_folder(tmp_path, image_size=8)
    assert ds.class_names == ["cat", "dog"]
    assert ds.images.shape == (4, 8, 8, 3) and ds.images.dtype == np.float32
    np.testing.assert_array_equal(ds.labels, [0, 0, 1, 1])         # sorted files within each class
    np.testing.assert_allclose(ds.images[0], np.broadcast_to([0, 0, 1], (8, 8, 3)))    # blue.png
    np.testing.assert_allclose(ds.images[1], np.broadcast_to([1, 0, 0], (8, 8, 3)))    # red.png, resized
    np.testing.assert_allclose(ds.images[3], 128 / 255, rtol=1e-6)                      # grey.png
    grey = load_image_folder(tmp_path, image_size=(4, 6), channels=1)
    assert grey.images.shape == (4, 4, 6, 1)
    np.testing.assert_allclose(grey.images[3], 128 / 255, rtol=1e-6)


def test_load_image_folder_errors(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="broken.png"):
        load_image_folder(tmp_path, 8)
    (tmp_path / "a" / "broken.png").unlink()
    with pytest.raises(ValueError, match="found none"):
        load_image_folder(tmp_path, 8)
    with pytest.raises(ValueError, match="channels"):
        load_image_folder(tmp_path, 8, channels=2)
    with pytest.raises(FileNotFoundError, match="root"):
        load_image_folder(tmp_path / "missing", 8)
    with pytest.raises(ValueError, match="subfolder per class"):
        load_image_folder(tmp_path / "a", 8)


def test_load_dataset_folder_train_test_and_split(tmp_path):
    for split in ("train", "test"):
        for cls, colour in (("x", (255, 0, 0)), ("y", (0, 255, 0))):
            d = tmp_path / "set" / split / cls
            d.mkdir(parents=True)
            for i in range(5):
                Image.new("RGB", (6, 6), colour).save(d / f"{i}.png")
    train, test = load_dataset("folder", root=tmp_path / "set", image_size=6, download=False)
    assert len(train) == 10 and len(test) == 10 and train.class_names == ["x", "y"]
    train, val = load_dataset("folder", root=tmp_path / "set" / "train", image_size=6, seed=1)
    assert len(train) == 8 and len(val) == 2


# =========================================================== real data (when present)

needs_shared = pytest.mark.skipif(not (SHARED / "mnist" / "t10k-images-idx3-ubyte.gz").is_file(),
                                  reason="../shared/data is not present")

MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
DIGITS_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


@needs_shared
def test_real_mnist_test_set():
    ds = load_mnist(SHARED / "mnist", "test")
    assert ds.images.shape == (10000, 28, 28, 1)
    assert ds.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert ds.class_counts().tolist() == MNIST_TEST_COUNTS
    assert ds.images.min() == 0.0 and ds.images.max() == 1.0


@needs_shared
def test_real_mnist_test_split(no_network):
    train, held = load_dataset("mnist-test-split", data_dir=SHARED, download=False)
    assert len(train) == 8000 and len(held) == 2000
    assert (train.class_counts() + held.class_counts()).tolist() == MNIST_TEST_COUNTS
    again, _ = load_dataset("mnist-test-split", data_dir=SHARED, download=False)
    np.testing.assert_array_equal(again.labels, train.labels)
    other, _ = load_dataset("mnist-test-split", data_dir=SHARED, download=False, seed=1)
    assert not np.array_equal(other.labels, train.labels)
    # the split is not the raw order (the first 5,000 test images are the easier ones)
    assert held.labels[:10].tolist() != [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    # with download=True the present, verified files are used as they are: no network
    load_dataset("mnist-test-split", data_dir=SHARED, download=True)
    assert no_network == []


@needs_shared
def test_real_uci_digits(no_network):
    ds = load_uci_digits(SHARED)
    assert ds.images.shape == (1797, 8, 8, 1)
    assert ds.class_counts().tolist() == DIGITS_COUNTS
    assert ds.images.min() == 0.0 and ds.images.max() == 1.0
    train, test = load_dataset("digits", data_dir=SHARED, download=True)   # checksum matches: no network
    assert len(train) + len(test) == 1797 and len(test) == 359
    assert no_network == []


@needs_shared
def test_registry_checksums_match_shared_files():
    for f in D.REGISTRY["mnist"][2:]:
        data = (SHARED / "mnist" / f.filename).read_bytes()
        assert sha256_of(data) == f.sha256
        assert hashlib.md5(data).hexdigest() == f.md5
    data = (SHARED / "uci-digits" / "digits.csv.gz").read_bytes()
    assert sha256_of(data) == D.REGISTRY["digits"][0].sha256


# =========================================================== downloads

def test_download_fallback_to_mirror_and_atomic(tmp_path, monkeypatch):
    payload = b"tinyvit test payload " * 100
    src = tmp_path / "mirror" / "file.bin"
    src.parent.mkdir()
    src.write_bytes(payload)
    dest = tmp_path / "data" / "file.bin"
    urls = [(tmp_path / "missing" / "file.bin").as_uri(), src.as_uri()]
    out = download(urls, dest, sha256=sha256_of(payload))
    assert out == dest and dest.read_bytes() == payload
    assert sorted(p.name for p in dest.parent.iterdir()) == ["file.bin"]   # no temporary files left
    # md5 alone is accepted too
    dest2 = tmp_path / "data" / "file2.bin"
    download(src.as_uri(), dest2, md5=hashlib.md5(payload).hexdigest())
    assert dest2.read_bytes() == payload


def test_download_rejects_bad_checksum_and_tries_next(tmp_path):
    good, bad = b"good bytes", b"tampered bytes"
    (tmp_path / "bad.bin").write_bytes(bad)
    (tmp_path / "good.bin").write_bytes(good)
    dest = tmp_path / "out" / "x.bin"
    download([(tmp_path / "bad.bin").as_uri(), (tmp_path / "good.bin").as_uri()], dest, sha256=sha256_of(good))
    assert dest.read_bytes() == good
    dest3 = tmp_path / "out" / "y.bin"
    with pytest.raises(DownloadError, match="checksum mismatch") as info:
        download([(tmp_path / "bad.bin").as_uri()], dest3, sha256=sha256_of(good))
    assert str(dest3) in str(info.value)
    assert not dest3.exists()
    assert sorted(p.name for p in dest3.parent.iterdir()) == ["x.bin"]


def test_download_present_file_is_not_fetched_again(tmp_path, no_network):
    payload = b"already here"
    dest = tmp_path / "f.bin"
    dest.write_bytes(payload)
    assert download(["https://example.invalid/f.bin"], dest, sha256=sha256_of(payload)) == dest
    assert no_network == []


def test_download_wrong_present_file_is_replaced(tmp_path):
    good = b"the right content"
    (tmp_path / "src.bin").write_bytes(good)
    dest = tmp_path / "d" / "f.bin"
    dest.parent.mkdir()
    dest.write_bytes(b"stale partial cont")
    download((tmp_path / "src.bin").as_uri(), dest, sha256=sha256_of(good))
    assert dest.read_bytes() == good


def test_download_offline_error_message(tmp_path, no_network):
    dest = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    dest.parent.mkdir()
    dest.write_bytes(b"old")                                      # a bad old copy stays untouched
    sha = "f" * 64
    with pytest.raises(DownloadError) as info:
        download(["https://a.example/x.gz", "https://b.example/x.gz"], dest, sha256=sha)
    msg = str(info.value)
    assert "t10k-labels-idx1-ubyte.gz" in msg and str(dest) in msg and sha in msg
    assert "a.example" in msg and "b.example" in msg and "place" in msg
    assert no_network == ["https://a.example/x.gz", "https://b.example/x.gz"]
    assert dest.read_bytes() == b"old"
    assert sorted(p.name for p in dest.parent.iterdir()) == [dest.name]


def test_download_interrupted_stream_leaves_nothing(tmp_path, monkeypatch):
    class Broken(io.BytesIO):
        def read(self, n=-1):
            if self.tell() > 10:
                raise ConnectionResetError("connection dropped")
            return super().read(5)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: Broken(b"x" * 100))
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError, match="connection dropped"):
        download(["https://x.example/f.bin"], dest, sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_download_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="checksum"):
        download("file:///nowhere", tmp_path / "f")
    with pytest.raises(TypeError, match="urls"):
        download([], tmp_path / "f", sha256="0" * 64)


def test_fetch_and_load_dataset_offline_messages(tmp_path, no_network):
    with pytest.raises(FileNotFoundError) as info:
        fetch("fashion-mnist", tmp_path, download_missing=False)
    msg = str(info.value)
    assert str(tmp_path / "fashion-mnist" / "train-images-idx3-ubyte.gz") in msg
    assert "8d4fb7e6c68d591d4c3dfef9ec88bf0d" in msg
    # only the test files present: the error points at the test-split mode
    x, y = tiny_mnist(4, 0)
    write_mnist(tmp_path / "mnist", "test", x, y)
    with pytest.raises(FileNotFoundError, match="mnist-test-split"):
        load_dataset("mnist", data_dir=tmp_path, download=False)
    with pytest.raises(DownloadError, match="mnist-test-split"):
        load_dataset("mnist", data_dir=tmp_path, download=True)
    assert any("train-images" in u for u in no_network)
    with pytest.raises(FileNotFoundError, match="cifar-10-binary.tar.gz"):
        load_dataset("cifar10", data_dir=tmp_path, download=False)
    with pytest.raises(ValueError, match="name"):
        load_dataset("imagenet", data_dir=tmp_path)


def test_load_dataset_downloads_through_registry(tmp_path, monkeypatch):
    """Registry entries pointed at file:// mirrors: downloaded, verified, loaded."""
    mirror = tmp_path / "mirror"
    tr_x, tr_y = tiny_mnist(6, 0)
    te_x, te_y = tiny_mnist(3, 1)
    write_mnist(mirror, "train", tr_x, tr_y)
    write_mnist(mirror, "test", te_x, te_y)
    entries = []
    for f in D.REGISTRY["fashion-mnist"]:
        data = (mirror / f.filename).read_bytes()
        entries.append(D.RemoteFile(f.filename, ("https://offline.invalid/" + f.filename,
                                                 (mirror / f.filename).as_uri()), md5=hashlib.md5(data).hexdigest()))
    monkeypatch.setitem(D.REGISTRY, "fashion-mnist", entries)
    real_urlopen = urllib.request.urlopen

    def only_files(url, *a, **k):
        if not str(url).startswith("file:"):
            raise urllib.error.URLError("offline")
        return real_urlopen(url, *a, **k)

    monkeypatch.setattr(urllib.request, "urlopen", only_files)
    train, test = load_dataset("fashion", data_dir=tmp_path / "data")
    assert len(train) == 6 and len(test) == 3 and train.class_names[-1] == "Ankle boot"
    np.testing.assert_array_equal(test.labels, te_y)
    assert sorted(p.name for p in (tmp_path / "data" / "fashion-mnist").iterdir()) == sorted(
        f.filename for f in entries)


# =========================================================== tar extraction and CIFAR via load_dataset

def make_tar(path: Path, members: dict, links: dict | None = None):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)


@pytest.mark.parametrize("members, links, word", [
    ({"../evil.bin": b"x"}, None, "'..'"),
    ({"ok/../../evil.bin": b"x"}, None, "'..'"),
    ({"/tmp/evil.bin": b"x"}, None, "absolute"),
    ({"ok.bin": b"x"}, {"link": "/etc/passwd"}, "link"),
])
def test_extract_tar_refuses_unsafe_members(tmp_path, members, links, word):
    arc = tmp_path / "a.tar.gz"
    make_tar(arc, members, links)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=word):
        extract_tar(arc, out)
    assert not out.exists()                                       # nothing written before the check
    assert not (tmp_path / "evil.bin").exists()


def test_extract_tar_corrupt_archive(tmp_path):
    arc = tmp_path / "a.tar.gz"
    make_tar(arc, {"f.bin": os.urandom(5000)})
    arc.write_bytes(arc.read_bytes()[:-200])
    with pytest.raises(ValueError, match="a.tar.gz"):
        extract_tar(arc, tmp_path / "out")


def test_load_dataset_cifar10_from_archive(tmp_path, no_network):
    staging = tmp_path / "staging" / "cifar-10-batches-bin"
    expected, labels = write_cifar(staging)
    arc = tmp_path / "data" / "cifar10" / "cifar-10-binary.tar.gz"
    arc.parent.mkdir(parents=True)
    make_tar(arc, {f"cifar-10-batches-bin/{p.name}": p.read_bytes() for p in sorted(staging.iterdir())})
    train, test = load_dataset("cifar-10", data_dir=tmp_path / "data", download=False)
    assert train.images.shape == (10, 32, 32, 3) and len(test) == 3
    np.testing.assert_allclose(test.images, expected["test"] / 255.0, rtol=1e-6)
    assert no_network == []


def test_load_dataset_shapes():
    train, test = load_dataset("shapes", n_train=40, n_test=16, image_size=16, seed=5)
    assert train.images.shape == (40, 16, 16, 3) and test.images.shape == (16, 16, 16, 3)
    again, _ = load_dataset("shapes", n_train=40, n_test=16, image_size=16, seed=5)
    np.testing.assert_array_equal(again.images, train.images)
    # train and test are different images
    assert not np.any(np.all(np.abs(train.images[:, None] - test.images[None]) < 1e-6, axis=(2, 3, 4)))


# =========================================================== split and batching

def test_train_val_split():
    ds = indexed_dataset(n=50)
    train, val = train_val_split(ds, val_fraction=0.2, seed=0)
    assert len(train) == 40 and len(val) == 10
    ids = np.concatenate([train.images[:, 0, 0, 0], val.images[:, 0, 0, 0]]).astype(int)
    assert sorted(ids.tolist()) == list(range(50))                 # disjoint and complete
    np.testing.assert_array_equal(train.labels, train.images[:, 0, 0, 0].astype(int) % 3)
    again, _ = train_val_split(ds, 0.2, seed=0)
    np.testing.assert_array_equal(again.images, train.images)
    other, _ = train_val_split(ds, 0.2, seed=1)
    assert not np.array_equal(other.images, train.images)
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split(ds, 0.0)
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split(indexed_dataset(n=3), 0.1)
    with pytest.raises(TypeError, match="ds"):
        train_val_split(np.zeros(3))


def ids_of(batch_images):
    return batch_images[:, 0, 0, 0].astype(int).tolist()


def test_batches_cover_every_example_once_per_epoch():
    ds = indexed_dataset(n=23)
    it = BatchIterator(ds, batch_size=5, seed=7)
    assert len(it) == 5
    for epoch in range(2):
        batches = list(it)
        assert [len(x) for x, _ in batches] == [5, 5, 5, 5, 3]
        seen = sum((ids_of(x) for x, _ in batches), [])
        assert sorted(seen) == list(range(23))
        for x, y in batches:
            assert x.dtype == np.float32 and y.dtype == np.int64
            np.testing.assert_array_equal(y, np.array(ids_of(x)) % 3)   # labels travel with images
    assert it.next_epoch == 2
    dropped = list(BatchIterator(ds, 5, drop_last=True).epoch(0))
    assert len(dropped) == 4 and all(len(x) == 5 for x, _ in dropped)
    assert len(BatchIterator(ds, 5, drop_last=True)) == 4
    ordered = list(BatchIterator(ds, 10, shuffle=False).epoch(0))
    assert ids_of(ordered[0][0]) == list(range(10)) and ids_of(ordered[2][0]) == [20, 21, 22]


def test_batches_deterministic_per_epoch():
    ds = indexed_dataset(n=30)
    a = BatchIterator(ds, 8, seed=3)
    b = BatchIterator(ds, 8, seed=3)
    e0a, e0b = [ids_of(x) for x, _ in a], [ids_of(x) for x, _ in b]
    e1a = [ids_of(x) for x, _ in a]
    assert e0a == e0b
    assert e0a != e1a                                             # a new order each epoch
    assert [ids_of(x) for x, _ in a.epoch(0)] == e0a              # replaying epoch 0
    assert [ids_of(x) for x, _ in BatchIterator(ds, 8, seed=4).epoch(0)] != e0a
    aug = Augment(pad=2, flip=True)
    r1 = [x for x, _ in BatchIterator(make_shapes(16, 16), 8, seed=1, augment=aug).epoch(2)]
    r2 = [x for x, _ in BatchIterator(make_shapes(16, 16), 8, seed=1, augment=aug).epoch(2)]
    for x1, x2 in zip(r1, r2):
        np.testing.assert_array_equal(x1, x2)


def test_batches_do_not_alias_the_dataset():
    ds = indexed_dataset(n=6)
    for shuffle in (True, False):
        for x, _ in BatchIterator(ds, 3, shuffle=shuffle).epoch(0):
            x += 100.0
    assert ds.images.max() == 5.0


def asymmetric_image(h=6, w=6, c=3):
    return np.arange(h * w * c, dtype=np.float32).reshape(h, w, c) / (h * w * c) + 0.01   # no zeros


def test_flip_correctness():
    img = asymmetric_image()
    batch = np.repeat(img[None], 64, axis=0)
    out = Augment(flip=True)(batch, np.random.default_rng(0))
    assert out.shape == batch.shape and out.dtype == np.float32
    mirrored = img[:, ::-1, :]
    assert mirrored[2, 0, 1] == img[2, 5, 1]
    is_same = np.all(out == img, axis=(1, 2, 3))
    is_flip = np.all(out == mirrored, axis=(1, 2, 3))
    assert np.all(is_same ^ is_flip)                              # each image is one or the other
    assert 10 < is_flip.sum() < 54                                # both happen, about half flipped
    np.testing.assert_array_equal(batch, np.repeat(img[None], 64, axis=0))   # input untouched


def test_random_crop_is_a_shift_of_the_zero_padded_image():
    img = asymmetric_image()
    p = 2
    batch = np.repeat(img[None], 40, axis=0)
    out = Augment(pad=p)(batch, np.random.default_rng(1))
    assert out.shape == batch.shape
    padded = np.pad(img, ((p, p), (p, p), (0, 0)))
    windows = {(dy, dx): padded[dy:dy + 6, dx:dx + 6] for dy in range(2 * p + 1) for dx in range(2 * p + 1)}
    shifts = []
    for o in out:
        match = [k for k, w in windows.items() if np.array_equal(o, w)]
        assert len(match) == 1
        shifts.append(match[0])
    assert len(set(shifts)) > 5                                   # offsets vary across the batch
    assert any(s != (p, p) for s in shifts) and (out == 0).any()  # zero padding shows up


def test_iterator_augment_then_normalize():
    """Batches hold the data's values; normalisation is the training loop's one path
    (normalize_images), applied after augmentation."""
    from tinyvit.train import normalize_images
    ds = make_shapes(20, image_size=16, seed=0)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    plain = next(iter(BatchIterator(ds, 20, shuffle=False).epoch(0)))[0]
    np.testing.assert_array_equal(plain, ds.images.astype(np.float32))
    normed = normalize_images(plain, [list(mean), list(std)])
    np.testing.assert_allclose(normed, (plain - np.array(mean)) / np.array(std), rtol=1e-5, atol=1e-6)
    assert normed.dtype == np.float32
    x, y = next(iter(BatchIterator(ds, 8, augment=Augment(pad=4, flip=True)).epoch(0)))
    assert x.shape == (8, 16, 16, 3) and x.dtype == np.float32 and y.shape == (8,)
    mean_c, std_c = D.channel_stats(ds)
    assert len(mean_c) == 3 and all(s > 0 for s in std_c)


@pytest.mark.parametrize("kwargs, word", [
    (dict(batch_size=0), "batch_size"),
    (dict(batch_size=50, drop_last=True), "batch_size"),
    (dict(augment="flip"), "augment"),
    (dict(seed=-3), "seed"),
    (dict(shuffle="yes"), "shuffle"),
])
def test_iterator_errors(kwargs, word):
    ds = make_shapes(10, image_size=8)
    with pytest.raises((ValueError, TypeError), match=word):
        BatchIterator(ds, **{"batch_size": 4, **kwargs})
    with pytest.raises((ValueError, TypeError), match="pad"):
        Augment(pad=-1)


def test_the_suite_cannot_reach_the_network():
    """conftest.py blocks every non-file URL, so a loader that forgot a local file fails loudly."""
    with pytest.raises(AssertionError, match="tried to reach the network: https://example.invalid/x"):
        urllib.request.urlopen("https://example.invalid/x")


# =========================================================== hostile inputs

def _png_header_only(path, width, height):
    """A PNG whose IHDR claims width x height, followed by a tiny (wrong) IDAT: Pillow reads
    the size from the header alone."""
    import struct

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


def test_read_idx_dimensions_whose_product_wraps_int64_are_refused(tmp_path):
    # 65536^4 = 2^64: np.prod in int64 gives 0, which an empty payload would "match"
    header = bytes([0, 0, 8, 4]) + (65536).to_bytes(4, "big") * 4
    for name, data in (("wrap", header), ("wrap.gz", gzip.compress(header))):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=r"18446744073709551616|\(65536, 65536, 65536, 65536\)") as e:
            read_idx(tmp_path / name)
        assert name in str(e.value) and "\n" not in str(e.value)


def test_read_idx_reads_the_gzip_header_before_decompressing_the_rest(tmp_path, monkeypatch):
    # a bad header at the front of a large gzip is reported after reading a few bytes
    p = tmp_path / "big.gz"
    p.write_bytes(gzip.compress(bytes([1, 2, 8, 3]) + b"\0" * 5_000_000))
    read_sizes = []
    real_read = gzip.GzipFile.read
    monkeypatch.setattr(gzip.GzipFile, "read", lambda self, n=-1: read_sizes.append(n) or real_read(self, n))
    with pytest.raises(ValueError, match="magic"):
        read_idx(p)
    assert read_sizes and all(0 <= n <= 16 for n in read_sizes)


def test_an_image_whose_header_claims_60000x60000_is_one_clear_error(tmp_path):
    from tinyvit.datasets import load_image_folder
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "b" / "ok.png")
    _png_header_only(tmp_path / "a" / "bomb.png", 60000, 60000)
    with pytest.raises(ValueError, match=r"bomb.png: expected an image of at most [0-9,]+ pixels "
                                         r"\(Pillow's MAX_IMAGE_PIXELS\), got 3,600,000,000 pixels") as e:
        load_image_folder(tmp_path, image_size=8)
    assert "\n" not in str(e.value)
    # just above Pillow's limit (where Pillow only warns): refused the same way
    side = int((Image.MAX_IMAGE_PIXELS + 1) ** 0.5) + 1
    _png_header_only(tmp_path / "a" / "bomb.png", side, side)
    with pytest.raises(ValueError, match=f"got {side * side:,} pixels"):
        load_image_folder(tmp_path, image_size=8)


def test_sizes_that_would_exhaust_memory_are_refused_before_allocating():
    with pytest.raises(ValueError, match=r"^n: 1000000000000 needs .* for 1000000000000 images of 32x32 "
                                         r"with their masks; expected at most this machine's"):
        make_shapes(10 ** 12, 32)
    with pytest.raises(ValueError, match=r"^image_size: 100000 needs .*supersampling; expected at most"):
        make_shapes(10, 100000)


def test_bad_normalisation_names_the_part():
    from tinyvit.train import TrainConfig
    for normalize, word in (([0.5, 0.0], "std: expected numbers > 0"), ([0.5, "x"], "std: expected a number"),
                            ([float("inf"), 1.0], "mean: expected finite"), ([0.5], "normalize"),
                            ([[0.5, 0.5], 1.0, 2.0], "normalize")):
        with pytest.raises((ValueError, TypeError), match=word):
            TrainConfig(normalize=normalize)


@pytest.mark.parametrize("fmt", ["TIFF", "PNG", "JPEG"])
def test_damaged_images_give_one_error_and_no_pillow_warnings(tmp_path, fmt):
    import warnings
    from tinyvit.datasets import read_image
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(buf, fmt)
    data, rng = buf.getvalue(), np.random.default_rng(1)
    path = tmp_path / f"im.{fmt.lower()}"
    refused = 0
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for it in range(120):
            d = bytearray(data)
            if it % 2:
                d = d[:rng.integers(0, len(d))]
            else:
                for _ in range(rng.integers(1, 6)):
                    d[rng.integers(0, len(d))] = rng.integers(0, 256)
            path.write_bytes(bytes(d))
            try:
                read_image(path, (8, 8), 3)
            except ValueError as e:
                assert path.name in str(e) and "\n" not in str(e)
                refused += 1
    assert refused > 30 and [str(w.message) for w in seen] == []


def test_a_digits_csv_that_inflates_without_end_is_refused_after_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(D.formats, "_DIGITS_MAX_BYTES", 1000)
    (tmp_path / "digits.csv.gz").write_bytes(gzip.compress(b"0," * 5000))
    with pytest.raises(ValueError, match=r"digits.csv.gz: expected at most 1 KB of data, got more"):
        load_uci_digits(tmp_path)
