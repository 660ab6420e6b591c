"""The Gradio pages: Enhance (``/``), Study (``/study``) and Results (``/results``).

With ``DPE_STUDY_ONLY=1`` (a deployment for a study) the Enhance page, its menu link and its
API are not built at all: ``/`` only points to the Study page, so no rater can re-create a
stimulus from the source shown beside it.

Each page is a module with its callbacks and a ``build(demo)``; `build_app` puts them together.
The study is a page of its own, not a tab, because Gradio sends each page only its own
components: the Enhance page's method list never reaches a rater's browser. Each page's
events are wired inside its own ``with`` block, because Gradio assigns an event to the page
that is open when the event is created. Logic lives in ``dpe`` (pixels) and ``study``.
"""

from __future__ import annotations

import os

# Gradio's queue rebuilds a pandas table of its last 10,000 events after every event, for a
# /monitoring page this app does not serve: tens of milliseconds of GIL per vote, growing with
# the study (py-spy on benchmarks/load_study.py). Summarise once in a million events, keep 100.
os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "1000000")
os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "100")

import gradio as gr  # noqa: E402

from webapp import enhance, results, study_page, study_viewer, uploads  # noqa: E402

TITLE = "Perceptual enhancement of medical images"

# Gradio's own bundled fonts, so a page never asks a font CDN for anything. Only their
# Regular and Bold files: Gradio's SemiBold (600) files are subsets of a few dozen glyphs
# (Source Sans Pro's has "A", "B" and Cyrillic), so semibold text such as the answer buttons
# drew "A" and "B" in Source Sans and every other letter in a system fallback font. Without a
# 600 face, the browser draws weight 600 with the 700 file.
FONT_WEIGHTS = (400, 700)
THEME = gr.themes.Default(
    primary_hue="teal",
    font=[
        gr.themes.LocalFont("Source Sans Pro", weights=FONT_WEIGHTS),
        "ui-sans-serif",
        "system-ui",
        "sans-serif",
    ],
    font_mono=[
        gr.themes.LocalFont("IBM Plex Mono", weights=FONT_WEIGHTS),
        "ui-monospace",
        "monospace",
    ],
)

LAUNCH_OPTIONS = {
    "theme": THEME,
    "css": study_viewer.CSS + results.CSS,
    "head": study_viewer.KEYBOARD_JS + study_viewer.VIEWER_JS,
    "run_history": False,  # nothing a rater did is replayable from the browser
    "footer_links": ["api", "gradio"],
    "max_file_size": "200mb",
}


STUDY_ONLY_HOME = (
    "# Image quality study\n\nThis server runs a blinded image quality study. "
    "[Open the study](study) and enter the invite code the study team gave you."
)


def study_only() -> bool:
    """Whether ``DPE_STUDY_ONLY`` asks for a study-only deployment (no Enhance page)."""
    return os.environ.get("DPE_STUDY_ONLY", "").strip().lower() in {"1", "true", "yes", "on"}


def build_app(*, only_study: bool | None = None) -> gr.Blocks:
    """The pages in one app, with its queue set up; launch it with ``LAUNCH_OPTIONS``.

    ``only_study`` (default: `study_only`) leaves out the Enhance page and its endpoints.
    """
    only_study = study_only() if only_study is None else only_study
    with gr.Blocks(title=TITLE, delete_cache=(600, uploads.KEEP_SECONDS)) as demo:
        if only_study:
            gr.Navbar(main_page_name=False)
            gr.Markdown(STUDY_ONLY_HOME, elem_id="study-only-home")
        else:
            enhance.build(demo)
    # Each page's events are wired inside its own block: Gradio assigns an event to the page
    # that is open when the event is created, and sends a page only its own events.
    with demo.route("Study", "/study"):
        study_page.build(demo)
    with demo.route("Results", "/results"):
        results.build(demo, main_page_name=False if only_study else "Enhance")
    # api_open=False: /gradio_api/run/<name> would run a queued event at once, past its
    # concurrency limit and the queue's max_size; every call goes through the queue instead.
    demo.queue(default_concurrency_limit=2, max_size=64, api_open=False)
    return demo
