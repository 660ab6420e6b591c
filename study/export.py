"""Exports researchers keep: CSV tables, a JSON report and a scrubbed database snapshot.

``pwcmp.csv`` holds the votes in the long format of pwcmp's ``pw_scale_table`` (and ASAP):
observer, session, scene, condition_A, condition_B, is_A_selected; A is the left image.
pwcmp has no ties, so a tie or "both unacceptable" is written as two rows, one for each side
(half a win each, as every scale here counts it); ``session`` is 1 (a rater's answers form
one session however often they paused).

Exports are pseudonymous: raters appear by pseudonym, and neither invite codes nor their
hashes nor rater names leave the server, nor anything of another study. Text cells a
spreadsheet would run as a formula are escaped.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import sqlite3
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from study.analysis import N_BOOTSTRAP, analyse_study, load_votes, preference_share
from study.analysis import VOTE_COLUMNS as VOTE_COLUMNS_LOADED
from study.create import get_study
from study.db import StudyDB, StudyError, backup, log_event

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")

# load_votes' columns without the internal ones (trial ids and the browser's clock)
VOTE_COLUMNS = [c for c in VOTE_COLUMNS_LOADED if c not in ("trial", "repeat_of", "client_ts")]
TALLY_COLUMNS = [
    "modality",
    "method",
    "label",
    "comparisons",
    "wins",
    "ties",
    "both_bad",
    "losses",
    "share",
]
PAIR_COLUMNS = [
    "modality",
    "method_a",
    "method_b",
    "votes",
    "a_wins",
    "b_wins",
    "ties",
    "both_bad",
    "a_share",
]
RATING_COLUMNS = [
    "modality",
    "method",
    "label",
    "rank",
    "share",
    "bt",
    "bt_lower",
    "bt_upper",
    "jod",
    "jod_lower",
    "jod_upper",
    "comparisons",
]
PWCMP_COLUMNS = ["observer", "session", "scene", "condition_A", "condition_B", "is_A_selected"]
RATER_COLUMNS = [
    "rater",
    "specialty",
    "years_experience",
    "created",
    "trials",
    "votes",
    "repeat_pairs",
    "flips",
    "flip_rate",
    "tournaments",
    "circular_triads",
    "zeta",
    "loo_loglik",
    "loo_agreement",
    "outlier",
    "median_response_ms",
    "revoked",
]


def escape_cell(value):
    """Text starting with = + - @ (or tab/CR) gets a leading quote so spreadsheets show it as text.

    Numbers stay numbers: a negative score is data, not a formula.
    """
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    if isinstance(value, float) and math.isnan(value):
        return ""
    return value


def write_csv(path: str | os.PathLike, rows: Iterable[Mapping], columns: Sequence[str]) -> Path:
    """Write ``rows`` (dicts) with a header of ``columns``, every cell escaped."""
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([escape_cell(row.get(c)) for c in columns])
    return path


# What one export holds: the tables, the analysis and a scrubbed copy of the study's rows
EXPORT_FILES = (
    "votes.csv",
    "tallies.csv",
    "pairwise.csv",
    "ratings.csv",
    "raters.csv",
    "pwcmp.csv",
    "report.json",
    "study.db",
)


def export_study(
    db: StudyDB,
    study_id: str,
    out_dir: str | os.PathLike,
    *,
    n_boot: int = N_BOOTSTRAP,
    seed: int = 0,
) -> dict[str, Path]:
    """Write the CSV tables, report.json and a scrubbed study.db snapshot into ``out_dir``."""
    study = get_study(db, study_id)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    snapshot = out / "study.db"
    if snapshot.exists():
        raise StudyError(f"{out} already holds an export; choose an empty folder.")
    labels = {m["key"]: m["label"] for m in study["methods"]}
    methods = list(labels)
    votes = load_votes(db, study_id)
    report = analyse_study(db, study_id, n_boot=n_boot, seed=seed)
    written = {
        "votes": write_csv(out / "votes.csv", votes.to_dict(orient="records"), VOTE_COLUMNS),
        "tallies": write_csv(
            out / "tallies.csv", _tally_rows(votes, methods, labels), TALLY_COLUMNS
        ),
        "pairwise": write_csv(out / "pairwise.csv", _section_rows(report, "pairs"), PAIR_COLUMNS),
        "ratings": write_csv(
            out / "ratings.csv",
            _with_labels(_section_rows(report, "ratings"), labels),
            RATING_COLUMNS,
        ),
        "raters": write_csv(out / "raters.csv", _rater_rows(db, study_id, report), RATER_COLUMNS),
        "pwcmp": write_csv(out / "pwcmp.csv", pwcmp_rows(votes), PWCMP_COLUMNS),
    }
    written["report"] = out / "report.json"
    written["report"].write_text(json.dumps(report, indent=2, allow_nan=False), encoding="utf-8")
    written["database"] = _scrubbed_snapshot(db, snapshot, study_id)
    log_event(db, study_id, "export_taken", json.dumps({"votes": int(len(votes))}))
    return written


def export_zip(db: StudyDB, study_id: str, out_dir: str | os.PathLike) -> Path:
    """:func:`export_study`'s files in one ``study-<id>-export.zip`` written into ``out_dir``.

    Inside, the files sit in a folder ``study-<id>/``; no loose copies are left beside the zip.
    """
    out = Path(out_dir)
    staging = out / f"study-{study_id}"
    archive = out / f"study-{study_id}-export.zip"
    if staging.exists() or archive.exists():
        raise StudyError(f"{out} already holds an export of {study_id}; choose an empty folder.")
    try:
        written = export_study(db, study_id, staging)
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in written.values():
                zf.write(path, f"{staging.name}/{path.name}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return archive


def pwcmp_rows(votes) -> list[dict]:
    """The votes as pwcmp's long table (see the module docstring); a tie gives two rows."""
    rows = []
    for vote in votes.to_dict(orient="records"):
        row = {
            "observer": vote["rater"],
            "session": 1,
            "scene": vote["item"],
            "condition_A": vote["method_left"],
            "condition_B": vote["method_right"],
        }
        if vote["choice"] in ("left", "right"):
            rows.append({**row, "is_A_selected": int(vote["choice"] == "left")})
        else:
            rows += [{**row, "is_A_selected": 1}, {**row, "is_A_selected": 0}]
    return rows


