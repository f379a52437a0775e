"""``tinyvit bench``: how fast does a training step run, next to PyTorch?

For each benchmark config the command times full training steps (forward,
backward, AdamW update) and reports the median step time, images per second,
peak memory, the step's matrix-multiply FLOPs and the model-FLOPs utilisation
(MFU: the model's FLOPs per second divided by this machine's own float32 matmul
peak, which the command measures with the same thread count). The model's
FLOPs are the standard count, every token through every block, the same for
both frameworks; tinyvit's last block runs on the CLS token alone and so
executes fewer, which the hardware-FLOPs utilisation (HFU) counts instead.

How it measures, so the numbers can be trusted:

* Every (framework, config) runs in its own fresh worker process
  (``python -m tinyvit.bench --worker ...``). The parent only sends "step"
  commands and collects timings, so the workers' steps alternate: numpy,
  torch, numpy, torch, ... in turns of 5 consecutive steps each (``--block``;
  consecutive, as in a training loop: a step that follows an idle pause runs
  up to twice as slow on small models), so background load hits both alike.
  A pause of 0.25 s after each turn (``--gap``) lets the previous worker's
  threads go to sleep first: OpenBLAS's idle threads spin for about 2^28
  cycles (~0.1 s) after a product, and would otherwise slow down whichever
  worker runs next.
* The workers' environment is set *before* they start, which is the only way
  to set process-wide knobs such as ``OPENBLAS_NUM_THREADS`` (read once when
  NumPy loads its BLAS) and glibc's allocator settings
  (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``: keep freed memory in
  the process so each step does not fault fresh pages in again). Both
  frameworks get the same environment. Nothing here is set when the library
  is imported.
* Peak memory is the growth of the worker's peak resident set size
  (``getrusage(RUSAGE_SELF).ru_maxrss``) from just before the model is built
  to the end of the warm-up steps: model, optimizer state, activations and
  temporaries, measured the same way for both frameworks. tinyvit's split
  batch (``--split-with processes``, the default) adds a helper process: its
  whole peak resident set is added, interpreter and NumPy included.
* Matmul FLOPs are counted analytically (``matmul_flops``): 2*m*n*k per
  forward product, twice that for the backward (input and weight gradients).
* PyTorch (when installed; it is not a dependency) runs the same model in
  eager mode: the same patchify + nn.Linear patch embedding, pre-norm blocks
  with nn.LayerNorm(eps=1e-6), one fused qkv nn.Linear, explicit softmax
  attention (the probabilities are materialised, as tinyvit keeps them), the
  same GELU, torch.optim.AdamW with the same hyper-parameters and the same
  weight-decay groups, the same batch and ``torch.set_num_threads(threads)``.
  No torch.compile.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np

from ._env import MALLOC_SETTINGS, peak_rss_bytes, tuned_env
from .optim import AdamW

# --- the benchmark configs ----------------------------------------------------------------


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark model: image H = W, channels C, patch P, width D, depth, heads h,
    MLP width M, classes K and the batch size B."""

    image_size: int
    in_channels: int
    patch_size: int
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    num_classes: int
    batch: int

    def vit_config(self, gelu: str = "exact", dtype: str = "float32"):
        from .model import ViTConfig
        return ViTConfig(image_size=self.image_size, in_channels=self.in_channels,
                         patch_size=self.patch_size, dim=self.dim, depth=self.depth,
                         heads=self.heads, mlp_dim=self.mlp_dim, num_classes=self.num_classes,
                         gelu=gelu, dtype=dtype, seed=0)

    def describe(self) -> str:
        P, H = self.patch_size, self.image_size
        T = (H // P) ** 2 + 1
        return (f"{H}x{H}x{self.in_channels}, patch {P} ({T} tokens), width {self.dim}, "
                f"depth {self.depth}, heads {self.heads}, MLP {self.mlp_dim}, batch {self.batch}")


CONFIGS = {
    "A": BenchConfig(28, 1, 7, 64, 4, 4, 128, 10, 128),
    "B": BenchConfig(28, 1, 4, 64, 6, 4, 256, 10, 128),
    "C": BenchConfig(32, 3, 4, 192, 6, 3, 384, 10, 64),
    "tiny": BenchConfig(8, 1, 4, 16, 1, 2, 32, 3, 4),       # for tests: seconds, not minutes
}


def matmul_flops(cfg, batch: int, last_block_cls_only: bool = False) -> dict:
    """Matrix-multiply FLOPs of one training step of a ViT with this config.

    cfg: a ViTConfig (or BenchConfig). Each forward product (m, k) @ (k, n)
    costs 2*m*n*k; its backward computes the input gradient and the weight
    gradient, two products of the same size, so the backward costs twice the
    forward and the step three times. Elementwise work is not counted.
    last_block_cls_only: count the last block as tinyvit's training step runs it
    with CLS pooling (one query row, and the projection and MLP on one token).
    Returns {"forward": {stage: flops}, "forward_total", "backward_total", "step"}.
    """
    P, C, D, M = cfg.patch_size, cfg.in_channels, cfg.dim, cfg.mlp_dim
    H = cfg.image_size if isinstance(cfg.image_size, int) else cfg.image_size[0]
    W = cfg.image_size if isinstance(cfg.image_size, int) else cfg.image_size[1]
    B, N = batch, (H // P) * (W // P)
    T, h, d = N + 1, cfg.heads, D // cfg.heads
    L, K = cfg.depth, cfg.num_classes
    # rows that ask (queries) and rows that go through the projection and MLP, summed
    # over the blocks: T in every block, or 1 in the last one when it runs on CLS alone
    Q = (L - 1) * T + 1 if last_block_cls_only else L * T
    fwd = {
        "patch_embed": 2 * B * N * (P * P * C) * D,
        "qkv": L * 2 * B * T * D * 3 * D,
        "scores q@k^T": 2 * B * h * Q * T * d,
        "mix A@v": 2 * B * h * Q * T * d,
        "proj": 2 * B * Q * D * D,
        "fc1": 2 * B * Q * D * M,
        "fc2": 2 * B * Q * M * D,
        "head": 2 * B * D * K,
    }
    total = sum(fwd.values())
    return {"forward": fwd, "forward_total": total, "backward_total": 2 * total,
            "step": 3 * total}


# --- machine facts --------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def blas_info() -> dict:
    """NumPy's BLAS: the build's name and version (np.show_config) and, for
    OpenBLAS, the kernel it picked at run time (asked through ctypes; no
    threadpoolctl needed)."""
    info = {"name": "unknown", "version": "", "corename": ""}
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["name"], info["version"] = blas.get("name", "unknown"), blas.get("version", "")
    except Exception:                                    # NumPy < 1.25 has no mode="dicts"
        pass
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f if "blas" in line.lower()
                            and line.split()[-1].startswith("/")})
        for path in paths:
            lib = ctypes.CDLL(path)
            for sym in ("openblas_get_corename", "openblas_get_corename64_",
                        "scipy_openblas_get_corename64_", "scipy_openblas_get_corename"):
                fn = getattr(lib, sym, None)
                if fn is not None:
                    fn.restype = ctypes.c_char_p
                    info["corename"] = fn().decode()
                    return info
    except Exception:
        pass
    return info


