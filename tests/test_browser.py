"""The app in a real browser: Playwright driving Debian's Chromium against a served app.

Needs ``pip install playwright`` and Debian's ``apt-get install -y chromium`` (Playwright's own
browser download is not used). Nothing here skips: without them these tests error, saying what
to install, as CI should.

The study is three fast reference methods on two tiny images, so every screen is quick. One
rater session (module fixture) is driven once; the blinding and export tests check what it saw
and what it stored.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import time
import zipfile
from pathlib import Path

import gradio as gr
import httpx
import pytest
from PIL import Image
from playwright.sync_api import expect, sync_playwright

import dpe
import study
from dpe.methods import list_methods, method_info
from study import bridge
from study.throttle import Throttle
from tests.chromium import CHROMIUM, CHROMIUM_ARGS
from tests.conftest import served_app
from tests.load_harness import AppServer
from webapp import access, common

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DOCS = EXAMPLES.parent / "docs"  # DPE_SAVE_SCREENSHOTS=1: the viewer test's shots go here
STUDY_METHODS = ["identity", "autocontrast", "clahe"]
# The study's method keys, and every label (labels are long enough never to occur by chance;
# three-letter keys such as "dpe" could turn up inside a random file name).
SECRETS = sorted({*STUDY_METHODS, *(method_info(m)["label"] for m in list_methods())})
TOKEN = "browser-test-token"
TIMEOUT = 30_000  # ms; a shared 2-core machine may be busy training
# The answers the rater gives, in order, after the two practice screens.
CLICKS = ["left", "right", "tie", "both_bad", "left", "right"]
GRADIO_FRONTEND = Path(gr.__file__).parent / "templates" / "frontend"
expect.set_options(timeout=TIMEOUT)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app on 127.0.0.1 with one open study and one invited rater."""
    root = tmp_path_factory.mktemp("browser")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DPE_DATA_DIR", str(root / "data"))
        mp.delenv("DPE_ADMIN_TOKEN", raising=False)
        images = root / "images"
        for modality, name in [("radiology", "brain_mri_coronal"), ("microscopy", "ihc_colon")]:
            (images / modality).mkdir(parents=True)
            src = EXAMPLES / modality / f"{name}.png"
            Image.open(src).convert("RGB").resize((48, 48)).save(images / modality / "item.png")
        db = common.db()
        study_id = study.create_study(
            db,
            "Reader study",
            bridge.find_images(images),
            STUDY_METHODS,
            lambda image, method: dpe.enhance(image, method),
            labels={m: method_info(m)["label"] for m in STUDY_METHODS},
            repeat_fraction=0.0,
            degrade_fn=lambda image, seed: dpe.degrade(image, "paper", seed=seed),
        )
        code = study.invite_rater(db, study_id, "Dr A", specialty="radiology").code
        second = study.invite_rater(db, study_id, "Dr B")
        with served_app() as url:
            yield {
                "url": url.rstrip("/"),
                "study": study_id,
                "code": code,
                "second": second,
                "mp": mp,
            }


def chromium_path() -> str:
    """Debian's Chromium, or a failure that says how to install it (an error, never a skip)."""
    if not Path(CHROMIUM).is_file():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests need Debian's chromium. "
            "Install Debian's chromium: apt-get install -y chromium",
            pytrace=False,
        )
    return CHROMIUM


def test_missing_chromium_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setattr(f"{__name__}.CHROMIUM", str(tmp_path / "no-chromium"))
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y chromium"):
        chromium_path()


