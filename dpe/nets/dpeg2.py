"""DPE-G v2: a learned global exposure correction, then DPENet as a zero-initialised residual.

What the first DPE-G taught (README, model card): the degradations this project undoes are
nearly an affine intensity map per image (brightness, then a blend toward the mean) plus weak
noise, so global exposure is most of the error, and a network that leaves a good image alone
must *start* by leaving it alone. This version is built so that it does:

1. **Global path**: luminance quantiles (20 levels), mean, spread, the share of black and white
   pixels and the per-channel mean offsets of a nearest-neighbour subsample of the whole image
   feed a small MLP that predicts one log-gain and one offset. The correction is
   ``gain * (x - mean) + mean + offset``, the same for the three channels (the degradation is
   channel-symmetric), so colour balance is kept and a gray image stays gray. The MLP's last
   layer starts at zero: an untrained global path is the identity.
2. **Local path**: the paper's DPENet trunk (same blocks and widths) whose output convolution
   predicts a residual added to the globally corrected image; that convolution starts at zero,
   so an untrained local path is the identity too, and no texture exists until evidence for it
   does.

Start = identity: training pulls away from it only where the data asks. The global path costs
the same at any size; :meth:`DPEG2.global_params` can be computed once on a whole image and
passed to every tile.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dpe._image import LUMA
from dpe.nets.dpenet import DPENet, DPENetConfig

SAMPLE = 128  # statistics read at most SAMPLE**2 pixels, subsampled without averaging
LEVELS = 20  # luminance quantiles
HEADS = ("gain", "stretch")
# the tails that feature set 3 reads: how far the extremes sit from these quantiles
TAILS = (0.001, 0.002, 0.005, 0.01, 0.02)
N_FEATURES = {1: LEVELS + 2 + 2 + 3, 2: LEVELS + 2 + 2 + 3 + 4}  # by DPEG2Config.features
N_FEATURES[3] = N_FEATURES[2] + 2 * len(TAILS)


@dataclass
class DPEG2Config:
    width: int = 64  # the local DPENet's base width (paper: 64)
    hidden: int = 64  # the global MLP's width
    # 1: quantiles, mean, spread, black/white shares, colour cast; 2: also the logarithms of
    # three quantile spans and of the mean, so that a stretch (gain = 1 / span) is linear in them;
    # 3: also the shape of both tails (was the image clipped at black or white by a window?)
    features: int = 1
    # how the MLP's two outputs become the correction: "gain" (a log gain and an offset around
    # the mean) or "stretch" (where the 0.5% and 99.5% luminance quantiles go: a 1/span gain
    # that an MLP need not approximate); both are the identity at zero output
    head: str = "gain"

    def __post_init__(self):
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}; got {self.head!r}.")


def _sample(x: torch.Tensor) -> torch.Tensor:
    """(B, C, N): every s-th row and column, N about SAMPLE**2 at most."""
    h, w = x.shape[-2:]
    s = max(1, int(((h * w) / SAMPLE**2) ** 0.5 + 0.999))
    return x[..., ::s, ::s].flatten(2)


def global_features(x: torch.Tensor, version: int = 1) -> torch.Tensor:
    """(B, N_FEATURES[version]) whole-image statistics of a [0, 1] batch (B, 3, H, W)."""
    pixels = _sample(x)  # (B, 3, N)
    luma = (pixels * pixels.new_tensor(LUMA).view(1, 3, 1)).sum(1)  # (B, N)
    levels = torch.linspace(0.005, 0.995, LEVELS, device=x.device, dtype=x.dtype)
    q = torch.quantile(luma, levels, dim=1).T  # (B, LEVELS)
    mean, std = luma.mean(1, keepdim=True), luma.std(1, keepdim=True)
    dark = (luma < 0.02).float().mean(1, keepdim=True)
    bright = (luma > 0.98).float().mean(1, keepdim=True)
    cast = pixels.mean(2) - mean  # (B, 3): colour, not exposure
    feats = [q * 2 - 1, mean * 2 - 1, std * 4, dark, bright, cast * 4]
    if version >= 2:
        spans = [q[:, -1 - i : LEVELS - i] - q[:, i : i + 1] for i in (0, 2, 5)]  # 0.5-99.5, ...
        logs = [torch.log(s.clamp_min(1e-3)) / 3 for s in spans]
        feats += [*logs, torch.log(mean.clamp_min(1e-3)) / 3]
    if version >= 3:
        feats.append(tail_features(luma, q[:, :1], q[:, -1:]))
    return torch.cat(feats, dim=1)


def tail_features(luma: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """(B, 2 * len(TAILS)): the gaps between each extreme and its nearby quantiles, over the span.

    A display window clips: an image windowed to its own range has a few per cent of its
    pixels at exactly black or white, and a brightness/contrast change moves that spike but
    keeps it a spike, so in the degraded image the top quantiles bunch up against the maximum.
    A tile cut from a larger picture, or a volume windowed as a whole, has thin tails instead.
    This is the one statistic that tells "the clean image reached white" from "it did not",
    which the quantile levels above (5% apart) cannot see.
    """
    levels = luma.new_tensor(TAILS)
    low_q, high_q = torch.quantile(luma, torch.cat([levels, 1 - levels]), dim=1).T.chunk(2, dim=1)
    span = (hi - lo).clamp_min(1e-3)
    top = (luma.amax(1, keepdim=True) - high_q) / span
    bottom = (low_q - luma.amin(1, keepdim=True)) / span
    return (torch.cat([top, bottom], dim=1) * 4).clamp(0.0, 4.0)


class GlobalPath(nn.Module):
    """Whole-image statistics -> (log gain, offset), (B, 2); zero output at initialisation."""

    def __init__(self, hidden: int = 64, features: int = 1):
        super().__init__()
        self.features = features
        self.mlp = nn.Sequential(
            nn.Linear(N_FEATURES[features], hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, 2),
        )
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(global_features(x, self.features))


class LocalResidual(DPENet):
    """DPENet's trunk with a zero-initialised output convolution that predicts a residual."""

    def __init__(self, config: DPENetConfig):
        super().__init__(config)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(image, (0, pw, 0, ph), mode=mode) * 2 - 1
        feat = self.conv_in(x)
        skips = []
        for enc, gate, down in zip(self.enc, self.gates, self.down, strict=True):
            feat = enc(feat)
            skips.append(gate(feat))
            feat = down(feat)
        feat = self.bottleneck(feat)
        for i, up in enumerate(self.up):
            feat = up(feat) + skips[3 - i]
            if i < 3:
                feat = self.dec[i](feat)
        return self.conv_out(feat)[..., :h, :w] / 2  # on the [0, 1] scale


