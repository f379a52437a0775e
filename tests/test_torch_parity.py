"""tinyvit against PyTorch, in float64: the same ViT written with torch ops in
timm's layout (tinyvit.torch_reference: a Conv2d patch embedding on NCHW images),
the same parameters, and autograd for the reference gradients. Both layer sets.

Skipped when torch is not installed (it is not a dependency; .ci/run installs
it when the machine offers it)."""

import numpy as np
import pytest

from tinyvit import ViT, ViTConfig

torch = pytest.importorskip("torch")
F = torch.nn.functional
from tinyvit.torch_reference import TorchViT  # noqa: E402  (needs torch)


@pytest.mark.parametrize("kw", [
    dict(pool="cls", gelu="exact", pos_embed="learned"),
    dict(pool="mean", gelu="tanh", pos_embed="learned"),
    dict(pool="cls", gelu="exact", pos_embed="sincos", image_size=(16, 24), heads=3, dim=24),
    dict(pool="mean", gelu="exact", pos_embed="learned", layer_scale=0.1),
])
@pytest.mark.parametrize("layers", ["reference", "fast"])
def test_logits_and_every_gradient_match_torch(kw, layers):
    base = dict(image_size=16, in_channels=3, patch_size=4, dim=16, depth=2, heads=4,
                mlp_dim=32, num_classes=5, dtype="float64", seed=0)
    cfg = ViTConfig(**{**base, **kw})
    model = ViT(cfg, layers=layers)
    rng = np.random.default_rng(0)
    for v in model.params.values():
        v += rng.standard_normal(v.shape) * 0.2
    H, W = cfg.image_hw
    images = rng.random((4, H, W, 3))
    labels = np.array([0, 4, 2, 1])

    loss, grads, logits = model.loss_and_grads(images, labels, label_smoothing=0.1)

    ref = TorchViT(cfg, model.params)
    ref_logits = ref(images)
    ref_loss = F.cross_entropy(ref_logits, torch.tensor(labels), label_smoothing=0.1)
    ref_loss.backward()

    np.testing.assert_allclose(logits, ref_logits.detach().numpy(), rtol=1e-12, atol=1e-13)
    assert loss == pytest.approx(ref_loss.item(), rel=1e-12)
    for name, g in grads.items():
        np.testing.assert_allclose(g, ref.grads()[name], rtol=1e-10, atol=1e-13, err_msg=name)


def test_float32_forward_matches_torch_float32():
    cfg = ViTConfig(image_size=16, in_channels=3, patch_size=4, dim=32, depth=3, heads=4,
                    mlp_dim=64, num_classes=5)
    model = ViT(cfg)
    images = np.random.default_rng(1).random((8, 16, 16, 3)).astype(np.float32)
    logits = model(images)
    ref = TorchViT(ViTConfig(**{**cfg.to_dict(), "dtype": "float64"}),
                   {k: v.astype(np.float64) for k, v in model.params.items()})
    ref = ref(images.astype(np.float64)).detach().numpy()
    np.testing.assert_allclose(logits, ref, atol=1e-5)
