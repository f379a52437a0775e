"""The whole ViT: end-to-end gradient checks, known behaviours and bad input."""

import numpy as np
import pytest

from tinyvit import ViT, ViTConfig
from tinyvit.gradcheck import check_model, format_errors

TOL = 1e-7


def tiny_config(**kw):
    base = dict(image_size=8, in_channels=2, patch_size=4, dim=8, depth=2, heads=2, mlp_dim=12,
                num_classes=3, dtype="float64", seed=0)
    base.update(kw)
    return ViTConfig(**base)


def perturbed_model(cfg, seed=1, scale=0.3):
    """A model whose parameters are far from their initial values (zero biases and unit
    layer-norm scales would hide bugs in the terms they multiply)."""
    model = ViT(cfg)
    rng = np.random.default_rng(seed)
    for k, v in model.params.items():
        v += rng.standard_normal(v.shape) * scale
    return model


@pytest.mark.parametrize("kw", [
    dict(depth=1, pool="cls", gelu="exact", pos_embed="learned"),
    dict(depth=2, pool="cls", gelu="tanh", pos_embed="learned"),
    dict(depth=2, pool="mean", gelu="exact", pos_embed="learned"),
    dict(depth=3, pool="mean", gelu="tanh", pos_embed="sincos"),
    dict(depth=2, pool="cls", gelu="exact", pos_embed="sincos", image_size=(8, 12), heads=4),
])
def test_model_gradients_match_finite_differences(kw):
    cfg = tiny_config(**kw)
    model = perturbed_model(cfg)
    H, W = cfg.image_hw
    images = np.random.default_rng(2).random((3, H, W, cfg.in_channels))
    errors = check_model(model, images)
    assert set(errors) == set(model.params) | {"images"}
    assert max(errors.values()) < TOL, "\n" + format_errors(errors, TOL)


@pytest.mark.parametrize("kw", [
    dict(depth=1, gelu="exact"),
    dict(depth=2, gelu="tanh", pos_embed="sincos"),
])
def test_cls_only_last_block_gradients_match_finite_differences(kw):
    """The forward that training runs (last block on the CLS token alone) has right gradients."""
    model = perturbed_model(tiny_config(pool="cls", **kw)).using("fast")
    images = np.random.default_rng(5).random((3, 8, 8, 2))
    errors = check_model(model, images, last_block_cls_only=True)
    assert max(errors.values()) < TOL, "\n" + format_errors(errors, TOL)


@pytest.mark.parametrize("depth", [1, 3])
@pytest.mark.parametrize("gelu", ["exact", "tanh"])
def test_cls_only_last_block_gives_the_full_forwards_logits_and_gradients(depth, gelu):
    model = perturbed_model(tiny_config(pool="cls", depth=depth, gelu=gelu))
    images = np.random.default_rng(6).random((5, 8, 8, 2))
    dlogits = np.random.default_rng(7).standard_normal((5, model.config.num_classes))
    full, c_full = model.forward(images)                 # the reference, every token
    fast = model.using("fast")
    part, c_part = fast.forward(images, last_block_cls_only=True)
    np.testing.assert_allclose(part, full, rtol=1e-13, atol=1e-14)
    T = model.config.num_tokens
    assert c_full["attn"][-1].shape[2:] == (T, T) and c_part["attn"][-1].shape[2:] == (1, T)
    np.testing.assert_allclose(c_part["attn"][-1], c_full["attn"][-1][:, :, :1], rtol=1e-13)
    g_full, dx_full = model.backward_with_input(dlogits, c_full)
    g_part, dx_part = fast.backward_with_input(dlogits, c_part)
    for k in g_full:
        np.testing.assert_allclose(g_part[k], g_full[k], rtol=1e-11, atol=1e-14, err_msg=k)
    np.testing.assert_allclose(dx_part, dx_full, rtol=1e-11, atol=1e-14)
    # and loss_and_grads, which trains this way, returns the full forward's values
    labels = np.array([0, 1, 2, 0, 1])
    loss, grads, logits = fast.loss_and_grads(images, labels)
    np.testing.assert_allclose(logits, full, rtol=1e-13, atol=1e-14)
    for k in g_full:
        assert grads[k].shape == g_full[k].shape


def test_cls_only_last_block_needs_cls_pooling():
    model = ViT(tiny_config(pool="mean"))
    images = np.zeros((1, 8, 8, 2))
    with pytest.raises(ValueError, match="last_block_cls_only: needs pool='cls'"):
        model.forward(images, last_block_cls_only=True)
    with pytest.raises(TypeError, match="last_block_cls_only: expected True or False, got int"):
        ViT(tiny_config()).forward(images, last_block_cls_only=1)
    # the reference layers compute every token: asking them for less is an error, not a no-op
    with pytest.raises(ValueError, match="last_block_cls_only: needs a layer set .* got layers='reference'"):
        ViT(tiny_config()).forward(images, last_block_cls_only=True)


