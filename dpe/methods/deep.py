"""Deep methods: a torch network behind the registry's ``enhance`` interface.

Inference runs under ``torch.inference_mode``, channels-last, on every available core, and
images above ``TILE_ABOVE_MP`` megapixels are processed in overlapping tiles blended with
linear ramps, so memory stays bounded and no seam shows.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from typing import TYPE_CHECKING

import numpy as np

from dpe.methods import register_method

if TYPE_CHECKING:
    import torch
    from torch import nn

# torch, the networks and the weights loader are imported when a deep method is first built,
# so the classic methods (``python -m dpe enhance --method clahe``, ``python -m dpe methods``)
# start without loading torch (about 2.5 s on the 2-core development machine).

log = logging.getLogger(__name__)

TILE_ABOVE_MP = 1.0  # megapixels; larger images are tiled
TILE = 512  # tile side in pixels, a multiple of 16 so DPENet pads nothing inside a tile
OVERLAP = 128  # pixels shared by neighbouring tiles; wide enough that seams fall below 1e-3


def _cores() -> int:
    # A worker given a share of the machine keeps to it (Ray sets OMP_NUM_THREADS to an
    # actor's CPUs); the same thread count gives the same floats, so the same output bytes.
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:
        return int(threads)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    if size <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, size - tile, step))
    return starts + [size - tile]


def _ramp(length: int, overlap: int, fade_start: bool, fade_end: bool) -> np.ndarray:
    """1-D blending weight: rises over ``overlap`` pixels at an inner edge, flat elsewhere."""
    w = np.ones(length, np.float32)
    ramp = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
    n = min(overlap, length)
    if fade_start:
        w[:n] = np.minimum(w[:n], ramp[:n])
    if fade_end:
        w[length - n :] = np.minimum(w[length - n :], ramp[:n][::-1])
    return w


def run_tiled(fn, image: np.ndarray, *, tile: int = TILE, overlap: int = OVERLAP) -> np.ndarray:
    """Apply ``fn`` (H, W, 3) -> (H, W, 3) tile by tile and blend the overlaps linearly."""
    if not 0 < overlap < tile:
        raise ValueError(f"overlap must be in (0, tile); got overlap={overlap}, tile={tile}.")
    h, w = image.shape[:2]
    out = np.zeros_like(image, dtype=np.float32)
    weight = np.zeros((h, w, 1), np.float32)
    ys, xs = _starts(h, tile, overlap), _starts(w, tile, overlap)
    for y in ys:
        for x in xs:
            patch = image[y : y + tile, x : x + tile]
            ph, pw = patch.shape[:2]
            wy = _ramp(ph, overlap, y > 0, y + ph < h)
            wx = _ramp(pw, overlap, x > 0, x + pw < w)
            wmap = (wy[:, None] * wx[None, :])[..., None]
            out[y : y + ph, x : x + pw] += fn(patch) * wmap
            weight[y : y + ph, x : x + pw] += wmap
    return out / weight


class TorchMethod:
    """A registry method backed by a torch network (weights resolved by name)."""

    def __init__(self, name: str, label: str, net: nn.Module):
        import torch

        self.name = name
        self.label = label
        self.net = net.eval().to(memory_format=torch.channels_last)
        self._lock = threading.Lock()  # torch intra-op threads are shared; run one at a time

    @classmethod
    def from_weights(cls, name: str, weights: str | None = None) -> TorchMethod:
        """The registered method ``name`` (its label from the registry) with its weights."""
        from dpe.methods import method_info
        from dpe.nets import build_net
        from dpe.weights import load_weights, resolve_weights

        state, config, _ = load_weights(resolve_weights(weights or name))
        net = build_net(config)
        net.load_state_dict(state, strict=True)  # a renamed or missing key is an error
        return cls(name, method_info(name)["label"], net)

    def to(self, device: str | torch.device) -> TorchMethod:
        """Run the network on ``device`` (e.g. ``"cuda"`` in a GPU worker); images stay numpy."""
        self.net.to(device)
        return self

    def _tensor(self, image: np.ndarray) -> torch.Tensor:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]  # (1, 3, H, W)
        device = next(self.net.parameters()).device
        return x.to(device).contiguous(memory_format=torch.channels_last)

    def _forward(self, image: np.ndarray, **kwargs) -> np.ndarray:
        import torch

        threads = _cores()
        if torch.get_num_threads() != threads:
            # Set on the first run and then left alone, unless something changed the
            # process-wide count (OMP_NUM_THREADS, another model, a training loop): the same
            # thread count gives the same floats, so the same output bytes.
            torch.set_num_threads(threads)
        with torch.inference_mode():
            y = self.net(self._tensor(image), **kwargs)[0].permute(1, 2, 0)  # (H, W, 3)
            return y.float().clamp_(0, 1).cpu().numpy().astype(np.float32, copy=False)

    def enhance(self, image: np.ndarray, *, tile: int | None = None, **options) -> np.ndarray:
        """Enhance a float32 (H, W, 3) image; tiles above ``TILE_ABOVE_MP`` megapixels."""
        if options:
            raise ValueError(f"{self.name} takes no options {sorted(options)}; only tile=.")
        h, w = image.shape[:2]
        with self._lock:
            if tile is None and h * w <= TILE_ABOVE_MP * 1e6:
                out = self._forward(image)
            else:
                # Pad once as the network would pad the whole image, so border tiles see the
                # same reflected context as an untiled run, then tile and crop back.
                m = getattr(self.net, "multiple", 1)
                padded = np.pad(image, ((0, (-h) % m), (0, (-w) % m), (0, 0)), mode="reflect")
                forward = self._forward
                if hasattr(self.net, "global_params"):
                    import torch

                    # DPE-G: the global correction is read once from the whole image and
                    # shared by every tile, so tiles cannot disagree on brightness
                    with torch.inference_mode():
                        params = self.net.global_params(self._tensor(image))
                    forward = functools.partial(self._forward, params=params)
                out = run_tiled(forward, padded, tile=tile or TILE)[:h, :w]
        return out  # dpe.methods.CheckedMethod keeps a grayscale source gray


def _register(name: str, *, label: str, doc: str):
    """Register the deep method ``name``, whose weights file has the same name."""

    def factory(**kwargs) -> TorchMethod:
        return TorchMethod.from_weights(name, **kwargs)

    factory.__name__ = factory.__qualname__ = name.replace("-", "_")
    factory.__doc__ = doc
    return register_method(name, label=label, kind="deep", weights=name)(factory)


dpe = _register(
    "dpe",
    label="DPE (paper reproduction)",
    doc="DPENet at the paper's width (64), trained with the paper's objective.",
)
dpe_s = _register(
    "dpe-s",
    label="DPE small (paper network, width 32)",
    doc="DPENet at width 32: about 4x cheaper than the paper's width.",
)
dpe_g = _register(
    "dpe-g",
    label="DPE-G (learned exposure stretch)",
    doc="DPE-G v2 with the 'stretch' head (dpe.nets.dpeg2): from the whole image the network "
    "says where its 0.5% and 99.5% luminance quantiles go; its local residual is not trained "
    "yet (skipped). Until 2026-12-02 'dpe-g' was DPE-G v1 (DPENet plus a global path), retired "
    "because this model is ahead of it on every modality and on clean inputs.",
)
dpe_g2 = _register(
    "dpe-g2",
    label="DPE-G2 (learned exposure correction)",
    doc="DPE-G v2 (dpe.nets.dpeg2): a learned global exposure correction, then a DPENet residual "
    "that starts at zero (its local stage is not trained yet, so it is skipped).",
)
retinexnet = _register(
    "retinexnet",
    label="RetinexNet (Wei et al. 2018)",
    doc="RetinexNet (Wei et al., BMVC 2018), without its optional BM3D step.",
)
dran = _register(
    "dran",
    label="DRAN (Sharif et al. 2020)",
    doc="DRAN (Sharif et al., Mathematics 2020), the residual denoiser.",
)
