"""Classroom assignments: a student edition with blanked solutions, and its autograder.

The layer code marks its solution regions with a pair of comment lines::

    def layernorm_backward(dout, cache):
        \"\"\"...docstring...\"\"\"
        # BEGIN SOLUTION layernorm_backward
        ...the code a student is asked to write...
        # END SOLUTION

Each region is named after the function it fills, and each *part* of an
assignment (the unit that earns points) is one such region; PARTS below lists
them with their points and the hint a student sees.

build(outdir, parts)   copies the package (plus pyproject.toml and a student
                       README) and replaces each chosen region with
                       ``raise NotImplementedError("<part>: <hint>")``. The
                       marker lines of the other regions are dropped; every
                       other byte is copied unchanged.
grade(path)            runs each part's checks in its own Python process with
                       a time limit, and scores it all or nothing.

How a part is checked (the child process, _child_main):

* The student's package is imported from the given folder (``tinyvit`` first
  on sys.path; the child fails loudly if another copy gets imported). The
  grader's own package, the full solution, is loaded beside it under another
  name, and so is its numerical-gradient code: the student's code computes
  only the analytic side.
* Every OTHER part's function in the student's modules is swapped for the
  reference one, so a part's score depends on its own region only: a wrong
  layer norm loses the layer-norm points, not those of the block that calls it.
* Backward parts: float64 inputs, a random upstream gradient dout, the
  student's forward (for the cache) and backward; each returned gradient is
  compared with centred differences of the reference forward. A backward whose
  forward is a part of its own (layernorm, cls) reads the cache of the
  student's forward, or of the reference forward if the student's raises.
  The backward must leave dout unchanged (the model reuses it).
* Forward parts: the output is compared with the reference output (including
  inputs that overflow a softmax without the max subtraction), and the input
  must be left unchanged.

Relative error ||a - n|| / (||a|| + ||n||); a check passes below THRESHOLD
(a correct float64 backward lands near 1e-9, a wrong term above 1e-3).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent       # the package this grader belongs to
THRESHOLD = 1e-6                                    # a check passes when rel error < this
DEFAULT_TIMEOUT = 20.0                              # seconds per part, process start included

BEGIN_RE = re.compile(r"^(?P<indent>[ \t]*)# BEGIN SOLUTION (?P<name>[A-Za-z_]\w*)[ \t]*\r?\n?$")
END_RE = re.compile(r"^[ \t]*# END SOLUTION[ \t]*\r?\n?$")
NEVER_BLANK = ("assignment.py", "gradcheck.py")    # copied as they are, never scanned


# --- the parts ----------------------------------------------------------------
@dataclass(frozen=True)
class Part:
    """One gradable unit: its regions (name -> hint), points and kind."""
    name: str
    points: int
    kind: str                                   # "backward" or "forward"
    regions: tuple                              # ((region name, hint), ...)

    @property
    def region_names(self) -> tuple:
        return tuple(r for r, _ in self.regions)


def _part(name, points, kind, hint):
    return Part(name, points, kind, ((name, hint),))


PARTS = (
    # backward passes
    _part("linear_backward", 5, "backward",
          "return (dx (..., in), dW (in, out), db (out,)) for out = x @ W + b; "
          "cache is what linear_forward returned"),
    _part("layernorm_backward", 15, "backward",
          "return (dx (..., D), dgamma (D,), dbeta (D,)); cache is what layernorm_forward returned"),
    _part("softmax_backward", 10, "backward",
          "return dS (..., T), the gradient at the softmax input; cache is the probabilities "
          "A (..., T)"),
    _part("attention_backward", 20, "backward",
          "return (dx (B, T, D), dWqkv (D, 3D), dbqkv (3D,), dWproj (D, D), dbproj (D,)); "
          "cache is the dict attention_forward built"),
    _part("gelu_backward", 5, "backward",
          "return dx (...), same shape as dout, for both kinds 'exact' and 'tanh'; "
          "cache = (x, kind) from gelu_forward"),
    _part("mlp_backward", 5, "backward",
          "return (dx (..., D), dW1 (D, M), db1 (M,), dW2 (M, D), db2 (D,)): "
          "undo fc2, GELU and fc1 in reverse order"),
    _part("block_backward", 10, "backward",
          "return (dx (B, T, D), grads), grads a dict with the 12 names of BLOCK_PARAMS; "
          "each residual sends dout down two paths"),
    _part("cls_backward", 5, "backward",
          "return (dx (B, N, D), dcls (1, 1, D)): dcls sums position 0's gradient over the batch"),
    _part("pos_backward", 2, "backward",
          "return (dx (B, T, D), dpos (1, T, D)): dpos sums over the batch"),
    _part("patchify_backward", 5, "backward",
          "return dx (B, H, W, C): each patch gradient moved back to its pixels; "
          "cache is ((B, H, W, C), P)"),
    # forward pieces
    _part("softmax", 5, "forward",
          "return exp(x) normalised to sum to one along axis, same shape as x; subtract the max "
          "first so large inputs do not overflow, and leave x unchanged"),
    _part("patchify", 5, "forward",
          "return patches (B, gh*gw, P*P*C): the grid row by row, each patch flattened in "
          "(row, column, channel) order"),
    _part("layernorm_forward", 5, "forward",
          "return (y (..., D), cache): y = gamma * (x - mean) / sqrt(var + eps) + beta over the "
          "last axis; cache holds what layernorm_backward needs"),
    _part("cls_forward", 3, "forward",
          "return (tokens (B, N + 1, D), cache): the cls vector at position 0 of every image, "
          "then x"),
)
PART_BY_NAME = {p.name: p for p in PARTS}
GROUPS = {
    "all": tuple(p.name for p in PARTS),
    "backward": tuple(p.name for p in PARTS if p.kind == "backward"),
    "forward": tuple(p.name for p in PARTS if p.kind == "forward"),
}
ALL_REGIONS = tuple(r for p in PARTS for r in p.region_names)


def resolve_parts(names=None, default: str = "all") -> list[Part]:
    """Part names (or the groups all / backward / forward, commas allowed) -> Parts in PARTS order."""
    if names is None:
        names = [default]
    if isinstance(names, str):
        names = [names]
    wanted = set()
    for item in names:
        for name in str(item).split(","):
            name = name.strip()
            if not name:
                continue
            if name in GROUPS:
                wanted.update(GROUPS[name])
            elif name in PART_BY_NAME:
                wanted.add(name)
            else:
                raise ValueError(f"parts: expected names from {', '.join(PART_BY_NAME)} "
                                 f"(or the groups {', '.join(GROUPS)}), got {name!r}")
    return [p for p in PARTS if p.name in wanted]


# --- finding the regions ------------------------------------------------------
def _source_files(package_dir: Path):
    """Every file of the package worth copying, as paths relative to package_dir."""
    for path in sorted(package_dir.rglob("*")):
        rel = path.relative_to(package_dir)
        if path.is_dir() or "__pycache__" in rel.parts or path.suffix in (".pyc", ".pyo"):
            continue
        yield rel


def scan_regions(package_dir=PACKAGE_DIR) -> dict:
    """{region name: (file relative to the package, first line, last line)} of the marked regions
    (line numbers 1-based, the marker lines themselves). Malformed markers raise ValueError."""
    package_dir = Path(package_dir)
    found = {}
    for rel in _source_files(package_dir):
        if rel.suffix != ".py" or rel.name in NEVER_BLANK:
            continue
        lines = (package_dir / rel).read_text(encoding="utf-8").splitlines(keepends=True)
        open_name, open_line = None, 0
        for i, line in enumerate(lines, 1):
            begin, end = BEGIN_RE.match(line), END_RE.match(line)
            where = f"{rel.as_posix()}:{i}"
            if begin:
                name = begin["name"]
                if open_name:
                    raise ValueError(f"{where}: expected '# END SOLUTION' for region {open_name!r} "
                                     f"(opened at line {open_line}), got another BEGIN")
                if name not in ALL_REGIONS:
                    raise ValueError(f"{where}: expected a region name from "
                                     f"{', '.join(ALL_REGIONS)}, got {name!r}")
                if name in found:
                    raise ValueError(f"{where}: region {name!r} is marked twice "
                                     f"(first in {found[name][0]})")
                open_name, open_line = name, i
            elif end:
                if not open_name:
                    raise ValueError(f"{where}: '# END SOLUTION' without a BEGIN")
                found[open_name] = (rel.as_posix(), open_line, i)
                open_name = None
        if open_name:
            raise ValueError(f"{rel.as_posix()}:{open_line}: region {open_name!r} has no "
                             "'# END SOLUTION'")
    return found


def _missing_regions(package_dir) -> list[str]:
    found = scan_regions(package_dir)
    return [r for r in ALL_REGIONS if r not in found]


def blank_source(text: str, blanked: dict) -> str:
    """Replace the regions named in ``blanked`` (region -> message) by a raise statement at the
    marker's indentation; drop the marker lines of every other region; keep the rest."""
    out = []
    skipping = False
    for line in text.splitlines(keepends=True):
        begin = BEGIN_RE.match(line)
        if skipping:
            if END_RE.match(line):
                skipping = False
            continue
        if begin:
            name = begin["name"]
            if name in blanked:
                newline = line[len(line.rstrip("\r\n")):] or "\n"
                out.append(f"{begin['indent']}raise NotImplementedError("
                           f"{json.dumps(blanked[name])}){newline}")
                skipping = True
            continue
        if END_RE.match(line):
            continue
        out.append(line)
    return "".join(out)


