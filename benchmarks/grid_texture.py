"""How much fixed-period grid texture does each method add? A table per period.

    python benchmarks/grid_texture.py [--images data/gallery-set] [--methods dpe dpe-s dpe-g ...]
                                      [--random-init dpenet:64 dpenet:32] [--seed 0]

DPENet upsamples with 2×2, stride-2 transposed convolutions (four decoder stages): each output
pixel of a 2×2 block gets its own kernel tap, so a network can paint a pattern that repeats
every 2, 4, 8 or 16 pixels whatever the content. To see it, every output is cut into p×p blocks
on the grid the network works on (its top-left corner) and the blocks are averaged: image
content averages out, a pattern tied to the grid does not. The score is the standard deviation
of that average p×p block, in 8-bit luma levels, of what the method added (output minus input)
after a Gaussian high-pass at the period's scale, which removes the content and exposure change
that a global method also adds; a method that adds no grid scores about 0. Reported for flat
gray inputs (256², levels 0.2, 0.5, 0.8: no content at all, so whatever pattern comes out is
the network's own), the clean images and their degraded twins (``paper`` preset, ``--seed``),
median over images.

``--random-init`` adds untrained networks (``arch:width``), whose pattern comes from the
architecture alone: if a trained network's pattern is far above its untrained twin's, training
put it there.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dpe._image import LUMA  # noqa: E402
from dpe.datasets import degraded_twin, find_images  # noqa: E402
from dpe.io import load_image  # noqa: E402

PERIODS = (2, 4, 8, 16)


def grid_amplitude(added: np.ndarray, period: int) -> float:
    """Std (8-bit levels) of the mean p×p block of ``added`` (H, W), on the top-left grid,
    after removing what varies slower than the period (content, exposure)."""
    from scipy.ndimage import gaussian_filter

    added = added - gaussian_filter(added, sigma=period, mode="reflect")
    h, w = (s - s % period for s in added.shape)
    blocks = added[:h, :w].reshape(h // period, period, w // period, period)
    template = blocks.mean(axis=(0, 2))
    return float(template.std() * 255)


def luma(image: np.ndarray) -> np.ndarray:
    return image[..., :3] @ np.asarray(LUMA, dtype=np.float32)


def _method(spec: str):
    if ":" not in spec:
        from dpe.methods import get_method

        return get_method(spec)
    import torch

    from dpe.methods.deep import TorchMethod
    from dpe.nets import build_net

    arch, width = spec.split(":")
    torch.manual_seed(0)
    return TorchMethod(spec, spec, build_net({"arch": arch, "width": int(width)}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=ROOT / "data" / "gallery-set")
    parser.add_argument(
        "--methods", nargs="+", default=["identity", "autocontrast", "dpe", "dpe-s", "dpe-g"]
    )
    parser.add_argument("--random-init", nargs="*", default=["dpenet:64", "dpenet:32"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    items = find_images([args.images])
    clean = [load_image(item.path) for item in items]
    flat = [np.full((256, 256, 3), level, np.float32) for level in (0.2, 0.5, 0.8)]
    inputs = {
        "flat gray (0.2, 0.5, 0.8)": flat,
        "clean": [c.image for c in clean],
        "degraded": [
            degraded_twin(c.image, item.relpath, preset="paper", seed=args.seed, gray=c.gray)
            for c, item in zip(clean, items, strict=True)
        ],
    }
    specs = list(args.methods) + list(args.random_init)
    print(f"{len(items)} images from {args.images}; median over images, 8-bit luma levels\n")
    header = " | ".join(f"p={p}" for p in PERIODS)
    for kind, images in inputs.items():
        print(f"**{kind} inputs**\n\n| method | {header} |\n|---|" + "---|" * len(PERIODS))
        for spec in specs:
            method = _method(spec)
            scores = []
            for image in images:
                out = method.enhance(image)
                added = luma(out) - luma(image)
                scores.append([grid_amplitude(added, p) for p in PERIODS])
            median = np.median(np.asarray(scores), axis=0)
            name = f"{spec} (random init)" if ":" in spec else spec
            print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in median) + " |")
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
