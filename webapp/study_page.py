"""The Study page (``/study``): experts join with an invite code and vote, blinded.

A rater's `study.session.Session` is kept server-side in ``gr.State``. Only images (linked
afresh for every screen under random names, see `uploads.serve_privately`), progress, the
screen's token and the study's own title and instructions are sent to the browser. The
study callbacks return their view by name: a dict whose keys are ``VIEW`` names; a name left
out keeps its widget as it is.

Nothing here raises to the browser: a wrong code, a closed study or a lost session is a
message on the page (Gradio's error pop-up covers the form and reads as a crash). A page left
open through a server restart has lost its session; its next answer signs in again with the
remembered code and is recorded for the trial it was given on (`study.session.recover`).

The page is three modules: this one (its callbacks and `build`), `webapp.study_layout` (its
widgets) and `webapp.study_viewer` (what runs in the browser); `webapp.practice` makes the
practice screens.
"""

from __future__ import annotations

import functools
from html import escape

import gradio as gr

import study
import study.session
import study.tables
from study.session import Session
from webapp import access, common, practice, study_layout, uploads
from webapp.common import PRIVATE, STUDY, db
from webapp.practice import PRACTICE_TRIALS  # noqa: F401 (part of the page's interface)
from webapp.study_viewer import (
    DISABLE_VOTES_JS,
    FORGET_PENDING_JS,
    JOINED_JS,
    LEFT_JS,
    READ_TAB_JS,
)

THANKS = {
    "closed": "The study team has closed this study. Your answers are saved; thank you!",
    "finished": "You have answered every trial. Thank you! You can close this tab.",
}
SESSION_ENDED = "Your session has ended; enter your invite code again to continue."
RESTARTED = (
    "The study server was restarted and this page lost its sign-in: enter your invite code "
    "again and press Start. The answer you just gave is kept."
)
BOXES = ("join", "trial", "paused", "done")
ANSWERS = ("vote_a", "vote_b", "vote_tie", "vote_bad", "pause")
# Every widget a study callback may update, by name (the widgets: `study_layout.layout`).
VIEW = ("session", "screen", *BOXES, "message", "header", "progress", "source", "source_box")
VIEW += ("a", "b")
VIEW += (*ANSWERS, "remembered", "pending")

# ---------------------------------------------------------------- callbacks


def _practice() -> tuple[tuple[str, str, str], ...]:
    """The practice screens (source, left, right), made once per process."""
    return practice.practice_screens()


def warning(text: object) -> str:
    """A problem shown as a message on the page."""
    return f"**⚠ {escape(str(text))}**"


def study_view(session: Session | None, view: str, message: str = "", *, enabled=True) -> dict:
    """The ``VIEW`` updates (all but "remembered" and "pending") for the "join", "trial",
    "paused" or "done" view of ``session``."""
    screen = session.screen if session else None
    if view == "trial" and screen:
        header = f"### {escape(session.title)}\n\n{session.instructions}"
        images = tuple(uploads.serve_privately([screen.source, screen.left, screen.right]))
        practice = screen.kind == "practice"
        progress = study.tables.progress_html(screen.done, screen.total, practice=practice)
    else:
        header, images, progress = "", (None, None, None), ""
    # gr.update dicts, not components: building ~15 components was most of an answer's
    # server time (Gradio inspects each constructor's signature).
    return {
        "session": session,
        "screen": session.token if session else "",
        **{box: gr.update(visible=view == box) for box in BOXES},
        "message": message,
        "header": header,
        "progress": progress,
        "source": gr.update(value=images[0], visible=images[0] is not None),
        "source_box": gr.update(visible=images[0] is not None),
        "a": images[1],
        "b": images[2],
        **{name: gr.update(interactive=enabled) for name in ANSWERS},
    }


def _show(session: Session, *, enabled: bool = True) -> dict:
    if session.screen is None:
        thanks = THANKS[study.session.ending(db(), session)]
        return study_view(session, "done", thanks)
    return study_view(
        session, "trial", warning(session.note) if session.note else "", enabled=enabled
    )


WELCOME_BACK = "Welcome back. Press **Start** to continue where you stopped."


