"""The grader's wire format: nested tuples, lists, dicts and NumPy arrays as bytes, no pickle.

One message is an 8-byte length and a JSON header, then one 8-byte length and the bytes
of a ``.npy`` file for each array the header refers to. Reading uses
``np.load(allow_pickle=False)``, so a message can carry numbers and arrays only, never
code: whatever a student's process sends, the grader gets data.

This file uses only the standard library and NumPy: its text is also sent to the child
process that runs the student's code (it cannot import the teacher's package).
"""

import io
import json
import struct

import numpy as np

MAX_MESSAGE = 1 << 27            # bytes; a larger message is refused before it is read
_LEN = struct.Struct(">Q")


class WireError(Exception):
    """A message that cannot be sent or read."""


def encode(obj, blobs):
    """obj -> a JSON-able tree; the arrays go to ``blobs`` as .npy bytes."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject or obj.dtype.kind not in "biufc":
            raise WireError(f"an array of dtype {obj.dtype} (expected numbers)")
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(obj) if obj.ndim else obj, allow_pickle=False)
        blobs.append(buf.getvalue())
        return {"a": len(blobs) - 1}
    if isinstance(obj, np.generic):
        if obj.dtype.kind not in "biufc":
            raise WireError(f"a NumPy scalar of dtype {obj.dtype} (expected a number)")
        return {"s": encode(np.asarray(obj), blobs)}
    if obj is None:
        return {"n": 0}
    if isinstance(obj, (bool, int, float, str)):
        return {"v": obj}
    if isinstance(obj, tuple):
        return {"t": [encode(x, blobs) for x in obj]}
    if isinstance(obj, list):
        return {"l": [encode(x, blobs) for x in obj]}
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise WireError("a dict with keys that are not strings")
        return {"d": [[k, encode(v, blobs)] for k, v in obj.items()]}
    raise WireError(f"a value of type {type(obj).__name__} (expected arrays, numbers, strings, "
                    "None, or tuples, lists and dicts of them)")


def decode(tree, blobs):
    """The inverse of encode; arrays come back as writable arrays."""
    if not isinstance(tree, dict) or len(tree) != 1:
        raise WireError("a malformed value")
    (kind, val), = tree.items()
    if kind == "a":
        if not isinstance(val, int) or not 0 <= val < len(blobs):
            raise WireError("a reference to a missing array")
        arr = np.load(io.BytesIO(blobs[val]), allow_pickle=False)
        return np.array(arr, copy=True)
    if kind == "s":
        return decode(val, blobs)[()]
    if kind == "n":
        return None
    if kind == "v":
        if not isinstance(val, (bool, int, float, str)):
            raise WireError("a malformed scalar")
        return val
    if kind == "t":
        return tuple(decode(x, blobs) for x in val)
    if kind == "l":
        return [decode(x, blobs) for x in val]
    if kind == "d":
        return {str(k): decode(v, blobs) for k, v in val}
    raise WireError(f"an unknown kind {kind!r}")


def values_of(header: dict, blobs) -> dict:
    """The values a message carries (the keys message() listed), decoded."""
    keys = header.get("values", [])
    if not isinstance(keys, list) or not all(isinstance(k, str) and k in header for k in keys):
        raise WireError("a malformed list of values")
    return {k: decode(header[k], blobs) for k in keys if k not in ("op", "values", "blobs")}


def pack(header: dict, blobs) -> bytes:
    head = json.dumps(header).encode("utf-8")
    parts = [_LEN.pack(len(head)), head]
    for b in blobs:
        parts += [_LEN.pack(len(b)), b]
    data = b"".join(parts)
    if len(data) > MAX_MESSAGE:
        raise WireError(f"a message of {len(data)} bytes (the limit is {MAX_MESSAGE})")
    return data


def unpack_from(read):
    """Read one message with read(n) -> exactly n bytes; returns (header, blobs)."""
    (n,) = _LEN.unpack(read(8))
    if n > MAX_MESSAGE:
        raise WireError(f"a header of {n} bytes")
    header = json.loads(read(n).decode("utf-8"))
    if not isinstance(header, dict):
        raise WireError("a header that is not an object")
    count = header.get("blobs", 0)
    if not isinstance(count, int) or count < 0:
        raise WireError("a malformed blob count")
    blobs, total = [], n
    for _ in range(count):
        (m,) = _LEN.unpack(read(8))
        total += m
        if total > MAX_MESSAGE:
            raise WireError(f"a message over {MAX_MESSAGE} bytes")
        blobs.append(read(m))
    return header, blobs


def message(header: dict, **values) -> bytes:
    """A message whose header holds ``header`` plus each value encoded under its key."""
    blobs = []
    header = dict(header)
    for key, value in values.items():
        header[key] = encode(value, blobs)
    header["values"] = list(values)
    header["blobs"] = len(blobs)
    return pack(header, blobs)
