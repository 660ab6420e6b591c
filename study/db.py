"""Storage for preference studies: schema in code, one connection per thread, migrations.

The database file is the artifact researchers keep. Every write goes through
:meth:`StudyDB.atomic`, which opens ``BEGIN IMMEDIATE`` so that a transaction that reads and
then writes holds the write lock from its first statement (a deferred transaction that
upgrades under load fails with "database is locked" instead of waiting). A disk that is
full, read-only or failing surfaces as :class:`StorageError`: nothing was saved, and the
message says so in words a rater can act on.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import logging
import os
import secrets
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import sqlite_utils
from sqlite_utils.migrations import Migrations

DEFAULT_DATA_DIR = "./data/study"
DB_FILENAME = "study.db"
CHOICES = ("left", "right", "tie", "both_bad")

log = logging.getLogger(__name__)


class StudyError(ValueError):
    """Base class for errors a user of the study tool can cause and fix."""


class NotFoundError(StudyError):
    """A study, rater, trial or file that was asked for does not exist."""


class SchemaError(StudyError):
    """The database was written by a newer version of this tool."""


class StorageError(StudyError):
    """The database cannot be opened or written (disk full, read-only, failing): nothing saved."""


# SQLite's primary result codes (the low byte of an extended code) that mean the storage, not
# the request, is at fault, and how to say so. Any other error propagates unchanged.
_STORAGE_PROBLEMS = {
    sqlite3.SQLITE_FULL: "the disk that holds the study's data is full",
    sqlite3.SQLITE_READONLY: "the study's data folder is read-only",
    sqlite3.SQLITE_CANTOPEN: "the study's database cannot be opened (is its folder read-only?)",
    sqlite3.SQLITE_PERM: "the study's data folder may not be written to",
    sqlite3.SQLITE_IOERR: "the disk that holds the study's data reported an error",
    sqlite3.SQLITE_BUSY: "the study's database stayed busy for too long",
}


@contextlib.contextmanager
def _storage_errors(path: Path) -> Iterator[None]:
    """Re-raise SQLite's disk full, read-only, I/O and busy errors as :class:`StorageError`."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        problem = _STORAGE_PROBLEMS.get(getattr(exc, "sqlite_errorcode", -1) & 0xFF)
        if problem is None:
            raise
        log.error("study database %s: %s", path, exc)
        raise StorageError(
            f"The study cannot save answers right now: {problem}, so nothing was saved. "
            "Please try again in a few minutes; if this keeps happening, tell the study team."
        ) from exc


def m001_initial_schema(db: sqlite_utils.Database) -> None:
    """Studies, methods, items, stimuli, raters, trials and votes."""
    db["studies"].create(
        {
            "id": str,
            "title": str,
            "instructions": str,
            "created": str,
            "status": str,  # creating -> open -> closed
            "settings": str,  # JSON: design, repeat_fraction, seed, ...
        },
        pk="id",
        not_null={"title", "created", "status", "settings"},
    )
    db["methods"].create(
        {"id": int, "study": str, "key": str, "label": str, "position": int},
        pk="id",
        foreign_keys=[("study", "studies", "id")],
        not_null={"study", "key", "label", "position"},
    )
    db["methods"].create_index(["study", "key"], unique=True)
    db["items"].create(
        {
            "id": int,
            "study": str,
            "opaque_id": str,
            "modality": str,
            "original_file": str,
            "input_name": str,  # the low-quality input every method enhanced
            "reference_name": str,  # the clean original, when the input was degraded from it
            "position": int,
        },
        pk="id",
        foreign_keys=[("study", "studies", "id")],
        not_null={"study", "opaque_id", "modality", "original_file", "input_name", "position"},
    )
    db["items"].create_index(["opaque_id"], unique=True)
    db["items"].create_index(["study", "original_file"], unique=True)
    db["stimuli"].create(
        {"id": int, "item": int, "method": int, "opaque_name": str, "sha256": str},
        pk="id",
        foreign_keys=[("item", "items", "id"), ("method", "methods", "id")],
        not_null={"item", "method", "opaque_name", "sha256"},
    )
    db["stimuli"].create_index(["item", "method"], unique=True)
    db["stimuli"].create_index(["opaque_name"], unique=True)
    db["raters"].create(
        {
            "id": int,
            "study": str,
            "pseudonym": str,
            "display_name": str,
            "specialty": str,
            "years_experience": int,
            "token_hash": str,  # sha256 of the invite code; the code itself is never stored
            "created": str,
            "plan_seed": int,
        },
        pk="id",
        foreign_keys=[("study", "studies", "id")],
        not_null={"study", "pseudonym", "display_name", "token_hash", "created"},
    )
    db["raters"].create_index(["token_hash"], unique=True)
    db["raters"].create_index(["study", "pseudonym"], unique=True)
    db["trials"].create(
        {
            "id": int,
            "rater": int,
            "item": int,
            "left_method": int,
            "right_method": int,
            "order_index": int,
            "is_repeat": int,
            "repeat_of": int,
        },
        pk="id",
        foreign_keys=[
            ("rater", "raters", "id"),
            ("item", "items", "id"),
            ("left_method", "methods", "id"),
            ("right_method", "methods", "id"),
            ("repeat_of", "trials", "id"),
        ],
        not_null={"rater", "item", "left_method", "right_method", "order_index", "is_repeat"},
    )
    db["trials"].create_index(["rater", "order_index"], unique=True)
    db["votes"].create(
        {
            "id": int,
            "trial": int,
            "choice": str,
            "chosen_method": int,  # NULL for tie and both_bad
            "response_ms": int,
            "client_ts": str,
            "server_ts": str,
        },
        pk="id",
        foreign_keys=[("trial", "trials", "id"), ("chosen_method", "methods", "id")],
        not_null={"trial", "choice", "server_ts"},
    )
    # One vote per trial: a double click or a retried request can never count twice.
    db["votes"].create_index(["trial"], unique=True)


