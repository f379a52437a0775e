"""Pooling and token options: the layers' gradients, the whole model's, and known behaviours.

Options under test (tinyvit/layers/pool.py, ViTConfig): pool "cls", "mean", "mean_with_cls",
"attn"; class_token=False; num_registers=R; no_embed_class=True. Every gradient is checked
in float64 against centred differences with a random upstream gradient.
"""

import numpy as np
import pytest

from tinyvit import ViT, ViTConfig
from tinyvit import layers as L
from tinyvit.gradcheck import check_layer, check_model, format_errors, numerical_vjp, rel_error
from tinyvit.layers import attention as attention_module

from test_model import perturbed_model, tiny_config   # the same tiny float64 models

TOL = 1e-7


def attn_pool_params(rng, D, M, scale=0.4):
    p = {k: rng.standard_normal(s) * scale for k, s in L.attn_pool_param_shapes(D, M).items()}
    p["norm.gamma"] += 1.0
    return p


# --- the layers ---------------------------------------------------------------------------
@pytest.mark.parametrize("first", [0, 1, 3])
def test_mean_pool_gradient(rng, first):
    x = rng.standard_normal((3, 6, 5))
    errors = check_layer(L.mean_pool_forward, L.mean_pool_backward, {"x": x},
                         kwargs={"first": first})
    assert errors["x"] < TOL, errors


def test_mean_pool_averages_only_from_first(rng):
    x = rng.standard_normal((2, 5, 3))
    out, cache = L.mean_pool_forward(x, 2)
    np.testing.assert_allclose(out, x[:, 2:].mean(axis=1))
    dx = L.mean_pool_backward(np.ones((2, 3)), cache)
    assert np.all(dx[:, :2] == 0) and np.allclose(dx[:, 2:], 1 / 3)


@pytest.mark.parametrize("gelu", ["exact", "tanh"])
@pytest.mark.parametrize("heads", [1, 2, 4])
def test_attn_pool_gradients(rng, gelu, heads):
    B, N, D, M = 3, 5, 8, 6
    x = rng.standard_normal((B, N, D))
    p = attn_pool_params(rng, D, M)
    out, cache = L.attn_pool_forward(x, p, heads, gelu)
    assert out.shape == (B, D) and cache["attn"].shape == (B, heads, 1, N)
    np.testing.assert_allclose(cache["attn"].sum(-1), 1.0)
    dout = rng.standard_normal(out.shape)
    dx, g = L.attn_pool_backward(dout, cache)
    assert set(g) == set(L.ATTN_POOL_PARAMS)
    f = lambda: L.attn_pool_forward(x, p, heads, gelu)[0]
    errors = {"x": rel_error(dx, numerical_vjp(f, x, dout))}
    for k in p:
        errors[k] = rel_error(g[k], numerical_vjp(f, p[k], dout))
    assert max(errors.values()) < TOL, "\n" + format_errors(errors, TOL)


def test_attn_pool_latent_is_shared_by_the_batch(rng):
    """The latent's gradient is the batch sum of each image's own: a pool run on one image at a
    time must give gradients that add up to the batch's."""
    D, M = 8, 6
    x = rng.standard_normal((3, 4, D))
    p = attn_pool_params(rng, D, M)
    dout = rng.standard_normal((3, D))
    _, cache = L.attn_pool_forward(x, p, 2)
    whole = L.attn_pool_backward(dout, cache)[1]["latent"]
    parts = sum(L.attn_pool_backward(dout[i:i + 1], L.attn_pool_forward(x[i:i + 1], p, 2)[1])[1]["latent"]
                for i in range(3))
    np.testing.assert_allclose(whole, parts, rtol=1e-12)


@pytest.mark.parametrize("at", [0, 1])
def test_registers_gradient(rng, at):
    x = rng.standard_normal((3, 5, 4))
    reg = rng.standard_normal((1, 2, 4))
    out, _ = L.registers_forward(x, reg, at)
    assert out.shape == (3, 7, 4)
    np.testing.assert_array_equal(out[:, at:at + 2], np.broadcast_to(reg, (3, 2, 4)))
    np.testing.assert_array_equal(np.delete(out, [at, at + 1], axis=1), x)
    errors = check_layer(L.registers_forward, L.registers_backward, {"x": x, "reg": reg},
                         kwargs={"at": at})
    assert max(errors.values()) < TOL, errors


