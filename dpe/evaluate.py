"""Measure enhancement methods the way the paper does: degrade clean images, enhance, compare.

    python -m dpe.evaluate --images data/test --methods all --preset paper --seed 0 \\
        --json results.json --markdown results.md

Each clean image is degraded once, deterministically from ``--seed`` and its path relative to
the folder given (so a copy of the folder elsewhere gives the same numbers), then every method
enhances that same low-quality twin. Results are reported per group (the subfolder an image sits
in below a given folder; images directly inside it form a group named after the folder) and for
the group ``all``: n, mean and std of PSNR, SSIM and CIEDE2000 ΔE, and seconds per megapixel.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dpe.degrade import PRESETS, degrade

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".webp"}
ALL = "all"  # the group that covers every image
METRICS = ("psnr", "ssim", "delta_e")


@dataclass(frozen=True)
class ImageItem:
    path: Path
    relpath: str  # POSIX path relative to the folder it was found under: the degradation key
    group: str


def find_images(dirs: list[str | Path], *, max_per_group: int | None = None) -> list[ImageItem]:
    """Image files below each of ``dirs``, sorted, grouped by subfolder (see module doc)."""
    items: list[ImageItem] = []
    for d in dirs:
        root = Path(d)
        if not root.is_dir():
            raise ValueError(f"--images {d!r} is not a folder; give folders of clean images.")
        files = sorted(
            p
            for p in root.rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")
        )
        for p in files:
            rel = p.relative_to(root)
            group = rel.parent.as_posix() if rel.parent != Path(".") else root.resolve().name
            items.append(ImageItem(p, rel.as_posix(), group))
    if max_per_group is not None:
        counts: dict[str, int] = {}
        kept = []
        for item in items:
            counts[item.group] = counts.get(item.group, 0) + 1
            if counts[item.group] <= max_per_group:
                kept.append(item)
        items = kept
    return items


def image_seed(seed: int, relpath: str) -> np.random.Generator:
    """The generator that degrades ``relpath``: fixed by the seed and the path, nothing else."""
    return np.random.default_rng([seed, zlib.crc32(relpath.encode("utf-8"))])


def degraded_twin(image: np.ndarray, relpath: str, *, preset: str, seed: int) -> np.ndarray:
    """The low-quality version of ``image`` that every evaluation (and validation) uses."""
    return degrade(image, preset, image_seed(seed, relpath))


def evaluate(
    items: list[ImageItem],
    methods: list[str],
    *,
    preset: str = "paper",
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Degrade, enhance and score every image with every method; returns the JSON-able report.

    Methods whose weights cannot be found are skipped and listed under ``"skipped"``.
    """
    from tqdm import tqdm

    from dpe.io import load_image
    from dpe.methods import get_method
    from dpe.metrics import compare
    from dpe.weights import WeightsNotFoundError

    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}; got {preset!r}.")
    if not items:
        raise ValueError("no images to evaluate: the folders hold no image files.")

    loaded, skipped = {}, []
    for name in methods:
        try:
            loaded[name] = get_method(name)
        except WeightsNotFoundError as exc:
            skipped.append({"method": name, "reason": str(exc)})
            print(f"note: skipping {name}: its weights are missing ({exc})", file=sys.stderr)

    scores: dict[tuple[str, str], list[dict]] = {}  # (group, method) -> per-image records
    bad_images = []
    for item in tqdm(items, desc="evaluate", unit="img", disable=not progress):
        try:
            clean = load_image(item.path).image
        except ValueError as exc:  # dpe.io.ImageError: unreadable file, report and go on
            bad_images.append({"path": str(item.path), "reason": str(exc)})
            print(f"note: skipping {item.path}: {exc}", file=sys.stderr)
            continue
        low = degraded_twin(clean, item.relpath, preset=preset, seed=seed)
        megapixels = clean.shape[0] * clean.shape[1] / 1e6
        for name, method in loaded.items():
            start = time.perf_counter()
            out = method.enhance(low)
            seconds = time.perf_counter() - start
            record = {**compare(clean, out), "seconds": seconds, "mp": megapixels}
            for group in (item.group, ALL):
                scores.setdefault((group, name), []).append(record)

    groups = sorted({g for g, _ in scores} - {ALL}) + [ALL]
    results = []
    for group in groups:
        for name in loaded:
            records = scores.get((group, name))
            if records:
                results.append(_summarise(group, name, records))
    return {
        "preset": preset,
        "seed": seed,
        "images": len(items) - len(bad_images),
        "results": results,
        "skipped": skipped,
        "unreadable": bad_images,
    }


