"""The one place a study meets ``dpe``: images + method keys -> an open study.

Both the Results page and ``python -m study create`` build studies here, with one image
policy: every source is read with `dpe.load_image` (every format the app reads, medical
included) and fitted to ``DPE_MAX_MEGAPIXELS`` (default 2), as the Enhance page fits uploads,
so raters judge what visitors would see. Options are checked before a study row is written.
Importing this module imports ``dpe``; the rest of ``study`` never does.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

import dpe
from dpe import demo
from dpe._image import to_uint8
from dpe.degrade import PRESETS
from dpe.files import IMAGE_SUFFIXES, image_files
from dpe.methods import method_info
from study.create import (
    UNSPECIFIED,
    ProgressFn,
    SourceImage,
    as_sources,
    build_study,
    get_study,
    new_study,
)
from study.db import StudyDB, StudyError


def find_images(folder: str | os.PathLike) -> list[SourceImage]:
    """Image files under ``folder``; files in a subfolder take its name as their modality."""
    root = Path(folder)
    if not root.is_dir():
        raise StudyError(f"image folder {root} does not exist; pass a folder of images.")
    found = []
    for path in image_files(root):
        relative = path.relative_to(root)
        modality = relative.parts[0] if len(relative.parts) > 1 else UNSPECIFIED
        found.append(SourceImage(path, modality, relative.as_posix()))
    if not found:
        raise StudyError(
            f"no images in {root}; expected files ending in {', '.join(sorted(IMAGE_SUFFIXES))}."
        )
    return found


def check_options(methods: Sequence[str], degrade: str | None) -> None:
    """Raise `StudyError` for a method key or degradation preset ``dpe`` does not know."""
    known = set(dpe.list_methods())
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise StudyError(f"unknown methods {unknown}; registered: {', '.join(sorted(known))}.")
    if degrade is not None and degrade not in PRESETS:
        raise StudyError(
            f"unknown degradation preset {degrade!r}; use one of {', '.join(PRESETS)}, "
            "or none for images that are already low quality."
        )


def create_study(
    db: StudyDB,
    title: str,
    images: Sequence[SourceImage],
    methods: Sequence[str],
    *,
    degrade: str | None = None,
    seed: int = 0,
    settings: dict | None = None,
    resume: str | None = None,
    progress: ProgressFn | None = None,
    on_created: Callable[[str], None] | None = None,
    **options,
) -> str:
    """Check the options, then create (or with ``resume``, finish) a study; return its id.

    ``degrade`` is a `dpe.degrade` preset applied to clean sources first (None: the sources
    are already low quality). ``options`` go to `study.new_study` (instructions, design, ...).
    ``on_created(study_id)`` is told the id once the study is registered, before the slow part.
    Every source is read once first, so an unreadable file registers no study.
    """
    methods = [str(m).strip() for m in methods]
    check_options(methods, degrade)
    pixels = StudyPixels(degrade)
    images = as_sources(images)
    for source in images:  # an unreadable file stops here, before a study is registered
        try:
            pixels.read(source.path)
        except (OSError, ValueError) as exc:
            raise StudyError(f"cannot read image {source.name}: {exc}") from None
    if resume:
        stored = [m["key"] for m in get_study(db, resume)["methods"]]
        if stored != methods:
            raise StudyError(
                f"study {resume} uses --methods {','.join(stored)}; resume with those."
            )
    study_id = resume or new_study(
        db,
        title,
        methods,
        labels={m: method_info(m)["label"] for m in methods},
        degraded=degrade is not None,
        seed=seed,
        settings={**(settings or {}), "degrade_preset": degrade},
        **options,
    )
    if on_created is not None:
        on_created(study_id)
    build_study(
        db,
        study_id,
        images,
        pixels.enhance,
        degrade_fn=pixels.degrade if degrade is not None else None,
        read_fn=pixels.read,
        progress=progress,
    )
    return study_id


class StudyPixels:
    """The read, degrade and enhance functions `study.build_study` takes, carrying each
    source's ``LoadedImage.gray`` to `dpe.degrade` and the methods.

    ``build_study`` hands these functions pixels only, so ``gray`` is remembered per image,
    keyed by its 8-bit pixels (what the study stores and reads back).
    """

    def __init__(self, preset: str | None = None):
        self.preset = preset
        self._gray: dict[bytes, bool] = {}

    def _remember(self, image: np.ndarray, gray: bool | None) -> np.ndarray:
        if gray is not None:
            self._gray[_key(image)] = gray
        return image

    def read(self, path: Path) -> np.ndarray:
        """`dpe.demo.prepare`: any format, fitted to ``DPE_MAX_MEGAPIXELS``."""
        prepared = demo.prepare(path)
        image = prepared.image
        if prepared.gray:  # an RGB file of a gray picture is shown to raters as exactly gray
            image = np.repeat(image.mean(axis=2, keepdims=True), 3, axis=2)
        return self._remember(image, prepared.gray)

    def degrade(self, image: np.ndarray, seed: int) -> np.ndarray:
        """The low-quality twin of a source, under ``preset``."""
        gray = self._gray.get(_key(image))
        return self._remember(dpe.degrade(image, self.preset, seed=seed, gray=gray), gray)

    def enhance(self, image: np.ndarray, method: str) -> np.ndarray:
        """``method``'s output for a stored input."""
        return dpe.enhance(image, method, gray=self._gray.get(_key(image)))


def _key(image: np.ndarray) -> bytes:
    return hashlib.blake2b(to_uint8(image).tobytes(), digest_size=16).digest()
