"""The fast layers equal the reference layers.

tinyvit.fast_layers has the speed tricks; tinyvit.layers the textbook forms. Every fast
function must return the reference's numbers: in float64 to 1e-12 (outputs and every
gradient), on several shapes (h != d, non-square images, n_queries=n); its float32 paths
close to the float64 formulas; and a model trained 20 steps with either set must end with
the same parameters. (Both sets' gradient checks are in test_layers.py.)
"""

import math

import numpy as np
import pytest

from tinyvit import ViT, ViTConfig
from tinyvit import fast_layers as F
from tinyvit import layers as L
from tinyvit.gradcheck import rel_error
from tinyvit.optim import AdamW

TOL = 1e-12


def randn(rng, *shape, scale=1.0):
    return rng.standard_normal(shape) * scale


def same(a, b, what):
    err = rel_error(np.asarray(a), np.asarray(b))
    assert err < TOL, f"{what}: relative error {err:.2e} (expected < {TOL:g})"


def compare_pair(name, args, kwargs, dout_rng, n_grads, fast_kwargs=None):
    """Runs the reference and the fast forward and backward of one layer on the same
    float64 inputs and a random upstream gradient; every output and gradient must agree."""
    fwd, bwd = name + "_forward", name + "_backward"
    ref_out, ref_cache = getattr(L, fwd)(*[a.copy() if isinstance(a, np.ndarray) else a for a in args], **kwargs)
    fast_out, fast_cache = getattr(F, fwd)(*args, **(fast_kwargs or kwargs))
    same(fast_out, ref_out, f"{fwd} output")
    dout = dout_rng.standard_normal(np.shape(ref_out))
    ref_g = getattr(L, bwd)(dout.copy(), ref_cache)
    fast_g = getattr(F, bwd)(dout.copy(), fast_cache)
    ref_g = ref_g if isinstance(ref_g, tuple) else (ref_g,)
    fast_g = fast_g if isinstance(fast_g, tuple) else (fast_g,)
    assert len(ref_g) == len(fast_g) == n_grads
    for i, (a, b) in enumerate(zip(fast_g, ref_g)):
        if isinstance(a, dict):
            assert a.keys() == b.keys()
            for k in a:
                same(a[k], b[k], f"{bwd} grad {k}")
        else:
            same(a, b, f"{bwd} gradient {i}")


@pytest.mark.parametrize("shape", [(2, 5, 4), (3, 7), (1, 2, 3, 6)])
def test_linear(rng, shape):
    x = randn(rng, *shape)
    compare_pair("linear", (x, randn(rng, shape[-1], 5), randn(rng, 5)), {}, rng, 3)


@pytest.mark.parametrize("shape", [(2, 5, 6), (4, 8), (1, 3, 2, 16)])
def test_layernorm(rng, shape):
    D = shape[-1]
    x = randn(rng, *shape, scale=3.0) + 2.0
    compare_pair("layernorm", (x, 1 + randn(rng, D, scale=0.3), randn(rng, D)), {}, rng, 3)


@pytest.mark.parametrize("shape", [(2, 3, 5), (2, 2, 6, 6), (3, 7)])
def test_softmax(rng, shape):
    compare_pair("softmax", (randn(rng, *shape, scale=3.0),), {}, rng, 1)


@pytest.mark.parametrize("kind", ["exact", "tanh"])
@pytest.mark.parametrize("shape", [(4, 7), (2, 3, 9)])
def test_gelu(rng, kind, shape):
    compare_pair("gelu", (randn(rng, *shape, scale=2.5),), {"kind": kind}, rng, 1)


@pytest.mark.parametrize("gelu", ["exact", "tanh"])
def test_mlp(rng, gelu):
    args = (randn(rng, 2, 3, 4), randn(rng, 4, 7), randn(rng, 7), randn(rng, 7, 4), randn(rng, 4))
    compare_pair("mlp", args, {"gelu": gelu}, rng, 5)


# (B, T, D, heads): h != d in most, d = 1 and h = 1 at the edges
ATTENTION_SHAPES = [(2, 5, 6, 3), (1, 7, 8, 2), (3, 4, 12, 4), (2, 3, 5, 1), (2, 6, 4, 4)]


@pytest.mark.parametrize("B, T, D, heads", ATTENTION_SHAPES)
def test_attention(rng, B, T, D, heads):
    args = (randn(rng, B, T, D), randn(rng, D, 3 * D, scale=0.5), randn(rng, 3 * D),
            randn(rng, D, D), randn(rng, D))
    compare_pair("attention", args, {"heads": heads}, rng, 5)


def block_params(rng, D, M):
    names = {"norm1.gamma": (D,), "norm1.beta": (D,), "attn.qkv.W": (D, 3 * D),
             "attn.qkv.b": (3 * D,), "attn.proj.W": (D, D), "attn.proj.b": (D,),
             "norm2.gamma": (D,), "norm2.beta": (D,), "mlp.fc1.W": (D, M), "mlp.fc1.b": (M,),
             "mlp.fc2.W": (M, D), "mlp.fc2.b": (D,)}
    return {k: randn(rng, *s, scale=0.5) + (1.0 if k.endswith("gamma") else 0.0)
            for k, s in names.items()}


