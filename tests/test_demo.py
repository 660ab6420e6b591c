import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dpe
from dpe import demo


def test_fit_megapixels_downscales_with_a_note():
    img = np.random.default_rng(0).random((1000, 3000, 3)).astype(np.float32)
    small, note = demo.fit_megapixels(img, 2.0)
    assert small.shape[0] * small.shape[1] <= 2e6 and small.dtype == np.float32
    assert abs(small.shape[1] / small.shape[0] - 3) < 0.01  # aspect ratio kept
    assert "3000×1000" in note and "2 megapixels" in note
    same, none = demo.fit_megapixels(img[:100, :100], 2.0)
    assert same is not None and none is None and same.shape == (100, 100, 3)


def test_max_megapixels_env(monkeypatch):
    monkeypatch.setenv("DPE_MAX_MEGAPIXELS", "0.5")
    assert demo.max_megapixels() == 0.5
    monkeypatch.setenv("DPE_MAX_MEGAPIXELS", "lots")
    assert demo.max_megapixels() == demo.DEFAULT_MAX_MEGAPIXELS


def test_run_methods_reports_metrics_and_errors(monkeypatch, tmp_path):
    monkeypatch.setattr("dpe.weights.WEIGHTS_DIR", tmp_path)  # no DPE weights here
    monkeypatch.setattr("dpe.methods._CACHE", {})  # nor a model loaded by an earlier test
    clean = np.random.default_rng(1).random((32, 32, 3)).astype(np.float32)
    low, params = demo.simulate(clean, "paper", 4)
    assert params["preset"] == "paper"
    results = demo.run_methods(low, ["identity", "autocontrast", "dpe"], reference=clean)
    by = {r.method: r for r in results}
    assert by["identity"].metrics["psnr"] < by["autocontrast"].metrics["psnr"]
    assert by["dpe"].image is None and "no weights" in by["dpe"].error
    with pytest.raises(ValueError, match="at least one"):
        demo.run_methods(low, [])
    with pytest.raises(ValueError, match="same size"):
        demo.run_methods(low, ["identity"], reference=clean[:16])


def _png(path, array):
    Image.fromarray(array).save(path)
    return path


def test_available_methods_follow_the_weights_folder(monkeypatch, tmp_path):
    monkeypatch.setattr("dpe.weights.WEIGHTS_DIR", tmp_path)
    monkeypatch.delenv("DPE_WEIGHTS_REPO", raising=False)
    keys = [k for _, k in demo.available_methods()]
    assert "dpe" not in keys and {"identity", "autocontrast", "clahe"} <= set(keys)
    monkeypatch.setenv("DPE_WEIGHTS_REPO", "someone/dpe-weights")  # fetched on first use
    assert "dpe" in [k for _, k in demo.available_methods()]
    monkeypatch.delenv("DPE_WEIGHTS_REPO")
    assert demo.default_methods(keys) != ["identity"]  # the default shows a change
    (tmp_path / "dpe.safetensors").write_bytes(b"")  # weights land while the app runs
    keys = [k for _, k in demo.available_methods()]
    assert "dpe" in keys and demo.default_methods(keys) == ["dpe"]


def test_prepare_reads_16_bit_and_says_what_it_did(tmp_path, monkeypatch):
    monkeypatch.setenv("DPE_MAX_MEGAPIXELS", "0.01")
    ramp = (np.arange(200 * 300, dtype=np.uint32).reshape(200, 300) * 3 % 65536).astype(np.uint16)
    prepared = demo.prepare(_png(tmp_path / "scan one!.png", ramp))
    assert prepared.bit_depth == 16 and prepared.name == "scan_one"
    assert (
        prepared.image.dtype == np.float32
        and prepared.image.shape[0] * prepared.image.shape[1] <= 1e4
    )
    text = " ".join(prepared.notes)
    assert "300×200" in text and "16-bit PNG" in text and "Downscaled" in text
    (tmp_path / "bad.png").write_bytes(b"no image here")
    with pytest.raises(ValueError, match="not an image"):
        demo.prepare(tmp_path / "bad.png")


def test_simulated_experiment_scores_every_method_against_the_clean_image():
    clean = np.random.default_rng(2).random((24, 24, 3)).astype(np.float32)
    out = demo.enhance_prepared(clean, ["identity", "clahe"], simulate_preset="paper", seed=3)
    assert out.simulated and out.reference is clean and not np.allclose(out.input, clean)
    assert "preset **paper**, seed **3**" in out.notes[0]
    rows = demo.metrics_rows(out)
    assert [r[0] for r in rows] == [
        "Simulated low-quality input",
        "Input (no enhancement)",
        "CLAHE",
    ]
    assert rows[0][2:] == rows[1][2:]  # identity scores exactly like its input
    again = demo.enhance_prepared(clean, ["identity"], simulate_preset="paper", seed=3)
    assert np.array_equal(again.input, out.input)  # the seed reproduces the draw
    plain = demo.enhance_prepared(clean, ["identity"])
    assert demo.metrics_rows(plain) == [
        ["Input (no enhancement)", round(plain.results[0].seconds, 3), "-", "-", "-"]
    ]


def test_write_results_is_lossless_at_16_bits(tmp_path):
    image = np.random.default_rng(3).random((20, 30, 3)).astype(np.float32)
    out = demo.enhance_prepared(image, ["identity"])
    (path,) = demo.write_results(out, tmp_path, "my scan", bits=12)
    assert path.name == "my_scan_identity.png"
    back = dpe.load_image(path)
    assert back.bit_depth == 16 and np.abs(back.image - image).max() <= 0.5 / 65535 + 1e-7


def test_prune_old_removes_only_old_folders(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir(), new.mkdir()
    past = time.time() - 3600
    os.utime(old, (past, past))
    assert demo.prune_old(tmp_path, 600) == 1
    assert not old.exists() and new.exists()
    assert demo.prune_old(tmp_path / "missing", 600) == 0


def test_examples_cover_three_modalities_and_load():
    examples = demo.example_images(Path(__file__).parent.parent / "examples")
    assert [e.modality for e in examples][0] == "radiology"
    assert {e.modality for e in examples} == {"radiology", "dermatology", "microscopy"}
    assert any(e.path.suffix == ".dcm" for e in examples)
    for e in examples:
        thumb = demo.thumbnail(e.path, size=64)
        assert thumb.dtype == np.uint8 and max(thumb.shape[:2]) <= 64 and thumb.shape[2] == 3


def test_practice_pairs_have_random_names_and_one_clean_side(tmp_path):
    source = _png(
        tmp_path / "clean.png",
        (np.random.default_rng(4).random((40, 40, 3)) * 255).astype(np.uint8),
    )
    (pair,) = demo.practice_pairs([source], tmp_path / "out", seed=1, size=32)
    names = [pair.source.name, pair.left.name, pair.right.name]
    assert len(set(names)) == 3 and not any("clean" in n for n in names)
    clean = demo.fit_megapixels(dpe.load_image(source).image, 32 * 32 / 1e6)[0]
    sides = [dpe.load_image(p).image for p in (pair.left, pair.right)]
    matches = [np.abs(s - clean).max() < 1 / 255 for s in sides]
    assert sorted(matches) == [False, True]  # exactly one side is the clean original
