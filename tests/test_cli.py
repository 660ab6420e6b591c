import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dpe
from dpe.evaluate import degraded_twin

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


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
    outs = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*"))
    assert outs == ["a_autocontrast.png", "sub", "sub/b_autocontrast.png"]  # the input's layout
    with Image.open(tmp_path / "out" / "a_autocontrast.png") as im:
        assert im.size == (50, 40) and im.mode == "RGB"


def test_enhance_writes_the_source_bit_depth_unless_told(tmp_path):
    make_images(tmp_path / "in")
    sources = [
        EXAMPLES / "radiology" / "chest_xray_16bit.png",  # 16-bit PNG
        EXAMPLES / "radiology" / "tibia_xray.dcm",  # 10-bit DICOM
        tmp_path / "in" / "a.png",  # 8-bit
    ]
    names = ["chest_xray_16bit_identity.png", "tibia_xray_identity.png", "a_identity.png"]
    depths = {}
    for option in ([], ["--bits", "8"], ["--bits16"]):
        out = tmp_path / ("default" if not option else option[-1].strip("-"))
        result = run(
            "enhance",
            *map(str, sources),
            "--method",
            "identity",
            "--out",
            str(out),
            "--quiet",
            *option,
        )
        assert result.returncode == 0, result.stderr
        depths[out.name] = [dpe.load_image(out / name).bit_depth for name in names]
    assert depths == {"default": [16, 16, 8], "8": [8, 8, 8], "bits16": [16, 16, 16]}
    # 16 bits keep the DICOM's 10-bit steps exactly, as the app's downloads do
    original = dpe.load_image(sources[1]).image
    written = dpe.load_image(tmp_path / "default" / names[1]).image
    assert np.abs(written - original).max() <= 1 / 65535


def test_same_names_in_different_folders_do_not_overwrite_each_other(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 255, (3, 20, 20, 3), dtype=np.uint8)
    for folder, image in zip(["x", "y"], pixels, strict=False):
        (tmp_path / "in" / folder).mkdir(parents=True)
        Image.fromarray(image).save(tmp_path / "in" / folder / "scan.png")
    result = run(
        "enhance",
        str(tmp_path / "in"),
        "--method",
        "identity",
        "--out",
        str(tmp_path / "out"),
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    for folder, image in zip(["x", "y"], pixels, strict=False):
        written = np.asarray(Image.open(tmp_path / "out" / folder / "scan_identity.png"))
        np.testing.assert_array_equal(written, image)
    # Named one by one, both would be out/scan_identity.png; scan.bmp and scan.png in one folder
    # too: the first is written, the second refused on one line, never written over it.
    Image.fromarray(pixels[2]).save(tmp_path / "in" / "x" / "scan.bmp")
    for k, (inputs, first, second) in enumerate(
        [(["in/x/scan.png", "in/y/scan.png"], 0, "in/y/scan.png"), (["in/x"], 2, "in/x/scan.png")]
    ):
        out = tmp_path / f"clash{k}"
        result = run(
            "enhance",
            *(str(tmp_path / i) for i in inputs),
            "--method",
            "identity",
            "--out",
            str(out),
            "--quiet",
        )
        assert result.returncode == 1 and "Traceback" not in result.stderr
        [line] = result.stderr.splitlines()
        assert line.startswith(f"skipped {tmp_path / second}: ") and "already written" in line
        written = np.asarray(Image.open(out / "scan_identity.png"))
        np.testing.assert_array_equal(written, pixels[first])


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


def test_degrade_draws_for_each_file_as_evaluate_does(tmp_path):
    clean = tmp_path / "in"
    make_images(clean)
    for k in range(4):  # the same picture under four names
        shutil.copy(clean / "a.png", clean / f"copy{k}.png")
    result = run("degrade", str(clean), "--seed", "0", "--out", str(tmp_path / "low"))
    assert result.returncode == 0, result.stderr
    drawn = [line.split("  ", 1)[1] for line in result.stdout.splitlines()]
    assert len(drawn) == 6 and len(set(drawn)) == 6  # six files, six different draws
    assert "--seed" in (help_text := run("degrade", "--help").stdout)
    assert "each file draws its own" in " ".join(help_text.split())
    # The twin is the one dpe.evaluate scores against: seed and relative path, nothing else.
    for rel in ("a.png", "copy2.png", "sub/b.jpg"):
        source = dpe.load_image(clean / rel)
        expected = degraded_twin(source.image, rel, preset="paper", seed=0, gray=source.gray)
        stem = Path(rel).with_name(Path(rel).stem + "_paper_s0.png")
        written = dpe.load_image(tmp_path / "low" / stem).image
        assert np.abs(written - expected).max() <= 0.5 / 255 + 1e-6, rel
    # A file named on its own is keyed by its name: the same twin as inside its folder.
    result = run("degrade", str(clean / "copy2.png"), "--seed", "0", "--out", str(tmp_path / "one"))
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "one" / "copy2_paper_s0.png")),
        np.asarray(Image.open(tmp_path / "low" / "copy2_paper_s0.png")),
    )


def test_methods_lists_weights_state():
    result = run("methods")
    assert result.returncode == 0
    lines = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert {"dpe", "autocontrast"} <= lines.keys()
    expected = "yes" if (ROOT / "weights" / "dpe.safetensors").is_file() else "MISSING"
    assert expected in lines["dpe"]


def test_classic_methods_and_the_method_list_start_without_torch(tmp_path):
    # torch is imported when a deep method is built, not by `import dpe` or the registry.
    code = (
        "import sys; from dpe.__main__ import main; "
        f"a = main(['enhance', {str(EXAMPLES / 'radiology' / 'tibia_xray.dcm')!r}, "
        f"'--method', 'clahe', '--quiet', '--out', {str(tmp_path)!r}]); "
        "b = main(['methods']); print(a, b, 'torch' in sys.modules); "
        "import dpe; dpe.get_method('dpe-s'); print('torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.stdout.split()[-4:] == ["0", "0", "False", "True"], result.stderr


@pytest.mark.slow
def test_installed_package_imports_from_any_folder(tmp_path):
    """What `pip install -e .` relies on: pyproject.toml names the project and its packages."""
    wheels, site, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    source = tmp_path / "source"  # a copy: a build in the checkout would leave build/ behind
    for package in ("dpe", "study"):
        shutil.copytree(
            ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(ROOT / "pyproject.toml", source)
    (source / "tests").mkdir()
    (source / "tests" / "__init__.py").write_text("")  # must not be packaged
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(wheels), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    [wheel] = wheels.glob("*.whl")
    assert wheel.name.startswith("dpe-0.1.0-")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site)]
        + [str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr
    assert not (site / "tests").exists()
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    check = subprocess.run(
        [sys.executable, "-c", "import dpe, dpe.methods, study, study.db; print(dpe.__file__)"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "PYTHONPATH": str(site)},
    )
    assert check.returncode == 0, check.stderr
    assert Path(check.stdout.strip()).is_relative_to(site)
