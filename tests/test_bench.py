"""The benchmark command and the fast paths it measures.

No timing is asserted anywhere: the command must run end to end and report
the expected fields; the FLOP counter must agree with a count by hand. (The
fast layers it runs are tested in test_fast_layers.py.)
"""

import json

import numpy as np
import pytest

from tinyvit import ViTConfig
from tinyvit.bench import CONFIGS, matmul_flops
from tinyvit.cli import main


# --- the FLOP counter ----------------------------------------------------------------------
def test_flops_match_a_hand_count():
    # 8x8x1 images, patch 4 -> N = 4 patches, T = 5 tokens; D = 8, h = 2 (d = 4), M = 16,
    # K = 3, one block, batch B = 2. Forward products, 2*m*n*k each:
    #   patch embedding (B*N, 16) @ (16, 8)       2 * 8 * 16 * 8      = 2048
    #   qkv             (B*T, 8) @ (8, 24)        2 * 10 * 8 * 24     = 3840
    #   scores q @ k^T  B*h x (5, 4) @ (4, 5)     4 * 2 * 5 * 5 * 4   = 800
    #   mix A @ v       B*h x (5, 5) @ (5, 4)     4 * 2 * 5 * 5 * 4   = 800
    #   proj            (B*T, 8) @ (8, 8)         2 * 10 * 8 * 8      = 1280
    #   fc1             (B*T, 8) @ (8, 16)        2 * 10 * 8 * 16     = 2560
    #   fc2             (B*T, 16) @ (16, 8)       2 * 10 * 16 * 8     = 2560
    #   head            (B, 8) @ (8, 3)           2 * 2 * 8 * 3       = 96
    cfg = ViTConfig(image_size=8, in_channels=1, patch_size=4, dim=8, depth=1, heads=2,
                    mlp_dim=16, num_classes=3)
    f = matmul_flops(cfg, batch=2)
    assert f["forward"] == {"patch_embed": 2048, "qkv": 3840, "scores q@k^T": 800,
                            "mix A@v": 800, "proj": 1280, "fc1": 2560, "fc2": 2560, "head": 96}
    assert f["forward_total"] == 13984
    assert f["backward_total"] == 2 * 13984                 # input and weight gradients
    assert f["step"] == 3 * 13984
    # The last (here the only) block on the CLS token alone: one query row (Q = 1 instead
    # of T = 5) for the scores, the mix, the projection and the MLP; qkv still runs on all.
    c = matmul_flops(cfg, batch=2, last_block_cls_only=True)
    assert c["forward"] == {"patch_embed": 2048, "qkv": 3840, "scores q@k^T": 160,
                            "mix A@v": 160, "proj": 256, "fc1": 512, "fc2": 512, "head": 96}
    assert c["step"] == 3 * 7584


def test_flops_scale_with_depth_and_batch():
    a = CONFIGS["A"]
    one = matmul_flops(a, 1)
    assert matmul_flops(a, 8)["step"] == 8 * one["step"]
    deeper = ViTConfig(image_size=28, in_channels=1, patch_size=7, dim=64, depth=8, heads=4,
                       mlp_dim=128, num_classes=10)
    per_block = one["forward"]["qkv"] / a.depth
    assert matmul_flops(deeper, 1)["forward"]["qkv"] == 8 * per_block


def test_benchmark_configs_are_the_issue_s():
    c = CONFIGS
    assert (c["A"].image_size, c["A"].patch_size, c["A"].dim, c["A"].depth, c["A"].heads,
            c["A"].mlp_dim, c["A"].batch) == (28, 7, 64, 4, 4, 128, 128)
    assert (c["B"].patch_size, c["B"].depth, c["B"].mlp_dim, c["B"].batch) == (4, 6, 256, 128)
    assert (c["C"].image_size, c["C"].in_channels, c["C"].dim, c["C"].heads, c["C"].mlp_dim,
            c["C"].batch) == (32, 3, 192, 3, 384, 64)
    assert "17 tokens" in c["A"].describe() and "65 tokens" in c["C"].describe()


