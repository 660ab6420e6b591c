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
"""

from __future__ import annotations

import functools
from html import escape

import gradio as gr

import study
import study.session
import study.tables
from dpe import demo as dd
from study.session import Session
from webapp import access, common, uploads
from webapp.common import EXAMPLES, PRIVATE, STUDY, db

PRACTICE_TRIALS = 2
PRACTICE_MODALITIES = ("dermatology", "microscopy")
PRACTICE_DIR = uploads.scratch_folder("practice")
STUDY_HELP = (
    "Each screen shows two versions, **A** and **B**, of the same image, made from a "
    "low-quality source (open **Low-quality source** above them to see it at full size). "
    "Choose the one you would rather read for diagnosis: "
    "**A is better** (key `1` or `←`), **B is better** (`2` or `→`), **Tie** (`3`) or "
    "**Both unacceptable** (`4`). Look as long as you need; the time is recorded but there is "
    f"no limit. The first {PRACTICE_TRIALS} screens are practice and are not scored. "
    "**Pause** any time: your answers are saved, and the same code brings you back to where "
    "you stopped, on any device."
)
VIEWER_HELP = (
    "Zoom: mouse wheel or pinch on either image, A and B follow together; drag to pan; "
    "double-click to reset. **Full screen** (key `F`) shows the pair with the answers; "
    "**How to judge** is always one click away."
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
# Every widget a study callback may update, by name (see build() for the widgets).
VIEW = ("session", "screen", *BOXES, "message", "header", "progress", "source", "source_box")
VIEW += ("a", "b")
VIEW += (*ANSWERS, "remembered", "pending")
REMEMBER_KEY = "study-invite-code"

# Also measures reading time: when the last of A and B has loaded (and is drawn in the next
# frame) the screen counts as shown; the answer's click reads the time since then.
KEYBOARD_JS = """
<script>
window.pairShownAt = null;
document.addEventListener("load", (event) => {
  const image = event.target;
  if (!image || image.tagName !== "IMG" || !image.closest("#image-a, #image-b")) return;
  const pair = [...document.querySelectorAll("#image-a img, #image-b img")];
  if (pair.length === 2 && pair.every((i) => i.complete && i.naturalWidth > 0)) {
    requestAnimationFrame(() => { window.pairShownAt = performance.now(); });
  }
}, true);
document.addEventListener("keydown", (event) => {
  const target = event.target;
  if (event.altKey || event.ctrlKey || event.metaKey || event.repeat) return;
  if (target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName))) {
    return;
  }
  const ids = {"1": "vote-a", ArrowLeft: "vote-a", "2": "vote-b", ArrowRight: "vote-b",
               "3": "vote-tie", "4": "vote-bad"};
  const button = ids[event.key] && document.getElementById(ids[event.key]);
  if (!button || button.disabled || button.offsetParent === null) return;
  event.preventDefault();
  button.click();
});
</script>
"""

# Runs in the browser when an answer is given, before the request leaves: later clicks and
# key presses find the buttons disabled. Passes the event's inputs through, the last one
# replaced by the reading time (ms since both images were drawn; null when not measured).
# The answer is also kept in the tab (sessionStorage) until the server confirms it, so an
# answer sent while the server restarts counts once the page is back (see restore_code).
DISABLE_VOTES_JS = """(...inputs) => {
  sessionStorage.setItem("study-pending", `${inputs[1]} CHOICE`);
  for (const id of ["vote-a", "vote-b", "vote-tie", "vote-bad", "study-pause"]) {
    const button = document.getElementById(id);
    if (button) button.disabled = true;
  }
  const shown = window.pairShownAt;
  window.pairShownAt = null;
  inputs[inputs.length - 1] = shown === null ? null : Math.round(performance.now() - shown);
  return inputs;
}"""

# This tab's memory (sessionStorage, gone with the tab): whether it is signed in, and an
# answer still waiting for the server's reply. Read on load; see restore_code.
READ_TAB_JS = """(remembered, pending, joined) => [remembered,
  sessionStorage.getItem("study-pending") || "", sessionStorage.getItem("study-joined") || ""]"""
JOINED_JS = """(...inputs) => { sessionStorage.setItem("study-joined", "1"); return inputs; }"""
LEFT_JS = """(...inputs) => { sessionStorage.removeItem("study-joined"); return inputs; }"""
FORGET_PENDING_JS = """() => { sessionStorage.removeItem("study-pending"); }"""

CSS = """
.study-progress { display: flex; gap: 1em; align-items: center; }
.study-progress progress { flex: 1; height: 0.8em; }
#image-a img, #image-b img { width: 100%; height: 100%; object-fit: contain; }
#image-a div:has(> img), #image-b div:has(> img) { overflow: hidden; touch-action: none; }
#study-pair:fullscreen { background: var(--body-background-fill); padding: 0.5em; }
#study-pair:fullscreen #image-a, #study-pair:fullscreen #image-b { height: 88vh !important; }
#study-viewer-help { font-size: 0.85em; }
"""

# Synchronised zoom and pan of A and B (one view for both: wheel or pinch zooms about the
# pointer, a drag pans, a double click or a new screen resets), and the full-screen pair.
VIEWER_JS = """
<script>
(() => {
  const view = {scale: 1, x: 0, y: 0};
  const pointers = new Map();
  const images = () => [...document.querySelectorAll("#image-a img, #image-b img")];
  const inPair = (target) => target && target.closest && target.closest("#image-a, #image-b");
  const apply = () => {
    for (const image of images()) {
      image.style.transformOrigin = "0 0";
      image.style.transform = `translate(${view.x}px, ${view.y}px) scale(${view.scale})`;
    }
  };
  const reset = () => { view.scale = 1; view.x = 0; view.y = 0; apply(); };
  const zoomAt = (cx, cy, factor) => {
    const scale = Math.min(16, Math.max(1, view.scale * factor));
    const f = scale / view.scale;
    view.x = cx - (cx - view.x) * f;
    view.y = cy - (cy - view.y) * f;
    view.scale = scale;
    if (scale === 1) { view.x = 0; view.y = 0; }
    apply();
  };
  const local = (box, event) => {
    const frame = (box.querySelector("img") || box).parentElement.getBoundingClientRect();
    return [event.clientX - frame.left, event.clientY - frame.top];
  };
  document.addEventListener("wheel", (event) => {
    const box = inPair(event.target);
    if (!box) return;
    event.preventDefault();
    const [x, y] = local(box, event);
    zoomAt(x, y, Math.exp(-event.deltaY * 0.002));
  }, {passive: false});
  document.addEventListener("pointerdown", (event) => {
    const box = inPair(event.target);
    if (!box) return;
    pointers.set(event.pointerId, {x: event.clientX, y: event.clientY, box});
    event.preventDefault();
  });
  document.addEventListener("pointermove", (event) => {
    const last = pointers.get(event.pointerId);
    if (!last) return;
    if (pointers.size === 1) {
      view.x += event.clientX - last.x;
      view.y += event.clientY - last.y;
      apply();
    } else if (pointers.size === 2) {
      const [a, b] = [...pointers.values()];
      const other = a === last ? b : a;
      const before = Math.hypot(last.x - other.x, last.y - other.y);
      const after = Math.hypot(event.clientX - other.x, event.clientY - other.y);
      const [x, y] = local(last.box, {clientX: (event.clientX + other.x) / 2,
                                      clientY: (event.clientY + other.y) / 2});
      if (before > 0) zoomAt(x, y, after / before);
    }
    pointers.set(event.pointerId, {x: event.clientX, y: event.clientY, box: last.box});
  });
  for (const kind of ["pointerup", "pointercancel", "pointerleave"]) {
    document.addEventListener(kind, (event) => pointers.delete(event.pointerId));
  }
  document.addEventListener("dblclick", (event) => { if (inPair(event.target)) reset(); });
  document.addEventListener("dragstart", (event) => {  // a drag pans; it never drags the file
    if (inPair(event.target)) event.preventDefault();
  });
  document.addEventListener("load", (event) => {
    if (event.target.tagName === "IMG" && inPair(event.target)) reset();
  }, true);
  window.studyViewer = {view, reset};
  window.studyFullScreen = () => {
    const pair = document.getElementById("study-pair");
    if (document.fullscreenElement) document.exitFullscreen();
    else if (pair) pair.requestFullscreen();
  };
  document.addEventListener("keydown", (event) => {
    const target = event.target;
    if (event.altKey || event.ctrlKey || event.metaKey) return;
    if (target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName))) {
      return;
    }
    if ((event.key === "f" || event.key === "F") && document.getElementById("study-pair")) {
      const pair = document.getElementById("study-pair");
      if (pair.offsetParent !== null || document.fullscreenElement) window.studyFullScreen();
    }
  });
})();
</script>
"""

# ---------------------------------------------------------------- callbacks


@functools.lru_cache(maxsize=1)
def _practice() -> tuple[tuple[str, str, str], ...]:
    """Practice pairs, made once per process from two examples (random file names)."""
    picks = dd.examples_of(EXAMPLES, PRACTICE_MODALITIES)[:PRACTICE_TRIALS]
    pairs = dd.practice_pairs(picks, PRACTICE_DIR, seed=7)
    return tuple((str(p.source), str(p.left), str(p.right)) for p in pairs)


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


# ---------------------------------------------------------------- layout and events


def _trial_box(w: dict) -> None:
    """The trial screen: progress, instructions and the source one click away, A and B side
    by side with the answers under them (all above the fold at 1280×720), then the tools."""
    w["progress"] = gr.HTML()
    with gr.Row(elem_id="study-tools"):
        with gr.Accordion("How to judge", open=False, elem_id="study-help"):
            w["header"] = gr.Markdown()
            gr.Markdown(STUDY_HELP + "\n\n" + VIEWER_HELP)
        with gr.Accordion("Low-quality source", open=False, elem_id="study-source-box") as w[
            "source_box"
        ]:
            w["source"] = gr.Image(
                show_label=False,
                interactive=False,
                format="png",
                buttons=["fullscreen"],
                elem_id="study-source",
            )
    with gr.Column(elem_id="study-pair"):  # what "Full screen" shows: the pair and the answers
        with gr.Row(equal_height=True):
            for side in ("a", "b"):
                w[side] = gr.Image(
                    label=side.upper(),
                    height="52vh",
                    interactive=False,
                    buttons=[],
                    elem_id=f"image-{side}",
                )
        with gr.Row(elem_id="study-answers"):
            w["vote_a"] = gr.Button("A is better  [1 / ←]", elem_id="vote-a")
            w["vote_b"] = gr.Button("B is better  [2 / →]", elem_id="vote-b")
            w["vote_tie"] = gr.Button("Tie  [3]", elem_id="vote-tie")
            w["vote_bad"] = gr.Button("Both unacceptable  [4]", elem_id="vote-bad")
    with gr.Row(elem_id="study-more"):
        gr.Markdown(VIEWER_HELP, elem_id="study-viewer-help")
        w["fullscreen"] = gr.Button("Full screen  [F]", size="sm", elem_id="study-fullscreen")
        w["pause"] = gr.Button("Pause", size="sm", elem_id="study-pause")
    with gr.Accordion("Your profile (optional)", open=False, elem_id="study-profile"):
        with gr.Row():
            w["specialty"] = gr.Textbox(label="Specialty", elem_id="profile-specialty")
            w["years"] = gr.Number(
                label="Years of experience", precision=0, minimum=0, elem_id="profile-years"
            )
        w["profile_save"] = gr.Button("Save profile", size="sm", elem_id="profile-save")
        w["profile_message"] = gr.Markdown(elem_id="profile-message")


def remember_codes_across_restarts(demo: gr.Blocks, secret: str) -> None:
    """Encrypt remembered invite codes with ``secret`` (kept in the data folder), not with
    Gradio's per-process random key, which a restart would change (forgetting every code)."""
    for block in demo.blocks.values():
        if isinstance(block, gr.BrowserState) and block.storage_key == REMEMBER_KEY:
            block.secret = secret


