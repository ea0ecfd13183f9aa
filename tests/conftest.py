from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): deterministic, and no
    OpenMP spinning on the shared 2-core machines."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def no_lpips_weights(monkeypatch, tmp_path_factory):
    """LPIPS off unless a test provides weights: a user's ~/.cache/orbit4d/lpips_alex.safetensors must not change
    what the tests see (tests/test_lpips.py points ORBIT4D_LPIPS_WEIGHTS at its own file)."""
    monkeypatch.setenv("ORBIT4D_LPIPS_WEIGHTS", str(tmp_path_factory.getbasetemp() / "no-lpips.safetensors"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout; tests that need it skip with a message when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (clone beside ../shared to run this test)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def small_video(tmp_path_factory) -> Path:
    """A 2-second 160x120 H.264 clip of a textured pattern drifting sideways (the moov atom sits at the end)."""
    import av
    import numpy as np

    path = tmp_path_factory.mktemp("video") / "drift.mp4"
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 255, (120, 400, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=15)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for i in range(30):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(texture[:, 4 * i : 4 * i + 160]), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path