def _summarise(group: str, method: str, records: list[dict]) -> dict:
    row: dict = {"group": group, "method": method, "n": len(records)}
    for key in METRICS:
        values = np.array([r[key] for r in records], dtype=np.float64)
        row[key] = float(values.mean())
        row[f"{key}_std"] = float(values.std())
    row["seconds_per_mp"] = sum(r["seconds"] for r in records) / sum(r["mp"] for r in records)
    return row


def to_markdown(report: dict) -> str:
    """The report as one Markdown table per group, best mean per column in bold."""
    lines = [
        f"Degradation preset `{report['preset']}`, seed {report['seed']}; mean ± std over the "
        "images of each group. PSNR and SSIM: higher is better; ΔE (CIEDE2000): lower is better.",
        "",
    ]
    groups = list(dict.fromkeys(r["group"] for r in report["results"]))
    for group in groups:
        rows = [r for r in report["results"] if r["group"] == group]
        lines += [
            f"**{group}** (n = {rows[0]['n']})",
            "",
            "| Method | PSNR (dB) ↑ | SSIM ↑ | ΔE ↓ | s/MP |",
            "|---|---|---|---|---|",
        ]
        best = {
            "psnr": max(r["psnr"] for r in rows),
            "ssim": max(r["ssim"] for r in rows),
            "delta_e": min(r["delta_e"] for r in rows),
        }
        for r in rows:
            cells = []
            for key, fmt in (("psnr", ".2f"), ("ssim", ".3f"), ("delta_e", ".2f")):
                cell = f"{r[key]:{fmt}} ± {r[key + '_std']:{fmt}}"
                cells.append(f"**{cell}**" if r[key] == best[key] else cell)
            lines.append(
                f"| {r['method']} | " + " | ".join(cells) + f" | {r['seconds_per_mp']:.3g} |"
            )
        lines.append("")
    for s in report.get("skipped", []):
        lines.append(f"Not evaluated: `{s['method']}` (weights missing).")
    for s in report.get("unreadable", []):
        lines.append(f"Unreadable, left out: `{s['path']}`.")
    return "\n".join(lines).rstrip() + "\n"


def combine(reports: list[dict]) -> dict:
    """One report from several runs over the same images, preset and seed (methods in order).

    Slow classic methods and freshly trained nets can then be measured in separate runs and
    still land in one table. Runs that disagree on what they measured are refused.
    """
    if not reports:
        raise ValueError("nothing to combine.")
    first = reports[0]
    for r in reports[1:]:
        for key in ("preset", "seed", "images"):
            if r.get(key) != first.get(key):
                theirs, ours = first.get(key), r.get(key)
                raise ValueError(
                    f"cannot combine runs with different {key}: {theirs!r} vs {ours!r}."
                )
    results = [row for r in reports for row in r["results"]]
    seen = set()
    for row in results:
        key = (row["group"], row["method"])
        if key in seen:
            raise ValueError(f"method {row['method']!r} appears in more than one run.")
        seen.add(key)
    groups = list(dict.fromkeys(row["group"] for row in results))
    groups = [g for g in groups if g != ALL] + ([ALL] if ALL in groups else [])
    ordered = [row for g in groups for row in results if row["group"] == g]
    return {
        **{k: first[k] for k in ("preset", "seed", "images")},
        "results": ordered,
        "skipped": [s for r in reports for s in r.get("skipped", [])],
        "unreadable": first.get("unreadable", []),
    }


def _parse_methods(values: list[str]) -> list[str]:
    from dpe.methods import list_methods

    names = [n for v in values for n in v.split(",") if n]
    if names == ["all"]:
        return list_methods()
    known = list_methods()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; registered: {', '.join(known)} (or 'all').")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dpe.evaluate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--images",
        nargs="+",
        metavar="DIR",
        help="folders of clean images; subfolders become groups",
    )
    parser.add_argument(
        "--combine",
        nargs="+",
        type=Path,
        metavar="JSON",
        help="instead of measuring, merge these saved --json reports (same images, preset and "
        "seed) into one report and one table per group",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["all"],
        help="method names (space or comma separated), or 'all' (default)",
    )
    parser.add_argument("--preset", default="paper", choices=PRESETS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-images",
        type=int,
        default=None,
        metavar="N",
        help="at most N images per group (the first N by name), for a quick run",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    parser.add_argument("--markdown", type=Path, default=None, help="write the tables here")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    if bool(args.images) == bool(args.combine):
        parser.error("give either --images (to measure) or --combine (to merge saved reports).")
    try:
        if args.combine:
            report = combine([json.loads(p.read_text()) for p in args.combine])
        else:
            items = find_images(args.images, max_per_group=args.max_images)
            report = evaluate(
                items,
                _parse_methods(args.methods),
                preset=args.preset,
                seed=args.seed,
                progress=not args.quiet,
            )
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    markdown = to_markdown(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