# --- build --------------------------------------------------------------------
_FALLBACK_PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "tinyvit"
version = "0.1.0"
description = "tinyvit, student edition"
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["numpy>=1.24", "pillow>=9", "matplotlib>=3.6"]

[project.scripts]
tinyvit = "tinyvit.cli:main"

[tool.setuptools.packages.find]
include = ["tinyvit*"]
"""


def student_readme(parts, regions: dict) -> str:
    """The README.md of a student edition: the parts to write, how to check them, what to hand in."""
    rows = []
    for p in parts:
        for name, hint in p.regions:
            rows.append(f"| `{name}` | `tinyvit/{regions[name][0]}` | {p.points} | {hint} |")
    table = "\n".join(rows) if rows else "| (none) | | | |"
    total = sum(p.points for p in parts)
    return f"""# tinyvit: student edition

This is tinyvit, a Vision Transformer in NumPy, with some functions left for you to
write. Each of them raises `NotImplementedError` with a hint until you fill it in.
Everything else works as in the full project.

## Your parts ({total} points)

| function | file | points | what to return |
|---|---|---|---|
{table}

Each part is graded on its own, all or nothing: the grader swaps every other part for
a working version, so a mistake in one function does not cost you the points of
another. Backward passes are checked against numerical gradients in float64, with a
random upstream gradient `dout`; a correct one agrees to about 1e-9, and the grader
passes anything below {THRESHOLD:g}. Do not modify `dout` or the inputs in place.
Keep the function signatures as they are.

