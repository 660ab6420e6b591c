"""RetinexNet: Wei, Wang, Yang and Liu, "Deep Retinex Decomposition for Low-Light Enhancement"
(BMVC 2018). A Decom-Net splits an image I into reflectance R and illumination L (I ≈ R · L);
an Enhance-Net ("relight") maps [R, L] of a low-quality image to a corrected illumination L̂, and
the output is S = R · L̂.

The paper optionally denoises R with BM3D before recombining; that step is left out here (these
are torch modules only, and DPE's comparison runs every learned method without a denoiser).

Read top to bottom: the two sub-networks, then the config, then the network.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad the bottom and right of ``x`` so H and W are multiples of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not (ph or pw):
        return x
    # reflect padding needs pad < size; replicate covers the tiny images it cannot
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


class DecomNet(nn.Module):
    """Image (B, 3, H, W) -> reflectance R (B, 3, H, W) and illumination L (B, 1, H, W), in (0, 1).

    Input is [max over channels, image]; a 9x9 conv without activation gathers a wide context,
    then ``layers`` 3x3 conv + ReLU, then a 3x3 conv to the four output channels.
    """

    def __init__(self, width: int, layers: int):
        super().__init__()
        self.conv_in = nn.Conv2d(4, width, 9, padding=4)  # the paper's 3 * kernel size
        self.body = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in range(layers))
        self.conv_out = nn.Conv2d(width, 4, 3, padding=1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([image.amax(dim=1, keepdim=True), image], dim=1)  # (B, 4, H, W)
        feat = self.conv_in(x)  # (B, width, H, W), no activation (as the paper's code)
        for conv in self.body:
            feat = F.relu(conv(feat), inplace=True)
        out = self.conv_out(feat)  # (B, 4, H, W)
        return torch.sigmoid(out[:, :3]), torch.sigmoid(out[:, 3:])


class RelightNet(nn.Module):
    """[R, L] -> raw corrected illumination L̂ (B, 1, H, W), unbounded.

    An encoder of three stride-2 convs and a decoder of three (nearest upsample, conv, ReLU)
    steps with additive skips; the three decoder outputs are brought to full size, concatenated
    and fused by a 1x1 conv, then a 3x3 conv gives L̂. Any H, W: padded to a multiple of 8.
    """

    multiple = 8  # three stride-2 convs

    def __init__(self, width: int):
        super().__init__()
        self.conv_in = nn.Conv2d(4, width, 3, padding=1)
        self.down = nn.ModuleList(nn.Conv2d(width, width, 3, stride=2, padding=1) for _ in range(3))
        self.up = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in range(3))
        self.fuse = nn.Conv2d(3 * width, width, 1)
        self.conv_out = nn.Conv2d(width, 1, 3, padding=1)

    def forward(self, reflectance: torch.Tensor, illumination: torch.Tensor) -> torch.Tensor:
        h, w = reflectance.shape[-2:]
        x = _pad_to_multiple(torch.cat([reflectance, illumination], dim=1), self.multiple)
        feats = [self.conv_in(x)]  # (B, width, H', W'), no activation (as the paper's code)
        for down in self.down:
            feats.append(F.relu(down(feats[-1])))  # H'/2, H'/4, H'/8
        feat, decoded = feats[3], []
        for i, conv in enumerate(self.up):
            skip = feats[2 - i]  # H'/4, H'/2, H'
            up = F.interpolate(feat, size=skip.shape[-2:], mode="nearest")
            feat = F.relu(conv(up)) + skip  # not in place: ReLU backward needs its output
            decoded.append(feat)
        size = decoded[-1].shape[-2:]
        gathered = torch.cat(
            [F.interpolate(d, size=size, mode="nearest") for d in decoded[:2]] + decoded[2:],
            dim=1,
        )  # (B, 3 * width, H', W')
        out = self.conv_out(self.fuse(gathered))  # (B, 1, H', W'); no activation on either
        return out[..., :h, :w]


@dataclass
class RetinexNetConfig:
    width: int = 64  # features of both sub-networks (paper: 64)
    decom_layers: int = 5  # 3x3 conv + ReLU layers of the Decom-Net (paper: 5)


class RetinexNet(nn.Module):
    """Maps a [0, 1] image batch (B, 3, H, W) to its enhanced version R · L̂, same shape, in [0, 1].

    :meth:`decompose` and :meth:`relight` expose the two stages (training uses them directly).
    """

    multiple = 8  # the relight net pads to a multiple of 8 itself; tiles aligned to it pad none

    def __init__(self, config: RetinexNetConfig | None = None, **kwargs):
        super().__init__()
        self.config = config or RetinexNetConfig(**kwargs)
        self.decom = DecomNet(self.config.width, self.config.decom_layers)
        self.relight_net = RelightNet(self.config.width)

    def config_dict(self) -> dict:
        return {"arch": "retinexnet", **asdict(self.config)}

    def decompose(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reflectance (B, 3, H, W) and illumination (B, 1, H, W) of a [0, 1] image, in (0, 1)."""
        return self.decom(image)

    def relight(self, reflectance: torch.Tensor, illumination: torch.Tensor) -> torch.Tensor:
        """The corrected illumination L̂ (B, 1, H, W), raw: the relight loss sees it unclipped."""
        return self.relight_net(reflectance, illumination)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        reflectance, illumination = self.decompose(image)
        return (reflectance * self.relight(reflectance, illumination)).clamp(0, 1)
