"""Command line: ``python -m dpe enhance | degrade | methods``."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from dpe.files import image_files


def _shown(path: Path) -> str:
    """A path for a one-line message: control characters (a newline in a name) escaped."""
    text = str(path)
    return text if text.isprintable() else ascii(text)


def _collect(inputs: list[str]) -> list[tuple[Path, Path]]:
    """(file, its path relative to the folder named) for files named directly (the name alone)
    and image files found recursively in named folders; each file once."""
    files: list[tuple[Path, Path]] = []
    seen: set[Path] = set()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            pairs = [(p, p.relative_to(path)) for p in image_files(path)]
        elif path.is_file():
            pairs = [(path, Path(path.name))]
        else:
            raise SystemExit(f"error: {_shown(path)} is neither a file nor a folder.")
        for file, rel in pairs:
            if file.resolve() not in seen:
                seen.add(file.resolve())
                files.append((file, rel))
    if not files:
        raise SystemExit("error: no image files found in the inputs given.")
    return files


def _targets(files: list[tuple[Path, Path]], out: Path, suffix: str) -> list[Path]:
    """Where each file's result goes: its relative path under ``out``, stem + ``suffix``."""
    return [out / rel.parent / f"{rel.stem}{suffix}.png" for _, rel in files]


def _clash(path: Path, target: Path, written: dict[Path, Path]) -> str | None:
    """Why ``path`` must not be written to ``target``: another input of this run already was
    (``x/a.png`` and ``y/a.png`` named directly, or ``a.png`` and ``a.jpg`` in one folder)."""
    if target not in written:
        return None
    return (
        f"skipped {_shown(path)}: {_shown(target)} was already written from "
        f"{_shown(written[target])} in this run; give it another --out folder."
    )


def output_bits(bits: int | None, source_depth: int) -> int:
    """Bits per channel of an output PNG: ``bits`` if given, else as the app writes (16 for a
    source above 8 bits: 10-bit DICOM, 16-bit PNG/TIFF; 8 otherwise)."""
    return bits or (16 if source_depth > 8 else 8)


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

    files = _collect(args.inputs)
    out = _output_folder(args.out)
    targets = _targets(files, out, f"_{args.method}")
    try:
        method = dpe.get_method(args.method)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.engine == "ray":
        return _enhance_on_ray(
            args, [(path, target) for (path, _), target in zip(files, targets, strict=True)]
        )
    failures = 0
    pairs = list(zip(files, targets, strict=True))
    written: dict[Path, Path] = {}
    for (path, _), target in tqdm(pairs, unit="img", disable=args.quiet):
        if clash := _clash(path, target, written):
            tqdm.write(clash, file=sys.stderr)
            failures += 1
            continue
        try:
            loaded = dpe.load_image(path)
            start = time.perf_counter()
            result = method.enhance(loaded.image, gray=loaded.gray)
            seconds = time.perf_counter() - start
        except ValueError as exc:
            tqdm.write(f"skipped {_shown(path)}: {exc}", file=sys.stderr)
            failures += 1
            continue
        bits = output_bits(args.bits, loaded.bit_depth)
        target.parent.mkdir(parents=True, exist_ok=True)
        dpe.save_image(result, target, bits=bits)
        written[target] = path
        tqdm.write(f"{_shown(target)}  ({seconds:.2f} s, {bits}-bit)")
    return 1 if failures else 0


def _enhance_on_ray(args: argparse.Namespace, pairs: list[tuple[Path, Path]]) -> int:
    from dpe.scale import MANIFEST, enhance_files

    counts = enhance_files(
        pairs,
        method=args.method,
        out=Path(args.out),
        bits=args.bits,
        address=args.address,
        num_cpus=args.cpus,
        actors=args.actors,
        gpus_per_actor=args.gpus_per_actor,
        quiet=args.quiet,
    )
    done = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    print(f"{done}; manifest: {_shown(Path(args.out) / MANIFEST)}")
    return 1 if counts.get("failed") else 0


