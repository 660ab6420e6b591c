import numpy as np
import pytest

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
