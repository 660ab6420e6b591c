import numpy as np
import pytest
import torch

import dpe
from dpe.methods import CheckedMethod, UnknownMethodError, create_method, list_methods, method_info
from dpe.methods.deep import TorchMethod, run_tiled
from dpe.nets.dpenet import DPENet
from dpe.weights import WeightsNotFoundError, load_weights, save_weights


@pytest.fixture
def dark():
    rng = np.random.default_rng(0)
    return (rng.random((40, 56, 3)) * 0.3).astype(np.float32)


def test_registry_lists_the_core_methods():
    names = list_methods()
    assert {"dpe", "dpe-s", "identity", "autocontrast", "clahe"} <= set(names)
    assert method_info("dpe")["weights"] == "dpe"
    assert set(list_methods("reference")) >= {"identity", "autocontrast", "clahe"}


@pytest.mark.parametrize("name", ["identity", "autocontrast", "clahe"])
def test_reference_methods_keep_the_image_type(dark, name):
    out = dpe.enhance(dark, name)
    assert out.dtype == np.float32 and out.shape == dark.shape
    assert 0 <= out.min() and out.max() <= 1


def test_autocontrast_stretches_and_handles_flat(dark):
    out = dpe.enhance(dark, "autocontrast")
    assert out.max() == 1.0 and out.min() == 0.0
    flat = np.full((8, 8, 3), 0.2, np.float32)
    np.testing.assert_array_equal(dpe.enhance(flat, "autocontrast"), flat)


def test_enhance_accepts_grayscale_and_uint8():
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 2
    out = dpe.enhance(gray, "autocontrast")
    assert out.shape == (8, 8, 3) and out.dtype == np.float32


def test_unknown_method_and_option(dark):
    with pytest.raises(UnknownMethodError, match="registered methods"):
        dpe.enhance(dark, "nope")
    with pytest.raises(ValueError, match="identity"):
        dpe.enhance(dark, "identity", strength=3)


def test_missing_weights_error_says_how_to_get_them(monkeypatch, tmp_path):
    monkeypatch.setattr("dpe.weights.WEIGHTS_DIR", tmp_path)
    monkeypatch.delenv("DPE_WEIGHTS_REPO", raising=False)
    with pytest.raises(WeightsNotFoundError, match="python -m dpe.train"):
        create_method("dpe")


def test_hub_offline_falls_back_to_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr("dpe.weights.WEIGHTS_DIR", tmp_path)
    monkeypatch.setenv("DPE_WEIGHTS_REPO", "someone/dpe-weights")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match="someone/dpe-weights"):
        create_method("dpe-s")


def test_weights_round_trip_fp16(monkeypatch, tmp_path):
    torch.manual_seed(0)
    net = DPENet(width=8)
    save_weights(net.state_dict(), tmp_path / "dpe-s.safetensors", net.config_dict(), steps=3)
    state, config, info = load_weights(tmp_path / "dpe-s.safetensors")
    assert config == {"arch": "dpenet", "width": 8} and info == {"steps": 3}
    assert all(v.dtype == torch.float32 for v in state.values())
    monkeypatch.setattr("dpe.weights.WEIGHTS_DIR", tmp_path)
    method = create_method("dpe-s")
    img = np.random.default_rng(1).random((24, 40, 3)).astype(np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(img).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    # fp16 storage costs at most a few thousandths
    assert np.abs(method.enhance(img) - ref).max() < 5e-3


def test_weights_dir_variable_points_at_candidate_weights(monkeypatch, tmp_path):
    torch.manual_seed(0)
    net = DPENet(width=8)
    save_weights(net.state_dict(), tmp_path / "dpe-s.safetensors", net.config_dict())
    monkeypatch.setattr("dpe.weights.WEIGHTS_DIR", tmp_path / "empty")
    monkeypatch.delenv("DPE_WEIGHTS_REPO", raising=False)
    with pytest.raises(WeightsNotFoundError, match="empty"):
        create_method("dpe-s")
    monkeypatch.setenv("DPE_WEIGHTS_DIR", str(tmp_path))
    assert create_method("dpe-s").net.config.width == 8


def test_tiled_equals_untiled_on_1200x900():
    torch.manual_seed(0)
    method = TorchMethod("t", "t", DPENet(width=16))
    img = np.random.default_rng(0).random((900, 1200, 3)).astype(np.float32)
    whole = method._forward(img)
    tiled = method.enhance(img, tile=512)  # 3 x 2 tiles
    assert np.abs(whole - tiled).max() < 1e-3
    # 1.08 megapixels is above the threshold: the default path tiles as well
    np.testing.assert_array_equal(method.enhance(img), tiled)


def test_run_tiled_blends_without_seams():
    # a position-independent function must come back exactly, whatever the tiling
    img = np.random.default_rng(2).random((300, 260, 3)).astype(np.float32)
    out = run_tiled(lambda p: p * 0.5, img, tile=128, overlap=32)
    np.testing.assert_allclose(out, img * 0.5, atol=1e-6)
    with pytest.raises(ValueError, match="overlap"):
        run_tiled(lambda p: p, img, tile=64, overlap=64)


def test_grayscale_input_comes_back_grayscale():
    torch.manual_seed(0)
    method = CheckedMethod(TorchMethod("t", "t", DPENet(width=8)))
    gray = np.repeat(np.random.default_rng(3).random((32, 48, 1)), 3, axis=2).astype(np.float32)
    out = method.enhance(gray)
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
    colour = np.random.default_rng(4).random((32, 48, 3)).astype(np.float32)
    out = method.enhance(colour)
    assert not np.array_equal(out[..., 0], out[..., 1])  # colour images are left as they are


@pytest.mark.parametrize(
    "name",
    [
        "identity",
        "autocontrast",
        "clahe",
        "lime",
        "dual",
        "dpe",
        "dpe-s",
        "dpe-g",
        "retinexnet",
        "dran",
    ],
)
def test_every_method_returns_a_gray_source_gray_degraded_or_not(name):
    from dpe import degrade, enhance

    rng = np.random.default_rng(5)
    gray = np.repeat(rng.random((40, 36, 1), dtype=np.float32) * 0.6 + 0.2, 3, axis=2)
    options = {"denoise": False} if name in ("lime", "dual") else {}
    for image in (gray, degrade(gray, "paper", seed=3)):
        out = enhance(image, name, **options)
        assert out.shape == image.shape and out.dtype == np.float32
        assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
    # gray decided from the source: a nearly gray colour array told gray=True comes back gray
    tinted = gray + np.float32(0.01) * rng.random(gray.shape, dtype=np.float32)
    out = enhance(np.clip(tinted, 0, 1), name, gray=True, **options)
    assert np.array_equal(out[..., 0], out[..., 2])


def test_registry_refuses_output_of_the_wrong_shape():
    from dpe.methods import MethodOutputError

    class Broken:
        name = label = "broken"

        def enhance(self, image):
            return image[:-1]

    with pytest.raises(MethodOutputError, match="broken"):
        CheckedMethod(Broken()).enhance(np.zeros((4, 4, 3), np.float32))


def test_recommended_order_is_the_committed_evaluations_ranking():
    import json
    from pathlib import Path

    from dpe.evaluate import recommend
    from dpe.methods import RECOMMENDED

    report = json.loads((Path(__file__).parent.parent / "docs" / "evaluation.json").read_text())
    ranking = [m for m, _ in recommend(report) if m != "identity"]
    assert list(RECOMMENDED) == ranking
    assert set(RECOMMENDED) <= set(list_methods())
