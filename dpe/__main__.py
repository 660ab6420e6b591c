"""Command line: ``python -m dpe enhance | degrade | methods``."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

IMAGE_SUFFIXES = {
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".webp",
    ".tif",
    ".tiff",
    ".dcm",
    ".dicom",
    ".gif",
}


def _shown(path: Path) -> str:
    """A path for a one-line message: control characters (a newline in a name) escaped."""
    text = str(path)
    return text if text.isprintable() else ascii(text)


def _collect(inputs: list[str]) -> list[Path]:
    """Files named directly, plus image files found (recursively) in named folders."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
        elif path.is_file():
            files.append(path)
        else:
            raise SystemExit(f"error: {_shown(path)} is neither a file nor a folder.")
    if not files:
        raise SystemExit("error: no image files found in the inputs given.")
    return files


def _output_folder(name: str) -> Path:
    out = Path(name)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SystemExit(f"error: cannot use {_shown(out)} as the output folder: {exc}.") from None
    return out


def _cmd_enhance(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    import dpe

    out = _output_folder(args.out)
    try:
        method = dpe.get_method(args.method)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failures = 0
    for path in tqdm(_collect(args.inputs), unit="img", disable=args.quiet):
        try:
            loaded = dpe.load_image(path)
            start = time.perf_counter()
            result = method.enhance(loaded.image)
            seconds = time.perf_counter() - start
        except ValueError as exc:
            tqdm.write(f"skipped {_shown(path)}: {exc}", file=sys.stderr)
            failures += 1
            continue
        target = out / f"{path.stem}_{args.method}.png"
        dpe.save_image(result, target, bits=16 if args.bits16 else 8)
        tqdm.write(f"{_shown(target)}  ({seconds:.2f} s)")
    return 1 if failures else 0


def _cmd_degrade(args: argparse.Namespace) -> int:
    import dpe

    out = _output_folder(args.out)
    failures = 0
    for path in _collect(args.inputs):
        try:
            image = dpe.load_image(path).image
        except ValueError as exc:
            print(f"skipped {_shown(path)}: {exc}", file=sys.stderr)
            failures += 1
            continue
        low, params = dpe.degrade(image, args.preset, seed=args.seed, return_params=True)
        target = out / f"{path.stem}_{args.preset}_s{args.seed}.png"
        dpe.save_image(low, target)
        drawn = f"brightness={params['brightness']:.3f} contrast={params['contrast']:.3f}"
        print(f"{_shown(target)}  {drawn}")
    return 1 if failures else 0


def _cmd_methods(args: argparse.Namespace) -> int:
    from dpe.methods import list_methods, method_info
    from dpe.weights import has_weights

    print(f"{'name':<14}{'kind':<11}{'weights':<10}label")
    for name in list_methods():
        info = method_info(name)
        weights = (
            "-" if not info["weights"] else ("yes" if has_weights(info["weights"]) else "MISSING")
        )
        print(f"{name:<14}{info['kind']:<11}{weights:<10}{info['label']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("enhance", help="enhance image files or folders; writes lossless PNG")
    p.add_argument("inputs", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--method", default="dpe", help="a name from `python -m dpe methods`")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--bits16", action="store_true", help="write 16-bit PNG")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_enhance)

    p = sub.add_parser("degrade", help="make low-quality twins of clean images")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--preset", default="paper", choices=["paper", "clinical"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_degrade)

    p = sub.add_parser("methods", help="list methods and whether their weights are present")
    p.set_defaults(func=_cmd_methods)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    # Our messages are one line per file. Without a handler, logging's last resort would add
    # libraries' chatter (tifffile's "invalid offset to first page ...") to the terminal.
    logging.getLogger().addHandler(logging.NullHandler())
    sys.exit(main())
