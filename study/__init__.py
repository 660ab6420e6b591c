"""Blinded pairwise preference studies of enhancement methods: storage, design, analysis, export.

No torch, Gradio or ``dpe`` here: enhancement reaches a study only through the
``enhance_fn`` passed to :func:`create_study`. ``study.bridge`` (imported on its own) is the
one module that joins the two: it builds a study from image files with ``dpe``'s methods.

Typical use (the app does the same behind its pages)::

    db = study.open_db()                                  # $DPE_DATA_DIR/study.db
    sid = study.create_study(db, "Chest X-ray", images, ["dpe", "lime"], enhance_fn)
    invite = study.invite_rater(db, sid, "Dr A", specialty="radiology")
    rater = study.rater_by_token(db, invite.code)         # the code the rater types in
    trial = study.next_trial(db, rater["id"])             # trial.as_dict() goes to the browser
    study.record_vote(db, rater["id"], trial.trial_id, "left", response_ms=2300)

Submodules imported on their own: ``study.session`` (a rater's screens, one answer each, for
a UI), ``study.tables`` (results as frames and HTML), ``study.throttle`` (slowing down
repeated wrong codes) and ``study.hub_backup`` (snapshots to the Hugging Face Hub).
"""

from study.analysis import analyse, analyse_study, format_report, load_votes
from study.create import (
    SourceImage,
    build_study,
    close_study,
    create_study,
    get_study,
    list_studies,
    new_study,
    read_image,
    reopen_study,
    stimulus_path,
)
from study.db import (
    CHOICES,
    SCHEMA_VERSION,
    NotFoundError,
    SchemaError,
    StorageError,
    StudyDB,
    StudyError,
    backup,
    data_dir,
    open_db,
    secret_key,
)
from study.export import export_study, export_zip
from study.trials import (
    InvalidInviteError,
    Invite,
    RaterRevokedError,
    StudyNotOpenError,
    Trial,
    Vote,
    VoteConflictError,
    invite_rater,
    next_trial,
    progress,
    rater_by_token,
    rater_progress,
    record_vote,
    revoke_rater,
    update_rater,
)

__all__ = [
    "CHOICES",
    "SCHEMA_VERSION",
    "InvalidInviteError",
    "Invite",
    "NotFoundError",
    "RaterRevokedError",
    "SchemaError",
    "SourceImage",
    "StorageError",
    "StudyDB",
    "StudyError",
    "StudyNotOpenError",
    "Trial",
    "Vote",
    "VoteConflictError",
    "analyse",
    "analyse_study",
    "backup",
    "build_study",
    "close_study",
    "reopen_study",
    "create_study",
    "data_dir",
    "secret_key",
    "export_study",
    "export_zip",
    "format_report",
    "get_study",
    "invite_rater",
    "list_studies",
    "load_votes",
    "new_study",
    "next_trial",
    "open_db",
    "progress",
    "rater_by_token",
    "rater_progress",
    "read_image",
    "record_vote",
    "revoke_rater",
    "stimulus_path",
    "update_rater",
]
