"""The deep baselines RetinexNet and DRAN: architectures, losses, and their registered methods."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data
from skimage.transform import resize

from dpe.degrade import degrade
from dpe.losses import (
    GeneratorLoss,
    Objective,
    RetinexLoss,
    decomposition_loss,
    illumination_smoothness,
    relight_loss,
)
from dpe.methods import create_method, list_methods, method_info
from dpe.metrics import psnr
from dpe.nets import build_net
from dpe.nets.dran import DRAN, DynamicConv
from dpe.nets.retinexnet import RetinexNet
from dpe.train import export_weights, train_step

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _astronaut(size: int) -> np.ndarray:
    return resize(data.astronaut(), (size, size), anti_aliasing=True).astype(np.float32)


def _tensor(images: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) or (H, W, 3) float array -> (B, 3, H, W) tensor."""
    images = images[None] if images.ndim == 3 else images
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


def _image(tensor: torch.Tensor) -> np.ndarray:
    return tensor[0].detach().permute(1, 2, 0).numpy()  # (H, W, C)


@pytest.fixture(scope="module")
def pair() -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed (low, clean) batch of two 32x32 patches, degraded with the paper's preset."""
    clean = np.stack([_astronaut(32), _astronaut(64)[16:48, 16:48]])  # (2, 32, 32, 3)
    low = np.stack([degrade(c, "paper", seed=i) for i, c in enumerate(clean)])
    return _tensor(low), _tensor(clean)


# --- architectures ----------------------------------------------------------------------------


def test_parameter_counts_at_the_papers_widths():
    retinex, dran = RetinexNet(), DRAN()
    counts = {
        "retinexnet": _count(retinex),
        "retinexnet.decom": _count(retinex.decom),
        "retinexnet.relight": _count(retinex.relight_net),
        "dran": _count(dran),
    }
    print(counts)
    # Decom-Net: 9x9 conv 4->64 (20,800) + 5 x 3x3 conv 64->64 (36,928 each) + 3x3 conv 64->4
    assert counts["retinexnet.decom"] == 20_800 + 5 * 36_928 + 2_308 == 207_748
    # Enhance-Net: conv 4->64, 3 stride-2 and 3 decoder convs 64->64, 1x1 192->64, 3x3 64->1
    assert counts["retinexnet.relight"] == 2_368 + 6 * 36_928 + 12_352 + 577 == 236_865
    assert counts["retinexnet"] == 444_613
    # DRAN: per dynamic conv 4 kernels (147,456) + 4 biases (256) + attention 64->16->4 (1,088),
    # BatchNorm 128; 15 of those, 3 noise gates (73,856 each), in and out convs (1,728 each)
    per_layer = 147_456 + 256 + 1_088 + 128
    assert counts["dran"] == 15 * per_layer + 3 * 73_856 + 2 * 1_728 == 2_458_944


def test_shapes_at_odd_sizes():
    torch.manual_seed(0)
    retinex, dran = RetinexNet().eval(), DRAN().eval()
    for h, w in [(13, 21), (9, 7), (1, 1)]:
        x = torch.rand(2, 3, h, w)
        with torch.no_grad():
            reflectance, illumination = retinex.decompose(x)
            relit = retinex.relight(reflectance, illumination)
            outputs = [retinex(x), dran(x)]
        assert reflectance.shape == (2, 3, h, w) and illumination.shape == (2, 1, h, w)
        assert relit.shape == (2, 1, h, w)
        assert 0 < reflectance.min() and reflectance.max() < 1
        assert 0 < illumination.min() and illumination.max() < 1
        for y in outputs:
            assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1


def test_dran_output_is_finite_for_100_random_inputs():
    torch.manual_seed(0)
    net = DRAN()
    biases = [m.bias for m in net.modules() if isinstance(m, DynamicConv)]
    assert len(biases) == 15 and all(torch.equal(b, torch.zeros_like(b)) for b in biases)
    gen = torch.Generator().manual_seed(1)
    # uniform noise, near-black, near-white and constant images, 25 of each
    inputs = torch.cat(
        [
            torch.rand(25, 3, 8, 8, generator=gen),
            torch.rand(25, 3, 8, 8, generator=gen) * 0.05,
            1 - torch.rand(25, 3, 8, 8, generator=gen) * 0.05,
            torch.rand(25, 3, 1, 1, generator=gen).expand(25, 3, 8, 8),
        ]
    )
    for mode in ("train", "eval"):  # batch statistics, then the running ones
        getattr(net, mode)()
        with torch.no_grad():
            out = torch.cat([net(batch) for batch in inputs.split(20)])
        assert out.shape == inputs.shape and torch.isfinite(out).all(), mode
    assert out.min() >= 0 and out.max() <= 1  # clipped at inference


