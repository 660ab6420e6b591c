"""A study's numbers as tables and small HTML fragments for people to read.

Plain pandas frames and HTML strings, no Gradio: the app's Results page shows them as they
are. Inputs are :func:`study.progress` and :func:`study.analyse_study` results; method keys
are shown by their labels, which only researchers ever see.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from html import escape
from typing import NamedTuple

import pandas as pd

from study.analysis import N_BOOTSTRAP, analyse_study, format_position_bias, interval
from study.create import list_studies
from study.db import StudyDB
from study.trials import progress

RATINGS_COLUMNS = [
    "Images",
    "Rank",
    "Method",
    "Share",
    "BT [95% CI]",
    "JOD [95% CI]",
    "Comparisons",
]
RATERS_COLUMNS = ["Rater", "Specialty", "Votes", "Planned", "Last seen"]
# analyse()'s rater-quality keys and the column titles researchers read.
QUALITY_COLUMNS = {
    "rater": "Rater",
    "votes": "Votes",
    "repeat_pairs": "Repeats",
    "flip_rate": "Flip rate",
    "circular_triads": "Circular triads",
    "zeta": "Consistency ζ",
    "loo_loglik": "LOO log-lik",
    "outlier": "Outlier",
    "median_response_ms": "Median reading ms",
}
# Typed even when empty: a bar plot first drawn from untyped columns never draws bars later.
SHARE_DTYPES = {"method": str, "share": float}


class ResultTables(NamedTuple):
    """Everything the Results page shows for one study, in the page's order."""

    status: str
    raters: pd.DataFrame
    share: pd.DataFrame
    ratings: pd.DataFrame
    win_matrix: str
    by_modality: pd.DataFrame
    quality: pd.DataFrame


# The analysis (a rater bootstrap) changes only when votes arrive: kept per study and vote
# count, so looking again, refreshing or a second researcher costs no refit. The bootstrap runs
# on one background thread, off the request path: a page that asks while it runs gets the point
# estimates at once and a note that the intervals follow.
_REPORTS: dict[tuple, dict] = {}
_PENDING: dict[tuple, Future] = {}
_REPORTS_LOCK = threading.Lock()
_ANALYSIS = ThreadPoolExecutor(max_workers=1, thread_name_prefix="study-analysis")
REPORTS_KEPT = 16
WAIT_FOR_INTERVALS_S = 0.25  # how long a big study's page waits for the bootstrap
QUICK_FROM_VOTES = 500  # below this the bootstrap takes well under a second: wait for it


def _fit(db: StudyDB, study_id: str, key: tuple, n_boot: int) -> dict:
    try:
        report = analyse_study(db, study_id, n_boot=n_boot)
        with _REPORTS_LOCK:
            _REPORTS[key] = report
            while len(_REPORTS) > REPORTS_KEPT:
                _REPORTS.pop(next(iter(_REPORTS)))
        return report
    finally:
        with _REPORTS_LOCK:
            _PENDING.pop(key, None)


def cached_report(
    db: StudyDB, study_id: str, votes: int, *, n_boot: int = N_BOOTSTRAP, wait: float | None = None
) -> dict:
    """`analyse_study` of ``study_id``, refitted only when its vote count changed.

    The fit runs in the background; this waits for it up to ``wait`` seconds (default:
    ``WAIT_FOR_INTERVALS_S`` from ``QUICK_FROM_VOTES`` votes on, else until it is done;
    ``math.inf`` waits for good). When it is still running after that, the report returned has
    point estimates only and says in ``"intervals"`` that the intervals are being computed.
    """
    key = (str(db.path), study_id, votes, n_boot)
    with _REPORTS_LOCK:
        report = _REPORTS.get(key)
        future = None
        if report is None:
            future = _PENDING.get(key)
            if future is None:
                future = _PENDING[key] = _ANALYSIS.submit(_fit, db, study_id, key, n_boot)
    if report is not None:
        return report
    if wait is None:
        wait = WAIT_FOR_INTERVALS_S if votes >= QUICK_FROM_VOTES else math.inf
    try:
        return future.result(timeout=None if math.isinf(wait) else wait)
    except FutureTimeout:
        quick = analyse_study(db, study_id, n_boot=0)
        quick["intervals"] = quick["intervals"] or (
            f"The 95% intervals ({n_boot} rater resamples) are being computed; refresh in a few "
            "seconds to see them. Ranks are by the point estimates until then."
        )
        return quick


def result_tables(db: StudyDB, study_id: str, *, n_boot: int = N_BOOTSTRAP) -> ResultTables:
    """Progress and analysis of a study, formatted; raises StudyError for an unknown study."""
    status = progress(db, study_id)
    report = dict(cached_report(db, study_id, status["votes"], n_boot=n_boot))
    report["study"] = {**report["study"], "status": status["status"]}
    labels = report["study"]["labels"]
    return ResultTables(
        status_markdown(status, report),
        raters_frame(status),
        share_frame(report["overall"], labels),
        ratings_frame([("all", report["overall"])], labels),
        win_matrix_html(report["overall"], report["methods"], labels),
        ratings_frame(list(report["by_modality"].items()), labels),
        quality_frame(report["rater_quality"]),
    )