def machine_info(threads: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k.startswith(("OPENBLAS_CORETYPE", "OPENBLAS_L2"))}
    return {"date": datetime.date.today().isoformat(), "cpu": _cpu_model(),
            "logical_cpus": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "blas": blas_info(), "threads": threads,
            "blas_env": env, "loadavg": _loadavg()}


def _loadavg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def worker_env(threads: int, malloc_tuning: bool = True) -> dict:
    """The environment a benchmark worker starts with: the thread count on every
    BLAS/OpenMP variable and, with malloc_tuning, glibc settings that keep freed
    memory in the process (see tinyvit/_env.py)."""
    env = tuned_env(threads=threads, malloc_tuning=False)
    if malloc_tuning:
        env.update(MALLOC_SETTINGS)
    return env


# --- worker side: one framework, one config, in a fresh process --------------------------------


def _batch(bc: BenchConfig, seed: int = 0):
    rng = np.random.default_rng(seed)
    H = bc.image_size
    images = rng.random((bc.batch, H, H, bc.in_channels), dtype=np.float32)
    labels = rng.integers(0, bc.num_classes, size=bc.batch)
    return images, labels


class NumpyRunner:
    """tinyvit's training step: loss_and_grads then AdamW.step. With split > 1 the batch
    is split over that many processes (tinyvit.parallel.ProcessSplitter: this one and
    helpers) or threads (BatchSplitter, split_with="threads"), one BLAS thread each."""

    def __init__(self, bc: BenchConfig, gelu: str, split: int = 1, full_last_block: bool = False,
                 split_with: str = "processes", layers: str = "fast"):
        from .model import ViT
        from .parallel import BatchSplitter, ProcessSplitter
        self.images, self.labels = _batch(bc)
        self.base_rss = peak_rss_bytes()
        self.model = ViT(bc.vit_config(gelu), layers=layers)
        self.splitter = (ProcessSplitter if split_with == "processes" else BatchSplitter)(
            self.model, split)
        self.opt = AdamW(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)
        self.cls_only = not full_last_block and layers == "fast"   # the reference computes all

    def peak_bytes(self) -> int:
        """Growth of this process's peak memory, plus all of any helper processes' (they exist
        only for the split, so their interpreter and NumPy count too)."""
        helpers = getattr(self.splitter, "helper_peak_bytes", lambda: 0)()
        return peak_rss_bytes() - self.base_rss + helpers

    def step(self) -> float:
        t0 = time.perf_counter()
        loss, grads, _ = self.splitter.loss_and_grads(self.images, self.labels,
                                                      last_block_cls_only=self.cls_only)
        self.opt.step(self.model.params, grads)
        return time.perf_counter() - t0


