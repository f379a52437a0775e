"""The gradient checks must be able to fail.

Each test plants a classic backward-pass bug in one reference layer (by
monkeypatching the function wherever the reference set looks it up) and asserts
that the same whole-model gradient check used in test_model.py reports errors
far above its threshold, on the tensors the bug touches. The last test replaces
each reference function with one that raises: the model must run every one.
"""

import numpy as np
import pytest

import inspect
import sys

import tinyvit.layers as layers_pkg
import tinyvit.layers.block as block_mod
import tinyvit.layers.linear as linear_mod
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
    x, W = cache
    dx, dW, db = REAL["linear_backward"](dout, cache)
    if W.shape[0] == W.shape[1]:
        dx = dout @ W
    return dx, dW, db


def bad_gelu_backward(dout, cache):
    """Keeps only Phi(x) of the exact GELU derivative, dropping x * phi(x)."""
    x, kind = cache
    return dout * 0.5 * (1.0 + layers_pkg.erf(x / np.sqrt(2.0)))


def bad_cls_backward(dout, cache):
    """Averages the CLS gradient over the batch instead of summing it."""
    return dout[:, 1:, :], dout[:, 0:1, :].mean(axis=0, keepdims=True)


# The reference modules: tinyvit.layers and each of its submodules. A function is looked up
# by name in the module that calls it, so a replacement goes into every one that has the name.
MODULES = [layers_pkg] + [m for n, m in sorted(sys.modules.items()) if n.startswith("tinyvit.layers.")]
REAL = {name: getattr(layers_pkg, name) for name in layers_pkg.__all__}


def replace_everywhere(monkeypatch, name, replacement):
    for module in MODULES:
        if hasattr(module, name):
            monkeypatch.setattr(module, name, replacement)


BUGS = {
    "layernorm without the variance term": (
        "layernorm_backward", bad_layernorm_backward, ["blocks.0.norm1.gamma", "patch_embed.W"]),
    "softmax without the row-sum term": (
        "softmax_backward", bad_softmax_backward, ["blocks.0.attn.qkv.W"]),
    "dropped residual": (
        "block_backward", bad_block_backward, ["blocks.0.mlp.fc1.W", "cls_token"]),
    "transposed weight": (
        "linear_backward", bad_linear_backward, ["blocks.0.attn.proj.W", "images"]),
    "GELU missing x*pdf": (
        "gelu_backward", bad_gelu_backward, ["blocks.1.mlp.fc1.W"]),
    "CLS gradient averaged": (
        "cls_backward", bad_cls_backward, ["cls_token"]),
}


def test_the_check_passes_without_a_bug():
    assert max(run_check().values()) < TOL


@pytest.mark.parametrize("bug", list(BUGS))
def test_planted_bug_is_caught(monkeypatch, bug):
    name, replacement, hit = BUGS[bug]
    replace_everywhere(monkeypatch, name, replacement)
    errors = run_check()
    print(bug, {k: f"{errors[k]:.1e}" for k in hit})
    for name in hit:
        assert errors[name] > 1e-3, (bug, name, errors[name])


class Planted(Exception):
    pass


# every function of the reference set but the tables of parameter shapes (no layer)
FUNCTIONS = [n for n in layers_pkg.__all__ if inspect.isfunction(getattr(layers_pkg, n))
             and n not in ("block_param_shapes", "attn_pool_param_shapes")]


@pytest.mark.parametrize("name", FUNCTIONS)
def test_the_model_runs_every_reference_function(monkeypatch, name):
    """Replacing any reference function with one that raises makes loss_and_grads fail: every
    function a learner reads (and a student may be asked to write) is one the model runs."""
    def raises(*args, **kwargs):
        raise Planted(name)

    # the pooling and register functions run with the options that use them
    options = {"attn_pool": dict(pool="attn"), "mean_pool": dict(pool="mean"),
               "registers": dict(num_registers=1), "layerscale_block": dict(layer_scale=0.1)}
    extra = next((kw for prefix, kw in options.items() if name.startswith(prefix)), {})
    replace_everywhere(monkeypatch, name, raises)
    cfg = ViTConfig(image_size=8, in_channels=1, patch_size=4, dim=8, depth=1, heads=2, mlp_dim=8,
                    num_classes=3, pos_embed="sincos" if name == "sincos_pos_embed" else "learned",
                    **extra)
    with pytest.raises(Planted):
        ViT(cfg).loss_and_grads(np.zeros((2, 8, 8, 1), np.float32), np.array([0, 1]))
