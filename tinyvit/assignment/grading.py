"""Grading: one submission, or a class of them, into reports, a CSV, Gradescope files.

For each submission: rebuild the clean edition from the teacher's package (checked
against the manifest's hashes), splice in only the bodies of the assigned functions, and
grade each assigned part in its own sandboxed runner (sandbox.Session). The cases are
made here with the teacher's reference layers and a generator seeded from the manifest's
secret and the student's id; the runner sends back arrays; this process compares, scores
and writes. All of a part's processes are dead before the next part starts, and all of a
submission's before its report is written.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from . import sandbox
from .checks import FORWARD_TYPE, THRESHOLD, evaluate, make_cases, score
from .edition import (PACKAGE_DIR, check_full_solution, clean_edition, default_manifest,
                      extract_zip, find_package_root, find_submissions, load_manifest, splice)
from .parts import PART_BY_NAME, resolve_parts, write_json_atomic
from .student import judge_training, train_data, train_losses

DEFAULT_TIMEOUT = 60.0           # seconds per part
DEFAULT_STUDENT_TIMEOUT = 600.0  # seconds per submission
# the functions a part's reference body calls that are parts themselves: while that part is
# graded, they are answered by the grader (reference values), so a mistake is charged once
DEPENDS = {
    "attention_backward": ("linear_backward", "softmax_backward"),
    "mlp_backward": ("linear_backward", "gelu_backward"),
    "block_backward": ("mlp_backward", "layernorm_backward", "attention_backward"),
}

_REFERENCE_LOSSES = {}
ORACLE_MAX_NUMBERS = 4_000_000   # numbers in one oracle request (the largest case needs ~1e6)


def _is(a, ndim=None):
    return isinstance(a, np.ndarray) and a.dtype.kind == "f" and (ndim is None or a.ndim == ndim)


def _linear_cache_ok(dout, cache) -> bool:
    return (isinstance(cache, tuple) and len(cache) == 2 and _is(cache[0]) and _is(cache[1], 2)
            and cache[0].ndim >= 1 and _is(dout) and cache[0].shape[-1] == cache[1].shape[0]
            and dout.shape == cache[0].shape[:-1] + (cache[1].shape[1],))


def oracle_arguments_ok(name: str, args, kwargs) -> bool:
    """Whether a request for the reference's ``name`` follows the layer's contract (shapes
    that fit together), so the grader's own computation stays as small as its inputs: the
    student's code chooses these arguments."""
    if kwargs or len(args) != 2:
        return False
    dout, cache = args
    arrays = []

    def collect(t):
        if isinstance(t, np.ndarray):
            arrays.append(t)
        elif isinstance(t, (tuple, list)):
            for x in t:
                collect(x)
        elif isinstance(t, dict):
            for x in t.values():
                collect(x)
    collect(args)
    if sum(a.size for a in arrays) > ORACLE_MAX_NUMBERS or not _is(dout):
        return False
    if name == "linear_backward":
        return _linear_cache_ok(dout, cache)
    if name == "softmax_backward":
        return _is(cache) and cache.shape == dout.shape
    if name == "gelu_backward":
        return (isinstance(cache, tuple) and len(cache) == 2 and _is(cache[0])
                and cache[0].shape == dout.shape and cache[1] in ("exact", "tanh"))
    if name == "layernorm_backward":
        if not (isinstance(cache, tuple) and len(cache) == 3 and all(_is(c) for c in cache)):
            return False
        normed, inv_std, scale = cache
        return (normed.ndim >= 1 and normed.shape == dout.shape
                and inv_std.shape == normed.shape[:-1] + (1,) and scale.shape == normed.shape[-1:])
    if name == "mlp_backward":
        if not (isinstance(cache, tuple) and len(cache) == 3):
            return False
        c1, cg, c2 = cache
        if not (_linear_cache_ok(dout, c2) and isinstance(cg, tuple) and len(cg) == 2
                and _is(cg[0]) and cg[0].shape == c2[0].shape and cg[1] in ("exact", "tanh")):
            return False
        return _linear_cache_ok(np.empty(cg[0].shape, dout.dtype), c1)
    if name == "attention_backward":
        keys = {"attn", "q", "k", "v", "scale", "qkv_cache", "softmax_cache", "proj_cache"}
        if not (isinstance(cache, dict) and keys <= set(cache)):
            return False
        A, q, k, v = cache["attn"], cache["q"], cache["k"], cache["v"]
        if not (all(_is(t, 4) for t in (A, q, k, v)) and q.shape == k.shape == v.shape
                and isinstance(cache["scale"], float)):
            return False
        B, h, T, d = q.shape
        if A.shape != (B, h, T, T) or not _is(cache["softmax_cache"]) or \
                cache["softmax_cache"].shape != A.shape:
            return False
        if not _linear_cache_ok(dout, cache["proj_cache"]) or \
                cache["proj_cache"][0].shape != (B, T, h * d):
            return False
        qkv = np.empty((B, T, 3 * h * d), dout.dtype)
        return _linear_cache_ok(qkv, cache["qkv_cache"])
    return False


