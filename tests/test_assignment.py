"""The student edition (build) and the autograder (grade).

Each grade starts one Python process per part (about 0.3 s each, two at a time),
so the module grades only a handful of editions, shared through fixtures.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tinyvit import assignment
from tinyvit.assignment import build, grade
from tinyvit.cli import main

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "tinyvit"
MARKER = re.compile(r"^[ \t]*# (BEGIN|END) SOLUTION\b.*\n?", re.M)

# the main edition: two backward parts and two forward parts blanked
BLANKED = {"layernorm_backward": 15, "attention_backward": 20, "patchify": 5, "cls_forward": 3}


def edit_region(edition: Path, part: str, code: str) -> None:
    """Replace the raise line the build left for ``part`` by ``code`` (one line, same indent)."""
    for path in (edition / "tinyvit" / "layers").glob("*.py"):
        text = path.read_text()
        pattern = re.compile(rf'^([ \t]*)raise NotImplementedError\("{part}: .*"\)$', re.M)
        if pattern.search(text):
            path.write_text(pattern.sub(lambda m: m.group(1) + code, text))
            return
    raise AssertionError(f"no blanked region for {part} in {edition}")


def by_name(report):
    return {p["name"]: p for p in report["parts"]}


@pytest.fixture(scope="module")
def edition(tmp_path_factory):
    out = tmp_path_factory.mktemp("assignment") / "student"
    summary = build(out, parts=list(BLANKED))
    assert summary["parts"] == [p.name for p in assignment.PARTS if p.name in BLANKED]
    return out


@pytest.fixture(scope="module")
def edition_report(edition):
    return grade(edition)


def test_full_solution_gets_full_marks():
    report = grade(REPO)
    assert report["possible"] == 100
    assert report["total"] == 100
    for part in report["parts"]:
        assert part["status"] == "pass", (part["name"], part["message"])
        assert len(part["checks"]) >= 2                  # a part with no checks cannot pass
        # a correct float64 backward agrees with centred differences to ~1e-9
        assert max(c["rel_error"] for c in part["checks"]) < 1e-8, part["name"]


def test_blanked_parts_score_zero_and_the_rest_full_marks(edition_report):
    parts = by_name(edition_report)
    assert set(parts) == {p.name for p in assignment.PARTS}
    for name, part in parts.items():
        if name in BLANKED:
            assert part["points"] == 0 and part["possible"] == BLANKED[name]
            assert part["status"] == "error" and part["error"] == "NotImplementedError"
            assert part["message"].startswith(f"NotImplementedError: {name}: return")
        else:
            assert part["status"] == "pass", (name, part["message"])
            assert part["points"] == part["possible"] > 0
    assert edition_report["total"] == 100 - 43
    table = assignment.format_report(edition_report)
    assert "error: NotImplementedError" in table and "57 / 100" in table


def test_wrong_backwards_lose_exactly_their_parts_points(tmp_path):
    ed = tmp_path / "wrong"
    build(ed, parts=[])                                  # nothing blanked: the student's copy
    layers = ed / "tinyvit" / "layers"
    assert "SOLUTION" not in (layers / "layernorm.py").read_text()
    # a stray term in layer norm's dx (dgamma and dbeta stay right)
    with open(layers / "layernorm.py", "a") as f:
        f.write("\n\n_right_layernorm_backward = layernorm_backward\n\n\n"
                "def layernorm_backward(dout, cache):\n"
                "    dx, dgamma, dbeta = _right_layernorm_backward(dout, cache)\n"
                "    return dx + 0.1 * dout, dgamma, dbeta\n")
    # the softmax backward with its row-sum term dropped: dS = A * dA
    with open(layers / "attention.py", "a") as f:
        f.write("\n\ndef softmax_backward(dA, cache):\n    return cache * dA\n")
    report = grade(ed)
    parts = by_name(report)
    assert parts["layernorm_backward"]["status"] == "wrong"
    assert parts["softmax_backward"]["status"] == "wrong"
    checks = {c["name"]: c for c in parts["layernorm_backward"]["checks"]}
    assert not checks["dx"]["passed"] and checks["dx"]["rel_error"] > 1e-3
    assert checks["dgamma"]["passed"] and checks["dbeta"]["passed"]
    # block and attention call the wrong functions, but are graded with the reference ones
    assert parts["block_backward"]["status"] == "pass"
    assert parts["attention_backward"]["status"] == "pass"
    assert report["total"] == report["possible"] - 15 - 10 == 75


def test_grader_survives_hang_raise_nan_wrong_shape_and_count(tmp_path):
    ed = tmp_path / "broken"
    broken = ["gelu_backward", "pos_backward", "cls_forward", "linear_backward",
              "patchify_backward"]
    build(ed, parts=broken)
    edit_region(ed, "gelu_backward", "while True: pass")
    edit_region(ed, "pos_backward", "return dout * np.nan, dout.sum(axis=0, keepdims=True)")
    edit_region(ed, "cls_forward", "return x, None")             # (B, N, D), not (B, T, D)
    edit_region(ed, "linear_backward", "return dout, dout")       # two gradients, not three
    edit_region(ed, "patchify_backward", "return 1 / 0")
    report = grade(ed, parts=broken + ["mlp_backward"], timeout=5)
    parts = by_name(report)
    assert parts["gelu_backward"]["status"] == "timeout"
    assert parts["pos_backward"]["status"] == "wrong"
    assert "NaN" in parts["pos_backward"]["message"]
    assert parts["cls_forward"]["status"] == "wrong"
    assert "expected shape (3, 5, 5), got (3, 4, 5)" in parts["cls_forward"]["message"]
    assert parts["linear_backward"]["status"] == "wrong"
    assert "expected 3 gradients" in parts["linear_backward"]["message"]
    assert parts["patchify_backward"]["status"] == "error"
    assert parts["patchify_backward"]["error"] == "ZeroDivisionError"
    # mlp_backward calls the student's broken linear and gelu backwards: graded with the
    # reference ones instead, it still earns its points
    assert parts["mlp_backward"]["status"] == "pass"
    assert report["total"] == 5 and report["possible"] == 5 + 2 + 3 + 5 + 5 + 5


def test_built_edition_imports_and_its_untouched_parts_work(edition):
    code = r"""
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import tinyvit
from tinyvit.gradcheck import check_layer
from tinyvit.layers import (layernorm_backward, layernorm_forward, linear_backward,
                            linear_forward, mlp_backward, mlp_forward, softmax_backward,
                            softmax_forward, pos_backward, pos_forward)
