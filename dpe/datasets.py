"""Folders of clean images as evaluation and validation sets: what an image is, and its
low-quality twin.

An image's group is the subfolder it sits in below a given folder (images directly inside it
form a group named after the folder). Its degraded twin is fixed by the seed and its path
relative to that folder, so a copy of the folder elsewhere degrades the same way.
``dpe.evaluate``, ``dpe.train`` and ``dpe.train_global`` all read their images through here.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dpe.degrade import degrade
from dpe.files import image_files


@dataclass(frozen=True)
class ImageItem:
    path: Path
    relpath: str  # POSIX path relative to the folder it was found under: the degradation key
    group: str


def find_images(dirs: list[str | Path], *, max_per_group: int | None = None) -> list[ImageItem]:
    """Image files below each of ``dirs``, sorted, grouped by subfolder (see module doc)."""
    items: list[ImageItem] = []
    for d in dirs:
        root = Path(d)
        if not root.is_dir():
            raise ValueError(f"--images {d!r} is not a folder; give folders of clean images.")
        # Unlike the CLI (which tries every file and reports the ones it cannot read), an
        # evaluation skips dot-files such as macOS's ._name.png beside copied images.
        for p in (p for p in image_files(root) if not p.name.startswith(".")):
            rel = p.relative_to(root)
            group = rel.parent.as_posix() if rel.parent != Path(".") else root.resolve().name
            items.append(ImageItem(p, rel.as_posix(), group))
    if max_per_group is not None:
        counts: dict[str, int] = {}
        kept = []
        for item in items:
            counts[item.group] = counts.get(item.group, 0) + 1
            if counts[item.group] <= max_per_group:
                kept.append(item)
        items = kept
    return items


def image_seed(seed: int, relpath: str) -> np.random.Generator:
    """The generator that degrades ``relpath``: fixed by the seed and the path, nothing else."""
    return np.random.default_rng([seed, zlib.crc32(relpath.encode("utf-8"))])


def degraded_twin(
    image: np.ndarray, relpath: str, *, preset: str, seed: int, gray: bool | None = None
) -> np.ndarray:
    """The low-quality version of ``image`` that every evaluation (and validation) uses.

    ``gray`` says whether the source file was grayscale (``None``: decided from the pixels).
    """
    return degrade(image, preset, image_seed(seed, relpath), gray=gray)
