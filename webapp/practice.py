"""The practice screens a rater sees before the first trial (not scored).

A practice screen looks like a trial: its source is a shipped example after `dpe.degrade`
(the preset studies degrade clean images with), and A and B are two different enhancements
of that degraded image, in random order. The clean original is never shown: on a trial
screen every image is made from the low-quality source, so practice must not teach raters
to look for a pristine picture.
"""

from __future__ import annotations

import functools
import os
import secrets
from pathlib import Path

import numpy as np

import dpe
from dpe import demo as dd
from webapp import uploads
from webapp.common import EXAMPLES

PRACTICE_TRIALS = 2
PRACTICE_MODALITIES = ("dermatology", "microscopy")
PRACTICE_DIR = uploads.scratch_folder("practice")
PRACTICE_PRESET = "paper"  # dpe.degrade's default preset, as in `python -m study create --degrade`
# Two fast methods that need no weights, so practice works on any server.
PRACTICE_METHODS = ("autocontrast", "clahe")
PRACTICE_SIZE = 384  # pixels on a side (about; the aspect ratio is kept)


@functools.lru_cache(maxsize=1)
def practice_screens() -> tuple[tuple[str, str, str], ...]:
    """Practice screens (source, left, right), made once per process from two examples."""
    picks = dd.examples_of(EXAMPLES, PRACTICE_MODALITIES)[:PRACTICE_TRIALS]
    pairs = practice_pairs(picks, PRACTICE_DIR, seed=7)
    return tuple((str(p.source), str(p.left), str(p.right)) for p in pairs)


def practice_pairs(
    images: list[str | os.PathLike], out_dir: str | os.PathLike, *, seed: int = 0
) -> list[dd.PracticePair]:
    """One practice screen per image in ``images``, written to ``out_dir`` under random names.

    The source is the image degraded with ``PRACTICE_PRESET``; left and right are its
    ``PRACTICE_METHODS`` enhancements, in an order drawn from ``seed``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pairs = []
    for n, path in enumerate(images):
        loaded = dpe.load_image(path)
        clean, _ = dd.fit_megapixels(loaded.image, PRACTICE_SIZE * PRACTICE_SIZE / 1e6)
        low = dpe.degrade(clean, PRACTICE_PRESET, seed=seed + n, gray=loaded.gray)
        sides = [dpe.enhance(low, method, gray=loaded.gray) for method in PRACTICE_METHODS]
        if rng.random() < 0.5:
            sides.reverse()
        left, right = (_write_random(out, image) for image in sides)
        pairs.append(dd.PracticePair(_write_random(out, low), left, right))
    return pairs


def _write_random(out: Path, image: np.ndarray) -> Path:
    path = out / f"{secrets.token_urlsafe(16)}.png"
    dpe.save_image(image, path)
    return path
