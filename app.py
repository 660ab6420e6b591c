"""Gradio front door: ``python app.py``, then open http://127.0.0.1:7860.

Three pages for three kinds of people:

- ``/``         Enhance: visitors upload an image, run methods, compare, measure, download.
- ``/study``    Study: experts join with an invite code and vote, blinded.
- ``/results``  Results: researchers (with ``DPE_ADMIN_TOKEN``) watch, analyse, export, invite.

The study is a page of its own, not a tab, because Gradio sends each page only its own
components: the Enhance page's method list never reaches a rater's browser. This file is
wiring: plain functions that turn widget values into library calls and back, then the layout
and events of each page. Logic lives in ``dpe`` (pixels) and ``study`` (studies).
"""

from __future__ import annotations

import atexit
import functools
import hmac
import logging
import os
import shutil
import tempfile
import threading
from html import escape
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402

import study  # noqa: E402
import study.session  # noqa: E402
import study.tables  # noqa: E402
import study.throttle  # noqa: E402
from dpe import demo as dd  # noqa: E402
from dpe.degrade import PRESETS  # noqa: E402
from dpe.methods import method_info  # noqa: E402
from study import hub_backup  # noqa: E402
from study.design import DESIGNS  # noqa: E402
from study.session import Session  # noqa: E402

ROOT = Path(__file__).resolve().parent
EXAMPLES_DIR = ROOT / "examples"
EXAMPLES = dd.example_images(EXAMPLES_DIR)
TITLE = "Perceptual enhancement of medical images"
KEEP_SECONDS = 1800  # uploads' decoded pixels and our output files live this long at most
PRACTICE_TRIALS = 2
PRACTICE_MODALITIES = ("dermatology", "microscopy")
# Process-wide scratch folder for downloads and exports; Gradio copies what it serves into its
# own cache, which delete_cache sweeps, so ours is pruned on every call.
OUTPUT_ROOT = Path(tempfile.gettempdir()) / f"dpe-app-{os.getpid()}"
PRACTICE_DIR = Path(tempfile.gettempdir()) / f"dpe-practice-{os.getpid()}"
for _folder in (OUTPUT_ROOT, PRACTICE_DIR):
    atexit.register(shutil.rmtree, _folder, ignore_errors=True)
# Named, not __name__: `python app.py` runs this module as __main__.
log = logging.getLogger("app")

# ================================================================ plain functions
# ---------------------------------------------------------------- shared


_DBS: dict[Path, study.StudyDB] = {}
_DB_LOCK = threading.Lock()


def _db() -> study.StudyDB:
    """The study database under ``$DPE_DATA_DIR``, opened once per process (and per folder)."""
    path = (study.data_dir() / "study.db").resolve()
    with _DB_LOCK:
        if path not in _DBS:
            _DBS[path] = study.open_db(path)
        return _DBS[path]


def _one_line(text: object) -> str:
    """Text for a single log line: control characters (a newline in a file name) escaped."""
    text = str(text)
    return text if text.isprintable() else ascii(text)


def _refused(message: str, what: str, file: str | None = None) -> gr.Error:
    """A request the user got wrong: one log line (what, which file, why), no traceback.

    Gradio prints a traceback for every ``gr.Error`` unless told not to; those are for faults.
    """
    where = f" {_one_line(Path(file).name)}" if file else ""
    log.warning("refused %s%s: %s", what, where, _one_line(message))
    return gr.Error(message, print_exception=False)


def _user_errors(callback):
    """Show the errors a user can cause (ValueError, e.g. StudyError, ImageError) as alerts,
    each logged as one line (see :func:`_refused`)."""

    @functools.wraps(callback)  # Gradio reads the signature and docstring through the wrapper
    def shown(*args, **kwargs):
        try:
            return callback(*args, **kwargs)
        except gr.Error as exc:
            if exc.print_exception:  # not yet logged: a gr.Error raised in the callback itself
                _refused(exc.message, callback.__name__)
                exc.print_exception = False
            raise
        except ValueError as exc:
            raise _refused(str(exc), callback.__name__) from None

    return shown


# Wrong invite codes and admin tokens, counted per address. Process-wide on purpose: a
# guesser can open a fresh session for every try, so per-session state would slow no one.
JOIN_ATTEMPTS = study.throttle.Throttle()
ADMIN_ATTEMPTS = study.throttle.Throttle()


