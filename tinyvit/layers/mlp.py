"""The MLP of a transformer block and its GELU activation.

  MLP(x) = GELU(x @ W1 + b1) @ W2 + b2        (..., D) -> (..., M) -> (..., D)

GELU(x) = x * Phi(x), Phi the standard normal CDF:
  exact:  0.5 * x * (1 + erf(x / sqrt(2)))                      (timm's default)
  tanh:   0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))  (the approximation)

NumPy has no erf, and the float64 gradient checks and the parity with PyTorch
need one good to float64 rounding, so it is written out below.
"""

from __future__ import annotations

import numpy as np

from .linear import linear_backward, linear_forward

# --- erf ---------------------------------------------------------------------
# W. J. Cody, "Rational Chebyshev approximations for the error function",
# Math. Comp. 23 (1969), 631-638: near-minimax rational functions on three
# intervals of |x|, accurate to about 18 significant digits (coefficients from
# the paper / the SPECFUN package's CALERF).
#   |x| <= 0.46875:      erf(x)  = x * R1(x^2)
#   0.46875 < |x| <= 4:  erfc(x) = exp(-x^2) * R2(|x|)
#   |x| > 4:             erfc(x) = exp(-x^2) / |x| * (1/sqrt(pi) - z * R3(z)),  z = 1/x^2
# Each R is a ratio of polynomials, evaluated by Horner's rule, highest power first.
_R1_NUM = (0.185777706184603153, 3.16112374387056560, 113.864154151050156,
           377.485237685302021, 3209.37758913846947)
_R1_DEN = (1.0, 23.6012909523441209, 244.024637934444173,
           1282.61652607737228, 2844.23683343917062)
_R2_NUM = (2.15311535474403846e-8, 0.564188496988670089, 8.88314979438837594,
           66.1191906371416295, 298.635138197400131, 881.952221241769090,
           1712.04761263407058, 2051.07837782607147, 1230.33935479799725)
_R2_DEN = (1.0, 15.7449261107098347, 117.693950891312499, 537.181101862009858,
           1621.38957456669019, 3290.79923573345963, 4362.61909014324716,
           3439.36767414372164, 1230.33935480374942)
_R3_NUM = (0.0163153871373020978, 0.305326634961232344, 0.360344899949804439,
           0.125781726111229246, 0.0160837851487422766, 6.58749161529837803e-4)
_R3_DEN = (1.0, 2.56852019228982242, 1.87295284992346047, 0.527905102951428412,
           0.0605183413124413191, 0.00233520497626869185)
_INV_SQRT_PI = 0.56418958354775628695


def _horner(coeffs, t):
    acc = np.full_like(t, coeffs[0])
    for c in coeffs[1:]:
        acc *= t
        acc += c
    return acc


def _exp_neg_square(y):
    """exp(-y^2) without the rounding error of y*y: split y = y0 + r with y0 a
    multiple of 1/16 (so y0^2 is exact), then exp(-y^2) = exp(-y0^2) exp(-(y-y0)(y+y0))."""
    y0 = np.trunc(y * 16.0) / 16.0
    return np.exp(-y0 * y0) * np.exp(-(y - y0) * (y + y0))


def erf(x: np.ndarray) -> np.ndarray:
    """The error function, elementwise, to about float64 rounding (1e-16 relative)."""
    x = np.asarray(x)
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    y = np.abs(x)
    out = np.empty_like(x)
    small = y <= 0.46875
    mid = (y > 0.46875) & (y <= 4.0)
    big = y > 4.0
    if small.any():
        xs = x[small]
        t = xs * xs
        out[small] = xs * _horner(_R1_NUM, t) / _horner(_R1_DEN, t)
    if mid.any():
        ym = y[mid]
        erfc = _exp_neg_square(ym) * _horner(_R2_NUM, ym) / _horner(_R2_DEN, ym)
        out[mid] = np.copysign(1.0 - erfc, x[mid])
    if big.any():
        yb = np.minimum(y[big], 30.0)                    # erfc(30) underflows to 0: inf is safe
        z = 1.0 / (yb * yb)
        tail = z * _horner(_R3_NUM, z) / _horner(_R3_DEN, z)
        erfc = _exp_neg_square(yb) / yb * (_INV_SQRT_PI - tail)
        out[big] = np.copysign(1.0 - erfc, x[big])
    out[np.isnan(x)] = np.nan
    return out


# --- GELU --------------------------------------------------------------------
_SQRT_HALF = 0.7071067811865476            # 1 / sqrt(2)
_INV_SQRT_2PI = 0.3989422804014327         # 1 / sqrt(2 pi), the normal density at 0
_TANH_C = 0.7978845608028654               # sqrt(2 / pi)
_TANH_A = 0.044715


# A fast float32 path for Phi(x). Training runs in float32, which keeps about 7
# significant digits: Cody's erf above (float64-accurate, three intervals picked
# out by boolean masks) is far more than it needs and slow. One formula covers
# the whole range instead, Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7):
#   erfc(z) ~= t (a1 + a2 t + a3 t^2 + a4 t^3 + a5 t^4) exp(-z^2),  t = 1 / (1 + p z),  z >= 0
# With z = |x| / sqrt(2), Q = erfc(z) / 2 is the normal tail P(N(0, 1) > |x|), and
#   Phi(x) = 1 - Q for x >= 0,  Q for x < 0,   that is  Phi(x) = 0.5 + copysign(0.5 - Q, x).
# (Float32 GELU values land within about 5e-7 of the float64 ones.)
_AS_P = 0.3275911 * _SQRT_HALF             # p / sqrt(2): t = 1 / (1 + p |x| / sqrt(2))
_AS_A = (1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592)   # a5 .. a1
# Q = erfc(z) / 2 = 0.5 t (a1 + ... + a5 t^4) exp(-x^2 / 2) = 0.5 sqrt(2 pi) t (a1 + ...) phi(x),
# phi the normal density: the factor 0.5 sqrt(2 pi) is folded into the coefficients, so the
# code below computes phi once and uses it twice (here, and in the backward, which needs it).
_AS_C = tuple(0.5 / _INV_SQRT_2PI * a for a in _AS_A)      # 0.5 sqrt(2 pi) a_i

