# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 3. Layer norm: forward, backward, gradient check
#
# Every transformer block normalises each token before attention and before
# the MLP, and the model normalises once more at the end. Layer norm works on
# one token at a time, over its D features:
#
#     mu   = mean(x)                      (one number per token)
#     var  = mean((x - mu)^2)
#     xhat = (x - mu) / sqrt(var + eps)   zero mean, unit variance per token
#     y    = gamma * xhat + beta          gamma, beta: (D,) learned
#
# with eps = 1e-6 (as timm's ViT). This tutorial computes the forward by hand,
# derives the backward one step at a time, checks it against finite
# differences, and shows why the check needs a *random* upstream gradient.
#
# Open it as a notebook or run it as a script; it needs tinyvit installed and runs
# from any folder. Figures show inline and are saved to `figures/` under the
# current folder (or `$TINYVIT_FIGURES`); `TINYVIT_QUICK=1` is the fast mode the
# tests use (this tutorial is the same in both).

# %%
import inspect

import numpy as np

from tinyvit.tutorial import display_figure, show
from tinyvit.gradcheck import check_layer, format_errors, numerical_vjp, rel_error
from tinyvit.layers import layernorm_backward, layernorm_forward

# %% [markdown]
# ## 3.1 Forward by hand
#
# Tokens (B, T, D) in float64 (gradient checks need float64: in float32 the
# finite differences drown in rounding). We give the tokens an offset and a
# scale per token so the normalisation has something to do.

# %%
rng = np.random.default_rng(0)
B, T, D = 2, 3, 8
x = rng.standard_normal((B, T, D)) * rng.uniform(0.5, 4, (B, T, 1)) + rng.uniform(-3, 3, (B, T, 1))
gamma = rng.standard_normal(D) * 0.5 + 1.0           # (D,)
beta = rng.standard_normal(D) * 0.1                  # (D,)
eps = 1e-6
show("x", x)
show("gamma", gamma)
show("beta", beta)

mu = x.mean(axis=-1, keepdims=True)                  # (B, T, 1)
xc = x - mu                                          # (B, T, D)
var = (xc ** 2).mean(axis=-1, keepdims=True)         # (B, T, 1) the biased variance, as PyTorch
rstd = 1.0 / np.sqrt(var + eps)                      # (B, T, 1)
xhat = xc * rstd                                     # (B, T, D)
y = gamma * xhat + beta                              # (B, T, D)
for name, a in [("mu", mu), ("xc = x - mu", xc), ("var", var), ("rstd", rstd), ("xhat", xhat), ("y", y)]:
    show(name, a)
print("per-token mean of x   :", np.round(mu[..., 0], 2).tolist())
print("per-token mean of xhat:", np.abs(xhat.mean(-1)).max(), "(zero)")
print("per-token var  of xhat:", np.round(xhat.var(-1), 6).tolist(), "(one, up to eps)")

y_lib, cache = layernorm_forward(x, gamma, beta, eps)
print("matches layernorm_forward:", np.allclose(y, y_lib, rtol=0, atol=1e-14))

# %% [markdown]
# ## 3.2 The backward, one step at a time
#
# Given `dy = dL/dy` (B, T, D), walk the forward lines in reverse. For each line
# `out = f(in)` we add `f`'s local derivative times `dout` to `din`.
#
# 1. `y = gamma * xhat + beta`:
#    `dbeta = sum dy` over all tokens; `dgamma = sum dy * xhat`;
#    `dxhat = dy * gamma`.
# 2. `xhat = xc * rstd`: xc is used here *and* (through var) in rstd, so
#    `dxc = dxhat * rstd` (first path) and `drstd = sum_D dxhat * xc`.
# 3. `rstd = (var + eps)^(-1/2)`: `dvar = drstd * (-1/2) (var + eps)^(-3/2) = drstd * (-1/2) rstd^3`.
# 4. `var = mean(xc^2)`: every xc entry gets `dvar * 2 xc / D` (second path into xc).
# 5. `xc = x - mu`: `dx = dxc` (first path) and `dmu = -sum_D dxc`.
# 6. `mu = mean(x)`: every x entry gets `dmu / D`.

# %%
dy = rng.standard_normal(y.shape)                    # a random upstream gradient (B, T, D)
show("dy", dy)
dbeta = dy.sum(axis=(0, 1))                          # (D,)
dgamma = (dy * xhat).sum(axis=(0, 1))                # (D,)
dxhat = dy * gamma                                   # (B, T, D)
dxc = dxhat * rstd                                   # (B, T, D)   path 1 into xc
drstd = (dxhat * xc).sum(axis=-1, keepdims=True)     # (B, T, 1)
dvar = drstd * -0.5 * rstd ** 3                      # (B, T, 1)
dxc = dxc + dvar * 2.0 * xc / D                      # (B, T, D)   path 2 into xc
dx = dxc.copy()                                      # (B, T, D)   path 1 into x
dmu = -dxc.sum(axis=-1, keepdims=True)               # (B, T, 1)
dx = dx + dmu / D                                    # (B, T, D)   path 2 into x
for name, a in [("dbeta", dbeta), ("dgamma", dgamma), ("dxhat", dxhat), ("drstd", drstd),
                ("dvar", dvar), ("dmu", dmu), ("dx (step by step)", dx)]:
    show(name, a)