def _client(request: gr.Request | None) -> str | None:
    """The address a request came from; None for a call from this process (tests, scripts).

    Behind a reverse proxy, list its address in ``FORWARDED_ALLOW_IPS`` so uvicorn puts the
    visitor's address here instead of the proxy's.
    """
    if request is None:
        return None
    return getattr(getattr(request, "client", None), "host", None) or "unknown"


def _output_dir() -> Path:
    return dd.fresh_output_dir(OUTPUT_ROOT, KEEP_SECONDS)


def _discard_upload(path: str | None) -> None:
    # Uploads are not kept after the response; only Gradio's upload folder is ever touched.
    dd.discard_upload(path, gr.utils.get_upload_folder())


# ---------------------------------------------------------------- Enhance page


def method_choices() -> gr.CheckboxGroup:
    """The methods that can run now (re-read on every page load, so new weights appear)."""
    choices = dd.available_methods()
    return gr.CheckboxGroup(choices=choices, value=dd.default_methods([k for _, k in choices]))


def _prepare(path: str, what: str) -> dd.Prepared:
    try:
        return dd.read_upload(path, gr.utils.get_upload_folder())
    except ValueError as exc:
        raise _refused(f"Could not read {what}: {exc}", "upload", path) from None


def load_upload(path: str | None):
    """Decode an upload once, keep its pixels in the session, delete the file, show a preview."""
    if not path:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
    prepared = _prepare(path, "this file")
    return prepared, None, dd.to_uint8(prepared.image), "\n\n".join(prepared.notes), None


def load_reference(path: str | None):
    """Decode the optional clean reference the same way; the upload itself is deleted."""
    if not path:
        return gr.skip(), gr.skip(), gr.skip()
    prepared = _prepare(path, "the reference")
    return prepared, f"Reference loaded: **{prepared.name}**; metrics will use it.", None


def load_example(evt: gr.SelectData):
    """Load the example the visitor clicked in the gallery."""
    prepared = dd.prepare(EXAMPLES[evt.index].path)
    return prepared, None, dd.to_uint8(prepared.image), "\n\n".join(prepared.notes)


@_user_errors
def enhance(
    image: str | None,
    methods: list[str],
    simulate: bool,
    preset: str,
    seed: float,
    reference: str | None = None,  # optional: the API page says so because of this default
    loaded: dd.Prepared | None = None,
    loaded_reference: dd.Prepared | None = None,
    progress=gr.Progress(),  # noqa: B008 (Gradio injects the tracker through this default)
):
    """Enhance an image with each chosen method.

    The public ``/enhance`` endpoint. ``image`` and ``reference`` are files (the page sends
    none and uses what it already decoded); ``reference`` is optional. With ``simulate``, the
    image is first degraded with ``preset`` and ``seed`` and every method is scored against it.
    Progress is reported per method. Returns the before/after pair, the gallery, the
    timing-and-metrics table, lossless PNG files and notes.
    """
    prepared = _prepare(image, "the image") if image else loaded
    if prepared is None:
        raise gr.Error("Upload an image first, or click one of the examples.")
    ref = _prepare(reference, "the reference") if reference else loaded_reference
    enhanced = dd.enhance_upload(
        prepared,
        list(methods or []),
        simulate_preset=preset if simulate else None,
        seed=int(seed or 0),
        reference=ref,
        progress=lambda done, total, label: progress(
            (done, total), desc=f"Running {label}", unit="methods"
        ),
    )
    files = dd.write_results(enhanced, _output_dir(), prepared.name, bits=prepared.bit_depth)
    table = pd.DataFrame(dd.metrics_rows(enhanced), columns=dd.METRIC_HEADERS)
    notes = "\n\n".join(enhanced.notes)
    return dd.before_after(enhanced), dd.gallery(enhanced), table, [str(f) for f in files], notes


# ---------------------------------------------------------------- Study page
# A rater's study.session.Session is kept server-side in gr.State. Only images (under random
# names), progress, the screen's token and the study's own title and instructions are sent
# to the browser.

STUDY_HELP = (
    "Each screen shows two versions, **A** and **B**, of the same image, made from the small "
    "low-quality source above them. Choose the one you would rather read for diagnosis: "
    "**A is better** (key `1` or `←`), **B is better** (`2` or `→`), **Tie** (`3`) or "
    "**Both unacceptable** (`4`). Look as long as you need; the time is recorded but there is "
    f"no limit. The first {PRACTICE_TRIALS} screens are practice and are not scored. "
    "**Pause** any time: your answers are saved, and the same code brings you back to where "
    "you stopped, on any device."
)
THANKS = {
    "closed": "The study team has closed this study. Your answers are saved; thank you!",
    "finished": "You have answered every trial. Thank you! You can close this tab.",
}
SESSION_ENDED = "Your session has ended; enter your invite code again to continue."


