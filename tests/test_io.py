"""Tests for dpe.io: every input format, every error a user can cause, and the PNG writer.

Every file is made here (in memory or under tmp_path), except a few small DICOMs that pydicom
ships inside its own package; those are used only when present locally, never downloaded.
"""

from __future__ import annotations

import doctest
import io
import socket
import struct
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
import tifffile
from numpy.testing import assert_allclose, assert_array_equal
from PIL import Image, ImageOps
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space, get_decoder
from pydicom.sequence import Sequence
from pydicom.uid import (
    MPEG2MPML,
    BasicTextSRStorage,
    ExplicitVRLittleEndian,
    JPEGExtended12Bit,
    JPEGLSLossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

import dpe.io
from dpe.io import (
    DEFAULT_MAX_MEGAPIXELS,
    MAX_MEGAPIXELS_ENV,
    PILLOW_FORMATS,
    ImageError,
    LoadedImage,
    load_image,
    save_image,
)

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Loading must never touch the network (pydicom can download test files; we never let it)."""

    def refuse(*args, **kwargs):
        raise AssertionError("dpe.io tried to open a network socket")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(autouse=True)
def _default_limit(monkeypatch):
    monkeypatch.delenv(MAX_MEGAPIXELS_ENV, raising=False)


# --------------------------------------------------------------------------------------------
# Helpers that make files


def _checked(loaded: LoadedImage) -> LoadedImage:
    """Assert the one image type every load must return."""
    assert isinstance(loaded, LoadedImage)
    image = loaded.image
    assert image.dtype == np.float32
    assert image.ndim == 3 and image.shape[2] == 3
    assert image.flags.c_contiguous
    assert np.isfinite(image).all()
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert tuple(loaded.original_shape[:2]) == image.shape[:2]
    return loaded


def _pil_bytes(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _raw_png(width: int, height: int, depth: int, color_type: int, rows: bytes = b"") -> bytes:
    """A PNG written by hand, for headers no encoder will produce (0x0, 10^10 pixels, 16-bit LA)."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(rows))
        + _png_chunk(b"IEND", b"")
    )


def _png16(rgb_or_gray: np.ndarray) -> bytes:
    arr = rgb_or_gray
    if arr.ndim == 3:
        arr = arr[..., [2, 1, 0, 3]] if arr.shape[2] == 4 else arr[..., ::-1]
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(arr))
    assert ok
    return buf.tobytes()


def _with_exif_chunk(png: bytes, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    tiff_block = exif.tobytes()[6:]  # drop the JPEG-style "Exif\0\0" prefix
    return png[:-12] + _png_chunk(b"eXIf", tiff_block) + png[-12:]


def _tiff(arr: np.ndarray, **kwargs) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, **kwargs)
    return buf.getvalue()


def _dataset(
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    *,
    bits_stored: int | None = None,
    **attrs,
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.Modality = "OT"
    ds.set_pixel_data(pixels, photometric, bits_stored or pixels.dtype.itemsize * 8)
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def _dicom_bytes(ds: Dataset, *, preamble: bool = True, **write_kwargs) -> bytes:
    buf = io.BytesIO()
    if preamble:
        ds.save_as(buf, enforce_file_format=True)
    else:
        pydicom.dcmwrite(buf, ds, **write_kwargs)
    return buf.getvalue()


def _dicom(pixels: np.ndarray, photometric: str = "MONOCHROME2", **kwargs) -> bytes:
    return _dicom_bytes(_dataset(pixels, photometric, **kwargs))


def _shipped(name: str) -> str:
    """Path of a DICOM pydicom ships in its own package (never downloaded)."""
    path = get_testdata_file(name, download=False)
    assert path is not None, f"pydicom {pydicom.__version__} should ship {name} in its package"
    return path


RAMP8 = np.arange(256, dtype=np.uint16).reshape(16, 16)


# --------------------------------------------------------------------------------------------
# Sources: path, PathLike, bytes, file object


@pytest.mark.parametrize("kind", ["str", "pathlike", "bytes", "bytearray", "memoryview", "file"])
def test_load_accepts_every_kind_of_source(tmp_path, kind):
    rgb = RNG.integers(0, 256, (7, 5, 3), dtype=np.uint8)
    data = _pil_bytes(Image.fromarray(rgb), "PNG")
    path = tmp_path / "x.png"
    path.write_bytes(data)
    source = {
        "str": str(path),
        "pathlike": path,
        "bytes": data,
        "bytearray": bytearray(data),
        "memoryview": memoryview(data),
        "file": io.BytesIO(data),
    }[kind]
    loaded = _checked(load_image(source))
    assert_array_equal(loaded.image, rgb.astype(np.float32) / 255)
    assert loaded.format == "PNG" and loaded.bit_depth == 8 and loaded.modality == "unknown"
    assert loaded.original_shape == (7, 5, 3) and not loaded.was_grayscale and loaded.notes == []


def test_open_binary_file_object_is_read_from_its_position(tmp_path):
    path = tmp_path / "x.png"
    save_image(np.full((3, 4, 3), 0.25, np.float32), path)
    with open(path, "rb") as handle:
        loaded = load_image(handle)
    assert loaded.image.shape == (3, 4, 3)


def test_wrong_source_types_raise_type_error(tmp_path):
    with pytest.raises(TypeError, match="path, bytes or a binary file"):
        load_image(12345)
    path = tmp_path / "x.png"
    path.write_text("not binary")
    with open(path) as text_handle, pytest.raises(TypeError, match="'rb'"):
        load_image(text_handle)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageError, match="No file at"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="is a folder"):
        load_image(tmp_path)


