import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dpe.evaluate import degraded_twin, find_images, main
from dpe.metrics import psnr

ROW_KEYS = {"group", "method", "n", "psnr", "ssim", "delta_e", "seconds_per_mp"}
ROW_KEYS |= {"psnr_std", "ssim_std", "delta_e_std"}


def _save(path, seed, shape=(24, 32)):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    image = (rng.random((*shape, 3)) * 200 + 30).astype(np.uint8)
    Image.fromarray(image).save(path)
    return image.astype(np.float32) / 255


@pytest.fixture
def two_groups(tmp_path):
    root = tmp_path / "test"
    images = {
        "xray/a.png": _save(root / "xray" / "a.png", 0),
        "cells/b.png": _save(root / "cells" / "b.png", 1, shape=(20, 28)),
    }
    return root, images


def test_json_schema_groups_and_all(two_groups, tmp_path):
    root, images = two_groups
    out_json, out_md = tmp_path / "r.json", tmp_path / "r.md"
    main(["--images", str(root), "--methods", "identity,autocontrast", "--seed", "3",
          "--json", str(out_json), "--markdown", str(out_md), "--quiet"])  # fmt: skip
    report = json.loads(out_json.read_text())
    assert report["preset"] == "paper" and report["seed"] == 3
    rows = report["results"]
    assert all(set(r) >= ROW_KEYS for r in rows)
    assert {(r["group"], r["method"], r["n"]) for r in rows} == {
        (g, m, n)
        for g, n in (("xray", 1), ("cells", 1), ("all", 2))
        for m in ("identity", "autocontrast")
    }
    assert all(math.isfinite(r[k]) for r in rows for k in ROW_KEYS - {"group", "method", "n"})
    # identity scores the degraded input itself: the same twin every evaluation makes
    expected = psnr(images["xray/a.png"], degraded_twin(images["xray/a.png"], "xray/a.png",
                                                        preset="paper", seed=3))  # fmt: skip
    row = next(r for r in rows if r["group"] == "xray" and r["method"] == "identity")
    assert row["psnr"] == pytest.approx(expected, abs=1e-6) and row["psnr_std"] == 0
    markdown = out_md.read_text()
    assert "**xray** (n = 1)" in markdown and "**all** (n = 2)" in markdown
    assert "| autocontrast |" in markdown


def test_same_seed_same_numbers_other_seed_other_numbers(two_groups, tmp_path):
    root, _ = two_groups

    def run(seed):
        out = tmp_path / f"{seed}.json"
        main(["--images", str(root), "--methods", "identity", "--seed", str(seed),
              "--json", str(out), "--quiet"])  # fmt: skip
        return [r["psnr"] for r in json.loads(out.read_text())["results"]]

    assert run(0) == run(0)
    assert run(0) != run(1)


def test_images_directly_in_a_folder_form_its_group(tmp_path):
    _save(tmp_path / "scans" / "one.png", 0)
    _save(tmp_path / "scans" / "two.png", 1)
    _save(tmp_path / "more" / "sub" / "three.png", 2)
    (tmp_path / "scans" / "notes.csv").write_text("not an image")
    (tmp_path / "scans" / "._one.png").write_bytes(b"\0\5\26\7")  # macOS metadata, not a PNG
    items = find_images([tmp_path / "scans", tmp_path / "more"])
    assert [(i.group, i.relpath) for i in items] == [
        ("scans", "one.png"),
        ("scans", "two.png"),
        ("sub", "sub/three.png"),
    ]
    assert len(find_images([tmp_path / "scans"], max_per_group=1)) == 1


def test_missing_weights_are_skipped_and_reported(two_groups, tmp_path, monkeypatch):
    monkeypatch.setattr("dpe.weights.WEIGHTS_DIR", tmp_path / "empty")
    monkeypatch.delenv("DPE_WEIGHTS_REPO", raising=False)
    monkeypatch.setattr("dpe.methods._CACHE", {})
    root, _ = two_groups
    out_json, out_md = tmp_path / "r.json", tmp_path / "r.md"
    main(["--images", str(root), "--methods", "identity", "dpe", "--json", str(out_json),
          "--markdown", str(out_md), "--quiet"])  # fmt: skip
    report = json.loads(out_json.read_text())
    assert {r["method"] for r in report["results"]} == {"identity"}
    assert [s["method"] for s in report["skipped"]] == ["dpe"]
    assert "Not evaluated: `dpe` (weights missing)" in out_md.read_text()


