"""Reading and writing the Google ViT and timm layouts (tinyvit/interop.py) and the
ImageNet helpers (tinyvit/imagenet.py).

No real checkpoint is available offline, so every file is made here: round trips
through both layouts, a hand-built Google file with known values checked element
by element, an independent Google-layout forward written with einsum over the
(D, h, d) kernels, and (when torch is installed) a timm-layout torch forward
that reads the saved timm file directly.
"""

import math
import os

import numpy as np
import pytest

from tinyvit import ViT, ViTConfig
from tinyvit.imagenet import (imagenet_class_names, imagenet_preprocess_info, preprocess_imagenet,
                              preprocess_kwargs, top_k)
from tinyvit.interop import (detect_format, google_arrays, load_google_vit, load_model, load_timm,
                             resample_pos_embed, resize_bicubic, resize_bilinear, save_google_vit, save_timm,
                             timm_arrays)

from conftest import AllocationSpy, forge_npz_member

CONFIGS = [
    dict(image_size=16, patch_size=4, dim=16, depth=2, heads=4, mlp_dim=32, num_classes=5,
         dtype="float64"),
    dict(image_size=(16, 24), patch_size=4, dim=24, depth=2, heads=3, mlp_dim=40, num_classes=7,
         dtype="float64"),
    dict(image_size=12, in_channels=1, patch_size=3, dim=20, depth=3, heads=5, mlp_dim=24,
         num_classes=4, pool="mean", gelu="tanh", dtype="float32"),
    dict(image_size=(8, 12), patch_size=4, dim=24, depth=1, heads=3, mlp_dim=16, num_classes=3,
         pos_embed="sincos", dtype="float64"),
]
IDS = ["d16h4", "d24h3-nonsquare", "d20h5-mean-tanh-f32", "sincos-nonsquare"]


def random_model(kw, seed=0):
    """A model whose every parameter (biases, norms, CLS included) is random, so that a
    mapping that drops or swaps one cannot hide behind zeros and ones."""
    model = ViT(ViTConfig(**kw, seed=seed))
    rng = np.random.default_rng(seed + 100)
    for k, v in model.params.items():
        model.params[k] = (v + rng.standard_normal(v.shape) * 0.2).astype(v.dtype)
    return model


def images_for(cfg, n=2, seed=1):
    H, W = cfg.image_hw
    return np.random.default_rng(seed).random((n, H, W, cfg.in_channels)).astype(cfg.dtype)


def load_kwargs(cfg):
    return dict(image_size=cfg.image_size, pool=cfg.pool, gelu=cfg.gelu, dtype=cfg.dtype,
                pos_embed=cfg.pos_embed)


def assert_same_model(a, b):
    assert dict(a.config.to_dict(), seed=0) == dict(b.config.to_dict(), seed=0)
    assert list(a.params) == list(b.params)
    for k in a.params:
        assert b.params[k].dtype == a.params[k].dtype, k
        np.testing.assert_array_equal(b.params[k], a.params[k], err_msg=k)
    x = images_for(a.config)
    np.testing.assert_array_equal(b(x), a(x))


# --------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("kw", CONFIGS, ids=IDS)
def test_google_round_trip(tmp_path, kw):
    model = random_model(kw)
    path = tmp_path / "vit.npz"
    save_google_vit(model, path)
    back = load_google_vit(path, **load_kwargs(model.config))
    assert_same_model(model, back)
    # the file itself holds exactly the Google names, nothing of tinyvit's
    with np.load(path, allow_pickle=False) as f:
        assert "embedding/kernel" in f.files and not any("." in k for k in f.files)


@pytest.mark.parametrize("kw", CONFIGS, ids=IDS)
def test_timm_round_trip(tmp_path, kw):
    model = random_model(kw, seed=3)
    path = tmp_path / "timm.npz"
    save_timm(model, path)
    back = load_timm(path, heads=model.config.heads, **load_kwargs(model.config))
    assert_same_model(model, back)


def test_google_and_timm_files_agree(tmp_path):
    """The same model written both ways: the timm conv weight is the Google kernel
    transposed to (D, C, P, P), and qkv.weight stacks query/key/value row-wise."""
    model = random_model(CONFIGS[1])
    g, t = google_arrays(model), timm_arrays(model)
    np.testing.assert_array_equal(t["patch_embed.proj.weight"],
                                  g["embedding/kernel"].transpose(3, 2, 0, 1))
    D = model.config.dim
    qkv = np.concatenate([g[f"Transformer/encoderblock_1/MultiHeadDotProductAttention_1/{n}/kernel"]
                          .reshape(D, D).T for n in ("query", "key", "value")])
    np.testing.assert_array_equal(t["blocks.1.attn.qkv.weight"], qkv)


def test_sincos_model_saved_as_learned_loads_either_way(tmp_path):
    model = random_model(CONFIGS[3])
    path = tmp_path / "s.npz"
    save_google_vit(model, path)
    learned = load_google_vit(path, image_size=(8, 12), dtype="float64")
    assert learned.config.pos_embed == "learned"
    np.testing.assert_array_equal(learned.params["pos_embed"], model._fixed_pos)
    x = images_for(model.config)
    np.testing.assert_array_equal(learned(x), model(x))
    # a learned (random) position embedding is not the sin-cos table: refused
    other = tmp_path / "l.npz"
    save_google_vit(random_model(dict(CONFIGS[3], pos_embed="learned")), other)
    with pytest.raises(ValueError, match="sin-cos"):
        load_google_vit(other, image_size=(8, 12), pos_embed="sincos")