@functools.lru_cache(maxsize=1)
def _practice() -> tuple[tuple[str, str, str], ...]:
    """Practice pairs, made once per process from two examples (random file names)."""
    picks = dd.examples_of(EXAMPLES, PRACTICE_MODALITIES)[:PRACTICE_TRIALS]
    pairs = dd.practice_pairs(picks, PRACTICE_DIR, seed=7)
    return tuple((str(p.source), str(p.left), str(p.right)) for p in pairs)


def _study_view(session: Session | None, view: str, message: str = "", *, enabled=True) -> tuple:
    """Updates for every study widget between the session and the remembered code (see
    STUDY_OUTPUTS), for the "join", "trial", "paused" or "done" view."""
    screen = session.screen if session else None
    if view == "trial" and screen:
        header = f"### {escape(session.title)}\n\n{session.instructions}"
        images = (screen.source, screen.left, screen.right)
        practice = screen.kind == "practice"
        progress = study.tables.progress_html(screen.done, screen.total, practice=practice)
    else:
        header, images, progress = "", (None, None, None), ""
    return (
        session.token if session else "",
        *(gr.Column(visible=view == name) for name in ("join", "trial", "paused", "done")),
        message,
        header,
        progress,
        gr.Image(value=images[0], visible=images[0] is not None),
        images[1],
        images[2],
        *(gr.Button(interactive=enabled) for _ in range(5)),
    )


def _show(session: Session, *, enabled: bool = True, remembered=None) -> tuple:
    remembered = gr.skip() if remembered is None else remembered
    if session.screen is None:
        thanks = THANKS[study.session.ending(_db(), session)]
        return session, *_study_view(session, "done", thanks), remembered
    return session, *_study_view(session, "trial", enabled=enabled), remembered


def restore_code(remembered: str | None):
    """On page load: fill in the invite code this browser remembered, if any."""
    if not remembered:
        return gr.skip(), ""
    return remembered, "Welcome back. Press **Start** to continue where you stopped."


@_user_errors
def join_study(code: str, request: gr.Request | None = None):
    """Sign a rater in with their invite code and show practice or their next trial.

    Repeated wrong codes from one address must wait (``JOIN_ATTEMPTS``); an empty field is
    not a guess.
    """
    client = _client(request) if (code or "").strip() else None
    with JOIN_ATTEMPTS.guard(client, study.InvalidInviteError):
        session = study.session.join(_db(), code, _practice())
    return _show(session, remembered=(code or "").strip())


@_user_errors
def vote(session: Session | None, screen: str | None, choice: str):
    """Record ``choice`` for the screen the browser showed (``screen``), then show the next.

    Practice answers are not recorded. An answer for a screen that is no longer current (a
    second click racing the first) changes nothing. The buttons come back disabled; the
    event that follows enables them once the new screen is on display.
    """
    if not session:
        raise gr.Error(SESSION_ENDED)
    return _show(study.session.answer(_db(), session, screen, choice), enabled=False)


def _voter(choice: str):
    def record(session: Session | None, screen: str | None):
        return vote(session, screen, choice)

    record.__name__ = f"vote_{choice}"
    return record


def enable_answers():
    """Enable the answer buttons once a screen is on display."""
    return tuple(gr.Button(interactive=True) for _ in range(5))


def pause(session: Session | None):
    """Hide the images; votes so far are already stored."""
    return session, *_study_view(session, "paused"), gr.skip()


@_user_errors
def resume(session: Session | None):
    """Continue with the trial that was on screen when the rater paused."""
    if not session:
        return None, *_study_view(None, "join", "Enter your invite code to continue."), gr.skip()
    return _show(study.session.resume(_db(), session))


def forget_me():
    """Sign out on this device: the browser forgets the code."""
    return None, *_study_view(None, "join", "Signed out on this device."), None


@_user_errors
def show_profile(session: Session | None):
    """After joining: fill the optional profile form with what is stored."""
    if not session:
        return gr.skip(), gr.skip(), ""
    stored = study.session.profile(_db(), session)
    return stored["specialty"] or "", stored["years_experience"], ""


