import json
import math

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
