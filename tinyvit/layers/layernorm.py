"""Layer normalisation over the last axis (the D features of each token).

  mu   = mean(x)                     over the D features of one token
  var  = mean((x - mu)^2)
  xhat = (x - mu) / sqrt(var + eps)  zero mean, unit variance per token
  y    = gamma * xhat + beta         learned scale and shift, each (D,)
"""

from __future__ import annotations

import numpy as np

from .linear import sum_keepdims, sum_rows

EPS = 1e-6


def layernorm_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = EPS):
    """x (..., D), gamma (D,), beta (D,) -> y (..., D), cache."""
    # BEGIN SOLUTION layernorm_forward
    inv_D = 1.0 / x.shape[-1]
    mu = sum_keepdims(x) * inv_D                         # (..., 1) mean(x)
    xhat = x - mu                                        # (..., D) x - mu
    out = np.square(xhat)                                # (xc)^2, in the output's buffer
    var = sum_keepdims(out) * inv_D                      # (..., 1) mean((x - mu)^2)
    rstd = 1.0 / np.sqrt(var + eps)                      # (..., 1)
    xhat *= rstd                                         # xhat = (x - mu) * rstd, in place
    np.multiply(xhat, gamma, out=out)
    out += beta                                          # y = xhat * gamma + beta
    return out, (xhat, rstd, gamma)
    # END SOLUTION


def layernorm_backward(dout: np.ndarray, cache):
    """dout (..., D) -> dx (..., D), dgamma (D,), dbeta (D,)."""
    # BEGIN SOLUTION layernorm_backward
    # With g = dout * gamma (the gradient reaching xhat), the three paths from
    # x to xhat (directly, through mu, through var) add up to
    #
    #   dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
    #
    # the means taken over the D features of each token. Dropping either mean
    # term is the classic layer-norm bug: the gradient check catches both.
    xhat, rstd, gamma = cache
    D = xhat.shape[-1]
    # The sums over tokens and features below are matrix-vector products on
    # 2-D (rows, D) views: the same sums as .sum()/.mean(), done by BLAS.
    dout2, xhat2 = dout.reshape(-1, D), xhat.reshape(-1, D)
    dbeta = sum_rows(dout2)                              # (D,) dout summed over tokens
    dxh = dout2 * xhat2                                  # (R, D)
    dgamma = sum_rows(dxh)                               # (D,) (dout * xhat) summed over tokens
    g = dout2 * gamma                                    # (R, D) gradient at xhat
    mean_g = (dout2 @ gamma)[:, None] * (1.0 / D)        # (R, 1) mean(g)
    mean_gx = (dxh @ gamma)[:, None] * (1.0 / D)         # (R, 1) mean(g * xhat)
    np.multiply(xhat2, mean_gx, out=dxh)                 # xhat * mean(g * xhat), reusing dxh
    g -= dxh
    g -= mean_g
    g *= rstd.reshape(-1, 1)                             # dx = rstd * (g - mean_g - xhat * mean_gx)
    return g.reshape(dout.shape), dgamma, dbeta
    # END SOLUTION
