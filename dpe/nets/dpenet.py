"""DPENet: the gated residual encoder-decoder of Sharif et al., "Deep Perceptual Enhancement for
Medical Image Analysis" (IEEE JBHI 2022), built as the paper's official code builds it, without
the modules that code defines but never calls.

Read top to bottom: blocks, then the config, then the network.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


class ResidualBlock(nn.Module):
    """conv3x3 -> PReLU -> conv3x3, plus the identity; no normalisation."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.PReLU()  # one shared slope, as in the official code
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in place on conv2's fresh output (autograd allows it): one full-size buffer less
        return self.conv2(self.act(self.conv1(x))).add_(x)


class GatedConv(nn.Module):
    """Reflect-padded conv3x3 gated by the sigmoid of a second conv3x3, then LeakyReLU(0.2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.feature = nn.Conv2d(channels, channels, 3)
        self.gate = nn.Conv2d(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (1, 1, 1, 1), mode="reflect")
        return F.leaky_relu(self.feature(x) * torch.sigmoid(self.gate(x)), 0.2, inplace=True)


class Down(nn.Module):
    """Stride-2 conv3x3 + ReLU: halves the resolution and widens the features."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x), inplace=True)


class Up(nn.Module):
    """ReLU(ConvTranspose2d 2x2, stride 2): doubles the resolution and narrows the features."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.ConvTranspose2d(c_in, c_out, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x), inplace=True)


@dataclass
class DPENetConfig:
    width: int = 64  # base width; stages are 1, 1.5, 2, 2.5 and 3 times it (paper: 64)

    @property
    def widths(self) -> list[int]:
        # 64 -> [64, 96, 128, 160, 192]; the last is the bottleneck
        return [self.width * k // 2 for k in (2, 3, 4, 5, 6)]


class DPENet(nn.Module):
    """Maps a [0, 1] image batch (B, 3, H, W) to its enhanced version, same shape and range."""

    multiple = 16  # four stride-2 stages: H and W are padded to a multiple of 2**4

    def __init__(self, config: DPENetConfig | None = None, **kwargs):
        super().__init__()
        self.config = config or DPENetConfig(**kwargs)
        w = self.config.widths
        self.conv_in = nn.Conv2d(3, w[0], 3, padding=1)
        self.enc = nn.ModuleList(ResidualBlock(c) for c in w[:4])
        self.gates = nn.ModuleList(GatedConv(c) for c in w[:4])
        self.down = nn.ModuleList(Down(w[i], w[i + 1]) for i in range(4))
        self.bottleneck = ResidualBlock(w[4])
        self.up = nn.ModuleList(Up(w[i + 1], w[i]) for i in reversed(range(4)))
        # a residual block after each of the first three decoder steps (widths 160, 128, 96)
        self.dec = nn.ModuleList(ResidualBlock(w[i]) for i in (3, 2, 1))
        self.conv_out = nn.Conv2d(w[0], 3, 1)

    def config_dict(self) -> dict:
        return {"arch": "dpenet", **asdict(self.config)}

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        # reflect padding needs pad < size; replicate covers the tiny images it cannot
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(image, (0, pw, 0, ph), mode=mode) * 2 - 1  # (B, 3, H', W') in [-1, 1]
        feat = self.conv_in(x)
        skips = []
        for enc, gate, down in zip(self.enc, self.gates, self.down, strict=True):
            feat = enc(feat)
            skips.append(gate(feat))  # kept for the decoder at this scale
            feat = down(feat)  # (B, C_next, H/2, W/2)
        feat = self.bottleneck(feat)  # (B, 3w, H'/16, W'/16)
        for i, up in enumerate(self.up):
            feat = up(feat) + skips[3 - i]  # not in place: ReLU backward needs its output
            if i < 3:
                feat = self.dec[i](feat)
        out = torch.tanh(self.conv_out(feat) + x)  # (B, 3, H', W') in (-1, 1)
        return ((out + 1) / 2)[..., :h, :w]
