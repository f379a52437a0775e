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
previous checkpoint whole (tinyvit._files.atomic_open; the file's mode follows
the umask, and temporary files of a killed save are removed by the next save).
Loading reads every array's header first and compares it with the stored
config, so a corrupt or hostile file fails with one line before anything large
is allocated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._checks import check_normalize, describe
from ._files import NpzError, NpzReader, check_memory, save_npz
from .model import ViT, ViTConfig, param_shapes

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
    save_npz(path, arrays)                          # atomic; mode follows the umask
    return path


def _text(npz: NpzReader, key: str, path) -> str:
    shape, dtype = npz.shapes[key], npz.dtypes[key]
    if shape != () or dtype.kind != "U":
        raise CheckpointError(f"{path}: entry {key!r}: expected a 0-d string, got {dtype} {shape}")
    return str(npz.read(key)[()])


def _json(npz: NpzReader, key: str, path, kind=dict, nullable: bool = True):
    """The JSON in entry ``key``: an object (kind=dict), or null when nullable."""
    try:
        value = json.loads(_text(npz, key, path))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: entry {key!r}: expected valid JSON, got an error ({e})") from e
    except RecursionError:
        raise CheckpointError(f"{path}: entry {key!r}: expected JSON of a sane depth, got one "
                              "nested too deeply to read") from None
    if value is None and nullable:
        return None
    if not isinstance(value, kind):
        want = "a JSON object" + (" or null" if nullable else "")
        shown = json.dumps(value)
        raise CheckpointError(f"{path}: entry {key!r}: expected {want}, got {type(value).__name__} "
                              f"{shown if len(shown) <= 60 else shown[:57] + '...'}")
    return value


def _int(npz: NpzReader, key: str, path) -> int:
    shape, dtype = npz.shapes[key], npz.dtypes[key]
    if shape != () or dtype.kind not in "iu":
        raise CheckpointError(f"{path}: entry {key!r}: expected a 0-d integer, got {dtype} {shape}")
    value = int(npz.read(key))
    if value < 0:
        raise CheckpointError(f"{path}: entry {key!r}: expected an integer >= 0, got {value}")
    return value


def _check_meta(meta: dict, config: ViTConfig, path) -> None:
    """The fields of meta that eval, predict and --resume read: class names (one string per
    class), the dataset (an object) and the normalisation."""
    names = meta.get("class_names")
    K = config.num_classes
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise CheckpointError(f"{path}: meta 'class_names': expected a list of {K} strings, "
                                  f"got {describe(names)}")
        if len(names) != K:
            raise CheckpointError(f"{path}: meta 'class_names': expected {K} names (the model's "
                                  f"num_classes), got {len(names)}")
    if meta.get("dataset") is not None and not isinstance(meta["dataset"], dict):
        raise CheckpointError(f"{path}: meta 'dataset': expected a JSON object, got {describe(meta['dataset'])}")
    if "normalize" in meta:
        try:
            check_normalize("normalize", meta["normalize"], config.in_channels)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: meta {e}") from e


def _blocks_in(names) -> int:
    """How many transformer blocks the parameter names of a file describe: the number of
    distinct block indices (not the highest one, which a file could set to 10^9)."""
    return len({n.split(".")[1] for n in names
                if n.startswith("blocks.") and n.count(".") >= 2 and n.split(".")[1].isdigit()})


