"""Checkpoints: round trip, atomic writes, and clear errors for bad files."""

import json
import numpy as np
import pytest

from tinyvit import ViT, ViTConfig
from tinyvit.checkpoint import (FORMAT_VERSION, CheckpointError, is_checkpoint, load_checkpoint,
                                save_checkpoint)
from tinyvit.optim import AdamW

CFG = ViTConfig(image_size=8, in_channels=1, patch_size=4, dim=8, depth=1, heads=2, mlp_dim=16,
                num_classes=3, seed=3)


def _trained_model_and_opt():
    model = ViT(CFG)
    opt = AdamW(lr=1e-2)
    rng = np.random.default_rng(0)
    x = rng.random((4, 8, 8, 1), dtype=np.float32)
    _, grads, _ = model.loss_and_grads(x, np.array([0, 1, 2, 0]))
    opt.step(model.params, grads)
    return model, opt


def _save(path, model, opt, **kw):
    return save_checkpoint(path, model, optimizer=opt, train_config={"epochs": 3, "lr": 0.01},
                           meta={"class_names": ["a", "b", "c"], "normalize": "image"},
                           history={"steps": {"loss": [1.5, 1.25]}}, epoch=1, batch=2, step=7, seed=5, **kw)


def test_round_trip_restores_everything(tmp_path):
    model, opt = _trained_model_and_opt()
    path = _save(tmp_path / "ck.npz", model, opt)
    ck = load_checkpoint(path)
    assert ck.model_config == CFG
    assert set(ck.params) == set(model.params)
    for k, v in model.params.items():
        assert ck.params[k].dtype == np.float32
        np.testing.assert_array_equal(ck.params[k], v)
    assert int(ck.optim_state["step"]) == 1
    np.testing.assert_array_equal(ck.optim_state["m.head.W"], opt.state["m"]["head.W"])
    assert (ck.epoch, ck.batch, ck.step, ck.seed) == (1, 2, 7, 5)
    assert ck.train_config == {"epochs": 3, "lr": 0.01}
    assert ck.class_names == ["a", "b", "c"]
    assert ck.history["steps"]["loss"] == [1.5, 1.25]
    # the restored model computes the same logits
    x = np.random.default_rng(1).random((2, 8, 8, 1), dtype=np.float32)
    np.testing.assert_array_equal(ck.model()(x), model(x))


def test_file_is_plain_npz_without_pickle(tmp_path):
    model, opt = _trained_model_and_opt()
    path = _save(tmp_path / "ck.npz", model, opt)
    with np.load(path, allow_pickle=False) as npz:
        assert all(npz[k].dtype != object for k in npz.files)
        assert str(npz["format"][()]) == "tinyvit-checkpoint"
        assert int(npz["format_version"]) == FORMAT_VERSION
        assert json.loads(str(npz["model_config"][()]))["dim"] == 8
        assert "param/head.W" in npz.files and "optim/v.head.W" in npz.files
    assert is_checkpoint(path)


def test_crash_during_save_leaves_previous_checkpoint_whole(tmp_path, monkeypatch):
    model, opt = _trained_model_and_opt()
    path = tmp_path / "ck.npz"
    _save(path, model, opt)
    before = {k: v.copy() for k, v in model.params.items()}
    for v in model.params.values():
        v += 1.0                                          # a later state we try to save

    def failing_savez(file, **arrays):
        file.write(b"PK\x03\x04 half a zip file")         # part of the data reaches the disk
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(OSError, match="simulated"):
        _save(path, model, opt)
    monkeypatch.undo()
    ck = load_checkpoint(path)                            # the old one, intact
    for k, v in before.items():
        np.testing.assert_array_equal(ck.params[k], v)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.npz"]   # no temp file left behind


def test_truncated_file_fails_clearly(tmp_path):
    model, opt = _trained_model_and_opt()
    path = _save(tmp_path / "ck.npz", model, opt)
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 30, 100):
        bad = tmp_path / f"cut{cut}.npz"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated or corrupt") as e:
            load_checkpoint(bad)
        assert "\n" not in str(e.value)
        assert not is_checkpoint(bad)


def test_other_format_version_fails_clearly(tmp_path):
    model, opt = _trained_model_and_opt()
    path = _save(tmp_path / "ck.npz", model, opt)
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["format_version"] = np.array(FORMAT_VERSION + 1, dtype=np.int64)
    np.savez(tmp_path / "future.npz", **arrays)
    with pytest.raises(CheckpointError, match=f"version {FORMAT_VERSION + 1}.*reads version {FORMAT_VERSION}"):
        load_checkpoint(tmp_path / "future.npz")


def test_non_checkpoint_npz_and_other_files_fail_clearly(tmp_path):
    np.savez(tmp_path / "plain.npz", x=np.zeros(3))
    with pytest.raises(CheckpointError, match="not a tinyvit checkpoint"):
        load_checkpoint(tmp_path / "plain.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable .npz"):
        load_checkpoint(tmp_path / "text.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_checkpoint(tmp_path / "missing.npz")


def test_parameters_that_do_not_fit_the_config_fail(tmp_path):
    model, opt = _trained_model_and_opt()
    path = _save(tmp_path / "ck.npz", model, opt)
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["param/head.W"] = np.zeros((8, 5), np.float32)     # 5 classes, config says 3
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(CheckpointError, match="do not match the stored model config.*head.W") as e:
        load_checkpoint(tmp_path / "bad.npz")
    assert "\n" not in str(e.value)


def test_pickled_object_arrays_are_refused(tmp_path):
    np.savez(tmp_path / "evil.npz", format=np.array({"a": 1}, dtype=object))
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil.npz")
