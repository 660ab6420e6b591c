"""A read-only or full data folder: votes are refused with a message, never pretended.

Two levels. Always: the study layer against SQLite's own read-only switch (``PRAGMA
query_only``) and size cap (``PRAGMA max_page_count``), which fail a write with the same
errors (SQLITE_READONLY, SQLITE_FULL) as a read-only or full disk. Where Linux lets a process
make a user and mount namespace (skipped elsewhere): a real ``python app.py`` whose data
folder is a tiny tmpfs, mounted read-only and later filled up, driven over HTTP as a browser
does. Chmod would not do: tests may run as root, who writes through any permission bits.
"""

from __future__ import annotations

import errno
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

import study
import study.session
from tests.load_harness import AppServer, PageError, StudyPage, make_study


def tiny_images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = [folder / f"scan{k}.png" for k in range(n)]
    for path in paths:
        Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).save(path)
    return paths


@pytest.fixture
def rater(tmp_path):
    """One rater signed in (no practice) to 150 trials, more than one page of votes holds."""
    db = study.open_db(tmp_path / "data" / "study.db")
    methods = [f"m{k}" for k in range(6)]
    study_id = study.create_study(
        db, "Faults", tiny_images(tmp_path / "src", 10), methods, lambda image, m: image,
        repeat_fraction=0.0,
    )  # fmt: skip
    code = study.invite_rater(db, study_id, "Dr A").code
    yield db, study.session.join(db, code)
    db.close()


def votes(db: study.StudyDB) -> list[str]:
    return [row["choice"] for row in db.query("SELECT choice FROM votes ORDER BY id")]


def test_a_read_only_database_refuses_a_vote_and_says_so(rater):
    db, session = rater
    session = study.session.answer(db, session, session.token, "left")
    db.conn.execute("PRAGMA query_only = ON")  # SQLITE_READONLY, as from a read-only folder
    with pytest.raises(study.StorageError, match="read-only, so nothing was saved") as refused:
        study.session.answer(db, session, session.token, "right")
    assert str(db.path.parent) not in str(refused.value)  # raters see no server paths
    assert votes(db) == ["left"]
    db.conn.execute("PRAGMA query_only = OFF")
    # The screen on display is still the one refused: answering it again counts.
    after = study.session.answer(db, session, session.token, "right")
    assert votes(db) == ["left", "right"] and after.screen.done == 2


def test_a_full_database_refuses_a_vote_and_says_so(rater):
    db, session = rater
    pages = db.conn.execute("PRAGMA page_count").fetchone()[0]
    db.conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLITE_FULL once a page is needed
    # Votes fill the free space of the last pages; the first that needs a new page fails.
    with pytest.raises(study.StorageError, match="is full, so nothing was saved"):
        for _ in range(session.screen.total):
            stored = len(votes(db))
            session = study.session.answer(db, session, session.token, "tie")
    assert stored == len(votes(db)) < session.screen.total
    assert session.screen.done == stored  # the refused answer moved nothing on
    db.conn.execute("PRAGMA max_page_count = 1073741823")
    after = study.session.answer(db, session, session.token, "tie")
    assert len(votes(db)) == stored + 1 and after.screen.done == stored + 1


def test_errors_that_are_not_the_disk_are_not_disguised(rater):
    db, _ = rater
    with pytest.raises(study.NotFoundError):
        study.record_vote(db, 999, 1, "left")
    with pytest.raises(Exception, match="no such table") as bug:
        with db.atomic() as tx:
            tx.execute("INSERT INTO nowhere VALUES (1)")
    assert not isinstance(bug.value, study.StorageError)


# ---------------------------------------------------------------- a real tmpfs, over HTTP


def _namespaces_work() -> bool:
    if not (shutil.which("unshare") and shutil.which("nsenter")):
        return False
    try:
        probe = subprocess.run(["unshare", "-Urm", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return probe.returncode == 0


needs_namespaces = pytest.mark.skipif(
    not _namespaces_work(), reason="needs `unshare -Urm` (user + mount namespaces) for a tmpfs"
)


def _choices_inside(server: AppServer, db_path: Path) -> list[str]:
    """The stored votes' choices, read inside the app's mount namespace (SQLite resolves the
    /proc/<pid>/root link to "/", so it cannot open the file from out here)."""
    query = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
        "print(' '.join(r[0] for r in c.execute('SELECT choice FROM votes ORDER BY id')))"
    )
    out = subprocess.run(
        ["nsenter", "-t", str(server.process.pid), "-U", "-m", "--preserve-credentials",
         sys.executable, "-c", query, str(db_path)],
        check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return out.stdout.split()


def _fill(folder: Path) -> None:
    """Write zeros into ``folder`` until its file system has no space left."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, bytes(1 << 16))
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


@pytest.mark.slow
@needs_namespaces
def test_the_app_on_a_read_only_then_full_folder_refuses_votes_and_recovers(tmp_path):
    load = make_study(tmp_path / "seed", raters=1, items=2, methods=3, image_size=16, seed=5)
    data = tmp_path / "data"
    data.mkdir()
    # The app runs in its own mount namespace, on a 2 MiB tmpfs holding a copy of the study,
    # mounted read-only before it starts. From here the folder is /proc/<pid>/root/<data>.
    mount = (
        f"mount -t tmpfs -o size=2m tmpfs {shlex.quote(str(data))} && "
        f"cp -a {shlex.quote(str(load.db_path.parent))}/. {shlex.quote(str(data))}/ && "
        f'mount -o remount,ro {shlex.quote(str(data))} && exec "$@"'
    )
    server = AppServer(data, prefix=["unshare", "-Urm", "sh", "-c", mount, "sh"]).start()
    try:
        inside = Path(f"/proc/{server.process.pid}/root") / data.relative_to("/")
        db_path = data / "study.db"  # as the app sees it
        code = load.codes[0]

        # Read-only from the start: the demo serves; a rater is told, and nothing is stored.
        assert httpx.get(server.url, timeout=30).is_success
        page = StudyPage(server.url)
        with pytest.raises(PageError, match="read-only.*nothing was saved") as refused:
            page.join(code)
        assert "Traceback" not in refused.value.message
        assert "database is unavailable" in server.log()  # and the operator is told why

        # Writable again: the same page joins, with no restart, and votes are stored.
        subprocess.run(
            ["nsenter", "-t", str(server.process.pid), "-U", "-m", "--preserve-credentials",
             "mount", "-o", "remount,rw", str(data)],
            check=True, timeout=30,
        )  # fmt: skip
        screen = page.join(code)
        while screen.kind == "practice":
            screen = page.answer(screen, "left")
        screen = page.answer(screen, "left")
        assert screen.done == 1 and _choices_inside(server, db_path) == ["left"]

        # The disk fills up: the answer is refused with a message and not stored.
        _fill(inside)
        with pytest.raises(PageError, match="is full, so nothing was saved"):
            page.answer(screen, "right")
        assert _choices_inside(server, db_path) == ["left"]

        # Space freed: the same screen's answer is taken, and the rater moves on.
        (inside / "filler").unlink()
        after = page.answer(screen, "right")
        assert after.done == 2 and _choices_inside(server, db_path) == ["left", "right"]
        page.close()
    finally:
        server.stop()
