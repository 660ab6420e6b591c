"""Hostile input through every door: the loader, the command line and the app.

The corpus comes from ``tests/data/make_bad.py``, written into a temporary folder once per
session (nothing binary is committed). Each file must either load correctly or be refused with
`ImageError`, whose one-line message says what is wrong: never a traceback, a MemoryError, a
hang, or a file written outside the output folder. Property tests (hypothesis) then throw
arbitrary and mutated bytes at the loader, and round-trip arbitrary small images.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import cv2
import gradio as gr
import httpx
import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from dpe import demo as dd
from dpe.__main__ import main as cli
from dpe.io import MAX_MEGAPIXELS_ENV, ImageError, LoadedImage, load_image, save_image
from tests.conftest import served_app
from tests.data import make_bad
from webapp import enhance as enhance_page
from webapp import uploads

ROOT = Path(__file__).resolve().parent.parent

NOT_AN_IMAGE = r"is not an image this program can read\. Use DICOM, PNG, JPEG, TIFF"
TRUNCATED = r"is truncated or corrupt \(.+\); the file may not have been fully copied"
# What each refused file's message must say. Every other corpus file must load.
REFUSED = {
    "empty.png": r"'empty\.png' is empty \(0 bytes\)",
    "random.png": NOT_AN_IMAGE,
    "random.jpg": NOT_AN_IMAGE,
    "random.dcm": NOT_AN_IMAGE,
    "random.tif": NOT_AN_IMAGE,
    "tiff_magic_noise.tif": r"truncated or corrupt \(the TIFF's first page cannot be found\)",
    "dicom_magic_noise.dcm": r"is a DICOM file without pixel data",
    "truncated.png": TRUNCATED,
    "truncated.jpg": TRUNCATED,
    "bomb_30000x30000.png": r"30000x30000 pixels \(900\.0 megapixels\), more than the "
    r"40-megapixel limit for loading\. Downscale or crop it first",
    "bomb_30000x30000.jpg": r"too many pixels to load safely \(900\.0 megapixels, more than the "
    r"40-megapixel limit for loading\)",
    "drawing.svg": NOT_AN_IMAGE,
    "page.html": NOT_AN_IMAGE,
    "no_pixels.dcm": r"DICOM file without pixel data \(Basic Text SR Storage\): a report",
    # Refused as undecodable whether or not someone installs a JPEG-LS decoder later.
    "jpeg_ls.dcm": r"'JPEG-LS Lossless Image Compression'.*(no installed decoder|not be decoded)",
    "jpeg2000_garbage.dcm": r"'JPEG 2000 Image Compression \(Lossless Only\)'.*"
    r"(could not be decoded \(pillow: cannot identify image file\)|no installed decoder)",
    "new\nline.png": r"'new\\nline\.png' " + NOT_AN_IMAGE,
    "dicom_bad_vr.dcm": r"truncated or corrupt \(Unknown Value Representation .* \(0028,0010\)\)",
    "dicom_multivalued_sop.dcm": r"is a DICOM file without pixel data: a report",
    "dicom_newline_syntax.dcm": r"syntax '1\.2\.840\.100\?8\.1\.2\.1'.*no decoder supports",
    "png16_chunk_overrun.png": r"truncated or corrupt \(a PNG chunk runs past the end of the file",
    "tiff_128_samples.tif": r"holds 3840 million samples \(128 per pixel\), more than a "
    r"40-megapixel RGBA image has",
}
LOADED = sorted(set(make_bad.CORPUS) - set(REFUSED))
# Names a browser may send; Gradio's upload route must keep each inside its upload folder.
HOSTILE_UPLOAD_NAMES = [
    "../../escape.png",
    "..\\..\\escape.png",
    "<img src=x onerror=alert(1)>.png",
]
SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")


def quoted(name: str) -> str:
    """How `dpe.io` names a file in a message (a newline in the name is escaped)."""
    return f"'{name}'" if name.isprintable() else ascii(name)


def assert_clear(message: str) -> None:
    """One printable line, no traceback, no object addresses."""
    assert message.isprintable(), message  # no newline, no raw bytes from the file
    assert "Traceback" not in message and " at 0x" not in message, message


def assert_image(loaded: LoadedImage) -> LoadedImage:
    image = loaded.image
    assert image.dtype == np.float32 and image.ndim == 3 and image.shape[2] == 3
    assert np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1
    return loaded


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict[str, Path]:
    return make_bad.make_corpus(tmp_path_factory.mktemp("bad"))


@pytest.fixture(autouse=True)
def _default_limits(monkeypatch):
    monkeypatch.delenv(MAX_MEGAPIXELS_ENV, raising=False)
    monkeypatch.delenv("DPE_MAX_MEGAPIXELS", raising=False)


def as_upload(src: Path) -> str:
    """Copy ``src`` into Gradio's upload folder, as an upload from a browser would arrive."""
    folder = Path(gr.utils.get_upload_folder()) / secrets.token_hex(8)
    folder.mkdir(parents=True)
    return str(shutil.copy(src, folder / src.name))