@pytest.fixture(scope="module")
def browser():
    executable = chromium_path()
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def new_context(browser, hosts: set | None = None):
    """A fresh browser profile; ``hosts`` collects the host of every request it makes."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    context.set_default_timeout(TIMEOUT)
    if hosts is not None:
        context.on("request", lambda request: hosts.add(request.url.split("/")[2]))
    return context


def local_host(server) -> set[str]:
    return {server["url"].split("/")[2]}


# ---------------------------------------------------------------- Enhance page


def choose_methods(page, labels: list[str]) -> None:
    for box in page.locator("#methods input[type=checkbox]").all():
        if box.is_checked():
            box.uncheck()
    for label in labels:
        page.locator("#methods label", has_text=label).locator("input").check()


def table_rows(page) -> dict[str, list[str]]:
    rows = {}
    for row in page.locator("#metrics [role=row].virtual-row").all():
        cells = [c.strip() for c in row.locator("[role=gridcell]").all_inner_texts()]
        rows[cells[0]] = cells[1:]
    return rows


def test_upload_enhance_and_download(browser, server):
    hosts = set()
    context = new_context(browser, hosts)
    page = context.new_page()
    page.goto(server["url"] + "/")
    page.set_input_files(
        "#upload input[type=file]", EXAMPLES / "radiology" / "chest_xray_16bit.png"
    )
    expect(page.locator("#preview img")).to_be_visible()
    expect(page.locator("#notes")).to_contain_text("16-bit PNG")
    choose_methods(page, ["Auto-contrast", "CLAHE"])
    page.click("#run")
    expect(page.locator("#downloads a")).to_have_count(2)
    expect(page.locator("#results")).to_contain_text("CLAHE")
    rows = table_rows(page)
    assert list(rows) == ["Auto-contrast", "CLAHE"]
    assert all(float(cells[0]) >= 0 for cells in rows.values())  # seconds per method
    with page.expect_download() as download:
        page.locator("#downloads a").nth(1).click()
    assert download.value.suggested_filename == "chest_xray_16bit_clahe.png"
    saved = dpe.load_image(download.value.path())
    assert saved.bit_depth == 16 and saved.image.shape == (512, 512, 3)
    context.close()
    assert hosts == local_host(server)  # fonts and scripts are local: works offline


def test_example_then_simulate_shows_metrics(browser, server):
    context = new_context(browser)
    page = context.new_page()
    page.goto(server["url"] + "/")
    page.locator("#examples").get_by_text("Microscopy: ihc colon").click()
    expect(page.locator("#notes")).to_contain_text("ihc_colon")
    choose_methods(page, ["Input (no enhancement)", "CLAHE"])
    page.check("#simulate input")
    page.click("#run")
    expect(page.locator("#metrics")).to_contain_text("Simulated low-quality input")
    expect(page.locator("#notes")).to_contain_text("preset paper, seed 0")
    rows = table_rows(page)
    assert list(rows) == ["Simulated low-quality input", "Input (no enhancement)", "CLAHE"]
    for name, cells in rows.items():
        psnr, ssim, delta_e = (float(x) for x in cells[1:])
        assert 0 < psnr < 100 and 0 < ssim <= 1 and delta_e >= 0, name
    assert rows["Input (no enhancement)"][1:] == rows["Simulated low-quality input"][1:]
    context.close()


# ---------------------------------------------------------------- Study page


def progress_label(page):
    return page.locator("#study-progress-label")


def answer(page, how: str, expected_next: str) -> None:
    """Answer the screen on display by mouse or key, then wait for the next screen."""
    expect(page.locator("#vote-a")).to_be_enabled()  # answers open once the screen is shown
    # a rater answers what they have seen: wait until both images are drawn (a busy machine
    # may enable the buttons first), or the reading time is rightly not measured
    page.wait_for_function("window.pairShownAt !== null")
    how_kind, what = how.split(":")
    if how_kind == "click":
        page.click(what)
    elif how_kind == "dblclick":
        page.dblclick(what)
    else:
        page.keyboard.press(what)
    if expected_next == "done":
        expect(page.locator("#study-message")).to_contain_text("answered every trial")
    else:
        expect(progress_label(page)).to_have_text(expected_next)


class AnswerCount:
    """The answers a page has sent, and how many of them the server has handled, so a test
    can wait until every answer is in instead of waiting a fixed time."""

    def __init__(self, page, mp):
        import app  # served by the fixture in this process

        self.page, self.sent, self.handled = page, 0, 0
        self._votes = {
            n for n, fn in app.demo.fns.items() if (fn.api_name or "").startswith("vote_")
        }
        page.on("request", self._on_request)
        real = study.session.answer

        def counted(*args, **kwargs):
            try:
                return real(*args, **kwargs)
            finally:
                self.handled += 1

        mp.setattr(study.session, "answer", counted)

    def _on_request(self, request) -> None:
        if request.url.split("?")[0].endswith("/gradio_api/queue/join"):
            if (request.post_data_json or {}).get("fn_index") in self._votes:
                self.sent += 1

    def wait_until_handled(self, timeout_ms: int = TIMEOUT) -> None:
        """Poll until the server has handled every answer this page sent."""
        for _ in range(timeout_ms // 20):
            if self.handled >= self.sent:
                return
            self.page.wait_for_timeout(20)  # lets Playwright deliver the page's request events
        raise AssertionError(f"{self.sent} answers sent, {self.handled} handled")


@pytest.fixture(scope="module")
def rater_run(browser, server):
    """An expert's whole session; returns what the browser saw and received."""
    hosts = set()
    context = new_context(browser, hosts)
    responses, pages_html = [], []

    def keep(response):
        try:
            body = response.body()
        except Exception:  # a redirect or an aborted request has no body
            body = b""
        responses.append((response.url, body))

    context.on("response", keep)
    page = context.new_page()
    page.goto(server["url"] + "/study")
    page.fill("#invite-code input, #invite-code textarea", server["code"])
    page.click("#study-start")
    expect(progress_label(page)).to_have_text("Practice 1 of 2: not scored")
    pages_html.append(page.content())
    answer(page, "click:#vote-a", "Practice 2 of 2: not scored")
    answer(page, "key:2", "Trial 1 of 6")
    assert study.load_votes(common.db(), server["study"]).empty  # practice is not scored
    pages_html.append(page.content())
    answer(page, "click:#vote-a", "Trial 2 of 6")
    pages_html.append(page.content())
    answer(page, "key:ArrowRight", "Trial 3 of 6")
    page.click("#study-pause")
    expect(page.locator("#study-resume")).to_be_visible()
    expect(page.locator("#image-a")).to_be_hidden()
    page.close()  # the rater closes the tab ...

    page = context.new_page()  # ... and comes back later: the browser remembers the code
    answers = AnswerCount(page, server["mp"])
    page.goto(server["url"] + "/study")
    expect(page.locator("#study-message")).to_contain_text("Welcome back")
    page.click("#study-start")
    expect(progress_label(page)).to_have_text("Trial 3 of 6")  # no practice the second time
    pages_html.append(page.content())
    answer(page, "dblclick:#vote-tie", "Trial 4 of 6")
    answers.wait_until_handled()  # a second vote from the double click would be in by now
    votes_after_double_click = len(study.load_votes(common.db(), server["study"]))
    pages_html.append(page.content())
    answer(page, "key:4", "Trial 5 of 6")
    pages_html.append(page.content())
    answer(page, "key:1", "Trial 6 of 6")
    pages_html.append(page.content())
    answer(page, "click:#vote-b", "done")
    pages_html.append(page.content())
    answers.wait_until_handled()
    context.close()
    return {
        "responses": responses,
        "hosts": hosts,
        "html": pages_html,
        "votes_after_double_click": votes_after_double_click,
    }


