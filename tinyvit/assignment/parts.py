"""The parts of an assignment: what a student writes, its default points and its hints.

Each part but the last is one marked region of tinyvit/layers/*.py, the body of the function
of the same name. ``trains`` has no region: it trains the default model with the student's
own layers and compares the loss curve with the reference's.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Part:
    name: str
    points: float
    kind: str              # "backward", "forward" or "integration"
    hint: str              # brief: what to return, with shapes
    detail: str            # detailed: a pointer to the method (never the code)
    forward: str = ""      # backward parts: the forward whose gradient it is
    inputs: tuple = ()     # backward parts: the names of the gradients it returns

    @property
    def has_region(self) -> bool:
        return self.kind != "integration"


PARTS = (
    Part("linear_backward", 5, "backward",
         "return (dx (..., in), dW (in, out), db (out,)) for out = x @ W + b; cache = (x, W)",
         "dx multiplies dout by W transposed; dW and db sum over every leading axis of x "
         "(flatten them to rows first). Check the shapes with a W that is not square.",
         "linear_forward", ("dx", "dW", "db")),
    Part("softmax", 5, "forward",
         "return exp(x) normalised to sum to one along axis, same shape and dtype as x; "
         "leave x unchanged",
         "large inputs overflow exp: subtracting each row's max changes nothing in the "
         "result and keeps exp finite. Do not write into x."),
    Part("softmax_backward", 10, "backward",
         "return dS (..., T), the gradient at the softmax input; cache is the probabilities "
         "A (..., T); leave cache and dA unchanged",
         "write the Jacobian of one row of softmax, then multiply it by dA without forming "
         "it; the result needs a sum over the row.",
         "softmax_forward", ("dx",)),
    Part("layernorm_forward", 5, "forward",
         "return (y (..., D), cache = (xhat, rstd, gamma)): y = gamma * (x - mean) / "
         "sqrt(var + eps) + beta over the last axis",
         "the variance is the biased one (divide by D); rstd = 1 / sqrt(var + eps) keeps the "
         "trailing axis of size 1; the backward reads exactly (xhat, rstd, gamma)."),
    Part("layernorm_backward", 15, "backward",
         "return (dx (..., D), dgamma (D,), dbeta (D,)); cache = (xhat, rstd, gamma)",
         "x reaches xhat three ways (directly, through the mean, through the variance); add "
         "the three. dgamma and dbeta sum over every leading axis.",
         "layernorm_forward", ("dx", "dgamma", "dbeta")),
    Part("gelu_backward", 5, "backward",
         "return dx (...), same shape and dtype as dout, for both kinds 'exact' and 'tanh'; "
         "cache = (x, kind)",
         "exact: the derivative of x * Phi(x) uses the normal density; tanh: differentiate "
         "through tanh and its cubic argument (chain rule).",
         "gelu_forward", ("dx",)),
    Part("mlp_backward", 5, "backward",
         "return (dx (..., D), dW1 (D, M), db1 (M,), dW2 (M, D), db2 (D,)); "
         "cache = (fc1 cache, gelu cache, fc2 cache)",
         "undo fc2, then GELU, then fc1, each with its own backward.",
         "mlp_forward", ("dx", "dW1", "db1", "dW2", "db2")),
    Part("attention_backward", 20, "backward",
         "return (dx (B, T, D), dWqkv (D, 3D), dbqkv (3D,), dWproj (D, D), dbproj (D,)); "
         "cache is the dict attention_forward built",
         "go backwards through the forward's five lines: proj, A @ v, softmax, q @ k^T * "
         "scale, split_heads. Undo the reshapes with the right h and d (test with d != h).",
         "attention_forward", ("dx", "dWqkv", "dbqkv", "dWproj", "dbproj")),
    Part("block_backward", 10, "backward",
         "return (dx (B, T, D), grads), grads a dict with the 12 names of BLOCK_PARAMS",
         "go through the two residual sub-blocks in reverse order; a residual's input gets "
         "the gradient of both of its paths.",
         "block_forward", ("dx",)),
    Part("patchify", 5, "forward",
         "return patches (B, gh*gw, P*P*C): the grid row by row, each patch flattened in "
         "(row, column, channel) order; same dtype as x",
         "reshape so that each image axis splits into (grid index, offset in the patch), "
         "then reorder the axes; try a non-square image."),
    Part("patchify_backward", 5, "backward",
         "return dx (B, H, W, C); cache = ((B, H, W, C), P)",
         "patchify only moves numbers; its gradient moves them back.",
         "patchify_forward", ("dx",)),
    Part("cls_forward", 3, "forward",
         "return (tokens (B, N + 1, D), cache = None): the cls vector at position 0 of "
         "every image, then x; leave x and cls unchanged",
         "make a new array; never write into x."),
    Part("cls_backward", 5, "backward",
         "return (dx (B, N, D), dcls (1, 1, D))",
         "think of what happens to the gradient of a vector that was copied B times.",
         "cls_forward", ("dx", "dcls")),
    Part("pos_backward", 2, "backward",
         "return (dx (B, T, D), dpos (1, T, D))",
         "pos was broadcast over the batch.",
         "pos_forward", ("dx", "dpos")),
    Part("trains", 10, "integration",
         "nothing to write: the default ViT is trained for a few steps with your layers",
         "when every part passes, this one does too; a wrong gradient that the other checks "
         "missed shows here."),
)
PART_BY_NAME = {p.name: p for p in PARTS}
REGION_PARTS = tuple(p for p in PARTS if p.has_region)
ALL_REGIONS = tuple(p.name for p in REGION_PARTS)
GROUPS = {
    "all": tuple(p.name for p in PARTS),
    "backward": tuple(p.name for p in PARTS if p.kind == "backward"),
    "forward": tuple(p.name for p in PARTS if p.kind == "forward"),
}

# Sentences of the package's docstrings and comments outside the regions that state an
# answer; an edition that assigns the part blanks them. (file, words of the sentence)
ANSWER_SENTENCES = {
    "cls_backward": [("layers/tokens.py",
                      "Since the same (1, 1, D) vector is copied into every image of the batch, "
                      "its gradient is the sum over the batch of the gradient at position 0.")],
    "pos_backward": [("layers/tokens.py", "(summed over the batch)")],
    "block_backward": [("layers/block.py",
                        "In the backward, each residual sends the incoming gradient down two "
                        "paths, through the branch and straight past it, and the two add up at "
                        "the input. Forgetting the \"+ dout\" of the straight path is the "
                        "dropped-residual bug.")],
}


def resolve_parts(names=None, default: str = "all") -> list[Part]:
    """Part names (or the groups all / backward / forward, commas allowed) -> Parts in order."""
    if names is None:
        names = [default]
    if isinstance(names, str):
        names = [names]
    wanted = set()
    for item in names:
        for name in str(item).split(","):
            name = name.strip()
            if not name:
                continue
            if name in GROUPS:
                wanted.update(GROUPS[name])
            elif name in PART_BY_NAME:
                wanted.add(name)
            else:
                raise ValueError(f"parts: expected names from {', '.join(PART_BY_NAME)} "
                                 f"(or the groups {', '.join(GROUPS)}), got {name!r}")
    return [p for p in PARTS if p.name in wanted]


def load_points(path) -> dict:
    """A points file: a JSON object {part name: points >= 0}. Unknown names are an error."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"points: expected a readable JSON file, got {path} ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"points: expected a JSON object {{part: points}} in {path}, got "
                         f"{type(data).__name__}")
    out = {}
    for name, pts in data.items():
        if name not in PART_BY_NAME:
            raise ValueError(f"points: expected part names from {', '.join(PART_BY_NAME)} in "
                             f"{path}, got {name!r}")
        if isinstance(pts, bool) or not isinstance(pts, (int, float)) or not pts >= 0:
            raise ValueError(f"points: expected a number >= 0 for {name!r} in {path}, got {pts!r}")
        out[name] = float(pts) if not float(pts).is_integer() else int(pts)
    return out


def default_points() -> dict:
    return {p.name: p.points for p in PARTS}


def write_json_atomic(path, data) -> None:
    """JSON to path through a temporary file in the same folder and a rename."""
    import tempfile
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
