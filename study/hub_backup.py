"""Back a study up to a private Hugging Face Hub dataset repo while votes keep arriving.

Every few minutes a ``VACUUM INTO`` snapshot of the database is uploaded as
``snapshot/study.db``: one consistent file, rewritten before each commit. The live database
and its WAL file are never uploaded. ``huggingface_hub`` is imported only when a backup is
set up, so ``import study`` stays light.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

from study.db import StudyDB, backup

log = logging.getLogger(__name__)

BACKUP_EVERY_MINUTES = 10
SNAPSHOT_FILE = "study.db"
PATH_IN_REPO = "snapshot"


def write_snapshot(db: StudyDB, target: str | os.PathLike) -> Path:
    """Replace ``target`` with a fresh consistent copy of ``db``; return its path.

    Written beside the target first, then moved over it, so a reader never sees half a file.
    """
    target = Path(target)
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    backup(db, partial)
    os.replace(partial, target)
    return target


def snapshot_scheduler(
    db: StudyDB,
    repo_id: str,
    *,
    folder: str | os.PathLike | None = None,
    every: float = BACKUP_EVERY_MINUTES,
    token: str | None = None,
    hf_api=None,
):
    """Start a ``huggingface_hub.CommitScheduler`` that uploads snapshots of ``db``.

    ``folder`` (default: ``snapshot/`` beside the database) holds the one file uploaded;
    ``every`` is in minutes; ``hf_api`` replaces ``HfApi(token=token)`` (tests pass a fake).
    The first commit starts at once, in the scheduler's thread. Call ``.stop()`` to end it.
    """
    folder = Path(folder) if folder is not None else db.path.parent / PATH_IN_REPO
    return _scheduler_class()(
        db,
        repo_id=repo_id,
        repo_type="dataset",
        folder_path=folder,
        path_in_repo=PATH_IN_REPO,
        every=every,
        private=True,
        token=token,
        allow_patterns=["*.db"],
        hf_api=hf_api,
    )


@functools.cache
def _scheduler_class():
    from huggingface_hub import CommitScheduler

    class SnapshotScheduler(CommitScheduler):
        """A CommitScheduler that rewrites its snapshot file before every commit."""

        def __init__(self, db: StudyDB, **options):
            self.study_db = db  # before the parent starts the thread that commits at once
            super().__init__(**options)

        def push_to_hub(self):
            with self.lock:
                write_snapshot(self.study_db, self.folder_path / SNAPSHOT_FILE)
            return super().push_to_hub()

    return SnapshotScheduler


def start_backup(db: StudyDB, *, every: float = BACKUP_EVERY_MINUTES):
    """Back ``db`` up to ``$DPE_BACKUP_REPO`` when it and ``$HF_TOKEN`` are set; else None.

    Never raises: offline, or without access to the repo, it logs a warning and returns None,
    so the app still starts.
    """
    token, repo = os.environ.get("HF_TOKEN"), os.environ.get("DPE_BACKUP_REPO")
    if not (token and repo):
        return None
    try:
        return snapshot_scheduler(db, repo, every=every, token=token)
    except Exception as exc:  # offline or no access
        log.warning("study backups to %s are off: %s", repo, exc)
        return None