## Set up

    python -m venv .venv && . .venv/bin/activate
    pip install -e .

## Check your work

A gradient check compares your backward with centred differences of your forward:

```python
import numpy as np
from tinyvit.gradcheck import check_layer
from tinyvit.layers import layernorm_backward, layernorm_forward

rng = np.random.default_rng(0)
inputs = {{"x": rng.standard_normal((2, 3, 8)), "gamma": rng.standard_normal(8),
          "beta": rng.standard_normal(8)}}
print(check_layer(layernorm_forward, layernorm_backward, inputs))   # about 1e-9 when right
```

## Hand in

Hand in this whole folder (zip it without `.venv`). It is graded with
`tinyvit assignment grade <folder>`, each part in its own process with a time limit,
so an endless loop costs only that part.
"""


def build(outdir, parts=None, force: bool = False, source=None) -> dict:
    """Write a student edition into ``outdir``; returns a summary dict.

    parts: part names or groups (default: every backward part); [] blanks nothing.
    force: allow a non-empty outdir (its tinyvit/, README.md and pyproject.toml are replaced).
    source: the package folder to copy (default: this package; it must be the full solution).
    """
    chosen = resolve_parts(parts, default="backward")
    src = Path(source).resolve() if source is not None else PACKAGE_DIR
    regions = scan_regions(src)
    missing = [r for r in ALL_REGIONS if r not in regions]
    if missing:
        raise ValueError(f"source: expected the full solution with every region marked, got "
                         f"{src} without markers for {', '.join(missing)}")
    out = Path(outdir).expanduser().resolve()
    project = src.parent
    if out == project or out == src or src in out.parents or out in src.parents:
        raise ValueError(f"outdir: expected a folder outside the project {project}, got {out}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"outdir: expected a folder, got the file {out}")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ValueError(f"outdir: expected an empty or new folder, got {out}, which is not "
                         "empty (use --force to replace its tinyvit/, README.md and pyproject.toml)")

    blanked = {name: f"{p.name}: {hint}" for p in chosen for name, hint in p.regions}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tinyvit-edition-", dir=out.parent))
    try:
        tmp.chmod(0o755)                                 # mkdtemp makes it private
        pkg = tmp / "tinyvit"
        for rel in _source_files(src):
            dest = pkg / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if rel.suffix == ".py" and rel.name not in NEVER_BLANK:
                data = (src / rel).read_bytes()
                text = data.decode("utf-8")
                new = blank_source(text, blanked)
                dest.write_bytes(new.encode("utf-8") if new != text else data)
            else:
                shutil.copyfile(src / rel, dest)
        pyproject = project / "pyproject.toml"
        if pyproject.is_file() and 'name = "tinyvit"' in pyproject.read_text(encoding="utf-8"):
            shutil.copyfile(pyproject, tmp / "pyproject.toml")
        else:
            (tmp / "pyproject.toml").write_text(_FALLBACK_PYPROJECT, encoding="utf-8")
        (tmp / "README.md").write_text(student_readme(chosen, regions), encoding="utf-8")
        # move into place: a fresh folder in one rename, else entry by entry
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        if not out.exists():
            os.replace(tmp, out)
        else:
            for entry in sorted(tmp.iterdir()):
                dest = out / entry.name
                if dest.is_dir() and not dest.is_symlink():
                    shutil.rmtree(dest)
                os.replace(entry, dest)
            tmp.rmdir()
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return {"outdir": str(out), "parts": [p.name for p in chosen],
            "points": sum(p.points for p in chosen)}


# --- grade: the parent side ------------------------------------------------------
# The child loads the grader's own package under another name (so it can sit beside the
# student's ``tinyvit``) and runs _child_main from there.
_GRADER_ALIAS = "_tinyvit_grader"
_BOOT = (
    "import importlib.util, sys\n"
    "spec = importlib.util.spec_from_file_location("
    f"{_GRADER_ALIAS!r}, sys.argv[1] + '/__init__.py', submodule_search_locations=[sys.argv[1]])\n"
    "mod = importlib.util.module_from_spec(spec)\n"
    f"sys.modules[{_GRADER_ALIAS!r}] = mod\n"
    "spec.loader.exec_module(mod)\n"
    f"from {_GRADER_ALIAS}.assignment import _child_main\n"
    "raise SystemExit(_child_main(sys.argv[2:]))\n"
)
_SENTINEL = "@@tinyvit-grade@@"


def _locate_edition(path) -> Path:
    """The folder that holds the student's tinyvit/ package."""
    p = Path(path).expanduser().resolve()
    if (p / "tinyvit" / "__init__.py").is_file():
        return p
    if p.name == "tinyvit" and (p / "__init__.py").is_file():
        return p.parent
    raise ValueError(f"path: expected a folder containing tinyvit/__init__.py, got {p}")