_BLOCK = 1 << 18                           # numbers per block in the float32 GELU (1 MB)


def _gelu_exact_float32(x: np.ndarray, out: np.ndarray, cdf: np.ndarray, pdf: np.ndarray) -> None:
    """Fills cdf = Phi(x), pdf = phi(x) and out = x * Phi(x) for a float32 array x (...)."""
    t = np.abs(x)
    t *= _AS_P
    t += 1.0
    np.divide(1.0, t, out=t)                             # t = 1 / (1 + p z)
    q = np.multiply(t, _AS_C[0], out=cdf)                # Horner's rule, a5 first
    for c in _AS_C[1:]:
        q += c
        q *= t
    np.square(x, out=pdf)
    pdf *= -0.5
    np.exp(pdf, out=pdf)
    pdf *= _INV_SQRT_2PI                                 # phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
    q *= pdf                                             # Q = erfc(z) / 2
    np.subtract(0.5, q, out=q)
    np.copysign(q, x, out=q)
    q += 0.5                                             # Phi = 0.5 + copysign(0.5 - Q, x)
    np.multiply(x, q, out=out)                           # GELU = x * Phi(x)


def _gelu_tanh(x: np.ndarray, out: np.ndarray, t: np.ndarray) -> None:
    """Fills t = tanh(sqrt(2/pi) (x + 0.044715 x^3)) and out = 0.5 x (1 + t)."""
    np.square(x, out=t)
    t *= x
    t *= _TANH_A
    t += x
    t *= _TANH_C
    np.tanh(t, out=t)
    np.add(t, 1.0, out=out)
    out *= x
    out *= 0.5


def gelu_forward(x: np.ndarray, kind: str = "exact"):
    """GELU elementwise: x (...) -> (out (...), cache). kind: "exact" or "tanh".

    cache = (x, kind, aux): aux is (Phi(x), phi(x)), the normal CDF and density, for
    "exact", and t = tanh(sqrt(2/pi) (x + 0.044715 x^3)) for "tanh"."""
    if kind == "exact":
        if x.dtype == np.float32:                        # the fast float32 path
            out, cdf, pdf = np.empty_like(x), np.empty_like(x), np.empty_like(x)
            # Its twenty-odd passes run on blocks of rows, 1 MB per array, which stay in the
            # CPU's cache from one pass to the next (on arrays of several MB, a few % faster).
            n = x.shape[-1] if x.ndim else 1
            x2, o2, c2, p2 = (a.reshape(-1, n) for a in (x, out, cdf, pdf))
            rows = max(1, _BLOCK // n)
            for i in range(0, x2.shape[0], rows):
                _gelu_exact_float32(x2[i:i + rows], o2[i:i + rows], c2[i:i + rows], p2[i:i + rows])
            return out, (x, kind, (cdf, pdf))
        cdf = 0.5 * (1.0 + erf(x * _SQRT_HALF))          # Phi(x)
        pdf = np.exp(-0.5 * x * x) * _INV_SQRT_2PI       # phi(x), kept for the backward
        return x * cdf, (x, kind, (cdf, pdf))
    if kind == "tanh":
        out, t = np.empty_like(x), np.empty_like(x)
        _gelu_tanh(x, out, t)                            # out = 0.5 x (1 + t)
        return out, (x, kind, t)
    raise ValueError(f"kind: expected 'exact' or 'tanh', got {kind!r}")


def gelu_backward(dout: np.ndarray, cache) -> np.ndarray:
    """dout (...) -> dx (...), for the GELU kind stored in the cache."""
    # BEGIN SOLUTION gelu_backward
    # exact: d/dx [x Phi(x)] = Phi(x) + x phi(x),  phi(x) = exp(-x^2/2) / sqrt(2 pi)
    # tanh:  d/dx [0.5 x (1 + t)] = 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
    x, kind, aux = cache
    # Each line below works in place on one buffer (no temporary arrays);
    # the comment on the right is the plain formula it builds.
    if kind == "exact":
        cdf, pdf = aux                                   # Phi(x) and phi(x), from the forward
        grad = x * pdf
        grad += cdf                                      # Phi(x) + x * phi(x)
        grad *= dout
        return grad
    t = aux
    grad = np.square(x)
    grad *= 3.0 * _TANH_A
    grad += 1.0
    grad *= _TANH_C                                      # sqrt(2/pi) (1 + 3 * 0.044715 x^2)
    one_minus_t2 = np.square(t)
    np.subtract(1.0, one_minus_t2, out=one_minus_t2)
    grad *= one_minus_t2                                 # dt = (1 - t^2) * the line above
    grad *= x
    grad += t
    grad += 1.0
    grad *= 0.5                                          # 0.5 (1 + t) + 0.5 x dt
    grad *= dout
    return grad
    # END SOLUTION


# --- MLP ---------------------------------------------------------------------
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
    dact, dW2, db2 = linear_backward(dout, c2)           # (..., M)
    dhid = gelu_backward(dact, cg)                       # (..., M)
    dx, dW1, db1 = linear_backward(dhid, c1)             # (..., D)
    return dx, dW1, db1, dW2, db2
    # END SOLUTION
