"""The same ViT in PyTorch: the reference for the parity tests and the benchmark.

Written with torch ops as timm's VisionTransformer computes them (a Conv2d patch
embedding on NCHW images, pre-norm blocks with a fused qkv, layer norm eps 1e-6, the
GELU of the config), on parameters named and shaped as tinyvit's (``blocks.0.attn.qkv.W``
is (D, 3D); timm stores its transpose). PyTorch is not a dependency of tinyvit: import
this module only where torch is installed.

    >>> ref = TorchViT(model.config, model.params)      # copies of tinyvit's parameters
    >>> logits = ref(images)                             # images (B, H, W, C), NumPy
    >>> ref.grads()                                      # after .backward(): tinyvit names
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .layers import sincos_pos_embed
from .model import ViTConfig, init_params


class TorchViT(torch.nn.Module):
    """A ViT with the config's architecture; parameters from ``params`` (tinyvit names and
    layout) or tinyvit's initialisation, in the config's dtype."""

    def __init__(self, cfg: ViTConfig, params: dict | None = None):
        super().__init__()
        self.cfg = cfg
        params = init_params(cfg) if params is None else params
        self.weights = torch.nn.ParameterDict(
            {_key(name): torch.nn.Parameter(torch.tensor(np.asarray(value)))
             for name, value in params.items()})
        self.fixed_pos = None
        if cfg.pos_embed == "sincos":
            self.fixed_pos = torch.tensor(sincos_pos_embed(*cfg.grid, cfg.dim, dtype=cfg.dtype))

    def p(self, name: str) -> torch.nn.Parameter:
        return self.weights[_key(name)]

    def named_tinyvit_parameters(self):
        """(tinyvit name, parameter) pairs."""
        return [(k.replace("__", "."), v) for k, v in self.weights.items()]

    def grads(self) -> dict:
        """The gradients after a backward, as NumPy arrays under tinyvit's names."""
        return {name: v.grad.detach().numpy() for name, v in self.named_tinyvit_parameters()}

    def forward(self, images) -> torch.Tensor:
        cfg, p = self.cfg, self.p
        P, C, D, h, d = cfg.patch_size, cfg.in_channels, cfg.dim, cfg.heads, cfg.head_dim
        x = torch.as_tensor(images).permute(0, 3, 1, 2)              # NCHW, as timm
        conv_w = p("patch_embed.W").reshape(P, P, C, D).permute(3, 2, 0, 1)   # (D, C, P, P)
        x = F.conv2d(x, conv_w, p("patch_embed.b"), stride=P)       # (B, D, gh, gw)
        x = x.flatten(2).transpose(1, 2)                            # (B, N, D)
        B = x.shape[0]
        x = torch.cat([p("cls_token").expand(B, -1, -1), x], dim=1)  # (B, T, D)
        x = x + (p("pos_embed") if self.fixed_pos is None else self.fixed_pos)
        T = x.shape[1]
        approximate = "none" if cfg.gelu == "exact" else "tanh"
        for i in range(cfg.depth):
            b = lambda name: p(f"blocks.{i}.{name}")
            y = F.layer_norm(x, (D,), b("norm1.gamma"), b("norm1.beta"), eps=1e-6)
            qkv = F.linear(y, b("attn.qkv.W").T, b("attn.qkv.b"))
            q, k, v = qkv.reshape(B, T, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
            a = torch.softmax(q @ k.transpose(-2, -1) * d ** -0.5, dim=-1)
            y = (a @ v).transpose(1, 2).reshape(B, T, D)
            y = F.linear(y, b("attn.proj.W").T, b("attn.proj.b"))
            x = x + (y if cfg.layer_scale is None else b("ls1.gamma") * y)
            y = F.layer_norm(x, (D,), b("norm2.gamma"), b("norm2.beta"), eps=1e-6)
            y = F.gelu(F.linear(y, b("mlp.fc1.W").T, b("mlp.fc1.b")), approximate=approximate)
            y = F.linear(y, b("mlp.fc2.W").T, b("mlp.fc2.b"))
            x = x + (y if cfg.layer_scale is None else b("ls2.gamma") * y)
        x = F.layer_norm(x, (D,), p("norm.gamma"), p("norm.beta"), eps=1e-6)
        pooled = x[:, 0] if cfg.pool == "cls" else x[:, 1:].mean(1)
        return F.linear(pooled, p("head.W").T, p("head.b"))


def _key(name: str) -> str:
    return name.replace(".", "__")                      # ParameterDict keys cannot hold dots
