"""What every training run needs around its loop: files, averaging, processes, stopping.

Checkpoints and exported weights are written atomically (a crash never leaves half a file);
exported weights are fp16 safetensors with their config and metadata (``dpe.weights``).
"""

from __future__ import annotations

import hashlib
import os
import platform
import signal
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


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


def atomic_save(save, path: Path) -> None:
    """Write via a temporary file, so a crash mid-write never leaves a broken file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save(tmp)
    os.chmod(tmp, 0o644)  # safetensors creates its files private (0600); these are to be shared
    os.replace(tmp, path)


def hardware(device: str = "cpu") -> str:
    """The CPU (and the GPU, when ``device`` is one), torch's threads and version."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = ""
    if str(device).startswith("cuda"):
        gpu = f"{torch.cuda.get_device_name(torch.device(device))}, "
    return f"{gpu}{cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def data_summary(folder: Path, tiles: dict) -> dict:
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

    atomic_save(
        lambda tmp: save_weights(model.state_dict(), tmp, model.config_dict(), **info), path
    )


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


class Stop:
    """Set by SIGTERM/SIGINT while :meth:`catch` is active; a loop finishes its step,
    checkpoints and exits."""

    requested = False

    @classmethod
    def handler(cls, signum, frame):
        cls.requested = True

    @classmethod
    @contextmanager
    def catch(cls):
        """Route SIGTERM and SIGINT to :meth:`handler` for the duration, then restore them."""
        cls.requested = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, cls.handler)
        try:
            yield cls
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
