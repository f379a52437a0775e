"""Files in and out, safely: atomic writes and an ``.npz`` reader that looks before it allocates.

Writing (``atomic_open``): the data goes to a temporary file beside the target,
named ``.<target>.<pid>.<random>.tinyvit-tmp``, which is fsynced and then
renamed over the target, so a crash leaves either the old file or the new one,
never half of one. The temporary file is created with mode 0666 and the
process's umask applied, like any file ``open()`` creates (not 0600, which is
what ``tempfile.mkstemp`` would give). A process killed with SIGKILL in the
middle of a save cannot remove its temporary file; the next save to the same
target removes such leftovers (those whose process no longer runs).

Reading (``NpzReader``): an ``.npz`` is a zip of ``.npy`` members, each a short
header (dtype, shape) followed by the raw data. ``np.load`` allocates the whole
array the header announces before reading a byte of it, so a 100-byte file
whose header claims 10^12 elements exhausts memory. The reader parses every
member's header first (``numpy.lib.format.read_magic`` and
``read_array_header_*``), checks it against the member's size in the archive,
refuses object arrays (they would need pickle), and lets the caller compare the
shapes with what it expects before any data is read.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import secrets
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

TMP_SUFFIX = ".tinyvit-tmp"
# deflate cannot compress better than about 1032:1; a member claiming more is lying
_MAX_DEFLATE_RATIO = 1100


# =========================================================== memory

def physical_memory_bytes() -> int:
    """Total physical memory of the machine in bytes (0 if unknown)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):         # pragma: no cover - not POSIX
        return 0


def format_bytes(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n} bytes" if unit == "bytes" else f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} PB"                                    # pragma: no cover


def check_memory(name: str, value, nbytes: int, what: str) -> None:
    """ValueError when ``nbytes`` (what ``name`` = ``value`` asks for) exceeds the machine's
    physical memory, so the mistake is named before NumPy tries (and fails) to allocate it."""
    total = physical_memory_bytes()
    if total and nbytes > total:
        raise ValueError(f"{name}: {value} needs {format_bytes(nbytes)} for {what}; expected at most "
                         f"this machine's {format_bytes(total)} of memory")


# =========================================================== atomic writes

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):                      # another user's process, or unknown
        return True
    return True


def remove_dead_files(folder, prefix: str, suffix: str = "") -> list[Path]:
    """Remove the files ``<prefix><pid>.<anything><suffix>`` in ``folder`` whose process
    ``pid`` no longer runs (left behind by a process killed with SIGKILL). Returns them."""
    folder = Path(folder)
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if not (name.startswith(prefix) and name.endswith(suffix)):
            continue
        pid_text = name[len(prefix):len(name) - len(suffix)].split(".", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid() or _pid_alive(int(pid_text)):
            continue                                        # still in use (or ours)
        with contextlib.suppress(FileNotFoundError):
            os.remove(folder / name)
            removed.append(folder / name)
    return removed


def remove_stale_temps(path) -> list[Path]:
    """Remove temporary files left beside ``path`` by saves whose process has died."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    return remove_dead_files(folder, f".{path.name}.", TMP_SUFFIX)


@contextlib.contextmanager
def atomic_open(path, mode: str = "wb"):
    """``with atomic_open(path) as f: f.write(...)`` -- the file appears whole at ``path`` when
    the block ends, or not at all if it raises. mode "wb" or "w" (text, UTF-8, no newline
    translation). Creates the parent directory. The file's mode follows the umask.
    ``f.name`` is the temporary file's path (to check what was written before it counts)."""
    if mode not in ("wb", "w"):
        raise ValueError(f"mode: expected 'wb' or 'w', got {mode!r}")
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = folder / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    kw = {} if mode == "wb" else {"encoding": "utf-8", "newline": ""}
    try:
        # 0o666 and the umask, as open() would; f.name is the temporary path
        with open(tmp, mode, opener=lambda p, _: os.open(p, flags, 0o666), **kw) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def save_npz(path, arrays: dict) -> Path:
    """np.savez to ``path`` atomically (no pickle: object arrays are refused by the reader)."""
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)
    return Path(path)


# =========================================================== reading .npz safely

class NpzError(ValueError):
    """A file that is not a readable .npz of plain arrays (one-line message naming the file)."""