rng = np.random.default_rng(0)
n = rng.standard_normal
errors = {}
errors.update(check_layer(linear_forward, linear_backward, {"x": n((2, 3, 4)), "W": n((4, 5)), "b": n(5)}))
errors.update(check_layer(mlp_forward, mlp_backward, {"x": n((2, 3, 4)), "W1": n((4, 6)), "b1": n(6),
                                                      "W2": n((6, 4)), "b2": n(4)}))
errors.update(check_layer(softmax_forward, softmax_backward, {"x": n((2, 3, 5))}))
errors.update(check_layer(pos_forward, pos_backward, {"x": n((2, 3, 4)), "pos": n((1, 3, 4))}))
try:
    layernorm_backward(n((2, 4)), layernorm_forward(n((2, 4)), n(4), n(4))[1])
    blanked = "no error"
except NotImplementedError as err:
    blanked = str(err)
print(json.dumps({"file": tinyvit.__file__, "max": max(errors.values()), "blanked": blanked}))
"""
    out = subprocess.run([sys.executable, "-I", "-B", "-c", code, str(edition)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(res["file"]).resolve() == (edition / "tinyvit" / "__init__.py").resolve()
    assert res["max"] < 1e-7
    assert res["blanked"].startswith("layernorm_backward: return (dx (..., D)")


def test_edition_is_the_source_with_regions_blanked_and_markers_dropped(edition):
    for src in PACKAGE.rglob("*"):
        rel = src.relative_to(PACKAGE)
        if src.is_dir() or "__pycache__" in rel.parts or src.suffix == ".pyc":
            continue
        dst = edition / "tinyvit" / rel
        assert dst.is_file(), rel
        text = src.read_bytes()
        if rel.suffix != ".py" or b"# BEGIN SOLUTION" not in text or rel.name == "assignment.py":
            assert dst.read_bytes() == text, rel             # copied byte for byte
    layers = PACKAGE / "layers"
    new = edition / "tinyvit" / "layers"
    # files without a blanked region: the source minus its marker lines, nothing else
    for name in ("linear.py", "mlp.py", "block.py"):
        assert (new / name).read_text() == MARKER.sub("", (layers / name).read_text()), name
    # a blanked region: its lines are gone, replaced by one raise at the body's indentation
    src = (layers / "layernorm.py").read_text()
    got = (new / "layernorm.py").read_text()
    raise_line = re.search(r'^    raise NotImplementedError\("layernorm_backward: return .*"\)\n',
                           got, re.M)[0]
    region = re.search(r"^[ \t]*# BEGIN SOLUTION layernorm_backward\n.*?# END SOLUTION\n",
                       src, re.M | re.S)[0]
    assert got == MARKER.sub("", src.replace(region, raise_line))
    fwd = re.search(r"# BEGIN SOLUTION layernorm_forward\n(.*?)[ \t]*# END SOLUTION", src, re.S)[1]
    assert fwd in got                                    # the forward, not chosen, is intact
    assert "SOLUTION" not in "".join(p.read_text() for p in new.glob("*.py"))
    readme = (edition / "README.md").read_text()
    for name in BLANKED:
        assert f"`{name}`" in readme
    assert "43 points" in readme
    assert (edition / "pyproject.toml").read_bytes() == (REPO / "pyproject.toml").read_bytes()


def test_cli_grade_writes_the_documented_json(edition, tmp_path, capsys):
    path = tmp_path / "report.json"
    rc = main(["assignment", "grade", str(edition), "--parts", "cls_forward", "pos_backward",
               "--json", str(path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert re.search(r"^pos_backward\s+3/3\s+\S+\s+2 / 2\s+pass$", out, re.M)
    assert re.search(r"^cls_forward\s+0/0\s+-\s+0 / 3\s+error: NotImplementedError$", out, re.M)
    assert re.search(r"^total\s+2 / 5$", out, re.M)
    report = json.loads(path.read_text())
    assert report["total"] == 2 and report["possible"] == 5
    assert [p["name"] for p in report["parts"]] == ["pos_backward", "cls_forward"]
    for part in report["parts"]:
        assert {"name", "points", "possible", "status", "checks", "message"} <= set(part)
        assert part["status"] in ("pass", "wrong", "error", "timeout")
        assert isinstance(part["message"], str)
        for check in part["checks"]:
            assert set(check) == {"name", "rel_error", "passed"}
            assert isinstance(check["passed"], bool)
    pos = report["parts"][0]
    assert [c["name"] for c in pos["checks"]] == ["dout unchanged", "dx", "dpos"]
    assert all(c["passed"] and 0 <= c["rel_error"] < 1e-8 for c in pos["checks"])


def test_cli_grades_the_installed_package_without_a_path(capsys):
    assert main(["assignment", "grade", "--parts", "softmax"]) == 0
    out = capsys.readouterr().out
    assert "Grading installed" in out and re.search(r"^total\s+5 / 5$", out, re.M)


def test_build_refuses_a_non_empty_folder_without_force(tmp_path, capsys):
    out = tmp_path / "class"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["assignment", "build", str(out), "--parts", "softmax"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not empty" in err and "--force" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert main(["assignment", "build", str(out), "--parts", "softmax", "--force"]) == 0
    assert (out / "notes.txt").read_text() == "mine"     # --force touches only what it writes
    assert 'raise NotImplementedError("softmax: ' in (out / "tinyvit/layers/attention.py").read_text()
    with pytest.raises(ValueError, match="outside the project"):
        build(REPO, parts=["softmax"], force=True)


def test_unknown_part_names_list_the_valid_ones(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"parts: expected names from linear_backward, .*"
                                         r"cls_forward \(or the groups all, backward, forward\), "
                                         r"got 'layernorm'"):
        build(tmp_path / "x", parts=["layernorm"])
    assert main(["assignment", "grade", "--parts", "softmax_bwd"]) == 2
    assert "got 'softmax_bwd'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert [p.name for p in assignment.resolve_parts(["forward"])] == \
        ["softmax", "patchify", "layernorm_forward", "cls_forward"]


def test_grader_refuses_to_run_from_a_student_edition(edition):
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from tinyvit.cli import main; "
            "sys.exit(main(['assignment', 'grade', sys.argv[1], '--parts', 'softmax']))")
    out = subprocess.run([sys.executable, "-I", "-B", "-c", code, str(edition)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "not the full solution" in out.stderr and "Traceback" not in out.stderr


def test_malformed_markers_are_reported(tmp_path):
    pkg = tmp_path / "tinyvit"
    pkg.mkdir()
    (pkg / "a.py").write_text("def f():\n    # BEGIN SOLUTION softmax\n    return 1\n")
    with pytest.raises(ValueError, match=r"a.py:2: region 'softmax' has no '# END SOLUTION'"):
        assignment.scan_regions(pkg)
    (pkg / "a.py").write_text("def f():\n    # BEGIN SOLUTION sofmax\n    return 1\n"
                              "    # END SOLUTION\n")
    with pytest.raises(ValueError, match=r"a.py:2: expected a region name .* got 'sofmax'"):
        assignment.scan_regions(pkg)
