"""Faithfulness metrics (tinyvit.faithfulness) on toy maps with known values, the randomisation
check, and the explain / faithfulness commands."""

import csv
import json

import numpy as np
import pytest

from tinyvit import ViT, ViTConfig
from tinyvit.checkpoint import save_checkpoint
from tinyvit.cli import main
from tinyvit.explain import METHODS, attribution_maps
from tinyvit.faithfulness import (curve_area, deletion_insertion, dino_jaccard, faithfulness_table,
                                  randomization_check, randomized_model, spearman, top_mass_patches)

from test_explain import selector_model


# =========================================================== toy maps

def test_spearman_known_values():
    a = np.array([[1.0, 2, 3, 4], [1, 2, 3, 4], [1, 1, 2, 3], [5, 5, 5, 5]])
    b = np.array([[10.0, 20, 40, 80], [4, 3, 2, 1], [1, 2, 3, 4], [1, 2, 3, 4]])
    r = spearman(a, b)
    assert r[0] == pytest.approx(1.0) and r[1] == pytest.approx(-1.0)
    # ties share their mean rank: ranks (.5, .5, 2, 3) against (0, 1, 2, 3): 4.5 / sqrt(4.5 * 5)
    assert r[2] == pytest.approx(4.5 / np.sqrt(22.5), rel=1e-14)
    assert np.isnan(r[3])                                  # a constant map has no ranking
    np.testing.assert_allclose(spearman(a[:3].reshape(3, 2, 2), b[:3].reshape(3, 2, 2)), r[:3])
    with pytest.raises(ValueError, match="b: expected the shape"):
        spearman(a, b[:, :3])


def test_curve_area_known_values():
    np.testing.assert_allclose(curve_area(np.array([[1.0, 0.5, 0.0], [1, 1, 1], [0, 0, 1]])),
                               [0.5, 1.0, 0.25])


def test_top_mass_patches_dino_rule():
    maps = np.array([[0.05, 0.5, 0.15, 0.3], [0.2, 0.6, 0.2, 0.0]])
    # image 0: sorted .5, .3, .15, .05; above each 0, .5, .8, .95: keep .5 and .3 (0.8 >= 0.6)
    # image 1: .6 alone already holds 60 %: keep it only
    np.testing.assert_array_equal(top_mass_patches(maps), [[False, True, False, True],
                                                           [False, True, False, False]])
    np.testing.assert_array_equal(top_mass_patches(maps, mass=1.0), [[True, True, True, True],
                                                                     [True, True, True, False]])
    with pytest.raises(ValueError, match="non-negative"):
        top_mass_patches(-maps)
    with pytest.raises(ValueError, match="all-zero"):
        top_mass_patches(np.zeros((1, 4)))


def test_dino_jaccard_known_value():
    # 2x2 grid of 2x2 patches; the map keeps patch 0 only (4 pixels); the mask is patch 0 plus
    # two pixels of patch 1: intersection 4, union 6.
    maps = np.array([[[0.9, 0.05], [0.05, 0.0]]])
    masks = np.zeros((1, 4, 4), bool)
    masks[0, :2, :2] = True
    masks[0, :2, 2] = True
    assert dino_jaccard(maps, masks, 2)[0] == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match="masks: expected shape"):
        dino_jaccard(maps, masks[:, :2], 2)
    with pytest.raises(TypeError, match="masks: expected dtype bool"):
        dino_jaccard(maps, masks.astype(float), 2)