@_user_errors
def save_profile(session: Session | None, specialty: str | None, years: float | None) -> str:
    """Store the rater's optional profile; an empty years field leaves it as it was."""
    if not session:
        raise gr.Error(SESSION_ENDED)
    study.update_rater(_db(), session.rater, specialty=specialty or "", years_experience=years)
    return "Profile saved. Thank you!"


# ---------------------------------------------------------------- Results page

ADMIN_OFF = (
    "The results page is switched off on this server. To switch it on, set the environment "
    "variable `DPE_ADMIN_TOKEN` to a long random secret and restart the app (on a Hugging Face "
    "Space: *Settings → Variables and secrets → New secret*), then enter that secret here."
)


def _require_admin(token: str | None, request: gr.Request | None = None) -> None:
    # Checked on every researcher call: private endpoints can still be called over HTTP
    # (/gradio_api/call/<name>). Constant-time comparison; wrong tokens are slowed down.
    expected = os.environ.get("DPE_ADMIN_TOKEN", "")
    if not expected:
        raise gr.Error(ADMIN_OFF)
    client = _client(request)
    try:
        ADMIN_ATTEMPTS.check(client)
    except study.StudyError as exc:
        raise gr.Error(str(exc)) from None
    sent = str(token or "").encode("utf-8", "surrogatepass")  # any text a client sends
    if not hmac.compare_digest(sent, expected.encode("utf-8")):
        ADMIN_ATTEMPTS.failed(client)
        raise gr.Error("That admin token is not right.")
    ADMIN_ATTEMPTS.succeeded(client)


def results_intro():
    """On page load: either ask for the token or say how to switch the page on."""
    if os.environ.get("DPE_ADMIN_TOKEN"):
        return "Enter the admin token (`DPE_ADMIN_TOKEN`) to see results.", gr.Row(visible=True)
    return ADMIN_OFF, gr.Row(visible=False)


def _study_picker(current: str | None) -> gr.Dropdown:
    studies = study.tables.study_choices(_db())
    return gr.Dropdown(choices=studies, value=study.tables.keep_choice(studies, current))


@_user_errors
def open_results(token: str, request: gr.Request | None = None):
    """Check the token, then show the researcher views with the newest study selected."""
    _require_admin(token, request)
    return gr.Column(visible=True), _study_picker(None), method_choices(), ""


@_user_errors
def refresh_studies(token: str, current: str | None, request: gr.Request | None = None):
    """Re-read the list of studies, keeping the selection."""
    _require_admin(token, request)
    return _study_picker(current)


@_user_errors
def show_results(token: str, study_id: str | None, request: gr.Request | None = None):
    """Status, preference shares, Bradley–Terry scores, win matrix, modalities, rater quality."""
    _require_admin(token, request)
    if not study_id:
        empty = study.tables.empty_share()
        return ("No study yet: create one below.", None, empty, None, "", None, None)
    return tuple(study.tables.result_tables(_db(), study_id))


@_user_errors
def export_results(token: str, study_id: str | None, request: gr.Request | None = None) -> str:
    """One zip of what ``python -m study export`` writes: CSV tables, report.json, study.db."""
    _require_admin(token, request)
    if not study_id:
        raise gr.Error("Choose a study to export.")
    return str(study.export_zip(_db(), study_id, _output_dir()))


@_user_errors
def create_study(
    token: str,
    title: str,
    instructions: str,
    methods: list[str],
    files: list[str] | None,
    modality: str,
    use_examples: bool,
    preset: str,
    seed: float,
    design: str,
    repeat_fraction: float,
    show_source: bool,
    progress=gr.Progress(),  # noqa: B008 (Gradio injects the tracker through this default)
    request: gr.Request | None = None,
):
    """Enhance the images with every chosen method, store them blinded and open the study."""
    _require_admin(token, request)
    if use_examples:
        images = study.find_images(EXAMPLES_DIR)
    elif files:
        label = (modality or "").strip() or "unspecified"
        images = [study.SourceImage(Path(f), label) for f in files]
    else:
        raise gr.Error("Upload the study's images, or tick 'Use the example images'.")
    preset = preset if preset in PRESETS else None  # "none": the images are low quality
    try:
        study_id = study.create_study(
            _db(),
            title,
            images,
            list(methods or []),
            instructions=instructions or "",
            labels={m: method_info(m)["label"] for m in methods or []},
            design=design,
            repeat_fraction=float(repeat_fraction),
            seed=int(seed or 0),
            settings={"show_source": bool(show_source), "degrade_preset": preset},
            progress=lambda done, total: progress((done, total), desc="Enhancing", unit="images"),
            **dd.study_functions(preset),
        )
    finally:
        for f in files or []:
            _discard_upload(f)
    message = f"Study **{study_id}** is open with {len(images)} images. Invite raters below."
    return message, _study_picker(study_id)


