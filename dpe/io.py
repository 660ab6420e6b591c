"""Read medical and everyday image files into the project's one image type; write lossless PNG.

`load_image` turns a path, bytes or a binary file object into float32 ``(H, W, 3)`` in
``[0, 1]`` plus what was learned on the way (source bit depth, modality guess, original shape,
notes). Formats are recognised by their content, never by the file name:

- **DICOM** (pydicom), with or without the 128-byte preamble: modality LUT (rescale slope and
  intercept), then the file's VOI LUT or window centre/width, else a 0.5–99.5 percentile window;
  MONOCHROME1 inverted; YBR (by pydicom's decoders) and palette colour converted to RGB; the
  middle frame of a multi-frame file. Enhanced multi-frame files take rescale and window from
  their functional groups.
- **TIFF** (tifffile, which keeps 16-bit and float samples; Pillow when tifffile lacks the codec,
  e.g. LZW or JPEG without the optional ``imagecodecs`` package).
- **PNG, JPEG, BMP, WebP, GIF** and the other Pillow formats in `PILLOW_FORMATS`. Pillow reduces
  16-bit colour PNG to 8 bits, so those go through OpenCV instead.

EXIF orientation is applied, alpha is composited on black and grayscale is expanded to three
equal channels, once, here. A 16-bit gray PNG or TIFF that carries no window (no DICOM header,
no PNG ``sBIT``) is shown at its stored depth, as a viewer of that depth would: the smallest of
`STORED_BITS` that holds its maximum is white (a 12-bit radiograph in a 16-bit file is not
almost black); nothing is stretched. ``LoadedImage.gray`` also flags RGB files whose channels
agree within two levels, so callers keep a gray picture gray.

The pixel count is read from the header and checked before anything is decoded, so a
decompression bomb costs nothing; a TIFF's sample count is checked too (four per pixel at
most), since a header may claim 128 samples per pixel. That guard (`DEFAULT_MAX_MEGAPIXELS`,
40) is separate from the app's processing limit ``DPE_MAX_MEGAPIXELS``: pass
``max_megapixels=`` per call, or set ``DPE_MAX_LOAD_MEGAPIXELS`` for the process.

Every problem with the input raises `ImageError`, a `ValueError` whose message says what is wrong
and what to do; third-party exceptions are chained to it, never raised as they are.
"""

from __future__ import annotations

import io
import math
import numbers
import os
import re
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
import tifffile
from PIL import Image, UnidentifiedImageError
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi_lut,
    get_decoder,
)
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dpe._image import as_rgb_float, is_gray

__all__ = [
    "DEFAULT_MAX_MEGAPIXELS",
    "MAX_MEGAPIXELS_ENV",
    "PILLOW_FORMATS",
    "ImageError",
    "LoadedImage",
    "load_image",
    "megapixels_from_env",
    "save_image",
]

DEFAULT_MAX_MEGAPIXELS = 40.0
"""Largest image `load_image` decodes, in megapixels, unless told otherwise."""

MAX_MEGAPIXELS_ENV = "DPE_MAX_LOAD_MEGAPIXELS"
"""Environment variable that overrides `DEFAULT_MAX_MEGAPIXELS` for the whole process."""

PILLOW_FORMATS = ("PNG", "JPEG", "BMP", "DIB", "WEBP", "GIF", "TIFF", "PPM", "TGA")
"""Pillow plugins `load_image` may use (JPEG covers MPO); others (EPS, PDF, ...) are never tried."""

