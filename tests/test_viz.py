"""tinyvit.viz: the numbers against hand-computed cases, the plots on small inputs."""

import math

import numpy as np
import pytest

from tinyvit import ViT, ViTConfig, viz

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_MAGIC
    leftovers = [p.name for p in path.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == [], f"temporary files left behind: {leftovers}"


def is_figure(fig):
    from matplotlib.figure import Figure
    return isinstance(fig, Figure)


# ----------------------------------------------------------- cls_attention

def test_cls_attention_picks_row_zero_patch_columns():
    # attn[b, h, t, s] = 1000 b + 100 h + 10 t + s: every entry says where it came from
    B, h, gh, gw = 2, 3, 2, 3
    T = gh * gw + 1
    b, hh, t, s = np.meshgrid(np.arange(B), np.arange(h), np.arange(T), np.arange(T), indexing="ij")
    attn = (1000 * b + 100 * hh + 10 * t + s).astype(np.float64)
    maps = viz.cls_attention(attn, (gh, gw))
    assert maps.shape == (B, h, gh, gw)
    for bi in range(B):
        for hi in range(h):
            for i in range(gh):
                for j in range(gw):
                    # query t = 0 (CLS), key s = 1 + patch index i*gw + j
                    assert maps[bi, hi, i, j] == 1000 * bi + 100 * hi + 0 + (1 + i * gw + j)


def test_cls_attention_list_and_unbatched():
    a = np.random.default_rng(0).random((4, 5, 5))       # (h, T, T), grid 2x2
    maps = viz.cls_attention([a, 2 * a], 2)
    assert maps.shape == (2, 4, 2, 2)
    np.testing.assert_array_equal(maps[0, 1].ravel(), a[1, 0, 1:])
    np.testing.assert_array_equal(maps[1], 2 * maps[0])


def test_cls_attention_rejects_wrong_grid():
    with pytest.raises(ValueError, match="attn"):
        viz.cls_attention(np.ones((1, 2, 6, 6)) / 6, (2, 2))


# ----------------------------------------------------------- rollout

A1 = np.array([[0.50, 0.25, 0.25],
               [0.20, 0.60, 0.20],
               [0.10, 0.10, 0.80]])
A2 = np.array([[0.20, 0.40, 0.40],
               [0.50, 0.50, 0.00],
               [0.00, 0.30, 0.70]])


def test_rollout_two_blocks_by_hand():
    # Block 1 has two heads whose mean is A1; block 2 one head, A2.
    delta = np.array([[0.1, -0.1, 0.0], [0.0, 0.1, -0.1], [-0.05, 0.0, 0.05]])
    block1 = np.stack([A1 + delta, A1 - delta])[None]    # (1, 2, 3, 3)
    block2 = A2[None, None]                              # (1, 1, 3, 3)
    # With residual 0.5: A' = 0.5 A + 0.5 I (rows already sum to one)
    #   A1' = [[.75, .125, .125], [.1, .8, .1], [.05, .05, .9]]
    #   A2' = [[.6, .2, .2], [.25, .75, 0], [0, .15, .85]]
    # R = A2' @ A1'; its row 0 = .6 * A1'[0] + .2 * A1'[1] + .2 * A1'[2]
    #   = [.45, .075, .075] + [.02, .16, .02] + [.01, .01, .18] = [.48, .245, .275]
    out = viz.attention_rollout([block1, block2])
    assert out.shape == (1, 2)
    np.testing.assert_allclose(out[0], [0.245, 0.275], rtol=0, atol=1e-12)
    # the wrong order (A1' @ A2') gives [.2625, .25625]: make sure we are not there
    assert abs(out[0, 0] - 0.2625) > 1e-3


def test_rollout_patch_query_by_hand():
    # R = A2' @ A1' (see above). Row 1 = .25 A1'[0] + .75 A1'[1] = [.2625, .63125, .10625];
    # row 2 = .15 A1'[1] + .85 A1'[2] = [.0575, .1625, .78]. Mean of rows 1 and 2, patch columns:
    out = viz.attention_rollout([A1[None, None], A2[None, None]], query="patches")
    np.testing.assert_allclose(out[0], [(0.63125 + 0.1625) / 2, (0.10625 + 0.78) / 2], atol=1e-12)
    with pytest.raises(ValueError, match="query"):
        viz.attention_rollout([A1[None, None]], query="mean")


def test_rollout_single_block_and_renormalisation():
    # rows that do not sum to one are renormalised after adding the identity:
    # A = [[2, 1, 1], ...] -> 0.5 A + 0.5 I = [[1.5, .5, .5], ...] -> / 2.5 -> [.6, .2, .2]
    A = np.array([[2.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    out = viz.attention_rollout([A[None]])               # (h=1, T, T), no batch axis
    np.testing.assert_allclose(out, [0.2, 0.2], atol=1e-12)


def test_rollout_grid_and_identity():
    # identity attention everywhere: the CLS token only ever looks at itself -> zero maps
    T = 5
    eye = np.broadcast_to(np.eye(T), (3, 2, T, T)).copy()
    out = viz.attention_rollout([eye, eye, eye], grid=(2, 2))
    assert out.shape == (3, 2, 2)
    np.testing.assert_array_equal(out, 0.0)
    # uniform attention in one block (no residual): every token gets 1/T
    uni = np.full((1, 1, T, T), 1.0 / T)
    np.testing.assert_allclose(viz.attention_rollout([uni], grid=(2, 2), residual=0.0),
                               np.full((1, 2, 2), 0.2), atol=1e-12)


def test_rollout_on_a_model_sums_with_cls_to_one():
    model = ViT(ViTConfig(image_size=8, in_channels=1, patch_size=4, dim=8, depth=2, heads=2,
                          mlp_dim=16, num_classes=3))
    x = np.random.default_rng(1).random((2, 8, 8, 1)).astype(np.float32)
    attn = model.attention_maps(x)
    r = viz.attention_rollout(attn, grid=(2, 2))
    assert r.shape == (2, 2, 2)
    assert np.all(r > 0) and np.all(r.sum(axis=(1, 2)) < 1)


def test_rollout_rejects_mismatched_blocks():
    with pytest.raises(ValueError, match="attn_list\\[1\\]"):
        viz.attention_rollout([np.ones((1, 1, 3, 3)) / 3, np.ones((1, 1, 5, 5)) / 5])


# ----------------------------------------------------------- position embeddings

def test_pos_embed_similarity_by_hand():
    # CLS first (must be ignored), then three patches on a 1x3 grid
    pos = np.array([[[9.0, 9.0], [1.0, 0.0], [0.0, 2.0], [3.0, 3.0]]])    # (1, T=4, D=2)
    S = viz.pos_embed_similarity(pos, (1, 3))
    assert S.shape == (1, 3, 1, 3)
    r = 1 / math.sqrt(2)
    expected = np.array([[1.0, 0.0, r], [0.0, 1.0, r], [r, r, 1.0]])
    np.testing.assert_allclose(S.reshape(3, 3), expected, atol=1e-12)
    # the same table without the CLS row gives the same answer
    np.testing.assert_allclose(viz.pos_embed_similarity(pos[0, 1:], (1, 3)), S, atol=1e-12)


# ----------------------------------------------------------- localisation

def _masks():
    m = np.zeros((2, 8, 8), dtype=bool)
    m[0, 1:3, 1:3] = True          # image 0: inside the top-left patch only
    m[0, 7, 7] = True              # ... and one pixel of the bottom-right patch
    m[1, 3:5, 3:5] = True          # image 1: straddles all four patches
    return m


def test_object_patches():
    obj = viz.object_patches(_masks(), 4)
    np.testing.assert_array_equal(obj[0], [[True, False], [False, True]])
    np.testing.assert_array_equal(obj[1], [[True, True], [True, True]])


def test_object_patches_min_fraction():
    # image 1's object covers 1 pixel of each 16-pixel patch (1/16 = 0.0625)
    # image 0: top-left patch 4/16 = 0.25, bottom-right 1/16
    obj = viz.object_patches(_masks(), 4, min_fraction=0.1)
    np.testing.assert_array_equal(obj[0], [[True, False], [False, False]])
    np.testing.assert_array_equal(obj[1], [[False, False], [False, False]])
    assert not viz.object_patches(_masks(), 4, min_fraction=0.25).any()   # strictly more than
    with pytest.raises(ValueError, match="min_fraction"):
        viz.object_patches(_masks(), 4, min_fraction=1.0)


def test_localisation_all_on_object_and_uniform():
    masks = _masks()[:1]                                  # object patches: (0,0) and (1,1)
    on_object = np.array([[[0.3, 0.0], [0.0, 0.2]]])      # all mass on object patches
    s = viz.localisation_score(on_object, masks, 4)
    assert s["share"] == pytest.approx(1.0)
    assert s["uniform"] == pytest.approx(0.5)
    assert s["ratio"] == pytest.approx(2.0)
    uniform = np.full((1, 2, 2), 0.1)
    s = viz.localisation_score(uniform, masks, 4)
    assert s["share"] == pytest.approx(s["uniform"]) and s["ratio"] == pytest.approx(1.0)


def test_localisation_hand_case_averaged_over_images():
    maps = np.array([[[0.4, 0.1], [0.2, 0.3]],           # image 0: 0.4 + 0.3 of 1.0 on the object
                     [[1.0, 2.0], [3.0, 4.0]]])          # image 1: every patch is object -> 1.0
    s = viz.localisation_score(maps * 3.0, _masks(), 4)   # scaling a map changes nothing
    np.testing.assert_allclose(s["per_image_share"], [0.7, 1.0])
    np.testing.assert_allclose(s["per_image_uniform"], [0.5, 1.0])
    assert s["share"] == pytest.approx(0.85)
    assert s["uniform"] == pytest.approx(0.75)
    assert s["ratio"] == pytest.approx(0.85 / 0.75)
    assert s["images"] == 2


def test_localisation_rejects_mismatch():
    with pytest.raises(ValueError, match="masks"):
        viz.localisation_score(np.ones((2, 3, 3)), _masks(), 4)
    with pytest.raises(TypeError, match="masks"):
        viz.localisation_score(np.ones((2, 2, 2)), _masks().astype(np.uint8), 4)


# ----------------------------------------------------------- plots

@pytest.fixture(scope="module")
def small():
    cfg = ViTConfig(image_size=8, in_channels=3, patch_size=4, dim=8, depth=2, heads=2, mlp_dim=16,
                    num_classes=3)
    model = ViT(cfg)
    images = np.random.default_rng(0).random((2, 8, 8, 3)).astype(np.float32)
    return model, images, model.attention_maps(images)


def test_plot_patch_grid_and_tokens(tmp_path):
    img = np.random.default_rng(0).random((8, 12, 1))    # grayscale, non-square
    fig = viz.plot_patch_grid(img, 4, save=tmp_path / "grid.png")
    assert is_figure(fig)
    assert_png(tmp_path / "grid.png")
    labels = sorted(int(t.get_text()) for t in fig.axes[0].texts)
    assert labels == list(range(6))                      # 2 x 3 patches numbered 0..5
    fig = viz.plot_token_sequence(img, 4, save=tmp_path / "seq.png")
    assert is_figure(fig)
    assert_png(tmp_path / "seq.png")
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts[0] == "CLS" and "t=6" in texts
    with pytest.raises(ValueError, match="patch_size"):
        viz.plot_patch_grid(img, 5)


def test_plot_cls_attention_overlay_is_aligned(tmp_path, small):
    model, images, attn = small
    fig = viz.plot_cls_attention(images[1], attn[0], (2, 2), index=1, block=0, save=tmp_path / "a.png")
    assert is_figure(fig)
    assert_png(tmp_path / "a.png")
    expected = viz.cls_attention(attn[0], (2, 2))[1]     # (h, gh, gw) for image 1
    head_axes = [ax for ax in fig.axes if ax.get_title().startswith("head")]
    assert len(head_axes) == 2
    for j, ax in enumerate(head_axes):
        image_layer, map_layer = ax.get_images()
        # both layers cover exactly the 8x8 pixels: map cell (i, j) lies on patch (i, j)
        assert list(map_layer.get_extent()) == [0, 8, 8, 0]
        assert list(image_layer.get_extent()) == [0, 8, 8, 0]
        np.testing.assert_allclose(np.asarray(map_layer.get_array()), expected[j])


def test_plot_attention_grid_and_rollout(tmp_path, small):
    model, images, attn = small
    fig = viz.plot_attention_grid(images[0], attn, (2, 2), save=tmp_path / "g.png")
    assert is_figure(fig)
    assert_png(tmp_path / "g.png")
    assert sum(1 for ax in fig.axes if ax.get_images()) == 2 * 2     # blocks x heads
    r = viz.attention_rollout(attn, (2, 2))
    mask = np.zeros((8, 8), dtype=bool)
    mask[2:6, 2:6] = True
    fig = viz.plot_rollout(images[0], r[0], mask=mask, save=tmp_path / "r.png")
    assert is_figure(fig)
    assert_png(tmp_path / "r.png")


def test_plot_pos_embed_history_confusion(tmp_path, small):
    model, _, _ = small
    fig = viz.plot_pos_embed_similarity(model.params["pos_embed"], (2, 2), save=tmp_path / "p.png")
    assert is_figure(fig)
    assert_png(tmp_path / "p.png")
    history = {"epoch": [1, 2, 3], "train_loss": [1.1, 0.8, 0.6], "val_loss": [1.0, 0.9, 0.7],
               "val_acc": [0.3, 0.5, 0.6], "lr": [1e-3, 5e-4, 1e-4]}
    fig = viz.plot_history(history, save=tmp_path / "h.png")
    assert is_figure(fig)
    assert_png(tmp_path / "h.png")
    assert [ax.get_title() for ax in fig.axes] == ["loss", "accuracy", "learning rate"]
    # the history tinyvit.train.train returns: drawn by train.plot_history, plus the lr axis
    train_history = {"steps": {"step": [1, 2, 3, 4], "epoch": [1, 1, 2, 2], "loss": [1.8, 1.6, 1.3, 1.2],
                               "lr": [5e-4, 1e-3, 5e-4, 1e-5], "grad_norm": [1.0, 0.9, 0.8, 0.7]},
                     "epochs": [{"epoch": 1, "step": 2, "train_loss": 1.7, "train_acc": 0.3, "val_loss": 1.6,
                                 "val_acc": 0.35, "lr": 1e-3},
                                {"epoch": 2, "step": 4, "train_loss": 1.25, "train_acc": 0.5, "val_loss": 1.3,
                                 "val_acc": 0.45, "lr": 1e-5}]}
    fig = viz.plot_history(train_history, save=tmp_path / "h2.png")
    assert_png(tmp_path / "h2.png")
    lr_lines = [line for ax in fig.axes for line in ax.get_lines() if line.get_label() == "learning rate"]
    assert len(lr_lines) == 1 and list(lr_lines[0].get_ydata()) == [5e-4, 1e-3, 5e-4, 1e-5]
    records = [{"epoch": e, "train_loss": l} for e, l in [(1, 1.0), (2, 0.5)]]
    assert is_figure(viz.plot_history(records))
    conf = np.array([[5, 1, 0], [0, 4, 2], [1, 0, 6]])
    fig = viz.plot_confusion(conf, ["a", "b", "c"], save=tmp_path / "c.png")
    assert is_figure(fig)
    assert_png(tmp_path / "c.png")
    with pytest.raises(ValueError, match="class_names"):
        viz.plot_confusion(conf, ["a", "b"])


def _cyan_marks(fig):
    """(value, colour-bar range) of every horizontal cyan line drawn on a colour bar."""
    marks = []
    for ax in fig.axes:
        for line in ax.lines:
            y = np.asarray(line.get_ydata(), dtype=float)
            if line.get_color() == "cyan" and y.size and np.all(y == y[0]):
                marks.append((float(y[0]), ax.get_ylim()))
    return marks


@pytest.mark.parametrize("shared", [True, False])
def test_raw_cls_attention_marks_uniform_at_one_over_T_inside_the_bar(shared):
    # a uniform raw row over T = 5 tokens (CLS + a 2x2 grid): every weight is 1/T = 0.2, not 1/N = 0.25
    T = 5
    attn = np.full((1, 2, T, T), 1.0 / T)
    fig = viz.plot_cls_attention(np.zeros((8, 8, 3)), attn, (2, 2), shared_scale=shared)
    marks = _cyan_marks(fig)
    assert marks, "no uniform mark drawn"
    for value, (lo, hi) in marks:
        assert value == pytest.approx(1.0 / T)
        assert lo <= value < hi, f"mark {value} outside the colour bar {lo}..{hi}"


def test_rollout_marks_uniform_at_one_over_N():
    fig = viz.plot_rollout(np.zeros((8, 8, 3)), np.full((2, 2), 0.25))
    (value, (lo, hi)), = _cyan_marks(fig)
    assert value == pytest.approx(1.0 / 4) and lo <= value < hi