@_user_errors
def invite(
    token: str,
    study_id: str | None,
    name: str,
    specialty: str,
    years: float | None,
    request: gr.Request | None = None,
):
    """Add a rater; their invite code is shown here once and stored only as a hash."""
    _require_admin(token, request)
    if not study_id:
        raise gr.Error("Choose a study first.")
    years = None if years in (None, "") else int(years)
    new = study.invite_rater(
        _db(), study_id, name, specialty=specialty or "", years_experience=years
    )
    message = (
        f"Rater **{new.pseudonym}** invited. Give them this code (it is shown only once); they "
        "join on the **Study** page."
    )
    return new.code, message


@_user_errors
def close_selected(token: str, study_id: str | None, request: gr.Request | None = None):
    """Stop a study taking votes."""
    _require_admin(token, request)
    if not study_id:
        raise gr.Error("Choose a study first.")
    study.close_study(_db(), study_id)
    return _study_picker(study_id)


@_user_errors
def revoke(
    token: str, study_id: str | None, pseudonym: str, request: gr.Request | None = None
) -> str:
    """Withdraw a rater's invite code (by pseudonym): it stops working at once, even mid-study.

    Their votes so far stay in the study.
    """
    _require_admin(token, request)
    if not study_id:
        raise gr.Error("Choose a study first.")
    rater = study.revoke_rater(_db(), study_id, pseudonym or "")
    return (
        f"Rater **{rater['pseudonym']}**'s invite code is withdrawn; their {rater['votes']} "
        "votes stay in the study. Invite them again for a new code."
    )


# ================================================================ layout and wiring
# Each page's events are wired inside its own `with` block: Gradio assigns an event to the
# page that is open when the event is created, and sends a page only its own events.

