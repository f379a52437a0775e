"""tinyvit against PyTorch, in float64: the same ViT written with torch ops in
timm's layout (a Conv2d patch embedding, torch Linear weights (out, in)), the
same parameters, and autograd for the reference gradients.

Skipped when torch is not installed (it is not a dependency; .ci/run installs
it when the machine offers it)."""

import numpy as np
import pytest

from tinyvit import ViT, ViTConfig

torch = pytest.importorskip("torch")
F = torch.nn.functional


def torch_vit(cfg, params):
    """A timm-style forward from torch tensors named as timm names them."""
    t = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    P, C, D = cfg.patch_size, cfg.in_channels, cfg.dim
    h, d = cfg.heads, cfg.head_dim

    def forward(images):
        x = torch.tensor(images).permute(0, 3, 1, 2)                # NCHW, as timm
        conv_w = t["patch_embed.W"].reshape(P, P, C, D).permute(3, 2, 0, 1)   # (D, C, P, P)
        x = F.conv2d(x, conv_w, t["patch_embed.b"], stride=P)      # (B, D, gh, gw)
        x = x.flatten(2).transpose(1, 2)                           # (B, N, D)
        B = x.shape[0]
        x = torch.cat([t["cls_token"].expand(B, -1, -1), x], dim=1)
        if cfg.pos_embed == "learned":
            x = x + t["pos_embed"]
        else:
            from tinyvit.layers import sincos_pos_embed
            x = x + torch.tensor(sincos_pos_embed(*cfg.grid, D, dtype=np.float64))
        T = x.shape[1]
        approx = "none" if cfg.gelu == "exact" else "tanh"
        for i in range(cfg.depth):
            p = lambda n: t[f"blocks.{i}.{n}"]
            y = F.layer_norm(x, (D,), p("norm1.gamma"), p("norm1.beta"), eps=1e-6)
            qkv = F.linear(y, p("attn.qkv.W").T, p("attn.qkv.b"))
            qkv = qkv.reshape(B, T, 3, h, d).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
            a = torch.softmax(q @ k.transpose(-2, -1) * d ** -0.5, dim=-1)
            y = (a @ v).transpose(1, 2).reshape(B, T, D)
            x = x + F.linear(y, p("attn.proj.W").T, p("attn.proj.b"))
            y = F.layer_norm(x, (D,), p("norm2.gamma"), p("norm2.beta"), eps=1e-6)
            y = F.gelu(F.linear(y, p("mlp.fc1.W").T, p("mlp.fc1.b")), approximate=approx)
            x = x + F.linear(y, p("mlp.fc2.W").T, p("mlp.fc2.b"))
        x = F.layer_norm(x, (D,), t["norm.gamma"], t["norm.beta"], eps=1e-6)
        pooled = x[:, 0] if cfg.pool == "cls" else x[:, 1:].mean(1)
        return F.linear(pooled, t["head.W"].T, t["head.b"])

    return t, forward


@pytest.mark.parametrize("kw", [
    dict(pool="cls", gelu="exact", pos_embed="learned"),
    dict(pool="mean", gelu="tanh", pos_embed="learned"),
    dict(pool="cls", gelu="exact", pos_embed="sincos", image_size=(16, 24), heads=3, dim=24),
])
def test_logits_and_every_gradient_match_torch(kw):
    base = dict(image_size=16, in_channels=3, patch_size=4, dim=16, depth=2, heads=4,
                mlp_dim=32, num_classes=5, dtype="float64", seed=0)
    cfg = ViTConfig(**{**base, **kw})
    model = ViT(cfg)
    rng = np.random.default_rng(0)
    for v in model.params.values():
        v += rng.standard_normal(v.shape) * 0.2
    H, W = cfg.image_hw
    images = rng.random((4, H, W, 3))
    labels = np.array([0, 4, 2, 1])

    loss, grads, logits = model.loss_and_grads(images, labels, label_smoothing=0.1)

    t, forward = torch_vit(cfg, model.params)
    ref_logits = forward(images)
    ref_loss = F.cross_entropy(ref_logits, torch.tensor(labels), label_smoothing=0.1)
    ref_loss.backward()

    np.testing.assert_allclose(logits, ref_logits.detach().numpy(), rtol=1e-12, atol=1e-13)
    assert loss == pytest.approx(ref_loss.item(), rel=1e-12)
    for name, g in grads.items():
        np.testing.assert_allclose(g, t[name].grad.numpy(), rtol=1e-10, atol=1e-13, err_msg=name)


def test_float32_forward_matches_torch_float32():
    cfg = ViTConfig(image_size=16, in_channels=3, patch_size=4, dim=32, depth=3, heads=4,
                    mlp_dim=64, num_classes=5)
    model = ViT(cfg)
    images = np.random.default_rng(1).random((8, 16, 16, 3)).astype(np.float32)
    logits = model(images)
    _, forward = torch_vit(cfg, {k: v.astype(np.float64) for k, v in model.params.items()})
    ref = forward(images.astype(np.float64)).detach().numpy()
    np.testing.assert_allclose(logits, ref, atol=1e-5)
