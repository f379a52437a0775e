"""Input validation shared by the public entry points.

Every message names the argument, what was expected and what was given, so a
learner sees the mistake in their own terms instead of a traceback from deep
inside NumPy.
"""

from __future__ import annotations

import numbers

import numpy as np



class NonFiniteError(ValueError):
    """An array that must be finite holds NaN or inf (training reports it as divergence)."""


def describe(x) -> str:
    """A short description of a value for an error message."""
    if isinstance(x, np.ndarray):
        return f"array of shape {x.shape} and dtype {x.dtype}"
    return f"{type(x).__name__} {x!r}"


def check_array(name: str, x, *, ndim: int | None = None, kind: str | None = "f",
                dtype=None, finite: bool = True) -> np.ndarray:
    """Check that ``x`` is an ndarray of the expected rank and dtype.

    kind: "f" floating, "i" integer (signed or unsigned), None for any.
    dtype: an exact dtype the array must have (checked after kind).
    finite: for floating arrays, reject NaN and inf.
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a NumPy array, got {describe(x)}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got {x.ndim} (shape {x.shape})")
    if kind == "f" and x.dtype.kind != "f":
        raise TypeError(f"{name}: expected a floating-point array, got dtype {x.dtype}"
                        " (convert it with .astype(np.float32), scaled to [0, 1] for images)")
    if kind == "i" and x.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected an integer array, got dtype {x.dtype}")
    if dtype is not None and x.dtype != np.dtype(dtype):
        raise TypeError(f"{name}: expected dtype {np.dtype(dtype)}, got {x.dtype}"
                        f" (convert it with .astype(np.{np.dtype(dtype)}))")
    if finite and x.dtype.kind == "f" and not np.isfinite(x).all():
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        raise NonFiniteError(f"{name}: expected finite values, got {bad} NaN or inf entries")
    return x


def check_int(name: str, value, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Check an integer argument (bool is rejected) and its range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer, got {describe(value)}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}: expected an integer <= {maximum}, got {value}")
    return int(value)


def check_float(name: str, value, *, minimum: float | None = None, maximum: float | None = None,
                open_min: bool = False) -> float:
    """Check a real-number argument and its range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a number, got {describe(value)}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value}")
    if minimum is not None and (value < minimum or (open_min and value == minimum)):
        op = ">" if open_min else ">="
        raise ValueError(f"{name}: expected a number {op} {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}: expected a number <= {maximum}, got {value}")
    return value


def check_choice(name: str, value, choices) -> str:
    """Check that ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return value


def check_labels(name: str, labels, num_classes: int, batch: int | None = None) -> np.ndarray:
    """Check class labels: integer, 1-D, in [0, num_classes), matching the batch size."""
    check_array(name, labels, ndim=1, kind="i")
    if batch is not None and labels.shape[0] != batch:
        raise ValueError(f"{name}: expected {batch} labels (one per image), got {labels.shape[0]}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][0]
        raise ValueError(f"{name}: expected values in [0, {num_classes - 1}], got {int(bad)}")
    return labels


def check_normalize(name: str, value, channels: int | None = None):
    """A normalisation setting: None, "image", or [mean, std] with numbers or per-channel lists
    (std > 0, all finite). Returns it as None, "image" or [[mean...], [std...]] of floats."""
    if value is None or (isinstance(value, str) and value == "image"):
        return value
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"{name}: expected 'image', None or [mean, std], got {describe(value)}")
    out = []
    for part, v in zip(("mean", "std"), value):
        vals = v if isinstance(v, (list, tuple, np.ndarray)) else [v]
        if isinstance(vals, np.ndarray):
            vals = vals.reshape(-1).tolist()
        if not vals or any(isinstance(x, bool) or not isinstance(x, numbers.Real) for x in vals):
            raise TypeError(f"{name} {part}: expected a number or a list of numbers, got {v!r}")
        vals = [float(x) for x in vals]
        if channels is not None and len(vals) not in (1, channels):
            raise ValueError(f"{name} {part}: expected 1 or {channels} values (one per channel), "
                             f"got {len(vals)}")
        if not all(np.isfinite(vals)):
            raise ValueError(f"{name} {part}: expected finite numbers, got {vals}")
        if part == "std" and min(vals) <= 0:
            raise ValueError(f"{name} std: expected numbers > 0, got {vals}")
        out.append(vals)
    return out


def dataclass_from_dict(cls, d, name: str):
    """cls(**d) for a config dataclass, with one clear error for a non-dict or unknown keys."""
    import dataclasses
    if not isinstance(d, dict):
        raise TypeError(f"{name}: expected a dict, got {describe(d)}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{name}: unexpected keys {unknown}; expected a subset of {sorted(known)}")
    return cls(**d)
