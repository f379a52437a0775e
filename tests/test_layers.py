"""Every layer's gradients against centred differences (float64, random upstream
gradients), plus known values that do not depend on the backward at all."""

import math

import numpy as np
import pytest

from tinyvit import fast_layers as F
from tinyvit import layers as L
from tinyvit.gradcheck import check_layer, format_errors

# A correct backward lands near 1e-9 here; a wrong term lands at 1e-2 or above.
TOL = 1e-7


def assert_grads_ok(errors):
    assert max(errors.values()) < TOL, "\n" + format_errors(errors, TOL)


def randn(rng, *shape, scale=1.0):
    return rng.standard_normal(shape) * scale


# Both layer sets must pass every gradient check: the reference (what a learner reads)
# and the fast one (what training runs).
@pytest.fixture(params=[L, F], ids=["reference", "fast"])
def S(request):
    return request.param


# --- gradient checks, one per layer -------------------------------------------------
def test_patchify_grad(S, rng):
    x = randn(rng, 2, 8, 12, 3)
    assert_grads_ok(check_layer(S.patchify_forward, S.patchify_backward, {"x": x},
                                kwargs={"patch_size": 4}))


def test_linear_grad(S, rng):
    inputs = {"x": randn(rng, 2, 5, 4), "W": randn(rng, 4, 6), "b": randn(rng, 6)}
    assert_grads_ok(check_layer(S.linear_forward, S.linear_backward, inputs))


def test_cls_grad(S, rng):
    inputs = {"x": randn(rng, 3, 4, 5), "cls": randn(rng, 1, 1, 5)}
    assert_grads_ok(check_layer(S.cls_forward, S.cls_backward, inputs))


def test_pos_grad(S, rng):
    inputs = {"x": randn(rng, 3, 5, 4), "pos": randn(rng, 1, 5, 4)}
    assert_grads_ok(check_layer(S.pos_forward, S.pos_backward, inputs))


def test_layernorm_grad(S, rng):
    inputs = {"x": randn(rng, 2, 5, 6, scale=3.0) + 1.0, "gamma": randn(rng, 6), "beta": randn(rng, 6)}
    assert_grads_ok(check_layer(S.layernorm_forward, S.layernorm_backward, inputs))


def test_softmax_grad(S, rng):
    assert_grads_ok(check_layer(S.softmax_forward, S.softmax_backward, {"x": randn(rng, 2, 3, 5)}))


@pytest.mark.parametrize("heads, n_queries", [(1, None), (2, None), (3, None), (2, 1), (3, 3)])
def test_attention_grad(S, rng, heads, n_queries):
    if n_queries is not None and S is L:
        pytest.skip("n_queries=n is the fast set's (the reference computes every token)")
    D = 6
    inputs = {"x": randn(rng, 2, 5, D), "Wqkv": randn(rng, D, 3 * D, scale=0.5),
              "bqkv": randn(rng, 3 * D), "Wproj": randn(rng, D, D), "bproj": randn(rng, D)}
    assert_grads_ok(check_layer(S.attention_forward, S.attention_backward, inputs,
                                kwargs={"heads": heads} if n_queries is None else {"heads": heads, "n_queries": n_queries}))


