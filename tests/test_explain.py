"""Attribution maps (tinyvit.explain): hand-worked cases, exact max-flow, attention gradients."""

import itertools

import numpy as np
import pytest

import tinyvit.layers.attention as attention_module
from tinyvit import ViT, ViTConfig
from tinyvit.explain import (METHODS, attention_flow, attribution_maps, gradient_weighted_attention,
                             max_flow, occlusion_drops, pool_to_patches, replace_patches)
from tinyvit.viz import attention_rollout


# =========================================================== max-flow

def _min_cut(cap, s, t):
    """The smallest cut capacity over every source side containing s and not t (brute force)."""
    V = cap.shape[0]
    others = [v for v in range(V) if v not in (s, t)]
    best = np.inf
    for r in range(len(others) + 1):
        for side in itertools.combinations(others, r):
            S = np.zeros(V, bool)
            S[[s, *side]] = True
            best = min(best, cap[S][:, ~S].sum())
    return best


def test_max_flow_textbook_network():
    # The network of Cormen et al., Introduction to Algorithms, fig. 26.1: maximum flow 23.
    cap = np.zeros((6, 6))
    for u, v, c in [(0, 1, 16), (0, 2, 13), (1, 3, 12), (2, 1, 4), (2, 4, 14), (3, 2, 9),
                    (3, 5, 20), (4, 3, 7), (4, 5, 4)]:
        cap[u, v] = c
    assert max_flow(cap, 0, 5) == 23.0
    assert max_flow(cap, 0, 3) == 19.0          # into node 3: 12 + 7, limited by 2 -> 4 -> 3


def test_max_flow_sends_flow_back_when_needed():
    # s=0, a=1, b=2, c=3, d=4, t=5, every capacity 1. The first shortest path found is
    # s-a-c-t; the second unit must go s-b-c, back along a-c (cancelling a->c) and a-d-t.
    # Without the residual reverse edges the value would be 1.
    cap = np.zeros((6, 6))
    for u, v in [(0, 1), (0, 2), (1, 3), (1, 4), (2, 3), (3, 5), (4, 5)]:
        cap[u, v] = 1.0
    assert max_flow(cap, 0, 5) == 2.0


@pytest.mark.parametrize("seed", [*range(6), 142, 167])
def test_max_flow_equals_min_cut_on_random_graphs(seed):
    rng = np.random.default_rng(seed)
    V = 8
    cap = rng.random((V, V)) * (rng.random((V, V)) < 0.5)
    np.fill_diagonal(cap, 0.0)
    value = max_flow(cap, 0, V - 1)
    assert abs(value - _min_cut(cap, 0, V - 1)) < 1e-12


def test_max_flow_bad_input():
    with pytest.raises(ValueError, match="capacity: expected non-negative"):
        max_flow(-np.ones((3, 3)), 0, 2)
    with pytest.raises(ValueError, match="sink"):
        max_flow(np.ones((3, 3)), 1, 1)
    with pytest.raises(ValueError, match="square"):
        max_flow(np.ones((3, 4)), 0, 1)


# =========================================================== attention flow by hand

def test_flow_and_rollout_of_uniform_attention_by_hand():
    # Two blocks whose heads attend uniformly (1/T to every token). With residual 0.5:
    # A' = 0.5/T + 0.5 I. Rollout R[0, j] = sum_i A'[0, i] A'[i, j] = 0.75 / T for a patch j.
    # Flow: from patch j through each middle token i to the CLS token, one path per i, each
    # limited by min(A'[i, j], A'[0, i]) = 0.5 / T: T paths, so 0.5 in all.
    T = 5
    attn = [np.full((1, 2, T, T), 1.0 / T)] * 2
    np.testing.assert_allclose(attention_rollout(attn)[0], np.full(T - 1, 0.75 / T), rtol=1e-14)
    np.testing.assert_allclose(attention_flow(attn)[0], np.full(T - 1, 0.5), rtol=1e-12)
    # One block: the only path is the edge patch -> CLS, capacity A'[0, j] = 0.5 / T.
    np.testing.assert_allclose(attention_flow(attn[:1])[0], np.full(T - 1, 0.5 / T), rtol=1e-14)


