"""What each part is checked on (the cases) and how an answer is judged (evaluate).

A *case* is one call of a student's function: its arguments and what the grader expects.
Cases are made by the side that holds the reference (the teacher's grader, or ``build``
for the public fixtures of an edition); ``evaluate`` compares the student's answer with
them, so the student's self-check and the grader judge alike.

Backward parts (float64): a random upstream gradient ``dout``, the cache of the REFERENCE
forward (a forward mistake is charged to the forward only), and each gradient compared
with centred differences of the reference forward. Several shapes per part (square and
non-square weights, heads 1, 2 and 4 with d != h, several B and T); a float32 case that
must come back float32; ``dout`` and the cache must be left unchanged.

Forward parts: outputs compared with the reference's on several inputs (float64 and
float32), inputs left unchanged, and a forward's cache checked by running the REFERENCE
backward on it.

Finite differences are not a backward. Three signs, each enough to score the part 0:
(1) during one backward call the student's code called the layer's own forward (or erf,
or any forward-type function of the package) two or more times; (2) a float64 answer
within the pass threshold of the numerical gradient but farther than 1e-11 from the
reference's analytic gradient (an analytic float64 backward lands near 1e-15; a difference
quotient near 1e-10, its error floor); (3) a model-sized case (tens of thousands of inputs)
that takes more than SCALE_SECONDS, where one analytic backward takes milliseconds and a
difference quotient needs one forward per input.
"""

from __future__ import annotations

import numpy as np

from ..gradcheck import numerical_vjp
from .parts import PART_BY_NAME

THRESHOLD = 1e-6           # backward vs numerical gradient (float64)
FORWARD_THRESHOLD = 1e-9   # forward output vs the reference (float64)
FLOAT32_THRESHOLD = 1e-4   # float32 answers vs the float64 reference
ANALYTIC_FLOOR = 1e-11     # farther than this from the analytic gradient: a difference quotient
SCALE_SECONDS = 10.0       # the model-sized case must answer within this
MAX_FORWARD_CALLS = 8      # more calls of any forward in one backward: finite differences
CONTRACT_PENALTY = 0.25    # each broken contract (dtype, input changed) costs this share
FORWARD_TYPE = ("linear_forward", "layernorm_forward", "softmax", "softmax_forward",
                "attention_forward", "gelu_forward", "mlp_forward", "block_forward",
                "patchify", "patchify_forward", "cls_forward", "pos_forward", "erf")
OWN_FORWARDS = {
    "linear_backward": ("linear_forward",),
    "softmax_backward": ("softmax_forward", "softmax"),
    "layernorm_backward": ("layernorm_forward",),
    "gelu_backward": ("gelu_forward", "erf"),
    "mlp_backward": ("mlp_forward", "gelu_forward", "linear_forward"),
    "attention_backward": ("attention_forward", "softmax_forward", "softmax", "linear_forward"),
    "block_backward": ("block_forward", "attention_forward", "mlp_forward", "layernorm_forward"),
    "patchify_backward": ("patchify_forward", "patchify"),
    "cls_backward": ("cls_forward",),
    "pos_backward": ("pos_forward",),
}


def rel_error(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-300))


def _copy(tree):
    if isinstance(tree, np.ndarray):
        return tree.copy()
    if isinstance(tree, tuple):
        return tuple(_copy(x) for x in tree)
    if isinstance(tree, list):
        return [_copy(x) for x in tree]
    if isinstance(tree, dict):
        return {k: _copy(v) for k, v in tree.items()}
    return tree


def _leaves(tree, path="", out=None):
    """[(path, array)] of the arrays in a nested structure, in order."""
    out = [] if out is None else out
    if isinstance(tree, np.ndarray):
        out.append((path, tree))
    elif isinstance(tree, (tuple, list)):
        for i, x in enumerate(tree):
            _leaves(x, f"{path}[{i}]", out)
    elif isinstance(tree, dict):
        for k, v in tree.items():
            _leaves(v, f"{path}[{k!r}]", out)
    return out


