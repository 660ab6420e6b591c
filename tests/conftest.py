import contextlib
import os

import pytest

# No network in tests: these must be set before gradio / huggingface_hub are imported.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture
def one_torch_thread():
    """Tiny models on shared cores: one thread is faster and steadier than several that wait."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, for a test server."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served_app(**launch):
    """Launch ``app.demo`` on a free loopback port; yields its base URL (ending in "/")."""
    import app

    port = free_port()
    app.demo.launch(
        **app.LAUNCH_OPTIONS,
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
        **launch,
    )
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        app.demo.close()


@pytest.fixture
def tiny_data(tmp_path):
    """Train and val folders of smooth random 40x48 tiles in two groups (for training tests)."""
    import numpy as np
    from PIL import Image
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 1)):
        for group in ("xray", "cells"):
            folder = tmp_path / "data" / split / group
            folder.mkdir(parents=True)
            for i in range(n):
                base = gaussian_filter(rng.random((40, 48, 3)), (3, 3, 0))
                image = (255 * (base - base.min()) / np.ptp(base)).astype(np.uint8)
                Image.fromarray(image).save(folder / f"{i}.png")
    return tmp_path
