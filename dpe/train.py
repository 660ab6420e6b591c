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

import copy
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dpe.degrade import PRESETS
from dpe.losses import GeneratorLoss, Objective, RetinexLoss, discriminator_loss
from dpe.nets.discriminator import Discriminator, DiscriminatorConfig
from dpe.training.cli import config_parser, flag
from dpe.training.recipes import RECIPES, Recipe
from dpe.training.runtime import (
    Processes,
    Stop,
    atomic_save,
    data_summary,
    export_weights,
    hardware,
    update_ema,
)
from dpe.training.samples import (
    Tiles,
    ValidationSet,
    crop_of_degraded_tile,
    draw_preset,
    draw_tile,
    group_scores,
    load_tiles,
    load_validation,
    sample_patch,
    step_loader,
    summarise,
    validate,
)

__all__ = [
    "ADAM", "Processes", "TrainConfig", "ValidationSet", "crop_of_degraded_tile",
    "draw_preset", "draw_tile", "export_weights", "get_lr", "get_stage", "load_tiles",
    "load_validation", "main", "make_losses", "resolve_device", "sample_batch", "sample_patch",
    "step_loader", "train", "train_step", "update_ema", "validate",
]  # fmt: skip

BALANCE = ("group", "source")
SELECT = ("mean", "worst")
# Adam (lr, beta1, beta2) per architecture, from each paper; --lr, --beta1, --beta2 override
ADAM = {arch: recipe.adam for arch, recipe in RECIPES.items()}
# Architectures trained with DPE's own objective (the others use their papers' losses)
DPE_ARCHS = tuple(arch for arch, recipe in RECIPES.items() if recipe.dpe_objective)


def _adam_help(i: int, name: str) -> str:
    values = ", ".join(f"{arch} {v[i]:g}" for arch, v in ADAM.items())
    return f"Adam {name}; unset: the arch's ({values})"


