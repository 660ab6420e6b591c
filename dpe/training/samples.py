"""Training data: tiles by group and source, patches drawn from them, and the validation set.

Both trainers (``dpe.train``, ``dpe.train_global``) draw tiles the same way: each group
(modality) equally often, then each source image within it, then a tile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dpe.datasets import degraded_twin, find_images
from dpe.degrade import degrade

Tiles = dict[str, dict[str, list[np.ndarray]]]  # group -> source -> uint8 (H, W, 3) tiles


def load_tiles(folder: str | Path, *, by_source: bool = False) -> Tiles:
    """Every image below ``folder`` as uint8 (H, W, 3), keyed by group (subfolder), then source.

    Without ``by_source`` each group holds one source, ``"all"``. With it, the source of each
    file is read from the ``manifest.csv`` that ``python -m dpe.data build`` writes next to
    ``folder``: the tiles of one photo or volume form one source.
    """
    from dpe.io import load_image

    sources = _manifest_sources(Path(folder)) if by_source else {}
    tiles: Tiles = {}
    for item in find_images([folder]):
        image = load_image(item.path).image
        source = sources.get(item.path.resolve(), "all")
        tiles.setdefault(item.group, {}).setdefault(source, []).append(
            (image * 255 + 0.5).astype(np.uint8)
        )
    if not tiles:
        raise ValueError(f"no training images below {folder}; build them with python -m dpe.data.")
    return tiles


def _manifest_sources(folder: Path) -> dict[Path, str]:
    """Image path -> source key, from ``folder``'s parent's manifest.csv."""
    import csv

    manifest = folder.resolve().parent / "manifest.csv"
    if not manifest.is_file():
        raise ValueError(
            f"--balance source needs {manifest} (written by python -m dpe.data build) to know "
            "which source each tile came from; use --balance group without it."
        )
    with manifest.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return {(manifest.parent / row["path"]).resolve(): row["source"] for row in rows}


def resize(image: np.ndarray, size: int) -> np.ndarray:
    x = torch.from_numpy(image).permute(2, 0, 1)[None]  # (1, 3, H, W)
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x[0].permute(1, 2, 0).clamp_(0, 1).numpy()


def sample_patch(tile: np.ndarray, crop: int, whole: bool, rng: np.random.Generator) -> np.ndarray:
    """A float32 (crop, crop, 3) patch of a uint8 tile: a random crop, or the whole tile resized.

    "Whole" takes the largest random square of the tile and resizes it to ``crop``; tiles
    smaller than ``crop`` are always taken whole. Then a random 90° rotation and flip.
    """
    h, w = tile.shape[:2]
    if whole or h < crop or w < crop:
        side = min(h, w)
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        patch = tile[y : y + side, x : x + side].astype(np.float32) / 255
        patch = resize(patch, crop) if side != crop else patch
    else:
        y, x = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
        patch = tile[y : y + crop, x : x + crop].astype(np.float32) / 255
    patch = np.rot90(patch, k=int(rng.integers(4)))
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    return np.ascontiguousarray(patch, dtype=np.float32)


def draw_tile(tiles: Tiles, rng: np.random.Generator) -> np.ndarray:
    """One tile: each group equally often, then each source within it, then a tile.

    Equal odds per group: one modality with many small tiles must not crowd out the others;
    the same within a group when tiles are keyed by source (2,926 PH2 patches against the 12
    tiles of one skin photo). One source: no draw, so group-balanced runs replay exactly.
    """
    groups = sorted(tiles)
    sources = tiles[groups[rng.integers(len(groups))]]
    names = sorted(sources)
    pool = sources[names[rng.integers(len(names))]] if len(names) > 1 else sources[names[0]]
    return pool[rng.integers(len(pool))]


def draw_preset(
    clean_frac: float, mild_frac: float, preset: str, rng: np.random.Generator
) -> str | None:
    """The preset for one patch: None (left clean), "mild", or ``preset``."""
    if not clean_frac and not mild_frac:
        return preset  # no draw: runs without clean or mild pairs replay exactly
    u = rng.random()
    if u < clean_frac:
        return None
    return "mild" if u < clean_frac + mild_frac else preset


def rewindow(image: np.ndarray, rng: np.random.Generator, clip: float = 1.0) -> np.ndarray:
    """The tile as a display would show it whole: its luminance stretched to the full range.

    A tile cut from a larger image often spans a narrow band of gray levels, while the images
    people open (a windowed CT slice, an MR series, a photograph) span nearly all of them. This
    is ``autocontrast`` with drawn percentiles: the ``a``-th and ``b``-th (``a`` in [0, clip],
    ``b`` in [100 - clip, 100]) go to 0 and 1, one gain and offset for every channel (gray stays
    gray), and what falls outside is clipped, as a display window clips. A viewer's window on an
    MR slice leaves a few per cent at white (0.5-4% on the held-out slices); ``clip`` sets how
    many per cent at most.
    """
    from dpe.methods.classic import autocontrast

    return autocontrast(image, low=rng.uniform(0.0, clip), high=rng.uniform(100.0 - clip, 100.0))


def crop_of_degraded_tile(
    tile: np.ndarray,
    crop: int,
    preset: str | None,
    rng,
    *,
    rewindowed: bool = False,
    clip: float = 1.0,
):
    """DPE-G v2: degrade the whole tile (as a real acquisition is), then crop low and clean.

    The whole degraded tile is returned too: the model reads its global correction from the
    whole image at inference, so training does the same. ``rewindowed``: the clean tile is
    first stretched to the full range (:func:`rewindow`, clipping up to ``clip`` per cent).
    """
    image = tile.astype(np.float32) / 255
    image = np.rot90(image, k=int(rng.integers(4)))
    image = np.ascontiguousarray(image[:, ::-1] if rng.random() < 0.5 else image)
    if rewindowed:
        image = rewindow(image, rng, clip)
    if min(image.shape[:2]) < crop:
        image = resize(image, crop)
    whole = image if preset is None else degrade(image, preset, rng)
    h, w = image.shape[:2]
    y, x = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
    box = (slice(y, y + crop), slice(x, x + crop))
    return np.ascontiguousarray(whole[box]), np.ascontiguousarray(image[box]), whole


def to_batch(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # (B, 3, H, W)


class StepBatches(torch.utils.data.Dataset):
    """Item ``step`` is the training batch of that step, drawn from a stream seeded by
    ``(seed, step)`` alone: the same batch whichever loader worker makes it, and a resumed run
    draws what it would have drawn (``python -m dpe.train --loader-workers N``)."""

    def __init__(self, tiles: Tiles, config, make_batch):
        self.tiles, self.config, self.make_batch = tiles, config, make_batch

    def __getitem__(self, step: int):
        rng = np.random.default_rng([self.config.seed, step])
        return self.make_batch(self.tiles, self.config, rng)


def _one_thread(worker_id: int) -> None:
    torch.set_num_threads(1)  # each worker one core; the workers together fill the machine


def step_loader(
    tiles: Tiles, config, make_batch, first_step: int, workers: int, pin_memory: bool = False
):
    """Batches for steps ``first_step``, ``first_step + 1``, ... made ahead by ``workers``
    processes (torch's DataLoader, spawned: no fork of a process that holds threads or CUDA)."""
    import itertools

    return torch.utils.data.DataLoader(
        StepBatches(tiles, config, make_batch),
        batch_size=None,  # each item is already a batch
        sampler=itertools.count(first_step),
        num_workers=workers,
        multiprocessing_context="spawn" if workers else None,
        worker_init_fn=_one_thread if workers else None,
        persistent_workers=bool(workers),
        prefetch_factor=4 if workers else None,
        pin_memory=pin_memory,
    )


@dataclass
class ValidationSet:
    low: list[torch.Tensor]  # (1, 3, H, W) each
    clean: list[np.ndarray]  # (H, W, 3) each
    names: list[str]
    input_psnr: float  # mean PSNR of the degraded inputs: what "no enhancement" scores
    groups: list[str] = field(default_factory=list)  # "<group>" or "<group>/clean" each


def load_validation(folder: str | Path, config) -> ValidationSet:
    """Up to ``val_images`` images, as many from each group, centre-cropped, degraded once."""
    from dpe.io import load_image
    from dpe.metrics import psnr

    by_group: dict[str, list] = {}
    for item in find_images([folder]):
        by_group.setdefault(item.group, []).append(item)
    if not by_group:
        raise ValueError(
            f"no validation images below {folder}; build them with python -m dpe.data."
        )
    # the same number from each group, spread evenly over its sorted list
    quota = max(1, config.val_images // len(by_group))
    chosen = []
    for group in sorted(by_group):
        items = by_group[group]
        picks = np.linspace(0, len(items) - 1, min(quota, len(items))).round().astype(int)
        chosen += [items[i] for i in picks]
    low, clean, names, scores, groups = [], [], [], [], []
    for item in chosen:
        image = load_image(item.path).image
        h, w = image.shape[:2]
        s = config.val_size
        y, x = max(0, (h - s) // 2), max(0, (w - s) // 2)
        image = np.ascontiguousarray(image[y : y + s, x : x + s])
        degraded = degraded_twin(image, item.relpath, preset=config.preset, seed=config.seed)
        low.append(torch.from_numpy(degraded).permute(2, 0, 1)[None].contiguous())
        clean.append(image)
        names.append(item.relpath)
        groups.append(item.group)
        scores.append(psnr(image, degraded))
    val = ValidationSet(low, clean, names, float(np.mean(scores)), groups)
    if config.select == "worst":  # the clean images too: a step that alters them must lose
        for image, name, group in zip(list(val.clean), list(names), list(groups), strict=True):
            val.low.append(torch.from_numpy(image).permute(2, 0, 1)[None].contiguous())
            val.clean.append(image)
            val.names.append(name)
            val.groups.append(f"{group}/clean")
    return val


def validate(model: nn.Module, val: ValidationSet, select: str = "mean") -> float:
    """Mean PSNR (dB) of the model's output over the validation set, or with ``"worst"`` the
    lowest of the per-group means (clean inputs capped at 60 dB, a group of their own)."""
    return summarise(group_scores(model, val), select)


def summarise(scores: dict[str, list[float]], select: str = "mean") -> float:
    """The number :func:`validate` selects by, from :func:`group_scores`' scores."""
    if select == "worst":
        return float(min(np.mean(v) for v in scores.values()))
    return float(np.mean([x for v in scores.values() for x in v]))


@torch.no_grad()
def group_scores(model: nn.Module, val: ValidationSet) -> dict[str, list[float]]:
    """Each validation group's PSNRs (dB, capped at 60) of the model's outputs."""
    from dpe.metrics import psnr

    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    scores: dict[str, list[float]] = {}
    groups = val.groups or ["all"] * len(val.low)
    for low, clean, group in zip(val.low, val.clean, groups, strict=True):
        out = model(low.to(device))[0].permute(1, 2, 0).clamp(0, 1).cpu().numpy()  # (H, W, 3)
        scores.setdefault(group, []).append(min(psnr(clean, out), 60.0))
    model.train()
    return scores
