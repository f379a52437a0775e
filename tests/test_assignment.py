"""Student editions (build), their public checks, the sandboxed grader and the class workflow.

Grading starts a few processes per part, so the module builds two editions and grades a
handful of submissions, shared through fixtures. The outsider's trial (wrong answers and
attacks) is in test_assignment_trial.py.
"""

import csv
import json
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from assignment_trial import fill  # noqa: E402

from tinyvit import assignment  # noqa: E402
from tinyvit.assignment import _wire, build, grade, grade_class  # noqa: E402
from tinyvit.assignment.edition import BuildError, splice  # noqa: E402
from tinyvit.cli import main  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "tinyvit"
CLASS_PARTS = ["linear_backward", "softmax", "cls_backward"]


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """An edition with every part, and its manifest."""
    tmp = tmp_path_factory.mktemp("full")
    summary = build(tmp / "hw", parts=["all"], hints="detailed")
    return tmp / "hw", Path(summary["manifest"]), summary


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A three-part edition with teacher-set points."""
    tmp = tmp_path_factory.mktemp("small")
    pts = tmp / "points.json"
    pts.write_text(json.dumps({"linear_backward": 7, "softmax": 2.5, "cls_backward": 4}))
    assert main(["assignment", "build", str(tmp / "hw"), "--parts", *CLASS_PARTS,
                 "--points", str(pts)]) == 0
    return tmp / "hw", tmp / "hw.manifest.json"


def test_full_solution_gets_full_marks_on_every_part(full):
    edition, manifest, _ = full
    report = grade(REPO, manifest, student="teacher")
    assert [p["name"] for p in report["parts"]] == [p.name for p in assignment.PARTS]
    assert report["total"] == report["possible"] == sum(p.points for p in assignment.PARTS)
    for part in report["parts"]:
        assert part["status"] == "pass", (part["name"], part["message"])
        values = [c for c in part["checks"] if c["kind"] == "value"]
        assert len(values) >= 2
        # several configurations per part: square and non-square W, heads 1, 2, 4 (d != h)
    labels = " ".join(c["name"] for p in report["parts"] for c in p["checks"])
    for config in ("W 4x5", "W 3x3", "heads=1 (d=6)", "heads=2 (d=6)", "heads=4 (d=2)",
                   "float32", "model size", "axis=1", "large inputs"):
        assert config in labels, config


def test_manifest_records_parts_points_hashes_and_stays_out_of_the_edition(small):
    edition, manifest = small
    man = json.loads(manifest.read_text())
    assert [p["name"] for p in man["parts"]] == CLASS_PARTS
    assert [p["points"] for p in man["parts"]] == [7, 2.5, 4]
    assert len(man["secret"]) == 32 and man["files"]["tinyvit/layers/linear.py"]
    assert all(len(h) == 64 for h in man["files"].values())
    text = "".join(p.read_text(errors="replace") for p in edition.rglob("*") if p.is_file()
                   and p.suffix != ".bin")
    assert man["secret"] not in text                    # the seed of the hidden checks
    info = json.loads((edition / "tinyvit/assignment/edition.json").read_text())
    assert "secret" not in info and [p["name"] for p in info["parts"]] == CLASS_PARTS


def test_blank_edition_scores_zero_and_unassigned_parts_are_not_graded(small, tmp_path, capsys):
    edition, manifest = small
    path = tmp_path / "report.json"
    assert main(["assignment", "grade", str(edition), "--manifest", str(manifest),
                 "--json", str(path)]) == 0
    table = capsys.readouterr().out
    assert re.search(r"^total\s+0 / 13.5", table, re.M) and "NotImplementedError" in table
    report = json.loads(path.read_text())
    assert [p["name"] for p in report["parts"]] == CLASS_PARTS
    assert report["total"] == 0 and report["possible"] == 13.5
    assert report["sandbox"] in ("jail", "cover", "processes")
    for p in report["parts"]:
        assert p["status"] == "error" and "NotImplementedError" in p["message"]


def test_grading_refuses_when_the_teachers_package_changed(small, tmp_path):
    edition, manifest = small
    man = json.loads(manifest.read_text())
    man["files"]["tinyvit/layers/linear.py"] = "0" * 64
    bad = tmp_path / "m.json"
    bad.write_text(json.dumps(man))
    with pytest.raises(ValueError, match="changed since the build .*linear.py"):
        grade(edition, bad)


def test_grading_without_a_manifest_gives_no_free_points(small, tmp_path):
    """What was assigned comes from the manifest: without one beside the submission (or
    --parts), grade refuses instead of grading every part (the unassigned ones are complete
    in the edition, so they would score full points)."""
    edition, manifest = small
    copy = tmp_path / "sub"
    shutil.copytree(edition, copy)
    with pytest.raises(ValueError, match="manifest: expected the manifest build wrote"):
        grade(copy)
    shutil.copyfile(manifest, tmp_path / "sub.manifest.json")      # where build writes it
    report = grade(copy)
    assert [p["name"] for p in report["parts"]] == CLASS_PARTS and report["total"] == 0


def test_class_workflow_csv_gradescope_feedback(small, tmp_path):
    edition, manifest = small
    subs = tmp_path / "subs"
    # alice: the teacher's own files (every body right), in a section folder
    (subs / "section1" / "alice").mkdir(parents=True)
    shutil.copytree(PACKAGE, subs / "section1" / "alice" / "tinyvit",
                    ignore=shutil.ignore_patterns("__pycache__"))
    # bob: the blank edition, handed in as a zip inside a folder
    (subs / "section2").mkdir()
    with zipfile.ZipFile(subs / "section2" / "bob.zip", "w") as zf:
        for f in edition.rglob("*.py"):
            zf.write(f, "bob-hw/" + f.relative_to(edition).as_posix())
        zf.writestr("../../escape.txt", "outside")      # refused by the safe extraction
    # carol: a file that does not parse, and a part that loops forever
    fill(edition, subs / "carol", {"linear_backward": "while True:\n    pass",
                                   "softmax": "return x +"})
    # dave: module-level code outside the bodies (never run), right bodies
    fill(edition, subs / "dave", {
        "linear_backward": """
            x, W = cache
            x2 = x.reshape(-1, x.shape[-1]); d2 = dout.reshape(-1, dout.shape[-1])
            return dout @ W.T, x2.T @ d2, d2.sum(axis=0)""",
        "cls_backward": "return dout[:, 1:, :], dout[:, :1, :].sum(axis=0, keepdims=True)"})
    with open(subs / "dave" / "tinyvit" / "layers" / "linear.py", "a") as f:
        f.write("\nopen('/tmp/dave-was-here', 'w').write('x')\n")
    (subs / "notes.txt").write_text("not a submission")
    out = tmp_path / "grades"
    rc = main(["assignment", "grade-class", str(subs), "--manifest", str(manifest), "--out",
               str(out), "--jobs", "2", "--timeout", "6", "--gradescope", "--feedback"])
    assert rc == 0
    rows = list(csv.DictReader(open(out / "grades.csv")))
    by = {r["student"]: r for r in rows}
    assert set(by) == {"section1/alice", "section2/bob", "carol", "dave"}
    assert list(rows[0])[:6] == ["student", "total", "possible"] + CLASS_PARTS
    assert by["section1/alice"]["total"] == "13.5"
    assert (by["section2/bob"]["total"], by["section2/bob"]["possible"]) == ("0", "13.5")
    assert by["dave"]["linear_backward"] == "7" and by["dave"]["cls_backward"] == "4"
    assert by["dave"]["softmax"] == "0"
    assert by["carol"]["total"] == "0"
    assert not (tmp_path / "escape.txt").exists() and not Path("/tmp/dave-was-here").exists()
    carol = json.loads((out / "reports" / "carol.json").read_text())
    msgs = {p["name"]: p["message"] for p in carol["parts"]}
    assert "does not parse" in msgs["softmax"]
    assert "no answer within" in msgs["linear_backward"]
    gs = json.loads((out / "reports" / "section1__alice.results.json").read_text())
    assert gs["score"] == 13.5 and len(gs["tests"]) == 3
    assert {"name", "score", "max_score", "output", "visibility"} <= set(gs["tests"][0])
    feedback = (out / "reports" / "section2__bob.txt").read_text()
    assert "0 / 13.5" in feedback and "NotImplementedError" in feedback


def test_a_forward_mistake_is_charged_once(tmp_path):
    """ddof=1 in layernorm_forward costs the forward; a right layernorm_backward keeps its
    points (it is graded on the reference forward's cache)."""
    summary = build(tmp_path / "hw", parts=["layernorm_forward", "layernorm_backward"])
    ln = (PACKAGE / "layers" / "layernorm.py").read_text()
    right = re.search(r"SOLUTION layernorm_backward\n(.*?)\n[ \t]*# END", ln, re.S)[1]
    sub = fill(tmp_path / "hw", tmp_path / "sub", {
        "layernorm_forward": """
            mu = x.mean(axis=-1, keepdims=True)
            rstd = 1.0 / np.sqrt(x.var(axis=-1, ddof=1, keepdims=True) + eps)
            xhat = (x - mu) * rstd
            return gamma * xhat + beta, (xhat, rstd, gamma)""",
        "layernorm_backward": textwrap.dedent(right)})
    parts = {p["name"]: p for p in grade(sub, summary["manifest"])["parts"]}
    assert parts["layernorm_backward"]["points"] == 15
    assert parts["layernorm_forward"]["points"] < 5


def test_hidden_cases_are_seeded_per_student(small):
    from tinyvit.assignment.checks import make_cases
    from tinyvit.assignment.grading import part_seed
    from tinyvit import layers
    man = json.loads(small[1].read_text())
    a = make_cases("softmax", layers, np.random.default_rng(part_seed(man["secret"], "a", "softmax")))
    b = make_cases("softmax", layers, np.random.default_rng(part_seed(man["secret"], "b", "softmax")))
    assert [c["label"] for c in a] == [c["label"] for c in b]
    assert not np.array_equal(a[0]["args"][0], b[0]["args"][0])


def test_public_check_inside_the_edition(small, tmp_path):
    edition, _ = small
    ed = fill(edition, tmp_path / "mine", {
        "linear_backward": """
            x, W = cache
            x2 = x.reshape(-1, x.shape[-1]); d2 = dout.reshape(-1, dout.shape[-1])
            return dout @ W.T, x2.T @ d2, d2.sum(axis=0)""",
        "softmax": "e = np.exp(x)\nreturn e / e.sum(axis=axis, keepdims=True)",
        "cls_backward": "dcls = dout[:, 0].sum(axis=0)\nreturn dout[:, 1:], dcls.reshape(1, 1, 7)"})
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from tinyvit.cli import main; "
            "sys.exit(main(['assignment', 'check']))")
    res = subprocess.run([sys.executable, "-I", "-c", code, str(ed)], capture_output=True,
                         text=True, timeout=120, cwd=ed)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert re.search(r"^ok  linear_backward: \d+/\d+ checks passed, 7 / 7 points", out, re.M)
    assert re.search(r"^FIX softmax: .*large inputs .*: out: contains NaN or inf", out, re.M | re.S)
    # the student's own line in the traceback
    assert "raised ValueError: cannot reshape" in out
    assert "at tinyvit/layers/tokens.py:" in out and "dcls.reshape(1, 1, 7)" in out
    assert "public checks: 9 / 13.5 points" in out
    # the guide shows this very output (line numbers aside)
    guide = (REPO / "tutorials" / "ASSIGNMENTS.md").read_text()
    sample = guide.split("ok  linear_backward", 1)[1].split("```", 1)[0]
    sample = "ok  linear_backward" + sample
    norm = lambda t: re.sub(r"tokens\.py:\d+", "tokens.py:N", t)
    for line in sample.strip().splitlines():
        assert norm(line) in norm(out), line