def _sections(report: dict) -> list[tuple[str, dict]]:
    return [("all", report["overall"]), *report["by_modality"].items()]


def _section_rows(report: dict, key: str) -> list[dict]:
    return [
        {"modality": name, **row}
        for name, section in _sections(report)
        for row in section.get(key, [])
    ]


def _with_labels(rows: list[dict], labels: Mapping[str, str]) -> list[dict]:
    return [{**row, "label": labels.get(row["method"], row["method"])} for row in rows]


def _tally_rows(votes, methods: list[str], labels: Mapping[str, str]) -> list[dict]:
    groups = [("all", votes)]
    if votes["modality"].nunique() > 1:
        groups += list(votes.groupby("modality"))
    rows = []
    for name, group in groups:
        table = preference_share(group, methods).reset_index()
        for row in table.to_dict(orient="records"):
            rows.append({"modality": name, "label": labels[row["method"]], **row})
    return rows


def _rater_rows(db: StudyDB, study_id: str, report: dict) -> list[dict]:
    quality = {row["rater"]: row for row in report["rater_quality"]}
    raters = db.query(
        """SELECT r.pseudonym AS rater, r.specialty, r.years_experience, r.created,
                  r.revoked, count(t.id) AS trials
           FROM raters r LEFT JOIN trials t ON t.rater = r.id
           WHERE r.study = ? GROUP BY r.id ORDER BY r.id""",
        [study_id],
    )
    return [{"votes": 0, **quality.get(r["rater"], {}), **r} for r in raters]


# Rows of every other study, children before parents; each statement takes the study id once.
_OTHER_STUDIES = (
    """DELETE FROM votes WHERE trial IN (SELECT t.id FROM trials t
       JOIN raters r ON r.id = t.rater WHERE r.study IS NOT ?)""",
    "DELETE FROM trials WHERE rater IN (SELECT id FROM raters WHERE study IS NOT ?)",
    "DELETE FROM raters WHERE study IS NOT ?",
    "DELETE FROM stimuli WHERE item IN (SELECT id FROM items WHERE study IS NOT ?)",
    "DELETE FROM items WHERE study IS NOT ?",
    "DELETE FROM methods WHERE study IS NOT ?",
    "DELETE FROM events WHERE study IS NOT ?",
    "DELETE FROM studies WHERE id IS NOT ?",
)


def _scrubbed_snapshot(db: StudyDB, target: Path, study_id: str) -> Path:
    """A ``VACUUM INTO`` snapshot of one study, with invite-code hashes and rater names removed.

    Other studies in the same database are deleted from it: an export of one study is
    shared with that study's collaborators only.
    """
    backup(db, target)
    conn = sqlite3.connect(target, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("PRAGMA secure_delete=ON")
        conn.execute("BEGIN")
        for statement in _OTHER_STUDIES:
            conn.execute(statement, [study_id])
        conn.execute("UPDATE raters SET token_hash = 'removed-' || id, display_name = pseudonym")
        conn.execute("COMMIT")
        conn.execute("VACUUM")  # rewrite the file so no old page keeps the removed values
    finally:
        conn.close()
    return target
