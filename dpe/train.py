"""Train DPENet with the paper's objective on clean tiles, degraded on the fly.

    python -m dpe.train --name dpe --width 64 --minutes 120 --resume
    python -m dpe.train --name dpe-s --width 32 --steps 2000 --resume
    python -m dpe.train --name dran --arch dran --minutes 60 --resume
    python -m dpe.train --name retinexnet --arch retinexnet --decom-steps 3000 --minutes 60 --resume
    python -m dpe.train --name dpe-g --arch dpeg --init-from weights/dpe.safetensors --minutes 60
    python -m dpe.train --name dpe-g --arch dpeg2 --init-from out/cand-g/dpe-g.safetensors \
        --freeze-global --no-adversarial --clean-frac 0.2 --mild-frac 0.2 --select worst

``--arch`` picks the network and, with it, its paper's loss and Adam settings: DPENet (L1 +
feature + adversarial, the default), DRAN (plain L1) or RetinexNet. DPE-G (``dpeg``, DPENet plus
a global path, see ``dpe.nets.dpeg``) trains with DPE's objective; ``--init-from`` a DPENet
file starts its local path from those weights. DPE-G v2 (``dpeg2``, ``dpe.nets.dpeg2``) trains in
two stages: its global path with ``python -m dpe.train_global``, then its local residual here
from that file (``--freeze-global``); each patch is cut from its whole degraded tile, whose global
correction it uses, as at inference. ``--clean-frac`` and ``--mild-frac`` mix in undegraded and
mildly degraded patches; ``--select worst`` exports the step whose worst per-group validation
mean, over degraded *and* clean inputs, is best. RetinexNet trains in two
stages, as its paper does: the first ``--decom-steps`` steps train the Decom-Net alone with the
decomposition loss; the later ones freeze it and train the Enhance-Net with the relight loss.
Its output means nothing before the relight stage, so it is validated (and exported) only then.

Each step draws a batch of clean patches (random crops of ``--crop`` pixels, or with
probability ``--whole-frac`` a whole tile downscaled to ``--crop``, so the network also sees the
global brightness and contrast it has to undo), flips and rotates them, degrades each with
``dpe.degrade`` and takes one discriminator and one generator Adam step. Modalities are drawn
equally often; ``--balance source`` also draws each source image within a modality equally often
(one photo's dozen tiles against thousands of small patches). ``--ema`` keeps a moving average of
the weights, and that average is what is validated and exported. Every
``--eval-every`` steps it measures PSNR on a fixed, deterministically degraded validation set
and exports the best weights to ``weights/NAME.safetensors`` (fp16). A checkpoint
(``checkpoints/NAME.pt``) is written every ``--checkpoint-minutes`` and on exit or SIGTERM;
``--resume`` continues from it, with the architecture and objective the checkpoint records (a
checkpoint from before ``--arch`` existed is a DPENet one).

``accelerate launch --multi_gpu --num_processes N -m dpe.train ...`` (or ``torchrun``) trains
data-parallel: ``--batch-size`` is then the global batch, split over the processes, and the run
takes the steps one process would take (see `Processes`).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import math
import os
import platform
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dpe.degrade import PRESETS, degrade
from dpe.evaluate import degraded_twin, find_images
from dpe.losses import GeneratorLoss, Objective, RetinexLoss, discriminator_loss
from dpe.nets import build_net
from dpe.nets.discriminator import Discriminator, DiscriminatorConfig

BALANCE = ("group", "source")

# Adam (lr, beta1, beta2) per architecture, from each paper; --lr, --beta1, --beta2 override
ADAM = {
    "dpenet": (5e-4, 0.9, 0.99),  # DPE paper
    "dpeg": (5e-4, 0.9, 0.99),  # DPE-G: DPENet plus a global path, trained as DPE
    "dpeg2": (2e-4, 0.9, 0.99),  # DPE-G v2's local stage: a residual from zero, gently
    "retinexnet": (1e-3, 0.9, 0.999),  # RetinexNet's code: 1e-3 (TensorFlow's default betas)
    "dran": (1e-3, 0.5, 0.99),  # DRAN paper
}

# Architectures trained with DPE's own objective (the others use their papers' losses)
DPE_ARCHS = ("dpenet", "dpeg", "dpeg2")
SELECT = ("mean", "worst")

# Command-line help for each TrainConfig field; the flags are generated from the dataclass.
HELP = {
    "name": "run name: checkpoints/NAME.pt and weights/NAME.safetensors",
    "data": "folder holding train/ and val/ subfolders of clean images",
    "arch": f"network and its loss: {', '.join(ADAM)} (dpeg: DPENet + global path, DPE's loss)",
    "width": "base width of the network (paper: 64 for each; DPE small: 32)",
    "decom_steps": "retinexnet only: steps of the decomposition stage before the relight stage",
    "pixel": "the L1(G(x), y) term (dpenet, dpeg; dran's whole loss)",
    "feature": "the gradient-regularised VGG19 feature term (dpenet, dpeg only)",
    "adversarial": "the adversarial term and the discriminator (dpenet, dpeg only)",
    "adversarial_weight": "weight of the adversarial term",
    "feature_weight": "weight of the feature term",
    "preset": f"degradation preset: {', '.join(PRESETS)}",
    "crop": "training patch side in pixels (a multiple of 16)",
    "whole_frac": "fraction of patches that are whole tiles downscaled to --crop",
    "ema": "validate and export an exponential moving average of the weights with this decay "
    "(e.g. 0.999); 0 = off, the raw weights, as the papers",
    "balance": "draw patches with equal odds per modality ('group'), or per modality and then "
    "per source image within it ('source', needs the data's manifest.csv)",
    "batch_size": "patches per step (under accelerate launch: in all, split over the processes)",
    "clean_frac": "fraction of patches left undegraded (the model must leave them alone)",
    "mild_frac": "fraction of patches degraded with the 'mild' preset instead of --preset",
    "select": "export the step with the best 'mean' validation PSNR, or the best 'worst' "
    "per-group mean over degraded and clean validation inputs",
    "freeze_global": "dpeg2: keep the global path as --init-from gave it (train the local one)",
    **{
        name: f"Adam {name}; unset: the arch's ("
        + ", ".join(f"{arch} {values[i]:g}" for arch, values in ADAM.items())
        + ")"
        for i, name in enumerate(("lr", "beta1", "beta2"))
    },
    "warmup_steps": "linear learning-rate warm-up steps",
    "steps": "stop when the total step count reaches this",
    "minutes": "stop after this many minutes of this invocation",
    "eval_every": "validate, and export the weights if best, every N steps",
    "val_images": "validation images, the same number from each group",
    "val_size": "centre-crop validation images to at most this side",
    "checkpoint_minutes": "write the checkpoint this often",
    "log_every": "a log line every N steps when stderr is not a terminal",
    "seed": "seeds the data order, the init and the validation degradation",
    "threads": "torch threads (0: every core)",
    "checkpoint_dir": "where NAME.pt is written",
    "out_dir": "where NAME.safetensors is written",
    "resume": "continue from checkpoints/NAME.pt if it exists (else start a new run)",
    "init_from": "start from these .safetensors weights when no checkpoint is resumed",
}


@dataclass
class TrainConfig:
    name: str = "dpe"
    data: str = "data"
    # model
    arch: str = "dpenet"  # dpenet | dpeg | retinexnet | dran
    width: int = 64  # paper: 64
    # RetinexNet's first stage (0 for the other archs); its paper's 100 epochs of 485 pairs at
    # batch 16 are about 3000 steps per stage
    decom_steps: int = 3000
    # objective: DPE's, each term switchable for ablations (the baselines use their papers' own)
    pixel: bool = True
    feature: bool = True
    adversarial: bool = True
    adversarial_weight: float = 1e-3  # paper
    feature_weight: float = 1.0  # the official code's "percepRegulator"
    # data
    preset: str = "paper"
    crop: int = 64  # the paper trains on 128; 64 is about 4x cheaper on a CPU
    whole_frac: float = 0.5  # crops alone cannot show the global brightness/contrast loss
    balance: str = "group"  # "group" | "source"
    clean_frac: float = 0.0  # clean -> clean pairs
    mild_frac: float = 0.0  # pairs degraded with the "mild" preset
    select: str = "mean"  # "mean" | "worst": which validation score picks the exported step
    freeze_global: bool = False
    ema: float = 0.0  # weight averaging for validation and export; 0 = off
    batch_size: int = 8
    # optimiser: Adam, as each paper; None takes the arch's value from ADAM
    lr: float | None = None
    beta1: float | None = None
    beta2: float | None = None
    warmup_steps: int = 0  # the paper uses none
    # budget: stop at whichever comes first (neither: run until SIGTERM)
    steps: int | None = None
    minutes: float | None = None
    # bookkeeping
    eval_every: int = 100
    val_images: int = 48
    val_size: int = 256
    checkpoint_minutes: float = 5.0
    log_every: int = 10
    seed: int = 0
    threads: int = 0
    checkpoint_dir: str = "checkpoints"
    out_dir: str = "weights"
    resume: bool = False
    init_from: str | None = None

    def __post_init__(self):
        if self.arch not in ADAM:
            raise ValueError(f"arch must be one of {', '.join(ADAM)}; got {self.arch!r}.")
        if self.arch not in DPE_ARCHS:
            # the baselines train with their own papers' losses: DPE's extra terms are off
            if not self.pixel:
                raise ValueError(f"--no-pixel applies to dpenet only; {self.arch} needs its loss.")
            self.feature = self.adversarial = False
        if self.arch != "retinexnet":
            self.decom_steps = 0
        elif self.decom_steps < 0:
            raise ValueError(f"decom_steps must be at least 0; got {self.decom_steps}.")
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}; got {self.preset!r}.")
        if self.crop < 16 or self.crop % 16:
            raise ValueError(f"crop must be a multiple of 16 (DPENet's stride); got {self.crop}.")
        if not 0.0 <= self.whole_frac <= 1.0:
            raise ValueError(f"whole_frac must be in [0, 1]; got {self.whole_frac}.")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1); got {self.ema}.")
        if not (
            0 <= self.clean_frac and 0 <= self.mild_frac and self.clean_frac + self.mild_frac <= 1
        ):
            raise ValueError("clean_frac and mild_frac must be >= 0 and sum to at most 1.")
        if self.select not in SELECT:
            raise ValueError(f"select must be one of {SELECT}; got {self.select!r}.")
        if self.balance not in BALANCE:
            raise ValueError(f"balance must be one of {BALANCE}; got {self.balance!r}.")
        if self.batch_size < 1 or self.eval_every < 1:
            raise ValueError("batch_size and eval_every must be at least 1.")
        self.objective()  # raises if every term is off

    def adam(self) -> tuple[float, float, float]:
        """(lr, beta1, beta2): the ones given, else the arch's defaults."""
        given = (self.lr, self.beta1, self.beta2)
        return tuple(d if g is None else g for g, d in zip(given, ADAM[self.arch], strict=True))

    def describe_loss(self) -> str:
        """The objective as one line, for logs and weight metadata."""
        if self.arch == "retinexnet":
            return (
                f"steps < {self.decom_steps}: {RetinexLoss('decom').describe()}; "
                f"then (Decom-Net frozen): {RetinexLoss('relight').describe()}"
            )
        return self.objective().describe()

    def objective(self) -> Objective:
        return Objective(
            pixel=self.pixel,
            feature=self.feature,
            adversarial=self.adversarial,
            adversarial_weight=self.adversarial_weight,
            feature_weight=self.feature_weight,
        )