def test_edition_gives_nothing_away(full, tmp_path):
    edition, _, summary = full
    texts = {p.relative_to(edition).as_posix(): p.read_text(errors="replace")
             for p in edition.rglob("*") if p.is_file() and p.suffix != ".bin"}
    joined = "\n".join(texts.values())
    assert "BEGIN " + "SOLUTION" not in joined and "END " + "SOLUTION" not in joined
    # the fast layers (a complete solution) are replaced by a stand-in
    assert "Student edition: the fast layers are your own layers" in texts["tinyvit/fast_layers.py"]
    # docstring sentences stating answers are blanked
    assert "sum over the batch of the gradient at position 0" not in texts["tinyvit/layers/tokens.py"]
    assert "dropped-residual bug" not in texts["tinyvit/layers/block.py"]
    assert "(summed over the batch)" not in texts["tinyvit/layers/tokens.py"]
    # detailed hints in the raise lines, the README table, the notebook
    assert 'Hint: dx multiplies dout by W transposed' in texts["tinyvit/layers/linear.py"]
    assert "| `attention_backward` | `tinyvit/layers/attention.py` | 20 |" in texts["README.md"]
    assert summary["warnings"] == [w for w in summary["warnings"] if w.startswith("patchify:")]
    # only the package's own files: no editor backups or notes from the source folder
    src = tmp_path / "src" / "tinyvit"
    shutil.copytree(PACKAGE, src, ignore=shutil.ignore_patterns("__pycache__"))
    (src / "layers" / "linear.py~").write_text("a backup")
    (src / "SOLUTIONS.md").write_text("all the answers")
    (src / "layers" / ".attention.py.swp").write_text("swap")
    build(tmp_path / "e1", parts=["linear_backward"], source=src)
    names = {p.name for p in (tmp_path / "e1").rglob("*")}
    assert not {"linear.py~", "SOLUTIONS.md", ".attention.py.swp"} & names
    # a solution line that survives elsewhere stops the build
    with open(src / "viz.py", "a") as f:
        f.write("\n\ndef _leak(x):\n    x2 = x.reshape(-1, x.shape[-1])\n    return x2\n")
    with pytest.raises(BuildError, match=r"viz.py:\d+: a line of the solution of "
                                         r"'linear_backward' survived"):
        build(tmp_path / "e2", parts=["linear_backward"], source=src)
    assert not (tmp_path / "e2").exists()