def test_bad_arguments_exit_with_a_message(tmp_path):
    with pytest.raises(SystemExit):
        main(["--images", str(tmp_path / "nope"), "--methods", "identity"])
    _save(tmp_path / "a.png", 0)
    with pytest.raises(SystemExit, match="unknown method"):
        main(["--images", str(tmp_path), "--methods", "identity,nope"])


def test_combine_merges_separate_runs_into_the_joint_table(two_groups, tmp_path, capsys):
    root, _ = two_groups

    def run(methods, name, seed=0):
        out = tmp_path / f"{name}.json"
        main(["--images", str(root), "--methods", methods, "--seed", str(seed),
              "--json", str(out), "--quiet"])  # fmt: skip
        return out

    joint = json.loads(run("identity,autocontrast", "joint").read_text())
    parts = [run("identity", "a"), run("autocontrast", "b")]
    merged_json = tmp_path / "merged.json"
    main(["--combine", *map(str, parts), "--json", str(merged_json), "--quiet"])
    merged = json.loads(merged_json.read_text())

    def key(report):
        return [
            (r["group"], r["method"], r["n"], r["psnr"], r["delta_e"]) for r in report["results"]
        ]

    assert key(merged) == key(joint)
    # runs that measured different things are refused, and so is a method measured twice
    other_seed = str(run("autocontrast", "c", seed=1))
    for args, message in [
        ([str(parts[0]), other_seed], "different seed"),
        ([str(parts[0]), str(parts[0])], "more than one run"),
        ([str(parts[0]), "--images", str(root)], "either --images"),
    ]:
        capsys.readouterr()
        with pytest.raises(SystemExit):
            main(["--combine", *args])
        assert message in capsys.readouterr().err


# --- seeds, intervals, clean columns, gallery, gray ---------------------------------------


def _run(tmp_path, root, *args, name="r"):
    out = tmp_path / f"{name}.json"
    main(["--images", str(root), "--json", str(out), "--quiet", *args])
    return json.loads(out.read_text())


def _row(report, group, method):
    return next(r for r in report["results"] if r["group"] == group and r["method"] == method)


def _full_range(path, seed, shape=(24, 32)):
    """A colour image whose luminance spans 0..1 (more than 1% black and white pixels)."""
    rng = np.random.default_rng(seed)
    image = (rng.random((*shape, 3)) * 200 + 30).astype(np.uint8)
    image[:3], image[-3:] = 0, 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return image.astype(np.float32) / 255


def test_each_seed_degrades_anew_and_scores_average_over_seeds(tmp_path):
    root = tmp_path / "test"
    images = {f"cells/{i}.png": _save(root / "cells" / f"{i}.png", i) for i in range(3)}
    report = _run(tmp_path, root, "--methods", "identity", "--seeds", "0,1,2", "--per-image")
    assert report["seeds"] == [0, 1, 2] and report["seed"] == 0
    per_image = []
    for rel, clean in images.items():
        twins = [degraded_twin(clean, rel, preset="paper", seed=s, gray=False) for s in (0, 1, 2)]
        assert not np.array_equal(twins[0], twins[1]) and not np.array_equal(twins[1], twins[2])
        by_seed = [psnr(clean, t) for t in twins]
        record = next(r for r in report["per_image"] if r["relpath"] == rel)
        assert record["psnr_seeds"] == pytest.approx(by_seed, abs=1e-6)
        per_image.append(np.mean(by_seed))
    row = _row(report, "cells", "identity")
    assert row["n"] == 3 and row["seeds"] == [0, 1, 2]
    assert row["psnr"] == pytest.approx(np.mean(per_image), abs=1e-6)
    # the spread is over images of seed-averaged scores, not over all image-seed pairs
    assert row["psnr_std"] == pytest.approx(np.std(per_image), abs=1e-6)


def test_interval_is_a_bootstrap_of_the_mean_or_none():
    from dpe.evaluate import interval

    values = np.random.default_rng(0).normal(20.0, 2.0, 60)
    lo, hi = interval(values)
    assert lo < values.mean() < hi
    # the normal-theory width of a 95% interval of the mean, which the bootstrap approaches
    expected = 2 * 1.96 * values.std(ddof=1) / np.sqrt(values.size)
    assert hi - lo == pytest.approx(expected, rel=0.15)
    assert interval(values) == [lo, hi]  # fixed resampling: the same scores, the same bounds
    assert interval(values[:2]) is None and interval([5.0, 5.0, 5.0, 5.0]) is None
    assert interval([1.0, 1.0 + 1e-9, 1.0]) is None  # float rounding is not a spread


