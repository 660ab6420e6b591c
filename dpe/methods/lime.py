"""LIME: low-light enhancement by illumination map estimation.

Guo, Li & Ling, "LIME: Low-Light Image Enhancement via Illumination Map Estimation",
IEEE Transactions on Image Processing 26(2), 2017.

The illumination T (the per-pixel maximum over R, G and B, refined by the paper's exact ADMM
or sped-up multigrid solver) is estimated in dpe.methods.illumination, shared with DUAL; its
public functions are re-exported here. The enhanced image is R = L / T^gamma, optionally
denoised with BM3D on the luma of R and recomposed as R o T^gamma + R_denoised o (1 - T^gamma),
as in the paper.
"""

from __future__ import annotations

import numpy as np

from dpe._image import as_rgb_float
from dpe.methods import register_function
from dpe.methods.illumination import (
    check_bool,
    check_positive,
    check_solver_options,
    denoise_recompose,
    divide_by_illumination,
    illumination_weights,
    initial_illumination,
    refine_illumination,
)
from dpe.methods.multigrid import laplacian_csr as _laplacian_csr  # noqa: F401 (benchmarks)

__all__ = [
    "denoise_recompose",
    "illumination_weights",
    "initial_illumination",
    "lime",
    "refine_illumination",
]


def lime(
    image: np.ndarray,
    *,
    alpha: float = 0.15,
    sigma: float = 2.0,
    gamma: float = 0.7,
    strategy: int = 3,
    solver: str = "fast",
    denoise: bool = True,
    eps: float = 1e-3,
) -> np.ndarray:
    """Enhance a low-light image with LIME; returns float32 (H, W, 3) in [0, 1].

    Defaults are the authors' demo settings (alpha 0.15, strategy III with sigma 2, gamma 0.7,
    sped-up solver). ``eps`` is both the paper's epsilon in the weights and the floor applied
    to T before dividing. ``denoise`` runs BM3D on the luma of the result, weighted towards the
    dark regions that were amplified most.

    Examples
    --------
    >>> import numpy as np
    >>> dark = np.full((16, 16, 3), 0.1, np.float32)
    >>> bool(lime(dark, denoise=False).mean() > dark.mean())
    True
    """
    image = as_rgb_float(image)
    check_solver_options(alpha, sigma, strategy, solver, eps)
    check_positive(gamma, "gamma")
    enhanced, t_gamma = divide_by_illumination(image, alpha, sigma, gamma, strategy, solver, eps)
    if check_bool(denoise, "denoise"):
        enhanced = denoise_recompose(enhanced, t_gamma)
    return enhanced


create_lime = register_function("lime", lime, label="LIME (Guo et al. 2017)", kind="classic")
