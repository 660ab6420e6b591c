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
to alter good images, is not exported. The best step is exported to ``OUT_DIR/NAME.safetensors``
with its validation history; ``checkpoints/NAME-global.pt`` lets a run resume exactly.
The local path is trained afterwards with ``python -m dpe.train --arch dpeg2 --init-from``.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from dpe.evaluate import degraded_twin, find_images
from dpe.nets import build_net
from dpe.train import (
    _atomic_save,
    _data_summary,
    _hardware,
    crop_of_degraded_tile,
    draw_preset,
    draw_tile,
    export_weights,
    load_tiles,
)


@dataclass
class GlobalConfig:
    name: str = "dpe-g"
    data: str = "data"
    width: int = 64  # the local path's width (untrained here, but part of the model)
    hidden: int = 64  # the global MLP's width
    features: int = 2  # dpe.nets.dpeg2.DPEG2Config.features
    crop: int = 192  # side of the native-resolution crops (smaller tiles are resized up)
    batch_size: int = 32
    clean_frac: float = 0.2
    mild_frac: float = 0.2
    lr: float = 2e-3
    cosine: bool = False  # decay lr to 10% over this invocation's --minutes (cosine)
    steps: int | None = None
    minutes: float | None = None
    eval_every: int = 100
    seed: int = 0
    threads: int = 1
    checkpoint_dir: str = "checkpoints"
    out_dir: str = "weights"
    resume: bool = False


ARCH_FIELDS = ("width", "hidden", "features")  # what a resumed run takes from its checkpoint
OLD_DEFAULTS = {"features": 1}  # checkpoints written before the field existed


def sample_batch(tiles, config: GlobalConfig, rng: np.random.Generator):
    """(low, clean) tensors (B, 3, crop, crop): native-resolution crops of degraded tiles,
    drawn as `dpe.train` draws them (groups, then sources, equally often)."""
    lows, cleans = [], []
    for _ in range(config.batch_size):
        tile = draw_tile(tiles, rng)
        preset = draw_preset(config.clean_frac, config.mild_frac, "paper", rng)
        low, clean, _ = crop_of_degraded_tile(tile, config.crop, preset, rng)
        lows.append(low)
        cleans.append(clean)
    stack = lambda xs: torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    return stack(lows), stack(cleans)


def load_val(folder: Path) -> list[tuple[str, torch.Tensor, np.ndarray]]:
    """(group, degraded tensor, clean array) and (group, clean tensor, clean array) per image."""
    from dpe.io import load_image

    out = []
    for item in find_images([folder]):
        loaded = load_image(item.path)
        clean = loaded.image
        low = degraded_twin(clean, item.relpath, preset="paper", seed=0, gray=loaded.gray)
        for kind, x in (("degraded", low), ("clean", clean)):
            out.append((f"{item.group}/{kind}", torch.from_numpy(x).permute(2, 0, 1)[None], clean))
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


class _Stop:
    requested = False


def _stop(signum, frame):
    _Stop.requested = True


def train_global(config: GlobalConfig, *, command: str = "") -> dict:
    """Run (or resume) the global stage; returns the best step's summary."""
    torch.set_num_threads(config.threads or len(os.sched_getaffinity(0)))
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    ckpt = Path(config.checkpoint_dir) / f"{config.name}-global.pt"
    state = None
    if config.resume and ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        for key in ARCH_FIELDS:  # the checkpoint's network, whatever the command line says
            setattr(config, key, state["config"].get(key, OLD_DEFAULTS.get(key, 64)))
    model = build_net({"arch": "dpeg2", **{k: getattr(config, k) for k in ARCH_FIELDS}})
    opt = torch.optim.Adam(model.glob.parameters(), lr=config.lr)
    step, wall, best, best_step, history = 0, 0.0, -math.inf, 0, []
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        for group in opt.param_groups:  # the lr asked for now, not the one saved
            group["lr"] = config.lr
        rng.bit_generator.state = state["rng"]
        step, wall, best, best_step, history = (
            state[k] for k in ("step", "wall", "best", "best_step", "history")
        )
    data = Path(config.data)
    tiles = load_tiles(data / "train", by_source=True)
    val = load_val(data / "val")
    info = _data_summary(data, tiles)
    out_file = Path(config.out_dir) / f"{config.name}.safetensors"
    start = time.monotonic()
    deadline = start + config.minutes * 60 if config.minutes else math.inf
    signal.signal(signal.SIGTERM, _stop)

    def save() -> None:
        state = {
            "model": model.state_dict(),
            "opt": opt.state_dict(),
            "rng": rng.bit_generator.state,
            "config": asdict(config),
            **dict(step=step, wall=wall + time.monotonic() - start, best=best),
            **dict(best_step=best_step, history=history),
        }
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        _atomic_save(lambda tmp: torch.save(state, tmp), ckpt)

    def evaluate_step() -> None:
        nonlocal best, best_step
        scores = validate(model, val)
        worst = min(scores.values())
        history.append([step, round(worst, 3), {k: round(v, 2) for k, v in scores.items()}])
        if worst > best:
            best, best_step = worst, step
            export_weights(
                model,
                out_file,
                steps=step,
                wall_time_s=round(wall + time.monotonic() - start, 1),
                val_worst_psnr=round(worst, 3),
                val_psnr=round(float(np.mean(list(scores.values()))), 3),
                val_groups={k: round(v, 3) for k, v in scores.items()},
                val_history=[h[:2] for h in history],
                data=info,
                objective="global stage: L1 of the globally corrected crop; local path at zero",
                training=f"{config.clean_frac:g} clean, {config.mild_frac:g} mild, rest paper",
                crop=config.crop,
                batch_size=config.batch_size,
                lr=config.lr,
                hardware=_hardware(),
                command=command,
                trained_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            )
        worst_key = min(scores, key=scores.get)
        print(
            f"step {step}: worst {worst:.2f} dB ({worst_key}), mean "
            f"{np.mean(list(scores.values())):.2f}; best {best:.2f} at {best_step}",
            file=sys.stderr,
            flush=True,
        )

    if not history:
        evaluate_step()
    last_save = time.monotonic()
    while not _Stop.requested and time.monotonic() < deadline:
        if config.steps is not None and step >= config.steps:
            break
        low, clean = sample_batch(tiles, config, rng)
        if config.cosine and config.minutes:
            done = min(1.0, (time.monotonic() - start) / (config.minutes * 60))
            for group in opt.param_groups:
                group["lr"] = config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * done)))
        with torch.enable_grad():
            loss = (model(low, local=False) - clean).abs().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        step += 1
        if step % config.eval_every == 0:
            evaluate_step()
        if time.monotonic() - last_save > 120:
            save()
            last_save = time.monotonic()
    if history[-1][0] != step:
        evaluate_step()
    save()
    return {"step": step, "best": best, "best_step": best_step}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpe.train_global", description=__doc__)
    for field, default in asdict(GlobalConfig()).items():
        flag = "--" + field.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true")
        else:
            kind = type(default) if default is not None else float
            kind = int if field == "steps" else kind
            parser.add_argument(flag, type=kind, default=default)
    args = parser.parse_args(argv)
    config = GlobalConfig(**vars(args))
    summary = train_global(config, command="python -m dpe.train_global " + " ".join(argv or []))
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