def test_flow_matches_brute_force_min_cut_on_three_blocks():
    # The whole (L+1) x T layer graph, cut by brute force, against attention_flow.
    rng = np.random.default_rng(1)
    T, L = 3, 3
    attn = [rng.dirichlet(np.ones(T), size=(1, 2, T)) for _ in range(L)]      # (1, h, T, T)
    mats = []
    for a in attn:
        A = 0.5 * a[0].mean(0) + 0.5 * np.eye(T)
        mats.append(A / A.sum(1, keepdims=True))
    V = (L + 1) * T
    cap = np.zeros((V, V))
    for l, A in enumerate(mats, start=1):
        cap[(l - 1) * T:l * T, l * T:(l + 1) * T] = A.T                      # (l-1, j) -> (l, i)
    expected = [_min_cut(cap, j, L * T) for j in range(1, T)]
    np.testing.assert_allclose(attention_flow(attn)[0], expected, rtol=1e-12)


# =========================================================== gradient-weighted attention by hand

def test_gradient_weighted_attention_by_hand():
    # Block 1, two heads; the products grad * A (after max(0, .)) average to
    #   M1 = [[0, .2, .1], [0, 0, 0], [0, .3, 0]]
    # head 0 gives 2 * M1 except one negative product, which max(0, .) must drop.
    T = 3
    M1 = np.array([[0, .2, .1], [0, 0, 0], [0, .3, 0]])
    A1 = np.full((2, T, T), 0.5)
    G1 = np.stack([4 * M1, np.zeros((T, T))])             # head 0: grad*A = 2 M1, head 1: 0
    G1[0, 1, 2] = -3.0                                    # a negative product: clamped away
    M2 = np.array([[0, 0, .5], [0, 0, 0], [0, 0, 0]])
    A2 = np.full((2, T, T), 0.25)
    G2 = np.stack([4 * M2, 4 * M2])                       # both heads: grad*A = M2
    # R1 = I + M1 = [[1, .2, .1], [0, 1, 0], [0, .3, 1]]; R2 = R1 + M2 R1: row 0 gains
    # 0.5 * row 2 of R1 = [0, .15, .5], so row 0 = [1, .35, .6] and the map is [.35, .6].
    out = gradient_weighted_attention([A1[None], A2[None]], [G1[None], G2[None]])
    np.testing.assert_allclose(out, [[0.35, 0.6]], rtol=1e-14)
    # the patches query: the patch columns of rows 1 and 2 of R2, which are R1's (M2 has no
    # patch rows): [1, 0] and [.3, 1], mean [.65, .5]
    out = gradient_weighted_attention([A1[None], A2[None]], [G1[None], G2[None]], query="patches")
    np.testing.assert_allclose(out, [[0.65, 0.5]], rtol=1e-14)


def test_pool_and_replace_patches():
    x = np.arange(2 * 4 * 4 * 1, dtype=np.float64).reshape(2, 4, 4, 1)
    pooled = pool_to_patches(x, 2)
    assert pooled.shape == (2, 2, 2)
    assert pooled[0, 0, 1] == 2 + 3 + 6 + 7
    keep = np.array([[True, False, True, True], [False, True, True, True]])
    y = replace_patches(x, keep, 2, baseline=-1.0)
    assert (y[0, :2, 2:] == -1).all() and (y[1, :2, :2] == -1).all()
    assert (y[0, 2:] == x[0, 2:]).all() and y.dtype == x.dtype


# =========================================================== a one-block model whose attention we set

