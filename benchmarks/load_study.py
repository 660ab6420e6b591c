"""Raters voting at once while visitors enhance: is every acknowledged vote stored exactly once?

    python benchmarks/load_study.py --raters 32 --enhancers 2 [--seed 0] [--think 0.2:1.0]
                                    [--json out/load.json]

Starts ``python app.py`` on 127.0.0.1 with a fresh study in a temporary data folder, then
drives every rater the way their browser does, over HTTP only: the Study page's events go
through Gradio's queue (``POST /gradio_api/queue/join``, then the ``/gradio_api/queue/data``
event stream) under the event ids the page's ``/config`` lists, the unqueued follow-up through
``/gradio_api/run/predict``, and each screen's images are fetched. The study events are
private (no named API), so this is the only way in, as for a browser. Meanwhile visitors call
the public ``/enhance`` API with gradio_client. Afterwards every vote a rater saw acknowledged
is looked up in the SQLite file.

A vote's round trip is what the browser waits for: from sending the answer to receiving the
next screen. Lost = acknowledged but not stored (or stored with another choice); duplicated =
a trial answered and acknowledged twice, or stored twice; errors = messages shown to a rater,
broken connections, failed image fetches and raters who did not finish.

The server, the raters and the audit are ``tests/load_harness.py``'s, which
``tests/test_load.py`` (a small version of this, and the kill and backup tests) and
``tests/test_faults.py`` (full and read-only disks) use too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout

from tests.load_harness import (  # noqa: E402
    AppServer,
    Audit,
    Ledger,
    LoadRun,
    LoadStudy,
    audit,
    make_study,
)

TARGETS = {"p95_ms": 250.0, "p99_ms": 1000.0}


# ---------------------------------------------------------------- report


def percentiles(values: Sequence[float]) -> tuple[float, float, float]:
    """p50, p95 and p99 (NaN when there are no values)."""
    if not values:
        return (float("nan"),) * 3
    p50, p95, p99 = np.percentile(np.asarray(values, dtype=float), [50, 95, 99])
    return float(p50), float(p95), float(p99)


def error_count(ledger: Ledger, codes: Sequence[str]) -> int:
    """Everything a rater or visitor would call a failure."""
    unfinished = len(set(codes) - ledger.finished)
    return len(ledger.errors) + ledger.disconnects + unfinished + len(ledger.enhance_errors)


def report(run: LoadRun, load: LoadStudy, result: Audit, *, enhancers: int) -> tuple[str, bool]:
    """The markdown table, and whether every target was met."""
    ledger = run.ledger
    p50, p95, p99 = percentiles(ledger.vote_ms)
    s50, s95, _ = percentiles(ledger.vote_server_ms)
    e50, _, _ = percentiles(ledger.enhance_ms)
    errors = error_count(ledger, load.codes)
    unfinished = len(set(load.codes) - ledger.finished)
    rows = [
        ("raters / visitors enhancing", f"{len(load.codes)} / {enhancers}", "", True),
        ("votes planned", load.planned, "", True),
        ("votes sent", result.sent, "", True),
        ("votes acknowledged", result.acked, f"= {load.planned}", result.acked == load.planned),
        (
            "votes stored (SQLite)",
            result.stored,
            f"= {load.planned}",
            result.stored == load.planned,
        ),
        ("lost", result.lost, "0", result.lost == 0),
        ("duplicated", result.duplicated, "0", result.duplicated == 0),
        ("stored, never acknowledged", result.unexplained, "0", result.unexplained == 0),
        (
            "errors (shown / disconnects / unfinished / enhance)",
            f"{errors} ({len(ledger.errors)} / {ledger.disconnects} / {unfinished} / "
            f"{len(ledger.enhance_errors)})",
            "0",
            errors == 0,
        ),
        ("vote round trip p50 (ms)", f"{p50:.0f}", "", True),
        (
            "vote round trip p95 (ms)",
            f"{p95:.0f}",
            f"≤ {TARGETS['p95_ms']:.0f}",
            p95 <= TARGETS["p95_ms"],
        ),
        (
            "vote round trip p99 (ms)",
            f"{p99:.0f}",
            f"≤ {TARGETS['p99_ms']:.0f}",
            p99 <= TARGETS["p99_ms"],
        ),
        ("of which in the vote callback, p50 / p95 (ms)", f"{s50:.0f} / {s95:.0f}", "", True),
        ("votes per second", f"{result.acked / max(run.elapsed, 1e-9):.1f}", "", True),
        ("images fetched", ledger.images, "", True),
        ("enhancements done (p50 s)", f"{len(ledger.enhance_ms)} ({e50 / 1000:.1f})", "", True),
        ("PRAGMA integrity_check", result.integrity, "ok", result.integrity == "ok"),
        ("wall time (s)", f"{run.elapsed:.1f}", "", True),
    ]
    lines = ["| measure | value | target | met |", "|---|---:|---:|:-:|"]
    for name, value, target, met in rows:
        lines.append(
            f"| {name} | {value} | {target} | {'yes' if met else '**no**'} |"
            if target
            else f"| {name} | {value} | | |"
        )
    return "\n".join(lines), all(met for *_, met in rows)


def summary(run: LoadRun, load: LoadStudy, result: Audit) -> dict:
    """The run's headline numbers for ``--json``: counts and the vote round trip's percentiles."""
    p50, p95, p99 = percentiles(run.ledger.vote_ms)
    return {
        "planned": load.planned,
        "acknowledged": result.acked,
        "stored": result.stored,
        "lost": result.lost,
        "duplicated": result.duplicated,
        "errors": error_count(run.ledger, load.codes),
        "p50_ms": round(p50, 1),
        "p95_ms": round(p95, 1),
        "p99_ms": round(p99, 1),
    }


def _think(spec: str) -> tuple[float, float]:
    low, _, high = spec.partition(":")
    low, high = float(low), float(high or low)
    if not 0 <= low <= high:
        raise argparse.ArgumentTypeError(
            f"--think wants LOW:HIGH seconds, 0 <= LOW <= HIGH; got {spec!r}"
        )
    return low, high


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raters", type=int, default=32)
    parser.add_argument("--enhancers", type=int, default=2, help="visitors enhancing meanwhile")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--items", type=int, default=4, help="images in the study")
    parser.add_argument("--methods", type=int, default=3, help="methods compared")
    parser.add_argument("--image-size", type=int, default=512, help="stimulus side, pixels")
    parser.add_argument("--think", type=_think, default=(0.2, 1.0), help="LOW:HIGH seconds")
    parser.add_argument("--enhance-methods", default="dpe", help="what visitors run (comma list)")
    parser.add_argument("--no-images", action="store_true", help="raters skip fetching images")
    parser.add_argument(
        "--same-upload", action="store_true", help="every visitor uploads the same bytes"
    )
    parser.add_argument("--deadline", type=float, default=600.0, help="seconds before giving up")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the numbers here")
    args = parser.parse_args(argv)
    load_avg = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="dpe-load-") as tmp:
        data = Path(tmp) / "data"
        load = make_study(
            data, raters=args.raters, items=args.items, methods=args.methods,
            image_size=args.image_size, seed=args.seed,
        )  # fmt: skip
        server = AppServer(data).start()
        try:
            run = LoadRun(
                server.url, load.codes, think=args.think, seed=args.seed,
                enhancers=args.enhancers, enhance_methods=args.enhance_methods.split(","),
                same_upload=args.same_upload,
                images=not args.no_images, deadline_s=args.deadline, workdir=Path(tmp),
            ).start()  # fmt: skip
            ledger = run.join()
        finally:
            server.stop()
        result = audit(load, ledger)
        table, met = report(run, load, result, enhancers=args.enhancers)
        print(
            f"Study load: {args.raters} raters × {load.planned // max(args.raters, 1)} trials, "
            f"think {args.think[0]:g}–{args.think[1]:g} s, {args.enhancers} visitors running "
            f"{args.enhance_methods}; {os.cpu_count()} cores ({platform.machine()}), "
            f"load average before start {load_avg}\n"
        )
        print(table)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(summary(run, load, result), indent=2) + "\n")
        for message in Counter(ledger.errors + ledger.enhance_errors).most_common(5):
            print(f"\n- {message[1]}× {message[0]}")
        if not met:
            print("\nserver log (tail):\n" + server.log(2000), file=sys.stderr)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