def test_dran_uses_three_distinct_blocks():
    torch.manual_seed(0)
    net = DRAN(width=8, layers=2).eval()
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        before = net(x)
        for i, block in enumerate(net.blocks):
            # changing any one block's body changes the output: none stands in for another
            weight = block.body[0].weight
            saved = weight.clone()
            weight.add_(0.5)
            assert not torch.allclose(net(x), before), i
            weight.copy_(saved)
        torch.testing.assert_close(net(x), before, rtol=0, atol=0)


def test_dynamic_conv_is_a_per_image_mix_of_its_kernels():
    torch.manual_seed(0)
    conv = DynamicConv(channels=6, kernels=4, hidden=3, temperature=34.0)
    with torch.no_grad():
        conv.bias.normal_()  # make the bias count
        x = torch.rand(3, 6, 10, 9)
        mix = conv.attention(x)  # (B, K)
        kernels = conv.weight.view(4, 6, 6, 3, 3)
        expected = torch.cat(
            [
                F.conv2d(
                    x[b : b + 1],
                    torch.einsum("k,koihw->oihw", mix[b], kernels),
                    mix[b] @ conv.bias,
                    padding=1,
                )
                for b in range(3)
            ]
        )
        torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)
    assert torch.allclose(mix.sum(dim=1), torch.ones(3))
    # the temperature of 34 keeps the mix near uniform at the start; at 1 it is far sharper
    sharp = DynamicConv(channels=6, kernels=4, hidden=3, temperature=1.0)
    sharp.load_state_dict(conv.state_dict())
    with torch.no_grad():
        spread_34 = (mix - 0.25).abs().max()
        spread_1 = (sharp.attention(x) - 0.25).abs().max()
    assert spread_34 < 0.02 and spread_1 > 10 * spread_34


def test_dran_predicts_a_residual():
    torch.manual_seed(0)
    net = DRAN(width=8, layers=2).eval()
    with torch.no_grad():
        net.conv_out.weight.zero_()  # predicts no noise: the output is the input
        x = torch.rand(2, 3, 12, 10)
        torch.testing.assert_close(net(x), x)


# --- losses -----------------------------------------------------------------------------------


def test_smoothness_spares_illumination_edges_that_follow_reflectance_edges():
    step = torch.zeros(1, 1, 8, 8)
    step[..., 4:] = 1.0  # a vertical edge
    flat_r = torch.full((1, 3, 8, 8), 0.5)
    edged_r = 0.2 + 0.6 * step.expand(1, 3, 8, 8)  # the same edge in the reflectance
    assert illumination_smoothness(torch.full((1, 1, 8, 8), 0.3), edged_r) == 0
    # one horizontal difference of 1 per row, over 8 x 7 horizontal differences
    assert illumination_smoothness(step, flat_r) == pytest.approx(8 / 56)
    assert illumination_smoothness(step, edged_r) == pytest.approx(8 / 56 * np.exp(-6), rel=1e-4)


def test_decomposition_loss_weights_the_cross_terms():
    shape = (1, 1, 4, 4)
    r = torch.full((1, 3, 4, 4), 0.5)
    l_low, l_normal = torch.full(shape, 0.4), torch.full(shape, 0.8)
    low, normal = torch.full((1, 3, 4, 4), 0.2), torch.full((1, 3, 4, 4), 0.4)
    total, _ = decomposition_loss(low, normal, (r, l_low), (r, l_normal))
    assert total == pytest.approx(0, abs=1e-7)  # a perfect, shared decomposition
    # S_normal off by 0.1: its own term counts fully, the cross term R_low * L_normal by 1e-3
    total, terms = decomposition_loss(low, normal + 0.1, (r, l_low), (r, l_normal))
    assert terms["recon"] == pytest.approx(0.1 * 1.001, rel=1e-4)
    # different reflectances cost 0.01 times their L1 distance (and two more cross terms)
    _, terms = decomposition_loss(low, normal, (r + 0.1, l_low), (r, l_normal))
    assert terms["equal_r"] == pytest.approx(0.01 * 0.1, rel=1e-4)


