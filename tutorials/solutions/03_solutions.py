# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Worked solutions: 3. Layer norm
#
# Withhold this folder from students if you grade the exercises (see
# `01_solutions.py`). Every answer is computed and checked below.

# %%
import time

import numpy as np

from tinyvit.gradcheck import numerical_vjp, rel_error
from tinyvit.layers import layernorm_backward, layernorm_forward

rng = np.random.default_rng(0)
B, T, D = 2, 3, 8
x = rng.standard_normal((B, T, D)) * rng.uniform(0.5, 4, (B, T, 1)) + rng.uniform(-3, 3, (B, T, 1))
beta = rng.standard_normal(D) * 0.1
ones_gamma = np.ones(D)

# %% [markdown]
# ## Exercise 1: drop the mean path instead
#
# Without `- mean(g)`, the backward is `rstd * (g - xhat * mean(g * xhat))`.
# With an all-ones `dout` (and gamma = 1) g is constant, `mean(g * xhat) = 0`,
# so the buggy backward returns `rstd * g`, not zero, while the true gradient is
# zero: this time the all-ones check *does* catch the bug, and so does the
# random one. (Only the var-path bug of 3.4 hides from the all-ones check.)

# %%
def no_mean_path(dout, cache):
    xhat, rstd, gamma = cache
    g = dout * gamma
    return rstd * (g - xhat * (g * xhat).mean(-1, keepdims=True))


_, c1 = layernorm_forward(x, ones_gamma, beta)
f = lambda: layernorm_forward(x, ones_gamma, beta)[0]
for label, d in [("random dout", rng.standard_normal(x.shape)), ("all-ones dout", np.ones(x.shape))]:
    num = numerical_vjp(f, x, d)
    print(f"{label:<14} max|numerical| {np.abs(num).max():.1e}  max|buggy| {np.abs(no_mean_path(d, c1)).max():.1e}  "
          f"max|buggy - numerical| {np.abs(no_mean_path(d, c1) - num).max():.1e}")
    assert np.abs(no_mean_path(d, c1) - num).max() > 1e-3

# %% [markdown]
# ## Exercise 2: the features of `dx` sum to zero
#
# Adding the same number c to every feature of a token changes its mean by c
# and nothing else, so xhat and y do not change: the loss has zero derivative
# along the direction (1, ..., 1), which is exactly the sum of `dx` over the
# features.

# %%
gamma = rng.standard_normal(D) * 0.5 + 1
_, cache = layernorm_forward(x, gamma, beta)
dx = layernorm_backward(rng.standard_normal(x.shape), cache)[0]
print("largest |sum over features of dx|:", float(np.abs(dx.sum(-1)).max()))
assert np.abs(dx.sum(-1)).max() < 1e-12
shifted = layernorm_forward(x + 3.0, gamma, beta)[0]
print("y unchanged by adding 3 to every feature:", np.allclose(shifted, layernorm_forward(x, gamma, beta)[0]))

# %% [markdown]
# ## Exercise 3: eps = 1
#
# xhat's variance becomes var / (var + eps): with eps = 1 a token whose
# variance is near 1 is squashed to about half. eps only keeps the division
# away from zero for constant tokens, so implementations keep it tiny. The
# backward differentiates the same function, so it must use the same eps (it
# does here: it reads rstd from the forward's cache).

# %%
for eps in (1e-6, 1.0):
    xhat = layernorm_forward(x, np.ones(D), np.zeros(D), eps)[0]
    print(f"eps = {eps:g}: per-token variance of xhat {np.round(xhat.var(-1).ravel(), 3)}")
    print(f"         var / (var + eps):           {np.round((x.var(-1) / (x.var(-1) + eps)).ravel(), 3)}")

# %% [markdown]
# ## Exercise 4: timing
#
# The compact formula makes fewer passes over the (B, T, D) array and fewer
# temporaries than the step-by-step version; the printed times say by how much
# on this machine.

# %%
def stepwise(dy, x, gamma, eps=1e-6):
    Dn = x.shape[-1]
    mu = x.mean(-1, keepdims=True)
    xc = x - mu
    var = (xc ** 2).mean(-1, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    dxhat = dy * gamma
    dxc = dxhat * rstd
    dvar = (dxhat * xc).sum(-1, keepdims=True) * -0.5 * rstd ** 3
    dxc = dxc + dvar * 2.0 * xc / Dn
    return dxc - dxc.sum(-1, keepdims=True) / Dn


xb = rng.standard_normal((64, 65, 64)).astype(np.float32)
g32 = np.ones(64, np.float32)
dy = rng.standard_normal(xb.shape).astype(np.float32)
_, cb = layernorm_forward(xb, g32, np.zeros(64, np.float32))
assert np.allclose(stepwise(dy, xb, g32), layernorm_backward(dy, cb)[0], atol=1e-4)
for name, fn in [("step by step", lambda: stepwise(dy, xb, g32)), ("layernorm_backward", lambda: layernorm_backward(dy, cb))]:
    t0 = time.perf_counter()
    for _ in range(20):
        fn()
    print(f"{name:<20} {(time.perf_counter() - t0) / 20 * 1e3:.2f} ms")