def test_loss_gradients_match_finite_differences():
    model = perturbed_model(tiny_config())
    images = np.random.default_rng(3).random((4, 8, 8, 2))
    errors = check_model(model, images, labels=np.array([0, 2, 1, 2]))
    assert max(errors.values()) < TOL, "\n" + format_errors(errors, TOL)


def test_changing_one_patch_changes_the_cls_logits():
    """Global receptive field: through attention the CLS token sees every patch."""
    model = perturbed_model(tiny_config(pool="cls", image_size=12, depth=1))
    x = np.random.default_rng(4).random((1, 12, 12, 2))
    base = model(x)
    for gy in range(3):                       # each of the 9 patches, one at a time
        for gx in range(3):
            y = x.copy()
            y[0, gy * 4:(gy + 1) * 4, gx * 4:(gx + 1) * 4] += 0.5
            assert np.abs(model(y) - base).max() > 1e-6, (gy, gx)


def permute_patches(x, P, order):
    from tinyvit.layers import patchify, unpatchify
    p = patchify(x, P)[:, order]
    return unpatchify(p, x.shape[1:3], P, x.shape[3])


def test_position_embeddings_make_the_model_sensitive_to_patch_order():
    model = perturbed_model(tiny_config(image_size=12))
    x = np.random.default_rng(5).random((2, 12, 12, 2))
    order = np.random.default_rng(6).permutation(9)
    shuffled = permute_patches(x, 4, order)
    assert np.abs(model(shuffled) - model(x)).max() > 1e-3
    # Without position information attention treats tokens as a set: the same
    # model with zero position embeddings gives the same logits for any patch order.
    model.params["pos_embed"][...] = 0.0
    np.testing.assert_allclose(model(shuffled), model(x), rtol=1e-10, atol=1e-12)


def test_float32_and_float64_forwards_agree():
    cfg64 = tiny_config(dim=16, heads=4, mlp_dim=32, image_size=16, depth=3)
    m64 = perturbed_model(cfg64, scale=0.1)
    m32 = ViT(ViTConfig(**{**cfg64.to_dict(), "dtype": "float32"}),
              {k: v.astype(np.float32) for k, v in m64.params.items()})
    x = np.random.default_rng(7).random((4, 16, 16, 2))
    l64, c64 = m64.forward(x)
    l32, c32 = m32.forward(x.astype(np.float32))
    assert l32.dtype == np.float32 and all(a.dtype == np.float32 for a in c32["attn"])
    np.testing.assert_allclose(l32, l64, atol=1e-5)
    loss, grads, _ = m32.loss_and_grads(x.astype(np.float32), np.array([0, 1, 2, 0]))
    assert all(g.dtype == np.float32 for g in grads.values())


def test_cls_token_gradient_is_batch_sum_through_the_model():
    model = perturbed_model(tiny_config())
    x = np.random.default_rng(8).random((3, 8, 8, 2))
    dout = np.random.default_rng(9).standard_normal((3, 3))
    logits, cache = model.forward(x)
    total = model.backward(dout, cache)["cls_token"]
    parts = [model.backward(dout[i:i + 1], model.forward(x[i:i + 1])[1])["cls_token"] for i in range(3)]
    np.testing.assert_allclose(total, sum(parts), rtol=1e-12)


def test_attention_maps_are_exposed_per_block():
    cfg = tiny_config(depth=3)
    model = ViT(cfg)
    maps = model.attention_maps(np.random.default_rng(0).random((2, 8, 8, 2)))
    assert len(maps) == 3
    for A in maps:
        assert A.shape == (2, cfg.heads, cfg.num_tokens, cfg.num_tokens)
        np.testing.assert_allclose(A.sum(-1), 1.0)


def test_initialisation_follows_timm():
    cfg = ViTConfig(dim=64, depth=2, mlp_dim=128, seed=3)
    p = ViT(cfg).params
    assert np.abs(p["cls_token"]).max() < 1e-5
    assert p["pos_embed"].std() == pytest.approx(0.02, rel=0.1)
    assert p["blocks.0.attn.qkv.W"].std() == pytest.approx(0.02, rel=0.05)
    assert p["head.W"].std() == pytest.approx(0.02, rel=0.2)
    assert np.all(p["blocks.1.mlp.fc1.b"] == 0) and np.all(p["norm.gamma"] == 1)
    again = ViT(cfg).params
    assert all(np.array_equal(p[k], again[k]) for k in p)          # the seed fixes everything
    other = ViT(ViTConfig(dim=64, depth=2, mlp_dim=128, seed=4)).params
    assert not np.array_equal(p["head.W"], other["head.W"])