def test_intervals_hold_the_mean_and_are_absent_below_three_images(tmp_path):
    root = tmp_path / "test"
    for i in range(5):
        _save(root / "cells" / f"{i}.png", i)
    _save(root / "xray" / "a.png", 9)
    report = _run(tmp_path, root, "--methods", "identity,clahe", "--seeds", "0,1",
                  "--markdown", str(tmp_path / "r.md"))  # fmt: skip
    keys = {"identity": ("psnr", "ssim", "delta_e"), "clahe": ("psnr", "clean_psnr", "clean_ssim")}
    for method, checked in keys.items():
        row = _row(report, "cells", method)
        for key in checked:
            lo, hi = row[f"{key}_ci"]
            assert lo < row[key] < hi, (method, key, lo, row[key], hi)
        xray = _row(report, "xray", method)
        assert xray["n"] == 1 and xray["psnr_ci"] is None and xray["ssim_ci"] is None
    # identity on a clean image scores the same on every image: no interval to give
    assert _row(report, "cells", "identity")["clean_psnr_ci"] is None
    markdown = (tmp_path / "r.md").read_text()
    cells_identity = next(line for line in markdown.splitlines() if "| identity |" in line)
    row = _row(report, "cells", "identity")
    lo, hi = row["psnr_ci"]
    assert f"{row['psnr']:.2f} [{lo:.1f}, {hi:.1f}]" in cells_identity
    assert "[n/a]" in markdown and "bootstrap" in markdown and "seeds 0, 1" in markdown


def test_clean_columns_score_each_method_on_the_undegraded_image(tmp_path):
    from dpe.metrics import PSNR_CAP

    root = tmp_path / "test"
    for i in range(3):
        _full_range(root / "skin" / f"{i}.png", i)
    report = _run(tmp_path, root, "--methods", "identity,autocontrast,clahe",
                  "--markdown", str(tmp_path / "r.md"))  # fmt: skip
    identity, auto, clahe = (_row(report, "skin", m) for m in ("identity", "autocontrast", "clahe"))
    # identity returns the clean image itself: PSNR reaches the cap (not inf), ΔE is 0
    assert identity["clean_psnr"] == PSNR_CAP and identity["clean_psnr_ci"] is None
    assert identity["clean_ssim"] == pytest.approx(1) and identity["clean_delta_e"] == 0
    # an already full-range image leaves auto-contrast nothing to stretch; CLAHE still reworks it
    assert auto["clean_psnr"] > 40 and clahe["clean_psnr"] < 30
    assert clahe["clean_delta_e"] > auto["clean_delta_e"]
    # the degraded scores are a different measurement from the clean ones
    assert identity["psnr"] < 30
    assert "| clean PSNR ↑ | clean SSIM ↑ | clean ΔE ↓ |" in (tmp_path / "r.md").read_text()

    skipped = _run(tmp_path, root, "--methods", "identity", "--no-clean",
                   "--markdown", str(tmp_path / "n.md"))  # fmt: skip
    row = _row(skipped, "skin", "identity")
    assert row["clean_psnr"] is None and row["clean_psnr_ci"] is None
    assert row["psnr"] == identity["psnr"]
    assert "clean PSNR" not in (tmp_path / "n.md").read_text()


def _panel(sheet, row, col, shape, heights):
    """The panel at (row, col) of a gallery sheet whose rows are ``heights`` tall (no labels)."""
    from dpe.evaluate import GAP, LABEL_HEIGHT

    h, w = shape
    top = sum(hh + LABEL_HEIGHT + GAP for hh in heights[:row]) + LABEL_HEIGHT
    left = col * (w + GAP)
    return sheet[top : top + h, left : left + w]


