"""Numerical gradient checks: the proof that a hand-written backward is right.

A backward pass computes a vector-Jacobian product: given the upstream
gradient ``dout`` of some scalar L with respect to a layer's output, it returns
dL/dx for every input x. Take L = sum(f(x) * dout) with a *random* dout (an
all-ones dout hides bugs: the layer-norm backward, for one, is then zero
whatever its terms); then dL/dx_i can also be estimated by centred
differences,

    dL/dx_i  ~  (L(x + h e_i) - L(x - h e_i)) / (2 h)

whose error is O(h^2). In float64 with h = 1e-6 a correct backward agrees to
about 1e-9 relative error, while a wrong term is off by 1e-2 or more.

Used by the tests, the tutorials and the assignment grader.
"""

from __future__ import annotations

import numpy as np

TINY = 1e-300


def rel_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """Relative error of one tensor: ||a - n|| / max(||a|| + ||n||, tiny).

    Measured over the whole tensor (Euclidean norms), so entries whose true
    gradient is almost zero do not blow the ratio up.
    """
    a = np.asarray(analytic, dtype=np.float64)
    n = np.asarray(numeric, dtype=np.float64)
    if a.shape != n.shape:
        raise ValueError(f"analytic: expected the shape of the numeric gradient {n.shape}, got {a.shape}")
    return float(np.linalg.norm(a - n) / max(np.linalg.norm(a) + np.linalg.norm(n), TINY))


def numerical_vjp(f, x: np.ndarray, dout: np.ndarray, h: float = 1e-6,
                  indices=None) -> np.ndarray:
    """Centred-difference estimate of d sum(f() * dout) / dx.

    f: a function of no arguments that reads ``x`` (modified in place here and
    restored) and returns an array shaped like ``dout``.
    indices: optional flat indices to estimate (others are left at zero), for
    large tensors where every entry would take too long.
    """
    if not x.flags.c_contiguous:
        raise ValueError("x: expected a C-contiguous array that can be perturbed in place, "
                         "got a strided view (pass np.ascontiguousarray(x))")
    grad = np.zeros_like(x, dtype=np.float64)
    flat_x = x.reshape(-1)                       # a view: writing it changes x
    flat_g = grad.reshape(-1)
    todo = range(flat_x.size) if indices is None else indices
    for i in todo:
        old = flat_x[i]
        flat_x[i] = old + h
        plus = float(np.sum(f() * dout))
        flat_x[i] = old - h
        minus = float(np.sum(f() * dout))
        flat_x[i] = old
        flat_g[i] = (plus - minus) / (2 * h)
    return grad


def check_layer(forward, backward, inputs: dict, wrt=None, kwargs=None, seed: int = 0,
                h: float = 1e-6) -> dict[str, float]:
    """Check a layer's backward against centred differences.

    forward(**inputs, **kwargs) -> (out, cache)
    backward(dout, cache) -> the gradients of the inputs named in ``wrt`` (in
    that order; a single array when there is one).
    Returns {name: relative error} for every name in ``wrt`` (default: all inputs).
    Use float64 inputs: in float32 the differences drown in rounding.
    """
    kwargs = kwargs or {}
    wrt = list(inputs) if wrt is None else list(wrt)
    rng = np.random.default_rng(seed)
    out, cache = forward(**inputs, **kwargs)
    dout = rng.standard_normal(np.shape(out))
    grads = backward(dout, cache)
    if not isinstance(grads, tuple):
        grads = (grads,)
    if len(grads) < len(wrt):
        raise ValueError(f"backward: expected at least {len(wrt)} gradients ({', '.join(wrt)}), "
                         f"got {len(grads)}")
    errors = {}
    for name, g in zip(wrt, grads):
        x = inputs[name]
        num = numerical_vjp(lambda: forward(**inputs, **kwargs)[0], x, dout, h)
        errors[name] = rel_error(g, num)
    return errors


def check_model(model, images: np.ndarray, labels: np.ndarray | None = None, seed: int = 0,
                h: float = 1e-6, max_entries: int | None = None,
                last_block_cls_only: bool = False) -> dict[str, float]:
    """Check every parameter gradient of a whole model (use a float64 model).

    With labels, checks the cross-entropy loss's gradients; without, the
    backward from a random upstream gradient on the logits. max_entries
    checks only that many randomly chosen entries of each larger tensor.
    last_block_cls_only checks the backward of that forward (what training runs).
    Returns {param name: relative error}; "images" is included too.
    """
    rng = np.random.default_rng(seed)
    logits, cache = model.forward(images, last_block_cls_only=last_block_cls_only)
    if labels is not None:                       # L = cross-entropy loss, a scalar
        from .layers import softmax_cross_entropy
        _, dlogits = softmax_cross_entropy(logits, labels)
        dout = np.ones(())
        f = lambda: np.asarray(softmax_cross_entropy(model(images), labels)[0])
    else:                                        # L = sum(logits * random dout)
        dlogits = dout = rng.standard_normal(logits.shape).astype(logits.dtype)
        f = lambda: model(images)
    grads, dimages = model.backward_with_input(dlogits, cache)
    errors = {}
    targets = dict(model.params)
    targets["images"] = images
    analytic = dict(grads, images=dimages)
    for name, x in targets.items():
        idx = None
        if max_entries is not None and x.size > max_entries:
            idx = rng.choice(x.size, size=max_entries, replace=False)
        num = numerical_vjp(f, x, dout, h, indices=idx)
        a = analytic[name]
        if idx is not None:
            a, num = a.reshape(-1)[idx], num.reshape(-1)[idx]
        errors[name] = rel_error(a, num)
    return errors


def format_errors(errors: dict[str, float], threshold: float | None = None) -> str:
    """A table of relative errors, one line per tensor."""
    width = max(len(k) for k in errors)
    lines = []
    for k, e in errors.items():
        mark = "" if threshold is None else ("  ok" if e < threshold else "  FAIL")
        lines.append(f"  {k:<{width}}  {e:.2e}{mark}")
    return "\n".join(lines)
