"""Write the hostile-input corpus: files a visitor, a script or a broken PACS export might hand us.

``python -m tests.data.make_bad [FOLDER]`` writes it to FOLDER (default ``tests/data/bad/``,
which git ignores). The tests call `make_corpus` into a temporary folder instead, so nothing
binary is committed. Every file is the same, byte for byte, on every run (fixed seeds, no
timestamps).

What each file must do (load, or be refused with which message) is the tests' business, in
``tests/test_bad_input.py``; this module only makes bytes.
"""

from __future__ import annotations

import io
import struct
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import tifffile
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    BasicTextSRStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    SecondaryCaptureImageStorage,
)

DEFAULT_FOLDER = Path(__file__).resolve().parent / "bad"
EXIF_BLOB_BYTES = 10_000_000
BOMB_SIDE = 30_000


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _noise(seed: int, shape=(64, 64, 3)) -> np.ndarray:
    return _rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _pil(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _png(pixels: np.ndarray) -> bytes:
    return _pil(Image.fromarray(pixels), "PNG")


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk: length, type, payload and a valid CRC."""
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def raw_png(width: int, height: int, idat: bytes) -> bytes:
    """An 8-bit grayscale PNG whose header says ``width`` x ``height``, whatever IDAT holds."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def dicom_bytes(ds: Dataset) -> bytes:
    """``ds`` as a DICOM file, with preamble and file meta."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def image_dataset(pixels: np.ndarray) -> Dataset:
    """An uncompressed 8-bit MONOCHROME2 secondary capture of ``pixels``, with fixed UIDs."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.Modality = "OT"
    ds.set_pixel_data(pixels, "MONOCHROME2", 8, generate_instance_uid=False)
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"  # fixed, so the bytes never change
    return ds


# ---------------------------------------------------------------- the files


def empty() -> bytes:
    return b""


def random_bytes(seed: int) -> Callable[[], bytes]:
    return lambda: _rng(seed).integers(0, 256, 4096, dtype=np.uint8).tobytes()


def png_truncated() -> bytes:
    data = _png(_noise(1))
    return data[: len(data) // 2]


def jpeg_truncated() -> bytes:
    data = _pil(Image.fromarray(_noise(2)), "JPEG", quality=90)
    return data[: len(data) // 2]


def tiff_magic_then_noise() -> bytes:
    return b"II*\x00" + random_bytes(3)()


def dicom_magic_then_noise() -> bytes:
    return bytes(128) + b"DICM" + random_bytes(4)()


def png_bomb() -> bytes:
    """Claims 30000 x 30000 (900 megapixels) in under 200 bytes: a decompression bomb."""
    return raw_png(BOMB_SIDE, BOMB_SIDE, zlib.compress(bytes(BOMB_SIDE + 1) * 2))


def jpeg_bomb() -> bytes:
    """A real 16 x 16 JPEG whose frame header is patched to claim 30000 x 30000."""
    data = _pil(Image.fromarray(_noise(8, (16, 16, 3))), "JPEG")
    sof = data.index(b"\xff\xc0") + 5  # SOF0: length (2), precision (1), then height, width
    return data[:sof] + struct.pack(">HH", BOMB_SIDE, BOMB_SIDE) + data[sof + 4 :]


def png_text_bomb() -> bytes:
    """A valid 8 x 8 PNG with a zTXt comment that inflates to 20 MB from about 20 kB."""
    text = png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"A" * 20_000_000, 9))
    png = _png(_noise(9, (8, 8, 3)))
    return png[:-12] + text + png[-12:]


def one_pixel() -> bytes:
    return _png(np.array([[[200, 100, 50]]], dtype=np.uint8))


def gray16_tiff_pixels() -> np.ndarray:
    """The 16-bit TIFF's samples, in steps of 21: a load that kept only 8 bits would show."""
    return (np.arange(48 * 64, dtype=np.uint32).reshape(48, 64) * 21 % 65536).astype(np.uint16)


def gray16_tiff() -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, gray16_tiff_pixels(), photometric="minisblack")
    return buf.getvalue()


CMYK_INK = (0, 255, 255, 0)  # full magenta and yellow: red on paper


def cmyk_jpeg() -> bytes:
    return _pil(Image.new("CMYK", (16, 12), CMYK_INK), "JPEG", quality=95)


