"""Splitting the batch across threads gives the whole batch's loss and gradients."""

import os

import numpy as np
import pytest

from tinyvit import ViT, ViTConfig
from tinyvit.parallel import BatchSplitter


@pytest.mark.parametrize("workers, batch", [(2, 8), (3, 10), (2, 7)])
def test_split_batch_matches_the_whole_batch(workers, batch):
    cfg = ViTConfig(image_size=8, in_channels=2, patch_size=4, dim=8, depth=2, heads=2, mlp_dim=12,
                    num_classes=3, dtype="float64")
    model = ViT(cfg)
    rng = np.random.default_rng(0)
    for v in model.params.values():
        v += rng.standard_normal(v.shape) * 0.3
    images = rng.random((batch, 8, 8, 2))
    labels = rng.integers(0, 3, batch)
    loss, grads, logits = model.loss_and_grads(images, labels, 0.1)
    with BatchSplitter(model, workers) as split:
        loss_s, grads_s, logits_s = split.loss_and_grads(images, labels, 0.1)
        again = split.loss_and_grads(images, labels, 0.1)
    assert loss_s == pytest.approx(loss, rel=1e-13)
    np.testing.assert_allclose(logits_s, logits, rtol=1e-13, atol=1e-14)
    for k in grads:
        np.testing.assert_allclose(grads_s[k], grads[k], rtol=1e-10, atol=1e-14, err_msg=k)
        np.testing.assert_array_equal(again[1][k], grads_s[k])               # deterministic


def test_float32_stays_float32_and_bad_workers():
    model = ViT(ViTConfig(image_size=8, in_channels=1, patch_size=4, dim=8, depth=1, heads=2,
                          mlp_dim=8, num_classes=3))
    images = np.random.default_rng(1).random((6, 8, 8, 1), dtype=np.float32)
    with BatchSplitter(model, 2) as split:
        _, grads, logits = split.loss_and_grads(images, np.array([0, 1, 2, 0, 1, 2]))
    assert logits.dtype == np.float32 and all(g.dtype == np.float32 for g in grads.values())
    with pytest.raises(ValueError, match="workers: expected an integer >= 1, got 0"):
        BatchSplitter(model, 0)


@pytest.mark.parametrize("failing_part", [0, 1])
def test_an_error_in_any_part_is_raised_after_every_part_ends(failing_part, monkeypatch):
    """Part 0 runs in the calling thread, the others in the pool: an error in either is
    raised to the caller, and only once every part has finished (no thread left running)."""
    import threading
    import time

    cfg = ViTConfig(image_size=8, in_channels=1, patch_size=4, dim=8, depth=1, heads=2, mlp_dim=8,
                    num_classes=3)
    model = ViT(cfg)
    real = model.loss_and_grads
    finished = []

    def part(images, labels, *args):
        first = threading.current_thread() is threading.main_thread()
        if first == (failing_part == 0):
            raise ValueError(f"part {failing_part} failed")
        time.sleep(0.2)                                  # the healthy part is still running
        out = real(images, labels, *args)
        finished.append(1)
        return out

    monkeypatch.setattr(model, "loss_and_grads", part)
    images = np.zeros((4, 8, 8, 1), np.float32)
    with BatchSplitter(model, 2) as split:
        with pytest.raises(ValueError, match=f"part {failing_part} failed"):
            split.loss_and_grads(images, np.array([0, 1, 2, 0]))
        assert finished == [1]                           # the other part had ended before the raise


# --- ProcessSplitter -----------------------------------------------------------------------------
def _model(dtype="float64", seed=0):
    cfg = ViTConfig(image_size=8, in_channels=2, patch_size=4, dim=8, depth=2, heads=2, mlp_dim=12,
                    num_classes=3, dtype=dtype)
    model = ViT(cfg)
    rng = np.random.default_rng(seed)
    for v in model.params.values():
        v += (rng.standard_normal(v.shape) * 0.3).astype(v.dtype)
    return model, rng


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_processes_give_the_threads_results_bit_for_bit(dtype):
    from tinyvit.parallel import ProcessSplitter
    model, rng = _model(dtype)
    with BatchSplitter(model, 3) as threads, ProcessSplitter(model, 3) as procs:
        for batch in (10, 7, 16):                        # 16: larger parts, the helpers restart
            images = rng.random((batch, 8, 8, 2)).astype(dtype)
            labels = rng.integers(0, 3, batch)
            loss_t, grads_t, logits_t = threads.loss_and_grads(images, labels, 0.1)
            loss_p, grads_p, logits_p = procs.loss_and_grads(images, labels, 0.1)
            assert loss_p == loss_t
            np.testing.assert_array_equal(logits_p, logits_t)
            for k in grads_t:
                assert grads_p[k].dtype == np.dtype(dtype)
                np.testing.assert_array_equal(grads_p[k], grads_t[k], err_msg=k)
            # the optimizer changes the parameters in place: the helpers must see that
            for v in model.params.values():
                v *= 0.9
        procs_seen = list(procs._procs)
        assert len(procs_seen) == 2
    assert all(p.poll() is not None for p in procs_seen)     # closed: the helpers have ended


