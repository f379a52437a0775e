"""docs/check_site.py in headless Chromium: a good site passes; a broken link, a missing
image and a missing anchor are each reported. Skips where Chromium, its driver or selenium
is missing (CI installs them: .ci/run)."""

import shutil
import sys
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs"))

pytest.importorskip("selenium", reason="selenium not installed: pip install -e '.[docs]'")
if not (shutil.which("chromium") or shutil.which("chromium-browser")) or not shutil.which("chromedriver"):
    pytest.skip("Chromium and chromedriver not installed (apt-get install chromium chromium-driver)",
                allow_module_level=True)

from check_site import check_site  # noqa: E402


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch):
    """The conftest blocks urlopen; the check talks to its own server and to chromedriver, both
    on this machine, so loopback addresses are let through and anything else is still blocked."""
    import urllib.parse
    import urllib.request

    guarded = urllib.request.urlopen                      # conftest's guard

    def loopback(url, *args, **kwargs):
        text = url if isinstance(url, str) else url.full_url
        if urllib.parse.urlparse(text).hostname in ("127.0.0.1", "localhost", "::1"):
            return _REAL_URLOPEN(url, *args, **kwargs)
        return guarded(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", loopback)

_REAL_URLOPEN = urllib.request.urlopen                  # at import, before any test patches it
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000005000145a3f3e30000000049454e44ae426082")


def _site(root: Path, link="page/", image="pixel.png", anchor="part") -> Path:
    (root / "page").mkdir(parents=True)
    (root / "pixel.png").write_bytes(PNG)
    (root / "index.html").write_text(
        f'<html><body><a href="{link}">next</a> <a href="page/#{anchor}">part</a> <img src="{image}"></body></html>')
    (root / "page" / "index.html").write_text('<html><body><h2 id="part">part</h2><a href="../">home</a></body></html>')
    return root


def test_a_good_site_passes(tmp_path, capsys):
    assert check_site(_site(tmp_path / "site")) == 0
    assert "2 pages" in capsys.readouterr().out


@pytest.mark.parametrize("broken, expected", [(dict(link="missing/"), "HTTP 404"),
                                              (dict(image="missing.png"), "image did not load"),
                                              (dict(anchor="nowhere"), "no element with that id")])
def test_each_defect_is_reported(tmp_path, capsys, broken, expected):
    assert check_site(_site(tmp_path / "site", **broken)) == 1
    assert expected in capsys.readouterr().out
