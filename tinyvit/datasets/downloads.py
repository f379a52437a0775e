"""Verified downloads (checksums, atomic writes) and safe tar extraction."""

from __future__ import annotations

import hashlib
import os
import tarfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence


from .._checks import check_choice, describe
from .._files import atomic_open
from .base import DEFAULT_DATA_DIR


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