@pytest.mark.parametrize("B, T, D, heads", ATTENTION_SHAPES)
@pytest.mark.parametrize("gelu", ["exact", "tanh"])
def test_block(rng, B, T, D, heads, gelu):
    p = block_params(rng, D, 2 * D + 1)
    compare_pair("block", (randn(rng, B, T, D), p, heads), {"gelu": gelu}, rng, 2)


@pytest.mark.parametrize("B, T, D, heads", ATTENTION_SHAPES)
@pytest.mark.parametrize("n", [1, 2])
def test_queries_are_the_first_rows_of_the_reference(rng, B, T, D, heads, n):
    """n_queries=n (fast only): the first n output rows of the reference block, and the input
    gradient of the reference block when dout is zero outside those rows."""
    p = block_params(rng, D, 2 * D)
    x = randn(rng, B, T, D)
    ref_out, ref_cache = L.block_forward(x.copy(), p, heads)
    part, part_cache = F.block_forward(x, p, heads, n_queries=n)
    same(part, ref_out[:, :n], "block_forward(n_queries=n)")
    dout = np.zeros_like(ref_out)
    dout[:, :n] = randn(rng, B, n, D)
    ref_dx, ref_g = L.block_backward(dout, ref_cache)
    dx, g = F.block_backward(dout[:, :n].copy(), part_cache)
    same(dx, ref_dx, "block_backward(n_queries=n) dx")
    for k in ref_g:
        same(g[k], ref_g[k], f"block_backward(n_queries=n) {k}")


@pytest.mark.parametrize("pool, gelu, image_size, pos, tokens", [
    ("cls", "exact", 8, "learned", {}),
    ("mean", "tanh", (8, 12), "learned", {}),
    ("cls", "tanh", (12, 8), "sincos", {}),
    # the pooling and token options (tinyvit/layers/pool.py)
    ("cls", "exact", 8, "learned", dict(num_registers=2)),
    ("mean", "exact", 8, "learned", dict(class_token=False, num_registers=1)),
    ("mean_with_cls", "tanh", 8, "learned", {}),
    ("attn", "exact", (8, 12), "learned", dict(num_registers=2, no_embed_class=True)),
    ("attn", "tanh", 8, "sincos", dict(class_token=False)),
])
def test_whole_model_same_logits_and_gradients(rng, pool, gelu, image_size, pos, tokens):
    cfg = ViTConfig(image_size=image_size, in_channels=2, patch_size=4, dim=12, depth=2, heads=3,
                    mlp_dim=10, num_classes=4, pool=pool, gelu=gelu, pos_embed=pos, dtype="float64",
                    **tokens)
    ref = ViT(cfg)
    fast = ref.using("fast")
    H, W = cfg.image_hw
    images = randn(rng, 3, H, W, 2)
    ref_logits, ref_cache = ref.forward(images)
    same(fast(images), ref_logits, "logits")
    dlogits = randn(rng, 3, 4)
    ref_g, ref_dimg = ref.backward_with_input(dlogits, ref_cache)
    for cls_only in ((False, True) if pool == "cls" else (False,)):
        logits, cache = fast.forward(images, last_block_cls_only=cls_only)
        same(logits, ref_logits, f"logits (cls_only={cls_only})")
        g, dimg = fast.backward_with_input(dlogits, cache)
        same(dimg, ref_dimg, "images gradient")
        for k in ref_g:
            same(g[k], ref_g[k], f"{k} (cls_only={cls_only})")


@pytest.mark.parametrize("tokens", [{}, dict(pool="attn", num_registers=2)])
def test_twenty_training_steps_end_with_the_same_parameters(rng, tokens):
    cfg = ViTConfig(image_size=8, in_channels=1, patch_size=4, dim=16, depth=2, heads=4,
                    mlp_dim=24, num_classes=3, dtype="float64", seed=3, **tokens)
    images = randn(rng, 20, 8, 8, 1)
    labels = rng.integers(0, 3, size=20)
    ends = []
    for layers in ("reference", "fast"):
        model = ViT(cfg, layers=layers)
        opt = AdamW(lr=3e-3)
        for step in range(20):
            batch = slice((step * 5) % 20, (step * 5) % 20 + 5)
            _, grads, _ = model.loss_and_grads(images[batch], labels[batch])
            opt.step(model.params, grads)
        ends.append(model.params)
    for k in ends[0]:
        err = rel_error(ends[1][k], ends[0][k])
        assert err < 1e-10, f"{k}: {err:.2e}"
    start = ViT(cfg).params
    assert max(rel_error(ends[0][k], start[k]) for k in start) > 1e-3   # they did train


