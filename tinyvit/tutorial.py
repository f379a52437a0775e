"""Helpers the tutorials share, importable from anywhere tinyvit is installed.

A tutorial copied out of the repository (into a hosted notebook, a `notebooks/`
folder, ...) runs as it is: nothing here depends on where the file sits.

- QUICK: true when TINYVIT_QUICK=1 (smaller data and fewer steps; the tests and
  the documentation build run every tutorial this way).
- FIGURES: the folder figures and small training runs go to: $TINYVIT_FIGURES
  when set, else `figures/` under the current folder.
- show(name, x): one line with an array's name, shape and dtype.
- display_figure(fig, name): saves a figure under FIGURES and, in a notebook
  (Jupyter, VS Code), shows it inline. Run as a script, it only saves.
- Imported in a notebook, it also lets any matplotlib Figure that ends a cell show
  as a picture (show_figures_inline), e.g. `viz.plot_patch_grid(image, 4)`.
- trained_run(name, **options): a `tinyvit train` run in a process of its own,
  with the thread and memory settings `tinyvit train` always uses (they must be
  set before a process starts, so a notebook kernel cannot take them itself);
  a finished run with the same options is reused instead of trained again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ._env import tuned_env

QUICK = os.environ.get("TINYVIT_QUICK", "0") == "1"
FIGURES = Path(os.environ.get("TINYVIT_FIGURES", "figures")).absolute()


def show(name: str, x) -> None:
    """Print an array's name, shape and dtype on one line."""
    print(f"{name:<34} shape {str(np.shape(x)):<16} {np.asarray(x).dtype}")


def in_notebook() -> bool:
    """True inside a Jupyter kernel (Jupyter, VS Code's notebooks and interactive window)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def show_figures_inline() -> bool:
    """In a notebook, let a matplotlib Figure at the end of a cell show as a picture.

    tinyvit's plot functions build figures without pyplot (no global state, no
    display needed), and a fresh kernel shows such a figure only as
    `<Figure size ...>`. This registers a PNG formatter for Figure with the running
    kernel (what pyplot's inline backend does for its own figures). Called when this
    module is imported in a kernel; returns whether it registered one.
    """
    if not in_notebook():
        return False
    import io

    from matplotlib.figure import Figure

    def png(fig):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=fig.dpi, bbox_inches="tight", pad_inches=0.08)
        return buf.getvalue()

    shell = sys.modules["IPython"].get_ipython()
    shell.display_formatter.formatters["image/png"].for_type(Figure, png)
    return True


def display_figure(fig, name: str) -> None:
    """Save ``fig`` (a matplotlib Figure) as FIGURES/name and show it inline in a notebook.

    The picture shown is the saved PNG itself, so the notebook and the file agree.
    """
    if not str(name).endswith(".png"):
        raise ValueError(f"name: expected a file name ending in .png, got {name!r}")
    from .viz import save_figure

    path = FIGURES / name
    save_figure(fig, path)                              # atomic, and trimmed as every tinyvit figure
    if in_notebook():
        from IPython.display import Image, display
        display(Image(data=path.read_bytes(), format="png"))
    else:
        print("saved", path)


def trained_run(name: str, **options) -> Path:
    """The checkpoint of `tinyvit train --<option> <value> ...`, trained once, then reused.

    name      the run's folder under FIGURES/runs/
    options   `tinyvit train` options, e.g. pool="mean", epochs=8, n_train=256
              (True for a flag such as flip=True)
    The run starts as `python -m tinyvit train` in a new process with the settings
    of tinyvit/_env.py (one BLAS thread per worker, the malloc tuning), so it
    takes as long in a notebook as in a terminal. When FIGURES/runs/<name> holds a
    finished run with exactly these options, it is reused and nothing trains.
    Returns the path of its checkpoint.npz.
    """
    out = FIGURES / "runs" / name
    ckpt, record = out / "checkpoint.npz", out / "tutorial_options.json"
    wanted = {k: options[k] for k in sorted(options)}
    if ckpt.is_file() and record.is_file() and json.loads(record.read_text()) == wanted:
        print(f"reusing the finished run in {out} (same options; delete the folder to train again)")
        return ckpt
    args = [sys.executable, "-m", "tinyvit", "train", "--out", str(out)]
    for key, value in wanted.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is not False and value is not None:
            args += [flag, str(value)]
    if out.exists():                                    # an unfinished or different run: start afresh
        for f in out.iterdir():
            if f.is_file():
                f.unlink()
    print("$ tinyvit train", " ".join(args[4:]))
    t0 = time.perf_counter()
    env = tuned_env(threads=1)
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    for line in proc.stdout:                            # epoch lines appear as they are printed
        lines.append(line)
        warning = "Warning" in line or "warning:" in line   # stays a warning in the notebook
        print(line, end="", file=sys.stderr if warning else sys.stdout)
    if proc.wait() != 0:
        raise RuntimeError(f"tinyvit train failed (exit code {proc.returncode}):\n{''.join(lines[-20:])}")
    print(f"(trained in {time.perf_counter() - t0:.0f} s)")
    tmp = record.with_name(record.name + ".tmp")
    tmp.write_text(json.dumps(wanted))
    os.replace(tmp, record)
    return ckpt


def run_datasets(checkpoint):
    """(train, held-out) data of a `tinyvit train` run on shapes, rebuilt from its checkpoint."""
    from .datasets import load_dataset

    spec = checkpoint.meta.get("dataset", {})
    if spec.get("name") != "shapes":
        raise ValueError(f"checkpoint: expected a run on the shapes data, got dataset {spec.get('name')!r}")
    return load_dataset("shapes", image_size=spec["image_size"], n_train=spec["n_train"],
                        n_test=spec["n_val"], seed=spec.get("seed", 0))


def execute_notebook(source, cwd, env: dict | None = None, timeout: int = 900):
    """Run a percent-format tutorial as a notebook in a fresh Jupyter kernel; return the notebook.

    source   the tutorial's .py file (jupytext "percent" format)
    cwd      the folder the kernel starts in (figures go to cwd/figures unless
             TINYVIT_FIGURES is set in ``env``)
    env      the kernel's environment (default: this process's)
    Needs the notebook tools: `pip install -e ".[notebooks]"` (jupytext, nbclient,
    ipykernel). The returned notebook (an nbformat object) holds every cell's outputs;
    a cell that raises stops the run with nbclient's CellExecutionError.
    """
    try:
        import jupytext
        from nbclient import NotebookClient
    except ImportError as err:
        raise ImportError(f"execute_notebook needs the notebook tools: pip install -e \".[notebooks]\" "
                          f"({err})") from err
    nb = jupytext.read(str(source))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd)}})
    client.execute(cwd=str(cwd), env=dict(os.environ if env is None else env))
    return nb


show_figures_inline()
