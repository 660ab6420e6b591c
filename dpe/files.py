"""Image files on disk: which file name endings count as images, and finding them in a folder."""

from __future__ import annotations

import os
from pathlib import Path

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".dcm", ".dicom", ".gif"}
)
"""File name endings (lower case) that `image_files` and the command lines take for images."""


def image_files(folder: str | os.PathLike) -> list[Path]:
    """The image files under ``folder``, recursively, sorted by path.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     for name in ("b.PNG", "notes.txt", "sub/a.dcm"):
    ...         path = Path(tmp, name)
    ...         path.parent.mkdir(exist_ok=True)
    ...         _ = path.write_bytes(b"")
    ...     [p.relative_to(tmp).as_posix() for p in image_files(tmp)]
    ['b.PNG', 'sub/a.dcm']
    """
    root = Path(folder)
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
