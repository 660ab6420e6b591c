"""Who may read and answer what: raters, invite codes, the admin token, exports, HTTP callers.

Each refusal is tested where it happens: in the study library (trials, sessions, codes,
withdrawal, the throttle), in the app's callbacks, and in the served app over raw HTTP. In
the served app, "private" endpoints can still be called (``/gradio_api/call/<name>``,
``/gradio_api/queue/join`` with a ``fn_index`` from ``/config``). Hiding them does not
protect them, so each one refuses on its own.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import hashlib
import hmac
import io
import json
import os
import re
import secrets
import sqlite3
import zipfile
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import app
import study
import study.trials
from study import __main__ as study_cli
from study import session as rs
from study.export import EXPORT_FILES, FORMULA_PREFIXES
from study.throttle import Throttle, TooManyAttemptsError
from tests.conftest import served_app
from tests.test_study_support import fake_enhance, make_study, write_images
from webapp import access, common, results, study_page

METHODS = ["a", "b", "c"]
# Few, quick examples: each one is a real transaction on a real database file.
PROPERTY = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def from_address(host: str, session: str = "tab-1") -> SimpleNamespace:
    """What a callback receives as ``gr.Request`` for a visitor at ``host`` (its ``client``)
    from the browser session ``session``."""
    return SimpleNamespace(client=SimpleNamespace(host=host), session_hash=session)


def vote_count(db) -> int:
    return db.query("SELECT count(*) AS n FROM votes")[0]["n"]


def trial_ids(db, rater_id: int) -> list[int]:
    rows = db.query("SELECT id FROM trials WHERE rater = ? ORDER BY order_index", [rater_id])
    return [r["id"] for r in rows]


@pytest.fixture
def panel(tmp_path):
    """An open study (2 images x 3 methods = 6 trials each, no repeats) and raters A and B."""
    db, study_id = make_study(tmp_path, n_images=2, methods=METHODS, repeat_fraction=0.0)
    a = study.invite_rater(db, study_id, "Dr A", specialty="radiology")
    b = study.invite_rater(db, study_id, "Dr B")
    return db, study_id, a, b


@pytest.fixture
def app_study(tmp_path, monkeypatch):
    """A study in the app's database, with no practice screens; returns (db, id, invite)."""
    monkeypatch.setenv("DPE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(study_page, "_practice", lambda: ())
    fresh_throttles(monkeypatch)
    db = common.db()
    images = write_images(tmp_path / "images", 2)
    study_id = study.create_study(db, "App study", images, METHODS, fake_enhance)
    return db, study_id, study.invite_rater(db, study_id, "Dr A")


# ---------------------------------------------------------------- raters and their trials


def test_a_rater_is_served_and_may_answer_only_their_own_trials(panel):
    db, _, a, b = panel
    own, others = trial_ids(db, a.rater_id), trial_ids(db, b.rater_id)
    served = []
    while (trial := study.next_trial(db, a.rater_id)) is not None and len(served) < 3:
        served.append(trial.trial_id)
        study.record_vote(db, a.rater_id, trial.trial_id, "tie")
    assert served == own[:3]  # next_trial reads the rater's own plan, in order
    for trial_id in others:  # another rater's real trials
        with pytest.raises(study.NotFoundError, match="not one of this rater's trials"):
            study.record_vote(db, a.rater_id, trial_id, "left")
    forged = [0, -1, max(own + others) + 1, 2**63, 2**70, True, 1.0, float(own[4]), None]
    forged += [str(own[4]), [own[4]], {"id": own[4]}]
    for trial_id in forged:
        with pytest.raises(study.NotFoundError):
            study.record_vote(db, a.rater_id, trial_id, "left")
    for rater_id in [9999, 0, -1, 2**70, str(a.rater_id), None]:  # an unknown or forged rater
        with pytest.raises(study.NotFoundError):
            study.record_vote(db, rater_id, own[4], "left")
        with pytest.raises(study.NotFoundError):
            study.next_trial(db, rater_id)
    assert vote_count(db) == 3
    assert db.query("SELECT DISTINCT t.rater FROM votes v JOIN trials t ON t.id = v.trial") == [
        {"rater": a.rater_id}
    ]


def test_an_answer_needs_its_own_screens_token(panel):
    db, _, a, b = panel
    sa, sb = rs.join(db, a.code), rs.join(db, b.code)
    assert re.fullmatch(r"[0-9a-f]{16}\.[0-9a-f]{32}", sa.token) and sa.token != sb.token
    changed = sa.token[:-1] + ("1" if sa.token[-1] == "0" else "0")
    foreign = [sb.token, changed, sa.token[:-1], sa.token + " ", " " + sa.token]
    malformed = [None, "", 0, 1234, b"bytes", sa.token.encode(), [sa.token], "é" * 16, "\ud800"]
    for token in foreign + malformed:
        with pytest.raises(rs.StaleScreenError):  # nothing happens, nothing is shown
            rs.answer(db, sa, token, "left")
    for choice in ["LEFT", "left ", "", "both bad", "a", None, 1, b"left", ("left",)]:
        with pytest.raises(study.StudyError, match="choice must be one of"):
            rs.answer(db, sa, sa.token, choice)
    assert vote_count(db) == 0
    after = rs.answer(db, sa, sa.token, "left")
    with pytest.raises(rs.StaleScreenError):
        rs.answer(db, after, sa.token, "right")  # the spent token, replayed
    assert rs.answer(db, sa, sa.token, "right").note  # a second tab: told, not recorded
    assert vote_count(db) == 1
    assert [r["choice"] for r in db.query("SELECT choice FROM votes")] == ["left"]


def test_a_tampered_session_cannot_vote_for_someone_else(panel):
    # Sessions live in gr.State, on the server: a browser never holds one (see the HTTP tests
    # below). Were one forged anyway, the database still checks whose trial it is.
    db, _, a, b = panel
    sa = rs.join(db, a.code)
    as_b = dataclasses.replace(sa, rater=b.rater_id)  # A's trial on screen, signed as B
    with pytest.raises(study.NotFoundError, match="not one of this rater's trials"):
        rs.answer(db, as_b, as_b.token, "left")
    b_trial = trial_ids(db, b.rater_id)[0]
    other_screen = dataclasses.replace(sa, screen=dataclasses.replace(sa.screen, trial_id=b_trial))
    with pytest.raises(study.NotFoundError, match="not one of this rater's trials"):
        rs.answer(db, other_screen, other_screen.token, "left")
    nobody = dataclasses.replace(sa, rater=10**6)
    with pytest.raises(study.NotFoundError):
        rs.answer(db, nobody, nobody.token, "left")
    assert vote_count(db) == 0


# ---------------------------------------------------------------- invite codes


def test_invite_codes_carry_at_least_128_random_bits(panel, monkeypatch):
    db, study_id, _, _ = panel
    asked = []
    real = secrets.token_urlsafe

    def spy(nbytes=None):
        asked.append(nbytes)
        return real(nbytes)

    monkeypatch.setattr(study.trials.secrets, "token_urlsafe", spy)
    codes = [study.invite_rater(db, study_id, f"Dr {n}").code for n in range(20)]
    assert asked == [study.trials.INVITE_BYTES] * 20 and study.trials.INVITE_BYTES >= 16
    for code in codes:
        assert re.fullmatch(r"[A-Za-z0-9_-]{22,}", code)
        assert len(base64.urlsafe_b64decode(code + "=" * (-len(code) % 4))) >= 16
    assert len(set(codes)) == len(codes)


def test_invite_codes_are_stored_only_as_hashes(panel, tmp_path):
    db, study_id, a, b = panel
    for invite in (a, b):  # sign in, vote, update the profile: nothing may write the code
        s = rs.join(db, invite.code)
        rs.answer(db, s, s.token, "left")
        study.update_rater(db, invite.rater_id, years_experience=3)
    stored = {r["token_hash"] for r in db.query("SELECT token_hash FROM raters")}
    assert stored == {hashlib.sha256(c.encode()).hexdigest() for c in (a.code, b.code)}
    db.close()
    files = [p for p in (tmp_path / "data").rglob("*") if p.is_file()]
    assert any(p.name == "study.db" for p in files)
    for path in files:  # the database, its WAL and shared memory, every image
        data = path.read_bytes()
        for code in (a.code, b.code):
            assert code.encode() not in data, path.name


def test_codes_and_tokens_are_compared_in_constant_time(panel, monkeypatch):
    # Invite codes are looked up by their sha256 digest (an indexed SQL equality), never
    # compared as text: a guess's timing says nothing about the stored code, since no one
    # can choose a guess whose digest shares a prefix with it. Every direct comparison of a
    # secret (screen tokens, the admin token) goes through hmac.compare_digest.
    db, _, a, _ = panel
    compared = []
    real = hmac.compare_digest

    def spy(x, y):
        compared.append((type(x), type(y)))
        return real(x, y)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    s = rs.join(db, a.code)
    rs.answer(db, s, s.token, "left")
    assert compared == [(bytes, bytes)]
    monkeypatch.setenv("DPE_ADMIN_TOKEN", "s3cret")
    with pytest.raises(gr.Error, match="not right"):
        access.require_admin("s3creT")
    access.require_admin("s3cret")
    assert compared[1:] == [(bytes, bytes)] * 2


def test_withdrawn_code_is_refused_at_sign_in_and_in_open_sessions(panel, tmp_path):
    db, study_id, a, b = panel
    practice = [tuple(write_images(tmp_path / "practice", 3))]
    on_practice = rs.join(db, a.code, practice)
    s = rs.join(db, a.code)
    s = rs.answer(db, s, s.token, "left")  # one vote before the code is withdrawn
    sb = rs.join(db, b.code)

    withdrawn = study.revoke_rater(db, study_id, " r01 ")
    assert withdrawn["pseudonym"] == "R01" and withdrawn["votes"] == 1 and withdrawn["revoked"]
    for refused in (
        lambda: rs.join(db, a.code),
        lambda: study.rater_by_token(db, a.code),
        lambda: rs.answer(db, s, s.token, "right"),  # the trial on screen
        lambda: rs.answer(db, on_practice, on_practice.token, "left"),  # a practice screen
        lambda: rs.resume(db, s),
        lambda: rs.profile(db, s),
        lambda: study.next_trial(db, a.rater_id),
        lambda: study.record_vote(db, a.rater_id, s.screen.trial_id, "right"),
        lambda: study.update_rater(db, a.rater_id, specialty="x"),
    ):
        with pytest.raises(study.RaterRevokedError, match="withdrawn by the study team"):
            refused()
    assert issubclass(study.RaterRevokedError, study.InvalidInviteError)  # counts as wrong
    rs.answer(db, sb, sb.token, "tie")  # the other rater is not affected
    assert list(study.load_votes(db, study_id)["rater"]) == ["R01", "R02"]  # votes stay

    again = study.revoke_rater(db, study_id, "R01")  # twice: nothing changes
    assert again["revoked"] == withdrawn["revoked"]
    kinds = [e["kind"] for e in db.query("SELECT kind FROM events")]
    assert kinds.count("rater_revoked") == 1
    raters = study.progress(db, study_id)["raters"]
    assert [(r["pseudonym"], bool(r["revoked"])) for r in raters] == [("R01", True), ("R02", False)]
    with pytest.raises(study.NotFoundError, match="no rater 'R09'"):
        study.revoke_rater(db, study_id, "R09")
    with pytest.raises(study.NotFoundError):
        study.revoke_rater(db, "nosuchstudy", "R02")


def test_cli_withdraws_a_code(tmp_path, monkeypatch, capsys):
    # In this process (tests/test_study_cli.py runs the CLI as a subprocess; here speed wins).
    db, study_id = make_study(tmp_path, n_images=1, methods=METHODS)
    code = study.invite_rater(db, study_id, "Dr A").code
    db.close()
    monkeypatch.setenv("DPE_DATA_DIR", str(tmp_path / "data"))
    assert study_cli.main(["revoke", study_id, "R01"]) == 0
    out = capsys.readouterr().out
    assert "R01's invite code is withdrawn" in out and "0 votes stay" in out
    assert study_cli.main(["status", study_id]) == 0
    assert "code withdrawn" in capsys.readouterr().out
    with study.open_db(tmp_path / "data" / "study.db") as db:
        with pytest.raises(study.RaterRevokedError):
            rs.join(db, code)
    assert study_cli.main(["revoke", study_id, "R07"]) == 2
    assert "error: study" in capsys.readouterr().err


def test_results_page_withdraws_a_code(app_study, monkeypatch):
    db, study_id, invite = app_study
    monkeypatch.setenv("DPE_ADMIN_TOKEN", "s3cret")
    study_page.join_study(invite.code)
    with pytest.raises(gr.Error, match="not right"):
        results.revoke("wrong", study_id, "R01")
    with pytest.raises(gr.Error, match="Choose a study"):
        results.revoke("s3cret", None, "R01")
    assert "R01" in results.revoke("s3cret", study_id, "R01")
    assert "withdrawn" in study_page.join_study(invite.code)["message"]


# ---------------------------------------------------------------- slowing down guesses


def test_throttle_locks_a_client_out_with_a_doubling_wait():
    clock = Clock()
    t = Throttle(free=3, window=100, base_delay=1, max_delay=8, clock=clock)
    assert [t.failed("x") for _ in range(2)] == [0, 0]
    t.check("x")  # the first wrong tries cost nothing
    waits = []
    for _ in range(5):
        waits.append(t.failed("x"))
        with pytest.raises(TooManyAttemptsError, match="wait") as refused:
            t.check("x")
        assert refused.value.retry_after == waits[-1]
        t.check("y")  # other clients are not affected
        clock.now += waits[-1]
        t.check("x")
    assert waits == [1, 2, 4, 8, 8]  # doubling, capped at max_delay
    t.succeeded("x")  # a right code forgets the wrong ones
    assert t.failed("x") == 0


def test_throttle_forgets_old_failures_and_stays_small():
    clock = Clock()
    t = Throttle(free=2, window=60, max_clients=100, clock=clock)
    assert [t.failed("x") for _ in range(2)] == [0, 1]
    clock.now += 61  # failures older than the window no longer count
    assert [t.failed("x") for _ in range(2)] == [0, 1]
    for n in range(1000):  # a guesser with many addresses cannot grow the table
        t.failed(f"10.0.{n // 256}.{n % 256}")
    assert len(t) == 100
    t.check("x")  # the least recently seen were forgotten first
    assert [t.failed(None) for _ in range(10)] == [0] * 10  # in-process calls: never throttled
    t.check(None)


def test_throttle_guard_counts_only_wrong_codes():
    clock = Clock()
    t = Throttle(free=1, clock=clock)
    with pytest.raises(KeyError):
        with t.guard("x", study.InvalidInviteError):
            raise KeyError("a bug, not a guess")
    t.check("x")
    with pytest.raises(study.InvalidInviteError):
        with t.guard("x", study.InvalidInviteError):
            raise study.InvalidInviteError("wrong")
    with pytest.raises(TooManyAttemptsError):
        with t.guard("x", study.InvalidInviteError):
            pytest.fail("a locked-out client must not get as far as checking a code")
    clock.now += 1
    with t.guard("x", study.InvalidInviteError):
        pass  # the right code
    assert len(t) == 0
    for bad in ({"free": 0}, {"window": 0}, {"base_delay": 5, "max_delay": 1}, {"max_clients": 0}):
        with pytest.raises(ValueError):
            Throttle(**bad)


def joined(view: dict) -> bool:
    return view.get("session") is not None


def test_repeated_wrong_invite_codes_must_wait(app_study, monkeypatch):
    _, _, invite = app_study
    clock = Clock()
    monkeypatch.setattr(access, "JOIN_ATTEMPTS", Throttle(clock=clock))
    guesser, neighbour = from_address("203.0.113.7"), from_address("198.51.100.2")
    for n in range(5):
        assert "not valid" in study_page.join_study(f"guess-{n}", guesser)["message"]
    waits = study_page.join_study(invite.code, guesser)  # even the right code waits
    assert "Too many wrong codes" in waits["message"] and not joined(waits)
    for _ in range(10):  # an empty field is not a guess
        assert "Enter the invite code" in study_page.join_study("  ", neighbour)["message"]
    assert study_page.join_study(invite.code, neighbour)["session"].rater == invite.rater_id
    clock.now += 1
    assert study_page.join_study(invite.code, guesser)["session"].rater == invite.rater_id
    assert "not valid" in study_page.join_study("guess-6", guesser)["message"]  # count reset


def test_one_colleagues_typos_never_lock_out_another_behind_the_same_address(
    app_study, monkeypatch
):
    # A hospital's departments share one NAT address: wrong codes count per browser session,
    # and only a high ceiling per address (a guesser opening a fresh session per try) is shared.
    _, _, invite = app_study
    clock = Clock()
    monkeypatch.setattr(access, "JOIN_ATTEMPTS", Throttle(clock=clock))
    ceiling = Throttle(free=30, clock=clock, message=access.NETWORK_WRONG)
    monkeypatch.setattr(access, "JOIN_CEILING", ceiling)
    typist, colleague = from_address("10.0.0.1", "tab-a"), from_address("10.0.0.1", "tab-b")
    for n in range(10):
        study_page.join_study(f"typo-{n}", typist)
    assert (
        "Too many wrong codes from this browser"
        in study_page.join_study(invite.code, typist)["message"]
    )
    assert joined(study_page.join_study(invite.code, colleague))  # at once, same address
    for n in range(30):  # a script with a fresh session for every guess hits the ceiling
        study_page.join_study(f"guess-{n}", from_address("10.0.0.1", f"script-{n}"))
    capped = study_page.join_study(invite.code, from_address("10.0.0.1", "tab-c"))
    assert "many wrong codes from your network" in capped["message"] and not joined(capped)
    assert joined(study_page.join_study(invite.code, from_address("10.0.0.2", "tab-d")))


def test_repeated_wrong_admin_tokens_must_wait(app_study, monkeypatch):
    monkeypatch.setenv("DPE_ADMIN_TOKEN", "s3cret")
    clock = Clock()
    wording = access.ADMIN_WRONG
    monkeypatch.setattr(access, "ADMIN_ATTEMPTS", Throttle(clock=clock, message=wording))
    guesser = from_address("203.0.113.7")
    for token in ["a", "b", "c", None, "\ud800"]:
        with pytest.raises(gr.Error, match="not right"):
            results.open_results(token, guesser)
    # Its own wording (not a rater's "wrong codes"), and its own count: raters who share the
    # researcher's address are not slowed down by it.
    with pytest.raises(gr.Error, match="Too many wrong admin tokens from this browser"):
        results.open_results("s3cret", guesser)
    with pytest.raises(gr.Error, match="Too many wrong admin tokens"):
        results.export_results("s3cret", None, guesser)  # every researcher call is guarded
    _, _, invite = app_study
    assert joined(study_page.join_study(invite.code, guesser))
    assert results.open_results("s3cret", from_address("198.51.100.2"))[0].visible
    assert results.open_results("s3cret", from_address("203.0.113.7", "tab-2"))[0].visible
    clock.now += 1
    assert results.open_results("s3cret", guesser)[0].visible


# ---------------------------------------------------------------- exports

HOSTILE = [
    '=HYPERLINK("http://x","y")',
    "+cmd",
    "-1+1",
    "@SUM(A1)",
    "\t=1+1",
    "\r=1+1",
    "\t@SUM(A1)",
    "\r+cmd",
]


def test_exports_hold_no_codes_hashes_names_admin_token_or_other_studies(
    app_study, monkeypatch, tmp_path
):
    db, study_id, invite = app_study
    admin = "admin-" + secrets.token_hex(16)
    monkeypatch.setenv("DPE_ADMIN_TOKEN", admin)
    invites = [invite] + [study.invite_rater(db, study_id, f"Dr Hidden{n}") for n in range(2)]
    other_images = write_images(tmp_path / "other", 1)
    other = study.create_study(db, "Other Secret Study", other_images, ["x", "y"], fake_enhance)
    outsider = study.invite_rater(db, other, "Dr Outsider", specialty="Outsider-specialty")
    for rater in [*invites, outsider]:
        s = rs.join(db, rater.code)
        for choice in ["left", "right"]:
            if s.screen is not None:
                s = rs.answer(db, s, s.token, choice)
    forbidden = {admin, "Dr A", "Dr Hidden0", "Dr Hidden1", "Dr Outsider", other}
    forbidden |= {"Other Secret Study", "Outsider-specialty"}
    for rater in [*invites, outsider]:
        forbidden |= {rater.code, hashlib.sha256(rater.code.encode()).hexdigest()}

    archive = Path(results.export_results(admin, study_id))
    raw = archive.read_bytes()
    with zipfile.ZipFile(archive) as zf:
        members = {Path(name).name: zf.read(name) for name in zf.namelist()}
    assert set(members) == set(EXPORT_FILES)
    for name, data in [*members.items(), (archive.name, raw)]:
        for secret in forbidden:
            assert secret.encode() not in data, (name, secret)
    snapshot = archive.parent / "snapshot.db"
    snapshot.write_bytes(members["study.db"])
    conn = sqlite3.connect(snapshot)
    assert conn.execute("SELECT id FROM studies").fetchall() == [(study_id,)]
    assert conn.execute("SELECT count(*) FROM votes").fetchone() == (6,)
    hashes = {h for (h,) in conn.execute("SELECT token_hash FROM raters")}
    assert all(h.startswith("removed-") for h in hashes) and len(hashes) == 3
    conn.close()
    votes = list(csv.DictReader(io.StringIO(members["votes.csv"].decode())))
    assert [v["rater"] for v in votes] == ["R01", "R01", "R02", "R02", "R03", "R03"]


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def test_no_exported_csv_cell_can_start_a_formula(tmp_path):
    db = study.open_db(tmp_path / "data" / "study.db")
    paths = write_images(tmp_path / "images", 2)
    images = [
        study.SourceImage(paths[0], modality=HOSTILE[3], name=HOSTILE[0] + ".png"),
        study.SourceImage(paths[1], modality=HOSTILE[6], name=HOSTILE[4] + ".png"),
    ]
    keys = HOSTILE[:3]  # method keys
    labels = dict(zip(keys, HOSTILE[3:6], strict=True))
    study_id = study.create_study(db, HOSTILE[0], images, keys, fake_enhance, labels=labels)
    for n, specialty in enumerate(HOSTILE[:4]):
        rater = study.invite_rater(db, study_id, HOSTILE[n], specialty=specialty, seed=n)
        while (trial := study.next_trial(db, rater.rater_id)) is not None:
            study.record_vote(db, rater.rater_id, trial.trial_id, "left", response_ms=5)
    written = study.export_study(db, study_id, tmp_path / "out", n_boot=20)
    cells = []
    for path in written.values():
        if path.suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as f:
                cells += [cell for row in csv.reader(f) for cell in row]
    unsafe = [c for c in cells if c.startswith(FORMULA_PREFIXES) and not _is_number(c)]
    assert unsafe == []
    # The hostile values did reach the export, escaped: the check above is not vacuous.
    expected = {*keys, *labels.values(), HOSTILE[3], HOSTILE[6], HOSTILE[0] + ".png"}
    expected |= {HOSTILE[4] + ".png", *HOSTILE[:4]}
    assert {"'" + value for value in expected} <= set(cells)
    assert any(c.startswith("-") and _is_number(c) for c in cells)  # numbers stay numbers


# ---------------------------------------------------------------- properties of the vote path

ANYTHING = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
    st.binary(max_size=8),
    st.lists(st.integers(), max_size=2),
)


