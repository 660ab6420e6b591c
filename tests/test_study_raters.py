"""What a rater is served beside the two candidates, and the profile they may fill in."""

from __future__ import annotations

import re
import sqlite3

import numpy as np
import pytest

import study
from tests.test_study_support import fake_enhance, make_study, write_images


def test_trial_source_is_the_items_low_quality_input(tmp_path):
    db, study_id = make_study(tmp_path, n_images=2, methods=["a", "b", "c"])
    invite = study.invite_rater(db, study_id, "Dr A")
    inputs = {r["input_name"]: r["id"] for r in db.query("SELECT id, input_name FROM items")}
    sources_by_item = {}
    for _ in range(6):
        trial = study.next_trial(db, invite.rater_id)
        item = db.query("SELECT item FROM trials WHERE id = ?", [trial.trial_id])[0]["item"]
        assert inputs[trial.source] == item  # the input of this trial's item, no other
        sources_by_item.setdefault(item, set()).add(trial.source)
        path = study.stimulus_path(db, trial.source)
        assert path == tmp_path / "data" / "media" / study_id / trial.source
        # the candidates were made from it: the fake enhancer maps source to candidate
        low = study.read_image(path)
        method = db.query(
            """SELECT m.key FROM trials t JOIN methods m ON m.id = t.left_method
               WHERE t.id = ?""",
            [trial.trial_id],
        )[0]["key"]
        left = study.read_image(study.stimulus_path(db, trial.left))
        assert np.abs(left - fake_enhance(low, method)).max() <= 1 / 255 + 1e-6
        study.record_vote(db, invite.rater_id, trial.trial_id, "tie")
    assert all(len(s) == 1 for s in sources_by_item.values()) and len(sources_by_item) == 2


def test_trial_source_carries_no_method_and_is_not_sent_in_the_trial_dict(tmp_path):
    db, study_id = make_study(tmp_path, n_images=3)
    invite = study.invite_rater(db, study_id, "Dr A")
    stimuli = {r["opaque_name"] for r in db.query("SELECT opaque_name FROM stimuli")}
    trial = study.next_trial(db, invite.rater_id)
    assert trial.source not in stimuli and trial.source not in (trial.left, trial.right)
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}\.png", trial.source)  # a random token, nothing else
    assert "source" not in trial.as_dict()  # the JSON form is unchanged


def test_source_is_none_when_the_study_hides_it(tmp_path):
    db, study_id = make_study(tmp_path, n_images=1, settings={"show_source": False})
    invite = study.invite_rater(db, study_id, "Dr A")
    assert study.next_trial(db, invite.rater_id).source is None


def test_stimulus_path_resolves_inputs_but_not_the_clean_references(tmp_path):
    db = study.open_db(tmp_path / "data" / "study.db")
    images = write_images(tmp_path / "images", 2)
    study_id = study.create_study(
        db, "Degraded", images, ["a", "b"], fake_enhance, degrade_fn=lambda img, s: img * 0.5
    )
    items = db.query("SELECT input_name, reference_name FROM items")
    for item in items:
        assert study.stimulus_path(db, item["input_name"]).is_file()
        with pytest.raises(study.NotFoundError, match="no image"):
            study.stimulus_path(db, item["reference_name"])  # never served to raters
    with pytest.raises(study.NotFoundError):
        study.stimulus_path(db, "../study.db")
    assert study.stimulus_path(db, items[0]["input_name"]).parent.name == study_id


def test_update_rater_changes_only_what_is_given(tmp_path):
    db, study_id = make_study(tmp_path, n_images=1)
    rater = study.invite_rater(db, study_id, "Dr A", specialty="radiology").rater_id
    study.invite_rater(db, study_id, "Dr B", specialty="pathology")
    stored = study.update_rater(db, rater, years_experience=12)
    assert stored == {"specialty": "radiology", "years_experience": 12}
    stored = study.update_rater(db, rater, specialty="  dermatology ")
    assert stored == {"specialty": "dermatology", "years_experience": 12}
    assert study.update_rater(db, rater) == stored  # nothing given, nothing changed
    assert study.update_rater(db, rater, years_experience=7.0)["years_experience"] == 7
    raters = {r["pseudonym"]: r["specialty"] for r in study.progress(db, study_id)["raters"]}
    assert raters == {"R01": "dermatology", "R02": "pathology"}  # the other rater untouched
    events = db.query("SELECT detail FROM events WHERE kind = 'rater_profile_updated'")
    assert len(events) == 3 and all('"R01"' in e["detail"] for e in events)  # audit trail


@pytest.mark.parametrize("years", [-1, 2.5, "ten", 200, float("nan")])
def test_update_rater_refuses_impossible_years(tmp_path, years):
    db, study_id = make_study(tmp_path, n_images=1)
    rater = study.invite_rater(db, study_id, "Dr A").rater_id
    with pytest.raises(study.StudyError, match="years of experience must be a whole number"):
        study.update_rater(db, rater, specialty="radiology", years_experience=years)
    row = db.query("SELECT specialty, years_experience FROM raters WHERE id = ?", [rater])[0]
    assert row == {"specialty": "", "years_experience": None}  # neither field was written


def test_update_rater_of_an_unknown_rater(tmp_path):
    db, _ = make_study(tmp_path, n_images=1)
    with pytest.raises(study.NotFoundError):
        study.update_rater(db, 999, specialty="radiology")


def test_update_rater_commits_and_rolls_back_with_the_callers_transaction(tmp_path):
    db, study_id = make_study(tmp_path, n_images=1)
    rater = study.invite_rater(db, study_id, "Dr A").rater_id
    with pytest.raises(RuntimeError), db.atomic():
        study.update_rater(db, rater, specialty="radiology")
        raise RuntimeError("the caller's block fails after the update")
    assert study.update_rater(db, rater)["specialty"] == ""  # rolled back with the block
    study.update_rater(db, rater, specialty="radiology", years_experience=3)
    with sqlite3.connect(db.path) as second:  # another connection sees it: committed
        row = second.execute("SELECT specialty, years_experience FROM raters WHERE id = ?", [rater])
        assert row.fetchone() == ("radiology", 3)
