"""Enhancement in a child process at a lower CPU priority, so study votes never wait behind it.

On a small Space, torch takes every core while it enhances. Run in the server's own process,
that made a rater's vote wait behind a visitor's enhancement: 32 raters voting while 2 visitors
enhanced gave a vote round trip of p95 ≈ 0.8 s, against 82 ms with nobody enhancing
(``benchmarks/load_study.py``). Here each method runs in one long-lived worker process at the
lowest priority (``nice`` +19), so the kernel gives the server's threads (votes, pages,
images) the cores first and the enhancement what is left. The worker keeps its models loaded
between calls. (nice +10 gave p95 294 ms on the same benchmark. ``SCHED_IDLE`` was tried and
dropped: it never runs the worker while anything else wants the CPU, so a busy machine left a
visitor's enhancement waiting indefinitely.)

``DPE_ENHANCE_WORKER=inline`` runs methods in the calling process instead (tests that patch a
method in-process; a debugger). Read on every call.
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import multiprocessing
import multiprocessing.connection
import os
import threading

import numpy as np

NICENESS = 19  # the lowest priority; CFS weight 15 against the server's 1024
MODES = ("process", "inline")

_pool: cf.ProcessPoolExecutor | None = None
_lock = threading.Lock()


def mode() -> str:
    """``DPE_ENHANCE_WORKER``: ``process`` (default) or ``inline``."""
    value = os.environ.get("DPE_ENHANCE_WORKER", "").strip().lower() or "process"
    if value not in MODES:
        raise ValueError(f"DPE_ENHANCE_WORKER must be one of {', '.join(MODES)}; got {value!r}.")
    return value


def _exit_with_parent() -> None:
    # A killed server (SIGKILL, a crash) cannot shut its worker down, and the worker would wait
    # for work forever, holding its models' memory: it leaves as soon as its parent is gone.
    multiprocessing.connection.wait([multiprocessing.parent_process().sentinel])
    os._exit(0)


def _start_worker() -> None:
    threading.Thread(target=_exit_with_parent, name="exit-with-parent", daemon=True).start()
    os.nice(NICENESS)  # before torch starts its threads, which inherit it


def _ready() -> tuple[int, int]:
    import dpe.methods  # noqa: F401 (the registry and torch, loaded before the first request)

    return os.getpid(), os.nice(0)


def pool() -> cf.ProcessPoolExecutor:
    """The worker (started on first use; ``spawn``: no locks inherited from server threads)."""
    global _pool
    with _lock:
        if _pool is None:
            _pool = cf.ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker,
            )
        return _pool


def start() -> cf.Future:
    """Start the worker now (``python app.py`` does, so the first visitor does not wait)."""
    return pool().submit(_ready)


def stop() -> None:
    """Shut the worker down (a later call starts a new one)."""
    global _pool
    with _lock:
        old, _pool = _pool, None
    if old is not None:
        old.shutdown(wait=True, cancel_futures=True)


atexit.register(stop)  # before interpreter teardown, not in the executor's weakref callback


def run(name: str, image: np.ndarray, *, gray: bool | None = None) -> np.ndarray:
    """`dpe.demo.run_one` in the worker, or in this process when ``inline``.

    A worker that died (killed for memory, say) is replaced, and this call's method reports
    a readable error instead of a broken pipe.
    """
    from dpe import demo

    if mode() == "inline":
        return demo.run_one(name, image, gray=gray)
    try:
        return pool().submit(demo.run_one, name, image, gray=gray).result()
    except cf.process.BrokenProcessPool:
        stop()
        raise ValueError(
            "the enhancement worker stopped (out of memory?) and was restarted; press Enhance again"
        ) from None