# DICOM Modality (0008,0060) codes, grouped into the kinds of image the app distinguishes.
_MODALITY_GROUPS = {
    "radiology": frozenset(
        {"CR", "CT", "DX", "MG", "MR", "NM", "PT", "US", "XA", "RF", "IO", "PX", "RG", "DF", "DS"}
        | {"BMD", "RTIMAGE"}
    ),
    "microscopy": frozenset({"SM", "GM"}),
    # XC is external-camera photography: in practice skin and wound photographs.
    "dermatology": frozenset({"XC"}),
}

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Signatures of formats Pillow reads, to tell "corrupt PNG" from "not an image at all".
_KNOWN_MAGIC = {
    _PNG_MAGIC: "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"GIF8": "GIF",
    b"BM": "BMP",
}
# A DICOM file without preamble starts with a group 0002 or 0008 tag, in either byte order.
_BARE_DICOM_STARTS = (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08")
# Attributes that turn stored DICOM values into displayed ones.
_DICOM_VALUE_KEYWORDS = (
    "PhotometricInterpretation",
    "BitsStored",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    "ModalityLUTSequence",
    "VOILUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
)
_EXIF_ORIENTATION = 0x0112


class ImageError(ValueError):
    """The input cannot be read as an image; the message says why and what to do.

    The message is one printable line, whatever bytes of a damaged file it quotes.
    """

    def __init__(self, message: str) -> None:
        super().__init__("".join(c if c.isprintable() else "?" for c in str(message)))


class _Unrecognised(Exception):
    """Pillow does not know the data; the caller tries the next reader."""


@dataclass
class LoadedImage:
    """An image as loaded: pixels in the project's image type and what the file said about them.

    Attributes
    ----------
    image : numpy.ndarray
        float32, shape (H, W, 3), values in [0, 1]. A grayscale source gives three equal channels.
    bit_depth : int
        Bits per sample in the source: 8 or 16 for most files, 1 for bilevel, 32 for float or
        32-bit integer TIFF, *Bits Stored* for DICOM.
    modality : str
        ``"radiology"``, ``"microscopy"``, ``"dermatology"`` or ``"unknown"``, from the DICOM
        *Modality*; other formats are ``"unknown"``.
    original_shape : tuple of int
        Shape of the source samples of the frame used, in display orientation: ``(H, W)`` for one
        channel, ``(H, W, C)`` otherwise, C counting alpha (4 for RGBA or CMYK, 2 for gray+alpha).
    was_grayscale : bool
        True when the source had one intensity channel (with or without alpha).
    gray : bool
        True when the picture is grayscale: one channel, or colour channels within two levels
        of each other (the pixels are kept as they are). Pass it on as ``degrade(..., gray=)``
        and ``enhance(..., gray=)`` so a gray source stays gray.
    notes : list of str
        What was done that a viewer should know: frames skipped, window used, values rescaled,
        colour conversions.
    format : str
        The detected format: ``"DICOM"``, ``"TIFF"``, ``"PNG"``, ``"JPEG"``, ...
    n_frames : int
        Frames or pages in the source; `notes` says which one was used when there are several.
    """

    image: np.ndarray
    bit_depth: int = 8
    modality: str = "unknown"
    original_shape: tuple[int, ...] = ()
    was_grayscale: bool = False
    gray: bool = False
    notes: list[str] = field(default_factory=list)
    format: str = ""
    n_frames: int = 1


@dataclass
class _Samples:
    """Decoded samples before the common finishing steps (alpha, gray expansion, orientation)."""

    values: np.ndarray  # float32 (H, W, C), C = 1 or 3 (+1 alpha), in [0, 1]
    has_alpha: bool
    was_grayscale: bool
    source_channels: int


# --------------------------------------------------------------------------------------------
# Public API


def load_image(
    source: str | os.PathLike | bytes | bytearray | memoryview | BinaryIO,
    *,
    max_megapixels: float | None = None,
    window: tuple[float, float] | None = None,
) -> LoadedImage:
    """Load an image file of any supported format as float32 (H, W, 3) in [0, 1].

    Parameters
    ----------
    source : str, os.PathLike, bytes or binary file object
        The file, its content, or an open file (read from its current position).
    max_megapixels : float, optional
        Refuse images with more pixels than this, checked from the header before decoding.
        Default: the environment variable ``DPE_MAX_LOAD_MEGAPIXELS`` if set, else 40.
    window : (centre, width), optional
        For a grayscale DICOM: show this window of its modality values (e.g. Hounsfield
        units: ``(40, 80)`` brain, ``(600, 2800)`` bone) instead of the file's own VOI LUT or
        window; the DICOM linear function, as a viewer's window presets apply it.

    Returns
    -------
    LoadedImage
        ``image`` (float32, (H, W, 3), [0, 1]) plus source bit depth, modality guess, original
        shape, whether the source was grayscale, and notes on what was done to it.

    Raises
    ------
    ImageError
        Missing, empty, truncated or corrupt file; not an image; a DICOM file without pixel
        data or in a transfer syntax no installed decoder reads; zero size; too many pixels.

    Examples
    --------
    >>> import io
    >>> import numpy as np
    >>> buf = io.BytesIO()
    >>> save_image(np.full((4, 6, 3), 0.5, dtype=np.float32), buf)
    >>> loaded = load_image(buf.getvalue())
    >>> loaded.image.shape, loaded.image.dtype, loaded.format
    ((4, 6, 3), dtype('float32'), 'PNG')
    """
    limit = _resolve_limit(max_megapixels)
    data, name = _read_source(source)
    if not data:
        raise ImageError(f"{name} is empty (0 bytes); upload or choose the file again.")
    if window is not None and (len(window) != 2 or not float(window[1]) > 0):
        raise ValueError(f"window must be (centre, width) with width > 0; got {window!r}.")
    loaded = _load_bytes(data, name, limit, window)
    if window is not None and not any(n.startswith("Window requested") for n in loaded.notes):
        raise ImageError(f"{name}: window= applies to grayscale DICOM files only.")
    return loaded


def save_image(image: np.ndarray, path: str | os.PathLike | BinaryIO, *, bits: int = 8) -> None:
    """Write ``image`` as a lossless RGB PNG with 8 or 16 bits per channel.

    Parameters
    ----------
    image : numpy.ndarray
        (H, W), (H, W, 1) or (H, W, 3); uint8, uint16, or float in [0, 1] (clipped).
    path : str, os.PathLike or binary file object
        Where to write. A path with a suffix must end in ``.png``.
    bits : {8, 16}
        Bits per channel. Values are rounded to nearest: ``floor(x * (2**bits - 1) + 0.5)``.

    Raises
    ------
    ValueError
        Bad ``bits``, a non-PNG suffix, or an image `dpe.as_rgb_float` refuses.
    """
    if isinstance(bits, bool) or bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16; got {bits!r}.")
    rgb = as_rgb_float(image)
    if isinstance(path, (str, os.PathLike)):
        path = Path(path)
        if path.suffix and path.suffix.lower() != ".png":
            raise ValueError(
                f"save_image writes PNG, but the path ends in {path.suffix!r}; use '.png'."
            )
    elif not hasattr(path, "write"):
        raise TypeError(f"path must be a path or a binary file object; got {type(path).__name__}.")
    _write_png(rgb, path, bits)


# --------------------------------------------------------------------------------------------
# Input checks and dispatch


def megapixels_from_env(name: str, default: float) -> float:
    """A megapixel limit from the environment variable ``name``; ``default`` if unset or blank.

    Raises ValueError naming the variable and its value unless it is a positive number.

    Examples
    --------
    >>> import os
    >>> os.environ["DPE_EXAMPLE_MEGAPIXELS"] = "lots"
    >>> megapixels_from_env("DPE_EXAMPLE_MEGAPIXELS", 2.0)
    Traceback (most recent call last):
    ...
    ValueError: DPE_EXAMPLE_MEGAPIXELS='lots' is not a number; set it to a number of megapixels ...
    >>> del os.environ["DPE_EXAMPLE_MEGAPIXELS"]
    >>> megapixels_from_env("DPE_EXAMPLE_MEGAPIXELS", 2.0)
    2.0
    """
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not (math.isfinite(value) and value > 0):
        what = "is not a number" if value is None else "is not a positive number"
        raise ValueError(
            f"{name}={text!r} {what}; set it to a number of megapixels such as {default:g}, "
            "or unset it."
        )
    return value


def _resolve_limit(max_megapixels: float | None) -> float:
    if max_megapixels is None:
        return megapixels_from_env(MAX_MEGAPIXELS_ENV, DEFAULT_MAX_MEGAPIXELS)
    if isinstance(max_megapixels, bool) or not isinstance(max_megapixels, numbers.Real):
        raise TypeError(f"max_megapixels must be a number; got {type(max_megapixels).__name__}.")
    if not (math.isfinite(max_megapixels) and max_megapixels > 0):
        raise ValueError(
            f"max_megapixels must be a positive number of megapixels; got {max_megapixels}."
        )
    return float(max_megapixels)


def _read_source(source) -> tuple[bytes, str]:
    """Return the file's bytes and a name for messages."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), "The image data"
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            return path.read_bytes(), _quoted(path.name)
        except FileNotFoundError:
            raise ImageError(f"No file at {_quoted(path)}; check the path.") from None
        except IsADirectoryError:
            raise ImageError(
                f"{_quoted(path)} is a folder; choose an image file inside it."
            ) from None
        except PermissionError:
            raise ImageError(f"{_quoted(path)} cannot be read: permission denied.") from None
        except OSError as exc:
            raise ImageError(f"{_quoted(path)} cannot be read: {exc.strerror or exc}.") from exc
    if hasattr(source, "read"):
        try:
            data = source.read()
        except OSError as exc:
            raise ImageError(f"The file cannot be read: {exc}.") from exc
        if isinstance(data, str):
            raise TypeError("The file object is in text mode; open it with mode 'rb'.")
        file_name = getattr(source, "name", None)
        name = _quoted(Path(file_name).name) if isinstance(file_name, str) else "The image data"
        return bytes(data), name
    raise TypeError(
        f"source must be a path, bytes or a binary file object; got {type(source).__name__}."
    )


def _quoted(name: str | os.PathLike) -> str:
    """A file name for a message: in quotes, on one line (control characters escaped)."""
    text = str(name)
    return f"'{text}'" if text.isprintable() else ascii(text)


def _check_pixels(width: int, height: int, name: str, limit: float) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"{name} has zero size ({width}x{height} pixels); it holds no image.")
    megapixels = width * height / 1e6
    if megapixels > limit:
        raise ImageError(
            f"{name} is {width}x{height} pixels ({megapixels:.1f} megapixels), more than the "
            f"{limit:g}-megapixel limit for loading. Downscale or crop it first, or raise the "
            f"limit with max_megapixels= or {MAX_MEGAPIXELS_ENV}."
        )


def _load_bytes(data: bytes, name: str, limit: float, window=None) -> LoadedImage:
    if data[128:132] == b"DICM":
        # Checked before TIFF: a DICOM preamble may itself be a TIFF header.
        return _load_dicom(_read_dicom(data, name), name, limit, window)
    if data[:4] in _TIFF_MAGIC:
        return _load_tiff(data, name, limit)
    png = _png_header(data)
    if png is not None:
        _check_pixels(png[0], png[1], name, limit)  # Pillow refuses to identify a 0x0 PNG
    try:
        return _load_with_pillow(data, name, limit)
    except _Unrecognised:
        pass
    if data[:2] in _BARE_DICOM_STARTS:
        ds = _read_bare_dicom(data)
        if ds is not None:
            return _load_dicom(ds, name, limit, window)
    for magic, fmt in _KNOWN_MAGIC.items():
        if data.startswith(magic):
            raise ImageError(
                f"{name} starts like a {fmt} file but cannot be read; it is corrupt or "
                "truncated. Export or copy it again."
            )
    raise ImageError(
        f"{name} is not an image this program can read. Use DICOM, PNG, JPEG, TIFF, BMP, "
        "WebP or GIF."
    )


def _finish(
    samples: _Samples,
    *,
    name: str,
    fmt: str,
    bit_depth: int,
    notes: list[str],
    orientation: int = 1,
    modality: str = "unknown",
    n_frames: int = 1,
) -> LoadedImage:
    """Composite alpha on black, expand gray to RGB, apply orientation; build the result."""
    values = samples.values
    if samples.has_alpha:
        values = values[..., :-1] * values[..., -1:]
    if values.shape[2] == 1:
        values = np.repeat(values, 3, axis=2)
    values = _orient(values, orientation)
    # An RGB file of a gray picture (a screenshot, a JPEG with chroma noise) is gray: passed on
    # as gray=, it makes the degradation and every method return identical channels. The
    # pixels themselves are kept as the file has them.
    gray = samples.was_grayscale or _near_gray(values, bit_depth)
    if gray and not samples.was_grayscale and not is_gray(values):
        notes.append("RGB file with equal channels (within 2 levels): treated as grayscale.")
    height, width = values.shape[:2]
    channels = samples.source_channels
    original_shape = (height, width) if channels == 1 else (height, width, channels)
    image = np.ascontiguousarray(np.clip(values, 0.0, 1.0), dtype=np.float32)
    return LoadedImage(
        image=image,
        bit_depth=int(bit_depth),
        modality=modality,
        original_shape=original_shape,
        was_grayscale=samples.was_grayscale,
        gray=bool(gray),
        notes=notes,
        format=fmt,
        n_frames=int(n_frames),
    )


NEAR_GRAY_LEVELS = 2  # channel spread (in levels of the source depth) that still counts as gray


def _near_gray(values: np.ndarray, bit_depth: int) -> bool:
    """Whether every pixel's channels lie within ``NEAR_GRAY_LEVELS`` levels of each other."""
    tolerance = NEAR_GRAY_LEVELS / (2.0 ** min(max(int(bit_depth), 1), 24) - 1)
    return bool((np.ptp(values, axis=2) <= tolerance * 1.0001).all())


def _orient(values: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1–8) the way ``PIL.ImageOps.exif_transpose`` does."""
    if orientation == 2:
        return values[:, ::-1]
    if orientation == 3:
        return values[::-1, ::-1]
    if orientation == 4:
        return values[::-1]
    if orientation == 5:
        return values.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(values, -1)
    if orientation == 7:
        return values[::-1, ::-1].swapaxes(0, 1)
    if orientation == 8:
        return np.rot90(values, 1)
    return values


def _unit_range(arr: np.ndarray, bits: int, notes: list[str]) -> np.ndarray:
    """Scale samples to float32 [0, 1]: unsigned integers by their bit depth, others min–max."""
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if arr.dtype.kind == "u" and arr.dtype.itemsize <= 2:
        peak = 2**bits - 1 if 0 < bits <= 8 * arr.dtype.itemsize else np.iinfo(arr.dtype).max
        return np.minimum(arr.astype(np.float32) / np.float32(peak), np.float32(1.0))
    return _stretch(arr, notes)


STORED_BITS = (8, 10, 12, 14, 16)  # what 16-bit gray containers usually hold


def _gray16(arr: np.ndarray, notes: list[str]) -> np.ndarray:
    """16-bit gray samples with no window, scaled as a viewer shows them.

    X-ray detectors and microscope cameras store 10-, 12- or 14-bit values in 16-bit files
    that say nothing about it; scaled by 65535 such an image is almost black. The smallest of
    ``STORED_BITS`` that holds the maximum is taken as the stored depth and its full scale as
    white, so a 12-bit radiograph looks as it does in a 12-bit viewer, and an image that uses
    the top bit is kept as it is. Nothing is stretched: a dark image stays dark.
    """
    peak_value = int(arr.max()) if arr.size else 0
    bits = next(b for b in STORED_BITS if peak_value < 2**b)
    if bits < 16:
        notes.append(
            f"16-bit gray file without a window whose values reach {peak_value}: shown as "
            f"{bits}-bit data (0–{2**bits - 1} = black–white)."
        )
    return arr.astype(np.float32) / np.float32(2**bits - 1)


def _stretch(arr: np.ndarray, notes: list[str]) -> np.ndarray:
    """Min–max scale float or wide-integer samples; floats already in [0, 1] are kept."""
    values = arr.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        raise ImageError("The image holds no finite values (all NaN or infinite).")
    lo, hi = float(values[finite].min()), float(values[finite].max())
    if not finite.all():
        values = np.nan_to_num(values, nan=lo, posinf=hi, neginf=lo)
        notes.append(f"{np.count_nonzero(~finite)} NaN or infinite values set to the range ends.")
    if arr.dtype.kind == "f" and lo >= 0.0 and hi <= 1.0:
        notes.append("Floating-point samples already in [0, 1]; used as they are.")
        return values.astype(np.float32)
    if hi == lo:
        notes.append(f"Every sample is {lo:g}; shown as black.")
        return np.zeros(values.shape, dtype=np.float32)
    notes.append(f"{arr.dtype} samples scaled from [{lo:.6g}, {hi:.6g}] to [0, 1] (min–max).")
    return ((values - lo) / (hi - lo)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Pillow formats (PNG, JPEG, BMP, WebP, GIF, ...)


def _png_header(data: bytes) -> tuple[int, int, int, int] | None:
    """(width, height, bit depth, colour type) from a PNG's IHDR, or None if not a PNG."""
    if not data.startswith(_PNG_MAGIC) or data[12:16] != b"IHDR" or len(data) < 26:
        return None
    width, height, depth, color_type = struct.unpack(">IIBB", data[16:26])
    return width, height, depth, color_type


def _load_with_pillow(data: bytes, name: str, limit: float) -> LoadedImage:
    try:
        with warnings.catch_warnings():
            # Our own pixel limit is the guard, and a truncated header fails below; Pillow's
            # DecompressionBombWarning and "Truncated File Read" would only be noise.
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data), formats=PILLOW_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageError(_bomb_message(name, exc, limit)) from exc
    except UnidentifiedImageError:
        raise _Unrecognised from None
    except Exception as exc:  # Pillow raises assorted types for malformed headers
        raise ImageError(_corrupt_message(name, exc)) from exc
    with im, warnings.catch_warnings():
        # Truncation and odd EXIF become an ImageError or are harmless; the warnings are noise.
        warnings.simplefilter("ignore")
        try:
            return _decode_pillow(im, data, name, limit)
        except ImageError:
            raise
        except Exception as exc:  # truncated data surfaces as OSError, SyntaxError, ...
            raise ImageError(_corrupt_message(name, exc)) from exc