def test_notebook_walks_the_parts_with_a_check_after_each(full):
    edition, _, summary = full
    text = (edition / "notebook.py").read_text()
    compile(text, "notebook.py", "exec")
    checks = re.findall(r"^notebook_check\('(\w+)'\)$", text, re.M)
    assert checks == summary["parts"]
    assert text.count("# %% [markdown]") == len(checks) + 1


def test_splice_takes_only_the_assigned_bodies(small, tmp_path):
    edition, manifest = small
    man = json.loads(manifest.read_text())
    sub = fill(edition, tmp_path / "sub", {"cls_backward": "return dout[:, 1:], dout[:, :1].sum(0, keepdims=True)"})
    tokens = sub / "tinyvit" / "layers" / "tokens.py"
    text = tokens.read_text()
    text = text.replace('"""x (B, T, D) + pos (1, T, D) -> (B, T, D), cache."""',
                        '"""x (B, T, D) + pos (1, T, D) -> (B, T, D), cache."""\n    return x * 0, None')
    tokens.write_text(text + "\n\ndef helper():\n    return 1\n\nimport os\n")
    clean = tmp_path / "clean"
    from tinyvit.assignment.edition import clean_edition
    clean_edition(man, clean)
    notes = splice(clean, sub, man)
    assert notes["cls_backward"] == ""
    assert notes["softmax"] == "softmax still raises NotImplementedError"
    got = (clean / "tinyvit" / "layers" / "tokens.py").read_text()
    assert "dout[:, :1].sum(0, keepdims=True)" in got
    assert "x * 0" not in got and "def helper" not in got and "import os" not in got


