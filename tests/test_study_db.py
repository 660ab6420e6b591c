"""Schema, connections, transactions, migrations and backups of the study database."""

from __future__ import annotations

import sqlite3
import threading

import pytest
import sqlite_utils

import study
from study import db as study_db
from tests.test_study_support import make_study


def test_new_database_has_schema_version_and_tables(tmp_path):
    db = study.open_db(tmp_path / "s.db")
    assert db.schema_version() == study.SCHEMA_VERSION == 4
    tables = set(db.db.table_names())
    expected = {"studies", "methods", "items", "stimuli", "raters", "trials", "votes", "events"}
    assert expected <= tables
    assert {"last_seen", "revoked"} <= set(db.db["raters"].columns_dict)
    unique = {tuple(ix.columns) for ix in db.db["votes"].indexes if ix.unique}
    assert ("trial",) in unique


def test_connection_pragmas(tmp_path):
    db = study.open_db(tmp_path / "s.db")
    conn = db.conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL


def test_each_thread_gets_its_own_connection(tmp_path):
    db = study.open_db(tmp_path / "s.db")
    seen = []
    thread = threading.Thread(target=lambda: seen.append(db.conn))
    thread.start()
    thread.join()
    assert seen[0] is not db.conn
    assert db.conn is db.conn


def test_default_path_follows_dpe_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DPE_DATA_DIR", str(tmp_path / "elsewhere"))
    with study.open_db() as db:
        assert db.path == tmp_path / "elsewhere" / "study.db"
    assert (tmp_path / "elsewhere" / "study.db").exists()


def _make_version_1(path):
    """A database as the first release left it: only migration m001 applied."""
    conn = sqlite3.connect(path, isolation_level=None)
    old = sqlite_utils.Database(conn)
    study_db.MIGRATIONS.apply(old, stop_before="m002_audit_events_and_last_seen")
    old.execute("PRAGMA user_version = 1")
    old["studies"].insert(
        {
            "id": "old1",
            "title": "Old",
            "instructions": "",
            "created": "2025-01-01T00:00:00",
            "status": "open",
            "settings": '{"design": "balanced", "repeat_fraction": 0.1}',
        }
    )
    old["raters"].insert(
        {
            "study": "old1",
            "pseudonym": "R01",
            "display_name": "A",
            "specialty": "",
            "token_hash": "x" * 64,
            "created": "2025-01-01T00:00:00",
        }
    )
    conn.close()


def test_opening_an_older_database_migrates_it_and_keeps_its_rows(tmp_path):
    path = tmp_path / "old.db"
    _make_version_1(path)
    before = sqlite_utils.Database(path)
    assert "events" not in before.table_names()
    assert "last_seen" not in before["raters"].columns_dict
    before.close()

    db = study.open_db(path)
    assert db.schema_version() == 4
    assert "events" in db.db.table_names()
    assert {"last_seen", "revoked"} <= set(db.db["raters"].columns_dict)
    assert db.query("SELECT revoked FROM raters") == [{"revoked": None}]  # old codes stay valid
    assert db.query("SELECT title FROM studies") == [{"title": "Old"}]
    applied = [m.name for m in study_db.MIGRATIONS.applied(db.db)]
    assert applied == [
        "m001_initial_schema",
        "m002_audit_events_and_last_seen",
        "m003_rater_revocation",
        "m004_reading_time",
    ]
    db.close()
    assert study.open_db(path).schema_version() == 4  # opening again changes nothing


def test_database_newer_than_the_code_is_refused(tmp_path):
    path = tmp_path / "new.db"
    study.open_db(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {study.SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(study.SchemaError, match="newer"):
        study.open_db(path)


def test_atomic_rolls_back_on_error(tmp_path):
    db = study.open_db(tmp_path / "s.db")
    with pytest.raises(RuntimeError):
        with db.atomic() as tx:
            tx["events"].insert({"kind": "a", "created": "now"})
            raise RuntimeError("boom")
    assert db.query("SELECT count(*) AS n FROM events") == [{"n": 0}]


def test_nested_atomic_rolls_back_only_the_inner_block(tmp_path):
    db = study.open_db(tmp_path / "s.db")
    with db.atomic() as tx:
        tx["events"].insert({"kind": "outer", "created": "now"})
        with pytest.raises(RuntimeError):
            with db.atomic() as inner:
                inner["events"].insert({"kind": "inner", "created": "now"})
                raise RuntimeError("boom")
    assert [r["kind"] for r in db.query("SELECT kind FROM events")] == ["outer"]


def test_commit_is_visible_to_another_connection(tmp_path):
    db = study.open_db(tmp_path / "s.db")
    with db.atomic() as tx:
        tx["events"].insert({"kind": "x", "created": "now"})
    other = sqlite3.connect(tmp_path / "s.db")
    assert other.execute("SELECT count(*) FROM events").fetchone()[0] == 1
    other.close()


def test_foreign_keys_are_enforced(tmp_path):
    db = study.open_db(tmp_path / "s.db")
    with pytest.raises(sqlite3.IntegrityError):
        with db.atomic() as tx:
            tx.execute(
                "INSERT INTO methods (study, key, label, position) VALUES ('nope', 'a', 'a', 0)"
            )


def test_backup_is_a_complete_valid_database(tmp_path):
    db, study_id = make_study(tmp_path)
    target = study.backup(db, tmp_path / "snap" / "copy.db")
    copy = sqlite3.connect(target)
    assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert copy.execute("SELECT id FROM studies").fetchall() == [(study_id,)]
    copy.close()
    with pytest.raises(study.StudyError, match="already exists"):
        study.backup(db, target)


def test_backup_while_votes_arrive(tmp_path):
    db, study_id = make_study(tmp_path, n_images=40)  # 440 trials: more than the backup takes
    invite = study.invite_rater(db, study_id, "Writer", seed=1)
    acked = []
    errors = []
    go_on = threading.Event()
    go_on.set()

    def vote_until_stopped():
        try:
            while go_on.is_set():
                trial = study.next_trial(db, invite.rater_id)
                if trial is None:
                    return
                study.record_vote(db, invite.rater_id, trial.trial_id, "left")
                acked.append(trial.trial_id)
        except Exception as exc:  # noqa: BLE001 - any error fails the test below
            errors.append(exc)

    writer = threading.Thread(target=vote_until_stopped)
    writer.start()
    while len(acked) < 20 and writer.is_alive():
        threading.Event().wait(0.001)
    acked_before = len(acked)
    target = study.backup(db, tmp_path / "during.db")
    still_writing = writer.is_alive()
    go_on.clear()
    writer.join()

    assert not errors
    assert acked_before >= 20
    assert still_writing  # the writer had not finished: the backup ran while votes arrived
    copy = sqlite3.connect(target)
    assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert copy.execute("SELECT count(*) FROM votes").fetchone()[0] >= acked_before
    copy.close()


def test_closed_handle_says_how_to_reopen(tmp_path):
    db = study.open_db(tmp_path / "s.db")
    db.close()
    with pytest.raises(study.StudyError, match="open_db"):
        db.query("SELECT 1")
