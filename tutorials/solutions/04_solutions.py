# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Worked solutions: 4. Attention
#
# Withhold this folder from students if you grade the exercises (see
# `01_solutions.py`). Every answer is computed and checked below. To stay
# independent of the library's internals, the solutions write their own small
# attention forward and backward (the formulas of tutorial 4) where they need to
# change it.

# %%
import time

import numpy as np

from tinyvit.gradcheck import check_layer, format_errors
from tinyvit.layers import attention_forward, softmax

rng = np.random.default_rng(0)
B, T, D, h = 1, 5, 8, 2
d = D // h
x = rng.standard_normal((B, T, D))
Wqkv = rng.standard_normal((D, 3 * D)) * 0.5
bqkv = rng.standard_normal(3 * D) * 0.1
Wproj = rng.standard_normal((D, D)) * 0.3
bproj = rng.standard_normal(D) * 0.1


def attn(x, Wqkv, bqkv, Wproj, bproj, heads, scaled=True, softmax_sum=True):
    """Multi-head attention with its own backward; the flags switch the scale and the softmax term."""
    Bn, Tn, Dn = x.shape
    dh = Dn // heads
    qkv = (x @ Wqkv + bqkv).reshape(Bn, Tn, 3, heads, dh).transpose(2, 0, 3, 1, 4)   # 3 x (B, h, T, d)
    q, k, v = qkv
    scale = 1 / np.sqrt(dh) if scaled else 1.0
    A = softmax(q @ k.swapaxes(-1, -2) * scale)                                     # (B, h, T, T)
    o = (A @ v).transpose(0, 2, 1, 3).reshape(Bn, Tn, Dn)                            # (B, T, D)
    return o @ Wproj + bproj, (x, Wqkv, Wproj, q, k, v, A, o, scale, softmax_sum, heads)


def attn_backward(dout, cache):
    x, Wqkv, Wproj, q, k, v, A, o, scale, softmax_sum, heads = cache
    Bn, Tn, Dn = x.shape
    dWproj = o.reshape(-1, Dn).T @ dout.reshape(-1, Dn)
    dbproj = dout.sum((0, 1))
    do = (dout @ Wproj.T).reshape(Bn, Tn, heads, -1).transpose(0, 2, 1, 3)          # (B, h, T, d)
    dA = do @ v.swapaxes(-1, -2)
    dv = A.swapaxes(-1, -2) @ do
    dS = A * (dA - (dA * A).sum(-1, keepdims=True)) if softmax_sum else A * dA      # the bug drops the sum
    dq = dS @ k * scale
    dk = dS.swapaxes(-1, -2) @ q * scale
    dqkv = np.stack([dq, dk, dv]).transpose(1, 3, 0, 2, 4).reshape(Bn, Tn, 3 * Dn)
    dWqkv = x.reshape(-1, Dn).T @ dqkv.reshape(-1, 3 * Dn)
    return dqkv @ Wqkv.T, dWqkv, dqkv.sum((0, 1)), dWproj, dbproj


inputs = {"x": x, "Wqkv": Wqkv, "bqkv": bqkv, "Wproj": Wproj, "bproj": bproj}
assert np.allclose(attn(x, Wqkv, bqkv, Wproj, bproj, h)[0], attention_forward(x, Wqkv, bqkv, Wproj, bproj, h)[0])
print(format_errors(check_layer(attn, attn_backward, inputs, kwargs={"heads": h}), 1e-7))

# %% [markdown]
# ## Exercise 1: no scaling, and a 10x larger x
#
# The scores grow like the square of x's scale (q and k both grow) and, without
# the 1/sqrt(d), with sqrt(d) as well: the softmax saturates, every row puts
# almost all its weight on one token, and since the softmax's Jacobian
# `diag(A) - A A^T` vanishes when A is one-hot, almost no gradient reaches the
# scores.

# %%
dA = rng.standard_normal((B, h, T, T))               # one random upstream gradient for both
for label, xs, scaled in [("x, scaled", x, True), ("10 x, unscaled", 10 * x, False)]:
    A = attn(xs, Wqkv, bqkv, Wproj, bproj, h, scaled=scaled)[1][6]              # (B, h, T, T)
    dS = A * (dA - (dA * A).sum(-1, keepdims=True))                             # softmax backward
    print(f"{label:<15} mean of each row's largest weight {A.max(-1).mean():.3f}, "
          f"|gradient reaching the scores| {np.linalg.norm(dS):.2e}")

# %% [markdown]
# ## Exercise 2: a loop over heads
#
# The loop gives the same output; the batched version does each product once
# for all heads. The printed times compare them at the size the tutorial asks.

# %%
def attention_loop(x, Wqkv, bqkv, Wproj, bproj, heads):
    Dn = x.shape[-1]
    dh = Dn // heads
    qkv = x @ Wqkv + bqkv
    outs = []
    for j in range(heads):
        q = qkv[..., j * dh:(j + 1) * dh]
        k = qkv[..., Dn + j * dh:Dn + (j + 1) * dh]
        v = qkv[..., 2 * Dn + j * dh:2 * Dn + (j + 1) * dh]
        outs.append(softmax(q @ k.swapaxes(-1, -2) / np.sqrt(dh)) @ v)
    return np.concatenate(outs, axis=-1) @ Wproj + bproj


xb = rng.standard_normal((64, 65, 64)).astype(np.float32)
W1 = (rng.standard_normal((64, 192)) * 0.1).astype(np.float32)
W2 = (rng.standard_normal((64, 64)) * 0.1).astype(np.float32)
b1, b2 = np.zeros(192, np.float32), np.zeros(64, np.float32)
assert np.allclose(attention_loop(xb, W1, b1, W2, b2, 4), attention_forward(xb, W1, b1, W2, b2, 4)[0], atol=1e-5)
for name, fn in [("loop over heads", lambda: attention_loop(xb, W1, b1, W2, b2, 4)),
                 ("attention_forward", lambda: attention_forward(xb, W1, b1, W2, b2, 4))]:
    t0 = time.perf_counter()
    for _ in range(5):
        fn()
    print(f"{name:<18} {(time.perf_counter() - t0) / 5 * 1e3:.1f} ms")

# %% [markdown]
# ## Exercise 3: drop the subtracted row sum in the softmax backward
#
# `dS = A * dA` instead of `A * (dA - sum_j dA_j A_j)`. Everything reached only
# through the scores fails: the input x, and the q and k parts of Wqkv and bqkv
# (so the whole fused tensors). The output projection and the values come
# after or beside the softmax and stay right: Wproj and bproj pass.

# %%
buggy = check_layer(lambda **kw: attn(**kw, softmax_sum=False), attn_backward, inputs, kwargs={"heads": h})
print(format_errors(buggy, 1e-7))
assert buggy["x"] > 1e-3 and buggy["Wqkv"] > 1e-3 and buggy["Wproj"] < 1e-7

# %% [markdown]
# ## Exercise 4: attention is permutation-equivariant
#
# Shuffling the input tokens shuffles the output rows the same way: nothing in
# attention depends on a token's place in the sequence (that is what position
# embeddings are for).

# %%
perm = rng.permutation(T)
out = attention_forward(x, Wqkv, bqkv, Wproj, bproj, h)[0]
out_perm = attention_forward(x[:, perm], Wqkv, bqkv, Wproj, bproj, h)[0]
print("output rows shuffled the same way:", np.allclose(out_perm, out[:, perm]))
assert np.allclose(out_perm, out[:, perm])