def _peek(path: Path) -> str:
    """What a non-zip file looks like, for the error message."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return "an unreadable file"
    if not head:
        return "an empty file"
    if head.startswith(b"\x89PNG"):
        return "a PNG image"
    if head[:3] == b"\xff\xd8\xff":
        return "a JPEG image"
    if head.startswith(b"\x93NUMPY"):
        return "a single .npy array"
    if head.lstrip()[:1] in (b"{", b"["):
        return "a JSON (text) file"
    if head.startswith(b"PK"):
        return "a damaged zip archive (truncated or corrupt?)"
    return f"a file starting with bytes {head[:4].hex()}"


class NpzReader:
    """The members of an .npz file, their headers read, their data not yet.

    >>> with NpzReader(path, "checkpoint") as r:
    ...     r.shapes["param/head.W"]            # (D, K), from the header alone
    ...     a = r.read("param/head.W")          # now the data

    Every error is an NpzError (a ValueError) naming the file.
    """

    def __init__(self, path, what: str = "file"):
        self.path = Path(path)
        self.what = what
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, np.dtype] = {}
        self._info: dict[str, tuple] = {}
        if not self.path.is_file():
            raise FileNotFoundError(f"{what}: file not found: {self.path}")
        try:
            self._zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
            raise NpzError(f"{self.path}: expected an .npz archive (a zip of .npy arrays), "
                           f"got {_peek(self.path)}") from e
        try:
            for info in self._zip.infolist():
                self._header(info)
        except BaseException:
            self._zip.close()
            raise

    def _fail(self, name: str, why: str):
        raise NpzError(f"{self.path}: array {name!r}: {why} (truncated or corrupt file?)")

    def _header(self, info: zipfile.ZipInfo) -> None:
        name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            self._fail(name, f"stored member of {info.compress_size} bytes claims {info.file_size}")
        if info.file_size > _MAX_DEFLATE_RATIO * max(info.compress_size, 1) + 1024:
            self._fail(name, f"{info.compress_size} compressed bytes claim {info.file_size} bytes")
        try:
            with self._zip.open(info) as f:
                version = npy_format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = npy_format.read_array_header_1_0(f)
                elif version in ((2, 0), (3, 0)):
                    shape, fortran, dtype = npy_format.read_array_header_2_0(f)
                else:                                       # pragma: no cover - future versions
                    raise ValueError(f"unknown .npy version {version}")
                offset = f.tell()
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, SyntaxError,
                NotImplementedError, RuntimeError) as e:     # unknown compression, encryption
            self._fail(name, f"no valid .npy header ({' '.join(str(e).split())})")
        if dtype.hasobject:
            raise NpzError(f"{self.path}: array {name!r} holds Python objects ({dtype}), which "
                           "cannot be read without pickle; expected plain numbers or strings")
        nbytes = math.prod(shape) * dtype.itemsize                  # Python ints: no wrap-around
        if offset + nbytes != info.file_size:
            self._fail(name, f"header says shape {shape} of {dtype} ({format_bytes(nbytes)}), the "
                             f"member holds {format_bytes(max(info.file_size - offset, 0))}")
        self.shapes[name] = tuple(shape)
        self.dtypes[name] = dtype
        self._info[name] = (info, fortran, offset, nbytes)

    @property
    def files(self) -> list[str]:
        return list(self.shapes)

    def __contains__(self, name) -> bool:
        return name in self.shapes

    def read(self, name: str) -> np.ndarray:
        """The array stored under ``name`` (its size was checked against the archive)."""
        if name not in self._info:
            raise KeyError(name)
        info, fortran, offset, nbytes = self._info[name]
        check_memory(str(self.path), f"array {name!r} of shape {self.shapes[name]}", nbytes,
                     "its data")
        arr = np.empty(self.shapes[name], dtype=self.dtypes[name], order="F" if fortran else "C")
        try:
            with self._zip.open(info) as f:
                f.read(offset)                              # past the header
                view = memoryview(arr.reshape(-1, order="A").view(np.uint8)) if nbytes else b""
                got = 0
                while got < nbytes:
                    n = f.readinto(view[got:])
                    if not n:
                        break
                    got += n
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error, ValueError, NotImplementedError,
                RuntimeError) as e:
            self._fail(name, f"could not read its data ({type(e).__name__}: {' '.join(str(e).split())})")
        if got != nbytes:
            self._fail(name, f"expected {nbytes} bytes of data, got {got}")
        return arr

    def close(self) -> None:
        self._zip.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# =========================================================== images

@contextlib.contextmanager
def open_image(path):
    """``with open_image(path) as im:`` -- a PIL image, its size checked before any decoding.

    Pillow reads only the header on open; a PNG whose header claims 60000x60000 would need
    10 GB once decoded. Anything above Pillow's MAX_IMAGE_PIXELS (about 89 million pixels,
    Pillow's own decompression-bomb limit, which a user may raise) is refused here with one
    line naming the file, as is a file Pillow cannot read. Errors raised inside the block
    while decoding (a truncated file) are reported the same way; Pillow's warnings about
    damaged metadata are not printed.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"image: expected an image file, got the directory {path}")
    if not path.is_file():
        raise FileNotFoundError(f"image: file not found: {path}")
    limit = Image.MAX_IMAGE_PIXELS
    try:
        # Pillow warns about damaged metadata (TIFF tags, EXIF) on the way: the image either
        # decodes, or fails with the one line below, so those warnings are dropped
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if limit and w * h > limit:
                    raise _TooLarge(w, h)
                yield im
    except (_TooLarge, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        if isinstance(e, _TooLarge):
            size = f"{e.args[0]}x{e.args[1]}"
        else:                                            # Pillow refused it inside open()
            found = re.search(r"\((\d+) pixels\)", str(e))
            size = f"{int(found.group(1)):,} pixels" if found else f"more ({e})"
        raise ValueError(f"{path}: expected an image of at most {limit:,} pixels (Pillow's "
                         f"MAX_IMAGE_PIXELS), got {size}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, EOFError, ValueError) as e:
        raise ValueError(f"{path}: could not read this image ({type(e).__name__}: {e})") from e


class _TooLarge(Exception):
    pass
