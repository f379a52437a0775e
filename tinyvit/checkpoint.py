"""Checkpoints: everything needed to use a model or resume its training, in ONE ``.npz``.

A checkpoint is a plain NumPy ``.npz`` archive (a zip of ``.npy`` files) that
loads with ``allow_pickle=False``. Its entries:

    format              0-d str   "tinyvit-checkpoint" (tells it apart from other npz files)
    format_version      0-d int64 FORMAT_VERSION
    model_config        0-d str   JSON of ViTConfig.to_dict()
    train_config        0-d str   JSON of the training settings (TrainConfig.to_dict()), or "null"
    meta                0-d str   JSON: class names, normalisation (mean, std), dataset, ...
    history             0-d str   JSON of the training history, or "null"
    state/epoch         0-d int64 epoch being trained (0-based; == epochs when training finished)
    state/batch         0-d int64 batches of that epoch already done (0 at an epoch boundary)
    state/step          0-d int64 optimizer steps done in total
    rng/seed            0-d int64 the data seed: batch order and augmentation of epoch e come
                                  from a generator seeded with (seed, e), so (seed, epoch, batch)
                                  is the whole RNG state, no pickled generator needed
    param/<name>        every model parameter, with its dtype
    optim/<name>        the optimizer's state_dict() ("optim/step", "optim/m.<param>", ...)
    extra/<name>        arrays of parts outside the ViT (e.g. tinyvit.box's box head), if any

Files are written to a temporary file in the target's directory and moved into
place with ``os.replace``, so a crash (or Ctrl-C) during a save leaves the
previous checkpoint whole.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .model import ViT, ViTConfig

__all__ = ["CheckpointError", "Checkpoint", "save_checkpoint", "load_checkpoint",
           "is_checkpoint", "FORMAT", "FORMAT_VERSION"]

FORMAT = "tinyvit-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a usable tinyvit checkpoint (the message is one line)."""


@dataclass
class Checkpoint:
    """The contents of a checkpoint file.

    model_config  ViTConfig
    params        dict name -> array (the model's parameters)
    optim_state   dict name -> array (an optimizer's state_dict(), possibly empty)
    train_config  dict or None
    meta          dict (class_names, normalize, dataset, ...)
    history       dict or None
    epoch, batch, step, seed   where training stopped (see the module docstring)
    path          where it was loaded from
    """

    model_config: ViTConfig
    params: dict
    optim_state: dict = field(default_factory=dict)
    train_config: dict | None = None
    meta: dict = field(default_factory=dict)
    history: dict | None = None
    epoch: int = 0
    batch: int = 0
    step: int = 0
    seed: int = 0
    path: str = ""
    extra: dict = field(default_factory=dict)

    def model(self) -> ViT:
        """A ViT holding the checkpoint's parameters."""
        return ViT(self.model_config, params=dict(self.params))

    @property
    def class_names(self) -> list:
        names = self.meta.get("class_names")
        return list(names) if names else [str(k) for k in range(self.model_config.num_classes)]


def _json_array(obj) -> np.ndarray:
    return np.array(json.dumps(obj))            # 0-d unicode array, no pickle needed


