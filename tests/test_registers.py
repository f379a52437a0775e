"""Register diagnostics (tinyvit/registers.py) and `tinyvit registers`."""

import json

import numpy as np
import pytest

from tinyvit import ViT, ViTConfig
from tinyvit import registers
from tinyvit.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_diagnostics_known_values():
    cfg = ViTConfig(image_size=8, in_channels=1, patch_size=4, dim=8, depth=2, heads=2, mlp_dim=8,
                    num_classes=3, num_registers=2, pool="mean", dtype="float64")
    model = ViT(cfg)
    rng = np.random.default_rng(0)
    for v in model.params.values():
        v += rng.standard_normal(v.shape) * 0.3
    x = rng.standard_normal((5, 8, 8, 1))
    d = registers.token_diagnostics(model, x, batch_size=2)
    assert d["roles"] == ["cls", "reg", "reg"] + ["patch"] * 4
    attn = model.forward(x)[1]["attn"]
    for j in range(2):
        np.testing.assert_allclose(d["received"][j], attn[j].mean(axis=(0, 1, 2)), rtol=1e-12)
        assert d["received"][j].sum() == pytest.approx(1.0)
        out = model.residual_streams(x)["blocks"][j]["out"]
        np.testing.assert_allclose(d["norms"][j], np.linalg.norm(out, axis=-1), rtol=1e-12)
    rows = registers.summarize(d)
    assert rows[0]["to_registers"] == pytest.approx(d["received"][0][1:3].sum())
    assert rows[1]["norm_patch_max"] == pytest.approx(d["norms"][1][:, 3:].max())
    assert rows[0]["uniform"] == pytest.approx(1 / 7)
    table = registers.format_summary({"mean_reg2": rows})
    assert table.count("| mean_reg2 |") == 2
    no = registers.summarize(registers.token_diagnostics(
        ViT(ViTConfig(**dict(cfg.to_dict(), num_registers=0, class_token=False))), x))
    assert no[0]["to_cls"] is None and no[0]["to_registers"] is None


def test_registers_command_trains_once_and_reuses(tmp_path, capsys, monkeypatch):
    from tinyvit import lrgrid
    monkeypatch.setattr(lrgrid, "SHAPES_N_VAL", 100)      # a small held-out set, in this process
    monkeypatch.setattr(lrgrid, "_DATA", {})
    argv = ["registers", "--registers", "2", "--epochs", "1", "--n-train", "32", "--n-images", "20",
            "--jobs", "1", "--out", str(tmp_path / "r")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "4 to train" in out and "| cls_reg2 | 3 |" in out
    report = json.loads((tmp_path / "r" / "registers.json").read_text())
    assert set(report["accuracy"]) == {"cls_reg0", "cls_reg2", "mean_reg0", "mean_reg2"}
    assert report["roles"]["mean_reg2"][:3] == ["cls", "reg", "reg"]
    for name in ("registers_norms.png", "registers_attention.png"):
        assert (tmp_path / "r" / name).read_bytes()[:8] == PNG_MAGIC
    models = registers.train_models(tmp_path / "r", 2, epochs=1, n_train=32, jobs=1)
    assert "4 already trained, 0 to train" in capsys.readouterr().out     # the second time
    assert models["mean_reg2"][0].config.num_registers == 2
    assert models["cls_reg0"][1]["val_acc"] == report["accuracy"]["cls_reg0"]
