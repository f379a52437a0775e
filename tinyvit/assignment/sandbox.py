"""Running a student's code where it cannot reach the grader (the parent side).

    grader (this process: makes inputs, computes the reference, compares, scores, reports)
      `-- supervisor  (python -I -S, our code: a child subreaper that kills every descendant)
            `-- runner  (python -I -S, our code + the student's edition: calls functions)

The runner starts with ``-I -S`` (no environment variables, no user or site packages, no
current folder on sys.path), from the base interpreter rather than the grader's virtual
environment, with a minimal environment, in an empty working folder, and its sys.path is
only the student's edition, a private, read-only copy of NumPy and Pillow (the *runtime*:
no path leads back to the grader's site-packages, and no write reaches them), and the
standard library. Its command line holds no path: the edition and the rest of the spec arrive over
its stdin. So neither ``sys.modules``, ``sys.path``, ``importlib.metadata``, the command
line nor the environment leads to the teacher's package. The runner gets inputs from the
grader, sends back arrays (the _wire format, read without pickle), and never sees an
expected value.

After each part the supervisor kills the runner and everything it started (setsid and
double forks included: the supervisor is their subreaper) before the grader goes on, and
the report is written only after the last part's processes are gone.

What this does not stop: code running as your user can read any file your user can read
(your copy of tinyvit included, if the student guesses where it is) and can see other
processes in /proc. It cannot change the verdict, but for untrusted submissions run the
grader inside a stronger sandbox: see tutorials/ASSIGNMENTS.md ("A stronger sandbox").
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import _wire

HERE = Path(__file__).resolve().parent
# The runner's prelude reads the spec (one message without arrays) with the standard library
# only, and sets sys.path to the edition, the runtime and the standard library before
# anything imports NumPy.
_PRELUDE = """
import json as _json, os as _os, struct as _struct, sys as _sys
_RFD = _os.dup(0)
def _exact(n):
    b = b""
    while len(b) < n:
        c = _os.read(_RFD, n - len(b))
        if not c:
            raise SystemExit(3)
        b += c
    return b
_SPEC = _json.loads(_exact(_struct.unpack(">Q", _exact(8))[0]).decode("utf-8"))
_sys.path[:] = [_SPEC["edition"], _SPEC["runtime"]] + [
    p for p in _sys.path if p and _os.path.isdir(p) and "site-packages" not in p
    and "dist-packages" not in p]
"""
RUNNER_SOURCE = (_PRELUDE + (HERE / "_wire.py").read_text(encoding="utf-8") + "\n"
                 + (HERE / "_runner.py").read_text(encoding="utf-8"))
SUPERVISOR_SOURCE = (HERE / "_supervisor.py").read_text(encoding="utf-8")
RUNTIME_PACKAGES = ("numpy", "numpy.libs", "PIL", "pillow.libs")
MEMORY_LIMIT = 4 << 30                   # bytes of address space for the runner


class Timeout(Exception):
    """The runner did not answer in time."""


class ChannelClosed(Exception):
    """The runner ended (crashed, exited) without answering."""


def base_python() -> str:
    """The interpreter without the virtual environment (its real file)."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


_RUNTIME = {}


def make_runtime(root: Path) -> str:
    """Copies (not links: a write through a link would reach the grader's own NumPy) of
    NumPy and Pillow in root, made read-only."""
    root.mkdir(parents=True, exist_ok=True)
    for name in RUNTIME_PACKAGES:
        spec = importlib.util.find_spec(name) if "." not in name else None
        if spec is not None and spec.submodule_search_locations:
            src = Path(list(spec.submodule_search_locations)[0])
        else:                                    # numpy.libs, pillow.libs: beside the package
            base = importlib.util.find_spec(name.split(".")[0].replace("pillow", "PIL"))
            if base is None or not base.submodule_search_locations:
                continue
            src = Path(list(base.submodule_search_locations)[0]).parent / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("tests", "*.pyi"))
    for path in sorted(root.rglob("*"), reverse=True):
        if not path.is_symlink():
            path.chmod(0o555 if path.is_dir() else 0o444)
    root.chmod(0o555)
    return str(root)


def remove_runtime(path) -> None:
    """Make a runtime writable again (it is read-only), then delete it."""
    for p in [Path(path), *Path(path).rglob("*")]:
        if p.is_dir() and not p.is_symlink():
            try:
                p.chmod(0o755)
            except OSError:
                pass
    shutil.rmtree(path, ignore_errors=True)


