"""``accelerate launch --multi_gpu --num_processes 2 -m dpe.train``: data-parallel training.

``--multi_gpu`` picks Accelerate's torchrun launcher, which starts the processes on a CPU-only
machine too (its ``--cpu`` launcher starts several CPU processes only through MPI).

Two processes with a global batch of 4 (2 samples each) must take the steps one process takes
with a batch of 4: the same logged losses within TOLERANCE, and the same weights up to float
summation order (see the test for the bound). Needs requirements-scale.txt (CI installs it);
skipped without Accelerate.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dpe.weights import load_weights
from tests.conftest import free_port

pytest.importorskip("accelerate")

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = 1e-4  # absolute, on the losses (printed to 4 decimals) and on nearly every weight
LOSS_LINE = re.compile(r"^step (\d+): loss ([0-9.]+)", re.M)


def _args(root: Path, steps: int, *extra: str) -> list[str]:
    # --no-adversarial: the discriminator's BatchNorm sees each process's part of the batch
    # (as with DDP without SyncBatchNorm), so only the adversarial term would differ.
    return [
        "--data", str(root.parent / "data"), "--checkpoint-dir", str(root / "ckpt"),
        "--out-dir", str(root / "weights"), "--name", "tiny", "--width", "8", "--crop", "16",
        "--batch-size", "4", "--eval-every", "2", "--val-images", "2", "--val-size", "32",
        "--threads", "1", "--no-adversarial", "--log-every", "1", "--steps", str(steps), *extra,
    ]  # fmt: skip


def _run(argv: list[str], processes: int) -> subprocess.CompletedProcess:
    if processes == 1:
        command = [sys.executable, "-m", "dpe.train", *argv]
    else:
        command = [
            sys.executable, "-m", "accelerate.commands.launch", "--num_processes",
            str(processes), "--num_machines", "1", "--multi_gpu", "--mixed_precision", "no",
            "--dynamo_backend", "no", "--main_process_port", str(free_port()),
            "-m", "dpe.train", *argv,
        ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _losses(result: subprocess.CompletedProcess) -> dict[int, float]:
    return {int(s): float(v) for s, v in LOSS_LINE.findall(result.stderr)}


def test_two_processes_train_as_one_with_the_global_batch_and_resume(tiny_data):
    one, two = tiny_data / "one", tiny_data / "two"
    single = _run(_args(one, 4), 1)
    first = _run(_args(two, 2), 2)
    resumed = _run(_args(two, 4, "--resume"), 2)

    for result in (first, resumed):  # both processes ran
        assert "[process 0 of 2]" in result.stderr and "[process 1 of 2]" in result.stderr
        assert "2 processes, 2 samples each" in result.stderr
    assert sorted(p.name for p in (two / "ckpt").iterdir()) == ["tiny.pt"]  # written once

    expected = _losses(single)
    got = {**_losses(first), **_losses(resumed)}  # steps 1-2, then 3-4 after the resume
    assert sorted(expected) == sorted(got) == [1, 2, 3, 4]
    for step, loss in expected.items():
        assert abs(got[step] - loss) <= TOLERANCE, (step, got[step], loss)

    a = torch.load(one / "ckpt" / "tiny.pt", weights_only=True)
    b = torch.load(two / "ckpt" / "tiny.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
    assert [s for s, _ in a["history"]] == [s for s, _ in b["history"]] == [0, 2, 4]
    # Adam moves a weight by up to about lr per step whatever the gradient's size, so a weight
    # whose gradient is nearly zero may step differently on summation-order noise: bounded
    # by 2 lr per step, and rare.
    diffs = torch.cat([(b["model"][k] - v).abs().flatten() for k, v in a["model"].items()])
    assert diffs.max() <= 2 * 5e-4 * 4
    assert (diffs > TOLERANCE).float().mean() < 0.001 and diffs.mean() < 1e-5

    _, _, info = load_weights(two / "weights" / "tiny.safetensors")
    assert int(info["processes"]) == 2 and int(info["effective_batch"]) == 4
    assert int(info["per_process_batch"]) == 2 and float(info["lr"]) == 5e-4
