"""The MLP of a transformer block and its GELU activation.

  MLP(x) = GELU(x @ W1 + b1) @ W2 + b2        (..., D) -> (..., M) -> (..., D)

GELU(x) = x * Phi(x), Phi the standard normal CDF:
  exact:  0.5 * x * (1 + erf(x / sqrt(2)))                      (timm's default)
  tanh:   0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))  (the approximation)

NumPy has no erf; tinyvit.special.erf is one good to float64 rounding.
"""

from __future__ import annotations

import numpy as np

from ..special import erf
from .linear import linear_backward, linear_forward

SQRT_2 = float(np.sqrt(2.0))                 # Python floats, so float32 stays float32
SQRT_2PI = float(np.sqrt(2.0 * np.pi))
SQRT_2_OVER_PI = float(np.sqrt(2.0 / np.pi))
TANH_A = 0.044715


def gelu_forward(x: np.ndarray, kind: str = "exact"):
    """GELU elementwise: x (...) -> (out (...), cache = (x, kind)). kind: "exact" or "tanh"."""
    if kind == "exact":
        out = x * 0.5 * (1.0 + erf(x / SQRT_2))                       # x * Phi(x)
    elif kind == "tanh":
        out = 0.5 * x * (1.0 + np.tanh(SQRT_2_OVER_PI * (x + TANH_A * x ** 3)))
    else:
        raise ValueError(f"kind: expected 'exact' or 'tanh', got {kind!r}")
    return out, (x, kind)


def gelu_backward(dout: np.ndarray, cache) -> np.ndarray:
    """dout (...) -> dx (...), for the GELU kind stored in the cache."""
    # BEGIN SOLUTION gelu_backward
    x, kind = cache
    if kind == "exact":
        # out = x * Phi(x):  d/dx = Phi(x) + x * phi(x),  phi the normal density
        Phi = 0.5 * (1.0 + erf(x / SQRT_2))
        phi = np.exp(-0.5 * x ** 2) / SQRT_2PI
        return dout * (Phi + x * phi)
    # out = 0.5 x (1 + t),  t = tanh(u),  u = sqrt(2/pi) (x + 0.044715 x^3)
    t = np.tanh(SQRT_2_OVER_PI * (x + TANH_A * x ** 3))
    du_dx = SQRT_2_OVER_PI * (1.0 + 3.0 * TANH_A * x ** 2)
    return dout * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t ** 2) * du_dx)
    # END SOLUTION


def mlp_forward(x, W1, b1, W2, b2, gelu: str = "exact"):
    """x (..., D) -> (..., D) through a hidden layer of width M; returns (out, cache)."""
    hid, c1 = linear_forward(x, W1, b1)                  # (..., M)
    act, cg = gelu_forward(hid, gelu)                    # (..., M)
    out, c2 = linear_forward(act, W2, b2)                # (..., D)
    return out, (c1, cg, c2)


def mlp_backward(dout, cache):
    """dout (..., D) -> dx (..., D), dW1 (D, M), db1 (M,), dW2 (M, D), db2 (D,)."""
    # BEGIN SOLUTION mlp_backward
    c1, cg, c2 = cache
    # out = act @ W2 + b2
    dact, dW2, db2 = linear_backward(dout, c2)           # (..., M)
    # act = GELU(hid)
    dhid = gelu_backward(dact, cg)                       # (..., M)
    # hid = x @ W1 + b1
    dx, dW1, db1 = linear_backward(dhid, c1)             # (..., D)
    return dx, dW1, db1, dW2, db2
    # END SOLUTION