# --------------------------------------------------------------------------- hand-built file
P, C, D, H_, d, M, K, G = 2, 3, 6, 3, 2, 4, 5, 2          # G x G grid -> T = 5


def hand_built_google(prefix=""):
    """Every array filled with distinct known numbers: key number * 1000 + arange."""
    blk = "Transformer/encoderblock_0/"
    mha = blk + "MultiHeadDotProductAttention_1/"
    shapes = {"embedding/kernel": (P, P, C, D), "embedding/bias": (D,), "cls": (1, 1, D),
              "Transformer/posembed_input/pos_embedding": (1, G * G + 1, D),
              blk + "LayerNorm_0/scale": (D,), blk + "LayerNorm_0/bias": (D,),
              mha + "query/kernel": (D, H_, d), mha + "query/bias": (H_, d),
              mha + "key/kernel": (D, H_, d), mha + "key/bias": (H_, d),
              mha + "value/kernel": (D, H_, d), mha + "value/bias": (H_, d),
              mha + "out/kernel": (H_, d, D), mha + "out/bias": (D,),
              blk + "LayerNorm_2/scale": (D,), blk + "LayerNorm_2/bias": (D,),
              blk + "MlpBlock_3/Dense_0/kernel": (D, M), blk + "MlpBlock_3/Dense_0/bias": (M,),
              blk + "MlpBlock_3/Dense_1/kernel": (M, D), blk + "MlpBlock_3/Dense_1/bias": (D,),
              "Transformer/encoder_norm/scale": (D,), "Transformer/encoder_norm/bias": (D,),
              "head/kernel": (D, K), "head/bias": (K,)}
    return {prefix + k: (1000.0 * (n + 1) + np.arange(math.prod(s), dtype=np.float64)).reshape(s)
            for n, (k, s) in enumerate(shapes.items())}


def test_hand_built_google_lands_element_by_element():
    a = hand_built_google()
    m = load_google_vit(a, dtype="float64")
    cfg, p = m.config, m.params
    assert (cfg.patch_size, cfg.in_channels, cfg.dim, cfg.heads, cfg.mlp_dim, cfg.num_classes,
            cfg.depth, cfg.image_hw) == (P, C, D, H_, M, K, 1, (G * P, G * P))
    assert (cfg.pool, cfg.gelu, cfg.pos_embed) == ("cls", "exact", "learned")
    mha = "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/"
    kern = a["embedding/kernel"]
    for py in range(P):
        for px in range(P):
            for c in range(C):
                for j in range(D):
                    assert p["patch_embed.W"][(py * P + px) * C + c, j] == kern[py, px, c, j]
    W, b = p["blocks.0.attn.qkv.W"], p["blocks.0.attn.qkv.b"]
    for s, name in enumerate(("query", "key", "value")):
        k_, b_ = a[mha + name + "/kernel"], a[mha + name + "/bias"]
        for head in range(H_):
            for e in range(d):
                col = s * D + head * d + e
                assert b[col] == b_[head, e]
                for r in range(D):
                    assert W[r, col] == k_[r, head, e]
    # the two examples of the issue, spelled out
    np.testing.assert_array_equal(W[:, d:2 * d], a[mha + "query/kernel"][:, 1, :])
    np.testing.assert_array_equal(W[:, D:D + d], a[mha + "key/kernel"][:, 0, :])
    out = a[mha + "out/kernel"]
    for head in range(H_):
        for e in range(d):
            for j in range(D):
                assert p["blocks.0.attn.proj.W"][head * d + e, j] == out[head, e, j]
    same = {"patch_embed.b": "embedding/bias", "cls_token": "cls",
            "pos_embed": "Transformer/posembed_input/pos_embedding",
            "blocks.0.norm1.gamma": "Transformer/encoderblock_0/LayerNorm_0/scale",
            "blocks.0.norm1.beta": "Transformer/encoderblock_0/LayerNorm_0/bias",
            "blocks.0.attn.proj.b": mha + "out/bias",
            "blocks.0.norm2.gamma": "Transformer/encoderblock_0/LayerNorm_2/scale",
            "blocks.0.norm2.beta": "Transformer/encoderblock_0/LayerNorm_2/bias",
            "blocks.0.mlp.fc1.W": "Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel",
            "blocks.0.mlp.fc1.b": "Transformer/encoderblock_0/MlpBlock_3/Dense_0/bias",
            "blocks.0.mlp.fc2.W": "Transformer/encoderblock_0/MlpBlock_3/Dense_1/kernel",
            "blocks.0.mlp.fc2.b": "Transformer/encoderblock_0/MlpBlock_3/Dense_1/bias",
            "norm.gamma": "Transformer/encoder_norm/scale", "norm.beta": "Transformer/encoder_norm/bias",
            "head.W": "head/kernel", "head.b": "head/bias"}
    for ours, theirs in same.items():
        np.testing.assert_array_equal(p[ours], a[theirs], err_msg=ours)
    # and back out: the exact inverse
    back = google_arrays(m)
    assert set(back) == set(a)
    for k in a:
        np.testing.assert_array_equal(back[k], a[k], err_msg=k)


def _erf(x):
    return np.frompyfunc(math.erf, 1, 1)(x).astype(np.float64)


