"""Full-reference quality metrics on the project's image type (scikit-image underneath)."""

from __future__ import annotations

import numpy as np
from skimage.color import deltaE_ciede2000, rgb2lab
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from dpe._image import as_rgb_float

PSNR_CAP = 100.0  # dB; identical images would give inf, which no mean survives


def _pair(reference: np.ndarray, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    reference = as_rgb_float(reference, name="reference")
    image = as_rgb_float(image)
    if reference.shape != image.shape:
        raise ValueError(
            f"reference and image must have the same shape; got {reference.shape} and "
            f"{image.shape}. Resize one of them first."
        )
    return reference, image


def psnr(reference: np.ndarray, image: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB (data range 1), capped at ``PSNR_CAP``."""
    reference, image = _pair(reference, image)
    if np.array_equal(reference, image):
        return PSNR_CAP
    value = peak_signal_noise_ratio(reference, image, data_range=1.0)
    return float(min(value, PSNR_CAP))


def ssim(reference: np.ndarray, image: np.ndarray) -> float:
    """Mean structural similarity over the three channels (data range 1)."""
    reference, image = _pair(reference, image)
    win = min(7, *(s if s % 2 else s - 1 for s in reference.shape[:2]))
    if win < 3:
        raise ValueError(f"SSIM needs images of at least 3x3 pixels; got {reference.shape}.")
    return float(
        structural_similarity(reference, image, data_range=1.0, channel_axis=2, win_size=win)
    )


def delta_e(reference: np.ndarray, image: np.ndarray) -> float:
    """Mean CIEDE2000 colour difference in CIELAB (0 for identical images)."""
    reference, image = _pair(reference, image)
    return float(deltaE_ciede2000(rgb2lab(reference), rgb2lab(image), channel_axis=2).mean())


def compare(reference: np.ndarray, image: np.ndarray) -> dict[str, float]:
    """PSNR, SSIM and ΔE of ``image`` against ``reference`` in one dict."""
    return {
        "psnr": psnr(reference, image),
        "ssim": ssim(reference, image),
        "delta_e": delta_e(reference, image),
    }