def selector_model(target: int, pool="cls", strength=4000.0) -> ViT:
    """A one-block, one-head model on 8x8 grey images (2x2 grid of 4x4 patches) in which every
    token attends only to patch ``target``, and the logits depend on nothing else.

    Token t is x_t = [c, -c, p_t, -p_t]: c the patch's mean pixel (0 for CLS), p_t = +1 for the
    target patch and -1 for every other token (position embeddings). Both halves have zero mean,
    so layer norm only divides by a positive spread and keeps the sign of p_t. The query is a
    constant (W_q = 0, b_q = e_2) and the key reads strength * p_t / spread, so the score of the
    target is at least 2000 above every other's: exp underflows to exactly 0 for the others.
    The values carry the content; the MLP's last layer is zero, so the block adds v_target to
    each token and the head reads nothing else.
    """
    cfg = ViTConfig(image_size=8, in_channels=1, patch_size=4, dim=4, depth=1, heads=1, mlp_dim=4,
                    num_classes=3, pool=pool, dtype="float64", seed=3)
    model = ViT(cfg)
    p = model.params
    p["patch_embed.W"][:] = 0.0
    p["patch_embed.W"][:, 0], p["patch_embed.W"][:, 1] = 1.0 / 16, -1.0 / 16
    p["cls_token"][:] = 0.0
    pos = -np.ones(5)
    pos[1 + target] = 1.0
    p["pos_embed"][0] = np.stack([np.zeros(5), np.zeros(5), pos, -pos], axis=1)
    W, b = p["blocks.0.attn.qkv.W"], p["blocks.0.attn.qkv.b"]
    W[:], b[:] = 0.0, 0.0
    b[2] = 1.0                                   # q = e_2 for every token
    W[2, 4 + 2] = strength                       # k_2 = strength * normalised p_t
    W[0, 8 + 0], W[1, 8 + 1] = 1.0, 1.0          # v = the content dimensions
    p["blocks.0.attn.proj.W"][:] = np.eye(4)
    p["blocks.0.mlp.fc2.W"][:] = 0.0
    rng = np.random.default_rng(0)
    p["head.W"][:] = rng.standard_normal((4, 3))
    return model


@pytest.mark.parametrize("target", [1, 2])
def test_every_method_on_the_selector_model(target):
    model = selector_model(target)
    images = np.random.default_rng(1).random((3, 8, 8, 1)) + 0.1
    maps = attribution_maps(model, images, np.array([0, 1, 2]))
    assert set(METHODS) <= set(maps)
    one_hot = np.zeros((3, 2, 2))
    one_hot.reshape(3, 4)[:, target] = 1.0
    # attention: all on the target patch; rollout and flow with residual 0.5: half of it
    np.testing.assert_array_equal(maps["cls_attention"], one_hot)
    np.testing.assert_array_equal(maps["cls_attention_mean"], one_hot)
    np.testing.assert_allclose(maps["rollout"], 0.5 * one_hot, atol=1e-15)
    np.testing.assert_allclose(maps["flow"], 0.5 * one_hot, atol=1e-15)
    # gradients and occlusion: nothing outside the target patch can move the logit
    off = one_hot == 0
    for m in ("input_grad", "grad_x_input", "occlusion", "grad_attention"):
        assert np.abs(maps[m][off]).max() < 1e-12, m
    assert (maps["input_grad"][~off] > 1e-3).all()
    assert (np.abs(maps["occlusion"][~off]) > 1e-3).all()
    # grad_attention at the target: max(0, dy/dA * A) with A = 1 there
    dA = model.attention_grads(np.eye(3), model.forward(images)[1])[0]      # (3, 1, 5, 5)
    np.testing.assert_allclose(maps["grad_attention"][~off], np.maximum(dA[:, 0, 0, 1 + target], 0.0),
                               rtol=1e-12)
    assert (dA[:, 0, 0, 1 + target] > 0).any()               # the rule is not vacuously all-zero here


def test_occlusion_drop_by_hand():
    # The selector model's logit depends on the target patch only, so occlusion's drop is
    # logit(x) - logit(x with the target patch at 0) there (computed here directly) and 0
    # everywhere else.
    model = selector_model(2)
    x = np.random.default_rng(2).random((2, 8, 8, 1))
    drops = occlusion_drops(model, x, np.array([1, 2]))
    x0 = x.copy()
    x0[:, 4:, :4] = 0.0                                     # patch 2 = row 1, column 0
    z, z0 = model(x), model(x0)
    np.testing.assert_allclose(drops[:, 2], [z[0, 1] - z0[0, 1], z[1, 2] - z0[1, 2]], rtol=1e-12)
    np.testing.assert_array_equal(drops[:, [0, 1, 3]], 0.0)