def restore_code(
    remembered: str | None,
    pending: str | None = "",
    joined: str | None = "",
    request: gr.Request | None = None,
) -> dict:
    """On page load: fill in the invite code this browser remembered, if any.

    ``joined`` and ``pending`` come from this tab's sessionStorage: the tab was signed in, and
    an answer it sent had no reply yet. Gradio reloads a page once its server is back after a
    restart; such a tab signs in again at once and the answer counts (see `join_study`).
    """
    pending = pending if isinstance(pending, str) else ""
    if not remembered:
        return {"pending": pending, "message": warning(RESTARTED) if pending else ""}
    if pending or joined:
        return {**join_study(remembered, request, pending), "code": remembered}
    return {"code": remembered, "message": WELCOME_BACK}


def join_study(code: str, request: gr.Request | None = None, pending: str | None = None) -> dict:
    """Sign a rater in with their invite code and show practice or their next trial.

    ``pending`` is an answer given just before a server restart ("<screen token> <choice>"):
    it is recorded for its trial (see `study.session.recover`). Repeated wrong codes from one
    browser must wait (``access.invite_guard``). A refusal is a message on the page.
    """
    try:
        with access.invite_guard(code, request):
            token, _, choice = (pending or "").partition(" ")
            if choice in study.CHOICES:
                session = study.session.recover(db(), code, token, choice, _practice())
            else:
                session = study.session.join(db(), code, _practice())
    except ValueError as exc:
        common.refused(str(exc), "join_study")
        return {"message": warning(exc)}
    return {**_show(session), "remembered": (code or "").strip(), "pending": ""}


def vote(
    session: Session | None,
    screen: str | None,
    choice: str,
    remembered: str | None = None,
    reading_ms: float | None = None,
) -> dict:
    """Record ``choice`` for the screen the browser showed (``screen``), then show the next.

    ``reading_ms`` is the browser's time from both images drawn to the answer.

    Practice answers are not recorded. An answer for a screen that is no longer current (a
    second click racing the first) changes nothing and shows nothing. After a server restart
    (no session) the ``remembered`` code signs the rater in again and the answer counts for
    its trial; without one, the page asks for the code and keeps the answer. The buttons
    come back disabled; the event that follows enables them once the new screen is shown.
    """
    try:
        if not session:
            if not remembered:
                message = warning(RESTARTED) if screen else warning(SESSION_ENDED)
                return {**study_view(None, "join", message), "pending": f"{screen} {choice}"}
            session = study.session.recover(
                db(), remembered, screen, choice, _practice(), reading_ms
            )
            return _show(session, enabled=False)
        answered = study.session.answer(db(), session, screen, choice, reading_ms)
        return _show(answered, enabled=False)
    except study.session.StaleScreenError:
        return {}  # the answer that moved this screen on already shows the next one
    except ValueError as exc:
        common.refused(str(exc), f"vote_{choice}")
        return {"message": warning(exc)}


def _voter(choice: str):
    def record(
        session: Session | None, screen: str | None, remembered: str | None, reading_ms=None
    ) -> dict:
        return vote(session, screen, choice, remembered, reading_ms)

    record.__name__ = f"vote_{choice}"
    return record


def enable_answers():
    """Enable the answer buttons once a screen is on display."""
    return tuple(gr.update(interactive=True) for _ in ANSWERS)


def pause(session: Session | None) -> dict:
    """Hide the images; votes so far are already stored."""
    return study_view(session, "paused")


def resume(session: Session | None) -> dict:
    """Continue with the trial that was on screen when the rater paused."""
    if not session:
        return study_view(None, "join", "Enter your invite code to continue.")
    try:
        return _show(study.session.resume(db(), session))
    except ValueError as exc:
        common.refused(str(exc), "resume")
        return {"message": warning(exc)}


def forget_me() -> dict:
    """Sign out on this device: the browser forgets the code."""
    return {**study_view(None, "join", "Signed out on this device."), "remembered": None}


def show_profile(session: Session | None):
    """After joining: fill the optional profile form with what is stored."""
    if not session:
        return gr.skip(), gr.skip(), ""
    try:
        stored = study.session.profile(db(), session)
    except ValueError as exc:
        return gr.skip(), gr.skip(), warning(exc)
    return stored["specialty"] or "", stored["years_experience"], ""


def enable_profile(session: Session | None):
    """Unlock the profile form once ``show_profile`` has filled it (chained after it).

    Without a session (a fresh page) it stays locked, so the fill after joining still comes first.
    """
    return tuple(gr.update(interactive=True) if session else gr.skip() for _ in range(3))


