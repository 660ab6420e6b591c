"""``--engine ray``: archive-scale enhancement and evaluation on a local two-CPU Ray cluster.

Needs requirements-scale.txt (CI installs it); skipped without Ray.
"""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from dpe.__main__ import main as dpe_main
from dpe.evaluate import main as evaluate_main
from dpe.files import image_files
from tests.data.make_bad import make_corpus

pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parent.parent
RADIOLOGY = ROOT / "examples" / "radiology"
BAD = {  # corpus file -> what its manifest row must say
    "empty.png": "empty (0 bytes)",
    "truncated.jpg": "truncated or corrupt",
    "random.dcm": "not an image this program can read",
    "no_pixels.dcm": "without pixel data",
    "bomb_30000x30000.jpg": "too many pixels",
    "tiff_128_samples.tif": "128 per pixel",
}


@pytest.fixture(scope="module")
def cluster():
    """One local cluster for the module: ``ray.init(num_cpus=2)``, as on this machine."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """32 good files in nested folders (8- and 16-bit PNG, gray JPEG, TIFF, DICOM) and the
    hostile-input corpus, whose files share stems (``random.dcm``, ``random.png``, ...)."""
    root = tmp_path_factory.mktemp("archive")
    rng = np.random.default_rng(0)
    for i in range(30):
        folder = root / f"study{i % 3}" / ("series" if i % 2 else "")
        folder.mkdir(parents=True, exist_ok=True)
        h, w = 24 + i, 40 - i // 2
        if i % 5 == 0:
            pixels = (rng.random((h, w)) * 50000).astype(np.uint16)  # 16-bit gray
            Image.fromarray(pixels).save(folder / f"img{i}.png")
        elif i % 5 == 1:
            pixels = (rng.random((h, w)) * 200).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"img{i}.jpg", quality=90)
        elif i % 5 == 2:
            tifffile.imwrite(folder / f"img{i}.tif", (rng.random((h, w, 3)) * 60000).astype("u2"))
        else:
            Image.fromarray((rng.random((h, w, 3)) * 150).astype(np.uint8)).save(
                folder / f"img{i}.png"
            )
    for name in ("chest_xray_16bit.png", "tibia_xray.dcm", "head_ct.dcm", "shoulder_mr.dcm"):
        if (RADIOLOGY / name).is_file():
            shutil.copy(RADIOLOGY / name, root / name)
    # Sources sharing an output: the first by path that loads writes it, the later ones clash.
    for name in ("twin.jpg", "twin.png", "twin2.png"):
        Image.fromarray((rng.random((20, 30, 3)) * 150).astype(np.uint8)).save(root / name)
    (root / "twin2.dcm").write_bytes(b"not a DICOM file at all")
    make_corpus(root / "bad")  # the whole hostile corpus: python -m tests.data.make_bad
    return root


def _outputs(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*.png")}


def _manifest(folder: Path) -> dict[str, dict]:
    with (folder / "manifest.csv").open(newline="") as f:
        return {Path(row["source"]).name: row for row in csv.DictReader(f)}


def test_archive_on_ray_matches_one_process_and_lists_bad_files(
    cluster, archive, tmp_path, monkeypatch
):
    # Each actor runs one torch thread; deep methods' floats depend on the thread count.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    sources = image_files(archive)
    assert len(sources) >= 50
    one = ["enhance", str(archive), "--method", "dpe-s", "--quiet", "--out"]
    assert dpe_main([*one, str(tmp_path / "one")]) == 1  # the bad files
    assert dpe_main([*one, str(tmp_path / "ray"), "--engine", "ray"]) == 1

    ray_out = _outputs(tmp_path / "ray")
    assert ray_out == _outputs(tmp_path / "one")  # same files, same bytes
    rows = _manifest(tmp_path / "ray")
    assert len(rows) == len(sources)
    for name, reason in BAD.items():
        assert rows[name]["status"] == "failed" and reason in rows[name]["error"], rows[name]
    failed = [row for row in rows.values() if row["status"] == "failed"]
    assert all(row["error"] and "\n" not in row["error"] for row in failed)
    good = [row for row in rows.values() if row["status"] != "failed"]
    assert {row["status"] for row in good} == {"written"} and len(good) == len(ray_out)
    assert all(Path(row["output"]).is_file() and float(row["seconds"]) > 0 for row in good)
    assert rows["twin.jpg"]["status"] == "written"
    assert "twin_dpe-s.png was already written from" in rows["twin.png"]["error"]
    assert rows["twin2.dcm"]["status"] == "failed" and rows["twin2.png"]["status"] == "written"
    assert rows["img0.png"]["bits"] == "16" and rows["img3.png"]["bits"] == "8"
    assert rows["img1.jpg"]["size"] == "40x25"  # W x H
    assert not list((tmp_path / "ray").rglob("*.part"))


def test_a_killed_job_resumes_where_it_stopped(cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the one-process reference, as an actor runs
    archive, out, n = tmp_path / "archive", tmp_path / "out", 16
    rng = np.random.default_rng(1)
    for i in range(n):  # big enough that one actor takes a while over them
        folder = archive / f"part{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (rng.random((192, 224, 3)) * 120).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:02d}.png")
    (archive / "part0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    command = [sys.executable, "-m", "dpe", "enhance", str(archive), "--method", "dpe-s"]
    command += ["--out", str(out), "--engine", "ray", "--cpus", "1", "--quiet"]
    job = subprocess.Popen(
        command, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while len(list(out.rglob("*.png"))) < 2 and job.poll() is None:
            assert time.monotonic() < deadline, "no output in 120 s"
            time.sleep(0.02)
    finally:
        os.killpg(job.pid, signal.SIGKILL)  # the job and the cluster it started
        job.wait(timeout=30)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    assert 2 <= len(before) < n, "the job was not interrupted part-way"
    stray = out / "part0" / "img00_dpe-s.png.99999.part"  # as if killed mid-write
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"half a PNG")

    again = ["enhance", str(archive), "--method", "dpe-s", "--quiet", "--out"]
    assert dpe_main([*again, str(out), "--engine", "ray"]) == 1  # broken.png
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # not redone
    assert not list(out.rglob("*.part"))
    rows = _manifest(out)
    assert len(rows) == n + 1 and rows["broken.png"]["status"] == "failed"
    assert {row["status"] for name, row in rows.items() if name != "broken.png"} <= {
        "written",
        "existing",
    }
    assert dpe_main([*again, str(tmp_path / "one")]) == 1
    assert _outputs(out) == _outputs(tmp_path / "one") and len(_outputs(out)) == n


def test_without_engine_ray_is_not_imported(tmp_path):
    (tmp_path / "in").mkdir()
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(tmp_path / "in" / "a.png")
    code = (
        "import sys; from dpe.__main__ import main; "
        f"rc = main(['enhance', {str(tmp_path / 'in')!r}, '--method', 'clahe', '--quiet', "
        f"'--out', {str(tmp_path / 'out')!r}]); print(rc, 'ray' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.stdout.split()[-2:] == ["0", "False"], result.stderr
    assert not (tmp_path / "out" / "manifest.csv").exists()


def test_evaluate_on_ray_gives_the_same_report(cluster, archive, tmp_path):
    args = ["--images", str(archive / "study1"), "--methods", "identity,autocontrast",
            "--seeds", "0,1", "--quiet", "--per-image"]  # fmt: skip
    for name, engine in (("one", []), ("ray", ["--engine", "ray"])):
        out = [
            "--json",
            str(tmp_path / f"{name}.json"),
            "--gallery",
            str(tmp_path / f"gallery-{name}"),
        ]
        assert evaluate_main([*args, *out, *engine]) == 0
    one, ray = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "ray"))
    assert _outputs(tmp_path / "gallery-one") == _outputs(tmp_path / "gallery-ray") != {}
    for report in (one, ray):  # timings differ, nothing else may
        for row in report["results"] + report["per_image"]:
            row.pop("seconds_per_mp", None), row.pop("seconds", None)
    assert one == ray and one["images"] == 10