def output_names(part_name: str, R=None) -> list[str]:
    part = PART_BY_NAME[part_name]
    if part_name == "block_backward":
        from ..layers import BLOCK_PARAMS
        return ["dx"] + ["d" + k for k in BLOCK_PARAMS]
    return list(part.inputs)


def _as_outputs(part_name: str, result):
    """The student's return value -> list of arrays in output_names order, or raise Wrong."""
    names = output_names(part_name)
    if part_name == "block_backward":
        if not isinstance(result, (tuple, list)) or len(result) != 2 or \
                not isinstance(result[1], dict):
            raise Wrong(f"expected the pair (dx, grads) with grads a dict, got "
                        f"{_describe(result)}")
        dx, grads = result
        missing = [n[1:] for n in names[1:] if n[1:] not in grads]
        if missing:
            raise Wrong(f"grads lacks {', '.join(missing)}")
        return [dx] + [grads[n[1:]] for n in names[1:]]
    if len(names) == 1:
        if isinstance(result, (tuple, list)):
            if len(result) != 1:
                raise Wrong(f"expected one array ({names[0]}), got {_describe(result)}")
            result = result[0]
        return [result]
    if not isinstance(result, (tuple, list)):
        raise Wrong(f"expected a tuple of {len(names)} arrays ({', '.join(names)}), got "
                    f"{_describe(result)}")
    if len(result) != len(names):
        raise Wrong(f"expected {len(names)} arrays ({', '.join(names)}), got {len(result)}")
    return list(result)


def _describe(x) -> str:
    if isinstance(x, np.ndarray):
        return f"an array of shape {x.shape}"
    if isinstance(x, (tuple, list)):
        return f"a {type(x).__name__} of {len(x)}"
    return type(x).__name__


class Wrong(Exception):
    """The answer has the wrong structure (count, kind): nothing to compare."""


# --- making cases ------------------------------------------------------------------
class Maker:
    """Makes one part's cases with the reference layers R and a random generator."""

    def __init__(self, R, rng, numerical: bool = True):
        self.R, self.rng, self.numerical = R, rng, numerical

    def normal(self, *shape, scale=1.0, shift=0.0):
        return self.rng.standard_normal(shape) * scale + shift

    def backward(self, part_name, label, named, forward, extra=(), dtype="float64",
                 seconds=None):
        """named: [(name, float64 array)] the forward's differentiable inputs;
        forward(*arrays) -> (out, cache) with the reference."""
        arrays = [np.asarray(a, dtype=dtype) for _, a in named]
        out, cache = forward(*arrays)
        dout = self.rng.standard_normal(np.shape(out)).astype(dtype)
        ref_bwd = getattr(self.R, part_name)
        analytic = [np.asarray(g, dtype=np.float64) for g in
                    _as_outputs(part_name, ref_bwd(dout.copy(), _copy(cache)))]
        if dtype == "float64" and self.numerical and seconds is None:
            want, tol = [], THRESHOLD
            for x in arrays:
                want.append(numerical_vjp(lambda: forward(*arrays)[0], x, dout))
        elif dtype == "float32":
            a64 = [a.astype(np.float64) for a in arrays]
            out64, cache64 = forward(*a64)
            want = [np.asarray(g, np.float64) for g in _as_outputs(
                part_name, ref_bwd(dout.astype(np.float64), cache64))]
            tol = FLOAT32_THRESHOLD
        else:
            want, tol = analytic, 1e-8
        return {"part": part_name, "label": label, "fn": part_name, "args": [dout, cache],
                "kwargs": {}, "want": want, "analytic": analytic if dtype == "float64" else None,
                "tol": tol, "dtype": dtype, "seconds": seconds, "unchanged": ["dout", "cache"]}

    def forward(self, part_name, label, args, kwargs=None, dtype="float64", pair=False,
                cache_dout=True):
        kwargs = kwargs or {}
        args = [np.asarray(a, dtype=dtype) if isinstance(a, np.ndarray) else a for a in args]
        fn = getattr(self.R, part_name)
        res = fn(*_copy(args), **kwargs)
        a64 = [a.astype(np.float64) if isinstance(a, np.ndarray) else a for a in args]
        res64 = fn(*a64, **kwargs)
        out64 = res64[0] if pair else res64
        case = {"part": part_name, "label": label, "fn": part_name, "args": args,
                "kwargs": kwargs, "want": [np.asarray(out64, np.float64)], "analytic": None,
                "tol": FORWARD_THRESHOLD if dtype == "float64" else FLOAT32_THRESHOLD,
                "dtype": dtype, "seconds": None, "unchanged": ["inputs"], "pair": pair}
        if pair and part_name == "layernorm_forward" and dtype == "float64":
            out, cache = res
            dout = self.rng.standard_normal(np.shape(out))
            case["cache_check"] = {"dout": dout,
                                   "want": list(self.R.layernorm_backward(dout, cache)),
                                   "names": ["dx", "dgamma", "dbeta"],
                                   "backward": "layernorm_backward", "reference_cache": cache}
        return case


