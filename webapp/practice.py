"""The practice screens a rater sees before the first trial (not scored)."""

from __future__ import annotations

import functools

from dpe import demo as dd
from webapp import uploads
from webapp.common import EXAMPLES

PRACTICE_TRIALS = 2
PRACTICE_MODALITIES = ("dermatology", "microscopy")
PRACTICE_DIR = uploads.scratch_folder("practice")


@functools.lru_cache(maxsize=1)
def practice_screens() -> tuple[tuple[str, str, str], ...]:
    """Practice pairs, made once per process from two examples (random file names)."""
    picks = dd.examples_of(EXAMPLES, PRACTICE_MODALITIES)[:PRACTICE_TRIALS]
    pairs = dd.practice_pairs(picks, PRACTICE_DIR, seed=7)
    return tuple((str(p.source), str(p.left), str(p.right)) for p in pairs)
