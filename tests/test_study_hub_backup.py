"""Hub backups: consistent snapshots of the live database, uploaded without the network here."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace

import study
from study import hub_backup
from tests.test_study_support import make_study

ROOT = Path(__file__).resolve().parent.parent


def vote_n(db, rater_id: int, n: int, choice: str = "left") -> None:
    for _ in range(n):
        trial = study.next_trial(db, rater_id)
        study.record_vote(db, rater_id, trial.trial_id, choice)


def votes_in_file(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT count(*) FROM votes").fetchone()[0]


class FakeHub:
    """Stands in for huggingface_hub.HfApi: records each commit's files, no network."""

    def __init__(self):
        self.commits = []
        self.repos = []

    def create_repo(self, repo_id, **options):
        self.repos.append((repo_id, options))
        return SimpleNamespace(repo_id=repo_id)

    def run_as_future(self, fn, *args, **kwargs):
        future = Future()
        future.set_result(fn(*args, **kwargs))
        return future

    def create_commit(self, operations, **options):
        self.commits.append({op.path_in_repo: op.path_or_fileobj.read() for op in operations})


def test_backup_is_off_without_settings_and_offline(tmp_path, monkeypatch, caplog):
    db, _ = make_study(tmp_path, n_images=1, methods=["a", "b"])
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("DPE_BACKUP_REPO", "someone/study-backup")
    assert hub_backup.start_backup(db) is None
    assert "backups" not in caplog.text  # not configured is not a warning
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_backup.start_backup(db) is None  # no network: the app still starts
    assert "backups to someone/study-backup are off" in caplog.text


def test_snapshot_is_a_consistent_copy_replaced_in_place(tmp_path):
    db, study_id = make_study(tmp_path, n_images=2, methods=["a", "b", "c"])
    rater = study.invite_rater(db, study_id, "Dr A").rater_id
    target = tmp_path / "snapshot" / "study.db"
    target.parent.mkdir()
    assert hub_backup.write_snapshot(db, target) == target
    assert votes_in_file(target) == 0
    vote_n(db, rater, 1)
    hub_backup.write_snapshot(db, target)  # overwrites: the scheduler uploads one file
    assert sorted(p.name for p in target.parent.iterdir()) == ["study.db"]
    assert votes_in_file(target) == 1


def test_backup_commits_only_fresh_snapshots(tmp_path):
    db, study_id = make_study(tmp_path, n_images=2, methods=["a", "b", "c"])
    rater = study.invite_rater(db, study_id, "Dr A").rater_id
    hub = FakeHub()
    scheduler = hub_backup.snapshot_scheduler(
        db, "team/study-backup", folder=tmp_path / "snapshot", every=60, hf_api=hub
    )
    try:
        deadline = time.monotonic() + 30
        while not hub.commits and time.monotonic() < deadline:
            time.sleep(0.05)  # the scheduler's first commit runs in its own thread
        vote_n(db, rater, 2, "right")
        scheduler.trigger().result()
    finally:
        scheduler.stop()
    ((repo, options),) = hub.repos
    assert repo == "team/study-backup"
    assert options["private"] is True and options["repo_type"] == "dataset"
    assert [list(c) for c in hub.commits] == [["snapshot/study.db"], ["snapshot/study.db"]]
    copies = []
    for n, commit in enumerate(hub.commits):
        copies.append(tmp_path / f"copy{n}.db")
        copies[-1].write_bytes(commit["snapshot/study.db"])
    assert [votes_in_file(c) for c in copies] == [0, 2]
    assert sorted(p.name for p in (tmp_path / "snapshot").iterdir()) == ["study.db"]


def test_snapshots_default_to_a_folder_beside_the_database(tmp_path):
    db, _ = make_study(tmp_path, n_images=1, methods=["a", "b"])
    hub = FakeHub()
    scheduler = hub_backup.snapshot_scheduler(db, "team/backup", every=60, hf_api=hub)
    try:
        scheduler.trigger().result()
    finally:
        scheduler.stop()
    assert (db.path.parent / "snapshot" / "study.db").is_file()
    assert not any(name.endswith(("-wal", "-shm")) for c in hub.commits for name in c)


def test_importing_the_backup_module_does_not_load_the_hub_client():
    code = (
        "import sys, study, study.hub_backup, study.session, study.tables; "
        "print(sorted({m.split('.')[0] for m in sys.modules} "
        "& {'huggingface_hub', 'torch', 'gradio', 'dpe'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