def _params(m, D, M):
    p = {}
    for name, shape in m.R.block_param_shapes(D, M).items():
        shift = 1.0 if name.endswith("gamma") else 0.0
        p[name] = m.normal(*shape, scale=0.5 if name.endswith(".W") else 0.2, shift=shift)
    return p


def make_cases(part_name: str, R, rng, *, public: bool = False) -> list[dict]:
    """The cases of one part. public: the smaller set written into an edition's fixtures
    (no model-sized case)."""
    m = Maker(R, rng)
    cases = []
    bw = m.backward
    scale = not public

    if part_name == "linear_backward":
        f = R.linear_forward
        for x, (i, o) in (((2, 3, 4), (4, 5)), ((5, 3), (3, 3)), ((2, 2, 3, 6), (6, 2))):
            cases.append(bw(part_name, f"x {x}, W {i}x{o}",
                            [("x", m.normal(*x)), ("W", m.normal(i, o)), ("b", m.normal(o))], f))
        cases.append(bw(part_name, "float32, x (3, 4), W 4x6",
                        [("x", m.normal(3, 4)), ("W", m.normal(4, 6)), ("b", m.normal(6))], f,
                        dtype="float32"))
        if scale:
            cases.append(bw(part_name, "model size, x (8, 65, 64), W 64x64",
                            [("x", m.normal(8, 65, 64)), ("W", m.normal(64, 64)),
                             ("b", m.normal(64))], f, seconds=SCALE_SECONDS))
    elif part_name == "softmax_backward":
        f = R.softmax_forward
        for shape in ((2, 3, 5), (4, 7), (2, 2, 3, 4)):
            cases.append(bw(part_name, f"x {shape}", [("x", m.normal(*shape, scale=2.0))], f))
        cases.append(bw(part_name, "float32, x (3, 6)", [("x", m.normal(3, 6))], f,
                        dtype="float32"))
        if scale:
            cases.append(bw(part_name, "model size, x (8, 4, 65, 65)",
                            [("x", m.normal(8, 4, 65, 65))], f, seconds=SCALE_SECONDS))
    elif part_name == "layernorm_backward":
        f = R.layernorm_forward
        for shape in ((2, 3, 6), (5, 8), (2, 2, 2, 4)):
            D = shape[-1]
            cases.append(bw(part_name, f"x {shape}",
                            [("x", m.normal(*shape, scale=2.0, shift=0.5)),
                             ("gamma", m.normal(D, shift=1.0)), ("beta", m.normal(D))], f))
        cases.append(bw(part_name, "float32, x (3, 8)",
                        [("x", m.normal(3, 8)), ("gamma", m.normal(8, shift=1.0)),
                         ("beta", m.normal(8))], f, dtype="float32"))
        if scale:
            cases.append(bw(part_name, "model size, x (8, 65, 64)",
                            [("x", m.normal(8, 65, 64)), ("gamma", m.normal(64, shift=1.0)),
                             ("beta", m.normal(64))], f, seconds=SCALE_SECONDS))
    elif part_name == "attention_backward":
        def att(B, T, D, h, dtype="float64", seconds=None, label=None):
            f = lambda *a: R.attention_forward(*a, h)
            named = [("x", m.normal(B, T, D)), ("Wqkv", m.normal(D, 3 * D, scale=0.5)),
                     ("bqkv", m.normal(3 * D, scale=0.1)), ("Wproj", m.normal(D, D, scale=0.5)),
                     ("bproj", m.normal(D, scale=0.1))]
            return bw(part_name, label or f"B={B}, T={T}, D={D}, heads={h} (d={D // h})",
                      named, f, dtype=dtype, seconds=seconds)
        cases += [att(2, 3, 6, 1), att(1, 5, 12, 2), att(3, 4, 8, 4)]
        cases.append(att(2, 3, 8, 2, dtype="float32", label="float32, B=2, T=3, D=8, heads=2"))
        if scale:
            cases.append(att(8, 65, 64, 4, seconds=SCALE_SECONDS,
                             label="model size, B=8, T=65, D=64, heads=4"))
    elif part_name == "gelu_backward":
        x = np.linspace(-5.0, 5.0, 24).reshape(4, 6) + m.normal(4, 6, scale=0.05)
        for kind in ("exact", "tanh"):
            f = lambda a, kind=kind: R.gelu_forward(a, kind)
            cases.append(bw(part_name, f"{kind}, x (4, 6) over [-5, 5]", [("x", x.copy())], f))
            cases.append(bw(part_name, f"{kind}, x (2, 3, 5)", [("x", m.normal(2, 3, 5))], f))
        cases.append(bw(part_name, "float32, exact, x (3, 7)", [("x", m.normal(3, 7))],
                        lambda a: R.gelu_forward(a, "exact"), dtype="float32"))
        if scale:
            cases.append(bw(part_name, "model size, tanh, x (8, 65, 128)",
                            [("x", m.normal(8, 65, 128))], lambda a: R.gelu_forward(a, "tanh"),
                            seconds=SCALE_SECONDS))
    elif part_name == "mlp_backward":
        def mlp(xs, D, M, kind, dtype="float64", seconds=None, label=None):
            f = lambda *a: R.mlp_forward(*a, kind)
            named = [("x", m.normal(*xs, D)), ("W1", m.normal(D, M, scale=0.5)),
                     ("b1", m.normal(M)), ("W2", m.normal(M, D, scale=0.5)), ("b2", m.normal(D))]
            return bw(part_name, label or f"x {(*xs, D)}, M={M}, {kind}", named, f, dtype=dtype,
                      seconds=seconds)
        cases += [mlp((2, 3), 4, 6, "exact"), mlp((5,), 6, 4, "tanh"), mlp((2, 2), 3, 3, "exact")]
        cases.append(mlp((2, 3), 4, 8, "exact", dtype="float32", label="float32, x (2, 3, 4)"))
        if scale:
            cases.append(mlp((8, 65), 64, 128, "exact", seconds=SCALE_SECONDS,
                             label="model size, x (8, 65, 64), M=128"))
    elif part_name == "block_backward":
        def blk(B, T, D, M, h, dtype="float64", seconds=None, label=None):
            p = _params(m, D, M)
            keys = list(p)
            f = lambda x, *vals: R.block_forward(x, dict(zip(keys, vals)), h, "exact")
            named = [("x", m.normal(B, T, D))] + [(k, v) for k, v in p.items()]
            return bw(part_name, label or f"B={B}, T={T}, D={D}, M={M}, heads={h}", named, f,
                      dtype=dtype, seconds=seconds)
        cases += [blk(2, 3, 4, 8, 2), blk(1, 4, 6, 5, 1), blk(2, 2, 8, 6, 4)]
        cases.append(blk(2, 3, 4, 8, 2, dtype="float32", label="float32, B=2, T=3, D=4"))
        if scale:
            cases.append(blk(8, 65, 64, 128, 4, seconds=SCALE_SECONDS,
                             label="model size, B=8, T=65, D=64, heads=4"))
    elif part_name == "patchify_backward":
        for shape, P in (((2, 4, 6, 3), 2), ((1, 6, 6, 2), 3), ((2, 4, 8, 1), 4)):
            cases.append(bw(part_name, f"x {shape}, P={P}", [("x", m.normal(*shape))],
                            lambda a, P=P: R.patchify_forward(a, P)))
        cases.append(bw(part_name, "float32, x (2, 4, 4, 3), P=2", [("x", m.normal(2, 4, 4, 3))],
                        lambda a: R.patchify_forward(a, 2), dtype="float32"))
        if scale:
            cases.append(bw(part_name, "model size, x (16, 64, 64, 3), P=4",
                            [("x", m.normal(16, 64, 64, 3))],
                            lambda a: R.patchify_forward(a, 4), seconds=SCALE_SECONDS))
    elif part_name in ("cls_backward", "pos_backward"):
        fwd = R.cls_forward if part_name == "cls_backward" else R.pos_forward
        for B, N, D in ((3, 4, 5), (1, 2, 3), (2, 5, 2)):
            T = N if part_name == "pos_backward" else 1
            second = ("cls", m.normal(1, 1, D)) if part_name == "cls_backward" else \
                ("pos", m.normal(1, T, D))
            cases.append(bw(part_name, f"B={B}, N={N}, D={D}", [("x", m.normal(B, N, D)), second],
                            fwd))
        second = ("cls", m.normal(1, 1, 4)) if part_name == "cls_backward" else \
            ("pos", m.normal(1, 3, 4))
        cases.append(bw(part_name, "float32, B=2, N=3, D=4", [("x", m.normal(2, 3, 4)), second],
                        fwd, dtype="float32"))
        if scale:
            N = 64 if part_name == "cls_backward" else 65
            second = ("cls", m.normal(1, 1, 192)) if part_name == "cls_backward" else \
                ("pos", m.normal(1, N, 192))
            cases.append(bw(part_name, "model size, B=16, D=192",
                            [("x", m.normal(16, N, 192)), second], fwd, seconds=SCALE_SECONDS))
    elif part_name == "softmax":
        fw = m.forward
        cases.append(fw(part_name, "x (3, 4, 5), axis=-1", [m.normal(3, 4, 5, scale=3.0)]))
        cases.append(fw(part_name, "x (3, 4, 5), axis=1", [m.normal(3, 4, 5, scale=3.0)],
                        {"axis": 1}))
        cases.append(fw(part_name, "x (4, 6), axis=0", [m.normal(4, 6)], {"axis": 0}))
        cases.append(fw(part_name, "large inputs (scale 1000)", [m.normal(4, 6, scale=1000.0)]))
        cases.append(fw(part_name, "float32, x (2, 5)", [m.normal(2, 5)], dtype="float32"))
    elif part_name == "patchify":
        for shape, P in (((2, 4, 6, 3), 2), ((1, 6, 6, 2), 3), ((2, 4, 8, 1), 4)):
            cases.append(m.forward(part_name, f"x {shape}, P={P}", [m.normal(*shape), P]))
        cases.append(m.forward(part_name, "float32, x (1, 4, 4, 3), P=2",
                               [m.normal(1, 4, 4, 3), 2], dtype="float32"))
    elif part_name == "layernorm_forward":
        fw = m.forward
        for shape in ((2, 3, 6), (5, 8)):
            D = shape[-1]
            cases.append(fw(part_name, f"x {shape}", [m.normal(*shape, scale=3.0, shift=1.0),
                                                      m.normal(D, shift=1.0), m.normal(D)],
                            pair=True))
        g = m.normal(1, shift=1.0).repeat(8)
        cases.append(fw(part_name, "eps=0.01, low-variance x (4, 8)",
                        [m.normal(4, 8, scale=0.05), g, m.normal(8)], {"eps": 0.01}, pair=True))
        cases.append(fw(part_name, "float32, x (3, 8)",
                        [m.normal(3, 8), m.normal(8, shift=1.0), m.normal(8)], dtype="float32",
                        pair=True))
    elif part_name == "cls_forward":
        for B, N, D in ((3, 4, 5), (1, 2, 3)):
            cases.append(m.forward(part_name, f"B={B}, N={N}, D={D}",
                                   [m.normal(B, N, D), m.normal(1, 1, D)], pair=True))
        cases.append(m.forward(part_name, "float32, B=2, N=3, D=4",
                               [m.normal(2, 3, 4), m.normal(1, 1, 4)], dtype="float32", pair=True))
    else:
        raise ValueError(f"part: no cases for {part_name!r}")
    return cases


