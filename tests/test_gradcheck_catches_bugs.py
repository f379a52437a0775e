"""The gradient checks must be able to fail.

Each test plants a classic backward-pass bug in one layer (by monkeypatching
the function the model calls) and asserts that the same whole-model gradient
check used in test_model.py reports errors far above its threshold, on the
tensors the bug touches.
"""

import numpy as np
import pytest

import tinyvit.layers.attention as attention_mod
import tinyvit.layers.block as block_mod
import tinyvit.layers.linear as linear_mod
import tinyvit.layers.mlp as mlp_mod
import tinyvit.model as model_mod
from tinyvit import ViT, ViTConfig
from tinyvit.gradcheck import check_model

TOL = 1e-7          # the threshold of the passing tests


def run_check():
    cfg = ViTConfig(image_size=8, in_channels=2, patch_size=4, dim=8, depth=2, heads=2,
                    mlp_dim=12, num_classes=3, dtype="float64", seed=0)
    model = ViT(cfg)
    rng = np.random.default_rng(1)
    for v in model.params.values():
        v += rng.standard_normal(v.shape) * 0.3
    return check_model(model, rng.random((3, 8, 8, 2)))


def bad_layernorm_backward(dout, cache):
    """Drops the variance path: dx = rstd * (g - mean(g)), no xhat * mean(g * xhat)."""
    xhat, rstd, gamma = cache
    g = dout * gamma
    dx = rstd * (g - g.mean(-1, keepdims=True))
    lead = tuple(range(xhat.ndim - 1))
    return dx, (dout * xhat).sum(lead), dout.sum(lead)


def bad_softmax_backward(dA, A):
    """Forgets the row-sum term of the softmax Jacobian: dS = A * dA."""
    return A * dA


def bad_block_backward(dout, cache):
    """The block's backward with the second residual's "dout +" missing."""
    c_n1, c_attn, c_n2, c_mlp = cache
    g = {}
    dn2, g["mlp.fc1.W"], g["mlp.fc1.b"], g["mlp.fc2.W"], g["mlp.fc2.b"] = \
        block_mod.mlp_backward(dout, c_mlp)
    dx, g["norm2.gamma"], g["norm2.beta"] = block_mod.layernorm_backward(dn2, c_n2)   # bug
    dn1, g["attn.qkv.W"], g["attn.qkv.b"], g["attn.proj.W"], g["attn.proj.b"] = \
        block_mod.attention_backward(dx, c_attn)
    dx1, g["norm1.gamma"], g["norm1.beta"] = block_mod.layernorm_backward(dn1, c_n1)
    return dx + dx1, g


def bad_linear_backward(dout, cache):
    """Uses W instead of W.T for the input gradient (a transposed weight; only square
    weights, such as the attention output projection, can run with it)."""
    x2, W, lead = cache
    dx, dW, db = linear_mod.linear_backward(dout, cache)
    if W.shape[0] == W.shape[1]:
        dx = (dout.reshape(-1, W.shape[1]) @ W).reshape(*lead, W.shape[0])
    return dx, dW, db


def bad_gelu_backward(dout, cache):
    """Keeps only Phi(x) of the exact GELU derivative, dropping x * phi(x)."""
    x, kind, (cdf, pdf) = cache
    return dout * cdf


def bad_cls_backward(dout, cache):
    """Averages the CLS gradient over the batch instead of summing it."""
    return dout[:, 1:, :], dout[:, 0:1, :].mean(axis=0, keepdims=True)


BUGS = {
    "layernorm without the variance term": (
        [(block_mod, "layernorm_backward"), (model_mod, "layernorm_backward")],
        bad_layernorm_backward, ["blocks.0.norm1.gamma", "patch_embed.W"]),
    "softmax without the row-sum term": (
        [(attention_mod, "softmax_backward")], bad_softmax_backward, ["blocks.0.attn.qkv.W"]),
    "dropped residual": (
        [(model_mod, "block_backward")], bad_block_backward, ["blocks.0.mlp.fc1.W", "cls_token"]),
    "transposed weight": (
        [(attention_mod, "linear_backward")], bad_linear_backward, ["blocks.0.attn.qkv.W", "images"]),
    "GELU missing x*pdf": (
        [(mlp_mod, "gelu_backward")], bad_gelu_backward, ["blocks.1.mlp.fc1.W"]),
    "CLS gradient averaged": (
        [(model_mod, "cls_backward")], bad_cls_backward, ["cls_token"]),
}


def test_the_check_passes_without_a_bug():
    assert max(run_check().values()) < TOL


@pytest.mark.parametrize("bug", list(BUGS))
def test_planted_bug_is_caught(monkeypatch, bug):
    targets, replacement, hit = BUGS[bug]
    for module, name in targets:
        monkeypatch.setattr(module, name, replacement)
    errors = run_check()
    print(bug, {k: f"{errors[k]:.1e}" for k in hit})
    for name in hit:
        assert errors[name] > 1e-3, (bug, name, errors[name])
