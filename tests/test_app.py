"""The app's callbacks without a browser, and its public API through gradio_client.

Callbacks are plain functions, so most tests call them directly with what a widget would
send. One module-scoped server on 127.0.0.1 serves the gradio_client and HTML checks.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import secrets
import shutil
import threading
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

import app
import dpe
import study
from dpe import demo as dd
from dpe._image import to_uint8
from dpe.methods import list_methods, method_info
from tests.conftest import served_app
from webapp import common, practice, results, study_page
from webapp import enhance as enhance_page

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
STUDY_METHODS = ["identity", "autocontrast", "clahe"]
# Every method key and label: none of these may reach a rater.
SECRETS = sorted({*list_methods(), *(method_info(m)["label"] for m in list_methods())})


# ---------------------------------------------------------------- helpers


def as_upload(src: Path, name: str | None = None) -> str:
    """Copy ``src`` into Gradio's upload folder, as an upload from a browser would arrive."""
    folder = Path(gr.utils.get_upload_folder()) / secrets.token_hex(8)
    folder.mkdir(parents=True)
    return str(shutil.copy(src, folder / (name or src.name)))


def tiny_images(folder: Path, n: int = 2, size: int = 32) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for k in range(n):
        pixels = (rng.random((size, size, 3)) * 160 + 20).astype(np.uint8)
        paths.append(folder / f"scan{k}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "data"
    monkeypatch.setenv("DPE_DATA_DIR", str(folder))
    return folder


@pytest.fixture
def open_study(data_dir, tmp_path):
    """A study of the three reference methods on two tiny images; returns (id, invite code)."""
    db = common.db()
    study_id = study.create_study(
        db,
        "Reader study",
        tiny_images(tmp_path / "sources"),
        STUDY_METHODS,
        lambda image, method: dpe.enhance(image, method),
        labels={m: method_info(m)["label"] for m in STUDY_METHODS},
        repeat_fraction=0.0,
    )
    return study_id, study.invite_rater(db, study_id, "Dr A", specialty="radiology").code


def votes_in(study_id: str) -> list[str]:
    return list(study.load_votes(common.db(), study_id)["choice"])


def view(outputs: dict) -> dict:
    """A study callback's view by name; a name it leaves out is left as it was (skipped).
    Updates (``gr.update`` dicts) read as objects: ``v["trial"].visible``."""
    assert set(outputs) <= set(study_page.VIEW), set(outputs) - set(study_page.VIEW)
    shown = {name: outputs.get(name, gr.skip()) for name in study_page.VIEW}
    return {
        name: SimpleNamespace(**{k: v for k, v in value.items() if k != "__type__"})
        if isinstance(value, dict) and value.get("__type__") == "update" and len(value) > 1
        else value
        for name, value in shown.items()
    }


def answer(outputs: dict, choice: str) -> dict:
    """Press an answer button on the screen ``outputs`` shows."""
    shown = view(outputs)
    return view(study_page.vote(shown["session"], shown["screen"], choice))


def ANY_WARNING(text: str):  # noqa: N802 (reads as a constant in an assert)
    """Equal to any page warning that contains ``text``."""

    class Warning(str):
        def __eq__(self, other):
            return isinstance(other, str) and other.startswith("**⚠") and text in other

        __hash__ = str.__hash__

    return Warning(text)


def same_bytes(a: str, b: str) -> bool:
    return Path(a).read_bytes() == Path(b).read_bytes()


def screen_text(v: dict) -> str:
    """What a rater can read on a study screen. Image file names must be random tokens
    (``secrets.token_urlsafe(16)``: they say nothing), so they are checked here and left out:
    a random name may contain "dpe" or "lime" by chance."""
    source = v["source"].value
    for x in (source, v["a"], v["b"]):
        assert not x or re.fullmatch(r"[\w-]{22}\.png", Path(x).name), x
    return " ".join([v["message"], v["header"], v["progress"], v["screen"]])


# ---------------------------------------------------------------- Enhance page


def test_enhance_reads_dicom_and_returns_lossless_16_bit_downloads():
    upload = as_upload(EXAMPLES / "radiology" / "tibia_xray.dcm", "knee scan.dcm")
    slider, gallery, table, files, notes = enhance_page.enhance(
        upload, ["identity", "clahe"], False, "paper", 0, None
    )
    assert not Path(upload).exists()  # the upload is not kept after the response
    before, after = (np.asarray(Image.open(path)) for path in slider)
    assert before.dtype == np.uint8 and before.shape == (512, 512, 3)
    assert [caption for _, caption in gallery][0] == "Input"
    assert slider == (gallery[0][0], gallery[1][0])  # the input and the first method
    assert list(table["Method"]) == ["Input (no enhancement)", "CLAHE"]
    assert (table["Seconds"] >= 0).all() and "10-bit DICOM" in notes
    assert [Path(f).name for f in files] == ["knee_scan_identity.png", "knee_scan_clahe.png"]
    original = dpe.load_image(EXAMPLES / "radiology" / "tibia_xray.dcm").image
    downloaded = dpe.load_image(files[0])
    assert downloaded.bit_depth == 16  # a 10-bit source is not squeezed into 8 bits
    assert np.abs(downloaded.image - original).max() <= 1 / 65535


def test_upload_is_decoded_once_then_deleted_and_reused(data_dir):
    upload = as_upload(EXAMPLES / "microscopy" / "ihc_colon.png")
    prepared, reference, preview, notes, cleared = enhance_page.load_upload(upload)
    assert not Path(upload).exists() and cleared is None and reference is None
    assert preview.shape == (512, 512, 3) and "512×512" in notes
    slider, gallery, table, files, notes = enhance_page.enhance(
        None, ["autocontrast"], False, "paper", 0, None, loaded=prepared
    )
    assert list(table["Method"]) == ["Auto-contrast"] and len(files) == 1
    with pytest.raises(gr.Error, match="Upload an image first"):
        enhance_page.enhance(None, ["autocontrast"], False, "paper", 0, None)


def test_two_responses_for_the_same_picture_share_no_file(data_dir):
    """Gradio names a cached file by its bytes and rewrote it in place: a visitor downloading
    it while another visitor enhanced the same picture got a cut-short file. Each response's
    view files have bytes (and so a cache path) of their own, with the same pixels."""
    prepared = enhance_page.load_upload(as_upload(EXAMPLES / "microscopy" / "ihc_colon.png"))[0]
    runs = [
        enhance_page.enhance(None, ["autocontrast"], True, "paper", 0, None, loaded=prepared)
        for _ in range(2)
    ]
    (slider_a, gallery_a, *_), (slider_b, gallery_b, *_) = runs
    assert [c for _, c in gallery_a][:2] == ["Low-quality input", "Clean original"]
    assert slider_a == (gallery_a[0][0], gallery_a[2][0])  # input and the first method
    for (a, _), (b, _) in zip(gallery_a, gallery_b, strict=True):
        assert Path(a).read_bytes() != Path(b).read_bytes()
        np.testing.assert_array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


def test_bad_upload_gives_a_readable_message_and_is_deleted(tmp_path):
    (tmp_path / "x.png").write_bytes(b"this is not a picture")
    upload = as_upload(tmp_path / "x.png")
    with pytest.raises(gr.Error, match="Could not read this file: .*not an image"):
        enhance_page.load_upload(upload)
    assert not Path(upload).exists()
    assert enhance_page.load_upload(None) == (gr.skip(),) * 5  # nothing uploaded: nothing changes


def test_large_upload_is_downscaled_with_a_visible_note(monkeypatch):
    monkeypatch.setenv("DPE_MAX_MEGAPIXELS", "0.05")
    upload = as_upload(EXAMPLES / "dermatology" / "skin_photo_1.png")
    slider, _, _, files, notes = enhance_page.enhance(upload, ["identity"], False, "paper", 0, None)
    width, height = Image.open(slider[0]).size
    assert width * height <= 50_000
    assert "Downscaled from 504×512" in notes and "DPE_MAX_MEGAPIXELS" in notes


def test_simulate_measures_every_method_against_the_clean_image():
    upload = as_upload(EXAMPLES / "radiology" / "brain_mri_coronal.png")
    slider, gallery, table, files, notes = enhance_page.enhance(
        upload, ["identity", "autocontrast"], True, "clinical", 5, None
    )
    assert "preset **clinical**, seed **5**" in notes
    assert [c for _, c in gallery][:2] == ["Low-quality input", "Clean original"]
    rows = table.set_index("Method")
    assert list(rows.index) == [
        "Simulated low-quality input",
        "Input (no enhancement)",
        "Auto-contrast",
    ]
    metrics = rows[["PSNR (dB)", "SSIM", "ΔE2000 (lower is better)"]].astype(float)
    assert metrics.notna().all().all() and (metrics["SSIM"] <= 1).all()
    # "No enhancement" must score exactly what its input scores: the metrics see real pixels.
    assert metrics.loc["Input (no enhancement)"].equals(metrics.loc["Simulated low-quality input"])
    assert not metrics.loc["Auto-contrast"].equals(metrics.loc["Simulated low-quality input"])


def test_reference_upload_gives_metrics_and_a_size_mismatch_is_explained(tmp_path):
    clean = EXAMPLES / "microscopy" / "ihc_colon.png"
    prepared = enhance_page.load_upload(as_upload(clean))[0]
    reference, message, _ = enhance_page.load_reference(as_upload(clean))
    assert "Reference loaded" in message
    _, _, table, _, _ = enhance_page.enhance(
        None, ["identity"], False, "paper", 0, None, loaded=prepared, loaded_reference=reference
    )
    assert table.set_index("Method").loc["Input (no enhancement)", "SSIM"] == 1.0
    other = enhance_page.load_reference(as_upload(EXAMPLES / "microscopy" / "he_tia.png"))[0]
    with pytest.raises(gr.Error, match="same size"):
        enhance_page.enhance(None, ["identity"], False, "paper", 0, None, prepared, other)


def test_method_list_hides_methods_without_weights(monkeypatch, tmp_path):
    monkeypatch.setattr("dpe.weights.WEIGHTS_DIR", tmp_path)
    monkeypatch.delenv("DPE_WEIGHTS_REPO", raising=False)
    update = enhance_page.method_choices()
    keys = [key for _, key in update.choices]
    assert "dpe" not in keys and "clahe" in keys
    (tmp_path / "dpe.safetensors").write_bytes(b"")
    assert enhance_page.method_choices().value == ["dpe"]


# ---------------------------------------------------------------- Study page


def test_practice_screens_are_made_from_degraded_examples_never_the_clean_ones(open_study):
    """Practice looks like a trial: a degraded source and two enhancements of it."""
    _, code = open_study
    v = view(study_page.join_study(code))
    examples = dd.examples_of(common.EXAMPLES, practice.PRACTICE_MODALITIES)
    assert len(examples) == study_page.PRACTICE_TRIALS
    for example in examples:
        assert "Practice" in v["progress"]
        loaded = dpe.load_image(example)
        size = practice.PRACTICE_SIZE**2 / 1e6
        clean = to_uint8(dd.fit_megapixels(loaded.image, size)[0]).astype(float)
        shown = [v["source"].value, v["a"], v["b"]]
        pixels = [np.asarray(Image.open(path).convert("RGB"), dtype=float) for path in shown]
        for name, image in zip(["source", "A", "B"], pixels, strict=True):
            assert image.shape == clean.shape, (name, image.shape, clean.shape)
            assert np.abs(image - clean).mean() > 2.0, f"{name} shows the clean {example.name}"
        assert np.abs(pixels[1] - pixels[2]).mean() > 1.0  # two different enhancements
        v = answer(v, "left")
    assert "Trial 1 of" in v["progress"]


def test_join_practice_vote_pause_resume_finish(open_study):
    study_id, code = open_study
    # A refused code is a message on the page (never Gradio's blocking error pop-up).
    assert study_page.join_study("not-a-code") == {"message": ANY_WARNING("not valid")}
    assert "Enter the invite code" in study_page.join_study("  ")["message"]
    v = view(study_page.join_study(f" {code} "))
    assert v["remembered"] == code.strip() and v["trial"].visible and not v["join"].visible
    assert "Practice 1 of 2" in v["progress"] and v["vote_a"].interactive
    for _ in range(study_page.PRACTICE_TRIALS):
        v = answer(v, "left")
    assert votes_in(study_id) == []  # practice is not scored
    assert "Trial 1 of 6" in v["progress"]
    seen = set()
    choices = ["left", "right", "tie"]
    for choice in choices:
        seen.add(screen_text(v))
        v = answer(v, choice)
        assert v["vote_a"].interactive is False  # until enable_answers runs in the browser
    assert votes_in(study_id) == choices
    paused = view(study_page.pause(v["session"]))
    assert paused["paused"].visible and not paused["trial"].visible
    resumed = view(study_page.resume(paused["session"]))
    assert "Trial 4 of 6" in resumed["progress"]  # the same trial, under new file names
    assert resumed["a"] != v["a"] and same_bytes(resumed["a"], v["a"])
    v = view(study_page.join_study(code))  # back after closing the tab: no practice the second time
    assert "Trial 4 of 6" in v["progress"]
    for choice in ["both_bad", "left", "right"]:
        seen.add(screen_text(v))
        v = answer(v, choice)
    assert v["done"].visible and "every trial" in v["message"]  # the thank-you screen
    assert len(votes_in(study_id)) == 6
    for text in seen:
        for secret in SECRETS:
            assert secret.lower() not in text.lower(), secret


def test_an_answer_counts_only_for_the_screen_it_was_given_on(open_study):
    study_id, code = open_study
    v = view(study_page.join_study(code))
    for _ in range(study_page.PRACTICE_TRIALS):
        v = answer(v, "tie")
    session, screen = v["session"], v["screen"]
    first = view(study_page.vote(session, screen, "left"))
    again = view(study_page.vote(session, screen, "left"))  # a double click replays the request
    assert votes_in(study_id) == ["left"] and "Trial 2 of 6" in first["progress"]
    assert again["progress"] == first["progress"] and again["message"] == ""
    # Another tab of the same rater, still on that screen, answers differently: the first
    # answer stands and this tab says so, instead of moving on as if it had counted.
    other = view(study_page.vote(session, screen, "right"))
    assert "already answered on another screen" in other["message"]
    assert votes_in(study_id) == ["left"] and "Trial 2 of 6" in other["progress"]
    # Clicks racing the first: the session has moved on, the browser still sends the old
    # screen. Nothing is recorded and nothing is sent back: no token, no images.
    assert study_page.vote(first["session"], screen, "right") == {}
    assert study_page.vote(first["session"], "0" * 16, "right") == {}
    assert votes_in(study_id) == ["left"]
    answer(first, "tie")
    assert votes_in(study_id) == ["left", "tie"]
    response_ms = study.load_votes(common.db(), study_id)["response_ms"]
    assert ((0 <= response_ms) & (response_ms < 60_000)).all()


def test_closed_study_takes_no_votes_and_sign_out_forgets_the_code(open_study):
    study_id, code = open_study
    v = view(study_page.join_study(code))
    for _ in range(study_page.PRACTICE_TRIALS):
        v = answer(v, "left")
    study.close_study(common.db(), study_id)
    # The trial on screen when the study closed; then signing in: messages, not pop-ups.
    assert "closed; it takes no votes" in answer(v, "left")["message"]
    assert "not taking votes" in study_page.join_study(code)["message"]
    assert votes_in(study_id) == []
    v = view(study_page.resume(v["session"]))
    assert v["done"].visible and "closed this study" in v["message"]
    out = view(study_page.forget_me())
    assert out["remembered"] is None and out["join"].visible and out["session"] is None
    assert study_page.restore_code(None) == {"pending": "", "message": ""}
    assert study_page.restore_code(code) == {"code": code, "message": study_page.WELCOME_BACK}


def test_each_screen_gets_its_own_file_names_never_shared_or_derived(open_study):
    study_id, code = open_study
    db = common.db()
    second = study.invite_rater(db, study_id, "Dr B").code
    mine, theirs = view(study_page.join_study(code)), view(study_page.join_study(second))
    for _ in range(study_page.PRACTICE_TRIALS):
        mine, theirs = answer(mine, "left"), answer(theirs, "left")
    served = []
    for v in (mine, theirs):
        paths = [v["source"].value, v["a"], v["b"]]
        assert len({Path(p).parent for p in paths}) == 1  # one fresh folder per screen
        served += paths
        for path in paths:  # a link or copy of a stored stimulus, under a name of its own
            assert Path(path).is_relative_to(study_page.uploads.SCREENS_ROOT)
            assert re.fullmatch(r"[A-Za-z0-9_-]{22}\.png", Path(path).name)
    assert len(set(served)) == len(served) == 6
    assert len({Path(p).parent for p in served}) == 2
    # The same trial served again (a resume, a reload, a restart) gets new names too.
    again = view(study_page.resume(mine["session"]))
    assert {again["a"], again["b"]}.isdisjoint(served) and same_bytes(again["a"], mine["a"])


def test_a_page_open_through_a_restart_keeps_the_answer(open_study):
    study_id, code = open_study
    v = view(study_page.join_study(code))
    for _ in range(study_page.PRACTICE_TRIALS):
        v = answer(v, "left")
    v = answer(v, "right")
    # The server restarts: the page keeps its screen token, the session (gr.State) is gone.
    on_screen = v["session"].screen.trial_id
    back = view(study_page.vote(None, v["screen"], "tie", code))  # the remembered code
    assert votes_in(study_id) == ["right", "tie"] and "Trial 3 of 6" in back["progress"]
    assert back["session"].screen.trial_id != on_screen and back["message"] == ""
    # Without a remembered code the page asks for it and keeps the answer until then.
    asked = view(study_page.vote(None, back["screen"], "both_bad", None))
    assert asked["join"].visible and "restarted" in asked["message"]
    assert asked["pending"] == f"{back['screen']} both_bad" and asked["session"] is None
    joined = view(study_page.join_study(code, None, asked["pending"]))
    assert votes_in(study_id) == ["right", "tie", "both_bad"]
    assert "Trial 4 of 6" in joined["progress"] and joined["pending"] == ""
    # A replayed or forged pending answer records nothing more.
    view(study_page.join_study(code, None, asked["pending"]))
    view(study_page.join_study(code, None, "0.0 left"))
    assert len(votes_in(study_id)) == 3


def test_a_tab_reloaded_after_a_restart_signs_in_again_and_keeps_its_answer(open_study):
    # Gradio reloads a page once its server is back; the tab remembers it was signed in and
    # the answer it sent without a reply (sessionStorage), the browser the code.
    study_id, code = open_study
    v = view(study_page.join_study(code))
    for _ in range(study_page.PRACTICE_TRIALS):
        v = answer(v, "left")
    pending = f"{v['screen']} tie"
    restored = study_page.restore_code(code, pending, "1")
    assert restored.pop("code") == code
    back = view(restored)
    assert votes_in(study_id) == ["tie"] and "Trial 2 of 6" in back["progress"]
    assert back["trial"].visible
    again = study_page.restore_code(code, "", "1")  # a reload, nothing pending
    again = view({k: v for k, v in again.items() if k != "code"})
    assert "Trial 2 of 6" in again["progress"] and votes_in(study_id) == ["tie"]
    # No remembered code: the answer waits in the page until the code is typed in.
    asked = view(study_page.restore_code(None, f"{again['screen']} right", "1"))
    assert "restarted" in asked["message"] and asked["pending"].endswith(" right")
    view(study_page.join_study(code, None, asked["pending"]))
    assert votes_in(study_id) == ["tie", "right"]


def test_a_study_only_app_serves_no_enhancer(monkeypatch):
    monkeypatch.setenv("DPE_STUDY_ONLY", "1")
    from webapp import build_app, study_only

    assert study_only()
    demo = build_app()
    names = {fn.api_name for fn in demo.fns.values()}
    assert names and not names & {"enhance", "load_example", "run_methods"}
    assert not [fn for fn in demo.fns.values() if fn.api_visibility != "private"]
    assert demo.get_api_info()["named_endpoints"] == {}
    config = str(demo.get_config_file())
    assert "Enhance" not in config and "Open the study" in config
    for method in list_methods():  # no method list reaches any page
        assert method_info(method)["label"] not in config
    monkeypatch.setenv("DPE_STUDY_ONLY", "0")
    assert not study_only()


def test_source_image_can_be_hidden(data_dir, tmp_path):
    db = common.db()
    study_id = study.create_study(
        db,
        "No source",
        tiny_images(tmp_path / "s", n=1),
        ["identity", "clahe"],
        lambda image, method: dpe.enhance(image, method),
        settings={"show_source": False},
    )
    code = study.invite_rater(db, study_id, "Dr B").code
    v = view(study_page.join_study(code))
    assert v["source"].visible  # practice shows its source
    for _ in range(study_page.PRACTICE_TRIALS):
        v = answer(v, "left")
    assert v["source"].visible is False and v["a"] is not None
    assert v["source_box"].visible is False  # not even the "Low-quality source" opener


def test_rater_profile_is_prefilled_and_saved(open_study):
    study_id, code = open_study
    session = view(study_page.join_study(code))["session"]
    assert study_page.show_profile(session) == (
        "radiology",
        None,
        "",
    )  # as the study team entered it
    assert "Profile saved" in study_page.save_profile(session, " dermatology ", 12)
    assert study_page.show_profile(session) == ("dermatology", 12, "")
    assert study.progress(common.db(), study_id)["raters"][0]["specialty"] == "dermatology"
    study_page.save_profile(session, "", None)  # an emptied specialty is cleared; empty years stay
    assert study_page.show_profile(session)[:2] == ("", 12)
    refused = study_page.save_profile(session, "radiology", -2)
    assert "years of experience must be a whole number" in refused
    assert study_page.show_profile(session)[:2] == ("", 12)
    assert "session has ended" in study_page.save_profile(None, "radiology", 3)
    assert study_page.show_profile(None) == (gr.skip(), gr.skip(), "")


# ---------------------------------------------------------------- Results page


def test_results_need_the_admin_token(open_study, monkeypatch):
    study_id, _ = open_study
    monkeypatch.delenv("DPE_ADMIN_TOKEN", raising=False)
    intro, row = results.results_intro()
    assert "DPE_ADMIN_TOKEN" in intro and row.visible is False
    with pytest.raises(gr.Error, match="DPE_ADMIN_TOKEN"):
        results.open_results("anything")
    monkeypatch.setenv("DPE_ADMIN_TOKEN", "s3cret")
    assert results.results_intro()[1].visible is True
    for call in (
        lambda t: results.open_results(t),
        lambda t: results.show_results(t, study_id),
        lambda t: results.export_results(t, study_id),
        lambda t: results.invite(t, study_id, "Dr X", "", None),
    ):
        with pytest.raises(gr.Error, match="not right"):
            call("wrong")
        with pytest.raises(gr.Error, match="not right"):
            call(None)


def test_results_show_scores_and_export_matches_the_votes(open_study, monkeypatch):
    study_id, code = open_study
    monkeypatch.setenv("DPE_ADMIN_TOKEN", "s3cret")
    second = study.invite_rater(common.db(), study_id, "Dr B").code
    clicks = {code: ["left", "right", "left", "tie", "both_bad", "left"]}
    clicks[second] = ["right", "right", "left", "left", "tie", "right"]
    for rater, choices in clicks.items():
        v = view(study_page.join_study(rater))
        for choice in ["left"] * study_page.PRACTICE_TRIALS + choices:
            v = answer(v, choice)
    box, picker, methods, _ = results.open_results("s3cret")
    assert box.visible and picker.value == study_id and len(methods.choices) >= 3
    status, raters, share, ratings, matrix, by_modality, quality = results.show_results(
        "s3cret", study_id
    )
    assert "**12** votes of 12 planned (100%)" in status and "2 finished" in status
    assert list(raters["Rater"]) == ["R01", "R02"]
    assert set(share["method"]) == {method_info(m)["label"] for m in STUDY_METHODS}
    assert share["share"].between(0, 1).all()
    # Two raters: scores without intervals, and the status says why.
    assert ratings["BT [95% CI]"].str.fullmatch(r"[+-]\d\.\d\d").all()
    assert "2 raters give only 3 distinct resamples" in status
    assert matrix.count("<td") == 9 and "CLAHE" in matrix
    assert list(quality["Rater"]) == ["R01", "R02"]
    archive = results.export_results("s3cret", study_id)
    with zipfile.ZipFile(archive) as zf:
        names = {Path(n).name for n in zf.namelist()}
        assert {"votes.csv", "ratings.csv", "raters.csv", "report.json", "study.db"} <= names
        votes = list(csv.DictReader(io.StringIO(zf.read(f"study-{study_id}/votes.csv").decode())))
    assert [v["choice"] for v in votes] == clicks[code] + clicks[second]
    assert [v["rater"] for v in votes] == ["R01"] * 6 + ["R02"] * 6


def test_closing_asks_first_and_a_closed_study_can_be_reopened(open_study, monkeypatch):
    study_id, code = open_study
    monkeypatch.setenv("DPE_ADMIN_TOKEN", "s3cret")
    assert results.ask_to_close("s3cret", study_id).visible  # the confirmation, nothing more
    assert study.get_study(common.db(), study_id)["status"] == "open"
    assert results.cancel_close().visible is False
    assert study.get_study(common.db(), study_id)["status"] == "open"
    with pytest.raises(gr.Error, match="not right"):
        results.close_selected("wrong", study_id)
    picker, confirm = results.close_selected("s3cret", study_id)
    assert confirm.visible is False
    assert study.get_study(common.db(), study_id)["status"] == "closed"
    assert "not taking votes" in study_page.join_study(code)["message"]
    results.reopen_selected("s3cret", study_id)
    assert study.get_study(common.db(), study_id)["status"] == "open"
    assert view(study_page.join_study(code))["trial"].visible
    with pytest.raises(gr.Error, match="not closed"):
        results.reopen_selected("s3cret", study_id)


def test_researchers_create_a_study_and_invite_from_the_page(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("DPE_ADMIN_TOKEN", "s3cret")
    uploads = [as_upload(p) for p in tiny_images(tmp_path / "up", n=2)]
    message, picker = results.create_study(
        "s3cret",
        "New study",
        "Pick the sharper image.",
        ["identity", "clahe"],
        uploads,
        "dermatology",
        False,
        "paper",
        1,
        "balanced",
        0.0,
        True,
        progress=lambda *a, **k: None,
    )
    study_id = picker.value
    assert study_id in message and not any(Path(u).exists() for u in uploads)
    info = study.get_study(common.db(), study_id)
    assert info["status"] == "open" and info["settings"]["degrade_preset"] == "paper"
    code, note = results.invite("s3cret", study_id, "Dr C", "dermatology", 7)
    assert "R01" in note
    assert "Pick the sharper image." in view(study_page.join_study(code))["header"]
    with pytest.raises(gr.Error, match="at least two"):
        results.create_study(
            "s3cret", "T", "", ["clahe"], None, "", True, "none", 0, "balanced", 0.1, True,
            progress=lambda *a, **k: None,
        )  # fmt: skip


# ---------------------------------------------------------------- the served app


def test_only_enhance_is_public():
    info = app.demo.get_api_info()
    assert set(info["named_endpoints"]) == {"/enhance"}
    public = [fn for fn in app.demo.fns.values() if fn.api_visibility != "private"]
    assert [fn.api_name for fn in public] == ["enhance"]
    assert app.LAUNCH_OPTIONS["run_history"] is False


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("served")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DPE_DATA_DIR", str(data))
        with served_app() as url:
            yield url


def test_gradio_client_enhances_through_the_public_endpoint(server, tmp_path):
    client = Client(server, verbose=False, analytics_enabled=False, download_files=tmp_path)
    assert set(client.view_api(print_info=False, return_format="dict")["named_endpoints"]) == {
        "/enhance"
    }
    slider, gallery, table, files, notes = client.predict(
        handle_file(str(EXAMPLES / "radiology" / "chest_xray_16bit.png")),
        ["autocontrast", "clahe"],
        False,
        "paper",
        0,
        None,
        api_name="/enhance",
    )
    assert len(slider) == 2 and all(Path(p).suffix == ".png" for p in slider)
    assert [item["caption"].split(" · ")[0] for item in gallery] == [
        "Input",
        "Auto-contrast",
        "CLAHE",
    ]
    assert [row[0] for row in table["data"]] == ["Auto-contrast", "CLAHE"]
    assert [Path(f).name for f in files] == [
        "chest_xray_16bit_autocontrast.png",
        "chest_xray_16bit_clahe.png",
    ]
    assert dpe.load_image(files[1]).bit_depth == 16 and "16-bit PNG" in notes
    with pytest.raises(Exception, match="Value: 'nonsense'"):
        client.predict(None, ["nonsense"], False, "paper", 0, None, api_name="/enhance")


def test_study_endpoints_are_not_callable_by_clients(server):
    client = Client(server, verbose=False, analytics_enabled=False)
    for name in ("/join_study", "/vote_left", "/show_results", "/export_results"):
        # Not an AppError (a ValueError too): the app must not list the endpoint at all, so
        # the client refuses before anything is sent.
        with pytest.raises(ValueError, match="Cannot find a function with `api_name`") as raised:
            client.predict("x", api_name=name)
        assert not isinstance(raised.value, AppError)


def test_study_and_results_pages_carry_no_method_names(server):
    for page in ("study", "results"):
        html = httpx.get(server + page, timeout=30).text
        assert "gradio_config" in html or "<gradio-app" in html
        for secret in SECRETS:
            assert secret.lower() not in html.lower(), (page, secret)
    assert "CLAHE" in httpx.get(server, timeout=30).text  # the demo page does list them


def test_api_page_names_every_output_and_marks_optional_inputs(server, tmp_path):
    client = Client(server, verbose=False, analytics_enabled=False, download_files=tmp_path)
    info = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/enhance"]
    assert [r["label"] for r in info["returns"]] == [
        "Before / after (first method)",
        "All methods side by side",
        "Time and quality per method (PSNR, SSIM, ΔE against the clean image)",
        "Lossless PNG downloads",
        "Notes",
    ]
    optional = {p["parameter_name"]: p["parameter_has_default"] for p in info["parameters"]}
    assert optional == {
        "image": False,
        "methods": True,
        "simulate": True,
        "preset": True,
        "seed": True,
        "reference": True,
    }
    assert "value_" not in client.view_api(print_info=False, return_format="str")
    # What the page promises: the optional inputs can be left out.
    *_, notes = client.predict(
        handle_file(str(EXAMPLES / "microscopy" / "ihc_colon.png")),
        ["identity"],
        api_name="/enhance",
    )
    assert "512×512" in notes


def test_api_clients_see_progress_for_each_method(server, monkeypatch):
    """Each method waits until the client has seen it announced: progress arrives while it runs."""
    methods = ["identity", "autocontrast", "clahe"]
    labels = [method_info(m)["label"] for m in methods]
    started = {m: threading.Event() for m in methods}
    monkeypatch.setenv("DPE_ENHANCE_WORKER", "inline")  # Gated lives in this process
    real = dd.get_method

    class Gated:
        def __init__(self, name):
            self.name, self.method = name, real(name)

        def enhance(self, image, **options):
            assert started[self.name].wait(60), f"the client never saw {self.name} announced"
            return self.method.enhance(image, **options)

    monkeypatch.setattr(dd, "get_method", Gated)
    client = Client(server, verbose=False, analytics_enabled=False)
    job = client.submit(
        handle_file(str(EXAMPLES / "microscopy" / "ihc_colon.png")), methods, api_name="/enhance"
    )
    seen, deadline = [], time.monotonic() + 120
    while len(seen) < len(methods) and not job.done() and time.monotonic() < deadline:
        units = job.status().progress_data or []
        for unit in units:
            announced = (unit.index, unit.length, unit.desc, unit.unit)
            if announced not in seen and unit.index == len(seen):
                seen.append(announced)
                started[methods[unit.index]].set()
        time.sleep(0.01)
    for event in started.values():
        event.set()  # let a failing run finish
    job.result(timeout=120)
    assert seen == [(k, 3, f"Running {label}", "methods") for k, label in enumerate(labels)]


def test_a_rejected_upload_is_one_log_line_and_a_fault_a_traceback(
    server, tmp_path, caplog, capfd, monkeypatch
):
    bad = tmp_path / "not a scan.png"
    bad.write_bytes(b"this is not a picture")
    client = Client(server, verbose=False, analytics_enabled=False)
    capfd.readouterr()
    with caplog.at_level(logging.INFO, logger="app"):
        with pytest.raises(AppError, match="Could not read the image: .*not an image"):
            client.predict(handle_file(str(bad)), ["identity"], api_name="/enhance")
        with pytest.raises(AppError, match="Choose at least one method"):
            client.predict(
                handle_file(str(EXAMPLES / "microscopy" / "ihc_colon.png")), [], api_name="/enhance"
            )
    lines = [r.getMessage() for r in caplog.records if r.name == "app"]
    assert len(lines) == 2, lines
    assert lines[0].startswith("refused upload not a scan.png: Could not read the image: ")
    assert "not an image" in lines[0] and lines[1] == "refused enhance: Choose at least one method."
    assert "Traceback" not in capfd.readouterr().err

    def fault(*args, **kwargs):
        raise RuntimeError("a real fault")

    monkeypatch.setattr(dd, "enhance_upload", fault)
    caplog.clear()
    with pytest.raises(AppError):
        client.predict(
            handle_file(str(EXAMPLES / "microscopy" / "ihc_colon.png")),
            ["identity"],
            api_name="/enhance",
        )
    err = capfd.readouterr().err
    assert "Traceback" in err and "RuntimeError: a real fault" in err
    assert not [r for r in caplog.records if r.name == "app"]


def test_the_profile_form_unlocks_only_after_the_stored_profile_is_filled_in():
    # Typing before the fill arrived used to be overwritten by it (seen as a flaky browser test).
    from webapp import build_app

    demo = build_app()
    ids = {"profile-specialty", "profile-years", "profile-save"}
    widgets = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) in ids]
    assert len(widgets) == 3 and not [w for w in widgets if w.interactive is not False]
    by_id = demo.fns
    unlocks = [fn for fn in by_id.values() if fn.api_name.startswith("enable_profile")]
    fills = [fn for fn in by_id.values() if fn.api_name.startswith("show_profile")]
    assert len(unlocks) == len(fills) >= 2  # after joining and after signing in again
    for fn in unlocks:
        assert by_id[fn.trigger_after].api_name.startswith("show_profile")
        assert fn.trigger_only_on_success
        assert {o.elem_id for o in fn.outputs} == ids
    assert study_page.enable_profile(None) == (gr.skip(),) * 3  # a fresh page: still locked
    session = object()  # any signed-in session
    assert study_page.enable_profile(session) == tuple(
        gr.update(interactive=True) for _ in range(3)
    )


def test_signing_out_empties_and_locks_the_profile_form_for_the_next_rater():
    # Without this, a second rater joining in the same tab saw the first one's answers and
    # could type into the form before their own stored profile overwrote it.
    from webapp import build_app

    demo = build_app()
    ids = {"profile-specialty", "profile-years", "profile-save", "profile-message"}
    locks = [fn for fn in demo.fns.values() if fn.api_name.startswith("lock_profile")]
    assert len(locks) == 1
    (lock,) = locks
    assert demo.fns[lock.trigger_after].api_name.startswith("forget_me")
    assert {o.elem_id for o in lock.outputs} == ids
    specialty, years, save, message = study_page.lock_profile()
    assert specialty == gr.update(value="", interactive=False)
    assert years == gr.update(value=None, interactive=False)
    assert save == gr.update(interactive=False) and message == ""