def _decode_pillow(im: Image.Image, data: bytes, name: str, limit: float) -> LoadedImage:
    width, height = im.size
    _check_pixels(width, height, name, limit)
    fmt = im.format or "image"
    notes: list[str] = []
    n_frames = int(getattr(im, "n_frames", 1))
    if n_frames > 1:
        notes.append(f"The {fmt} has {n_frames} frames; the first was used.")
    orientation = _exif_orientation(im)
    png = _png_header(data) if fmt == "PNG" else None
    if png is not None and png[2] == 16 and png[3] != 0:
        # Pillow keeps 16-bit grayscale PNG but cuts 16-bit colour PNG to 8 bits.
        samples = _decode_png16(data, name, png[3])
        bit_depth = 16
    else:
        full_range = png is not None and b"sBIT" in data[: max(data.find(b"IDAT"), 0)]
        samples, bit_depth = _pillow_samples(im, notes, full_range_16=full_range)
    return _finish(
        samples,
        name=name,
        fmt=fmt,
        bit_depth=bit_depth,
        notes=notes,
        orientation=orientation,
        n_frames=n_frames,
    )


def _bomb_message(name: str, exc: Exception, limit: float) -> str:
    """Pillow's own decompression-bomb refusal (a header past its hard cap) in our words."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{int(found.group(1)) / 1e6:.1f} megapixels" if found else "its header's size"
    pillow_cap = 2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6  # Pillow errors at twice its warning
    if limit < pillow_cap:
        cap = f"the {limit:g}-megapixel limit for loading"
    else:
        cap = f"Pillow's {pillow_cap:.0f}-megapixel safety limit"
    return (
        f"{name} has too many pixels to load safely ({size}, more than {cap}). Downscale or "
        "crop it first."
    )


def _exif_orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a malformed EXIF block should not cost the user the image
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _pillow_samples(
    im: Image.Image, notes: list[str], *, full_range_16: bool = False
) -> tuple[_Samples, int]:
    """Decode a Pillow image into samples and the source's bits per sample.

    ``full_range_16``: a 16-bit PNG with an sBIT chunk, whose samples the PNG specification
    requires to be scaled to the full 16-bit range already.
    """
    mode = im.mode
    channels = len(im.getbands())
    if mode in ("1", "L"):
        values = _u8(im.convert("L"))
        return _Samples(values, False, True, 1), 1 if mode == "1" else 8
    if mode in ("LA", "La"):
        return _Samples(_u8(im.convert("LA")), True, True, 2), 8
    if mode.startswith("I;16"):
        raw = np.asarray(im)
        if full_range_16:
            values = raw.astype(np.float32) / np.float32(65535.0)  # PNG spec: full range
        else:
            values = _gray16(raw, notes)
        return _Samples(values[..., None], False, True, 1), 16
    if mode in ("I", "F"):
        values = _stretch(np.asarray(im), notes)[..., None]
        return _Samples(values, False, True, 1), 32
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        values = _u8(im.convert("RGBA" if has_alpha else "RGB"))
        return _Samples(values, has_alpha, False, channels), 8
    if mode in ("RGBA", "RGBa"):
        return _Samples(_u8(im.convert("RGBA")), True, False, 4), 8
    if mode == "CMYK":
        notes.append("CMYK converted to RGB without colour management.")
    try:
        rgb = im.convert("RGB")
    except ValueError as exc:
        raise ImageError(f"Pixel mode {mode!r} is not supported ({exc}).") from exc
    return _Samples(_u8(rgb), False, False, channels), 8


def _u8(im: Image.Image) -> np.ndarray:
    values = np.asarray(im, dtype=np.uint8)
    if values.ndim == 2:
        values = values[..., None]
    return values.astype(np.float32) / np.float32(255.0)


def _decode_png16(data: bytes, name: str, color_type: int) -> _Samples:
    import cv2  # only needed here; keeps `import dpe.io` light

    if not _png_chunks_fit(data):
        # OpenCV spends seconds on a chunk whose length runs past the end of the data.
        raise ImageError(_corrupt_message(name, "a PNG chunk runs past the end of the file"))
    arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ImageError(_corrupt_message(name, "the 16-bit PNG data cannot be decoded"))
    if arr.ndim == 2:
        arr = arr[..., None]
    elif arr.shape[2] == 3:
        arr = arr[..., ::-1]  # OpenCV is BGR
    elif arr.shape[2] == 4:
        arr = arr[..., [2, 1, 0, 3]]
    peak = np.float32(np.iinfo(arr.dtype).max)
    values = arr.astype(np.float32) / peak
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(color_type, arr.shape[2])
    return _Samples(values, arr.shape[2] in (2, 4), color_type in (0, 4), channels)


def _png_chunks_fit(data: bytes) -> bool:
    """Whether every chunk up to IEND lies within ``data`` (lengths are not trusted)."""
    pos = len(_PNG_MAGIC)
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        pos += 12 + length  # length, type, payload, CRC
        if kind == b"IEND":
            break
    return pos <= len(data)


def _corrupt_message(name: str, reason: object) -> str:
    return (
        f"{name} is truncated or corrupt ({_reason(reason)}); the file may not have been fully "
        "copied or uploaded. Export or copy it again."
    )


_OBJECT_REPR = re.compile(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>")


def _reason(exc: object, *, last_line: bool = False) -> str:
    """A third-party error as one short line: no object addresses, never a bare number."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = _OBJECT_REPR.sub("", (lines[-1] if last_line else lines[0]) if lines else "").strip()
    if isinstance(exc, BaseException) and not any(c.isalpha() for c in text):
        # e.g. tifffile's IndexError(0) for a file whose first page cannot be found
        text = f"{type(exc).__name__} {text}".strip()
    return text if len(text) <= 200 else text[:199] + "…"