def test_summary_and_num_params():
    model = ViT(ViTConfig(image_size=28, in_channels=1, patch_size=7, dim=64, depth=4, heads=4,
                          mlp_dim=128, num_classes=10))
    # 49*64+64 + 64 + 17*64 + 4*(2*64 + 64*192+192 + 64*64+64 + 2*64 + 64*128+128 + 128*64+64)
    # + 2*64 + 64*10+10
    assert model.num_params() == 3200 + 64 + 1088 + 4 * 33472 + 128 + 650
    s = model.summary()
    assert "(B, 4, 17, 17)" in s and "blocks.3.mlp.fc2.W" in s and f"{model.num_params():,}" in s


def test_config_round_trip():
    cfg = ViTConfig(image_size=(8, 12), patch_size=4, pool="mean", pos_embed="sincos")
    assert ViTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unexpected keys.*'depht'"):
        ViTConfig.from_dict({"depht": 3})


# --- bad input ----------------------------------------------------------------------------
@pytest.mark.parametrize("kw, exc, pattern", [
    (dict(dim=10, heads=4), ValueError, r"heads: expected a divisor of dim=10, got 4"),
    (dict(image_size=30, patch_size=4), ValueError, r"patch_size: expected a divisor of the image size 30x30, got 4"),
    (dict(pool="max"), ValueError, r"pool: expected one of 'cls', 'mean', 'mean_with_cls', 'attn', got 'max'"),
    (dict(gelu="relu"), ValueError, r"gelu: expected one of"),
    (dict(dtype="float16"), ValueError, r"dtype: expected one of 'float32', 'float64', got 'float16'"),
    (dict(depth=0), ValueError, r"depth: expected an integer >= 1, got 0"),
    (dict(dim=6.0), TypeError, r"dim: expected an integer, got float 6.0"),
])
def test_bad_config(kw, exc, pattern):
    with pytest.raises(exc, match=pattern):
        ViTConfig(**kw)


@pytest.fixture
def model32():
    return ViT(ViTConfig(image_size=8, in_channels=1, patch_size=4, dim=8, heads=2, mlp_dim=8,
                         depth=1, num_classes=3))


@pytest.mark.parametrize("images, exc, pattern", [
    (np.zeros((8, 8, 1), np.float32), ValueError, r"images: expected 4 dimensions, got 3"),
    (np.zeros((2, 8, 8, 3), np.float32), ValueError, r"images: expected shape \(B, 8, 8, 1\).*got \(2, 8, 8, 3\)"),
    (np.zeros((2, 12, 12, 1), np.float32), ValueError, r"images: expected shape \(B, 8, 8, 1\)"),
    (np.zeros((2, 8, 8, 1), np.uint8), TypeError, r"images: expected a floating-point array, got dtype uint8"),
    (np.zeros((2, 8, 8, 1), np.float64), TypeError, r"images: expected dtype float32, got float64"),
    (np.full((2, 8, 8, 1), np.nan, np.float32), ValueError, r"images: expected finite values, got 128 NaN"),
    ([[0.0]], TypeError, r"images: expected a NumPy array, got list"),
])
def test_bad_images(model32, images, exc, pattern):
    with pytest.raises(exc, match=pattern):
        model32.forward(images)


@pytest.mark.parametrize("labels, exc, pattern", [
    (np.array([0, 3]), ValueError, r"labels: expected values in \[0, 2\], got 3"),
    (np.array([0, -1]), ValueError, r"labels: expected values in \[0, 2\], got -1"),
    (np.array([0, 1, 2]), ValueError, r"labels: expected 2 labels \(one per image\), got 3"),
    (np.array([0.0, 1.0]), TypeError, r"labels: expected an integer array, got dtype float64"),
    (np.array([[0, 1]]), ValueError, r"labels: expected 1 dimensions, got 2"),
])
def test_bad_labels(model32, labels, exc, pattern):
    with pytest.raises(exc, match=pattern):
        model32.loss_and_grads(np.zeros((2, 8, 8, 1), np.float32), labels)


def test_bad_params_list_every_offender():
    cfg = ViTConfig(image_size=8, in_channels=1, patch_size=4, dim=8, heads=2, mlp_dim=8, depth=1,
                    num_classes=3)
    params = ViT(cfg).params
    params.pop("head.b")
    params["extra"] = np.zeros(1, np.float32)
    params["norm.gamma"] = np.zeros(9, np.float32)
    with pytest.raises(ValueError) as err:
        ViT(cfg, params)
    msg = str(err.value)
    assert "missing: head.b" in msg and "unexpected: extra" in msg
    assert "norm.gamma: expected (8,), got (9,)" in msg


