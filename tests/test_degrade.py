import numpy as np
import pytest

from dpe._image import LUMA
from dpe.degrade import FACTOR_RANGE, PAPER_SIGMA_MAX, PRESETS, degrade


@pytest.fixture
def clean():
    rng = np.random.default_rng(0)
    return rng.random((48, 40, 3)).astype(np.float32)


@pytest.mark.parametrize("preset", ["paper", "clinical"])
def test_same_seed_same_output(clean, preset):
    a = degrade(clean, preset, seed=7)
    b = degrade(clean, preset, seed=7)
    c = degrade(clean, preset, seed=8)
    assert a.dtype == np.float32 and a.shape == clean.shape
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.min() >= 0 and a.max() <= 1


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64])
def test_accepts_dtypes(dtype):
    info = np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else 1.0
    img = (np.linspace(0, 1, 16 * 16 * 3).reshape(16, 16, 3) * info).astype(dtype)
    out = degrade(img, seed=0)
    assert out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1


def test_paper_factor_statistics(clean):
    draws = [degrade(clean, "paper", seed=s, return_params=True)[1] for s in range(2000)]
    brightness = np.array([d["brightness"] for d in draws])
    contrast = np.array([d["contrast"] for d in draws])
    sigma = np.array([d["noise_sigma"] for d in draws])
    for factor in (brightness, contrast):
        assert FACTOR_RANGE[0] <= factor.min() and factor.max() <= FACTOR_RANGE[1]
        assert abs(factor.mean() - 0.45) < 0.01  # mean of U[0.1, 0.8]
    # noise amplitude U[0, 0.1**1.5] on [-1, 1] is half that on [0, 1]: at most ~0.016
    assert sigma.max() <= PAPER_SIGMA_MAX / 2 and abs(sigma.mean() - PAPER_SIGMA_MAX / 4) < 1e-3
    orders = {tuple(d["order"]) for d in draws}
    assert orders == {("brightness", "contrast"), ("contrast", "brightness")}


def test_paper_matches_colorjitter_formula():
    img = np.random.default_rng(1).random((20, 30, 3)).astype(np.float32)
    out, p = degrade(img, "paper", seed=3, return_params=True)
    gray = np.array(LUMA, np.float32)  # torchvision's, but with BT.601's 0.299 for R
    x = img
    for step in p["order"]:
        if step == "brightness":
            x = np.clip(x * p["brightness"], 0, 1)
        else:
            x = np.clip(p["contrast"] * x + (1 - p["contrast"]) * (x @ gray).mean(), 0, 1)
    noise = out - x  # non-negative, bounded by the drawn amplitude
    assert noise.min() >= -1e-6 and noise.max() <= p["noise_sigma"] + 1e-6


def test_degradation_lowers_contrast_and_brightness(clean):
    low = degrade(clean, "paper", seed=0)
    assert low.mean() < clean.mean() and low.std() < clean.std()


def test_clinical_adds_noise_on_flat_image():
    flat = np.full((64, 64, 3), 0.5, np.float32)
    out, p = degrade(flat, "clinical", seed=2, return_params=True)
    assert out.std() > 0.005  # shot + read noise make a flat field grainy
    assert {"blur_sigma", "photons", "gauss_sigma"} <= p.keys()


def test_bad_preset_and_shape():
    with pytest.raises(ValueError, match="preset"):
        degrade(np.zeros((4, 4, 3), np.float32), "nope")
    with pytest.raises(ValueError, match="shape"):
        degrade(np.zeros((4, 4, 4), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        degrade(np.full((4, 4, 3), np.nan, np.float32))


@pytest.mark.parametrize("preset", PRESETS)
def test_a_grayscale_source_stays_gray_through_degradation(preset):
    gray = np.repeat(np.random.default_rng(1).random((24, 20, 1), dtype=np.float32), 3, axis=2)
    for seed in range(5):
        low, params = degrade(gray, preset, seed=seed, return_params=True)
        assert params["gray"] is True
        assert np.array_equal(low[..., 0], low[..., 1]) and np.array_equal(low[..., 0], low[..., 2])
        assert not np.array_equal(low, gray)


def test_gray_flag_overrides_the_pixels():
    colour = np.random.default_rng(2).random((16, 16, 3), dtype=np.float32)
    low = degrade(colour, "paper", seed=0, gray=True)
    assert np.array_equal(low[..., 0], low[..., 2])  # channel 0 of the source, degraded once
    assert not np.array_equal(degrade(colour, "paper", seed=0)[..., 0], low[..., 2])
