"""The Study page's widgets: the join form, the trial screen, the pause and finish boxes.

`layout` returns every widget by name; `webapp.study_page` wires them to its callbacks, whose
views update them by the same names (``study_page.VIEW``).
"""

from __future__ import annotations

import gradio as gr

from webapp.practice import PRACTICE_TRIALS

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
REMEMBER_KEY = "study-invite-code"


def trial_box(w: dict) -> None:
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
            # Locked until the stored profile has been filled in (`study_page.enable_profile`):
            # typing earlier would be overwritten by that fill.
            w["specialty"] = gr.Textbox(
                label="Specialty", elem_id="profile-specialty", interactive=False
            )
            w["years"] = gr.Number(
                label="Years of experience",
                precision=0,
                minimum=0,
                elem_id="profile-years",
                interactive=False,
            )
        w["profile_save"] = gr.Button(
            "Save profile", size="sm", elem_id="profile-save", interactive=False
        )
        w["profile_message"] = gr.Markdown(elem_id="profile-message")


def layout() -> dict:
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
        trial_box(w)
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
