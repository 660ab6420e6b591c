"""Cheap references every results table carries, so it says honestly what a deep model adds.

``identity`` is the low-quality input as is; ``autocontrast`` is an image viewer's auto-level
(1st-99th percentile of luminance stretched to [0, 1]); ``clahe`` is scikit-image's
contrast-limited adaptive histogram equalisation.
"""

from __future__ import annotations

import numpy as np
from skimage.exposure import equalize_adapthist

from dpe._image import luminance
from dpe.methods import register_function


def autocontrast(image: np.ndarray, *, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """Stretch the ``low``-``high`` percentile range of luminance to [0, 1], all channels alike."""
    if not 0 <= low < high <= 100:
        raise ValueError(f"need 0 <= low < high <= 100; got low={low}, high={high}.")
    lo, hi = np.percentile(luminance(image), [low, high])
    if hi - lo < 1e-6:  # a flat image has no range to stretch
        return image.copy()
    return np.clip((image - lo) / (hi - lo), 0, 1).astype(np.float32)


def _identity(image: np.ndarray) -> np.ndarray:
    return image.copy()


def _clahe(image: np.ndarray, *, clip_limit: float = 0.01) -> np.ndarray:
    return equalize_adapthist(image, clip_limit=clip_limit).astype(np.float32)


identity = register_function(
    "identity", _identity, label="Input (no enhancement)", kind="reference"
)
autocontrast_method = register_function(
    "autocontrast", autocontrast, label="Auto-contrast", kind="reference"
)
clahe = register_function("clahe", _clahe, label="CLAHE", kind="reference")
