"""Student editions: build one, describe it in a manifest, and splice a submission into it.

The layer code marks each solution region with a pair of comment lines around the body of
the function it names (see BEGIN_RE and END_RE below: "BEGIN", then "SOLUTION" and the name;
"END", then "SOLUTION"). Their literal text never appears in this package, which every
edition carries.

build      copies the package's own source and data files (nothing else: no editor
           backups, no notes), blanks the chosen regions to one ``raise
           NotImplementedError(hint)``, drops every other marker line, blanks docstring
           sentences that state an assigned answer, replaces fast_layers.py (a complete
           solution with speed tricks) by a stand-in that runs the student's layers,
           writes the public fixtures, a README and a notebook, and refuses to finish if
           any marker or any line of an assigned solution survives. The manifest (parts,
           points, hints, the hashes of the edition's package files, the secret that seeds
           the hidden checks) is written beside the edition, not into it.
splice     takes only the bodies of the assigned functions from a submission and puts them
           into a clean edition rebuilt from the teacher's package: no other code of the
           student's runs.
"""

from __future__ import annotations

import ast
import datetime
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
import textwrap
import zipfile
from pathlib import Path

from .parts import ALL_REGIONS, ANSWER_SENTENCES, PART_BY_NAME, default_points, \
    resolve_parts, write_json_atomic

PACKAGE_DIR = Path(__file__).resolve().parents[1]       # the teacher's tinyvit
_MARK = "# BEGIN " + "SOLUTION"                        # spelled apart: this file is copied too
_END = "# END " + "SOLUTION"
BEGIN_RE = re.compile(r"^(?P<indent>[ \t]*)" + re.escape(_MARK) +
                      r" (?P<name>[A-Za-z_]\w*)[ \t]*\r?\n?$")
END_RE = re.compile(r"^[ \t]*" + re.escape(_END) + r"[ \t]*\r?\n?$")
MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\.py$")
DATA_PATTERNS = ("data_files/*.txt",)                    # pyproject's package-data
MANIFEST_FORMAT = 1
SKIP_SCAN = ("assignment",)                              # the grader's own subpackage
MIN_SOLUTION_LINE = 24          # characters: a solution line this long found elsewhere stops a build

FAST_STANDIN = '''"""Student edition: the fast layers are your own layers.

The teacher's tinyvit has a module here with the same functions written for speed; it
would give the answers away, so in this edition it runs tinyvit.layers (your code).
The CLS-only last block (n_queries=) is not available here.
"""

from .layers import *  # noqa: F401,F403
from .layers import __all__  # noqa: F401

SUPPORTS_QUERIES = False
'''


# The block with LayerScale recombines the assigned layers line for line (its backward is
# the block's backward with two scales): in an edition it says it is not part of the work.
LAYERSCALE_STANDIN = '''"""Student edition: the block with LayerScale is not part of this assignment.

The teacher's tinyvit has the LayerScale variant of the block here (DeiT-III, DINOv2); its
backward repeats block_backward's lines, so this edition leaves it out.
"""


def layerscale_block_forward(x, p, heads, gelu="exact"):
    raise NotImplementedError("LayerScale blocks are not part of this assignment")


def layerscale_block_backward(dout, cache):
    raise NotImplementedError("LayerScale blocks are not part of this assignment")
'''


STANDINS = {"fast_layers.py": FAST_STANDIN, "layers/layerscale.py": LAYERSCALE_STANDIN}

# Functions outside the assigned regions that recombine an assigned layer line for line (the
# attention pool's backward is attention's backward with one query): an edition keeps their
# signatures and docstrings and says they are not part of the work.
STRIPPED = {"layers/pool.py": ("attn_pool_forward", "attn_pool_backward")}


def strip_functions(text: str, names) -> str:
    """text with the bodies of the named top-level functions (after their docstrings)
    replaced by a NotImplementedError saying they are not part of the assignment."""
    tree = ast.parse(text)
    lines = text.splitlines(keepends=True)
    for fn in sorted((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names),
                     key=lambda n: -n.lineno):
        body = fn.body[1:] if ast.get_docstring(fn) is not None else fn.body
        if not body:
            continue
        first, last = body[0].lineno, fn.end_lineno
        indent = " " * body[0].col_offset
        stub = (f'{indent}raise NotImplementedError("{fn.name} is not part of this assignment '
                '(it repeats an assigned layer)")\n')
        lines[first - 1:last] = [stub]
    return "".join(lines)


