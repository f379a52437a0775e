"""Linear probes and residual-stream norms (tinyvit/probes.py) and `tinyvit probes`."""

import json

import numpy as np
import pytest

from tinyvit import ViT, ViTConfig
from tinyvit import probes
from tinyvit.checkpoint import load_checkpoint
from tinyvit.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def small_model(**kw):
    cfg = dict(image_size=8, in_channels=1, patch_size=4, dim=8, depth=2, heads=2, mlp_dim=8,
               num_classes=3, dtype="float64")
    cfg.update(kw)
    model = ViT(ViTConfig(**cfg))
    rng = np.random.default_rng(1)
    for v in model.params.values():
        v += rng.standard_normal(v.shape) * 0.2
    return model


def test_ridge_probe_reads_a_linear_class_and_not_noise(rng):
    X = rng.standard_normal((600, 5))
    y = (X[:, 0] + 0.5 * X[:, 3] > 0).astype(int) + 2 * (X[:, 1] > 1.0)      # 4 classes
    y = np.minimum(y, 3)
    probe = probes.fit_ridge(X[:400], y[:400], 4, ridge=1e-4)
    assert np.mean(probes.probe_predict(probe, X[400:]) == y[400:]) > 0.85
    noise = rng.integers(0, 4, size=600)                                    # labels unrelated to X
    probe = probes.fit_ridge(X[:400], noise[:400], 4)
    assert np.mean(probes.probe_predict(probe, X[400:]) == noise[400:]) < 0.4
    # standardising: scaling a feature changes nothing
    Xs = X * np.array([100.0, 1, 1, 0.01, 1])
    a = probes.probe_predict(probes.fit_ridge(X[:400], y[:400], 4), X[400:])
    b = probes.probe_predict(probes.fit_ridge(Xs[:400], y[:400], 4), Xs[400:])
    np.testing.assert_array_equal(a, b)


def test_stage_features_and_probes_shapes():
    model = small_model(num_registers=1)
    x = np.random.default_rng(0).standard_normal((10, 8, 8, 1))
    f = probes.stage_features(model, x, batch_size=4)
    assert len(f["cls"]) == len(f["mean"]) == len(f["patch"]) == 3
    assert f["cls"][0].shape == (10, 8) and f["patch"][2].shape == (10, 4, 8)
    s = model.residual_streams(x)
    np.testing.assert_allclose(f["mean"][2], s["blocks"][1]["out"][:, 2:].mean(1))   # registers skipped
    y = np.arange(10) % 3
    acc = probes.run_probes(model, x, y, x, y)
    assert set(acc) == {"cls", "mean", "patch"} and all(len(v) == 3 for v in acc.values())
    assert all(0 <= a <= 1 for v in acc.values() for a in v)
    nocls = small_model(class_token=False, pool="mean")
    assert probes.run_probes(nocls, x, y, x, y)["cls"] is None
    assert probes.branch_norms(nocls, x)["cls"] is None


def test_branch_norms_known_values():
    """The CLS token enters block 1 as cls_token + pos_embed[0], the same for every image."""
    model = small_model()
    x = np.random.default_rng(0).standard_normal((5, 8, 8, 1))
    n = probes.branch_norms(model, x, batch_size=2)
    p = model.params
    want = np.linalg.norm(p["cls_token"][0, 0] + p["pos_embed"][0, 0])
    assert n["cls"]["stream"][0] == pytest.approx(want, rel=1e-12)
    s = model.residual_streams(x)
    got = np.linalg.norm(s["blocks"][1]["mlp"][:, 1:], axis=-1).mean()
    assert n["patch"]["mlp"][1] == pytest.approx(got, rel=1e-12)
    assert "| 1 |" in probes.format_norms(n)


def test_probes_command_on_a_trained_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--n-train", "64", "--epochs", "1", "--batch-size", "32", "--image-size", "16",
                 "--workers", "1", "--registers", "1", "--quiet", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["probes", str(run), "--n-train", "40", "--n-test", "30"]) == 0
    out = capsys.readouterr().out
    assert "| after | cls | mean | patch |" in out and "| embed |" in out
    report = json.loads((run / "probes" / "probes.json").read_text())
    assert "reg_token" in load_checkpoint(run / "checkpoint.npz").params   # --registers 1
    assert report["n_train"] == 40 and len(report["accuracy"]["patch"]) == 4    # embed + 3 blocks
    for name in ("probes.png", "norms.png"):
        assert (run / "probes" / name).read_bytes()[:8] == PNG_MAGIC
    assert main(["probes", str(run), "--n-train", "1"]) == 2
    assert "--n-train: expected at least 2 images, got 1" in capsys.readouterr().err
