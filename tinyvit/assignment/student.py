"""The student's side of an edition: public checks, the README and the notebook.

``tinyvit assignment check [PART ...]`` (or ``python -m tinyvit.assignment check``) runs the
public checks of the edition on the student's own code, in the student's own process:
known-answer fixtures written at build time (inputs, upstream gradients, caches and the
expected outputs, computed by the teacher's solution), judged by the same code as the
grader's. The teacher's grade runs other, hidden cases of the same kinds, seeded per
student, in a sandbox.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import numpy as np

from . import _wire
from .checks import _copy, evaluate, make_cases, rel_error, score

HERE = Path(__file__).resolve().parent
TRAIN_CONFIG = {"num_classes": 10}                       # otherwise ViTConfig's defaults
TRAIN_SETTINGS = {"epochs": 2, "batch_size": 16, "lr": 3e-3, "warmup": 0, "max_steps": 10,
                  "workers": 1, "augment_pad": 0, "augment_flip": False, "log_every": 1000}
TRAIN_IMAGES = 96
CURVE_TOLERANCE = 0.02                                    # relative, step by step


def train_data(seed: int = 0):
    """A random pattern per class plus noise: the loss falls within a few steps."""
    rng = np.random.default_rng(seed)
    K = TRAIN_CONFIG["num_classes"]
    templates = rng.random((K, 32, 32, 3))
    labels = (np.arange(TRAIN_IMAGES) % K).astype(np.int64)
    images = (templates[labels] + 0.5 * rng.random((TRAIN_IMAGES, 32, 32, 3))).astype(np.float32)
    return images, labels


def train_losses(layers, images, labels) -> np.ndarray:
    """The per-step losses of a short run of the default ViT with the given layer set."""
    from .. import ViT, ViTConfig
    from ..datasets import ImageDataset
    from ..train import TrainConfig, train
    model = ViT(ViTConfig(**TRAIN_CONFIG), layers=layers)
    ds = ImageDataset(images, labels,
                      class_names=[str(k) for k in range(TRAIN_CONFIG["num_classes"])])
    hist = train(model, ds, None, TrainConfig(**TRAIN_SETTINGS), progress=False, layers="model")
    return np.array(hist["steps"]["loss"], dtype=np.float64)


def judge_training(answer: dict, reference) -> tuple[list, list]:
    """Checks of the trains part: the run finishes, its loss curve follows the reference's
    (within CURVE_TOLERANCE at every step), and the loss falls."""
    from .checks import _check
    checks = []
    names = ("loss curve follows the reference", "loss falls")
    if answer["status"] != "result":
        why = answer.get("message") or answer["status"]
        where = answer.get("where") or []
        if answer["status"] == "raised":
            blank = where and where[-1][2].startswith("raise NotImplementedError(")
            why = f"raised {answer.get('type')}: {why}" + \
                (f" at {where[-1][0]}:{where[-1][1]}: {where[-1][2]}" if where and not blank
                 else "")
        for n in names:
            _check(checks, n, "value", False, None, why)
        return checks, []
    got = answer.get("value")
    ref = np.asarray(reference, dtype=np.float64)
    if not isinstance(got, np.ndarray) or got.shape != ref.shape or not np.isfinite(got).all():
        for n in names:
            _check(checks, n, "value", False, None, f"expected {ref.shape[0]} finite losses")
        return checks, []
    dev = float(np.max(np.abs(got - ref) / np.abs(ref)))
    _check(checks, names[0], "value", dev < CURVE_TOLERANCE, dev,
           "" if dev < CURVE_TOLERANCE else
           f"your losses {np.round(got, 4).tolist()} leave the reference's "
           f"{np.round(ref, 4).tolist()} (largest relative gap {dev:.1e}): some gradient is wrong "
           "where the other checks do not look")
    falls = bool(got[-1] < got[0])
    _check(checks, names[1], "value", falls, None,
           "" if falls else f"the loss went from {got[0]:.4f} to {got[-1]:.4f}")
    return checks, []


# --- fixtures ---------------------------------------------------------------------------
def write_fixtures(path: Path, parts, seed: int) -> None:
    from .. import layers as R
    data = {}
    for i, p in enumerate(parts):
        if p.has_region:
            data[p.name] = make_cases(p.name, R, np.random.default_rng([seed, i]), public=True)
        else:
            images, labels = train_data(seed % 1000)
            data[p.name] = {"seed": seed % 1000, "losses": train_losses(R, images, labels)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_wire.message({"op": "fixtures"}, value=data))


def read_fixtures(path: Path) -> dict:
    data = path.read_bytes()
    pos = [0]

    def read(n):
        chunk = data[pos[0]:pos[0] + n]
        if len(chunk) != n:
            raise _wire.WireError("a truncated fixtures file")
        pos[0] += n
        return chunk
    header, blobs = _wire.unpack_from(read)
    return _wire.decode(header["value"], blobs)


# --- the public check ---------------------------------------------------------------------
def _raised(err, edition_dir):
    frames = [[str(Path(f.filename).resolve().relative_to(edition_dir)), f.lineno,
               (f.line or "").strip()] for f in traceback.extract_tb(err.__traceback__)
              if Path(f.filename).resolve().is_relative_to(edition_dir)
              and "/assignment/" not in f.filename]
    return {"status": "raised", "type": type(err).__name__, "message": str(err)[:800],
            "where": frames}


def _call(fn, case, edition_dir):
    args, kwargs = _copy(case["args"]), dict(case["kwargs"])
    try:
        value = fn(*args, **kwargs)
        return {"status": "result", "value": value, "args_after": args, "calls": {}}
    except Exception as err:
        return _raised(err, edition_dir)


def check(parts=None, stream=None) -> float:
    """Run the public checks of this edition; print what passed and what to fix. Returns the
    points the public checks would give."""
    import json

    from .. import layers
    out = stream or sys.stdout
    info_path = HERE / "edition.json"
    if not info_path.is_file():
        raise ValueError("check: expected a student edition (tinyvit/assignment/edition.json), "
                         f"got the package at {HERE.parent}, which has none")
    info = json.loads(info_path.read_text(encoding="utf-8"))
    fixtures = read_fixtures(HERE / "fixtures.bin")
    assigned = [p for p in info["parts"]]
    if parts:
        unknown = [n for n in parts if n not in {p["name"] for p in assigned}]
        if unknown:
            raise ValueError(f"parts: expected names from "
                             f"{', '.join(p['name'] for p in assigned)}, got {unknown[0]!r}")
        assigned = [p for p in assigned if p["name"] in parts]
    edition_dir = HERE.parents[1]
    total = possible = 0.0
    for p in assigned:
        name = p["name"]
        checks, flags = [], []
        if p["kind"] == "integration":
            fx = fixtures[name]
            images, labels = train_data(int(fx["seed"]))
            try:
                answer = {"status": "result", "value": train_losses(layers, images, labels)}
            except Exception as err:
                answer = _raised(err, edition_dir)
            checks, flags = judge_training(answer, fx["losses"])
        else:
            fn = getattr(layers, name)
            for case in fixtures[name]:
                c, f = evaluate(case, _call(fn, case, edition_dir))
                checks += c
                flags += f
        pts = score(checks, flags, p["points"])
        total += pts
        possible += p["points"]
        values = [c for c in checks if c["kind"] == "value"]
        passed = sum(c["passed"] for c in values)
        mark = "ok " if pts == p["points"] else "FIX"
        out.write(f"{mark} {name}: {passed}/{len(values)} checks passed, {pts:g} / "
                  f"{p['points']:g} points\n")
        for msg in flags:
            out.write(f"      {msg}\n")
        seen = {}
        for c in checks:
            if not c["passed"]:
                key = c["message"].rsplit(" at tinyvit/", 1)[-1] \
                    if c["message"].startswith("raised") else c["message"]
                seen.setdefault(key, []).append((c["name"], c["message"]))
        for entries in list(seen.values())[:6]:
            names, msg = [n for n, _ in entries], entries[0][1]
            more = f" (and {len(names) - 1} more checks with this message)" if len(names) > 1 else ""
            out.write(f"      {names[0]}: {msg}{more}\n")
        if len(seen) > 6:
            out.write(f"      ... and {len(seen) - 6} more messages\n")
    out.write(f"public checks: {total:g} / {possible:g} points. The grade runs other cases "
              "of the same kinds, so make every check pass rather than the numbers match.\n")
    return total


def notebook_check(part: str) -> None:
    """For the notebook: run one part's public checks in a fresh process (so edits count)."""
    import subprocess
    root = HERE.parents[1]
    res = subprocess.run([sys.executable, "-m", "tinyvit.assignment", "check", part], cwd=root,
                         capture_output=True, text=True)
    print(res.stdout + res.stderr)