# What a checkpoint fixes for good: the architecture, the objective, and what makes validation
# numbers comparable across invocations. Everything else may change when resuming.
FIXED_ON_RESUME = (
    "arch", "width", "decom_steps", "pixel", "feature", "adversarial", "adversarial_weight",
    "feature_weight", "preset", "seed", "val_images", "val_size", "data", "select",
)  # fmt: skip
# What a checkpoint written before a field existed meant by it
OLD_CHECKPOINT_DEFAULTS = {"arch": "dpenet", "decom_steps": 0, "select": "mean"}


def get_lr(step: int, config: TrainConfig) -> float:
    """Learning rate at ``step``: constant, as in the papers, after an optional linear warm-up."""
    lr = config.adam()[0]
    if step < config.warmup_steps:
        return lr * (step + 1) / config.warmup_steps
    return lr


def get_stage(step: int, config: TrainConfig) -> str | None:
    """RetinexNet's stage at ``step``, "decom" then "relight"; None for the other archs."""
    if config.arch != "retinexnet":
        return None
    return "decom" if step < config.decom_steps else "relight"


def make_losses(config: TrainConfig) -> dict[str | None, nn.Module]:
    """The loss of each stage (see :func:`get_stage`)."""
    if config.arch == "retinexnet":
        return {stage: RetinexLoss(stage) for stage in RetinexLoss.STAGES}
    return {None: GeneratorLoss(config.objective())}


