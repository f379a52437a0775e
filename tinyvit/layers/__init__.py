"""Every layer of a ViT as a pair of pure functions, in textbook form.

A forward takes arrays and parameters and returns ``(out, cache)``; its
backward takes ``(dout, cache)`` and returns the gradient of every input and
parameter. Nothing is hidden in objects: the model composes these pairs.

This is the reference set: what a learner reads, what a student writes in an
assignment, and what ``ViT(config)`` runs by default. ``tinyvit.fast_layers``
has the same functions with speed tricks, tested equal to these.
"""

from .attention import (attention_backward, attention_forward, merge_heads, softmax,
                        softmax_backward, softmax_forward, split_heads)
from .block import BLOCK_PARAMS, block_backward, block_forward, block_param_shapes
from .layernorm import EPS, layernorm_backward, layernorm_forward
from .layerscale import layerscale_block_backward, layerscale_block_forward
from .linear import linear_backward, linear_forward
from .loss import log_softmax, softmax_cross_entropy
from .mlp import erf, gelu_backward, gelu_forward, mlp_backward, mlp_forward
from .patches import patchify, patchify_backward, patchify_forward, unpatchify
from .pool import (ATTN_POOL_PARAMS, attn_pool_backward, attn_pool_forward, attn_pool_param_shapes,
                   mean_pool_backward, mean_pool_forward, registers_backward, registers_forward)
from .tokens import cls_backward, cls_forward, pos_backward, pos_forward, sincos_pos_embed

SUPPORTS_QUERIES = False     # no n_queries=: attention_forward and block_forward compute every token

__all__ = ["attention_backward", "attention_forward", "merge_heads", "softmax", "softmax_backward",
           "softmax_forward", "split_heads", "BLOCK_PARAMS", "block_backward", "block_forward",
           "block_param_shapes", "layerscale_block_backward", "layerscale_block_forward", "EPS", "layernorm_backward", "layernorm_forward",
           "linear_backward", "linear_forward", "log_softmax", "softmax_cross_entropy", "erf",
           "gelu_backward", "gelu_forward", "mlp_backward", "mlp_forward", "patchify",
           "patchify_backward", "patchify_forward", "unpatchify", "cls_backward", "cls_forward",
           "pos_backward", "pos_forward", "sincos_pos_embed", "ATTN_POOL_PARAMS", "attn_pool_backward",
           "attn_pool_forward", "attn_pool_param_shapes", "mean_pool_backward", "mean_pool_forward",
           "registers_backward", "registers_forward"]
from .box import *  # noqa: E402,F401,F403  (box head, L1 and GIoU losses, query pool: layers/box.py)