# ---------------------------------------------------------------- the corpus itself


def test_corpus_is_reproducible_and_every_file_has_an_expected_outcome(tmp_path, corpus):
    assert set(REFUSED) <= set(make_bad.CORPUS) and LOADED
    again = make_bad.make_corpus(tmp_path)
    for name, path in corpus.items():
        assert again[name].read_bytes() == path.read_bytes(), name
    assert corpus["exif_10mb.png"].stat().st_size > make_bad.EXIF_BLOB_BYTES
    assert corpus["bomb_30000x30000.png"].stat().st_size < 200  # small file, huge header


# ---------------------------------------------------------------- (a) the loader


@pytest.mark.parametrize("name", sorted(make_bad.CORPUS))
def test_loader_loads_or_refuses_with_a_clear_message(corpus, name):
    start = time.perf_counter()
    if name in REFUSED:
        with pytest.raises(ImageError, match=REFUSED[name]) as info:
            load_image(corpus[name])
        assert_clear(str(info.value))
        assert str(info.value).startswith(quoted(name))
    else:
        assert_image(load_image(corpus[name]))
    assert time.perf_counter() - start < 10  # a generous bound that still catches a hang


def test_loaded_files_have_the_right_pixels(corpus):
    one = assert_image(load_image(corpus["one_pixel.png"]))
    np.testing.assert_array_equal(one.image, np.float32([[[200, 100, 50]]]) / np.float32(255))

    gray = assert_image(load_image(corpus["gray16.tif"]))
    assert gray.bit_depth == 16 and gray.was_grayscale and gray.format == "TIFF"
    expected = make_bad.gray16_tiff_pixels() / np.float32(65535)
    np.testing.assert_array_equal(gray.image, np.repeat(expected[..., None], 3, axis=2))

    cmyk = assert_image(load_image(corpus["cmyk.jpg"]))  # converted to RGB: red on paper
    assert cmyk.original_shape == (12, 16, 4) and any("CMYK" in n for n in cmyk.notes)
    np.testing.assert_allclose(cmyk.image.reshape(-1, 3).mean(0), [1, 0, 0], atol=0.02)

    gif = assert_image(load_image(corpus["animated.gif"]))  # first frame, with a note
    assert gif.n_frames == 3 and any("3 frames; the first was used" in n for n in gif.notes)
    np.testing.assert_allclose(gif.image[0, 0], [1, 0, 0], atol=0.01)

    exif = assert_image(load_image(corpus["exif_10mb.png"]))  # 10 MB EXIF read, rotation kept
    assert exif.image.shape == (4, 6, 3)  # stored 6 rows x 4 columns, orientation 6
    assert_image(load_image(corpus["text_bomb.png"]))