GIF_FRAMES = ((255, 0, 0), (0, 255, 0), (0, 0, 255))


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (10, 8), colour) for colour in GIF_FRAMES]
    return _pil(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def svg() -> bytes:
    return (
        b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" '
        b'height="10" onload="alert(1)"><rect width="10" height="10" fill="red"/></svg>\n'
    )


def html() -> bytes:
    return b"<!DOCTYPE html><html><body><script>alert('x')</script></body></html>\n"


def dicom_without_pixels() -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = BasicTextSRStorage
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.Modality = "SR"
    return dicom_bytes(ds)


def _compressed_dicom(syntax: str) -> bytes:
    ds = image_dataset(np.zeros((8, 8), np.uint8))
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([random_bytes(5)()[:64]])  # not a real codestream
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return dicom_bytes(ds)


def dicom_jpeg_ls() -> bytes:
    """JPEG-LS: no decoder for it is installed (pydicom needs pylibjpeg-libjpeg or GDCM)."""
    return _compressed_dicom(JPEGLSLossless)


def dicom_jpeg2000_garbage() -> bytes:
    """JPEG 2000, which Pillow's decoder claims, over bytes that are no codestream."""
    return _compressed_dicom(JPEG2000Lossless)


def dicom_bad_vr() -> bytes:
    """Rows (0028,0010) tagged with the unknown VR "U\\x9d": pydicom fails on first use."""
    data = dicom_bytes(image_dataset(np.zeros((8, 8), np.uint8)))
    at = data.index(b"\x28\x00\x10\x00US") + 4
    return data[:at] + b"U\x9d" + data[at + 2 :]


def dicom_multivalued_sop_class() -> bytes:
    """No pixel data, and a SOP Class UID that a backslash splits into two values."""
    data = dicom_without_pixels()
    uid = BasicTextSRStorage.encode()
    at = data.rindex(uid)  # the dataset's, not the file meta's
    return data[:at] + uid.replace(b".5.1.4", b".5.1\\4") + data[at + len(uid) :]


def dicom_newline_in_transfer_syntax() -> bytes:
    """A transfer syntax UID with a newline in it, which the error message must not carry."""
    data = dicom_bytes(image_dataset(np.zeros((8, 8), np.uint8)))
    uid = ExplicitVRLittleEndian.encode()
    return data.replace(uid, uid[:11] + b"\n" + uid[12:], 1)


def png16_chunk_overrun() -> bytes:
    """A 16-bit colour PNG whose IDAT claims 2 GB: OpenCV used to spend seconds on it."""
    rgb = _noise(15, (4, 4, 3)).astype(np.uint16) * 257
    data = cv2.imencode(".png", rgb)[1].tobytes()
    at = data.index(b"IDAT") - 4
    return data[:at] + struct.pack(">I", 0x7FFFFFFF) + data[at + 4 :]


def tiff_128_samples() -> bytes:
    """A Deflate TIFF claiming 3,000,000 x 10 pixels of 128 samples: 30 megapixels, 3.8 GB."""
    buf = io.BytesIO()
    pixels = np.zeros((1, 10, 128), np.uint8)
    tifffile.imwrite(
        buf, pixels, photometric="minisblack", planarconfig="contig", compression="zlib"
    )
    buf.seek(0)
    with tifffile.TiffFile(buf, mode="r+b") as tif:
        tif.pages[0].tags["ImageLength"].overwrite(3_000_000)
    return buf.getvalue()


def png_with_10mb_exif() -> bytes:
    """A small PNG carrying a 10 MB EXIF block (orientation 6 and a huge description)."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise: must still be applied
    exif[0x010E] = "A" * EXIF_BLOB_BYTES  # ImageDescription
    block = exif.tobytes()[6:]  # drop the JPEG-style "Exif\0\0" prefix
    png = _png(_noise(6, (6, 4, 3)))
    return png[:-12] + png_chunk(b"eXIf", block) + png[-12:]


def named_png() -> bytes:
    return _png(_noise(7, (8, 8, 3)))


# File name -> maker. Names are hostile too: quotes, non-ASCII, URL-encoded and Windows
# separators, markup, a newline. A name cannot hold "/" on disk; tests send "../" names
# over HTTP instead.
CORPUS: dict[str, Callable[[], bytes]] = {
    "empty.png": empty,
    "random.png": random_bytes(10),
    "random.jpg": random_bytes(11),
    "random.dcm": random_bytes(12),
    "random.tif": random_bytes(13),
    "tiff_magic_noise.tif": tiff_magic_then_noise,
    "dicom_magic_noise.dcm": dicom_magic_then_noise,
    "truncated.png": png_truncated,
    "truncated.jpg": jpeg_truncated,
    "bomb_30000x30000.png": png_bomb,
    "bomb_30000x30000.jpg": jpeg_bomb,
    "text_bomb.png": png_text_bomb,
    "one_pixel.png": one_pixel,
    "gray16.tif": gray16_tiff,
    "cmyk.jpg": cmyk_jpeg,
    "animated.gif": animated_gif,
    "drawing.svg": svg,
    "page.html": html,
    "no_pixels.dcm": dicom_without_pixels,
    "jpeg_ls.dcm": dicom_jpeg_ls,
    "jpeg2000_garbage.dcm": dicom_jpeg2000_garbage,
    "exif_10mb.png": png_with_10mb_exif,
    # Found by fuzzing (see test_bad_input.py): each escaped as a raw error, or took seconds.
    "dicom_bad_vr.dcm": dicom_bad_vr,
    "dicom_multivalued_sop.dcm": dicom_multivalued_sop_class,
    "dicom_newline_syntax.dcm": dicom_newline_in_transfer_syntax,
    "png16_chunk_overrun.png": png16_chunk_overrun,
    "tiff_128_samples.tif": tiff_128_samples,
    "a\"b'c.png": named_png,
    "снимок_ü.png": named_png,
    "..%2F..%2Fescape.png": named_png,
    "..\\..\\windows.png": named_png,
    "<img src=x onerror=alert(1)>.png": named_png,
    "new\nline.png": random_bytes(14),
}


def make_corpus(folder: str | Path) -> dict[str, Path]:
    """Write every corpus file into ``folder`` (created if needed); return name -> path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, make in CORPUS.items():
        path = folder / name
        path.write_bytes(make())
        paths[name] = path
    return paths


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_FOLDER
    for path in make_corpus(target).values():
        print(f"{path.stat().st_size:>10}  {path}")