def test_process_split_errors_and_a_lost_helper():
    from tinyvit.parallel import ProcessSplitter
    model, rng = _model()
    images = rng.random((6, 8, 8, 2))
    with ProcessSplitter(model, 2) as split:
        with pytest.raises(ValueError, match="labels"):          # checked before any copy
            split.loss_and_grads(images, np.array([0, 1, 2, 0, 1, 3]))
        with pytest.raises(TypeError, match="images"):
            split.loss_and_grads(images.astype(np.float32), np.zeros(6, int))
        bad = images.copy()
        bad[5, 0, 0, 0] = np.nan                         # in the helper's part
        with pytest.raises(ValueError, match="finite"):
            split.loss_and_grads(bad, np.zeros(6, int))
        loss, _, _ = split.loss_and_grads(images, np.zeros(6, int))   # still in step
        assert np.isfinite(loss)
        first = split._procs[0]
        first.kill()                                     # SIGKILL, as the OOM killer would
        first.wait()
        again, _, _ = split.loss_and_grads(images, np.zeros(6, int))   # replaced, step redone
        assert again == loss and split.restarts == 1 and split._procs[0] is not first


def test_a_helper_lost_twice_in_one_step_is_one_clear_error(monkeypatch):
    import tinyvit.parallel as P
    model, rng = _model()
    images = rng.random((6, 8, 8, 2))
    real_start = P.ProcessSplitter._start

    def start_then_die(self, capacity):                  # every new helper dies at once
        real_start(self, capacity)
        for p in self._procs:
            p.kill()
            p.wait()

    monkeypatch.setattr(P.ProcessSplitter, "_start", start_then_die)
    with P.ProcessSplitter(model, 2) as split:
        with pytest.raises(P.HelperLost, match=r"^ProcessSplitter: helper process 1 ended "
                                               r"\(exit code -9\), and its replacement too") as e:
            split.loss_and_grads(images, np.zeros(6, int))
        assert "\n" not in str(e.value) and split.restarts == 1


def test_process_split_without_dev_shm(monkeypatch, tmp_path):
    """Where there is no /dev/shm (macOS), the shared file goes to the temporary directory,
    and is removed as soon as both sides have mapped it."""
    import tempfile

    import tinyvit.parallel as P
    monkeypatch.setattr(P.os.path, "isdir", lambda path: False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    model, rng = _model()
    images, labels = rng.random((4, 8, 8, 2)), np.array([0, 1, 2, 0])
    with P.ProcessSplitter(model, 2) as split:
        loss, grads, _ = split.loss_and_grads(images, labels)
        assert list(tmp_path.iterdir()) == []            # unlinked once mapped
    with BatchSplitter(model, 2) as threads:
        assert threads.loss_and_grads(images, labels)[0] == loss


def test_a_shared_file_left_by_a_killed_parent_is_removed_by_the_next_start(monkeypatch, tmp_path):
    import subprocess
    import sys
    import tempfile

    import tinyvit.parallel as P
    monkeypatch.setattr(P.os.path, "isdir", lambda path: False)        # use tmp_path, not /dev/shm
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()                      # a pid that has ended
    (tmp_path / f"tinyvit-split-{dead}.abc123").write_bytes(b"\0" * 64)
    (tmp_path / f"tinyvit-split-{os.getpid()}.mine").write_bytes(b"")      # a live pid's: kept
    model, rng = _model()
    with P.ProcessSplitter(model, 2) as split:
        split.loss_and_grads(rng.random((4, 8, 8, 2)), np.array([0, 1, 2, 0]))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"tinyvit-split-{os.getpid()}.mine"]


def test_no_room_for_the_shared_file_is_one_clear_error(monkeypatch, tmp_path):
    import errno
    import tempfile

    import tinyvit.parallel as P
    monkeypatch.setattr(P.os.path, "isdir", lambda path: False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(P.os, "posix_fallocate", full, raising=False)
    model, rng = _model()
    with P.ProcessSplitter(model, 2) as split:
        with pytest.raises(OSError, match=r"ProcessSplitter: expected room for a [0-9.]+ KB shared file, "
                                          r"got none \(.*No space left on device\); free some space or "
                                          r"train with --workers 1"):
            split.loss_and_grads(rng.random((4, 8, 8, 2)), np.array([0, 1, 2, 0]))
    assert list(tmp_path.iterdir()) == []                # nothing left behind