@pytest.fixture(scope="module")
def arena(tmp_path_factory):
    """A study with raters A and B (12 trials each) shared by the property tests."""
    db, study_id = make_study(
        tmp_path_factory.mktemp("arena"), n_images=4, methods=METHODS, repeat_fraction=0.0
    )
    a = study.invite_rater(db, study_id, "Dr A")
    b = study.invite_rater(db, study_id, "Dr B")
    yield db, a, b, trial_ids(db, a.rater_id), trial_ids(db, b.rater_id)
    db.close()


def assert_only_valid_votes(db, rater_id: int) -> None:
    rows = db.query(
        """SELECT v.choice, v.chosen_method, v.response_ms, v.client_ts, t.rater,
                  t.left_method, t.right_method
           FROM votes v JOIN trials t ON t.id = v.trial"""
    )
    for row in rows:
        assert row["rater"] == rater_id
        assert row["choice"] in study.CHOICES
        side = {"left": row["left_method"], "right": row["right_method"]}
        assert row["chosen_method"] == side.get(row["choice"])
        ms = row["response_ms"]
        assert ms is None or (type(ms) is int and 0 <= ms <= study.trials.MAX_RESPONSE_MS)
        assert row["client_ts"] is None or (
            isinstance(row["client_ts"], str) and len(row["client_ts"]) <= 64
        )