def test_decompression_bomb_is_refused_before_any_pixel_is_allocated(corpus):
    tracemalloc.start()
    try:
        with pytest.raises(ImageError, match="900.0 megapixels"):
            load_image(corpus["bomb_30000x30000.png"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000  # decoding 900 megapixels would need gigabytes


def test_pillows_own_bomb_cap_is_reported_in_the_same_words(corpus):
    data = corpus["bomb_30000x30000.jpg"].read_bytes()
    with pytest.raises(ImageError, match=r"900\.0 megapixels, more than Pillow's 179-megapixel"):
        load_image(data, max_megapixels=1000)  # past our limit, Pillow's hard cap still holds


# ---------------------------------------------------------------- (b) the command line


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def test_cli_reports_each_bad_file_on_one_line_and_writes_only_into_out(corpus, tmp_path):
    inputs, out, cwd = tmp_path / "in", tmp_path / "out", tmp_path / "cwd"
    shutil.copytree(next(iter(corpus.values())).parent, inputs)
    cwd.mkdir()
    before = _files(tmp_path)
    # A folder finds images by extension; SVG and HTML are named explicitly to be tried too.
    args = [str(inputs), str(inputs / "drawing.svg"), str(inputs / "page.html")]
    result = subprocess.run(
        [sys.executable, "-m", "dpe", "enhance", *args, "--method", "identity"]
        + ["--out", str(out), "--quiet"],
        cwd=cwd,  # relative names that escaped would land here
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=300,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == len(REFUSED), result.stderr  # one line per refused file, nothing else
    for name, pattern in REFUSED.items():
        [line] = [line for line in lines if f": {quoted(name)}" in line]
        assert line.startswith("skipped ") and re.search(pattern, line), line
        assert_clear(line)
    written = {p.name for p in out.iterdir()}
    assert written == {f"{Path(name).stem}_identity.png" for name in LOADED}
    assert len(result.stdout.splitlines()) == len(LOADED)
    assert _files(tmp_path) - before == {out / name for name in written}
    assert not any(cwd.iterdir())


@pytest.mark.parametrize("name", ["empty.png", "bomb_30000x30000.png", "new\nline.png"])
def test_cli_single_bad_file_exits_nonzero_with_one_line(corpus, tmp_path, capsys, name):
    code = cli(
        ["enhance", str(corpus[name]), "--method", "identity", "--out", str(tmp_path), "--quiet"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("skipped ") and re.search(REFUSED[name], err)
    assert_clear(err)
    assert not any(tmp_path.iterdir())


def test_cli_output_folder_that_is_a_file_is_a_clear_error(corpus, tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    with pytest.raises(SystemExit, match="cannot use .* as the output folder"):
        cli(["enhance", str(corpus["one_pixel.png"]), "--out", str(blocker / "out")])


# ---------------------------------------------------------------- (c) the app


@pytest.mark.parametrize("name", sorted(make_bad.CORPUS))
def test_upload_handlers_show_a_clear_message_and_keep_nothing(corpus, name):
    for handler, what in (
        (enhance_page.load_upload, "this file"),
        (enhance_page.load_reference, "the reference"),
    ):
        upload = as_upload(corpus[name])
        if name in REFUSED:
            with pytest.raises(gr.Error) as info:
                handler(upload)
            message = info.value.message
            assert message.startswith(f"Could not read {what}: {quoted(name)}"), message
            assert re.search(REFUSED[name], message)
            assert_clear(message)
        else:
            prepared = handler(upload)[0]
            assert isinstance(prepared, dd.Prepared) and SAFE_NAME.fullmatch(prepared.name)
        assert not Path(upload).exists()  # read once, then deleted, refused or not


def test_enhance_on_every_loadable_file_writes_safely_named_downloads(corpus):
    output_root = uploads.OUTPUT_ROOT.resolve()
    for name in LOADED:
        # Simulating scores every method against the clean image, down to a 1x1 one.
        _, _, _, files, notes = enhance_page.enhance(
            as_upload(corpus[name]), ["identity"], True, "paper", 0, None
        )
        [download] = [Path(f).resolve() for f in files]
        assert download.is_relative_to(output_root) and SAFE_NAME.fullmatch(download.name)
        if name == "one_pixel.png":
            assert "No metrics: SSIM needs at least 3×3 pixels and the image is 1×1." in notes
    with pytest.raises(gr.Error, match="Could not read the image: .*900.0 megapixels"):
        enhance_page.enhance(
            as_upload(corpus["bomb_30000x30000.png"]), ["identity"], False, "paper", 0, None
        )


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DPE_DATA_DIR", str(tmp_path_factory.mktemp("served")))
        with served_app() as url:
            yield url + "gradio_api/"


def _call_enhance(api: str, server_path: str) -> tuple[str, object]:
    """POST to the public /enhance endpoint with an uploaded file; return (event, data)."""
    file = {"path": server_path, "meta": {"_type": "gradio.FileData"}}
    data = [file, ["identity"], False, "paper", 0, None]
    event_id = httpx.post(api + "call/enhance", json={"data": data}, timeout=30).json()["event_id"]
    stream = httpx.get(f"{api}call/enhance/{event_id}", timeout=120).text
    events = re.findall(r"^event: (\w+)\ndata: (.*)$", stream, flags=re.M)
    event, payload = events[-1]
    return event, json.loads(payload)


def test_http_uploads_with_hostile_names_stay_in_the_upload_folder_and_the_app_keeps_serving(
    corpus, server
):
    upload_folder = Path(gr.utils.get_upload_folder()).resolve()
    escapes = [upload_folder.parent / "escape.png", upload_folder.parent.parent / "escape.png"]
    good, junk, bomb = (
        corpus[n].read_bytes() for n in ("one_pixel.png", "random.png", "bomb_30000x30000.png")
    )
    sent = [good, junk, bomb]
    response = httpx.post(
        server + "upload",
        files=[
            ("files", (n, b, "image/png")) for n, b in zip(HOSTILE_UPLOAD_NAMES, sent, strict=True)
        ],
        timeout=30,
    )
    assert response.status_code == 200, response.text
    stored = [Path(p) for p in response.json()]
    for path, content in zip(stored, sent, strict=True):
        assert path.resolve().is_relative_to(upload_folder), path
        assert not set("/\\<>") & set(path.name), path.name
        assert path.read_bytes() == content
    assert not any(p.exists() for p in escapes)

    event, data = _call_enhance(server, str(stored[1]))  # junk under a markup name
    assert event == "error" and re.search(NOT_AN_IMAGE, data["error"]), data
    assert "<" not in data["error"] and "Traceback" not in data["error"]
    event, data = _call_enhance(server, str(stored[2]))  # the bomb
    assert event == "error" and "900.0 megapixels" in data["error"], data
    event, data = _call_enhance(server, "/etc/passwd")  # not an upload: Gradio refuses it
    assert event == "error"

    event, data = _call_enhance(server, str(stored[0]))  # the next valid request is served
    assert event == "complete", data
    downloads = [Path(f["path"]).name for f in data[3]]
    assert len(downloads) == 1 and SAFE_NAME.fullmatch(downloads[0]), downloads
    assert not any(p.exists() for p in escapes)


# ---------------------------------------------------------------- (d) property tests

FUZZ = settings(
    max_examples=100,
    deadline=None,
    database=None,  # nothing written into the repository
    suppress_health_check=[HealthCheck.too_slow],
)
# Starts of every format the loader recognises, so random bodies reach each parser.
MAGICS = [
    b"",
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    bytes(128) + b"DICM",
    b"\x08\x00",
    b"\x02\x00",
    b"RIFF\x00\x00\x00\x00WEBP",
]
EXTENSIONS = [".png", ".jpg", ".jpeg", ".tif", ".dcm", ".gif", ".bmp", ".webp", ""]


def _load_or_refuse(source) -> None:
    try:
        # A low limit keeps each example fast: random headers may claim tens of megapixels.
        loaded = load_image(source, max_megapixels=0.25)
    except ImageError as exc:
        assert str(exc), "an empty message"
        assert_clear(str(exc))
    else:
        assert_image(loaded)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(
    magic=st.sampled_from(MAGICS),
    body=st.binary(max_size=2048),
    extension=st.sampled_from(EXTENSIONS),
)
def test_arbitrary_bytes_load_or_raise_only_image_error(scratch, magic, body, extension):
    path = scratch / f"upload{extension}"
    path.write_bytes(magic + body)
    _load_or_refuse(path)


def _seed_files() -> dict[str, bytes]:
    """Small valid files of every kind the loader reads, for the mutation test."""
    rgb = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    seeds = {}
    for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"):
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format=fmt)
        seeds[fmt] = buf.getvalue()
    buf = io.BytesIO()
    tifffile.imwrite(buf, rgb.astype(np.uint16) * 257, compression="zlib")
    seeds["TIFF16"] = buf.getvalue()
    buf = io.BytesIO()
    save_image(rgb, buf, bits=16)
    seeds["PNG16"] = buf.getvalue()
    seeds["DICOM"] = make_bad.dicom_bytes(make_bad.image_dataset(rgb[..., 0]))
    seeds["CMYK"] = make_bad.cmyk_jpeg()
    seeds["GIF_ANIMATED"] = make_bad.animated_gif()
    return seeds


SEEDS = _seed_files()
EDIT = st.tuples(
    st.sampled_from(["set", "cut", "insert"]),
    st.integers(min_value=0, max_value=10**6),  # position, taken modulo the length
    st.binary(min_size=1, max_size=8),
)


@FUZZ
@given(kind=st.sampled_from(sorted(SEEDS)), edits=st.lists(EDIT, min_size=1, max_size=6))
def test_damaged_valid_files_load_or_raise_only_image_error(kind, edits):
    data = bytearray(SEEDS[kind])
    for op, position, chunk in edits:
        at = position % max(1, len(data))
        if op == "set":
            data[at : at + len(chunk)] = chunk
        elif op == "cut":
            del data[at : at + 8 * len(chunk)]
        else:
            data[at:at] = chunk
    _load_or_refuse(bytes(data))


SHAPES = st.tuples(st.integers(1, 16), st.integers(1, 16), st.sampled_from([None, 3]))


@settings(max_examples=60, deadline=None, database=None)
@given(
    shape=SHAPES,
    dtype=st.sampled_from([np.uint8, np.uint16]),
    fmt=st.sampled_from(["png", "tiff"]),
    data=st.data(),
)
def test_small_png_and_tiff_round_trip_exactly(shape, dtype, fmt, data):
    h, w, channels = shape
    shape = (h, w) if channels is None else (h, w, channels)
    pixels = data.draw(arrays(dtype, shape))
    if fmt == "png":  # OpenCV writes 8- and 16-bit gray and colour PNG alike (BGR order)
        ok, encoded = cv2.imencode(".png", pixels if channels is None else pixels[..., ::-1])
        assert ok
        encoded = encoded.tobytes()
    else:
        buf = io.BytesIO()
        tifffile.imwrite(buf, pixels, photometric="minisblack" if channels is None else "rgb")
        encoded = buf.getvalue()
    loaded = assert_image(load_image(encoded))
    peak = np.iinfo(dtype).max
    if channels is None and dtype == np.uint16:
        # 16-bit gray without a window: shown at its stored depth (dpe.io.STORED_BITS)
        from dpe.io import STORED_BITS

        peak = 2 ** next(b for b in STORED_BITS if int(pixels.max()) < 2**b) - 1
    expected = pixels.astype(np.float32) / np.float32(peak)
    if channels is None:
        expected = np.repeat(expected[..., None], 3, axis=2)
    np.testing.assert_allclose(loaded.image, expected, atol=1e-6)
    assert loaded.bit_depth == 8 * np.dtype(dtype).itemsize
    assert loaded.was_grayscale == (channels is None)


@settings(max_examples=40, deadline=None, database=None)
@given(
    image=arrays(
        np.float32, SHAPES.map(lambda s: (s[0], s[1], 3)), elements=st.floats(0, 1, width=32)
    ),
    bits=st.sampled_from([8, 16]),
)
def test_save_image_then_load_image_is_within_half_a_code(image, bits):
    buf = io.BytesIO()
    save_image(image, buf, bits=bits)
    loaded = assert_image(load_image(buf.getvalue()))
    assert loaded.bit_depth == bits
    assert np.abs(loaded.image - image).max() <= 0.5 / (2**bits - 1) + 1e-6