def _run_part(part: Part, edition, timeout: float, nonce: str) -> dict:
    """Run one part's checks in a fresh interpreter; never raises for what the student did."""
    cmd = [sys.executable, "-I", "-B", "-c", _BOOT, str(PACKAGE_DIR), part.name,
           "" if edition is None else str(edition), nonce]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               MPLBACKEND="Agg")
    start = time.perf_counter()
    posix = os.name == "posix"
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, start_new_session=posix)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        if posix:
            try:
                os.killpg(proc.pid, 9)              # the part's process and anything it started
            except ProcessLookupError:
                pass
        else:
            proc.kill()
        proc.communicate()
        return {"status": "timeout", "checks": [], "seconds": time.perf_counter() - start,
                "message": f"no result within the time limit of {timeout:g} s"}
    seconds = time.perf_counter() - start
    tag = f"{_SENTINEL}{nonce} "
    for line in reversed(stdout.decode("utf-8", "replace").splitlines()):
        if line.startswith(tag):
            result = json.loads(line[len(tag):])
            result["seconds"] = seconds
            return result
    err = stderr.decode("utf-8", "replace").strip().splitlines()
    return {"status": "error", "checks": [], "seconds": seconds,
            "message": f"the part's process ended (exit code {proc.returncode}) without a result"
                       + (f": {err[-1]}" if err else "")}


def grade(path=None, parts=None, timeout: float = DEFAULT_TIMEOUT, jobs: int | None = None) -> dict:
    """Grade a student edition (a folder holding tinyvit/) or, with path=None, the installed
    tinyvit. Returns the report dict (see tutorials/ASSIGNMENTS.md for its format)."""
    chosen = resolve_parts(parts, default="all")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout: expected a positive number of seconds, got {timeout!r}")
    jobs = min(2, os.cpu_count() or 1) if jobs is None else int(jobs)
    if jobs < 1:
        raise ValueError(f"jobs: expected an integer >= 1, got {jobs}")
    missing = _missing_regions(PACKAGE_DIR)
    if missing:
        raise ValueError(f"the grader's own tinyvit ({PACKAGE_DIR}) is not the full solution: "
                         f"no solution markers for {', '.join(missing)}; run the grader from the "
                         "teacher's full copy")
    edition = None if path is None else _locate_edition(path)
    nonce = secrets.token_hex(8)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(lambda p: _run_part(p, edition, float(timeout), nonce), chosen))
    report_parts = []
    graded_file = None
    for part, res in zip(chosen, results):
        status = res.get("status", "error")
        graded_file = graded_file or res.get("tinyvit")
        report_parts.append({
            "name": part.name,
            "points": part.points if status == "pass" else 0,
            "possible": part.points,
            "status": status,
            "checks": res.get("checks", []),
            "message": res.get("message", ""),
            "error": res.get("error"),
            "seconds": round(float(res.get("seconds", 0.0)), 3),
        })
    return {
        "total": sum(p["points"] for p in report_parts),
        "possible": sum(p["possible"] for p in report_parts),
        "graded": str(edition) if edition is not None else "installed",
        "tinyvit": graded_file,
        "threshold": THRESHOLD,
        "timeout": float(timeout),
        "parts": report_parts,
    }


