"""The training loop: it learns, it is deterministic, it resumes bit for bit, it stops on NaN."""

import io
import json
import math
import threading

import numpy as np
import pytest

from tinyvit import ViT, ViTConfig
from tinyvit.checkpoint import CheckpointError, load_checkpoint
from tinyvit.datasets import ImageDataset
from tinyvit.train import (TrainConfig, TrainingDiverged, evaluate, normalize_images, plot_history,
                           train, write_history)

K = 4


def bars(n, seed):
    """A learnable toy set: 8x8 grey images holding one 4x4 textured block in a random quadrant.

    Class k = the texture: 0 horizontal stripes, 1 vertical stripes, 2 checkerboard, 3 solid;
    noise and a random brightness on top.
    """
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % K)
    r, c = np.mgrid[0:4, 0:4]
    textures = np.stack([r % 2, c % 2, (r + c) % 2, np.ones((4, 4))]).astype(float)   # (K, 4, 4)
    x = 0.3 * rng.random((n, 8, 8, 1))
    corner = rng.integers(0, 2, size=(n, 2)) * 4
    gain = rng.uniform(0.6, 1.0, size=n)
    for i in range(n):
        y0, x0 = corner[i]
        x[i, y0:y0 + 4, x0:x0 + 4, 0] += gain[i] * textures[labels[i]]
    return ImageDataset(x.astype(np.float32), labels.astype(np.int64), ["rows", "cols", "checks", "solid"],
                        name="textures")


def tiny_model(seed=0, **kw):
    cfg = dict(image_size=8, in_channels=1, patch_size=4, dim=16, depth=1, heads=2, mlp_dim=32,
               num_classes=K, seed=seed)
    cfg.update(kw)
    return ViT(ViTConfig(**cfg))


FAST = dict(epochs=3, batch_size=16, lr=3e-3, warmup=0.5, min_lr=1e-4, normalize=None, log_every=1000)


@pytest.fixture(scope="module")
def data():
    return bars(96, 0), bars(64, 1)


def test_loss_falls_well_below_chance(data):
    train_ds, val_ds = data
    model = tiny_model()
    hist = train(model, train_ds, val_ds, TrainConfig(**{**FAST, "epochs": 30}), progress=False)
    chance = math.log(K)
    first = hist["epochs"][0]
    last = hist["epochs"][-1]
    assert abs(hist["steps"]["loss"][0] - chance) < 0.2          # starts at chance
    assert last["train_loss"] < 0.3 * chance
    assert last["val_loss"] < 0.25 * chance
    assert last["val_acc"] >= 0.95 and first["val_acc"] < last["val_acc"]
    # evaluation agrees with an independent computation of the accuracy
    logits = model(val_ds.images)
    assert evaluate(model, val_ds, batch_size=7)["accuracy"] == pytest.approx(
        float(np.mean(logits.argmax(1) == val_ds.labels)))


def test_uci_digits_learn(shared_data):
    from tinyvit.datasets import load_dataset
    train_ds, val_ds = load_dataset("digits", shared_data, download=False)
    model = ViT(ViTConfig(image_size=8, in_channels=1, patch_size=4, dim=32, depth=1, heads=2, mlp_dim=64,
                          num_classes=10))
    hist = train(model, train_ds, val_ds, TrainConfig(epochs=6, batch_size=32, lr=3e-3, warmup=0.3),
                 progress=False)
    assert hist["epochs"][-1]["val_loss"] < 0.4 * math.log(10)
    assert hist["epochs"][-1]["val_acc"] > 0.8


def test_evaluate_known_values():
    """A model whose head ignores the image and always says class 2: known accuracy and confusion."""
    ds = bars(40, 3)
    model = tiny_model()
    model.params["head.W"][...] = 0.0
    model.params["head.b"][...] = np.log(np.array([1, 1, 2, 1], np.float32))   # softmax = (.2,.2,.4,.2)
    res = evaluate(model, ds, batch_size=16)
    counts = np.bincount(ds.labels, minlength=K)
    assert res["accuracy"] == pytest.approx(counts[2] / 40)
    assert res["loss"] == pytest.approx(-(counts[2] * np.log(0.4) + (40 - counts[2]) * np.log(0.2)) / 40, rel=1e-6)
    expected = np.zeros((K, K), np.int64)
    expected[:, 2] = counts
    np.testing.assert_array_equal(res["confusion"], expected)
    np.testing.assert_array_equal(res["per_class_accuracy"], [0, 0, 1, 0])