def _is_gradio_asset(url: str) -> bool:
    """Gradio's own front-end files: identical in every Gradio app, served from the package."""
    path = url.split("/", 3)[3].split("?")[0]
    return path.startswith(("assets/", "static/")) and (GRADIO_FRONTEND / path).is_file()


def test_study_records_each_answer_once(rater_run, server):
    assert rater_run["votes_after_double_click"] == 3  # the double click counted once
    votes = study.load_votes(common.db(), server["study"])
    assert list(votes["choice"]) == CLICKS
    assert votes["trial"].is_unique and (votes["response_ms"] > 0).all()
    # The browser's reading time (both images drawn to the answer) is stored beside the
    # server's round trip, which also holds delivering and drawing the screen.
    reading = votes["reading_ms"]
    assert reading.notna().all() and (reading >= 0).all()
    assert (reading <= votes["response_ms"]).all()


def test_study_pages_and_traffic_reveal_no_method(rater_run, server):
    assert rater_run["hosts"] == local_host(server)  # no CDN, no analytics
    assert len(rater_run["html"]) == 8
    for html in rater_run["html"]:
        for secret in SECRETS:
            assert secret.lower() not in html.lower(), secret
    checked = 0
    for url, body in rater_run["responses"]:
        if _is_gradio_asset(url):
            continue
        checked += 1
        text = (url + "\n" + body.decode("utf-8", "replace")).lower()
        for secret in SECRETS:
            assert secret.lower() not in text, (secret, url)
        if "/gradio_api/file=" in url:
            assert re.fullmatch(r"[A-Za-z0-9_-]{22}\.png", url.rsplit("/", 1)[1]), url
    images = [u for u, _ in rater_run["responses"] if "/gradio_api/file=" in u]
    assert checked > 20 and len(images) >= 12  # the checks above saw the real traffic


