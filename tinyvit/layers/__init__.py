"""Every layer of a ViT as a pair of pure functions.

A forward takes arrays and parameters and returns ``(out, cache)``; its
backward takes ``(dout, cache)`` and returns the gradient of every input and
parameter. Nothing is hidden in objects: the model composes these pairs.
"""

from .attention import (attention_backward, attention_forward, merge_heads, softmax,
                        softmax_backward, softmax_forward, split_heads)
from .block import BLOCK_PARAMS, block_backward, block_forward
from .layernorm import EPS, layernorm_backward, layernorm_forward
from .linear import linear_backward, linear_forward
from .loss import softmax_cross_entropy
from .mlp import erf, gelu_backward, gelu_forward, mlp_backward, mlp_forward
from .patches import patchify, patchify_backward, patchify_forward, unpatchify
from .tokens import cls_backward, cls_forward, pos_backward, pos_forward, sincos_pos_embed

__all__ = [name for name in dir() if not name.startswith("_")]
