"""How each architecture trains: one recipe per ``--arch``, read by ``dpe.train``'s loop.

A recipe says what differs between architectures and nothing else: the Adam settings of its
paper, its losses (by stage, for RetinexNet's two), when its output is worth validating, how a
run starts from other weights, which parameters train, and how a batch is drawn. The loop
(``dpe.train.train``) is the same for all of them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from dpe.degrade import degrade
from dpe.losses import GeneratorLoss, RetinexLoss
from dpe.nets import build_net
from dpe.training.samples import (
    Tiles,
    crop_of_degraded_tile,
    draw_preset,
    draw_tile,
    sample_patch,
    to_batch,
)

Batch = tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]  # low, clean, whole tiles (dpeg2)


class Recipe:
    """DPENet's recipe (the paper's): L1 + feature + adversarial terms, Adam 5e-4 (0.9, 0.99)."""

    arch = "dpenet"
    adam = (5e-4, 0.9, 0.99)  # DPE paper
    dpe_objective = True  # DPE's loss, each term switchable; False: the paper's own loss
    stages: tuple[str | None, ...] = (None,)
    has_global_stage = False  # a global path trained beforehand, which --freeze-global keeps

    def check(self, config) -> None:
        """Bring ``config`` in line with this architecture, or raise ValueError."""
        if not self.dpe_objective:
            # the baselines train with their own papers' losses: DPE's extra terms are off
            if not config.pixel:
                raise ValueError(f"--no-pixel applies to dpenet only; {self.arch} needs its loss.")
            config.feature = config.adversarial = False
        if len(self.stages) == 1:
            config.decom_steps = 0
        elif config.decom_steps < 0:
            raise ValueError(f"decom_steps must be at least 0; got {config.decom_steps}.")
        if config.freeze_global and not self.has_global_stage:
            raise ValueError(f"--freeze-global applies to dpeg2 only, not {self.arch}.")

    def losses(self, config) -> dict[str | None, nn.Module]:
        """The loss of each stage (see :meth:`stage`)."""
        return {None: GeneratorLoss(config.objective())}

    def stage(self, step: int, config) -> str | None:
        return None

    def first_val_step(self, config) -> int:
        """The first step whose output means something (validated and exported from then on)."""
        return 0

    def describe_loss(self, config) -> str:
        return config.objective().describe()

    def new_model(self, config) -> nn.Module:
        return build_net({"arch": self.arch, "width": config.width})

    def start_from(self, path: str, config) -> tuple[nn.Module, int, float, dict | None, str]:
        """(model, step, wall time, origin, note) for a run started from a weights file."""
        from dpe.weights import load_weights

        state, net_config, info = load_weights(path)
        if net_config["arch"] != self.arch:
            arch = net_config["arch"]
            raise ValueError(f"{path} holds a {arch}; pass --arch {arch}.")
        model = build_net(net_config)
        model.load_state_dict(state)
        step, wall_time = int(info.get("steps", 0)), float(info.get("wall_time_s", 0.0))
        # the same lineage: keep where it started
        return model, step, wall_time, info.get("init_from"), f"{path} (step {step})"

    def prepare(self, model: nn.Module, config) -> None:
        """Freeze what this run must not train."""

    def batch(self, tiles: Tiles, config, rng: np.random.Generator) -> Batch:
        """(low, clean) float tensors (B, 3, crop, crop): random crops, or with probability
        ``whole_frac`` whole tiles downscaled, each degraded on its own."""
        lows, cleans = [], []
        for _ in range(config.batch_size):
            tile = draw_tile(tiles, rng)
            preset = draw_preset(config.clean_frac, config.mild_frac, config.preset, rng)
            clean = sample_patch(tile, config.crop, rng.random() < config.whole_frac, rng)
            cleans.append(clean)
            lows.append(clean if preset is None else degrade(clean, preset, rng))
        return to_batch(lows), to_batch(cleans), []

    def global_params(self, model: nn.Module, wholes: list[torch.Tensor]) -> torch.Tensor | None:
        """DPE-G v2's correction of each patch, read from its whole degraded tile."""
        return None


class DPEG(Recipe):
    """DPE-G: DPENet plus a global path, trained with DPE's objective; ``--init-from`` a DPENet
    file starts its local path from those weights and its global path from scratch."""

    arch = "dpeg"

    def start_from(self, path, config):
        from dpe.weights import load_weights

        state, net_config, info = load_weights(path)
        if net_config["arch"] != "dpenet":
            return super().start_from(path, config)
        model = build_net({"arch": "dpeg", "width": net_config["width"]})
        model.local.load_state_dict(state)
        origin = {
            "file": Path(path).name,
            "steps": int(info.get("steps", 0)),
            "wall_time_s": float(info.get("wall_time_s", 0.0)),
        }
        # the step count starts at 0 and the metadata records the origin
        return model, 0, 0.0, origin, f"{path} (local path, step {origin['steps']})"


class DPEG2(Recipe):
    """DPE-G v2's local stage: a residual from zero on top of a trained global path, gently.
    Each patch is cut from its whole degraded tile, whose global correction it uses."""

    arch = "dpeg2"
    adam = (2e-4, 0.9, 0.99)
    has_global_stage = True

    def prepare(self, model, config) -> None:
        if config.freeze_global:
            model.glob.requires_grad_(False)  # the local stage: the global path stays put

    def batch(self, tiles, config, rng) -> Batch:
        lows, cleans, wholes = [], [], []
        for _ in range(config.batch_size):
            tile = draw_tile(tiles, rng)
            preset = draw_preset(config.clean_frac, config.mild_frac, config.preset, rng)
            low, clean, whole = crop_of_degraded_tile(tile, config.crop, preset, rng)
            wholes.append(torch.from_numpy(whole).permute(2, 0, 1)[None])
            cleans.append(clean)
            lows.append(low)
        return to_batch(lows), to_batch(cleans), wholes

    def global_params(self, model, wholes):
        return torch.cat([model.global_params(w) for w in wholes])


class RetinexNet(Recipe):
    """RetinexNet, in its paper's two stages: the first ``decom_steps`` steps train the
    Decom-Net alone with the decomposition loss; the later ones freeze it and train the
    Enhance-Net with the relight loss. Adam 1e-3 (its code; TensorFlow's default betas)."""

    arch = "retinexnet"
    adam = (1e-3, 0.9, 0.999)
    dpe_objective = False
    stages = RetinexLoss.STAGES

    def losses(self, config):
        return {stage: RetinexLoss(stage) for stage in RetinexLoss.STAGES}

    def stage(self, step, config):
        return "decom" if step < config.decom_steps else "relight"

    def first_val_step(self, config) -> int:
        return config.decom_steps  # its output means nothing before the relight stage

    def describe_loss(self, config) -> str:
        return (
            f"steps < {config.decom_steps}: {RetinexLoss('decom').describe()}; "
            f"then (Decom-Net frozen): {RetinexLoss('relight').describe()}"
        )


class DRAN(Recipe):
    """DRAN: plain L1, Adam 1e-3 (0.5, 0.99), as its paper."""

    arch = "dran"
    adam = (1e-3, 0.5, 0.99)
    dpe_objective = False


RECIPES: dict[str, Recipe] = {r.arch: r for r in (Recipe(), DPEG(), DPEG2(), RetinexNet(), DRAN())}