def test_same_seed_same_numbers_other_seed_other_numbers(data):
    train_ds, val_ds = data
    cfg = TrainConfig(**{**FAST, "epochs": 1, "augment_pad": 1, "augment_flip": True})
    runs = []
    for data_seed in (0, 0, 1):
        m = tiny_model()
        h = train(m, train_ds, val_ds, cfg, progress=False, seed=data_seed)
        runs.append((m, h))
    (a, ha), (b, hb), (c, hc) = runs
    assert ha["steps"]["loss"] == hb["steps"]["loss"]
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    assert ha["steps"]["loss"] != hc["steps"]["loss"]


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("stop", [4, 6, 13])          # mid-epoch 1, epoch boundary, mid-epoch 3
def test_resume_is_bit_identical(data, tmp_path, stop, workers):
    train_ds, val_ds = data                            # 96 images / 16 = 6 steps per epoch
    cfg = TrainConfig(**{**FAST, "augment_pad": 1, "augment_flip": True, "normalize": "image",
                         "workers": workers})
    straight = tiny_model()
    h_straight = train(straight, train_ds, val_ds, cfg, progress=False)
    assert len(h_straight["steps"]["loss"]) == 18

    first = tiny_model()
    train(first, train_ds, val_ds, cfg, out_dir=tmp_path, progress=False, max_steps=stop)
    ck = load_checkpoint(tmp_path / "checkpoint.npz")
    assert ck.step == stop and (ck.epoch, ck.batch) == divmod(stop, 6)
    resumed = tiny_model()
    for v in resumed.params.values():                  # scrambled: everything must come from the file
        v[...] = np.random.default_rng(5).standard_normal(v.shape)
    h_resumed = train(resumed, train_ds, val_ds, cfg, out_dir=tmp_path, progress=False,
                      resume_from=tmp_path / "checkpoint.npz")
    for k in straight.params:
        assert np.array_equal(resumed.params[k], straight.params[k]), k
    assert h_resumed["steps"]["loss"] == h_straight["steps"]["loss"]
    for a, b in zip(h_resumed["epochs"], h_straight["epochs"]):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "step"):
            assert a[key] == b[key], key
    final = load_checkpoint(tmp_path / "checkpoint.npz")
    assert (final.epoch, final.batch, final.step) == (3, 0, 18)
    assert int(final.optim_state["step"]) == 18
    assert final.train_config["workers"] == workers


@pytest.fixture
def helpers(monkeypatch):
    """The helper processes that training's ProcessSplitter starts, recorded."""
    import tinyvit.train as T
    from tinyvit.parallel import ProcessSplitter
    started = []

    class Recording(ProcessSplitter):
        def _start(self, capacity):
            super()._start(capacity)
            started.extend(self._procs)

    monkeypatch.setattr(T, "ProcessSplitter", Recording)
    return started


def _spy_batch_sizes(model, monkeypatch):
    """Record the batch size of every ViT.loss_and_grads call in this process (with
    workers=2 that is the first half of each batch; the other half is the helper's).
    The training loop runs model.using("fast"), a second ViT on the same parameters,
    so the spy goes on the class."""
    real = ViT.loss_and_grads
    sizes = []

    def spy(self, images, labels, *args):
        if self.params is model.params:
            sizes.append(len(images))
        return real(self, images, labels, *args)

    monkeypatch.setattr(ViT, "loss_and_grads", spy)
    return sizes


