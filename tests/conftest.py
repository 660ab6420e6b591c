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
