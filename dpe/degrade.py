"""Low-quality twins of clean images: the paper's degradation, and a clinical preset.

``paper`` reproduces the official DPE training code: ColorJitter-style brightness and contrast
with factors drawn from [0.1, 0.8] in random order, then faint non-negative noise.
``clinical`` goes beyond the paper: mild optical blur, the same photometric loss, then sensor
noise (Poisson shot noise plus zero-mean Gaussian read noise). ``mild`` is ``paper`` with factors
from [0.6, 1.0]: images that are only a little off, which an enhancer must not overcorrect.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from dpe._image import LUMA, as_rgb_float, is_gray

PRESETS = ("paper", "clinical", "mild")

FACTOR_RANGE = (0.1, 0.8)  # brightness and contrast factors (official code: ColorJitter)
MILD_FACTOR_RANGE = (0.6, 1.0)  # "mild": a slightly dim, slightly flat acquisition
# Noise amplitude is drawn on the [-1, 1] scale as U[0, 0.1**1.5]; on [0, 1] that halves.
PAPER_SIGMA_MAX = 0.1**1.5
CLINICAL_BLUR_SIGMA = (0.0, 1.0)  # pixels
CLINICAL_GAUSS_SIGMA = (0.0, 0.03)  # on [0, 1]
CLINICAL_PHOTONS = (30.0, 1000.0)  # photons at full scale, log-uniform: lower is noisier

# The luma that ColorJitter's contrast takes the mean of (torchvision rounds R's weight to
# 0.2989; the 1e-4 difference is far below the drawn noise).
_GRAY = np.array(LUMA, dtype=np.float32)


def degrade(
    image: np.ndarray,
    preset: str = "paper",
    seed: int | np.random.Generator | None = None,
    *,
    gray: bool | None = None,
    return_params: bool = False,
):
    """Return a low-quality version of ``image`` (float32 (H, W, 3) in [0, 1]).

    The same ``seed`` always gives the same output. A grayscale source (``gray=True``, or
    ``None`` and three identical channels) is degraded as one channel, so its twin stays
    gray: the noise is the same in every channel. With ``return_params=True`` returns
    ``(degraded, params)`` where ``params`` records every random draw.

    Examples
    --------
    >>> import numpy as np
    >>> clean = np.full((8, 8, 3), 0.5, np.float32)
    >>> low = degrade(clean, "paper", seed=0)
    >>> bool(low.mean() < clean.mean())
    True
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}; got {preset!r}.")
    image = as_rgb_float(image)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    gray = is_gray(image) if gray is None else bool(gray)
    source = image[..., :1] if gray else image
    if preset in ("paper", "mild"):
        factors = FACTOR_RANGE if preset == "paper" else MILD_FACTOR_RANGE
        out, params = _paper(source, rng, factors)
    else:
        out, params = _clinical(source, rng)
    out = np.clip(out, 0.0, 1.0).astype(np.float32)
    if gray:
        out = np.repeat(out, 3, axis=2)
    params.update(preset=preset, gray=gray)
    return (out, params) if return_params else out


def _photometric(
    image: np.ndarray, rng: np.random.Generator, factors: tuple[float, float] = FACTOR_RANGE
) -> tuple[np.ndarray, dict]:
    brightness = float(rng.uniform(*factors))
    contrast = float(rng.uniform(*factors))
    order = ["brightness", "contrast"]
    if rng.random() < 0.5:  # ColorJitter applies its transforms in a random permutation
        order.reverse()
    out = image
    for step in order:
        if step == "brightness":
            out = np.clip(out * brightness, 0.0, 1.0)
        else:
            # one channel (a gray source) has luma = value x the weights' sum
            mean = float((out @ _GRAY).mean() if out.shape[2] == 3 else out.mean() * _GRAY.sum())
            out = np.clip(contrast * out + (1.0 - contrast) * mean, 0.0, 1.0)
    return out, {"brightness": brightness, "contrast": contrast, "order": order}


def _paper(
    image: np.ndarray, rng: np.random.Generator, factors: tuple[float, float] = FACTOR_RANGE
) -> tuple[np.ndarray, dict]:
    out, params = _photometric(image, rng, factors)
    sigma = float(rng.uniform(0.0, PAPER_SIGMA_MAX))
    # u * sigma with u ~ U[0, 1) per value, added on [-1, 1]: half that on [0, 1]
    noise = rng.random(out.shape, dtype=np.float32) * (sigma / 2)
    params["noise_sigma"] = sigma / 2
    return out + noise, params


def _clinical(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    blur = float(rng.uniform(*CLINICAL_BLUR_SIGMA))
    if blur > 0:
        image = gaussian_filter(image, sigma=(blur, blur, 0), mode="reflect")
    out, params = _photometric(image, rng)
    lo, hi = np.log(CLINICAL_PHOTONS)
    photons = float(np.exp(rng.uniform(lo, hi)))
    out = rng.poisson(out * photons).astype(np.float32) / photons
    gauss = float(rng.uniform(*CLINICAL_GAUSS_SIGMA))
    out = out + rng.normal(0.0, gauss, out.shape).astype(np.float32)
    params.update({"blur_sigma": blur, "photons": photons, "gauss_sigma": gauss})
    return out, params
