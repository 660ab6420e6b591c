"""The Results page (``/results``): researchers with ``DPE_ADMIN_TOKEN`` watch, analyse, export,
invite and create studies. Every callback checks the token first (`access.require_admin`)."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

import study
import study.tables
from study import bridge
from study.design import DESIGNS
from webapp import access, uploads
from webapp.common import ADMIN, EXAMPLES_DIR, HEAVY, LIGHT, PRIVATE, db, user_errors
from webapp.enhance import method_choices

NO_DEGRADATION = "none"
CSS = """
.win-matrix { border-collapse: collapse; }
.win-matrix th, .win-matrix td {
  padding: 0.4em 0.8em; border: 1px solid #d4d4d8; text-align: center;
}
.win-matrix caption { caption-side: bottom; font-size: 0.9em; padding-top: 0.4em; }
"""

# ---------------------------------------------------------------- callbacks


def results_intro():
    """On page load: either ask for the token or say how to switch the page on."""
    if access.admin_enabled():
        return "Enter the admin token (`DPE_ADMIN_TOKEN`) to see results.", gr.Row(visible=True)
    return access.ADMIN_OFF, gr.Row(visible=False)


def _study_picker(current: str | None) -> gr.Dropdown:
    studies = study.tables.study_choices(db())
    return gr.Dropdown(choices=studies, value=study.tables.keep_choice(studies, current))


def _chosen(token: str, study_id: str | None, request: gr.Request | None) -> str:
    """Check the token, then the study the researcher chose; return its id."""
    access.require_admin(token, request)
    if not study_id:
        raise gr.Error("Choose a study first.")
    return study_id


@user_errors
def open_results(token: str, request: gr.Request | None = None):
    """Check the token, then show the researcher views with the newest study selected."""
    access.require_admin(token, request)
    return gr.Column(visible=True), _study_picker(None), method_choices(), ""


@user_errors
def refresh_studies(token: str, current: str | None, request: gr.Request | None = None):
    """Re-read the list of studies, keeping the selection."""
    access.require_admin(token, request)
    return _study_picker(current)


@user_errors
def show_results(token: str, study_id: str | None, request: gr.Request | None = None):
    """Status, preference shares, Bradley–Terry scores, win matrix, modalities, rater quality."""
    access.require_admin(token, request)
    if not study_id:
        empty = study.tables.empty_share()
        return ("No study yet: create one below.", None, empty, None, "", None, None)
    return tuple(study.tables.result_tables(db(), study_id))


@user_errors
def export_results(token: str, study_id: str | None, request: gr.Request | None = None) -> str:
    """One zip of what ``python -m study export`` writes: CSV tables, report.json, study.db."""
    access.require_admin(token, request)
    if not study_id:
        raise gr.Error("Choose a study to export.")
    return str(study.export_zip(db(), study_id, uploads.output_dir()))


@user_errors
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
    access.require_admin(token, request)
    if use_examples:
        images = bridge.find_images(EXAMPLES_DIR)
    elif files:
        label = (modality or "").strip() or "unspecified"
        images = [study.SourceImage(Path(f), label) for f in files]
    else:
        raise gr.Error("Upload the study's images, or tick 'Use the example images'.")
    try:
        study_id = bridge.create_study(
            db(),
            title,
            images,
            list(methods or []),
            degrade=None if preset == NO_DEGRADATION else preset,
            seed=int(seed or 0),
            instructions=instructions or "",
            design=design,
            repeat_fraction=float(repeat_fraction),
            settings={"show_source": bool(show_source)},
            progress=lambda done, total: progress((done, total), desc="Enhancing", unit="images"),
        )
    finally:
        for f in files or []:
            uploads.discard(f)
    message = f"Study **{study_id}** is open with {len(images)} images. Invite raters below."
    return message, _study_picker(study_id)


@user_errors
def invite(
    token: str,
    study_id: str | None,
    name: str,
    specialty: str,
    years: float | None,
    request: gr.Request | None = None,
):
    """Add a rater; their invite code is shown here once and stored only as a hash."""
    study_id = _chosen(token, study_id, request)
    years = None if years in (None, "") else int(years)
    new = study.invite_rater(
        db(), study_id, name, specialty=specialty or "", years_experience=years
    )
    message = (
        f"Rater **{new.pseudonym}** invited. Give them this code (it is shown only once); they "
        "join on the **Study** page."
    )
    return new.code, message


@user_errors
def ask_to_close(token: str, study_id: str | None, request: gr.Request | None = None):
    """First step of closing: show the confirmation (closing takes a second click)."""
    _chosen(token, study_id, request)
    return gr.Row(visible=True)


def cancel_close():
    """Hide the confirmation; nothing changes."""
    return gr.Row(visible=False)


@user_errors
def close_selected(token: str, study_id: str | None, request: gr.Request | None = None):
    """Stop a study taking votes (after the researcher confirmed); undo with `reopen_selected`."""
    study.close_study(db(), _chosen(token, study_id, request))
    return _study_picker(study_id), gr.Row(visible=False)


@user_errors
def reopen_selected(token: str, study_id: str | None, request: gr.Request | None = None):
    """Take votes again for a closed study."""
    study.reopen_study(db(), _chosen(token, study_id, request))
    return _study_picker(study_id)


@user_errors
def revoke(
    token: str, study_id: str | None, pseudonym: str, request: gr.Request | None = None
) -> str:
    """Withdraw a rater's invite code (by pseudonym): it stops working at once, even mid-study.

    Their votes so far stay in the study.
    """
    rater = study.revoke_rater(db(), _chosen(token, study_id, request), pseudonym or "")
    return (
        f"Rater **{rater['pseudonym']}**'s invite code is withdrawn; their {rater['votes']} "
        "votes stay in the study. Invite them again for a new code."
    )


# ---------------------------------------------------------------- layout and events


def _result_views(w: dict) -> None:
    """Status, raters, shares, scales, win matrix, per modality, rater quality."""
    w["status"] = gr.Markdown(elem_id="results-status")
    # Tall enough for a whole panel: a shorter table hid raters below its fold, unannounced.
    w["raters"] = gr.Dataframe(label="Raters (all of them)", interactive=False, max_height=2000)
    w["share"] = gr.BarPlot(
        study.tables.empty_share(),
        x="method",
        y="share",
        y_lim=[0, 1],
        sort="-y",
        title="Expert preference share (ties count half)",
        y_title="share of comparisons won",
        elem_id="share-plot",
    )
    w["ratings"] = gr.Dataframe(label="Bradley–Terry and JOD scales, 95% CI", interactive=False)
    w["win_matrix"] = gr.HTML(elem_id="win-matrix")
    w["by_modality"] = gr.Dataframe(
        label="Per modality (when the study has more than one)", interactive=False
    )
    w["quality"] = gr.Dataframe(label="Rater quality", interactive=False)


def _rater_forms(w: dict) -> None:
    """Export, close, and the invite and withdraw forms."""
    with gr.Row():
        w["export"] = gr.Button("Export (zip)", variant="primary", elem_id="export")
        w["close"] = gr.Button(
            "Close the study to new votes…", variant="stop", size="sm", elem_id="close-study"
        )
        w["reopen"] = gr.Button("Reopen a closed study", size="sm", elem_id="reopen-study")
    with gr.Row(visible=False, elem_id="close-confirm") as w["confirm_row"]:
        gr.Markdown(
            "**Close this study?** Raters can no longer vote; their answers stay. You can "
            "reopen it later (here, or `python -m study reopen STUDY`)."
        )
        w["confirm_close"] = gr.Button("Yes, close it", variant="stop", elem_id="close-yes")
        w["cancel_close"] = gr.Button("Cancel", elem_id="close-cancel")
    w["export_file"] = gr.File(label="Export", interactive=False, height=90, elem_id="export-file")
    with gr.Accordion("Invite a rater", open=False):
        with gr.Row():
            w["rater_name"] = gr.Textbox(label="Name (kept private; exports use a pseudonym)")
            w["specialty"] = gr.Textbox(label="Specialty (optional)")
            w["years"] = gr.Number(label="Years of experience (optional)", precision=0)
        w["invite"] = gr.Button("Invite", elem_id="invite")
        w["invite_code"] = gr.Textbox(
            label="Invite code (shown once)", interactive=False, buttons=["copy"]
        )
        w["invite_message"] = gr.Markdown()
    with gr.Accordion("Withdraw an invite code", open=False):
        with gr.Row():
            w["revoke_name"] = gr.Textbox(label="Rater (pseudonym, e.g. R03)", elem_id="revoke")
            w["revoke"] = gr.Button("Withdraw code", variant="stop", elem_id="revoke-button")
        w["revoke_message"] = gr.Markdown()


def _create_form(w: dict) -> list:
    """The "Create a study" form; returns its inputs in `create_study`'s order (after token)."""
    with gr.Accordion("Create a study", open=False):
        title = gr.Textbox(label="Title (raters see it; name no method)")
        instructions = gr.Textbox(label="Instructions for raters (optional)", lines=3)
        w["new_methods"] = gr.CheckboxGroup(label="Methods to compare (two or more)", choices=[])
        images = gr.File(label="Images", file_count="multiple", type="filepath")
        with gr.Row():
            modality = gr.Textbox(label="Modality of these images", value="unspecified")
            use_examples = gr.Checkbox(label="Use the example images instead")
        with gr.Row():
            preset = gr.Dropdown(
                [NO_DEGRADATION, "paper", "clinical"],
                value=NO_DEGRADATION,
                label="Degrade clean images first (preset)",
            )
            seed = gr.Number(0, precision=0, label="Seed")
            design = gr.Radio(list(DESIGNS), value="balanced", label="Design")
            repeats = gr.Slider(0, 0.5, value=0.1, step=0.05, label="Repeat fraction")
        show_source = gr.Checkbox(value=True, label="Show raters the low-quality source")
        w["create"] = gr.Button("Create study", variant="primary")
        w["create_message"] = gr.Markdown()
    new = [title, instructions, w["new_methods"], images, modality, use_examples, preset, seed]
    return new + [design, repeats, show_source]