def _reference():
    from .. import layers
    return layers


def part_seed(secret: str, student: str, part: str) -> list[int]:
    digest = hashlib.sha256(f"{secret}\0{student}\0{part}".encode()).digest()
    return [int.from_bytes(digest[i:i + 4], "big") for i in range(0, 16, 4)]


def reference_losses(seed: int) -> np.ndarray:
    if seed not in _REFERENCE_LOSSES:
        images, labels = train_data(seed)
        _REFERENCE_LOSSES[seed] = train_losses(_reference(), images, labels)
    return _REFERENCE_LOSSES[seed]


def _answer(header, values):
    op = header.get("op")
    if op == "result":
        return {"status": "result", "value": values.get("value"),
                "args_after": values.get("args_after") or [], "calls": header.get("calls") or {},
                "seconds": header.get("seconds")}
    return {"status": "raised", "type": str(header.get("type", "Error")),
            "message": str(header.get("message", "")), "where": header.get("where") or []}


def grade_part(edition: Path, part_name: str, possible: float, seed, timeout: float,
               runtime: str | None = None) -> dict:
    """Grade one part of a spliced edition. Never raises for what the student's code did."""
    R = _reference()
    start = time.monotonic()
    deadline = start + timeout
    checks, flags, output, note = [], [], "", ""
    part = PART_BY_NAME[part_name]
    if part.kind == "integration":
        tseed = seed[0] % 1000
        ref = reference_losses(tseed)
        images, labels = train_data(tseed)
        cases = None
    else:
        cases = make_cases(part_name, R, np.random.default_rng(seed))
    oracle = {n: getattr(R, n) for n in DEPENDS.get(part_name, ())}
    watch = () if part.kind == "integration" else \
        tuple(n for n in FORWARD_TYPE if n != part_name)
    session = None
    try:
        session = sandbox.Session(edition, oracle=oracle, watch=watch, deadline=deadline,
                                  runtime=runtime, oracle_check=oracle_arguments_ok)
        head, vals = session.ready
        if head.get("op") != "ready":
            a = _answer(head, vals)
            note = f"the edition does not import: {a['type']}: {a['message']}"
            raise sandbox.ChannelClosed(note)
        if cases is None:
            from .student import TRAIN_CONFIG, TRAIN_SETTINGS
            try:
                a = _answer(*session.train(config=TRAIN_CONFIG, train=TRAIN_SETTINGS,
                                           images=images, labels=labels))
            except sandbox.Timeout:
                a = {"status": "timeout", "message": f"no result within {timeout:g} s"}
            except sandbox.ChannelClosed as err:
                a = {"status": "closed", "message": f"the process ended ({err or 'crashed'})"}
            checks, flags = judge_training(a, ref)
        else:
            dead = None
            for case in cases:
                if dead is not None:
                    a = dead
                else:
                    try:
                        a = _answer(*session.call(case["fn"], case["args"], case["kwargs"],
                                                  seconds=case.get("seconds")))
                    except sandbox.Timeout:
                        a = {"status": "timeout"}
                        dead = {"status": "closed", "message": " (stopped after a timeout)"}
                    except sandbox.ChannelClosed as err:
                        a = dead = {"status": "closed",
                                    "message": f" ({err})" if str(err) else " (it crashed)"}
                try:
                    c, f = evaluate(case, a, R)
                except Exception as err:           # an answer shaped to break the judge
                    c = [{"name": f"{case['label']}: answer", "kind": "value", "rel_error": None,
                          "passed": False, "message": f"malformed answer ({type(err).__name__})"}]
                    f = []
                checks += c
                flags += f
    except (sandbox.Timeout, sandbox.ChannelClosed) as err:
        note = note or (f"no answer within {timeout:g} s" if isinstance(err, sandbox.Timeout)
                        else f"the process ended without an answer {err}".strip())
        if not checks:
            checks = [{"name": "start", "kind": "value", "rel_error": None, "passed": False,
                       "message": note}]
    finally:
        sandbox_kind = "not started"
        if session is not None:
            session.close()
            output = session.output()
            sandbox_kind = session.mode
    pts = score(checks, flags, possible)
    values = [c for c in checks if c["kind"] == "value"]
    if flags:
        status = "flagged"
    elif pts >= possible and values:
        status = "pass"
    elif pts > 0:
        status = "partial"
    elif values and any(not c["passed"] for c in values) and \
            all(c["message"].startswith("raised") for c in values if not c["passed"]):
        status = "error"
    elif any("no answer within" in c["message"] for c in values):
        status = "timeout"
    else:
        status = "wrong"
    failed = [f"{c['name']}: {c['message']}" for c in checks if not c["passed"]]
    message = "; ".join(flags[:2] + failed[:4]) if (flags or failed) else \
        f"all {len(checks)} checks passed"
    if note and note not in message:
        message = f"{note}; {message}"
    return {"name": part_name, "points": pts, "possible": possible, "status": status,
            "checks": checks, "flags": flags, "message": message,
            "seconds": round(time.monotonic() - start, 3), "output": output,
            "sandbox": sandbox_kind}


