"""Checkpoints: round trip, atomic writes, and clear errors for bad files."""

import json
import numpy as np
import pytest

from tinyvit import ViT, ViTConfig
from tinyvit.checkpoint import (FORMAT_VERSION, CheckpointError, is_checkpoint, load_checkpoint,
                                save_checkpoint)
from tinyvit.optim import AdamW

from conftest import AllocationSpy, forge_npz_member

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
    with pytest.raises(CheckpointError, match="expected an .npz archive"):
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


# --------------------------------------------------------------------------- hostile files

def _arrays(path):
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _one_line(excinfo):
    msg = str(excinfo.value)
    assert "\n" not in msg and len(msg) < 400
    return msg


@pytest.mark.parametrize("key", ["meta", "train_config", "history"])
@pytest.mark.parametrize("value", [[1, 2], 5, "text"])
def test_json_fields_of_the_wrong_type_fail_at_load(tmp_path, key, value):
    model, opt = _trained_model_and_opt()
    a = _arrays(_save(tmp_path / "ck.npz", model, opt))
    a[key] = np.array(json.dumps(value))
    np.savez(tmp_path / "bad.npz", **a)
    with pytest.raises(CheckpointError, match=f"entry '{key}': expected a JSON object") as e:
        load_checkpoint(tmp_path / "bad.npz")
    assert type(value).__name__ in _one_line(e)


def test_class_names_must_be_one_string_per_class(tmp_path):
    model, opt = _trained_model_and_opt()
    a = _arrays(_save(tmp_path / "ck.npz", model, opt))
    for names, want in ((["a", "b"], "expected 3 names.*got 2"), ([1, 2, 3], "list of 3 strings"),
                        ("abc", "list of 3 strings")):
        a["meta"] = np.array(json.dumps({"class_names": names}))
        np.savez(tmp_path / "bad.npz", **a)
        with pytest.raises(CheckpointError, match=want) as e:
            load_checkpoint(tmp_path / "bad.npz")
        _one_line(e)


@pytest.mark.parametrize("normalize", [[0.5, 0.0], [0.5, "x"], [[0.5] * 2, [0.2] * 2], 7])
def test_bad_normalisation_in_meta_fails_at_load(tmp_path, normalize):
    model, opt = _trained_model_and_opt()
    a = _arrays(_save(tmp_path / "ck.npz", model, opt))
    a["meta"] = np.array(json.dumps({"normalize": normalize}))
    np.savez(tmp_path / "bad.npz", **a)
    with pytest.raises(CheckpointError, match="normalize") as e:
        load_checkpoint(tmp_path / "bad.npz")
    _one_line(e)


def test_huge_depth_in_the_config_is_refused_before_building_anything(tmp_path, monkeypatch):
    import tinyvit.checkpoint as ckmod
    model, opt = _trained_model_and_opt()
    a = _arrays(_save(tmp_path / "ck.npz", model, opt))
    a["model_config"] = np.array(json.dumps({**CFG.to_dict(), "depth": 10 ** 9}))
    np.savez(tmp_path / "deep.npz", **a)
    calls = []
    monkeypatch.setattr(ckmod, "param_shapes", lambda cfg: calls.append(cfg) or {})
    with pytest.raises(CheckpointError, match="depth 1000000000, but the file holds parameters for 1 "
                                              "block") as e:
        load_checkpoint(tmp_path / "deep.npz")
    _one_line(e)
    assert calls == []                                   # no table of 10^9 blocks was built
    # the same, with a parameter named for block 999999999 to match the config's depth
    a["param/blocks.999999999.norm1.gamma"] = np.ones(8, np.float32)
    np.savez(tmp_path / "deep.npz", **a)
    with pytest.raises(CheckpointError, match="depth 1000000000, but the file holds parameters for 2 "
                                              "blocks"):
        load_checkpoint(tmp_path / "deep.npz")
    assert calls == []


def test_array_header_claiming_10_to_12_elements_is_refused_before_allocation(tmp_path, monkeypatch):
    model, opt = _trained_model_and_opt()
    path = _save(tmp_path / "ck.npz", model, opt)
    forge_npz_member(path, "param/head.W", (10 ** 6, 10 ** 6))
    spy = AllocationSpy(monkeypatch)
    with pytest.raises(CheckpointError, match=r"'param/head.W': header says shape \(1000000, 1000000\) "
                                              r"of float32 \(4 TB\), the member holds 16 bytes") as e:
        load_checkpoint(path)
    _one_line(e)
    assert spy.largest() < 10 ** 6


