"""The pre-norm transformer block.

  x = x + Attention(LayerNorm1(x))     residual 1
  x = x + MLP(LayerNorm2(x))           residual 2

In the backward, each residual sends the incoming gradient down two paths,
through the branch and straight past it, and the two add up at the input.
Forgetting the "+ dout" of the straight path is the dropped-residual bug.

With queries=n only the first n tokens come out (n = 1: the CLS token alone,
as the model's last block runs when only the CLS state reaches the head):
every token still feeds attention its key and value, but only those n get
the attention output, the residuals and the MLP.
"""

from __future__ import annotations

from .attention import attention_backward, attention_forward
from .layernorm import layernorm_backward, layernorm_forward
from .mlp import mlp_backward, mlp_forward

# The block's parameter names (prefix-free; the model prepends "blocks.{i}.").
BLOCK_PARAMS = ("norm1.gamma", "norm1.beta", "attn.qkv.W", "attn.qkv.b", "attn.proj.W",
                "attn.proj.b", "norm2.gamma", "norm2.beta", "mlp.fc1.W", "mlp.fc1.b",
                "mlp.fc2.W", "mlp.fc2.b")


def block_forward(x, p: dict, heads: int, gelu: str = "exact", queries: int | None = None):
    """x (B, T, D), p the block's parameters by prefix-free name -> (out (B, n, D), cache).

    n = T, or the first ``queries`` tokens only."""
    n1, c_n1 = layernorm_forward(x, p["norm1.gamma"], p["norm1.beta"])
    a, c_attn = attention_forward(n1, p["attn.qkv.W"], p["attn.qkv.b"],
                                  p["attn.proj.W"], p["attn.proj.b"], heads, queries)   # (B, n, D)
    x = x[:, :a.shape[1]] + a                            # residual 1 (all T rows unless queries=n)
    n2, c_n2 = layernorm_forward(x, p["norm2.gamma"], p["norm2.beta"])
    m, c_mlp = mlp_forward(n2, p["mlp.fc1.W"], p["mlp.fc1.b"],
                           p["mlp.fc2.W"], p["mlp.fc2.b"], gelu)
    out = x + m                                          # residual 2
    return out, (c_n1, c_attn, c_n2, c_mlp)


def block_backward(dout, cache):
    """dout (B, n, D) -> dx (B, T, D), grads (dict, same prefix-free names as the parameters)."""
    # BEGIN SOLUTION block_backward
    c_n1, c_attn, c_n2, c_mlp = cache
    g = {}
    # out = x + m: the gradient reaches x directly and through the MLP branch
    dn2, g["mlp.fc1.W"], g["mlp.fc1.b"], g["mlp.fc2.W"], g["mlp.fc2.b"] = mlp_backward(dout, c_mlp)
    dx_branch, g["norm2.gamma"], g["norm2.beta"] = layernorm_backward(dn2, c_n2)
    dx = dout + dx_branch
    # x = x_in + a: the same two paths around the attention branch
    dn1, g["attn.qkv.W"], g["attn.qkv.b"], g["attn.proj.W"], g["attn.proj.b"] = \
        attention_backward(dx, c_attn)
    dx_branch, g["norm1.gamma"], g["norm1.beta"] = layernorm_backward(dn1, c_n1)   # (B, T, D)
    dx_branch[:, :dx.shape[1]] += dx                     # + the straight path (the first n rows)
    return dx_branch, g
    # END SOLUTION
