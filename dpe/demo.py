"""What the demo does with an image, as plain functions the web pages wire to widgets.

Pixels only, no Gradio: size limiting with a visible note, running several methods with their
timings, metrics against a clean reference, what the page shows of the results, lossless
downloads, the examples gallery and the practice pairs shown to experts before a study.
Uploads, temporary folders and access live in ``webapp``.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from skimage.transform import resize

from dpe._image import to_uint8
from dpe.degrade import degrade
from dpe.files import image_files
from dpe.io import load_image, megapixels_from_env, save_image
from dpe.methods import get_method, list_methods, method_info
from dpe.metrics import compare
from dpe.weights import WeightsNotFoundError, has_weights, hub_repo

DEFAULT_MAX_MEGAPIXELS = 2.0
# progress(done, total, label): told before each method starts (the app passes it to Gradio).
Progress = Callable[[int, int, str], None]
Runner = Callable[..., np.ndarray]  # runner(name, image, gray=...): one method's output


def max_megapixels() -> float:
    """The demo's processing limit: ``DPE_MAX_MEGAPIXELS`` (default 2).

    A value that is not a positive number raises ValueError naming the variable; the web
    pages read the limit when they are built, so a misconfigured app stops at start-up.
    """
    return megapixels_from_env("DPE_MAX_MEGAPIXELS", DEFAULT_MAX_MEGAPIXELS)


def fit_megapixels(image: np.ndarray, limit: float) -> tuple[np.ndarray, str | None]:
    """Downscale ``image`` to at most ``limit`` megapixels; the note says if it happened."""
    h, w = image.shape[:2]
    if h * w <= limit * 1e6:
        return image, None
    scale = (limit * 1e6 / (h * w)) ** 0.5
    nh, nw = max(1, int(h * scale)), max(1, int(w * scale))
    small = resize(image, (nh, nw), anti_aliasing=True, preserve_range=True)
    note = (
        f"Downscaled from {w}×{h} to {nw}×{nh} to stay under {limit:g} megapixels "
        "(DPE_MAX_MEGAPIXELS); run `python -m dpe enhance` for full resolution."
    )
    return small.astype(np.float32), note


@dataclass
class MethodResult:
    method: str
    label: str
    image: np.ndarray | None
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None


def run_methods(
    image: np.ndarray,
    methods: list[str],
    *,
    reference: np.ndarray | None = None,
    progress: Progress | None = None,
    gray: bool | None = None,
    runner: Runner | None = None,
) -> list[MethodResult]:
    """Enhance ``image`` with each method; a failing method reports its error, the rest run.

    ``progress(done, total, label)`` is called before each method starts. ``gray`` says
    whether the source was grayscale (``LoadedImage.gray``; None: decided from the pixels).
    ``runner(name, image, gray=...)`` runs one method (default: in this process; the app's
    runs it in a lower-priority worker, `webapp.worker`).
    """
    if not methods:
        raise ValueError("Choose at least one method.")
    if reference is not None and reference.shape != image.shape:
        raise ValueError(
            f"The reference is {reference.shape[1]}×{reference.shape[0]} but the image is "
            f"{image.shape[1]}×{image.shape[0]}; metrics need the same size."
        )
    results = []
    for done, name in enumerate(methods):
        label = method_info(name)["label"]
        if progress is not None:
            progress(done, len(methods), label)
        start = time.perf_counter()
        try:
            out = (runner or run_one)(name, image, gray=gray)
            out = np.clip(out, 0, 1).astype(np.float32)
        except (ValueError, WeightsNotFoundError) as exc:
            results.append(MethodResult(name, label, None, 0.0, error=str(exc)))
            continue
        seconds = time.perf_counter() - start
        metrics = compare(reference, out) if reference is not None else {}
        results.append(MethodResult(name, label, out, seconds, metrics))
    return results


def run_one(name: str, image: np.ndarray, *, gray: bool | None = None) -> np.ndarray:
    """Method ``name`` on ``image`` in this process: the default runner of :func:`run_methods`."""
    return get_method(name).enhance(image, gray=gray)


def simulate(
    clean: np.ndarray, preset: str, seed: int, *, gray: bool | None = None
) -> tuple[np.ndarray, dict]:
    """The paper's experiment: a low-quality twin of ``clean`` and the draws that made it."""
    return degrade(clean, preset, seed=int(seed), gray=gray, return_params=True)