# --- README and notebook ---------------------------------------------------------------------
def readme_text(part_info, hints) -> str:
    from .parts import PART_BY_NAME
    rows = []
    for p in part_info:
        part = PART_BY_NAME[p["name"]]
        where = f"`{p['file']}`" if p["file"] else "-"
        rows.append(f"| `{p['name']}` | {where} | {p['points']:g} | {part.hint} |")
    total = sum(p["points"] for p in part_info)
    return f"""# tinyvit: student edition

tinyvit is a Vision Transformer in NumPy. In this edition some functions are left for you
to write: each raises `NotImplementedError` with a hint until you fill it in.

## Your parts ({total:g} points)

| part | file | points | what to return |
|---|---|---|---|
{chr(10).join(rows)}

Write each function's body in its file, between its docstring and the end of the function.
Only those bodies are graded: the grader copies them into a clean copy of this edition,
so helper functions or imports you add elsewhere are not seen (write helpers inside the
function). Keep the signatures. A body needs NumPy, `math` and the package's own functions;
one that imports anything else or reaches files, processes or the interpreter (`open`,
`os`, `sys`, `importlib`, `exec`, `getattr`, ...) is flagged and scores 0 until your teacher
has looked at it.

## Set up

    python -m venv .venv && . .venv/bin/activate
    pip install -e .

## Check your work

    tinyvit assignment check                 # every part
    tinyvit assignment check linear_backward # one part

or work through `notebook.py` (a percent-format notebook: open it in Jupyter with jupytext,
or in VS Code), which has a check cell after each part. A failing check says which
output, which input shape, the relative error, and the line of your code that raised.

Backward passes are compared with numerical gradients in float64 (a correct one agrees to
about 1e-9) and must keep float32 inputs float32; do not change `dout`, the cache or the
inputs in place. A backward computed by finite differences of the forward scores 0.

The grade runs other cases of the same kinds (other shapes and values), so passing the
public checks by matching their numbers gains nothing.

## Hand in

This whole folder, or a zip of it (without `.venv`).
"""


def notebook_text(part_info) -> str:
    from .parts import PART_BY_NAME
    cells = ["""# %% [markdown]
# # Write the layers of a Vision Transformer
#
# Each part below is a function in `tinyvit/layers/`. Open its file, write its body, save,
# then run the check cell under the part. The checks run in a fresh process, so your edits
# count without restarting the kernel.

# %%
from tinyvit.assignment.student import notebook_check
"""]
    for p in part_info:
        part = PART_BY_NAME[p["name"]]
        where = f"in `{p['file']}`" if p["file"] else "(nothing to write)"
        cells.append(f"""# %% [markdown]
# ## {p['name']} ({p['points']:g} points)
#
# {part.kind} part, {where}: {part.hint}.

# %%
notebook_check({p['name']!r})
""")
    return "\n".join(cells)