def test_split_batch_is_deterministic_and_close_to_unsplit(data, monkeypatch, helpers):
    train_ds, val_ds = data                            # 6 steps per epoch of 16 images
    cfg = TrainConfig(**{**FAST, "epochs": 2, "augment_pad": 1, "augment_flip": True})
    threads_before = set(threading.enumerate())
    runs = {}
    for name, workers in (("split", 2), ("again", 2), ("whole", 1)):
        m = tiny_model(dtype="float64")
        sizes = _spy_batch_sizes(m, monkeypatch)
        h = train(m, train_ds, val_ds, cfg, progress=False, workers=workers)
        runs[name] = m, h, sizes
    assert runs["split"][2] == [8] * 12                # 12 steps, each half here, half in a helper
    assert runs["whole"][2] == [16] * 12
    assert len(helpers) == 2                           # one helper per split run
    assert all(p.poll() is not None for p in helpers)  # and both have ended
    assert set(threading.enumerate()) == threads_before
    (a, ha, _), (b, hb, _), (c, hc, _) = runs["split"], runs["again"], runs["whole"]
    assert ha["steps"]["loss"] == hb["steps"]["loss"]
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k], err_msg=k)
        np.testing.assert_allclose(a.params[k], c.params[k], rtol=1e-9, atol=1e-12, err_msg=k)
    np.testing.assert_allclose(ha["steps"]["loss"], hc["steps"]["loss"], rtol=1e-10)