def _check_shapes(npz: NpzReader, config: ViTConfig, path) -> None:
    """Compare every array's header with the config's shapes before any data is read."""
    params = {k[len("param/"):] for k in npz.files if k.startswith("param/")}
    blocks = _blocks_in(params)
    if config.depth != blocks:                     # before param_shapes builds a table of depth rows
        raise CheckpointError(f"{path}: model config says depth {config.depth}, but the file holds "
                              f"parameters for {blocks} block{'' if blocks == 1 else 's'}")
    if config.pos_embed == "sincos":              # the model builds this table: nothing bounds it
        check_memory(f"{path}: model config", f"{config.num_tokens:,} tokens x {config.dim}",
                     config.num_tokens * config.dim * 8, "the fixed sin-cos position table")
    expected = param_shapes(config)
    dtype = np.dtype(config.dtype)
    missing = sorted(set(expected) - params)
    unexpected = sorted(params - set(expected))
    wrong = [f"{k}: expected {expected[k]} {dtype}, got {npz.shapes['param/' + k]} "
             f"{npz.dtypes['param/' + k]}" for k in expected if k in params
             and (npz.shapes["param/" + k] != expected[k] or npz.dtypes["param/" + k] != dtype)]
    # optimizer moments: one per parameter, of the model or of the extra parts (a box head)
    moment_shapes = {**{k[len("extra/"):]: npz.shapes[k] for k in npz.files if k.startswith("extra/")},
                     **expected}
    for k in npz.files:
        if not k.startswith("optim/") or k == "optim/step":
            continue
        want = moment_shapes.get(k[len("optim/"):].partition(".")[2])
        if want is None or npz.shapes[k] != want:
            wrong.append(f"{k}: expected the shape of a parameter of this config, got {npz.shapes[k]}")
    if "optim/step" in npz and npz.shapes["optim/step"] != ():
        wrong.append(f"optim/step: expected a 0-d counter, got shape {npz.shapes['optim/step']}")
    if missing or unexpected or wrong:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + \
                ([f"unexpected {', '.join(unexpected)}"] if unexpected else []) + wrong
        raise CheckpointError(f"{path}: parameters do not match the stored model config: "
                              + "; ".join(parts))


def is_checkpoint(path) -> bool:
    """True when ``path`` is an npz file carrying the tinyvit checkpoint marker."""
    try:
        with NpzReader(path) as npz:
            return "format" in npz and _text(npz, "format", path) == FORMAT
    except (ValueError, OSError):                            # any unreadable file: not a checkpoint
        return False


def _check_format(npz: NpzReader, path) -> None:
    """The tinyvit marker, this format version and every required entry, or CheckpointError."""
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


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint written by ``save_checkpoint``.

    Raises FileNotFoundError for a missing file and CheckpointError (a
    ValueError with a one-line message) for a truncated or corrupt file, an
    npz that is not a tinyvit checkpoint, or another format version. Every
    array's header (shape, dtype) is checked against the stored config before
    its data is read, so a file cannot make this allocate more than it holds.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: file not found: {path}")
    try:
        npz = NpzReader(path, "checkpoint")
    except NpzError as e:
        raise CheckpointError(str(e)) from e
    try:
        with npz:
            _check_format(npz, path)
            try:
                config = ViTConfig.from_dict(_json(npz, "model_config", path, nullable=False))
            except (TypeError, ValueError) as e:
                if isinstance(e, CheckpointError):
                    raise
                raise CheckpointError(f"{path}: invalid model config: {' '.join(str(e).split())}") from e
            _check_shapes(npz, config, path)
            meta = _json(npz, "meta", path) or {}
            _check_meta(meta, config, path)
            history = _json(npz, "history", path)
            train_config = _json(npz, "train_config", path)
            if train_config is not None and "normalize" in train_config:
                try:
                    check_normalize("normalize", train_config["normalize"], config.in_channels)
                except (TypeError, ValueError) as e:
                    raise CheckpointError(f"{path}: train_config {e}") from e
            params = {k[len("param/"):]: npz.read(k) for k in npz.files if k.startswith("param/")}
            optim = {k[len("optim/"):]: npz.read(k) for k in npz.files if k.startswith("optim/")}
            ckpt = Checkpoint(model_config=config, params=params, optim_state=optim,
                              train_config=train_config, meta=meta, history=history,
                              epoch=_int(npz, "state/epoch", path), batch=_int(npz, "state/batch", path),
                              step=_int(npz, "state/step", path), seed=_int(npz, "rng/seed", path),
                              path=str(path),
                              extra={k[len("extra/"):]: npz.read(k) for k in npz.files if k.startswith("extra/")})
    except CheckpointError:
        raise
    except NpzError as e:
        raise CheckpointError(str(e)) from e
    try:
        ViT(ckpt.model_config, params=ckpt.params)          # shapes checked above; now the values
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: parameter values rejected: {' '.join(str(e).split())}") from e
    return ckpt


def config_mismatch(saved: ViTConfig, current: ViTConfig) -> list[str]:
    """Human-readable differences 'key: saved X, given Y' between two model configs."""
    a, b = saved.to_dict(), current.to_dict()
    return [f"{k}: checkpoint {a.get(k)!r}, given {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)]