def test_gradient_x_input_is_the_first_order_occlusion_drop():
    # drop_j = f(x) - f(x without patch j) = grad f(x) . x_j + O(|x_j|^2): on images of small
    # pixels (1e-5), gradient x input pooled over a patch agrees with occlusion's drop to ~1e-5
    # of its size. An independent route to the same number (occlusion uses forwards only).
    cfg = ViTConfig(image_size=8, in_channels=1, patch_size=4, dim=8, depth=2, heads=2, mlp_dim=16,
                    num_classes=3, dtype="float64", seed=4)
    model = ViT(cfg)
    x = 1e-5 * np.random.default_rng(5).standard_normal((2, 8, 8, 1))
    maps = attribution_maps(model, x, np.array([0, 2]), ("grad_x_input", "occlusion"))
    scale = np.abs(maps["occlusion"]).max()
    assert scale > 0
    np.testing.assert_allclose(maps["grad_x_input"], maps["occlusion"], atol=1e-4 * scale)
    assert np.abs(maps["grad_x_input"] - maps["occlusion"]).max() < 1e-3 * scale


def test_predicted_class_is_the_default():
    model = selector_model(1)
    x = np.random.default_rng(3).random((4, 8, 8, 1))
    maps = attribution_maps(model, x, methods=("occlusion",))
    np.testing.assert_array_equal(maps["classes"], model(x).argmax(1))


def test_bad_arguments():
    model = selector_model(0)
    x = np.zeros((2, 8, 8, 1))
    with pytest.raises(ValueError, match="methods"):
        attribution_maps(model, x, methods=("saliency",))
    with pytest.raises(ValueError, match="classes: expected 2 class indices"):
        attribution_maps(model, x, np.array([0]))
    with pytest.raises(ValueError, match="classes: expected values in"):
        attribution_maps(model, x, np.array([0, 3]))
    with pytest.raises(ValueError, match="head"):
        attribution_maps(model, x, head=1)
    with pytest.raises(ValueError, match="query"):
        attribution_maps(model, x, query="all")


# =========================================================== attention gradients, numerically

class _Perturb:
    """Replaces attention's softmax so that block ``block``'s probabilities get ``eps * E`` added."""

    def __init__(self, block, E, eps):
        self.block, self.E, self.eps, self.calls = block, E, eps, 0
        self.real = attention_module.softmax_forward

    def __call__(self, S):
        A, cache = self.real(S)
        if self.calls == self.block:
            A = A + self.eps * self.E
        self.calls += 1
        return A, cache


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_attention_grads_equal_numerical_ones(pool, monkeypatch):
    # L = sum(dlogits * logits) with a random dlogits; for every block, the analytic dL/dA
    # against centred differences along a random direction E and at single entries.
    cfg = ViTConfig(image_size=8, in_channels=1, patch_size=4, dim=8, depth=2, heads=2, mlp_dim=16,
                    num_classes=3, pool=pool, dtype="float64", seed=1)
    model = ViT(cfg)
    rng = np.random.default_rng(0)
    for k in model.params:                       # move off the initial values (cls token ~ 0)
        model.params[k] = model.params[k] + 0.3 * rng.standard_normal(model.params[k].shape)
    x = rng.standard_normal((2, 8, 8, 1))
    dlogits = rng.standard_normal((2, 3))
    grads = model.attention_grads(dlogits, model.forward(x)[1])
    eps = 1e-6

    def loss_with(block, E, e):
        monkeypatch.setattr(attention_module, "softmax_forward", _Perturb(block, E, e))
        try:
            return float((model(x) * dlogits).sum())
        finally:
            monkeypatch.undo()

    for block, g in enumerate(grads):
        assert g.shape == (2, 2, 5, 5)
        E = rng.standard_normal(g.shape)
        num = (loss_with(block, E, eps) - loss_with(block, E, -eps)) / (2 * eps)
        ana = float((g * E).sum())
        assert abs(num - ana) / max(abs(num) + abs(ana), 1e-30) < 1e-8, (block, num, ana)
        for idx in [(0, 0, 0, 3), (1, 1, 2, 0), (1, 0, 4, 4)]:
            E = np.zeros(g.shape)
            E[idx] = 1.0
            num = (loss_with(block, E, eps) - loss_with(block, E, -eps)) / (2 * eps)
            assert abs(num - g[idx]) < 1e-8 * max(1.0, abs(num)), (block, idx, num, g[idx])