def google_reference_logits(a, images, gelu="exact"):
    """A forward written directly on the Google arrays: a stride-P convolution as a sum
    over kernel offsets, attention with einsum over the (D, h, d) kernels."""
    kern = a["embedding/kernel"]
    P_, _, C_, D_ = kern.shape
    B, H, W, _ = images.shape
    x = np.zeros((B, H // P_, W // P_, D_))
    for py in range(P_):
        for px in range(P_):
            x += np.einsum("bijc,cd->bijd", images[:, py::P_, px::P_, :], kern[py, px])
    x = x.reshape(B, -1, D_) + a["embedding/bias"]
    x = np.concatenate([np.repeat(a["cls"], B, axis=0), x], axis=1)
    x = x + a["Transformer/posembed_input/pos_embedding"]

    def ln(z, pre):
        mu = z.mean(-1, keepdims=True)
        var = ((z - mu) ** 2).mean(-1, keepdims=True)
        return (z - mu) / np.sqrt(var + 1e-6) * a[pre + "/scale"] + a[pre + "/bias"]

    i = 0
    while f"Transformer/encoderblock_{i}/LayerNorm_0/scale" in a:
        blk = f"Transformer/encoderblock_{i}/"
        mha = blk + "MultiHeadDotProductAttention_1/"
        y = ln(x, blk + "LayerNorm_0")
        q, k, v = (np.einsum("btD,Dhd->bthd", y, a[mha + n + "/kernel"]) + a[mha + n + "/bias"]
                   for n in ("query", "key", "value"))
        s = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        o = np.einsum("bhqk,bkhd->bqhd", s, v)
        x = x + np.einsum("bqhd,hdD->bqD", o, a[mha + "out/kernel"]) + a[mha + "out/bias"]
        y = ln(x, blk + "LayerNorm_2")
        y = y @ a[blk + "MlpBlock_3/Dense_0/kernel"] + a[blk + "MlpBlock_3/Dense_0/bias"]
        if gelu == "exact":
            y = 0.5 * y * (1.0 + _erf(y / math.sqrt(2.0)))
        else:
            y = 0.5 * y * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (y + 0.044715 * y ** 3)))
        x = x + y @ a[blk + "MlpBlock_3/Dense_1/kernel"] + a[blk + "MlpBlock_3/Dense_1/bias"]
        i += 1
    x = ln(x, "Transformer/encoder_norm")
    return x[:, 0] @ a["head/kernel"] + a["head/bias"]