# --------------------------------------------------------------------------------------------
# TIFF


def _load_tiff(data: bytes, name: str, limit: float) -> LoadedImage:
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            n_pages = len(tif.pages)
            if not n_pages:
                raise ImageError(_corrupt_message(name, "the TIFF's first page cannot be found"))
            page = tif.pages.first
            width, height = int(page.imagewidth), int(page.imagelength)
            _check_pixels(width, height, name, limit)
            _check_tiff_samples(int(page.size), width * height, name, limit)
            bits = int(page.bitspersample)
            orientation = _tiff_orientation(page)
            notes: list[str] = []
            reason: object = "its photometric interpretation is left to Pillow"
            try:
                samples = _tiff_samples(page.asarray(), page, notes)
            except ImageError:
                raise
            except Exception as exc:  # a codec tifffile lacks (LZW, JPEG, ...) or bad data
                samples, reason = None, exc
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(_corrupt_message(name, exc)) from exc
    if samples is None:
        return _tiff_with_pillow(data, name, limit, bits, reason)
    if n_pages > 1:
        notes.append(f"The TIFF has {n_pages} pages; the first was used.")
    return _finish(
        samples,
        name=name,
        fmt="TIFF",
        bit_depth=bits,
        notes=notes,
        orientation=orientation,
        n_frames=n_pages,
    )


