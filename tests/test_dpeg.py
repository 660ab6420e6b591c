"""DPE-G: DPENet plus a global path (dpe.nets.dpeg), its training and its tiled inference."""

import numpy as np
import pytest
import torch
from skimage import data
from skimage.transform import resize

from dpe.degrade import degrade
from dpe.losses import GeneratorLoss, Objective
from dpe.methods.deep import TorchMethod
from dpe.nets import build_net
from dpe.nets.dpeg import DPEG, stretch_range
from dpe.nets.dpenet import DPENet
from dpe.train import main, train_step
from dpe.weights import load_weights, save_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _net(width: int = 8, seed: int = 0) -> DPEG:
    torch.manual_seed(seed)
    net = DPEG(width=width, global_width=8)
    # the last layer starts at zero (the plain stretch); give it weights so the learned part acts
    torch.nn.init.normal_(net.glob.mlp[-1].weight, std=0.05)
    return net.eval()


def test_global_path_sees_brightness_the_local_path_cannot():
    # A 64 x 1024 strip: darken the right half only. DPENet's receptive field (about 140 px)
    # never reaches the left 64 columns from there, DPE-G's global path does.
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.random((1, 3, 64, 1024), dtype=np.float32)) * 0.5 + 0.25
    darker = image.clone()
    darker[..., 512:] *= 0.3
    net = _net()
    with torch.no_grad():
        local = [net.local(x)[..., :64] for x in (image, darker)]
        full = [net(x)[..., :64] for x in (image, darker)]
        learned = [net.glob(x) for x in (image, darker)]
    torch.testing.assert_close(local[0], local[1], rtol=0, atol=1e-6)
    assert (full[0] - full[1]).abs().mean() > 1e-2
    # the learned correction moved too, not only the fixed stretch
    assert (learned[0] - learned[1]).abs().max() > 1e-4


def test_untrained_global_path_is_the_percentile_stretch():
    torch.manual_seed(0)
    net = DPEG(width=8, global_width=8)  # zero-initialised last layer
    x = torch.rand(2, 3, 40, 56) * 0.3 + 0.1
    params = net.global_params(x)
    low, span = stretch_range(x)
    torch.testing.assert_close(params[:, 2:], torch.zeros(2, 6))
    corrected = net.apply_global(x, params)
    torch.testing.assert_close(corrected, ((x - low) / span).clamp(-0.5, 1.5))


@pytest.mark.parametrize("shape", [(17, 23), (512, 512), (900, 1200)])
def test_runs_on_any_size(shape):
    method = TorchMethod("g", "g", _net())
    image = np.random.default_rng(1).random((*shape, 3)).astype(np.float32)
    out = method.enhance(image)  # 1200 x 900 is above 1 MP: the tiled path
    assert out.shape == image.shape and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_tiles_share_the_whole_image_global_correction():
    # A tile's own statistics differ from the whole image's; the tiled run must use the latter.
    method = TorchMethod("g", "g", _net())
    y, x = np.mgrid[0:600, 0:640].astype(np.float32)
    ramp = (0.1 + 0.5 * x / 640 + 0.01 * np.sin(y / 7))[..., None]
    image = (ramp * np.array([1.0, 0.9, 0.8], np.float32)).astype(np.float32)  # colour
    whole = method._forward(image)
    tiled = method.enhance(image, tile=256)
    assert np.abs(whole - tiled).max() < 2e-3
    # computing the correction per tile instead would be visibly different
    per_tile = method._forward(image[:256, :256])
    assert np.abs(per_tile - whole[:256, :256]).mean() > 1e-2


def _whole_images(n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    clean = np.stack([resize(sources[i % 4], (size, size), anti_aliasing=True) for i in range(n)])
    clean = clean.astype(np.float32)
    low = np.stack([degrade(c, "paper", seed=i) for i, c in enumerate(clean)])
    return tuple(torch.from_numpy(a).permute(0, 3, 1, 2).contiguous() for a in (low, clean))


def test_training_steps_on_whole_images_lower_the_loss():
    low, clean = _whole_images(4, 48)
    torch.manual_seed(0)
    model = DPEG(width=8, global_width=8)
    opt = torch.optim.Adam(model.parameters(), betas=(0.9, 0.99))
    loss_fn = GeneratorLoss(Objective(feature=False, adversarial=False))
    history = [train_step(model, None, opt, None, loss_fn, low, clean, lr=2e-3) for _ in range(12)]
    assert history[-1]["loss"] < 0.8 * history[0]["loss"]
    assert model.glob.mlp[-1].weight.abs().sum() > 0  # the global path learned something


def _noise_data(root):
    """Two random 40x48 tiles in each of train/g and val/g."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        folder = root / split / "g"
        folder.mkdir(parents=True)
        for i in range(2):
            Image.fromarray((rng.random((40, 48, 3)) * 255).astype(np.uint8)).save(
                folder / f"{i}.png"
            )


def test_init_from_dpenet_weights_starts_the_local_path(tmp_path):
    torch.manual_seed(0)
    dpenet = DPENet(width=8)
    save_weights(dpenet.state_dict(), tmp_path / "base.safetensors", dpenet.config_dict(), steps=7)
    _noise_data(tmp_path / "data")
    args = [
        "--data", str(tmp_path / "data"), "--checkpoint-dir", str(tmp_path / "ckpt"),
        "--out-dir", str(tmp_path / "w"), "--name", "g", "--arch", "dpeg", "--crop", "16",
        "--batch-size", "2", "--eval-every", "1", "--val-images", "2", "--val-size", "32",
        "--threads", "1", "--no-feature", "--no-adversarial", "--steps", "2",
        "--init-from", str(tmp_path / "base.safetensors"),
    ]  # fmt: skip
    assert main(args) == 0
    ckpt = torch.load(tmp_path / "ckpt" / "g.pt", weights_only=True)
    assert ckpt["model_config"] == {"arch": "dpeg", "width": 8, "global_width": 32}
    assert ckpt["step"] == 2 and ckpt["init_info"]["steps"] == 7
    model = build_net(ckpt["model_config"])
    model.load_state_dict(ckpt["model"])
    assert isinstance(model, DPEG)
    if (tmp_path / "w" / "g.safetensors").exists():  # exported only if validation improved
        _, config, info = load_weights(tmp_path / "w" / "g.safetensors")
        assert config["arch"] == "dpeg" and info["init_from"]["steps"] == 7


def test_init_from_dpeg_weights_continues_their_steps_and_keeps_their_origin(tmp_path):
    torch.manual_seed(0)
    model = DPEG(width=8)
    origin = {"file": "dpe.safetensors", "steps": 40, "wall_time_s": 12.0}
    file = tmp_path / "g0.safetensors"
    save_weights(model.state_dict(), file, model.config_dict(), steps=5, init_from=origin)
    _noise_data(tmp_path / "data")
    args = [
        "--data", str(tmp_path / "data"), "--checkpoint-dir", str(tmp_path / "ckpt"),
        "--out-dir", str(tmp_path / "w"), "--name", "g", "--arch", "dpeg", "--crop", "16",
        "--batch-size", "2", "--eval-every", "1", "--val-images", "2", "--val-size", "32",
        "--threads", "1", "--no-feature", "--no-adversarial", "--steps", "7", "--lr", "1e-4",
        "--init-from", str(file),
    ]  # fmt: skip
    assert main(args) == 0
    ckpt = torch.load(tmp_path / "ckpt" / "g.pt", weights_only=True)
    assert ckpt["step"] == 7 and ckpt["init_info"] == origin
    assert [s for s, _ in ckpt["history"]] == [5, 6, 7]
