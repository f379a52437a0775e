"""Every tutorial runs as a notebook in a real Jupyter kernel (quick mode), from a folder
other than tutorials/: each figure cell shows an image inline and saves it, no cell writes
to stderr (warnings go there), and the promised figures are written."""

import os
import re
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
    "09_is_the_cls_map_telling_the_truth.py": ["09_maps_cls_0.png", "09_curves_cls.png", "09_curves_mean.png",
                                               "09_disagree.png"],
    "10_what_the_cls_token_carries.py": ["10_lr_grid.png", "10_probes_cls.png", "10_probes_mean.png",
                                         "10_norms_cls.png", "10_register_attention.png",
                                         "10_register_norms.png"],
    "11_cls_token_as_a_regressor.py": ["11_boxes.png", "11_iou_vs_giou.png", "11_box_attention_cls.png",
                                       "11_box_attention_attn.png"],
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
    assert "_setup" not in src, "imports from a file beside the tutorial: a copy elsewhere would not run"
    # every literal figure name in the source is in the promised list, and shown with display_figure
    for fig in re.findall(r"\"(\d\d_[a-z_0-9]+\.png)\"", src):
        assert fig in PROMISED[name], f"{name} writes {fig}, which the test does not check"
    assert "save=" not in src, "figures go through display_figure, so they also show in a notebook"


SOLUTIONS = sorted(p.name for p in (TUTORIALS / "solutions").glob("[0-9][0-9]_solutions.py"))


def test_every_tutorial_has_worked_solutions():
    assert SOLUTIONS == [name[:2] + "_solutions.py" for name in sorted(PROMISED)]
    for name in PROMISED:
        src = (TUTORIALS / name).read_text()
        assert f"solutions/{name[:2]}_solutions.py" in src, f"{name} does not point to its solutions"
        exercises = re.findall(r"^# (\d)\. ", src.split("## Exercises")[1], re.M)
        solved = (TUTORIALS / "solutions" / f"{name[:2]}_solutions.py").read_text()
        for number in exercises:
            assert re.search(rf"^# ## Exercises? (\d and )?{number}\b|^# ## Exercises? {number} and",
                             solved, re.M), f"{name}: exercise {number} has no worked solution"


def _text(output) -> str:
    return output.get("text", "") if output.get("output_type") == "stream" else ""


@pytest.mark.parametrize("name", sorted(PROMISED) + [f"solutions/{s}" for s in SOLUTIONS])
def test_tutorial_runs_as_a_notebook(name, tmp_path):
    pytest.importorskip("jupytext", reason="notebook tools not installed: pip install -e '.[notebooks]'")
    pytest.importorskip("nbclient", reason="notebook tools not installed: pip install -e '.[notebooks]'")
    pytest.importorskip("ipykernel", reason="notebook tools not installed: pip install -e '.[notebooks]'")
    from tinyvit.tutorial import execute_notebook

    env = dict(os.environ, TINYVIT_QUICK="1")
    for var in ("TINYVIT_CKPT_CLS", "TINYVIT_CKPT_MEAN", "TINYVIT_FIGURES", "MPLBACKEND"):
        env.pop(var, None)                               # figures: the default folder under cwd
    nb = execute_notebook(TUTORIALS / name, cwd=tmp_path, env=env, timeout=600)

    code = [c for c in nb.cells if c.cell_type == "code"]
    printed = "".join(_text(o) for c in code for o in c.outputs)
    assert printed.strip(), f"{name} printed nothing"
    if not name.startswith("solutions/"):
        assert "shape (" in printed                     # a tutorial prints the shapes of its arrays
    figure_cells = 0
    for c in code:
        stderr = "".join(o.get("text", "") for o in c.outputs
                         if o.get("output_type") == "stream" and o.get("name") == "stderr")
        assert not stderr, f"{name}: a cell wrote to stderr:\n{c.source[:300]}\n---\n{stderr[:2000]}"
        if "display_figure(" in c.source:
            figure_cells += 1
            images = [o for o in c.outputs if "image/png" in o.get("data", {})]
            assert images, f"{name}: this figure cell showed no image inline:\n{c.source[:300]}"
    if name.startswith("solutions/"):
        return
    assert figure_cells > 0
    for fig in PROMISED[name]:
        path = tmp_path / "figures" / fig
        assert path.is_file(), f"{name} did not write {fig}"
        assert path.read_bytes()[:8] == PNG_MAGIC


def test_a_figure_that_ends_a_cell_shows_inline(tmp_path):
    """After `import tinyvit.tutorial`, a tinyvit figure returned by the last line of a cell
    is shown as a PNG (a fresh kernel would print `<Figure size ...>`)."""
    pytest.importorskip("nbclient", reason="notebook tools not installed: pip install -e '.[notebooks]'")
    from tinyvit.tutorial import execute_notebook

    src = tmp_path / "figure_cell.py"
    src.write_text("# %%\nimport numpy as np\nimport tinyvit.tutorial\nfrom tinyvit import viz\n\n"
                   "# %%\nviz.plot_patch_grid(np.zeros((8, 8, 3)), 4)\n")
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)
    nb = execute_notebook(src, cwd=tmp_path, env=env, timeout=120)
    outputs = nb.cells[-1].outputs
    assert any("image/png" in o.get("data", {}) for o in outputs), outputs
