"""What every tutorial needs before its first lesson.

- Puts this checkout on sys.path, so the tutorials use the tinyvit beside them
  even when it is not installed.
- QUICK: true when TINYVIT_QUICK=1 (smaller data and fewer steps; the test
  suite runs every tutorial this way).
- FIGURES: the folder figures are saved to: tutorials/figures/, or
  $TINYVIT_FIGURES when set. Nothing needs a screen.
- show(name, x): prints an array's name, shape and dtype, one line each.
"""

import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

QUICK = os.environ.get("TINYVIT_QUICK", "0") == "1"
FIGURES = Path(os.environ.get("TINYVIT_FIGURES", HERE / "figures"))
FIGURES.mkdir(parents=True, exist_ok=True)


def show(name, x):
    print(f"{name:<34} shape {str(np.shape(x)):<16} {np.asarray(x).dtype}")
