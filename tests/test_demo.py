import re
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
    monkeypatch.delenv("DPE_MAX_MEGAPIXELS")
    assert demo.max_megapixels() == demo.DEFAULT_MAX_MEGAPIXELS
    # A bad value is not replaced by the default behind the operator's back.
    for bad in ("lots", "0", "-1", "nan"):
        monkeypatch.setenv("DPE_MAX_MEGAPIXELS", bad)
        with pytest.raises(ValueError, match=f"DPE_MAX_MEGAPIXELS='{bad}'"):
            demo.max_megapixels()


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


def test_run_methods_reports_progress_before_each_method(monkeypatch):
    calls, ran = [], []
    real = demo.get_method

    def spy(name):
        ran.append((name, len(calls)))  # how many progress reports came before this method ran
        return real(name)

    monkeypatch.setattr(demo, "get_method", spy)
    image = np.random.default_rng(2).random((16, 16, 3)).astype(np.float32)
    methods = ["identity", "autocontrast", "clahe"]
    demo.run_methods(image, methods, progress=lambda *args: calls.append(args))
    labels = [dpe.methods.method_info(m)["label"] for m in methods]
    assert calls == [(k, 3, label) for k, label in enumerate(labels)]
    assert ran == [(m, k + 1) for k, m in enumerate(methods)]


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


def test_examples_cover_every_modality_and_load():
    from dpe.data import MODALITIES

    examples = demo.example_images(Path(__file__).parent.parent / "examples")
    assert [e.modality for e in examples][0] == "radiology"
    assert {e.modality for e in examples} == set(MODALITIES)
    assert any(e.path.suffix == ".dcm" for e in examples)
    for e in examples:
        thumb = demo.thumbnail(e.path, size=64)
        assert thumb.dtype == np.uint8 and max(thumb.shape[:2]) <= 64 and thumb.shape[2] == 3


def test_practice_pairs_have_random_names_and_never_show_the_clean_image(tmp_path):
    source = _png(
        tmp_path / "clean.png",
        (np.random.default_rng(4).random((40, 40, 3)) * 255).astype(np.uint8),
    )
    (pair,) = demo.practice_pairs([source], tmp_path / "out", seed=1, size=32)
    names = [pair.source.name, pair.left.name, pair.right.name]
    assert len(set(names)) == 3 and not any("clean" in n for n in names)
    clean = demo.fit_megapixels(dpe.load_image(source).image, 32 * 32 / 1e6)[0]
    shown = [dpe.load_image(p).image for p in (pair.source, pair.left, pair.right)]
    assert all(np.abs(s - clean).max() > 0.05 for s in shown)  # a trial never shows it either
    assert np.abs(shown[1] - shown[2]).max() > 0.05  # two different enhancements


def test_to_uint8_clips_and_rounds():
    image = np.array([[[-0.1, 0.0, 0.5], [0.999, 1.0, 1.2]]], dtype=np.float32)
    out = demo.to_uint8(image)
    assert out.dtype == np.uint8 and out.tolist() == [[[0, 0, 128], [255, 255, 255]]]


def _prepared(tmp_path, name: str, seed: int) -> demo.Prepared:
    pixels = (np.random.default_rng(seed).random((24, 24, 3)) * 200 + 20).astype(np.uint8)
    return demo.prepare(_png(tmp_path / name, pixels))


def test_enhance_upload_scores_against_the_reference_and_keeps_the_notes(tmp_path):
    image, reference = _prepared(tmp_path, "scan.png", 5), _prepared(tmp_path, "clean.png", 6)
    out = demo.enhance_upload(image, ["identity", "autocontrast"], reference=reference)
    assert out.notes[: len(image.notes)] == image.notes and demo.REFERENCE_UNUSED not in out.notes
    assert out.reference is reference.image and not out.simulated
    assert out.results[0].metrics == pytest.approx(
        dpe.metrics.compare(reference.image, image.image)
    )
    sim = demo.enhance_upload(
        image, ["identity"], simulate_preset="paper", seed=2, reference=reference
    )
    assert sim.simulated and sim.reference is image.image  # the clean image is the reference
    assert sim.notes[len(image.notes)] == demo.REFERENCE_UNUSED
    assert "preset **paper**, seed **2**" in sim.notes[-1]
    plain = demo.enhance_upload(image, ["identity"], simulate_preset="paper")
    assert demo.REFERENCE_UNUSED not in plain.notes


def test_gallery_and_before_after_show_what_ran(tmp_path, monkeypatch):
    monkeypatch.setattr("dpe.weights.WEIGHTS_DIR", tmp_path)  # dpe has no weights: it fails
    monkeypatch.setattr("dpe.methods._CACHE", {})
    image = _prepared(tmp_path, "scan.png", 7)
    out = demo.enhance_upload(image, ["dpe", "clahe"])
    captions = [caption for _, caption in demo.gallery(out)]
    assert captions[0] == "Input" and re.fullmatch(r"CLAHE · \d+\.\d\d s", captions[1])
    assert len(captions) == 2  # the failed method is in the notes, not the gallery
    before, after = demo.before_after(out)
    assert before.dtype == after.dtype == np.uint8
    assert np.array_equal(before, demo.to_uint8(image.image))
    assert np.array_equal(after, demo.to_uint8(out.results[1].image))
    sim = demo.enhance_upload(image, ["identity"], simulate_preset="clinical")
    shown = demo.gallery(sim)
    assert [c for _, c in shown][:2] == ["Low-quality input", "Clean original"]
    assert np.array_equal(shown[1][0], demo.to_uint8(image.image))
    assert demo.before_after(demo.enhance_upload(image, ["dpe"])) is None


def test_examples_of_picks_the_first_of_each_modality_in_order():
    examples = [
        demo.Example(Path("r1.png"), "radiology", "R1"),
        demo.Example(Path("m1.png"), "microscopy", "M1"),
        demo.Example(Path("m2.png"), "microscopy", "M2"),
    ]
    picked = demo.examples_of(examples, ("microscopy", "dermatology", "radiology"))
    assert picked == [Path("m1.png"), Path("r1.png")]  # no dermatology example: skipped


def test_a_gray_upload_is_enhanced_and_degraded_as_gray(tmp_path, monkeypatch):
    ramp = np.tile(np.linspace(10, 240, 40).astype(np.uint8), (24, 1))  # one channel
    prepared = demo.prepare(_png(tmp_path / "xray.png", ramp))
    assert prepared.gray
    told, real = [], demo.get_method

    class Spy:
        def __init__(self, name):
            self.method = real(name)

        def enhance(self, image, **options):
            told.append(options.get("gray"))
            return self.method.enhance(image, **options)

    def degrade(image, preset, **options):
        told.append(("degrade", options.get("gray")))
        return dpe.degrade(image, preset, **options)

    monkeypatch.setattr(demo, "get_method", Spy)
    monkeypatch.setattr(demo, "degrade", degrade)
    out = demo.enhance_upload(prepared, ["autocontrast", "clahe"], simulate_preset="clinical")
    assert told == [("degrade", True), True, True]  # LoadedImage.gray, not a guess
    assert (out.input == out.input[..., :1]).all()  # the degraded twin is gray too


def test_the_default_method_is_the_best_ranked_one_available():
    from dpe.methods import RECOMMENDED

    assert demo.default_methods(["identity", "clahe", RECOMMENDED[0]]) == [RECOMMENDED[0]]
    assert demo.default_methods(["identity", "clahe", "dpe"]) == ["dpe"]
    assert demo.default_methods(["identity", "lime"]) == ["lime"]
