# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 5. The MLP, GELU, and the transformer block
#
# Attention mixes information *between* tokens. The MLP then works on each
# token *on its own*: two linear layers with a GELU between them,
#
#     MLP(x) = GELU(x W1 + b1) W2 + b2          (..., D) -> (..., M) -> (..., D)
#
# and a transformer block wraps both in layer norms and residual connections:
#
#     x = x + Attention(LayerNorm1(x))          residual 1
#     x = x + MLP(LayerNorm2(x))                residual 2
#
# This tutorial looks at GELU (exact and tanh), its derivative and gradient
# check, the MLP, and the block, including what the residuals do to the
# backward pass and what a "dropped residual" bug looks like to a gradient check.
#
# Open it as a notebook or run it as a script; it needs tinyvit installed and runs
# from any folder. Figures show inline and are saved to `figures/` under the
# current folder (or `$TINYVIT_FIGURES`); `TINYVIT_QUICK=1` is the fast mode the
# tests use.

# %%
import inspect

import numpy as np

from tinyvit.tutorial import display_figure, show
from tinyvit.gradcheck import check_layer, format_errors, numerical_vjp, rel_error
from tinyvit.layers import (BLOCK_PARAMS, attention_backward, attention_forward, block_backward,
                            block_forward, erf, gelu_backward, gelu_forward, layernorm_backward,
                            layernorm_forward, mlp_backward, mlp_forward)

# %% [markdown]
# ## 5.1 GELU, exact and tanh
#
# GELU(x) = x * Phi(x), with Phi the standard normal CDF: a smooth ReLU that
# lets a little negative signal through. Exact: `0.5 x (1 + erf(x / sqrt 2))`
# (timm's default). The older approximation: `0.5 x (1 + tanh(sqrt(2/pi)
# (x + 0.044715 x^3)))`. NumPy has no `erf`, so tinyvit writes one out
# (`tinyvit.layers.erf`, accurate to float64 rounding).
#
# The derivative, needed for the backward: `d/dx [x Phi(x)] = Phi(x) + x phi(x)`
# with phi the normal density.

# %%
xs = np.linspace(-4, 4, 801)                         # (801,)
show("xs", xs)
g_exact, c_exact = gelu_forward(xs, kind="exact")
g_tanh, c_tanh = gelu_forward(xs, kind="tanh")
show("gelu exact", g_exact)
diff = np.abs(g_exact - g_tanh)
print(f"max |exact - tanh| on [-4, 4]: {diff.max():.2e} at x = {xs[diff.argmax()]:.2f}")
print("erf(0.5), erf(1), erf(2):", erf(np.array([0.5, 1.0, 2.0])))

ones = np.ones_like(xs)
d_exact = gelu_backward(ones, c_exact)               # the derivative itself (upstream gradient 1)
phi = np.exp(-xs ** 2 / 2) / np.sqrt(2 * np.pi)
Phi = 0.5 * (1 + erf(xs / np.sqrt(2)))
print("derivative vs Phi(x) + x phi(x):", float(np.abs(d_exact - (Phi + xs * phi)).max()))

rng = np.random.default_rng(0)
for kind in ("exact", "tanh"):
    errs = check_layer(gelu_forward, gelu_backward, {"x": rng.standard_normal((4, 6)) * 2}, kwargs={"kind": kind})
    print(f"gelu {kind} gradient check:", format_errors(errs, 1e-7).strip())

# %%
from matplotlib.figure import Figure

fig = Figure(figsize=(9, 3), layout="constrained")
a1, a2, a3 = fig.subplots(1, 3)
a1.plot(xs, g_exact, label="GELU exact")
a1.plot(xs, g_tanh, "--", label="GELU tanh")
a1.plot(xs, np.maximum(xs, 0), ":", color="0.5", label="ReLU")
a1.set_title("GELU(x)", fontsize=9)
a2.plot(xs, d_exact, label="exact")
a2.plot(xs, gelu_backward(ones, c_tanh), "--", label="tanh")
a2.set_title("derivative", fontsize=9)
a3.semilogy(xs, np.maximum(diff, 1e-9))
a3.set_ylim(1e-8, 1e-2)
a3.set_title("|exact - tanh|", fontsize=9)
for ax in (a1, a2, a3):
    ax.grid(alpha=0.3)
    ax.set_xlabel("x", fontsize=8)
    ax.tick_params(labelsize=7)
a1.legend(fontsize=7)
a2.legend(fontsize=7)
display_figure(fig, "05_gelu.png")

# %% [markdown]
# The two GELUs differ by at most the amount printed above: small, but enough that a
# model trained with one and run with the other does not match a reference
# number for number. tinyvit's `ViTConfig(gelu=...)` picks one.
#
# ## 5.2 The MLP
#
# Hidden width M, usually 2x to 4x D. Each token goes through the same two
# layers; in the code the tokens stay a (B, T, D) array and `@` works on the
# last axis.

