"""Gradio front door: ``python app.py``, then open http://127.0.0.1:7860.

Three pages for three kinds of people (built in the ``webapp`` package, one module each):

- ``/``         Enhance: visitors upload an image, run methods, compare, measure, download.
- ``/study``    Study: experts join with an invite code and vote, blinded.
- ``/results``  Results: researchers (with ``DPE_ADMIN_TOKEN``) watch, analyse, export, invite.
"""

from __future__ import annotations

import logging
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import study  # noqa: E402
from study import hub_backup  # noqa: E402
from webapp import LAUNCH_OPTIONS, build_app  # noqa: E402
from webapp.common import db  # noqa: E402

demo = build_app()


def main() -> None:
    """Open the study database, start its Hub backup, and serve the app."""
    logging.basicConfig(level=logging.INFO)
    try:
        media = db().media_root
        hub_backup.start_backup(db())
    except study.StorageError as exc:
        # A read-only or full data folder: the demo still serves, the Study page tells
        # raters so, and db() tries again on every call.
        logging.getLogger("app").error("the study database is unavailable: %s", exc)
        media = study.data_dir().resolve() / "media"
    # Study images may live outside the working and temp folders (a Space's /data): allow
    # exactly their folder, never the database beside it.
    demo.launch(**LAUNCH_OPTIONS, allowed_paths=[str(media)])


if __name__ == "__main__":
    main()