def test_split_helpers_end_on_interrupt(data, tmp_path, monkeypatch, helpers):
    train_ds, _ = data
    model = tiny_model()
    real = model.loss_and_grads
    calls = []

    def interrupted(images, labels, *args):
        calls.append(1)
        if len(calls) == 3:                            # step 3, while the helper has its half
            raise KeyboardInterrupt
        return real(images, labels, *args)

    monkeypatch.setattr(model, "loss_and_grads", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(model, train_ds, None, TrainConfig(**{**FAST, "workers": 2}), out_dir=tmp_path,
              progress=False, layers="model")            # the patched model itself runs the steps
    assert len(helpers) == 1 and helpers[0].poll() is not None
    assert load_checkpoint(tmp_path / "checkpoint.npz").step == 2


def _without_workers(path):
    """Rewrite a checkpoint as one from before TrainConfig had "workers"."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    tc = json.loads(str(arrays["train_config"][()]))
    del tc["workers"]
    arrays["train_config"] = np.array(json.dumps(tc))
    np.savez(path, **arrays)


def test_config_without_workers_means_one(data, tmp_path):
    d = TrainConfig(**FAST).to_dict()
    del d["workers"]
    assert TrainConfig.from_dict(d).workers == 1
    train_ds, val_ds = data                            # a checkpoint from before "workers" resumes
    cfg = TrainConfig(**{**FAST, "epochs": 1})
    straight = tiny_model()
    train(straight, train_ds, val_ds, cfg, progress=False)
    train(tiny_model(), train_ds, val_ds, cfg, out_dir=tmp_path, progress=False, max_steps=3)
    _without_workers(tmp_path / "checkpoint.npz")
    assert "workers" not in load_checkpoint(tmp_path / "checkpoint.npz").train_config
    resumed = tiny_model()
    train(resumed, train_ds, val_ds, cfg, out_dir=tmp_path, progress=False,
          resume_from=tmp_path / "checkpoint.npz")
    for k in straight.params:
        assert np.array_equal(resumed.params[k], straight.params[k]), k
    with pytest.raises(CheckpointError, match="other settings.*workers: checkpoint 1, given 2"):
        train(tiny_model(), train_ds, val_ds, cfg, resume_from=tmp_path / "checkpoint.npz",
              progress=False, workers=2)


def test_resume_with_other_config_fails(data, tmp_path):
    train_ds, val_ds = data
    cfg = TrainConfig(**FAST)
    train(tiny_model(), train_ds, val_ds, cfg, out_dir=tmp_path, progress=False, max_steps=2)
    with pytest.raises(CheckpointError, match="another model config.*dim: checkpoint 16, given 32"):
        train(tiny_model(dim=32), train_ds, val_ds, cfg, resume_from=tmp_path / "checkpoint.npz",
              progress=False)
    with pytest.raises(CheckpointError, match="other settings.*lr: checkpoint 0.003, given 0.001"):
        train(tiny_model(), train_ds, val_ds, cfg, resume_from=tmp_path / "checkpoint.npz",
              progress=False, lr=1e-3)


def test_nan_loss_stops_with_step_and_lr(data, monkeypatch):
    train_ds, _ = data
    model = tiny_model()
    real = model.loss_and_grads
    calls = []

    def flaky(images, labels, *args):
        calls.append(1)
        loss, grads, logits = real(images, labels, *args)
        return (float("nan") if len(calls) == 3 else loss), grads, logits

    monkeypatch.setattr(model, "loss_and_grads", flaky)
    cfg = TrainConfig(**{**FAST, "schedule": "constant", "warmup": 0.0, "lr": 0.004})
    with pytest.raises(TrainingDiverged, match=r"loss nan at step 3 \(epoch 1, learning rate 0.004\)"):
        train(model, train_ds, None, cfg, progress=False, layers="model")
    assert len(calls) == 3                              # stopped right there, not a stream of NaNs


@pytest.mark.filterwarnings("error::RuntimeWarning")      # train() silences them, helpers too
@pytest.mark.parametrize("workers", [1, 2])
def test_exploding_sgd_is_caught(data, workers):
    train_ds, _ = data
    cfg = TrainConfig(**{**FAST, "optimizer": "sgd", "lr": 1e30, "clip": 0.0, "schedule": "constant",
                         "warmup": 0.0, "min_lr": 0.0, "workers": workers})
    with pytest.raises(TrainingDiverged, match="at step [0-9]+ .*learning rate 1e\\+30"):
        train(tiny_model(), train_ds, None, cfg, progress=False)


def test_history_files_and_plot(data, tmp_path):
    train_ds, val_ds = data
    hist = train(tiny_model(), train_ds, val_ds, TrainConfig(**{**FAST, "epochs": 2}), out_dir=tmp_path,
                 progress=False)
    assert len(hist["steps"]["step"]) == 12 and hist["steps"]["step"][-1] == 12
    lines = (tmp_path / "history.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,step,train_loss,train_acc,val_loss,val_acc,lr,images_per_s")
    assert len(lines) == 3 and lines[2].startswith("2,12,")
    assert len((tmp_path / "steps.csv").read_text().splitlines()) == 13
    saved = json.loads((tmp_path / "history.json").read_text())
    assert saved["steps"]["loss"] == hist["steps"]["loss"]
    assert [r["val_acc"] for r in saved["epochs"]] == [r["val_acc"] for r in hist["epochs"]]
    fig = plot_history(hist)
    assert len(fig.axes) == 2
    fig.savefig(tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    write_history(hist, tmp_path / "again")
    assert (tmp_path / "again" / "history.json").is_file()


def test_curves_of_a_run_stopped_in_its_first_epoch_draw_without_warnings(data, recwarn):
    train_ds, _ = data
    hist = train(tiny_model(), train_ds, None, TrainConfig(**FAST), progress=False, max_steps=3)
    assert hist["epochs"] == [] and len(hist["steps"]["step"]) == 3
    fig = plot_history(hist)
    assert "no epoch finished yet" in [t.get_text() for t in fig.axes[1].texts]
    assert not [w for w in recwarn if "legend" in str(w.message)]


class _Stream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self._tty = tty

    def isatty(self):
        return self._tty


def test_progress_in_place_on_a_terminal_plain_lines_otherwise(data):
    train_ds, val_ds = data
    cfg = TrainConfig(**{**FAST, "epochs": 1, "log_every": 2})
    tty, plain = _Stream(True), _Stream(False)
    train(tiny_model(), train_ds, val_ds, cfg, stream=tty)
    train(tiny_model(), train_ds, val_ds, cfg, stream=plain)
    assert "\r" in tty.getvalue() and "ETA" in tty.getvalue()
    out = plain.getvalue()
    assert "\r" not in out and "\033" not in out
    step_lines = [l for l in out.splitlines() if l.startswith("step ")]
    assert [l.split()[1] for l in step_lines] == ["2/6", "4/6", "6/6"]
    assert "img/s" in step_lines[0] and "lr" in step_lines[0] and "ETA" in step_lines[0]
    assert any(l.startswith("epoch 1/1") and "val" in l for l in out.splitlines())
    quiet = _Stream(False)
    train(tiny_model(), train_ds, val_ds, cfg, stream=quiet, progress=False)
    assert quiet.getvalue() == ""


def test_normalize_images():
    x = np.random.default_rng(0).random((3, 4, 4, 2)).astype(np.float32)
    y = normalize_images(x, "image")
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.mean(axis=(1, 2, 3)), 0, atol=1e-6)
    np.testing.assert_allclose(y.std(axis=(1, 2, 3)), 1, atol=1e-2)
    z = normalize_images(x, [[0.5, 0.25], [2.0, 4.0]])
    np.testing.assert_allclose(z[..., 1], (x[..., 1] - 0.25) / 4.0, rtol=1e-6)
    assert normalize_images(x, None) is not x


def test_bad_arguments_name_themselves(data):
    train_ds, val_ds = data
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=-1.0)
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="adam")
    with pytest.raises(ValueError, match="workers: expected an integer >= 1, got 0"):
        TrainConfig(workers=0)
    with pytest.raises(TypeError, match="workers"):
        TrainConfig(workers=2.0)
    with pytest.raises(ValueError, match="train_ds: expected images of shape"):
        train(tiny_model(image_size=16), train_ds, val_ds, TrainConfig(**FAST), progress=False)
    with pytest.raises(TypeError, match="train_ds"):
        train(tiny_model(), train_ds.images, val_ds, progress=False)
    with pytest.raises(ValueError, match="unexpected keys"):
        train(tiny_model(), train_ds, val_ds, progress=False, learning_rate=0.1)


def test_a_lost_helper_ends_training_in_one_line_with_the_partial_epoch_saved(data, tmp_path, monkeypatch):
    import tinyvit.train as T
    from tinyvit.parallel import HelperLost
    train_ds, _ = data
    real = T.ProcessSplitter
    calls = []

    class Dying(real):
        def loss_and_grads(self, *args, **kw):
            calls.append(1)
            if len(calls) == 3:
                raise HelperLost("ProcessSplitter: helper process 1 ended (exit code -9), and its "
                                 "replacement too, in the same step")
            return super().loss_and_grads(*args, **kw)

    monkeypatch.setattr(T, "ProcessSplitter", Dying)
    with pytest.raises(T.TrainingStopped) as e:
        train(tiny_model(), train_ds, None, TrainConfig(**{**FAST, "workers": 2}), out_dir=tmp_path,
              progress=False)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.endswith(f"training stopped after step 2 (epoch 1, batch 2); checkpoint saved to "
                        f"{tmp_path / 'checkpoint.npz'} (continue with --resume)")
    ck = load_checkpoint(tmp_path / "checkpoint.npz")
    assert (ck.epoch, ck.batch, ck.step) == (0, 2, 2)    # the partial epoch, resumable
    assert json.loads((tmp_path / "history.json").read_text())["steps"]["step"] == [1, 2]


def test_a_helper_killed_mid_training_is_replaced_and_the_run_goes_on(data, monkeypatch):
    import os
    import signal

    import tinyvit.train as T
    train_ds, _ = data
    real = T.ProcessSplitter
    made = []

    class KillOnce(real):
        def loss_and_grads(self, *args, **kw):
            made.append(self)
            if len(made) == 3:
                os.kill(self._procs[0].pid, signal.SIGKILL)
            return super().loss_and_grads(*args, **kw)

    cfg = TrainConfig(**{**FAST, "epochs": 1, "workers": 2})
    expected = train(tiny_model(), train_ds, None, cfg, progress=False)
    monkeypatch.setattr(T, "ProcessSplitter", KillOnce)
    got = train(tiny_model(), train_ds, None, cfg, progress=False)
    assert made[0].restarts == 1
    assert got["steps"]["loss"] == expected["steps"]["loss"]     # bit for bit: the step was redone


def test_divergence_prints_one_line_and_no_numpy_warnings(tmp_path):
    """The CLI on a run that explodes: one error line on stderr, no RuntimeWarnings from
    NumPy (in this process or the helper) before it."""
    import subprocess
    import sys
    cmd = [sys.executable, "-m", "tinyvit", "train", "--n-train", "64", "--image-size", "16",
           "--dim", "16", "--depth", "1", "--heads", "2", "--mlp-dim", "16", "--epochs", "1",
           "--batch-size", "16", "--optimizer", "sgd", "--lr", "1e30", "--clip", "0", "--warmup", "0",
           "--schedule", "constant", "--out", str(tmp_path / "run"), "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "training diverged" in r.stderr, r.stderr
    assert "Warning" not in r.stderr


def test_huge_warmup_is_capped_not_overflowed(data):
    train_ds, _ = data
    hist = train(tiny_model(), train_ds, None, TrainConfig(**{**FAST, "epochs": 1, "warmup": 1e308}),
                 progress=False)
    lrs = hist["steps"]["lr"]
    assert len(lrs) == 6 and lrs == sorted(lrs) and lrs[-1] == pytest.approx(FAST["lr"])   # all warm-up


@pytest.mark.parametrize("normalize, match", [([0.5, 0.0], "std: expected numbers > 0"),
                                              ([0.5, "x"], "std: expected a number"),
                                              ([0.5, float("nan")], "finite"),
                                              ("text", "expected 'image', None or")])
def test_bad_normalisation_is_refused_when_configured(normalize, match):
    with pytest.raises((ValueError, TypeError), match=match):
        TrainConfig(normalize=normalize)


def test_augment_pad_beyond_the_image_is_refused(data):
    train_ds, _ = data
    with pytest.raises(ValueError, match=r"augment_pad: expected at most the image side 8 .*got 1000000000"):
        train(tiny_model(), train_ds, None, TrainConfig(**{**FAST, "augment_pad": 10 ** 9}), progress=False)


def test_evaluate_checks_the_confusion_matrix_fits_before_allocating(data, monkeypatch):
    import tinyvit._files as files
    _, val_ds = data
    monkeypatch.setattr(files, "physical_memory_bytes", lambda: K * K * 8 - 1)   # one byte short
    with pytest.raises(ValueError, match=f"model num_classes: {K} needs 128 bytes for the confusion matrix"):
        evaluate(tiny_model(), val_ds)


@pytest.mark.parametrize("change, match", [
    ({"state/batch": 7, "state/step": 7}, "batch 7: expected fewer than the 6 batches per epoch"),
    ({"history": json.dumps({"steps": [1], "epochs": 3})}, "entry 'history': expected the layout training writes"),
])
def test_resume_from_a_damaged_training_state_is_one_clear_error(data, tmp_path, change, match):
    train_ds, _ = data                                   # 6 steps per epoch
    cfg = TrainConfig(**FAST)
    train(tiny_model(), train_ds, None, cfg, out_dir=tmp_path, progress=False, max_steps=2)
    with np.load(tmp_path / "checkpoint.npz", allow_pickle=False) as npz:
        a = {k: npz[k] for k in npz.files}
    a.update({k: np.array(v) for k, v in change.items()})
    np.savez(tmp_path / "bad.npz", **a)
    with pytest.raises(CheckpointError, match=match) as e:
        train(tiny_model(), train_ds, None, cfg, resume_from=tmp_path / "bad.npz", progress=False)
    assert "\n" not in str(e.value)


def test_checkpoint_and_history_files_get_the_modes_the_umask_gives(data, tmp_path):
    import os
    train_ds, _ = data
    old = os.umask(0o027)
    try:
        train(tiny_model(), train_ds, None, TrainConfig(**{**FAST, "epochs": 1}), out_dir=tmp_path,
              progress=False)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {n: 0o640 for n in ("checkpoint.npz", "history.json", "history.csv", "steps.csv")}


def test_epoch_line_without_validation_says_so(data):
    import io
    train_ds, _ = data
    out = io.StringIO()
    train(tiny_model(), train_ds, None, TrainConfig(**{**FAST, "epochs": 1}), stream=out)
    text = out.getvalue()
    assert "no validation set" in text and "nan" not in text, text
