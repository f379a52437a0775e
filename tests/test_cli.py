"""The tinyvit command: train, eval, predict, resume, and one-line errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tinyvit.checkpoint import load_checkpoint
from tinyvit.cli import main
from tinyvit.datasets import load_dataset
from tinyvit.train import evaluate

TINY = ["--image-size", "8", "--patch-size", "4", "--dim", "16", "--depth", "1", "--heads", "2",
        "--mlp-dim", "32", "--n-train", "128", "--batch-size", "32"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny shapes run (2 epochs) shared by the tests below."""
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", *TINY, "--epochs", "2", "--out", str(out), "--quiet"]) == 0
    return out


def _one_line_error(capsys, code, expected_code=2):
    captured = capsys.readouterr()
    assert code == expected_code
    err = captured.err.strip()
    assert "Traceback" not in captured.err and len(err.splitlines()) == 1, captured.err
    return err


def test_train_writes_checkpoint_history_and_plot(run):
    for name in ("checkpoint.npz", "history.json", "history.csv", "steps.csv", "curves.png"):
        assert (run / name).is_file(), name
    ck = load_checkpoint(run / "checkpoint.npz")
    assert ck.model_config.image_size == 8 and ck.model_config.dim == 16
    assert ck.step == 8 and ck.epoch == 2                    # 128 / 32 = 4 steps x 2 epochs
    assert ck.meta["dataset"]["name"] == "shapes" and ck.meta["normalize"] == "image"
    assert ck.class_names[:2] == ["circle", "square"]
    assert ck.train_config["workers"] == 2                   # the command's default
    hist = json.loads((run / "history.json").read_text())
    assert [r["epoch"] for r in hist["epochs"]] == [1, 2]


def test_same_command_twice_same_numbers(run, tmp_path):
    assert main(["train", *TINY, "--epochs", "2", "--out", str(tmp_path / "again"), "--quiet"]) == 0
    a = json.loads((run / "history.json").read_text())
    b = json.loads((tmp_path / "again" / "history.json").read_text())
    assert a["steps"]["loss"] == b["steps"]["loss"]
    assert [r["val_acc"] for r in a["epochs"]] == [r["val_acc"] for r in b["epochs"]]


def test_eval_prints_accuracy_per_class_and_confusion(run, capsys):
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    out = capsys.readouterr().out
    ck = load_checkpoint(run / "checkpoint.npz")
    _, val = load_dataset("shapes", image_size=8, n_train=128, n_test=2000)
    expected = evaluate(ck.model(), val, normalize="image")
    assert f"accuracy {expected['accuracy']:.4f}" in out
    assert "rows: true class, columns: predicted" in out
    for name in ck.class_names:
        assert name in out
    row = next(l for l in out.splitlines() if l.startswith("circle ") and "0." not in l)
    assert [int(v) for v in row.split()[1:]] == expected["confusion"][0].tolist()


