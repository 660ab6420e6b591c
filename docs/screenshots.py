"""Regenerate the screenshots of the app's three pages: ``python docs/screenshots.py``.

Serves the app on 127.0.0.1 with a throwaway study (the example images, three methods, a
simulated panel of raters) and photographs each page with Playwright and Debian's Chromium
(``apt-get install chromium``). Writes docs/enhance.png, docs/study.png and docs/results.png
as 256-colour PNGs, small enough to keep in the repository.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default="autocontrast,clahe", help="shown on Enhance")
    parser.add_argument("--study-methods", default="identity,autocontrast,clahe")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    data = tempfile.mkdtemp(prefix="dpe-screens-")
    os.environ["DPE_DATA_DIR"] = data
    os.environ["DPE_ADMIN_TOKEN"] = token = "screenshots"

    from playwright.sync_api import expect, sync_playwright

    import app
    from dpe.methods import method_info
    from tests.chromium import CHROMIUM, CHROMIUM_ARGS

    study_methods = args.study_methods.split(",")
    study_id, code = _demo_study(study_methods)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app.demo.launch(
        **app.LAUNCH_OPTIONS,
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
    )
    url = f"http://127.0.0.1:{port}"
    expect.set_options(timeout=60_000)
    labels = [method_info(m)["label"] for m in args.methods.split(",")]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})

        page.goto(url + "/")
        page.locator("#examples img").nth(0).click()
        expect(page.locator("#preview img")).to_be_visible()
        for box in page.locator("#methods input[type=checkbox]").all():
            if box.is_checked():
                box.uncheck()
        for label in labels:
            page.locator("#methods label", has_text=label).locator("input").check()
        page.check("#simulate input")
        page.click("#run")
        expect(page.locator("#metrics")).to_contain_text(labels[-1])
        page.wait_for_timeout(1000)
        _save(page, args.out / "enhance.png", full_page=True, height=1500)

        page.goto(url + "/study")
        page.fill("#invite-code input, #invite-code textarea", code)
        page.click("#study-start")
        for expected in ("Practice 2 of 2: not scored", "Trial 1 of"):
            expect(page.locator("#vote-a")).to_be_enabled()
            page.click("#vote-a")
            expect(page.locator("#study-progress-label")).to_contain_text(expected)
        page.wait_for_timeout(1000)
        _save(page, args.out / "study.png", full_page=True, height=1100)

        page.goto(url + "/results")
        page.fill("#admin-token input", token)
        page.click("#admin-open")
        expect(page.locator("#results-status")).to_contain_text(study_id)
        expect(page.locator("#share-plot .mark-rect path")).to_have_count(len(study_methods))
        page.wait_for_timeout(1000)
        _save(page, args.out / "results.png", full_page=True, height=1900)
        browser.close()
    app.demo.close()
    shutil.rmtree(data, ignore_errors=True)


def _demo_study(methods: list[str]) -> tuple[str, str]:
    """A study on the example images with a panel of four simulated raters."""
    import numpy as np

    import study
    from study import bridge
    from webapp import common

    db = common.db()
    limit = os.environ.get("DPE_MAX_MEGAPIXELS")
    os.environ["DPE_MAX_MEGAPIXELS"] = "0.1"  # small stimuli: a screenshot needs no more
    try:
        study_id = bridge.create_study(
            db,
            "Example reader study",
            bridge.find_images(common.EXAMPLES_DIR),
            methods,
            degrade="paper",
            instructions="Which image would you rather read?",
        )
    finally:
        if limit is None:
            del os.environ["DPE_MAX_MEGAPIXELS"]
        else:
            os.environ["DPE_MAX_MEGAPIXELS"] = limit
    strength = {m: float(n) for n, m in enumerate(methods)}  # later methods preferred
    rng = np.random.default_rng(0)
    for name in ("Dr A", "Dr B", "Dr C", "Dr D"):
        rater = study.invite_rater(db, study_id, name).rater_id
        while (trial := study.next_trial(db, rater)) is not None:
            left, right = db.query(
                """SELECT ml.key AS l, mr.key AS r FROM trials t
                   JOIN methods ml ON ml.id = t.left_method
                   JOIN methods mr ON mr.id = t.right_method WHERE t.id = ?""",
                [trial.trial_id],
            )[0].values()
            p_left = 1 / (1 + np.exp(strength[right] - strength[left]))
            choice = "tie" if rng.random() < 0.1 else ("left" if rng.random() < p_left else "right")
            study.record_vote(
                db, rater, trial.trial_id, choice, response_ms=int(rng.integers(900, 4000))
            )
    return study_id, study.invite_rater(db, study_id, "Dr E").code


def _save(page, path: Path, *, full_page: bool, height: int) -> None:
    from PIL import Image

    page.screenshot(path=str(path), full_page=full_page)
    with Image.open(path) as shot:
        shot = shot.convert("RGB").crop((0, 0, shot.width, min(shot.height, height)))
        shot.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    print(f"{path} ({path.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