@PROPERTY
@given(
    data=st.data(),
    choice=st.one_of(st.sampled_from(study.CHOICES), st.text(max_size=12), ANYTHING),
    response_ms=st.one_of(
        st.none(), st.integers(min_value=0, max_value=10**6), st.integers(), ANYTHING
    ),
    client_ts=st.one_of(st.none(), st.text(max_size=80), ANYTHING),
)
def test_record_vote_stores_a_valid_vote_or_says_why(arena, data, choice, response_ms, client_ts):
    db, a, _, own, others = arena
    trial_id = data.draw(
        st.one_of(st.sampled_from(own), st.sampled_from(others), st.integers(), ANYTHING)
    )
    before = vote_count(db)
    try:
        vote = study.record_vote(
            db, a.rater_id, trial_id, choice, response_ms=response_ms, client_ts=client_ts
        )
    except study.StudyError:
        assert vote_count(db) == before
    else:
        assert trial_id in own and choice in study.CHOICES
        stored = db.query(
            "SELECT choice, response_ms, client_ts FROM votes WHERE trial = ?", [trial_id]
        )
        assert len(stored) == 1 and stored[0]["choice"] == vote.choice == choice
        assert vote_count(db) == before + (0 if vote.duplicate else 1)
        if not vote.duplicate:
            assert (stored[0]["response_ms"], stored[0]["client_ts"]) == (response_ms, client_ts)
    assert_only_valid_votes(db, a.rater_id)


