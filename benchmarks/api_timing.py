"""Seconds an ``/enhance`` API call takes per method, as a gradio_client user sees them.

    python benchmarks/api_timing.py [--methods dpe,clahe,lime] [--threads 1] [--repeats 2]

Serves the app on a free loopback port in this process and calls ``/enhance`` through
gradio_client on a 512x512 example, one method per call: the first call of each method (a deep
method loads its weights then) and the median of the later ones. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
IMAGE = ROOT / "examples" / "microscopy" / "ihc_colon.png"  # 512x512 RGB


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default="dpe,clahe,lime")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--repeats", type=int, default=2, help="calls after the first")
    args = parser.parse_args()

    import torch
    from gradio_client import Client, handle_file

    import app

    torch.set_num_threads(args.threads)
    port = _free_port()
    app.demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, analytics_enabled=False)
        rows = []
        for method in args.methods.split(","):
            seconds = []
            for _ in range(1 + args.repeats):
                start = time.perf_counter()
                client.predict(handle_file(str(IMAGE)), [method], api_name="/enhance")
                seconds.append(time.perf_counter() - start)
            rows.append((method, seconds[0], statistics.median(seconds[1:] or seconds)))
    finally:
        app.demo.close()
    print(
        f"`/enhance`, one method per call, 512×512 RGB, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, {args.threads} torch thread(s):\n"
    )
    print("| method | first call (s) | later calls, median (s) |\n|---|---|---|")
    for method, first, later in rows:
        print(f"| {method} | {first:.1f} | {later:.1f} |")


if __name__ == "__main__":
    main()
