"""dpe.data: split planning, the keep/skip rule, the manifest, the examples gallery.

None of these need the data packages of requirements-train.txt: planning is tested on
coordinates, and the build end to end on synthetic images written to a temporary folder.
"""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dpe import data
from dpe.data import (
    GAP,
    MANIFEST_COLUMNS,
    TILE,
    VOLUME_GAP,
    Band,
    Keep,
    Source,
    SourceMissing,
    TileSpec,
    band_tiles,
    box_separation,
    build,
    check_separated,
    find_leaks,
    grid_starts,
    is_informative,
    plan_bands,
    split_regions,
    to_rgb8,
    volume_slices,
)

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"

# Shapes (rows, cols) of the real 2-D sources, so their layouts are checked without the packages.
SOURCE_SHAPES = {
    "xray_chest": (1955, 1841),
    "xray_tibia": (1760, 1760),
    "mr_shoulder": (1024, 1024),
    "ct_head": (512, 512),
    "mr_abdomen": (484, 484),
    "skin_photo": (1360, 1528),
    "he_cmu": (2967, 2220),
    "he_tia": (1000, 1000),
    "nuclei_fluo": (512, 512),
    "he_stardist": (300, 500),
    "ihc_skimage": (512, 512),
    "cell_skimage": (660, 550),
    "mri_ch2": (181, 217, 181),
    "ct_head2": (512, 512),
    "ct_small": (128, 128),
    "cbct_head": (64, 512, 512),
    "us_doppler": (480, 640),
    "us_palette": (350, 800),
    "us_rgb": (240, 320),
    "us_ybr": (240, 320),
    "nm_bone": (1024, 256),
    "fundus": (1411, 1411),
    "photo_astronaut": (512, 512),
    "photo_chelsea": (300, 451),
    "photo_coffee": (400, 600),
    "photo_rocket": (427, 640),
    "photo_motorcycle": (500, 741),
    "photo_hubble": (872, 1000),
    "photo_camera": (512, 512),
    "photo_moon": (512, 512),
    "photo_coins": (303, 384),
}


def plan_from_shape(source: Source, shape: tuple[int, ...]) -> list[TileSpec]:
    """The tiles dpe.data.plan_source would plan, from the shape alone."""
    if source.kind == "volume":
        return volume_slices(
            shape, source.layout, axis=source.axis, gap=VOLUME_GAP, steps={"val": 2, "test": 2}
        )
    if source.kind == "series":
        return data.series_specs(source, shape[0], shape[1:])
    return data.image_specs(source, shape, source.key)


# --- plan_bands, grid_starts ------------------------------------------------------------------


def test_plan_bands_docstring_case():
    bands = plan_bands(1024, [("train", None), ("test", 1)], unit=256, gap=256)
    assert bands == [Band("train", 0, 512), Band("test", 768, 1024)]


@pytest.mark.parametrize(
    "length, layout, unit, gap",
    [
        (1955, [("val", 1), ("test", 3), ("train", None)], 256, 256),
        (2967, [("train", None), ("val", 1), ("test", 4)], 256, 256),
        (217, [("train", None), ("val", 20), ("test", 40), ("train", 30)], 1, 8),
        (1000, [("test", 2), ("train", 1)], 100, 50),
    ],
)
def test_plan_bands_keeps_order_sizes_and_gaps(length, layout, unit, gap):
    bands = plan_bands(length, layout, unit=unit, gap=gap)
    assert [b.split for b in bands] == [s for s, _ in layout]
    assert bands[0].start == 0 and bands[-1].stop <= length
    for band, (_, n) in zip(bands, layout, strict=True):
        if n is not None:
            assert band.stop - band.start == n * unit
    for before, after in itertools.pairwise(bands):
        assert after.start - before.stop == gap
    rest = [b for b, (_, n) in zip(bands, layout, strict=True) if n is None]
    if rest:  # the rest-band takes everything left over: the plan ends at the axis end
        assert bands[-1].stop == length