# --- judging an answer ----------------------------------------------------------------
def _check(checks, name, kind, passed, rel=None, why=""):
    checks.append({"name": name, "kind": kind, "rel_error": rel, "passed": bool(passed),
                   "message": why})


def _compare(checks, name, got, want, tol, dtype):
    """One value check (and a dtype contract check); returns the rel error or None."""
    if not isinstance(got, np.ndarray) and not np.isscalar(got):
        _check(checks, name, "value", False, None, f"expected an array, got {_describe(got)}")
        return None
    a = np.asarray(got)
    if a.dtype.kind not in "fiu" or a.dtype.hasobject:
        _check(checks, name, "value", False, None, f"expected a float array, got dtype {a.dtype}")
        return None
    if a.shape != want.shape:
        _check(checks, name, "value", False, None,
               f"expected shape {want.shape}, got {a.shape}")
        return None
    if not np.isfinite(a).all():
        _check(checks, name, "value", False, None, "contains NaN or inf")
        return None
    err = rel_error(a, want)
    _check(checks, name, "value", err < tol, err,
           "" if err < tol else f"relative error {err:.1e} (a pass is below {tol:g})")
    if a.dtype != np.dtype(dtype):
        _check(checks, f"{name} dtype", "contract", False, None,
               f"returned {a.dtype} for {dtype} inputs (keep the input's dtype)")
    return err


