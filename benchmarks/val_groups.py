"""Each validation group's PSNR for weights files, as ``python -m dpe.train --select worst``
scores them: which modality is the worst, and what a candidate traded for what. A table.

    python benchmarks/val_groups.py weights/dpe.safetensors out/cand/dpe-new.safetensors
                                    [--data data] [--val-images 48] [--val-size 256] [--seed 0]

The validation set is the one training uses (``dpe.training.samples.load_validation``: the
same images, centre crops and seeded ``paper`` degradation, plus each image undegraded as a
group of its own); PSNR is capped at 60 dB as there.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("weights", nargs="+", help=".safetensors files of the dpe.train archs")
    parser.add_argument("--data", default="data", help="the folder holding val/")
    parser.add_argument("--val-images", type=int, default=48)
    parser.add_argument("--val-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    from dpe.nets import build_net
    from dpe.train import TrainConfig
    from dpe.training.samples import group_scores, load_validation
    from dpe.weights import load_weights

    config = TrainConfig(
        data=args.data, select="worst", val_images=args.val_images, val_size=args.val_size,
        seed=args.seed,
    )  # fmt: skip
    val = load_validation(Path(args.data) / "val", config)
    rows = []
    for path in args.weights:
        state, net_config, info = load_weights(path)
        net = build_net(net_config)
        net.load_state_dict(state)
        with torch.inference_mode():
            scores = {g: float(np.mean(v)) for g, v in group_scores(net, val).items()}
        rows.append((path, info.get("steps", "?"), scores))
    groups = sorted({g for _, _, s in rows for g in s})
    sizes = ", ".join(f"{g} {val.groups.count(g)}" for g in groups if "/" not in g)
    print(f"Validation PSNR (dB) by group; images per group: {sizes}; each scored degraded")
    print(f"(`paper`, seed {args.seed}) and clean (the `/clean` columns)\n")
    print("| weights | steps | " + " | ".join(groups) + " | worst |")
    print("|---|---|" + "---|" * (len(groups) + 1))
    for path, steps, scores in rows:
        cells = " | ".join(f"{scores[g]:.2f}" if g in scores else "" for g in groups)
        print(f"| {path} | {steps} | {cells} | {min(scores.values()):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