@PROPERTY
@given(
    use_real_token=st.booleans(),
    token=st.one_of(st.text(max_size=20), ANYTHING),
    choice=st.one_of(st.sampled_from(study.CHOICES), st.text(max_size=12), ANYTHING),
)
def test_a_screen_takes_an_answer_only_with_its_token(arena, use_real_token, token, choice):
    db, _, b, _, _ = arena
    s = rs.join(db, b.code)
    sent = s.token if use_real_token else token
    before = vote_count(db)
    counted = sent == s.token and s.screen is not None
    try:
        rs.answer(db, s, sent, choice)
    except rs.StaleScreenError:
        assert not counted and vote_count(db) == before
        return
    except study.StudyError:
        assert not isinstance(choice, str) or choice not in study.CHOICES
        assert vote_count(db) == before
        return
    assert counted and vote_count(db) == before + 1


@PROPERTY
@given(code=st.one_of(st.text(max_size=40), st.text(min_size=300, max_size=400), ANYTHING))
def test_any_other_text_is_not_an_invite_code(arena, code):
    db = arena[0]
    with pytest.raises(study.InvalidInviteError):
        rs.join(db, code)


# ---------------------------------------------------------------- the served app over HTTP

PUBLIC = {"enhance"}
ENHANCE_PAGE = {"load_upload", "load_reference", "load_example", "method_choices"}
NO_SESSION_NEEDED = {"restore_code", "results_intro", "enable_answers", "enable_profile"}
NO_SESSION_NEEDED |= {"forget_me", "lock_profile"}
RATER = {"join_study", "vote_left", "vote_right", "vote_tie", "vote_both_bad", "pause"}
RATER |= {"resume", "show_profile", "save_profile"}
ADMIN = {"open_results", "refresh_studies", "show_results", "export_results", "close_selected"}
ADMIN |= {"invite", "create_study", "revoke", "ask_to_close", "reopen_selected"}
NO_SESSION_NEEDED |= {"cancel_close"}


