"""The global stage of DPE-G v2 (``dpe.nets.dpeg2``): learn exposure from whole images.

    python -m dpe.train_global --name dpe-g --minutes 40 --out-dir out/cand-g --resume

Only the global path trains here (the local residual stays at its zero start, so the exported
model is the identity plus a learned global correction). Each step draws a batch of tiles as
``dpe.train`` does (each group equally often, then each source within it), leaves a tile clean
(it must come back unchanged), or degrades it with ``mild`` or ``paper``, in proportions
``--clean-frac``, ``--mild-frac`` and the rest, then cuts one native-resolution crop from it.
The loss is the L1 distance of the corrected crop to the clean crop.

Validation scores every validation image of every group twice, degraded (``paper``, seed 0,
keyed by file name, as ``dpe.evaluate`` does) and clean, and the score of a step is the
**worst** of the per-group means: a step that helps the mean but hurts one modality, or starts
to alter good images, is not exported. With ``--keep-start TOL`` a step is also not exported
when any group scores more than TOL dB below step 0 (with ``--init-from``: the model it started
from). The best step is exported to ``OUT_DIR/NAME.safetensors``
with its validation history; ``checkpoints/NAME-global.pt`` lets a run resume exactly.
The local path is trained afterwards with ``python -m dpe.train --arch dpeg2 --init-from``.
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

from dpe._image import is_gray
from dpe.datasets import degraded_twin, find_images
from dpe.nets import build_net
from dpe.training.cli import config_parser, flag
from dpe.training.runtime import (
    Stop,
    atomic_save,
    data_summary,
    export_weights,
    hardware,
    update_ema,
)
from dpe.training.samples import (
    crop_of_degraded_tile,
    draw_preset,
    draw_tile,
    load_tiles,
    to_batch,
)


@dataclass
class GlobalConfig:
    name: str = flag("dpe-g", "run name: checkpoints/NAME-global.pt and OUT_DIR/NAME.safetensors")
    data: str = flag("data", "folder holding train/ and val/ subfolders of clean images")
    width: int = flag(64, "the local path's width (untrained here, but part of the model)")
    hidden: int = flag(64, "the global MLP's width")
    features: int = flag(2, "feature set of the global path (dpe.nets.dpeg2.DPEG2Config)")
    head: str = flag("gain", "how the MLP's output becomes the correction: gain or stretch")
    crop: int = flag(192, "side of the native-resolution crops (smaller tiles are resized up)")
    batch_size: int = flag(32, "crops per step")
    clean_frac: float = flag(0.2, "fraction of crops left clean (they must come back unchanged)")
    mild_frac: float = flag(0.2, "fraction of crops degraded with 'mild' (the rest: 'paper')")
    rewindow_frac: float = flag(
        0.0, "fraction of gray tiles first stretched to the full range (samples.rewindow)"
    )
    rewindow_clip: float = flag(
        1.0, "a rewindowed tile clips up to this many per cent of its pixels at each end"
    )
    init_from: str | None = flag(
        None, "start from this weights file's global path (new feature inputs start at zero)"
    )
    val_windowed: bool = flag(
        False, "also validate on every gray val image stretched to its own 0.5-99.5% range"
    )
    keep_start: float | None = flag(
        None,
        "export only steps that score no more than this many dB below step 0 on every val "
        "group (with --init-from: never worse than the model it started from)",
    )
    ema: float = flag(
        0.0, "validate and export a moving average of the weights, this decay (0: off)"
    )
    lr: float = flag(2e-3, "Adam lr")
    cosine: bool = flag(False, "decay lr to 10% over this invocation's --minutes (cosine)")
    steps: int | None = flag(None, "stop when the total step count reaches this")
    minutes: float | None = flag(None, "stop after this many minutes of this invocation")
    eval_every: int = flag(100, "validate, and export the weights if best, every N steps")
    seed: int = flag(0, "seeds the data order and the init")
    threads: int = flag(1, "torch threads (0: every core)")
    checkpoint_dir: str = flag("checkpoints", "where NAME-global.pt is written")
    out_dir: str = flag("weights", "where NAME.safetensors is written")
    resume: bool = flag(False, "continue from the checkpoint if it exists (else start anew)")


# what a resumed run takes from its checkpoint
ARCH_FIELDS = ("width", "hidden", "features", "head")
OLD_DEFAULTS = {"features": 1, "head": "gain"}  # checkpoints written before the field existed


def sample_batch(tiles, config: GlobalConfig, rng: np.random.Generator):
    """(low, clean) tensors (B, 3, crop, crop): native-resolution crops of degraded tiles,
    drawn as `dpe.train` draws them (groups, then sources, equally often)."""
    lows, cleans = [], []
    for _ in range(config.batch_size):
        tile = draw_tile(tiles, rng)
        preset = draw_preset(config.clean_frac, config.mild_frac, "paper", rng)
        # a windowed display is a gray-scale thing: colour photographs keep their tile's range
        rewindowed = (
            config.rewindow_frac > 0 and is_gray(tile) and rng.random() < config.rewindow_frac
        )
        low, clean, _ = crop_of_degraded_tile(
            tile, config.crop, preset, rng, rewindowed=rewindowed, clip=config.rewindow_clip
        )
        lows.append(low)
        cleans.append(clean)
    return to_batch(lows), to_batch(cleans)


def load_val(folder: Path, windowed: bool = False) -> list[tuple[str, torch.Tensor, np.ndarray]]:
    """(group, degraded tensor, clean array) and (group, clean tensor, clean array) per image.

    ``windowed`` adds each gray image once more, stretched to its own 0.5-99.5% luminance range
    as a viewer windows a whole image (group ``GROUP-windowed``): the val tiles are cut from
    larger images and rarely reach white, so without these the export rule would favour a
    model that never stretches to white.
    """
    from dpe.io import load_image
    from dpe.methods.classic import autocontrast

    out = []
    for item in find_images([folder]):
        loaded = load_image(item.path)
        views = [(item.group, loaded.image)]
        if windowed and loaded.gray:
            views.append((f"{item.group}-windowed", autocontrast(loaded.image, low=0.5, high=99.5)))
        for group, clean in views:
            low = degraded_twin(clean, item.relpath, preset="paper", seed=0, gray=loaded.gray)
            for kind, x in (("degraded", low), ("clean", clean)):
                x = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None]
                out.append((f"{group}/{kind}", x, clean))
    return out


@torch.no_grad()
def validate(model, val) -> dict[str, float]:
    """Mean PSNR per group and input kind (clean-input PSNR capped at 60 dB)."""
    from dpe.metrics import psnr

    scores: dict[str, list[float]] = {}
    for key, x, clean in val:
        out = model(x, local=False)[0].permute(1, 2, 0).numpy()
        scores.setdefault(key, []).append(min(psnr(clean, out), 60.0))
    return {k: float(np.mean(v)) for k, v in sorted(scores.items())}


def init_global_path(model, path: str | Path) -> None:
    """Copy a weights file's global MLP into ``model``'s, whose feature set may be larger.

    Feature sets only ever append columns, so the file's first layer fills the leading input
    columns and the new ones start at zero: the model starts as exactly the file's model, and
    training can only bring the new features in where they lower the loss.
    """
    from dpe.weights import load_weights

    state, config, _ = load_weights(path)
    if config.get("arch") != "dpeg2" or config.get("head", "gain") != model.config.head:
        raise ValueError(f"{path}: not a DPE-G v2 file with the {model.config.head!r} head.")
    if config.get("features", 1) > model.config.features:
        raise ValueError(f"{path} reads more features than --features {model.config.features}.")
    own = model.glob.state_dict()
    for key, value in state.items():
        if not key.startswith("glob."):
            continue
        name = key.removeprefix("glob.")
        target = own[name]
        if value.shape != target.shape:  # the first layer: (hidden, fewer inputs)
            if value.shape[0] != target.shape[0] or value.dim() != 2:
                raise ValueError(f"{path}: {key} has shape {tuple(value.shape)}.")
            grown = torch.zeros_like(target)
            grown[:, : value.shape[1]] = value
            value = grown
        own[name] = value.to(target.dtype)
    model.glob.load_state_dict(own)


class GlobalRun:
    """The global stage's state (model, optimiser, counters) and what it does with it."""

    def __init__(self, config: GlobalConfig, command: str = ""):
        torch.manual_seed(config.seed)
        self.config, self.command = config, command
        self.rng = np.random.default_rng(config.seed)
        self.ckpt = Path(config.checkpoint_dir) / f"{config.name}-global.pt"
        state = None
        if config.resume and self.ckpt.is_file():
            state = torch.load(self.ckpt, map_location="cpu", weights_only=False)
            for key in ARCH_FIELDS:  # the checkpoint's network, whatever the command line says
                setattr(config, key, state["config"].get(key, OLD_DEFAULTS.get(key, 64)))
        arch = {k: getattr(config, k) for k in ARCH_FIELDS}
        self.model = build_net({"arch": "dpeg2", **arch})
        self.opt = torch.optim.Adam(self.model.glob.parameters(), lr=config.lr)
        self.step, self.wall, self.best, self.best_step, self.history = 0, 0.0, -math.inf, 0, []
        if state is None and config.init_from:
            init_global_path(self.model, config.init_from)
        if not 0.0 <= config.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1); got {config.ema}.")
        self.ema = copy.deepcopy(self.model).requires_grad_(False) if config.ema else None
        if state is not None:
            self.model.load_state_dict(state["model"])
            if self.ema is not None:
                self.ema.load_state_dict(state.get("ema") or state["model"])
            self.opt.load_state_dict(state["opt"])
            self.set_lr(config.lr)  # the lr asked for now, not the one saved
            self.rng.bit_generator.state = state["rng"]
            self.step, self.wall, self.best, self.best_step, self.history = (
                state[k] for k in ("step", "wall", "best", "best_step", "history")
            )
        data = Path(config.data)
        self.tiles = load_tiles(data / "train", by_source=True)
        self.val = load_val(data / "val", config.val_windowed)
        self.info = data_summary(data, self.tiles)
        self.out_file = Path(config.out_dir) / f"{config.name}.safetensors"
        self.start = time.monotonic()

    def set_lr(self, lr: float) -> None:
        for group in self.opt.param_groups:
            group["lr"] = lr

    def save(self) -> None:
        state = {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "opt": self.opt.state_dict(),
            "rng": self.rng.bit_generator.state,
            "config": asdict(self.config),
            **dict(step=self.step, wall=self.wall + time.monotonic() - self.start),
            **dict(best=self.best, best_step=self.best_step, history=self.history),
        }
        atomic_save(lambda tmp: torch.save(state, tmp), self.ckpt)

    def take_step(self) -> None:
        config = self.config
        low, clean = sample_batch(self.tiles, config, self.rng)
        if config.cosine and config.minutes:
            done = min(1.0, (time.monotonic() - self.start) / (config.minutes * 60))
            self.set_lr(config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * done))))
        with torch.enable_grad():
            loss = (self.model(low, local=False) - clean).abs().mean()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        if self.ema is not None:
            update_ema(self.ema, self.model, config.ema)
        self.step += 1

    def eligible(self, scores: dict[str, float]) -> bool:
        """Whether ``--keep-start`` lets this step be exported (step 0 always may be)."""
        tol = self.config.keep_start
        if tol is None or not self.history:
            return True
        start = self.history[0][2]
        return all(scores[k] >= start[k] - tol for k in start)

    def evaluate(self) -> None:
        """Score every group; export the model when its worst group is the best so far."""
        scored = self.ema if self.ema is not None else self.model  # with --ema, the average
        scores = validate(scored, self.val)
        worst, mean = min(scores.values()), float(np.mean(list(scores.values())))
        eligible = self.eligible(scores)
        self.history.append(
            [self.step, round(worst, 3), {k: round(v, 2) for k, v in scores.items()}]
        )
        if eligible and worst > self.best:
            self.best, self.best_step = worst, self.step
            export_weights(scored, self.out_file, **self.metadata(worst, mean, scores))
        print(
            f"step {self.step}: worst {worst:.2f} dB ({min(scores, key=scores.get)}), mean "
            f"{mean:.2f}; best {self.best:.2f} at {self.best_step}"
            + ("" if eligible else " (below step 0 on a group: not exported)"),
            file=sys.stderr,
            flush=True,
        )

    def metadata(self, worst: float, mean: float, scores: dict[str, float]) -> dict:
        config = self.config
        return dict(
            steps=self.step,
            wall_time_s=round(self.wall + time.monotonic() - self.start, 1),
            val_worst_psnr=round(worst, 3),
            val_psnr=round(mean, 3),
            val_groups={k: round(v, 3) for k, v in scores.items()},
            val_history=[h[:2] for h in self.history],
            data=self.info,
            objective="global stage: L1 of the globally corrected crop; local path at zero",
            training=f"{config.clean_frac:g} clean, {config.mild_frac:g} mild, rest paper; "
            f"{config.rewindow_frac:g} of gray tiles rewindowed"
            + ("" if config.rewindow_clip == 1.0 else f", clipping up to {config.rewindow_clip:g}%")
            + (
                ""
                if config.keep_start is None
                else f"; exported only within {config.keep_start:g} dB of step 0 on every val group"
            )
            + (f"; weights averaged (EMA, decay {config.ema:g})" if config.ema else ""),
            crop=config.crop,
            batch_size=config.batch_size,
            lr=config.lr,
            hardware=hardware(),
            command=self.command,
            trained_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )


def train_global(config: GlobalConfig, *, command: str = "") -> dict:
    """Run (or resume) the global stage; returns the best step's summary."""
    torch.set_num_threads(config.threads or len(os.sched_getaffinity(0)))
    run = GlobalRun(config, command)
    deadline = run.start + config.minutes * 60 if config.minutes else math.inf
    with Stop.catch():
        if not run.history:
            run.evaluate()
        last_save = time.monotonic()
        while not Stop.requested and time.monotonic() < deadline:
            if config.steps is not None and run.step >= config.steps:
                break
            run.take_step()
            if run.step % config.eval_every == 0:
                run.evaluate()
            if time.monotonic() - last_save > 120:
                run.save()
                last_save = time.monotonic()
        if run.history[-1][0] != run.step:
            run.evaluate()
        run.save()
    return {"step": run.step, "best": run.best, "best_step": run.best_step}


def main(argv: list[str] | None = None) -> int:
    parser = config_parser(GlobalConfig, "python -m dpe.train_global", __doc__.split("\n\n")[0])
    config = GlobalConfig(**vars(parser.parse_args(argv)))
    argv = sys.argv[1:] if argv is None else argv
    summary = train_global(config, command="python -m dpe.train_global " + " ".join(argv))
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