@pytest.mark.parametrize("as_path", [True, False])
def test_empty_file(tmp_path, as_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty \(0 bytes\)"):
        load_image(path if as_path else b"")


@pytest.mark.parametrize(
    "data",
    [
        b"hello, this is a text file\n",
        b"<html><body>404</body></html>",
        b"PK\x03\x04" + bytes(100),
        bytes(RNG.integers(0, 256, 5000, dtype=np.uint8)),
        b"\x08\x00\x05\x00" + bytes(60),  # starts like a preamble-less DICOM, is not one
    ],
)
def test_not_an_image(data):
    with pytest.raises(ImageError, match="not an image"):
        load_image(data)


def test_image_error_is_a_value_error():
    assert issubclass(ImageError, ValueError)


def test_pillow_formats_are_all_known_to_pillow():
    Image.init()
    assert set(PILLOW_FORMATS) <= set(Image.OPEN)
    assert "EPS" not in PILLOW_FORMATS and "PDF" not in PILLOW_FORMATS


# --------------------------------------------------------------------------------------------
# 8-bit formats


LOSSLESS_RGB = {
    "PNG": {},
    "BMP": {},
    "WEBP": {"lossless": True},
    "TIFF": {},
    "TIFF-LZW": {"compression": "tiff_lzw"},  # tifffile needs imagecodecs: Pillow decodes it
    "TGA": {},
    "PPM": {},
}


@pytest.mark.parametrize("name", list(LOSSLESS_RGB))
def test_lossless_rgb_formats_load_exactly(name):
    rgb = RNG.integers(0, 256, (9, 13, 3), dtype=np.uint8)
    data = _pil_bytes(Image.fromarray(rgb), name.split("-")[0], **LOSSLESS_RGB[name])
    loaded = _checked(load_image(data))
    assert_array_equal(loaded.image, rgb.astype(np.float32) / 255)
    assert loaded.bit_depth == 8
    assert loaded.format == name.split("-")[0]
    assert not loaded.was_grayscale and loaded.original_shape == (9, 13, 3)


def test_jpeg_loads_close_to_the_original():
    y, x = np.mgrid[0:48, 0:64]
    rgb = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)
    loaded = _checked(load_image(_pil_bytes(Image.fromarray(rgb), "JPEG", quality=95)))
    assert loaded.format == "JPEG" and loaded.bit_depth == 8
    assert np.abs(loaded.image - rgb / 255).mean() < 0.01


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "JPEG", "BMP"])
def test_grayscale_is_expanded_once(fmt):
    gray = (RAMP8 * 3 % 256).astype(np.uint8)
    loaded = _checked(load_image(_pil_bytes(Image.fromarray(gray), fmt)))
    assert loaded.was_grayscale
    assert loaded.original_shape == (16, 16)
    assert_array_equal(loaded.image[..., 0], loaded.image[..., 1])
    assert_array_equal(loaded.image[..., 0], loaded.image[..., 2])
    if fmt != "JPEG":
        assert_array_equal(loaded.image[..., 0], gray / np.float32(255))


def test_bilevel_image():
    bits = RNG.integers(0, 2, (6, 10)).astype(bool)
    loaded = _checked(load_image(_pil_bytes(Image.fromarray(bits), "PNG")))
    assert loaded.bit_depth == 1 and loaded.was_grayscale
    assert_array_equal(loaded.image[..., 0], bits.astype(np.float32))


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
def test_rgba_is_composited_on_black(fmt):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[..., 3] = [[0, 64, 128, 255]] * 4
    kwargs = {"lossless": True} if fmt == "WEBP" else {}
    loaded = _checked(load_image(_pil_bytes(Image.fromarray(rgba), fmt, **kwargs)))
    alpha = rgba[..., 3:].astype(np.float32) / 255
    expected = rgba[..., :3].astype(np.float32) / 255 * alpha
    assert_allclose(loaded.image, expected, atol=1e-6)
    assert loaded.original_shape == (4, 4, 4)
    assert loaded.image[0, 0].max() == 0.0  # fully transparent is black, not white


def test_gray_alpha_is_composited_on_black():
    la = np.stack([np.full((3, 4), 200, np.uint8), np.array([[0, 85, 170, 255]] * 3, np.uint8)], -1)
    loaded = _checked(load_image(_pil_bytes(Image.fromarray(la, "LA"), "PNG")))
    assert loaded.was_grayscale and loaded.original_shape == (3, 4, 2)
    assert_allclose(loaded.image[0, :, 0], 200 / 255 * np.array([0, 85, 170, 255]) / 255, atol=1e-6)


PALETTE = [255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 0]


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "BMP"])
def test_palette_image(fmt):
    index = RNG.integers(0, 4, (5, 7)).astype(np.uint8)
    im = Image.fromarray(index, "P")
    im.putpalette(PALETTE)
    loaded = _checked(load_image(_pil_bytes(im, fmt)))
    colours = np.array(PALETTE, np.float32).reshape(-1, 3) / 255
    assert_array_equal(loaded.image, colours[index])
    assert not loaded.was_grayscale and loaded.bit_depth == 8


def test_palette_transparency_is_composited_on_black():
    index = np.array([[0, 1], [2, 3]], np.uint8)
    im = Image.fromarray(index, "P")
    im.putpalette(PALETTE)
    loaded = _checked(load_image(_pil_bytes(im, "PNG", transparency=1)))
    assert_array_equal(loaded.image[0, 1], [0, 0, 0])
    assert_array_equal(loaded.image[0, 0], [1, 0, 0])