def grade(path, manifest=None, *, student: str | None = None, parts=None,
          timeout: float = DEFAULT_TIMEOUT, student_timeout: float = DEFAULT_STUDENT_TIMEOUT,
          screen: bool = True) -> dict:
    """Grade one submission (a folder holding tinyvit/, at any depth, or a zip).

    manifest: the path (or dict) written by build; None looks for SUBMISSION.manifest.json
    beside the submission, or grades exactly ``parts`` with the default points when they are
    given; with neither, a ValueError (every part would give unassigned parts free points). student: the id that seeds the hidden cases (default: the
    submission's name). screen: flag bodies that reach files, processes or the interpreter
    (edition.screen_body); False grades them in the sandbox like any other (for testing
    the sandbox alone)."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout: expected a positive number of seconds, got {timeout!r}")
    check_full_solution(PACKAGE_DIR)            # the reference must be the full solution
    if not Path(path).expanduser().exists():
        raise ValueError(f"path: expected a submission folder or zip, got "
                         f"{Path(path).expanduser().resolve()}, which does not exist")
    if manifest is None and parts is None:
        # What was assigned is the manifest's to say: grading every part would give parts
        # the edition left complete (unassigned) their full points.
        beside = Path(path).expanduser().resolve()
        beside = beside.with_name(beside.name.removesuffix(".zip") + ".manifest.json")
        if not beside.is_file():
            raise ValueError(f"manifest: expected the manifest build wrote (--manifest FILE; it "
                             f"records the assigned parts and points) or the parts to grade "
                             f"(--parts), got neither (no {beside.name} beside the submission)")
        manifest = beside
    if manifest is None:
        man = default_manifest(parts)
    elif isinstance(manifest, dict):
        man = manifest
    else:
        man = load_manifest(manifest)
    graded = man["parts"]
    if parts is not None and manifest is not None:
        keep = {p.name for p in resolve_parts(parts)}
        graded = [p for p in man["parts"] if p["name"] in keep]
    src = Path(path).expanduser().resolve()
    if not src.exists():
        raise ValueError(f"path: expected a submission folder or zip, got {src}, which does not "
                         "exist")
    student = student or src.stem
    work = Path(tempfile.mkdtemp(prefix="tinyvit-grade-"))
    started = time.monotonic()
    # the shared NumPy copy is read-only inside the namespaces; without them a submission
    # gets a copy of its own, so it cannot change what the next one runs
    shared = sandbox.runtime_dir()
    mode, _ = sandbox.isolation_prefix([str(work), shared], shared, root=str(work / "root"))
    runtime = None if mode != "processes" else sandbox.make_runtime(work / "runtime")
    try:
        report = {"student": student, "submission": str(src), "parts": [], "notes": []}
        try:
            if src.is_file():
                extract_zip(src, work / "unzipped")
                root = find_package_root(work / "unzipped")
            else:
                root = find_package_root(src)
            if root is None:
                raise ValueError("no tinyvit/ folder in the submission")
            edition = work / "edition"
            clean_edition(man, edition)
            notes = splice(edition, root, man, screen=screen)
        except ValueError as err:
            if "teacher's tinyvit changed" in str(err):
                raise
            report["notes"].append(f"cannot grade: {err}")
            notes, edition = None, None
        for p in graded:
            name, possible = p["name"], p["points"]
            left = student_timeout - (time.monotonic() - started)
            if edition is None or left <= 0:
                why = report["notes"][-1] if edition is None else \
                    f"the time limit of {student_timeout:g} s per submission ran out"
                report["parts"].append({"name": name, "points": 0.0, "possible": possible,
                                        "status": "error", "checks": [], "flags": [],
                                        "message": why, "seconds": 0.0, "output": ""})
                continue
            flagged = (notes or {}).get(name, "").startswith("FLAGGED")
            if flagged:
                res = {"name": name, "points": 0.0, "possible": possible, "status": "flagged",
                       "checks": [], "flags": [notes[name]], "message": notes[name],
                       "seconds": 0.0, "output": ""}
            else:
                res = grade_part(edition, name, possible,
                                 part_seed(man["secret"], student, name), min(timeout, left),
                                 runtime=runtime)
            if notes and notes.get(name) and not flagged:
                res["message"] = f"{notes[name]}; {res['message']}"
            report["parts"].append(res)
    finally:
        sandbox.remove_runtime(work)
    report["total"] = round(sum(p["points"] for p in report["parts"]), 2)
    report["possible"] = round(sum(p["possible"] for p in report["parts"]), 2)
    report["threshold"] = THRESHOLD
    kinds = sorted({p.get("sandbox") for p in report["parts"] if p.get("sandbox")} - {"not started"})
    report["sandbox"] = ", ".join(kinds) or "none"
    return report


def format_report(report: dict) -> str:
    lines = [f"Grading {report['student']} ({report['submission']}); sandbox: "
             f"{report.get('sandbox', '?')}", ""]
    width = max([len("part")] + [len(p["name"]) for p in report["parts"]])
    lines.append(f"{'part':<{width}}  {'checks':>7}  {'points':>13}  status")
    for p in report["parts"]:
        values = [c for c in p["checks"] if c["kind"] == "value"]
        passed = sum(c["passed"] for c in values)
        lines.append(f"{p['name']:<{width}}  {f'{passed}/{len(values)}':>7}  "
                     f"{p['points']:>6g} / {p['possible']:<4g}  {p['status']}")
    lines.append(f"{'total':<{width}}  {'':>7}  {report['total']:>6g} / {report['possible']:<4g}")
    notes = [f"  {p['name']}: {p['message']}" for p in report["parts"] if p["status"] != "pass"]
    if notes or report.get("notes"):
        lines += ["", "Details:"] + [f"  {n}" for n in report.get("notes", [])] + notes
    return "\n".join(lines)


def gradescope_results(report: dict) -> dict:
    """Gradescope's results.json: score, and one test per part (visible output)."""
    return {"score": report["total"], "output": f"{report['total']:g} / {report['possible']:g}",
            "tests": [{"name": p["name"], "score": p["points"], "max_score": p["possible"],
                       "status": "passed" if p["status"] == "pass" else "failed",
                       "output": p["message"], "visibility": "visible"}
                      for p in report["parts"]]}