class BuildError(ValueError):
    """An edition that would give something away, or a source that is not the solution."""


def source_files(package_dir: Path):
    """The package's own files: modules (*.py with a module name) and declared data files."""
    package_dir = Path(package_dir)
    out = []
    for path in sorted(package_dir.rglob("*")):
        rel = path.relative_to(package_dir)
        if path.is_dir() or "__pycache__" in rel.parts or path.is_symlink():
            continue
        if any(not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", d) for d in rel.parts[:-1]):
            continue
        if MODULE_NAME.match(rel.name) or any(rel.match(p) for p in DATA_PATTERNS):
            out.append(rel)
    return out


def scan_regions(package_dir=PACKAGE_DIR) -> dict:
    """{region: (file relative to the package, first line, last line)}; ValueError if malformed."""
    package_dir = Path(package_dir)
    found = {}
    for rel in source_files(package_dir):
        if rel.suffix != ".py" or rel.parts[0] in SKIP_SCAN:
            continue
        lines = (package_dir / rel).read_text(encoding="utf-8").splitlines(keepends=True)
        open_name, open_line = None, 0
        for i, line in enumerate(lines, 1):
            begin, end = BEGIN_RE.match(line), END_RE.match(line)
            where = f"{rel.as_posix()}:{i}"
            if begin:
                name = begin["name"]
                if open_name:
                    raise ValueError(f"{where}: expected '{_END}' for region {open_name!r} "
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
                    raise ValueError(f"{where}: '{_END}' without a BEGIN")
                found[open_name] = (rel.as_posix(), open_line, i)
                open_name = None
        if open_name:
            raise ValueError(f"{rel.as_posix()}:{open_line}: region {open_name!r} has no "
                             f"'{_END}'")
    return found


def check_full_solution(package_dir=PACKAGE_DIR) -> dict:
    regions = scan_regions(package_dir)
    missing = [r for r in ALL_REGIONS if r not in regions]
    if missing:
        raise ValueError(f"the grader's tinyvit ({package_dir}) is not the full solution: no "
                         f"solution markers for {', '.join(missing)}; run it from the "
                         "teacher's complete copy")
    return regions


def blank_source(text: str, blanked: dict) -> str:
    """Replace the regions named in ``blanked`` (region -> message) by a raise statement at the
    marker's indentation; drop the marker lines of every other region; keep the rest."""
    out, skipping = [], False
    for line in text.splitlines(keepends=True):
        begin = BEGIN_RE.match(line)
        if skipping:
            if END_RE.match(line):
                skipping = False
            continue
        if begin:
            if begin["name"] in blanked:
                newline = line[len(line.rstrip("\r\n")):] or "\n"
                out.append(f"{begin['indent']}raise NotImplementedError("
                           f"{json.dumps(blanked[begin['name']])}){newline}")
                skipping = True
            continue
        if END_RE.match(line):
            continue
        out.append(line)
    return "".join(out)


def region_text(package_dir, regions: dict, name: str) -> str:
    rel, first, last = regions[name]
    lines = (Path(package_dir) / rel).read_text(encoding="utf-8").splitlines()
    return "\n".join(lines[first:last - 1])


def solution_lines(body: str) -> list[str]:
    """The lines of a solution worth searching for elsewhere (code, long enough to be telling)."""
    out = []
    for line in body.splitlines():
        code = line.split("#", 1)[0].strip()
        if len(code) >= MIN_SOLUTION_LINE:
            out.append(code)
    return out


def _sentence_re(sentence: str):
    words = sentence.split()
    return re.compile(r"\s+".join(re.escape(w) for w in words))


def blank_sentences(text: str, sentences) -> tuple[str, list]:
    """Remove each sentence (whitespace-insensitive); returns (text, sentences not found)."""
    missing = []
    for s in sentences:
        new, n = _sentence_re(s).subn("", text)
        if not n:
            missing.append(s)
        text = new
    return text, missing


def _hint(part, hints: str) -> str:
    text = f"{part.name}: {part.hint}"
    if hints == "detailed":
        text += f". Hint: {part.detail}"
    return text


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_package(dest: Path, src: Path, parts, hints: str, regions: dict) -> list[str]:
    """The blanked package into dest/tinyvit; returns warnings (sentences not found)."""
    blanked = {p.name: _hint(p, hints) for p in parts if p.has_region}
    sentences = {}
    for p in parts:
        for rel, s in ANSWER_SENTENCES.get(p.name, []):
            sentences.setdefault(rel, []).append(s)
    warnings = []
    pkg = dest / "tinyvit"
    for rel in source_files(src):
        target = pkg / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if rel.as_posix() in STANDINS:
            target.write_text(STANDINS[rel.as_posix()], encoding="utf-8")
            continue
        if rel.suffix == ".py" and rel.parts[0] not in SKIP_SCAN:
            text = (src / rel).read_text(encoding="utf-8")
            new = blank_source(text, blanked)
            if rel.as_posix() in STRIPPED:
                new = strip_functions(new, STRIPPED[rel.as_posix()])
            new, missing = blank_sentences(new, sentences.get(rel.as_posix(), []))
            warnings += [f"{rel.as_posix()}: sentence not found: {s[:50]}..." for s in missing]
            target.write_text(new, encoding="utf-8")
        else:
            shutil.copyfile(src / rel, target)
    return warnings


# Functions that must stay in an edition and share a line with an assigned solution: the
# build allows them and says so (tutorials/ASSIGNMENTS.md lists them).
KNOWN_SHARED = {"patchify": ("layers/patches.py", "unpatchify",
                             "unpatchify (its inverse, which patchify_backward and the plots "
                             "use) stays in the edition and shows the axis order")}


def _function_lines(path: Path, name: str) -> set:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    fn = _function(tree, name)
    return set(range(fn.lineno, fn.end_lineno + 1)) if fn else set()


def verify_edition(dest: Path, src: Path, parts, regions: dict) -> list:
    """Refuse an edition where a marker or a line of an assigned solution survives; returns
    the warnings of KNOWN_SHARED."""
    lines, allowed, warnings = {}, {}, []
    for p in parts:
        if p.has_region:
            for code in solution_lines(region_text(src, regions, p.name)):
                lines.setdefault(code, p.name)
            if p.name in KNOWN_SHARED:
                rel, fn, why = KNOWN_SHARED[p.name]
                allowed[f"tinyvit/{rel}"] = _function_lines(dest / "tinyvit" / rel, fn)
                warnings.append(f"{p.name}: {why}")
    for path in sorted(dest.rglob("*")):
        if not path.is_file() or path.suffix not in (".py", ".md", ".txt", ".toml", ".json"):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        rel = path.relative_to(dest).as_posix()
        for i, line in enumerate(text.splitlines(), 1):
            if BEGIN_RE.match(line + "\n") or END_RE.match(line + "\n"):
                raise BuildError(f"{rel}:{i}: a solution marker survived the build")
            code = line.split("#", 1)[0].strip()
            if code in lines and i not in allowed.get(rel, ()):
                raise BuildError(f"{rel}:{i}: a line of the solution of {lines[code]!r} "
                                 f"survived the build: {code!r}")
    return warnings


def package_hashes(dest: Path) -> dict:
    pkg = dest / "tinyvit"
    return {("tinyvit/" + p.relative_to(pkg).as_posix()): _sha256(p)
            for p in sorted(pkg.rglob("*.py"))
            if "__pycache__" not in p.parts and p.relative_to(pkg).parts[0] not in SKIP_SCAN}


def build(outdir, parts=None, *, points=None, hints: str = "brief", force: bool = False,
          manifest=None, source=None) -> dict:
    """Write a student edition into ``outdir`` and its manifest beside it; returns a summary.

    parts: part names or groups (default: the backward parts and trains).
    points: {part: points} (a points file's content) overriding the defaults.
    hints: "brief" (what to return, with shapes) or "detailed" (also a pointer to the method).
    manifest: where the manifest goes (default OUTDIR.manifest.json, beside the edition).
    """
    from .student import notebook_text, readme_text, write_fixtures
    if hints not in ("brief", "detailed"):
        raise ValueError(f"hints: expected 'brief' or 'detailed', got {hints!r}")
    chosen = resolve_parts(parts if parts is not None else ["backward", "trains"])
    pts = default_points()
    for name, value in (points or {}).items():
        if name not in PART_BY_NAME:
            raise ValueError(f"points: expected part names from {', '.join(PART_BY_NAME)}, "
                             f"got {name!r}")
        pts[name] = value
    src = Path(source).resolve() if source is not None else PACKAGE_DIR
    regions = check_full_solution(src)
    out = Path(outdir).expanduser().resolve()
    project = src.parent
    if out == project or out == src or src in out.parents or out in src.parents:
        raise ValueError(f"outdir: expected a folder outside the project {project}, got {out}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"outdir: expected a folder, got the file {out}")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ValueError(f"outdir: expected an empty or new folder, got {out}, which is not "
                         "empty (use --force to replace its tinyvit/, README.md, notebook.py "
                         "and pyproject.toml)")
    mpath = Path(manifest).expanduser().resolve() if manifest else \
        out.parent / (out.name + ".manifest.json")
    if out in mpath.parents or mpath.parent == out:
        raise ValueError(f"manifest: expected a path outside the edition, got {mpath} (the "
                         "manifest holds the secret that seeds the hidden checks)")
    secret = secrets.token_hex(16)
    part_info = [{"name": p.name, "kind": p.kind, "points": pts[p.name],
                  "file": f"tinyvit/{regions[p.name][0]}" if p.has_region else None}
                 for p in chosen]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tinyvit-edition-", dir=out.parent))
    try:
        tmp.chmod(0o755)
        warnings = write_package(tmp, src, chosen, hints, regions)
        hashes = package_hashes(tmp)
        pyproject = project / "pyproject.toml"
        if pyproject.is_file() and 'name = "tinyvit"' in pyproject.read_text(encoding="utf-8"):
            shutil.copyfile(pyproject, tmp / "pyproject.toml")
        edition_info = {"format": MANIFEST_FORMAT, "parts": part_info, "hints": hints}
        write_json_atomic(tmp / "tinyvit" / "assignment" / "edition.json", edition_info)
        write_fixtures(tmp / "tinyvit" / "assignment" / "fixtures.bin", chosen,
                       seed=int(secret[:8], 16))
        (tmp / "README.md").write_text(readme_text(part_info, hints), encoding="utf-8")
        (tmp / "notebook.py").write_text(notebook_text(part_info), encoding="utf-8")
        warnings += verify_edition(tmp, src, chosen, regions)
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        if not out.exists():
            os.replace(tmp, out)
        else:
            for entry in sorted(tmp.iterdir()):
                dest = out / entry.name
                if dest.is_dir() and not dest.is_symlink():
                    shutil.rmtree(dest)
                elif dest.exists():
                    dest.unlink()
                os.replace(entry, dest)
            tmp.rmdir()
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    data = {"format": MANIFEST_FORMAT, "created": datetime.datetime.now(
        datetime.timezone.utc).isoformat(timespec="seconds"), "edition": str(out),
        "parts": part_info, "hints": hints, "secret": secret, "files": hashes}
    write_json_atomic(mpath, data)
    return {"outdir": str(out), "manifest": str(mpath), "parts": [p.name for p in chosen],
            "points": sum(p["points"] for p in part_info), "warnings": warnings}


def load_manifest(path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"manifest: expected the JSON file written by build, got {path} "
                         f"({err})") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or \
            not isinstance(data.get("parts"), list):
        raise ValueError(f"manifest: expected a manifest of format {MANIFEST_FORMAT} "
                         f"(written by 'tinyvit assignment build'), got {path}")
    for p in data["parts"]:
        if p.get("name") not in PART_BY_NAME:
            raise ValueError(f"manifest: unknown part {p.get('name')!r} in {path}")
    return data


def default_manifest(parts=None) -> dict:
    """A manifest for grading without a build: the given parts (default all), default points."""
    chosen = resolve_parts(parts, default="all")
    regions = scan_regions(PACKAGE_DIR)
    pts = default_points()
    return {"format": MANIFEST_FORMAT, "parts": [
        {"name": p.name, "kind": p.kind, "points": pts[p.name],
         "file": f"tinyvit/{regions[p.name][0]}" if p.has_region else None} for p in chosen],
        "hints": "brief", "secret": "no-manifest", "files": None}


def clean_edition(manifest: dict, dest: Path) -> None:
    """Rebuild the edition's package into dest/tinyvit from the teacher's package; check it
    against the manifest's hashes."""
    regions = check_full_solution(PACKAGE_DIR)
    parts = [PART_BY_NAME[p["name"]] for p in manifest["parts"]]
    write_package(dest, PACKAGE_DIR, parts, manifest.get("hints", "brief"), regions)
    want = manifest.get("files")
    if want:
        got = package_hashes(dest)
        changed = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
        if changed:
            raise ValueError(f"manifest: the teacher's tinyvit changed since the build "
                             f"({', '.join(changed[:5])} differ); grade with the copy the "
                             "edition was built from, or build again")


# --- splicing a submission -------------------------------------------------------------
def _function(tree, name):
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            return node
    return None


def _body_statements(fn):
    body = list(fn.body)
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None),
                                                             ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    return body


def extract_body(sub_text: str, clean_text: str, name: str) -> tuple[str | None, str]:
    """The student's body of function ``name`` (the statements that replace the blank), as
    dedented source; (None, why) when there is none."""
    try:
        sub_tree = ast.parse(sub_text)
    except SyntaxError as err:
        return None, f"your file does not parse (line {err.lineno}: {err.msg})"
    fn = _function(sub_tree, name)
    if fn is None:
        return None, f"no function {name} in your file"
    clean_fn = _function(ast.parse(clean_text), name)
    clean_body = _body_statements(clean_fn)
    k = next(i for i, s in enumerate(clean_body) if isinstance(s, ast.Raise))
    prefix, suffix = clean_body[:k], clean_body[k + 1:]
    body = _body_statements(fn)
    for s in prefix:
        if body and ast.dump(body[0]) == ast.dump(s):
            body = body[1:]
    for s in reversed(suffix):
        if body and ast.dump(body[-1]) == ast.dump(s):
            body = body[:-1]
    if not body:
        return None, f"{name} has no body"
    if len(body) == 1 and isinstance(body[0], ast.Raise) and "NotImplementedError" in \
            ast.dump(body[0]):
        return None, f"{name} still raises NotImplementedError"
    lines = sub_text.splitlines()
    first, last = body[0], body[-1]
    chunk = lines[first.lineno - 1:last.end_lineno]
    chunk[0] = " " * first.col_offset + chunk[0][first.col_offset:]
    return textwrap.dedent("\n".join(chunk)), ""


# A layer's body needs NumPy, math and the package's own functions; these reach files,
# processes, the interpreter or the grader, and are flagged (the part scores 0 and the
# teacher sees why). The sandbox stops them anyway; the screen says what was tried.
SCREEN_NAMES = {"open", "exec", "eval", "compile", "__import__", "globals", "locals", "vars",
                "breakpoint", "input", "memoryview", "setattr", "delattr", "getattr"}
SCREEN_ATTRS = {"__dict__", "__closure__", "__globals__", "__code__", "__builtins__",
                "__subclasses__", "__bases__", "__mro__", "__class__", "__wrapped__",
                "__loader__", "__spec__", "__file__", "_getframe", "f_back", "f_locals",
                "f_globals", "tofile", "fromfile", "load", "save", "savez", "loadtxt",
                "savetxt", "genfromtxt", "memmap", "ctypeslib"}
ALLOWED_IMPORTS = {"numpy", "math"}


def screen_body(body: str) -> list[str]:
    """What in a student's body reaches beyond arrays (see SCREEN_NAMES, SCREEN_ATTRS)."""
    found = []
    try:
        tree = ast.parse(body)
    except SyntaxError:
        return []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or "."]
            if node.__class__ is ast.ImportFrom and node.level:
                if node.level == 1 or (node.level == 2 and node.module == "special"):
                    continue                     # the layers' own modules, tinyvit.special
                mods = ["." * node.level + (node.module or "")]
            for m in mods:
                if m.split(".")[0] not in ALLOWED_IMPORTS:
                    found.append(f"import {m} (line {node.lineno})")
        elif isinstance(node, ast.Name) and node.id in SCREEN_NAMES:
            found.append(f"{node.id} (line {node.lineno})")
        elif isinstance(node, ast.Name) and node.id in ("os", "sys", "importlib", "subprocess",
                                                       "ctypes", "builtins", "gc", "inspect"):
            found.append(f"{node.id} (line {node.lineno})")
        elif isinstance(node, ast.Attribute) and node.attr in SCREEN_ATTRS:
            found.append(f".{node.attr} (line {node.lineno})")
    return found


