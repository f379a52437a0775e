"""Build the documentation site into a folder, and optionally check it in a real browser.

    python docs/build.py                    # full mode: every tutorial as run by a learner
    python docs/build.py --quick --check    # quick mode, then docs/check_site.py (as CI does)

Steps: run each tutorial as a notebook in a fresh Jupyter kernel (tinyvit.tutorial.
execute_notebook, the same runner as the tests), from a scratch folder, so the pages
carry the executed outputs and inline figures; put them beside the README, the
tutorials' index and the teacher's guide in docs/_build/src, with links between them
pointed at the pages they become; then `mkdocs build --strict` (docs/mkdocs.yml).
Needs `pip install -e ".[docs]"`. The worked solutions are left out of the site, so a
teacher can publish it without them.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
SRC = DOCS / "_build" / "src"            # docs_dir of docs/mkdocs.yml
WORK = DOCS / "_build" / "work"          # where the tutorials run (their figures and training runs)
TUTORIALS = sorted((REPO / "tutorials").glob("[0-9][0-9]_*.py"))

# Markdown files of the repository that become pages: repository path -> page path in the site.
PAGES = {"README.md": "index.md", "tutorials/README.md": "tutorials/index.md",
         "tutorials/ASSIGNMENTS.md": "teachers.md"}
PAGES.update({f"tutorials/{p.name}": f"tutorials/{p.stem}.ipynb" for p in TUTORIALS})

# mkdocs warnings that are not defects of the site: docstrings are plain text, and an index
# such as `attn[i]` in one reads to the cross-reference plugin as a reference it cannot find.
IGNORED_WARNING = re.compile(r"mkdocs_autorefs: api\.md: .*Could not find cross-reference target")

LINK = re.compile(r"(?<!!)\[([^\]]*)\]\(([^)\s]+)\)")


def rewrite_links(text: str, page_repo_path: str) -> str:
    """Point relative links at the pages they become; a link to a repository file that is
    not a page (source code, the solutions) becomes plain code text. A link to nothing is
    left as it is, for the browser check to report."""
    here = Path(page_repo_path).parent

    def fix(m):
        label, target = m.group(1), m.group(2)
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            return m.group(0)                                    # external, or an anchor on the page
        path, _, anchor = target.partition("#")
        repo_path = os.path.normpath(here / path).replace(os.sep, "/")
        if repo_path in PAGES:
            page = os.path.relpath(PAGES[repo_path], Path(PAGES[page_repo_path]).parent).replace(os.sep, "/")
            return f"[{label}]({page}{'#' + anchor if anchor else ''})"
        if not (REPO / repo_path).exists():
            return m.group(0)                                    # broken in the repository too: the check says so
        return label if label.startswith("`") else f"`{label}`"
    return LINK.sub(fix, text)


def run_tutorials(quick: bool) -> None:
    import nbformat

    from tinyvit.tutorial import execute_notebook

    WORK.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TINYVIT_FIGURES=str(WORK / "figures"))
    env.pop("MPLBACKEND", None)
    if quick:
        env["TINYVIT_QUICK"] = "1"
    else:
        env.pop("TINYVIT_QUICK", None)
    for src in TUTORIALS:
        t0 = time.perf_counter()
        nb = execute_notebook(src, cwd=WORK, env=env, timeout=3600)
        nbformat.write(nb, str(SRC / "tutorials" / f"{src.stem}.ipynb"))
        print(f"  {src.name}: {time.perf_counter() - t0:.1f} s", flush=True)


def assemble() -> None:
    (SRC / "tutorials").mkdir(parents=True, exist_ok=True)
    for repo_path, page in PAGES.items():
        if page.endswith(".md"):
            text = (REPO / repo_path).read_text()
            (SRC / page).write_text(rewrite_links(text, repo_path))
    shutil.copy(DOCS / "api.md", SRC / "api.md")
    shutil.copy(DOCS / "extra.css", SRC / "extra.css")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="run the tutorials in quick mode (TINYVIT_QUICK=1)")
    ap.add_argument("--out", default=str(REPO / "site"), help="where the site goes (default: site/)")
    ap.add_argument("--check", action="store_true", help="then open every page in headless Chromium")
    args = ap.parse_args(argv)

    if SRC.exists():
        shutil.rmtree(SRC)
    print(f"running the tutorials ({'quick' if args.quick else 'full'} mode) in {WORK}", flush=True)
    assemble()
    run_tutorials(args.quick)
    out = Path(args.out).resolve()
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--clean", "-f", str(DOCS / "mkdocs.yml"),
                           "-d", str(out)], capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    warnings = [line for line in log.splitlines() if line.startswith(("WARNING", "ERROR"))
                and not IGNORED_WARNING.search(line)]
    if proc.returncode or warnings:
        print(log[-6000:], file=sys.stderr)
        print(f"mkdocs build: exit code {proc.returncode}, {len(warnings)} warning(s):", *warnings,
              sep="\n", file=sys.stderr)
        return 1
    print(f"site written to {out}")
    if args.check:
        sys.path.insert(0, str(DOCS))
        from check_site import check_site
        return check_site(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
