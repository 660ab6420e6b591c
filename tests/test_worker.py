"""The Enhance page's worker process (same pixels, lower priority, survives a kill) and the
queue settings that keep votes fast while visitors enhance."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dpe.methods import get_method
from webapp import worker


@pytest.fixture
def fresh_worker(monkeypatch):
    monkeypatch.setenv("DPE_ENHANCE_WORKER", "process")
    worker.stop()
    yield worker
    worker.stop()


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((48, 40, 3), dtype=np.float32) * 0.5


def test_the_worker_is_another_process_at_a_lower_priority(fresh_worker):
    pid, niceness = fresh_worker.start().result(timeout=120)
    assert pid != os.getpid()
    assert niceness == min(19, os.nice(0) + worker.NICENESS)


@pytest.mark.parametrize("name", ["autocontrast", "clahe"])
def test_the_worker_gives_the_same_pixels_as_this_process(fresh_worker, name):
    image = _image()
    out = fresh_worker.run(name, image, gray=False)
    np.testing.assert_array_equal(out, get_method(name).enhance(image, gray=False))


def test_a_method_error_comes_back_as_the_same_error(fresh_worker):
    with pytest.raises(ValueError, match="takes no options|unknown|Unknown"):
        fresh_worker.run("no-such-method", _image())


def test_a_killed_worker_is_a_readable_error_and_then_replaced(fresh_worker):
    pid, _ = fresh_worker.start().result(timeout=120)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(ValueError, match="worker stopped"):
        fresh_worker.run("autocontrast", _image())
    out = fresh_worker.run("autocontrast", _image())  # a new worker
    assert out.shape == (48, 40, 3)


def test_inline_runs_here_and_a_bad_setting_is_refused(monkeypatch):
    monkeypatch.setenv("DPE_ENHANCE_WORKER", "inline")
    worker.stop()
    np.testing.assert_array_equal(
        worker.run("autocontrast", _image(1)), get_method("autocontrast").enhance(_image(1))
    )
    assert worker._pool is None  # nothing was started
    monkeypatch.setenv("DPE_ENHANCE_WORKER", "threads")
    with pytest.raises(ValueError, match="DPE_ENHANCE_WORKER must be one of process, inline"):
        worker.run("autocontrast", _image())


def test_the_worker_leaves_when_its_server_is_killed(tmp_path):
    """A SIGKILLed server cannot shut its worker down; the worker must not outlive it."""
    script = tmp_path / "server.py"
    script.write_text(
        "import sys, time\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})\n"
        "from webapp import worker\n"
        "if __name__ == '__main__':\n"
        "    print(worker.start().result(timeout=120)[0], flush=True)\n"
        "    time.sleep(600)\n"
    )
    env = {**os.environ, "DPE_ENHANCE_WORKER": "process"}
    server = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, env=env)
    try:
        child = int(server.stdout.readline())
        assert _alive(child)
    finally:
        server.kill()
        server.wait()
    deadline = time.monotonic() + 30
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child), "the worker outlived its killed server"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's bookkeeping is left


def test_gradios_queue_does_not_summarise_every_event():
    """Gradio rebuilt a pandas table of its last 10,000 events after each event (for a
    /monitoring page this app does not serve): ~10% of the server's time under load. The
    settings that stop it are Gradio internals; if a Gradio upgrade renames them, this fails."""
    from webapp import build_app

    queue = build_app()._queue
    assert queue.ANAYLTICS_CACHE_FREQUENCY >= 1_000_000  # Gradio's spelling
    assert queue.ANALYTICS_MAX_EVENTS <= 100