def splice(edition: Path, submission: Path, manifest: dict, screen: bool = True) -> dict:
    """Put the student's bodies of the assigned functions into the clean edition (in place).
    Returns {part: "" or why the part stays blank}."""
    notes = {}
    for p in manifest["parts"]:
        if not p.get("file"):
            continue
        name = p["name"]
        clean_path = Path(edition) / p["file"]
        sub_path = Path(submission) / p["file"]
        clean_text = clean_path.read_text(encoding="utf-8")
        if not sub_path.is_file():
            notes[name] = f"no {p['file']} in the submission"
            continue
        if sub_path.is_symlink() or not sub_path.resolve().is_relative_to(
                Path(submission).resolve()):
            notes[name] = f"{p['file']} is a link to a file outside the submission (not read)"
            continue
        try:
            sub_text = sub_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            notes[name] = f"cannot read {p['file']} ({err})"
            continue
        body, why = extract_body(sub_text, clean_text, name)
        if body is None:
            notes[name] = why
            continue
        found = screen_body(body) if screen else []
        if found:
            notes[name] = ("FLAGGED: your body uses " + ", ".join(found[:5]) +
                           ", which a layer does not need (it reaches files, processes or the "
                           "interpreter); the part scores 0 and your teacher will look at it")
            continue
        pat = re.compile(rf'^([ \t]*)raise NotImplementedError\("{re.escape(name)}: .*\)[ \t]*$',
                         re.M)
        m = pat.search(clean_text)
        if not m:
            notes[name] = "internal: no blank for this part in the clean edition"
            continue
        new_body = textwrap.indent(body, m.group(1)).rstrip("\n")
        new_text = clean_text[:m.start()] + new_body + clean_text[m.end():]
        try:
            ast.parse(new_text)
        except SyntaxError as err:
            notes[name] = f"your body of {name} does not parse here (line {err.lineno}: {err.msg})"
            continue
        clean_path.write_text(new_text, encoding="utf-8")
        notes[name] = ""
    return notes


