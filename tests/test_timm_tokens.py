"""The pooling and token options against timm, and through the timm file layout.

With timm installed (it is not a dependency, nor in CI: ``pip install timm`` to run the
parity tests), the same model built with timm's VisionTransformer (reg_tokens,
class_token=False, no_embed_class, global_pool="avg"/"map", pool_include_prefix) from
tinyvit's own save_timm arrays gives the same logits to 1e-10 in float64, and its
state dict has exactly the names save_timm writes. Without timm those tests skip; the
round trips through the timm layout always run.
"""

import numpy as np
import pytest

from tinyvit import ViT, ViTConfig
from tinyvit.interop import load_timm, save_google_vit, save_timm, timm_arrays

BASE = dict(image_size=16, in_channels=3, patch_size=4, dim=16, depth=2, heads=4, mlp_dim=32,
            num_classes=5, dtype="float64")

# (tinyvit options, timm VisionTransformer keyword arguments)
CASES = [
    (dict(pool="cls", num_registers=2), dict(global_pool="token", reg_tokens=2)),
    (dict(pool="mean", class_token=False), dict(global_pool="avg", fc_norm=False, class_token=False)),
    (dict(pool="mean", num_registers=1, no_embed_class=True),
     dict(global_pool="avg", fc_norm=False, reg_tokens=1, no_embed_class=True)),
    (dict(pool="mean_with_cls"), dict(global_pool="avg", fc_norm=False, pool_include_prefix=True)),
    (dict(pool="attn"), dict(global_pool="map")),
    (dict(pool="attn", class_token=False, num_registers=2, no_embed_class=True),
     dict(global_pool="map", class_token=False, reg_tokens=2, no_embed_class=True)),
]
IDS = ["cls+reg2", "mean-nocls", "mean+reg1+noembed", "mean_with_cls", "attn", "attn-nocls+reg2+noembed"]


def random_model(kw, seed=0):
    model = ViT(ViTConfig(**BASE, **kw, seed=seed))
    rng = np.random.default_rng(seed + 10)
    for v in model.params.values():
        v += rng.standard_normal(v.shape) * 0.2
    return model


def images(n=3, seed=1):
    return np.random.default_rng(seed).standard_normal((n, 16, 16, 3))


@pytest.mark.parametrize("ours, theirs", CASES, ids=IDS)
def test_same_logits_as_timm(ours, theirs):
    torch = pytest.importorskip("torch")
    vt = pytest.importorskip("timm.models.vision_transformer")
    model = random_model(ours)
    net = vt.VisionTransformer(img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=16,
                               depth=2, num_heads=4, mlp_ratio=2.0, **theirs).double().eval()
    arrays = timm_arrays(model)
    assert set(arrays) == set(net.state_dict()), set(arrays) ^ set(net.state_dict())
    net.load_state_dict({k: torch.from_numpy(v) for k, v in arrays.items()}, strict=True)
    x = images()
    with torch.no_grad():
        ref = net(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(model(x), ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("ours, theirs", CASES, ids=IDS)
def test_timm_file_round_trip(tmp_path, ours, theirs):
    model = random_model(ours, seed=2)
    path = tmp_path / "timm.npz"
    save_timm(model, path)
    pool = ours["pool"] if ours["pool"] != "attn" else "cls"     # attn is read off the file
    back = load_timm(path, heads=4, pool=pool, dtype="float64")
    assert back.config.to_dict() == dict(model.config.to_dict(), seed=0)   # no seed in the file
    for k in model.params:
        np.testing.assert_array_equal(back.params[k], model.params[k], err_msg=k)
    x = images(2)
    np.testing.assert_array_equal(back(x), model(x))


def test_timm_file_with_resampled_positions_and_registers(tmp_path):
    """Registers and a CLS row kept as they are; only the patch rows are resampled."""
    model = random_model(dict(pool="cls", num_registers=2))
    save_timm(model, tmp_path / "t.npz")
    big = load_timm(tmp_path / "t.npz", image_size=32, heads=4, dtype="float64")
    assert big.config.image_hw == (32, 32) and big.config.num_registers == 2
    pos = big.params["pos_embed"]
    assert pos.shape == (1, 3 + 64, 16)
    np.testing.assert_array_equal(pos[:, :3], model.params["pos_embed"][:, :3])
    no = random_model(dict(pool="mean", num_registers=1, no_embed_class=True))
    save_timm(no, tmp_path / "n.npz")
    big = load_timm(tmp_path / "n.npz", image_size=32, heads=4, pool="mean", dtype="float64")
    assert big.params["pos_embed"].shape == (1, 64, 16) and big.config.no_embed_class


def test_ambiguous_position_rows_ask_for_no_embed_class():
    """A timm file does not say whether pos_embed has rows for the CLS and register tokens."""
    # N = 25 patches, CLS + 4 registers, no_embed_class: 25 rows, a 5x5 grid; 25 - 5 = 20
    # is no grid, so the reading without prefix rows is the only one
    model = ViT(ViTConfig(**dict(BASE, image_size=20, num_registers=4, no_embed_class=True)))
    assert load_timm(timm_arrays(model), heads=4).config.no_embed_class
    # N = 9, CLS + 6 registers with rows: 16 rows = 4x4 without prefix rows, or 3x3 with 7
    b = timm_arrays(ViT(ViTConfig(**dict(BASE, image_size=12, num_registers=6))))
    with pytest.raises(ValueError, match="no_embed_class: pos_embed has 16 rows"):
        load_timm(b, heads=4)
    assert not load_timm(b, heads=4, no_embed_class=False).config.no_embed_class
    assert load_timm(b, heads=4, image_size=12).config.num_tokens == 16


def test_attn_file_refuses_a_mean_pool():
    a = timm_arrays(random_model(dict(pool="attn")))
    with pytest.raises(ValueError, match="pool: this timm file has attn_pool"):
        load_timm(a, heads=4, pool="mean")


def test_google_layout_refuses_the_options(tmp_path):
    with pytest.raises(ValueError, match="Google ViT layout .* num_registers=2"):
        save_google_vit(random_model(dict(num_registers=2)), tmp_path / "g.npz")
    assert not (tmp_path / "g.npz").exists()
