"""A rater's screens without a UI: practice first, one answer per screen, pause, the end."""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path

import pytest

import study
import study.db
from study import session as rs
from tests.test_study_support import make_study, write_images

METHODS = ["a", "b", "c"]


@pytest.fixture
def setup(tmp_path):
    """An open study (2 images x 3 methods = 6 trials, no repeats), a rater, practice files."""
    db, study_id = make_study(tmp_path, n_images=2, methods=METHODS, repeat_fraction=0.0)
    invite = study.invite_rater(db, study_id, "Dr A", specialty="radiology")
    practice = [tuple(write_images(tmp_path / f"practice{n}", 3)) for n in range(2)]
    return db, study_id, invite, practice


def choices_stored(db, study_id) -> list[str]:
    return list(study.load_votes(db, study_id)["choice"])


def test_join_needs_a_valid_code(setup):
    db, _, _, _ = setup
    with pytest.raises(study.InvalidInviteError, match="Enter the invite code"):
        rs.join(db, "   ")
    with pytest.raises(study.InvalidInviteError, match="not valid"):
        rs.join(db, "not-a-code")


def test_practice_comes_first_and_is_not_scored(setup):
    db, study_id, invite, practice = setup
    s = rs.join(db, f"  {invite.code}\n", practice)
    assert s.rater == invite.rater_id and s.title == "Test study"
    for n, files in enumerate(practice):
        assert s.screen == rs.Screen("practice", *(str(f) for f in files), n, 2)
        s = rs.answer(db, s, s.token, "left")
    assert choices_stored(db, study_id) == []
    assert s.screen.kind == "trial" and (s.screen.done, s.screen.total) == (0, 6)
    assert rs.join(db, invite.code, practice).screen.kind == "practice"  # still no vote yet
    s = rs.answer(db, s, s.token, "tie")
    assert choices_stored(db, study_id) == ["tie"]
    again = rs.join(db, invite.code, practice)  # once a vote is in, practice is skipped
    assert again.screen.kind == "trial" and again.screen.done == 1 and again.practice == ()


def test_trial_screens_show_the_served_images_under_opaque_names(setup):
    db, _, invite, _ = setup
    s = rs.join(db, invite.code)
    trial = study.next_trial(db, invite.rater_id)
    assert s.screen.trial_id == trial.trial_id
    assert s.screen.left == str(study.stimulus_path(db, trial.left))
    assert s.screen.right == str(study.stimulus_path(db, trial.right))
    assert s.screen.source == str(study.stimulus_path(db, trial.source))
    for path in (s.screen.source, s.screen.left, s.screen.right):
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}\.png", Path(path).name), path
        assert Path(path).is_file()
    assert len({s.screen.source, s.screen.left, s.screen.right}) == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.token = "x"  # a session is a value: callers get a new one, never a changed one


def test_each_screen_takes_one_answer(setup):
    db, study_id, invite, _ = setup
    first = rs.join(db, invite.code)
    second = rs.answer(db, first, first.token, "left")
    assert second.token != first.token and second.screen.trial_id != first.screen.trial_id
    assert second.screen.done == 1
    # The same screen answered again from the updated session: refused, nothing shown.
    with pytest.raises(rs.StaleScreenError):
        rs.answer(db, second, first.token, "right")
    # From a stale copy of the session (a second tab): the first answer stands, and the
    # rater is told so instead of the answer vanishing silently.
    replayed = rs.answer(db, first, first.token, "right")
    assert replayed.screen.trial_id == second.screen.trial_id
    assert "already answered on another screen" in replayed.note and second.note == ""
    assert rs.answer(db, first, first.token, "left").note == ""  # the same answer: no news
    assert choices_stored(db, study_id) == ["left"]
    # A wrong token (a leaked session without its screen) gets nothing: no images, no token.
    for token in (None, "", "0" * 16, second.token[:-1] + "x", first.token):
        with pytest.raises(rs.StaleScreenError):
            rs.answer(db, second, token, "left")
    third = rs.answer(db, second, second.token, "both_bad")
    assert choices_stored(db, study_id) == ["left", "both_bad"] and third.screen.done == 2
    with pytest.raises(study.StudyError, match="choice must be one of"):
        rs.answer(db, third, third.token, "A")


def test_response_time_runs_from_when_the_screen_was_served(setup):
    db, study_id, invite, _ = setup
    s = rs.join(db, invite.code)
    s = dataclasses.replace(s, served_at=time.monotonic() - 2.5)
    rs.answer(db, s, s.token, "right")
    (ms,) = study.load_votes(db, study_id)["response_ms"]
    assert 2500 <= ms < 7500


def test_resume_continues_with_the_same_trial_under_a_new_token(setup):
    db, study_id, invite, practice = setup
    s = rs.join(db, invite.code, practice)
    for _ in range(len(practice) + 2):
        s = rs.answer(db, s, s.token, "left")
    paused = s
    resumed = rs.resume(db, paused)
    assert resumed.screen == paused.screen and resumed.token != paused.token
    assert resumed.served_at >= paused.served_at
    with pytest.raises(rs.StaleScreenError):
        rs.answer(db, resumed, paused.token, "left")  # the old token is spent
    back = rs.join(db, invite.code, practice)  # another device, later
    assert back.screen.trial_id == paused.screen.trial_id and back.screen.done == 2


def test_practice_resumes_where_it_stopped(setup):
    db, _, invite, practice = setup
    s = rs.join(db, invite.code, practice)
    with pytest.raises(rs.StaleScreenError):
        rs.answer(db, s, None, "left")  # no token: no answer
    s = rs.answer(db, s, s.token, "left")
    resumed = rs.resume(db, s)
    assert resumed.screen.kind == "practice" and resumed.screen.left == str(practice[1][1])