# --- finding submissions -----------------------------------------------------------------
MAX_ZIP_BYTES = 200 << 20
MAX_ZIP_FILES = 20000


def _holds_package(d: Path) -> bool:
    return (d / "tinyvit" / "layers").is_dir() or (d / "tinyvit" / "__init__.py").is_file()


def find_package_root(d: Path) -> Path | None:
    """The shallowest folder under d (d included) that holds tinyvit/."""
    queue = [Path(d)]
    while queue:
        cur = queue.pop(0)
        if _holds_package(cur):
            return cur
        try:
            queue += sorted(p for p in cur.iterdir() if p.is_dir() and not p.is_symlink()
                            and p.name not in ("__MACOSX", ".venv", ".git", "node_modules"))
        except OSError:
            pass
    return None


def find_submissions(root) -> list[tuple[str, Path]]:
    """[(student id, folder or zip)] under root, at any depth: a folder holding tinyvit/ is
    one submission (not searched further), a .zip is one submission."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise ValueError(f"submissions: expected a folder of submissions, got {root}")
    found = []

    def walk(d: Path):
        for p in sorted(d.iterdir()):
            if p.is_symlink() or p.name.startswith(".") or p.name == "__MACOSX":
                continue
            if p.is_dir():
                if _holds_package(p):
                    found.append((p.relative_to(root).as_posix(), p))
                else:
                    walk(p)
            elif p.suffix.lower() == ".zip":
                found.append((p.relative_to(root).with_suffix("").as_posix(), p))
    if _holds_package(root):
        return [(root.name, root)]
    walk(root)
    return found


def extract_zip(path: Path, dest: Path) -> None:
    """Unpack a submission's zip safely: no absolute paths or '..', no links, size limits."""
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        if len(infos) > MAX_ZIP_FILES:
            raise ValueError(f"{path.name}: {len(infos)} files (the limit is {MAX_ZIP_FILES})")
        total = sum(i.file_size for i in infos)
        if total > MAX_ZIP_BYTES:
            raise ValueError(f"{path.name}: {total} bytes unpacked (the limit is {MAX_ZIP_BYTES})")
        for info in infos:
            name = info.filename.replace("\\", "/")
            parts = [x for x in name.split("/") if x not in ("", ".")]
            if not parts or name.startswith("/") or ".." in parts or ":" in parts[0]:
                continue
            mode = (info.external_attr >> 16) & 0o170000
            if mode == 0o120000:                       # a symlink: skipped
                continue
            target = dest.joinpath(*parts)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as fin, open(target, "wb") as fout:
                shutil.copyfileobj(fin, fout)
