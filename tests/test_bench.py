"""The benchmark command and the fast paths it measures.

No timing is asserted anywhere: the command must run end to end and report
the expected fields; the FLOP counter must agree with a count by hand; the
float32 fast paths (GELU, softmax without a shift per row, sums through
BLAS) must give the plain formulas' values.
"""

import json
import math

import numpy as np
import pytest

from tinyvit import ViTConfig
from tinyvit.bench import CONFIGS, matmul_flops
from tinyvit.cli import main
from tinyvit.layers import gelu_backward, gelu_forward, softmax, softmax_forward
from tinyvit.layers.linear import sum_keepdims, sum_rows


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


# --- the fast paths give the plain formulas' values -------------------------------------------
def test_float32_gelu_is_close_to_float64():
    x64 = np.concatenate([np.linspace(-10, 10, 20001), [0.0, -0.0, 1e-30, -1e-30, 40.0, -40.0]])
    x32 = x64.astype(np.float32)
    ref = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x32.astype(np.float64)])
    out, cache = gelu_forward(x32, "exact")
    assert out.dtype == np.float32
    assert np.abs(out - ref).max() < 1e-6
    assert np.all(np.isfinite(out))
    # the derivative Phi(x) + x phi(x), against the float64 path
    dout = np.random.default_rng(0).standard_normal(x32.shape).astype(np.float32)
    d32 = gelu_backward(dout, cache)
    d64 = gelu_backward(dout.astype(np.float64), gelu_forward(x32.astype(np.float64), "exact")[1])
    assert d32.dtype == np.float32
    assert np.abs(d32 - d64).max() < 2e-6
    with np.errstate(invalid="ignore"):                 # -inf * Phi(-inf) = -inf * 0
        cdf, pdf = gelu_forward(np.array([np.inf, -np.inf], np.float32))[1][2]
    np.testing.assert_array_equal(cdf, [1.0, 0.0])          # Phi at the infinities
    np.testing.assert_array_equal(pdf, [0.0, 0.0])          # and phi


def test_float32_tanh_gelu_matches_its_formula():
    x = np.linspace(-6, 6, 2001)
    ref = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    out, _ = gelu_forward(x.astype(np.float32), "tanh")
    assert np.abs(out - ref).max() < 1e-6


def test_softmax_with_one_shift_per_matrix_equals_the_row_max_softmax(rng):
    S = rng.standard_normal((3, 2, 6, 6)) * 4
    A, cache = softmax_forward(S)                       # all scores small: no shift at all
    np.testing.assert_allclose(A, softmax(S), rtol=1e-13, atol=1e-15)
    assert cache is A
    for big in (S + 700.0, S * 30.0):                   # exp would overflow without a shift
        for dtype in (np.float64, np.float32):
            x = big.astype(dtype)
            A = softmax_forward(x)[0]
            assert np.all(np.isfinite(A))
            np.testing.assert_allclose(A, softmax(x.astype(np.float64)), rtol=1e-5 if dtype == np.float32 else 1e-12,
                                       atol=1e-7 if dtype == np.float32 else 1e-15)
    # one row far below the rest of its matrix: its exps would all underflow with the
    # matrix-wide shift, so the row-max softmax must take over (no NaN, rows sum to one)
    S[1, 0, 2, :] -= 2000.0
    A, _ = softmax_forward(S)
    assert np.all(np.isfinite(A))
    np.testing.assert_allclose(A, softmax(S), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(A.sum(-1), 1.0, atol=1e-12)
    S32 = S.astype(np.float32)
    np.testing.assert_allclose(softmax_forward(S32)[0], softmax(S32.astype(np.float64)), atol=1e-6)


def test_sums_through_blas_equal_numpy_sums(rng):
    x = rng.standard_normal((4, 5, 7))
    np.testing.assert_allclose(sum_keepdims(x), x.sum(-1, keepdims=True), rtol=1e-13)
    np.testing.assert_allclose(sum_keepdims(x, 1), x.sum(1, keepdims=True), rtol=1e-13)
    np.testing.assert_allclose(sum_keepdims(x[:, ::2]), x[:, ::2].sum(-1, keepdims=True), rtol=1e-13)
    x2 = rng.standard_normal((9, 3))
    np.testing.assert_allclose(sum_rows(x2), x2.sum(0), rtol=1e-13)
    assert sum_keepdims(x.astype(np.float32)).dtype == np.float32
