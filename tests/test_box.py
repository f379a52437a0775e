"""The box head, its losses, the box model, its data, training, checkpoints and commands."""

import dataclasses

import numpy as np
import pytest

from tinyvit import ViTConfig
from tinyvit import layers as L
from tinyvit.box import (BoxConfig, BoxDataset, BoxTrainConfig, BoxViT, boxes_from_masks, evaluate_box,
                         load_box_data, load_box_model, make_shape_boxes, place_digits, save_box_checkpoint,
                         train_box)
from tinyvit.checkpoint import CheckpointError, save_checkpoint
from tinyvit.gradcheck import check_layer, numerical_vjp, rel_error
from tinyvit.layers import box as bx

TOL = 1e-7
HAS_REGISTERS = "num_registers" in {f.name for f in dataclasses.fields(ViTConfig)}
HAS_MAP = callable(getattr(L, "attn_pool_forward", None))


def random_boxes(rng, n):
    centre = rng.uniform(0.2, 0.8, (n, 2))
    size = rng.uniform(0.1, 0.6, (n, 2))
    return np.concatenate([centre, size], axis=1)


# =========================================================== the layer pairs

def test_losses_and_head_gradients_float64_random_upstream():
    rng = np.random.default_rng(0)
    pred, target = random_boxes(rng, 24), random_boxes(rng, 24)
    iou = bx.box_iou(pred, target)
    assert (iou == 0).any() and (iou > 0).any()              # both branches of the GIoU are checked
    for fwd, bwd in ((bx.giou_loss_forward, bx.giou_loss_backward), (bx.l1_loss_forward, bx.l1_loss_backward)):
        err = check_layer(fwd, bwd, dict(pred=pred, target=target), wrt=["pred"], seed=1)
        assert err["pred"] < TOL, (fwd.__name__, err)
    x, W, b = rng.standard_normal((5, 8)), rng.standard_normal((8, 4)), rng.standard_normal(4)
    err = check_layer(bx.box_head_forward, bx.box_head_backward, dict(x=x, W=W, b=b), seed=2)
    assert max(err.values()) < TOL, err
    x, q = rng.standard_normal((3, 6, 8)), rng.standard_normal(8)
    err = check_layer(bx.query_pool_forward, bx.query_pool_backward, dict(x=x, query=q), seed=3)
    assert max(err.values()) < TOL, err


def test_giou_gradient_for_nested_boxes():
    # one box inside the other: the enclosing box is the larger one, on both sides of each axis
    pred = np.array([[0.5, 0.5, 0.6, 0.5], [0.4, 0.45, 0.1, 0.2]])
    target = np.array([[0.52, 0.48, 0.2, 0.1], [0.42, 0.5, 0.5, 0.6]])
    err = check_layer(bx.giou_loss_forward, bx.giou_loss_backward, dict(pred=pred, target=target),
                      wrt=["pred"], seed=4)
    assert err["pred"] < TOL, err


@pytest.mark.parametrize("bug", ["no_enclosing_term", "no_sigmoid_derivative", "l1_mean_upstream",
                                 "pool_no_softmax_term"])
def test_planted_bugs_fail_the_checks(bug):
    rng = np.random.default_rng(5)
    pred, target = random_boxes(rng, 16), random_boxes(rng, 16)
    if bug == "no_enclosing_term":                           # GIoU's C term dropped: plain IoU's gradient
        def bad(d, c):
            return bx.giou_loss_backward(d, {**c, "area_c": c["union"] * 1e6})
        err = check_layer(bx.giou_loss_forward, bad, dict(pred=pred, target=target), wrt=["pred"])["pred"]
    elif bug == "no_sigmoid_derivative":
        def bad(d, c):
            return L.linear_backward(d, c[0])
        x, W, b = rng.standard_normal((5, 8)), rng.standard_normal((8, 4)), rng.standard_normal(4)
        err = max(check_layer(bx.box_head_forward, bad, dict(x=x, W=W, b=b)).values())
    elif bug == "l1_mean_upstream":                          # every box given the mean upstream gradient
        def bad(d, c):
            return bx.l1_loss_backward(np.full_like(d, d.mean()), c)
        err = check_layer(bx.l1_loss_forward, bad, dict(pred=pred, target=target), wrt=["pred"])["pred"]
    else:
        def bad(dout, c):
            x, a = c["x"], c["attn"]
            return a[:, :, None] * dout[:, None, :], np.zeros_like(c["query"])
        x, q = rng.standard_normal((3, 6, 8)), rng.standard_normal(8)
        err = max(check_layer(bx.query_pool_forward, bad, dict(x=x, query=q)).values())
    assert err > 1e-3