def runtime_dir() -> str:
    """The runtime shared by the parts graded in this process, made once."""
    if "path" in _RUNTIME and os.path.isdir(_RUNTIME["path"]):
        return _RUNTIME["path"]
    root = Path(tempfile.mkdtemp(prefix="tinyvit-grader-runtime-"))
    _RUNTIME["path"] = make_runtime(root / "rt")
    atexit.register(remove_runtime, str(root))
    return _RUNTIME["path"]


# Namespaces (Linux, util-linux's unshare, unprivileged user namespaces). The runner gets
# its own network namespace (no network) and PID namespace (it sees only its own processes: not the grader, its command line,
# its working folder; and when it ends, the kernel ends everything inside) and its own
# mount namespace in which it is chrooted into a new root that holds only the system's
# program folders (/usr, /lib*, /bin, /sbin, /dev, /proc), the interpreter's installation
# (its site-packages covered by an empty folder), the edition, the runtime (read-only) and
# its working folder: not your project, your home, your other copies, the submissions or
# the other students' grading folders. Where chroot cannot be used, the fallback covers
# only your project and your site-packages; where namespaces cannot be made, processes
# only. TINYVIT_GRADER_ISOLATION=processes (or =cover) caps the mode.
_JAIL_SCRIPT = """
root="$1"; rt="$2"; chroot_bin="$3"; shift 3
mkdir -p "$root" && mount -t tmpfs -o size=4m tinyvit-root "$root" || exit 96
while [ "$1" != "--" ]; do
  if [ -d "$1" ]; then mkdir -p "$root$1" && mount --rbind "$1" "$root$1" || exit 96; fi
  shift
done
shift
while [ "$1" != "--" ]; do
  if [ -d "$root$1" ]; then mount -t tmpfs -o size=16k tinyvit-hidden "$root$1" || exit 96; fi
  shift
done
shift
mount -o remount,bind,ro "$root$rt" || exit 96
mkdir -p "$root/tmp"
cd / && exec "$chroot_bin" "$root" "$@"
"""
_COVER_SCRIPT = ('rt="$1"; shift; mount --bind "$rt" "$rt" 2>/dev/null && '
                 'mount -o remount,bind,ro "$rt" 2>/dev/null; '
                 'while [ "$1" != "--" ]; do mount -t tmpfs -o size=16k tinyvit-hidden "$1" '
                 '2>/dev/null; shift; done; shift; exec "$@"')
SYSTEM_DIRS = ("/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin", "/dev", "/proc")
_ISOLATION = {}


def _python_dirs() -> list[Path]:
    """The interpreter's installation and standard library (what the runner needs of it)."""
    dirs = [Path(base_python()).parent, Path(os.__file__).resolve().parent,
            Path(sys.base_prefix).resolve()]
    for mod in ("_ctypes", "_json", "math"):                    # extension modules
        spec = importlib.util.find_spec(mod)
        if spec is not None and spec.origin and os.path.isabs(spec.origin):
            dirs.append(Path(spec.origin).resolve().parent)
    return dirs


def _site_dirs() -> set:
    import site
    out = set()
    try:
        out.update(Path(p).resolve() for p in site.getsitepackages())
        out.add(Path(site.getusersitepackages()).resolve())
    except (AttributeError, OSError):
        pass
    out.add(Path(os.__file__).resolve().parent / "site-packages")
    return out


def _hidden_dirs(keep) -> list[str]:
    """The teacher's project, the grader's virtual environment and site-packages; never a
    folder holding what the runner needs (the edition, the runtime, the interpreter and its
    standard library)."""
    cands = {Path(__file__).resolve().parents[2]} | _site_dirs()
    if sys.prefix != sys.base_prefix:                   # a virtual environment
        cands.add(Path(sys.prefix).resolve())
    keep = [Path(k).resolve() for k in keep] + _python_dirs()
    out = []
    for c in sorted(cands):
        if len(c.parts) < 3 or not c.is_dir():
            continue
        if any(c == k or c in k.parents for k in keep):
            continue
        out.append(str(c))
    return out


def _jail_args(root: str, runtime: str, keep) -> list[str]:
    chroot_bin = shutil.which("chroot", path="/usr/sbin:/sbin:/usr/bin:/bin") or "chroot"
    binds = [d for d in SYSTEM_DIRS if os.path.isdir(d)]
    binds += sorted({str(p) for p in _python_dirs()})
    binds += [str(Path(k).resolve()) for k in keep]
    covered = sorted(str(p) for p in _site_dirs() if p.is_dir())
    return ["sh", "-c", _JAIL_SCRIPT, "sh", root, runtime, chroot_bin, *binds, "--",
            *covered, "--"]


