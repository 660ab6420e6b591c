"""Creating a study: source images + method keys -> stimuli on disk under opaque names.

Enhancement comes in through ``enhance_fn`` so this module never imports ``dpe`` or torch;
``study.bridge`` finds image files and passes in dpe's functions.
Creation is resumable: each stimulus is committed as soon as it is written, and
:func:`build_study` run again fills in only what is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from study.db import StudyDB, StudyError, log_event, now_iso
from study.design import DESIGNS

EnhanceFn = Callable[[np.ndarray, str], np.ndarray]
DegradeFn = Callable[[np.ndarray, int], np.ndarray]
ReadFn = Callable[[Path], np.ndarray]
ProgressFn = Callable[[int, int], None]

UNSPECIFIED = "unspecified"


@dataclass(frozen=True)
class SourceImage:
    """A source image, its modality (e.g. "xray") and the name researchers know it by."""

    path: Path
    modality: str = UNSPECIFIED
    name: str = ""  # defaults to the file name

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))
        if not self.name:
            object.__setattr__(self, "name", self.path.name)


def read_image(path: Path) -> np.ndarray:
    """Read an 8-bit image with Pillow as float32 (H, W, 3) in [0, 1]."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def create_study(
    db: StudyDB,
    title: str,
    images: Sequence[SourceImage | str | os.PathLike],
    methods: Sequence[str],
    enhance_fn: EnhanceFn,
    *,
    instructions: str = "",
    labels: Mapping[str, str] | None = None,
    design: str = "balanced",
    repeat_fraction: float = 0.1,
    trials_per_rater: int | None = None,
    degrade_fn: DegradeFn | None = None,
    seed: int = 0,
    read_fn: ReadFn = read_image,
    settings: Mapping | None = None,
    progress: ProgressFn | None = None,
) -> str:
    """Create a study, enhance every image with every method, store the stimuli; return its id.

    ``enhance_fn(image, method_key)`` maps float32 (H, W, 3) in [0, 1] to the same. With
    ``degrade_fn(image, seed)`` the images are clean originals: each is degraded first
    (seed + its position) and kept as a reference. This is :func:`new_study` followed by
    :func:`build_study`; if it is interrupted, call :func:`build_study` again to finish.
    """
    sources = as_sources(images)
    study_id = new_study(
        db,
        title,
        methods,
        instructions=instructions,
        labels=labels,
        design=design,
        repeat_fraction=repeat_fraction,
        trials_per_rater=trials_per_rater,
        degraded=degrade_fn is not None,
        seed=seed,
        settings=settings,
    )
    build_study(
        db, study_id, sources, enhance_fn, degrade_fn=degrade_fn, read_fn=read_fn, progress=progress
    )
    return study_id


def new_study(
    db: StudyDB,
    title: str,
    methods: Sequence[str],
    *,
    instructions: str = "",
    labels: Mapping[str, str] | None = None,
    design: str = "balanced",
    repeat_fraction: float = 0.1,
    trials_per_rater: int | None = None,
    degraded: bool = False,
    seed: int = 0,
    settings: Mapping | None = None,
) -> str:
    """Register a study and its methods (status "creating", no stimuli yet); return its id."""
    keys = _check_methods(methods)
    _check_options(title, design, repeat_fraction, trials_per_rater)
    stored = {
        **dict(settings or {}),
        "design": design,
        "repeat_fraction": repeat_fraction,
        "trials_per_rater": trials_per_rater,
        "degraded": bool(degraded),
        "seed": int(seed),
    }
    return _insert_study(db, title, instructions, keys, dict(labels or {}), stored)


def build_study(
    db: StudyDB,
    study_id: str,
    images: Sequence[SourceImage | str | os.PathLike],
    enhance_fn: EnhanceFn,
    *,
    degrade_fn: DegradeFn | None = None,
    read_fn: ReadFn = read_image,
    progress: ProgressFn | None = None,
) -> None:
    """Store whatever inputs and stimuli are still missing, then open the study.

    Each stimulus is committed as soon as it is written, so an interrupted run loses at
    most one; running this again with the same arguments continues where it stopped.
    """
    study = get_study(db, study_id)
    if study["status"] != "creating":
        raise StudyError(f"study {study_id} is already {study['status']}; nothing to build.")
    if study["settings"]["degraded"] != (degrade_fn is not None):
        wanted = "with" if study["settings"]["degraded"] else "without"
        raise StudyError(f"study {study_id} was created {wanted} degradation; resume the same way.")
    sources = as_sources(images)
    media = db.media_root / study_id
    media.mkdir(parents=True, exist_ok=True)
    seed = study["settings"]["seed"]
    _add_items(db, study_id, sources, media, degrade_fn, seed, read_fn)
    _make_stimuli(db, study_id, media, enhance_fn, progress)
    with db.atomic() as tx:
        tx.execute("UPDATE studies SET status = 'open' WHERE id = ?", [study_id])
        log_event(db, study_id, "study_opened")


