"""Shared helpers for the study tests (no tests here): tiny images, a fake enhancer, panels."""

from __future__ import annotations

import itertools
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

import study

METHODS = ["dpe", "dran", "retinexnet", "lime", "dual"]


def fake_enhance(image: np.ndarray, method: str) -> np.ndarray:
    """A stand-in for dpe.enhance: a different, deterministic brightening per method."""
    gain = 0.5 + (zlib.crc32(method.encode()) % 1000) / 1000
    return np.clip(image * gain + 0.01, 0.0, 1.0).astype(np.float32)


def write_images(folder: Path, n: int, *, size: int = 6, seed: int = 0) -> list[Path]:
    """``n`` small random RGB PNGs named img00.png, img01.png, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(n):
        path = folder / f"img{k:02d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def make_study(tmp_path: Path, *, n_images: int = 4, methods=METHODS, **options):
    """An open database with one study built from tiny images; returns (db, study_id)."""
    db = study.open_db(tmp_path / "data" / "study.db")
    images = write_images(tmp_path / "images", n_images)
    study_id = study.create_study(db, "Test study", images, methods, fake_enhance, **options)
    return db, study_id


def simulate_panel(
    truth: dict[str, float],
    *,
    n_raters: int,
    n_items: int,
    rater_spread: float = 0.0,
    tie_rate: float = 0.0,
    seed: int = 0,
) -> pd.DataFrame:
    """Votes of a panel whose judgements follow Bradley-Terry with the given log-strengths.

    Each rater judges every pair of every item once; ``rater_spread`` gives each rater
    their own strengths around the truth, so raters differ as real experts do.
    """
    rng = np.random.default_rng(seed)
    methods = list(truth)
    base = np.array([truth[m] for m in methods])
    rows = []
    for r in range(n_raters):
        own = base + rng.normal(0.0, rater_spread, len(base))
        for item in range(n_items):
            for a, b in itertools.combinations(range(len(methods)), 2):
                left, right = (a, b) if rng.random() < 0.5 else (b, a)
                if rng.random() < tie_rate:
                    choice = "tie"
                else:
                    p_left = 1.0 / (1.0 + np.exp(own[right] - own[left]))
                    choice = "left" if rng.random() < p_left else "right"
                rows.append(
                    {
                        "rater": f"R{r:02d}",
                        "item": f"item{item}",
                        "modality": "xray" if item % 2 else "endoscopy",
                        "method_left": methods[left],
                        "method_right": methods[right],
                        "choice": choice,
                        "is_repeat": False,
                        "trial": len(rows) + 1,
                        "repeat_of": None,
                        "response_ms": int(rng.integers(800, 5000)),
                    }
                )
    return pd.DataFrame(rows)