@dataclass
class TrainConfig:
    name: str = flag("dpe", "run name: checkpoints/NAME.pt and weights/NAME.safetensors")
    data: str = flag("data", "folder holding train/ and val/ subfolders of clean images")
    # model
    arch: str = flag(
        "dpenet",
        f"network and its loss: {', '.join(ADAM)} (dpeg: DPENet + global path, DPE's loss)",
    )
    width: int = flag(64, "base width of the network (paper: 64 for each; DPE small: 32)")
    # RetinexNet's first stage (0 for the other archs); its paper's 100 epochs of 485 pairs at
    # batch 16 are about 3000 steps per stage
    decom_steps: int = flag(
        3000, "retinexnet only: steps of the decomposition stage before the relight stage"
    )
    # objective: DPE's, each term switchable for ablations (the baselines use their papers' own)
    pixel: bool = flag(True, "the L1(G(x), y) term (dpenet, dpeg; dran's whole loss)")
    feature: bool = flag(True, "the gradient-regularised VGG19 feature term (dpenet, dpeg only)")
    adversarial: bool = flag(True, "the adversarial term and the discriminator (dpenet, dpeg only)")
    adversarial_weight: float = flag(1e-3, "weight of the adversarial term")  # paper
    feature_weight: float = flag(1.0, "weight of the feature term")  # the code's percepRegulator
    # data
    preset: str = flag("paper", f"degradation preset: {', '.join(PRESETS)}")
    # the paper trains on 128; 64 is about 4x cheaper on a CPU
    crop: int = flag(64, "training patch side in pixels (a multiple of 16)")
    # crops alone cannot show the global brightness/contrast loss
    whole_frac: float = flag(0.5, "fraction of patches that are whole tiles downscaled to --crop")
    balance: str = flag(
        "group",
        "draw patches with equal odds per modality ('group'), or per modality and then per "
        "source image within it ('source', needs the data's manifest.csv)",
    )
    clean_frac: float = flag(
        0.0, "fraction of patches left undegraded (the model must leave them alone)"
    )
    mild_frac: float = flag(
        0.0, "fraction of patches degraded with the 'mild' preset instead of --preset"
    )
    select: str = flag(
        "mean",
        "export the step with the best 'mean' validation PSNR, or the best 'worst' per-group "
        "mean over degraded and clean validation inputs",
    )
    freeze_global: bool = flag(
        False, "dpeg2: keep the global path as --init-from gave it (train the local one)"
    )
    ema: float = flag(
        0.0,
        "validate and export an exponential moving average of the weights with this decay "
        "(e.g. 0.999); 0 = off, the raw weights, as the papers",
    )
    batch_size: int = flag(
        8, "patches per step (under accelerate launch: in all, split over the processes)"
    )
    # optimiser: Adam, as each paper; None takes the arch's value from ADAM
    lr: float | None = flag(None, _adam_help(0, "lr"))
    beta1: float | None = flag(None, _adam_help(1, "beta1"))
    beta2: float | None = flag(None, _adam_help(2, "beta2"))
    warmup_steps: int = flag(0, "linear learning-rate warm-up steps")  # the paper uses none
    decay_steps: int = flag(
        0, "cosine-decay the lr to --lr-min over this many steps from --decay-start (0: constant)"
    )
    decay_start: int = flag(0, "the step the cosine decay starts at (e.g. the step resumed from)")
    lr_min: float = flag(1e-5, "the lr at the end of the cosine decay, and after it")
    # budget: stop at whichever comes first (neither: run until SIGTERM)
    steps: int | None = flag(None, "stop when the total step count reaches this")
    minutes: float | None = flag(None, "stop after this many minutes of this invocation")
    # bookkeeping
    eval_every: int = flag(100, "validate, and export the weights if best, every N steps")
    val_images: int = flag(48, "validation images, the same number from each group")
    val_size: int = flag(256, "centre-crop validation images to at most this side")
    checkpoint_minutes: float = flag(5.0, "write the checkpoint this often")
    log_every: int = flag(10, "a log line every N steps when stderr is not a terminal")
    seed: int = flag(0, "seeds the data order, the init and the validation degradation")
    threads: int = flag(0, "torch threads (0: every core)")
    loader_workers: int = flag(
        0,
        "processes that draw and degrade batches ahead of the training step (0: the training "
        "process draws them itself, from the run's own stream); N > 0 seeds each step's batch "
        "by (seed, step), so N does not change the batches",
    )
    device: str = flag(
        "cpu", "where the networks train: cpu, cuda, cuda:N, or auto (cuda when torch sees one)"
    )
    checkpoint_dir: str = flag("checkpoints", "where NAME.pt is written")
    out_dir: str = flag("weights", "where NAME.safetensors is written")
    resume: bool = flag(False, "continue from checkpoints/NAME.pt if it exists (else start anew)")
    init_from: str | None = flag(None, "start from these .safetensors weights (no checkpoint)")

    def __post_init__(self):
        if self.arch not in RECIPES:
            raise ValueError(f"arch must be one of {', '.join(RECIPES)}; got {self.arch!r}.")
        self.recipe.check(self)
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
        if self.decay_steps < 0 or self.decay_start < 0 or self.lr_min < 0:
            raise ValueError("decay_steps, decay_start and lr_min must be >= 0.")
        if self.device != "auto" and self.device.split(":")[0] not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu, cuda, cuda:N or auto; got {self.device!r}.")
        if self.loader_workers < 0:
            raise ValueError(f"loader_workers must be >= 0; got {self.loader_workers}.")
        if self.batch_size < 1 or self.eval_every < 1:
            raise ValueError("batch_size and eval_every must be at least 1.")
        self.objective()  # raises if every term is off

    @property
    def recipe(self) -> Recipe:
        return RECIPES[self.arch]

    def adam(self) -> tuple[float, float, float]:
        """(lr, beta1, beta2): the ones given, else the arch's defaults."""
        given = (self.lr, self.beta1, self.beta2)
        return tuple(d if g is None else g for g, d in zip(given, ADAM[self.arch], strict=True))

    def describe_lr(self) -> str:
        """The lr schedule after the Adam lr, for logs and weight metadata ("" if constant)."""
        if not self.decay_steps:
            return ""
        end = self.decay_start + self.decay_steps
        return f"cosine to {self.lr_min:g} over steps {self.decay_start}-{end}"

    def describe_loss(self) -> str:
        """The objective as one line, for logs and weight metadata."""
        return self.recipe.describe_loss(self)

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
    """Learning rate at ``step``: constant, as in the papers, after an optional linear warm-up;
    with ``decay_steps``, a cosine from the lr down to ``lr_min`` over steps ``decay_start`` to
    ``decay_start + decay_steps``, then ``lr_min`` (a function of the step alone, so a resumed
    run continues the same curve)."""
    lr = config.adam()[0]
    if step < config.warmup_steps:
        return lr * (step + 1) / config.warmup_steps
    if config.decay_steps and step >= config.decay_start:
        t = min((step - config.decay_start) / config.decay_steps, 1.0)
        return config.lr_min + (lr - config.lr_min) * 0.5 * (1.0 + math.cos(math.pi * t))
    return lr


