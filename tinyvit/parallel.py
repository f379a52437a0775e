"""Using both CPU cores: the batch split across threads or processes.

NumPy runs elementwise work (GELU, softmax, layer norm, the residual adds) on
one core, however many BLAS threads the matrix products get. But it releases
Python's global lock inside every ufunc and matrix product on large arrays, so
two Python threads can each run the model on half of the batch at the same
time, one core each. The loss is a mean over the batch, so the full batch's
gradient is the size-weighted mean of the parts' gradients:

    grads = sum_p (B_p / B) * grads_p         (p over the parts, B_p images each)

Nothing in the model changes: its forward and backward are pure functions of
the parameters and the batch, so threads can share one model. Give each thread
one BLAS thread (OPENBLAS_NUM_THREADS=1, as `tinyvit train` and `tinyvit bench`
do), or the BLAS threads of both parts compete for the same two cores.

BatchSplitter runs the parts on threads; ProcessSplitter on helper processes,
which avoids the cost of passing Python's lock between threads (10-15 % of a
step on small models) and gives bit-for-bit the same results.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ._checks import NonFiniteError, check_int, check_labels
from .model import layers_name


class HelperLost(RuntimeError):
    """A ProcessSplitter helper process ended in the middle of a step (one-line message)."""


def _bounds(B: int, workers: int):
    """Near-equal parts of a batch of B: [(start, stop), ...], one per worker."""
    bounds = np.linspace(0, B, workers + 1).astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def _combine(parts, bounds):
    """The whole batch's (loss, grads, logits) from the parts' ones: the size-weighted mean
    of the losses and gradients (added in the parts' order, so deterministic), and the
    logits stacked."""
    B = bounds[-1][1]
    weights = [float(b - a) / B for a, b in bounds]                       # B_p / B: Python
    loss = sum(w * p[0] for w, p in zip(weights, parts))                  # floats, so float32
    grads = {}                                                             # stays float32
    for name, first in parts[0][1].items():
        g = first * weights[0]                                             # a new array
        for w, p in zip(weights[1:], parts[1:]):
            g += p[1][name] * w
        grads[name] = g
    logits = np.concatenate([p[2] for p in parts], axis=0)
    return loss, grads, logits


class BatchSplitter:
    """loss_and_grads over ``workers`` threads, each on a part of the batch.

    >>> step = BatchSplitter(model, workers=2)
    >>> loss, grads, logits = step.loss_and_grads(images, labels)   # as model.loss_and_grads
    """

    def __init__(self, model, workers: int = 2):
        self.model = model
        self.workers = check_int("workers", workers, minimum=1)
        # the calling thread computes the first part itself, the pool's threads the others
        self._pool = ThreadPoolExecutor(self.workers - 1) if self.workers > 1 else None

    def loss_and_grads(self, images, labels, label_smoothing: float = 0.0,
                       last_block_cls_only: bool | None = None):
        """The same (loss, grads, logits) as model.loss_and_grads on the whole batch, up to
        float rounding (the parts' gradients are added in a fixed order: deterministic)."""
        B = len(images)
        if self._pool is None or B < 2 * self.workers:
            return self.model.loss_and_grads(images, labels, label_smoothing, last_block_cls_only)
        bounds = _bounds(B, self.workers)
        (a0, b0), *rest = bounds
        futures = [self._pool.submit(self.model.loss_and_grads, images[a:b], labels[a:b],
                                     label_smoothing, last_block_cls_only) for a, b in rest]
        try:
            first = self.model.loss_and_grads(images[a0:b0], labels[a0:b0], label_smoothing,
                                              last_block_cls_only)
        finally:
            for f in futures:
                f.exception()                            # wait for the others, even on an error
        parts = [first] + [f.result() for f in futures]                    # (loss, grads, logits)
        return _combine(parts, bounds)

    def close(self):
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --- the same split over processes -----------------------------------------------------------
#
# Threads share one interpreter lock. NumPy releases it inside each array operation, but a
# thread that finishes an operation must get it back before it can start the next one, and
# handing the lock from one thread to the other costs the operating system several
# microseconds. On small models, whose operations take only 10-50 microseconds each, the two
# threads then mostly wait for each other (measured on benchmark config A: layer norm, GELU
# and softmax ran no faster on two threads than on one). Processes have no shared lock: the
# helper process below computes its part of the batch with its own copy of the interpreter.
# The numbers travel through one memory-mapped file: the parameters (copied in before every
# step, since the optimizer changes them), the helper's images and labels, and its gradients
# and logits; only short JSON lines (commands, the loss) go through its stdin and stdout.


def _aligned(n: int) -> int:
    return (n + 63) // 64 * 64


def _layout(cfg, capacity: int, helpers: int):
    """Byte offsets of every array in the shared file: {(owner, name): (offset, shape, dtype)}.
    It follows from the model config alone, so both sides compute it."""
    from .model import param_shapes
    dtype = np.dtype(cfg.dtype)
    H, W = cfg.image_hw
    shapes = param_shapes(cfg)
    entries, offset = {}, 0

    def add(owner, name, shape, dt):
        nonlocal offset
        entries[(owner, name)] = (offset, tuple(shape), np.dtype(dt))
        offset = _aligned(offset + int(np.prod(shape)) * np.dtype(dt).itemsize)

    for name, shape in shapes.items():
        add("params", name, shape, dtype)
    for h in range(helpers):
        add(h, "images", (capacity, H, W, cfg.in_channels), dtype)
        add(h, "labels", (capacity,), np.int64)
        add(h, "logits", (capacity, cfg.num_classes), dtype)
        for name, shape in shapes.items():
            add(h, "grad:" + name, shape, dtype)
    return entries, max(offset, 64)


def _shared_file(size: int):
    """(fd, path) of a new file of ``size`` bytes for the shared arrays: in /dev/shm (memory,
    not disk, on Linux), else the temporary directory. The space is reserved up front, so a
    full file system is an OSError here, not a SIGBUS when the mapping is first written.
    The file is named with this process's pid and unlinked once the helpers have mapped it;
    a parent killed before that leaves it behind, and the next start removes it."""
    import tempfile

    from ._files import format_bytes, remove_dead_files
    folders = (["/dev/shm"] if os.path.isdir("/dev/shm") else []) + [tempfile.gettempdir()]
    errors = []
    for folder in folders:
        remove_dead_files(folder, "tinyvit-split-")
        fd, path = tempfile.mkstemp(prefix=f"tinyvit-split-{os.getpid()}.", dir=folder)
        try:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fd, 0, size)
            else:                                        # pragma: no cover - macOS, Windows
                os.ftruncate(fd, size)
            return fd, path
        except OSError as e:
            os.close(fd)
            os.unlink(path)
            errors.append(f"{folder}: {e.strerror or e}")
    raise OSError(f"ProcessSplitter: expected room for a {format_bytes(size)} shared file, got "
                  f"none ({'; '.join(errors)}); free some space or train with --workers 1")


def _views(buf, layout) -> dict:
    return {key: np.ndarray(shape, dtype=dt, buffer=buf, offset=off)
            for key, (off, shape, dt) in layout.items()}


class ProcessSplitter:
    """BatchSplitter's loss_and_grads, with the parts of the batch computed in separate
    processes: this one and ``workers - 1`` helpers, started on the first split step.

    >>> with ProcessSplitter(model, workers=2) as step:
    ...     loss, grads, logits = step.loss_and_grads(images, labels)   # as model.loss_and_grads

    The result is bit for bit BatchSplitter's with as many workers (the same parts, the same
    code, added in the same order). Each helper runs with one BLAS thread unless a BLAS
    thread variable is set in the environment, and with the malloc settings of the command
    line. Close it (or use ``with``) to stop the helpers; they also stop when this process ends.
    """

    def __init__(self, model, workers: int = 2):
        self.model = model
        self.workers = check_int("workers", workers, minimum=1)
        self._procs, self._map, self._views, self._capacity = [], None, None, 0
        self.restarts = 0                                # helpers replaced after dying

    # -- the helpers ------------------------------------------------------------------------
    def _start(self, capacity: int) -> None:
        import mmap
        import subprocess

        from ._env import THREAD_VARS, tuned_env
        self.close()
        helpers = self.workers - 1
        layout, size = _layout(self.model.config, capacity, helpers)
        fd, path = _shared_file(size)
        try:
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        env = tuned_env(threads=None if any(v in os.environ for v in THREAD_VARS) else 1)
        # the helpers import this very copy of tinyvit, installed or not
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join([here] + [p for p in [env.get("PYTHONPATH")] if p])
        spec = {"path": path, "config": self.model.config.to_dict(), "capacity": capacity,
                "helpers": helpers, "layers": layers_name(self.model.layers)}
        try:
            for h in range(helpers):
                p = subprocess.Popen([sys.executable, "-m", "tinyvit.parallel",
                                      json.dumps({**spec, "helper": h})],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                     text=True, bufsize=1)
                self._procs.append(p)
            for h in range(helpers):
                self._reply(h)                           # "ready": the file is mapped there too
        finally:
            try:
                os.unlink(path)                          # the mappings stay valid; nothing to leak
            except OSError:                              # pragma: no cover - e.g. Windows
                pass
        self._views = _views(self._map, layout)
        self._capacity = capacity

    def _send(self, h: int, **cmd) -> None:
        try:
            self._procs[h].stdin.write(json.dumps(cmd) + "\n")
            self._procs[h].stdin.flush()
        except OSError:                                  # the helper is gone
            self._lost(h)

    def _reply(self, h: int) -> dict:
        line = self._procs[h].stdout.readline()
        if not line:
            self._lost(h)
        return json.loads(line)

    def helper_peak_bytes(self) -> int:
        """The helpers' peak resident memory in bytes, all of it (Linux and macOS), 0 if none."""
        total = 0
        for h in range(len(self._procs)):
            self._send(h, cmd="mem")
            total += self._reply(h)["peak_bytes"]
        return total

    def _lost(self, h: int):
        code = self._procs[h].wait()
        self.close()
        raise HelperLost(f"ProcessSplitter: helper process {h + 1} ended (exit code {code})")

    # -- one step ---------------------------------------------------------------------------
    def loss_and_grads(self, images, labels, label_smoothing: float = 0.0,
                       last_block_cls_only: bool | None = None):
        """The same (loss, grads, logits) as BatchSplitter(model, workers).loss_and_grads.

        A helper that dies (killed, out of memory) is replaced and the step computed again:
        a step is a pure function of the parameters and the batch, so the result is the
        same. A second loss in the same step raises HelperLost."""
        B = len(images)
        if self.workers == 1 or B < 2 * self.workers:
            return self.model.loss_and_grads(images, labels, label_smoothing, last_block_cls_only)
        # the checks loss_and_grads makes, before any part is copied (and so converted)
        self.model.check_images(images)
        check_labels("labels", labels, self.model.config.num_classes, batch=B)
        try:
            return self._split_step(images, labels, label_smoothing, last_block_cls_only)
        except HelperLost:
            self.restarts += 1
        try:
            return self._split_step(images, labels, label_smoothing, last_block_cls_only)
        except HelperLost as e:
            raise HelperLost(f"{e}, and its replacement too, in the same step") from None

    def _split_step(self, images, labels, label_smoothing, last_block_cls_only):
        B = len(images)
        parts = _bounds(B, self.workers)
        largest = max(b - a for a, b in parts[1:])
        if not self._procs or largest > self._capacity:
            self._start(max(largest, self._capacity))
        v = self._views
        for name, p in self.model.params.items():
            v[("params", name)][...] = p                 # the optimizer changed them in place
        for h, (a, b) in enumerate(parts[1:]):
            v[(h, "images")][:b - a] = images[a:b]
            v[(h, "labels")][:b - a] = labels[a:b]
            self._send(h, cmd="step", n=b - a, label_smoothing=float(label_smoothing),
                       last_block_cls_only=last_block_cls_only)
        error = None
        try:
            a, b = parts[0]
            try:
                own = self.model.loss_and_grads(images[a:b], labels[a:b], label_smoothing,
                                                last_block_cls_only)
            except Exception as e:                       # collect the helpers' replies first
                error = e
            results = [None if error else own]
            for h, (a, b) in enumerate(parts[1:]):
                r = self._reply(h)
                if "error" in r and error is None:
                    kind = {"TypeError": TypeError, "ValueError": ValueError,
                            "NonFiniteError": NonFiniteError}.get(r["type"], RuntimeError)
                    error = kind(r["error"])
                results.append((r.get("loss"), {n: v[(h, "grad:" + n)] for n in self.model.params},
                                v[(h, "logits")][:b - a]))
        except BaseException:                            # Ctrl-C: replies may still be on their way,
            self.close()                                 # so start afresh on the next call
            raise
        if error is not None:
            raise error
        return _combine(results, parts)

    def close(self) -> None:
        import subprocess
        for p in self._procs:
            with contextlib.suppress(OSError, ValueError):
                if p.poll() is None:
                    p.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                    p.stdin.flush()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:            # pragma: no cover - a stuck helper
                p.kill()
                p.wait()
            for f in (p.stdin, p.stdout):
                with contextlib.suppress(OSError):
                    f.close()
        self._procs = []
        self._views = self._map = None                   # the mapping ends with its last view
        self._capacity = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:                                # pragma: no cover - interpreter exit
            pass


def _helper(spec: dict) -> int:
    """A ProcessSplitter helper: compute steps on request until told to quit (or stdin ends)."""
    import mmap
    import signal

    from ._env import peak_rss_bytes
    from .model import LAYER_SETS, ViT, ViTConfig
    signal.signal(signal.SIGINT, signal.SIG_IGN)         # Ctrl-C is the parent's to handle
    proto = os.fdopen(os.dup(1), "w", buffering=1)       # replies; anything printed goes to stderr
    os.dup2(2, 1)
    cfg = ViTConfig.from_dict(spec["config"])
    with open(spec["path"], "r+b") as f:
        buf = mmap.mmap(f.fileno(), 0)
    v = _views(buf, _layout(cfg, spec["capacity"], spec["helpers"])[0])
    h = spec["helper"]
    layers = spec.get("layers", "reference")               # the parent's layer set, by name
    layers = layers if layers in LAYER_SETS else importlib.import_module(layers)
    model = ViT(cfg, params={n: a for (o, n), a in v.items() if o == "params"}, layers=layers)
    proto.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            break
        if cmd["cmd"] == "mem":
            proto.write(json.dumps({"peak_bytes": peak_rss_bytes()}) + "\n")
            continue
        n = cmd["n"]
        try:
            # NaN/inf reach the parent, which reports them in one line: no warnings here
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                loss, grads, logits = model.loss_and_grads(v[(h, "images")][:n], v[(h, "labels")][:n],
                                                           cmd["label_smoothing"],
                                                           cmd["last_block_cls_only"])
            for name, g in grads.items():
                v[(h, "grad:" + name)][...] = g
            v[(h, "logits")][:n] = logits
            proto.write(json.dumps({"loss": float(loss)}) + "\n")
        except Exception as e:
            proto.write(json.dumps({"error": str(e), "type": type(e).__name__}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(_helper(json.loads(sys.argv[1])))