def test_palette_tiff_uses_its_16_bit_colormap():
    colormap = np.zeros((3, 256), np.uint16)
    colormap[:, 1] = (65535, 0, 32768)
    colormap[:, 2] = (0, 65535, 0)
    index = np.array([[0, 1, 2]], np.uint8)
    loaded = _checked(load_image(_tiff(index, photometric="palette", colormap=colormap)))
    assert_allclose(loaded.image[0], [[0, 0, 0], [1, 0, 32768 / 65535], [0, 1, 0]], atol=1e-6)


def test_cmyk_jpeg():
    cmyk = Image.new("CMYK", (16, 16), (255, 0, 0, 0))  # pure cyan
    loaded = _checked(load_image(_pil_bytes(cmyk, "JPEG", quality=100)))
    assert_allclose(loaded.image[8, 8], [0, 1, 1], atol=0.03)
    assert loaded.original_shape == (16, 16, 4)
    assert any("CMYK" in note for note in loaded.notes)


def test_cmyk_tiff():
    cmyk = np.array([[[255, 0, 0, 0], [0, 0, 255, 0], [0, 0, 0, 255], [0, 0, 0, 51]]], np.uint8)
    loaded = _checked(load_image(_pil_bytes(Image.fromarray(cmyk, "CMYK"), "TIFF")))
    expected = [[0, 1, 1], [1, 1, 0], [0, 0, 0], [0.8, 0.8, 0.8]]
    assert_allclose(loaded.image[0], expected, atol=1e-6)
    assert any("CMYK" in note for note in loaded.notes)


def test_miniswhite_tiff_is_inverted():
    gray = np.array([[0, 255]], np.uint8)
    loaded = _checked(load_image(_tiff(gray, photometric="miniswhite")))
    assert_array_equal(loaded.image[0, :, 0], [1.0, 0.0])


