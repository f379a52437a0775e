"""The transformer block with LayerScale.

LayerScale (Touvron et al. 2021, "Going deeper with image transformers"; used by DeiT-III
and DINOv2) multiplies each branch's output, channel by channel, by a learned vector
before its residual:

  x = x + ls1 * Attention(LayerNorm1(x))
  x = x + ls2 * MLP(LayerNorm2(x))

The vectors start small (timm's init_values, e.g. 1e-5 or 0.1), so a deep network starts
close to the identity. The model runs this pair when its config sets layer_scale; the
plain block (block.py) is the one to read first.
"""

from __future__ import annotations

from .attention import attention_backward, attention_forward
from .layernorm import layernorm_backward, layernorm_forward
from .mlp import mlp_backward, mlp_forward


def layerscale_block_forward(x, p: dict, heads: int, gelu: str = "exact"):
    """x (B, T, D), p the block's parameters with "ls1.gamma" and "ls2.gamma" (D,) ->
    (out (B, T, D), cache)."""
    n1, c_n1 = layernorm_forward(x, p["norm1.gamma"], p["norm1.beta"])
    a, c_attn = attention_forward(n1, p["attn.qkv.W"], p["attn.qkv.b"],
                                  p["attn.proj.W"], p["attn.proj.b"], heads)
    x = x + p["ls1.gamma"] * a                           # residual 1, the branch scaled
    n2, c_n2 = layernorm_forward(x, p["norm2.gamma"], p["norm2.beta"])
    m, c_mlp = mlp_forward(n2, p["mlp.fc1.W"], p["mlp.fc1.b"],
                           p["mlp.fc2.W"], p["mlp.fc2.b"], gelu)
    out = x + p["ls2.gamma"] * m                         # residual 2, the branch scaled
    return out, (c_n1, c_attn, a, p["ls1.gamma"], c_n2, c_mlp, m, p["ls2.gamma"])


def layerscale_block_backward(dout, cache):
    """dout (B, T, D) -> dx (B, T, D), grads (the block's names with "ls1.gamma", "ls2.gamma")."""
    c_n1, c_attn, a, ls1, c_n2, c_mlp, m, ls2 = cache
    D = dout.shape[-1]
    g = {}
    # out = x + ls2 * m: ls2 is shared by every token, so its gradient sums over them
    g["ls2.gamma"] = (dout * m).reshape(-1, D).sum(axis=0)
    dn2, g["mlp.fc1.W"], g["mlp.fc1.b"], g["mlp.fc2.W"], g["mlp.fc2.b"] = \
        mlp_backward(dout * ls2, c_mlp)
    dx_mlp, g["norm2.gamma"], g["norm2.beta"] = layernorm_backward(dn2, c_n2)
    dx = dout + dx_mlp
    # x = x_in + ls1 * a
    g["ls1.gamma"] = (dx * a).reshape(-1, D).sum(axis=0)
    dn1, g["attn.qkv.W"], g["attn.qkv.b"], g["attn.proj.W"], g["attn.proj.b"] = \
        attention_backward(dx * ls1, c_attn)
    dx_attn, g["norm1.gamma"], g["norm1.beta"] = layernorm_backward(dn1, c_n1)
    return dx + dx_attn, g
