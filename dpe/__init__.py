"""Deep perceptual enhancement of medical images (DPE) and its baselines."""

from __future__ import annotations

import numpy as np

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


def enhance(
    image: np.ndarray, method: str = "dpe", *, gray: bool | None = None, **options
) -> np.ndarray:
    """Enhance ``image`` with the registered ``method``; returns float32 (H, W, 3) in [0, 1].

    ``options`` go to the method, e.g. ``enhance(img, "lime", denoise=False)``. ``gray=True``
    (a grayscale source, ``LoadedImage.was_grayscale``) returns identical channels; ``None``
    decides from the image.
    """
    return get_method(method).enhance(image, gray=gray, **options)
