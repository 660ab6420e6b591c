"""Uploads and temporary files: Gradio's upload folder, our scratch folders, their lifetimes.

An upload is decoded once, then deleted; what the app writes for download lives in a
process-wide scratch folder whose old entries are pruned on every call.
"""

from __future__ import annotations

import atexit
import collections
import os
import secrets
import shutil
import tempfile
import threading
import time
from pathlib import Path

import gradio as gr

from dpe import demo as dd
from webapp.common import refused

KEEP_SECONDS = 1800  # uploads' decoded pixels and our output files live this long at most
# Gradio stores byte-identical uploads at one path (named by their content hash), and an upload
# is deleted once read: a second visitor sending the same file in the same moment would find it
# gone. So the last few decoded uploads (at demo size) are kept in memory for a short while.
RECENT_UPLOADS_KEPT, RECENT_UPLOAD_SECONDS = 4, 120.0
_recent_uploads: collections.OrderedDict[str, tuple[float, dd.Prepared]] = collections.OrderedDict()
_recent_lock = threading.Lock()


def scratch_folder(purpose: str) -> Path:
    """A per-process folder under the temp folder, removed when the process exits."""
    folder = Path(tempfile.gettempdir()) / f"dpe-{purpose}-{os.getpid()}"
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


# Downloads and exports; Gradio copies what it serves into its own cache, which
# delete_cache sweeps, so ours is pruned on every call.
OUTPUT_ROOT = scratch_folder("app")


def prune_old(root: str | os.PathLike, max_age_s: float) -> int:
    """Delete the folders under ``root`` older than ``max_age_s`` seconds; return how many."""
    root = Path(root)
    if not root.is_dir():
        return 0
    cutoff = time.time() - max_age_s
    removed = 0
    for child in root.iterdir():
        try:
            if child.is_dir() and child.stat().st_mtime < cutoff:
                shutil.rmtree(child, ignore_errors=True)
                removed += 1
        except FileNotFoundError:
            continue  # another request pruned it first
    return removed


def fresh_output_dir(root: str | os.PathLike, max_age_s: float) -> Path:
    """A new empty folder under ``root`` for one response's files.

    Folders under ``root`` older than ``max_age_s`` seconds are removed first, so files
    handed out for download do not pile up.
    """
    root = Path(root)
    prune_old(root, max_age_s)
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=root))


def output_dir() -> Path:
    """A fresh folder under ``OUTPUT_ROOT`` for one response's downloads."""
    return fresh_output_dir(OUTPUT_ROOT, KEEP_SECONDS)


def discard_upload(path: str | os.PathLike | None, upload_root: str | os.PathLike) -> bool:
    """Delete an uploaded file once read, with its folder when that is left empty.

    Only files inside ``upload_root`` are touched, never an example or another path a
    caller sends. Returns whether a file was deleted.
    """
    if not path:
        return False
    root = Path(upload_root).resolve()
    file = Path(path).resolve()
    if root not in file.parents or not file.is_file():
        return False
    file.unlink(missing_ok=True)
    if file.parent != root:
        try:
            file.parent.rmdir()  # Gradio keeps each upload in a folder named by its hash
        except OSError:
            pass  # not empty
    return True


def discard(path: str | None) -> None:
    """Delete an upload after the response; only Gradio's upload folder is ever touched."""
    discard_upload(path, gr.utils.get_upload_folder())


def read_upload(path: str | os.PathLike, upload_root: str | os.PathLike) -> dd.Prepared:
    """`dpe.demo.prepare` an uploaded file, then delete it (see :func:`discard_upload`).

    A file already read and deleted in the last ``RECENT_UPLOAD_SECONDS`` (the same bytes sent
    by another visitor) is served from memory. Raises `dpe.ImageError` as ``prepare`` does.
    """
    key, now = os.path.realpath(path), time.monotonic()
    try:
        with _recent_lock:
            stale = [k for k, (t, _) in _recent_uploads.items() if now - t > RECENT_UPLOAD_SECONDS]
            for old in stale:
                del _recent_uploads[old]
            recent = _recent_uploads.get(key)
        if recent is not None and not os.path.exists(path):
            return recent[1]
        prepared = dd.prepare(path)
        with _recent_lock:
            _recent_uploads[key] = (now, prepared)
            _recent_uploads.move_to_end(key)
            while len(_recent_uploads) > RECENT_UPLOADS_KEPT:
                _recent_uploads.popitem(last=False)
        return prepared
    finally:
        discard_upload(path, upload_root)


def prepare_upload(path: str, what: str) -> dd.Prepared:
    """Read an upload for a page; an unreadable file is refused with a message naming ``what``."""
    try:
        return read_upload(path, gr.utils.get_upload_folder())
    except ValueError as exc:
        raise refused(f"Could not read {what}: {exc}", "upload", path) from None


# Study images as a rater's browser fetches them. Gradio would serve a returned file from a
# folder named by a hash of its bytes (the same for every rater, and an unenhanced stimulus
# would share the source's folder), so each screen's images are linked into a fresh folder of
# their own under random names, and that root is served as static files (not copied).
SCREENS_ROOT = scratch_folder("screens")
SCREEN_SECONDS = 6 * 3600  # a screen's links live this long; a reload serves new ones
_screens_pruned = [0.0]  # time.monotonic() of the last sweep: at most one a minute


def serve_privately(paths: list[str | os.PathLike | None]) -> list[str | None]:
    """Each file in ``paths`` under a fresh random name in a fresh folder, as served to one
    browser; None stays None. Links where the file system allows, else copies."""
    now = time.monotonic()
    if now - _screens_pruned[0] > 60:  # a sweep stats every folder: not on every answer
        _screens_pruned[0] = now
        prune_old(SCREENS_ROOT, SCREEN_SECONDS)
    SCREENS_ROOT.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=SCREENS_ROOT))
    served: list[str | None] = []
    for path in paths:
        if path is None:
            served.append(None)
            continue
        target = folder / f"{secrets.token_urlsafe(16)}{Path(path).suffix}"
        try:
            os.link(path, target)
        except OSError:  # another file system (a Space's /data and /tmp), or no hard links
            shutil.copyfile(path, target)
        served.append(str(target))
    return served