def test_relight_loss_is_l1_of_the_recombination_plus_smoothness():
    r = torch.full((1, 3, 6, 6), 0.5)
    relit = torch.full((1, 1, 6, 6), 0.6)
    total, terms = relight_loss(torch.full((1, 3, 6, 6), 0.4), r, relit)
    assert terms["relight"] == pytest.approx(0.1) and terms["smooth"] == 0
    assert total == pytest.approx(0.1)
    with pytest.raises(ValueError, match="stage"):
        RetinexLoss("both")


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _unchanged(module: torch.nn.Module, before: list[torch.Tensor]) -> bool:
    return all(torch.equal(a, b) for a, b in zip(module.parameters(), before, strict=True))


@pytest.mark.parametrize("case", ["retinexnet-decom", "retinexnet-relight", "dran-l1"])
def test_a_few_steps_lower_each_loss_on_a_fixed_batch(pair, case):
    low, clean = pair
    torch.manual_seed(0)
    if case == "dran-l1":
        model = DRAN(width=8, layers=2)
        loss_fn = GeneratorLoss(Objective(pixel=True, feature=False, adversarial=False))
        betas = (0.5, 0.99)
    else:
        model = RetinexNet(width=8, decom_layers=2)
        loss_fn = RetinexLoss(case.split("-")[1])
        betas = (0.9, 0.999)
    opt = torch.optim.Adam(model.parameters(), betas=betas)
    frozen = model.relight_net if case == "retinexnet-decom" else getattr(model, "decom", None)
    before = _params(frozen) if frozen is not None else None
    history = [
        train_step(model, None, opt, None, loss_fn, low, clean, lr=3e-3)["loss"] for _ in range(15)
    ]
    assert np.isfinite(history).all()
    assert history[-1] < 0.9 * history[0], history
    if frozen is not None:  # each RetinexNet stage trains its own half only
        assert _unchanged(frozen, before)


def test_retinex_decomposition_reconstructs_its_input():
    # A short decomposition fit on one image and its degraded twin: R * L must give both back.
    normal = _astronaut(48)
    low = degrade(normal, "paper", seed=0)
    low_t, normal_t = _tensor(low), _tensor(normal)
    torch.manual_seed(0)
    net = RetinexNet(width=32)
    opt = torch.optim.Adam(net.decom.parameters())
    steps = 400
    for step in range(steps):
        opt.param_groups[0]["lr"] = 2e-3 if step < 300 else 2e-4  # settle at the end
        opt.zero_grad()
        loss, _ = decomposition_loss(low_t, normal_t, net.decompose(low_t), net.decompose(normal_t))
        loss.backward()
        opt.step()
    with torch.no_grad():
        scores = {
            name: psnr(image, _image(torch.mul(*net.decompose(tensor))))
            for name, image, tensor in [("low", low, low_t), ("normal", normal, normal_t)]
        }
    print(scores)
    assert min(scores.values()) >= 25, scores


# --- registered methods -----------------------------------------------------------------------


SMALL = {"retinexnet": {"width": 8, "decom_layers": 2}, "dran": {"width": 8, "layers": 2}}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_registered_method_runs_exported_weights(monkeypatch, tmp_path, name):
    assert name in list_methods("deep") and method_info(name)["weights"] == name
    torch.manual_seed(0)
    net = build_net({"arch": name, **SMALL[name]})
    if name == "dran":  # give BatchNorm running statistics to carry over
        net.train()
        with torch.no_grad():
            net(torch.rand(4, 3, 16, 16))
    net.eval()
    export_weights(net, tmp_path / f"{name}.safetensors", steps=1)
    monkeypatch.setattr("dpe.weights.WEIGHTS_DIR", tmp_path)
    method = create_method(name)
    image = np.random.default_rng(0).random((21, 30, 3)).astype(np.float32)
    with torch.no_grad():
        expected = _image(net(_tensor(image)))
    out = method.enhance(image)
    assert out.shape == image.shape and out.dtype == np.float32
    assert np.abs(out - expected).max() < 5e-3  # fp16 storage costs little
