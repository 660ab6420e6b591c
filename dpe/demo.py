"""What the demo does with an upload, as plain functions the app wires to widgets.

Kept out of ``app.py`` so it is testable without Gradio: size limiting with a visible note,
running several methods with their timings, and metrics against a clean reference.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
from skimage.transform import resize

from dpe.degrade import degrade
from dpe.methods import get_method, method_info
from dpe.metrics import compare
from dpe.weights import WeightsNotFoundError

DEFAULT_MAX_MEGAPIXELS = 2.0


def max_megapixels() -> float:
    """The demo's processing limit: ``DPE_MAX_MEGAPIXELS`` (default 2)."""
    raw = os.environ.get("DPE_MAX_MEGAPIXELS", "")
    try:
        value = float(raw) if raw else DEFAULT_MAX_MEGAPIXELS
    except ValueError:
        value = DEFAULT_MAX_MEGAPIXELS
    return value if value > 0 else DEFAULT_MAX_MEGAPIXELS


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
    image: np.ndarray, methods: list[str], *, reference: np.ndarray | None = None
) -> list[MethodResult]:
    """Enhance ``image`` with each method; a failing method reports its error, the rest run."""
    if not methods:
        raise ValueError("Choose at least one method.")
    if reference is not None and reference.shape != image.shape:
        raise ValueError(
            f"The reference is {reference.shape[1]}×{reference.shape[0]} but the image is "
            f"{image.shape[1]}×{image.shape[0]}; metrics need the same size."
        )
    results = []
    for name in methods:
        label = method_info(name)["label"]
        start = time.perf_counter()
        try:
            out = np.clip(get_method(name).enhance(image), 0, 1).astype(np.float32)
        except (ValueError, WeightsNotFoundError) as exc:
            results.append(MethodResult(name, label, None, 0.0, error=str(exc)))
            continue
        seconds = time.perf_counter() - start
        metrics = compare(reference, out) if reference is not None else {}
        results.append(MethodResult(name, label, out, seconds, metrics))
    return results


def simulate(clean: np.ndarray, preset: str, seed: int) -> tuple[np.ndarray, dict]:
    """The paper's experiment: a low-quality twin of ``clean`` and the draws that made it."""
    return degrade(clean, preset, seed=int(seed), return_params=True)
