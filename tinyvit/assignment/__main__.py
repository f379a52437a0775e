"""python -m tinyvit.assignment ACTION ...: the same as ``tinyvit assignment ACTION ...``."""

import sys

from ..cli import main

raise SystemExit(main(["assignment", *sys.argv[1:]]))