def save_checkpoint(path, model: ViT, *, optimizer=None, train_config: dict | None = None,
                    meta: dict | None = None, history: dict | None = None,
                    epoch: int = 0, batch: int = 0, step: int = 0, seed: int = 0,
                    extra: dict | None = None) -> Path:
    """Write ``model`` (and optionally the training state) to ``path`` atomically.

    optimizer     an object with state_dict() (tinyvit.optim.SGD/AdamW) or None
    train_config, meta, history   JSON-serialisable dicts
    extra         name -> array for parts outside the ViT (stored as "extra/<name>")
    Returns the path written.
    """
    if not isinstance(model, ViT):
        raise TypeError(f"model: expected a tinyvit ViT, got {type(model).__name__}")
    path = Path(path)
    arrays = {
        "format": np.array(FORMAT),
        "format_version": np.array(FORMAT_VERSION, dtype=np.int64),
        "model_config": _json_array(model.config.to_dict()),
        "train_config": _json_array(train_config),
        "meta": _json_array(meta or {}),
        "history": _json_array(history),
        "state/epoch": np.array(int(epoch), dtype=np.int64),
        "state/batch": np.array(int(batch), dtype=np.int64),
        "state/step": np.array(int(step), dtype=np.int64),
        "rng/seed": np.array(int(seed), dtype=np.int64),
    }
    for name, value in model.params.items():
        arrays[f"param/{name}"] = value
    if optimizer is not None:
        for name, value in optimizer.state_dict().items():
            arrays[f"optim/{name}"] = np.asarray(value)
    for name, value in (extra or {}).items():
        arrays[f"extra/{name}"] = np.asarray(value)
    directory = path.parent if str(path.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _text(npz, key: str, path) -> str:
    arr = npz[key]
    if arr.shape != () or arr.dtype.kind != "U":
        raise CheckpointError(f"{path}: entry {key!r} should be a 0-d string, got {arr.dtype} {arr.shape}")
    return str(arr[()])


def _json(npz, key: str, path):
    try:
        return json.loads(_text(npz, key, path))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: entry {key!r} is not valid JSON ({e})") from e


def _int(npz, key: str, path) -> int:
    arr = npz[key]
    if arr.shape != () or arr.dtype.kind not in "iu":
        raise CheckpointError(f"{path}: entry {key!r} should be a 0-d integer, got {arr.dtype} {arr.shape}")
    return int(arr)


def is_checkpoint(path) -> bool:
    """True when ``path`` is an npz file carrying the tinyvit checkpoint marker."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return "format" in npz.files and str(npz["format"][()]) == FORMAT
    except Exception:                                       # any unreadable file: not a checkpoint
        return False


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint written by ``save_checkpoint``.

    Raises FileNotFoundError for a missing file and CheckpointError (a
    ValueError with a one-line message) for a truncated or corrupt file, an
    npz that is not a tinyvit checkpoint, or another format version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: file not found: {path}")
    try:
        npz = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable .npz file (truncated or corrupt?): {e}") from e
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise CheckpointError(f"{path}: expected a tinyvit checkpoint (.npz), got a single .npy array")
    try:
        with npz:
            files = set(npz.files)
            if "format" not in files or _text(npz, "format", path) != FORMAT:
                raise CheckpointError(f"{path}: not a tinyvit checkpoint (no '{FORMAT}' marker); "
                                      "Google ViT / timm .npz files work with 'tinyvit predict' through tinyvit.interop")
            version = _int(npz, "format_version", path) if "format_version" in files else -1
            if version != FORMAT_VERSION:
                raise CheckpointError(f"{path}: checkpoint format version {version}, but this tinyvit "
                                      f"reads version {FORMAT_VERSION}")
            required = ["model_config", "train_config", "meta", "history", "state/epoch",
                        "state/batch", "state/step", "rng/seed"]
            missing = [k for k in required if k not in files]
            if missing:
                raise CheckpointError(f"{path}: checkpoint is missing entries {missing}")
            try:
                config = ViTConfig.from_dict(_json(npz, "model_config", path))
            except (TypeError, ValueError) as e:
                raise CheckpointError(f"{path}: invalid model config: {e}") from e
            params = {k[len("param/"):]: npz[k] for k in npz.files if k.startswith("param/")}
            optim = {k[len("optim/"):]: npz[k] for k in npz.files if k.startswith("optim/")}
            ckpt = Checkpoint(model_config=config, params=params, optim_state=optim,
                              train_config=_json(npz, "train_config", path),
                              meta=_json(npz, "meta", path) or {},
                              history=_json(npz, "history", path),
                              epoch=_int(npz, "state/epoch", path), batch=_int(npz, "state/batch", path),
                              step=_int(npz, "state/step", path), seed=_int(npz, "rng/seed", path),
                              path=str(path),
                              extra={k[len("extra/"):]: npz[k] for k in npz.files if k.startswith("extra/")})
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError) as e:
        # zlib/zip errors and short reads from a truncated archive land here
        raise CheckpointError(f"{path}: could not read the checkpoint (truncated or corrupt?): "
                              f"{type(e).__name__}: {e}") from e
    try:
        ViT(ckpt.model_config, params=ckpt.params)          # shapes and dtypes match the config
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: parameters do not match the stored model config: "
                              f"{' '.join(str(e).split())}") from e
    return ckpt


def config_mismatch(saved: ViTConfig, current: ViTConfig) -> list[str]:
    """Human-readable differences 'key: saved X, given Y' between two model configs."""
    a, b = saved.to_dict(), current.to_dict()
    return [f"{k}: checkpoint {a.get(k)!r}, given {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)]
