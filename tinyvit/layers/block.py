"""The pre-norm transformer block.

  x = x + Attention(LayerNorm1(x))     residual 1
  x = x + MLP(LayerNorm2(x))           residual 2

In the backward, each residual sends the incoming gradient down two paths,
through the branch and straight past it, and the two add up at the input.
Forgetting the "+ dout" of the straight path is the dropped-residual bug.
"""

from __future__ import annotations

from .attention import attention_backward, attention_forward
from .layernorm import layernorm_backward, layernorm_forward
from .mlp import mlp_backward, mlp_forward

# The block's parameter names and shapes (prefix-free; the model prepends "blocks.{i}.").
# D is the token width, M the MLP's hidden width.
BLOCK_PARAM_SHAPES = {
    "norm1.gamma": ("D",), "norm1.beta": ("D",),
    "attn.qkv.W": ("D", "3D"), "attn.qkv.b": ("3D",),
    "attn.proj.W": ("D", "D"), "attn.proj.b": ("D",),
    "norm2.gamma": ("D",), "norm2.beta": ("D",),
    "mlp.fc1.W": ("D", "M"), "mlp.fc1.b": ("M",),
    "mlp.fc2.W": ("M", "D"), "mlp.fc2.b": ("D",),
}
BLOCK_PARAMS = tuple(BLOCK_PARAM_SHAPES)


def block_param_shapes(D: int, M: int, layer_scale: bool = False) -> dict[str, tuple[int, ...]]:
    """The block's parameter shapes for width D and MLP width M, in forward order (with
    layer_scale, the two LayerScale vectors "ls1.gamma" and "ls2.gamma" too)."""
    size = {"D": D, "3D": 3 * D, "M": M}
    shapes = {}
    for name, dims in BLOCK_PARAM_SHAPES.items():
        shapes[name] = tuple(size[s] for s in dims)
        if layer_scale and name in ("attn.proj.b", "mlp.fc2.b"):     # each branch's last layer
            shapes["ls1.gamma" if name == "attn.proj.b" else "ls2.gamma"] = (D,)
    return shapes


def block_forward(x, p: dict, heads: int, gelu: str = "exact"):
    """x (B, T, D), p the block's parameters by prefix-free name -> (out (B, T, D), cache)."""
    n1, c_n1 = layernorm_forward(x, p["norm1.gamma"], p["norm1.beta"])
    a, c_attn = attention_forward(n1, p["attn.qkv.W"], p["attn.qkv.b"],
                                  p["attn.proj.W"], p["attn.proj.b"], heads)
    x = x + a                                            # residual 1
    n2, c_n2 = layernorm_forward(x, p["norm2.gamma"], p["norm2.beta"])
    m, c_mlp = mlp_forward(n2, p["mlp.fc1.W"], p["mlp.fc1.b"],
                           p["mlp.fc2.W"], p["mlp.fc2.b"], gelu)
    out = x + m                                          # residual 2
    return out, (c_n1, c_attn, c_n2, c_mlp)


def block_backward(dout, cache):
    """dout (B, T, D) -> dx (B, T, D), grads (dict, the prefix-free names of BLOCK_PARAMS)."""
    # BEGIN SOLUTION block_backward
    c_n1, c_attn, c_n2, c_mlp = cache
    g = {}
    # out = x + m: the gradient reaches x directly and through the MLP branch
    dn2, g["mlp.fc1.W"], g["mlp.fc1.b"], g["mlp.fc2.W"], g["mlp.fc2.b"] = mlp_backward(dout, c_mlp)
    dx_mlp, g["norm2.gamma"], g["norm2.beta"] = layernorm_backward(dn2, c_n2)
    dx = dout + dx_mlp
    # x = x_in + a: the same two paths around the attention branch
    dn1, g["attn.qkv.W"], g["attn.qkv.b"], g["attn.proj.W"], g["attn.proj.b"] = \
        attention_backward(dx, c_attn)
    dx_attn, g["norm1.gamma"], g["norm1.beta"] = layernorm_backward(dn1, c_n1)
    return dx + dx_attn, g
    # END SOLUTION
