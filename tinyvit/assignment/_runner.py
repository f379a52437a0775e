"""The child side of the grader: runs a student's functions on the inputs the grader sends.

Sent as source text (after _wire.py) to ``python -I -S -B -c``: it imports nothing of the
teacher's package. It reads requests on fd 0 and writes replies on the fd named in the first
request (the spec); the student's prints go to the output file, never into the channel.
What it sends back is data only (arrays, numbers, strings): it holds no expected value and
takes no decision. The grader compares, scores and writes the report.

Requests (each a _wire message):
  spec    {"edition", "runtime", "reply_fd", "oracle": [names], "watch": [names]}
  call    {"fn", "args", "kwargs"}  -> result {"value", "args_after", "calls", "seconds"}
                                      or raised {"type", "message", "where"}
  train   {"config", "train", "images", "labels"} -> result {"value": losses}
During a call, a student's function may call another part's function; that one is a stub
that asks the grader ("oracle"), which answers with the reference's value.
"""

try:                                   # imported as a module (tests); as a script, _wire is above
    from ._wire import WireError, message, unpack_from, values_of   # noqa: F401
except ImportError:
    pass

import os
import sys
import time
import traceback


class _Channel:
    def __init__(self, rfd, wfd):
        self.rfd, self.wfd = rfd, wfd

    def read(self, n):
        chunks, got = [], 0
        while got < n:
            b = os.read(self.rfd, min(n - got, 1 << 20))
            if not b:
                raise EOFError("the grader closed the channel")
            chunks.append(b)
            got += len(b)
        return b"".join(chunks)

    def send(self, data):
        view = memoryview(data)
        while view:
            k = os.write(self.wfd, view)
            view = view[k:]

    def receive(self):
        header, blobs = unpack_from(self.read)
        return header, values_of(header, blobs)


def _student_frames(tb, edition):
    """The traceback frames in the student's edition, innermost last: (file, line, text)."""
    out = []
    for fr in traceback.extract_tb(tb):
        fn = os.path.abspath(fr.filename)
        if fn.startswith(edition + os.sep):
            out.append([os.path.relpath(fn, edition), fr.lineno or 0, (fr.line or "").strip()])
    return out[-6:]


def main(rfd, header):
    """rfd: the request channel; header: the spec (read by the prelude)."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)                   # the student's input() reads nothing
    os.dup2(2, 1)                      # the student's prints go to the output file
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(line_buffering=True)
        except (AttributeError, ValueError):
            pass
    chan = _Channel(rfd, os.dup(int(header["reply_fd"])))
    os.close(int(header["reply_fd"]))
    edition = os.path.abspath(header["edition"])
    os.chdir(header.get("cwd", edition))

    counts = {}
    oracle = set(header.get("oracle", []))
    watch = set(header.get("watch", []))

    def stub(name):
        def call_grader(*args, **kwargs):
            counts[name] = counts.get(name, 0) + 1
            chan.send(message({"op": "oracle", "fn": name}, args=list(args), kwargs=kwargs))
            reply, vals = chan.receive()
            if reply.get("op") != "value":
                raise RuntimeError(f"{name} (the grader's, standing in for yours) failed: "
                                   f"{reply.get('message', '')}")
            return vals["value"]
        call_grader.__name__ = name
        return call_grader

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            counts[name] = counts.get(name, 0) + 1
            return fn(*args, **kwargs)
        wrapper.__name__ = name
        return wrapper

    try:
        import tinyvit
        import tinyvit.layers as layers
        where = os.path.dirname(os.path.abspath(tinyvit.__file__))
        if where != os.path.join(edition, "tinyvit"):
            raise ImportError(f"imported tinyvit from {where}, expected the edition's")
        modules = [m for n, m in list(sys.modules.items())
                   if m is not None and (n == "tinyvit" or n.startswith("tinyvit."))]
        replaced = {}
        for mod in modules:
            for name in oracle | watch:
                fn = getattr(mod, name, None)
                if callable(fn):
                    if name in oracle:
                        new = replaced.setdefault(name, stub(name))
                    else:
                        new = replaced.setdefault(name, counted(name, fn))
                    setattr(mod, name, new)
        ready = {"op": "ready"}
    except BaseException as err:
        ready = {"op": "raised", "type": type(err).__name__, "message": str(err)[:800],
                 "where": _student_frames(err.__traceback__, edition)}
    chan.send(message(ready))
    if ready["op"] != "ready":
        return 1

    while True:
        try:
            req, vals = chan.receive()
        except EOFError:
            return 0
        op = req.get("op")
        if op == "exit":
            return 0
        counts.clear()
        start = time.perf_counter()
        try:
            if op == "call":
                args = vals.get("args", [])
                kwargs = vals.get("kwargs", {})
                value = getattr(layers, req["fn"])(*args, **kwargs)
                args_after = args
            elif op == "train":
                value, args_after = _train(vals), []
            else:
                raise ValueError(f"unknown request {op!r}")
            seconds = time.perf_counter() - start
            try:
                out = message({"op": "result", "seconds": seconds, "calls": dict(counts)},
                              value=value, args_after=args_after)
            except WireError as err:
                out = message({"op": "raised", "type": "TypeError",
                               "message": f"returned {err}", "where": []})
        except BaseException as err:          # the student's code raised: report it, go on
            out = message({"op": "raised", "type": type(err).__name__,
                           "message": str(err)[:800],
                           "where": _student_frames(err.__traceback__, edition)})
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        chan.send(out)


def _train(vals):
    """Train the default model with the edition's own layers; return the loss of every step."""
    import numpy as np
    from tinyvit import ViT, ViTConfig, layers
    from tinyvit.datasets import ImageDataset
    from tinyvit.train import TrainConfig, train
    model = ViT(ViTConfig(**vals["config"]), layers=layers)
    ds = ImageDataset(vals["images"], vals["labels"],
                      class_names=[str(k) for k in range(int(vals["config"]["num_classes"]))])
    hist = train(model, ds, None, TrainConfig(**vals["train"]), progress=False, layers="model")
    return np.array(hist["steps"]["loss"], dtype=np.float64)


if __name__ == "__main__":
    raise SystemExit(main(_RFD, _SPEC))
