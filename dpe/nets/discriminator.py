"""SRGAN-style discriminator, as the DPE paper's official code trains it against DPENet.

Eight 3x3 convs (64, 64/2, 128, 128/2, 256, 256/2, 512, 512/2; "/2" is stride 2), batch norm on
all but the first, swish activations; then a 1x1 conv to one channel, a global average and a
sigmoid: one probability per image that it is a clean one. Fully convolutional, so any input
size works.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


class ConvBlock(nn.Module):
    """conv3x3 -> (batch norm) -> swish."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: bool):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)
        self.norm = nn.BatchNorm2d(c_out) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.norm(self.conv(x)))  # silu is swish: x * sigmoid(x)


@dataclass
class DiscriminatorConfig:
    width: int = 64  # channels of the first conv; the stages are 1, 2, 4 and 8 times it


class Discriminator(nn.Module):
    """Maps a [0, 1] image batch (B, 3, H, W) to the probability (B, 1) that each is clean."""

    def __init__(self, config: DiscriminatorConfig | None = None, **kwargs):
        super().__init__()
        self.config = config or DiscriminatorConfig(**kwargs)
        w = self.config.width
        blocks, c_in = [], 3
        for i, c_out in enumerate((w, w, 2 * w, 2 * w, 4 * w, 4 * w, 8 * w, 8 * w)):
            blocks.append(ConvBlock(c_in, c_out, stride=1 + i % 2, norm=i > 0))
            c_in = c_out
        self.features = nn.Sequential(*blocks)
        self.head = nn.Conv2d(c_in, 1, 1)

    def config_dict(self) -> dict:
        return {"arch": "discriminator", **asdict(self.config)}

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        """The pre-sigmoid scores (B, 1); losses use these for numerical stability."""
        x = self.features(image * 2 - 1)  # (B, 8w, H/16, W/16); [-1, 1] as the official code
        return self.head(x).mean(dim=(2, 3))  # (B, 1): global average of per-patch scores

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(image))
