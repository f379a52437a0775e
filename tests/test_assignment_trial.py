"""The outsider's trial (tests/assignment_trial.py): every plausible wrong answer loses
points, every attempt to score without implementing scores 0 or is flagged, and no process
a submission started outlives its grading."""

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import assignment_trial as T  # noqa: E402

from tinyvit.assignment import build  # noqa: E402


@pytest.fixture(scope="module")
def trial(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trial")
    summary = build(tmp / "hw", parts=["all"])
    (tmp / "work").mkdir()
    marker = tmp / "rewritten-report.json"
    rows = T.run_trial(tmp / "hw", Path(summary["manifest"]), tmp / "work", marker)
    time.sleep(2.5)                    # A07's grandchild would write the marker after 1.5 s
    return rows, marker


def test_the_trial_is_as_large_as_promised():
    assert len(T.WRONG) >= 30 and len(T.ATTEMPTS) >= 10
    assert len({w[0] for w in T.WRONG}) == len(T.WRONG)


def test_every_wrong_answer_loses_points(trial):
    rows, _ = trial
    wrong = [r for r in rows if r["id"].startswith("W")]
    assert len(wrong) == len(T.WRONG)
    for r in wrong:
        assert r["points"] < r["possible"], r
        assert r["status"] in ("partial", "wrong", "error"), r
        assert r["message"], r


def test_every_attempt_scores_zero_or_is_flagged(trial):
    rows, marker = trial
    attempts = [r for r in rows if r["id"].startswith("A")]
    assert len(attempts) == len(T.ATTEMPTS) + len(T.SANDBOX_ONLY)
    for r in attempts:
        assert r["points"] == 0 or r["status"] == "flagged", r
    # with the screen, everything reaching beyond arrays is flagged, saying what it used
    flagged = {r["id"]: r for r in attempts if r["screen"] and r["status"] == "flagged"}
    assert {"A01", "A02", "A03", "A04", "A05", "A06", "A07", "A11"} <= set(flagged)
    assert "import sys" in flagged["A01"]["message"]
    # finite differences, through the package's forward or written inline
    assert "linear_forward" in flagged["A08"]["message"] and "times" in flagged["A08"]["message"]
    assert "difference quotient" in flagged["A09"]["message"]
    assert "gelu_forward 2 times" in flagged["A10"]["message"]
    a14 = [r for r in attempts if r["id"] == "A14"][0]       # refused, and the grader lived
    assert a14["points"] == 0 and "do not follow linear_backward's contract" in a14["message"]
    # without the screen the sandbox alone holds: no attempt earns a point
    alone = {r["id"]: r for r in attempts if not r["screen"]}
    assert set(alone) == T.SANDBOX_ONLY and all(r["points"] == 0 for r in alone.values())
    assert "PackageNotFoundError" in alone["A02"]["message"]       # no metadata route
    assert not marker.exists()          # the detached grandchild was killed with its part


def test_right_answers_written_otherwise_earn_full_points(trial):
    rows, _ = trial
    right = [r for r in rows if r["id"].startswith("R")]
    assert len(right) == len(T.RIGHT)
    for r in right:
        assert r["points"] == r["possible"] and r["status"] == "pass", r


def test_messages_say_what_to_fix(trial):
    rows, _ = trial
    by = {(r["id"], r["screen"]): r for r in rows}
    assert "expected shape (5,), got (3, 5)" in by[("W02", True)]["message"]
    assert "returned float64 for float32 inputs" in by[("W03", True)]["message"]
    assert "NaN or inf" in by[("W05", True)]["message"]
    assert "changed the cache in place" in by[("W09", True)]["message"]
    assert ("the cache does not follow the contract: expected a tuple of arrays shaped "
            "(2, 3, 6)") in by[("W12", True)]["message"]
    assert "heads=2 (d=6)" in by[("W23", True)]["message"]
    assert "changed dout in place" in by[("W20", True)]["message"]
    # a forward mistake is charged to the forward: W11's layer norm loses its own points
    # only (the backward parts are graded on the reference forward's cache)
    assert by[("W11", True)]["part"] == "layernorm_forward"


def test_the_subreaper_alone_ends_a_detached_grandchild(tmp_path, monkeypatch):
    """Without namespaces (the fallback where unshare is missing) the supervisor still kills
    a setsid() grandchild before the grade returns."""
    from tinyvit.assignment import grade
    monkeypatch.setenv("TINYVIT_GRADER_ISOLATION", "processes")
    summary = build(tmp_path / "hw", parts=["linear_backward"])
    attempt = [a for a in T.ATTEMPTS if a[0] == "A07"][0]
    marker = tmp_path / "rewritten-report.json"
    sub = T.fill(tmp_path / "hw", tmp_path / "sub", {attempt[1]: attempt[3]}, str(marker))
    report = grade(sub, summary["manifest"], screen=False)
    assert report["total"] == 0
    time.sleep(2.5)
    assert not marker.exists()


def test_a_link_to_the_teachers_file_is_not_read(tmp_path):
    from tinyvit.assignment import grade
    summary = build(tmp_path / "hw", parts=["linear_backward"])
    sub = tmp_path / "sub"
    import shutil
    shutil.copytree(tmp_path / "hw", sub)
    target = sub / "tinyvit" / "layers" / "linear.py"
    target.unlink()
    target.symlink_to(Path(__file__).resolve().parents[1] / "tinyvit" / "layers" / "linear.py")
    report = grade(sub, summary["manifest"])
    assert report["total"] == 0
    assert "link to a file outside the submission" in report["parts"][0]["message"]