def available_methods() -> list[tuple[str, str]]:
    """(label, key) of every method the demo can run now: deep ones only once their weights exist.

    Read on every call, so weights dropped into ``weights/`` show up without a restart. With
    ``DPE_WEIGHTS_REPO`` set, deep methods are offered and their weights fetched on first use.
    """
    from_hub = bool(hub_repo())
    choices = []
    for name in list_methods():
        info = method_info(name)
        if info["weights"] and not (from_hub or has_weights(info["weights"])):
            continue
        choices.append((info["label"], name))
    return choices


def default_methods(available: list[str]) -> list[str]:
    """What is ticked at first: the best-ranked method that can run (`dpe.methods.RECOMMENDED`),
    else the first method that changes pixels."""
    from dpe.methods import RECOMMENDED

    for name in RECOMMENDED:
        if name in available:
            return [name]
    changing = [m for m in available if m != "identity"]
    return changing[:1] or available[:1]


@dataclass
class Prepared:
    """An image ready for the methods: pixels at demo size, a name for downloads, notes, and
    whether the source is grayscale (``LoadedImage.gray``)."""

    image: np.ndarray
    name: str
    bit_depth: int
    notes: list[str]
    gray: bool = False


def prepare(
    source: str | os.PathLike, *, name: str | None = None, limit: float | None = None
) -> Prepared:
    """Load ``source`` with `dpe.load_image`; fit it to ``limit`` megapixels (default: the app's).

    Raises `dpe.ImageError` (a ValueError) with a readable message for anything unreadable.
    """
    loaded = load_image(source)
    name = safe_stem(name or Path(source).name)
    image, note = fit_megapixels(loaded.image, max_megapixels() if limit is None else limit)
    h, w = loaded.image.shape[:2]
    kind = f"{loaded.bit_depth}-bit {loaded.format}".strip()
    notes = [f"Loaded **{name}**: {w}×{h}, {kind}."] + list(loaded.notes)
    if note:
        notes.append(note)
    return Prepared(image, name, int(loaded.bit_depth), notes, bool(loaded.gray))


def safe_stem(filename: str) -> str:
    """A file name's stem reduced to characters that are safe in a download's name."""
    stem = Path(str(filename)).stem
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")[:60] or "image"


@dataclass
class Enhanced:
    """Everything one press of "Enhance" produced."""

    input: np.ndarray  # what the methods saw: the low-quality twin when simulating
    results: list[MethodResult]
    reference: np.ndarray | None = None
    input_metrics: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    simulated: bool = False


def enhance_prepared(
    image: np.ndarray,
    methods: list[str],
    *,
    simulate_preset: str | None = None,
    seed: int = 0,
    reference: np.ndarray | None = None,
    progress: Progress | None = None,
    gray: bool | None = None,
    runner: Runner | None = None,
) -> Enhanced:
    """Run ``methods`` on ``image``; with ``simulate_preset`` degrade it first and score every
    method against the clean original, else score against ``reference`` when one is given.
    ``progress``, ``gray`` (a grayscale source) and ``runner`` go to :func:`run_methods`."""
    notes = []
    if simulate_preset:
        reference = image
        image, params = simulate(image, simulate_preset, seed, gray=gray)
        notes.append(describe_degradation(params, int(seed)))
    scored = reference  # a reference of another size still gets run_methods' clear error
    if scored is not None and scored.shape == image.shape and min(image.shape[:2]) < 3:
        h, w = image.shape[:2]
        notes.append(f"No metrics: SSIM needs at least 3×3 pixels and the image is {w}×{h}.")
        scored = None
    results = run_methods(
        image, list(methods), reference=scored, progress=progress, gray=gray, runner=runner
    )
    input_metrics = compare(scored, image) if scored is not None else {}
    notes += [f"{r.label}: {r.error}" for r in results if r.error]
    return Enhanced(image, results, reference, input_metrics, notes, bool(simulate_preset))