KEYBOARD_JS = """
<script>
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
# key presses find the buttons disabled. Passes the event's two inputs through unchanged.
DISABLE_VOTES_JS = """(session, screen) => {
  for (const id of ["vote-a", "vote-b", "vote-tie", "vote-bad", "study-pause"]) {
    const button = document.getElementById(id);
    if (button) button.disabled = true;
  }
  return [session, screen];
}"""

CSS = """
.study-progress { display: flex; gap: 1em; align-items: center; }
.study-progress progress { flex: 1; height: 0.8em; }
#image-a img, #image-b img { width: 100%; height: 100%; object-fit: contain; }
.win-matrix { border-collapse: collapse; }
.win-matrix th, .win-matrix td {
  padding: 0.4em 0.8em; border: 1px solid #d4d4d8; text-align: center;
}
.win-matrix caption { caption-side: bottom; font-size: 0.9em; padding-top: 0.4em; }
"""

# Gradio's own bundled fonts, so a page never asks a font CDN for anything.
THEME = gr.themes.Default(
    primary_hue="teal",
    font=[gr.themes.LocalFont("Source Sans Pro"), "ui-sans-serif", "system-ui", "sans-serif"],
    font_mono=[gr.themes.LocalFont("IBM Plex Mono"), "ui-monospace", "monospace"],
)

LAUNCH_OPTIONS = {
    "theme": THEME,
    "css": CSS,
    "head": KEYBOARD_JS,
    "run_history": False,  # nothing a rater did is replayable from the browser
    "footer_links": ["api", "gradio"],
    "max_file_size": "200mb",
}

PRIVATE = {"api_visibility": "private"}
LIGHT = {**PRIVATE, "concurrency_id": "light", "concurrency_limit": 2}
STUDY = {**PRIVATE, "concurrency_id": "study", "concurrency_limit": 4}
ADMIN = {**PRIVATE, "concurrency_id": "results", "concurrency_limit": 1}
HEAVY = {"concurrency_id": "enhance", "concurrency_limit": 1}  # torch already uses every core


# ---------------------------------------------------------------- Enhance page (/)

with gr.Blocks(title=TITLE, delete_cache=(600, KEEP_SECONDS)) as demo:
    gr.Navbar(main_page_name="Enhance")
    gr.Markdown(
        "# Perceptual enhancement of medical images\n"
        "Upload a radiology, dermatology or microscopy image (PNG, JPEG, 8/16-bit TIFF, DICOM) "
        "or click an example, choose methods and press **Enhance**. Uploads are read once and "
        f"deleted; images larger than {dd.max_megapixels():g} megapixels are downscaled, "
        "with a note."
    )
    loaded = gr.State(None, time_to_live=KEEP_SECONDS)
    loaded_reference = gr.State(None, time_to_live=KEEP_SECONDS)
    with gr.Row():
        with gr.Column(scale=2, min_width=320):
            upload = gr.File(label="Image", type="filepath", elem_id="upload")
            preview = gr.Image(
                label="Loaded image",
                format="png",
                interactive=False,
                height=240,
                buttons=["fullscreen", "download"],
                elem_id="preview",
            )
            choices = dd.available_methods()
            methods = gr.CheckboxGroup(
                choices=choices,
                value=dd.default_methods([k for _, k in choices]),
                label="Methods",
                elem_id="methods",
            )
            with gr.Group():
                simulate = gr.Checkbox(
                    label="Simulate a low-quality acquisition first and measure every method "
                    "against the clean image (the paper's experiment)",
                    elem_id="simulate",
                )
                with gr.Row():
                    preset = gr.Dropdown(["paper", "clinical"], value="paper", label="Preset")
                    seed = gr.Number(0, precision=0, label="Seed")
            reference = gr.File(
                label="Clean reference (optional): metrics for your own pair",
                type="filepath",
                elem_id="reference",
            )
            run = gr.Button("Enhance", variant="primary", elem_id="run")
        with gr.Column(scale=3):
            slider = gr.ImageSlider(label="Before / after (first method)", format="png")
            notes = gr.Markdown(label="Notes", show_label=False, elem_id="notes")
            table = gr.Dataframe(
                headers=dd.METRIC_HEADERS,
                label="Time and quality per method (PSNR, SSIM, ΔE against the clean image)",
                interactive=False,
                elem_id="metrics",
            )
            gallery = gr.Gallery(
                label="All methods side by side", format="png", columns=3, elem_id="results"
            )
            downloads = gr.File(
                label="Lossless PNG downloads",
                file_count="multiple",
                interactive=False,
                elem_id="downloads",
            )
    example_gallery = gr.Gallery(
        value=[(dd.thumbnail(e.path), e.title) for e in EXAMPLES],
        label="Examples (click one to load it)",
        format="png",
        columns=5,
        allow_preview=False,
        interactive=False,
        elem_id="examples",
    )

    upload.upload(load_upload, upload, [loaded, loaded_reference, preview, notes, upload], **LIGHT)
    reference.upload(load_reference, reference, [loaded_reference, notes, reference], **LIGHT)
    example_gallery.select(load_example, None, [loaded, loaded_reference, preview, notes], **LIGHT)
    run.click(
        enhance,
        [upload, methods, simulate, preset, seed, reference, loaded, loaded_reference],
        [slider, gallery, table, downloads, notes],
        api_name="enhance",
        **HEAVY,
    )
    demo.load(method_choices, None, methods, **LIGHT)

# ---------------------------------------------------------------- Study page (/study)

with demo.route("Study", "/study"):
    gr.Navbar(main_page_name="Enhance")
    gr.Markdown("# Image quality study")
    session = gr.State(None)
    screen_token = gr.Textbox(visible=False)  # which screen an answer is for
    remembered = gr.BrowserState(None, storage_key="study-invite-code")
    message = gr.Markdown(elem_id="study-message")
    with gr.Column(visible=True) as join_box:
        gr.Markdown(STUDY_HELP)
        code = gr.Textbox(
            label="Invite code", placeholder="the code from the study team", elem_id="invite-code"
        )
        start = gr.Button("Start", variant="primary", elem_id="study-start")
    with gr.Column(visible=False) as trial_box:
        header = gr.Markdown()
        progress_bar = gr.HTML()
        source = gr.Image(
            label="Low-quality source",
            height=160,
            interactive=False,
            format="png",
            buttons=[],
            elem_id="study-source",
        )
        with gr.Row(equal_height=True):
            image_a = gr.Image(
                label="A", height=460, interactive=False, buttons=["fullscreen"], elem_id="image-a"
            )
            image_b = gr.Image(
                label="B", height=460, interactive=False, buttons=["fullscreen"], elem_id="image-b"
            )
        with gr.Row():
            vote_a = gr.Button("A is better  [1 / ←]", elem_id="vote-a")
            vote_b = gr.Button("B is better  [2 / →]", elem_id="vote-b")
            vote_tie = gr.Button("Tie  [3]", elem_id="vote-tie")
            vote_bad = gr.Button("Both unacceptable  [4]", elem_id="vote-bad")
        pause_button = gr.Button("Pause", size="sm", elem_id="study-pause")
        with gr.Accordion("Your profile (optional)", open=False, elem_id="study-profile"):
            with gr.Row():
                profile_specialty = gr.Textbox(label="Specialty", elem_id="profile-specialty")
                profile_years = gr.Number(
                    label="Years of experience", precision=0, minimum=0, elem_id="profile-years"
                )
            profile_save = gr.Button("Save profile", size="sm", elem_id="profile-save")
            profile_message = gr.Markdown(elem_id="profile-message")
    with gr.Column(visible=False) as paused_box:
        gr.Markdown(
            "**Paused.** Every answer so far is saved. Close this tab if you like: this "
            "browser remembers your code, and the code works on any device."
        )
        resume_button = gr.Button("Resume", variant="primary", elem_id="study-resume")
        forget_button = gr.Button("Sign out on this device", size="sm", elem_id="study-forget")
    with gr.Column(visible=False) as done_box:
        gr.Markdown("**Finished.**")

    view = [join_box, trial_box, paused_box, done_box, message, header, progress_bar]
    view += [source, image_a, image_b, vote_a, vote_b, vote_tie, vote_bad, pause_button]
    STUDY_OUTPUTS = [session, screen_token, *view, remembered]
    answer_buttons = [vote_a, vote_b, vote_tie, vote_bad, pause_button]

    demo.load(restore_code, remembered, [code, message], **STUDY)
    for trigger in (start.click, code.submit):
        trigger(join_study, code, STUDY_OUTPUTS, **STUDY).success(
            show_profile, session, [profile_specialty, profile_years, profile_message], **STUDY
        )
    for button, choice in zip([vote_a, vote_b, vote_tie, vote_bad], study.CHOICES, strict=True):
        # The screen token is read when the button is pressed, before anything else runs.
        button.click(
            _voter(choice), [session, screen_token], STUDY_OUTPUTS, js=DISABLE_VOTES_JS, **STUDY
        ).then(enable_answers, None, answer_buttons, queue=False, **PRIVATE)
    pause_button.click(pause, session, STUDY_OUTPUTS, **STUDY)
    resume_button.click(resume, session, STUDY_OUTPUTS, **STUDY)
    forget_button.click(forget_me, None, STUDY_OUTPUTS, **STUDY)
    profile_save.click(
        save_profile, [session, profile_specialty, profile_years], profile_message, **STUDY
    )

# ---------------------------------------------------------------- Results page (/results)

with demo.route("Results", "/results"):
    gr.Navbar(main_page_name="Enhance")
    gr.Markdown("# Study results")
    intro = gr.Markdown(elem_id="results-intro")
    with gr.Row(visible=False) as token_row:
        token = gr.Textbox(label="Admin token", type="password", elem_id="admin-token")
        unlock = gr.Button("Open", variant="primary", elem_id="admin-open")
    with gr.Column(visible=False) as admin_box:
        with gr.Row():
            study_pick = gr.Dropdown(label="Study", choices=[], elem_id="study-pick", scale=4)
            refresh = gr.Button("Refresh", size="sm", scale=1, elem_id="results-refresh")
        status = gr.Markdown(elem_id="results-status")
        raters = gr.Dataframe(label="Raters", interactive=False)
        share_plot = gr.BarPlot(
            study.tables.empty_share(),
            x="method",
            y="share",
            y_lim=[0, 1],
            sort="-y",
            title="Expert preference share (ties count half)",
            y_title="share of comparisons won",
            elem_id="share-plot",
        )
        ratings = gr.Dataframe(label="Bradley–Terry and JOD scales, 95% CI", interactive=False)
        win_matrix = gr.HTML(elem_id="win-matrix")
        by_modality = gr.Dataframe(
            label="Per modality (when the study has more than one)", interactive=False
        )
        quality = gr.Dataframe(label="Rater quality", interactive=False)
        with gr.Row():
            export_button = gr.Button("Export (zip)", variant="primary", elem_id="export")
            close_button = gr.Button("Close the study to new votes", variant="stop", size="sm")
        export_file = gr.File(label="Export", interactive=False, height=90, elem_id="export-file")
        with gr.Accordion("Invite a rater", open=False):
            with gr.Row():
                rater_name = gr.Textbox(label="Name (kept private; exports use a pseudonym)")
                specialty = gr.Textbox(label="Specialty (optional)")
                years = gr.Number(label="Years of experience (optional)", precision=0)
            invite_button = gr.Button("Invite", elem_id="invite")
            invite_code = gr.Textbox(
                label="Invite code (shown once)", interactive=False, buttons=["copy"]
            )
            invite_message = gr.Markdown()
        with gr.Accordion("Withdraw an invite code", open=False):
            with gr.Row():
                revoke_name = gr.Textbox(label="Rater (pseudonym, e.g. R03)", elem_id="revoke")
                revoke_button = gr.Button("Withdraw code", variant="stop", elem_id="revoke-button")
            revoke_message = gr.Markdown()
        with gr.Accordion("Create a study", open=False):
            new_title = gr.Textbox(label="Title (raters see it; name no method)")
            new_instructions = gr.Textbox(label="Instructions for raters (optional)", lines=3)
            new_methods = gr.CheckboxGroup(label="Methods to compare (two or more)", choices=[])
            new_images = gr.File(label="Images", file_count="multiple", type="filepath")
            with gr.Row():
                new_modality = gr.Textbox(label="Modality of these images", value="unspecified")
                use_examples = gr.Checkbox(label="Use the example images instead")
            with gr.Row():
                new_preset = gr.Dropdown(
                    ["none", "paper", "clinical"],
                    value="none",
                    label="Degrade clean images first (preset)",
                )
                new_seed = gr.Number(0, precision=0, label="Seed")
                new_design = gr.Radio(list(DESIGNS), value="balanced", label="Design")
                new_repeats = gr.Slider(0, 0.5, value=0.1, step=0.05, label="Repeat fraction")
            new_show_source = gr.Checkbox(value=True, label="Show raters the low-quality source")
            create_button = gr.Button("Create study", variant="primary")
            create_message = gr.Markdown()

    result_views = [status, raters, share_plot, ratings, win_matrix, by_modality, quality]

    demo.load(results_intro, None, [intro, token_row], **LIGHT)
    for trigger in (unlock.click, token.submit):
        trigger(open_results, token, [admin_box, study_pick, new_methods, intro], **ADMIN).success(
            show_results, [token, study_pick], result_views, **ADMIN
        )
    study_pick.input(show_results, [token, study_pick], result_views, **ADMIN)
    refresh.click(refresh_studies, [token, study_pick], study_pick, **ADMIN).success(
        show_results, [token, study_pick], result_views, **ADMIN
    )
    export_button.click(export_results, [token, study_pick], export_file, **ADMIN)
    close_button.click(close_selected, [token, study_pick], study_pick, **ADMIN).success(
        show_results, [token, study_pick], result_views, **ADMIN
    )
    invite_button.click(
        invite,
        [token, study_pick, rater_name, specialty, years],
        [invite_code, invite_message],
        **ADMIN,
    )
    revoke_button.click(revoke, [token, study_pick, revoke_name], revoke_message, **ADMIN)
    create_button.click(
        create_study,
        [token, new_title, new_instructions, new_methods, new_images, new_modality, use_examples]
        + [new_preset, new_seed, new_design, new_repeats, new_show_source],
        [create_message, study_pick],
        **PRIVATE,
        **HEAVY,
    ).success(show_results, [token, study_pick], result_views, **ADMIN)

# api_open=False: /gradio_api/run/<name> would run a queued event at once, past its
# concurrency limit and the queue's max_size; every call goes through the queue instead.
demo.queue(default_concurrency_limit=2, max_size=64, api_open=False)

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    try:
        media = _db().media_root
        hub_backup.start_backup(_db())
    except study.StorageError as exc:
        # A read-only or full data folder: the demo still serves, the Study page tells
        # raters so, and _db() tries again on every call.
        logging.getLogger(__name__).error("the study database is unavailable: %s", exc)
        media = study.data_dir().resolve() / "media"
    # Study images may live outside the working and temp folders (a Space's /data): allow
    # exactly their folder, never the database beside it.
    demo.launch(**LAUNCH_OPTIONS, allowed_paths=[str(media)])
