import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def run(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "dpe", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def make_images(folder: Path) -> None:
    rng = np.random.default_rng(0)
    (folder / "sub").mkdir(parents=True)
    Image.fromarray((rng.random((40, 50, 3)) * 120).astype(np.uint8)).save(folder / "a.png")
    Image.fromarray((rng.random((30, 20)) * 200).astype(np.uint8)).save(folder / "sub" / "b.jpg")
    (folder / "notes.txt").write_text("not an image")


def test_enhance_folder_recursively(tmp_path):
    make_images(tmp_path / "in")
    result = run(
        "enhance",
        str(tmp_path / "in"),
        "--method",
        "autocontrast",
        "--out",
        str(tmp_path / "out"),
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    outs = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert outs == ["a_autocontrast.png", "b_autocontrast.png"]
    with Image.open(tmp_path / "out" / "a_autocontrast.png") as im:
        assert im.size == (50, 40) and im.mode == "RGB"


def test_enhance_bad_file_is_reported_not_crashed(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    result = run("enhance", str(bad), "--method", "identity", "--out", str(tmp_path / "o"))
    assert result.returncode == 1
    assert "skipped" in result.stderr and "Traceback" not in result.stderr


def test_missing_weights_is_a_clear_error(tmp_path):
    make_images(tmp_path / "in")
    result = run(
        "enhance",
        str(tmp_path / "in"),
        "--method",
        "dpe",
        "--out",
        str(tmp_path / "o"),
        env={"DPE_WEIGHTS_REPO": ""},
    )
    weights = ROOT / "weights" / "dpe.safetensors"
    if weights.is_file():  # once trained weights ship, the command must simply work
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode == 2
        assert "no weights for 'dpe'" in result.stderr and "Traceback" not in result.stderr


def test_degrade_is_deterministic(tmp_path):
    make_images(tmp_path / "in")
    for out in ("o1", "o2"):
        result = run(
            "degrade", str(tmp_path / "in" / "a.png"), "--seed", "5", "--out", str(tmp_path / out)
        )
        assert result.returncode == 0, result.stderr
    a = np.asarray(Image.open(tmp_path / "o1" / "a_paper_s5.png"))
    b = np.asarray(Image.open(tmp_path / "o2" / "a_paper_s5.png"))
    np.testing.assert_array_equal(a, b)
    assert a.mean() < np.asarray(Image.open(tmp_path / "in" / "a.png")).mean()


def test_methods_lists_weights_state():
    result = run("methods")
    assert result.returncode == 0
    lines = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert {"dpe", "autocontrast"} <= lines.keys()
    expected = "yes" if (ROOT / "weights" / "dpe.safetensors").is_file() else "MISSING"
    assert expected in lines["dpe"]
