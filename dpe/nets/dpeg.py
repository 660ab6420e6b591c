"""DPE-G: the paper's DPENet plus a global path that sees the whole image.

The degradations this project undoes are mostly global: a brightness factor and a contrast blend
toward the image mean, drawn once per image. A fully convolutional network that sees 64-pixel
crops cannot tell how much of either was applied; a global path can. DPE-G splits the work:

1. **Statistics** of the whole image (per-channel quantiles, mean and spread, read from a
   nearest-neighbour subsample so noise statistics do not depend on the image size), and a
   small CNN on a fixed-size 64² thumbnail, feed an MLP that predicts a per-channel gain and
   offset.
2. The gain and offset act on the input after a fixed luminance percentile stretch (1st-99th,
   what ``autocontrast`` does). The MLP's last layer starts at zero, so an untrained global
   path *is* that stretch, and training learns where the stretch is wrong (dim fluorescence,
   images that never spanned the full range).
3. The paper's DPENet (unchanged blocks, any width) enhances the globally corrected image
   locally: noise, local contrast, texture.

The global path costs the same at any input size (a 64² thumbnail and a fixed pixel sample), and
:meth:`DPEG.global_params` can be computed once on a whole image and passed to every tile of a
tiled run, so tiles agree on the global correction.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dpe._image import LUMA
from dpe.nets.dpenet import DPENet, DPENetConfig

THUMB = 64  # side of the thumbnail the global CNN sees
SAMPLE = 128  # the statistics read at most SAMPLE**2 pixels, subsampled without averaging
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
STRETCH = (0.01, 0.99)  # the fixed luminance stretch the learned gain and offset start from
MIN_SPAN = 0.02  # a flat image is not stretched by more than 50x


@dataclass
class DPEGConfig:
    width: int = 64  # the local DPENet's base width (paper: 64)
    global_width: int = 32  # the thumbnail CNN's base width


def _luminance(x: torch.Tensor) -> torch.Tensor:
    w = x.new_tensor(LUMA).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)  # (B, 1, H, W)


def _sample(x: torch.Tensor) -> torch.Tensor:
    """(B, C, N) pixels of ``x``, every s-th row and column, N about SAMPLE**2 at most."""
    h, w = x.shape[-2:]
    s = max(1, int(((h * w) / SAMPLE**2) ** 0.5 + 0.999))
    return x[..., ::s, ::s].flatten(2)


def stretch_range(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, span) of the fixed luminance stretch, each (B, 1, 1, 1)."""
    q = torch.quantile(_sample(_luminance(x))[:, 0], x.new_tensor(STRETCH), dim=1)  # (2, B)
    low, high = q[0], q[1]
    span = (high - low).clamp_min(MIN_SPAN)
    return low.view(-1, 1, 1, 1), span.view(-1, 1, 1, 1)


def image_statistics(x: torch.Tensor) -> torch.Tensor:
    """(B, 3 * (len(QUANTILES) + 2)) per-channel quantiles, mean and standard deviation."""
    pixels = _sample(x)  # (B, 3, N)
    q = torch.quantile(pixels, pixels.new_tensor(QUANTILES), dim=2)  # (Q, B, 3)
    stats = [q.permute(1, 2, 0), pixels.mean(2, keepdim=True), pixels.std(2, keepdim=True)]
    return torch.cat(stats, dim=2).flatten(1)  # (B, 3 * (Q + 2))


class GlobalPath(nn.Module):
    """Whole-image statistics and a 64² thumbnail -> per-channel (log gain, offset), (B, 6)."""

    def __init__(self, width: int = 32):
        super().__init__()
        chans = [3, width, 2 * width, 2 * width, 4 * width]
        self.convs = nn.ModuleList(
            nn.Conv2d(chans[i], chans[i + 1], 3, stride=2, padding=1) for i in range(4)
        )  # 64 -> 32 -> 16 -> 8 -> 4
        n_stats = 3 * (len(QUANTILES) + 2)
        self.mlp = nn.Sequential(
            nn.Linear(2 * chans[-1] + n_stats, 128),
            nn.ReLU(inplace=True),
            nn.Linear(128, 64),
            nn.ReLU(inplace=True),
            nn.Linear(64, 6),
        )
        nn.init.zeros_(self.mlp[-1].weight)  # start as the plain percentile stretch
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        thumb = F.interpolate(
            x, size=(THUMB, THUMB), mode="bilinear", antialias=True, align_corners=False
        )
        feat = thumb * 2 - 1
        for conv in self.convs:
            feat = F.leaky_relu(conv(feat), 0.2)
        pooled = torch.cat([feat.mean((2, 3)), feat.amax((2, 3))], dim=1)  # (B, 2 * 4w)
        stats = image_statistics(x) * 2 - 1
        return self.mlp(torch.cat([pooled, stats], dim=1))  # (B, 6)


class DPEG(nn.Module):
    """Maps a [0, 1] image batch (B, 3, H, W) to its enhanced version, same shape and range."""

    multiple = DPENet.multiple

    def __init__(self, config: DPEGConfig | None = None, **kwargs):
        super().__init__()
        self.config = config or DPEGConfig(**kwargs)
        self.glob = GlobalPath(self.config.global_width)
        self.local = DPENet(DPENetConfig(width=self.config.width))

    def config_dict(self) -> dict:
        return {"arch": "dpeg", **asdict(self.config)}

    def global_params(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 8): stretch low and span, then the learned log gain (3) and offset (3)."""
        with torch.no_grad():
            low, span = stretch_range(image)
        return torch.cat([low.flatten(1), span.flatten(1), self.glob(image)], dim=1)

    @staticmethod
    def apply_global(image: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """The globally corrected image: stretch, then per-channel gain and offset."""
        low, span = params[:, 0].view(-1, 1, 1, 1), params[:, 1].view(-1, 1, 1, 1)
        gain = params[:, 2:5].exp().view(-1, 3, 1, 1)
        offset = params[:, 5:8].view(-1, 3, 1, 1)
        # bounded so a wild thumbnail cannot push the local net far outside its training range
        return ((image - low) / span * gain + offset).clamp(-0.5, 1.5)

    def forward(self, image: torch.Tensor, params: torch.Tensor | None = None) -> torch.Tensor:
        """``params`` from :meth:`global_params` of the whole image, e.g. for tiled runs."""
        if params is None:
            params = self.global_params(image)
        return self.local(self.apply_global(image, params))