def test_gallery_writes_a_sheet_per_group_with_a_column_per_method(tmp_path):
    root = tmp_path / "test"
    cells = [_save(root / "cells" / f"{i}.png", i) for i in range(4)]
    _save(root / "xray" / "a.png", 9)
    gallery = tmp_path / "gallery"
    _run(tmp_path, root, "--methods", "identity,autocontrast", "--seeds", "5,6",
         "--gallery", str(gallery), "--gallery-images", "2")  # fmt: skip
    assert sorted(p.name for p in gallery.iterdir()) == [
        "cells-clean.png", "cells.png", "xray-clean.png", "xray.png"
    ]  # fmt: skip
    sheet = np.asarray(Image.open(gallery / "cells.png").convert("RGB"))
    on_clean = np.asarray(Image.open(gallery / "cells-clean.png").convert("RGB"))
    from dpe.evaluate import GAP, LABEL_HEIGHT

    h, w = 24, 32  # small images are shown at full size
    # clean, degraded, identity, autocontrast; two images (first and last by name)
    assert sheet.shape == (2 * (h + LABEL_HEIGHT + GAP) - GAP, 4 * (w + GAP) - GAP, 3)
    assert on_clean.shape == (2 * (h + LABEL_HEIGHT + GAP) - GAP, 3 * (w + GAP) - GAP, 3)
    for row, index in enumerate((0, 3)):
        clean = cells[index]
        twin = degraded_twin(clean, f"cells/{index}.png", preset="paper", seed=5, gray=False)
        u8 = lambda a: (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)  # noqa: E731
        assert np.array_equal(_panel(sheet, row, 0, (h, w), [h, h]), u8(clean))
        assert np.array_equal(_panel(sheet, row, 1, (h, w), [h, h]), u8(twin))
        assert np.array_equal(_panel(sheet, row, 2, (h, w), [h, h]), u8(twin))  # identity
        assert np.array_equal(_panel(on_clean, row, 1, (h, w), [h, h]), u8(clean))
    # each label strip holds dark text on white
    strip = sheet[:LABEL_HEIGHT, :w]
    assert strip.min() < 100 and np.median(strip) == 255


def test_gallery_panels_shrink_to_fit(tmp_path, monkeypatch):
    root = tmp_path / "test"
    _save(root / "scans" / "big.png", 0, shape=(300, 600))
    _run(tmp_path, root, "--methods", "identity", "--gallery", str(tmp_path / "g"), "--no-clean")
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["scans.png"]
    big = Image.open(tmp_path / "g" / "scans.png")
    from dpe.evaluate import GAP, LABEL_HEIGHT

    assert big.size == (3 * (256 + GAP) - GAP, 128 + LABEL_HEIGHT)  # long side 256 px
    # a size budget the 256 px panels exceed makes the panels smaller, not the file larger
    monkeypatch.setattr("dpe.evaluate.GALLERY_MAX_BYTES", 60_000)
    _run(tmp_path, root, "--methods", "identity", "--gallery", str(tmp_path / "s"), "--no-clean")
    small = tmp_path / "s" / "scans.png"
    assert small.stat().st_size <= 60_000 < (tmp_path / "g" / "scans.png").stat().st_size
    assert Image.open(small).size[0] < big.size[0]


def test_gray_sources_pass_gray_to_degradation_and_every_method(tmp_path, monkeypatch):
    import dpe.datasets
    import dpe.methods

    root = tmp_path / "test"
    gray = (np.random.default_rng(0).random((24, 32)) * 255).astype(np.uint8)
    (root / "xray").mkdir(parents=True)
    Image.fromarray(gray, "L").save(root / "xray" / "g.png")
    _save(root / "skin" / "c.png", 1)
    seen = []
    real_degrade, real_get = dpe.datasets.degrade, dpe.methods.get_method

    def spy_degrade(image, preset, rng, **kw):
        seen.append(("degrade", kw["gray"]))
        return real_degrade(image, preset, rng, **kw)

    class Spy:
        def __init__(self, inner):
            self.inner, self.name = inner, inner.name

        def enhance(self, image, **kw):
            seen.append((self.name, kw["gray"]))
            return self.inner.enhance(image, **kw)

    monkeypatch.setattr(dpe.datasets, "degrade", spy_degrade)  # degraded_twin lives there
    monkeypatch.setattr(dpe.methods, "get_method", lambda name: Spy(real_get(name)))
    _run(tmp_path, root, "--methods", "identity,clahe", "--preset", "clinical", "--seeds", "0,1",
         "--gallery", str(tmp_path / "g"))  # fmt: skip

    # per image (skin/c.png, then xray/g.png): 2 twins, then each method on 2 twins + clean
    def calls(gray):
        return [("degrade", gray)] * 2 + [("identity", gray)] * 3 + [("clahe", gray)] * 3

    assert seen == calls(False) + calls(True)
    sheet = np.asarray(Image.open(tmp_path / "g" / "xray.png").convert("RGB")).astype(int)
    assert np.array_equal(sheet[..., 0], sheet[..., 1]) and np.array_equal(
        sheet[..., 1], sheet[..., 2]
    )
    colour = np.asarray(Image.open(tmp_path / "g" / "skin.png").convert("RGB")).astype(int)
    assert not np.array_equal(colour[..., 0], colour[..., 1])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seeds", "0,x"], "comma-separated non-negative integers"),
        (["--seeds", "0,,1"], "comma-separated non-negative integers"),
        (["--seeds", "-1"], "comma-separated non-negative integers"),
        (["--seeds", "1,2,1"], "given twice"),
        (["--seed", "1,2"], "--seed takes one seed"),
        (["--seed", "1", "--seeds", "2,3"], "not both"),
        (["--gallery", "g", "--gallery-images", "0"], "at least 1"),
    ],
)
def test_bad_seeds_exit_with_a_clear_message(two_groups, capsys, args, message):
    root, _ = two_groups
    with pytest.raises(SystemExit):
        main(["--images", str(root), "--methods", "identity", "--quiet", *args])
    assert message in capsys.readouterr().err