# --- the command, end to end, tiny --------------------------------------------------------------
def test_bench_runs_end_to_end_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "--config", "tiny", "--steps", "2", "--warmup", "1", "--no-torch",
                 "--profile", "--gelu", "exact", "tanh", "--gap", "0", "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "config tiny" in text and "numpy/exact" in text and "numpy/tanh" in text
    assert "matmul peak" in text and "profile" in text and "exact / tanh" in text
    res = json.loads(out.read_text())
    assert res["peak_gflops"] > 0
    m = res["machine"]
    for key in ("date", "cpu", "numpy", "blas", "threads", "loadavg"):
        assert key in m
    entry = res["configs"]["tiny"]
    bc = CONFIGS["tiny"]
    assert entry["matmul_gflop_per_step"] == pytest.approx(matmul_flops(bc, bc.batch)["step"] / 1e9)
    ours = matmul_flops(bc, bc.batch, last_block_cls_only=True)["step"] / 1e9
    assert entry["tinyvit_matmul_gflop_per_step"] == pytest.approx(ours)
    assert res["tinyvit_last_block"] == "CLS token only"
    for key in ("numpy/exact", "numpy/tanh"):
        r = entry["results"][key]
        assert len(r["step_ms_all"]) == 2
        assert r["step_ms"] > 0 and r["images_per_s"] == pytest.approx(bc.batch / r["step_ms"] * 1e3)
        assert r["achieved_gflops"] == pytest.approx(ours / r["step_ms"] * 1e3)   # what it runs
        assert r["hfu"] == pytest.approx(r["achieved_gflops"] / res["peak_gflops"])
        model = entry["matmul_gflop_per_step"] / r["step_ms"] * 1e3         # the model's FLOPs
        assert r["mfu"] == pytest.approx(model / res["peak_gflops"]) and r["mfu"] > r["hfu"]
        assert r["peak_mem_mb"] >= 0
    stages = entry["profile"]["stages"]
    assert set(stages) == {"linear layers", "attention matmuls", "softmax", "layer norm", "GELU",
                           "everything else"}
    assert entry["ratio_exact_over_tanh"] > 0
    assert not any(p.name.startswith(".bench-") for p in tmp_path.iterdir())   # atomic write


def test_bench_full_last_block_counts_the_full_flops(tmp_path):
    out = tmp_path / "b.json"
    assert main(["bench", "--config", "tiny", "--steps", "1", "--warmup", "1", "--no-torch",
                 "--gap", "0", "--full-last-block", "--split-with", "threads", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["tinyvit_split_with"] == "threads" and res["tinyvit_split"] == 2
    entry = res["configs"]["tiny"]
    assert res["tinyvit_last_block"] == "all tokens"
    assert entry["tinyvit_matmul_gflop_per_step"] == entry["matmul_gflop_per_step"]


def test_bench_with_torch_reports_the_ratio(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "b.json"
    assert main(["bench", "--config", "tiny", "--steps", "1", "--warmup", "1", "--torch",
                 "--gap", "0", "--json", str(out)]) == 0
    entry = json.loads(out.read_text())["configs"]["tiny"]
    assert entry["results"]["torch/exact"]["step_ms"] > 0
    assert entry["ratio_numpy_over_torch"] == pytest.approx(
        entry["results"]["numpy/exact"]["step_ms"] / entry["results"]["torch/exact"]["step_ms"])


def test_bench_bad_arguments_fail_cleanly(tmp_path, capsys):
    assert main(["bench", "--config", "tiny", "--steps", "0", "--no-torch"]) == 2
    assert "--steps" in capsys.readouterr().err
    assert main(["bench", "--config", "tiny", "--no-torch",
                 "--json", str(tmp_path / "missing" / "x.json")]) == 2
    assert "--json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--config", "Z"])