# ---------------------------------------------------------------- Results page


def test_results_refuse_without_the_token_and_export_the_clicks(browser, server, rater_run):
    hosts = set()
    context = new_context(browser, hosts)
    page = context.new_page()
    page.goto(server["url"] + "/results")
    expect(page.locator("#results-intro")).to_contain_text("DPE_ADMIN_TOKEN")
    expect(page.locator("#admin-token")).to_be_hidden()

    server["mp"].setenv("DPE_ADMIN_TOKEN", TOKEN)
    page.reload()
    expect(page.locator("#results-intro")).to_contain_text("Enter the admin token")
    page.fill("#admin-token input", "not the token")
    page.click("#admin-open")
    expect(page.get_by_text("That admin token is not right.")).to_be_visible()
    expect(page.locator("#results-status")).to_be_hidden()

    page.fill("#admin-token input", TOKEN)
    page.click("#admin-open")
    expect(page.locator("#results-status")).to_contain_text("6 votes of 12 planned (50%)")
    expect(page.locator("#share-plot .mark-rect path")).to_have_count(3)  # one bar per method
    expect(page.locator("#win-matrix")).to_contain_text("CLAHE")
    page.click("#export")
    link = page.locator("#export-file a")
    expect(link).to_have_count(1)
    with page.expect_download() as download:
        link.click()
    with zipfile.ZipFile(download.value.path()) as zf:
        votes_csv = zf.read(f"study-{server['study']}/votes.csv").decode()
    votes = list(csv.DictReader(io.StringIO(votes_csv)))
    assert [v["choice"] for v in votes] == CLICKS
    assert {v["rater"] for v in votes} == {"R01"}
    methods = {v["method_left"] for v in votes} | {v["method_right"] for v in votes}
    assert methods == set(STUDY_METHODS)
    context.close()
    assert hosts == local_host(server)  # the chart is drawn without a CDN too


RACE = ["vote-a", "vote-b", "vote-tie"]


def test_answers_racing_each_other_count_once(browser, server):
    # Three buttons pressed within one browser tick, before any reply: one answer counts,
    # for the trial on screen, and the next screen is the next trial (not the one after).
    context = new_context(browser)
    page = context.new_page()
    page.goto(server["url"] + "/study")
    page.fill("#invite-code input, #invite-code textarea", server["second"].code)
    page.click("#study-start")
    answer(page, "key:3", "Practice 2 of 2: not scored")
    answer(page, "key:3", "Trial 1 of 6")
    expect(page.locator("#vote-a")).to_be_enabled()
    answers = AnswerCount(page, server["mp"])
    page.evaluate("ids => ids.forEach(id => document.getElementById(id).click())", RACE)
    expect(progress_label(page)).to_have_text("Trial 2 of 6")
    answers.wait_until_handled()  # every vote the race sent is in
    assert answers.sent >= 1
    expect(progress_label(page)).to_have_text("Trial 2 of 6")
    votes = study.load_votes(common.db(), server["study"])
    mine = votes[votes["rater"] == server["second"].pseudonym]
    assert len(mine) == 1 and mine["choice"].iloc[0] in {"left", "right", "tie"}
    context.close()


