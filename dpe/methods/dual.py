"""DUAL: exposure correction by dual illumination estimation.

Zhang, Yuan, Zhou, Zhu, Ma & Zhu, "Dual Illumination Estimation for Robust Exposure Correction",
Computer Graphics Forum (Pacific Graphics) 38(7), 2019.

LIME brightens the under-exposed parts of I; LIME applied to the inverted image 1 - I, inverted
back, darkens the over-exposed parts. Mertens exposure fusion of I and the two corrections keeps,
pixel by pixel, the best exposed, most contrasted and most saturated of the three.
"""

from __future__ import annotations

import cv2
import numpy as np

from dpe._image import as_rgb_float
from dpe.methods import register_function
from dpe.methods.illumination import (
    check_bool,
    check_positive,
    check_solver_options,
    denoise_recompose,
    divide_by_illumination,
)

__all__ = ["dual", "fuse_exposures"]


def dual(
    image: np.ndarray,
    *,
    alpha: float = 0.15,
    sigma: float = 3.0,
    gamma: float = 0.6,
    strategy: int = 3,
    solver: str = "fast",
    denoise: bool = True,
    eps: float = 1e-3,
) -> np.ndarray:
    """Correct under- and over-exposure with DUAL; returns float32 (H, W, 3) in [0, 1].

    Defaults are the paper's (lambda = ``alpha`` = 0.15, sigma 3, gamma 0.6); the other options
    are those of :func:`dpe.methods.lime.lime`, applied to both illumination estimates.
    ``denoise`` runs BM3D once on the fused result, weighted towards the pixels that either
    correction amplified most.

    Examples
    --------
    >>> import numpy as np
    >>> mid = np.full((16, 16, 3), 0.5, np.float32)
    >>> bool(np.abs(dual(mid, denoise=False) - mid).max() < 0.05)
    True
    """
    image = as_rgb_float(image)
    check_solver_options(alpha, sigma, strategy, solver, eps)
    check_positive(gamma, "gamma")
    denoise = check_bool(denoise, "denoise")
    under, t_under = divide_by_illumination(image, alpha, sigma, gamma, strategy, solver, eps)
    inverted, t_over = divide_by_illumination(
        1.0 - image, alpha, sigma, gamma, strategy, solver, eps
    )
    over = 1.0 - inverted
    fused = fuse_exposures([image, under, over])
    if denoise:
        # Each correction amplified noise where its illumination map was small.
        fused = denoise_recompose(fused, np.minimum(t_under, t_over))
    return fused


def fuse_exposures(images: list[np.ndarray]) -> np.ndarray:
    """Mertens exposure fusion (contrast, saturation and well-exposedness weights all 1).

    Takes RGB float images in [0, 1] of one shape; returns float32 (H, W, 3) in [0, 1].
    """
    if not images:
        raise ValueError("fuse_exposures needs at least one image.")
    images = [as_rgb_float(im, name=f"images[{i}]") for i, im in enumerate(images)]
    if len({im.shape for im in images}) != 1:
        raise ValueError(f"images must share one shape; got {sorted({im.shape for im in images})}.")
    # OpenCV divides every input by 255 whatever its depth, so float images go in scaled to
    # [0, 255] (kept as float32: no 8-bit rounding). It expects BGR order for its contrast term.
    merge = cv2.createMergeMertens(1.0, 1.0, 1.0)
    fused = merge.process([np.ascontiguousarray(im[..., ::-1] * 255.0) for im in images])
    return np.clip(fused[..., ::-1], 0.0, 1.0).astype(np.float32)


create_dual = register_function("dual", dual, label="DUAL (Zhang et al. 2019)", kind="classic")
