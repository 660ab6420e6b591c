"""study.bridge: a study from image files and dpe's methods, for the app and the CLI alike."""

import numpy as np
import pytest
from PIL import Image

import study
from dpe import demo
from study import bridge
from tests.test_study_support import write_images


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def test_a_study_enhances_and_degrades_with_dpe(tmp_path):
    source = _png(tmp_path / "in" / "scan.png", np.full((16, 16, 3), 120, np.uint8))
    db = study.open_db(tmp_path / "data" / "study.db")
    images = [study.SourceImage(source)]
    study_id = bridge.create_study(db, "T", images, ["identity", "autocontrast"], degrade="paper")
    (item,) = db.query("SELECT input_name, reference_name FROM items")
    media = tmp_path / "data" / "media" / study_id
    clean = study.read_image(media / item["reference_name"])
    low = study.read_image(media / item["input_name"])
    assert np.allclose(clean, 120 / 255) and not np.allclose(low, clean)
    expected = demo.to_uint8(demo.degrade(clean, "paper", seed=0)) / 255
    assert np.abs(low - expected).max() <= 1 / 255 + 1e-6  # the preset, seeded from 0
    info = study.get_study(db, study_id)
    assert info["status"] == "open" and info["settings"]["degrade_preset"] == "paper"
    assert [m["label"] for m in info["methods"]] == ["Input (no enhancement)", "Auto-contrast"]
    plain = bridge.create_study(db, "U", images, ["identity", "autocontrast"])
    assert study.get_study(db, plain)["settings"]["degraded"] is False


def test_sources_are_fitted_to_the_apps_size_limit(tmp_path, monkeypatch):
    monkeypatch.setenv("DPE_MAX_MEGAPIXELS", "0.01")
    source = _png(tmp_path / "in" / "big.png", np.full((200, 300, 3), 90, np.uint8))
    db = study.open_db(tmp_path / "data" / "study.db")
    bridge.create_study(db, "T", [study.SourceImage(source)], ["identity", "autocontrast"])
    (item,) = db.query("SELECT study, input_name FROM items")
    stored = study.read_image(tmp_path / "data" / "media" / item["study"] / item["input_name"])
    assert stored.shape[0] * stored.shape[1] <= 10_000


def test_a_gray_source_stays_gray_through_degrade_and_every_method(tmp_path):
    ramp = np.tile(np.linspace(20, 230, 48).astype(np.uint8), (32, 1))  # one channel
    source = _png(tmp_path / "in" / "xray.png", ramp)
    pixels = bridge.StudyPixels("clinical")
    clean = pixels.read(source)
    low = pixels.degrade(clean, 3)
    for image in (clean, low):
        assert (image == image[..., :1]).all()
    assert (pixels.enhance(low, "clahe") == pixels.enhance(low, "clahe")[..., :1]).all()


@pytest.mark.parametrize(
    ("methods", "degrade", "match"),
    [
        (["identity", "bogus"], None, r"unknown methods \['bogus'\]"),
        (["identity", "clahe"], "bogus", r"unknown degradation preset 'bogus'; use one of"),
    ],
)
def test_bad_options_are_refused_before_a_study_is_registered(tmp_path, methods, degrade, match):
    db = study.open_db(tmp_path / "data" / "study.db")
    images = bridge.find_images(write_images(tmp_path / "in", 1)[0].parent)
    with pytest.raises(study.StudyError, match=match):
        bridge.create_study(db, "T", images, methods, degrade=degrade)
    assert study.list_studies(db) == []  # nothing left "creating"


def test_find_images_takes_modality_from_subfolders(tmp_path):
    write_images(tmp_path / "xray", 2)
    write_images(tmp_path / "endoscopy", 1)
    write_images(tmp_path, 1)
    (tmp_path / "notes.txt").write_text("not an image")
    found = bridge.find_images(tmp_path)
    assert {(s.name, s.modality) for s in found} == {
        ("xray/img00.png", "xray"),
        ("xray/img01.png", "xray"),
        ("endoscopy/img00.png", "endoscopy"),
        ("img00.png", "unspecified"),
    }
    (tmp_path / "empty").mkdir()
    with pytest.raises(study.StudyError, match="no images"):
        bridge.find_images(tmp_path / "empty")
    with pytest.raises(study.StudyError, match="does not exist"):
        bridge.find_images(tmp_path / "missing")


def test_an_unreadable_image_is_refused_before_a_study_is_registered(tmp_path):
    db = study.open_db(tmp_path / "data" / "study.db")
    (good,) = write_images(tmp_path / "in", 1)
    (tmp_path / "in" / "broken.png").write_bytes(b"not a picture")
    with pytest.raises(study.StudyError, match="cannot read image broken.png: "):
        bridge.create_study(db, "T", bridge.find_images(good.parent), ["identity", "clahe"])
    assert study.list_studies(db) == []