def m002_audit_events_and_last_seen(db: sqlite_utils.Database) -> None:
    """An audit trail of study events, and when each rater was last active."""
    db["events"].create(
        {"id": int, "study": str, "kind": str, "detail": str, "created": str},
        pk="id",
        foreign_keys=[("study", "studies", "id")],
        not_null={"kind", "created"},
    )
    db["events"].create_index(["study", "created"])
    db["raters"].add_column("last_seen", str)


def m003_rater_revocation(db: sqlite_utils.Database) -> None:
    """When the study team withdrew a rater's invite code (NULL while the code is valid)."""
    db["raters"].add_column("revoked", str)


def m004_reading_time(db: sqlite_utils.Database) -> None:
    """The reading time the rater's browser measured: from both images drawn to the answer
    (``response_ms`` is the server's round trip, which includes delivering the screen)."""
    db["votes"].add_column("reading_ms", int)


# Append-only: a released migration never changes; a schema change is a new function here.
MIGRATION_STEPS = (
    m001_initial_schema,
    m002_audit_events_and_last_seen,
    m003_rater_revocation,
    m004_reading_time,
)
MIGRATIONS = Migrations("dpe_study")
for _step in MIGRATION_STEPS:
    MIGRATIONS()(_step)
SCHEMA_VERSION = len(MIGRATION_STEPS)


def data_dir() -> Path:
    """The data directory: ``$DPE_DATA_DIR``, default ``./data/study``."""
    return Path(os.environ.get("DPE_DATA_DIR") or DEFAULT_DATA_DIR)


SECRET_ENV = "DPE_SECRET_KEY"
SECRET_FILENAME = "secret.key"


def secret_key(folder: str | os.PathLike, purpose: str) -> bytes:
    """A key for ``purpose`` (e.g. "screen-token") that survives restarts.

    Derived from ``$DPE_SECRET_KEY`` when set, else from a random secret kept in ``folder``
    (the data folder: ``secret.key``, created on first use, readable by its owner only).
    """
    master = os.environ.get(SECRET_ENV, "").encode("utf-8")
    if not master:
        master = _stored_secret(str((Path(folder) / SECRET_FILENAME).resolve()))
    return hmac.new(master, purpose.encode("utf-8"), hashlib.sha256).digest()


@functools.lru_cache(maxsize=8)
def _stored_secret(path: str) -> bytes:
    file = Path(path)
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return file.read_bytes().strip()
    except OSError as exc:
        # A read-only data folder: this process still works, but a restart forgets the key.
        log.error("cannot keep a secret key at %s (%s); set %s", file, exc, SECRET_ENV)
        return secrets.token_bytes(32)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_urlsafe(32))
    return file.read_bytes().strip()


