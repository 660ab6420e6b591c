import numpy as np
import pytest

from dpe.metrics import PSNR_CAP, compare, delta_e, psnr, ssim


@pytest.fixture
def image():
    return np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)


def test_identical_images(image):
    assert psnr(image, image) == PSNR_CAP
    assert ssim(image, image) == pytest.approx(1.0)
    assert delta_e(image, image) == 0.0


def test_known_psnr(image):
    noisy = np.clip(image + 0.1, 0, 1)
    mse = np.mean((noisy - image) ** 2)
    assert psnr(image, noisy) == pytest.approx(10 * np.log10(1 / mse), rel=1e-4)


def test_worse_image_scores_worse(image):
    rng = np.random.default_rng(1)
    slight = np.clip(image + rng.normal(0, 0.02, image.shape), 0, 1).astype(np.float32)
    strong = np.clip(image + rng.normal(0, 0.2, image.shape), 0, 1).astype(np.float32)
    a, b = compare(image, slight), compare(image, strong)
    assert a["psnr"] > b["psnr"] and a["ssim"] > b["ssim"] and a["delta_e"] < b["delta_e"]


def test_uint8_and_float_agree(image):
    u8 = (image * 255).round().astype(np.uint8)
    assert psnr(u8, u8) == PSNR_CAP
    assert psnr(u8, u8 // 2) == pytest.approx(psnr(u8 / 255.0, (u8 // 2) / 255.0), rel=1e-5)


def test_shape_mismatch(image):
    with pytest.raises(ValueError, match="same shape"):
        psnr(image, image[:16])


def test_tiny_image():
    tiny = np.zeros((5, 6, 3), np.float32)
    assert ssim(tiny, tiny) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="3x3"):
        ssim(np.zeros((2, 2, 3)), np.zeros((2, 2, 3)))