def build(demo: gr.Blocks, *, main_page_name: str | bool = "Enhance") -> None:
    """Lay out the Results page (call inside its ``demo.route``) and wire its events."""
    gr.Navbar(main_page_name=main_page_name)
    gr.Markdown("# Study results")
    intro = gr.Markdown(elem_id="results-intro")
    with gr.Row(visible=False) as token_row:
        token = gr.Textbox(label="Admin token", type="password", elem_id="admin-token")
        unlock = gr.Button("Open", variant="primary", elem_id="admin-open")
    w: dict = {}
    with gr.Column(visible=False) as admin_box:
        with gr.Row():
            pick = gr.Dropdown(label="Study", choices=[], elem_id="study-pick", scale=4)
            refresh = gr.Button("Refresh", size="sm", scale=1, elem_id="results-refresh")
        _result_views(w)
        _rater_forms(w)
        new_study = _create_form(w)
    views = [w[k] for k in ("status", "raters", "share", "ratings", "win_matrix")]
    views += [w["by_modality"], w["quality"]]
    chosen = [token, pick]

    demo.load(results_intro, None, [intro, token_row], **LIGHT)
    for trigger in (unlock.click, token.submit):
        trigger(open_results, token, [admin_box, pick, w["new_methods"], intro], **ADMIN).success(
            show_results, chosen, views, **ADMIN
        )
    pick.input(show_results, chosen, views, **ADMIN)
    refresh.click(refresh_studies, chosen, pick, **ADMIN).success(
        show_results, chosen, views, **ADMIN
    )
    w["export"].click(export_results, chosen, w["export_file"], **ADMIN)
    w["close"].click(ask_to_close, chosen, w["confirm_row"], **ADMIN)
    w["cancel_close"].click(cancel_close, None, w["confirm_row"], **ADMIN)
    w["confirm_close"].click(close_selected, chosen, [pick, w["confirm_row"]], **ADMIN).success(
        show_results, chosen, views, **ADMIN
    )
    w["reopen"].click(reopen_selected, chosen, pick, **ADMIN).success(
        show_results, chosen, views, **ADMIN
    )
    w["invite"].click(
        invite,
        [*chosen, w["rater_name"], w["specialty"], w["years"]],
        [w["invite_code"], w["invite_message"]],
        **ADMIN,
    )
    w["revoke"].click(revoke, [*chosen, w["revoke_name"]], w["revoke_message"], **ADMIN)
    w["create"].click(
        create_study,
        [token, *new_study],
        [w["create_message"], pick],
        **PRIVATE,
        **HEAVY,
    ).success(show_results, chosen, views, **ADMIN)
