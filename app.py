"""Gradio front door: ``python app.py``, then open http://127.0.0.1:7860.

Three pages for three kinds of people (built in the ``webapp`` package, one module each):

- ``/``         Enhance: visitors upload an image, run methods, compare, measure, download.
- ``/study``    Study: experts join with an invite code and vote, blinded.
- ``/results``  Results: researchers (with ``DPE_ADMIN_TOKEN``) watch, analyse, export, invite.

``DPE_STUDY_ONLY=1`` serves only the Study and Results pages (see the README).
"""

from __future__ import annotations

import logging
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import study  # noqa: E402
from study import hub_backup  # noqa: E402
from webapp import LAUNCH_OPTIONS, build_app, study_only, study_page, worker  # noqa: E402
from webapp.common import db  # noqa: E402

demo = build_app()


def main() -> None:
    """Open the study database, start its Hub backup, and serve the app."""
    logging.basicConfig(level=logging.INFO)
    try:
        hub_backup.start_backup(db())
    except study.StorageError as exc:
        # A read-only or full data folder: the demo still serves, the Study page tells
        # raters so, and db() tries again on every call.
        logging.getLogger("app").error("the study database is unavailable: %s", exc)
    # Remembered invite codes stay readable after a restart: the key is kept in the data
    # folder (or $DPE_SECRET_KEY). Study images are served from per-screen links in the temp
    # folder (see webapp.uploads.serve_privately): neither the media folder nor the database
    # beside it is ever served.
    key = study.secret_key(study.data_dir(), "browser-state").hex()
    study_page.remember_codes_across_restarts(demo, key)
    if not study_only():
        worker.start()  # the enhancement process loads while the server starts
    demo.launch(**LAUNCH_OPTIONS)


if __name__ == "__main__":
    main()