def test_predict_top_k(run, tmp_path, capsys):
    img = (np.random.default_rng(0).random((20, 30, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    Image.fromarray(img[..., 0]).save(tmp_path / "b.png")          # grey: converted to RGB
    capsys.readouterr()
    assert main(["predict", str(run / "checkpoint.npz"), str(tmp_path / "a.png"), str(tmp_path / "b.png"),
                 "--top-k", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("a.png:") and out[4].endswith("b.png:")
    probs = [float(l.split()[-1]) for l in out[1:4]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    names = load_checkpoint(run / "checkpoint.npz").class_names
    assert all(l.split()[1] in names for l in out[1:4])


def test_attention_saves_cls_maps_and_rollout(run, tmp_path, capsys):
    img = (np.random.default_rng(1).random((16, 16, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "c.png")
    capsys.readouterr()
    out_dir = tmp_path / "figs"
    assert main(["attention", str(run), str(tmp_path / "c.png"), "--all-blocks", "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    for name in ("c_cls_block0.png", "c_rollout.png", "c_cls_all_blocks.png"):   # depth 1: block -1 is 0
        png = out_dir / name
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert str(png) in out
    err = _one_line_error(capsys, main(["attention", str(run), str(tmp_path / "c.png"), "--block", "3"]))
    assert "--block: expected a block index in [-1, 0], got 3" in err


def test_resume_continues_to_the_same_end(run, tmp_path, capsys):
    out = tmp_path / "stopped"
    assert main(["train", *TINY, "--epochs", "2", "--out", str(out), "--quiet", "--max-steps", "5"]) == 0
    assert load_checkpoint(out / "checkpoint.npz").step == 5
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    a = load_checkpoint(run / "checkpoint.npz")
    b = load_checkpoint(out / "checkpoint.npz")
    assert b.step == 8
    for k in a.params:
        assert np.array_equal(a.params[k], b.params[k]), k
    capsys.readouterr()
    err = _one_line_error(capsys, main(["train", "--resume", str(out), "--lr", "0.1"]))
    assert "--lr" in err
    err = _one_line_error(capsys, main(["train", "--resume", str(out), "--workers", "2"]))
    assert "drop --workers (allowed with --resume:" in err


def test_workers_option_is_stored_and_kept_on_resume(run, tmp_path):
    out = tmp_path / "one"
    assert main(["train", *TINY, "--epochs", "2", "--out", str(out), "--quiet", "--max-steps", "5",
                 "--workers", "1"]) == 0
    assert load_checkpoint(out / "checkpoint.npz").train_config["workers"] == 1
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    a = load_checkpoint(run / "checkpoint.npz")              # the same run with 2 workers
    b = load_checkpoint(out / "checkpoint.npz")
    assert b.step == 8 and b.train_config["workers"] == 1   # the checkpoint's value, not the default
    for k in a.params:
        np.testing.assert_allclose(b.params[k], a.params[k], rtol=1e-2, atol=1e-4, err_msg=k)


def test_errors_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = _one_line_error(capsys, main(["eval", "nope.npz"]))
    assert "not found" in err and "nope.npz" in err
    err = _one_line_error(capsys, main(["predict", "nope.npz", "x.png"]))
    assert "nope.npz" in err
    np.savez(tmp_path / "plain.npz", x=np.zeros(2))
    err = _one_line_error(capsys, main(["eval", "plain.npz"]))
    assert "plain.npz" in err
    with pytest.raises(SystemExit) as e:
        main(["train", "--lr", "fast"])
    err = _one_line_error(capsys, e.value.code)
    assert "--lr" in err and "fast" in err
    with pytest.raises(SystemExit) as e:
        main(["train", "--workers", "0"])
    err = _one_line_error(capsys, e.value.code)
    assert "--workers" in err and "expected a whole number >= 1, got 0" in err
    err = _one_line_error(capsys, main(["train", "--dataset", "imagenet"]))
    assert "--dataset" in err and "shapes" in err
    err = _one_line_error(capsys, main(["train", "--dataset", "mnist", "--data-dir", "empty", "--no-download"]))
    assert "empty" in err and "mnist" in err                       # says where the files should go
    err = _one_line_error(capsys, main(["train", *TINY[:2], "--patch-size", "3", "--quiet"]))
    assert "patch" in err


def test_predict_bad_image_is_one_line(run, tmp_path, capsys):
    (tmp_path / "bad.png").write_text("not an image")
    err = _one_line_error(capsys, main(["predict", str(run), str(tmp_path / "bad.png")]))
    assert "bad.png" in err
    err = _one_line_error(capsys, main(["predict", str(run), str(tmp_path / "missing.png")]))
    assert "missing.png" in err


def test_help_and_python_dash_m(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for word in ("--dataset", "--epochs", "--resume", "Examples", "OPENBLAS_NUM_THREADS", "--workers",
                 "workers x threads"):
        assert word in text
    proc = subprocess.run([sys.executable, "-m", "tinyvit", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0
    for cmd in ("train", "eval", "predict", "attention", "demo"):
        assert cmd in proc.stdout


# --------------------------------------------------------------------------- hostile inputs

@pytest.mark.parametrize("command", ["predict", "attention", "eval"])
def test_truncated_empty_json_and_png_checkpoints_are_one_line(run, tmp_path, capsys, command):
    good = (run / "checkpoint.npz").read_bytes()
    Image.new("RGB", (8, 8)).save(tmp_path / "img.png")
    files = {"cut.npz": (good[:len(good) // 2], "damaged zip archive"), "empty.npz": (b"", "empty file"),
             "ck.json": (b'{"model": 1}', "JSON"), "ck.png": ((tmp_path / "img.png").read_bytes(), "PNG")}
    for name, (data, what) in files.items():
        (tmp_path / name).write_bytes(data)
        extra = [] if command == "eval" else [str(tmp_path / "img.png")]
        if command == "attention":
            extra += ["--out", str(tmp_path / "att")]
        err = _one_line_error(capsys, main([command, str(tmp_path / name), *extra]))
        assert name in err and what in err and "allow_pickle" not in err, err


def test_class_names_fewer_than_classes_fail_at_load_not_in_eval(run, tmp_path, capsys):
    with np.load(run / "checkpoint.npz", allow_pickle=False) as npz:
        a = {k: npz[k] for k in npz.files}
    meta = json.loads(str(a["meta"][()]))
    meta["class_names"] = meta["class_names"][:2]
    a["meta"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "few.npz", **a)
    Image.new("RGB", (8, 8)).save(tmp_path / "img.png")
    for argv in (["eval", str(tmp_path / "few.npz")], ["predict", str(tmp_path / "few.npz"), str(tmp_path / "img.png")]):
        err = _one_line_error(capsys, main(argv))
        assert f"meta 'class_names': expected {len(a['param/head.b'])} names (the model's num_classes), got 2" in err


@pytest.mark.parametrize("command", ["predict", "attention"])
def test_an_image_claiming_60000x60000_pixels_is_one_line(run, tmp_path, capsys, command):
    from test_datasets import _png_header_only
    bomb = _png_header_only(tmp_path / "bomb.png", 60000, 60000)
    extra = ["--out", str(tmp_path / "att")] if command == "attention" else []
    err = _one_line_error(capsys, main([command, str(run), str(bomb), *extra]))
    assert "bomb.png: expected an image of at most" in err and "3,600,000,000 pixels" in err


def test_training_options_that_cannot_work_are_one_line(tmp_path, capsys):
    out = ["--out", str(tmp_path / "r"), "--quiet"]
    err = _one_line_error(capsys, main(["train", "--image-size", "1", *out]))
    assert err.endswith("--image-size: expected at least 8 for the shapes data, got 1")
    err = _one_line_error(capsys, main(["train", "--image-size", "100000", *out]))
    assert "--n-train, --image-size: 20,000 + 2,000 images of 100000x100000 needs" in err
    assert "expected at most this machine's" in err
    err = _one_line_error(capsys, main(["train", "--n-train", str(10 ** 12), *out]))
    assert "1,000,000,000,000 + 2,000 images of 32x32 needs" in err
    err = _one_line_error(capsys, main(["train", "--dim", "1000000", "--heads", "1", *out]))
    assert "--dim, --depth: a model of" in err
    assert not (tmp_path / "r").exists()                   # nothing written, nothing allocated


@pytest.mark.parametrize("spec, word", [({"name": 5}, "dataset: expected a dataset name, got int 5"),
                                        ({"name": "shapes", "data_dir": 3}, "data_dir: expected a folder"),
                                        ({"name": "shapes", "n_train": "many"}, "n_train"),
                                        ({"name": "imagenet"}, "name: expected one of")])
def test_a_damaged_dataset_spec_in_a_checkpoint_is_one_line(run, tmp_path, capsys, spec, word):
    with np.load(run / "checkpoint.npz", allow_pickle=False) as npz:
        a = {k: npz[k] for k in npz.files}
    meta = json.loads(str(a["meta"][()]))
    meta["dataset"] = spec
    a["meta"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "ck.npz", **a)
    for argv in (["eval", str(tmp_path / "ck.npz")], ["train", "--resume", str(tmp_path / "ck.npz"), "--quiet"]):
        err = _one_line_error(capsys, main(argv))
        assert word in err, err


def test_an_output_folder_that_cannot_be_made_fails_before_training(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    err = _one_line_error(capsys, main(["train", *TINY, "--epochs", "1", "--out", str(tmp_path / "file" / "run"),
                                        "--quiet"]))
    assert "--out: expected a folder that can be created and written" in err and "file/run" in err


def test_a_checkpoint_with_a_damaged_marker_gets_the_checkpoint_loaders_message(run, tmp_path, capsys):
    with np.load(run / "checkpoint.npz", allow_pickle=False) as npz:
        a = {k: npz[k] for k in npz.files}
    a["format"] = np.zeros(3)
    np.savez(tmp_path / "ck.npz", **a)
    Image.new("RGB", (8, 8)).save(tmp_path / "img.png")
    err = _one_line_error(capsys, main(["predict", str(tmp_path / "ck.npz"), str(tmp_path / "img.png")]))
    assert "ck.npz: entry 'format': expected a 0-d string, got float64 (3,)" in err, err
