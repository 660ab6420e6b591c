"""Measure enhancement methods the way the paper does: degrade clean images, enhance, compare.

    python -m dpe.evaluate --images data/test --methods all --preset paper --seeds 0,1,2 \\
        --json results.json --markdown results.md --gallery docs/gallery

Each clean image is degraded once per seed (``--seeds``; ``--seed N`` is the one-seed form),
deterministically from the seed and its path relative to the folder given (so a copy of the
folder elsewhere gives the same numbers), then every method enhances each of those low-quality
twins. A grayscale source stays gray: its grayness is decided once, at load, from the file
(``LoadedImage.gray``), never from the noisy pixels, and passed to the degradation and to every
method.

Results are reported per group (the subfolder an image sits in below a given folder; images
directly inside it form a group named after the folder) and for the group ``all``. An image's
PSNR, SSIM and CIEDE2000 ΔE are first averaged over the seeds; a group then gets the mean and
std over its images and a 95% percentile-bootstrap interval of the mean, resampling images
(none below 3 images or when every value is equal). PSNR is capped at 100 dB
(``dpe.metrics.PSNR_CAP``), which identical images reach. Seconds per megapixel time the
degraded inputs.

The clean columns (skip them with ``--no-clean``) apply each method to the undegraded image and
score the output against that same image: a method that leaves good images alone scores high,
one that invents texture or tints scores low. ``--gallery DIR`` writes ``DIR/<group>.png``
(per image: clean, the first seed's degraded twin, every method's output on it) and
``DIR/<group>-clean.png`` (every method's output on the clean image) for a few images per
group, evenly spaced in name order.

The ``--json`` report has one row per group and method: ``n``, ``seeds``, ``psnr``, ``ssim``,
``delta_e`` with their ``_std`` and ``_ci`` ([lo, hi] or null), ``clean_psnr``, ``clean_ssim``,
``clean_delta_e`` with their ``_ci`` (null under ``--no-clean``), and ``seconds_per_mp``;
``--per-image`` adds every image's scores, per seed too. ``--combine`` merges saved reports of
runs over the same images, preset and seeds.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dpe.__main__ import engine_options
from dpe._image import to_uint8
from dpe.datasets import ImageItem, degraded_twin, find_images
from dpe.degrade import PRESETS

ALL = "all"  # the group that covers every image
METRICS = ("psnr", "ssim", "delta_e")
CONFIDENCE = 0.95
RESAMPLES = 2000  # bootstrap resamples per interval
BOOTSTRAP_SEED = 0  # fixed, so the same scores always give the same interval
EQUAL_REL = 1e-5  # scores this close are one value: an identity's float32 rounding
GALLERY_PANEL = 256  # px, long side of a gallery panel
GALLERY_MAX_BYTES = 1_500_000  # panels shrink until a gallery PNG fits
LABEL_HEIGHT = 18  # px, the white strip with a panel's label
GAP = 2  # px between panels


def evaluate(
    items: list[ImageItem],
    methods: list[str],
    *,
    preset: str = "paper",
    seeds: Sequence[int] = (0,),
    clean: bool = True,
    gallery: str | Path | None = None,
    gallery_images: int = 3,
    per_image: bool = False,
    progress: bool = True,
    engine: str | None = None,
    cluster: dict | None = None,
) -> dict:
    """Degrade, enhance and score every image with every method; returns the JSON-able report.

    Methods whose weights cannot be found are skipped and listed under ``"skipped"``.
    ``engine="ray"`` measures the images on a Ray cluster (``cluster``: the keyword arguments
    of `dpe.scale.measure_items`); the report is the same.
    """
    from tqdm import tqdm

    from dpe.io import load_image

    seeds = _check_seeds(seeds)
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}; got {preset!r}.")
    if not items:
        raise ValueError("no images to evaluate: the folders hold no image files.")
    if gallery is not None and gallery_images < 1:
        raise ValueError(f"--gallery-images must be at least 1; got {gallery_images}.")
    loaded, skipped = _load_methods(methods)
    shown = set(_gallery_choice(items, gallery_images)) if gallery is not None else set()

    records: list[dict] = []  # one per (image, method): seed-averaged scores
    rows_shown: dict[str, list[tuple[str, dict]]] = {}  # group -> (relpath, panels)
    bad_images = []
    todo = items  # measured here, one by one, unless a cluster does it
    if engine == "ray":
        from dpe.scale import measure_items

        options = {"preset": preset, "seeds": seeds, "clean": clean, "quiet": not progress}
        records, rows_shown, bad_images = measure_items(
            items, loaded, shown=shown, **options, **(cluster or {})
        )
        todo = []
    for item in tqdm(todo, desc="evaluate", unit="img", disable=not progress):
        try:
            source = load_image(item.path)
        except ValueError as exc:  # dpe.io.ImageError: unreadable file, report and go on
            bad_images.append({"path": str(item.path), "reason": str(exc)})
            print(f"note: skipping {item.path}: {exc}", file=sys.stderr)
            continue
        panels = {} if item in shown else None
        records += _measure_image(
            item, source.image, source.gray, loaded,
            preset=preset, seeds=seeds, clean=clean, panels=panels,
        )  # fmt: skip
        if panels is not None:
            rows_shown.setdefault(item.group, []).append((item.relpath, panels))

    if gallery is not None:
        write_gallery(gallery, rows_shown, list(loaded), seed=seeds[0])
    report = {
        "preset": preset,
        "seed": seeds[0],
        "seeds": seeds,
        "images": len(items) - len(bad_images),
        "ci": {"level": CONFIDENCE, "method": "percentile bootstrap over images",
               "resamples": RESAMPLES, "of": "per-image scores averaged over seeds"},
        "results": _summarise_all(records, list(loaded), seeds),
        "skipped": skipped,
        "unreadable": bad_images,
    }  # fmt: skip
    if per_image:
        report["per_image"] = records
    return report


def _check_seeds(seeds: Sequence[int]) -> list[int]:
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds is empty; give at least one seed, e.g. --seeds 0.")
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct non-negative integers; got {seeds}.")
    return seeds


def _load_methods(methods: list[str]) -> tuple[dict, list[dict]]:
    from dpe.methods import get_method
    from dpe.weights import WeightsNotFoundError

    loaded, skipped = {}, []
    for name in methods:
        try:
            loaded[name] = get_method(name)
        except WeightsNotFoundError as exc:
            skipped.append({"method": name, "reason": str(exc)})
            print(f"note: skipping {name}: its weights are missing ({exc})", file=sys.stderr)
    return loaded, skipped


def _measure_image(
    item: ImageItem,
    image: np.ndarray,
    gray: bool,
    methods: dict,
    *,
    preset: str,
    seeds: list[int],
    clean: bool,
    panels: dict | None,
) -> list[dict]:
    """Every method on each seed's twin of one image, and on the image itself.

    Returns one record per method; fills ``panels`` (gallery thumbnails) when it is a dict.
    """
    from dpe.metrics import compare

    twins = [degraded_twin(image, item.relpath, preset=preset, seed=s, gray=gray) for s in seeds]
    megapixels = image.shape[0] * image.shape[1] / 1e6
    if panels is not None:
        panels.update(clean=_thumbnail(image), degraded=_thumbnail(twins[0]))
    records = []
    for name, method in methods.items():
        scores, seconds = [], 0.0
        for i, low in enumerate(twins):
            start = time.perf_counter()
            out = method.enhance(low, gray=gray)
            seconds += time.perf_counter() - start
            scores.append(compare(image, out))
            if panels is not None and i == 0:
                panels[name] = _thumbnail(out)
        record = {"relpath": item.relpath, "group": item.group, "method": name}
        for key in METRICS:
            record[f"{key}_seeds"] = [s[key] for s in scores]
            record[key] = float(np.mean(record[f"{key}_seeds"]))
        record.update(seconds=seconds, mp=megapixels * len(seeds))
        if clean:
            out = method.enhance(image, gray=gray)  # deterministic: once, whatever the seeds
            record.update({f"clean_{k}": v for k, v in compare(image, out).items()})
            if panels is not None:
                panels[f"clean:{name}"] = _thumbnail(out)
        records.append(record)
    return records


def _summarise_all(records: list[dict], methods: list[str], seeds: list[int]) -> list[dict]:
    groups = sorted({r["group"] for r in records}) + [ALL]
    results = []
    for group in groups:
        for name in methods:
            mine = [r for r in records if r["method"] == name and group in (ALL, r["group"])]
            if mine:
                results.append(_summarise(group, name, mine, seeds))
    return results


def _summarise(group: str, method: str, records: list[dict], seeds: list[int]) -> dict:
    row: dict = {"group": group, "method": method, "n": len(records), "seeds": seeds}
    for key in METRICS:
        values = np.array([r[key] for r in records], dtype=np.float64)
        row[key] = float(values.mean())
        row[f"{key}_std"] = float(values.std())
        row[f"{key}_ci"] = interval(values)
    for key in METRICS:
        if all(f"clean_{key}" in r for r in records):
            values = np.array([r[f"clean_{key}"] for r in records], dtype=np.float64)
            row[f"clean_{key}"], row[f"clean_{key}_ci"] = float(values.mean()), interval(values)
        else:
            row[f"clean_{key}"] = row[f"clean_{key}_ci"] = None
    row["seconds_per_mp"] = sum(r["seconds"] for r in records) / sum(r["mp"] for r in records)
    return row


def interval(values: Sequence[float]) -> list[float] | None:
    """95% percentile-bootstrap interval of the mean of ``values`` (resampling them).

    ``None`` when there is no honest interval: fewer than 3 values, or all of them equal
    (up to float rounding, ``EQUAL_REL`` of their size).
    """
    from scipy.stats import bootstrap

    values = np.asarray(values, dtype=np.float64)
    if values.size < 3 or np.ptp(values) <= EQUAL_REL * max(1.0, np.abs(values).max()):
        return None
    result = bootstrap(
        (values,),
        np.mean,
        n_resamples=RESAMPLES,
        confidence_level=CONFIDENCE,
        method="percentile",
        vectorized=True,
        rng=np.random.default_rng(BOOTSTRAP_SEED),
    )
    lo, hi = result.confidence_interval
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return None
    return [float(lo), float(hi)]


def _gallery_choice(items: list[ImageItem], k: int) -> list[ImageItem]:
    """Up to ``k`` images per group, evenly spaced in name order (so spread over sources)."""
    chosen = []
    for group in dict.fromkeys(item.group for item in items):
        mine = sorted((i for i in items if i.group == group), key=lambda i: i.relpath)
        picks = np.linspace(0, len(mine) - 1, min(k, len(mine))).round().astype(int)
        chosen += [mine[i] for i in dict.fromkeys(picks.tolist())]
    return chosen


def _thumbnail(image: np.ndarray, side: int = GALLERY_PANEL) -> np.ndarray:
    """uint8 copy of ``image`` (float in [0, 1] or uint8) with its long side at most ``side``."""
    from PIL import Image

    if image.dtype != np.uint8:
        image = to_uint8(image)
    pil = Image.fromarray(image)
    if max(pil.size) > side:
        pil.thumbnail((side, side), Image.Resampling.LANCZOS)
    return np.asarray(pil)


def write_gallery(
    folder: str | Path, rows: dict[str, list[tuple[str, dict]]], methods: list[str], *, seed: int
) -> list[Path]:
    """Write ``<group>.png`` and ``<group>-clean.png`` under ``folder``; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for group, images in rows.items():
        degraded = [
            [(f"clean: {rel}", p["clean"]), (f"degraded (seed {seed})", p["degraded"])]
            + [(m, p[m]) for m in methods]
            for rel, p in images
        ]
        sheets = {f"{group}.png": degraded}
        if all(f"clean:{m}" in p for _, p in images for m in methods):
            on_clean = [
                [(f"clean: {rel}", p["clean"])]
                + [(f"{m} on clean", p[f"clean:{m}"]) for m in methods]
                for rel, p in images
            ]
            sheets[f"{group}-clean.png"] = on_clean
        for name, grid in sheets.items():
            path = folder / name.replace("/", "_")  # a nested group becomes one file name
            path.write_bytes(_fit_png(grid))
            written.append(path)
    return written