def test_rater_fills_in_the_optional_profile(browser, server):
    context = new_context(browser)
    page = context.new_page()
    page.goto(server["url"] + "/study")
    page.fill("#invite-code input, #invite-code textarea", server["second"].code)
    page.click("#study-start")
    expect(page.locator("#vote-a")).to_be_enabled()
    specialty = page.locator("#profile-specialty input, #profile-specialty textarea")
    years = page.locator("#profile-years input")
    page.get_by_text("Your profile (optional)").click()
    expect(specialty).to_have_value("")  # invited without one
    specialty.fill("pathology")
    years.fill("11")
    page.click("#profile-save")
    expect(page.locator("#profile-message")).to_contain_text("Profile saved")
    stored = common.db().query(
        "SELECT specialty, years_experience FROM raters WHERE id = ?", [server["second"].rater_id]
    )
    assert stored == [{"specialty": "pathology", "years_experience": 11}]
    page.reload()  # back later: the tab was signed in, so it continues at once
    expect(page.locator("#vote-a")).to_be_enabled()
    no_error_popup(page)
    page.get_by_text("Your profile (optional)").click()
    expect(specialty).to_have_value("pathology")
    expect(years).to_have_value("11")
    page.click("#study-pause")
    page.click("#study-forget")  # signed out; the next person on this device joins
    third = study.invite_rater(common.db(), server["study"], "Dr C", specialty="dermatology")
    page.fill("#invite-code input, #invite-code textarea", third.code)
    page.click("#study-start")
    expect(page.locator("#vote-a")).to_be_enabled()
    page.get_by_text("Your profile (optional)").click()
    expect(specialty).to_have_value("dermatology")  # Dr C's own, not Dr B's
    expect(years).to_have_value("")
    expect(specialty).to_be_editable()  # unlocked again once Dr C's profile was filled in
    no_error_popup(page)
    context.close()


# ---------------------------------------------------------------- a study-only deployment


def identity_or_tone(image, method: str):
    """The study's methods: the unenhanced input (byte-identical to the source) and two tones."""
    return image if method == "none" else image ** {"lighter": 0.7, "darker": 1.4}[method]


def screen_urls(page) -> list[str]:
    """The source, A and B as the page fetches them (the source's URL when shown)."""
    urls = []
    for box in ("#study-source", "#image-a", "#image-b"):
        image = page.locator(f"{box} img")
        if image.count():
            urls.append(image.first.get_attribute("src"))
    return urls


def no_error_popup(page) -> None:
    """Gradio's error pop-up (a toast over the page) is never shown: problems are messages."""
    expect(page.locator(".toast-body")).to_have_count(0)


@pytest.fixture(scope="module")
def study_only(tmp_path_factory):
    """``DPE_STUDY_ONLY=1 python app.py`` over a study whose first method is the unenhanced
    input, with two invited raters; restartable (SIGKILL, then start again)."""
    root = tmp_path_factory.mktemp("study-only")
    images = root / "images"
    for n, name in enumerate(["brain_mri_coronal", "ihc_colon"]):
        modality = "radiology" if n == 0 else "microscopy"
        images.mkdir(exist_ok=True)
        src = EXAMPLES / modality / f"{name}.png"
        Image.open(src).convert("RGB").resize((64, 64)).save(images / f"item{n}.png")
    with study.open_db(root / "data" / "study.db") as db:
        study_id = study.create_study(
            db,
            "Restart study",
            sorted(images.glob("*.png")),
            ["none", "lighter", "darker"],
            identity_or_tone,
            repeat_fraction=0.0,
        )
        codes = [study.invite_rater(db, study_id, f"Dr {n}").code for n in range(2)]
    server = AppServer(root / "data", env={"DPE_STUDY_ONLY": "1"}).start()
    try:
        yield {"server": server, "study": study_id, "codes": codes, "db": root / "data/study.db"}
    finally:
        server.stop()


