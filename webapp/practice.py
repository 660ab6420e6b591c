"""The practice screens a rater sees before the first trial (not scored).

A practice screen looks like a trial: its source is a shipped example after `dpe.degrade`
(the preset studies degrade clean images with), and A and B are two different enhancements
of that degraded image, in random order. The clean original is never shown: on a trial
screen every image is made from the low-quality source, so practice must not teach raters
to look for a pristine picture.
"""

from __future__ import annotations

import functools

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
    pairs = dd.practice_pairs(
        picks,
        PRACTICE_DIR,
        seed=7,
        size=PRACTICE_SIZE,
        preset=PRACTICE_PRESET,
        methods=PRACTICE_METHODS,
    )
    return tuple((str(p.source), str(p.left), str(p.right)) for p in pairs)