@pytest.mark.parametrize("cap", ["", "cover", "processes"])
def test_runner_is_isolated(small, tmp_path, monkeypatch, cap):
    """What the child sees: no path to the teacher's package, no grader modules, no metadata;
    in each sandbox mode (the best one here, and the two fallbacks)."""
    monkeypatch.setenv("TINYVIT_GRADER_ISOLATION", cap)
    edition, _ = small
    probe = '''
        import sys, os, importlib.metadata as md
        try:
            md.distribution("tinyvit"); meta = "found"
        except md.PackageNotFoundError:
            meta = "none"
        try:
            open(np.__file__, "ab").close()          # opening for append changes nothing
            writable = True
        except OSError:
            writable = False
        print("PROBE", repr({"path": sys.path, "argv": sys.argv, "env": dict(os.environ),
                             "modules": sorted(m for m in sys.modules if "tinyvit" in m),
                             "meta": meta, "ppid": os.getppid(), "cwd": os.getcwd(),
                             "teacher": os.path.isdir(TEACHER), "numpy": np.__file__,
                             "numpy_writable": writable,
                             "siblings": os.listdir(os.path.dirname(sys.path[0])),
                             "net": [ln.split(":")[0].strip() for ln in
                                     open("/proc/net/dev").read().splitlines()[2:]]}))
        return dout[:, 1:], dout[:, :1].sum(0, keepdims=True)'''.replace("TEACHER", repr(str(PACKAGE)))
    ed = fill(edition, tmp_path / "probe", {"cls_backward": probe})
    import time as _time

    from tinyvit.assignment import sandbox
    s = sandbox.Session(ed, deadline=_time.monotonic() + 30)
    try:
        assert s.ready[0]["op"] == "ready"
        head, _ = s.call("cls_backward", [np.ones((2, 3, 4)), None])
        assert head["op"] == "result"
    finally:
        s.close()
    line = [ln for ln in s.output().splitlines() if ln.startswith("PROBE")][0]
    seen = eval(line[len("PROBE "):])                    # our own repr of plain data
    teacher = str(REPO)
    assert seen["meta"] == "none"
    assert not any(teacher in p for p in seen["path"]), seen["path"]
    assert seen["path"][0] == str(ed.resolve())
    assert seen["argv"] == ["-c"] and not any(teacher in v for v in seen["env"].values())
    assert set(seen["env"]) <= {"PATH", "HOME", "LANG", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                "MKL_NUM_THREADS", "MPLBACKEND", "PWD", "OLDPWD"}
    assert all(m == "tinyvit" or m.startswith("tinyvit.") for m in seen["modules"])
    assert "tinyvit.assignment.checks" not in seen["modules"]     # no judge in the child
    assert s.cleanup.startswith("clean")
    assert seen["numpy"].startswith(s.runtime + "/")          # the private copy
    assert not seen["numpy"].startswith(str(Path(np.__file__).parent))
    if s.mode in ("jail", "cover"):   # alone in its PID namespace, project covered, NumPy read-only
        assert seen["ppid"] == 0 and seen["teacher"] is False
        assert seen["numpy_writable"] is False
        assert seen["net"] == ["lo"]                            # no network
    if s.mode == "jail":              # a new root: beside the edition, nothing else of the disk
        assert seen["siblings"] == ["probe"]
        assert (tmp_path / "probe").is_dir() and len(list(tmp_path.iterdir())) >= 1


