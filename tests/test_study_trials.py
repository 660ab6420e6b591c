"""Creating studies, blinding, serving trials, votes: what raters and organisers notice."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import Counter

import numpy as np
import pytest
from PIL import Image

import study
from tests.test_study_support import METHODS, fake_enhance, make_study, write_images


def test_stimuli_are_stored_under_opaque_names_with_content_hashes(tmp_path):
    db, study_id = make_study(tmp_path, n_images=3)
    rows = db.query("SELECT opaque_name, sha256 FROM stimuli")
    assert len(rows) == 3 * len(METHODS)
    media = tmp_path / "data" / "media" / study_id
    for row in rows:
        data = (media / row["opaque_name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row["sha256"]
        # a random 128-bit token and nothing else (a substring test would fail by chance: 22
        # random characters sometimes spell "dpe")
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}\.png", row["opaque_name"])
        assert b"dpe" not in data and b"lime" not in data  # no telling PNG text chunks
    assert len({r["sha256"] for r in rows}) == len(rows)  # every method made its own image
    assert len({r["opaque_name"] for r in rows}) == len(rows)


def test_served_trial_carries_no_method_information(tmp_path):
    db, study_id = make_study(tmp_path, labels={m: f"Label-{m}" for m in METHODS})
    invite = study.invite_rater(db, study_id, "Dr A")
    secrets_of_the_study = set(METHODS) | {f"Label-{m}" for m in METHODS}
    secrets_of_the_study |= {r["sha256"] for r in db.query("SELECT sha256 FROM stimuli")}
    secrets_of_the_study |= {p.name for p in (tmp_path / "images").iterdir()}
    for _ in range(15):
        trial = study.next_trial(db, invite.rater_id)
        payload = json.dumps(trial.as_dict())
        assert set(trial.as_dict()) == {"trial_id", "left", "right", "progress"}
        for secret in secrets_of_the_study:
            assert secret not in payload, secret
        study.record_vote(db, invite.rater_id, trial.trial_id, "tie")


def test_fake_enhancer_sees_every_image_and_method_once(tmp_path):
    calls = Counter()

    def counting(image, method):
        calls[method] += 1
        assert image.dtype == np.float32 and image.shape == (6, 6, 3)
        return fake_enhance(image, method)

    db = study.open_db(tmp_path / "s.db")
    images = write_images(tmp_path / "img", 3)
    study.create_study(db, "T", images, ["a", "b"], counting)
    assert calls == {"a": 3, "b": 3}


def test_interrupted_creation_resumes_without_redoing_work(tmp_path):
    db = study.open_db(tmp_path / "s.db")
    images = write_images(tmp_path / "img", 4)
    calls = []

    def flaky(image, method):
        calls.append(method)
        if len(calls) == 6:
            raise KeyboardInterrupt  # the organiser's Ctrl-C half way
        return fake_enhance(image, method)

    study_id = study.new_study(db, "T", ["a", "b", "c"])
    with pytest.raises(KeyboardInterrupt):
        study.build_study(db, study_id, images, flaky)
    assert study.get_study(db, study_id)["status"] == "creating"
    with pytest.raises(study.StudyNotOpenError, match="resume"):
        study.invite_rater(db, study_id, "Too early")

    seen = []
    study.build_study(
        db, study_id, images, fake_enhance, progress=lambda done, total: seen.append((done, total))
    )
    assert seen[0] == (5, 12) and seen[-1] == (12, 12)
    assert study.get_study(db, study_id)["status"] == "open"
    assert db.query("SELECT count(*) AS n FROM stimuli") == [{"n": 12}]


def test_degraded_study_keeps_the_clean_original(tmp_path):
    db = study.open_db(tmp_path / "s.db")
    images = write_images(tmp_path / "img", 2)
    seeds = []

    def degrade(image, seed):
        seeds.append(seed)
        return image * 0.5

    study_id = study.create_study(
        db, "T", images, ["a", "b"], fake_enhance, degrade_fn=degrade, seed=40
    )
    assert seeds == [40, 41]
    media = tmp_path / "media" / study_id
    for item in db.query("SELECT input_name, reference_name FROM items"):
        clean = study.read_image(media / item["reference_name"])
        low = study.read_image(media / item["input_name"])
        assert np.abs(low - clean * 0.5).max() < 1 / 255 + 1e-6


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"methods": ["a"]}, "two distinct"),
        ({"methods": ["a", "a"]}, "two distinct"),
        ({"title": " "}, "title"),
        ({"design": "random"}, "design"),
        ({"images": []}, "no images"),
    ],
)
def test_bad_study_input_raises_an_actionable_error(tmp_path, kwargs, match):
    db = study.open_db(tmp_path / "s.db")
    args = {"title": "T", "images": write_images(tmp_path / "i", 1), "methods": ["a", "b"]}
    args.update(kwargs)
    with pytest.raises(study.StudyError, match=match):
        study.create_study(
            db,
            args["title"],
            args["images"],
            args["methods"],
            fake_enhance,
            design=args.get("design", "balanced"),
        )


def test_enhancer_changing_the_shape_is_reported(tmp_path):
    db = study.open_db(tmp_path / "s.db")
    with pytest.raises(study.StudyError, match="method 'a' changed the image shape"):
        study.create_study(
            db, "T", write_images(tmp_path / "i", 1), ["a", "b"], lambda im, m: im[:3]
        )


def test_invite_code_is_stored_only_as_a_hash(tmp_path):
    db, study_id = make_study(tmp_path)
    invite = study.invite_rater(db, study_id, "Dr A", specialty="radiology", years_experience=7)
    assert invite.pseudonym == "R01"
    db.close()
    raw = (tmp_path / "data" / "study.db").read_bytes() + b"".join(
        p.read_bytes() for p in (tmp_path / "data").glob("study.db-*")
    )
    assert invite.code.encode() not in raw
    db = study.open_db(tmp_path / "data" / "study.db")
    stored = db.query("SELECT token_hash FROM raters")[0]["token_hash"]
    assert stored == hashlib.sha256(invite.code.encode()).hexdigest()
    rater = study.rater_by_token(db, invite.code)
    assert rater["id"] == invite.rater_id and rater["specialty"] == "radiology"
    with pytest.raises(study.InvalidInviteError, match="not valid"):
        study.rater_by_token(db, invite.code + "x")


def test_a_returning_rater_continues_at_the_next_unanswered_trial(tmp_path):
    db, study_id = make_study(tmp_path)
    invite = study.invite_rater(db, study_id, "Dr A", seed=3)
    answered = []
    for _ in range(7):
        trial = study.next_trial(db, invite.rater_id)
        study.record_vote(db, invite.rater_id, trial.trial_id, "left")
        answered.append(trial.trial_id)
    upcoming = study.next_trial(db, invite.rater_id)
    db.close()

    db = study.open_db(tmp_path / "data" / "study.db")  # server restart, rater signs in again
    rater = study.rater_by_token(db, invite.code)
    resumed = study.next_trial(db, rater["id"])
    assert resumed == upcoming
    assert resumed.trial_id not in answered
    assert (resumed.done, resumed.total) == (7, 4 * 10 + 4)


def test_rater_finishes_after_every_trial(tmp_path):
    db, study_id = make_study(tmp_path, n_images=2, methods=["a", "b", "c"])
    invite = study.invite_rater(db, study_id, "Dr A")
    served = []
    while (trial := study.next_trial(db, invite.rater_id)) is not None:
        served.append(trial.trial_id)
        study.record_vote(db, invite.rater_id, trial.trial_id, "right")
    assert len(served) == len(set(served)) == 2 * 3 + 1  # 6 pairs + round(0.6) repeat
    assert study.rater_progress(db, invite.rater_id) == {"done": 7, "total": 7}


def test_same_vote_twice_is_stored_once(tmp_path):
    db, study_id = make_study(tmp_path)
    invite = study.invite_rater(db, study_id, "Dr A")
    trial = study.next_trial(db, invite.rater_id)
    first = study.record_vote(db, invite.rater_id, trial.trial_id, "left", response_ms=900)
    again = study.record_vote(db, invite.rater_id, trial.trial_id, "left", response_ms=950)
    assert not first.duplicate and again.duplicate
    assert again.server_ts == first.server_ts
    assert db.query("SELECT count(*) AS n, max(response_ms) AS ms FROM votes") == [
        {"n": 1, "ms": 900}
    ]


def test_a_different_second_vote_is_refused_not_overwritten(tmp_path):
    db, study_id = make_study(tmp_path)
    invite = study.invite_rater(db, study_id, "Dr A")
    trial = study.next_trial(db, invite.rater_id)
    study.record_vote(db, invite.rater_id, trial.trial_id, "left")
    with pytest.raises(study.VoteConflictError, match="already answered 'left'"):
        study.record_vote(db, invite.rater_id, trial.trial_id, "right")
    assert db.query("SELECT choice FROM votes") == [{"choice": "left"}]


def test_vote_maps_the_choice_to_the_method_shown_on_that_side(tmp_path):
    db, study_id = make_study(tmp_path)
    invite = study.invite_rater(db, study_id, "Dr A")
    for choice in ("left", "right", "tie", "both_bad"):
        trial = study.next_trial(db, invite.rater_id)
        study.record_vote(db, invite.rater_id, trial.trial_id, choice)
    rows = db.query(
        """SELECT v.choice, v.chosen_method, t.left_method, t.right_method
           FROM votes v JOIN trials t ON t.id = v.trial ORDER BY v.id"""
    )
    assert rows[0]["chosen_method"] == rows[0]["left_method"]
    assert rows[1]["chosen_method"] == rows[1]["right_method"]
    assert rows[2]["chosen_method"] is None and rows[3]["chosen_method"] is None


def test_votes_are_checked(tmp_path):
    db, study_id = make_study(tmp_path)
    a = study.invite_rater(db, study_id, "Dr A")
    b = study.invite_rater(db, study_id, "Dr B")
    trial = study.next_trial(db, a.rater_id)
    with pytest.raises(study.StudyError, match="choice must be one of"):
        study.record_vote(db, a.rater_id, trial.trial_id, "LEFT")
    with pytest.raises(study.StudyError, match="response_ms"):
        study.record_vote(db, a.rater_id, trial.trial_id, "left", response_ms=-5)
    with pytest.raises(study.NotFoundError, match="not one of this rater's trials"):
        study.record_vote(db, b.rater_id, trial.trial_id, "left")
    study.close_study(db, study_id)
    with pytest.raises(study.StudyNotOpenError, match="closed"):
        study.record_vote(db, a.rater_id, trial.trial_id, "left")
    assert db.query("SELECT count(*) AS n FROM votes") == [{"n": 0}]


def test_progress_reports_per_rater_counts(tmp_path):
    db, study_id = make_study(tmp_path, n_images=2)
    a = study.invite_rater(db, study_id, "Dr A", specialty="radiology")
    study.invite_rater(db, study_id, "Dr B")
    for _ in range(3):
        trial = study.next_trial(db, a.rater_id)
        study.record_vote(db, a.rater_id, trial.trial_id, "tie")
    p = study.progress(db, study_id)
    assert p["votes"] == 3 and p["items"] == 2 and p["stimuli"] == 10
    assert [(r["pseudonym"], r["done"], r["total"]) for r in p["raters"]] == [
        ("R01", 3, 22),
        ("R02", 0, 22),
    ]
    assert "display_name" not in json.dumps(p) and "Dr A" not in json.dumps(p)


def test_stimulus_path_resolves_served_names_only(tmp_path):
    db, study_id = make_study(tmp_path)
    invite = study.invite_rater(db, study_id, "Dr A")
    trial = study.next_trial(db, invite.rater_id)
    assert study.stimulus_path(db, trial.left).is_file()
    with pytest.raises(study.NotFoundError):
        study.stimulus_path(db, "../study.db")


@pytest.mark.slow
def test_eight_threads_voting_at_once_lose_nothing(tmp_path):
    # 46 images x 10 pairs + 46 repeats = 506 trials per rater: 500 votes each.
    db, study_id = make_study(tmp_path, n_images=46)
    raters = [study.invite_rater(db, study_id, f"Dr {n}").rater_id for n in range(8)]
    acked: dict[int, str] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(len(raters))

    def rater_session(rater_id: int, n: int) -> None:
        try:
            start.wait()
            for k in range(500):
                trial = study.next_trial(db, rater_id)
                choice = ("left", "right", "tie", "both_bad")[(k + n) % 4]
                study.record_vote(db, rater_id, trial.trial_id, choice, response_ms=k)
                if k % 10 == 0:  # a double click
                    assert study.record_vote(db, rater_id, trial.trial_id, choice).duplicate
                with lock:
                    acked[trial.trial_id] = choice
        except BaseException as exc:  # noqa: BLE001 - every error fails the test
            errors.append(exc)

    threads = [threading.Thread(target=rater_session, args=(r, n)) for n, r in enumerate(raters)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    print(f"\n4000 votes from 8 threads in {elapsed:.1f} s ({4000 / elapsed:.0f} votes/s)")

    assert errors == []
    assert len(acked) == 4000
    stored = {r["trial"]: r["choice"] for r in db.query("SELECT trial, choice FROM votes")}
    assert stored == acked  # nothing lost, nothing extra, every choice as acknowledged
    duplicates = db.query("SELECT trial FROM votes GROUP BY trial HAVING count(*) > 1")
    assert duplicates == []
    assert db.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_active_study_serves_new_pairs_repeats_and_stops_at_its_budget(tmp_path):
    truth = {"a": 0.0, "b": 0.3, "c": 3.0}
    db, study_id = make_study(
        tmp_path, n_images=20, methods=list(truth), design="active", trials_per_rater=20
    )
    keys = {m["id"]: m["key"] for m in study.get_study(db, study_id)["methods"]}
    rng = np.random.default_rng(0)
    raters = [study.invite_rater(db, study_id, f"Dr {n}", seed=n).rater_id for n in range(3)]
    assert db.query("SELECT count(*) AS n FROM trials") == [{"n": 0}]  # nothing planned ahead
    finished = set()
    while len(finished) < len(raters):
        for rater_id in raters:
            trial = study.next_trial(db, rater_id)
            if trial is None:
                finished.add(rater_id)
                continue
            row = db.query(
                "SELECT left_method, right_method FROM trials WHERE id = ?", [trial.trial_id]
            )[0]
            gap = truth[keys[row["left_method"]]] - truth[keys[row["right_method"]]]
            choice = "left" if rng.random() < 1 / (1 + np.exp(-gap)) else "right"
            study.record_vote(db, rater_id, trial.trial_id, choice)
    trials = db.query("SELECT * FROM trials")
    assert Counter(t["rater"] for t in trials) == {r: 20 for r in raters}
    repeats = [t for t in trials if t["is_repeat"]]
    assert len(repeats) == 3 * 2  # every 10th trial
    by_id = {t["id"]: t for t in trials}
    for r in repeats:
        original = by_id[r["repeat_of"]]
        assert (r["left_method"], r["right_method"]) == (
            original["right_method"],
            original["left_method"],
        )
    first = [t for t in trials if not t["is_repeat"]]
    per_rater = Counter(
        (t["rater"], t["item"], frozenset((t["left_method"], t["right_method"]))) for t in first
    )
    assert max(per_rater.values()) == 1  # a rater never sees the same comparison twice
    pairs = Counter(frozenset((keys[t["left_method"]], keys[t["right_method"]])) for t in first)
    assert pairs[frozenset("ab")] > pairs[frozenset("ac")]  # effort goes where it is uncertain


def test_closed_study_serves_no_more_trials(tmp_path):
    db, study_id = make_study(tmp_path)
    invite = study.invite_rater(db, study_id, "Dr A")
    assert study.next_trial(db, invite.rater_id) is not None
    study.close_study(db, study_id)
    assert study.next_trial(db, invite.rater_id) is None
    with pytest.raises(study.StudyNotOpenError):
        study.invite_rater(db, study_id, "Dr B")


def test_a_tinted_stimulus_of_a_gray_item_is_refused(tmp_path):
    db = study.open_db(tmp_path / "data" / "study.db")
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)).save(
        folder / "gray.png"
    )

    def tints_b(image, method):
        out = image.copy()
        if method == "b":
            out[..., 0] *= 0.9  # a colour cast: a rater could spot method b
        return out

    with pytest.raises(study.StudyError, match="grayscale image into colour"):
        study.create_study(db, "t", [folder / "gray.png"], ["a", "b"], tints_b)
