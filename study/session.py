"""A rater's way through a study: unscored practice screens first, then their trials.

A :class:`Session` is an immutable value kept server-side per browser tab; each function
takes one and returns a new one. Every screen gets a fresh token, and an answer counts only
when it carries the token of the screen on display together with the session: a double
click, a second button pressed before the reply or a stale tab records nothing, and a wrong
token gets nothing back. Tokens are signed with a key kept in the data folder
(:func:`~study.db.secret_key`), so after a server restart (sessions lost) :func:`recover`
can still tell which trial an answer was given for. No Gradio here; the app turns sessions
into widgets and :class:`~study.db.StudyError` messages into messages on the page.

Pausing needs no state of its own: answers are stored as they arrive, and :func:`resume`
serves the rater's first unanswered screen again with a fresh token and timer.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from study.create import get_study, stimulus_path
from study.db import CHOICES, StudyDB, StudyError, secret_key
from study.trials import (
    MAX_RESPONSE_MS,
    InvalidInviteError,
    StudyNotOpenError,
    VoteConflictError,
    active_rater,
    next_trial,
    rater_by_token,
    rater_progress,
    record_vote,
)

Practice = tuple[str, str, str]  # image files of one unscored screen: source, left, right
ANSWERED_ELSEWHERE = (
    "That trial was already answered on another screen (another tab or device); the first "
    "answer is kept. Here is your next trial."
)


class StaleScreenError(StudyError):
    """An answer for a screen that is not the one on display (or a token that is not this
    session's); nothing is recorded and nothing is shown."""


@dataclass(frozen=True)
class Screen:
    """What a rater answers now: image files (server-side paths) and progress.

    ``kind`` is "practice" (not scored) or "trial"; ``source`` is None when the study hides
    the low-quality source.
    """

    kind: Literal["practice", "trial"]
    source: str | None
    left: str
    right: str
    done: int
    total: int
    trial_id: int | None = None


@dataclass(frozen=True)
class Session:
    """A signed-in rater, the practice screens still to do, and the screen on display.

    ``screen`` is None once nothing is left to answer (see :func:`ending`).
    """

    rater: int
    title: str
    instructions: str = ""
    practice: tuple[Practice, ...] = ()
    practice_total: int = 0
    screen: Screen | None = None
    token: str = ""
    served_at: float = 0.0  # time.monotonic() when the screen was served; 0: not known
    note: str = ""  # what the rater should know about their last answer


def join(db: StudyDB, code: str, practice: Sequence[Sequence[str | os.PathLike]] = ()) -> Session:
    """Sign a rater in with their invite code and serve their first screen.

    ``practice`` holds (source, left, right) image files shown before the first trial, only
    to raters who have not voted yet. Raises :class:`StudyError` with a message for the rater.
    """
    code = code.strip() if isinstance(code, str) else ""
    if not code:
        raise InvalidInviteError("Enter the invite code the study team gave you.")
    rater = rater_by_token(db, code)
    info = get_study(db, rater["study"])
    done = rater_progress(db, rater["id"])["done"]
    if info["status"] != "open":
        raise StudyNotOpenError(
            "This study is not taking votes at the moment; the study team can say when."
        )
    todo = tuple(_practice(p) for p in practice) if done == 0 else ()
    session = Session(rater["id"], info["title"], info["instructions"] or "", todo, len(todo))
    return next_screen(db, session)


def _practice(files: Sequence[str | os.PathLike]) -> Practice:
    source, left, right = (str(f) for f in files)
    return source, left, right


def next_screen(db: StudyDB, session: Session) -> Session:
    """The session showing its next screen (a practice pair, else the next trial, else None).

    Always under a fresh token, with the response timer restarted. Raises
    :class:`~study.trials.RaterRevokedError` once the rater's code has been withdrawn.
    """
    active_rater(db, session.rater)  # practice too: a withdrawn code gets no more screens
    if session.practice:
        source, left, right = session.practice[0]
        done = session.practice_total - len(session.practice)
        screen = Screen("practice", source, left, right, done, session.practice_total)
    else:
        trial = next_trial(db, session.rater)
        screen = None
        if trial is not None:
            screen = Screen(
                "trial",
                str(stimulus_path(db, trial.source)) if trial.source else None,
                str(stimulus_path(db, trial.left)),
                str(stimulus_path(db, trial.right)),
                trial.done,
                trial.total,
                trial.trial_id,
            )
    token = _screen_token(db, session.rater, screen)
    return replace(session, screen=screen, token=token, served_at=time.monotonic(), note="")


def _signature(db: StudyDB, rater: int, screen: Screen | None, nonce: str) -> str:
    what = f"{rater}:{screen.trial_id if screen and screen.kind == 'trial' else 'none'}:{nonce}"
    key = secret_key(db.path.parent, "screen-token")
    return hmac.new(key, what.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def _screen_token(db: StudyDB, rater: int, screen: Screen | None) -> str:
    nonce = secrets.token_hex(8)
    return f"{nonce}.{_signature(db, rater, screen, nonce)}"


def issued_for(db: StudyDB, token, rater: int, screen: Screen | None) -> bool:
    """Whether ``token`` (sent by a browser) was issued here for ``screen`` of ``rater``."""
    if not isinstance(token, str) or token.count(".") != 1:
        return False
    nonce, _ = token.split(".")
    return _same_token(token, f"{nonce}.{_signature(db, rater, screen, nonce)}")


def answer(
    db: StudyDB, session: Session, token: str | None, choice: str, reading_ms=None
) -> Session:
    """Record ``choice`` for the screen whose token is ``token``, then serve the next screen.

    ``reading_ms`` is what the browser measured from both images drawn to the answer; any
    value that is not a plausible whole number of milliseconds is stored as not measured.

    Practice answers are not stored. An answer for any other screen (or once nothing is on
    display) raises :class:`StaleScreenError`. A trial answered meanwhile from another tab
    keeps its first answer, and the next session's ``note`` says so. Raises
    :class:`StudyError` when the study closed.
    """
    if not isinstance(choice, str) or choice not in CHOICES:
        raise StudyError(f"choice must be one of {', '.join(CHOICES)}; got {choice!r}.")
    screen = session.screen
    if screen is None or not _same_token(token, session.token):
        raise StaleScreenError("That screen was already answered.")
    note = ""
    if screen.kind == "trial":
        elapsed_ms = None
        if session.served_at:
            elapsed_ms = min(int((time.monotonic() - session.served_at) * 1000), MAX_RESPONSE_MS)
        try:
            record_vote(
                db,
                session.rater,
                screen.trial_id,
                choice,
                response_ms=elapsed_ms,
                reading_ms=_milliseconds(reading_ms),
            )
        except VoteConflictError:
            note = ANSWERED_ELSEWHERE  # the first answer stands
    else:
        session = replace(session, practice=session.practice[1:])
    return replace(next_screen(db, session), note=note)


def _milliseconds(value) -> int | None:
    # From the browser: a number (JSON gives floats), or anything at all.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    value = round(value)
    return value if 0 <= value <= MAX_RESPONSE_MS else None


def recover(
    db: StudyDB,
    code: str,
    token: str | None,
    choice: str,
    practice: Sequence[Sequence[str | os.PathLike]] = (),
    reading_ms=None,
) -> Session:
    """After a server restart lost the rater's session: sign in again with ``code`` and, when
    ``token`` was issued for the trial that is now their first unanswered one, record
    ``choice`` for it (response time unknown). Otherwise just serve that screen."""
    session = join(db, code)  # without practice: the token, if any, was for a trial
    screen = session.screen
    if screen and screen.kind == "trial" and issued_for(db, token, session.rater, screen):
        return answer(db, replace(session, token=token, served_at=0.0), token, choice, reading_ms)
    return join(db, code, practice)


def _same_token(sent, expected: str) -> bool:
    # The token comes from the browser: any type, any text. Compared as bytes in constant
    # time (compare_digest refuses non-ASCII str).
    if not isinstance(sent, str) or not sent or not expected:
        return False
    return hmac.compare_digest(sent.encode("utf-8", "surrogatepass"), expected.encode("utf-8"))


def resume(db: StudyDB, session: Session) -> Session:
    """Continue after a pause: the first unanswered screen, with a fresh token and timer."""
    return next_screen(db, session)


def ending(db: StudyDB, session: Session) -> Literal["finished", "closed"]:
    """Why a session has no screen: every trial answered, or the study closed before that."""
    left = rater_progress(db, session.rater)
    return "closed" if left["done"] < left["total"] else "finished"


def profile(db: StudyDB, session: Session) -> dict:
    """The rater's own profile: ``specialty`` and ``years_experience`` (None when not given)."""
    active_rater(db, session.rater)
    return db.query_one(
        "SELECT specialty, years_experience FROM raters WHERE id = ?",
        [session.rater],
        missing="your session has ended; enter your invite code again.",
    )