class TorchRunner:
    """The same model and step in PyTorch eager."""

    def __init__(self, bc: BenchConfig, gelu: str, threads: int):
        import torch
        torch.set_num_threads(threads)
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(1)
        torch.manual_seed(0)
        self.torch = torch
        images, labels = _batch(bc)
        self.images = torch.from_numpy(images)
        self.labels = torch.from_numpy(labels)
        self.base_rss = peak_rss_bytes()
        from .torch_reference import TorchViT
        self.model = TorchViT(bc.vit_config(gelu))       # tinyvit's initial parameters
        named = self.model.named_tinyvit_parameters()
        decay = [p for n, p in named if p.ndim >= 2 and n not in ("cls_token", "pos_embed")]
        rest = [p for n, p in named if not (p.ndim >= 2 and n not in ("cls_token", "pos_embed"))]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                                      {"params": rest, "weight_decay": 0.0}],
                                     lr=1e-3, betas=(0.9, 0.999), eps=1e-8)

    def peak_bytes(self) -> int:
        return peak_rss_bytes() - self.base_rss

    def step(self) -> float:
        F = self.torch.nn.functional
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(self.images), self.labels)
        loss.backward()
        self.opt.step()
        return time.perf_counter() - t0


def measure_matmul_peak(n: int = 2048, repeats: int = 5, seconds: float = 1.0) -> float:
    """Best float32 GFLOP/s of an (n, n) @ (n, n) product, in this process (so with
    this process's BLAS thread count)."""
    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    np.matmul(a, b, out=out)
    best, t_end, k = 0.0, time.perf_counter() + seconds, 0
    while k < repeats or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        np.matmul(a, b, out=out)
        best = max(best, 2.0 * n ** 3 / (time.perf_counter() - t0))
        k += 1
        if k >= 50:
            break
    return best / 1e9