def _probe(mode: str, prefix: list[str]) -> bool:
    if mode not in _ISOLATION:
        try:
            probe = prefix + [base_python(), "-I", "-S", "-c", "import sys; sys.exit(7)"]
            _ISOLATION[mode] = subprocess.run(probe, capture_output=True, timeout=20,
                                              stdin=subprocess.DEVNULL).returncode == 7
        except (OSError, subprocess.SubprocessError):
            _ISOLATION[mode] = False
    return _ISOLATION[mode]


def isolation_prefix(keep, runtime: str = "", root: str = "") -> tuple[str, list[str]]:
    """(mode, the command prefix that runs the runner in its own namespaces): mode "jail"
    (a new root with only what the runner needs; root: an empty folder for it), "cover"
    (the teacher's folders covered), or ("processes", []) where namespaces fail."""
    cap = os.environ.get("TINYVIT_GRADER_ISOLATION", "")
    unshare = shutil.which("unshare")
    if cap == "processes" or not unshare or not sys.platform.startswith("linux"):
        return "processes", []
    ns = [unshare, "--user", "--map-root-user", "--net", "--pid", "--fork", "--mount-proc",
          "--kill-child"]
    if cap != "cover" and root:
        if "jail" not in _ISOLATION:
            probe_root = tempfile.mkdtemp(prefix="tinyvit-probe-")
            try:
                _probe("jail", ns + _jail_args(os.path.join(probe_root, "root"), probe_root,
                                               [probe_root]))
            finally:
                shutil.rmtree(probe_root, ignore_errors=True)
        if _ISOLATION["jail"]:
            return "jail", ns + _jail_args(root, runtime, keep)
    cover = ns + ["sh", "-c", _COVER_SCRIPT, "sh", runtime or "/nonexistent",
                  *_hidden_dirs(keep), "--"]
    if _probe("cover", ns + ["sh", "-c", _COVER_SCRIPT, "sh", "/nonexistent", "--"]):
        return "cover", cover
    return "processes", []