def test_giou_known_values():
    a = np.array([[0.25, 0.25, 0.5, 0.5]])                   # [0, 0.5] x [0, 0.5]
    b = np.array([[0.5, 0.5, 0.5, 0.5]])                     # [0.25, 0.75] x [0.25, 0.75]
    loss, c = bx.giou_loss_forward(a, b)
    # inter 1/16, union 7/16, IoU 1/7; C = 0.75^2 = 9/16; GIoU = 1/7 - (9/16 - 7/16) / (9/16)
    assert c["iou"][0] == pytest.approx(1 / 7, abs=1e-6)
    assert loss[0] == pytest.approx(1 - (1 / 7 - 2 / 9), abs=1e-6)
    touching = bx.giou_loss_forward(np.array([[0.25, 0.5, 0.5, 1.0]]), np.array([[0.75, 0.5, 0.5, 1.0]]))[0]
    assert touching[0] == pytest.approx(1.0, abs=1e-6)        # IoU 0 and C = union: GIoU 0
    far = bx.giou_loss_forward(np.array([[0.1, 0.1, 0.1, 0.1]]), np.array([[0.9, 0.9, 0.1, 0.1]]))[0]
    assert far[0] == pytest.approx(1 + (0.81 - 0.02) / 0.81, abs=1e-6)   # apart: C = 0.9^2, union 0.02
    assert bx.giou_loss_forward(a, a)[0][0] == pytest.approx(0.0, abs=1e-6)
    assert bx.l1_loss_forward(a, b)[0][0] == pytest.approx(0.5)


# =========================================================== data

def test_boxes_from_masks_known_and_errors():
    m = np.zeros((2, 8, 10), dtype=bool)
    m[0, 2:5, 3:9] = True                                    # rows 2..4, columns 3..8
    m[1, 7, 0] = True
    boxes = boxes_from_masks(m)
    np.testing.assert_allclose(boxes[0], [(3 + 9) / 20, (2 + 5) / 16, 6 / 10, 3 / 8])
    np.testing.assert_allclose(boxes[1], [0.05, 7.5 / 8, 0.1, 1 / 8])
    m[1] = False
    with pytest.raises(ValueError, match="masks: .*empty .*index 1"):
        boxes_from_masks(m)
    with pytest.raises(TypeError, match="masks: expected dtype bool"):
        boxes_from_masks(m.astype(np.uint8))


def test_shape_boxes_hold_their_objects():
    ds = make_shape_boxes(40, image_size=16, seed=3)
    assert ds.boxes.shape == (40, 4) and ds.boxes.min() >= 0 and ds.boxes.max() <= 1
    # the box is tight around the object: its rows and columns touch the box's edges
    from tinyvit.datasets import make_shapes
    masks = make_shapes(40, image_size=16, seed=3).masks
    x0 = np.rint((ds.boxes[:, 0] - ds.boxes[:, 2] / 2) * 16).astype(int)
    x1 = np.rint((ds.boxes[:, 0] + ds.boxes[:, 2] / 2) * 16).astype(int)
    for i in range(40):
        cols = np.flatnonzero(masks[i].any(axis=0))
        assert (cols[0], cols[-1] + 1) == (x0[i], x1[i])
    np.testing.assert_array_equal(make_shape_boxes(40, image_size=16, seed=3).boxes, ds.boxes)