def _unchanged(checks, label, what, before, after):
    lb, la = _leaves(before), _leaves(after)
    same = len(lb) == len(la) and all(
        isinstance(y, np.ndarray) and x.shape == y.shape and
        np.array_equal(x, y, equal_nan=True) for (_, x), (_, y) in zip(lb, la))
    _check(checks, f"{label}: {what} unchanged", "contract", same, None,
           "" if same else f"your function changed {what} in place (work on a copy, or build "
                           "new arrays)")


def evaluate(case: dict, answer: dict, R=None) -> tuple[list, list]:
    """Judge one answer. answer: {"status": "result" | "raised" | "timeout" | "closed",
    "value", "args_after", "calls", "message", "type", "where"}.
    Returns (checks, flags): flags are reasons the whole part scores 0."""
    checks, flags = [], []
    label = case["label"]
    names = (output_names(case["part"]) if case["part"] in PART_BY_NAME and
             PART_BY_NAME[case["part"]].kind == "backward" else ["out"])
    n_values = len(names)

    def fail_all(why):
        for n in names:
            _check(checks, f"{label}: {n}", "value", False, None, why)

    status = answer["status"]
    if status == "timeout":
        if case.get("seconds"):
            fail_all(f"no answer within {case['seconds']:g} s")
            flags.append(f"{label}: no answer within {case['seconds']:g} s on a model-sized "
                         "input, where an analytic backward takes milliseconds: a backward "
                         "computed by finite differences (one forward per input number) scores 0")
        else:
            fail_all("no answer within the time limit")
        return checks, flags
    if status == "closed":
        fail_all(f"the process ended without an answer{answer.get('message', '')}")
        return checks, flags
    if status == "raised":
        where = answer.get("where") or []
        loc = f" at {where[-1][0]}:{where[-1][1]}: {where[-1][2]}" if where else ""
        if where and where[-1][2].startswith("raise NotImplementedError("):
            loc = ""                                    # a blank: the hint says it all
        fail_all(f"raised {answer.get('type')}: {answer.get('message', '')}{loc}")
        return checks, flags

    value = answer.get("value")
    after = answer.get("args_after")
    if not isinstance(after, list) or len(after) != len(case["args"]):
        fail_all("the answer is malformed (no arguments came back)")
        return checks, flags
    try:
        if PART_BY_NAME[case["part"]].kind == "backward":
            outs = _as_outputs(case["part"], value)
        elif case.get("pair"):
            if not isinstance(value, (tuple, list)) or len(value) != 2:
                raise Wrong(f"expected the pair (out, cache), got {_describe(value)}")
            outs = [value[0]]
        else:
            outs = [value]
    except Wrong as err:
        fail_all(str(err))
        return checks, flags

    errs = []
    for n, got, want in zip(names, outs, case["want"]):
        errs.append(_compare(checks, f"{label}: {n}", got, np.asarray(want), case["tol"],
                             case["dtype"]))
    if "dout" in case["unchanged"]:
        _unchanged(checks, label, "dout", case["args"][0], answer["args_after"][0])
        _unchanged(checks, label, "the cache", case["args"][1], answer["args_after"][1])
    else:
        for i, a in enumerate(case["args"]):
            if isinstance(a, np.ndarray):
                _unchanged(checks, label, f"input {i + 1}", a, answer["args_after"][i])

    if case.get("cache_check") is not None and len(outs) == 1:
        cc = case["cache_check"]
        cache = value[1]
        ref_shapes = [np.shape(x) for _, x in _leaves(cc["reference_cache"])]
        if not (isinstance(cache, tuple) and len(cache) == len(ref_shapes) and all(
                isinstance(c, np.ndarray) and c.dtype.kind == "f" and c.shape == shape
                for c, shape in zip(cache, ref_shapes))):
            ok, why = False, ("expected a tuple of arrays shaped " +
                              ", ".join(str(sh) for sh in ref_shapes))
        elif R is not None:
            try:
                got = list(getattr(R, cc["backward"])(np.asarray(cc["dout"]), cache))
                ok = all(rel_error(g, w) < 1e-9 for g, w in zip(got, cc["want"]))
                why = "" if ok else "the reference backward gets wrong gradients from it"
            except Exception as err:
                ok, why = False, f"the reference backward fails on it ({type(err).__name__}: {err})"
        else:
            ref = _leaves(cc["reference_cache"])
            mine = _leaves(cache)
            ok = len(ref) == len(mine) and all(
                np.shape(x) == np.shape(y) and rel_error(x, y) < 1e-9
                for (_, x), (_, y) in zip(ref, mine))
            why = "" if ok else "expected (xhat, rstd, gamma) with rstd of shape (..., 1)"
        _check(checks, f"{label}: cache", "value", ok, None,
               "" if ok else f"the cache does not follow the contract: {why}")

    # finite differences
    if PART_BY_NAME[case["part"]].kind == "backward":
        calls = answer.get("calls") or {}
        own = OWN_FORWARDS.get(case["part"], ())
        bad = {k: v for k, v in calls.items() if isinstance(v, int) and
               ((k in own and v >= 2) or v > MAX_FORWARD_CALLS)}
        if bad:
            flags.append(f"{label}: your backward called " +
                         ", ".join(f"{k} {v} times" for k, v in sorted(bad.items())) +
                         ": a backward computed by finite differences of the forward scores 0")
        if case.get("analytic") is not None and all(e is not None and e < case["tol"]
                                                   for e in errs):
            far = max(rel_error(np.asarray(g, np.float64), a)
                      for g, a in zip(outs, case["analytic"]))
            if far > ANALYTIC_FLOOR:
                flags.append(f"{label}: your float64 gradients differ from the analytic ones by "
                             f"{far:.1e}, where an analytic backward lands near 1e-15: this is "
                             "the error of a difference quotient (or of float32 arithmetic "
                             "inside a float64 backward), and it scores 0")
    return checks, flags


def contract_key(check: dict) -> str:
    """The contract a check is about, whatever the case: "dtype", "dout unchanged", ..."""
    name = check["name"]
    return "dtype" if name.endswith(" dtype") else name.split(": ", 1)[-1]


def score(checks: list, flags: list, possible: float) -> float:
    """Partial credit: the share of value checks passed, less CONTRACT_PENALTY for each
    contract broken (a dtype changed, an input changed in place; once per contract, however
    many cases show it); 0 when flagged."""
    if flags:
        return 0.0
    values = [c for c in checks if c["kind"] == "value"]
    if not values:
        return 0.0
    share = sum(c["passed"] for c in values) / len(values)
    broken = {contract_key(c) for c in checks if c["kind"] == "contract" and not c["passed"]}
    return round(possible * share * max(0.0, 1.0 - CONTRACT_PENALTY * len(broken)), 2)