# ---------------------------------------------------------------------------------------------
# data


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


def _resize(image: np.ndarray, size: int) -> np.ndarray:
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
        patch = _resize(patch, crop) if side != crop else patch
    else:
        y, x = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
        patch = tile[y : y + crop, x : x + crop].astype(np.float32) / 255
    patch = np.rot90(patch, k=int(rng.integers(4)))
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    return np.ascontiguousarray(patch, dtype=np.float32)


def sample_batch(
    tiles: Tiles, config: TrainConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """(low, clean) float tensors (B, 3, crop, crop) and, for dpeg2, each patch's whole degraded
    tile (1, 3, H, W); groups, then sources, drawn equally often."""
    lows, cleans, wholes = [], [], []
    for _ in range(config.batch_size):
        tile = draw_tile(tiles, rng)
        preset = draw_preset(config.clean_frac, config.mild_frac, config.preset, rng)
        if config.arch == "dpeg2":
            low, clean, whole = crop_of_degraded_tile(tile, config.crop, preset, rng)
            wholes.append(torch.from_numpy(whole).permute(2, 0, 1)[None])
        else:
            clean = sample_patch(tile, config.crop, rng.random() < config.whole_frac, rng)
            low = clean if preset is None else degrade(clean, preset, rng)
        cleans.append(clean)
        lows.append(low)
    return _to_batch(lows), _to_batch(cleans), wholes


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


def crop_of_degraded_tile(tile: np.ndarray, crop: int, preset: str | None, rng):
    """DPE-G v2: degrade the whole tile (as a real acquisition is), then crop low and clean.

    The whole degraded tile is returned too: the model reads its global correction from the
    whole image at inference, so training does the same.
    """
    image = tile.astype(np.float32) / 255
    image = np.rot90(image, k=int(rng.integers(4)))
    image = np.ascontiguousarray(image[:, ::-1] if rng.random() < 0.5 else image)
    if min(image.shape[:2]) < crop:
        image = _resize(image, crop)
    whole = image if preset is None else degrade(image, preset, rng)
    h, w = image.shape[:2]
    y, x = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
    box = (slice(y, y + crop), slice(x, x + crop))
    return np.ascontiguousarray(whole[box]), np.ascontiguousarray(image[box]), whole


def _to_batch(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # (B, 3, H, W)


@dataclass
class ValidationSet:
    low: list[torch.Tensor]  # (1, 3, H, W) each
    clean: list[np.ndarray]  # (H, W, 3) each
    names: list[str]
    input_psnr: float  # mean PSNR of the degraded inputs: what "no enhancement" scores
    groups: list[str] = field(default_factory=list)  # "<group>" or "<group>/clean" each


def load_validation(folder: str | Path, config: TrainConfig) -> ValidationSet:
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


@torch.no_grad()
def validate(model: nn.Module, val: ValidationSet, select: str = "mean") -> float:
    """Mean PSNR (dB) of the model's output over the validation set, or with ``"worst"`` the
    lowest of the per-group means (clean inputs capped at 60 dB, a group of their own)."""
    from dpe.metrics import psnr

    model.eval()
    scores: dict[str, list[float]] = {}
    groups = val.groups or ["all"] * len(val.low)
    for low, clean, group in zip(val.low, val.clean, groups, strict=True):
        out = model(low)[0].permute(1, 2, 0).clamp(0, 1).numpy()  # (H, W, 3)
        scores.setdefault(group, []).append(min(psnr(clean, out), 60.0))
    model.train()
    if select == "worst":
        return float(min(np.mean(v) for v in scores.values()))
    return float(np.mean([x for v in scores.values() for x in v]))


# ---------------------------------------------------------------------------------------------
# one optimisation step


def train_step(
    model: nn.Module,
    disc: Discriminator | None,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer | None,
    loss_fn: GeneratorLoss | RetinexLoss,
    low: torch.Tensor,
    clean: torch.Tensor,
    *,
    lr: float,
    labels: torch.Generator | None = None,
    params: torch.Tensor | None = None,
    sync=None,
) -> dict[str, float]:
    """One discriminator step (if there is one), then one generator step; returns the losses.

    ``params``: DPE-G v2's global correction, read from each patch's whole degraded tile.
    ``sync(parameters)``, when given, runs between each backward pass and its optimiser step
    (data-parallel training averages the gradients of all processes there).
    """
    for opt in (opt_g, opt_d):
        if opt is not None:
            for group in opt.param_groups:
                group["lr"] = lr
    stats = {}
    if isinstance(loss_fn, RetinexLoss):  # it runs the model: it needs the decomposition
        g_loss, terms = loss_fn(model, low, clean)
    else:
        out = model(low) if params is None else model(low, params=params)  # (B, 3, H, W)
        if disc is not None:
            disc.requires_grad_(True)
            opt_d.zero_grad(set_to_none=True)
            d_loss = discriminator_loss(disc, clean, out, labels)
            d_loss.backward()
            if sync is not None:
                sync(disc.parameters())
            opt_d.step()
            stats["d_loss"] = float(d_loss.detach())
            disc.requires_grad_(False)  # the generator step needs no gradients for D's weights
        g_loss, terms = loss_fn(out, clean, disc)
    # Parameters without a gradient (RetinexNet's idle half in each stage) are left alone by Adam
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    if sync is not None:
        sync(model.parameters())
    opt_g.step()
    return {"loss": float(g_loss.detach()), **terms, **stats}


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model``, parameters and float buffers alike.

    The average of the last ~1 / (1 - decay) steps' weights: GAN and small-batch noise in the
    weights averages out, so validation (and the exported file) stop swinging from step to step.
    """
    pairs = zip(ema.state_dict().values(), model.state_dict().values(), strict=True)
    for e, m in pairs:
        if e.is_floating_point():
            e.lerp_(m, 1.0 - decay)
        else:
            e.copy_(m)


# ---------------------------------------------------------------------------------------------
# checkpoints and exported weights


def checkpoint_path(config: TrainConfig) -> Path:
    return Path(config.checkpoint_dir) / f"{config.name}.pt"


def _atomic_save(save, path: Path) -> None:
    """Write via a temporary file, so a crash mid-write never leaves a broken file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save(tmp)
    os.chmod(tmp, 0o644)  # safetensors creates its files private (0600); these are to be shared
    os.replace(tmp, path)


def _hardware() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def _data_summary(folder: Path, tiles: Tiles) -> dict:
    counts = {g: sum(map(len, v.values())) for g, v in sorted(tiles.items())}
    summary = {"train_tiles": counts, "folder": str(folder)}
    if any(len(v) > 1 or "all" not in v for v in tiles.values()):
        summary["sources"] = {
            g: {s: len(t) for s, t in sorted(v.items())} for g, v in sorted(tiles.items())
        }
    manifest = folder / "manifest.csv"
    if manifest.is_file():
        summary["manifest_sha256"] = hashlib.sha256(manifest.read_bytes()).hexdigest()[:16]
    return summary


def export_weights(model: nn.Module, path: Path, **info) -> None:
    """Write the model as fp16 safetensors with its config and ``info`` as metadata."""
    from dpe.weights import save_weights

    _atomic_save(
        lambda tmp: save_weights(model.state_dict(), tmp, model.config_dict(), **info), path
    )


# ---------------------------------------------------------------------------------------------
# the run


@dataclass(frozen=True)
class Processes:
    """This process's place in a data-parallel run (``accelerate launch -m dpe.train``).

    Every process draws the same global batch from the same seed and trains on its own
    contiguous part of it; gradients are averaged before each optimiser step, so the run takes
    the steps one process would take with the whole batch (up to float summation order), and a
    checkpoint resumes under any number of processes. Only rank 0 validates, exports, writes
    checkpoints and logs. A plain ``python -m dpe.train`` is rank 0 of 1 and never imports
    Accelerate.
    """

    rank: int = 0
    world: int = 1

    @classmethod
    def detect(cls) -> Processes:
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        from accelerate import PartialState

        # Joins the process group the launcher set up. cpu=True: this loop keeps the model and
        # its batches on the CPU, so the group is gloo even on a machine with GPUs.
        state = PartialState(cpu=True)
        return cls(state.process_index, state.num_processes)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def part(self, batch_size: int) -> slice:
        """This process's samples of a global batch."""
        per = batch_size // self.world
        return slice(self.rank * per, (self.rank + 1) * per)

    def average_gradients(self, parameters) -> None:
        """Replace each gradient by its mean over the processes (one all-reduce)."""
        from accelerate.utils import reduce

        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return
        flat = reduce(torch.cat([g.reshape(-1) for g in grads]), reduction="mean")
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def mean(self, stats: dict[str, float]) -> dict[str, float]:
        """The losses of the global batch: the mean of every process's."""
        if self.world == 1:
            return stats
        from accelerate.utils import reduce

        keys = list(stats)
        values = reduce(torch.tensor([stats[k] for k in keys], dtype=torch.float64), "mean")
        return dict(zip(keys, values.tolist(), strict=True))

    def anyone(self, flag: bool) -> bool:
        """True on every process when it is true on any (a stop must stop them all at once)."""
        if self.world == 1:
            return flag
        from accelerate.utils import reduce

        return bool(reduce(torch.tensor([float(flag)]), reduction="max").item() > 0)

    def close(self) -> None:
        if self.world > 1:
            from accelerate import PartialState

            PartialState().wait_for_everyone()
            PartialState().destroy_process_group()


class _Stop:
    """Set by SIGTERM/SIGINT; the loop finishes its step, checkpoints and exits."""

    requested = False

    @classmethod
    def handler(cls, signum, frame):
        cls.requested = True


def train(config: TrainConfig, *, command: str = "") -> dict:
    """Run (or continue) training as ``config`` says; returns the final state summary."""
    procs = Processes.detect()
    if config.batch_size % procs.world:
        raise ValueError(
            f"--batch-size {config.batch_size} is the global batch; it must split evenly over "
            f"{procs.world} processes."
        )
    torch.set_num_threads(config.threads or max(1, len(os.sched_getaffinity(0))))
    ckpt_file = checkpoint_path(config)
    checkpoint = None
    if config.resume and ckpt_file.is_file():
        checkpoint = torch.load(ckpt_file, map_location="cpu", weights_only=True)
        saved = {**OLD_CHECKPOINT_DEFAULTS, **checkpoint["config"]}
        changed = {
            k: (getattr(config, k), saved[k])
            for k in FIXED_ON_RESUME
            if getattr(config, k) != saved[k]
        }
        for key, (_, kept) in changed.items():
            print(f"resume: keeping {key}={kept!r} from the checkpoint", file=sys.stderr)
        config = TrainConfig(**{**asdict(config), **{k: saved[k] for k in FIXED_ON_RESUME}})
    elif config.resume:
        print(f"resume: no checkpoint at {ckpt_file}; starting a new run", file=sys.stderr)

    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    labels = torch.Generator().manual_seed(config.seed + 1)

    # models and optimisers; on resume the architecture comes from the checkpoint
    step, wall_time, best, best_step, history = 0, 0.0, -math.inf, 0, []
    init_note = "scratch"
    init_info = None  # where a model started from other weights came from (exported with it)
    if checkpoint is not None:
        model = build_net(checkpoint["model_config"])
        model.load_state_dict(checkpoint["model"])
    elif config.init_from:
        from dpe.weights import load_weights

        state, net_config, info = load_weights(config.init_from)
        if config.arch == "dpeg" and net_config["arch"] == "dpenet":
            # DPE-G's local path is a DPENet: start it from trained DPE weights, the global path
            # from scratch; the step count starts at 0 and the metadata records the origin
            model = build_net({"arch": "dpeg", "width": net_config["width"]})
            model.local.load_state_dict(state)
            init_info = {
                "file": Path(config.init_from).name,
                "steps": int(info.get("steps", 0)),
                "wall_time_s": float(info.get("wall_time_s", 0.0)),
            }
            init_note = f"{config.init_from} (local path, step {init_info['steps']})"
        elif net_config["arch"] != config.arch:
            arch = net_config["arch"]
            raise ValueError(f"{config.init_from} holds a {arch}; pass --arch {arch}.")
        else:
            model = build_net(net_config)
            model.load_state_dict(state)
            step, wall_time = int(info.get("steps", 0)), float(info.get("wall_time_s", 0.0))
            init_info = info.get("init_from")  # the same lineage: keep where it started
            init_note = f"{config.init_from} (step {step})"
        config.width = model.config.width
    else:
        model = build_net({"arch": config.arch, "width": config.width})
    model.train()
    ema = None  # the averaged copy that is validated and exported, with --ema
    if config.ema:
        ema = copy.deepcopy(model).requires_grad_(False)
        if checkpoint is not None and checkpoint.get("ema") is not None:
            ema.load_state_dict(checkpoint["ema"])
    lr, *betas = config.adam()
    if config.freeze_global:
        model.glob.requires_grad_(False)  # dpeg2's local stage: the global path stays put
    opt_g = torch.optim.Adam(model.parameters(), lr=lr, betas=tuple(betas))
    disc = opt_d = None
    if config.adversarial:
        disc = Discriminator(DiscriminatorConfig(**((checkpoint or {}).get("disc_config") or {})))
        disc.train()
        opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=tuple(betas))
    if checkpoint is not None:
        opt_g.load_state_dict(checkpoint["opt_g"])
        if disc is not None:
            disc.load_state_dict(checkpoint["disc"])
            opt_d.load_state_dict(checkpoint["opt_d"])
        step, wall_time = checkpoint["step"], checkpoint["wall_time"]
        best, best_step, history = (
            checkpoint["best_val_psnr"],
            checkpoint["best_step"],
            checkpoint["history"],
        )
        rng.bit_generator.state = checkpoint["rng"]["numpy"]
        torch.set_rng_state(checkpoint["rng"]["torch"])
        labels.set_state(checkpoint["rng"]["labels"])
        init_info = checkpoint.get("init_info")
        init_note = f"{ckpt_file} (step {step})"
    losses = make_losses(config)
    # RetinexNet's output means nothing before its relight stage: no validation until then
    first_val_step = config.decom_steps

    data = Path(config.data)
    tiles = load_tiles(data / "train", by_source=config.balance == "source")
    val = load_validation(data / "val", config)
    data_info = _data_summary(data, tiles)
    weights_file = Path(config.out_dir) / f"{config.name}.safetensors"
    who = f"[process {procs.rank} of {procs.world}] " if procs.world > 1 else ""
    print(
        f"{who}{config.name}: {type(model).__name__} width {model.config.width}, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params; from {init_note}\n"
        f"  objective: {config.describe_loss()}\n"
        f"  Adam: lr {lr:g}, betas {tuple(betas)}"
        + (
            f"; validated and exported: EMA of the weights, decay {config.ema:g}"
            if config.ema
            else ""
        )
        + "\n"
        f"  data: {data_info['train_tiles']} train tiles, {len(val.low)} val images "
        f"(degraded input {val.input_psnr:.2f} dB); crop {config.crop}, whole {config.whole_frac}, "
        f"balanced per {config.balance}"
        + (f" {data_info['sources']}" if "sources" in data_info else "")
        + f", batch {config.batch_size}; {torch.get_num_threads()} threads"
        + (
            f"; {procs.world} processes, {config.batch_size // procs.world} samples each"
            if procs.world > 1
            else ""
        ),
        file=sys.stderr,
        flush=True,
    )

    def save_checkpoint() -> None:
        if not procs.main:
            return
        state = {
            "model": model.state_dict(),
            "model_config": model.config_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "disc": disc.state_dict() if disc is not None else None,
            "disc_config": asdict(disc.config) if disc is not None else None,
            "opt_g": opt_g.state_dict(),
            "opt_d": opt_d.state_dict() if opt_d is not None else None,
            "config": asdict(config),
            "step": step,
            "wall_time": wall_time + (time.monotonic() - start),
            "best_val_psnr": best,
            "best_step": best_step,
            "history": history,
            "init_info": init_info,
            "rng": {
                "numpy": rng.bit_generator.state,
                "torch": torch.get_rng_state(),
                "labels": labels.get_state(),
            },
        }
        _atomic_save(lambda tmp: torch.save(state, tmp), ckpt_file)

    def run_validation() -> None:
        nonlocal best, best_step
        if not procs.main:
            history.append([step, None])
            return
        score = validate(ema if ema is not None else model, val, config.select)
        history.append([step, score])
        improved = score > best
        if improved:  # a scratch run's step-0 score becomes the bar to beat, nothing is exported
            best, best_step = score, step
        if improved and step > first_val_step:
            export_weights(
                ema if ema is not None else model,
                weights_file,
                steps=step,
                wall_time_s=round(wall_time + time.monotonic() - start, 1),
                val_psnr=round(score, 3),
                val_psnr_input=round(val.input_psnr, 3),
                val_images=len(val.low),
                data=data_info,
                objective=config.describe_loss(),
                preset=config.preset,
                crop=config.crop,
                whole_frac=config.whole_frac,
                balance=config.balance,
                **({"ema": config.ema} if ema is not None else {}),
                batch_size=config.batch_size,
                lr=lr,
                **(
                    {
                        "processes": procs.world,
                        "effective_batch": config.batch_size,
                        "per_process_batch": config.batch_size // procs.world,
                    }
                    if procs.world > 1
                    else {}
                ),
                hardware=_hardware(),
                **({"init_from": init_info} if init_info else {}),
                command=command,
                trained_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            )
        note = (
            f"exported {weights_file}"
            if improved and step > first_val_step
            else f"best {best:.2f} dB at step {best_step}"
        )
        log(f"step {step}: val PSNR {score:.2f} dB (input {val.input_psnr:.2f}); {note}")

    from tqdm import tqdm

    tty = sys.stderr.isatty()
    bar = tqdm(total=config.steps, initial=step, unit="step", disable=not tty, dynamic_ncols=True)
    log = bar.write if tty else lambda msg: print(msg, file=sys.stderr, flush=True)
    if not procs.main:
        tty, log = False, lambda msg: None
        bar.disable = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _Stop.handler)
    _Stop.requested = False
    start = last_ckpt = time.monotonic()
    deadline = start + config.minutes * 60 if config.minutes is not None else math.inf
    if not history and step >= first_val_step:  # the baseline, and the bar to beat
        run_validation()
    last_val_step, window = step, (time.monotonic(), step)
    try:
        while not procs.anyone(_Stop.requested or time.monotonic() >= deadline):
            if config.steps is not None and step >= config.steps:
                break
            low, clean, wholes = sample_batch(tiles, config, rng)
            if procs.world > 1:  # every process drew the global batch; each trains on its part
                part = procs.part(config.batch_size)
                low, clean, wholes = low[part], clean[part], wholes[part]
            params = None
            if wholes:  # dpeg2: each patch's correction from its whole degraded tile
                params = torch.cat([model.global_params(w) for w in wholes])
            stats = train_step(
                model,
                disc,
                opt_g,
                opt_d,
                losses[get_stage(step, config)],
                low,
                clean,
                lr=get_lr(step, config),
                labels=labels,
                params=params,
                sync=procs.average_gradients if procs.world > 1 else None,
            )
            stats = procs.mean(stats)
            if ema is not None:
                update_ema(ema, model, config.ema)
            step += 1
            bar.update(1)
            bar.set_postfix({k: f"{v:.4f}" for k, v in stats.items()}, refresh=False)
            if not tty and step % config.log_every == 0:
                now = time.monotonic()
                rate = (step - window[1]) / max(now - window[0], 1e-9)
                window = (now, step)
                parts = " ".join(f"{k} {v:.4f}" for k, v in stats.items())
                minutes = (wall_time + now - start) / 60
                log(f"step {step}: {parts}; {rate:.3f} steps/s; {minutes:.1f} min in all")
            if step >= first_val_step and (step % config.eval_every == 0 or not history):
                run_validation()
                last_val_step = step
            if time.monotonic() - last_ckpt >= config.checkpoint_minutes * 60:
                save_checkpoint()
                last_ckpt = time.monotonic()
        if step != last_val_step and step >= first_val_step:
            run_validation()
    finally:
        save_checkpoint()
        bar.close()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    procs.close()  # after rank 0's last checkpoint
    total = wall_time + time.monotonic() - start
    log(
        f"stopped at step {step} after {total / 60:.1f} min in all; "
        f"best {best:.2f} dB at step {best_step}; checkpoint {ckpt_file}"
    )
    return {"step": step, "wall_time": total, "best_val_psnr": best, "best_step": best_step}


# ---------------------------------------------------------------------------------------------
# command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dpe.train", description=__doc__.split("\n\n")[0]
    )
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_ = HELP[f.name]
        if f.type == "bool" and f.default is True:
            parser.add_argument(
                f"--no-{f.name.replace('_', '-')}",
                dest=f.name,
                action="store_false",
                help=f"switch off: {help_}",
            )
        elif f.type == "bool":
            parser.add_argument(flag, action="store_true", help=help_)
        else:
            kind = {"int": int, "float": float, "int | None": int, "float | None": float}.get(
                f.type, str
            )
            parser.add_argument(
                flag, type=kind, default=f.default, help=f"{help_} (default: {f.default})"
            )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = TrainConfig(**vars(args))
    except ValueError as exc:
        _parser().error(str(exc))
    command = "python -m dpe.train " + " ".join(sys.argv[1:] if argv is None else argv)
    train(config, command=command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
