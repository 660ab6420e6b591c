"""The study under load, during a backup and across a SIGKILL, over a real ``python app.py``.

The raters are ``tests/load_harness.py``'s: each speaks the browser's protocol (Gradio's
queue and event stream, the page's own event ids) with its own invite code, and records what
the page acknowledged; afterwards that is checked against the SQLite file. One server
subprocess serves the module (each test makes its own study in the same data folder); the
kill test kills it and starts it again on the same folder and port. Speed is the benchmark's
business: nothing here asserts a latency.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

import study
from study import hub_backup
from study.trials import hash_code
from tests.load_harness import (
    Answer,
    AppServer,
    Ledger,
    LoadRun,
    audit,
    integrity,
    join_queue,
    make_study,
    queue_result,
    stored_votes,
    trial_order,
)

pytestmark = pytest.mark.slow

QUICK = (0.0, 0.05)  # think time, seconds: raters press keys almost at once


def test_the_audit_catches_lost_changed_duplicated_and_unexplained_votes(tmp_path):
    load = make_study(tmp_path / "data", raters=2, items=2, methods=3, image_size=8)
    ledger = Ledger()
    with study.open_db(load.db_path) as db:
        first, second = (study.rater_by_token(db, code)["id"] for code in load.codes)
        for choice in ("left", "tie", "right"):
            trial = study.next_trial(db, first)
            study.record_vote(db, first, trial.trial_id, choice)
            ledger.acked.append(Answer(load.codes[0], trial.left, trial.right, choice, trial.done))
        assert audit(load, ledger).sound
        ledger.acked.append(ledger.acked[-1])  # acknowledged twice: a trial served again
        assert audit(load, ledger).duplicated == 1
        ledger.acked.pop()
        with db.atomic() as tx:
            tx.execute("UPDATE votes SET choice = 'both_bad' WHERE id = 1")
            tx.execute("DELETE FROM votes WHERE id = 2")
        assert audit(load, ledger).lost == 2
        study.record_vote(db, second, study.next_trial(db, second).trial_id, "tie")
        assert audit(load, ledger).unexplained == 1  # stored, though no page saw it sent


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("load") / "data"
    app = AppServer(data).start()
    yield app
    app.stop()


@pytest.fixture
def live(server) -> AppServer:
    if server.process.poll() is not None:  # an earlier test failed with the server down
        server.start()
    return server


def small_study(server: AppServer, seed: int):
    """Eight raters, two tiny images, three methods: 6 or 7 trials each."""
    return make_study(server.data_dir, raters=8, items=2, methods=3, image_size=32, seed=seed)


def small_image(path: Path) -> Path:
    ramp = np.linspace(20, 200, 96, dtype=np.uint8)
    Image.fromarray(np.dstack([np.add.outer(ramp // 2, ramp // 2)] * 3)).save(path)
    return path


def test_eight_raters_and_a_visitor_lose_and_duplicate_nothing(live, tmp_path):
    load = small_study(live, seed=1)
    run = LoadRun(
        live.url,
        load.codes,
        think=QUICK,
        seed=1,
        enhancers=1,
        enhance_methods=["autocontrast"],
        enhance_image=small_image(tmp_path / "visit.png"),
        deadline_s=60,
        workdir=tmp_path,
    ).start()
    ledger = run.join()
    assert ledger.errors == [] and ledger.disconnects == 0 and ledger.enhance_errors == []
    assert ledger.finished == set(load.codes)  # every rater reached the thank-you screen
    assert ledger.enhance_ms  # a visitor enhanced while they voted
    result = audit(load, ledger)
    assert result.sent == result.acked == result.stored == load.planned
    assert (result.lost, result.duplicated, result.unexplained) == (0, 0, 0)
    assert result.integrity == "ok"


def test_a_backup_during_load_holds_every_vote_acknowledged_before_it(live, tmp_path):
    load = small_study(live, seed=2)
    run = LoadRun(live.url, load.codes, think=(0.02, 0.1), seed=2, deadline_s=60).start()
    snapshots = []
    # A second process backing up, as the app's Hub backup thread does, with its function.
    with study.open_db(load.db_path) as db:
        for n, fraction in enumerate((0.3, 0.6)):
            assert run.wait_for_votes(int(load.planned * fraction), timeout=30)
            before = run.ledger.acked_now()
            snapshot = hub_backup.write_snapshot(db, tmp_path / f"snapshot{n}.db")
            snapshots.append((before, snapshot))
    ledger = run.join()
    result = audit(load, ledger)
    assert ledger.errors == [] and ledger.finished == set(load.codes)
    assert result.acked == result.stored == load.planned and result.sound
    final = stored_votes(load.db_path, load.study_id)
    for before, snapshot in snapshots:
        assert integrity(snapshot) == "ok"
        held = stored_votes(snapshot, load.study_id)
        assert len(before) <= len(held) < load.planned  # taken mid-run
        assert all(held.get(a.key, {}).get("choice") == a.choice for a in before)
        assert all(final[key] == vote for key, vote in held.items())


def test_sigkill_mid_run_keeps_every_acknowledged_vote_and_raters_resume(live):
    load = small_study(live, seed=3)
    run = LoadRun(live.url, load.codes, think=QUICK, seed=3, reconnect=True, deadline_s=120)
    run.start()
    assert run.wait_for_votes(load.planned // 3, timeout=30)
    live.kill()
    killed_at = time.monotonic()
    before = run.ledger.acked_now()

    # The file as the dead process left it: sound, every acknowledged vote in it exactly once.
    assert integrity(load.db_path) == "ok"
    at_kill = stored_votes(load.db_path, load.study_id)
    assert all(at_kill.get(a.key, {}).get("choice") == a.choice for a in before)
    assert len(at_kill) <= len(before) + len(load.codes)  # at most one in flight per rater

    live.start()  # same folder, same port; the raters' pages reconnect and re-enter codes
    ledger = run.join()
    result = audit(load, ledger)
    assert ledger.finished == set(load.codes), ledger.errors
    assert ledger.disconnects >= 1  # the kill really cut raters off
    # A page opened before the kill and used after it is told to sign in again: nothing else.
    assert all("invite code again" in message for message in ledger.errors)
    assert result.stored == load.planned and result.sound
    assert result.lost == result.duplicated == result.unexplained == 0

    final = stored_votes(load.db_path, load.study_id)
    order = trial_order(load.db_path, load.study_id)
    rejoins = [j for j in ledger.joins if j.at > killed_at]
    planned = {c: sum(k[0] == hash_code(c) for k in order) for c in load.codes}
    had = {c: sum(k[0] == hash_code(c) for k in at_kill) for c in load.codes}
    assert {j.code for j in rejoins} == {c for c in load.codes if had[c] < planned[c]}
    assert any(j.screen.kind == "trial" for j in rejoins)
    for join in rejoins:
        screen = join.screen
        if screen.kind == "practice":  # nothing answered yet: practice first, as before
            assert join.answered == had[join.code] == 0
            continue
        # Back on the first unanswered trial: what was acknowledged, plus the answer in
        # flight at the kill if (and only if) it was stored.
        assert screen.kind == "trial"
        assert order[(hash_code(join.code), screen.left, screen.right)] == screen.done
        flight = join.in_flight
        if flight is not None and screen.done == join.answered + 1:
            assert final[flight.key]["choice"] == flight.choice
        elif flight is not None:
            assert screen.done == join.answered and (screen.left, screen.right) == (
                flight.left,
                flight.right,
            )
        else:
            assert screen.done == join.answered


def test_two_visitors_enhancing_the_same_file_both_get_results(live, tmp_path):
    # Gradio keeps byte-identical uploads at one path and the app deletes an upload once read:
    # the second visitor is served from the app's short-lived cache of decoded uploads.
    image = tmp_path / "same.png"
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(image)
    with httpx.Client(base_url=live.url, timeout=60) as http:
        paths = [
            http.post("/gradio_api/upload", files={"files": ("same.png", image.read_bytes())})
            .raise_for_status()
            .json()[0]
            for _ in range(2)
        ]
        assert paths[0] == paths[1]  # two uploads, one file
        (enhance,) = [
            d for d in http.get("/config").json()["dependencies"] if d["api_name"] == "enhance"
        ]
        sessions = [secrets.token_hex(6) for _ in paths]
        events = []
        for path, session in zip(paths, sessions, strict=True):
            upload = {"path": path, "orig_name": "same.png", "meta": {"_type": "gradio.FileData"}}
            data = [upload, ["autocontrast"], False, "paper", 0, None, None, None]
            trigger = enhance["targets"][0][0]
            events.append(join_queue(http, enhance["id"], trigger, data, session))
        # Both are queued before the first runs: the enhance queue takes one at a time.
        results = [queue_result(http, s, e) for s, e in zip(sessions, events, strict=True)]
    assert [r["success"] for r in results] == [True, True], results[1]["output"].get("error")