def test_place_digits_boxes_hold_the_ink_and_are_seeded():
    rng = np.random.default_rng(0)
    digits = np.zeros((5, 28, 28), dtype=np.float32)
    for k in range(5):                                       # a bright bar at a different place each
        digits[k, 4 + k:14 + k, 8:12 + k] = 1.0
    ds = place_digits(digits, np.arange(5), 30, canvas=48, scale_range=(0.5, 1.5), seed=1, noise=0.0)
    H = 48
    for i in range(30):
        cx, cy, w, h = ds.boxes[i]
        x0, x1 = int(round((cx - w / 2) * H)), int(round((cx + w / 2) * H))
        y0, y1 = int(round((cy - h / 2) * H)), int(round((cy + h / 2) * H))
        ink = ds.images[i, :, :, 0] >= 0.5
        assert ink[y0:y1, x0:x1].sum() == ink.sum() > 0      # all the ink inside the box
        assert ink[y0, x0:x1].any() and ink[y1 - 1, x0:x1].any()   # and tight
    assert np.ptp(ds.boxes[:, 2]) > 0.1                      # sizes vary
    again = place_digits(digits, np.arange(5), 30, canvas=48, scale_range=(0.5, 1.5), seed=1, noise=0.0)
    np.testing.assert_array_equal(again.images, ds.images)
    with pytest.raises(ValueError, match="scale_range: .*fit the 32-pixel canvas"):
        place_digits(digits, np.arange(5), 3, canvas=32, scale_range=(0.5, 1.5))
    _ = rng


