"""Special functions NumPy lacks: the error function, to float64 rounding.

GELU (exact) is x * Phi(x) with Phi(x) = 0.5 * (1 + erf(x / sqrt(2))). The
float64 gradient checks and the parity with PyTorch need an erf good to float64
rounding, so it is written out here, away from the layer code a learner reads.
"""

from __future__ import annotations

import numpy as np

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
