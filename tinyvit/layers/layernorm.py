"""Layer normalisation over the last axis (the D features of each token).

  mu   = mean(x)                     over the D features of one token
  var  = mean((x - mu)^2)
  xhat = (x - mu) / sqrt(var + eps)  zero mean, unit variance per token
  y    = gamma * xhat + beta         learned scale and shift, each (D,)
"""

from __future__ import annotations

import numpy as np

EPS = 1e-6


def layernorm_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = EPS):
    """x (..., D), gamma (D,), beta (D,) -> y (..., D), cache."""
    mu = x.mean(axis=-1, keepdims=True)                  # (..., 1)
    xc = x - mu                                          # (..., D)
    var = np.mean(xc * xc, axis=-1, keepdims=True)       # (..., 1)
    rstd = 1.0 / np.sqrt(var + eps)                      # (..., 1)
    xhat = xc * rstd                                     # (..., D)
    out = xhat * gamma + beta
    return out, (xhat, rstd, gamma)


def layernorm_backward(dout: np.ndarray, cache):
    """dout (..., D) -> dx (..., D), dgamma (D,), dbeta (D,).

    With g = dout * gamma (the gradient reaching xhat), the three paths from
    x to xhat (directly, through mu, through var) add up to

      dx = rstd * (g - mean(g) - xhat * mean(g * xhat))

    the means taken over the D features of each token. Dropping either mean
    term is the classic layer-norm bug: the gradient check catches both.
    """
    xhat, rstd, gamma = cache
    lead = tuple(range(xhat.ndim - 1))
    dbeta = dout.sum(axis=lead)                          # (D,)
    dgamma = (dout * xhat).sum(axis=lead)                # (D,)
    g = dout * gamma                                     # (..., D) gradient at xhat
    mean_g = g.mean(axis=-1, keepdims=True)              # (..., 1)
    mean_gx = (g * xhat).mean(axis=-1, keepdims=True)    # (..., 1)
    dx = rstd * (g - mean_g - xhat * mean_gx)
    return dx, dgamma, dbeta
