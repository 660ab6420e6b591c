"""Exports: CSV escaping, the files researchers get, and what must never be in them."""

from __future__ import annotations

import csv
import hashlib
import json
import sqlite3

import pytest

import study
from study.export import EXPORT_FILES, VOTE_COLUMNS, escape_cell, write_csv
from tests.test_study_support import METHODS, make_study


@pytest.mark.parametrize(
    ("cell", "escaped"),
    [
        ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
        ("+cmd", "'+cmd"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("radiology", "radiology"),
        ("", ""),
        (-0.25, -0.25),
        (3, 3),
        (None, None),
    ],
)
def test_escape_cell(cell, escaped):
    assert escape_cell(cell) == escaped


def test_written_csv_cannot_start_a_formula(tmp_path):
    rows = [{"a": "=1+1", "b": "@x", "c": -1.5}, {"a": "fine", "b": "+y", "c": 2}]
    path = write_csv(tmp_path / "t.csv", rows, ["a", "b", "c"])
    with path.open(newline="", encoding="utf-8") as f:
        read = list(csv.DictReader(f))
    assert read[0] == {"a": "'=1+1", "b": "'@x", "c": "-1.5"}
    assert read[1] == {"a": "fine", "b": "'+y", "c": "2"}


def _voted_study(tmp_path):
    db, study_id = make_study(tmp_path, n_images=3, labels={"dpe": "=cmd|' /C calc'!A0"})
    codes, names = [], []
    for n in range(3):
        name = f"Dr Secret{n}"
        invite = study.invite_rater(db, study_id, name, specialty="@radiology", seed=n)
        codes.append(invite.code)
        names.append(name)
        for k in range(12):
            trial = study.next_trial(db, invite.rater_id)
            choice = ("left", "right", "tie", "both_bad")[(k + n) % 4]
            study.record_vote(db, invite.rater_id, trial.trial_id, choice, response_ms=1000 + k)
    return db, study_id, codes, names


def test_export_writes_every_file_with_consistent_counts(tmp_path):
    db, study_id, _, _ = _voted_study(tmp_path)
    written = study.export_study(db, study_id, tmp_path / "out", n_boot=50)
    assert {p.name for p in written.values()} == set(EXPORT_FILES)
    with written["votes"].open(newline="", encoding="utf-8") as f:
        votes = list(csv.DictReader(f))
    with written["votes"].open(encoding="utf-8") as f:
        assert f.readline().strip() == ",".join(VOTE_COLUMNS)
    assert len(votes) == 36
    assert {v["rater"] for v in votes} == {"R01", "R02", "R03"}
    assert {v["rater_specialty"] for v in votes} == {"'@radiology"}
    assert all(v["method_left"] in METHODS and v["method_right"] in METHODS for v in votes)
    for v in votes:
        expected = {"left": v["method_left"], "right": v["method_right"]}.get(v["choice"], "")
        assert v["chosen_method"] == expected

    with written["pairwise"].open(newline="", encoding="utf-8") as f:
        pairs = [r for r in csv.DictReader(f) if r["modality"] == "all"]
    assert sum(int(r["votes"]) for r in pairs) == 36
    with written["ratings"].open(newline="", encoding="utf-8") as f:
        ratings = list(csv.DictReader(f))
    dpe = next(r for r in ratings if r["method"] == "dpe")
    assert dpe["label"].startswith("'=")  # the hostile label is escaped
    # Three raters give 10 distinct rater resamples: no interval, and the report says why.
    assert dpe["bt_lower"] == dpe["bt_upper"] == "" and float(dpe["bt"])
    report = json.loads(written["report"].read_text())
    assert report["votes"] == 36 and report["study"]["id"] == study_id
    assert "3 raters give only 10 distinct resamples" in report["intervals"]
    assert report["position_bias"]["overall"]["decisive"] == 18
    with written["pwcmp"].open(newline="", encoding="utf-8") as f:
        long = list(csv.DictReader(f))
    header = ["observer", "session", "scene", "condition_A", "condition_B", "is_A_selected"]
    assert list(long[0]) == header
    ties = sum(v["choice"] in ("tie", "both_bad") for v in votes)
    assert len(long) == 36 + ties  # a tie is half a win each: two rows
    lefts = sum(v["choice"] == "left" for v in votes) + ties
    assert sum(r["is_A_selected"] == "1" for r in long) == lefts
    snapshot = sqlite3.connect(written["database"])
    assert snapshot.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert snapshot.execute("SELECT count(*) FROM votes").fetchone()[0] == 36
    snapshot.close()
    events = [e["kind"] for e in db.query("SELECT kind FROM events")]
    assert "export_taken" in events


def test_export_never_contains_invite_codes_their_hashes_or_names(tmp_path):
    db, study_id, codes, names = _voted_study(tmp_path)
    written = study.export_study(db, study_id, tmp_path / "out", n_boot=20)
    forbidden = [c.encode() for c in codes]
    forbidden += [hashlib.sha256(c.encode()).hexdigest().encode() for c in codes]
    forbidden += [n.encode() for n in names]
    for path in written.values():
        data = path.read_bytes()
        for secret in forbidden:
            assert secret not in data, (path.name, secret)
    assert not list((tmp_path / "out").glob("study.db-*"))  # no WAL side files left behind


def test_export_refuses_to_overwrite(tmp_path):
    db, study_id, _, _ = _voted_study(tmp_path)
    study.export_study(db, study_id, tmp_path / "out", n_boot=10)
    with pytest.raises(study.StudyError, match="empty folder"):
        study.export_study(db, study_id, tmp_path / "out", n_boot=10)