def test_attention_with_queries_is_the_first_rows_of_the_full_output(rng):
    """n_queries=n gives exactly the first n rows of the full attention, and its A is
    the first n rows of the full A: the other tokens only stop asking."""
    D, T = 6, 5
    args = (randn(rng, 2, T, D), randn(rng, D, 3 * D, scale=0.5), randn(rng, 3 * D),
            randn(rng, D, D), randn(rng, D))
    full, c_full = L.attention_forward(*args, heads=3)
    for n in (1, 2):
        part, c_part = F.attention_forward(*args, heads=3, n_queries=n)
        assert part.shape == (2, n, D) and c_part["attn"].shape == (2, 3, n, T)
        np.testing.assert_allclose(part, full[:, :n], rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(c_part["attn"], c_full["attn"][:, :, :n], rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("kind", ["exact", "tanh"])
def test_gelu_grad(S, rng, kind):
    x = randn(rng, 4, 7, scale=2.5)
    assert_grads_ok(check_layer(S.gelu_forward, S.gelu_backward, {"x": x}, kwargs={"kind": kind}))


@pytest.mark.parametrize("gelu", ["exact", "tanh"])
def test_mlp_grad(S, rng, gelu):
    inputs = {"x": randn(rng, 2, 3, 4), "W1": randn(rng, 4, 7), "b1": randn(rng, 7),
              "W2": randn(rng, 7, 4), "b2": randn(rng, 4)}
    assert_grads_ok(check_layer(S.mlp_forward, S.mlp_backward, inputs, kwargs={"gelu": gelu}))


def block_params(rng, D, M):
    return {"norm1.gamma": 1 + randn(rng, D, scale=0.3), "norm1.beta": randn(rng, D, scale=0.3),
            "attn.qkv.W": randn(rng, D, 3 * D, scale=0.5), "attn.qkv.b": randn(rng, 3 * D, scale=0.3),
            "attn.proj.W": randn(rng, D, D, scale=0.5), "attn.proj.b": randn(rng, D, scale=0.3),
            "norm2.gamma": 1 + randn(rng, D, scale=0.3), "norm2.beta": randn(rng, D, scale=0.3),
            "mlp.fc1.W": randn(rng, D, M, scale=0.5), "mlp.fc1.b": randn(rng, M, scale=0.3),
            "mlp.fc2.W": randn(rng, M, D, scale=0.5), "mlp.fc2.b": randn(rng, D, scale=0.3)}


def block_errors(S, rng, gelu="exact", n_queries=None):
    """Relative error of the block's input gradient and of each parameter gradient."""
    p = block_params(rng, 6, 10)
    x = randn(rng, 2, 4, 6)

    def fwd(x, **params):
        if n_queries is None:
            return S.block_forward(x, params, heads=2, gelu=gelu)
        return S.block_forward(x, params, heads=2, gelu=gelu, n_queries=n_queries)

    def bwd(dout, cache):
        dx, g = S.block_backward(dout, cache)
        return (dx, *[g[k] for k in p])

    return check_layer(fwd, bwd, {"x": x, **p})


@pytest.mark.parametrize("gelu, n_queries", [("exact", None), ("tanh", None), ("exact", 1)])
def test_block_grad(S, rng, gelu, n_queries):
    if n_queries is not None and S is L:
        pytest.skip("n_queries=n is the fast set's (the reference computes every token)")
    assert_grads_ok(block_errors(S, rng, gelu, n_queries))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_grad(S, rng, smoothing):
    labels = np.array([0, 3, 1, 3])

    def fwd(logits):
        loss, dlogits = S.softmax_cross_entropy(logits, labels, smoothing)
        return np.asarray(loss), dlogits

    def bwd(dout, dlogits):
        return dout * dlogits

    assert_grads_ok(check_layer(fwd, bwd, {"logits": randn(rng, 4, 5, scale=2.0)}))


# --- known values -------------------------------------------------------------------------
def test_softmax_rows_sum_to_one_and_survive_large_inputs(rng):
    x = randn(rng, 3, 4, 6) * 50 + 1000.0            # exp(1000) overflows without the max shift
    p = L.softmax(x)
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(L.softmax(np.log(np.array([1.0, 2.0, 5.0]))), [0.125, 0.25, 0.625])


def test_layernorm_output_has_zero_mean_unit_variance(rng):
    x = randn(rng, 4, 7, 16, scale=5.0) + 3.0
    y, _ = L.layernorm_forward(x, np.ones(16), np.zeros(16))
    np.testing.assert_allclose(y.mean(-1), 0.0, atol=1e-12)
    np.testing.assert_allclose(y.var(-1), 1.0, rtol=1e-4)    # eps=1e-6 shrinks it by ~eps/var
    y2, _ = L.layernorm_forward(x, np.full(16, 2.0), np.full(16, -1.0))
    np.testing.assert_allclose(y2, 2.0 * y - 1.0, atol=1e-12)


def test_unpatchify_inverts_patchify(rng):
    x = randn(rng, 2, 12, 8, 3)
    np.testing.assert_array_equal(L.unpatchify(L.patchify(x, 4), (12, 8), 4, 3), x)


def test_patch_layout_is_row_col_channel():
    B, H, W, C, P = 1, 4, 6, 2, 2
    x = np.arange(B * H * W * C, dtype=np.float64).reshape(B, H, W, C)
    patches = L.patchify(x, P)                            # grid 2 x 3, N = 6
    assert patches.shape == (1, 6, P * P * C)
    # patch 4 is grid row 1, column 1: pixels rows 2..3, columns 2..3
    gy, gx = 1, 1
    for py in range(P):
        for px in range(P):
            for c in range(C):
                assert patches[0, gy * 3 + gx, (py * P + px) * C + c] == x[0, gy * P + py, gx * P + px, c]


def test_patch_size_must_divide_image():
    with pytest.raises(ValueError, match=r"patch_size.*10x10.*got 3"):
        L.patchify(np.zeros((1, 10, 10, 1)), 3)


def test_cls_gradient_is_the_batch_sum(rng):
    dout = randn(rng, 5, 4, 3)
    dx, dcls = L.cls_backward(dout, None)
    np.testing.assert_allclose(dcls[0, 0], dout[:, 0, :].sum(axis=0))
    np.testing.assert_array_equal(dx, dout[:, 1:])
    out, _ = L.cls_forward(randn(rng, 5, 3, 3), np.arange(3.0).reshape(1, 1, 3))
    np.testing.assert_array_equal(out[:, 0], np.tile(np.arange(3.0), (5, 1)))


def test_erf_matches_math_erf_to_float64_rounding():
    x = np.concatenate([np.linspace(-7, 7, 20001), np.logspace(-12, 1.3, 500), [0.46875, 4.0, 30.0]])
    ref = np.array([math.erf(v) for v in x])
    rel = np.abs(L.erf(x) - ref) / np.maximum(np.abs(ref), 1e-300)
    assert rel.max() < 2e-15, rel.max()
    np.testing.assert_array_equal(L.erf(np.array([np.inf, -np.inf])), [1.0, -1.0])


def test_gelu_values_and_tanh_approximation():
    x = np.linspace(-6, 6, 1001)
    exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x])
    np.testing.assert_allclose(L.gelu_forward(x, "exact")[0], exact, rtol=1e-14, atol=1e-15)
    approx = L.gelu_forward(x, "tanh")[0]
    assert np.abs(approx - exact).max() < 1e-3        # the approximation is close but not equal
    assert np.abs(approx - exact).max() > 1e-5
    with pytest.raises(ValueError, match="kind"):
        L.gelu_forward(x, "relu")


