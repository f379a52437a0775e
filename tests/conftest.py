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