# %% [markdown]
# ### The compact formula
#
# Substituting the steps into each other (with g = dxhat = dy * gamma and using
# `xc * rstd = xhat`) everything collapses to
#
#     dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
#
# the means over the D features of each token. The `- mean(g)` term comes from
# the path through mu, the `- xhat * mean(g * xhat)` term from the path through
# var. This is what `layernorm_backward` computes: after the two parameter
# gradients (sums over the tokens), one line for `dxhat` and one for this `dx`.

# %%
print(inspect.getsource(layernorm_backward))         # the library's code, from the installed package

# %%
g = dxhat
dx_compact = rstd * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))
dx_lib, dgamma_lib, dbeta_lib = layernorm_backward(dy, cache)
show("dx (compact)", dx_compact)
print("step by step vs compact :", float(np.abs(dx - dx_compact).max()))
print("compact vs library      :", float(np.abs(dx_compact - dx_lib).max()))
print("dgamma, dbeta vs library:", float(np.abs(dgamma - dgamma_lib).max()), float(np.abs(dbeta - dbeta_lib).max()))

# %% [markdown]
# ## 3.3 The gradient check
#
# Agreeing with our own algebra is not proof. `tinyvit.gradcheck` estimates
# every gradient by centred differences,
# `dL/dx_i ~ (L(x + h e_i) - L(x - h e_i)) / 2h` with `L = sum(y * dout)` for a
# random `dout`, and reports the relative error `||a - n|| / (||a|| + ||n||)`
# per tensor. A correct float64 backward lands orders of magnitude below the
# 1e-7 threshold used here.

# %%
errors = check_layer(layernorm_forward, layernorm_backward,
                     {"x": x, "gamma": gamma, "beta": beta}, kwargs={"eps": eps})
print(format_errors(errors, threshold=1e-7))

# %% [markdown]
# ## 3.4 Why the upstream gradient must be random
#
# Drop the var path (the `xhat * mean(g * xhat)` term), a classic mistake, and
# check it twice: once with a random `dout`, once with `dout` all ones and
# gamma = 1. With all ones, g is constant across the features, so
# `g - mean(g) = 0`, and `mean(g * xhat) = mean(xhat) = 0`: **both** terms
# vanish, the right answer is 0, and the buggy backward returns 0 too. A check
# with that upstream gradient cannot tell the wrong layer from the right one.

# %%
def buggy_backward(dout, cache):
    xhat, rstd, gamma = cache
    g = dout * gamma
    return rstd * (g - g.mean(-1, keepdims=True))     # the var path is missing


ones_gamma = np.ones(D)
_, c1 = layernorm_forward(x, ones_gamma, beta, eps)
f = lambda: layernorm_forward(x, ones_gamma, beta, eps)[0]
for label, d in [("random dout", rng.standard_normal(x.shape)), ("all-ones dout", np.ones(x.shape))]:
    num = numerical_vjp(f, x, d)
    good, bad = layernorm_backward(d, c1)[0], buggy_backward(d, c1)
    print(f"{label:<14} max|numerical| {np.abs(num).max():.1e}   "
          f"max|correct - buggy| {np.abs(good - bad).max():.1e}   "
          f"rel. error vs numerical: correct {rel_error(good, num):.1e}, buggy {rel_error(bad, num):.1e}")

# %% [markdown]
# Read the two lines above. With all ones the true gradient is zero: the
# numerical one is only finite-difference noise (its size is the first number),
# and the correct and the buggy backward return the same thing (their largest
# difference is at rounding level). Both relative errors then compare rounding
# noise with noise and come out near 1 for *both* layers: the check fails the
# correct layer exactly as it fails the wrong one, so it says nothing about
# either. With a random `dout` the two backwards differ, the correct one agrees
# with the numerical gradient to rounding, and the buggy one is far off.
#
# ## 3.5 A picture: what layer norm does to the tokens

# %%
from matplotlib.figure import Figure

fig = Figure(figsize=(8, 3), layout="constrained")
ax1, ax2 = fig.subplots(1, 2)
for t in range(T):
    ax1.plot(x[0, t], marker="o", label=f"token {t}")
    ax2.plot(xhat[0, t], marker="o", label=f"token {t}")
ax1.set_title("x: each token has its own offset and scale", fontsize=9)
ax2.set_title("xhat: every token mean 0, variance 1", fontsize=9)
for ax in (ax1, ax2):
    ax.set_xlabel("feature (D)", fontsize=8)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
display_figure(fig, "03_layernorm.png")

# %% [markdown]
# ## Exercises
#
# Worked solutions, each checked by its own code: `solutions/03_solutions.py`
# (a teacher can leave that folder out of what students get).
#
# 1. Drop the mean path instead (`- g.mean(...)`) and run both checks of 3.4.
#    Which one catches it?
# 2. Show that the sum over the features of `dx` is zero for every token. Why
#    must it be? (Hint: what happens to y if you add the same number to every
#    feature of x?)
# 3. Replace eps = 1e-6 by eps = 1.0 and compare xhat's variance. Why do
#    implementations add eps, and why must the backward use the same eps?
# 4. Time `layernorm_backward` against the step-by-step version for a
#    (64, 65, 64) float32 input. Which is faster and why?