@pytest.mark.parametrize("gelu", ["exact", "tanh"])
def test_loaded_google_model_matches_a_forward_on_the_google_arrays(gelu):
    rng = np.random.default_rng(7)
    a = {k: rng.standard_normal(v.shape) * 0.3 for k, v in hand_built_google().items()}
    images = rng.random((3, G * P, G * P, C))
    model = load_google_vit(a, dtype="float64", gelu=gelu)
    np.testing.assert_allclose(model(images), google_reference_logits(a, images, gelu),
                               rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- strictness
def test_missing_unexpected_and_wrong_shape_are_each_reported():
    base = hand_built_google()
    gone = "Transformer/encoderblock_0/LayerNorm_2/bias"
    a = dict(base)
    del a[gone]
    with pytest.raises(ValueError, match="missing keys") as e:
        load_google_vit(a)
    assert gone in str(e.value)

    a = dict(base, **{"Transformer/encoderblock_0/extra/kernel": np.zeros(3)})
    with pytest.raises(ValueError, match="unexpected keys") as e:
        load_google_vit(a)
    assert "Transformer/encoderblock_0/extra/kernel" in str(e.value)

    a = dict(base, **{"Transformer/encoder_norm/bias": np.zeros(D + 1)})
    with pytest.raises(ValueError, match="wrong shapes") as e:
        load_google_vit(a)
    assert f"Transformer/encoder_norm/bias: expected shape ({D},), got ({D + 1},)" in str(e.value)
    # a kernel that disagrees with its bias: the kernel is named
    a = dict(base, **{"head/kernel": np.zeros((K, D))})
    with pytest.raises(ValueError, match=f"head/kernel: expected shape \\({D}, {K}\\)"):
        load_google_vit(a)


def test_every_offender_is_listed_in_one_error():
    a = hand_built_google()
    missing = ["embedding/bias", "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/value/bias"]
    for k in missing:
        del a[k]
    extra = ["Transformer/encoderblock_0/LayerNorm_1/scale", "something_else"]
    for k in extra:
        a[k] = np.ones(D)
    a["Transformer/encoder_norm/scale"] = np.ones(D + 2)
    a["Transformer/encoderblock_0/MlpBlock_3/Dense_1/kernel"] = np.ones((M + 1, D))
    with pytest.raises(ValueError) as e:
        load_google_vit(a)
    msg = str(e.value)
    for k in missing + extra + ["Transformer/encoder_norm/scale", "MlpBlock_3/Dense_1/kernel"]:
        assert k in msg, k
    assert "missing keys (2)" in msg and "unexpected keys (2)" in msg and "wrong shapes (2)" in msg


def test_a_gap_in_the_blocks_is_reported(tmp_path):
    model = random_model(dict(CONFIGS[2], depth=3))
    a = google_arrays(model)
    a = {k: v for k, v in a.items() if not k.startswith("Transformer/encoderblock_1/")}
    with pytest.raises(ValueError, match="missing keys \\(16\\)") as e:
        load_google_vit(a, image_size=12)
    assert "Transformer/encoderblock_1/LayerNorm_0/scale" in str(e.value)


def test_opt_target_prefix_and_pre_logits():
    plain = load_google_vit(hand_built_google(), dtype="float64")
    a = hand_built_google(prefix="opt/target/")
    a["opt/state/step"] = np.zeros(())                        # optimizer state beside the weights
    a["opt/target/pre_logits/kernel"] = np.ones((D, D))
    a["opt/target/pre_logits/bias"] = np.ones(D)
    with pytest.warns(UserWarning, match="pre_logits"):
        m = load_google_vit(a, dtype="float64")
    for k in plain.params:
        np.testing.assert_array_equal(m.params[k], plain.params[k])
    # names in errors keep the file's prefix
    del a["opt/target/head/bias"]
    with pytest.raises(ValueError, match="opt/target/head/bias"):
        with pytest.warns(UserWarning):
            load_google_vit(a)


def test_timm_strictness_and_fc_norm(tmp_path):
    model = random_model(CONFIGS[0])
    t = timm_arrays(model)
    a = dict(t)
    del a["blocks.1.mlp.fc2.bias"]
    a["dist_token"] = np.zeros((1, 1, 16))
    a["blocks.0.ls1.gamma"] = np.ones(16)
    a["head.weight"] = a["head.weight"].T                     # (D, K) instead of (K, D)
    with pytest.raises(ValueError) as e:
        load_timm(a, heads=4)
    msg = str(e.value)
    # one ls1.gamma makes it a LayerScale file, so the other LayerScale vectors are missing
    for k in ("blocks.1.mlp.fc2.bias", "dist_token", "blocks.0.ls2.gamma",
              "head.weight: expected shape (5, 16), got (16, 5)"):
        assert k in msg, k
    # fc_norm (the final norm after pooling; timm's `norm` is then an identity, absent)
    a = {k: v for k, v in t.items() if not k.startswith("norm.")}
    a["fc_norm.weight"], a["fc_norm.bias"] = t["norm.weight"], t["norm.bias"]
    # ... with mean pooling: average, then normalise -- a different function, refused
    with pytest.raises(ValueError, match="LN\\(mean\\(x\\)\\) != mean\\(LN\\(x\\)\\)"):
        load_timm(a, heads=4, pool="mean")
    # ... with CLS pooling: LN(x[:, 0]) is (LN(x))[:, 0], so it loads as the final norm
    m, info = load_model_from_arrays(tmp_path, a, heads=4, dtype=model.config.dtype)
    x = images_for(model.config)
    np.testing.assert_array_equal(m(x), model(x))
    assert any("fc_norm read as the final norm" in n for n in info["notes"])
    a["norm.weight"], a["norm.bias"] = t["norm.weight"], t["norm.bias"]
    with pytest.raises(ValueError, match="expected one final norm"):
        load_timm(a, heads=4)


def load_model_from_arrays(tmp_path, arrays, **kw):
    np.savez(tmp_path / "file.npz", **arrays)
    return load_model(tmp_path / "file.npz", **kw)


def test_timm_heads_from_standard_width_or_asked_for():
    tiny = ViT(ViTConfig(image_size=8, patch_size=4, dim=192, depth=1, heads=3, mlp_dim=8,
                         num_classes=2))
    m = load_timm(timm_arrays(tiny))
    assert m.config.heads == 3
    with pytest.raises(ValueError, match="heads"):
        load_timm(timm_arrays(random_model(CONFIGS[0])))
    with pytest.raises(ValueError, match="heads"):
        load_timm(timm_arrays(random_model(CONFIGS[0])), heads=5)


def test_files_are_read_without_pickle(tmp_path):
    bad = tmp_path / "obj.npz"
    np.savez(bad, **{"embedding/kernel": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(ValueError, match="pickle"):
        load_google_vit(bad)
    single = tmp_path / "one.npy"
    np.save(single, np.zeros(3))
    with pytest.raises(ValueError, match="single .npy array"):
        load_google_vit(single)
    with pytest.raises(TypeError, match="floating-point"):
        load_google_vit({**hand_built_google(), "cls": np.zeros((1, 1, D), dtype=np.int64)})


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "vit.npz"
    model = random_model(CONFIGS[0])
    save_google_vit(model, path)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")
    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(RuntimeError):
        save_google_vit(random_model(CONFIGS[0], seed=5), path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["vit.npz"]        # no temporary file left behind


# --------------------------------------------------------------------------- resampling
def test_bilinear_resize_hand_computed():
    # 2 -> 4 with half-pixel centres: sources -0.25 (clamped to 0), 0.25, 0.75, 1.25
    f = np.array([0.0, 0.25, 0.75, 1.0])
    grid = np.array([[0.0, 1.0], [2.0, 3.0]])[:, :, None]              # value = 2*row + col
    out = resize_bilinear(grid, (4, 4))[:, :, 0]
    np.testing.assert_allclose(out, 2 * f[:, None] + f[None, :], atol=1e-15)
    # shrinking 4 -> 2: sources 0.5 and 2.5; 3 -> 2: sources 0.25 and 1.75
    row = np.array([0.0, 1.0, 2.0, 3.0])[None, :, None]
    np.testing.assert_allclose(resize_bilinear(row, (1, 2))[0, :, 0], [0.5, 2.5], atol=1e-15)
    row = np.array([0.0, 10.0, 20.0])[None, :, None]
    np.testing.assert_allclose(resize_bilinear(row, (1, 2))[0, :, 0], [2.5, 17.5], atol=1e-15)
    # same size: unchanged; channels stay independent; dtype kept
    x = np.random.default_rng(0).random((3, 5, 4)).astype(np.float32)
    np.testing.assert_array_equal(resize_bilinear(x, (3, 5)), x)
    assert resize_bilinear(x, (6, 2)).dtype == np.float32


def test_bilinear_resize_matches_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    for (h, w), (h2, w2) in [((4, 4), (7, 7)), ((14, 14), (24, 24)), ((5, 7), (3, 11)),
                             ((6, 3), (2, 2)), ((1, 4), (3, 9))]:
        x = rng.standard_normal((h, w, 5))
        ref = F.interpolate(torch.from_numpy(x).permute(2, 0, 1)[None], size=(h2, w2),
                            mode="bilinear", align_corners=False, antialias=False)
        ref = ref[0].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(resize_bilinear(x, (h2, w2)), ref, rtol=0, atol=1e-12)


def test_loading_at_another_image_size_resamples_positions(tmp_path):
    model = random_model(CONFIGS[0])                                   # 16 px, 4x4 grid
    path = tmp_path / "vit.npz"
    save_google_vit(model, path)
    big = load_google_vit(path, image_size=24, dtype="float64")        # 6x6 grid
    assert big.config.grid == (6, 6) and big.params["pos_embed"].shape == (1, 37, 16)
    pos = model.params["pos_embed"]
    np.testing.assert_array_equal(big.params["pos_embed"][:, 0], pos[:, 0])     # CLS kept
    expect = resize_bicubic(pos[0, 1:].reshape(4, 4, 16), (6, 6)).reshape(1, 36, 16)   # the default
    np.testing.assert_allclose(big.params["pos_embed"][:, 1:], expect, atol=1e-15)
    np.testing.assert_array_equal(resample_pos_embed(pos, (6, 6)), big.params["pos_embed"])
    lin = load_google_vit(path, image_size=24, dtype="float64", resample="bilinear")
    expect = resize_bilinear(pos[0, 1:].reshape(4, 4, 16), (6, 6)).reshape(1, 36, 16)
    np.testing.assert_allclose(lin.params["pos_embed"][:, 1:], expect, atol=1e-15)
    assert np.abs(lin.params["pos_embed"] - big.params["pos_embed"]).max() > 1e-3   # they differ
    for k in model.params:                                             # nothing else changes
        if k != "pos_embed":
            np.testing.assert_array_equal(big.params[k], model.params[k])
    assert big(images_for(big.config)).shape == (2, 5)
    # timm files too, and a non-square target
    save_timm(model, tmp_path / "t.npz")
    wide = load_timm(tmp_path / "t.npz", image_size=(16, 32), heads=4, dtype="float64")
    np.testing.assert_array_equal(wide.params["pos_embed"], resample_pos_embed(pos, (4, 8), (4, 4)))
    # a non-square checkpoint needs its grid when the target has a different patch count
    save_google_vit(random_model(CONFIGS[1]), tmp_path / "ns.npz")     # 4x6 grid
    with pytest.raises(ValueError, match="not a square grid"):
        load_google_vit(tmp_path / "ns.npz")
    m = load_google_vit(tmp_path / "ns.npz", image_size=32, checkpoint_grid=(4, 6))
    assert m.config.grid == (8, 8)


# --------------------------------------------------------------------------- load_model
def test_load_model_detects_the_layout(tmp_path):
    kw = dict(image_size=8, patch_size=4, dim=8, depth=1, heads=2, mlp_dim=8, num_classes=1000)
    model = random_model(kw)
    save_google_vit(model, tmp_path / "g.npz")
    save_timm(model, tmp_path / "t.npz")
    g, info = load_model(tmp_path / "g.npz")
    assert info["format"] == "google" and len(info["class_names"]) == 1000
    assert info["preprocess"] == {"resize": 8, "crop": (8, 8), "crop_pct": 0.9,
                                  "interpolation": "bicubic", "mean": (0.5, 0.5, 0.5),
                                  "std": (0.5, 0.5, 0.5)}
    t, info = load_model(tmp_path / "t.npz", heads=2)
    assert info["format"] == "timm"
    x = images_for(g.config)
    np.testing.assert_array_equal(g(x), t(x))
    np.savez(tmp_path / "ours.npz", **{"patch_embed.W": np.zeros((3, 3))})
    with pytest.raises(ValueError, match="tinyvit"):
        load_model(tmp_path / "ours.npz")
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    with pytest.raises(ValueError, match="expected a Google ViT .npz"):
        load_model(tmp_path / "other.npz")
    assert detect_format(["opt/target/embedding/kernel"]) == "google"
    small, info = load_model(tmp_path / "g.npz", image_size=16)
    assert info["class_names"] is not None and small.config.image_hw == (16, 16)
    assert any("resampled" in n for n in info["notes"])


# --------------------------------------------------------------------------- torch / timm parity
def timm_torch_logits(path, images, heads, pool="cls", gelu="exact"):
    """timm's VisionTransformer forward, written with torch ops on the saved file's arrays."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    with np.load(path, allow_pickle=False) as f:
        w = {k: torch.from_numpy(f[k].astype(np.float64)) for k in f.files}
    D, _, P_, _ = w["patch_embed.proj.weight"].shape
    x = torch.from_numpy(images).permute(0, 3, 1, 2)                   # NCHW
    x = F.conv2d(x, w["patch_embed.proj.weight"], w["patch_embed.proj.bias"], stride=P_)
    x = x.flatten(2).transpose(1, 2)                                   # (B, N, D)
    B = x.shape[0]
    x = torch.cat([w["cls_token"].expand(B, -1, -1), x], dim=1) + w["pos_embed"]
    T, h = x.shape[1], heads
    i = 0
    while f"blocks.{i}.norm1.weight" in w:
        p = lambda n: w[f"blocks.{i}.{n}"]
        y = F.layer_norm(x, (D,), p("norm1.weight"), p("norm1.bias"), eps=1e-6)
        qkv = F.linear(y, p("attn.qkv.weight"), p("attn.qkv.bias"))
        q, k, v = qkv.reshape(B, T, 3, h, D // h).permute(2, 0, 3, 1, 4).unbind(0)
        a = torch.softmax(q @ k.transpose(-2, -1) * (D // h) ** -0.5, dim=-1)
        x = x + F.linear((a @ v).transpose(1, 2).reshape(B, T, D), p("attn.proj.weight"),
                         p("attn.proj.bias"))
        y = F.layer_norm(x, (D,), p("norm2.weight"), p("norm2.bias"), eps=1e-6)
        y = F.gelu(F.linear(y, p("mlp.fc1.weight"), p("mlp.fc1.bias")),
                   approximate="none" if gelu == "exact" else "tanh")
        x = x + F.linear(y, p("mlp.fc2.weight"), p("mlp.fc2.bias"))
        i += 1
    x = F.layer_norm(x, (D,), w["norm.weight"], w["norm.bias"], eps=1e-6)
    pooled = x[:, 0] if pool == "cls" else x[:, 1:].mean(1)
    return F.linear(pooled, w["head.weight"], w["head.bias"]).numpy()


@pytest.mark.parametrize("kw", [CONFIGS[0], CONFIGS[1], dict(CONFIGS[2], dtype="float64")],
                         ids=IDS[:3])
def test_saved_timm_file_runs_in_a_timm_style_torch_forward(tmp_path, kw):
    pytest.importorskip("torch")
    model = random_model(kw)
    path = tmp_path / "timm.npz"
    save_timm(model, path)
    x = images_for(model.config, n=3)
    ref = timm_torch_logits(path, x, model.config.heads, model.config.pool, model.config.gelu)
    np.testing.assert_allclose(model(x), ref, rtol=0, atol=1e-10)


# --------------------------------------------------------------------------- ImageNet helpers
def test_imagenet_class_names():
    names = imagenet_class_names()
    assert len(names) == 1000 and all(n and n == n.strip() for n in names)
    assert names[0] == "tench" and names[1] == "goldfish" and names[207] == "golden retriever"
    assert names[281] == "tabby" and names[409] == "analog clock" and names[954] == "banana"
    assert names[999] == "toilet tissue"
    assert len(set(names)) == 998                      # "crane" and "maillot" appear twice


def test_preprocess_shape_range_and_values():
    from PIL import Image
    img = Image.new("RGB", (400, 300), (255, 0, 51))
    x = preprocess_imagenet(img)
    assert x.shape == (1, 224, 224, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 100, 100], [1.0, -1.0, 51 / 127.5 - 1.0], atol=1e-6)
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(rng.integers(0, 256, (300, 500, 3), dtype=np.uint8))
    y = preprocess_imagenet(noisy, image_size=(64, 96))
    assert y.shape == (1, 64, 96, 3) and y.min() >= -1.0 and y.max() <= 1.0
    grey = Image.fromarray(rng.integers(0, 256, (40, 30), dtype=np.uint8), mode="L")
    assert preprocess_imagenet(grey, image_size=16).shape == (1, 16, 16, 3)


def test_preprocess_cuts_the_centre():
    from PIL import Image
    # 100 x 200, pixel (r, c) = (c, r, 7): shorter side 100 = floor(50 / 0.5), so no resize
    r, c = np.mgrid[0:100, 0:200]
    arr = np.stack([c, r, np.full_like(r, 7)], axis=-1).astype(np.uint8)
    x = preprocess_imagenet(Image.fromarray(arr), image_size=50, crop_pct=0.5,
                            mean=(0, 0, 0), std=(1, 1, 1), dtype="float64")
    np.testing.assert_allclose(x[0] * 255.0, arr[25:75, 75:125], atol=1e-9)
    # resize keeps the aspect ratio: shorter side floor(224 / 0.9) = 248
    assert imagenet_preprocess_info(224)["resize"] == 248


def test_top_k_and_preprocess_kwargs():
    logits = np.zeros(1000, dtype=np.float32)
    logits[207], logits[281] = 5.0, 4.0
    best = top_k(logits[None], k=5)
    assert [i for i, _, _ in best[:2]] == [207, 281] and best[0][1] == "golden retriever"
    assert len(best) == 5 and best[0][2] > best[1][2] > best[2][2]
    kw = preprocess_kwargs({"preprocess": imagenet_preprocess_info((32, 48))})
    assert kw == {"image_size": (32, 48), "crop_pct": 0.9, "mean": (0.5,) * 3, "std": (0.5,) * 3}


# --------------------------------------------------------------------------- bicubic resampling
def test_bicubic_resize_hand_computed():
    # 2 -> 4 samples: output 0 sits at input coordinate 0.25 (half-pixel centres); Keys'
    # kernel (a = -0.5) gives inputs 0 and 1 the weights k(0.25) = 111/128 and
    # k(1.25) = -9/128, divided by their sum 102/128: 111/102 and -3/34
    row = np.array([0.0, 1.0]).reshape(1, 2, 1)
    out = resize_bicubic(row, (1, 4))[0, :, 0]
    assert out[0] == pytest.approx(-3 / 34, abs=1e-15) and out[3] == pytest.approx(1 + 3 / 34, abs=1e-15)
    np.testing.assert_allclose(out[1] + out[2], 1.0, atol=1e-15)          # symmetric about the middle
    x = np.full((5, 7, 3), 2.5)                                          # rows sum to one: constants stay
    for size in ((9, 4), (2, 13), (5, 7)):
        np.testing.assert_allclose(resize_bicubic(x, size), 2.5, atol=1e-14)
    # shrinking by 2 averages: the stretched kernel spans 8 inputs, not the 4 of plain bicubic
    spike = np.zeros((1, 16, 1))
    spike[0, 5, 0] = 1.0
    assert np.count_nonzero(np.abs(resize_bicubic(spike, (1, 8))[0, :, 0]) > 1e-12) == 4


@pytest.mark.parametrize("h, w, h2, w2", [(4, 4, 6, 6), (14, 14, 24, 24), (24, 24, 14, 14),
                                          (7, 5, 3, 11), (2, 2, 1, 1), (12, 12, 37, 5)])
def test_bicubic_resize_matches_torch_antialiased(h, w, h2, w2):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = np.random.default_rng(h * 100 + w2).standard_normal((h, w, 5))
    ref = F.interpolate(torch.from_numpy(x).permute(2, 0, 1)[None], size=(h2, w2), mode="bicubic",
                        align_corners=False, antialias=True)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(resize_bicubic(x, (h2, w2)), ref, rtol=0, atol=1e-12)


def test_timm_resample_abs_pos_embed_is_the_default(tmp_path):
    """timm's resample_abs_pos_embed, written with torch: CLS kept, patches bicubic+antialias."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    model = random_model(CONFIGS[0])                                    # 4x4 grid
    save_timm(model, tmp_path / "t.npz")
    big = load_timm(tmp_path / "t.npz", image_size=28, heads=4, dtype="float64")   # 7x7
    pos = torch.from_numpy(model.params["pos_embed"])
    grid = pos[:, 1:].reshape(1, 4, 4, 16).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(7, 7), mode="bicubic", antialias=True, align_corners=False)
    ref = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, 49, 16)], dim=1).numpy()
    np.testing.assert_allclose(big.params["pos_embed"], ref, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- hostile files
def _one_line(e):
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 500, msg
    return msg


@pytest.mark.parametrize("key, shape, expect", [
    ("head/bias", (), r"head/bias: expected shape \(K,\) with every size >= 1, got \(\)"),
    ("Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel", (16, 0, 4),
     r"query/kernel: expected shape \(D, h, d\) with every size >= 1, got \(16, 0, 4\)"),
    ("embedding/kernel", (4, 4, 3), r"embedding/kernel: expected shape \(P, P, C, D\)"),
    ("Transformer/posembed_input/pos_embedding", (17, 16), r"pos_embedding: expected shape \(1, T, D\)"),
])
def test_google_arrays_of_the_wrong_rank_fail_before_inference(key, shape, expect):
    a = google_arrays(random_model(CONFIGS[0]))
    a[key] = np.zeros(shape)
    with pytest.raises(ValueError, match=expect) as e:
        load_google_vit(a)
    _one_line(e)


@pytest.mark.parametrize("key, shape, expect", [
    ("blocks.0.mlp.fc1.bias", (), r"fc1.bias: expected shape \(M,\) with every size >= 1, got \(\)"),
    ("head.bias", (0,), r"head.bias: expected shape \(K,\) with every size >= 1, got \(0,\)"),
    ("patch_embed.proj.weight", (16, 3, 4), r"patch_embed.proj.weight: expected shape \(D, C, P, P\)"),
])
def test_timm_arrays_of_the_wrong_rank_fail_before_inference(key, shape, expect):
    a = timm_arrays(random_model(CONFIGS[0]))
    a[key] = np.zeros(shape)
    with pytest.raises(ValueError, match=expect) as e:
        load_timm(a, heads=4)
    _one_line(e)


def test_a_block_index_of_a_billion_is_refused_without_building_a_table():
    a = timm_arrays(random_model(CONFIGS[0]))
    a["blocks.999999999.norm1.weight"] = np.zeros(16)
    with pytest.raises(ValueError, match=r"expected block numbers below the \d+ arrays in the file, "
                                         r"got blocks.999999999"):
        load_timm(a, heads=4)


@pytest.mark.parametrize("layout", ["google", "timm"])
def test_a_header_claiming_10_to_12_elements_is_refused_before_allocation(tmp_path, layout, monkeypatch):
    model = random_model(CONFIGS[0])
    path = tmp_path / f"{layout}.npz"
    (save_google_vit if layout == "google" else save_timm)(model, path)
    forge_npz_member(path, "head/kernel" if layout == "google" else "head.weight", (10 ** 6, 10 ** 6),
                     dtype="<f8", data=b"\0" * 64)
    spy = AllocationSpy(monkeypatch)
    with pytest.raises(ValueError, match=r"header says shape \(1000000, 1000000\) of float64 \(8 TB\), "
                                         r"the member holds 64 bytes") as e:
        load_model(path, heads=4)
    _one_line(e)
    assert spy.largest() < 10 ** 6


@pytest.mark.parametrize("content, what", [(b"", "an empty file"), (b"PK\x03\x04 cut", "a damaged zip"),
                                           (b'{"weights": []}', "a JSON")])
def test_load_model_on_files_that_are_not_npz_is_one_line(tmp_path, content, what):
    (tmp_path / "m.npz").write_bytes(content)
    with pytest.raises(ValueError, match=f"m.npz: expected an .npz archive.*got {what}") as e:
        load_model(tmp_path / "m.npz")
    _one_line(e)


# --------------------------------------------------------------------------- LayerScale
def _has_layer_scale():
    import dataclasses
    return "layer_scale" in {f.name for f in dataclasses.fields(ViTConfig)}


def test_layer_scale_round_trips_through_the_timm_layout(tmp_path):
    if not _has_layer_scale():
        pytest.skip("ViTConfig has no layer_scale field yet (the model side of LayerScale is the lead's)")
    model = random_model(dict(CONFIGS[0], layer_scale=0.1))
    assert "blocks.1.ls2.gamma" in model.params
    t = timm_arrays(model)
    for i in range(2):
        np.testing.assert_array_equal(t[f"blocks.{i}.ls1.gamma"], model.params[f"blocks.{i}.ls1.gamma"])
        np.testing.assert_array_equal(t[f"blocks.{i}.ls2.gamma"], model.params[f"blocks.{i}.ls2.gamma"])
    save_timm(model, tmp_path / "ls.npz")
    back, info = load_model(tmp_path / "ls.npz", heads=4, dtype="float64")
    assert back.config.layer_scale is not None and any("LayerScale" in n for n in info["notes"])
    for k in model.params:
        np.testing.assert_array_equal(back.params[k], model.params[k], err_msg=k)
    x = images_for(model.config)
    np.testing.assert_array_equal(back(x), model(x))
    with pytest.raises(ValueError, match="Google ViT layout has no LayerScale"):
        save_google_vit(model, tmp_path / "g.npz")
    t.pop("blocks.1.ls2.gamma")                             # all blocks or none
    with pytest.raises(ValueError, match="missing keys.*blocks.1.ls2.gamma"):
        load_timm(t, heads=4)


def test_layer_scale_keys_without_model_support_say_so():
    if _has_layer_scale():
        pytest.skip("ViTConfig has layer_scale: covered by the round trip")
    a = timm_arrays(random_model(CONFIGS[0]))
    a["blocks.0.ls1.gamma"] = a["blocks.0.ls2.gamma"] = np.ones(16)
    with pytest.raises(ValueError, match="LayerScale, which this tinyvit's ViTConfig does not have"):
        load_timm(a, heads=4)


# --------------------------------------------------------------------------- crop_pct at 384
def test_384_pixel_models_are_preprocessed_with_crop_pct_one(tmp_path):
    from PIL import Image
    model = random_model(dict(image_size=384, patch_size=96, dim=8, depth=1, heads=2, mlp_dim=8,
                              num_classes=3, dtype="float32"))
    save_google_vit(model, tmp_path / "g384.npz")
    _, info = load_model(tmp_path / "g384.npz")
    assert info["preprocess"]["crop_pct"] == 1.0 and info["preprocess"]["resize"] == 384
    assert imagenet_preprocess_info(224)["crop_pct"] == 0.9 and imagenet_preprocess_info(224)["resize"] == 248
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (400, 500, 3), dtype=np.uint8))
    x = preprocess_imagenet(img, image_size=384)
    np.testing.assert_array_equal(x, preprocess_imagenet(img, image_size=384, crop_pct=1.0))
    assert np.abs(x - preprocess_imagenet(img, image_size=384, crop_pct=0.9)).max() > 0.5


