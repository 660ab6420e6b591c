"""Past one machine: ``--engine ray`` for ``python -m dpe enhance`` and ``python -m dpe.evaluate``.

Imported only when ``--engine ray`` is given, so the one-process commands never load Ray.

Enhancement runs as a Ray Data pipeline over the list of paths (the pixels are read on the
workers, never on the driver):

1. **decode** (Ray tasks): ``dpe.io.load_image``; a file that cannot be read becomes a row that
   carries its one-line error to the manifest instead of failing the job;
2. **enhance** (a pool of Ray actors, each loading the method's weights once);
3. **write** (Ray tasks): the lossless PNG at the source's relative path, written to a
   ``.part`` file and renamed, so a killed job never leaves a half-written output.

The driver appends one manifest row per file as results stream back (``manifest.csv`` in the
output folder: source, output, method, size, seconds, error, status, bits), so a killed job
keeps the rows of the files it finished. A rerun skips every output that already exists
(resume) and rewrites the manifest with one row per source. Outputs are the bytes the
one-process command writes with the same torch threads (one per actor:
``OMP_NUM_THREADS=1 python -m dpe enhance``): every stage is the function it calls, and
sources that share an output are tried in the same order (they are decoded once beforehand,
in small Ray tasks, so the first readable one goes into the pipeline).
"""

from __future__ import annotations

import csv
import io
import logging
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

MANIFEST = "manifest.csv"
FIELDS = ("source", "output", "method", "size", "seconds", "error", "status", "bits")
"""Manifest columns. ``size`` is W x H in pixels, ``seconds`` the method's time on the image,
``status`` one of written, existing (a rerun found the output) or failed (``error`` says why)."""


# --------------------------------------------------------------------------------------------
# The cluster


def connect(address: str | None = None, *, num_cpus: int | None = None, quiet: bool = False):
    """Join the Ray cluster at ``address`` ("auto": the one ``ray start`` began on this machine),
    or start a local one with ``num_cpus`` CPUs; reuses a connection already made."""
    import ray

    if not ray.is_initialized():
        options = {"address": address} if address else {"num_cpus": num_cpus}
        ray.init(
            **options,
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=not quiet,
            configure_logging=True,
        )
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = not quiet
    context.print_on_execution_start = not quiet
    return ray


