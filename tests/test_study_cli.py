"""The ``python -m study`` command line, run as an organiser would, in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import study
import study.create
from tests.test_study_support import make_study, write_images

ROOT = Path(__file__).resolve().parents[1]


def run_cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DPE_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "study", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )


@pytest.fixture
def voted_study(tmp_path):
    """A study with two raters' votes, built through the Python API in the CLI's data dir."""
    db, study_id = make_study(tmp_path, n_images=2)
    for n in range(2):
        invite = study.invite_rater(db, study_id, f"Dr {n}", seed=n)
        while (trial := study.next_trial(db, invite.rater_id)) is not None:
            study.record_vote(db, invite.rater_id, trial.trial_id, "left", response_ms=1200)
    db.close()
    return tmp_path / "data", study_id


def test_invite_prints_the_code_once_as_its_last_line(voted_study):
    data_dir, study_id = voted_study
    result = run_cli(data_dir, "invite", study_id, "--name", "Dr New", "--specialty", "radiology")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    code = lines[-1]
    assert result.stdout.count(code) == 1
    with study.open_db(data_dir / "study.db") as db:
        rater = study.rater_by_token(db, code)
        assert rater["pseudonym"] == "R03" and rater["specialty"] == "radiology"


def test_status_export_and_report(voted_study, tmp_path):
    data_dir, study_id = voted_study
    status = run_cli(data_dir, "status", study_id)
    assert status.returncode == 0, status.stderr
    assert "R01" in status.stdout and "22/22" in status.stdout and "44 votes" in status.stdout
    listing = run_cli(data_dir, "status")
    assert study_id in listing.stdout and "Test study" in listing.stdout

    out = tmp_path / "export"
    export = run_cli(data_dir, "export", study_id, "--out", str(out), "--bootstrap", "50")
    assert export.returncode == 0, export.stderr
    assert {p.name for p in out.iterdir()} >= {
        "votes.csv",
        "ratings.csv",
        "report.json",
        "study.db",
    }

    report = run_cli(data_dir, "report", study_id, "--bootstrap", "50")
    assert report.returncode == 0, report.stderr
    assert "44 votes from 2 raters" in report.stdout
    assert "dpe" in report.stdout and "Kendall u" in report.stdout


def test_user_errors_exit_2_with_a_message(tmp_path):
    result = run_cli(tmp_path / "data", "invite", "nosuchstudy", "--name", "X")
    assert result.returncode == 2
    assert "error: no study 'nosuchstudy'" in result.stderr
    assert "Traceback" not in result.stderr


def _cheap_dpe_methods() -> list[str]:
    try:
        import dpe
    except ImportError:
        return []
    return [m for m in ("identity", "autocontrast", "clahe") if m in dpe.list_methods()]


def test_create_enhances_with_dpe_and_prints_the_id_last(tmp_path):
    methods = _cheap_dpe_methods()
    assert len(methods) >= 2, "dpe registers identity, autocontrast and clahe"
    images = tmp_path / "images"
    write_images(images / "xray", 2)
    write_images(images / "endoscopy", 1, seed=1)
    result = run_cli(
        tmp_path / "data",
        "create",
        "--title",
        "CLI study",
        "--images",
        str(images),
        "--methods",
        ",".join(methods[:2]),
    )
    assert result.returncode == 0, result.stderr
    study_id = result.stdout.strip().splitlines()[-1]
    with study.open_db(tmp_path / "data" / "study.db") as db:
        p = study.progress(db, study_id)
        modalities = {r["modality"] for r in db.query("SELECT modality FROM items")}
    assert p["status"] == "open" and p["items"] == 3 and p["stimuli"] == 6
    assert modalities == {"xray", "endoscopy"}


def test_importing_study_loads_no_torch_gradio_or_dpe():
    code = (
        "import sys, study, study.__main__; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'gradio', 'dpe'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_degraded_study_of_a_gray_scan_has_only_gray_stimuli(tmp_path):
    import numpy as np
    from PIL import Image

    folder = tmp_path / "scans"
    folder.mkdir()
    ramp = np.add.outer(np.arange(48), np.arange(40)).astype(np.uint16) * 600
    Image.fromarray(ramp).save(folder / "xray16.png")  # 16-bit grayscale, like a radiograph
    data_dir = tmp_path / "data"
    methods = "identity,autocontrast,clahe,dpe-s"
    made = run_cli(
        data_dir,
        "create",
        "--title",
        "Gray",
        "--images",
        str(folder),
        "--methods",
        methods,
        "--degrade",
        "paper",
        "--seed",
        "0",
    )
    assert made.returncode == 0, made.stderr
    study_id = made.stdout.strip().splitlines()[-1]
    with study.open_db(data_dir / "study.db") as db:
        names = [r["opaque_name"] for r in db.query("SELECT opaque_name FROM stimuli")]
        media = study.create.study_media(db, study_id)
    assert len(names) == 4
    for name in names:
        pixels = np.asarray(Image.open(media / name).convert("RGB"))
        assert (pixels[..., :1] == pixels).all(), name


def test_an_unknown_degradation_preset_is_one_line_and_registers_no_study(tmp_path):
    write_images(tmp_path / "scans", 1)
    data_dir = tmp_path / "data"
    args = ["create", "--title", "T", "--images", str(tmp_path / "scans")]
    made = run_cli(data_dir, *args, "--methods", "identity,clahe", "--degrade", "bogus")
    assert made.returncode == 2 and made.stdout == ""
    assert made.stderr.startswith("error: unknown degradation preset 'bogus'; use one of paper")
    assert len(made.stderr.strip().splitlines()) == 1  # no traceback
    with study.open_db(data_dir / "study.db") as db:
        assert study.list_studies(db) == []  # nothing stuck in "creating"


def test_a_nearly_gray_rgb_scan_makes_a_study_without_a_degradation(tmp_path):
    import numpy as np
    from PIL import Image

    folder = tmp_path / "scans"
    folder.mkdir()
    rng = np.random.default_rng(0)
    gray = rng.integers(10, 240, (40, 48)).astype(np.int16)
    rgb = np.stack([gray, gray + rng.integers(-2, 3, gray.shape), gray], -1)
    Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(folder / "screenshot.png")
    made = run_cli(
        tmp_path / "data", "create", "--title", "G", "--images", str(folder),
        "--methods", "identity,clahe",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr


def test_close_and_reopen(voted_study):
    data_dir, study_id = voted_study
    closed = run_cli(data_dir, "close", study_id)
    assert closed.returncode == 0, closed.stderr
    assert f"python -m study reopen {study_id}" in closed.stdout
    assert "closed" in run_cli(data_dir, "status").stdout
    reopened = run_cli(data_dir, "reopen", study_id)
    assert reopened.returncode == 0 and "open again" in reopened.stdout
    assert " open " in run_cli(data_dir, "status").stdout
    again = run_cli(data_dir, "reopen", study_id)
    assert again.returncode == 2 and "not closed" in again.stderr
