"""tinyvit: a Vision Transformer in NumPy, every forward and backward by hand.

    >>> import numpy as np, tinyvit
    >>> model = tinyvit.ViT(tinyvit.ViTConfig(image_size=28, in_channels=1, patch_size=7))
    >>> logits, cache = model.forward(np.zeros((2, 28, 28, 1), np.float32))
    >>> cache["attn"][0].shape          # block 0's attention: (B, heads, T, T)
    (2, 4, 17, 17)
"""

__version__ = "0.1.0"

from .model import ViT, ViTConfig, init_params, param_shapes

__all__ = ["ViT", "ViTConfig", "init_params", "param_shapes", "__version__"]
