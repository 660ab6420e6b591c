import pytest
import torch

from dpe.nets import ARCHITECTURES, build_net
from dpe.nets.dpenet import DPENet

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# tiny variants keep the smoke tests fast
SMALL = {
    "dpenet": {"width": 8},
    "retinexnet": {"width": 8, "decom_layers": 2},
    "dran": {"width": 8, "layers": 2, "reduction": 1},  # attention hidden 8: 2 units can both die
    "dpeg": {"width": 8, "global_width": 8},
}


def test_dpenet_parameter_count_matches_paper():
    assert sum(p.numel() for p in DPENet().parameters()) == 4_486_987


def test_dpeg_parameter_count():
    # DPENet at the paper's width plus a 175,174-parameter global path
    assert sum(p.numel() for p in build_net({"arch": "dpeg"}).parameters()) == 4_662_161


def test_width_scales_stages():
    assert DPENet(width=32).config.widths == [32, 48, 64, 80, 96]
    assert sum(p.numel() for p in DPENet(width=32).parameters()) == 1_123_243


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_forward_any_size(arch):
    torch.manual_seed(0)
    net = build_net({"arch": arch, **SMALL.get(arch, {})}).eval()
    for h, w in [(37, 53), (16, 16), (5, 3), (64, 33)]:
        x = torch.rand(2, 3, h, w)
        with torch.no_grad():
            y = net(x)
        assert y.shape == x.shape
        assert torch.isfinite(y).all() and y.min() >= 0 and y.max() <= 1


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_backward_reaches_every_parameter(arch):
    torch.manual_seed(0)
    net = build_net({"arch": arch, **SMALL.get(arch, {})}).train()
    if arch in ("dpeg", "dpeg2"):
        # its global path's last layer starts at zero (no gradient behind it until it moves)
        torch.nn.init.normal_(net.glob.mlp[-1].weight, std=0.01)
    if arch == "dpeg2":  # so does the local residual's output convolution
        torch.nn.init.normal_(net.local.conv_out.weight, std=0.01)
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    torch.nn.functional.l1_loss(net(x), y).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing


def test_unknown_arch():
    with pytest.raises(ValueError, match="unknown architecture"):
        build_net({"arch": "nope"})