def test_finishing_every_trial_ends_the_session(setup):
    db, study_id, invite, _ = setup
    s = rs.join(db, invite.code)
    while s.screen is not None:
        s = rs.answer(db, s, s.token, "tie")
    assert len(choices_stored(db, study_id)) == 6
    assert rs.ending(db, s) == "finished"
    with pytest.raises(rs.StaleScreenError):
        rs.answer(db, s, s.token, "left")  # nothing on screen: nothing to answer
    assert rs.join(db, invite.code).screen is None


def test_a_closed_study_ends_the_session_early(setup):
    db, study_id, invite, _ = setup
    s = rs.join(db, invite.code)
    s = rs.answer(db, s, s.token, "left")
    study.close_study(db, study_id)
    with pytest.raises(study.StudyNotOpenError, match="closed"):
        rs.answer(db, s, s.token, "right")  # the trial on screen when it closed
    assert choices_stored(db, study_id) == ["left"]
    ended = rs.resume(db, s)
    assert ended.screen is None and rs.ending(db, ended) == "closed"
    with pytest.raises(study.StudyNotOpenError, match="not taking votes"):
        rs.join(db, invite.code)


def test_hidden_source_is_not_served_but_practice_keeps_its_own(tmp_path):
    db, study_id = make_study(
        tmp_path, n_images=1, methods=["a", "b"], settings={"show_source": False}
    )
    invite = study.invite_rater(db, study_id, "Dr B")
    practice = [tuple(write_images(tmp_path / "p", 3))]
    s = rs.join(db, invite.code, practice)
    assert s.screen.source == str(practice[0][0])
    s = rs.answer(db, s, s.token, "left")
    assert s.screen.kind == "trial" and s.screen.source is None
    assert study.next_trial(db, invite.rater_id).source is None


def test_profile_is_the_raters_own(setup):
    db, study_id, invite, _ = setup
    s = rs.join(db, invite.code)
    assert rs.profile(db, s) == {"specialty": "radiology", "years_experience": None}
    study.update_rater(db, s.rater, years_experience=9)
    assert rs.profile(db, s) == {"specialty": "radiology", "years_experience": 9}
    other = study.invite_rater(db, study_id, "Dr C", specialty="dermatology")
    assert rs.profile(db, rs.join(db, other.code))["specialty"] == "dermatology"


def test_after_a_restart_the_answer_given_is_recorded_for_its_trial(setup, monkeypatch):
    db, study_id, invite, practice = setup
    s = rs.join(db, invite.code, practice)
    for _ in range(len(practice) + 1):
        s = rs.answer(db, s, s.token, "left")
    on_screen = s.screen.trial_id
    study.db._stored_secret.cache_clear()  # a new process reads the key back from the data folder
    back = rs.recover(db, invite.code, s.token, "right", practice)  # the session was lost
    votes = study.load_votes(db, study_id)
    assert list(votes["choice"]) == ["left", "right"] and back.screen.done == 2
    assert votes["response_ms"].isna().iloc[-1]  # not measured across the restart
    assert back.screen.trial_id != on_screen
    # The same answer sent again, or a token for another trial: nothing more is recorded.
    again = rs.recover(db, invite.code, s.token, "right", practice)
    forged = rs.recover(db, invite.code, s.token.split(".")[0] + ".00", "tie", practice)
    assert again.screen.trial_id == forged.screen.trial_id == back.screen.trial_id
    assert choices_stored(db, study_id) == ["left", "right"]
    # Another data folder's key signs nothing here.
    monkeypatch.setenv("DPE_SECRET_KEY", "another key")
    other = rs.join(db, invite.code)
    monkeypatch.delenv("DPE_SECRET_KEY")
    assert not rs.issued_for(db, other.token, other.rater, other.screen)
    assert rs.issued_for(db, back.token, back.rater, back.screen)


def test_a_reopened_study_takes_votes_again(setup):
    db, study_id, invite, _ = setup
    first = rs.join(db, invite.code)
    s = rs.answer(db, first, first.token, "left")
    study.close_study(db, study_id)
    with pytest.raises(study.StudyNotOpenError):
        rs.join(db, invite.code)
    study.reopen_study(db, study_id)
    back = rs.join(db, invite.code)
    assert back.screen.done == 1 and back.screen.trial_id == s.screen.trial_id
    with pytest.raises(study.StudyError, match="not closed"):
        study.reopen_study(db, study_id)


def test_reading_time_from_the_browser_is_stored_beside_the_round_trip(setup):
    db, study_id, invite, _ = setup
    s = rs.join(db, invite.code)
    s = dataclasses.replace(s, served_at=time.monotonic() - 3.0)  # delivery and drawing too
    s = rs.answer(db, s, s.token, "left", 864.4)
    for junk in (None, -5, "900", float("nan"), 10.0**12):  # five trials left
        s = rs.answer(db, s, s.token, "right", junk)  # not measured, never an error
    votes = study.load_votes(db, study_id)
    assert votes["reading_ms"].iloc[0] == 864 and votes["response_ms"].iloc[0] >= 3000
    assert votes["reading_ms"].iloc[1:].isna().all()
    # The analysis reports the reading time where the browser measured one.
    from study import analysis

    medians = analysis.response_times(votes.head(1))
    assert medians.iloc[0] == 864
    assert analysis.response_times(votes.iloc[1:2]).iloc[0] == votes["response_ms"].iloc[1]