# --- the profile: exclusive time per stage ---------------------------------------------------

PROFILE_STAGES = {
    "linear layers": ("linear_forward", "linear_backward"),
    "attention matmuls": ("attention_forward", "attention_backward"),
    "softmax": ("softmax_forward", "softmax_backward"),
    "layer norm": ("layernorm_forward", "layernorm_backward"),
    "GELU": ("gelu_forward", "gelu_backward"),
}
PROFILE_NOTE = ("exclusive times: 'attention matmuls' is what attention_forward/backward spend "
                "outside their linear and softmax calls (q@k^T, A@v and their gradients, head "
                "split/merge); 'everything else' is the rest of the step (embedding, residuals, "
                "loss, checks, AdamW)")


@contextlib.contextmanager
def stage_timers(totals: dict):
    """Wrap the layer functions named in PROFILE_STAGES, wherever the model's modules
    imported them, with timers that add their *exclusive* time (nested stages paused)
    into totals[stage]. The wrappers are removed on exit."""
    import importlib
    modules = [importlib.import_module(m) for m in
               ("tinyvit.fast_layers", "tinyvit.layers", "tinyvit.layers.block",
                "tinyvit.layers.attention", "tinyvit.layers.mlp", "tinyvit.layers.linear",
                "tinyvit.layers.layernorm")]
    stack = []                                           # [stage, start, nested time]
    def wrap(stage, fn):
        def timed(*args, **kwargs):
            stack.append([stage, time.perf_counter(), 0.0])
            try:
                return fn(*args, **kwargs)
            finally:
                _, t0, nested = stack.pop()
                spent = time.perf_counter() - t0
                totals[stage] = totals.get(stage, 0.0) + spent - nested
                if stack:
                    stack[-1][2] += spent
        timed.__wrapped__ = fn
        return timed
    saved = []
    for stage, names in PROFILE_STAGES.items():
        for name in names:
            for mod in modules:
                fn = getattr(mod, name, None)
                if fn is not None:
                    saved.append((mod, name, fn))
    wrapped = {}
    for mod, name, fn in saved:
        stage = next(s for s, names in PROFILE_STAGES.items() if name in names)
        wrapped.setdefault(fn, wrap(stage, fn))          # one wrapper per function
        setattr(mod, name, wrapped[fn])
    try:
        yield
    finally:
        for mod, name, fn in saved:
            setattr(mod, name, fn)


