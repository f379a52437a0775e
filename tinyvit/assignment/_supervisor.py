"""The supervisor: starts the child that runs a student's code, and ends every process it left.

Sent as source text to ``python -I -S -B -c`` (the grader's own code; it runs no student
code). It marks itself a child subreaper (Linux prctl PR_SET_CHILD_SUBREAPER), so a
process the child leaves behind, even one that called setsid() or double-forked, is
re-parented to the supervisor rather than to init. When the grader says "stop" (or closes
the control pipe, or the grader dies), it stops and kills every descendant, reaps them,
and answers "clean <n>". On a system without prctl it falls back to the child's process
group and session.

Control: one JSON line on stdin {"cmd", "env", "cwd", "req", "rep", "out", "memory"};
then a line "stop" (or EOF).
"""

import ctypes
import json
import os
import signal
import subprocess
import sys
import time


def _stat(pid):
    """(ppid, session id, state) of pid, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("ascii", "replace")
    except OSError:
        return None
    rest = data[data.rfind(")") + 2:].split()
    return int(rest[1]), int(rest[3]), rest[0]


def descendants(root, sessions=()):
    """Live processes whose parent chain reaches root, or whose session is in sessions."""
    tree = {}
    try:
        names = os.listdir("/proc")
    except OSError:                    # no /proc (macOS): only the process group is reached
        return set()
    for name in names:
        if name.isdigit():
            st = _stat(int(name))
            if st and st[2] != "Z":
                tree[int(name)] = st
    found = set()
    for pid, (ppid, sid, _) in tree.items():
        if sid in sessions and pid != root:
            found.add(pid)
            continue
        seen = 0
        while ppid and seen < 10000:
            if ppid == root:
                found.add(pid)
                break
            ppid = tree.get(ppid, (0,))[0]
            seen += 1
    found.discard(os.getpid())
    return found


def kill_all(root, sessions=()):
    """Stop, then kill every descendant of root until none is left; returns how many."""
    killed = set()
    for _ in range(200):
        found = descendants(root, sessions)
        if not found:
            break
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in found:
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
        killed |= found
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
        time.sleep(0.005)
    return len(killed)


def main():
    cfg = json.loads(sys.stdin.readline())
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        subreaper = libc.prctl(36, 1, 0, 0, 0) == 0          # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        subreaper = False

    def limits():
        import resource
        mem = int(cfg.get("memory") or 0)
        if mem:
            resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        big = 256 << 20
        resource.setrlimit(resource.RLIMIT_FSIZE, (big, big))

    out = open(cfg["out"], "ab")
    child = subprocess.Popen(cfg["cmd"], stdin=cfg["req"], stdout=out, stderr=out,
                             pass_fds=(cfg["rep"],), env=cfg["env"], cwd=cfg["cwd"],
                             preexec_fn=limits, close_fds=True, start_new_session=True)
    os.close(cfg["req"])
    os.close(cfg["rep"])
    sys.stdout.write(f"started {child.pid}\n")
    sys.stdout.flush()
    sys.stdin.readline()                                   # "stop", or EOF when the grader dies
    for kill in (os.killpg, os.kill):                      # its process group, then itself
        try:
            kill(child.pid, signal.SIGKILL)
        except OSError:
            pass
    n = kill_all(os.getpid(), sessions={child.pid})
    try:
        child.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    sys.stdout.write(f"clean {n} {'subreaper' if subreaper else 'tree'}\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