def engine_options(parser: argparse.ArgumentParser) -> None:
    """``--engine ray`` and its cluster options, shared by ``dpe enhance`` and ``dpe.evaluate``."""
    group = parser.add_argument_group("past one machine (pip install -r requirements-scale.txt)")
    group.add_argument(
        "--engine",
        choices=["ray"],
        default=None,
        help="run on a Ray cluster: decoding in tasks, the method in a pool of actors that "
        "load the weights once; enhance also writes DIR/manifest.csv and skips outputs that "
        "exist (resume). Default: this one process, without Ray",
    )
    group.add_argument(
        "--address",
        default=None,
        help="with --engine ray: the cluster to join (auto: the one `ray start --head` began "
        "here; or HOST:6379); default: start a local cluster for this run",
    )
    group.add_argument(
        "--cpus", type=int, default=None, help="CPUs of the local cluster (default: all)"
    )
    group.add_argument(
        "--actors",
        type=int,
        default=None,
        help="model actors (default: one per CPU of the cluster, each with one torch thread; "
        "with --gpus-per-actor, as many as the GPUs allow)",
    )
    group.add_argument(
        "--gpus-per-actor",
        type=float,
        default=0.0,
        help="GPUs each model actor reserves; a deep method's network runs there (default 0: "
        "CPU actors)",
    )


def _cmd_degrade(args: argparse.Namespace) -> int:
    import dpe
    from dpe.datasets import image_seed

    files = _collect(args.inputs)
    out = _output_folder(args.out)
    targets = _targets(files, out, f"_{args.preset}_s{args.seed}")
    failures = 0
    written: dict[Path, Path] = {}
    for (path, rel), target in zip(files, targets, strict=True):
        if clash := _clash(path, target, written):
            print(clash, file=sys.stderr)
            failures += 1
            continue
        try:
            loaded = dpe.load_image(path)
        except ValueError as exc:
            print(f"skipped {_shown(path)}: {exc}", file=sys.stderr)
            failures += 1
            continue
        # Each file its own draw, keyed as dpe.evaluate keys it: a folder degraded once is a
        # sample of the preset, and the same seed and relative path give the same twin.
        rng = image_seed(args.seed, rel.as_posix())
        low, params = dpe.degrade(
            loaded.image, args.preset, seed=rng, gray=loaded.gray, return_params=True
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        dpe.save_image(low, target, bits=args.bits or (16 if loaded.bit_depth > 8 else 8))
        written[target] = path
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


def _bits_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bits",
        type=int,
        choices=[8, 16],
        default=None,
        help="bits per channel of the PNGs; default: the source's depth (16 for a 10-, 12- or "
        "16-bit source, as the app writes), --bits 8 for 8-bit files",
    )
    # The old spelling, kept so scripts that pass it keep working.
    parser.add_argument(
        "--bits16", dest="bits", action="store_const", const=16, help=argparse.SUPPRESS
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "enhance",
        help="enhance image files or folders; writes lossless PNG",
        description="Enhance images with one method and write lossless PNGs under --out as "
        "FOLDER-RELATIVE/PATH/STEM_METHOD.png (a file named directly: STEM_METHOD.png). "
        "An input whose output another input of the run already wrote is skipped, not "
        "overwritten.",
    )
    p.add_argument("inputs", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--method", default="dpe", help="a name from `python -m dpe methods`")
    p.add_argument("--out", required=True, help="output folder")
    _bits_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    engine_options(p)
    p.set_defaults(func=_cmd_enhance)

    p = sub.add_parser(
        "degrade",
        help="make low-quality twins of clean images",
        description="Degrade clean images with a preset and write lossless PNGs under --out as "
        "FOLDER-RELATIVE/PATH/STEM_PRESET_sSEED.png.",
    )
    p.add_argument("inputs", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--preset", default="paper", choices=["paper", "clinical"])
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="each file draws its own brightness, contrast and noise from this seed and its "
        "path relative to the folder named (a file named directly: its name), as "
        "`python -m dpe.evaluate` does; a folder is a sample of the preset, the same seed "
        "gives the same twins (default 0)",
    )
    p.add_argument("--out", required=True, help="output folder")
    _bits_option(p)
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