def as_sources(images: Sequence[SourceImage | str | os.PathLike]) -> list[SourceImage]:
    """``images`` as `SourceImage`; raises `StudyError` for none, or two with one name."""
    sources = [s if isinstance(s, SourceImage) else SourceImage(Path(s)) for s in images]
    if not sources:
        raise StudyError("no images given; a study needs at least one source image.")
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise StudyError("two source images share a name; rename them so each is unique.")
    return sources


def _check_methods(methods: Sequence[str]) -> list[str]:
    keys = [str(m).strip() for m in methods]
    if len(keys) < 2 or len(set(keys)) != len(keys) or not all(keys):
        raise StudyError(
            f"methods must be at least two distinct, non-empty keys; got {list(methods)}."
        )
    return keys


def _check_options(title, design, repeat_fraction, trials_per_rater) -> None:
    if not str(title).strip():
        raise StudyError("title is empty; give the study a title.")
    if design not in DESIGNS:
        raise StudyError(f"design must be one of {', '.join(DESIGNS)}; got {design!r}.")
    if not 0.0 <= repeat_fraction <= 0.5:
        raise StudyError(f"repeat_fraction must be in [0, 0.5]; got {repeat_fraction}.")
    if trials_per_rater is not None and trials_per_rater < 1:
        raise StudyError(f"trials_per_rater must be positive; got {trials_per_rater}.")


def _insert_study(db, title, instructions, keys, labels, settings) -> str:
    study_id = secrets.token_hex(4)
    with db.atomic() as tx:
        tx["studies"].insert(
            {
                "id": study_id,
                "title": str(title).strip(),
                "instructions": instructions,
                "created": now_iso(),
                "status": "creating",
                "settings": json.dumps(settings),
            }
        )
        tx["methods"].insert_all(
            {"study": study_id, "key": k, "label": labels.get(k, k), "position": n}
            for n, k in enumerate(keys)
        )
        log_event(db, study_id, "study_created", json.dumps({"methods": keys}))
    return study_id


def _add_items(db, study_id, sources, media, degrade_fn, seed, read_fn) -> None:
    existing = {
        r["original_file"]
        for r in db.query("SELECT original_file FROM items WHERE study = ?", [study_id])
    }
    for position, source in enumerate(sources):
        if source.name in existing:
            continue
        image = _read(read_fn, source.path)
        reference_name = None
        if degrade_fn is not None:
            reference_name = _store_png(media, image)
            image = _check_output(degrade_fn(image, seed + position), image, "degrade")
        input_name = _store_png(media, image)
        with db.atomic() as tx:
            tx["items"].insert(
                {
                    "study": study_id,
                    "opaque_id": secrets.token_urlsafe(9),
                    "modality": source.modality,
                    "original_file": source.name,
                    "input_name": input_name,
                    "reference_name": reference_name,
                    "position": position,
                }
            )


def _make_stimuli(db, study_id, media, enhance_fn, progress) -> None:
    todo = db.query(
        """SELECT i.id AS item, i.input_name, m.id AS method, m.key
           FROM items i JOIN methods m ON m.study = i.study
           LEFT JOIN stimuli s ON s.item = i.id AND s.method = m.id
           WHERE i.study = ? AND s.id IS NULL ORDER BY i.position, m.position""",
        [study_id],
    )
    total = db.query_one(
        "SELECT (SELECT count(*) FROM items WHERE study = ?) * "
        "(SELECT count(*) FROM methods WHERE study = ?) AS n",
        [study_id, study_id],
        missing="study vanished",
    )["n"]
    done = total - len(todo)
    if progress:
        progress(done, total)
    for row in todo:
        image = read_image(media / row["input_name"])
        enhanced = _check_output(enhance_fn(image, row["key"]), image, f"method {row['key']!r}")
        name = _store_png(media, enhanced)
        with db.atomic() as tx:
            tx["stimuli"].insert(
                {
                    "item": row["item"],
                    "method": row["method"],
                    "opaque_name": name,
                    "sha256": _sha256(media / name),
                }
            )
        done += 1
        if progress:
            progress(done, total)


