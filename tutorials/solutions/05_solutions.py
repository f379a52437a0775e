# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Worked solutions: 5. The MLP, GELU, and the transformer block
#
# Withhold this folder from students if you grade the exercises (see
# `01_solutions.py`). Every answer is computed and checked below.

# %%
import numpy as np

from tinyvit.gradcheck import numerical_vjp, rel_error
from tinyvit.layers import (attention_backward, attention_forward, gelu_backward, gelu_forward,
                            layernorm_backward, layernorm_forward, mlp_backward, mlp_forward)

rng = np.random.default_rng(0)

# %% [markdown]
# ## Exercise 1: the tanh GELU's derivative by hand
#
# With u = c (x + 0.044715 x^3), c = sqrt(2/pi), GELU(x) = 0.5 x (1 + tanh u), so
# GELU'(x) = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) c (1 + 3 * 0.044715 x^2).

# %%
xs = np.linspace(-4, 4, 801)
c = np.sqrt(2 / np.pi)
u = c * (xs + 0.044715 * xs ** 3)
by_hand = 0.5 * (1 + np.tanh(u)) + 0.5 * xs * (1 - np.tanh(u) ** 2) * c * (1 + 3 * 0.044715 * xs ** 2)
_, cache = gelu_forward(xs, kind="tanh")
lib = gelu_backward(np.ones_like(xs), cache)
print("max |by hand - gelu_backward|:", float(np.abs(by_hand - lib).max()))
assert np.abs(by_hand - lib).max() < 1e-6

# %% [markdown]
# ## Exercises 2 and 3: post-norm, and blocks without residuals
#
# A post-norm block, `x1 = LN1(x + Attn(x))`, `out = LN2(x1 + MLP(x1))`, has no
# clean identity path: the gradient from the output passes through both layer
# norms' Jacobians on its way to the input, in every block. The backward below
# reverses those four lines and is checked numerically.
#
# Exercise 3 compares the input gradient of 12 stacked blocks in three forms:
# pre-norm with residuals (the ViT block), pre-norm with the residuals removed,
# and post-norm. Without residuals the gradient must pass through every branch;
# the printed norms show what happens to it over 12 blocks.

# %%
D, heads = 16, 2


def block_params(rng):
    return {"W": rng.standard_normal((D, 3 * D)) * 0.3, "b": np.zeros(3 * D),
            "Wp": rng.standard_normal((D, D)) * 0.3, "bp": np.zeros(D),
            "W1": rng.standard_normal((D, 2 * D)) * 0.3, "b1": np.zeros(2 * D),
            "W2": rng.standard_normal((2 * D, D)) * 0.3, "b2": np.zeros(D),
            "g": np.ones(D), "be": np.zeros(D)}


def block(x, p, kind):
    """kind: 'pre' (ViT), 'pre-no-residual', 'post'. Returns (out, backward function)."""
    if kind == "post":
        a, ca = attention_forward(x, p["W"], p["b"], p["Wp"], p["bp"], heads)
        x1, cn1 = layernorm_forward(x + a, p["g"], p["be"])
        m, cm = mlp_forward(x1, p["W1"], p["b1"], p["W2"], p["b2"])
        out, cn2 = layernorm_forward(x1 + m, p["g"], p["be"])

        def backward(dout):
            ds2 = layernorm_backward(dout, cn2)[0]
            dx1 = ds2 + mlp_backward(ds2, cm)[0]
            ds1 = layernorm_backward(dx1, cn1)[0]
            return ds1 + attention_backward(ds1, ca)[0]
        return out, backward
    res = 1.0 if kind == "pre" else 0.0
    n1, cn1 = layernorm_forward(x, p["g"], p["be"])
    a, ca = attention_forward(n1, p["W"], p["b"], p["Wp"], p["bp"], heads)
    x1 = res * x + a
    n2, cn2 = layernorm_forward(x1, p["g"], p["be"])
    m, cm = mlp_forward(n2, p["W1"], p["b1"], p["W2"], p["b2"])

    def backward(dout):
        dx1 = res * dout + layernorm_backward(mlp_backward(dout, cm)[0], cn2)[0]
        return res * dx1 + layernorm_backward(attention_backward(dx1, ca)[0], cn1)[0]
    return res * x1 + m, backward


x = rng.standard_normal((2, 5, D))
p = block_params(rng)
dout = rng.standard_normal(x.shape)
for kind in ("pre", "post"):
    out, back = block(x, p, kind)
    err = rel_error(back(dout), numerical_vjp(lambda: block(x, p, kind)[0], x, dout))
    print(f"{kind}-norm block: dx relative error {err:.1e}")
    assert err < 1e-7

stack = [block_params(np.random.default_rng(s)) for s in range(12)]
for kind in ("pre", "pre-no-residual", "post"):
    h_, backs = x, []
    for p_ in stack:
        h_, back = block(h_, p_, kind)
        backs.append(back)
    g = rng.standard_normal(h_.shape)
    for back in reversed(backs):
        g = back(g)
    print(f"12 blocks, {kind:<16}: |d loss / d input| = {np.linalg.norm(g):.2e}")

# %% [markdown]
# ## Exercise 4: a (B, T, D) MLP is a (B*T, D) MLP
#
# `@` acts on the last axis only, so each token goes through the same two
# matrix products whichever way the leading axes are grouped: the same numbers,
# the same cost.

# %%
x = rng.standard_normal((4, 7, D))
W1, b1, W2, b2 = rng.standard_normal((D, 32)), rng.standard_normal(32), rng.standard_normal((32, D)), rng.standard_normal(D)
y3 = mlp_forward(x, W1, b1, W2, b2)[0]
y2 = mlp_forward(x.reshape(-1, D), W1, b1, W2, b2)[0].reshape(x.shape)
print("largest difference:", float(np.abs(y3 - y2).max()))
assert np.allclose(y3, y2)