@pytest.mark.parametrize("layout", ["google", "timm"])
def test_any_damage_to_a_google_or_timm_file_is_a_clear_error(tmp_path, layout):
    """Beyond the listed cases: a damaged file loads (a flipped bit in a weight) or raises
    ValueError/TypeError naming what is wrong -- never another exception."""
    from test_checkpoint import _corruptions
    model = random_model(CONFIGS[0])
    path = tmp_path / "m.npz"
    (save_google_vit if layout == "google" else save_timm)(model, path)
    refused = 0
    for damaged in _corruptions(path.read_bytes(), 240, seed=1):
        (tmp_path / "bad.npz").write_bytes(damaged)
        try:
            load_model(tmp_path / "bad.npz", heads=4)
        except (ValueError, TypeError) as e:
            assert str(e).strip(), e
            refused += 1
    assert refused > 150


def test_an_image_size_whose_position_table_cannot_fit_is_refused(tmp_path):
    save_timm(random_model(CONFIGS[0]), tmp_path / "t.npz")          # patch 4
    with pytest.raises(ValueError, match=r"^image_size: 10000000x10000000 patches needs .* for the "
                                         r"resampled position embeddings; expected at most"):
        load_model(tmp_path / "t.npz", image_size=4 * 10 ** 7, heads=4)