# --- the whole model ----------------------------------------------------------------------
OPTIONS = [
    dict(pool="cls", num_registers=2),
    dict(pool="mean", num_registers=1, gelu="tanh"),
    dict(pool="mean_with_cls"),
    dict(pool="mean", class_token=False),
    dict(pool="mean", class_token=False, num_registers=2, pos_embed="sincos"),
    dict(pool="attn"),
    dict(pool="attn", num_registers=2, no_embed_class=True, heads=4),
    dict(pool="attn", class_token=False, depth=1),
    dict(pool="cls", no_embed_class=True, num_registers=1, pos_embed="sincos", image_size=(8, 12)),
]


def _name(kw):
    return ",".join(f"{k}={v}" for k, v in kw.items())


@pytest.mark.parametrize("kw", OPTIONS, ids=_name)
def test_model_gradients_for_every_option(kw):
    cfg = tiny_config(**kw)
    model = perturbed_model(cfg)
    H, W = cfg.image_hw
    images = np.random.default_rng(2).random((3, H, W, cfg.in_channels))
    errors = check_model(model, images, max_entries=40)
    assert set(errors) == set(model.params) | {"images"}
    assert max(errors.values()) < TOL, "\n" + format_errors(errors, TOL)


@pytest.mark.parametrize("kw", [dict(pool="cls", num_registers=2), dict(pool="attn"),
                                dict(pool="mean", class_token=False, num_registers=1)], ids=_name)
def test_attention_grads_match_finite_differences(kw, monkeypatch):
    """attention_grads(dlogits)[i] is d sum(dlogits * logits) / dA_i: nudge block i's attention
    probabilities (through the softmax the attention layer calls) and watch the logits."""
    cfg = tiny_config(**kw)
    model = perturbed_model(cfg)
    images = np.random.default_rng(3).random((2, 8, 8, 2))
    logits, cache = model.forward(images)
    dlogits = np.random.default_rng(4).standard_normal(logits.shape)
    dA = model.attention_grads(dlogits, cache)
    real = attention_module.softmax_forward
    for i, A in enumerate(cache["attn"]):
        assert dA[i].shape == A.shape
        delta = np.zeros_like(A)
        calls = []

        def nudged(S, delta=delta):
            A, c = real(S)
            calls.append(1)
            if (len(calls) - 1) % cfg.depth == i:        # block i's call in each forward
                A = A + delta
            return A, c

        monkeypatch.setattr(attention_module, "softmax_forward", nudged)
        num = numerical_vjp(lambda: model(images), delta, dlogits)
        monkeypatch.setattr(attention_module, "softmax_forward", real)
        assert rel_error(dA[i], num) < TOL, f"block {i}: {rel_error(dA[i], num):.2e}"


def test_defaults_unchanged():
    cfg = ViTConfig()
    assert (cfg.pool, cfg.class_token, cfg.num_registers, cfg.no_embed_class) == ("cls", True, 0, False)
    names = list(ViT(tiny_config()).params)
    assert names[:4] == ["patch_embed.W", "patch_embed.b", "cls_token", "pos_embed"]
    assert not any(n.startswith(("reg_token", "attn_pool")) for n in names)


def test_token_layout_and_param_shapes():
    cfg = tiny_config(num_registers=3, pool="attn")
    model = ViT(cfg)
    N, D = cfg.num_patches, cfg.dim
    assert cfg.num_prefix_tokens == 4 and cfg.num_tokens == N + 4
    assert model.params["reg_token"].shape == (1, 3, D)
    assert model.params["pos_embed"].shape == (1, N + 4, D)
    assert model.params["attn_pool.kv.W"].shape == (D, 2 * D)
    assert model.params["attn_pool.mlp.fc1.W"].shape == (D, cfg.mlp_dim)
    _, cache = model.forward(np.zeros((2, 8, 8, 2)))
    assert cache["attn"][0].shape == (2, cfg.heads, N + 4, N + 4)     # registers are attended to
    assert cache["attn_pool"].shape == (2, cfg.heads, 1, N)           # the pool reads patches only
    assert ViT(tiny_config(no_embed_class=True, num_registers=2)).params["pos_embed"].shape == (1, N, D)
    nocls = ViT(tiny_config(class_token=False, pool="mean"))
    assert "cls_token" not in nocls.params and nocls.config.num_tokens == N


def test_registers_are_never_pooled():
    """A register changes the logits only through attention: with depth 0 blocks reading it
    (here: zero attention and MLP weights) the pooled mean ignores it."""
    for pool in ("cls", "mean", "attn"):
        model = perturbed_model(tiny_config(pool=pool, num_registers=2))
        for k in model.params:
            if k.startswith("blocks.") and (k.endswith("proj.W") or k.endswith("fc2.W")):
                model.params[k][...] = 0.0                # blocks add nothing: tokens stay apart
        images = np.random.default_rng(0).random((2, 8, 8, 2))
        before = model(images)
        model.params["reg_token"] += 5.0
        np.testing.assert_allclose(model(images), before, rtol=0, atol=1e-12)


