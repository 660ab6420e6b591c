"""Files per second: one process vs ``--engine ray`` on a local cluster of 1 and 2 CPUs.

    python benchmarks/bench_scale.py [--files 40] [--side 512] [--method dpe-s]

Writes a folder of ``--files`` PNGs (``--side`` px square; every fourth a 16-bit gray one),
enhances it four times (one process as ``python -m dpe enhance`` runs it, on every core and
with ``OMP_NUM_THREADS=1``, the thread count of one Ray actor; Ray with
``ray.init(num_cpus=1)`` and ``num_cpus=2``, each in a fresh process so clusters do not
overlap), then measures one worker's stages alone (decode, model, write: seconds per file,
one torch thread) and one model worker's peak memory. Prints a Markdown table of measured
numbers, and, labelled as arithmetic, what a cluster of N such workers should do.
Needs requirements-scale.txt. Times include loading the weights; the Ray rows exclude starting
the local cluster (printed apart), which a long archive run pays once.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def make_folder(folder: Path, files: int, side: int) -> None:
    """Smooth, dim, noisy images, the kind the methods are for; every fourth 16-bit gray."""
    from dpe.io import save_image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side] / side
    for i in range(files):
        base = 0.25 * (0.5 + 0.5 * np.sin(6 * xx + i) * np.cos(4 * yy - i))
        rgb = base[..., None] * rng.uniform(0.6, 1.0, 3) + rng.normal(0, 0.02, (side, side, 3))
        sub = folder / f"part{i % 4}"
        sub.mkdir(parents=True, exist_ok=True)
        if i % 4 == 0:
            gray = np.repeat(rgb.mean(axis=2, keepdims=True), 3, axis=2)
            save_image(np.clip(gray, 0, 1), sub / f"f{i:03d}.png", bits=16)
        else:
            save_image(np.clip(rgb, 0, 1), sub / f"f{i:03d}.png")


def _child(kind: str, folder: str, out: str, method: str, cpus: int) -> dict:
    """One measured run, in this (fresh) process."""
    from dpe.__main__ import main

    argv = ["enhance", folder, "--method", method, "--out", out, "--quiet"]
    started = 0.0
    if kind == "ray":
        import ray

        start = time.perf_counter()
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        started = time.perf_counter() - start
        argv += ["--engine", "ray"]
    start = time.perf_counter()
    main(argv)
    return {"seconds": time.perf_counter() - start, "cluster_start": started}


def _stages(folder: Path, method: str) -> dict:
    """One worker's seconds per file for each stage, one thread, and its peak memory."""
    import io

    import torch

    import dpe

    torch.set_num_threads(1)
    files = sorted(folder.rglob("*.png"))
    model = dpe.get_method(method)
    decode = enhance = write = 0.0
    for path in files:
        t0 = time.perf_counter()
        loaded = dpe.load_image(path)
        t1 = time.perf_counter()
        result = model.enhance(loaded.image, gray=loaded.gray)
        t2 = time.perf_counter()
        dpe.save_image(result, io.BytesIO(), bits=16 if loaded.bit_depth > 8 else 8)
        t3 = time.perf_counter()
        decode, enhance, write = decode + t1 - t0, enhance + t2 - t1, write + t3 - t2
    n = len(files)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return {"decode": decode / n, "model": enhance / n, "write": write / n, "peak_mb": peak_mb}


def _run(*args: str, env: dict | None = None) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--method", default="dpe-s")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "stages":
            print(json.dumps(_stages(Path(rest[0]), rest[1])))
        else:
            print(json.dumps(_child(kind, rest[0], rest[1], rest[2], int(rest[3]))))
        return

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        make_folder(folder, args.files, args.side)
        runs = [
            ("one process", "single", 0, {}),
            ("one process, OMP_NUM_THREADS=1", "single", 1, {"OMP_NUM_THREADS": "1"}),
            ("Ray, 1 CPU", "ray", 1, {}),
            ("Ray, 2 CPUs", "ray", 2, {}),
        ]
        rows = []
        for label, kind, cpus, env in runs:
            out = str(Path(tmp) / f"out-{kind}{cpus}")
            rows.append((label, _run(kind, str(folder), out, args.method, str(cpus), env=env)))
        stages = _run("stages", str(folder), args.method)

    mp = args.side * args.side / 1e6
    print(f"{args.files} files, {args.side}x{args.side} ({mp:.2f} MP), method {args.method}\n")
    print("| run | seconds | files/s | cluster start (s, not included) |")
    print("| --- | ---: | ---: | ---: |")
    for label, got in rows:
        start = f"{got['cluster_start']:.1f}" if got["cluster_start"] else "-"
        print(f"| {label} | {got['seconds']:.1f} | {args.files / got['seconds']:.2f} | {start} |")
    print("\nOne worker, one thread, per file (measured):\n")
    print("| decode (s) | model (s) | write PNG (s) | worker peak memory (MB) |")
    print("| ---: | ---: | ---: | ---: |")
    s = stages
    print(f"| {s['decode']:.3f} | {s['model']:.3f} | {s['write']:.3f} | {s['peak_mb']:.0f} |")
    print("\nArithmetic from those per-worker figures (not measured on a cluster):\n")
    per_actor = 1 / s["model"]
    per_cpu_io = 1 / (s["decode"] + s["write"])
    print(f"- one model actor: {per_actor:.1f} files/s; N actors: {per_actor:.1f} x N files/s")
    print(
        f"- one CPU decoding and writing: {per_cpu_io:.1f} files/s, so each model actor needs "
        f"{per_actor / per_cpu_io:.2f} CPUs of decode/write beside it"
    )
    print(f"- memory: about {s['peak_mb']:.0f} MB per worker at {mp:.2f} MP")


if __name__ == "__main__":
    main()