REFERENCE_UNUSED = "The reference is not used while simulating: the clean image is the reference."


def enhance_upload(
    prepared: Prepared,
    methods: list[str],
    *,
    simulate_preset: str | None = None,
    seed: int = 0,
    reference: Prepared | None = None,
    progress: Progress | None = None,
    runner: Runner | None = None,
) -> Enhanced:
    """:func:`enhance_prepared` on a loaded upload, scored against a loaded ``reference``.

    The notes start with the upload's own; while simulating, the clean image is the
    reference and a given ``reference`` is set aside with a note.
    """
    notes = list(prepared.notes)
    if reference is not None and simulate_preset:
        notes.append(REFERENCE_UNUSED)
    enhanced = enhance_prepared(
        prepared.image,
        list(methods),
        simulate_preset=simulate_preset,
        seed=seed,
        reference=None if simulate_preset or reference is None else reference.image,
        progress=progress,
        gray=prepared.gray,
        runner=runner,
    )
    enhanced.notes[:0] = notes
    return enhanced


def gallery(enhanced: Enhanced) -> list[tuple[np.ndarray, str]]:
    """(uint8 image, caption) for the side-by-side view: the input (and the clean original
    when simulating), then each method that ran, with its time."""
    items = [(to_uint8(enhanced.input), "Low-quality input" if enhanced.simulated else "Input")]
    if enhanced.simulated:
        items.append((to_uint8(enhanced.reference), "Clean original"))
    items += [
        (to_uint8(r.image), f"{r.label} · {r.seconds:.2f} s")
        for r in enhanced.results
        if r.image is not None
    ]
    return items


def before_after_index(enhanced: Enhanced) -> int | None:
    """Where the first method's output sits in :func:`gallery` (after the input, and the clean
    original when simulating), or None when no method ran."""
    ran = any(r.image is not None for r in enhanced.results)
    return (2 if enhanced.simulated else 1) if ran else None


def before_after(enhanced: Enhanced) -> tuple[np.ndarray, np.ndarray] | None:
    """The input and the first method's output as uint8, or None when no method ran."""
    first = before_after_index(enhanced)
    if first is None:
        return None
    items = gallery(enhanced)
    return items[0][0], items[first][0]


def describe_degradation(params: dict, seed: int) -> str:
    """One sentence on the draws that made a simulated low-quality image."""
    parts = [
        f"brightness ×{params['brightness']:.2f}",
        f"contrast ×{params['contrast']:.2f}",
    ]
    if "noise_sigma" in params:
        parts.append(f"noise σ ≤ {params['noise_sigma']:.4f}")
    if "blur_sigma" in params:
        parts.append(f"blur σ {params['blur_sigma']:.2f} px")
    if "photons" in params:
        parts.append(f"{params['photons']:.0f} photons at full scale")
    if "gauss_sigma" in params:
        parts.append(f"read noise σ {params['gauss_sigma']:.4f}")
    return (
        f"Simulated a low-quality acquisition (preset **{params['preset']}**, seed **{seed}**): "
        + ", ".join(parts)
        + "."
    )


METRIC_HEADERS = ["Method", "Seconds", "PSNR (dB)", "SSIM", "ΔE2000 (lower is better)"]


def metrics_rows(enhanced: Enhanced) -> list[list]:
    """One row per method for the timing-and-metrics table (``"-"`` where nothing applies)."""
    rows = []
    if enhanced.input_metrics:
        name = "Simulated low-quality input" if enhanced.simulated else "Input"
        rows.append([name, "-", *_rounded(enhanced.input_metrics)])
    for r in enhanced.results:
        if r.image is None:
            continue
        metrics = _rounded(r.metrics) if r.metrics else ["-", "-", "-"]
        rows.append([r.label, round(r.seconds, 3), *metrics])
    return rows