# --------------------------------------------------------------------------------------------
# EXIF orientation


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow_exif_transpose(orientation):
    rgb = RNG.integers(0, 256, (5, 8, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _pil_bytes(Image.fromarray(rgb), "PNG", exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    loaded = _checked(load_image(data))
    assert_array_equal(loaded.image, expected.astype(np.float32) / 255)
    assert loaded.image.shape[:2] == ((8, 5) if orientation >= 5 else (5, 8))
    if orientation != 1:
        assert not np.array_equal(loaded.image, rgb.astype(np.float32) / 255)


def test_exif_orientation_in_jpeg_rotates():
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[:, :30] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    loaded = _checked(load_image(_pil_bytes(Image.fromarray(rgb), "JPEG", exif=exif)))
    assert loaded.image.shape == (60, 40, 3)
    assert loaded.image[:25].mean() > 0.9 and loaded.image[35:].mean() < 0.1  # left is now top


def test_orientation_tag_in_16_bit_tiff_and_png():
    gray = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000).astype(np.uint16)
    expected = np.rot90(gray, -1).astype(np.float32) / 65535
    tiff = _tiff(gray, extratags=[(274, "H", 1, 6, False)])
    assert_allclose(_checked(load_image(tiff)).image[..., 0], expected, atol=1e-7)
    rgb = np.stack([gray] * 3, -1)
    png = _with_exif_chunk(_png16(rgb), 6)
    loaded = _checked(load_image(png))
    assert loaded.bit_depth == 16
    assert_allclose(loaded.image[..., 1], expected, atol=1e-7)


# --------------------------------------------------------------------------------------------
# 16-bit and float precision

RAMP16 = (30000 + np.arange(64, dtype=np.uint16)).reshape(8, 8)  # neighbours differ by 1


def _assert_16_bit_ramp(loaded: LoadedImage, channel_values: np.ndarray) -> None:
    assert loaded.bit_depth == 16
    assert_allclose(loaded.image[..., 0], channel_values.astype(np.float64) / 65535, atol=1e-7)
    assert len(np.unique(loaded.image[..., 0])) == 64  # one code apart stays distinguishable


def test_16_bit_grayscale_png_keeps_precision():
    loaded = _checked(load_image(_png16(RAMP16)))
    _assert_16_bit_ramp(loaded, RAMP16)
    assert loaded.was_grayscale and loaded.original_shape == (8, 8)


def test_16_bit_rgb_png_keeps_precision():
    rgb = np.stack([RAMP16, RAMP16[::-1], RAMP16.T], -1)
    loaded = _checked(load_image(_png16(rgb)))
    _assert_16_bit_ramp(loaded, RAMP16)
    assert_allclose(loaded.image, rgb / 65535, atol=1e-7)
    assert not loaded.was_grayscale and loaded.original_shape == (8, 8, 3)


def test_16_bit_rgba_png_composited_with_full_precision():
    alpha = np.full_like(RAMP16, 65535)
    alpha[0, 0] = 0
    rgba = np.stack([RAMP16, RAMP16, RAMP16, alpha], -1)
    loaded = _checked(load_image(_png16(rgba)))
    assert loaded.bit_depth == 16 and loaded.original_shape == (8, 8, 4)
    assert loaded.image[0, 0, 0] == 0.0
    assert_allclose(loaded.image[1:, :, 0], RAMP16[1:] / 65535, atol=1e-7)


def test_16_bit_gray_alpha_png():
    la = np.stack([RAMP16, np.full_like(RAMP16, 32768)], -1).astype(">u2")
    rows = b"".join(b"\x00" + row.tobytes() for row in la)
    loaded = _checked(load_image(_raw_png(8, 8, 16, 4, rows)))
    assert loaded.was_grayscale and loaded.original_shape == (8, 8, 2)
    assert_allclose(loaded.image[..., 0], RAMP16 / 65535 * (32768 / 65535), atol=1e-6)


@pytest.mark.parametrize("photometric", ["minisblack", "rgb"])
def test_16_bit_tiff_keeps_precision(photometric):
    arr = RAMP16 if photometric == "minisblack" else np.stack([RAMP16] * 3, -1)
    loaded = _checked(load_image(_tiff(arr, photometric=photometric)))
    _assert_16_bit_ramp(loaded, RAMP16)
    assert loaded.format == "TIFF"
    assert loaded.was_grayscale == (photometric == "minisblack")


def test_16_bit_lzw_tiff_read_by_pillow_keeps_precision():
    data = _pil_bytes(Image.fromarray(RAMP16), "TIFF", compression="tiff_lzw")
    _assert_16_bit_ramp(_checked(load_image(data)), RAMP16)


def test_planar_rgb_tiff():
    rgb = RNG.integers(0, 256, (3, 5, 6), dtype=np.uint8)
    data = _tiff(rgb, photometric="rgb", planarconfig="separate")
    loaded = _checked(load_image(data))
    assert_array_equal(loaded.image, rgb.transpose(1, 2, 0).astype(np.float32) / 255)


def test_float_tiff_is_scaled_min_max_with_a_note():
    values = np.linspace(-5.0, 10.0, 30, dtype=np.float32).reshape(5, 6)
    loaded = _checked(load_image(_tiff(values)))
    assert_allclose(loaded.image[..., 0], (values + 5) / 15, atol=1e-6)
    assert loaded.bit_depth == 32
    assert any("min–max" in note for note in loaded.notes)


def test_float_tiff_in_unit_range_is_kept():
    values = np.linspace(0.1, 0.6, 30, dtype=np.float32).reshape(5, 6)
    loaded = _checked(load_image(_tiff(values)))
    assert_allclose(loaded.image[..., 0], values, atol=1e-7)
    assert any("[0, 1]" in note for note in loaded.notes)


def test_float_tiff_with_nan_and_constant():
    values = np.array([[np.nan, 2.0, 4.0]], np.float32)
    loaded = _checked(load_image(_tiff(values)))
    assert_allclose(loaded.image[0, :, 0], [0.0, 0.0, 1.0])
    assert any("NaN" in note for note in loaded.notes)
    constant = _checked(load_image(_tiff(np.full((2, 2), 7.0, np.float32))))
    assert constant.image.max() == 0.0 and constant.notes
    with pytest.raises(ImageError, match="^The image holds no finite values"):
        load_image(_tiff(np.full((2, 2), np.nan, np.float32)))


def test_signed_16_bit_tiff_is_scaled_min_max():
    values = np.array([[-1000, 0, 1000]], np.int16)
    loaded = _checked(load_image(_tiff(values)))
    assert_allclose(loaded.image[0, :, 0], [0, 0.5, 1], atol=1e-6)
    assert loaded.bit_depth == 16 and loaded.notes


# --------------------------------------------------------------------------------------------
# Multi-frame files


def test_multi_page_tiff_uses_first_page_with_a_note():
    buf = io.BytesIO()
    with tifffile.TiffWriter(buf) as writer:
        for value in (10, 20, 30):
            writer.write(np.full((4, 5), value, np.uint8))
    loaded = _checked(load_image(buf.getvalue()))
    assert_allclose(loaded.image, 10 / 255, atol=1e-7)
    assert loaded.n_frames == 3
    assert any("3 pages" in note and "first" in note for note in loaded.notes)


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_animated_image_uses_first_frame_with_a_note(fmt):
    frames = [Image.new("RGB", (6, 4), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    kwargs = {"lossless": True} if fmt == "WEBP" else {}
    data = _pil_bytes(frames[0], fmt, save_all=True, append_images=frames[1:], **kwargs)
    loaded = _checked(load_image(data))
    assert_allclose(loaded.image[0, 0], [1, 0, 0], atol=0.01)
    assert loaded.n_frames == 2
    assert any("2 frames" in note and "first" in note for note in loaded.notes)


# --------------------------------------------------------------------------------------------
# Errors in ordinary image files


def _truncated_cases() -> dict[str, bytes]:
    noise = RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return {
        "png": _pil_bytes(Image.fromarray(noise), "PNG"),
        "png16": _png16(noise.astype(np.uint16) * 257),
        "jpeg": _pil_bytes(Image.fromarray(noise), "JPEG"),
        "tiff": _tiff(noise.astype(np.uint16) * 257),
        "webp": _pil_bytes(Image.fromarray(noise), "WEBP"),
        "bmp": _pil_bytes(Image.fromarray(noise), "BMP"),
    }


@pytest.mark.parametrize("fmt", ["png", "png16", "jpeg", "tiff", "webp", "bmp"])
def test_truncated_file(fmt):
    data = _truncated_cases()[fmt]
    with pytest.raises(ImageError, match="truncated"):
        load_image(data[: len(data) // 2])


@pytest.mark.parametrize("fmt", ["png", "png16", "jpeg", "tiff", "webp", "bmp", "dicom"])
def test_any_cut_gives_an_image_or_an_image_error(fmt):
    if fmt == "dicom":
        data = Path(_shipped("CT_small.dcm")).read_bytes()
    else:
        data = _truncated_cases()[fmt]
    for fraction in (0.01, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.95, 0.999):
        try:
            loaded = load_image(data[: max(1, int(len(data) * fraction))])
        except ImageError as exc:
            assert str(exc)
        else:
            _checked(loaded)


def test_zero_size_png():
    with pytest.raises(ImageError, match="zero size"):
        load_image(_raw_png(0, 0, 8, 0))
    with pytest.raises(ImageError, match="zero size"):
        load_image(_raw_png(5, 0, 8, 2))


def test_megapixel_limit_parameter_and_environment(monkeypatch):
    data = _pil_bytes(Image.new("L", (1250, 1000)), "PNG")  # 1.25 megapixels
    with pytest.raises(ImageError, match=r"1\.2 megapixels.*1-megapixel limit"):
        load_image(data, max_megapixels=1)
    assert load_image(data, max_megapixels=2).image.shape == (1000, 1250, 3)
    monkeypatch.setenv(MAX_MEGAPIXELS_ENV, "1")
    with pytest.raises(ImageError, match="megapixel"):
        load_image(data)
    assert load_image(data, max_megapixels=1.5).image.shape == (1000, 1250, 3)  # parameter wins
    monkeypatch.setenv(MAX_MEGAPIXELS_ENV, "lots")
    with pytest.raises(ValueError, match=MAX_MEGAPIXELS_ENV):
        load_image(data)


def test_default_limit_is_40_megapixels_and_separate_from_the_apps(monkeypatch):
    assert DEFAULT_MAX_MEGAPIXELS == 40
    assert MAX_MEGAPIXELS_ENV != "DPE_MAX_MEGAPIXELS"
    monkeypatch.setenv("DPE_MAX_MEGAPIXELS", "0.5")  # the app's processing limit
    data = _pil_bytes(Image.new("L", (1000, 1000)), "PNG")
    assert load_image(data).image.shape == (1000, 1000, 3)


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf")])
def test_bad_megapixel_limit(bad):
    with pytest.raises(ValueError, match="max_megapixels"):
        load_image(b"x", max_megapixels=bad)


def test_numpy_megapixel_limit_is_accepted():
    data = _pil_bytes(Image.new("L", (1250, 1000)), "PNG")
    with pytest.raises(ImageError, match="megapixel"):
        load_image(data, max_megapixels=np.int64(1))


def test_bad_megapixel_limit_type():
    with pytest.raises(TypeError, match="max_megapixels"):
        load_image(b"x", max_megapixels="40")


def test_decompression_bomb_is_refused_from_the_header_without_warnings():
    """A 6 kB PNG that claims 100 or 10,000 megapixels is refused before decoding."""
    rows = bytes(2000)
    for side in (10_000, 100_000):  # above Pillow's warning, and above Pillow's own error
        bomb = _raw_png(side, side, 8, 0, rows)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(ImageError, match="megapixel"):
                load_image(bomb)
        assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    with pytest.raises(ImageError, match="too many pixels"):
        load_image(_raw_png(100_000, 100_000, 8, 0, rows), max_megapixels=1e6)


def test_tiff_bomb_is_refused_from_the_header(tmp_path):
    path = tmp_path / "bomb.tif"
    tifffile.imwrite(path, np.zeros((8, 8), np.uint8))
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[0].tags["ImageWidth"].overwrite(20_000)
        tif.pages[0].tags["ImageLength"].overwrite(30_000)
    with pytest.raises(ImageError, match="600.0 megapixels"):
        load_image(path)


def test_corrupt_file_with_a_known_signature():
    with pytest.raises(ImageError, match="starts like a PNG"):
        load_image(b"\x89PNG\r\n\x1a\n" + bytes(40))


def test_content_decides_the_format_not_the_name(tmp_path):
    png = tmp_path / "really_a_png.dcm"
    png.write_bytes(_pil_bytes(Image.new("RGB", (3, 2), (0, 255, 0)), "PNG"))
    assert _checked(load_image(png)).format == "PNG"
    dcm = tmp_path / "really_a_dicom.png"
    dcm.write_bytes(_dicom(RAMP8))
    assert _checked(load_image(dcm)).format == "DICOM"


# --------------------------------------------------------------------------------------------
# DICOM: shipped files


def test_shipped_ct_uses_percentile_window():
    loaded = _checked(load_image(_shipped("CT_small.dcm")))
    assert loaded.format == "DICOM" and loaded.modality == "radiology"
    assert loaded.bit_depth == 16 and loaded.was_grayscale and loaded.original_shape == (128, 128)
    assert loaded.image.min() == 0.0 and loaded.image.max() == 1.0
    assert any("percentile" in note for note in loaded.notes)


def test_shipped_mr_uses_its_window():
    loaded = _checked(load_image(_shipped("MR_small.dcm")))
    assert loaded.modality == "radiology"
    assert any("centre 600, width 1600" in note for note in loaded.notes)


@pytest.mark.parametrize(
    "name",
    ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_bigendian.dcm"]
    + ["MR_small_implicit.dcm"],
)
def test_shipped_encodings_decode_to_the_same_image(name):
    reference = load_image(_shipped("MR_small.dcm")).image
    # the pinned requirements include a decoder for each of these syntaxes
    assert get_decoder(pydicom.dcmread(_shipped(name)).file_meta.TransferSyntaxUID).is_available
    assert_array_equal(_checked(load_image(_shipped(name))).image, reference)


def test_shipped_colour_dicoms():
    # pydicom's YBR test pattern: bands of red, green, blue, then grays; the RGB twin of this
    # file (SC_rgb.dcm) is only in pydicom-data, which CI does not install
    ybr = _checked(load_image(_shipped("SC_ybr_full_422_uncompressed.dcm")))
    assert not ybr.was_grayscale and ybr.original_shape == (100, 100, 3)
    assert_allclose(ybr.image[0, 0], [1, 0, 0], atol=0.01)
    assert_allclose(ybr.image[50, 50], [0.5, 0.5, 1], atol=0.02)


def test_shipped_palette_dicom():
    loaded = _checked(load_image(_shipped("examples_palette.dcm")))
    assert not loaded.was_grayscale and loaded.original_shape == (350, 800)
    assert np.abs(loaded.image[..., 0] - loaded.image[..., 2]).max() > 0.2  # really in colour


def test_shipped_dicom_without_pixel_data():
    with pytest.raises(ImageError, match="without pixel data"):
        load_image(_shipped("rtplan.dcm"))


def test_shipped_truncated_dicom():
    with pytest.raises(ImageError, match="truncated"):
        load_image(_shipped("MR_truncated.dcm"))


def test_truncated_dicom_cut_short():
    data = Path(_shipped("CT_small.dcm")).read_bytes()
    with pytest.raises(ImageError, match="truncated"):
        load_image(data[: int(len(data) * 0.8)])


def test_shipped_jpeg_ls_needs_a_decoder_that_is_not_installed():
    if get_decoder(JPEGLSLossless).is_available:  # an optional decoder was installed
        assert load_image(_shipped("MR_small_jpeg_ls_lossless.dcm")).image.shape[2] == 3
        return
    with pytest.raises(ImageError, match="JPEG-LS Lossless.*no installed decoder"):
        load_image(_shipped("MR_small_jpeg_ls_lossless.dcm"))


def test_shipped_12_bit_jpeg_that_pillow_cannot_decode():
    if get_decoder(JPEGExtended12Bit).available_plugins != ("pillow",):  # optional decoder
        assert load_image(_shipped("JPEG-lossy.dcm")).image.shape[2] == 3
        return
    with pytest.raises(ImageError, match="JPEG Extended"):
        load_image(_shipped("JPEG-lossy.dcm"))


# --------------------------------------------------------------------------------------------
# DICOM: made here


def test_rescale_then_window_from_the_file():
    pixels = RAMP8.copy()
    data = _dicom(
        pixels,
        RescaleSlope=2,
        RescaleIntercept=-100,
        WindowCenter=155,
        WindowWidth=510,
        VOILUTFunction="LINEAR_EXACT",
    )
    loaded = _checked(load_image(data))
    # Stored p -> 2p - 100 -> window [-100, 410] -> p / 255; without the rescale it would differ.
    assert_allclose(loaded.image[..., 0], pixels / 255, atol=1e-6)
    assert loaded.was_grayscale and loaded.bit_depth == 16


def test_default_linear_window():
    data = _dicom(RAMP8, WindowCenter=128, WindowWidth=64)
    loaded = _checked(load_image(data))
    column = loaded.image[..., 0].ravel()
    assert column[:96].max() == 0.0 and column[160:].min() == 1.0
    assert 0.0 < column[128] < 1.0


def test_monochrome1_is_inverted():
    attrs = {"WindowCenter": 127.5, "WindowWidth": 255, "VOILUTFunction": "LINEAR_EXACT"}
    mono2 = load_image(_dicom(RAMP8, "MONOCHROME2", **attrs)).image
    mono1 = _checked(load_image(_dicom(RAMP8, "MONOCHROME1", **attrs)))
    assert_allclose(mono1.image, 1.0 - mono2, atol=1e-6)
    assert mono1.image[0, 0, 0] == 1.0  # stored 0 is white in MONOCHROME1
    assert any("MONOCHROME1" in note for note in mono1.notes)


def test_voi_lut_sequence_is_preferred_to_the_window():
    item = Dataset()
    item.LUTDescriptor = [256, 0, 16]
    item.add_new("LUTData", "US", [i * i for i in range(256)])  # non-linear: no window fakes it
    data = _dicom(RAMP8, VOILUTSequence=Sequence([item]), WindowCenter=10, WindowWidth=5)
    loaded = _checked(load_image(data))
    assert_allclose(loaded.image[..., 0], (RAMP8 / 255) ** 2, atol=1e-6)
    assert any("VOI LUT" in note for note in loaded.notes)


def test_percentile_window_when_the_file_has_none():
    pixels = np.arange(1000, dtype=np.uint16).reshape(25, 40)
    pixels[0, 0] = 60000  # one outlier must not squash the rest
    loaded = _checked(load_image(_dicom(pixels)))
    lo, hi = np.percentile(pixels.astype(np.float64), [0.5, 99.5])
    expected = np.clip((pixels - lo) / (hi - lo), 0, 1)
    assert_allclose(loaded.image[..., 0], expected, atol=1e-6)
    assert loaded.image[0, 0, 0] == 1.0 and loaded.image[12, 20, 0] < 0.6
    assert any("percentile" in note for note in loaded.notes)


def test_constant_dicom_is_black_with_a_note():
    loaded = _checked(load_image(_dicom(np.full((4, 4), 7, np.uint16))))
    assert loaded.image.max() == 0.0 and loaded.notes


def test_multi_frame_uses_the_middle_frame():
    frames = np.stack([np.full((4, 6), 100 * (k + 1), np.uint16) for k in range(5)])
    data = _dicom(frames, WindowCenter=250, WindowWidth=500, VOILUTFunction="LINEAR_EXACT")
    loaded = _checked(load_image(data))
    assert_allclose(loaded.image, 0.6, atol=1e-6)  # frame 3 of 5: 300 / 500
    assert loaded.n_frames == 5 and loaded.original_shape == (4, 6)
    assert any("5 frames" in note and "(3)" in note for note in loaded.notes)


def test_enhanced_multi_frame_takes_rescale_and_window_from_functional_groups():
    frames = np.full((3, 4, 4), 100, np.uint16)
    transform = Dataset()
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 2, 0, "US"
    shared = Dataset()
    shared.PixelValueTransformationSequence = Sequence([transform])
    per_frame = []
    for centre in (0, 200, 0):
        window = Dataset()
        window.WindowCenter, window.WindowWidth = centre, 200
        window.VOILUTFunction = "LINEAR_EXACT"
        group = Dataset()
        group.FrameVOILUTSequence = Sequence([window])
        per_frame.append(group)
    data = _dicom(
        frames,
        SharedFunctionalGroupsSequence=Sequence([shared]),
        PerFrameFunctionalGroupsSequence=Sequence(per_frame),
    )
    loaded = _checked(load_image(data))
    assert_allclose(loaded.image, 0.5, atol=1e-6)  # 100 -> 200, window [100, 300] of frame 2


def test_rgb_dicom_is_exact():
    rgb = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    loaded = _checked(load_image(_dicom(rgb, "RGB")))
    assert_array_equal(loaded.image, rgb.astype(np.float32) / 255)
    assert not loaded.was_grayscale and loaded.bit_depth == 8 and loaded.original_shape == (5, 7, 3)


def test_16_bit_rgb_dicom():
    rgb = np.stack([RAMP16, RAMP16, RAMP16], -1)
    loaded = _checked(load_image(_dicom(rgb, "RGB")))
    _assert_16_bit_ramp(loaded, RAMP16)


def test_12_bit_rgb_dicom_is_scaled_by_bits_stored():
    rgb = np.array([[[0, 2048, 4095]]], np.uint16)
    loaded = _checked(load_image(_dicom(rgb, "RGB", bits_stored=12)))
    assert loaded.bit_depth == 12
    assert_allclose(loaded.image[0, 0], [0, 2048 / 4095, 1], atol=1e-7)


def test_ybr_full_dicom_is_converted_to_rgb():
    rgb = RNG.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    loaded = _checked(load_image(_dicom(ybr, "YBR_FULL")))
    assert_allclose(loaded.image, rgb / 255, atol=2.5 / 255)


@pytest.mark.parametrize(
    ("code", "group"),
    [
        ("CT", "radiology"),
        ("MR", "radiology"),
        ("CR", "radiology"),
        ("DX", "radiology"),
        ("MG", "radiology"),
        ("US", "radiology"),
        ("XA", "radiology"),
        ("PT", "radiology"),
        ("NM", "radiology"),
        ("SM", "microscopy"),
        ("XC", "dermatology"),
        ("ES", "unknown"),
        ("OT", "unknown"),
        ("", "unknown"),
    ],
)
def test_modality_guess(code, group):
    assert load_image(_dicom(RAMP8, Modality=code)).modality == group


def test_non_dicom_modality_is_unknown():
    assert load_image(_pil_bytes(Image.new("RGB", (2, 2)), "PNG")).modality == "unknown"


@pytest.mark.parametrize("meta", [True, False])
def test_dicom_without_preamble(meta):
    ds = _dataset(RAMP8, Modality="MR")
    reference = load_image(_dicom_bytes(ds)).image
    if meta:
        data = _dicom_bytes(ds, preamble=False)
        assert data[:2] == b"\x02\x00"
    else:
        del ds.file_meta
        data = _dicom_bytes(ds, preamble=False, implicit_vr=True, little_endian=True)
    assert data[128:132] != b"DICM"
    loaded = _checked(load_image(data))
    assert loaded.format == "DICOM" and loaded.modality == "radiology"
    assert_array_equal(loaded.image, reference)


def test_big_endian_dicom_without_meta():
    pixels = RNG.integers(0, 65536, (8, 8), dtype=np.uint16)
    ds = _dataset(pixels, WindowCenter=32768, WindowWidth=65536, VOILUTFunction="LINEAR_EXACT")
    reference = load_image(_dicom_bytes(ds)).image
    assert_allclose(reference[..., 0], pixels / 65536, atol=1e-6)
    del ds.file_meta
    ds.PixelData = pixels.astype(">u2").tobytes()  # pydicom writes pixel bytes as they are
    data = _dicom_bytes(ds, preamble=False, implicit_vr=False, little_endian=False)
    assert data[:2] == b"\x00\x08"
    assert_array_equal(_checked(load_image(data)).image, reference)


def test_dicom_with_an_unsupported_transfer_syntax():
    ds = _dataset(np.zeros((8, 8), np.uint8))
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.PixelData = encapsulate([b"\x00\x01" * 8])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    with pytest.raises(ImageError, match="transfer syntax 'MPEG2 Main Profile / Main Level'"):
        load_image(_dicom_bytes(ds))


def test_dicom_without_pixel_data():
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = BasicTextSRStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "SR"
    with pytest.raises(ImageError, match=r"without pixel data \(Basic Text SR"):
        load_image(_dicom_bytes(ds))
    ds.Rows, ds.Columns = 4, 4
    with pytest.raises(ImageError, match="pixel data is missing.*truncated"):
        load_image(_dicom_bytes(ds))


def test_zero_size_dicom():
    ds = _dataset(np.zeros((4, 4), np.uint8))
    ds.Rows = 0
    with pytest.raises(ImageError, match="zero size"):
        load_image(_dicom_bytes(ds))


def test_dicom_bomb_is_refused_before_decoding():
    ds = _dataset(np.zeros((4, 4), np.uint8))
    ds.Rows = ds.Columns = 10_000  # claims 100 megapixels, holds 16 bytes
    with pytest.raises(ImageError, match="100.0 megapixels"):
        load_image(_dicom_bytes(ds))


# --------------------------------------------------------------------------------------------
# save_image


def _png_ihdr(data: bytes) -> tuple[int, int]:
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    return data[24], data[25]  # bit depth, colour type


@pytest.mark.parametrize("bits", [8, 16])
def test_save_load_round_trip(tmp_path, bits):
    image = RNG.random((11, 17, 3), dtype=np.float32)
    path = tmp_path / "out.png"
    save_image(image, path, bits=bits)
    assert _png_ihdr(path.read_bytes()) == (bits, 2)  # RGB, lossless PNG
    peak = 2**bits - 1
    expected = np.floor(image.astype(np.float64) * peak + 0.5) / peak
    loaded = _checked(load_image(path))
    assert loaded.bit_depth == bits
    assert_allclose(loaded.image, expected, atol=1e-7)
    # Saving what was loaded gives the same file content back.
    again = tmp_path / "again.png"
    save_image(loaded.image, again, bits=bits)
    assert_array_equal(load_image(again).image, loaded.image)


def test_16_bit_save_keeps_one_code_differences(tmp_path):
    image = np.repeat((RAMP16 / 65535).astype(np.float32)[..., None], 3, axis=2)
    save_image(image, tmp_path / "ramp.png", bits=16)
    _assert_16_bit_ramp(load_image(tmp_path / "ramp.png"), RAMP16)


def test_save_rounds_to_nearest(tmp_path):
    values = np.array([0.0, 0.4 / 255, 0.6 / 255, 254.5 / 255, 1.0], np.float32)
    image = np.repeat(values[None, :, None], 3, axis=2)
    save_image(image, tmp_path / "r.png")
    stored = np.asarray(Image.open(tmp_path / "r.png"))[0, :, 0]
    assert_array_equal(stored, [0, 0, 1, 255, 255])


@pytest.mark.parametrize("bits", [8, 16])
def test_save_to_a_file_object(bits):
    buf = io.BytesIO()
    save_image(np.full((2, 3, 3), 0.5, np.float32), buf, bits=bits)
    assert _png_ihdr(buf.getvalue()) == (bits, 2)
    assert_allclose(load_image(buf.getvalue()).image, 0.5, atol=0.5 / 255)


def test_save_accepts_grayscale_and_integers(tmp_path):
    gray = (RAMP8 % 256).astype(np.uint8)
    save_image(gray, tmp_path / "g.png")
    loaded = load_image(tmp_path / "g.png")
    assert_array_equal(loaded.image[..., 2], gray / np.float32(255))


def test_save_rejects_bad_input(tmp_path):
    image = np.zeros((2, 2, 3), np.float32)
    with pytest.raises(ValueError, match="bits must be 8 or 16"):
        save_image(image, tmp_path / "x.png", bits=12)
    with pytest.raises(ValueError, match="bits must be 8 or 16"):
        save_image(image, tmp_path / "x.png", bits=True)
    with pytest.raises(ValueError, match="'.jpg'"):
        save_image(image, tmp_path / "x.jpg")
    with pytest.raises(ValueError, match="NaN"):
        save_image(np.full((2, 2, 3), np.nan, np.float32), tmp_path / "x.png")
    with pytest.raises(ValueError, match="shape"):
        save_image(np.zeros((2, 2, 4), np.float32), tmp_path / "x.png")
    with pytest.raises(TypeError, match="binary file object"):
        save_image(image, 42)
    assert not (tmp_path / "x.png").exists()


def test_docstring_examples_run():
    result = doctest.testmod(dpe.io, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_rgb_file_of_a_gray_picture_loads_as_gray(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (20, 30), dtype=np.int16)
    rgb = np.stack([gray, gray + rng.integers(-2, 3, gray.shape), gray], -1).clip(0, 255)
    Image.fromarray(rgb.astype(np.uint8)).save(tmp_path / "g.png")
    loaded = load_image(tmp_path / "g.png")
    assert loaded.gray and not loaded.was_grayscale
    assert np.array_equal(np.rint(loaded.image * 255), rgb)  # the pixels are kept as they are
    assert any("grayscale" in n for n in loaded.notes)
    rgb[0, 0] = (200, 100, 50)  # one coloured pixel: a colour picture, left as it is
    Image.fromarray(rgb.astype(np.uint8)).save(tmp_path / "c.png")
    assert not load_image(tmp_path / "c.png").gray


def _with_sbit(png: bytes, bits: int) -> bytes:
    """Insert an sBIT chunk after IHDR (PNG: samples already scaled to the full range)."""
    end = 8 + 8 + 13 + 4  # signature, IHDR length+type, IHDR data, CRC
    body = b"sBIT" + bytes([bits])
    chunk = struct.pack(">I", 1) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
    return png[:end] + chunk + png[end:]


def test_16_bit_gray_without_a_window_is_shown_at_its_stored_depth(tmp_path):
    xray = (np.arange(64 * 64).reshape(64, 64) % 4096).astype(np.uint16)  # 12-bit values
    ok, png = cv2.imencode(".png", xray)
    loaded = load_image(png.tobytes())
    assert loaded.image.max() == 1.0 and loaded.bit_depth == 16  # 4095 is white, not 6% gray
    assert any("12-bit" in n for n in loaded.notes)
    full = load_image(_with_sbit(png.tobytes(), 12))  # sBIT: the file says it is full range
    np.testing.assert_allclose(full.image[..., 0], xray / 65535.0, atol=1e-6)
    nuclei = (np.arange(32 * 32).reshape(32, 32) % 236).astype(np.uint16)  # 8-bit data
    buf = io.BytesIO()
    tifffile.imwrite(buf, nuclei, photometric="minisblack")
    np.testing.assert_allclose(load_image(buf.getvalue()).image[..., 0], nuclei / 255.0, atol=1e-6)
    top = xray.astype(np.uint32) * 16  # uses the top bit: kept as 16-bit data
    ok, png = cv2.imencode(".png", top.astype(np.uint16))
    np.testing.assert_allclose(load_image(png.tobytes()).image[..., 0], top / 65535.0, atol=1e-6)