def format_report(report: dict) -> str:
    """The grade table, then one line per part that did not pass."""
    lines = [f"Grading {report['graded']}" + (f" ({report['tinyvit']})" if report.get("tinyvit")
                                                else ""),
             f"(a check passes below relative error {report['threshold']:g}; "
             f"time limit {report['timeout']:g} s per part)", ""]
    width = max([len("part")] + [len(p["name"]) for p in report["parts"]])
    lines.append(f"{'part':<{width}}  {'checks':>6}  {'max rel error':>13}  {'points':>9}  status")
    for p in report["parts"]:
        checks = p["checks"]
        passed = sum(1 for c in checks if c["passed"])
        errs = [c["rel_error"] for c in checks]
        if not errs:
            worst = "-"
        elif any(e is None for e in errs):
            worst = "nan"
        else:
            worst = f"{max(errs):.1e}"
        status = p["status"]
        if status == "error" and p.get("error"):
            status = f"error: {p['error']}"
        score = f"{p['points']} / {p['possible']}"
        lines.append(f"{p['name']:<{width}}  {f'{passed}/{len(checks)}':>6}  {worst:>13}  "
                     f"{score:>9}  {status}")
    total = f"{report['total']} / {report['possible']}"
    lines.append(f"{'total':<{width}}  {'':>6}  {'':>13}  {total:>9}")
    notes = [f"  {p['name']}: {p['message']}" for p in report["parts"]
             if p["status"] != "pass" and p["message"]]
    if notes:
        lines += ["", "Details:"] + notes
    return "\n".join(lines)


def write_report(report: dict, path) -> None:
    """Write the report as JSON, atomically (a temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# --- grade: the child side (runs inside the grader's aliased package) -----------
class _Wrong(Exception):
    """The student's result cannot be checked at all (wrong count, wrong kind of value)."""


class _Checker:
    """Runs one part's checks and collects {"name", "rel_error", "passed"} records."""

    def __init__(self, student_layers, own: dict, ref, seed: int):
        import numpy as np
        from .gradcheck import numerical_vjp, rel_error
        self.np, self.numerical_vjp, self.rel_error = np, numerical_vjp, rel_error
        self.S, self.own, self.R = student_layers, own, ref
        self.rng = np.random.default_rng(seed)
        self.checks, self.notes = [], []

    # inputs
    def normal(self, *shape, scale=1.0, shift=0.0):
        return self.rng.standard_normal(shape) * scale + shift

    # one comparison
    def compare(self, name: str, got, want) -> None:
        np = self.np
        want = np.asarray(want, dtype=np.float64)
        try:
            a = np.asarray(got, dtype=np.float64)
        except (TypeError, ValueError):
            self._fail(name, f"expected an array, got {type(got).__name__}")
            return
        if a.shape != want.shape:
            self._fail(name, f"expected shape {want.shape}, got {a.shape}")
            return
        if not np.isfinite(a).all():
            self._fail(name, "contains NaN or inf")
            return
        err = self.rel_error(a, want)
        ok = err < THRESHOLD
        self.checks.append({"name": name, "rel_error": err, "passed": bool(ok)})
        if not ok:
            self.notes.append(f"{name}: relative error {err:.1e}")

    def _fail(self, name, why):
        self.checks.append({"name": name, "rel_error": None, "passed": False})
        self.notes.append(f"{name}: {why}")

    # helpers for backward parts
    def cache_forward(self, fname: str):
        """The forward whose cache the backward reads: the student's own; for a forward that is
        a part of its own, the reference stands in when the student's raises."""
        if fname not in self.own:
            return getattr(self.S, fname)
        student, ref = self.own[fname], getattr(self.R, fname)

        def forward(*args, **kwargs):
            try:
                return student(*args, **kwargs)
            except Exception as err:
                self.notes.append(f"your {fname} raised {type(err).__name__}, so the cache came "
                                  f"from the reference {fname}")
                return ref(*args, **kwargs)
        return forward

    @staticmethod
    def unpack(result, names):
        n = len(names)
        if n == 1:
            if isinstance(result, (tuple, list)):
                if len(result) != 1:
                    raise _Wrong(f"expected one array ({names[0]}), got a {type(result).__name__} "
                                 f"of {len(result)}")
                result = result[0]
            return [result]
        if not isinstance(result, (tuple, list)):
            raise _Wrong(f"expected a tuple of {n} gradients ({', '.join(names)}), got "
                         f"{type(result).__name__}")
        if len(result) != n:
            raise _Wrong(f"expected {n} gradients ({', '.join(names)}), got {len(result)}")
        return list(result)

    @staticmethod
    def out_and_cache(result, fname):
        if not isinstance(result, tuple) or len(result) != 2:
            raise _Wrong(f"{fname}: expected the pair (out, cache), got {type(result).__name__}")
        return result

    def pair(self, fwd_name: str, bwd_name: str, inputs: list, extra=(), prefix: str = ""):
        """Check bwd_name against the reference fwd_name. inputs: [(name, float64 array)], all
        differentiated; extra: further positional arguments (heads, kind, ...)."""
        np = self.np
        names = ["d" + n for n, _ in inputs]
        arrays = [a for _, a in inputs]
        truth = getattr(self.R, fwd_name)
        ref_out = truth(*arrays, *extra)[0]
        dout = self.rng.standard_normal(np.shape(ref_out))
        forward = self.cache_forward(fwd_name)
        _, cache = self.out_and_cache(forward(*[a.copy() for a in arrays], *extra), fwd_name)
        given = dout.copy()
        grads = self.unpack(self.own[bwd_name](given, cache), names)
        self.compare(prefix + "dout unchanged", given, dout)
        for name, g, x in zip(names, grads, arrays):
            num = self.numerical_vjp(lambda: truth(*arrays, *extra)[0], x, dout)
            self.compare(prefix + name, g, num)