@pytest.mark.parametrize(
    "layout, match",
    [
        ([("train", None), ("test", None)], "at most one"),
        ([("holdout", 1)], "unknown split"),
        ([("train", 0)], ">= 1 unit"),
        ([("train", None), ("test", 4)], "needs more than"),
        ([], "empty"),
    ],
)
def test_plan_bands_rejects_bad_layouts(layout, match):
    with pytest.raises(ValueError, match=match):
        plan_bands(1000, layout, unit=256, gap=256)


@pytest.mark.parametrize("length", [256, 300, 484, 511, 512, 640, 1000, 1841, 2220])
def test_grid_starts_stay_inside_and_overlap_less_than_half_a_tile(length):
    starts = grid_starts(length, 256)
    assert starts, "a length of at least one tile gives at least one tile"
    assert all(0 <= s and s + 256 <= length for s in starts)
    assert starts == sorted(starts)
    for a, b in itertools.pairwise(starts):
        assert b - a > 128  # overlap < half a tile
    covered = starts[-1] + 256 - starts[0]
    assert covered >= length - 255  # margins stay below one tile in total


def test_grid_starts_examples_and_short_axis():
    assert grid_starts(484, 256) == [0, 228]
    assert grid_starts(1000, 256) == [0, 248, 496, 744]
    assert grid_starts(300, 256) == [22]
    assert grid_starts(255, 256) == []
    with pytest.raises(ValueError, match="tile"):
        grid_starts(100, 0)


# --- separation: no test tile overlaps or touches a train tile ------------------------------


def test_box_separation_signs():
    a = ((0, 10), (0, 10))
    assert box_separation(a, ((5, 15), (5, 15))) < 0  # overlap
    assert box_separation(a, ((10, 20), (0, 10))) == 0  # touching edge
    assert box_separation(a, ((30, 40), (0, 10))) == 20
    assert box_separation(a, ((30, 40), (50, 60))) == 40  # furthest axis counts


def test_find_leaks_catches_touching_and_overlapping_tiles():
    bands = plan_bands(1024, [("train", None), ("test", 1)], unit=256, gap=0)
    specs = [t for b in bands for t in band_tiles(b, 512, tile=256, axis=0, prefix="s")]
    leaks = find_leaks(specs, min_gap=256)
    assert leaks, "train and test bands with no gap touch, which must be reported"
    assert all({a.split, b.split} == {"train", "test"} for a, b in leaks)
    with pytest.raises(ValueError, match="closer than 256"):
        check_separated(specs, min_gap=256)
    overlapping = [
        TileSpec("train", ((0, 256), (0, 256)), "a", ""),
        TileSpec("test", ((100, 356), (0, 256)), "b", ""),
        TileSpec("test", ((600, 856), (0, 256)), "c", ""),  # far away: fine
    ]
    assert [(a.name, b.name) for a, b in find_leaks(overlapping, min_gap=256)] == [("a", "b")]


@pytest.mark.parametrize(
    "source",
    [s for s in data.SOURCES if s.kind != "patches"],  # patches share no coordinates
    ids=lambda s: s.key,
)
def test_every_configured_source_keeps_splits_apart(source):
    shape = SOURCE_SHAPES[source.key]
    specs = plan_from_shape(source, shape)
    assert specs
    gap = VOLUME_GAP if source.kind in ("volume", "series") else GAP
    assert find_leaks(specs, min_gap=gap) == []
    for spec in specs:  # every tile lies inside the source
        assert all(0 <= a < b <= n for (a, b), n in zip(spec.box, shape, strict=True))
        if spec.split == "test" and source.kind != "volume":
            (y0, y1), (x0, x1) = spec.box[-2:]
            # a tile, or a whole image smaller than one (kept whole, at least MIN_SLICE_SIDE)
            assert min(y1 - y0, x1 - x0) >= min(TILE, *shape[-2:], data.MIN_SLICE_SIDE)
            assert min(y1 - y0, x1 - x0) >= data.MIN_SLICE_SIDE


