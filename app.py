"""Gradio front door: ``python app.py``. Wiring only; the logic lives in dpe/ and study/."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402

import dpe  # noqa: E402
from dpe import demo  # noqa: E402
from dpe.methods import list_methods, method_info  # noqa: E402
from dpe.metrics import compare  # noqa: E402
from dpe.weights import has_weights  # noqa: E402

log = logging.getLogger("app")
EXAMPLES_DIR = Path(__file__).parent / "examples"


# ---------------------------------------------------------------- plain functions


def _available_methods() -> list[tuple[str, str]]:
    """(label, key) for every method whose weights, if it needs any, are present."""
    choices = []
    for name in list_methods():
        info = method_info(name)
        if info["weights"] and not has_weights(info["weights"]):
            continue
        choices.append((info["label"], name))
    return choices


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def _load(path: str | None, what: str) -> np.ndarray:
    if not path:
        raise gr.Error(f"Upload {what} first.")
    try:
        return dpe.load_image(path).image
    except ValueError as exc:
        raise gr.Error(f"Could not read {what}: {exc}") from None


def enhance_upload(path, methods, simulate, preset, seed, reference_path):
    """Enhance one upload with the chosen methods; returns slider, gallery, table, files, notes."""
    image = _load(path, "an image")
    notes = []
    image, note = demo.fit_megapixels(image, demo.max_megapixels())
    if note:
        notes.append(note)
    reference = None
    if simulate:
        reference = image
        image, params = demo.simulate(image, preset, seed)
        notes.append(
            f"Simulated a low-quality acquisition ({preset}, seed {int(seed)}): brightness "
            f"×{params['brightness']:.2f}, contrast ×{params['contrast']:.2f}."
        )
    elif reference_path:
        reference, _ = demo.fit_megapixels(_load(reference_path, "the reference"), 1e9)
        if reference.shape != image.shape:
            raise gr.Error("The reference must have the same size as the image.")
    try:
        results = demo.run_methods(image, list(methods or []), reference=reference)
    except ValueError as exc:
        raise gr.Error(str(exc)) from None
    rows, gallery, files = [], [], []
    out_dir = Path(tempfile.mkdtemp(prefix="dpe-"))
    if reference is not None:
        rows.append(
            ["Low-quality input", "-", *(round(v, 3) for v in compare(reference, image).values())]
        )
    for r in results:
        if r.error:
            notes.append(f"{r.label}: {r.error}")
            continue
        gallery.append((_to_uint8(r.image), f"{r.label} · {r.seconds:.2f} s"))
        target = out_dir / f"{Path(path).stem}_{r.method}.png"
        dpe.save_image(r.image, target)
        files.append(str(target))
        metrics = [round(v, 3) for v in r.metrics.values()] if r.metrics else ["-", "-", "-"]
        rows.append([r.label, round(r.seconds, 3), *metrics])
    first = next((r for r in results if r.image is not None), None)
    slider = (_to_uint8(image), _to_uint8(first.image)) if first else None
    return slider, gallery, rows, files, "\n\n".join(notes)


# ---------------------------------------------------------------- layout

with gr.Blocks(title="DPE: perceptual enhancement of medical images") as demo_app:
    gr.Markdown(
        "# Deep perceptual enhancement for medical images\n"
        "Upload a radiology, dermatology or microscopy image (PNG, JPEG, 16-bit TIFF, DICOM)."
    )
    with gr.Tab("Enhance"):
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="Image", file_types=None, type="filepath")
                choices = _available_methods()
                methods = gr.CheckboxGroup(
                    choices=choices,
                    value=[k for _, k in choices if k == "dpe"] or [choices[0][1]],
                    label="Methods",
                )
                simulate = gr.Checkbox(label="Simulate a low-quality acquisition first")
                with gr.Row():
                    preset = gr.Dropdown(["paper", "clinical"], value="paper", label="Preset")
                    seed = gr.Number(value=0, precision=0, label="Seed")
                reference = gr.File(label="Clean reference (optional)", type="filepath")
                run = gr.Button("Enhance", variant="primary")
            with gr.Column():
                slider = gr.ImageSlider(label="Before / after", format="png")
                notes = gr.Markdown()
        gallery = gr.Gallery(label="All methods", format="png", columns=3)
        table = gr.Dataframe(
            headers=["Method", "Seconds", "PSNR (dB)", "SSIM", "ΔE2000"], label="Timing and metrics"
        )
        downloads = gr.File(label="Lossless PNG downloads", file_count="multiple")

    # ------------------------------------------------------------ wiring
    run.click(
        enhance_upload,
        [upload, methods, simulate, preset, seed, reference],
        [slider, gallery, table, downloads, notes],
        api_name="enhance",
        concurrency_id="enhance",
        concurrency_limit=1,
    )

if __name__ == "__main__":
    demo_app.queue(default_concurrency_limit=8).launch()
