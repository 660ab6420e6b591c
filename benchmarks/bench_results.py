"""How long the Results page's tables take for a study with many votes.

    python benchmarks/bench_results.py [--votes 2000] [--raters 10] [--methods 5]

Builds a study from tiny images in a temporary folder, lets ``--raters`` raters vote (at
random) until ``--votes`` votes are stored, then times
``study.tables.result_tables`` (what the page shows) three ways: the first look after the
votes arrived (the rater bootstrap runs in the background; the page gets point estimates), a
look once the bootstrap is done (cached), and the bootstrap itself. Target: the page in
≤ 2 s at 2,000 votes on the 2-core development machine.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import study  # noqa: E402
from study import tables  # noqa: E402
from tests.test_study_support import make_study  # noqa: E402


def build(folder: Path, votes: int, raters: int, n_methods: int, seed: int = 0):
    methods = [f"m{i}" for i in range(n_methods)]
    pairs = n_methods * (n_methods - 1) // 2
    n_images = max(1, math.ceil(votes / raters / pairs))
    db, study_id = make_study(folder, n_images=n_images, methods=methods, repeat_fraction=0.0)
    rng = np.random.default_rng(seed)
    stored = 0
    ids = [study.invite_rater(db, study_id, f"Dr {r}", seed=r).rater_id for r in range(raters)]
    while stored < votes:
        for rater in ids:
            trial = study.next_trial(db, rater)
            if trial is None or stored >= votes:
                continue
            choice = rng.choice(["left", "right", "tie"], p=[0.45, 0.45, 0.1])
            study.record_vote(db, rater, trial.trial_id, choice)
            stored += 1
    return db, study_id, stored


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--votes", type=int, default=2000)
    parser.add_argument("--raters", type=int, default=10)
    parser.add_argument("--methods", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        db, study_id, stored = build(Path(tmp), args.votes, args.raters, args.methods)
        t0 = time.perf_counter()
        first = tables.result_tables(db, study_id)
        t_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        tables.cached_report(db, study_id, stored, wait=math.inf)
        t_boot = time.perf_counter() - t0 + t_first
        t0 = time.perf_counter()
        again = tables.result_tables(db, study_id)
        t_again = time.perf_counter() - t0
    pending = "are being computed" in first.status
    print(f"{stored} votes, {args.raters} raters, {args.methods} methods")
    print("| view | seconds |\n|---|---|")
    print(f"| first look ({'point estimates' if pending else 'with intervals'}) | {t_first:.2f} |")
    print(f"| bootstrap done (from the first look) | {t_boot:.2f} |")
    print(f"| next look (cached, intervals: {'[' in again.ratings.iloc[0, 4]}) | {t_again:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