def test_volume_slabs_cut_across_only_in_the_thick_train_slab():
    source = next(s for s in data.SOURCES if s.key == "mri_ch2")
    specs = plan_from_shape(source, (181, 217, 181))
    kinds = {(s.split, s.name.split("_")[1]) for s in specs}
    assert {("train", "axial"), ("train", "sagittal"), ("train", "coronal")} <= kinds
    assert ("test", "coronal") in kinds and ("val", "coronal") in kinds
    assert not {("test", "axial"), ("test", "sagittal"), ("val", "axial")} & kinds
    # Every train slice, axial and sagittal ones included, stays VOLUME_GAP clear of the test slab.
    test_y = [s.box[1][0] for s in specs if s.split == "test"]
    lo, hi = min(test_y), max(test_y) + 1
    for s in specs:
        if s.split == "train":
            y0, y1 = s.box[1]
            assert y1 + VOLUME_GAP <= lo or y0 >= hi + VOLUME_GAP


def test_volume_slices_leak_without_a_gap():
    specs = volume_slices((100, 300, 100), [("train", None), ("test", 50)], axis=1, gap=0)
    assert find_leaks(specs, min_gap=1)


def test_slice_volume_puts_superior_at_the_top():
    vol = np.zeros((4, 5, 6), dtype=np.float32)
    vol[:, :, 5] = 1.0  # the most superior plane (RAS z max)
    coronal = data.slice_volume(vol, ((0, 4), (2, 3), (0, 6)))
    assert coronal.shape == (6, 4)
    assert coronal[0].min() == 1.0 and coronal[1:].max() == 0.0


# --- keep/skip rule and pixel conversion -------------------------------------------------------


def test_is_informative_on_synthetic_tiles():
    rng = np.random.default_rng(0)
    black = np.zeros((64, 64), np.float32)
    texture = rng.uniform(0.2, 0.8, (64, 64)).astype(np.float32)
    half = black.copy()
    half[:, :32] = texture[:, :32]
    dark = Keep(low=0.1, min_fraction=0.4, min_std=0.04)
    assert not is_informative(black, **vars(dark))
    assert is_informative(texture, **vars(dark))
    assert is_informative(half, **vars(dark))  # 50 % content
    assert not is_informative(half, low=0.1, min_fraction=0.6)
    # Brightfield: near-white glass is background, stained tissue is content.
    glass = np.full((64, 64, 3), 0.95, np.float32)
    tissue = glass.copy()
    tissue[:40] = [0.8, 0.4, 0.6]
    bright = Keep(high=0.88, min_fraction=0.4)
    assert not is_informative(glass, **vars(bright))
    assert is_informative(tissue, **vars(bright))
    # A flat grey tile has content-level values but no structure: min_std drops it.
    assert not is_informative(np.full((64, 64), 0.5, np.float32), min_std=0.01)


@pytest.mark.parametrize(
    "kwargs",
    [{"low": 0.5, "high": 0.5}, {"min_fraction": 1.5}, {"min_std": -0.1}],
)
def test_is_informative_rejects_bad_options(kwargs):
    with pytest.raises(ValueError):
        is_informative(np.zeros((8, 8), np.float32), **kwargs)


def test_is_informative_rejects_bad_shapes():
    with pytest.raises(ValueError, match="shape|\\(H, W"):
        is_informative(np.zeros((8, 8, 4), np.float32))


def test_to_rgb8_rounds_clips_and_repeats_grey():
    grey = np.array([[0.0, 0.5, 1.0, 2.0, -1.0]], np.float32)
    out = to_rgb8(grey)
    assert out.dtype == np.uint8 and out.shape == (1, 5, 3)
    assert out[0, :, 0].tolist() == [0, 128, 255, 255, 0]
    assert (out[..., 0] == out[..., 2]).all()
    with pytest.raises(ValueError):
        to_rgb8(np.zeros((2, 2, 4), np.float32))


def test_ct_windows_render_through_dpe_io(tmp_path):
    """Tiles of raw-intensity sources come through dpe.io.load_image's window, nowhere else."""
    import pydicom
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    hu = pydicom.pixels.apply_modality_lut(pydicom.dcmread(path).pixel_array, pydicom.dcmread(path))
    from dpe.io import load_image

    for name, (centre, width) in data.CT_WINDOWS.items():
        view, how = data.load_view(path, name)
        assert view.ndim == 2 and how.startswith(f"{name} window")
        assert np.array_equal(view, load_image(path, window=(centre, width)).image[..., 0])
        below, above = hu <= centre - width / 2 - 1, hu >= centre + width / 2
        assert (view[below] == 0).all() and (view[above] == 1).all()
    with pytest.raises(ValueError, match="grayscale DICOM"):
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
        load_image(tmp_path / "a.png", window=(40, 80))


