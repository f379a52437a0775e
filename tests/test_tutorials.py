"""Every tutorial runs to the end in quick mode and writes the figures it promises."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TUTORIALS = REPO / "tutorials"

# The figures each tutorial promises (the files it names in its text and code).
PROMISED = {
    "01_patches.py": ["01_patch_grid.png", "01_token_sequence.png"],
    "02_cls_and_positions.py": ["02_pos_sincos.png", "02_pos_random.png"],
    "03_layernorm.py": ["03_layernorm.png"],
    "04_attention.py": ["04_attention_matrix.png", "04_cls_attention_untrained.png"],
    "05_mlp_and_block.py": ["05_gelu.png"],
    "06_whole_vit.py": ["06_gradcheck.png"],
    "07_training.py": ["07_learning_curves.png", "07_confusion.png"],
    "08_what_cls_looks_at.py": ["08_cls_heads_last_block.png", "08_cls_attention_grid.png",
                                "08_rollout_cls_0.png", "08_rollout_cls_1.png", "08_rollout_cls_2.png",
                                "08_rollout_mean_0.png", "08_rollout_mean_patches_0.png",
                                "08_pos_embed_trained.png"],
    "10_what_the_cls_token_carries.py": ["10_lr_grid.png", "10_probes_cls.png", "10_probes_mean.png",
                                         "10_norms_cls.png", "10_register_attention.png",
                                         "10_register_norms.png"],
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_every_tutorial_is_listed():
    found = sorted(p.name for p in TUTORIALS.glob("[0-9][0-9]_*.py"))
    assert found == sorted(PROMISED)
    index = (TUTORIALS / "README.md").read_text()
    for name in found:
        assert name in index, f"{name} is missing from tutorials/README.md"


@pytest.mark.parametrize("name", sorted(PROMISED))
def test_tutorial_format(name):
    src = (TUTORIALS / name).read_text()
    assert src.count("# %% [markdown]") >= 3 and re.search(r"^# %%$", src, re.M), "percent-format cells"
    assert "## Exercises" in src
    assert "TINYVIT_QUICK" in src and "TINYVIT_FIGURES" in src
    # every literal figure name in the source is in the promised list
    for fig in re.findall(r"\"(\d\d_[a-z_0-9]+\.png)\"", src):
        assert fig in PROMISED[name], f"{name} writes {fig}, which the test does not check"


@pytest.mark.parametrize("name", sorted(PROMISED))
def test_tutorial_runs_in_quick_mode(name, tmp_path):
    env = dict(os.environ, TINYVIT_QUICK="1", TINYVIT_FIGURES=str(tmp_path / "figures"), MPLBACKEND="Agg")
    for var in ("TINYVIT_CKPT_CLS", "TINYVIT_CKPT_MEAN"):
        env.pop(var, None)
    proc = subprocess.run([sys.executable, str(TUTORIALS / name)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert "shape (" in proc.stdout                  # it prints the shapes of its arrays
    for fig in PROMISED[name]:
        path = tmp_path / "figures" / fig
        assert path.is_file(), f"{name} did not write {fig}"
        assert path.read_bytes()[:8] == PNG_MAGIC
