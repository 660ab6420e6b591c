"""The one image type that flows between modules: float32, (H, W, 3), values in [0, 1]."""

from __future__ import annotations

import numpy as np

LUMA = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luma weights of R, G and B (PIL's 'L' mode), the one set every module uses."""


def as_rgb_float(image: np.ndarray, *, name: str = "image") -> np.ndarray:
    """Check ``image`` and return it as C-contiguous float32 (H, W, 3) in [0, 1].

    Accepts (H, W), (H, W, 1) or (H, W, 3); uint8/uint16 are scaled by their dtype range,
    floats are expected in [0, 1] already (NaNs raise, values outside [0, 1] are clipped).
    """
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3):
        raise ValueError(
            f"{name} must have shape (H, W), (H, W, 1) or (H, W, 3); got {arr.shape}. "
            "Drop the alpha channel or load the file with dpe.load_image."
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {arr.shape}.")
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        arr = arr.astype(np.float32) / 65535.0
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32, copy=False)
        if not np.isfinite(arr).all():
            raise ValueError(
                f"{name} contains NaN or infinite values; replace them before enhancing."
            )
        arr = np.clip(arr, 0.0, 1.0)
    else:
        raise ValueError(f"{name} has dtype {arr.dtype}; use uint8, uint16 or float in [0, 1].")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr, dtype=np.float32)


def luminance(image: np.ndarray) -> np.ndarray:
    """Rec. 601 luma of a float RGB image, (H, W) float32 (the weights PIL's 'L' mode uses)."""
    r, g, b = LUMA
    return (image[..., 0] * r + image[..., 1] * g + image[..., 2] * b).astype(np.float32)


def is_gray(image: np.ndarray) -> bool:
    """Whether an (H, W, 3) image has three identical channels (a grayscale source)."""
    return bool(
        np.array_equal(image[..., 0], image[..., 1])
        and np.array_equal(image[..., 1], image[..., 2])
    )


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A float image in [0, 1] as uint8 for display or an 8-bit file (clipped, rounded)."""
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