def child_env(home: str) -> dict:
    return {"PATH": "/usr/bin:/bin", "HOME": home, "LANG": "C.UTF-8",
            "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "MPLBACKEND": "Agg"}


class Session:
    """One runner for one part: start, call, answer the oracle, close (everything killed)."""

    def __init__(self, edition, *, oracle: dict | None = None, watch=(), deadline: float,
                 runtime: str | None = None, oracle_check=None):
        """edition: the folder holding the spliced tinyvit/; oracle: {name: reference fn} the
        student's code may call (the part under test is never in it); deadline: a
        time.monotonic() value after which every wait gives up. runtime: the NumPy and Pillow
        copy to use (default: the one shared by this process, read-only in the namespaces).
        oracle_check(name, args, kwargs) -> bool: whether to serve an oracle request (the
        student's code chose its arguments; the reference runs here)."""
        self.edition = str(Path(edition).resolve())
        self.oracle_check = oracle_check
        self.oracle = dict(oracle or {})
        self.deadline = deadline
        self.work = tempfile.mkdtemp(prefix="tinyvit-grade-part-")
        self.out_path = os.path.join(self.work, "output.txt")
        req_r, self.req_w = os.pipe()
        self.rep_r, rep_w = os.pipe()
        env = child_env(self.work)
        self.runtime = runtime or runtime_dir()
        self.mode, self.isolation = isolation_prefix(
            [self.edition, self.runtime, self.work], self.runtime,
            root=os.path.join(self.work, "root"))
        cmd = self.isolation + [base_python(), "-I", "-S", "-B", "-c", RUNNER_SOURCE]
        self.sup = subprocess.Popen(
            [base_python(), "-I", "-S", "-B", "-c", SUPERVISOR_SOURCE],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=None if os.environ.get("TINYVIT_GRADER_DEBUG") else subprocess.DEVNULL,
            pass_fds=(req_r, rep_w), env=env, cwd=self.work, start_new_session=True)
        self.sup.stdin.write((json.dumps({"cmd": cmd, "env": env, "cwd": self.work, "req": req_r,
                                          "rep": rep_w, "out": self.out_path,
                                          "memory": MEMORY_LIMIT}) + "\n").encode())
        self.sup.stdin.flush()
        os.close(req_r)
        os.close(rep_w)
        self.closed = False
        self.cleanup = None
        spec = {"op": "spec", "edition": self.edition, "runtime": self.runtime,
                "reply_fd": rep_w, "cwd": self.work, "oracle": sorted(self.oracle),
                "watch": sorted(watch)}
        try:
            self._send(_wire.pack(dict(spec, blobs=0), []))
            self.ready = self._receive_answer()
        except BaseException:
            self.close()                         # nothing may outlive a failed start
            raise

    # --- low level
    def _send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            _, w, _ = select.select([], [self.req_w], [], self._left())
            if not w:
                raise Timeout()
            try:
                view = view[os.write(self.req_w, view[:1 << 16]):]
            except OSError:                      # the runner is gone (a broken pipe)
                raise ChannelClosed() from None

    def _left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise Timeout()
        return left

    def _read(self, n: int) -> bytes:
        chunks, got = [], 0
        while got < n:
            r, _, _ = select.select([self.rep_r], [], [], self._left())
            if not r:
                raise Timeout()
            b = os.read(self.rep_r, min(n - got, 1 << 20))
            if not b:
                raise ChannelClosed()
            chunks.append(b)
            got += len(b)
        return b"".join(chunks)

    def _receive(self):
        try:
            header, blobs = _wire.unpack_from(self._read)
            values = _wire.values_of(header, blobs)
        except (_wire.WireError, ValueError, TypeError, KeyError, json.JSONDecodeError) as err:
            raise ChannelClosed(f"unreadable answer ({err})") from None
        return header, values

    def _receive_answer(self):
        """The next answer that is not an oracle request (those are served here)."""
        while True:
            header, values = self._receive()
            if header.get("op") != "oracle":
                return header, values
            name = header.get("fn")
            if name not in self.oracle:
                self._send(_wire.message({"op": "refused", "message": f"{name!r} is not served"}))
                continue
            args, kwargs = values.get("args", []), values.get("kwargs", {})
            if not isinstance(args, list) or not isinstance(kwargs, dict) or (
                    self.oracle_check is not None and not self.oracle_check(name, args, kwargs)):
                self._send(_wire.message({"op": "refused", "message":
                                          f"arguments that do not follow {name}'s contract"}))
                continue
            try:
                value = self.oracle[name](*args, **kwargs)
                reply = _wire.message({"op": "value"}, value=value)
            except Exception as err:                   # bad arguments from the student's code
                reply = _wire.message({"op": "failed", "message": f"{type(err).__name__}: {err}"})
            self._send(reply)

    # --- requests
    def call(self, fn: str, args, kwargs=None, seconds: float | None = None):
        """Run the student's fn; returns (header, values). seconds: a tighter limit for this call."""
        saved = self.deadline
        if seconds is not None:
            self.deadline = min(self.deadline, time.monotonic() + seconds)
        try:
            self._send(_wire.message({"op": "call", "fn": fn}, args=list(args),
                                     kwargs=dict(kwargs or {})))
            return self._receive_answer()
        finally:
            self.deadline = saved

    def train(self, **values):
        self._send(_wire.message({"op": "train"}, **values))
        return self._receive_answer()

    def output(self, limit: int = 2000) -> str:
        """What the student's code printed (the end of it, at most ``limit`` characters)."""
        if self.closed:
            return self._output[-limit:] if len(self._output) <= limit else \
                "..." + self._output[-limit:]
        try:
            with open(self.out_path, "rb") as f:
                data = f.read()
        except OSError:
            return ""
        text = data.decode("utf-8", "replace")
        return text if len(text) <= limit else "..." + text[-limit:]

    def close(self) -> None:
        """Kill the runner and every process it started; wait until they are gone."""
        if self.closed:
            return
        self.closed = True
        for fd in (self.req_w, self.rep_r):
            try:
                os.close(fd)
            except OSError:
                pass
        answer = ""
        try:
            self.sup.stdin.write(b"stop\n")
            self.sup.stdin.flush()
        except OSError:
            pass
        fd, buf, end = self.sup.stdout.fileno(), b"", time.monotonic() + 20.0
        while b"clean" not in buf and time.monotonic() < end:
            r, _, _ = select.select([fd], [], [], max(0.0, end - time.monotonic()))
            chunk = os.read(fd, 4096) if r else b""
            if not chunk:
                break
            buf += chunk
        sessions = {self.sup.pid}
        for line in buf.decode("ascii", "replace").splitlines():
            if line.startswith("clean"):
                answer = line.strip()
            elif line.startswith("started ") and line[8:].strip().isdigit():
                sessions.add(int(line[8:]))           # the runner leads a session of its own
        if not answer.startswith("clean"):
            # the supervisor itself failed: kill it, then whatever is left in its session
            from ._supervisor import kill_all
            pid = self.sup.pid
            try:
                self.sup.kill()
            except OSError:
                pass
            kill_all(pid, sessions=sessions)
        try:
            self.sup.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.sup.kill()
        for f in (self.sup.stdin, self.sup.stdout):
            try:
                f.close()
            except OSError:
                pass
        self.cleanup = answer
        self.closed = False
        self._output = self.output(limit=1 << 20)
        self.closed = True
        shutil.rmtree(self.work, ignore_errors=True)