def test_deletion_and_insertion_on_the_selector_model():
    # Only the target patch moves the logits. Deleting it first: the curve falls at step 1 to
    # the probability without it and stays there; inserting it first: the curve jumps to the
    # image's probability at step 1. With the target ranked last, deletion keeps the image's
    # probability until the final step.
    model = selector_model(2)
    x = np.random.default_rng(0).random((2, 8, 8, 1)) + 0.2
    c = np.array([0, 1])
    z = model(x)
    p = np.exp(z - z.max(1, keepdims=True))
    p = (p / p.sum(1, keepdims=True))[np.arange(2), c]
    x0 = x.copy()
    x0[:, 4:, :4] = 0.0
    z0 = model(x0)
    p0 = np.exp(z0 - z0.max(1, keepdims=True))
    p0 = (p0 / p0.sum(1, keepdims=True))[np.arange(2), c]
    first = np.array([[0.1, 0.2, 0.9, 0.3]] * 2)
    d, i = deletion_insertion(model, x, c, first)
    np.testing.assert_allclose(d, np.column_stack([p, p0, p0, p0, p0]), rtol=1e-12)
    np.testing.assert_allclose(i, np.column_stack([p0, p, p, p, p]), rtol=1e-12)
    last = np.array([[0.5, 0.6, 0.0, 0.3]] * 2)
    d, i = deletion_insertion(model, x, c, last)
    np.testing.assert_allclose(d, np.column_stack([p, p, p, p, p0]), rtol=1e-12)
    np.testing.assert_allclose(curve_area(d), (3.5 * p + 0.5 * p0) / 4, rtol=1e-12)


# =========================================================== randomisation

def test_randomized_model_replaces_the_top_blocks_only():
    cfg = ViTConfig(image_size=8, in_channels=1, patch_size=4, dim=8, depth=3, heads=2, mlp_dim=16,
                    num_classes=3, dtype="float64", seed=0)
    model = ViT(cfg)
    for k in model.params:
        model.params[k] = model.params[k] + 1.0          # every parameter differs from an init
    r = randomized_model(model, 2)
    for k, v in model.params.items():
        fresh = k.startswith(("head.", "norm.", "blocks.1.", "blocks.2."))
        assert (r.params[k] is v) != fresh, k
        if fresh and not k.endswith(("gamma", "beta", ".b")):
            assert not np.allclose(r.params[k], v)
    assert randomized_model(model, 0).params["blocks.2.attn.qkv.W"] is model.params["blocks.2.attn.qkv.W"]


def test_randomization_changes_gradient_maps_but_not_attention_maps_when_the_head_is_reset():
    # Adebayo et al.'s check: re-initialising the head alone must change a gradient map (it
    # depends on the head) and cannot change an attention map (computed before the head).
    cfg = ViTConfig(image_size=8, in_channels=1, patch_size=2, dim=8, depth=2, heads=2, mlp_dim=16,
                    num_classes=3, dtype="float64", seed=0)
    model = ViT(cfg)
    rng = np.random.default_rng(0)
    for k in model.params:
        model.params[k] = model.params[k] + 0.5 * rng.standard_normal(model.params[k].shape)
    x = rng.standard_normal((6, 8, 8, 1))
    methods = ("cls_attention", "rollout", "input_grad", "grad_x_input", "grad_attention")
    maps = attribution_maps(model, x, None, methods)
    rc = randomization_check(model, x, maps["classes"], maps, methods)
    assert list(rc) == ["head", "head + top 1 block", "head + top 2 blocks"]
    for m in ("cls_attention", "rollout"):
        np.testing.assert_allclose(rc["head"][m], 1.0)
    for m in ("input_grad", "grad_x_input", "grad_attention"):
        assert np.nanmean(rc["head"][m]) < 0.9, (m, rc["head"][m])
    assert np.nanmean(rc["head + top 2 blocks"]["cls_attention"]) < 0.9


# =========================================================== the table and the commands

def _tiny_checkpoint(path, pool="cls"):
    cfg = ViTConfig(image_size=16, in_channels=3, patch_size=4, dim=16, depth=2, heads=2, mlp_dim=32,
                    num_classes=6, pool=pool, seed=0)
    meta = {"class_names": ["circle", "square", "triangle", "star", "cross", "ring"],
            "dataset": {"name": "shapes", "data_dir": "data", "seed": 0, "download": False,
                        "image_size": 16, "channels": 3, "n_train": 4, "n_val": 12}}
    return save_checkpoint(path, ViT(cfg), train_config={"normalize": "image"}, meta=meta)