def now_iso() -> str:
    """The current UTC time as ISO 8601 with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class StudyDB:
    """Handle on one study database file; each thread gets its own SQLite connection."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.media_root = self.path.parent / "media"
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._closed = False

    def __repr__(self) -> str:
        return f"StudyDB({str(self.path)!r})"

    def __enter__(self) -> StudyDB:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def conn(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use)."""
        if self._closed:
            raise StudyError(f"{self!r} was closed; open the database again with open_db().")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            self._local.db = sqlite_utils.Database(conn)
        return conn

    @property
    def db(self) -> sqlite_utils.Database:
        """This thread's connection wrapped by sqlite-utils."""
        if getattr(self._local, "db", None) is None:
            _ = self.conn  # opens this thread's connection and its wrapper
        return self._local.db

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: the driver never opens transactions behind our back;
        # atomic() decides. check_same_thread=False only so close() can close them all.
        with _storage_errors(self.path):
            conn = sqlite3.connect(
                self.path, timeout=30, isolation_level=None, check_same_thread=False
            )
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA foreign_keys=ON")
            except BaseException:
                conn.close()
                raise
        with self._lock:
            self._connections.append(conn)
        return conn

    @contextlib.contextmanager
    def atomic(self) -> Iterator[sqlite_utils.Database]:
        """Run the block in one transaction: commit at the end, roll back on any exception.

        The outermost block starts with ``BEGIN IMMEDIATE``; nested blocks use a SAVEPOINT.
        A full, read-only or failing disk raises :class:`StorageError` after the rollback.
        """
        conn = self.conn
        if conn.in_transaction:
            name = f"sp_{secrets.token_hex(8)}"
            conn.execute(f"SAVEPOINT {name}")
            try:
                yield self.db
            except BaseException:
                if conn.in_transaction:
                    conn.execute(f"ROLLBACK TO SAVEPOINT {name}")
                    conn.execute(f"RELEASE SAVEPOINT {name}")
                raise
            conn.execute(f"RELEASE SAVEPOINT {name}")
            return
        with _storage_errors(self.path):
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def query(self, sql: str, params: Sequence = ()) -> list[dict]:
        """Rows of a read query as dicts."""
        cursor = self.conn.execute(sql, tuple(params))
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def query_one(self, sql: str, params: Sequence = (), *, missing: str) -> dict:
        """The first row of a read query; raises :class:`NotFoundError` with ``missing``."""
        rows = self.query(sql, params)
        if not rows:
            raise NotFoundError(missing)
        return rows[0]

    def schema_version(self) -> int:
        """The schema version stored in the file (``PRAGMA user_version``)."""
        return self.conn.execute("PRAGMA user_version").fetchone()[0]

    def close(self) -> None:
        """Close every connection this handle opened."""
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()


def open_db(path: str | os.PathLike | None = None) -> StudyDB:
    """Open (creating or migrating as needed) the study database.

    ``path`` defaults to ``$DPE_DATA_DIR/study.db``; stimuli live in ``media/`` beside it.
    """
    path = Path(path) if path is not None else data_dir() / DB_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = StudyDB(path)
    try:
        migrate(handle)
    except BaseException:
        handle.close()
        raise
    return handle


def migrate(handle: StudyDB) -> int:
    """Apply pending migrations, each with the record that marks it applied; return the version."""
    _check_not_newer(handle)
    if not MIGRATIONS.pending(handle.db):
        return handle.schema_version()
    with handle.atomic() as db:
        # Re-read inside the write lock: another process may have migrated meanwhile.
        MIGRATIONS.apply(db)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
    return SCHEMA_VERSION


def _check_not_newer(handle: StudyDB) -> None:
    version = handle.schema_version()
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"{handle.path} has schema version {version}, newer than this tool's "
            f"{SCHEMA_VERSION}; upgrade the project before opening it."
        )


def backup(handle: StudyDB, path: str | os.PathLike) -> Path:
    """Write a consistent single-file snapshot to ``path`` with ``VACUUM INTO``.

    Safe while votes keep arriving: the snapshot is one read transaction in WAL mode.
    """
    target = Path(path)
    if target.exists():
        raise StudyError(f"backup target {target} already exists; choose a new file name.")
    target.parent.mkdir(parents=True, exist_ok=True)
    handle.conn.execute("VACUUM INTO ?", (str(target),))
    return target


def log_event(handle: StudyDB, study_id: str | None, kind: str, detail: str = "") -> None:
    """Append one row to the audit trail (inside the caller's transaction, if any)."""
    with handle.atomic() as db:
        db["events"].insert(
            {"study": study_id, "kind": kind, "detail": detail, "created": now_iso()}
        )