def test_header_that_agrees_with_a_forged_zip_size_is_still_checked_against_the_config(tmp_path):
    # a header and the zip's size field can both lie consistently; the shape check catches it
    model, opt = _trained_model_and_opt()
    path = _save(tmp_path / "ck.npz", model, opt)
    forge_npz_member(path, "param/head.W", (8, 4), data=b"\0" * 128)   # real bytes, wrong shape
    with pytest.raises(CheckpointError, match=r"head.W: expected \(8, 3\) float32, got \(8, 4\)"):
        load_checkpoint(path)


@pytest.mark.parametrize("content, what", [(b"", "an empty file"), (b'{"a": 1}', "a JSON"),
                                           (b"\x89PNG\r\n\x1a\n0000", "a PNG image")])
def test_other_files_given_as_a_checkpoint_say_what_they_are(tmp_path, content, what):
    (tmp_path / "x.npz").write_bytes(content)
    with pytest.raises(CheckpointError, match=f"expected an .npz archive.*got {what}") as e:
        load_checkpoint(tmp_path / "x.npz")
    assert "allow_pickle" not in _one_line(e)


def test_saved_files_follow_the_umask_and_leave_no_temporary_files(tmp_path):
    import os
    model, opt = _trained_model_and_opt()
    old = os.umask(0o027)
    try:
        path = _save(tmp_path / "ck.npz", model, opt)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640
    old = os.umask(0o022)
    try:
        _save(path, model, opt)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.npz"]


def test_a_save_killed_with_sigkill_leaves_a_temp_file_the_next_save_removes(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    code = ("import sys, time, numpy as np\n"
            "from tinyvit._files import atomic_open\n"
            "with atomic_open(sys.argv[1]) as f:\n"
            "    f.write(b'half'); f.flush(); print('writing', flush=True); time.sleep(60)\n")
    target = tmp_path / "ck.npz"
    p = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "writing"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    p.stdout.close()
    left = [q.name for q in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".ck.npz.") and left[0].endswith(".tinyvit-tmp")
    assert not target.exists()                           # nothing half-written under the real name
    model, opt = _trained_model_and_opt()
    _save(target, model, opt)
    assert [q.name for q in tmp_path.iterdir()] == ["ck.npz"]
    assert load_checkpoint(target).step == 7


def _corruptions(data: bytes, n: int, seed: int):
    """n damaged copies of a file: cut short, random bytes flipped, or a byte changed inside
    an .npy header (its dtype or shape text)."""
    rng = np.random.default_rng(seed)
    headers = [i for i in range(len(data) - 6) if data[i:i + 6] == b"\x93NUMPY"]
    for it in range(n):
        d = bytearray(data)
        if it % 3 == 0:
            d = d[:rng.integers(0, len(d))]
        elif it % 3 == 1:
            for _ in range(rng.integers(1, 8)):
                d[rng.integers(0, len(d))] = rng.integers(0, 256)
        else:
            j = headers[rng.integers(0, len(headers))] + rng.integers(6, 100)
            d[min(j, len(d) - 1)] = rng.integers(32, 127)
        yield bytes(d)


def test_any_damage_to_a_checkpoint_is_a_one_line_checkpoint_error(tmp_path):
    """The general property, beyond the listed cases: whatever the damage, loading either
    works or raises CheckpointError with one line -- never another exception."""
    model, opt = _trained_model_and_opt()
    data = _save(tmp_path / "ck.npz", model, opt).read_bytes()
    outcomes = {"loaded": 0, "refused": 0}
    for k, damaged in enumerate(_corruptions(data, 450, seed=0)):
        (tmp_path / "bad.npz").write_bytes(damaged)
        try:
            load_checkpoint(tmp_path / "bad.npz")
            outcomes["loaded"] += 1                      # e.g. a flipped bit inside a float
        except CheckpointError as e:
            assert "\n" not in str(e) and "bad.npz" in str(e), (k, str(e))
            outcomes["refused"] += 1
    assert outcomes["refused"] > 300