def stored_choices(study_only) -> list[str]:
    with study.open_db(study_only["db"]) as db:
        return list(study.load_votes(db, study_only["study"])["choice"])


def test_a_study_only_deployment_serves_no_enhancer(browser, study_only):
    url = study_only["server"].url
    context = new_context(browser)
    page = context.new_page()
    page.goto(url + "/")
    expect(page.locator("#study-only-home")).to_contain_text("Open the study")
    assert "Enhance" not in page.content() and page.locator("#methods").count() == 0
    config = httpx.get(f"{url}/config", timeout=30).json()
    names = {d.get("api_name") for d in config["dependencies"]}
    assert "join_study" in names and not names & {"enhance", "load_upload", "load_example"}
    assert httpx.get(f"{url}/gradio_api/info", timeout=30).json()["named_endpoints"] == {}
    page.goto(url + "/study")
    expect(page.locator("#study-start")).to_be_visible()
    assert "Enhance" not in page.content()  # no menu link, no page name
    context.close()


def test_errors_are_messages_and_a_restart_loses_nothing(browser, study_only):
    server, (code, second) = study_only["server"], study_only["codes"]
    context = new_context(browser)
    page = context.new_page()
    page.goto(server.url + "/study")
    field = page.locator("#invite-code input, #invite-code textarea")
    field.fill("not-the-code")
    page.click("#study-start")
    expect(page.locator("#study-message")).to_contain_text("not valid")
    no_error_popup(page)
    field.fill(code)  # the form stays usable: Start works at once
    page.click("#study-start")
    expect(progress_label(page)).to_have_text("Practice 1 of 2: not scored")
    no_error_popup(page)
    page.click("#study-source-box")  # the source, on demand (it stays open)
    answer(page, "key:1", "Practice 2 of 2: not scored")
    answer(page, "key:1", "Trial 1 of 6")
    seen = [screen_urls(page)]
    answer(page, "key:1", "Trial 2 of 6")
    seen.append(screen_urls(page))
    assert stored_choices(study_only) == ["left"]

    server.kill()  # the page stays open through the restart ...
    page.keyboard.press("2")  # ... and the rater answers while the server is away
    server.start()
    # Gradio reloads the page once the server is back; the tab signs in again by itself with
    # the remembered code, and the answer counts for the trial it was given on.
    expect(progress_label(page)).to_have_text("Trial 3 of 6", timeout=120_000)
    assert stored_choices(study_only) == ["left", "right"]
    no_error_popup(page)
    page.click("#study-source-box")  # a reloaded page starts with it closed
    expect(page.locator("#study-source img")).to_be_visible()
    seen.append(screen_urls(page))

    later = context.new_page()  # a new tab later: the code is still remembered
    later.goto(server.url + "/study")
    expect(later.locator("#study-message")).to_contain_text("Welcome back")
    later.click("#study-start")
    expect(progress_label(later)).to_have_text("Trial 3 of 6")
    later.click("#study-source-box")
    expect(later.locator("#study-source img")).to_be_visible()
    seen.append(screen_urls(later))

    other = new_context(browser).new_page()  # a second rater, the same stimuli
    other.goto(server.url + "/study")
    other.fill("#invite-code input, #invite-code textarea", second)
    other.click("#study-start")
    other.click("#study-source-box")
    for expected in ["Practice 2 of 2: not scored", "Trial 1 of 6"]:
        answer(other, "key:3", expected)
    for n in range(2, 7):
        seen.append(screen_urls(other))
        answer(other, "key:3", f"Trial {n} of 6")
    context.close()
    other.context.close()

    # Every image of every screen, for either rater, before and after the restart, had a URL
    # of its own: the unenhanced stimulus never shares the source's, a stimulus shown again
    # (a reload, another rater) gets a new one, and no URL is derived from the bytes.
    urls = [u for screen in seen for u in screen]
    assert all(len(screen) == 3 for screen in seen) and len(urls) == len(set(urls))
    digests = set()
    for screen in seen:
        for u in screen:
            body = httpx.get(u if u.startswith("http") else server.url + u, timeout=30).content
            digests.add(hashlib.sha256(body).hexdigest())
            assert not any(d[:16] in u for d in digests)


