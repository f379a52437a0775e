"""`tinyvit lr-grid`: a tiny grid trains, resumes without retraining, refuses to mix grids,
and writes its table and figure."""

import json
import math

import numpy as np
import pytest

from tinyvit import lrgrid
from tinyvit.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = dict(epochs=1, n_train=64, batch_size=32, jobs=1)


@pytest.fixture(autouse=True)
def small_held_out_set(monkeypatch):
    """200 held-out shapes instead of 2,000 in this process (the tests' runs are one epoch)."""
    monkeypatch.setattr(lrgrid, "SHAPES_N_VAL", 200)
    monkeypatch.setattr(lrgrid, "_DATA", {})


def test_tiny_grid_trains_resumes_and_writes(tmp_path, capsys, monkeypatch):
    out = tmp_path / "grid"
    res = lrgrid.run_grid(out, ["cls", "mean"], [1e-3, 3e-3], [0], **TINY)
    assert [(r["pool"], r["lr"], r["seed"]) for r in res] == \
        [("cls", 1e-3, 0), ("cls", 3e-3, 0), ("mean", 1e-3, 0), ("mean", 3e-3, 0)]
    assert all(0.0 <= r["val_acc"] <= 1.0 and not r["diverged"] for r in res)
    assert sorted(p.name for p in (out / "runs").iterdir()) == \
        ["cls_lr0.001_seed0.json", "cls_lr0.003_seed0.json", "mean_lr0.001_seed0.json",
         "mean_lr0.003_seed0.json"]
    # a rerun trains nothing: every run is read back from its file
    calls = []
    monkeypatch.setattr(lrgrid, "train_one", lambda *a: calls.append(a))
    again = lrgrid.run_grid(out, ["cls", "mean"], [1e-3, 3e-3], [0], **TINY)
    assert calls == [] and again == res
    assert "4 already done, 0 to train" in capsys.readouterr().out
    # a different pooling of the same grid trains just that
    monkeypatch.setattr(lrgrid, "train_one", lambda s, p, lr, seed: {
        "pool": p, "lr": lr, "seed": seed, "diverged": False, "val_acc": 0.5, "seconds": 0.0})
    more = lrgrid.run_grid(out, ["attn"], [1e-3], [0], **TINY)
    assert [r["pool"] for r in more] == ["attn"]
    # another grid (other epochs) into the same folder is refused
    with pytest.raises(ValueError, match="out: .* holds a grid with other settings .*epochs: 1 there, 2 asked"):
        lrgrid.run_grid(out, ["cls"], [1e-3], [0], **dict(TINY, epochs=2))
    paths = lrgrid.write_outputs(out, res)
    assert [p.name for p in paths] == ["results.csv", "summary.csv", "summary.md", "lr_grid.png"]
    assert paths[3].read_bytes()[:8] == PNG_MAGIC
    assert len(paths[0].read_text().splitlines()) == 5
    table = paths[2].read_text()
    assert table.startswith("| learning rate | cls | mean |") and "| 0.003 |" in table


def test_summary_and_table_numbers():
    results = [dict(pool="cls", lr=1e-3, seed=s, diverged=False, val_acc=a)
               for s, a in enumerate([0.5, 0.7, 0.6])]
    results += [dict(pool="mean", lr=1e-3, seed=0, diverged=True, val_acc=None),
                dict(pool="mean", lr=1e-3, seed=1, diverged=False, val_acc=0.9),
                dict(pool="mean", lr=1e-2, seed=0, diverged=True, val_acc=None)]
    rows = {(r["pool"], r["lr"]): r for r in lrgrid.summarize(results)}
    cls = rows[("cls", 1e-3)]
    assert cls["mean"] == pytest.approx(0.6) and cls["std"] == pytest.approx(0.1)
    assert (cls["min"], cls["max"], cls["seeds"], cls["diverged"]) == (0.5, 0.7, 3, 0)
    assert rows[("mean", 1e-3)]["diverged"] == 1 and math.isnan(rows[("mean", 1e-2)]["mean"])
    table = lrgrid.format_table(lrgrid.summarize(results))
    assert "**60.0 ± 10.0 (50.0-70.0)**" in table
    assert "**90.0, 1 diverged**" in table and "| 0.01 |  | diverged |" in table
    assert lrgrid.best_lr(lrgrid.summarize(results))["mean"]["lr"] == 1e-3


@pytest.mark.parametrize("argv, pattern", [
    (["--lrs", "0"], "expected a finite number > 0, got '0'"),
    (["--lrs", "nan"], "expected a finite number > 0"),
    (["--seeds", "-1"], "expected a finite number >= 0"),
    (["--pools", "max"], "invalid choice: 'max'"),
    (["--epochs", "0"], "expected a finite number >= 1"),
])
def test_bad_arguments(argv, pattern, capsys):
    with pytest.raises(SystemExit):
        main(["lr-grid", *argv])
    assert pattern in capsys.readouterr().err


def test_bad_values_in_python(tmp_path):
    with pytest.raises(ValueError, match="lrs: expected positive finite numbers, got -0.1"):
        lrgrid.run_grid(tmp_path, ["cls"], [-0.1], [0], **TINY)
    with pytest.raises(ValueError, match="pools: expected one of"):
        lrgrid.run_grid(tmp_path, ["max"], [0.1], [0], **TINY)
    with pytest.raises(ValueError, match="seeds: expected at least one value"):
        lrgrid.run_grid(tmp_path, ["cls"], [0.1], [], **TINY)
    assert not (tmp_path / "grid.json").exists()


def test_command_runs_with_two_processes(tmp_path, capsys):
    code = main(["lr-grid", "--lrs", "1e-3", "--seeds", "0", "1", "--pools", "mean", "--epochs", "1",
                 "--n-train", "64", "--batch-size", "32", "--out", str(tmp_path / "g")])
    assert code == 0
    out = capsys.readouterr().out
    assert "[2/2] pool=mean" in out and "| learning rate | mean |" in out
    saved = [json.loads(p.read_text()) for p in sorted((tmp_path / "g" / "runs").iterdir())]
    assert [r["seed"] for r in saved] == [0, 1] and all(np.isfinite(r["val_acc"]) for r in saved)