def get_stage(step: int, config: TrainConfig) -> str | None:
    """RetinexNet's stage at ``step``, "decom" then "relight"; None for the other archs."""
    return config.recipe.stage(step, config)


def make_losses(config: TrainConfig) -> dict[str | None, nn.Module]:
    """The loss of each stage (see :func:`get_stage`)."""
    return config.recipe.losses(config)


def sample_batch(
    tiles: Tiles, config: TrainConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """(low, clean) float tensors (B, 3, crop, crop) and, for dpeg2, each patch's whole degraded
    tile (1, 3, H, W); groups, then sources, drawn equally often."""
    return config.recipe.batch(tiles, config, rng)


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


# ---------------------------------------------------------------------------------------------
# the run


def resolve_device(name: str, procs: Processes | None = None) -> torch.device:
    """The torch device ``--device`` names ("auto": CUDA when torch sees a GPU, else the CPU).
    One process per run on a GPU: the multi-process path averages gradients over gloo, on the
    CPU."""
    if name == "auto":
        multi = procs is not None and procs.world > 1
        name = "cuda" if torch.cuda.is_available() and not multi else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: torch {torch.__version__} sees no CUDA device.")
        if procs is not None and procs.world > 1:
            raise ValueError(
                f"--device {name} trains in one process; this launch has {procs.world} "
                "(their gradients are averaged on the CPU). Run python -m dpe.train instead."
            )
        torch.backends.cudnn.benchmark = True  # fixed patch sizes: let cuDNN pick its kernels
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    return torch.device(name)


def checkpoint_path(config: TrainConfig) -> Path:
    return Path(config.checkpoint_dir) / f"{config.name}.pt"


def resume_config(config: TrainConfig) -> tuple[TrainConfig, dict | None]:
    """The config to run with and the checkpoint to continue from (None: a new run). What
    ``FIXED_ON_RESUME`` names comes from the checkpoint, whatever the command line says."""
    ckpt_file = checkpoint_path(config)
    if not config.resume:
        return config, None
    if not ckpt_file.is_file():
        print(f"resume: no checkpoint at {ckpt_file}; starting a new run", file=sys.stderr)
        return config, None
    checkpoint = torch.load(ckpt_file, map_location="cpu", weights_only=True)
    saved = {**OLD_CHECKPOINT_DEFAULTS, **checkpoint["config"]}
    for key in FIXED_ON_RESUME:
        if getattr(config, key) != saved[key]:
            print(f"resume: keeping {key}={saved[key]!r} from the checkpoint", file=sys.stderr)
    config = TrainConfig(**{**asdict(config), **{k: saved[k] for k in FIXED_ON_RESUME}})
    return config, checkpoint


class _Progress:
    """A tqdm bar on a terminal, else a log line every ``log_every`` steps (rank 0 only)."""

    def __init__(self, config: TrainConfig, procs: Processes, step: int):
        from tqdm import tqdm

        self.config, self.window = config, (time.monotonic(), step)
        self.tty = sys.stderr.isatty() and procs.main
        self.bar = tqdm(
            total=config.steps, initial=step, unit="step", disable=not self.tty, dynamic_ncols=True
        )
        if self.tty:
            self.log = self.bar.write
        elif procs.main:
            self.log = lambda msg: print(msg, file=sys.stderr, flush=True)
        else:
            self.log = lambda msg: None

    def update(self, step: int, stats: dict[str, float], minutes: float) -> None:
        self.bar.update(1)
        self.bar.set_postfix({k: f"{v:.4f}" for k, v in stats.items()}, refresh=False)
        if not self.tty and step % self.config.log_every == 0:
            now = time.monotonic()
            rate = (step - self.window[1]) / max(now - self.window[0], 1e-9)
            self.window = (now, step)
            parts = " ".join(f"{k} {v:.4f}" for k, v in stats.items())
            self.log(f"step {step}: {parts}; {rate:.3f} steps/s; {minutes:.1f} min in all")


class Run:
    """One training run: its networks, optimisers, counters and random streams, and what it
    does with them (a step, a validation, a checkpoint). The loop is :meth:`loop`."""

    def __init__(self, config: TrainConfig, procs: Processes, command: str = ""):
        self.config, self.procs, self.command = config, procs, command
        self.recipe = config.recipe
        self.device = resolve_device(config.device, procs)
        self.loader = None  # with --loader-workers: the iterator of prepared batches
        self.ckpt_file = checkpoint_path(config)
        self.step, self.wall_time, self.best, self.best_step = 0, 0.0, -math.inf, 0
        self.history: list = []
        self.init_info: dict | None = None  # where a model started from other weights came from
        self.init_note = "scratch"
        torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        self.labels = torch.Generator().manual_seed(config.seed + 1)
        self.start = time.monotonic()

    # -- setting up

    def build(self, checkpoint: dict | None) -> None:
        """Networks and optimisers; on resume the architecture and state come from the
        checkpoint."""
        config = self.config
        if checkpoint is not None:
            from dpe.nets import build_net

            self.model = build_net(checkpoint["model_config"])
            self.model.load_state_dict(checkpoint["model"])
        elif config.init_from:
            self.model, self.step, self.wall_time, self.init_info, self.init_note = (
                self.recipe.start_from(config.init_from, config)
            )
            config.width = self.model.config.width
        else:
            self.model = self.recipe.new_model(config)
        self.model.to(self.device).train()
        self.ema = None  # the averaged copy that is validated and exported, with --ema
        if config.ema:
            self.ema = copy.deepcopy(self.model).requires_grad_(False)
        lr, *betas = config.adam()
        self.recipe.prepare(self.model, config)
        self.opt_g = torch.optim.Adam(self.model.parameters(), lr=lr, betas=tuple(betas))
        self.disc = self.opt_d = None
        if config.adversarial:
            disc_config = (checkpoint or {}).get("disc_config") or {}
            self.disc = Discriminator(DiscriminatorConfig(**disc_config))
            self.disc.to(self.device).train()
            self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=lr, betas=tuple(betas))
        if checkpoint is not None:
            self.restore(checkpoint)  # Adam's state follows its parameters' device
        self.losses = {k: v.to(self.device) for k, v in self.recipe.losses(config).items()}

    def restore(self, checkpoint: dict) -> None:
        if self.ema is not None and checkpoint.get("ema") is not None:
            self.ema.load_state_dict(checkpoint["ema"])
        self.opt_g.load_state_dict(checkpoint["opt_g"])
        if self.disc is not None:
            self.disc.load_state_dict(checkpoint["disc"])
            self.opt_d.load_state_dict(checkpoint["opt_d"])
        self.step, self.wall_time = checkpoint["step"], checkpoint["wall_time"]
        self.best, self.best_step = checkpoint["best_val_psnr"], checkpoint["best_step"]
        self.history = checkpoint["history"]
        self.rng.bit_generator.state = checkpoint["rng"]["numpy"]
        torch.set_rng_state(checkpoint["rng"]["torch"])
        self.labels.set_state(checkpoint["rng"]["labels"])
        self.init_info = checkpoint.get("init_info")
        self.init_note = f"{self.ckpt_file} (step {self.step})"

    def load_data(self) -> None:
        data = Path(self.config.data)
        self.tiles = load_tiles(data / "train", by_source=self.config.balance == "source")
        self.val = load_validation(data / "val", self.config)
        self.data_info = data_summary(data, self.tiles)
        self.weights_file = Path(self.config.out_dir) / f"{self.config.name}.safetensors"

    def banner(self) -> str:
        config, procs, model, info = self.config, self.procs, self.model, self.data_info
        lr, *betas = config.adam()
        who = f"[process {procs.rank} of {procs.world}] " if procs.world > 1 else ""
        ema = f"; validated and exported: EMA of the weights, decay {config.ema:g}"
        decay = f" ({config.describe_lr()})" if config.decay_steps else ""
        sources = f" {info['sources']}" if "sources" in info else ""
        split = f"; {procs.world} processes, {config.batch_size // procs.world} samples each"
        return (
            f"{who}{config.name}: {type(model).__name__} width {model.config.width}, "
            f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params; "
            f"from {self.init_note}\n"
            f"  objective: {config.describe_loss()}\n"
            f"  Adam: lr {lr:g}{decay}, betas {tuple(betas)}"
            f"{ema if config.ema else ''}\n"
            f"  data: {info['train_tiles']} train tiles, {len(self.val.low)} val images "
            f"(degraded input {self.val.input_psnr:.2f} dB); crop {config.crop}, "
            f"whole {config.whole_frac}, balanced per {config.balance}{sources}, "
            f"batch {config.batch_size}; {torch.get_num_threads()} threads; on {self.device}"
            f"{split if procs.world > 1 else ''}"
        )

    # -- what the loop does

    @property
    def elapsed(self) -> float:
        """Seconds of training in all, over every invocation."""
        return self.wall_time + time.monotonic() - self.start

    def take_step(self) -> dict[str, float]:
        """Draw a batch (this process's part of it) and take one optimisation step."""
        config, procs = self.config, self.procs
        if config.loader_workers:
            if self.loader is None:  # started here, at the step the run is at
                self.loader = iter(
                    step_loader(
                        self.tiles,
                        config,
                        self.recipe.batch,
                        self.step,
                        config.loader_workers,
                        pin_memory=self.device.type == "cuda",
                    )
                )
            low, clean, wholes = next(self.loader)
        else:
            low, clean, wholes = self.recipe.batch(self.tiles, config, self.rng)
        if procs.world > 1:  # every process drew the global batch; each trains on its part
            part = procs.part(config.batch_size)
            low, clean, wholes = low[part], clean[part], wholes[part]
        if self.device.type != "cpu":
            low, clean = low.to(self.device), clean.to(self.device)
            wholes = [w.to(self.device) for w in wholes]
        stats = train_step(
            self.model,
            self.disc,
            self.opt_g,
            self.opt_d,
            self.losses[self.recipe.stage(self.step, config)],
            low,
            clean,
            lr=get_lr(self.step, config),
            labels=self.labels,
            params=self.recipe.global_params(self.model, wholes),
            sync=procs.average_gradients if procs.world > 1 else None,
        )
        if self.ema is not None:
            update_ema(self.ema, self.model, config.ema)
        self.step += 1
        return procs.mean(stats)

    def checkpoint(self) -> dict:
        disc, opt_d, ema = self.disc, self.opt_d, self.ema
        return {
            "model": self.model.state_dict(),
            "model_config": self.model.config_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "disc": disc.state_dict() if disc is not None else None,
            "disc_config": asdict(disc.config) if disc is not None else None,
            "opt_g": self.opt_g.state_dict(),
            "opt_d": opt_d.state_dict() if opt_d is not None else None,
            "config": asdict(self.config),
            "step": self.step,
            "wall_time": self.elapsed,
            "best_val_psnr": self.best,
            "best_step": self.best_step,
            "history": self.history,
            "init_info": self.init_info,
            "rng": {
                "numpy": self.rng.bit_generator.state,
                "torch": torch.get_rng_state(),
                "labels": self.labels.get_state(),
            },
        }

    def save_checkpoint(self) -> None:
        if self.procs.main:
            state = self.checkpoint()
            atomic_save(lambda tmp: torch.save(state, tmp), self.ckpt_file)

    def validate(self) -> None:
        """Score the model (its average, with --ema); export it when it is the best so far."""
        if not self.procs.main:
            self.history.append([self.step, None])
            return
        scored = self.ema if self.ema is not None else self.model
        by_group = group_scores(scored, self.val)
        score = summarise(by_group, self.config.select)
        self.history.append([self.step, score])
        improved = score > self.best
        if improved:  # a scratch run's step-0 score becomes the bar to beat, nothing is exported
            self.best, self.best_step = score, self.step
        exported = improved and self.step > self.recipe.first_val_step(self.config)
        if exported:
            export_weights(scored, self.weights_file, **self.metadata(score))
        note = (
            f"exported {self.weights_file}"
            if exported
            else f"best {self.best:.2f} dB at step {self.best_step}"
        )
        groups = ", ".join(f"{g} {np.mean(v):.2f}" for g, v in sorted(by_group.items()))
        self.progress.log(
            f"step {self.step}: val PSNR {score:.2f} dB (input {self.val.input_psnr:.2f}); {note}"
            f"\n  by group: {groups}"
        )

    def metadata(self, score: float) -> dict:
        """What an exported file says about how it was made."""
        config, procs = self.config, self.procs
        info = dict(
            steps=self.step,
            wall_time_s=round(self.elapsed, 1),
            val_psnr=round(score, 3),
            val_psnr_input=round(self.val.input_psnr, 3),
            val_images=len(self.val.low),
            data=self.data_info,
            objective=config.describe_loss(),
            preset=config.preset,
            crop=config.crop,
            whole_frac=config.whole_frac,
            balance=config.balance,
        )
        if self.ema is not None:
            info["ema"] = config.ema
        info.update(batch_size=config.batch_size, lr=config.adam()[0])
        if config.decay_steps:
            info["lr_schedule"] = (
                f"{config.describe_lr()}; lr at this step {get_lr(self.step, config):.3g}"
            )
        if procs.world > 1:
            info.update(
                processes=procs.world,
                effective_batch=config.batch_size,
                per_process_batch=config.batch_size // procs.world,
            )
        info["hardware"] = hardware(str(self.device))
        if self.init_info:
            info["init_from"] = self.init_info
        info.update(
            command=self.command, trained_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        )
        return info

    def loop(self) -> None:
        """Step until the budget is spent or a stop is asked for; validate every
        ``eval_every`` steps, checkpoint every ``checkpoint_minutes`` and on the way out."""
        config, procs = self.config, self.procs
        self.progress = _Progress(config, procs, self.step)
        self.start = last_ckpt = time.monotonic()
        deadline = self.start + config.minutes * 60 if config.minutes is not None else math.inf
        first_val = self.recipe.first_val_step(config)
        if not self.history and self.step >= first_val:  # the baseline, and the bar to beat
            self.validate()
        last_val_step = self.step
        try:
            while not procs.anyone(Stop.requested or time.monotonic() >= deadline):
                if config.steps is not None and self.step >= config.steps:
                    break
                stats = self.take_step()
                self.progress.update(self.step, stats, self.elapsed / 60)
                due = self.step % config.eval_every == 0 or not self.history
                if self.step >= first_val and due:
                    self.validate()
                    last_val_step = self.step
                if time.monotonic() - last_ckpt >= config.checkpoint_minutes * 60:
                    self.save_checkpoint()
                    last_ckpt = time.monotonic()
            if self.step != last_val_step and self.step >= first_val:
                self.validate()
        finally:
            self.save_checkpoint()
            self.progress.bar.close()
            self.loader = None  # its worker processes end with it