def _check_tiff_samples(samples: int, pixels: int, name: str, limit: float) -> None:
    # The pixel check alone would let a header claim 128 samples per pixel (gigabytes).
    if samples > 4 * limit * 1e6:  # four samples per pixel: RGBA
        raise ImageError(
            f"{name} holds {samples / 1e6:.0f} million samples ({samples // pixels} per pixel), "
            f"more than a {limit:g}-megapixel RGBA image has. It is corrupt, or a stack of "
            "images this program does not read; save the image alone as PNG or TIFF."
        )


def _tiff_orientation(page: tifffile.TiffPage) -> int:
    tag = page.tags.get(274)
    try:
        return int(tag.value) if tag is not None else 1
    except (TypeError, ValueError):  # a malformed tag should not cost the user the image
        return 1


def _tiff_samples(arr: np.ndarray, page: tifffile.TiffPage, notes: list[str]) -> _Samples | None:
    """Samples from a decoded TIFF page, or None for a photometric left to Pillow."""
    axes = page.axes
    if arr.ndim != len(axes):
        return None
    # Keep rows, columns and samples; take the first plane of any other axis (e.g. depth).
    arr = arr[tuple(slice(None) if a in "YXS" else 0 for a in axes)]
    kept = [a for a in axes if a in "YXS"]
    if "S" not in kept:
        arr, kept = arr[..., None], [*kept, "S"]
    arr = arr.transpose([kept.index(a) for a in "YXS"])

    photometric = int(page.photometric)
    samples = arr.shape[2]
    color = {0: 1, 1: 1, 2: 3, 3: 1, 5: 4}.get(photometric)
    if color is None or samples < color or (photometric == 5 and samples - color > 1):
        return None  # YCbCr, CIELab, non-CMYK inks, ...
    extras = tuple(int(e) for e in page.extrasamples)
    has_alpha = samples > color and bool(extras) and extras[0] in (1, 2)
    bits = int(page.bitspersample)

    if photometric == 3:
        colormap = np.asarray(page.colormap)  # (3, 2**bits), 16-bit entries
        index = np.clip(arr[..., 0].astype(np.intp), 0, colormap.shape[1] - 1)
        values = colormap[:, index].transpose(1, 2, 0).astype(np.float32) / np.float32(65535.0)
        return _Samples(values, False, False, samples)

    if color == 1 and arr.dtype == np.uint16 and photometric in (0, 1):
        values = _gray16(arr[..., 0], notes)[..., None]
    else:
        values = _unit_range(arr[..., :color], bits, notes)
    if photometric == 0:
        values = 1.0 - values
        notes.append("MINISWHITE TIFF inverted so that white is high.")
    elif photometric == 5:
        ink = 1.0 - values[..., 3:4]
        values = (1.0 - values[..., :3]) * ink
        notes.append("CMYK converted to RGB without colour management.")
    if has_alpha:
        alpha = arr[..., color : color + 1]
        if alpha.dtype.kind == "f":
            alpha = np.clip(alpha, 0.0, 1.0).astype(np.float32)
        else:
            alpha = _unit_range(alpha, bits, [])
        values = np.concatenate([values, alpha], axis=2)
    return _Samples(values.astype(np.float32), has_alpha, photometric in (0, 1), samples)