def _check_linear_backward(c):
    c.pair("linear_forward", "linear_backward",
           [("x", c.normal(2, 3, 4)), ("W", c.normal(4, 5)), ("b", c.normal(5))])


def _check_layernorm_backward(c):
    c.pair("layernorm_forward", "layernorm_backward",
           [("x", c.normal(2, 3, 6, scale=2.0, shift=0.5)), ("gamma", c.normal(6, shift=1.0)),
            ("beta", c.normal(6))])


def _check_softmax_backward(c):
    c.pair("softmax_forward", "softmax_backward", [("x", c.normal(2, 3, 5, scale=2.0))])


def _check_attention_backward(c):
    D = 4
    inputs = [("x", c.normal(2, 3, D)), ("Wqkv", c.normal(D, 3 * D, scale=0.5)),
              ("bqkv", c.normal(3 * D, scale=0.1)), ("Wproj", c.normal(D, D, scale=0.5)),
              ("bproj", c.normal(D, scale=0.1))]
    c.pair("attention_forward", "attention_backward", inputs, extra=(2,))


def _check_gelu_backward(c):
    x = c.np.linspace(-5.0, 5.0, 24).reshape(4, 6) + c.normal(4, 6, scale=0.05)
    for kind in ("exact", "tanh"):
        c.pair("gelu_forward", "gelu_backward", [("x", x.copy())], extra=(kind,),
               prefix=f"{kind}: ")


def _check_mlp_backward(c):
    D, M = 4, 6
    c.pair("mlp_forward", "mlp_backward",
           [("x", c.normal(2, 3, D)), ("W1", c.normal(D, M, scale=0.5)), ("b1", c.normal(M)),
            ("W2", c.normal(M, D, scale=0.5)), ("b2", c.normal(D))], extra=("exact",))


def _check_cls_backward(c):
    c.pair("cls_forward", "cls_backward", [("x", c.normal(3, 4, 5)), ("cls", c.normal(1, 1, 5))])


def _check_pos_backward(c):
    c.pair("pos_forward", "pos_backward", [("x", c.normal(3, 4, 5)), ("pos", c.normal(1, 4, 5))])


def _check_patchify_backward(c):
    c.pair("patchify_forward", "patchify_backward", [("x", c.normal(2, 4, 6, 3))], extra=(2,))


def _check_block_backward(c):
    D, M, heads = 4, 8, 2
    p = {}
    for name, shape in c.R.block_param_shapes(D, M).items():
        shift = 1.0 if name.endswith("gamma") else 0.0
        p[name] = c.normal(*shape, scale=0.5 if name.endswith(".W") else 0.2, shift=shift)
    _check_block_pair(c, c.normal(2, 3, D), p, heads, "")


