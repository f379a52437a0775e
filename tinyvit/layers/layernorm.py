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
    """x (..., D), gamma (D,), beta (D,) -> y (..., D), cache = (xhat, rstd, gamma)."""
    # BEGIN SOLUTION layernorm_forward
    mu = x.mean(axis=-1, keepdims=True)                  # (..., 1)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)   # (..., 1)
    rstd = 1.0 / np.sqrt(var + eps)                      # (..., 1) one over the standard deviation
    xhat = (x - mu) * rstd                               # (..., D)
    y = gamma * xhat + beta                              # (..., D)
    return y, (xhat, rstd, gamma)
    # END SOLUTION


def layernorm_backward(dout: np.ndarray, cache):
    """dout (..., D) -> dx (..., D), dgamma (D,), dbeta (D,)."""
    # BEGIN SOLUTION layernorm_backward
    xhat, rstd, gamma = cache
    D = xhat.shape[-1]
    # y = gamma * xhat + beta: gamma and beta are shared by every token, so their
    # gradients sum over all the leading axes
    dbeta = dout.reshape(-1, D).sum(axis=0)              # (D,)
    dgamma = (dout * xhat).reshape(-1, D).sum(axis=0)    # (D,)
    dxhat = dout * gamma                                 # (..., D)
    # xhat = (x - mu) * rstd, where mu and rstd depend on x too. The three paths
    # from x to xhat (directly, through mu, through var) add up to
    #   dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    # Dropping either mean term is the classic layer-norm bug.
    dx = rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True)
                 - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
    return dx, dgamma, dbeta
    # END SOLUTION
