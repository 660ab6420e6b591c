"""Per-method latency and peak memory at 256², 512², 1024², and DPENet's achieved GFLOP/s
against a plain 3x3 convolution measured in the same run. Prints markdown tables.

    python benchmarks/bench_enhance.py [--methods "dpe lime:denoise=0"] [--sizes 256,512]

Each (method, size) runs in a fresh subprocess so peak memory is its own: the figure is the
peak resident set size during the enhance calls (Linux VmHWM after resetting it), which
includes the image buffers, not the interpreter and libraries loaded before. Deep methods
without trained weights are timed with a random-initialised network of the same
architecture (speed does not depend on the weight values); the table says so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


# architecture of each deep method, for timing it before its weights exist
RANDOM_INIT = {
    "dpe": {"arch": "dpenet", "width": 64},
    "dpe-s": {"arch": "dpenet", "width": 32},
    "dpe-g": {"arch": "dpeg2", "width": 64, "hidden": 64, "features": 2, "head": "stretch"},
    "retinexnet": {"arch": "retinexnet"},
    "dran": {"arch": "dran"},
}


def _build(name: str):
    from dpe.methods import create_method, method_info

    info = method_info(name)
    if info["kind"] != "deep":
        return create_method(name), ""
    from dpe.weights import WeightsNotFoundError

    try:
        return create_method(name), ""
    except WeightsNotFoundError:
        from dpe.methods.deep import TorchMethod
        from dpe.nets import build_net

        if name not in RANDOM_INIT:
            raise
        return TorchMethod(name, name, build_net(RANDOM_INIT[name])), " (random init)"


def _parse(spec: str) -> tuple[str, dict]:
    """``lime:denoise=0`` -> ("lime", {"denoise": False}); plain names have no options."""
    name, _, opts = spec.partition(":")
    options = {}
    for item in filter(None, opts.split(",")):
        key, _, value = item.partition("=")
        options[key] = value.lower() not in ("0", "false", "no", "off")
    return name, options


def one(spec: str, size: int, repeats: int) -> dict:
    """Time ``repeats`` enhancements of a size x size image in this process."""
    import numpy as np

    name, options = _parse(spec)
    method, note = _build(name)
    rng = np.random.default_rng(0)
    image = (rng.random((size, size, 3)) * 0.4).astype(np.float32)
    method.enhance(image[:64, :64], **options)  # warm-up: lazy imports, allocator, threads
    base = _rss_mb("VmRSS")
    _reset_peak()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        method.enhance(image, **options)
        times.append(time.perf_counter() - start)
    peak = _rss_mb("VmHWM") - base
    return {
        "method": spec.replace(":", " ").replace("=0", " off") + note,
        "size": size,
        "median_s": statistics.median(times),
        "peak_mb": peak,
    }


def conv_throughput(size: int = 1024) -> dict:
    """GFLOP/s of DPENet's forward pass and of one 64->64 3x3 conv, same size, same threads."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from dpe.methods.deep import _cores
    from dpe.nets.dpenet import DPENet

    torch.set_num_threads(_cores())
    results = {}
    x3 = torch.rand(1, 3, size, size).contiguous(memory_format=torch.channels_last)
    x64 = torch.rand(1, 64, size, size).contiguous(memory_format=torch.channels_last)
    net = DPENet().eval().to(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).eval().to(memory_format=torch.channels_last)
    for label, module, x in (
        ("DPENet (paper width)", net, x3),
        ("plain conv 64->64 3x3", conv, x64),
    ):
        with torch.inference_mode():
            with FlopCounterMode(display=False) as counter:
                module(x)
            flops = counter.get_total_flops()
            times = []
            for _ in range(3):
                start = time.perf_counter()
                module(x)
                times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        results[label] = {"gflop": flops / 1e9, "seconds": seconds, "gflops": flops / 1e9 / seconds}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--methods", default="all", help='"all", or space-separated specs like "dpe lime:denoise=0"'
    )
    parser.add_argument("--sizes", default="256,512,1024")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "SIZE"), help=argparse.SUPPRESS)
    parser.add_argument("--skip-flops", action="store_true")
    args = parser.parse_args()

    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.repeats)))
        return

    from dpe.methods import list_methods

    if args.methods == "all":
        names = list_methods()
        # the classic methods denoise with BM3D by default; their speed targets are without it
        for classic in list_methods("classic"):
            names.insert(names.index(classic), f"{classic}:denoise=0")
    else:
        names = args.methods.split(" ")
    sizes = [int(s) for s in args.sizes.split(",")]
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}"
    )
    print(f"median of {args.repeats} runs; peak = extra resident memory during the runs\n")
    print("| method | " + " | ".join(f"{s}² s | {s}² MB" for s in sizes) + " |")
    print("|---|" + "---|---|" * len(sizes))
    for name in names:
        cells, label = [], name
        for size in sizes:
            proc = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--one",
                    name,
                    str(size),
                    "--repeats",
                    str(args.repeats),
                ],
                capture_output=True,
                text=True,
                cwd=ROOT,
            )
            if proc.returncode:
                cells += ["error", "-"]
                print(proc.stderr.strip().splitlines()[-1], file=sys.stderr)
                continue
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            label = row["method"]
            cells += [f"{row['median_s']:.3f}", f"{row['peak_mb']:.0f}"]
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)

    if not args.skip_flops:
        print("\n| 1024² forward | GFLOP | seconds | GFLOP/s |\n|---|---|---|---|")
        res = conv_throughput(1024)
        for label, r in res.items():
            print(f"| {label} | {r['gflop']:.1f} | {r['seconds']:.3f} | {r['gflops']:.1f} |")
        ratio = res["DPENet (paper width)"]["gflops"] / res["plain conv 64->64 3x3"]["gflops"]
        print(f"\nDPENet reaches {ratio:.0%} of the plain conv's throughput (target ≥ 85%).")


if __name__ == "__main__":
    main()