def test_mean_with_cls_differs_from_mean_by_the_cls_token():
    model = perturbed_model(tiny_config(pool="mean"))
    pitfall = ViT(tiny_config(pool="mean_with_cls"), dict(model.params))
    images = np.random.default_rng(0).random((2, 8, 8, 2))
    tokens = model.forward(images)[1]["tokens"]
    want = tokens.mean(axis=1) @ model.params["head.W"] + model.params["head.b"]
    np.testing.assert_allclose(pitfall(images), want, rtol=1e-12)
    assert not np.allclose(pitfall(images), model(images))


def test_attn_pool_latent_init_follows_timm():
    p = ViT(ViTConfig(dim=64, pool="attn", seed=3)).params["attn_pool.latent"]
    assert p.shape == (1, 1, 64) and np.abs(p).max() <= 2 * 64 ** -0.5
    assert 0.5 * 64 ** -0.5 < p.std() < 1.2 * 64 ** -0.5
    reg = ViT(ViTConfig(num_registers=4)).params["reg_token"]
    assert np.abs(reg).max() < 1e-5


@pytest.mark.parametrize("kw, exc, pattern", [
    (dict(class_token=False, pool="cls"), ValueError, "pool: expected 'mean' or 'attn'"),
    (dict(class_token=False, pool="mean_with_cls"), ValueError, "class_token=False"),
    (dict(pool="max"), ValueError, "pool"),
    (dict(num_registers=-1), ValueError, "num_registers"),
    (dict(num_registers=1.5), TypeError, "num_registers"),
    (dict(class_token=1), TypeError, "class_token: expected True or False"),
    (dict(no_embed_class="yes"), TypeError, "no_embed_class"),
])
def test_bad_token_options(kw, exc, pattern):
    with pytest.raises(exc, match=pattern):
        ViTConfig(**kw)


def test_config_round_trip_keeps_the_options():
    cfg = ViTConfig(pool="attn", num_registers=2, no_embed_class=True, class_token=False)
    assert ViTConfig.from_dict(cfg.to_dict()) == cfg
    old = ViTConfig().to_dict()
    for k in ("class_token", "num_registers", "no_embed_class"):
        old.pop(k)
    assert ViTConfig.from_dict(old) == ViTConfig()     # a config saved before these fields


def test_cls_only_last_block_with_registers():
    model = perturbed_model(tiny_config(pool="cls", num_registers=2)).using("fast")
    images = np.random.default_rng(5).random((3, 8, 8, 2))
    full, c_full = model.forward(images)
    short, c_short = model.forward(images, last_block_cls_only=True)
    np.testing.assert_allclose(short, full, rtol=1e-10)
    d = np.random.default_rng(6).standard_normal(full.shape)
    g_full, g_short = model.backward(d, c_full), model.backward(d, c_short)
    for k in g_full:
        assert rel_error(g_short[k], g_full[k]) < 1e-10, k


@pytest.mark.parametrize("kw", [{}, dict(pool="attn", num_registers=2, no_embed_class=True)], ids=_name)
def test_residual_streams_add_up_to_the_forward(kw):
    """x_in + attention branch + MLP branch = each block's output, and the last block's output
    through the final norm is the forward's cache["tokens"]."""
    model = perturbed_model(tiny_config(**kw))
    images = np.random.default_rng(0).random((2, 8, 8, 2))
    s = model.residual_streams(images)
    _, cache = model.forward(images)
    x = s["embed"]
    assert x.shape == (2, model.config.num_tokens, 8)
    for b in s["blocks"]:
        np.testing.assert_allclose(x + b["attn"] + b["mlp"], b["out"], rtol=1e-12)
        x = b["out"]
    p = model.params
    final = L.layernorm_forward(x, p["norm.gamma"], p["norm.beta"])[0]
    np.testing.assert_allclose(final, cache["tokens"], rtol=1e-12)
    # the attention branch is what the block adds before its MLP: zero attention output
    # weights make it zero, the MLP branch unchanged in form
    model.params["blocks.0.attn.proj.W"][...] = 0
    model.params["blocks.0.attn.proj.b"][...] = 0
    assert np.all(model.residual_streams(images)["blocks"][0]["attn"] == 0)