def _check_block_pair(c, x, p, heads, prefix):
    np = c.np
    truth = lambda: c.R.block_forward(x, p, heads, "exact")[0]
    dout = c.rng.standard_normal(np.shape(truth()))
    _, cache = c.out_and_cache(
        c.S.block_forward(x.copy(), {k: v.copy() for k, v in p.items()}, heads, "exact"),
        "block_forward")
    given = dout.copy()
    result = c.own["block_backward"](given, cache)
    if not isinstance(result, (tuple, list)) or len(result) != 2 or not isinstance(result[1], dict):
        raise _Wrong("expected the pair (dx, grads) with grads a dict, got "
                     f"{type(result).__name__}")
    dx, grads = result
    c.compare(prefix + "dout unchanged", given, dout)
    c.compare(prefix + "dx", dx, c.numerical_vjp(truth, x, dout))
    for name in p:
        if name not in grads:
            c._fail(prefix + "d" + name, "missing from the grads dict")
            continue
        c.compare(prefix + "d" + name, grads[name], c.numerical_vjp(truth, p[name], dout))


def _check_softmax(c):
    own, ref = c.own["softmax"], c.R.softmax
    x = c.normal(3, 4, 5, scale=3.0)
    given = x.copy()
    c.compare("axis=-1", own(given), ref(x))
    c.compare("input unchanged", given, x)
    c.compare("axis=1", own(x.copy(), axis=1), ref(x, axis=1))
    big = c.normal(4, 6, scale=1000.0)
    c.compare("large inputs", own(big.copy()), ref(big))


def _check_patchify(c):
    for shape, P in (((2, 4, 6, 3), 2), ((1, 6, 6, 2), 3), ((2, 4, 4, 1), 4)):
        x = c.normal(*shape)
        given = x.copy()
        c.compare(f"{shape[1]}x{shape[2]}x{shape[3]}, P={P}", c.own["patchify"](given, P),
                  c.R.patchify(x, P))
        if P == 2:
            c.compare("input unchanged", given, x)


def _check_layernorm_forward(c):
    own, ref = c.own["layernorm_forward"], c.R.layernorm_forward
    x, gamma, beta = c.normal(2, 3, 6, scale=3.0, shift=1.0), c.normal(6, shift=1.0), c.normal(6)
    given = x.copy()
    out, _ = c.out_and_cache(own(given, gamma.copy(), beta.copy()), "layernorm_forward")
    c.compare("output", out, ref(x, gamma, beta)[0])
    c.compare("input unchanged", given, x)
    small = c.normal(4, 8, scale=0.05)                   # variance ~ eps: eps must be used
    out, _ = c.out_and_cache(own(small.copy(), gamma[:1].repeat(8), beta[:1].repeat(8), 0.01),
                             "layernorm_forward")
    c.compare("eps=0.01", out, ref(small, gamma[:1].repeat(8), beta[:1].repeat(8), 0.01)[0])


def _check_cls_forward(c):
    own, ref = c.own["cls_forward"], c.R.cls_forward
    for B in (3, 1):
        x, cls = c.normal(B, 4, 5), c.normal(1, 1, 5)
        out, _ = c.out_and_cache(own(x.copy(), cls.copy()), "cls_forward")
        c.compare(f"output (B={B})", out, ref(x, cls)[0])


_CHECKS = {name[len("_check_"):]: fn for name, fn in dict(globals()).items()
           if name.startswith("_check_")}


def _import_student(edition: str):
    """Import the student's tinyvit (from ``edition``, or the installed one) and check it."""
    import importlib
    if edition:
        sys.path.insert(0, edition)
    tinyvit = importlib.import_module("tinyvit")
    where = Path(tinyvit.__file__).resolve().parent
    if edition and where != Path(edition).resolve() / "tinyvit":
        raise RuntimeError(f"imported tinyvit from {where}, expected {Path(edition) / 'tinyvit'}")
    return tinyvit, importlib.import_module("tinyvit.layers")