def test_seed_is_the_one_seed_form_of_seeds(two_groups, tmp_path):
    root, _ = two_groups
    one = _run(tmp_path, root, "--methods", "identity", "--seed", "4", name="one")
    many = _run(tmp_path, root, "--methods", "identity", "--seeds", "4", name="many")
    assert one["seeds"] == many["seeds"] == [4] and one["seed"] == many["seed"] == 4

    def scores(report):  # everything but the timing
        return [{k: v for k, v in r.items() if k != "seconds_per_mp"} for r in report["results"]]

    assert scores(one) == scores(many)


def test_combine_refuses_other_seeds_and_keeps_intervals(tmp_path, capsys):
    root = tmp_path / "test"
    for i in range(3):
        _save(root / "cells" / f"{i}.png", i)
    a = _run(tmp_path, root, "--methods", "identity", "--seeds", "0,1", name="a")
    b = _run(tmp_path, root, "--methods", "autocontrast", "--seeds", "0,1", name="b")
    _run(tmp_path, root, "--methods", "autocontrast", "--seeds", "0,2", name="c")
    merged = tmp_path / "m.json"
    main(["--combine", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
          "--json", str(merged), "--quiet"])  # fmt: skip
    report = json.loads(merged.read_text())
    assert report["seeds"] == [0, 1]
    assert report["results"] == [a["results"][0], b["results"][0], a["results"][1], b["results"][1]]
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["--combine", str(tmp_path / "a.json"), str(tmp_path / "c.json")])
    assert "different seeds: [0, 1] vs [0, 2]" in capsys.readouterr().err


def test_recommend_ranks_by_the_worst_group_of_help_and_harm():
    from dpe.evaluate import recommend

    def row(group, method, psnr, clean):
        return {"group": group, "method": method, "psnr": psnr, "clean_psnr": clean}

    report = {
        "results": [
            row("a", "bold", 30.0, 15.0),  # restores well, spoils good images
            row("b", "bold", 30.0, 60.0),
            row("a", "gentle", 22.0, 45.0),
            row("b", "gentle", 21.0, 50.0),
            row("all", "bold", 30.0, 99.0),
        ]
    }
    ranking = recommend(report)
    assert [m for m, _ in ranking] == ["gentle", "bold"]
    assert ranking[0][1] == (21.0 + 40.0) / 2 and ranking[1][1] == (30.0 + 15.0) / 2


def test_combine_common_images_summarises_runs_over_overlapping_sets(two_groups, tmp_path):
    root, _ = two_groups
    subset = tmp_path / "subset"
    for path in sorted(root.rglob("*.png"))[::2]:  # every other image, same relative paths
        target = subset / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(path.resolve())

    def run(images, methods, name):
        out = tmp_path / f"{name}.json"
        main(["--images", str(images), "--methods", methods, "--json", str(out),
              "--per-image", "--quiet"])  # fmt: skip
        return str(out)

    full, part = run(root, "identity", "full"), run(subset, "autocontrast", "part")
    joint = json.loads(Path(run(subset, "identity,autocontrast", "joint")).read_text())
    with pytest.raises(SystemExit):  # different image sets: refused without the flag
        main(["--combine", full, part, "--quiet"])
    merged_json = tmp_path / "merged.json"
    main(["--combine", full, part, "--common-images", "--json", str(merged_json), "--quiet"])
    merged = json.loads(merged_json.read_text())
    assert merged["images"] == joint["images"]

    def key(report):
        return [(r["group"], r["method"], r["n"], round(r["psnr"], 9)) for r in report["results"]]

    assert sorted(key(merged)) == sorted(key(joint))