def test_mnist_box_data_when_the_shared_files_exist():
    from pathlib import Path
    root = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not (root / "mnist" / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("../shared/data/mnist (MNIST t10k files) not present")
    tr, va = load_box_data("mnist", data_dir=root, n_train=50, n_val=20, download=False)
    assert tr.image_shape == (56, 56, 1) and len(va) == 20 and set(tr.labels) <= set(range(10))


def test_box_dataset_bad_input():
    img = np.zeros((2, 8, 8, 1), np.float32)
    with pytest.raises(ValueError, match=r"boxes: expected \(cx, cy, w, h\) in \[0, 1\]"):
        BoxDataset(img, np.zeros(2, np.int64), np.full((2, 4), 1.5), ["a"])
    with pytest.raises(ValueError, match="labels, boxes: expected shapes"):
        BoxDataset(img, np.zeros(2, np.int64), np.zeros((3, 4)), ["a"])


# =========================================================== the model

def tiny_config(**kw):
    base = dict(image_size=8, in_channels=3, patch_size=4, dim=8, depth=1, heads=2, mlp_dim=8,
                num_classes=3, dtype="float64")
    return ViTConfig(**{**base, **kw})


def model_gradcheck(model, seed=0):
    rng = np.random.default_rng(seed)
    for k in model.params:                                  # away from the initial symmetric point
        model.params[k] += rng.standard_normal(model.params[k].shape) * 0.3
    x = rng.standard_normal((3, *model.config.image_hw, model.config.in_channels))
    target = random_boxes(rng, 3)
    labels = np.array([0, 2, 1])
    loss, parts, grads, _ = model.loss_and_grads(x, target, labels)
    errors = {}
    for k, p in model.params.items():
        num = numerical_vjp(lambda: np.array(model.loss_and_grads(x, target, labels)[0]), p, np.array(1.0))
        errors[k] = rel_error(grads[k], num)
    return errors, grads


@pytest.mark.parametrize("pool,task,class_pool", [("cls", "box", "cls"), ("mean", "class+box", "cls"),
                                                   ("attn", "class+box", "mean"), ("cls", "class+box", "mean")])
def test_box_model_gradients(pool, task, class_pool):
    model = BoxViT(tiny_config(pool=class_pool), BoxConfig(task=task, box_pool=pool, class_weight=0.7))
    errors, grads = model_gradcheck(model)
    assert max(errors.values()) < 1e-6, {k: v for k, v in errors.items() if v >= 1e-6}
    head_moves = np.abs(grads["head.W"]).max() > 0
    assert head_moves == (task == "class+box")               # task "box" leaves the class head alone


def test_reference_and_fast_layer_sets_agree():
    model = BoxViT(tiny_config(), BoxConfig(task="class+box", box_pool="attn"))
    rng = np.random.default_rng(1)
    x, t, y = rng.standard_normal((4, 8, 8, 3)), random_boxes(rng, 4), np.array([0, 1, 2, 0])
    a = model.loss_and_grads(x, t, y)
    b = model.using("fast").loss_and_grads(x, t, y)
    assert a[0] == pytest.approx(b[0], rel=1e-12)
    for k in a[2]:
        np.testing.assert_allclose(a[2][k], b[2][k], rtol=1e-9, atol=1e-12)


@pytest.mark.skipif(not HAS_REGISTERS, reason="ViTConfig.num_registers missing (register tokens not on this branch)")
def test_reg_token_pool_reads_register_zero():
    model = BoxViT(tiny_config(num_registers=2), BoxConfig(box_pool="reg"))
    errors, grads = model_gradcheck(model)
    assert max(errors.values()) < 1e-6, errors
    x = np.random.default_rng(2).standard_normal((2, 8, 8, 3))
    tokens, _ = model.vit.forward_tokens(x)
    boxes = model.forward(x)[0]
    expect = bx.box_head_forward(tokens[:, 1], model.params["box_head.W"], model.params["box_head.b"])[0]
    np.testing.assert_allclose(boxes, expect)


def test_reg_pool_without_registers_is_one_clear_error():
    with pytest.raises(ValueError, match="box_pool: 'reg' reads register 0"):
        BoxViT(tiny_config(), BoxConfig(box_pool="reg"))


@pytest.mark.skipif(not HAS_MAP, reason="ViTConfig pool='attn' (tinyvit.layers.attn_pool_forward) missing")
def test_map_pool_gradients():
    model = BoxViT(tiny_config(), BoxConfig(box_pool="map"))
    errors, _ = model_gradcheck(model)
    assert max(errors.values()) < 1e-6, errors


def test_box_model_bad_input():
    with pytest.raises(ValueError, match="task"):
        BoxConfig(task="boxes")
    with pytest.raises(ValueError, match="l1_weight, giou_weight"):
        BoxConfig(l1_weight=0, giou_weight=0)
    model = BoxViT(tiny_config(), BoxConfig(task="class+box"))
    x = np.zeros((2, 8, 8, 3))
    with pytest.raises(ValueError, match=r"target_boxes: expected shape \(2, 4\)"):
        model.loss_and_grads(x, np.zeros((2, 3)), np.array([0, 1]))
    with pytest.raises(ValueError, match="labels: task 'class\\+box' needs"):
        model.loss_and_grads(x, np.full((2, 4), 0.5), None)


# =========================================================== training, checkpoints, commands

def small_data():
    tr, va = load_box_data("shapes", n_train=96, n_val=32, image_size=16)
    return tr, va


def small_model(**kw):
    cfg = ViTConfig(image_size=16, in_channels=3, patch_size=4, dim=16, depth=1, heads=2, mlp_dim=16,
                    num_classes=6)
    return BoxViT(cfg, BoxConfig(**kw))


def test_training_improves_iou_and_resume_is_exact(tmp_path):
    tr, va = small_data()
    before = evaluate_box(small_model(), va)["mean_iou"]
    cfg = BoxTrainConfig(epochs=3, batch_size=16, lr=3e-3)
    straight = small_model(task="class+box")
    h = train_box(straight, tr, va, cfg, progress=False)
    assert h["epochs"][-1]["val_mean_iou"] > before + 0.05
    assert h["epochs"][-1]["val_accuracy"] is not None
    stopped = small_model(task="class+box")
    train_box(stopped, tr, va, BoxTrainConfig(**{**cfg.to_dict(), "max_steps": 8}), out_dir=tmp_path,
              progress=False)                                # stops mid epoch 2 (6 batches an epoch)
    resumed = small_model(task="class+box")
    train_box(resumed, tr, va, cfg, out_dir=tmp_path, resume_from=tmp_path / "checkpoint.npz", progress=False)
    for k in straight.params:
        np.testing.assert_array_equal(resumed.params[k], straight.params[k])
    with pytest.raises(CheckpointError, match="another model or other settings"):
        train_box(small_model(), tr, va, BoxTrainConfig(epochs=4), resume_from=tmp_path / "checkpoint.npz",
                  progress=False)


def test_checkpoint_round_trip_and_plain_checkpoints_refused(tmp_path):
    model = small_model(box_pool="attn")
    model.params["box_pool.query"] += 1.0
    path = save_box_checkpoint(tmp_path / "b.npz", model)
    loaded, _ = load_box_model(path)
    x = np.random.default_rng(0).random((2, 16, 16, 3)).astype(np.float32)
    np.testing.assert_array_equal(loaded.forward(x)[0], model.forward(x)[0])
    save_checkpoint(tmp_path / "plain.npz", model.vit)
    with pytest.raises(CheckpointError, match="not a box model"):
        load_box_model(tmp_path / "plain.npz")


def test_box_commands(tmp_path, capsys, monkeypatch):
    from tinyvit.cli import main
    monkeypatch.chdir(tmp_path)
    small = ["--n-train", "32", "--image-size", "16", "--patch-size", "4", "--dim", "16", "--depth", "1",
             "--heads", "2", "--mlp-dim", "16", "--epochs", "1", "--batch-size", "16", "--quiet"]
    assert main(["box", "train", "--task", "class+box", "--out", "run", *small]) == 0
    assert "held-out mean IoU" in capsys.readouterr().out
    assert main(["box", "eval", "run"]) == 0
    out = capsys.readouterr().out
    assert "IoU >= 0.75" in out and "accuracy    0." in out
    assert main(["box", "predict", "run", "--index", "1", "--out", "figs"]) == 0
    assert "box (cx, cy, w, h)" in capsys.readouterr().out
    assert (tmp_path / "figs" / "held-out-1-box.png").stat().st_size > 1000
    assert main(["box", "train", "--resume", "run", "--epochs", "2"]) == 2
    assert "--epochs" in capsys.readouterr().err


def test_batch_split_over_threads_equals_the_whole_batch():
    from concurrent.futures import ThreadPoolExecutor
    from tinyvit.box import _split_loss_and_grads
    model = BoxViT(tiny_config(), BoxConfig(task="class+box", box_pool="mean"))
    rng = np.random.default_rng(3)
    x, t, y = rng.standard_normal((7, 8, 8, 3)), random_boxes(rng, 7), rng.integers(0, 3, 7)
    whole = model.loss_and_grads(x, t, y)
    with ThreadPoolExecutor(2) as pool:
        split = _split_loss_and_grads(model, pool, 3, x, t, y)   # parts of 2, 2 and 3 images
    assert split[0] == pytest.approx(whole[0], rel=1e-12)
    assert split[1]["iou"] == pytest.approx(whole[1]["iou"], rel=1e-12)
    np.testing.assert_allclose(split[3], whole[3])
    for k in whole[2]:
        np.testing.assert_allclose(split[2][k], whole[2][k], rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("pool", ["cls", "mean", "attn"])
def test_float32_stays_float32(pool):
    model = small_model(task="class+box", box_pool=pool)
    x = np.random.default_rng(0).random((4, 16, 16, 3)).astype(np.float32)
    loss, parts, grads, boxes = model.loss_and_grads(x, np.full((4, 4), 0.5), np.arange(4))
    assert boxes.dtype == np.float32
    assert {g.dtype for g in grads.values()} == {np.dtype(np.float32)}
