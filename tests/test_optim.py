"""Tests for tinyvit.optim: update rules checked against hand arithmetic,
weight-decay masking, schedules, clipping, state round trips and errors.

The expected values below are written out as plain arithmetic on Python
floats, independent of the optimizer code, so a wrong sign, a missing bias
correction or a step counter that never advances changes the numbers.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from tinyvit.optim import (SGD, AdamW, clip_grad_norm, constant, decay_mask, global_norm,
                           linear_decay, make_schedule, warmup_cosine)


def arr(*values, dtype=np.float64):
    return np.array(values, dtype=dtype)


# ----------------------------------------------------------------- SGD

def test_sgd_plain_one_step():
    p = {"head.b": arr(1.0, -2.0)}
    g = {"head.b": arr(0.5, 0.25)}
    SGD(lr=0.1, momentum=0.0).step(p, g)
    # p - lr * g
    np.testing.assert_allclose(p["head.b"], [1.0 - 0.1 * 0.5, -2.0 - 0.1 * 0.25], rtol=0, atol=1e-15)


def test_sgd_momentum_two_steps():
    p = {"head.b": arr(1.0, -2.0)}
    opt = SGD(lr=0.1, momentum=0.9)
    opt.step(p, {"head.b": arr(0.5, 0.25)})
    # step 1: buf = g = (0.5, 0.25); p = (1 - 0.05, -2 - 0.025)
    np.testing.assert_allclose(p["head.b"], [0.95, -2.025], rtol=0, atol=1e-15)
    opt.step(p, {"head.b": arr(-1.0, 1.0)})
    # step 2: buf = 0.9 * (0.5, 0.25) + (-1, 1) = (-0.55, 1.225)
    np.testing.assert_allclose(p["head.b"], [0.95 + 0.1 * 0.55, -2.025 - 0.1 * 1.225],
                               rtol=0, atol=1e-14)
    assert opt.step_count == 2


def test_sgd_nesterov_two_steps():
    p = {"head.b": arr(1.0)}
    opt = SGD(lr=0.1, momentum=0.9, nesterov=True)
    opt.step(p, {"head.b": arr(2.0)})
    # buf = 2; update = g + 0.9 * buf = 3.8; p = 1 - 0.38
    np.testing.assert_allclose(p["head.b"], [0.62], rtol=0, atol=1e-15)
    opt.step(p, {"head.b": arr(1.0)})
    # buf = 0.9 * 2 + 1 = 2.8; update = 1 + 0.9 * 2.8 = 3.52; p = 0.62 - 0.352
    np.testing.assert_allclose(p["head.b"], [0.268], rtol=0, atol=1e-14)


def test_sgd_coupled_weight_decay_on_matrix_only():
    p = {"head.W": np.array([[2.0]]), "head.b": arr(2.0)}
    g = {"head.W": np.array([[1.0]]), "head.b": arr(1.0)}
    g_before = {k: v.copy() for k, v in g.items()}
    SGD(lr=0.1, momentum=0.0, weight_decay=0.5).step(p, g)
    # matrix: g + wd * p = 1 + 0.5 * 2 = 2 -> 2 - 0.2; bias: 2 - 0.1
    np.testing.assert_allclose(p["head.W"], [[1.8]], rtol=0, atol=1e-15)
    np.testing.assert_allclose(p["head.b"], [1.9], rtol=0, atol=1e-15)
    for k in g:   # the caller's gradients are not modified
        np.testing.assert_array_equal(g[k], g_before[k])


# ----------------------------------------------------------------- AdamW

def test_adamw_one_step_by_hand():
    p = {"head.W": np.array([[1.0]]), "head.b": arr(1.0)}
    g = {"head.W": np.array([[0.5]]), "head.b": arr(0.5)}
    opt = AdamW(lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    opt.step(p, g)
    m = (1 - 0.9) * 0.5                     # 0.05
    v = (1 - 0.999) * 0.5 ** 2              # 0.00025
    m_hat = m / (1 - 0.9)                   # 0.5
    v_hat = v / (1 - 0.999)                 # 0.25
    adam = 0.1 * m_hat / (math.sqrt(v_hat) + 1e-8)
    expected_W = 1.0 * (1 - 0.1 * 0.1) - adam   # decoupled decay, then Adam
    expected_b = 1.0 - adam                     # bias: no decay
    np.testing.assert_allclose(p["head.W"], [[expected_W]], rtol=1e-14)
    np.testing.assert_allclose(p["head.b"], [expected_b], rtol=1e-14)
    assert abs(expected_W - 0.89) < 1e-6    # sanity of the arithmetic itself
    assert opt.step_count == 1


def test_adamw_two_steps_bias_correction_and_counter():
    p = {"w.W": np.array([[1.0]])}
    opt = AdamW(lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    assert opt.step_count == 0
    opt.step(p, {"w.W": np.array([[0.5]])})
    opt.step(p, {"w.W": np.array([[-0.2]])})
    assert opt.step_count == 2
    lr, wd, eps = 0.1, 0.1, 1e-8
    # step 1
    m1 = 0.1 * 0.5
    v1 = 0.001 * 0.25
    p1 = 1.0 * (1 - lr * wd) - lr * (m1 / 0.1) / (math.sqrt(v1 / 0.001) + eps)
    # step 2: t = 2 in the bias corrections
    m2 = 0.9 * m1 + 0.1 * (-0.2)
    v2 = 0.999 * v1 + 0.001 * 0.04
    bc1 = 1 - 0.9 ** 2
    bc2 = 1 - 0.999 ** 2
    p2 = p1 * (1 - lr * wd) - lr * (m2 / bc1) / (math.sqrt(v2 / bc2) + eps)
    np.testing.assert_allclose(p["w.W"], [[p2]], rtol=1e-13)
    # A counter stuck at 1 would give a clearly different value.
    stuck = p1 * (1 - lr * wd) - lr * (m2 / 0.1) / (math.sqrt(v2 / 0.001) + eps)
    assert abs(stuck - p2) > 1e-3


def test_adamw_eps_is_added_after_sqrt_of_v_hat():
    # With a tiny gradient, eps matters: torch's formula is m_hat / (sqrt(v_hat) + eps).
    p = {"b": arr(0.0)}
    AdamW(lr=1.0, eps=1e-3, weight_decay=0.0).step(p, {"b": arr(1e-3)})
    expected = -1e-3 / (1e-3 + 1e-3)        # m_hat = g, sqrt(v_hat) = |g|
    np.testing.assert_allclose(p["b"], [expected], rtol=1e-12)


def test_updates_in_place_and_keep_float32():
    for opt in (SGD(lr=0.1), SGD(lr=0.1, nesterov=True, weight_decay=0.1), AdamW(lr=0.1)):
        rng = np.random.default_rng(0)
        params = {"head.W": rng.normal(size=(3, 2)).astype(np.float32),
                  "head.b": rng.normal(size=2).astype(np.float32)}
        grads = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
        refs = dict(params)
        before = {k: v.copy() for k, v in params.items()}
        opt.step(params, grads, lr=0.05)
        for k in params:
            assert params[k] is refs[k]
            assert params[k].dtype == np.float32
            assert not np.array_equal(params[k], before[k])
        for buf in opt.state.values():
            for a in buf.values():
                assert a.dtype == np.float32


def test_lr_override_is_used_for_that_step_only():
    p = {"b": arr(1.0)}
    opt = SGD(lr=0.1, momentum=0.0)
    opt.step(p, {"b": arr(1.0)}, lr=0.5)
    np.testing.assert_allclose(p["b"], [0.5])
    opt.step(p, {"b": arr(1.0)})
    np.testing.assert_allclose(p["b"], [0.4])
    assert opt.lr == 0.1


# ----------------------------------------------------------------- decay mask

def test_decay_mask_names():
    D, T = 4, 5
    assert decay_mask("blocks.0.attn.qkv.W", np.zeros((D, 3 * D)))
    assert decay_mask("patch_embed.W", np.zeros((12, D)))
    assert decay_mask("head.W", np.zeros((D, 10)))
    assert not decay_mask("blocks.0.attn.qkv.b", np.zeros(3 * D))
    assert not decay_mask("blocks.0.norm1.gamma", np.zeros(D))
    assert not decay_mask("norm.beta", np.zeros(D))
    assert not decay_mask("cls_token", np.zeros((1, 1, D)))
    assert not decay_mask("pos_embed", np.zeros((1, T, D)))


def test_adamw_decay_applied_exactly_where_expected():
    rng = np.random.default_rng(1)
    D, T = 4, 5
    shapes = {"blocks.0.attn.qkv.W": (D, 3 * D), "blocks.0.attn.qkv.b": (3 * D,),
              "blocks.0.norm1.gamma": (D,), "blocks.0.norm1.beta": (D,),
              "cls_token": (1, 1, D), "pos_embed": (1, T, D), "head.W": (D, 3), "head.b": (3,)}
    params = {k: rng.normal(size=s) for k, s in shapes.items()}
    before = {k: v.copy() for k, v in params.items()}
    zero = {k: np.zeros(s) for k, s in shapes.items()}   # zero gradient: only decay can move p
    AdamW(lr=0.1, weight_decay=0.5).step(params, zero)
    for k in shapes:
        if k in ("blocks.0.attn.qkv.W", "head.W"):
            np.testing.assert_allclose(params[k], before[k] * (1 - 0.1 * 0.5), rtol=1e-15)
        else:
            np.testing.assert_array_equal(params[k], before[k])


# ----------------------------------------------------------------- convergence

def test_adamw_minimises_a_quadratic():
    rng = np.random.default_rng(2)
    target = rng.normal(size=(6, 3))
    scale = rng.uniform(0.5, 5.0, size=(6, 3))          # badly conditioned on purpose
    p = {"x.W": np.zeros((6, 3))}

    def loss_grad():
        diff = p["x.W"] - target
        return 0.5 * float(np.sum(scale * diff ** 2)), scale * diff

    steps = 400
    sched = make_schedule("cosine", base_lr=0.1, total_steps=steps, warmup_steps=10)
    opt = AdamW(weight_decay=0.0)
    first, _ = loss_grad()
    for t in range(steps):
        _, grad = loss_grad()
        opt.step(p, {"x.W": grad}, lr=sched(t))
    last, _ = loss_grad()
    assert last < first * 1e-4, (first, last)


# ----------------------------------------------------------------- clipping

def test_clip_grad_norm_scales_to_max_norm():
    grads = {"a": np.array([3.0, 0.0], dtype=np.float32), "b": np.array([[4.0]], dtype=np.float32)}
    norm = clip_grad_norm(grads, 1.0)
    assert norm == pytest.approx(5.0)
    assert global_norm(grads) == pytest.approx(1.0, abs=1e-7)
    np.testing.assert_allclose(grads["a"], [0.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(grads["b"], [[0.8]], rtol=1e-6)
    assert grads["a"].dtype == np.float32


def test_clip_grad_norm_leaves_small_grads_untouched():
    grads = {"a": np.array([3.0, 0.0]), "b": np.array([[4.0]])}
    a = grads["a"]
    assert clip_grad_norm(grads, 10.0) == pytest.approx(5.0)
    assert grads["a"] is a
    np.testing.assert_array_equal(grads["a"], [3.0, 0.0])
    np.testing.assert_array_equal(grads["b"], [[4.0]])


def test_clip_grad_norm_nonfinite():
    grads = {"a": np.array([np.inf, 1.0]), "b": np.array([1.0])}
    with pytest.raises(ValueError, match="'a'"):
        clip_grad_norm(grads, 1.0)
    assert clip_grad_norm(grads, 1.0, error_if_nonfinite=False) == math.inf
    np.testing.assert_array_equal(grads["b"], [1.0])


# ----------------------------------------------------------------- schedules

def test_warmup_cosine_values():
    kw = dict(total_steps=110, base_lr=1.0, warmup_steps=10)
    assert warmup_cosine(0, **kw) == pytest.approx(0.1)          # ~0, not 0
    assert warmup_cosine(4, **kw) == pytest.approx(0.5)
    assert warmup_cosine(9, **kw) == pytest.approx(1.0)          # end of warm-up
    assert warmup_cosine(10, **kw) == pytest.approx(1.0)
    assert warmup_cosine(60, **kw) == pytest.approx(0.5)         # half-way through the cosine
    assert warmup_cosine(110, **kw) == pytest.approx(0.0, abs=1e-15)
    assert warmup_cosine(500, **kw) == pytest.approx(0.0, abs=1e-15)
    # with a floor: mid = min + (base - min) / 2
    assert warmup_cosine(60, min_lr=0.1, **kw) == pytest.approx(0.55)
    assert warmup_cosine(110, min_lr=0.1, **kw) == pytest.approx(0.1)
    # monotone after warm-up
    values = [warmup_cosine(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_constant_and_linear_and_make_schedule():
    assert constant(0, 100, 0.5, warmup_steps=5) == pytest.approx(0.1)
    assert constant(4, 100, 0.5, warmup_steps=5) == pytest.approx(0.5)
    assert constant(99, 100, 0.5, warmup_steps=5) == 0.5
    assert constant(0, 100, 0.5) == 0.5
    assert linear_decay(55, 100, 1.0, warmup_steps=10) == pytest.approx(0.5)
    sched = make_schedule("cosine", base_lr=2.0, total_steps=20, warmup_steps=4, min_lr=0.2)
    assert sched(3) == pytest.approx(2.0)
    assert sched(12) == pytest.approx(1.1)
    assert sched(20) == pytest.approx(0.2)
    assert make_schedule("constant", 0.3, 10)(7) == 0.3
    assert "cosine" in repr(sched)


@pytest.mark.parametrize("call, word", [
    (lambda: warmup_cosine(-1, 10, 0.1), "step"),
    (lambda: warmup_cosine(0, 0, 0.1), "total_steps"),
    (lambda: warmup_cosine(0, 10, 0.1, warmup_steps=11), "warmup_steps"),
    (lambda: warmup_cosine(0, 10, -0.1), "base_lr"),
    (lambda: warmup_cosine(0, 10, 0.1, min_lr=0.2), "min_lr"),
    (lambda: warmup_cosine(1.5, 10, 0.1), "step"),
    (lambda: make_schedule("exp", 0.1, 10), "kind"),
    (lambda: make_schedule("cosine", 0.1, 10, warmup_steps=-1), "warmup_steps"),
])
def test_schedule_errors(call, word):
    with pytest.raises((ValueError, TypeError), match=word):
        call()


# ----------------------------------------------------------------- state

@pytest.mark.parametrize("make", [lambda: AdamW(lr=0.01, weight_decay=0.1),
                                  lambda: SGD(lr=0.01, momentum=0.9, nesterov=True, weight_decay=0.1)])
def test_state_dict_round_trip_gives_identical_next_step(make):
    rng = np.random.default_rng(3)
    params = {"head.W": rng.normal(size=(4, 3)).astype(np.float32),
              "head.b": rng.normal(size=3).astype(np.float32)}
    grads = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()} for _ in range(4)]
    a = make()
    for g in grads[:3]:
        a.step(params, g)
    state = a.state_dict()
    assert state["step"].dtype == np.int64 and state["step"].shape == () and int(state["step"]) == 3
    assert all(isinstance(v, np.ndarray) for v in state.values())
    b = make()
    b.load_state_dict(state)
    assert b.step_count == 3
    pa = {k: v.copy() for k, v in params.items()}
    pb = {k: v.copy() for k, v in params.items()}
    a.step(pa, grads[3])
    b.step(pb, grads[3])
    for k in params:
        np.testing.assert_array_equal(pa[k], pb[k])
    # the saved state is a snapshot: later steps do not change it
    assert int(state["step"]) == 3
    # a fresh optimizer (no state) would give a different step
    c = make()
    pc = {k: v.copy() for k, v in params.items()}
    c.step(pc, grads[3])
    assert not np.array_equal(pc["head.W"], pa["head.W"])


def test_state_dict_keys():
    params = {"head.W": np.ones((2, 2)), "head.b": np.ones(2)}
    grads = {k: np.ones_like(v) for k, v in params.items()}
    adam = AdamW()
    adam.step(params, grads)
    assert set(adam.state_dict()) == {"step", "m.head.W", "m.head.b", "v.head.W", "v.head.b"}
    sgd = SGD(lr=0.1)
    sgd.step(params, grads)
    assert set(sgd.state_dict()) == {"step", "buf.head.W", "buf.head.b"}
    plain = SGD(lr=0.1, momentum=0.0)
    plain.step(params, grads)
    assert set(plain.state_dict()) == {"step"}
    assert plain.step_count == 1


def test_load_state_dict_errors():
    params = {"head.W": np.ones((2, 2)), "head.b": np.ones(2)}
    grads = {k: np.ones_like(v) for k, v in params.items()}
    src = AdamW()
    src.step(params, grads)
    good = src.state_dict()

    def without(key):
        return {k: v for k, v in good.items() if k != key}

    with pytest.raises(ValueError, match="'step'"):
        AdamW().load_state_dict(without("step"))
    with pytest.raises(ValueError, match="v.head.b|'m.\\*' and 'v.\\*'"):
        AdamW().load_state_dict(without("v.head.b"))
    with pytest.raises(ValueError, match="unexpected entry 'buf.head.W'"):
        AdamW().load_state_dict({**good, "buf.head.W": np.zeros((2, 2))})
    with pytest.raises(ValueError, match="step"):
        AdamW().load_state_dict({**good, "step": np.array(-1)})
    with pytest.raises(ValueError, match="shape"):
        AdamW().load_state_dict({**good, "v.head.W": np.zeros((3, 2))})
    with pytest.raises(TypeError, match="state"):
        AdamW().load_state_dict([1, 2])
    # state for other parameters than the ones stepped
    opt = AdamW()
    opt.load_state_dict(good)
    with pytest.raises(ValueError, match="head.b"):
        opt.step({"head.W": np.ones((2, 2))}, {"head.W": np.ones((2, 2))})
    with pytest.raises(ValueError, match="shape"):
        opt.step({"head.W": np.ones((2, 3)), "head.b": np.ones(2)},
                 {"head.W": np.ones((2, 3)), "head.b": np.ones(2)})


# ----------------------------------------------------------------- errors

@pytest.mark.parametrize("make, word", [
    (lambda: SGD(lr=-0.1), "lr"),
    (lambda: SGD(lr="0.1"), "lr"),
    (lambda: SGD(lr=0.1, momentum=1.5), "momentum"),
    (lambda: SGD(lr=0.1, momentum=0.0, nesterov=True), "nesterov"),
    (lambda: SGD(lr=0.1, weight_decay=-1.0), "weight_decay"),
    (lambda: AdamW(betas=(1.0, 0.999)), "betas\\[0\\]"),
    (lambda: AdamW(betas=(0.9, 1.2)), "betas\\[1\\]"),
    (lambda: AdamW(betas=0.9), "betas"),
    (lambda: AdamW(eps=0.0), "eps"),
    (lambda: AdamW(lr=float("nan")), "lr"),
    (lambda: AdamW(decay="all"), "decay"),
])
def test_constructor_errors(make, word):
    with pytest.raises((ValueError, TypeError), match=word):
        make()


def test_step_errors_name_the_argument():
    p = {"head.W": np.ones((2, 2), dtype=np.float32)}
    opt = AdamW()
    with pytest.raises(ValueError, match="missing \\['head.W'\\]"):
        opt.step(p, {})
    with pytest.raises(ValueError, match="unknown \\['x'\\]"):
        opt.step(p, {"head.W": np.ones((2, 2), np.float32), "x": np.ones(1, np.float32)})
    with pytest.raises(ValueError, match=r"grads\['head.W'\]: expected shape \(2, 2\)"):
        opt.step(p, {"head.W": np.ones((2, 3), np.float32)})
    with pytest.raises(TypeError, match=r"grads\['head.W'\]: expected dtype float32"):
        opt.step(p, {"head.W": np.ones((2, 2))})
    with pytest.raises(ValueError, match=r"grads\['head.W'\]: expected finite"):
        opt.step(p, {"head.W": np.full((2, 2), np.nan, np.float32)})
    with pytest.raises(TypeError, match="params"):
        opt.step([p], {})
    with pytest.raises(ValueError, match="lr"):
        opt.step(p, {"head.W": np.ones((2, 2), np.float32)}, lr=-1.0)
    assert opt.step_count == 0          # failed calls do not advance the counter
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm({"a": np.ones(2)}, 0.0)
    with pytest.raises(TypeError, match="grads"):
        clip_grad_norm([np.ones(2)], 1.0)


# ----------------------------------------------------------------- torch

def _torch_run(torch_opt_cls, torch_kwargs, ours, params0, grads_seq, lrs, decayed):
    torch = pytest.importorskip("torch")
    tparams = {k: torch.tensor(v.copy(), dtype=torch.float64, requires_grad=True) for k, v in params0.items()}
    wd = torch_kwargs.pop("weight_decay")
    groups = [{"params": [tparams[k] for k in params0 if k in decayed], "weight_decay": wd},
              {"params": [tparams[k] for k in params0 if k not in decayed], "weight_decay": 0.0}]
    topt = torch_opt_cls(groups, lr=lrs[0], **torch_kwargs)
    mine = {k: v.copy() for k, v in params0.items()}
    for grads, lr in zip(grads_seq, lrs):
        for group in topt.param_groups:
            group["lr"] = lr
        for k, t in tparams.items():
            t.grad = torch.tensor(grads[k])
        topt.step()
        ours.step(mine, grads, lr=lr)
    for k in params0:
        np.testing.assert_allclose(mine[k], tparams[k].detach().numpy(), rtol=1e-12, atol=1e-14)


def _toy_problem(seed=4, steps=6):
    rng = np.random.default_rng(seed)
    params0 = {"blocks.0.mlp.fc1.W": rng.normal(size=(3, 4)), "blocks.0.mlp.fc1.b": rng.normal(size=4),
               "cls_token": rng.normal(size=(1, 1, 4)), "norm.gamma": rng.normal(size=4)}
    grads_seq = [{k: rng.normal(size=v.shape) for k, v in params0.items()} for _ in range(steps)]
    sched = make_schedule("cosine", base_lr=0.05, total_steps=steps, warmup_steps=2)
    lrs = [sched(t) for t in range(steps)]
    decayed = {k for k, v in params0.items() if decay_mask(k, v)}
    assert decayed == {"blocks.0.mlp.fc1.W"}
    return params0, grads_seq, lrs, decayed


def test_adamw_matches_torch_float64():
    torch = pytest.importorskip("torch")
    params0, grads_seq, lrs, decayed = _toy_problem()
    _torch_run(torch.optim.AdamW, dict(betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1),
               AdamW(betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1), params0, grads_seq, lrs, decayed)


@pytest.mark.parametrize("momentum, nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_sgd_matches_torch_float64(momentum, nesterov):
    torch = pytest.importorskip("torch")
    params0, grads_seq, lrs, decayed = _toy_problem()
    _torch_run(torch.optim.SGD, dict(momentum=momentum, nesterov=nesterov, weight_decay=0.01),
               SGD(lr=0.1, momentum=momentum, nesterov=nesterov, weight_decay=0.01),
               params0, grads_seq, lrs, decayed)