def train(config: TrainConfig, *, command: str = "") -> dict:
    """Run (or continue) training as ``config`` says; returns the final state summary."""
    procs = Processes.detect()
    if config.batch_size % procs.world:
        raise ValueError(
            f"--batch-size {config.batch_size} is the global batch; it must split evenly over "
            f"{procs.world} processes."
        )
    torch.set_num_threads(config.threads or max(1, len(os.sched_getaffinity(0))))
    config, checkpoint = resume_config(config)
    run = Run(config, procs, command)
    run.build(checkpoint)
    run.load_data()
    print(run.banner(), file=sys.stderr, flush=True)
    with Stop.catch():
        run.loop()
    procs.close()  # after rank 0's last checkpoint
    run.progress.log(
        f"stopped at step {run.step} after {run.elapsed / 60:.1f} min in all; "
        f"best {run.best:.2f} dB at step {run.best_step}; checkpoint {run.ckpt_file}"
    )
    summary = ("step", "wall_time", "best_val_psnr", "best_step")
    return dict(zip(summary, (run.step, run.elapsed, run.best, run.best_step), strict=True))


# ---------------------------------------------------------------------------------------------
# command line


def _parser():
    return config_parser(TrainConfig, "python -m dpe.train", __doc__.split("\n\n")[0])


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