def _child_main(argv) -> int:
    """Run one part's checks; print the result as one JSON line tagged with the nonce."""
    part_name, edition, nonce = argv
    part = PART_BY_NAME[part_name]
    result = {"status": "error", "checks": [], "message": "", "error": None}
    checker = None
    try:
        import importlib

        import numpy as np
        tinyvit, layers = _import_student(edition)
        result["tinyvit"] = str(Path(tinyvit.__file__).resolve().parent)
        ref = importlib.import_module(f"{__package__}.layers")
        own = {name: getattr(layers, name) for name in ALL_REGIONS}
        # every other part's function, wherever the student's modules hold it, becomes the reference
        others = [r for r in ALL_REGIONS if r not in part.region_names]
        for modname, module in list(sys.modules.items()):
            if module is None or not (modname == "tinyvit" or modname.startswith("tinyvit.")):
                continue
            for name in others:
                if callable(getattr(module, name, None)):
                    setattr(module, name, getattr(ref, name))
        checker = _Checker(layers, own, ref, seed=PARTS.index(part))
        with np.errstate(all="ignore"):
            _CHECKS[part.name](checker)
        bad = [ch for ch in checker.checks if not ch["passed"]]
        result["status"] = "wrong" if bad or not checker.checks else "pass"
        result["message"] = "; ".join(checker.notes) if bad else \
            f"all {len(checker.checks)} checks passed" + \
            (f" ({'; '.join(checker.notes)})" if checker.notes else "")
    except _Wrong as err:
        result["status"], result["message"] = "wrong", str(err)
    except BaseException as err:                 # the student's code raised: that part scores 0
        result["error"] = type(err).__name__
        frames = traceback.extract_tb(err.__traceback__)
        where = f" ({Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
        result["message"] = f"{type(err).__name__}: {err}{where}"
    if checker is not None:
        result["checks"] = checker.checks
    sys.stdout.write(f"\n{_SENTINEL}{nonce} {json.dumps(result)}\n")
    sys.stdout.flush()
    return 0


# --- command line -------------------------------------------------------------------
def _cmd_build(args) -> int:
    summary = build(args.outdir, parts=args.parts, force=args.force)
    names = ", ".join(summary["parts"]) or "none"
    print(f"Wrote the student edition to {summary['outdir']}")
    print(f"  blanked {len(summary['parts'])} parts ({summary['points']} points): {names}")
    print("  hand out the folder; to grade a copy handed back: tinyvit assignment grade FOLDER")
    return 0


def _cmd_grade(args) -> int:
    report = grade(args.path, parts=args.parts, timeout=args.timeout, jobs=args.jobs)
    print(format_report(report))
    if args.json:
        write_report(report, args.json)
        print(f"\nWrote {args.json}")
    return 0


def _cmd_parts(args) -> int:
    try:
        regions = scan_regions(PACKAGE_DIR)
    except ValueError:
        regions = {}
    width = max(len(p.name) for p in PARTS)
    print(f"{'part':<{width}}  {'kind':<8}  points  file")
    for p in PARTS:
        where = ", ".join(regions[r][0] for r in p.region_names if r in regions) or "(no markers)"
        print(f"{p.name:<{width}}  {p.kind:<8}  {p.points:>6}  tinyvit/{where}")
        for _, hint in p.regions:
            print(f"{'':<{width}}    {hint}")
    print(f"\ngroups: {', '.join(GROUPS)}; total {sum(p.points for p in PARTS)} points")
    return 0


def add_command(subparsers) -> None:
    """Add ``tinyvit assignment build | grade | parts`` to the CLI."""
    parser = subparsers.add_parser(
        "assignment", help="build a student edition with blanked solutions, and grade one",
        description="Build a student edition of tinyvit with chosen functions blanked, and grade "
                    "a handed-in edition with gradient checks.")
    sub = parser.add_subparsers(dest="assignment_command", metavar="ACTION")

    b = sub.add_parser("build", help="write a student edition to OUTDIR")
    b.add_argument("outdir", metavar="OUTDIR")
    b.add_argument("--parts", nargs="+", metavar="PART", default=None,
                   help="parts to blank, or the groups all / backward / forward "
                        "(default: backward); see 'tinyvit assignment parts'")
    b.add_argument("--force", action="store_true",
                   help="replace tinyvit/, README.md and pyproject.toml in a non-empty OUTDIR")
    b.set_defaults(func=_cmd_build)

    g = sub.add_parser("grade", help="grade a student edition (a folder) or the installed tinyvit")
    g.add_argument("path", nargs="?", default=None, metavar="PATH",
                   help="folder containing the student's tinyvit/ (default: the installed one)")
    g.add_argument("--json", metavar="REPORT", default=None, help="also write a JSON report here")
    g.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help=f"time limit per part (default {DEFAULT_TIMEOUT:g})")
    g.add_argument("--parts", nargs="+", metavar="PART", default=None,
                   help="grade only these parts or groups (default: all)")
    g.add_argument("--jobs", type=int, default=None, help="parts graded at once (default 2)")
    g.set_defaults(func=_cmd_grade)

    lp = sub.add_parser("parts", help="list the parts, their points and hints")
    lp.set_defaults(func=_cmd_parts)

    def usage(args) -> int:
        parser.print_help()
        return 2
    parser.set_defaults(func=usage)