def _rounded(metrics: dict[str, float]) -> list[float]:
    return [round(metrics[k], 3) for k in ("psnr", "ssim", "delta_e")]


def write_results(
    enhanced: Enhanced, out_dir: str | os.PathLike, stem: str, *, bits: int = 8
) -> list[Path]:
    """Save every method's output as a lossless PNG (16-bit when ``bits`` > 8); return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for r in enhanced.results:
        if r.image is None:
            continue
        path = out / f"{safe_stem(stem)}_{r.method}.png"
        save_image(r.image, path, bits=16 if bits > 8 else 8)
        paths.append(path)
    return paths


@dataclass(frozen=True)
class Example:
    """An image from ``examples/``: its file, modality (the folder) and a readable title."""

    path: Path
    modality: str
    title: str


MODALITY_ORDER = ("radiology", "dermatology", "microscopy", "ophthalmology")


def example_images(root: str | os.PathLike) -> list[Example]:
    """The example images under ``root/<modality>/``, radiology first, then by file name."""
    root = Path(root)
    found = []
    for path in image_files(root):
        if len(path.relative_to(root).parts) != 2:
            continue  # only root/<modality>/<file>
        modality = path.parent.name
        title = f"{modality.capitalize()}: {path.stem.replace('_', ' ')}"
        found.append(Example(path, modality, title))
    rank = {m: n for n, m in enumerate(MODALITY_ORDER)}
    return sorted(found, key=lambda e: (rank.get(e.modality, len(rank)), e.path.name))


def examples_of(examples: list[Example], modalities: tuple[str, ...]) -> list[Path]:
    """The first example of each modality in ``modalities`` that has one, in that order."""
    first = {}
    for e in examples:
        first.setdefault(e.modality, e.path)
    return [first[m] for m in modalities if m in first]


def thumbnail(path: str | os.PathLike, size: int = 192) -> np.ndarray:
    """A uint8 preview of an image file, at most ``size`` pixels on its longer side."""
    image = load_image(path).image
    h, w = image.shape[:2]
    scale = min(1.0, size / max(h, w))
    if scale < 1.0:
        image = resize(
            image, (max(1, round(h * scale)), max(1, round(w * scale))), anti_aliasing=True
        )
    return to_uint8(image)


@dataclass(frozen=True)
class PracticePair:
    """An unscored warm-up comparison: a degraded source, and the clean original beside a
    degraded copy, in random order. Files carry random names, like real study images."""

    source: Path
    left: Path
    right: Path


def practice_pairs(
    images: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    size: int = 384,
    preset: str = "paper",
    methods: tuple[str, str] = ("autocontrast", "clahe"),
) -> list[PracticePair]:
    """One practice screen per image in ``images``, written to ``out_dir`` under random names.

    It looks like a trial: the source is the image (fitted to about ``size``² pixels) degraded
    with ``preset``; left and right are its enhancements by the two ``methods``, in an order
    drawn from ``seed``. The clean original is never written: on a trial screen every image is
    made from the low-quality source, so practice must not teach raters to look for a pristine
    picture.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pairs = []
    for n, path in enumerate(images):
        loaded = load_image(path)
        clean, _ = fit_megapixels(loaded.image, size * size / 1e6)
        low = degrade(clean, preset, seed=seed + n, gray=loaded.gray)
        sides = [get_method(method).enhance(low, gray=loaded.gray) for method in methods]
        if rng.random() < 0.5:
            sides.reverse()
        left, right = (_write_random(out, image) for image in sides)
        pairs.append(PracticePair(_write_random(out, low), left, right))
    return pairs


def _write_random(out: Path, image: np.ndarray) -> Path:
    path = out / f"{secrets.token_urlsafe(16)}.png"
    save_image(image, path)
    return path