def test_attention_probabilities_are_cached_and_normalised(rng):
    D, h = 8, 2
    x = randn(rng, 3, 5, D)
    out, cache = L.attention_forward(x, randn(rng, D, 3 * D), np.zeros(3 * D),
                                     randn(rng, D, D), np.zeros(D), h)
    A = cache["attn"]
    assert A.shape == (3, h, 5, 5)
    np.testing.assert_allclose(A.sum(-1), 1.0, atol=1e-12)


def test_attention_matches_a_per_head_loop(rng):
    """The batched heads equal the textbook loop over heads and images."""
    B, T, D, h = 2, 4, 6, 3
    d = D // h
    x, Wqkv, bqkv = randn(rng, B, T, D), randn(rng, D, 3 * D), randn(rng, 3 * D)
    Wp, bp = randn(rng, D, D), randn(rng, D)
    out, _ = L.attention_forward(x, Wqkv, bqkv, Wp, bp, h)
    qkv = x @ Wqkv + bqkv
    ref = np.zeros((B, T, D))
    for b in range(B):
        heads = []
        for j in range(h):
            q = qkv[b, :, j * d:(j + 1) * d]
            k = qkv[b, :, D + j * d:D + (j + 1) * d]
            v = qkv[b, :, 2 * D + j * d:2 * D + (j + 1) * d]
            s = q @ k.T / math.sqrt(d)
            a = np.exp(s - s.max(1, keepdims=True))
            a /= a.sum(1, keepdims=True)
            heads.append(a @ v)
        ref[b] = np.concatenate(heads, axis=1) @ Wp + bp
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)


def test_sincos_position_embedding():
    pe = L.sincos_pos_embed(3, 4, 8, cls_token=True, dtype=np.float64)
    assert pe.shape == (1, 13, 8)
    np.testing.assert_array_equal(pe[0, 0], 0.0)
    # patch (row 0, col 0): sin(0)=0 and cos(0)=1 in both halves
    np.testing.assert_allclose(pe[0, 1], [0, 0, 1, 1, 0, 0, 1, 1])
    # the same row shares its first (row) half; the same column its second half
    np.testing.assert_allclose(pe[0, 1 + 1, :4], pe[0, 1, :4])
    np.testing.assert_allclose(pe[0, 1 + 4, 4:], pe[0, 1, 4:])
    assert len({tuple(r) for r in pe[0, 1:].round(12)}) == 12       # every position distinct


def test_cross_entropy_known_value():
    logits = np.log(np.array([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]))
    loss, d = L.softmax_cross_entropy(logits, np.array([0, 1]))
    assert loss == pytest.approx(-(math.log(0.5) + math.log(0.8)) / 2)
    np.testing.assert_allclose(d, (np.exp(logits) - np.eye(3)[[0, 1]]) / 2)
    loss_s, _ = L.softmax_cross_entropy(logits, np.array([0, 1]), 0.3)
    target = 0.7 * np.eye(3)[[0, 1]] + 0.1
    assert loss_s == pytest.approx(-(target * logits).sum() / 2)


@pytest.mark.parametrize("gelu", ["exact", "tanh"])
def test_layerscale_block_grad(S, rng, gelu):
    D, M = 6, 10
    p = block_params(rng, D, M)
    p["ls1.gamma"], p["ls2.gamma"] = randn(rng, D), randn(rng, D)

    def fwd(x, **params):
        return S.layerscale_block_forward(x, params, heads=3, gelu=gelu)

    def bwd(dout, cache):
        dx, g = S.layerscale_block_backward(dout, cache)
        return (dx, *[g[k] for k in p])

    assert_grads_ok(check_layer(fwd, bwd, {"x": randn(rng, 2, 4, D), **p}))


def test_layerscale_of_ones_is_the_plain_block(rng):
    D = 6
    p = block_params(rng, D, 10)
    x, dout = randn(rng, 2, 4, D), randn(rng, 2, 4, D)
    out, cache = L.block_forward(x, p, heads=2)
    ls_out, ls_cache = L.layerscale_block_forward(x, {**p, "ls1.gamma": np.ones(D),
                                                      "ls2.gamma": np.ones(D)}, heads=2)
    np.testing.assert_allclose(ls_out, out, rtol=1e-14)
    dx, g = L.block_backward(dout, cache)
    ls_dx, ls_g = L.layerscale_block_backward(dout, ls_cache)
    np.testing.assert_allclose(ls_dx, dx, rtol=1e-13)
    for k in g:
        np.testing.assert_allclose(ls_g[k], g[k], rtol=1e-12, err_msg=k)