def _tiff_with_pillow(
    data: bytes, name: str, limit: float, bits: int, reason: object
) -> LoadedImage:
    try:
        loaded = _load_with_pillow(data, name, limit)
    except (_Unrecognised, ImageError) as exc:
        if "imagecodecs" in str(reason):
            raise ImageError(
                f"{name} uses a TIFF compression that needs the imagecodecs package ({reason}) "
                "and Pillow could not read it either. Install imagecodecs, or save the TIFF "
                "uncompressed or with Deflate."
            ) from exc
        raise ImageError(_corrupt_message(name, reason)) from exc
    if loaded.bit_depth < bits:
        loaded.notes.append(
            f"Read at {loaded.bit_depth}-bit precision by Pillow because tifffile could not "
            f"decode it ({reason}); install the imagecodecs package to keep all {bits} bits."
        )
    loaded.bit_depth = bits
    return loaded


# --------------------------------------------------------------------------------------------
# DICOM


def _read_dicom(data: bytes, name: str) -> Dataset:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about every odd value it tolerates
            return pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:
        raise ImageError(
            f"{name} is a DICOM file whose header cannot be read ({_reason(exc)}); it is "
            "truncated or corrupt. Export it from the PACS or viewer again."
        ) from exc


def _read_bare_dicom(data: bytes) -> Dataset | None:
    """A DICOM dataset without preamble, or None if the data does not parse as one."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception:
        return None
    has_pixels = any(kw in ds for kw in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    return ds if has_pixels or "SOPClassUID" in ds else None


def _load_dicom(ds: Dataset, name: str, limit: float, window=None) -> LoadedImage:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # odd values in a damaged header warn on first use
            return _dicom_image(ds, name, limit, window)
    except ImageError:
        raise
    except Exception as exc:  # pydicom converts values on first use: bad VRs, lengths, UIDs
        raise ImageError(_corrupt_message(name, exc)) from exc


def _dicom_image(ds: Dataset, name: str, limit: float, window=None) -> LoadedImage:
    if not any(kw in ds for kw in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if ds.get("Rows") and ds.get("Columns"):
            raise ImageError(
                f"{name} is a DICOM image whose pixel data is missing; the file is probably "
                "truncated. Export it again."
            )
        sop = ds.get("SOPClassUID")
        sop_name = getattr(sop, "name", None)  # a UID's registered name, else the UID itself
        known = isinstance(sop_name, str) and sop_name != str(sop) and sop_name.isprintable()
        kind = f" ({sop_name})" if known else ""
        raise ImageError(
            f"{name} is a DICOM file without pixel data{kind}: a report, plan or similar, not "
            "an image. Choose a file from an image series."
        )
    rows, columns = ds.get("Rows"), ds.get("Columns")
    if rows is None or columns is None:
        raise ImageError(f"{name} is a DICOM image without Rows or Columns; it is corrupt.")
    _check_pixels(int(columns), int(rows), name, limit)
    _ensure_transfer_syntax(ds)
    n_frames = int(ds.get("NumberOfFrames") or 1)
    index = n_frames // 2
    arr, photometric = _decode_dicom_frame(ds, name, index)

    notes: list[str] = []
    if n_frames > 1:
        notes.append(f"The DICOM has {n_frames} frames; the middle one ({index + 1}) was used.")
    bits_stored = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        if arr.ndim != 2:
            raise ImageError(f"{name}: a {photometric} DICOM frame must have one sample per pixel.")
        values = _dicom_grayscale(arr, ds, index, photometric, notes, window)
        samples = _Samples(values[..., None], False, True, 1)
    elif photometric == "PALETTE COLOR":
        samples = _Samples(_dicom_palette(arr, ds, name), False, False, 1)
    elif photometric == "RGB":  # the decoder has already converted YBR to RGB
        samples = _Samples(_unit_range(arr, bits_stored, notes), False, False, 3)
    else:
        raise ImageError(
            f"{name} uses the DICOM photometric interpretation {photometric!r}, which is not "
            "supported; convert it to MONOCHROME2 or RGB."
        )
    return _finish(
        samples,
        name=name,
        fmt="DICOM",
        bit_depth=bits_stored,
        notes=notes,
        modality=_modality_group(ds.get("Modality")),
        n_frames=n_frames,
    )


def _ensure_transfer_syntax(ds: Dataset) -> None:
    """Give a preamble-less dataset the transfer syntax it was read with, so it can decode."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = ds.original_encoding
    if implicit:
        uid = ImplicitVRLittleEndian
    else:
        uid = ExplicitVRLittleEndian if little is not False else ExplicitVRBigEndian
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = uid