def test_grader_refuses_to_run_from_a_student_edition(small):
    edition, manifest = small
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from tinyvit.cli import main; "
            "sys.exit(main(['assignment', 'grade', sys.argv[1], '--manifest', sys.argv[2]]))")
    out = subprocess.run([sys.executable, "-I", "-B", "-c", code, str(edition), str(manifest)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "not the full solution" in out.stderr and "Traceback" not in out.stderr


def test_wire_carries_arrays_only():
    blobs = []
    with pytest.raises(_wire.WireError, match="dtype object"):
        _wire.encode(np.array([object()]), blobs)
    with pytest.raises(_wire.WireError, match="type function"):
        _wire.encode(lambda: 0, blobs)
    data = _wire.message({"op": "x"}, value=(np.arange(3.0), {"a": [None, 1, "s"]}))
    pos = [0]

    def read(n):
        pos[0] += n
        return data[pos[0] - n:pos[0]]
    header, blobs = _wire.unpack_from(read)
    value = _wire.values_of(header, blobs)["value"]
    assert np.array_equal(value[0], np.arange(3.0)) and value[1] == {"a": [None, 1, "s"]}
    import io
    import pickle
    bad = io.BytesIO()
    np.save(bad, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle"):
        _wire.decode({"a": 0}, [bad.getvalue()])


def test_cli_parts_points_and_errors(capsys, tmp_path):
    assert main(["assignment", "parts"]) == 0
    out = capsys.readouterr().out
    assert "attention_backward" in out and "trains" in out
    assert main(["assignment", "points"]) == 0
    pts = json.loads(capsys.readouterr().out)
    assert pts["attention_backward"] == 20 and sum(pts.values()) == 110
    assert main(["assignment", "build", str(tmp_path / "x"), "--parts", "layernorm"]) == 2
    assert "got 'layernorm'" in capsys.readouterr().err
    bad = tmp_path / "p.json"
    bad.write_text('{"softmax": -1}')
    assert main(["assignment", "build", str(tmp_path / "y"), "--points", str(bad)]) == 2
    assert "expected a number >= 0 for 'softmax'" in capsys.readouterr().err
    assert main(["assignment", "grade", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(ValueError, match="outside the project"):
        build(REPO, parts=["softmax"], force=True)


def test_the_guide_states_what_the_code_does():
    from tinyvit.assignment import checks, edition, student
    from assignment_trial import ATTEMPTS, RIGHT, WRONG
    guide = (REPO / "tutorials" / "ASSIGNMENTS.md").read_text()
    for p in assignment.PARTS:
        assert re.search(rf"^\| `{p.name}` \| {p.kind} \| {p.points:g} \|", guide, re.M), p.name
    sci = lambda v: f"{v:.0e}".replace("e-0", "e-")
    facts = [f"below {sci(checks.THRESHOLD)} passes", f"reference ({sci(checks.FORWARD_THRESHOLD)})",
             f"float64 answer ({sci(checks.FLOAT32_THRESHOLD)})",
             f"farther than {sci(checks.ANALYTIC_FLOOR)}", f"within {checks.SCALE_SECONDS:g} s",
             f"less {checks.CONTRACT_PENALTY:.0%}", f"within {student.CURVE_TOLERANCE:.0%}",
             f"trains for {student.TRAIN_SETTINGS['max_steps']} steps",
             f"at most {edition.MAX_ZIP_BYTES >> 20} MB and {edition.MAX_ZIP_FILES} files",
             f"of {edition.MIN_SOLUTION_LINE} characters or more",
             f"grades {len(WRONG)} plausible wrong answers", f"and {len(ATTEMPTS)} attempts",
             f"and {len(RIGHT)} right answers written otherwise",
             f"more than {checks.MAX_FORWARD_CALLS} times"]
    flat = " ".join(guide.split())
    for fact in facts:
        assert " ".join(fact.split()) in flat, fact


def test_malformed_markers_are_reported(tmp_path):
    pkg = tmp_path / "tinyvit"
    pkg.mkdir()
    mark = "# BEGIN " + "SOLUTION"
    (pkg / "a.py").write_text(f"def f():\n    {mark} softmax\n    return 1\n")
    with pytest.raises(ValueError, match=r"a.py:2: region 'softmax' has no"):
        assignment.scan_regions(pkg)
    (pkg / "a.py").write_text(f"def f():\n    {mark} sofmax\n    return 1\n    # END SOLUTION\n")
    with pytest.raises(ValueError, match=r"a.py:2: expected a region name .* got 'sofmax'"):
        assignment.scan_regions(pkg)
