"""The Enhance page (``/``): upload or pick an example, run methods, compare, measure, download."""

from __future__ import annotations

import secrets
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
from PIL import Image, PngImagePlugin

from dpe import demo as dd
from webapp import uploads, worker
from webapp.common import EXAMPLES, HEAVY, LIGHT, user_errors

INTRO = (
    "# Perceptual enhancement of medical images\n"
    "Upload a radiology, dermatology or microscopy image (PNG, JPEG, 8/16-bit TIFF, DICOM) "
    "or click an example, choose methods and press **Enhance**. Uploads are read once and "
    "deleted; images larger than {limit:g} megapixels are downscaled, with a note."
)
SIMULATE_LABEL = (
    "Simulate a low-quality acquisition first and measure every method "
    "against the clean image (the paper's experiment)"
)

# ---------------------------------------------------------------- callbacks


def method_choices() -> gr.CheckboxGroup:
    """The methods that can run now (re-read on every page load, so new weights appear)."""
    choices = dd.available_methods()
    return gr.CheckboxGroup(choices=choices, value=dd.default_methods([k for _, k in choices]))


def load_upload(path: str | None):
    """Decode an upload once, keep its pixels in the session, delete the file, show a preview."""
    if not path:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
    prepared = uploads.prepare_upload(path, "this file")
    return prepared, None, dd.to_uint8(prepared.image), "\n\n".join(prepared.notes), None


def load_reference(path: str | None):
    """Decode the optional clean reference the same way; the upload itself is deleted."""
    if not path:
        return gr.skip(), gr.skip(), gr.skip()
    prepared = uploads.prepare_upload(path, "the reference")
    return prepared, f"Reference loaded: **{prepared.name}**; metrics will use it.", None


def load_example(evt: gr.SelectData):
    """Load the example the visitor clicked in the gallery."""
    prepared = dd.prepare(EXAMPLES[evt.index].path)
    return prepared, None, dd.to_uint8(prepared.image), "\n\n".join(prepared.notes)


@user_errors
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
    prepared = uploads.prepare_upload(image, "the image") if image else loaded
    if prepared is None:
        raise gr.Error("Upload an image first, or click one of the examples.")
    ref = uploads.prepare_upload(reference, "the reference") if reference else loaded_reference
    enhanced = dd.enhance_upload(
        prepared,
        list(methods or []),
        simulate_preset=preset if simulate else None,
        seed=int(seed or 0),
        reference=ref,
        progress=lambda done, total, label: progress(
            (done, total), desc=f"Running {label}", unit="methods"
        ),
        runner=worker.run,  # a lower-priority process: votes on the Study page come first
    )
    out = uploads.output_dir()
    files = dd.write_results(enhanced, out, prepared.name, bits=prepared.bit_depth)
    slider, gallery = view_files(enhanced, out)
    table = pd.DataFrame(dd.metrics_rows(enhanced), columns=dd.METRIC_HEADERS)
    notes = "\n\n".join(enhanced.notes)
    return slider, gallery, table, [str(f) for f in files], notes


def _own_png(folder: Path, image: np.ndarray) -> str:
    path = folder / f"view-{secrets.token_hex(8)}.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("response", secrets.token_hex(8))  # these bytes are this response's own
    Image.fromarray(image).save(path, pnginfo=info)
    return str(path)


def view_files(enhanced: dd.Enhanced, folder: Path):
    """The before/after pair (or None) and the gallery, as PNG files only this response has.

    Returned as arrays, Gradio saves each under a name made from a hash of its bytes and
    rewrites that file every time: two visitors enhancing the same picture at once were sent a
    file while it was being rewritten (a download cut short, "Too little data for declared
    Content-Length", in benchmarks/load_study.py). A random text chunk makes each file's bytes,
    and so its place in Gradio's cache, this response's own; a returned path is copied once.
    """
    items = dd.gallery(enhanced)
    paths = [_own_png(folder, image) for image, _ in items]
    first = dd.before_after_index(enhanced)
    slider = None if first is None else (paths[0], paths[first])
    return slider, [(path, caption) for path, (_, caption) in zip(paths, items, strict=True)]


# ---------------------------------------------------------------- layout and events


def build(demo: gr.Blocks) -> None:
    """Lay out the Enhance page inside ``demo`` (the main page) and wire its events."""
    gr.Navbar(main_page_name="Enhance")
    gr.Markdown(INTRO.format(limit=dd.max_megapixels()))
    loaded = gr.State(None, time_to_live=uploads.KEEP_SECONDS)
    loaded_reference = gr.State(None, time_to_live=uploads.KEEP_SECONDS)
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
                simulate = gr.Checkbox(label=SIMULATE_LABEL, elem_id="simulate")
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