def test_faithfulness_table_rows_and_occlusion_is_its_own_reference():
    from tinyvit.datasets import load_dataset
    cfg = ViTConfig(image_size=16, in_channels=3, patch_size=4, dim=16, depth=2, heads=2, mlp_dim=32,
                    num_classes=6, seed=0)
    model = ViT(cfg)
    _, ds = load_dataset("shapes", image_size=16, n_train=4, n_test=10)
    res = faithfulness_table(model, ds.images, "image", ds.masks, batch_size=4, randomization_images=4)
    assert list(res["rows"]) == [*METHODS, "random"]
    occ = res["rows"]["occlusion"]
    assert occ["spearman_occlusion"] == pytest.approx(1.0) and occ["n_spearman_occlusion"] == 10
    # removing the patches whose removal costs most first beats removing them at random
    assert occ["deletion_auc"] < res["rows"]["random"]["deletion_auc"]
    for m, row in res["rows"].items():
        assert 0.0 <= row["deletion_auc"] <= 1.0 and 0.0 <= row["insertion_auc"] <= 1.0
        assert res["curves"][m]["deletion"].shape == (17,)
    assert res["randomization_images"] == 4 and len(res["randomization"]) == 3


def test_faithfulness_command_writes_table_csv_json_and_figure(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ck = _tiny_checkpoint(tmp_path / "run" / "checkpoint.npz")
    assert main(["faithfulness", str(ck.parent), "--images", "8", "--batch-size", "4",
                 "--randomization-images", "4", "--out", "out"]) == 0
    out = capsys.readouterr().out
    assert "images 8/8" in out and "| method |" in out and "randomisation check" in out
    rows = list(csv.DictReader(open(tmp_path / "out" / "faithfulness.csv")))
    assert [r["method"] for r in rows] == [*METHODS, "random"]
    data = json.loads((tmp_path / "out" / "faithfulness.json").read_text())
    assert data["images"] == 8 and data["settings"]["masks"] == "object masks"
    assert float(rows[0]["deletion_auc"]) == pytest.approx(data["rows"]["cls_attention"]["deletion_auc"])
    assert (tmp_path / "out" / "faithfulness_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_explain_command_held_out_and_files(tmp_path, capsys, monkeypatch):
    from PIL import Image
    monkeypatch.chdir(tmp_path)
    ck = _tiny_checkpoint(tmp_path / "run" / "checkpoint.npz")
    assert main(["explain", str(ck), "--held-out", "2", "--out", "maps"]) == 0
    assert (tmp_path / "maps" / "heldout0_maps.png").is_file()
    assert (tmp_path / "maps" / "heldout1_maps.png").is_file()
    img = (np.random.default_rng(0).random((20, 20, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    capsys.readouterr()
    assert main(["explain", str(ck), str(tmp_path / "a.png"), "--class", "3", "--out", "maps"]) == 0
    out = capsys.readouterr().out
    assert "Spearman with occlusion" in out and (tmp_path / "maps" / "a_maps.png").is_file()
    # a bad class index: one line naming the option
    assert main(["explain", str(ck), str(tmp_path / "a.png"), "--class", "6"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--class" in err and "[0, 5]" in err


def test_explain_command_reads_a_google_vit_file(tmp_path, capsys):
    # A Google-layout .npz (written by tinyvit.interop) goes through the same loader as
    # `tinyvit predict`; every map is drawn, flow included (the model is small).
    from PIL import Image
    from tinyvit.interop import save_google_vit
    cfg = ViTConfig(image_size=16, in_channels=3, patch_size=8, dim=16, depth=2, heads=2, mlp_dim=32,
                    num_classes=5, seed=1)
    save_google_vit(ViT(cfg), tmp_path / "vit.npz")
    img = (np.random.default_rng(1).random((24, 24, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "b.png")
    capsys.readouterr()
    assert main(["explain", str(tmp_path / "vit.npz"), str(tmp_path / "b.png"),
                 "--out", str(tmp_path / "maps")]) == 0
    out = capsys.readouterr().out
    assert "flow" in out.split("Spearman with occlusion")[1] and "skipped" not in out
    assert (tmp_path / "maps" / "b_maps.png").read_bytes()[:4] == b"\x89PNG"