# --- LayerScale ------------------------------------------------------------------------------
def test_layer_scale_model_gradients_match_finite_differences():
    model = perturbed_model(tiny_config(layer_scale=0.5, pool="mean"))
    assert {"blocks.0.ls1.gamma", "blocks.1.ls2.gamma"} <= set(model.params)
    images = np.random.default_rng(8).random((3, 8, 8, 2))
    errors = check_model(model, images)
    assert max(errors.values()) < TOL, "\n" + format_errors(errors, TOL)
    fast = model.using("fast")
    np.testing.assert_allclose(fast(images), model(images), rtol=1e-13)


def test_layer_scale_config():
    p = ViT(tiny_config(layer_scale=1e-5)).params
    np.testing.assert_array_equal(p["blocks.1.ls1.gamma"], np.full(8, 1e-5))
    assert list(p).index("blocks.0.ls1.gamma") == list(p).index("blocks.0.attn.proj.b") + 1
    assert "blocks.0.ls1.gamma" not in ViT(tiny_config()).params
    for bad in (True, "0.1", float("nan")):
        with pytest.raises(ValueError, match="layer_scale: expected None or a finite number"):
            tiny_config(layer_scale=bad)
    with pytest.raises(ValueError, match="last_block_cls_only: not available with LayerScale"):
        ViT(tiny_config(layer_scale=0.1), layers="fast").forward(np.zeros((1, 8, 8, 2)), True)


# --- gradients of the attention probabilities -----------------------------------------------
@pytest.mark.parametrize("layers", ["reference", "fast"])
@pytest.mark.parametrize("kw", [dict(), dict(pool="mean", gelu="tanh"), dict(layer_scale=0.3)])
def test_attention_grads_match_finite_differences(layers, kw):
    """attention_grads gives dL/dA for L = sum(dlogits * logits): perturbing one entry of a
    block's A (through a patched softmax) changes L by that much."""
    from tinyvit.gradcheck import rel_error
    model = perturbed_model(tiny_config(depth=3, **kw)).using(layers)
    rng = np.random.default_rng(9)
    images = rng.random((2, 8, 8, 2))
    logits, cache = model.forward(images)
    dlogits = rng.standard_normal(logits.shape)
    dattn = model.attention_grads(dlogits, cache)
    assert [d.shape for d in dattn] == [a.shape for a in cache["attn"]]
    h = 1e-6
    for block in range(3):
        A_shape = cache["attn"][block].shape
        idx = [tuple(rng.integers(0, n) for n in A_shape) for _ in range(6)]
        num = []
        for i in idx:
            vals = []
            for sign in (1, -1):
                vals.append((dlogits * _logits_with_bumped_attention(model, images, block, i, sign * h)).sum())
            num.append((vals[0] - vals[1]) / (2 * h))
        ana = [dattn[block][i] for i in idx]
        assert rel_error(np.array(ana), np.array(num)) < 1e-6, (block, ana, num)


def _logits_with_bumped_attention(model, images, block, index, delta):
    """The logits when block ``block``'s attention probabilities get ``delta`` added at
    ``index`` right after the softmax (the rest of the forward unchanged)."""
    import tinyvit.fast_layers as fast_mod
    import tinyvit.layers.attention as ref_mod
    mod = fast_mod if model.layers is fast_mod else ref_mod
    real = mod.softmax_forward
    calls = []

    def bumped(x):
        A, cache = real(x)
        if len(calls) == block:
            A = A.copy()
            A[index] += delta
            cache = A
        calls.append(1)
        return A, cache

    mod.softmax_forward = bumped
    try:
        return model(images)
    finally:
        mod.softmax_forward = real


# --- the tokens before pool and head -----------------------------------------------------------
@pytest.mark.parametrize("layers", ["reference", "fast"])
def test_backward_tokens_matches_finite_differences(layers):
    from tinyvit.gradcheck import numerical_vjp, rel_error
    model = perturbed_model(tiny_config(layer_scale=None)).using(layers)
    rng = np.random.default_rng(11)
    images = rng.random((2, 8, 8, 2))
    tokens, cache = model.forward_tokens(images)
    assert tokens.shape == (2, model.config.num_tokens, model.config.dim)
    dtokens = rng.standard_normal(tokens.shape)
    grads, dimages = model.backward_tokens(dtokens, cache)
    assert "head.W" not in grads and set(grads) == set(model.params) - {"head.W", "head.b"}
    f = lambda: model.forward_tokens(images)[0]
    for name in ("blocks.0.attn.qkv.W", "cls_token", "norm.gamma"):
        num = numerical_vjp(f, model.params[name], dtokens, 1e-6)
        assert rel_error(grads[name], num) < 1e-7, name
    assert rel_error(dimages, numerical_vjp(f, images, dtokens, 1e-6)) < 1e-7
    with pytest.raises(ValueError, match=r"dtokens: expected shape \(2, 5, 8\)"):
        model.backward_tokens(dtokens[:, :3], cache)
