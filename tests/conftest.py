import os
import urllib.request
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def shared_data():
    """../shared/data beside the checkout; the test is skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present beside this checkout")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _block_network(monkeypatch):
    """Tests never touch the network: a download of anything but a file:// URL fails the test
    (tests of the download code replace urlopen themselves)."""
    real = urllib.request.urlopen

    def guarded(url, *args, **kwargs):
        text = url if isinstance(url, str) else url.full_url
        if not text.startswith("file:"):
            raise AssertionError(f"a test tried to reach the network: {text}")
        return real(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", guarded)


def forge_npz_member(path, name, shape, dtype="<f4", data=b"\0" * 16):
    """Rewrite member ``name`` of the .npz at ``path`` with a header claiming ``shape`` over
    ``data`` (a few bytes): a hostile or corrupt file that np.load would allocate in full."""
    import io
    import zipfile
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    members[name + ".npy"] = buf.getvalue() + data
    with zipfile.ZipFile(path, "w") as z:
        for k, v in members.items():
            z.writestr(k, v)


class AllocationSpy:
    """Records the shapes np.empty is asked for (the safe .npz reader allocates with it)."""

    def __init__(self, monkeypatch):
        self.shapes, real = [], np.empty
        monkeypatch.setattr(np, "empty", lambda s, *a, **k: self.shapes.append(s) or real(s, *a, **k))

    def largest(self) -> int:
        return max((int(np.prod(s)) for s in self.shapes), default=0)