def _read(read_fn: ReadFn, path: Path) -> np.ndarray:
    try:
        image = read_fn(path)
    except (OSError, ValueError) as exc:
        raise StudyError(f"cannot read image {path}: {exc}") from exc
    return _check_output(image, None, f"reading {path.name}")


def _check_output(image, like: np.ndarray | None, what: str) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or not np.issubdtype(arr.dtype, np.floating):
        raise StudyError(f"{what} must give a float (H, W, 3) image; got {arr.dtype} {arr.shape}.")
    if like is not None and arr.shape != like.shape:
        raise StudyError(f"{what} changed the image shape from {like.shape} to {arr.shape}.")
    if not np.isfinite(arr).all():
        raise StudyError(f"{what} produced NaN or infinite values.")
    if like is not None and _is_gray(like) != _is_gray(arr):
        kinds = ("colour", "grayscale") if _is_gray(arr) else ("grayscale", "colour")
        raise StudyError(
            f"{what} turned a {kinds[0]} image into {kinds[1]}: raters could tell that method "
            "by its colour, so the study is not built. Fix the method, or leave it out."
        )
    return np.clip(arr, 0.0, 1.0).astype(np.float32)


def _is_gray(image: np.ndarray) -> bool:
    return bool((image[..., :1] == image).all())


def _store_png(media: Path, image: np.ndarray) -> str:
    """Save as an 8-bit PNG (no metadata) under a fresh random name; return the name."""
    name = f"{secrets.token_urlsafe(16)}.png"
    # dpe._image.to_uint8's rounding, written out: study/ imports nothing from dpe.
    pixels = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    partial = media / f"{name}.part"
    Image.fromarray(pixels, mode="RGB").save(partial, format="PNG")
    os.replace(partial, media / name)  # never leave a half-written stimulus under its name
    return name


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def study_media(db: StudyDB, study_id: str) -> Path:
    """The folder holding a study's images."""
    return db.media_root / study_id


def stimulus_path(db: StudyDB, name: str) -> Path:
    """The file behind an opaque image reference served in a trial: a candidate or a source.

    Only names the database knows resolve, so a crafted name never reaches other files.
    """
    row = db.query_one(
        """SELECT i.study FROM stimuli s JOIN items i ON i.id = s.item WHERE s.opaque_name = ?
           UNION ALL SELECT study FROM items WHERE input_name = ?""",
        [name, name],
        missing=f"no image {name!r}; it may belong to a deleted study.",
    )
    return db.media_root / row["study"] / name


def get_study(db: StudyDB, study_id: str) -> dict:
    """A study's row with its settings decoded and its method keys and labels."""
    study = db.query_one(
        "SELECT * FROM studies WHERE id = ?",
        [study_id],
        missing=f"no study {study_id!r}; list studies with `python -m study status`.",
    )
    study["settings"] = json.loads(study["settings"])
    study["methods"] = db.query(
        "SELECT id, key, label FROM methods WHERE study = ? ORDER BY position", [study_id]
    )
    return study


def list_studies(db: StudyDB) -> list[dict]:
    """All studies, newest first."""
    return db.query("SELECT id, title, status, created FROM studies ORDER BY created DESC")


def close_study(db: StudyDB, study_id: str) -> None:
    """Stop accepting votes for a study (undo with :func:`reopen_study`)."""
    get_study(db, study_id)
    with db.atomic() as tx:
        tx.execute("UPDATE studies SET status = 'closed' WHERE id = ?", [study_id])
        log_event(db, study_id, "study_closed")


def reopen_study(db: StudyDB, study_id: str) -> None:
    """Take votes again for a closed study; raters continue where they stopped."""
    info = get_study(db, study_id)
    if info["status"] != "closed":
        raise StudyError(f"study {study_id} is {info['status']}, not closed; nothing to reopen.")
    with db.atomic() as tx:
        tx.execute("UPDATE studies SET status = 'open' WHERE id = ?", [study_id])
        log_event(db, study_id, "study_reopened")