# %%
B, T, D, M = 2, 5, 8, 16
x = rng.standard_normal((B, T, D))
W1, b1 = rng.standard_normal((D, M)) * 0.3, rng.standard_normal(M) * 0.1
W2, b2 = rng.standard_normal((M, D)) * 0.3, rng.standard_normal(D) * 0.1
show("x", x)
show("W1", W1)
show("W2", W2)
hidden = x @ W1 + b1                                 # (B, T, M)
show("hidden = x W1 + b1", hidden)
act = gelu_forward(hidden)[0]                        # (B, T, M)
show("GELU(hidden)", act)
y = act @ W2 + b2                                    # (B, T, D)
show("y", y)
y_lib, _ = mlp_forward(x, W1, b1, W2, b2)
print("matches mlp_forward:", np.allclose(y, y_lib))
errs = check_layer(mlp_forward, mlp_backward, {"x": x, "W1": W1, "b1": b1, "W2": W2, "b2": b2})
print(format_errors(errs, 1e-7))

# %% [markdown]
# ## 5.3 The block and its residuals
#
# Here is `block_forward` as the installed package has it (`tinyvit/layers/block.py`).
# Note the **pre-norm** arrangement: the layer norm is inside the branch, the residual
# path `x -> x + ...` is left untouched, so there is always a clean identity
# route from the input to the output. In the backward, each `x = x + f(x)` sends
# the incoming gradient two ways, through `f` and straight past it, and adds them:
#
#     dx = dout + f_backward(dout)
#
# Forget the `dout +` and the gradient has to squeeze through every branch.

# %%
print(inspect.getsource(block_forward))

# %%
heads = 2
p = {"norm1.gamma": 1 + 0.1 * rng.standard_normal(D), "norm1.beta": 0.1 * rng.standard_normal(D),
     "attn.qkv.W": rng.standard_normal((D, 3 * D)) * 0.3, "attn.qkv.b": rng.standard_normal(3 * D) * 0.1,
     "attn.proj.W": rng.standard_normal((D, D)) * 0.3, "attn.proj.b": rng.standard_normal(D) * 0.1,
     "norm2.gamma": 1 + 0.1 * rng.standard_normal(D), "norm2.beta": 0.1 * rng.standard_normal(D),
     "mlp.fc1.W": W1, "mlp.fc1.b": b1, "mlp.fc2.W": W2, "mlp.fc2.b": b2}
assert tuple(p) == BLOCK_PARAMS
for k in p:
    show(k, p[k])

n1, _ = layernorm_forward(x, p["norm1.gamma"], p["norm1.beta"])               # (B, T, D)
a, _ = attention_forward(n1, p["attn.qkv.W"], p["attn.qkv.b"], p["attn.proj.W"], p["attn.proj.b"], heads)
x1 = x + a                                                                     # residual 1
n2, _ = layernorm_forward(x1, p["norm2.gamma"], p["norm2.beta"])
m, _ = mlp_forward(n2, W1, b1, W2, b2)
out = x1 + m                                                                   # residual 2
for name, arr in [("LayerNorm1(x)", n1), ("attention branch", a), ("x + attention", x1),
                  ("MLP branch", m), ("block output", out)]:
    show(name, arr)
out_lib, cache = block_forward(x, p, heads)
print("matches block_forward:", np.allclose(out, out_lib))
print(f"how much each branch changes the tokens: |a| / |x| = {np.linalg.norm(a) / np.linalg.norm(x):.2f}, "
      f"|m| / |x1| = {np.linalg.norm(m) / np.linalg.norm(x1):.2f}")

# %% [markdown]
# Gradient check of the whole block, with respect to the input and all twelve
# parameters (the block takes a dict, so we wrap it into a function of arrays).

# %%
def block_fwd(x, **params):
    return block_forward(x, params, heads)


def block_bwd(dout, cache):
    dx, g = block_backward(dout, cache)
    return (dx,) + tuple(g[k] for k in BLOCK_PARAMS)


inputs = {"x": x, **{k: v.copy() for k, v in p.items()}}
errs = check_layer(block_fwd, block_bwd, inputs)
print(format_errors(errs, 1e-7))

# %% [markdown]
# ### The dropped-residual bug
#
# A backward that forgets the straight path of residual 2 (`dx = dx_branch`
# instead of `dout + dx_branch`). The gradient check of the input fails at once.

# %%
def buggy_block_backward(dout, cache):
    c_n1, c_attn, c_n2, c_mlp = cache
    dn2 = mlp_backward(dout, c_mlp)[0]
    dx = layernorm_backward(dn2, c_n2)[0]            # BUG: should be dout + ...
    dn1 = attention_backward(dx, c_attn)[0]
    return dx + layernorm_backward(dn1, c_n1)[0]


dout = rng.standard_normal(out.shape)
num = numerical_vjp(lambda: block_forward(x, p, heads)[0], x, dout)
_, cache = block_forward(x, p, heads)
print(f"dx relative error, correct backward: {rel_error(block_backward(dout, cache)[0], num):.1e}")
print(f"dx relative error, dropped residual: {rel_error(buggy_block_backward(dout, cache), num):.1e}")

# %% [markdown]
# ## Exercises
#
# Worked solutions, each checked by its own code: `solutions/05_solutions.py`
# (a teacher can leave that folder out of what students get).
#
# 1. Write the tanh GELU's derivative by hand and compare it with
#    `gelu_backward(ones, c_tanh)`.
# 2. Make a "post-norm" block (`x = LayerNorm(x + Attention(x))`, as in the
#    original Transformer) and its backward; check it. What is different about
#    the path from the output to the input?
# 3. Stack 12 blocks with random weights and compare the norm of the input
#    gradient with and without the residuals. What happens without them?
# 4. Why does a (B, T, D) MLP cost the same as a (B*T, D) one? Reshape and check
#    that the outputs are identical.