def _fit_png(grid: list[list[tuple[str, np.ndarray]]]) -> bytes:
    """The grid as PNG bytes, panels shrunk until the file fits ``GALLERY_MAX_BYTES``."""
    side = GALLERY_PANEL
    while True:
        buffer = io.BytesIO()
        _render(grid, side).save(buffer, format="PNG", optimize=True)
        size = buffer.tell()
        if size <= GALLERY_MAX_BYTES or side <= 64:
            return buffer.getvalue()
        side = max(64, int(side * (GALLERY_MAX_BYTES / size) ** 0.5 * 0.95))


def _render(grid: list[list[tuple[str, np.ndarray]]], side: int):
    """A white sheet: one row per image, each panel under a strip with its label."""
    from PIL import Image, ImageDraw, ImageFont

    panels = [[(label, _thumbnail(p, side)) for label, p in row] for row in grid]
    cell_w = max(p.shape[1] for row in panels for _, p in row)
    heights = [max(p.shape[0] for _, p in row) + LABEL_HEIGHT for row in panels]
    tops = np.cumsum([0] + [h + GAP for h in heights])  # each row as tall as its image
    cols = max(len(row) for row in panels)
    sheet = Image.new("RGB", (cols * (cell_w + GAP) - GAP, int(tops[-1]) - GAP), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=12)
    for row, top in zip(panels, tops.tolist(), strict=False):
        for c, (label, panel) in enumerate(row):
            x = c * (cell_w + GAP)
            text = _fit_text(draw, label, font, cell_w - 4)
            draw.text((x + 2, top + 2), text, fill="black", font=font)
            sheet.paste(
                Image.fromarray(panel), (x + (cell_w - panel.shape[1]) // 2, top + LABEL_HEIGHT)
            )
    return sheet


def _fit_text(draw, text: str, font, width: int) -> str:
    """``text``, cut with an ellipsis where it would overflow ``width`` px."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


_FORMATS = {"psnr": (".2f", ".1f"), "ssim": (".3f", ".3f"), "delta_e": (".2f", ".2f")}
_BETTER = {"psnr": max, "ssim": max, "delta_e": min}


def to_markdown(report: dict) -> str:
    """The report as one Markdown table per group, best mean per column in bold."""
    results = report["results"]
    with_clean = any(r.get("clean_psnr") is not None for r in results)
    columns = list(METRICS) + ([f"clean_{k}" for k in METRICS] if with_clean else [])
    lines = [_markdown_header(report, with_clean), ""]
    head = ["PSNR (dB) ↑ [95% CI]", "SSIM ↑", "ΔE ↓"]
    head += ["clean PSNR ↑", "clean SSIM ↑", "clean ΔE ↓"] if with_clean else []
    for group in dict.fromkeys(r["group"] for r in results):
        rows = [r for r in results if r["group"] == group]
        lines += [
            f"**{group}** (n = {rows[0]['n']})",
            "",
            "| Method | " + " | ".join(head) + " | s/MP |",
            "|---" * (len(head) + 2) + "|",
        ]
        best = {}
        for col in columns:
            values = [r[col] for r in rows if r.get(col) is not None]
            best[col] = _BETTER[col.removeprefix("clean_")](values) if values else None
        for r in rows:
            cells = [_cell(r, col, best[col]) for col in columns]
            lines.append(
                f"| {r['method']} | " + " | ".join(cells) + f" | {r['seconds_per_mp']:.3g} |"
            )
        lines.append("")
    for s in report.get("skipped", []):
        lines.append(f"Not evaluated: `{s['method']}` (weights missing).")
    for s in report.get("unreadable", []):
        lines.append(f"Unreadable, left out: `{s['path']}`.")
    return "\n".join(lines).rstrip() + "\n"


def _markdown_header(report: dict, with_clean: bool) -> str:
    seeds = report.get("seeds", [report["seed"]])
    text = (
        f"Degradation preset `{report['preset']}`, seeds {', '.join(map(str, seeds))}: each "
        "image is degraded once per seed and its scores are averaged over the seeds. A cell is "
        "the mean over the group's images [95% percentile-bootstrap interval, resampling "
        f"images, {RESAMPLES} resamples; n/a below 3 images or when all values are equal]. "
        "PSNR (capped at 100 dB) and SSIM: higher is better; ΔE (CIEDE2000): lower is better. "
    )
    if with_clean:
        text += (
            "The clean columns apply each method to the undegraded image and compare the output "
            "with that same image: high PSNR/SSIM and low ΔE mean good images are left alone. "
        )
    return text + "s/MP: seconds per megapixel on the degraded inputs."


def _cell(row: dict, col: str, best: float | None) -> str:
    value = row.get(col)
    if value is None:
        return "—"
    mean_fmt, ci_fmt = _FORMATS[col.removeprefix("clean_")]
    ci = row.get(f"{col}_ci")
    bounds = f"[{ci[0]:{ci_fmt}}, {ci[1]:{ci_fmt}}]" if ci else "[n/a]"
    mean = f"{value:{mean_fmt}}"
    return f"**{mean}** {bounds}" if value == best else f"{mean} {bounds}"


def combine(reports: list[dict], *, common: bool = False) -> dict:
    """One report from several runs over the same images, preset and seeds (methods in order).

    Slow classic methods and freshly trained nets can then be measured in separate runs and
    still land in one table. Runs that disagree on what they measured are refused. With
    ``common``, runs over different image sets are summarised again on the images that every
    run measured (each run needs its ``per_image`` records, ``--per-image``).
    """
    if not reports:
        raise ValueError("nothing to combine.")
    if common:
        reports = [_restrict(r, _common_images(reports)) for r in reports]

    def facts(report: dict) -> dict:  # reports from before --seeds had one seed
        return {
            "preset": report.get("preset"),
            "seed": report.get("seed"),
            "seeds": report.get("seeds", [report.get("seed")]),
            "images": report.get("images"),
        }

    first = facts(reports[0])
    for r in reports[1:]:
        for key, value in facts(r).items():
            if value != first[key]:
                raise ValueError(
                    f"cannot combine runs with different {key}: {first[key]!r} vs {value!r}."
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
    combined = {
        **first,
        "results": [row for g in groups for row in results if row["group"] == g],
        "skipped": [s for r in reports for s in r.get("skipped", [])],
        "unreadable": reports[0].get("unreadable", []),
    }
    if any("per_image" in r for r in reports):
        combined["per_image"] = [rec for r in reports for rec in r.get("per_image", [])]
    return combined


def _common_images(reports: list[dict]) -> set[str]:
    sets = []
    for r in reports:
        if "per_image" not in r:
            raise ValueError("--common-images needs reports written with --per-image.")
        sets.append({rec["relpath"] for rec in r["per_image"]})
    common = set.intersection(*sets)
    if not common:
        raise ValueError("the reports have no image in common.")
    return common


def _restrict(report: dict, relpaths: set[str]) -> dict:
    """``report`` summarised again over the per-image records of ``relpaths`` only."""
    records = [rec for rec in report["per_image"] if rec["relpath"] in relpaths]
    methods = list(dict.fromkeys(rec["method"] for rec in records))
    seeds = report.get("seeds", [report.get("seed")])
    return {
        **report,
        "images": len(relpaths),
        "results": _summarise_all(records, methods, seeds),
        "per_image": records,
    }


CLEAN_CAP = 40.0  # dB: beyond this an unchanged image and the method's output look the same


def recommend(report: dict) -> list[tuple[str, float]]:
    """Methods ranked by harm and help together, best first, with their scores.

    Per group (``all`` aside), a method's score is the mean of its degraded-input PSNR and its
    clean-input PSNR capped at ``CLEAN_CAP``; its overall score is its worst group's. A method
    that restores degraded images but spoils good ones (or the reverse) cannot rank first.
    Methods without clean-input columns are left out.
    """
    worst: dict[str, float] = {}
    for row in report["results"]:
        if row["group"] == ALL or row.get("clean_psnr") is None:
            continue
        score = (row["psnr"] + min(row["clean_psnr"], CLEAN_CAP)) / 2
        worst[row["method"]] = min(worst.get(row["method"], math.inf), score)
    return sorted(worst.items(), key=lambda kv: -kv[1])


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


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``: distinct non-negative integers, comma separated."""
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated non-negative integers such as 0,1,2; got {text!r}."
        )
    seeds = [int(p) for p in parts]
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(f"seed(s) {repeated} given twice in {text!r}.")
    return seeds


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dpe.evaluate", description=__doc__.split("\n\n")[0]
    )
    add = parser.add_argument
    add(
        "--images",
        nargs="+",
        metavar="DIR",
        help="folders of clean images; subfolders become groups",
    )
    add(
        "--combine",
        nargs="+",
        type=Path,
        metavar="JSON",
        help="instead of measuring, merge these saved --json reports (same images, preset and "
        "seeds) into one report and one table per group",
    )
    add(
        "--common-images",
        action="store_true",
        help="with --combine: summarise every run again on the images all of them measured "
        "(runs saved with --per-image)",
    )
    add(
        "--methods",
        nargs="+",
        default=["all"],
        help="method names (space or comma separated), or 'all' (default)",
    )
    add("--preset", default="paper", choices=PRESETS)
    add(
        "--seeds",
        type=parse_seeds,
        default=None,
        metavar="S,S,...",
        help="degrade each image once per seed, e.g. 0,1,2; scores are averaged over seeds "
        "(default: 0)",
    )
    add("--seed", type=parse_seeds, default=None, metavar="N", help="one seed: --seeds N")
    add(
        "--no-clean",
        action="store_true",
        help="skip the clean columns (each method on the undegraded image)",
    )
    add(
        "--gallery",
        type=Path,
        default=None,
        metavar="DIR",
        help="write DIR/<group>.png (clean, degraded, each method) and, unless --no-clean, "
        "DIR/<group>-clean.png (each method on the clean image), one row per shown image",
    )
    add(
        "--gallery-images",
        type=int,
        default=3,
        metavar="K",
        help="images per group in the gallery, evenly spaced by name (default 3)",
    )
    add(
        "--per-image",
        action="store_true",
        help="include every image's scores (per seed too) in the JSON report",
    )
    add(
        "--max-images",
        type=int,
        default=None,
        metavar="N",
        help="at most N images per group (the first N by name), for a quick run",
    )
    add("--json", type=Path, default=None, help="write the report here")
    add("--markdown", type=Path, default=None, help="write the tables here")
    add("--quiet", action="store_true", help="no progress bar")
    engine_options(parser)
    return parser  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if bool(args.images) == bool(args.combine):
        parser.error("give either --images (to measure) or --combine (to merge saved reports).")
    if args.seed is not None and len(args.seed) != 1:
        parser.error(f"--seed takes one seed; got {args.seed}. Use --seeds for several.")
    if args.seed is not None and args.seeds is not None and args.seed != args.seeds:
        parser.error("give --seed N or --seeds S,S,..., not both.")
    seeds = args.seeds or args.seed or [0]
    try:
        if args.combine:
            reports = [json.loads(p.read_text()) for p in args.combine]
            report = combine(reports, common=args.common_images)
        else:
            items = find_images(args.images, max_per_group=args.max_images)
            report = evaluate(
                items,
                _parse_methods(args.methods),
                preset=args.preset,
                seeds=seeds,
                clean=not args.no_clean,
                gallery=args.gallery,
                gallery_images=args.gallery_images,
                per_image=args.per_image,
                progress=not args.quiet,
                engine=args.engine,
                cluster={"address": args.address, "num_cpus": args.cpus, "actors": args.actors,
                         "gpus_per_actor": args.gpus_per_actor},
            )  # fmt: skip
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