def _worker(spec: dict) -> int:
    """Serve one (framework, config): read commands on stdin, answer JSON lines on the
    original stdout (anything else printed goes to stderr)."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    def send(obj):
        proto.write(json.dumps(obj) + "\n")

    if spec["framework"] == "peak":
        send({"gflops": measure_matmul_peak(), "blas": blas_info()})
        return 0
    bc = BenchConfig(**spec["config"])
    if spec["framework"] == "torch":
        runner = TorchRunner(bc, spec["gelu"], spec["threads"])
    else:
        runner = NumpyRunner(bc, spec["gelu"], spec.get("split", 1),
                             spec.get("full_last_block", False),
                             spec.get("split_with", "processes"),
                             "reference" if spec["framework"] == "reference" else "fast")
    send({"ready": True})
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "step":
            send({"t": runner.step()})
        elif cmd["cmd"] == "mem":
            send({"peak_bytes": runner.peak_bytes()})
        elif cmd["cmd"] == "profile":
            # per-stage times only add up on one thread: profile without the batch split
            if spec.get("split", 1) > 1:
                from .parallel import BatchSplitter
                runner.splitter.close()
                runner.splitter = BatchSplitter(runner.model, 1)
            totals, steps = {}, []
            with stage_timers(totals):
                for _ in range(cmd["steps"]):
                    steps.append(runner.step())
            total = sum(steps)
            totals["everything else"] = total - sum(totals.values())
            send({"stages": {k: v / len(steps) for k, v in totals.items()},
                  "step": total / len(steps), "one_thread": spec.get("split", 1) > 1})
        elif cmd["cmd"] == "quit":
            break
    splitter = getattr(runner, "splitter", None)
    if splitter is not None:
        splitter.close()                                 # stops any helper processes
    return 0


# --- parent side ----------------------------------------------------------------------------


class _Worker:
    def __init__(self, spec: dict, env: dict):
        self.spec = spec
        self.proc = subprocess.Popen([sys.executable, "-m", "tinyvit.bench", "--worker",
                                      json.dumps(spec)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, text=True, bufsize=1)

    def ask(self, **cmd):
        if cmd:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise RuntimeError(f"benchmark worker {self.spec['framework']} for config "
                               f"{self.spec.get('name')} exited with code {code} (its error is above)")
        return json.loads(line)

    def close(self):
        with contextlib.suppress(Exception):
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:                # pragma: no cover
            self.proc.kill()
            self.proc.wait()


def torch_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("torch") is not None


def run_bench(configs, threads=2, steps=20, warmup=3, use_torch=None, gelus=("exact",),
              profile=False, gap=0.25, malloc_tuning=True, split=True, block=5,
              full_last_block=False, split_with="processes", reference=True, log=print) -> dict:
    """Run the benchmark; returns the JSON-able results (also what --json writes).

    split: tinyvit splits each batch over ``threads`` processes (split_with="processes":
    tinyvit.parallel.ProcessSplitter) or Python threads ("threads": BatchSplitter) with one
    BLAS thread each, so its elementwise work uses every core too; without it, tinyvit runs
    one Python thread with ``threads`` BLAS threads. PyTorch always gets ``threads`` threads.
    block: the workers take turns, each running ``block`` consecutive steps (as a training
    loop runs them), with a pause of ``gap`` seconds between turns.
    full_last_block: tinyvit runs its last block on every token, as PyTorch does, instead
    of on the CLS token alone (the benchmark models pool the CLS token). MFU divides the
    model's standard FLOP count (the same for both) by the step time; GFLOP/s and HFU count
    the matrix products each framework actually runs.
    reference: also time tinyvit with its reference layers (tinyvit.layers, the textbook forms,
    every token in every block), run "reference"; "numpy" runs tinyvit.fast_layers.
    """
    if use_torch is None:
        use_torch = torch_available()
    env = worker_env(threads, malloc_tuning)
    n_split = threads if split else 1
    run = _Run(threads, steps, warmup, gap, block, n_split, full_last_block, split_with, profile,
               env, worker_env(1, malloc_tuning) if split else env)
    result = {"machine": machine_info(threads), "steps": steps, "warmup": warmup,
              "malloc_tuning": malloc_tuning, "tinyvit_split": n_split,
              "tinyvit_split_with": split_with,
              "tinyvit_last_block": "all tokens" if full_last_block else "CLS token only",
              "configs": {}}
    # The matmul peak is measured before and after the configs and the larger value
    # kept: background load can only lower a measurement, never raise it.
    p = _measure_peak(env)
    result["peak_gflops_runs"] = [p["gflops"]]
    result["machine"]["blas"] = p["blas"]                # as the workers see it
    log(f"{_machine_line(result)}\nmatmul peak before the runs: {p['gflops']:.0f} GFLOP/s")
    for name in configs:
        runs = ([("numpy", g) for g in gelus] + ([("reference", gelus[0])] if reference else [])
                + ([("torch", gelus[0])] if use_torch else []))
        entry = result["configs"][name] = _bench_config(name, CONFIGS[name], runs, run)
        summary = ", ".join(f"{k} {r['step_ms']:.1f} ms" for k, r in entry["results"].items())
        log(f"config {name} done: {summary}")
    result["peak_gflops_runs"].append(_measure_peak(env)["gflops"])
    result["peak_gflops"] = peak = max(result["peak_gflops_runs"])
    for entry in result["configs"].values():
        for r in entry["results"].values():
            r["mfu"] = r["model_gflops"] / peak           # the model's FLOPs, as in MFU's definition
            r["hfu"] = r["achieved_gflops"] / peak        # the FLOPs this framework executes
    result["machine"]["loadavg_after"] = _loadavg()
    log(f"matmul peak after the runs: {result['peak_gflops_runs'][-1]:.0f} GFLOP/s; "
        f"MFU below uses the larger, {peak:.0f} GFLOP/s")
    for name, entry in result["configs"].items():
        log(format_entry(name, entry))
    return result


@dataclass
class _Run:
    """The settings every config of one benchmark run shares (see run_bench)."""
    threads: int
    steps: int
    warmup: int
    gap: float
    block: int
    split: int
    full_last_block: bool
    split_with: str
    profile: bool
    env: dict                                            # PyTorch's workers
    numpy_env: dict                                      # tinyvit's (one BLAS thread when split)


def _bench_config(name: str, bc: BenchConfig, runs: list, run: _Run) -> dict:
    """Times each (framework, gelu) of ``runs`` on one config, in turns; returns its entry."""
    flops = {"torch": matmul_flops(bc, bc.batch), "reference": matmul_flops(bc, bc.batch),
             "numpy": matmul_flops(bc, bc.batch, last_block_cls_only=not run.full_last_block)}
    workers = {}
    try:
        for fw, g in runs:
            spec = {"framework": fw, "gelu": g, "threads": run.threads, "name": name,
                    "config": bc.__dict__, "split": run.split, "split_with": run.split_with,
                    "full_last_block": run.full_last_block}
            workers[(fw, g)] = w = _Worker(spec, run.env if fw == "torch" else run.numpy_env)
            w.ask()                                      # ready
        times, mem = _time_in_turns(workers, run)
        entry = {"config": bc.__dict__, "description": bc.describe(),
                 "matmul_gflop_per_step": flops["torch"]["step"] / 1e9,
                 "tinyvit_matmul_gflop_per_step": flops["numpy"]["step"] / 1e9, "results": {}}
        for (fw, g), ts in times.items():
            med = statistics.median(ts)
            entry["results"][f"{fw}/{g}"] = {
                "framework": fw, "gelu": g, "step_ms": med * 1e3,
                "step_ms_min": min(ts) * 1e3, "step_ms_all": [t * 1e3 for t in ts],
                "images_per_s": bc.batch / med, "peak_mem_mb": mem[(fw, g)] / 2 ** 20,
                "achieved_gflops": flops[fw]["step"] / med / 1e9,
                "model_gflops": flops["torch"]["step"] / med / 1e9}
        if run.profile:
            w = workers[runs[0]]
            entry["profile"] = w.ask(cmd="profile", steps=max(3, run.steps // 2))
            entry["profile"]["note"] = PROFILE_NOTE
    finally:
        for w in workers.values():
            w.close()
    entry.update(_ratios(entry["results"], runs[0][1]))
    return entry


def _time_in_turns(workers: dict, run: _Run):
    """Warm-up, the memory reading, then ``run.steps`` timed steps per worker, taken in turns
    of ``run.block`` consecutive steps. Returns ({key: [seconds]}, {key: peak bytes})."""
    for w in workers.values():
        for _ in range(max(run.warmup, 1)):
            w.ask(cmd="step")
    mem = {key: w.ask(cmd="mem")["peak_bytes"] for key, w in workers.items()}
    times = {key: [] for key in workers}
    done = 0
    while done < run.steps:
        n = min(run.block, run.steps - done)
        for key, w in workers.items():
            times[key] += [w.ask(cmd="step")["t"] for _ in range(n)]
            if run.gap:
                time.sleep(run.gap)
        done += n
    return times, mem


def _ratios(results: dict, gelu: str) -> dict:
    """Step-time ratios between the runs present (with the first GELU)."""
    t = {r["framework"]: r["step_ms"] for r in results.values() if r["gelu"] == gelu}
    out = {}
    for a, b, key in (("numpy", "torch", "ratio_numpy_over_torch"),
                      ("reference", "torch", "ratio_reference_over_torch"),
                      ("reference", "numpy", "ratio_reference_over_numpy")):
        if a in t and b in t:
            out[key] = t[a] / t[b]
    if "numpy/exact" in results and "numpy/tanh" in results:
        out["ratio_exact_over_tanh"] = (results["numpy/exact"]["step_ms"] /
                                        results["numpy/tanh"]["step_ms"])
    return out


def _measure_peak(env) -> dict:
    peak = _Worker({"framework": "peak"}, env)
    try:
        return peak.ask()
    finally:
        peak.close()


def _machine_line(result) -> str:
    m = result["machine"]
    blas = m["blas"]
    kernel = f", kernel {blas['corename']}" if blas.get("corename") else ""
    extra = "".join(f", {k}={v}" for k, v in m["blas_env"].items())
    return (f"{m['date']}  {m['cpu']} ({m['logical_cpus']} logical CPUs), numpy {m['numpy']}, "
            f"BLAS {blas['name']} {blas['version']}{kernel}{extra}, {m['threads']} threads, "
            f"load average {m['loadavg']}; malloc tuning "
            f"{'on' if result['malloc_tuning'] else 'off'}; float32 matmul peak measured with "
            f"(2048 x 2048) @ (2048 x 2048) products on {m['threads']} threads; tinyvit: "
            + (f"batch split over {result['tinyvit_split']} "
               f"{result.get('tinyvit_split_with', 'threads')}, 1 BLAS thread each"
               if result.get("tinyvit_split", 1) > 1 else "one thread, BLAS threads as above"))


def format_entry(name: str, entry: dict) -> str:
    ours = entry.get("tinyvit_matmul_gflop_per_step", entry["matmul_gflop_per_step"])
    lines = [f"\nconfig {name}: {entry['description']}; "
             f"{entry['matmul_gflop_per_step']:.2f} GFLOP of matmuls per step"
             + (f" (tinyvit runs {ours:.2f}: its last block computes the CLS token alone; "
                f"MFU counts the model's FLOPs, GFLOP/s and HFU what each runs)"
                if ours != entry["matmul_gflop_per_step"] else ""),
             f"  {'run':<16}{'step ms':>9}{'(min)':>8}{'img/s':>9}{'GFLOP/s':>9}{'MFU':>7}"
             f"{'HFU':>7}{'peak MB':>9}"]
    for key, r in entry["results"].items():
        lines.append(f"  {key:<16}{r['step_ms']:>9.1f}{r['step_ms_min']:>8.1f}"
                     f"{r['images_per_s']:>9.0f}{r['achieved_gflops']:>9.1f}"
                     f"{100 * r['mfu']:>6.1f}%{100 * r['hfu']:>6.1f}%{r['peak_mem_mb']:>9.1f}")
    if "ratio_numpy_over_torch" in entry:
        lines.append(f"  tinyvit / torch step time: {entry['ratio_numpy_over_torch']:.2f}x")
    if "ratio_reference_over_torch" in entry:
        lines.append(f"  tinyvit reference layers / torch step time: "
                     f"{entry['ratio_reference_over_torch']:.2f}x")
    if "ratio_reference_over_numpy" in entry:
        lines.append(f"  reference / fast layers step time: {entry['ratio_reference_over_numpy']:.2f}x")
    if "ratio_exact_over_tanh" in entry:
        lines.append(f"  exact / tanh GELU step time: {entry['ratio_exact_over_tanh']:.2f}x")
    if "profile" in entry:
        prof = entry["profile"]
        lines.append(f"  profile (tinyvit, mean of steps, {prof['step'] * 1e3:.1f} ms per step"
                     + ("; run on one thread, without the batch split" if prof.get("one_thread") else "")
                     + "):")
        for stage, t in sorted(prof["stages"].items(), key=lambda kv: -kv[1]):
            lines.append(f"    {stage:<20}{t * 1e3:>8.1f} ms {100 * t / prof['step']:>5.1f}%")
        lines.append(f"    ({prof['note']})")
    return "\n".join(lines)


def _write_json(path: str, obj) -> None:
    from ._files import atomic_open
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2)


def cmd_bench(args) -> int:
    from ._checks import check_int
    check_int("--threads", args.threads, minimum=1)
    check_int("--steps", args.steps, minimum=1)
    check_int("--warmup", args.warmup, minimum=0)
    check_int("--block", args.block, minimum=1)
    if args.torch and not torch_available():
        raise ValueError("--torch: expected PyTorch to be installed, got no module named 'torch' "
                         "(use --no-torch, or pip install torch)")
    if args.json:
        d = os.path.dirname(os.path.abspath(args.json))
        if not os.path.isdir(d):
            raise ValueError(f"--json: expected a path in an existing directory, got {args.json!r}")
    gelus = tuple(dict.fromkeys(args.gelu))
    result = run_bench(args.config, threads=args.threads, steps=args.steps, warmup=args.warmup,
                       use_torch=args.torch, gelus=gelus, profile=args.profile,
                       gap=args.gap, malloc_tuning=args.malloc_tuning, split=args.split,
                       block=args.block, full_last_block=args.full_last_block,
                       split_with=args.split_with, reference=args.reference)
    if args.json:
        _write_json(args.json, result)
        print(f"\nwrote {args.json}")
    return 0


def add_command(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="time training steps (and PyTorch's, when installed); MFU, memory",
        description="Time full float32 training steps of the benchmark configs in fresh "
                    "worker processes, next to PyTorch eager when it is installed.")
    p.add_argument("--config", nargs="+", choices=list(CONFIGS), default=["A", "B", "C"],
                   help="benchmark configs (default A B C; 'tiny' is for quick checks)")
    p.add_argument("--threads", type=int, default=2, help="BLAS / torch threads (default 2)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per run (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--profile", action="store_true",
                   help="also print tinyvit's time per stage (linear, attention, softmax, ...)")
    p.add_argument("--torch", action=argparse.BooleanOptionalAction, default=None,
                   help="time PyTorch too (default: when it is installed)")
    p.add_argument("--gelu", nargs="+", choices=("exact", "tanh"), default=["exact"],
                   help="GELU of the models; two values time tinyvit with both (default exact)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--gap", type=float, default=0.25,
                   help="seconds of pause after each turn so the other worker's threads idle")
    p.add_argument("--malloc-tuning", action=argparse.BooleanOptionalAction, default=True,
                   help="start the workers with glibc malloc settings that reuse freed pages "
                        "(default on, for both frameworks)")
    p.add_argument("--block", type=int, default=5,
                   help="consecutive steps per turn when the workers alternate (default 5)")
    p.add_argument("--full-last-block", action="store_true",
                   help="tinyvit runs its last block on every token, as PyTorch does (default: "
                        "on the CLS token alone, the only one the head reads; same results)")
    p.add_argument("--split", action=argparse.BooleanOptionalAction, default=True,
                   help="tinyvit splits each batch over --threads processes or threads with one "
                        "BLAS thread each (default); --no-split: one thread with --threads BLAS "
                        "threads")
    p.add_argument("--split-with", choices=("processes", "threads"), default="processes",
                   help="what runs the parts of a split batch: helper processes "
                        "(tinyvit.parallel.ProcessSplitter, default) or Python threads "
                        "(BatchSplitter; the same numbers, more waiting for Python's lock)")
    p.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                   help="also time tinyvit with its reference (textbook) layers, run 'reference' "
                        "(default on): what the plain code costs")
    p.set_defaults(func=cmd_bench)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        raise SystemExit(_worker(json.loads(sys.argv[2])))
    from .cli import main
    raise SystemExit(main(["bench", *sys.argv[1:]]))