# --- build end to end on synthetic sources: layout, manifest, determinism -------------------


def _synthetic_sources(tmp_path: Path) -> tuple[Source, ...]:
    rng = np.random.default_rng(1)
    big = (rng.uniform(0.2, 0.9, (1600, 700, 3)) * 255).astype(np.uint8)
    big[:, 400:] = 0  # a black strip: the tiles in it carry no content
    Image.fromarray(big).save(tmp_path / "big.png")
    small = (rng.uniform(0, 1, (300, 280)) * 255).astype(np.uint8)
    Image.fromarray(small).save(tmp_path / "small.png")
    return (
        Source(
            "big",
            "microscopy",
            "debian:none",
            str(tmp_path / "big.png"),
            "CC0-1.0",
            "bands",
            layout=(("train", None), ("val", 1), ("test", 2)),
            keep=Keep(low=0.1, min_fraction=0.5),
        ),
        Source(
            "small",
            "radiology",
            "debian:none",
            str(tmp_path / "small.png"),
            "MIT",
            "whole",
            split="test",
        ),
    )


def test_build_writes_split_folders_and_a_complete_manifest(tmp_path):
    sources = _synthetic_sources(tmp_path)
    out = tmp_path / "data"
    rows = build(out, sources, log=lambda _: None)
    with open(out / "manifest.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == MANIFEST_COLUMNS
        manifest = list(reader)
    assert len(manifest) == len(rows) > 0
    splits = {(r["split"], r["modality"]) for r in manifest}
    assert splits == {
        ("train", "microscopy"),
        ("val", "microscopy"),
        ("test", "microscopy"),
        ("test", "radiology"),
    }
    for r in manifest:
        path = out / r["path"]
        assert Path(r["path"]).parts[:2] == (r["split"], r["modality"])
        with Image.open(path) as im:
            assert im.mode == "RGB" and im.size == (int(r["width"]), int(r["height"]))
        assert r["licence"] and r["source_file"] and r["region"] and r["window"]
        if r["split"] == "test":
            assert min(int(r["width"]), int(r["height"])) >= TILE
    # Columns are tiled at x = 0, 222, 444 (700 px, overlapping); the tile at 444 is all black.
    big = [r for r in manifest if r["source"] == "big"]
    assert {r["box"].split(",")[1].split(":")[0] for r in big} == {"0", "222"}
    # An auditor can verify the split separation from the manifest alone.
    specs = [
        TileSpec(
            r["split"], tuple(tuple(map(int, p.split(":"))) for p in r["box"].split(",")), "", ""
        )
        for r in big
    ]
    assert find_leaks(specs, min_gap=GAP) == []


def test_build_is_deterministic_and_rebuilds_in_place(tmp_path):
    sources = _synthetic_sources(tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    build(a, sources, log=lambda _: None)
    build(b, sources, log=lambda _: None)
    assert (a / "manifest.csv").read_bytes() == (b / "manifest.csv").read_bytes()
    for r in data.read_manifest(a / "manifest.csv"):
        assert (a / r["path"]).read_bytes() == (b / r["path"]).read_bytes()
    stale = a / "train" / "microscopy" / "big_y9999_x9999.png"
    stale.write_bytes(b"")  # not in the manifest: a rebuild leaves it alone
    old_big = [
        a / r["path"] for r in data.read_manifest(a / "manifest.csv") if r["source"] == "big"
    ]
    build(a, sources[1:], log=lambda _: None)  # rebuild with the small source only
    assert stale.exists() and not any(p.exists() for p in old_big)
    assert {r["source"] for r in data.read_manifest(a / "manifest.csv")} == {"small"}
    assert not (a / "val").exists()  # folders emptied by the rebuild are removed


def test_build_refuses_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "out" / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match="no manifest"):
        build(tmp_path / "out", _synthetic_sources(tmp_path), log=lambda _: None)


def test_missing_source_raises_or_is_skipped(tmp_path):
    missing = Source("gone", "radiology", "no-such-dist-dpe", "x.dcm", "MIT", "whole")
    with pytest.raises(SourceMissing, match="requirements-train.txt"):
        build(tmp_path / "o1", (missing,), log=lambda _: None)
    messages = []
    rows = build(tmp_path / "o2", (missing,), skip_missing=True, log=messages.append)
    assert rows == [] and "gone" in messages[0]
    assert (tmp_path / "o2" / "manifest.csv").exists()


def test_write_manifest_requires_every_column(tmp_path):
    row = dict.fromkeys(MANIFEST_COLUMNS, "x")
    data.write_manifest([row], tmp_path / "m.csv")
    del row["licence"]
    with pytest.raises(ValueError, match="licence"):
        data.write_manifest([row], tmp_path / "m2.csv")


def test_summary_table_counts_split_by_modality():
    rows = [
        {"split": "test", "modality": "radiology", "width": "256", "height": "256"},
        {"split": "test", "modality": "radiology", "width": "181", "height": "181"},
        {"split": "train", "modality": "dermatology", "width": "32", "height": "32"},
    ]
    table = data.summary_table(rows).splitlines()
    assert table[2] == "| train | 0 | 1 | 0 | 0 | 1 |"
    assert table[4] == "| test | 2 | 0 | 0 | 0 | 2 |"
    assert table[5] == f"| test >= {TILE}^2 | 1 | 0 | 0 | 0 | 1 |"


def test_cli_rejects_unknown_source(capsys):
    assert data.main(["build", "--out", "unused", "--sources", "nope"]) == 2
    assert "unknown sources ['nope']" in capsys.readouterr().err


# --- the committed examples gallery -----------------------------------------------------------


@pytest.mark.parametrize("example", data.EXAMPLES, ids=lambda e: e.name)
def test_examples_are_cut_from_test_regions(example):
    source = next(s for s in data.SOURCES if s.key == example.source)
    shape = SOURCE_SHAPES[source.key]
    if source.kind == "volume":
        y = example.origin[0]
        box = ((0, shape[0]), (y, y + 1), (0, shape[2]))
    else:
        (y0, x0), (h, w) = example.origin or (0, 0), example.size or shape
        box = ((y0, y0 + h), (x0, x0 + w))
    regions = split_regions(source, shape, "test")
    assert any(data._inside(box, r) for r in regions), f"{example.name} leaves the test split"


def test_examples_folder_matches_the_list_and_stays_small():
    files = sorted(p for p in EXAMPLES_DIR.rglob("*") if p.is_file() and p.name != "SOURCES.md")
    expected = sorted(
        EXAMPLES_DIR / next(s.modality for s in data.SOURCES if s.key == e.source) / e.name
        for e in data.EXAMPLES
    )
    assert files == expected
    assert sum(p.stat().st_size for p in files) <= 5 * 2**20
    per_modality = {m: sum(1 for p in files if p.parent.name == m) for m in data.MODALITIES}
    assert all(3 <= n <= 4 for n in per_modality.values()), per_modality
    sources_md = (EXAMPLES_DIR / "SOURCES.md").read_text()
    for p in files:
        assert f"`{p.parent.name}/{p.name}`" in sources_md


def test_example_images_open():
    for p in EXAMPLES_DIR.rglob("*.png"):
        with Image.open(p) as im:
            im.load()
            assert min(im.size) >= 181
    import pydicom

    for p in EXAMPLES_DIR.rglob("*.dcm"):
        ds = pydicom.dcmread(p)
        assert ds.pixel_array.shape == (ds.Rows, ds.Columns)
        assert "DERIVED" in ds.ImageType


def test_every_modality_has_train_val_and_test_sources():
    planned = {
        (spec.split, source.modality)
        for source in data.SOURCES
        for spec in (
            [data.TileSpec(source.split, None, "", "")]
            if source.kind == "patches"
            else plan_from_shape(source, SOURCE_SHAPES[source.key])
        )
    }
    for modality in data.MODALITIES:
        for split in data.SPLITS:
            assert (split, modality) in planned, (split, modality)
    assert {s for s, m in planned if m in data.AUXILIARY} == {"train"}