def lock_profile():
    """After signing out: empty the profile form and lock it again.

    The next person to join on this device must not see the previous rater's answers, and the
    form stays locked until their own stored profile has been filled in (``enable_profile``).
    """
    emptied = gr.update(value="", interactive=False), gr.update(value=None, interactive=False)
    return *emptied, gr.update(interactive=False), ""


def save_profile(session: Session | None, specialty: str | None, years: float | None) -> str:
    """Store the rater's optional profile; an empty years field leaves it as it was."""
    if not session:
        return warning(SESSION_ENDED)
    try:
        study.update_rater(db(), session.rater, specialty=specialty or "", years_experience=years)
    except ValueError as exc:
        common.refused(str(exc), "save_profile")
        return warning(exc)
    return "Profile saved. Thank you!"


def by_name(callback, names: tuple[str, ...] = VIEW):
    """``callback``, returning its dict of updates as Gradio's list, in the order of ``names``
    (a name it leaves out is skipped). Name, signature and docstring stay ``callback``'s."""

    @functools.wraps(callback)
    def listed(*args, **kwargs):
        view = callback(*args, **kwargs)
        return [view.get(name, gr.skip()) for name in names]

    return listed


# ---------------------------------------------------------------- events


def remember_codes_across_restarts(demo: gr.Blocks, secret: str) -> None:
    """Encrypt remembered invite codes with ``secret`` (kept in the data folder), not with
    Gradio's per-process random key, which a restart would change (forgetting every code)."""
    for block in demo.blocks.values():
        if isinstance(block, gr.BrowserState) and block.storage_key == study_layout.REMEMBER_KEY:
            block.secret = secret


def build(demo: gr.Blocks) -> None:
    """Lay out the Study page (call inside its ``demo.route``) and wire its events."""
    gr.set_static_paths([uploads.SCREENS_ROOT])  # served as they are, never hashed or copied
    w = study_layout.layout()
    view = [w[name] for name in VIEW]
    answers = [w[name] for name in ANSWERS]
    profile = [w["specialty"], w["years"], w["profile_message"]]

    restored = [w["remembered"], w["pending"], w["joined"]]
    loaded = demo.load(
        by_name(restore_code, (*VIEW, "code")),
        restored,
        [*view, w["code"]],
        js=READ_TAB_JS,
        **STUDY,
    )
    loaded.success(None, js=FORGET_PENDING_JS)
    editable = [w["specialty"], w["years"], w["profile_save"]]

    def fill_profile(signed_in) -> None:
        """Fill the profile form from the database, then unlock it (never the other way)."""
        filled = signed_in.success(show_profile, w["session"], profile, **STUDY)
        filled.success(enable_profile, w["session"], editable, queue=False, **PRIVATE)

    fill_profile(loaded)  # the tab was signed in already
    for trigger in (w["start"].click, w["code"].submit):
        joined = trigger(
            by_name(join_study), [w["code"], w["pending"]], view, js=JOINED_JS, **STUDY
        )
        fill_profile(joined)
        joined.success(None, js=FORGET_PENDING_JS)
    for name, choice in zip(ANSWERS[:4], study.CHOICES, strict=True):
        # The screen token is read when the button is pressed, before anything else runs.
        answered = w[name].click(
            by_name(_voter(choice)),
            [w["session"], w["screen"], w["remembered"], w["reading"]],
            view,
            js=DISABLE_VOTES_JS.replace("CHOICE", choice),
            **STUDY,
        )
        answered.then(enable_answers, None, answers, queue=False, **PRIVATE)
        answered.success(None, js=FORGET_PENDING_JS)
    w["pause"].click(by_name(pause), w["session"], view, js=LEFT_JS, **STUDY)
    w["fullscreen"].click(None, js="() => window.studyFullScreen()")
    w["resume"].click(by_name(resume), w["session"], view, js=JOINED_JS, **STUDY)
    signed_out = w["forget"].click(by_name(forget_me), None, view, js=LEFT_JS, **STUDY)
    signed_out.then(lock_profile, None, [*editable, w["profile_message"]], queue=False, **PRIVATE)
    w["profile_save"].click(save_profile, [w["session"], *profile[:2]], profile[2], **STUDY)