def grade_class(submissions, manifest, out_dir, *, jobs: int = 2,
                timeout: float = DEFAULT_TIMEOUT, student_timeout: float = DEFAULT_STUDENT_TIMEOUT,
                gradescope: bool = False, feedback: bool = False, progress=None) -> dict:
    """Grade every submission under ``submissions`` (folders holding tinyvit/ or zips, at any
    depth) into out_dir/grades.csv (a row per student, a column per part), out_dir/reports/
    <student>.json, and on request <student>.results.json (Gradescope) and <student>.txt
    (feedback). A broken submission gets a row of zeros and a note; the others go on."""
    check_full_solution(PACKAGE_DIR)
    man = load_manifest(manifest) if not isinstance(manifest, dict) else manifest
    jobs = int(jobs)
    if not 1 <= jobs <= 2:
        raise ValueError(f"jobs: expected 1 or 2 (the machine's share), got {jobs}")
    found = find_submissions(submissions)
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)

    def one(item):
        sid, path = item
        try:
            rep = grade(path, man, student=sid, timeout=timeout, student_timeout=student_timeout)
        except Exception as err:                    # keep going past anything
            rep = {"student": sid, "submission": str(path), "total": 0.0,
                   "possible": sum(p["points"] for p in man["parts"]),
                   "notes": [f"cannot grade: {type(err).__name__}: {err}"],
                   "parts": [{"name": p["name"], "points": 0.0, "possible": p["points"],
                              "status": "error", "checks": [], "flags": [],
                              "message": str(err), "seconds": 0.0, "output": ""}
                             for p in man["parts"]]}
        safe = sid.replace("/", "__")
        write_json_atomic(out / "reports" / f"{safe}.json", rep)
        if gradescope:
            write_json_atomic(out / "reports" / f"{safe}.results.json", gradescope_results(rep))
        if feedback:
            _write_text(out / "reports" / f"{safe}.txt", format_report(rep) + "\n")
        if progress:
            progress(f"{sid}: {rep['total']:g} / {rep['possible']:g}")
        return rep

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        reports = list(pool.map(one, found))
    names = [p["name"] for p in man["parts"]]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["student", "total", "possible"] + names + ["flags", "notes"])
    for rep in reports:
        by = {p["name"]: p for p in rep["parts"]}
        w.writerow([rep["student"], f"{rep['total']:g}", f"{rep['possible']:g}"] +
                   [f"{by[n]['points']:g}" if n in by else "" for n in names] +
                   [" | ".join(f for p in rep["parts"] for f in p.get("flags", []))[:500],
                    " | ".join(rep.get("notes", []))[:500]])
    _write_text(out / "grades.csv", buf.getvalue())
    return {"csv": str(out / "grades.csv"), "students": len(reports), "reports": reports}


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