def _layout() -> dict:
    """The page's widgets, by name: every ``VIEW`` name and the few that only send."""
    gr.Navbar(main_page_name=False)  # a rater is never offered a link to the Enhance page
    gr.Markdown("# Image quality study")
    # screen: which screen is on display (its token)
    w = {"session": gr.State(None), "screen": gr.Textbox(visible=False, elem_id="study-screen")}
    w["remembered"] = gr.BrowserState(None, storage_key=REMEMBER_KEY)
    # An answer given while the server was away, kept in the page until the code is entered.
    w["pending"] = gr.Textbox(visible=False, elem_id="study-pending")
    w["reading"] = gr.Number(visible=False, elem_id="study-reading")  # set by DISABLE_VOTES_JS
    w["joined"] = gr.Textbox(visible=False, elem_id="study-joined")  # set by READ_TAB_JS
    w["message"] = gr.Markdown(elem_id="study-message")
    with gr.Column(visible=True) as w["join"]:
        gr.Markdown(STUDY_HELP)
        w["code"] = gr.Textbox(
            label="Invite code", placeholder="the code from the study team", elem_id="invite-code"
        )
        w["start"] = gr.Button("Start", variant="primary", elem_id="study-start")
    with gr.Column(visible=False) as w["trial"]:
        _trial_box(w)
    with gr.Column(visible=False) as w["paused"]:
        gr.Markdown(
            "**Paused.** Every answer so far is saved. Close this tab if you like: this "
            "browser remembers your code, and the code works on any device."
        )
        w["resume"] = gr.Button("Resume", variant="primary", elem_id="study-resume")
        w["forget"] = gr.Button("Sign out on this device", size="sm", elem_id="study-forget")
    with gr.Column(visible=False) as w["done"]:
        gr.Markdown("**Finished.**")
    return w


def build(demo: gr.Blocks) -> None:
    """Lay out the Study page (call inside its ``demo.route``) and wire its events."""
    gr.set_static_paths([uploads.SCREENS_ROOT])  # served as they are, never hashed or copied
    w = _layout()
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
    loaded.success(show_profile, w["session"], profile, **STUDY)  # when it signed in again
    for trigger in (w["start"].click, w["code"].submit):
        joined = trigger(
            by_name(join_study), [w["code"], w["pending"]], view, js=JOINED_JS, **STUDY
        )
        joined.success(show_profile, w["session"], profile, **STUDY)
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
    w["forget"].click(by_name(forget_me), None, view, js=LEFT_JS, **STUDY)
    w["profile_save"].click(save_profile, [w["session"], *profile[:2]], profile[2], **STUDY)
