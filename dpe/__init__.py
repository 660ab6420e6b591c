"""Deep perceptual enhancement of medical images (DPE) and its baselines."""

from __future__ import annotations

import numpy as np

from dpe._image import as_rgb_float
from dpe.degrade import degrade
from dpe.io import ImageError, LoadedImage, load_image, save_image
from dpe.methods import create_method, get_method, list_methods

__all__ = [
    "ImageError",
    "LoadedImage",
    "create_method",
    "degrade",
    "enhance",
    "get_method",
    "list_methods",
    "load_image",
    "save_image",
]


def enhance(image: np.ndarray, method: str = "dpe", **options) -> np.ndarray:
    """Enhance ``image`` with the registered ``method``; returns float32 (H, W, 3) in [0, 1].

    ``options`` go to the method, e.g. ``enhance(img, "lime", denoise=False)``.
    """
    image = as_rgb_float(image)
    out = get_method(method).enhance(image, **options)
    return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)
