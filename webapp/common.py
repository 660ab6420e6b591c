"""What every page shares: the study database, user-error handling, event presets, examples."""

from __future__ import annotations

import functools
import logging
import threading
from pathlib import Path

import gradio as gr

import study
from dpe import demo as dd

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES_DIR = ROOT / "examples"
EXAMPLES = dd.example_images(EXAMPLES_DIR)
# Named, not __name__: one log for the whole app, whichever module refuses a request.
log = logging.getLogger("app")

# Event presets. Study and results endpoints stay private; enhancement shares one queue.
PRIVATE = {"api_visibility": "private"}
LIGHT = {**PRIVATE, "concurrency_id": "light", "concurrency_limit": 2}
STUDY = {**PRIVATE, "concurrency_id": "study", "concurrency_limit": 4}
ADMIN = {**PRIVATE, "concurrency_id": "results", "concurrency_limit": 1}
HEAVY = {"concurrency_id": "enhance", "concurrency_limit": 1}  # one worker (webapp.worker)

_DBS: dict[Path, study.StudyDB] = {}
_DB_LOCK = threading.Lock()


def db() -> study.StudyDB:
    """The study database under ``$DPE_DATA_DIR``, opened once per process (and per folder)."""
    path = (study.data_dir() / "study.db").resolve()
    with _DB_LOCK:
        if path not in _DBS:
            _DBS[path] = study.open_db(path)
        return _DBS[path]


def one_line(text: object) -> str:
    """Text for a single log line: control characters (a newline in a file name) escaped."""
    text = str(text)
    return text if text.isprintable() else ascii(text)


def refused(message: str, what: str, file: str | None = None) -> gr.Error:
    """A request the user got wrong: one log line (what, which file, why), no traceback.

    Gradio prints a traceback for every ``gr.Error`` unless told not to; those are for faults.
    """
    where = f" {one_line(Path(file).name)}" if file else ""
    log.warning("refused %s%s: %s", what, where, one_line(message))
    return gr.Error(message, print_exception=False)


def user_errors(callback):
    """Show the errors a user can cause (ValueError, e.g. StudyError, ImageError) as alerts,
    each logged as one line (see :func:`refused`)."""

    @functools.wraps(callback)  # Gradio reads the signature and docstring through the wrapper
    def shown(*args, **kwargs):
        try:
            return callback(*args, **kwargs)
        except gr.Error as exc:
            if exc.print_exception:  # not yet logged: a gr.Error raised in the callback itself
                refused(exc.message, callback.__name__)
                exc.print_exception = False
            raise
        except ValueError as exc:
            raise refused(str(exc), callback.__name__) from None

    return shown