def status_markdown(status: dict, report: dict) -> str:
    """One paragraph: status, design, votes against plan, finished raters, agreement."""
    raters = status["raters"]
    planned = sum(r["total"] for r in raters)
    complete = sum(1 for r in raters if r["total"] and r["done"] >= r["total"])
    share = f"{status['votes'] / planned:.0%}" if planned else "-"
    alpha = (report["overall"].get("agreement") or {}).get("krippendorff_alpha")
    alpha_text = f"{alpha:.2f}" if isinstance(alpha, float) and math.isfinite(alpha) else "-"
    return (
        f"### {escape(status['title'])} ({status['study']})\n"
        f"**{status['status']}**, {status['design']} design, {status['items']} images × "
        f"{len(status['methods'])} methods ({status['stimuli']} stimuli). "
        f"**{status['votes']}** votes of {planned} planned ({share}) from {len(raters)} raters, "
        f"{complete} finished. Krippendorff's α {alpha_text}. "
        + (
            escape(report["intervals"])
            if report.get("intervals")
            else f"Intervals are 95%, from {report['n_bootstrap']} rater resamples."
        )
        + f" Outlier flags need at least {report.get('min_votes_for_outlier', '-')} decisive "
        "votes from a rater.\n\n**Position bias:** "
        + " ".join(line.strip() for line in format_position_bias(report.get("position_bias") or {}))
        + "."
    )


def raters_frame(status: dict) -> pd.DataFrame:
    """One row per rater, by pseudonym: specialty, votes given and planned, last seen."""
    rows = [
        [r["pseudonym"], r["specialty"] or "-", r["done"], r["total"], r["last_seen"] or "never"]
        for r in status["raters"]
    ]
    return pd.DataFrame(rows, columns=RATERS_COLUMNS)


def empty_share() -> pd.DataFrame:
    """A preference-share frame with no rows but typed columns (see :data:`SHARE_DTYPES`)."""
    return pd.DataFrame({k: pd.Series([], dtype=t) for k, t in SHARE_DTYPES.items()})


def share_frame(section: dict, labels: dict) -> pd.DataFrame:
    """Columns ``method`` (label) and ``share`` (ties count half), highest share first."""
    rows = [(labels.get(r["method"], r["method"]), r["share"]) for r in section.get("ratings", [])]
    frame = pd.DataFrame(rows, columns=list(SHARE_DTYPES)).astype(SHARE_DTYPES)
    return frame.sort_values("share", ascending=False)


def ratings_frame(sections: list[tuple[str, dict]], labels: dict) -> pd.DataFrame:
    """Bradley–Terry and JOD scales with intervals, one block of rows per (name, section)."""
    rows = []
    for name, section in sections:
        for r in sorted(section.get("ratings", []), key=lambda r: (r["rank"], -r["bt"])):
            rows.append(
                [
                    name,
                    r["rank"],
                    labels.get(r["method"], r["method"]),
                    None if r["share"] is None else round(r["share"], 3),
                    interval(r["bt"], r["bt_lower"], r["bt_upper"]),
                    interval(r["jod"], r["jod_lower"], r["jod_upper"]),
                    r["comparisons"],
                ]
            )
    return pd.DataFrame(rows, columns=RATINGS_COLUMNS)


def win_matrix_html(section: dict, methods: list[str], labels: dict) -> str:
    """Row method preferred over column method, as a share of their votes, shaded like a heatmap.

    Green above a draw, red below, stronger the further from 50%; ``-`` where a pair has no
    votes (and on the diagonal).
    """
    share = {}
    for p in section.get("pairs", []):
        if p["votes"]:
            share[p["method_a"], p["method_b"]] = (p["a_share"], p["votes"])
            share[p["method_b"], p["method_a"]] = (1 - p["a_share"], p["votes"])
    head = "".join(f"<th>{escape(labels.get(m, m))}</th>" for m in methods)
    body = []
    for a in methods:
        cells = [_win_cell(*share[a, b]) if (a, b) in share else _EMPTY_CELL for b in methods]
        body.append(f"<tr><th>{escape(labels.get(a, a))}</th>{''.join(cells)}</tr>")
    return (
        '<table class="win-matrix"><caption>How often the row method was preferred to the '
        "column method (ties count half)</caption>"
        f"<tr><th></th>{head}</tr>{''.join(body)}</table>"
    )


_EMPTY_CELL = '<td class="empty">-</td>'


def _win_cell(value: float, votes: int) -> str:
    # 0 -> red, 0.5 -> white, 1 -> green; opacity carries the distance from a draw.
    colour = "22,163,74" if value >= 0.5 else "220,38,38"
    alpha = abs(value - 0.5) * 2
    return (
        f'<td style="background: rgba({colour},{alpha:.2f})" title="{votes} votes">{value:.0%}</td>'
    )


def quality_frame(rows: list[dict]) -> pd.DataFrame:
    """Rater-quality rows from the report, titled for people and rounded to 3 places."""
    frame = pd.DataFrame(rows, columns=list(QUALITY_COLUMNS))
    return frame.rename(columns=QUALITY_COLUMNS).round(3)


def study_choices(db: StudyDB) -> list[tuple[str, str]]:
    """(label, id) for every study, newest first: "Title (id, status)"."""
    return [(f"{s['title']} ({s['id']}, {s['status']})", s["id"]) for s in list_studies(db)]


def keep_choice(choices: list[tuple[str, str]], current: str | None) -> str | None:
    """``current`` while it is still one of ``choices``, else the first choice (or None)."""
    if current in {value for _, value in choices}:
        return current
    return choices[0][1] if choices else None


def progress_html(done: int, total: int, *, practice: bool = False) -> str:
    """A rater's progress bar and its label ("Trial 3 of 10", practice marked as not scored)."""
    label = (
        f"Practice {done + 1} of {total}: not scored"
        if practice
        else f"Trial {done + 1} of {total}"
    )
    return (
        f'<div class="study-progress"><progress max="{total}" value="{done}"></progress>'
        f'<span id="study-progress-label">{label}</span></div>'
    )