def test_float32_gelu_is_close_to_float64_across_blocks(rng):
    """The float32 exact GELU runs in blocks of rows; every block (and a 0-d input) is right."""
    x = (rng.standard_normal((3000, 200)) * 3).astype(np.float32)      # several blocks
    assert x.shape[0] > 2 * (F._BLOCK // x.shape[1])
    out, (_, _, (cdf, pdf)) = F.gelu_forward(x, "exact")
    ref_out, (_, _, (ref_cdf, ref_pdf)) = F.gelu_forward(x.astype(np.float64), "exact")
    assert out.dtype == cdf.dtype == pdf.dtype == np.float32
    assert np.abs(out - ref_out).max() < 2e-6 and np.abs(cdf - ref_cdf).max() < 5e-7   # A&S: ~3e-7
    assert np.abs(pdf - ref_pdf).max() < 1e-7
    scalar = F.gelu_forward(np.array(1.5, np.float32), "exact")[0]
    assert scalar.shape == () and abs(float(scalar) - 1.5 * 0.5 * (1 + math.erf(1.5 / math.sqrt(2)))) < 1e-6


def test_float32_gelu_is_close_to_float64():
    x64 = np.concatenate([np.linspace(-10, 10, 20001), [0.0, -0.0, 1e-30, -1e-30, 40.0, -40.0]])
    x32 = x64.astype(np.float32)
    ref = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x32.astype(np.float64)])
    out, cache = F.gelu_forward(x32, "exact")
    assert out.dtype == np.float32
    assert np.abs(out - ref).max() < 1e-6
    assert np.all(np.isfinite(out))
    # the derivative Phi(x) + x phi(x), against the float64 path
    dout = np.random.default_rng(0).standard_normal(x32.shape).astype(np.float32)
    d32 = F.gelu_backward(dout, cache)
    d64 = F.gelu_backward(dout.astype(np.float64), F.gelu_forward(x32.astype(np.float64), "exact")[1])
    assert d32.dtype == np.float32
    assert np.abs(d32 - d64).max() < 2e-6
    with np.errstate(invalid="ignore"):                 # -inf * Phi(-inf) = -inf * 0
        cdf, pdf = F.gelu_forward(np.array([np.inf, -np.inf], np.float32))[1][2]
    np.testing.assert_array_equal(cdf, [1.0, 0.0])          # Phi at the infinities
    np.testing.assert_array_equal(pdf, [0.0, 0.0])          # and phi


def test_float32_tanh_gelu_matches_its_formula():
    x = np.linspace(-6, 6, 2001)
    ref = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    out, _ = F.gelu_forward(x.astype(np.float32), "tanh")
    assert np.abs(out - ref).max() < 1e-6


def test_softmax_with_one_shift_per_matrix_equals_the_row_max_softmax(rng):
    S = rng.standard_normal((3, 2, 6, 6)) * 4
    A, cache = F.softmax_forward(S)                       # all scores small: no shift at all
    np.testing.assert_allclose(A, L.softmax(S), rtol=1e-13, atol=1e-15)
    assert cache is A
    for big in (S + 700.0, S * 30.0):                   # exp would overflow without a shift
        for dtype in (np.float64, np.float32):
            x = big.astype(dtype)
            A = F.softmax_forward(x)[0]
            assert np.all(np.isfinite(A))
            np.testing.assert_allclose(A, L.softmax(x.astype(np.float64)), rtol=1e-5 if dtype == np.float32 else 1e-12,
                                       atol=1e-7 if dtype == np.float32 else 1e-15)
    # one row far below the rest of its matrix: its exps would all underflow with the
    # matrix-wide shift, so the row-max softmax must take over (no NaN, rows sum to one)
    S[1, 0, 2, :] -= 2000.0
    A, _ = F.softmax_forward(S)
    assert np.all(np.isfinite(A))
    np.testing.assert_allclose(A, L.softmax(S), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(A.sum(-1), 1.0, atol=1e-12)
    S32 = S.astype(np.float32)
    np.testing.assert_allclose(F.softmax_forward(S32)[0], L.softmax(S32.astype(np.float64)), atol=1e-6)


def test_sums_through_blas_equal_numpy_sums(rng):
    x = rng.standard_normal((4, 5, 7))
    np.testing.assert_allclose(F._sum_last(x), x.sum(-1, keepdims=True), rtol=1e-13)
    np.testing.assert_allclose(F._sum_last(x, 1), x.sum(1, keepdims=True), rtol=1e-13)
    np.testing.assert_allclose(F._sum_last(x[:, ::2]), x[:, ::2].sum(-1, keepdims=True), rtol=1e-13)
    x2 = rng.standard_normal((9, 3))
    np.testing.assert_allclose(F._column_sums(x2), x2.sum(0), rtol=1e-13)
    assert F._sum_last(x.astype(np.float32)).dtype == np.float32


@pytest.mark.parametrize("B, T, D, heads", ATTENTION_SHAPES[:3])
def test_layerscale_block(rng, B, T, D, heads):
    p = block_params(rng, D, 2 * D + 1)
    p["ls1.gamma"], p["ls2.gamma"] = randn(rng, D), randn(rng, D)
    compare_pair("layerscale_block", (randn(rng, B, T, D), p, heads), {"gelu": "exact"}, rng, 2)