# ---------------------------------------------------------------- the viewer

SIZES = {"1280x720": (1280, 720), "tablet-portrait": (768, 1024)}


def transforms(page) -> list[str]:
    return page.eval_on_selector_all(
        "#image-a img, #image-b img", "images => images.map(i => i.style.transform || '')"
    )


def fonts_drawing(page, selector: str) -> list[dict]:
    """The fonts Chromium drew ``selector``'s text with (DevTools' "Rendered Fonts")."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("DOM.enable")
    cdp.send("CSS.enable")
    root = cdp.send("DOM.getDocument")["root"]["nodeId"]
    node = cdp.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
    fonts = cdp.send("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]
    cdp.detach()
    return fonts


@pytest.mark.parametrize("size", list(SIZES))
def test_the_viewer_fits_the_screen_and_zooms_a_and_b_together(browser, server, size, tmp_path):
    width, height = SIZES[size]
    rater = study.invite_rater(common.db(), server["study"], f"Dr Viewer {size}").code
    context = browser.new_context(viewport={"width": width, "height": height}, has_touch=True)
    context.set_default_timeout(TIMEOUT)
    page = context.new_page()
    page.goto(server["url"] + "/study")
    page.fill("#invite-code input, #invite-code textarea", rater)
    page.click("#study-start")
    expect(page.locator("#vote-a")).to_be_enabled()
    expect(page.locator("#image-a img")).to_be_visible()
    # Everything needed to judge is above the fold: both images and every answer.
    for selector in ["#image-a img", "#image-b img", "#vote-a", "#vote-bad", "#study-help"]:
        box = page.locator(selector).first.bounding_box()
        assert box and box["y"] + box["height"] <= height, (selector, box)
    a, b = (page.locator(f"#image-{s} img").bounding_box() for s in "ab")
    assert abs(a["y"] - b["y"]) < 2 and a["x"] + a["width"] <= b["x"] + 1  # side by side
    # Each answer is drawn in one font, the theme's own (a page font, not a system one): no
    # letter from a fallback (Gradio's SemiBold files hold only a few glyphs, see THEME).
    for selector in ["#vote-a", "#vote-b", "#vote-tie", "#vote-bad", "#study-pause"]:
        fonts = fonts_drawing(page, selector)
        assert len(fonts) == 1 and fonts[0]["isCustomFont"], (selector, fonts)
    page.screenshot(path=tmp_path / f"study-{size}.png")
    # No way to the Enhance page (the main page) from here: no "Home" or "Enhance" link.
    hrefs = page.eval_on_selector_all("a", "links => links.map(a => a.getAttribute('href'))")
    assert not [h for h in hrefs if h in ("/", "./", "..", server["url"] + "/")], hrefs
    expect(page.get_by_role("link", name="Home")).to_have_count(0)
    # Instructions one click away on every screen; the source on demand, at full size.
    page.click("#study-help")
    expect(page.locator("#study-help")).to_contain_text("A is better")
    page.click("#study-source-box")
    expect(page.locator("#study-source img")).to_be_visible()
    # Wheel on A zooms B identically; a drag pans both; a double click resets both.
    page.locator("#image-a img").hover()
    page.mouse.wheel(0, -400)
    zoomed = transforms(page)
    assert zoomed[0] == zoomed[1] and "scale(1)" not in zoomed[0] and zoomed[0]
    box = page.locator("#image-b img").evaluate(
        "image => { const r = image.parentElement.getBoundingClientRect();"
        " return {x: r.x + r.width / 2, y: r.y + r.height / 2}; }"
    )
    page.mouse.move(box["x"], box["y"])
    page.mouse.down()
    page.mouse.move(box["x"] + 30, box["y"] + 20, steps=4)
    page.mouse.up()
    panned = transforms(page)
    assert panned[0] == panned[1] != zoomed[0]
    page.mouse.dblclick(box["x"], box["y"])
    assert transforms(page) == ["translate(0px, 0px) scale(1)"] * 2
    no_error_popup(page)
    if os.environ.get("DPE_SAVE_SCREENSHOTS"):  # for the README: docs/study-<size>.png
        with Image.open(tmp_path / f"study-{size}.png") as shot:
            small = shot.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
            small.save(DOCS / f"study-{size}.png", optimize=True)
    context.close()


# ---------------------------------------------------------------- two tabs, two browsers


def sign_in(browser, server, code: str):
    page = new_context(browser).new_page()
    page.goto(server["url"] + "/study")
    page.fill("#invite-code input, #invite-code textarea", code)
    page.click("#study-start")
    return page


def test_a_second_tabs_conflicting_answer_is_reported_not_dropped(browser, server):
    invite = study.invite_rater(common.db(), server["study"], "Dr Two-tabs")
    first = sign_in(browser, server, invite.code)
    for expected in ["Practice 2 of 2: not scored", "Trial 1 of 6"]:
        answer(first, "key:1", expected)
    second = first.context.new_page()  # the same rater in a second tab, on the same trial
    second.goto(server["url"] + "/study")
    expect(second.locator("#study-message")).to_contain_text("Welcome back")
    second.click("#study-start")  # no vote yet, so practice first here too
    for expected in ["Practice 2 of 2: not scored", "Trial 1 of 6"]:
        answer(second, "key:3", expected)
    answer(first, "key:1", "Trial 2 of 6")
    answer(second, "key:2", "Trial 2 of 6")  # the second tab moves on, and says why
    expect(second.locator("#study-message")).to_contain_text("already answered on another screen")
    no_error_popup(second)
    votes = study.load_votes(common.db(), server["study"])
    mine = votes[votes["rater"] == invite.pseudonym]
    assert list(mine["choice"]) == ["left"]  # the first answer stands
    first.context.close()


def test_wrong_codes_in_one_browser_never_slow_down_a_colleague(browser, server, monkeypatch):
    # Both browsers come from 127.0.0.1, as colleagues behind one hospital NAT address do.
    # a long first wait, so a slow machine cannot let it lapse between the typist's tries
    monkeypatch.setattr(access, "JOIN_ATTEMPTS", Throttle(base_delay=30.0))
    monkeypatch.setattr(access, "JOIN_CEILING", Throttle(free=100, message=access.NETWORK_WRONG))
    invite = study.invite_rater(common.db(), server["study"], "Dr Colleague")
    typist = new_context(browser).new_page()
    typist.goto(server["url"] + "/study")
    field = typist.locator("#invite-code input, #invite-code textarea")
    refusals = []  # every wrong code the server has answered (the same text each time)
    refused = common.refused
    monkeypatch.setattr(common, "refused", lambda *args: (refusals.append(args), refused(*args)))
    message = typist.locator("#study-message")
    for n in range(7):
        field.fill(f"typo-{n}")
        typist.click("#study-start")
        # Wait for this try's answer, not the last one's: a click while a try is still on its
        # way is dropped (Gradio runs one event per button at a time), which would miscount.
        deadline = time.monotonic() + TIMEOUT / 1000
        while len(refusals) <= n and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(refusals) == n + 1, refusals
        expect(message).not_to_contain_text(re.compile(r"\d\.\ds"))  # no pending timer
        expect(message).to_contain_text(
            "not valid" if n < 5 else "Too many wrong codes from this browser"
        )
    no_error_popup(typist)
    colleague = sign_in(browser, server, invite.code)  # at once, from the same address
    expect(progress_label(colleague)).to_have_text("Practice 1 of 2: not scored")
    typist.context.close()
    colleague.context.close()
