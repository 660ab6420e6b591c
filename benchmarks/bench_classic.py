"""Time LIME and DUAL at several sizes and print markdown tables.

    python benchmarks/bench_classic.py                 # 256, 512, 1024; denoise off and on
    python benchmarks/bench_classic.py --sizes 512 --no-denoise

Time is the median of ``--repeats`` calls (wall clock, after one warm-up call per method at the
smallest size). Peak memory is measured in a fresh subprocess per case, one call: its peak
resident set size (VmHWM from /proc/self/status) minus its resident size just before the call,
i.e. the memory the call itself needed, native allocations (LAPACK, SuperLU, OpenCV, BM3D)
included. (In the timing process freed memory stays mapped between calls, which would hide
most of it.) Linux only. The input is scikit-image's astronaut, resized and darkened to look
under-exposed.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from dpe.methods.dual import dual  # noqa: E402
from dpe.methods.lime import lime  # noqa: E402

METHODS = {"LIME": lime, "DUAL": dual}
TARGETS_S = {("LIME", 512): 0.3, ("LIME", 1024): 1.5, ("DUAL", 512): 0.7, ("DUAL", 1024): 3.5}
TARGET_PEAK_MB_1024 = 600


def dark_image(size: int) -> np.ndarray:
    """Under-exposed astronaut, float32 (size, size, 3)."""
    from skimage import data, transform

    image = transform.resize(data.astronaut(), (size, size), anti_aliasing=True)
    rng = np.random.default_rng(0)
    dark = 0.35 * image + rng.normal(0.0, 0.004, image.shape)  # a little sensor noise
    return np.clip(dark, 0.0, 1.0).astype(np.float32)


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status")


def time_call(func, image: np.ndarray, **options) -> float:
    start = time.perf_counter()
    func(image, **options)
    return time.perf_counter() - start


def peak_memory_mb(method: str, size: int, denoise: bool) -> float:
    """Extra peak RSS of one call, measured in a fresh interpreter."""
    result = subprocess.run(
        [sys.executable, __file__, "--memory-case", method, str(size), str(int(denoise))],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(result.stdout.strip().splitlines()[-1])


def _memory_case(method: str, size: int, denoise: bool) -> None:
    image = dark_image(size)
    before = _rss_kib("VmRSS")
    METHODS[method](image, denoise=denoise)
    print((_rss_kib("VmHWM") - before) / 1024)


def run(sizes: list[int], repeats: int, denoise: bool) -> list[dict]:
    rows = []
    for name, func in METHODS.items():
        func(dark_image(min(sizes)), denoise=False)  # warm-up: imports, first-call costs
        for size in sizes:
            image = dark_image(size)
            times = [time_call(func, image, denoise=denoise) for _ in range(repeats)]
            rows.append(
                {
                    "method": name,
                    "size": size,
                    "median_s": statistics.median(times),
                    "min_s": min(times),
                    "peak_mb": peak_memory_mb(name, size, denoise),
                }
            )
            print(f"  {name} {size}² denoise={denoise}: {times}", file=sys.stderr, flush=True)
    return rows


def solver_accuracy(sizes: list[int]) -> list[str]:
    """Relative error of the sped-up solver against scipy's direct solve on the same system."""
    import scipy.sparse.linalg as spla

    from dpe.methods import lime as lime_module

    lines = ["| size | multigrid-CG s | spsolve s | relative error |", "|---|---|---|---|"]
    for size in sizes:
        t_hat = dark_image(size).max(axis=2)
        start = time.perf_counter()
        fast = lime_module.refine_illumination(t_hat)
        t_fast = time.perf_counter() - start
        t = t_hat.astype(np.float64)
        wh, wv = lime_module.illumination_weights(t_hat)
        ah = 0.15 * wh / (np.abs(np.diff(t, axis=1)) + 1e-3)
        av = 0.15 * wv / (np.abs(np.diff(t, axis=0)) + 1e-3)
        matrix = lime_module._laplacian_csr(np.ones_like(t), ah, av).tocsc()
        start = time.perf_counter()
        exact = spla.spsolve(matrix, t.ravel(), permc_spec="MMD_AT_PLUS_A").reshape(t.shape)
        t_direct = time.perf_counter() - start
        err = np.linalg.norm(fast - exact) / np.linalg.norm(exact)
        lines.append(f"| {size}² | {t_fast:.3f} | {t_direct:.2f} | {err:.1e} |")
    return lines


def table(rows: list[dict], denoise: bool) -> list[str]:
    lines = [
        f"Denoising {'on (BM3D)' if denoise else 'off'}:",
        "",
        "| method | size | median s | min s | peak memory MB | target s |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        target = "" if denoise else TARGETS_S.get((row["method"], row["size"]), "")
        if target:
            verdict = "ok" if row["median_s"] <= target else "MISSED"
            target = f"≤ {target} ({verdict})"
        lines.append(
            f"| {row['method']} | {row['size']}² | {row['median_s']:.3f} | {row['min_s']:.3f} "
            f"| {row['peak_mb']:.0f} | {target} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-denoise", action="store_true", help="skip the BM3D runs")
    parser.add_argument("--accuracy", action="store_true", help="also compare with spsolve")
    parser.add_argument("--memory-case", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_case:
        method, size, denoise = args.memory_case
        _memory_case(method, int(size), bool(int(denoise)))
        return

    print(
        f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"Python {platform.python_version()}; median of {args.repeats}\n"
    )
    out = table(run(args.sizes, args.repeats, denoise=False), denoise=False)
    if not args.no_denoise:
        out += [""] + table(run(args.sizes, args.repeats, denoise=True), denoise=True)
    out += [
        "",
        f"Peak memory target: ≤ {TARGET_PEAK_MB_1024} MB at 1024² (denoising off).",
    ]
    if args.accuracy:
        out += ["", "Sped-up solver against a direct solve:", ""]
        out += solver_accuracy([s for s in args.sizes if s <= 512])
    print("\n".join(out))


if __name__ == "__main__":
    main()
