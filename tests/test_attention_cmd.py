"""`tinyvit attention`: figure titles name the file and the prediction; resizing that
changes the aspect ratio or shrinks more than 4x is reported."""

import numpy as np
import pytest
from PIL import Image

from tinyvit import viz
from tinyvit.checkpoint import load_checkpoint
from tinyvit.cli import main

TINY = ["--image-size", "8", "--patch-size", "4", "--dim", "16", "--depth", "1", "--heads", "2",
        "--mlp-dim", "32", "--n-train", "64", "--batch-size", "32"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("attn") / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    return out


def _image(path, w, h):
    Image.fromarray((np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)).save(path)
    return path


def test_titles_name_the_file_and_the_prediction(run, tmp_path, monkeypatch, capsys):
    titles = []
    for name in ("plot_cls_attention", "plot_rollout", "plot_attention_grid"):
        real = getattr(viz, name)
        monkeypatch.setattr(viz, name, lambda *a, _real=real, **kw: titles.append(kw.get("title")) or _real(*a, **kw))
    img = _image(tmp_path / "my_cat.png", 16, 16)
    assert main(["attention", str(run), str(img), "--all-blocks", "--out", str(tmp_path / "figs")]) == 0
    out = capsys.readouterr()
    names = load_checkpoint(run / "checkpoint.npz").class_names
    predicted = out.out.splitlines()[1].split()[1]           # the top-1 line of the printed ranking
    assert predicted in names
    assert len(titles) == 3
    for title in titles:
        assert title and "my_cat.png" in title and f"predicted {predicted}" in title, title
    assert "warning" not in out.err                          # 16x16 -> 8x8: same ratio, 2x


@pytest.mark.parametrize("w, h, expected", [(16, 16, None), (32, 16, "aspect ratio"), (40, 40, "shrunk 5.0x"),
                                            (32, 32, None)])
def test_warns_on_aspect_change_or_large_shrink(run, tmp_path, capsys, w, h, expected):
    img = _image(tmp_path / f"im_{w}x{h}.png", w, h)
    assert main(["attention", str(run), str(img), "--out", str(tmp_path / "figs")]) == 0
    err = capsys.readouterr().err
    if expected is None:
        assert "warning" not in err, err
    else:
        assert "warning" in err and expected in err and str(img) in err, err
