"""DRAN: the dynamic residual attention network of Sharif, Naqvi and Biswas, "Learning Medical
Image Denoising with Deep Dynamic Residual Attention Network" (Mathematics 2020).

A full-resolution network that predicts the residual (the noise) of its input: the output is
input - prediction. Two bugs of the public code are not reproduced: its forward pass reuses the
first block three times (here each block is its own) and its dynamic-conv bias is never
initialised (here it starts at zero). Its data loader normalises images before the network; here
the network maps [0, 1] to [-1, 1] itself, as DPENet does.

Read top to bottom: blocks, then the config, then the network.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dpe.nets.dpenet import GatedConv

# The noise gate is DPENet's gated conv exactly: reflect pad, conv * sigmoid(conv), LeakyReLU(0.2).
NoiseGate = GatedConv


class KernelAttention(nn.Module):
    """Per-image mixing weights of K kernels: global average pool -> FC -> ReLU -> FC -> softmax.

    The logits are divided by ``temperature`` before the softmax; a high temperature keeps the
    mix near uniform, so every kernel receives gradient early in training.
    """

    def __init__(self, channels: int, hidden: int, kernels: int, temperature: float):
        super().__init__()
        # the paper's 1x1 convs on a 1x1 map are fully connected layers; no biases, as its code
        self.fc1 = nn.Linear(channels, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, kernels, bias=False)
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.mean(dim=(2, 3))  # (B, C)
        z = self.fc2(F.relu(self.fc1(z)))  # (B, K)
        return torch.softmax(z / self.temperature, dim=1)


class DynamicConv(nn.Module):
    """3x3 conv (with bias) whose kernel is a per-image attention-weighted mix of K kernels."""

    def __init__(self, channels: int, kernels: int, hidden: int, temperature: float):
        super().__init__()
        self.kernels = kernels
        self.attention = KernelAttention(channels, hidden, kernels, temperature)
        # The K kernels stacked along the output axis, (K * C_out, C_in, 3, 3): a 4-D parameter,
        # because converting a model to channels_last (as inference does) rejects 5-D ones.
        self.weight = nn.Parameter(torch.empty(kernels * channels, channels, 3, 3))
        # fan_in is C_in * 9 for the stack as for each kernel: one call initialises all K alike
        nn.init.kaiming_uniform_(self.weight, nonlinearity="relu")
        self.bias = nn.Parameter(torch.zeros(kernels, channels))  # zero, not uninitialised

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        mix = self.attention(x)  # (B, K)
        weight = mix @ self.weight.reshape(self.kernels, -1)  # (B, C_out * C_in * 9)
        weight = weight.reshape(-1, c, 3, 3)  # (B * C_out, C_in, 3, 3): one kernel per image
        bias = (mix @ self.bias).reshape(-1)  # (B * C_out,)
        # each image is one group of a grouped conv, so each meets its own kernel
        out = F.conv2d(x.reshape(1, b * c, h, w), weight, bias, padding=1, groups=b)
        return out.reshape(b, -1, h, w)  # (B, C_out, H, W)


class DRABlock(nn.Module):
    """Dynamic residual attention block: Body(x) + NoiseGate(x).

    Body is ``layers`` times (dynamic conv, BatchNorm, ReLU).
    """

    def __init__(self, width: int, layers: int, kernels: int, hidden: int, temperature: float):
        super().__init__()
        body = []
        for _ in range(layers):
            body += [
                DynamicConv(width, kernels, hidden, temperature),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
        self.body = nn.Sequential(*body)
        self.gate = NoiseGate(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.gate(x)


@dataclass
class DRANConfig:
    width: int = 64  # features throughout (paper: 64)
    blocks: int = 3  # dynamic residual attention blocks (paper: 3)
    layers: int = 5  # dynamic conv + BatchNorm + ReLU per block (paper: 5)
    kernels: int = 4  # K, the kernels each dynamic conv mixes (paper: 4)
    reduction: int = 4  # attention hidden width = width // reduction (64 -> 16, as the paper)
    # Softmax temperature of the kernel attention, fixed. 34 is the public code's value; its
    # schedule to lower it (3 per call, down to 1) is never called by its training loop.
    temperature: float = 34.0


class DRAN(nn.Module):
    """Maps a [0, 1] image batch (B, 3, H, W) to its denoised version, same shape.

    In training mode the output is ``input - prediction`` unclipped (the L1 loss sees it as is);
    in eval mode it is clipped to [0, 1]. BatchNorm: call ``.eval()`` for inference.
    """

    multiple = 1  # no striding: any size runs as is
    min_side = 2  # the noise gate's reflect padding needs two pixels; smaller inputs replicate

    def __init__(self, config: DRANConfig | None = None, **kwargs):
        super().__init__()
        self.config = config or DRANConfig(**kwargs)
        c = self.config
        hidden = max(1, c.width // c.reduction)
        self.conv_in = nn.Conv2d(3, c.width, 3, padding=1, bias=False)
        self.blocks = nn.ModuleList(
            DRABlock(c.width, c.layers, c.kernels, hidden, c.temperature) for _ in range(c.blocks)
        )
        self.conv_out = nn.Conv2d(c.width, 3, 3, padding=1, bias=False)

    def config_dict(self) -> dict:
        return {"arch": "dran", **asdict(self.config)}

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        x = image * 2 - 1  # (B, 3, H, W) in [-1, 1]
        ph, pw = max(0, self.min_side - h), max(0, self.min_side - w)
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        feat = F.relu(self.conv_in(x), inplace=True)  # (B, width, H, W)
        for block in self.blocks:  # three distinct blocks (the public code reuses the first)
            feat = block(feat)
        noise = torch.tanh(self.conv_out(feat))  # (B, 3, H, W), the predicted residual
        out = ((x - noise + 1) / 2)[..., :h, :w]
        return out if self.training else out.clamp(0, 1)