def _decode_dicom_frame(ds: Dataset, name: str, index: int) -> tuple[np.ndarray, str]:
    """Decode one frame (RGB for colour) and return it with its photometric interpretation."""
    syntax = ds.file_meta.TransferSyntaxUID
    advice = (
        "Install a decoder for it (pylibjpeg with pylibjpeg-libjpeg / -openjpeg, or "
        "python-gdcm) or convert the file to an uncompressed transfer syntax "
        "(e.g. `gdcmconv --raw` or `dcmdjpeg`)."
    )
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise ImageError(
            f"{name} uses the DICOM transfer syntax '{syntax.name}' ({syntax}), which no "
            "decoder supports. Convert it to an uncompressed transfer syntax "
            "(e.g. `gdcmconv --raw`)."
        ) from None
    if not decoder.is_available:
        raise ImageError(
            f"{name} uses the DICOM transfer syntax '{syntax.name}' ({syntax}), which no "
            f"installed decoder can read. {advice}"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr, meta = decoder.as_array(ds, index=index, as_rgb=True)
    except RuntimeError as exc:  # every available plugin failed
        reason = _reason(exc, last_line=True)
        raise ImageError(
            f"{name}: the pixel data in transfer syntax '{syntax.name}' could not be decoded "
            f"({reason}). The file may be corrupt, or it needs another decoder. {advice}"
        ) from exc
    except Exception as exc:  # short pixel data, inconsistent image attributes, ...
        raise ImageError(_corrupt_message(name, exc)) from exc
    photometric = str(meta.get("photometric_interpretation") or ds.PhotometricInterpretation)
    return arr, photometric.strip().upper()


def _frame_view(ds: Dataset, index: int) -> Dataset:
    """The attributes that map stored to displayed values for frame ``index``.

    Enhanced multi-frame objects keep rescale and window in functional groups rather than at
    the top level; per-frame values override shared ones, which override top-level ones.
    """
    view = Dataset()
    if getattr(ds, "file_meta", None) is not None:
        view.file_meta = ds.file_meta  # endianness of OW lookup tables
    for keyword in _DICOM_VALUE_KEYWORDS:
        if keyword in ds:
            view.add(ds[keyword])
    for keyword, item in (
        ("SharedFunctionalGroupsSequence", 0),
        ("PerFrameFunctionalGroupsSequence", index),
    ):
        groups = ds.get(keyword)
        if not groups or item >= len(groups):
            continue
        for macro in ("PixelValueTransformationSequence", "FrameVOILUTSequence"):
            entries = groups[item].get(macro)
            if entries:
                for element in entries[0]:
                    view.add(element)
    return view


def _dicom_grayscale(
    arr: np.ndarray,
    ds: Dataset,
    index: int,
    photometric: str,
    notes: list[str],
    window: tuple[float, float] | None = None,
) -> np.ndarray:
    """Modality LUT, then VOI (LUT, window, or percentile window), then MONOCHROME1 inversion.

    A requested ``window`` (centre, width) replaces the file's VOI LUT and window.
    """
    view = _frame_view(ds, index)
    values = arr if arr.dtype.kind == "f" else apply_modality_lut(arr, view)
    out = None
    if window is not None:
        view = Dataset()
        view.WindowCenter, view.WindowWidth = float(window[0]), float(window[1])
        out = _dicom_window(values, view, [])
        notes.append(f"Window requested: centre {window[0]:g}, width {window[1]:g}.")
    if out is None:
        out = _dicom_voi_lut(values, view, notes)
    if out is None:
        out = _dicom_window(values, view, notes)
    if out is None:
        out = _percentile_window(values, notes)
    if photometric == "MONOCHROME1":
        out = 1.0 - out
        notes.append("MONOCHROME1 inverted so that high values are bright.")
    return out.astype(np.float32)


def _dicom_voi_lut(values: np.ndarray, view: Dataset, notes: list[str]) -> np.ndarray | None:
    if not view.get("VOILUTSequence"):
        return None
    item = view.VOILUTSequence[0]
    if "LUTDescriptor" not in item or "LUTData" not in item:
        return None
    try:
        descriptor = item.LUTDescriptor
        entries, first = int(descriptor[0]) or 2**16, int(descriptor[1])
        mapped = apply_voi_lut(np.rint(values).astype(np.int64), view, prefer_lut=True)
        # The LUT's own output range, since declared bit depths are often wider than used.
        table = apply_voi_lut(np.arange(first, first + entries), view, prefer_lut=True)
    except Exception as exc:
        notes.append(f"The file's VOI LUT could not be applied ({exc}).")
        return None
    lo, hi = float(table.min()), float(table.max())
    if hi <= lo:
        return None
    notes.append("The file's VOI LUT was applied.")
    return ((mapped.astype(np.float64) - lo) / (hi - lo)).clip(0.0, 1.0)


def _dicom_window(values: np.ndarray, view: Dataset, notes: list[str]) -> np.ndarray | None:
    if view.get("WindowCenter") is None or view.get("WindowWidth") is None:
        return None
    # Window on a bare dataset so pydicom's output range is 0..65535 whatever the source.
    window = Dataset()
    window.PhotometricInterpretation = "MONOCHROME2"
    window.BitsStored = 16
    window.PixelRepresentation = 0
    for keyword in ("WindowCenter", "WindowWidth", "VOILUTFunction"):
        if keyword in view:
            window.add(view[keyword])
    try:
        out = apply_voi_lut(values, window) / 65535.0
        center, width = (_first(window[k].value) for k in ("WindowCenter", "WindowWidth"))
    except Exception as exc:  # zero or negative width, unknown VOI LUT function, ...
        notes.append(f"The file's window could not be applied ({exc}).")
        return None
    notes.append(f"Window from the file applied: centre {center:g}, width {width:g}.")
    return out.clip(0.0, 1.0)


def _first(value) -> float:
    if isinstance(value, (list, tuple, MultiValue)):
        value = value[0]
    return float(value)


def _percentile_window(values: np.ndarray, notes: list[str]) -> np.ndarray:
    values = np.nan_to_num(values.astype(np.float64))
    lo, hi = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    if hi <= lo:
        lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        notes.append(f"Every pixel is {lo:g}; shown as black.")
        return np.zeros(values.shape, dtype=np.float64)
    notes.append(
        f"No window in the file; a 0.5–99.5 percentile window [{lo:.6g}, {hi:.6g}] was applied."
    )
    return ((values - lo) / (hi - lo)).clip(0.0, 1.0)


def _dicom_palette(arr: np.ndarray, ds: Dataset, name: str) -> np.ndarray:
    try:
        rgb = apply_color_lut(arr, ds)
    except Exception as exc:
        raise ImageError(f"{name}: the DICOM palette cannot be applied ({exc}).") from exc
    peak = np.float32(255.0 if rgb.dtype == np.uint8 else 65535.0)
    return rgb.astype(np.float32) / peak


def _modality_group(code: object) -> str:
    code = str(code or "").strip().upper()
    for group, codes in _MODALITY_GROUPS.items():
        if code in codes:
            return group
    return "unknown"


# --------------------------------------------------------------------------------------------
# Writing


def _write_png(rgb: np.ndarray, target: Path | BinaryIO, bits: int) -> None:
    peak = 2**bits - 1
    quantised = np.floor(rgb * np.float32(peak) + np.float32(0.5))
    if bits == 8:
        Image.fromarray(quantised.astype(np.uint8)).save(target, format="PNG")
        return
    import cv2  # Pillow cannot write 16-bit RGB PNG

    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(quantised.astype(np.uint16)[..., ::-1]))
    if not ok:
        raise OSError("OpenCV could not encode the 16-bit PNG.")
    if isinstance(target, Path):
        target.write_bytes(encoded.tobytes())
    else:
        target.write(encoded.tobytes())