def base_name(api_name: str) -> str:
    """An event's function: Gradio names a second event of ``show_results`` show_results_1."""
    return re.sub(r"_\d+$", "", api_name)


def test_every_backend_function_is_accounted_for():
    # A new event must be added to one of these sets, and so to the checks below.
    names = {base_name(fn.api_name) for fn in app.demo.fns.values() if fn.fn is not None}
    assert names == PUBLIC | ENHANCE_PAGE | NO_SESSION_NEEDED | RATER | ADMIN
    public = {fn.api_name for fn in app.demo.fns.values() if fn.api_visibility != "private"}
    assert public == PUBLIC
    # The rater's session is gr.State, kept on the server; what the browser keeps
    # (gr.BrowserState, forgeable) is read to refill the invite-code field and, after a
    # restart, by a vote to sign in again: a code checked like any typed one.
    voting = next(fn for fn in app.demo.fns.values() if fn.api_name == "vote_left")
    session = voting.inputs[0]
    assert isinstance(session, gr.State) and not isinstance(session, gr.BrowserState)
    kept = [b for b in app.demo.blocks.values() if isinstance(b, gr.BrowserState)]
    readers = {
        base_name(fn.api_name) for fn in app.demo.fns.values() for b in kept if b in fn.inputs
    }
    votes = {"vote_left", "vote_right", "vote_tie", "vote_both_bad"}
    assert kept and readers == {"restore_code", *votes}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app on 127.0.0.1, launched as ``python app.py`` launches it, over one open study."""
    data = tmp_path_factory.mktemp("served")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DPE_DATA_DIR", str(data))
        mp.setenv("DPE_ADMIN_TOKEN", "admin-" + secrets.token_hex(16))
        mp.setattr(study_page, "_practice", lambda: ())
        db = common.db()
        images = write_images(data / "images", 2)
        study_id = study.create_study(db, "Served study", images, METHODS, fake_enhance)
        with served_app(allowed_paths=[str(db.media_root)]) as url:
            yield SimpleNamespace(url=url, db=db, study_id=study_id)


@pytest.fixture(name="fresh_throttles")
def fresh_throttles_fixture(monkeypatch):
    """Each HTTP test starts with no wrong attempts counted against 127.0.0.1."""
    fresh_throttles(monkeypatch)


def fresh_throttles(monkeypatch) -> None:
    monkeypatch.setattr(access, "JOIN_ATTEMPTS", Throttle())
    monkeypatch.setattr(access, "JOIN_CEILING", Throttle(free=1000))
    monkeypatch.setattr(access, "ADMIN_ATTEMPTS", Throttle(free=1000))
    monkeypatch.setattr(access, "ADMIN_CEILING", Throttle(free=1000))


def call(server, name: str, *data) -> tuple[str, object]:
    """POST /gradio_api/call/<name> as any HTTP client can; ("complete", outputs) or
    ("error", message)."""
    posted = httpx.post(f"{server.url}gradio_api/call/{name}", json={"data": list(data)})
    assert posted.status_code == 200, posted.text
    event_id = posted.json()["event_id"]
    reply = httpx.get(f"{server.url}gradio_api/call/{name}/{event_id}", timeout=60).text
    kind = re.findall(r"^event: (\w+)", reply, re.M)[-1]
    payload = json.loads(re.findall(r"^data: (.*)$", reply, re.M)[-1])
    if kind == "error":
        return kind, (payload or {}).get("error")
    return kind, payload


def queue_call(server, api_name: str, data: list, session_hash: str) -> dict:
    """Join the queue as the browser does: a fn_index read from /config, a session hash."""
    config = httpx.get(f"{server.url}config", timeout=30).json()
    fn_index = next(d["id"] for d in config["dependencies"] if d["api_name"] == api_name)
    body = {"data": data, "fn_index": fn_index, "session_hash": session_hash}
    body |= {"event_data": None, "trigger_id": None}
    joined = httpx.post(f"{server.url}gradio_api/queue/join", json=body, timeout=30)
    assert joined.status_code == 200, joined.text
    event_id = joined.json()["event_id"]
    url = f"{server.url}gradio_api/queue/data?session_hash={session_hash}"
    with httpx.stream("GET", url, timeout=60) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    assert message["event_id"] == event_id
                    return message
    raise AssertionError(f"{api_name}: the queue closed without completing")


def db_state(db) -> list:
    tables = ["studies", "raters", "trials", "votes"]
    counts = [db.query(f"SELECT count(*) AS n FROM {t}")[0]["n"] for t in tables]
    profiles = db.query("SELECT specialty, years_experience, revoked FROM raters")
    return [counts, profiles]


def test_admin_functions_refuse_http_callers_without_the_token(server, fresh_throttles):
    admin = os.environ["DPE_ADMIN_TOKEN"]
    study.invite_rater(server.db, server.study_id, "Dr Admin-test")
    before = db_state(server.db)
    endpoints = {}
    for fn in app.demo.fns.values():
        if base_name(fn.api_name) in ADMIN:
            endpoints.setdefault(base_name(fn.api_name), fn)
    assert set(endpoints) == ADMIN
    wrong = [None, "", "wrong", admin[:-1], admin + " ", admin.upper()]
    tried = []
    for n, (name, fn) in enumerate(sorted(endpoints.items())):
        # Every function once (the tokens in turn), and the sign-in with every token.
        for token in wrong if name == "open_results" else [wrong[n % len(wrong)]]:
            # The other inputs as a freshly loaded page sends them.
            rest = [getattr(block, "value", None) for block in fn.inputs[1:]]
            kind, message = call(server, fn.api_name, token, *rest)
            assert (kind, message) == ("error", "That admin token is not right."), name
            tried.append(name)
    assert set(tried) == ADMIN and db_state(server.db) == before
    kind, outputs = call(server, "show_results", admin, None)  # the right token does work
    assert kind == "complete" and "No study yet" in outputs[0]


def test_rater_functions_refuse_http_callers_without_a_session(server, fresh_throttles):
    invite = study.invite_rater(server.db, server.study_id, "Dr Session-test")
    forged = {"rater": invite.rater_id, "token": "x", "screen": {"trial_id": 1}}
    before = db_state(server.db)
    kind, outputs = call(server, "join_study", "not-a-code", "")
    assert kind == "complete" and "not valid" in json.dumps(outputs)
    votes = ["vote_left", "vote_right", "vote_tie", "vote_both_bad"]
    for name, session in zip(votes, [None, forged, json.dumps(forged), "x"], strict=True):
        # No session: the sign-in form comes back with a message (no pop-up), nothing else.
        kind, outputs = call(server, name, session, "0" * 16, None, None)
        assert kind == "complete" and "restarted" in json.dumps(outputs)
        assert ".png" not in json.dumps(outputs) and "Served study" not in json.dumps(outputs)
        # A forged "remembered" code is checked like any typed code.
        kind, outputs = call(server, name, session, "0" * 16, "forged-code", None)
        assert kind == "complete" and "not valid" in json.dumps(outputs)
    kind, outputs = call(server, "save_profile", forged, "x", 3)
    assert kind == "complete" and "session has ended" in outputs[0]
    # A forged remembered code fills the field; it signs nothing in.
    kind, outputs = call(server, "restore_code", "forged-remembered-code", "", "")
    assert kind == "complete" and outputs[-1] == "forged-remembered-code"
    assert ".png" not in json.dumps(outputs)
    # A tab that says it was signed in: the forged code is checked like a typed one.
    kind, outputs = call(server, "restore_code", "forged-remembered-code", "", "1")
    assert kind == "complete" and "not valid" in json.dumps(outputs)
    for name, args in [("pause", [forged]), ("resume", [forged]), ("show_profile", [forged])]:
        kind, outputs = call(server, name, *args)
        assert kind == "complete"
        shown = json.dumps(outputs)
        assert ".png" not in shown and "Served study" not in shown  # no trial, no study
    assert db_state(server.db) == before


def test_the_session_stays_on_the_server_and_forged_state_is_ignored(server, fresh_throttles):
    invite = study.invite_rater(server.db, server.study_id, "Dr State-test")
    mine, theirs = secrets.token_hex(6), secrets.token_hex(6)
    joined = queue_call(server, "join_study", [invite.code, ""], mine)
    assert joined["success"]
    session_out, token = joined["output"]["data"][:2]
    assert session_out is None and re.fullmatch(r"[0-9a-f]{16}\.[0-9a-f]{32}", token)
    forged = {"rater": 1, "token": token, "screen": {"kind": "trial", "trial_id": 1}}
    before = vote_count(server.db)
    # A wrong screen token (a leaked session id alone): nothing kept, nothing sent back, in
    # particular neither the valid token nor the images.
    wrong = queue_call(server, "vote_left", [forged, "0" * 16, None, None], mine)
    assert wrong["success"] and token not in json.dumps(wrong["output"])
    assert ".png" not in json.dumps(wrong["output"])
    # The screen token without the session (another browser): asked to sign in, no vote.
    elsewhere = queue_call(server, "vote_left", [forged, token, None, None], theirs)
    assert elsewhere["success"] and "restarted" in json.dumps(elsewhere["output"])
    assert ".png" not in json.dumps(elsewhere["output"])
    assert vote_count(server.db) == before
    # The browser's value for the session is ignored: the server's own session votes.
    counted = queue_call(server, "vote_right", ["anything", token, None, 1234], mine)
    assert counted["success"] and counted["output"]["data"][1] != token
    rows = server.db.query(
        "SELECT t.rater, v.choice, v.reading_ms FROM votes v JOIN trials t ON t.id = v.trial"
        " ORDER BY v.id"
    )
    assert len(rows) == before + 1
    assert rows[-1] == {"rater": invite.rater_id, "choice": "right", "reading_ms": 1234}


def test_the_queue_cannot_be_skipped(server, fresh_throttles):
    for name, data in [("join_study", ["x"]), ("enhance", [None, [], False, "paper", 0, None])]:
        reply = httpx.post(f"{server.url}gradio_api/run/{name}", json={"data": data}, timeout=30)
        assert reply.status_code == 404, (name, reply.text)


def test_wrong_codes_over_http_are_slowed_down(server, fresh_throttles, monkeypatch):
    invite = study.invite_rater(server.db, server.study_id, "Dr Throttle-test")
    clock = Clock()
    # One browser session: the queue, as the page sends it.
    monkeypatch.setattr(access, "JOIN_ATTEMPTS", Throttle(clock=clock))
    mine = secrets.token_hex(6)
    for n in range(5):
        out = queue_call(server, "join_study", [f"guess-{n}", ""], mine)["output"]["data"]
        assert "not valid" in json.dumps(out)
    out = queue_call(server, "join_study", [invite.code, ""], mine)["output"]["data"]
    assert "Too many wrong codes" in json.dumps(out) and ".png" not in json.dumps(out)
    clock.now += 1
    out = queue_call(server, "join_study", [invite.code, ""], mine)["output"]["data"]
    assert ".png" in json.dumps(out)
    # A script with a new session per guess (as /gradio_api/call has) meets the ceiling.
    ceiling = Throttle(free=5, clock=clock, message=access.NETWORK_WRONG)
    monkeypatch.setattr(access, "JOIN_CEILING", ceiling)
    for n in range(5):
        assert "not valid" in json.dumps(call(server, "join_study", f"guess-{n}", ""))
    assert "from your network" in json.dumps(call(server, "join_study", invite.code, ""))
    monkeypatch.setattr(access, "ADMIN_CEILING", Throttle(clock=clock, message=access.ADMIN_WRONG))
    for _ in range(5):
        assert call(server, "open_results", "wrong") == ("error", "That admin token is not right.")
    kind, message = call(server, "open_results", os.environ["DPE_ADMIN_TOKEN"])
    assert kind == "error" and message.startswith("Too many wrong admin tokens")


def test_a_withdrawn_code_is_refused_over_http(server, fresh_throttles):
    invite = study.invite_rater(server.db, server.study_id, "Dr Withdrawn-test")
    mine = secrets.token_hex(6)
    token = queue_call(server, "join_study", [invite.code, ""], mine)["output"]["data"][1]
    pseudonym = study.rater_by_token(server.db, invite.code)["pseudonym"]
    study.revoke_rater(server.db, server.study_id, pseudonym)
    refused = queue_call(server, "vote_left", [None, token, None, None], mine)
    assert refused["success"] and "withdrawn" in json.dumps(refused["output"])
    kind, outputs = call(server, "join_study", invite.code, "")
    assert kind == "complete" and "withdrawn" in json.dumps(outputs)


def test_only_study_images_are_served_never_the_database(server, fresh_throttles):
    invite = study.invite_rater(server.db, server.study_id, "Dr Files-test")
    trial = study.next_trial(server.db, invite.rater_id)
    image = study.stimulus_path(server.db, trial.left)
    served = httpx.get(f"{server.url}gradio_api/file={image}", timeout=30)
    assert served.status_code == 200 and served.content == image.read_bytes()
    root = server.db.path.parent
    for path in [
        server.db.path,
        Path(f"{server.db.path}-wal"),
        server.db.media_root / ".." / "study.db",
        image.parent / ".." / ".." / "study.db",
    ]:
        reply = httpx.get(f"{server.url}gradio_api/file={path}", timeout=30)
        assert reply.status_code in (403, 404), (path, reply.status_code)
        assert b"SQLite format" not in reply.content
    assert (root / "study.db").is_file()
