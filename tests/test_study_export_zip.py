"""The one-file export the Results page hands out: export_study's files in a zip."""

from __future__ import annotations

import zipfile

import pytest

import study
from tests.test_study_support import make_study


def test_export_zip_holds_the_export_in_one_folder_and_nothing_is_left_loose(tmp_path):
    db, study_id = make_study(tmp_path, n_images=2, methods=["a", "b", "c"])
    rater = study.invite_rater(db, study_id, "Dr Secret").rater_id
    for choice in ["left", "right", "tie"]:
        trial = study.next_trial(db, rater)
        study.record_vote(db, rater, trial.trial_id, choice)
    out = tmp_path / "out"
    out.mkdir()
    archive = study.export_zip(db, study_id, out)
    assert archive == out / f"study-{study_id}-export.zip"
    assert [p.name for p in out.iterdir()] == [archive.name]
    expected = study.export_study(db, study_id, tmp_path / "plain")
    with zipfile.ZipFile(archive) as zf:
        names = sorted(zf.namelist())
        assert names == sorted(f"study-{study_id}/{p.name}" for p in expected.values())
        votes = zf.read(f"study-{study_id}/votes.csv")
    assert votes == expected["votes"].read_bytes()
    assert votes.count(b"\n") == 1 + 3 and b"Dr Secret" not in votes
    with pytest.raises(study.StudyError, match="already holds an export"):
        study.export_zip(db, study_id, out)
    assert archive.is_file()  # the earlier export is kept


def test_export_zip_of_an_unknown_study_leaves_nothing(tmp_path):
    db, _ = make_study(tmp_path, n_images=1)
    with pytest.raises(study.NotFoundError):
        study.export_zip(db, "nope", tmp_path / "out")
    assert list((tmp_path / "out").rglob("*")) == []