def _plan(ray, actors: int | None, gpus_per_actor: float) -> tuple[int, float, float]:
    """(actors, CPUs per actor, CPUs per decode/write task) for this cluster.

    Without GPUs: one model actor per CPU, each asking for 3/4 of one, so the quarters left
    run the decode and write tasks that feed them (measured at under a tenth of the model's
    time per file, benchmarks/bench_scale.py). An actor's torch uses one thread per CPU it
    was given. A task asking for less than an actor also keeps Ray from fusing decoding into
    the actors, which would leave a GPU waiting while its actor decodes.
    """
    cpus = ray.cluster_resources().get("CPU", 1.0)
    if gpus_per_actor > 0:
        gpus = ray.cluster_resources().get("GPU", 0.0)
        if gpus < gpus_per_actor:
            raise ValueError(
                f"--gpus-per-actor {gpus_per_actor} but the cluster has {gpus:g} GPUs; "
                "drop the option to run on CPUs."
            )
        return actors or max(1, int(gpus // gpus_per_actor)), 1.0, 0.5
    return actors or max(1, int(cpus)), 0.75, 0.25


# --------------------------------------------------------------------------------------------
# The stages (run on the workers)


def _decode(row: dict) -> dict:
    """Stage 1: the file's pixels (float32 bytes) and what the output needs, or its error."""
    from dpe.io import load_image

    out = {**row, "pixels": b"", "height": 0, "width": 0, "gray": False, "depth": 0}
    try:
        loaded = load_image(row["source"])
    except ValueError as exc:  # dpe.io.ImageError: one printable line
        return {**out, "error": str(exc)}
    except OSError as exc:  # shared storage hiccup, permissions
        return {**out, "error": f"cannot read the file: {exc}"}
    except MemoryError:
        return {**out, "error": "not enough memory on the worker to decode it"}
    height, width = loaded.image.shape[:2]
    pixels = np.ascontiguousarray(loaded.image, dtype=np.float32).tobytes()
    return {**out, "pixels": pixels, "height": height, "width": width,
            "gray": bool(loaded.gray), "depth": int(loaded.bit_depth)}  # fmt: skip


def _pixels(row: dict) -> np.ndarray:
    return np.frombuffer(row["pixels"], dtype=np.float32).reshape(row["height"], row["width"], 3)


class _Enhancer:
    """Stage 2: one actor, one method loaded once; enhances one image per call."""

    def __init__(self, method: str, threads: int, gpu: bool):
        import torch

        import dpe

        # dpe.methods' deep methods size their torch threads by OMP_NUM_THREADS: one actor, its
        # share of the CPUs, and the bytes `OMP_NUM_THREADS=N python -m dpe enhance` writes
        os.environ["OMP_NUM_THREADS"] = str(max(1, threads))
        torch.set_num_threads(max(1, threads))
        self.method = dpe.get_method(method)
        if gpu and hasattr(self.method.inner, "to"):  # a deep method; the classic ones are numpy
            self.method.inner.to("cuda")

    def __call__(self, batch: dict) -> dict:
        rows = [
            dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)
        ]
        for row in rows:
            row["seconds"] = float("nan")
            if row["error"]:
                continue
            try:
                start = time.perf_counter()
                result = self.method.enhance(_pixels(row), gray=bool(row["gray"]))
                row["seconds"] = time.perf_counter() - start
            except ValueError as exc:  # a method refusing an input (size, content)
                row.update(error=f"{self.method.name} failed: {exc}", pixels=b"")
                continue
            row["pixels"] = np.ascontiguousarray(result, dtype=np.float32).tobytes()
        return {key: [row[key] for row in rows] for key in rows[0]} if rows else batch


def _write(row: dict, bits: int | None) -> dict:
    """Stage 3: the PNG, renamed into place once complete; the manifest row."""
    from dpe.__main__ import output_bits
    from dpe.io import save_image

    done = {key: row[key] for key in ("source", "output", "method", "error", "seconds")}
    done.update(size=f"{row['width']}x{row['height']}" if row["width"] else "", bits="")
    if row["error"]:
        return {**done, "status": "failed"}
    depth = output_bits(bits, row["depth"])
    target = Path(row["output"])
    buffer = io.BytesIO()
    try:
        save_image(_pixels(row), buffer, bits=depth)
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(f"{target.name}.{os.getpid()}.part")
        part.write_bytes(buffer.getvalue())
        os.replace(part, target)
    except (OSError, ValueError) as exc:
        return {**done, "status": "failed", "error": f"cannot write the output: {exc}"}
    return {**done, "status": "written", "bits": depth}


# --------------------------------------------------------------------------------------------
# The driver


def read_manifest(path: str | os.PathLike) -> list[dict]:
    """The rows of a manifest written by `enhance_files` (``[]`` when there is none)."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _write_manifest(path: Path, rows: Iterable[dict]) -> None:
    part = path.with_name(path.name + ".part")
    with part.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(part, path)


def enhance_files(
    pairs: list[tuple[Path, Path]],
    *,
    method: str,
    out: Path,
    bits: int | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    actors: int | None = None,
    gpus_per_actor: float = 0.0,
    quiet: bool = False,
) -> dict:
    """Enhance each ``(source, target)`` on Ray; returns counts by status.

    Targets that exist are skipped (resume); the manifest in ``out`` gets one row per source.
    Sources that share a target (``a.png`` beside ``a.dcm``) are tried in order, as the
    one-process command does: the first that succeeds writes it, the later ones are refused.
    """
    from dpe.__main__ import _clash, _shown

    manifest = Path(out) / MANIFEST
    rows = {row["source"]: row for row in read_manifest(manifest)}
    for part in Path(out).rglob("*.png.*.part"):  # what a killed job was writing
        if part.suffixes[-2][1:].isdigit():
            part.unlink(missing_ok=True)
    queues: dict[Path, list[Path]] = {}
    for source, target in pairs:
        queues.setdefault(target, []).append(source)
    writers: dict[Path, Path] = {}  # target -> the source whose output it is
    work, shared = [], []
    for target, sources in queues.items():
        if target.exists():  # resume: an earlier run wrote it
            done = [s for s in sources if rows.get(str(s), {}).get("output") == str(target)]
            writer = next((s for s in done if rows[str(s)]["status"] != "failed"), sources[0])
            if rows.get(str(writer), {}).get("status") != "written":
                rows[str(writer)] = {"source": str(writer), "output": str(target),
                                     "method": method, "status": "existing"}  # fmt: skip
            writers[target] = writer
        elif len(sources) == 1:
            work.append(_work_row(sources[0], target, method))
        else:
            shared.append(target)
    if shared:
        # Sources that share an output are first only decoded (one small Ray task each), so
        # the pipeline gets the first readable one at once instead of starting again for each
        # source that fails (about 10 s per restart on two CPUs).
        probed = _probe(
            [_work_row(s, t, method) for t in shared for s in queues[t]],
            address, num_cpus, quiet,
        )  # fmt: skip
        for target in shared:
            for source in queues[target]:
                row = probed[str(source)]
                if not row["error"]:
                    work.append(_work_row(source, target, method))
                    break
                rows[str(source)] = _write({**row, "seconds": float("nan")}, bits)
                print(f"skipped {_shown(source)}: {row['error']}", file=sys.stderr)
    while work:
        retry = []
        for row in _run(work, method, bits, manifest, address, num_cpus, actors, gpus_per_actor,
                        quiet):  # fmt: skip
            source, target = Path(row["source"]), Path(row["output"])
            rows[str(source)] = row
            if row["status"] == "written":
                writers[target] = source
                continue
            print(f"skipped {_shown(source)}: {row['error']}", file=sys.stderr)
            later = queues[target][queues[target].index(source) + 1 :]
            if later:  # the next source for this output gets its turn
                retry.append(_work_row(later[0], target, method))
        work = retry
    for target, sources in queues.items():
        writer = writers.get(target)
        for source in sources[sources.index(writer) + 1 :] if writer else []:
            error = _clash(source, target, {target: writer})
            rows[str(source)] = {"source": str(source), "output": str(target), "method": method,
                                 "status": "failed", "error": error}  # fmt: skip
            print(error, file=sys.stderr)
    _write_manifest(manifest, (rows[key] for key in sorted(rows)))
    counts: dict[str, int] = {}
    for source, _ in pairs:
        status = rows[str(source)]["status"]
        counts[status] = counts.get(status, 0) + 1
    return counts


def _work_row(source: Path, target: Path, method: str) -> dict:
    return {"source": str(source), "output": str(target), "method": method, "error": ""}


def _probe(work: list[dict], address, num_cpus, quiet) -> dict[str, dict]:
    """Each source's ``_decode`` row without its pixels (decoded on the workers), by source."""
    ray = connect(address, num_cpus=num_cpus, quiet=quiet)

    @ray.remote(num_cpus=0.25)
    def decode(row: dict) -> dict:
        return {**_decode(row), "pixels": b""}

    return {row["source"]: row for row in ray.get([decode.remote(row) for row in work])}


def _run(work, method, bits, manifest, address, num_cpus, actors, gpus_per_actor, quiet):
    """The pipeline over ``work``: yields each file's manifest row as it finishes, after
    appending it to ``manifest``, so a killed job keeps the rows of what it finished."""
    ray = connect(address, num_cpus=num_cpus, quiet=quiet)
    n_actors, actor_cpus, task_cpus = _plan(ray, actors, gpus_per_actor)
    ds = ray.data.from_items(work, override_num_blocks=min(len(work), 200 * n_actors))
    ds = ds.map(_decode, num_cpus=task_cpus)
    ds = ds.map_batches(
        _Enhancer,
        fn_constructor_kwargs={
            "method": method,
            "threads": max(1, int(actor_cpus)),
            "gpu": gpus_per_actor > 0,
        },
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=n_actors),
        num_cpus=actor_cpus,
        num_gpus=gpus_per_actor,
    )
    ds = ds.map(_write, fn_kwargs={"bits": bits}, num_cpus=task_cpus)
    with manifest.open("a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, FIELDS, extrasaction="ignore")
        if f.tell() == 0:
            writer.writeheader()
        for row in ds.iter_rows():
            writer.writerow(row)
            f.flush()
            yield row


# --------------------------------------------------------------------------------------------
# Evaluation: one image's whole measurement (load, degrade per seed, enhance, score) per call


class _Evaluator:
    """One actor with every method loaded once; measures one image per call."""

    def __init__(self, methods: list[str], threads: int, gpu: bool, options: dict):
        import torch

        from dpe.methods import get_method

        # dpe.methods' deep methods size their torch threads by OMP_NUM_THREADS: one actor, its
        # share of the CPUs, and the bytes `OMP_NUM_THREADS=N python -m dpe enhance` writes
        os.environ["OMP_NUM_THREADS"] = str(max(1, threads))
        torch.set_num_threads(max(1, threads))
        self.methods = {name: get_method(name) for name in methods}
        for method in self.methods.values():
            if gpu and hasattr(method.inner, "to"):
                method.inner.to("cuda")
        self.options = options

    def __call__(self, batch: dict) -> dict:
        import pickle

        from dpe.evaluate import ImageItem, _measure_image
        from dpe.io import load_image

        results = []
        for path, relpath, group, shown in zip(
            batch["path"], batch["relpath"], batch["group"], batch["shown"], strict=True
        ):
            item = ImageItem(Path(path), str(relpath), str(group))
            try:
                source = load_image(item.path)
            except ValueError as exc:  # dpe.io.ImageError: reported, the run goes on
                results.append(pickle.dumps(([], None, str(exc))))
                continue
            panels = {} if shown else None
            records = _measure_image(
                item, source.image, source.gray, self.methods, panels=panels, **self.options
            )
            results.append(pickle.dumps((records, panels, None)))
        return {"index": batch["index"], "result": results}


def measure_items(
    items: list,
    methods: dict,
    *,
    shown: set,
    preset: str,
    seeds: list[int],
    clean: bool,
    address: str | None = None,
    num_cpus: int | None = None,
    actors: int | None = None,
    gpus_per_actor: float = 0.0,
    quiet: bool = False,
) -> tuple[list[dict], dict, list[dict]]:
    """`dpe.evaluate`'s per-image loop on Ray: (records, gallery rows, unreadable files), in
    the order of ``items``, so the summaries and intervals are the one-process run's."""
    import pickle

    ray = connect(address, num_cpus=num_cpus, quiet=quiet)
    n_actors, actor_cpus, _ = _plan(ray, actors, gpus_per_actor)
    rows = [
        {"index": i, "path": str(item.path), "relpath": item.relpath, "group": item.group,
         "shown": item in shown}
        for i, item in enumerate(items)
    ]  # fmt: skip
    ds = ray.data.from_items(rows, override_num_blocks=min(len(rows), 200 * n_actors))
    ds = ds.map_batches(
        _Evaluator,
        fn_constructor_kwargs={
            "methods": list(methods),
            "threads": max(1, int(actor_cpus)),
            "gpu": gpus_per_actor > 0,
            "options": {"preset": preset, "seeds": seeds, "clean": clean},
        },
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=n_actors),
        num_cpus=actor_cpus,
        num_gpus=gpus_per_actor,
    )
    done = {int(row["index"]): pickle.loads(row["result"]) for row in ds.iter_rows()}
    records: list[dict] = []
    rows_shown: dict[str, list] = {}
    bad_images = []
    for i, item in enumerate(items):
        mine, panels, error = done[i]
        if error is not None:
            bad_images.append({"path": str(item.path), "reason": error})
            print(f"note: skipping {item.path}: {error}", file=sys.stderr)
            continue
        records += mine
        if panels is not None:
            rows_shown.setdefault(item.group, []).append((item.relpath, panels))
    return records, rows_shown, bad_images
