"""Classroom assignments: student editions, their public checks, and a grader students cannot fool.

    tinyvit assignment build hw1 --parts backward trains --points points.json
        -> hw1/ (the edition to hand out) and hw1.manifest.json (keep it: parts, points,
           file hashes, the secret that seeds the hidden checks)
    tinyvit assignment check [PART ...]                     (inside an edition: public checks)
    tinyvit assignment grade SUBMISSION --manifest hw1.manifest.json
    tinyvit assignment grade-class SUBMISSIONS/ --manifest hw1.manifest.json --out grades/

Modules: parts (the parts, points, hints), edition (build, manifest, splice), checks (the
cases and how an answer is judged), sandbox (where the student's code runs), grading
(one submission, a class), student (the edition's check, README, notebook). The guide for
teachers is tutorials/ASSIGNMENTS.md.
"""

from .checks import THRESHOLD, evaluate, make_cases, score
from .edition import (BuildError, blank_source, build, find_submissions, load_manifest,
                      scan_regions, splice)
from .grading import format_report, grade, grade_class, gradescope_results
from .parts import GROUPS, PART_BY_NAME, PARTS, load_points, resolve_parts
from .student import check

__all__ = ["THRESHOLD", "evaluate", "make_cases", "score", "BuildError", "blank_source", "build",
           "find_submissions", "load_manifest", "scan_regions", "splice", "format_report",
           "grade", "grade_class", "gradescope_results", "GROUPS", "PART_BY_NAME", "PARTS",
           "load_points", "resolve_parts", "check", "add_command"]


def _cmd_build(args) -> int:
    points = load_points(args.points) if args.points else None
    summary = build(args.outdir, parts=args.parts, points=points, hints=args.hints,
                    force=args.force, manifest=args.manifest)
    print(f"Wrote the student edition to {summary['outdir']}")
    print(f"  {len(summary['parts'])} parts, {summary['points']:g} points: "
          f"{', '.join(summary['parts']) or 'none'}")
    print(f"  manifest (keep it, do not hand it out): {summary['manifest']}")
    for w in summary["warnings"]:
        print(f"  warning: {w}")
    return 0


def _cmd_grade(args) -> int:
    from .parts import write_json_atomic
    report = grade(args.path, args.manifest, student=args.student, parts=args.parts,
                   timeout=args.timeout)
    print(format_report(report))
    if args.json:
        write_json_atomic(args.json, report)
        print(f"\nWrote {args.json}")
    return 0


def _cmd_grade_class(args) -> int:
    res = grade_class(args.submissions, args.manifest, args.out, jobs=args.jobs,
                      timeout=args.timeout, student_timeout=args.student_timeout,
                      gradescope=args.gradescope, feedback=args.feedback, progress=print)
    print(f"Graded {res['students']} submissions into {res['csv']}")
    return 0


def _cmd_check(args) -> int:
    check(args.parts or None)
    return 0


def _cmd_parts(args) -> int:
    width = max(len(p.name) for p in PARTS)
    print(f"{'part':<{width}}  {'kind':<11}  points")
    for p in PARTS:
        print(f"{p.name:<{width}}  {p.kind:<11}  {p.points:>6g}   {p.hint}")
    print(f"\ngroups: {', '.join(GROUPS)}; total {sum(p.points for p in PARTS):g} points")
    return 0


def _cmd_points(args) -> int:
    import json
    print(json.dumps({p.name: p.points for p in PARTS}, indent=2))
    return 0


def add_command(subparsers) -> None:
    """Add ``tinyvit assignment build | check | grade | grade-class | parts | points``."""
    from .grading import DEFAULT_STUDENT_TIMEOUT, DEFAULT_TIMEOUT
    parser = subparsers.add_parser(
        "assignment", help="build a student edition, check it, grade submissions",
        description="Build a student edition of tinyvit with chosen functions blanked, run its "
                    "public checks, and grade submissions (one, or a class) in a sandbox.")
    sub = parser.add_subparsers(dest="assignment_command", metavar="ACTION")

    b = sub.add_parser("build", help="write a student edition to OUTDIR and its manifest")
    b.add_argument("outdir", metavar="OUTDIR")
    b.add_argument("--parts", nargs="+", metavar="PART", default=None,
                   help="parts, or the groups all / backward / forward (default: backward "
                        "trains); see 'tinyvit assignment parts'")
    b.add_argument("--points", metavar="FILE", default=None,
                   help="a JSON file {part: points} ('tinyvit assignment points' prints the "
                        "defaults)")
    b.add_argument("--hints", choices=("brief", "detailed"), default="brief")
    b.add_argument("--manifest", metavar="PATH", default=None,
                   help="where the manifest goes (default: OUTDIR.manifest.json)")
    b.add_argument("--force", action="store_true",
                   help="replace what the build writes in a non-empty OUTDIR")
    b.set_defaults(func=_cmd_build)

    c = sub.add_parser("check", help="inside a student edition: run the public checks")
    c.add_argument("parts", nargs="*", metavar="PART")
    c.set_defaults(func=_cmd_check)

    g = sub.add_parser("grade", help="grade one submission (a folder or a zip)")
    g.add_argument("path", metavar="SUBMISSION")
    g.add_argument("--manifest", metavar="FILE", default=None,
                   help="the manifest build wrote (default: SUBMISSION.manifest.json beside "
                        "the submission; without one, --parts must say what to grade)")
    g.add_argument("--student", default=None, help="the id that seeds the hidden checks "
                                                   "(default: the submission's name)")
    g.add_argument("--parts", nargs="+", metavar="PART", default=None)
    g.add_argument("--json", metavar="REPORT", default=None, help="also write the JSON report")
    g.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help=f"time limit per part (default {DEFAULT_TIMEOUT:g})")
    g.set_defaults(func=_cmd_grade)

    k = sub.add_parser("grade-class", help="grade a folder of submissions into one CSV")
    k.add_argument("submissions", metavar="SUBMISSIONS")
    k.add_argument("--manifest", metavar="FILE", required=True)
    k.add_argument("--out", metavar="DIR", required=True)
    k.add_argument("--jobs", type=int, default=2, help="submissions graded at once (1 or 2)")
    k.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help=f"time limit per part (default {DEFAULT_TIMEOUT:g})")
    k.add_argument("--student-timeout", type=float, default=DEFAULT_STUDENT_TIMEOUT,
                   metavar="SECONDS", help="time limit per submission "
                                           f"(default {DEFAULT_STUDENT_TIMEOUT:g})")
    k.add_argument("--gradescope", action="store_true",
                   help="also write each student's Gradescope results.json")
    k.add_argument("--feedback", action="store_true", help="also write a feedback .txt each")
    k.set_defaults(func=_cmd_grade_class)

    lp = sub.add_parser("parts", help="list the parts, their default points and hints")
    lp.set_defaults(func=_cmd_parts)
    pp = sub.add_parser("points", help="print the default points file")
    pp.set_defaults(func=_cmd_points)

    def usage(args) -> int:
        parser.print_help()
        return 2
    parser.set_defaults(func=usage)