class DPEG2(nn.Module):
    """Maps a [0, 1] image batch (B, 3, H, W) to its enhanced version, same shape and range."""

    multiple = DPENet.multiple

    def __init__(self, config: DPEG2Config | None = None, **kwargs):
        super().__init__()
        self.config = config or DPEG2Config(**kwargs)
        self.glob = GlobalPath(self.config.hidden, self.config.features)
        self.local = LocalResidual(DPENetConfig(width=self.config.width))

    def config_dict(self) -> dict:
        return {"arch": "dpeg2", **asdict(self.config)}

    def local_is_zero(self) -> bool:
        """Whether the local residual's output convolution is still exactly zero."""
        conv = self.local.conv_out
        return not (conv.weight.any() or conv.bias.any())

    def global_params(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3): the image's luminance mean, the log gain and the offset."""
        luma = (_sample(image) * image.new_tensor(LUMA).view(1, 3, 1)).sum(1)
        mean, out = luma.mean(1, keepdim=True), self.glob(image)
        if self.config.head == "gain":
            return torch.cat([mean, out], dim=1)
        # "stretch": the 0.5% and 99.5% quantiles (lo, hi) go to lo + out0 and hi + out1
        lo, hi = torch.quantile(luma, luma.new_tensor([0.005, 0.995]), dim=1)  # (B,) each
        lo, hi, mean = lo[:, None], hi[:, None], mean
        span = (hi - lo).clamp_min(1e-3)
        target_lo, target_hi = lo + out[:, :1], hi + out[:, 1:]
        gain = ((target_hi - target_lo) / span).clamp(math.exp(-3.0), math.exp(5.0))
        # gain * (x - mean) + mean + offset sends lo to target_lo
        offset = target_lo - gain * (lo - mean) - mean
        return torch.cat([mean, gain.log(), offset], dim=1)

    @staticmethod
    def apply_global(image: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        mean, log_gain, offset = (params[:, i].view(-1, 1, 1, 1) for i in range(3))
        gain = log_gain.clamp(-3.0, 5.0).exp()  # 1/20x to 150x: the degradation's range
        return ((image - mean) * gain + mean + offset).clamp(0.0, 1.0)

    def forward(
        self, image: torch.Tensor, params: torch.Tensor | None = None, *, local: bool = True
    ) -> torch.Tensor:
        """``params`` from :meth:`global_params` of the whole image, e.g. for tiled runs."""
        if params is None:
            params = self.global_params(image)
        base = self.apply_global(image, params)
        if not local or (not self.training and self.local_is_zero()):
            return base  # at inference an untrained residual adds exactly nothing: skip it
        return (base + self.local(base)).clamp(0.0, 1.0)
