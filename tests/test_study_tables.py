"""Results as researchers read them: the status line, tables with intervals, the win heatmap."""

from __future__ import annotations

import math
import re

import pandas as pd
import pytest

import study
from study import tables
from tests.test_study_support import make_study

LABELS = {"a": "Method <A>", "b": "Method B", "c": "Method C"}


def rating(method, rank, share, bt, bt_ci, jod, jod_ci, comparisons):
    return {
        "method": method,
        "rank": rank,
        "share": share,
        "bt": bt,
        "bt_lower": bt_ci[0],
        "bt_upper": bt_ci[1],
        "jod": jod,
        "jod_lower": jod_ci[0],
        "jod_upper": jod_ci[1],
        "comparisons": comparisons,
    }


@pytest.fixture
def report() -> dict:
    """A report shaped like analyse_study()'s, with round numbers to check against."""
    overall = {
        "votes": 10,
        "pairs": [
            {"method_a": "a", "method_b": "b", "votes": 4, "a_share": 0.75},
            {"method_a": "a", "method_b": "c", "votes": 0, "a_share": None},
            {"method_a": "b", "method_b": "c", "votes": 6, "a_share": 0.5},
        ],
        "ratings": [
            rating("b", 2, 0.45, -0.2, (-0.9, 0.4), -0.1, (None, None), 10),
            rating("c", 2, 0.25, -0.6, (-1.3, 0.1), -0.4, (-1.0, 0.2), 6),
            rating("a", 1, 0.8, 1.234, (0.5, 2.0), 0.9, (0.25, 1.5), 4),
        ],
        "agreement": {"krippendorff_alpha": 0.4567},
    }
    xray = {**overall, "ratings": [rating("a", 1, 0.61234, 0.3, (None, None), 0.2, (0, 1), 2)]}
    return {
        "n_bootstrap": 200,
        "methods": ["a", "b", "c"],
        "overall": overall,
        "by_modality": {"xray": xray},
        "rater_quality": [
            {"rater": "R01", "votes": 6, "flip_rate": 0.33333, "zeta": 0.91666, "outlier": False},
            {"rater": "R02", "votes": 4, "flip_rate": None, "zeta": 1.0, "outlier": True},
        ],
        "study": {"labels": LABELS},
    }


@pytest.fixture
def status() -> dict:
    """A status shaped like study.progress()'s."""
    return {
        "study": "ab12cd34",
        "title": "Chest <X-ray> & more",
        "status": "open",
        "design": "balanced",
        "methods": ["a", "b", "c"],
        "items": 4,
        "stimuli": 12,
        "votes": 9,
        "raters": [
            {
                "pseudonym": "R01",
                "specialty": "radiology",
                "done": 6,
                "total": 6,
                "last_seen": "T1",
            },
            {"pseudonym": "R02", "specialty": "", "done": 3, "total": 6, "last_seen": None},
        ],
    }


def test_status_line_counts_votes_raters_and_agreement(status, report):
    text = tables.status_markdown(status, report)
    assert text.startswith("### Chest &lt;X-ray&gt; &amp; more (ab12cd34)\n")
    assert "**open**, balanced design, 4 images × 3 methods (12 stimuli)." in text
    assert "**9** votes of 12 planned (75%) from 2 raters, 1 finished." in text
    assert "Krippendorff's α 0.46." in text and "from 200 rater resamples." in text


@pytest.mark.parametrize("alpha", [None, math.nan, math.inf])
def test_status_line_without_agreement_or_plan_shows_dashes(status, report, alpha):
    report["overall"]["agreement"] = {"krippendorff_alpha": alpha}
    status = {**status, "raters": [], "votes": 0}
    text = tables.status_markdown(status, report)
    assert "Krippendorff's α -." in text and "**0** votes of 0 planned (-) from 0 raters" in text


def test_raters_table_fills_gaps(status):
    frame = tables.raters_frame(status)
    assert list(frame.columns) == ["Rater", "Specialty", "Votes", "Planned", "Last seen"]
    assert frame.values.tolist() == [["R01", "radiology", 6, 6, "T1"], ["R02", "-", 3, 6, "never"]]


def test_share_frame_uses_labels_and_sorts_by_share(report):
    frame = tables.share_frame(report["overall"], LABELS)
    assert frame.values.tolist() == [["Method <A>", 0.8], ["Method B", 0.45], ["Method C", 0.25]]
    assert frame["share"].dtype == float
    empty = tables.share_frame({"ratings": []}, LABELS)
    assert empty.empty and list(empty.dtypes) == list(tables.empty_share().dtypes)
    assert tables.empty_share()["share"].dtype == float


@pytest.mark.parametrize(
    ("value", "lower", "upper", "text"),
    [
        (1.234, 0.5, 2.0, "+1.23 [+0.50, +2.00]"),
        (-0.005, -1.0, 0.999, "-0.01 [-1.00, +1.00]"),
        (-0.5, None, 0.3, "-0.50"),
        (0.0, None, None, "+0.00"),
        (None, 0.1, 0.2, "-"),
    ],
)
def test_interval(value, lower, upper, text):
    assert tables.interval(value, lower, upper) == text


def test_ratings_frame_ranks_each_section_with_intervals(report):
    sections = [("all", report["overall"]), *report["by_modality"].items()]
    frame = tables.ratings_frame(sections, LABELS)
    assert list(frame.columns) == tables.RATINGS_COLUMNS
    assert frame.values.tolist() == [
        ["all", 1, "Method <A>", 0.8, "+1.23 [+0.50, +2.00]", "+0.90 [+0.25, +1.50]", 4],
        ["all", 2, "Method B", 0.45, "-0.20 [-0.90, +0.40]", "-0.10", 10],
        ["all", 2, "Method C", 0.25, "-0.60 [-1.30, +0.10]", "-0.40 [-1.00, +0.20]", 6],
        ["xray", 1, "Method <A>", 0.612, "+0.30", "+0.20 [+0.00, +1.00]", 2],
    ]
    assert tables.ratings_frame([], LABELS).empty


def heatmap(html: str) -> dict[str, list[str]]:
    """Row label -> the cells of that row, as '<text>|<style>|<title>'."""
    rows = {}
    for label, cells in re.findall(r"<tr><th>([^<]*)</th>(.*?)</tr>", html):
        if not label:
            continue  # the header row
        rows[label] = [
            f"{text}|{style}|{title}"
            for style, title, text in re.findall(
                r'<td(?: style="([^"]*)")?(?: title="([^"]*)")?(?: class="empty")?>([^<]*)</td>',
                cells,
            )
        ]
    return rows


def test_win_matrix_is_a_heatmap_of_row_over_column(report):
    html = tables.win_matrix_html(report["overall"], report["methods"], LABELS)
    assert html.startswith('<table class="win-matrix">')
    assert "<th>Method &lt;A&gt;</th>" in html and "<A>" not in html
    assert heatmap(html) == {
        "Method &lt;A&gt;": [
            "-||",
            "75%|background: rgba(22,163,74,0.50)|4 votes",
            "-||",  # a pair nobody has judged yet
        ],
        "Method B": [
            "25%|background: rgba(220,38,38,0.50)|4 votes",
            "-||",
            "50%|background: rgba(22,163,74,0.00)|6 votes",
        ],
        "Method C": ["-||", "50%|background: rgba(22,163,74,0.00)|6 votes", "-||"],
    }


def test_win_matrix_without_votes_has_only_empty_cells():
    html = tables.win_matrix_html({"pairs": []}, ["a", "b"], {})
    assert heatmap(html) == {"a": ["-||", "-||"], "b": ["-||", "-||"]}


def test_quality_frame_titles_and_rounds(report):
    frame = tables.quality_frame(report["rater_quality"])
    assert list(frame.columns) == list(tables.QUALITY_COLUMNS.values())
    assert frame["Flip rate"].iloc[0] == 0.333 and frame["Consistency ζ"].iloc[0] == 0.917
    assert pd.isna(frame["Flip rate"].iloc[1]) and pd.isna(frame["LOO log-lik"].iloc[0])
    assert frame["Outlier"].tolist() == [False, True]


def test_progress_bar_marks_practice():
    assert 'value="0"' in tables.progress_html(0, 2, practice=True)
    assert ">Practice 1 of 2: not scored</span>" in tables.progress_html(0, 2, practice=True)
    html = tables.progress_html(3, 10)
    assert '<progress max="10" value="3">' in html and ">Trial 4 of 10</span>" in html


def test_study_choices_and_keeping_the_selection(tmp_path):
    db, first = make_study(tmp_path, n_images=1, methods=["a", "b"])
    image = tmp_path / "images" / "img00.png"
    second = study.create_study(db, "Second", [image], ["a", "b"], lambda image, method: image)
    study.close_study(db, first)
    choices = tables.study_choices(db)
    assert sorted(choices) == sorted(
        [(f"Test study ({first}, closed)", first), (f"Second ({second}, open)", second)]
    )
    assert tables.keep_choice(choices, first) == first
    assert tables.keep_choice(choices, "gone") == choices[0][1]
    assert tables.keep_choice([], "gone") is None


def test_result_tables_of_a_voted_study_agree_with_each_other(tmp_path):
    db, study_id = make_study(
        tmp_path, n_images=2, methods=["a", "b", "c"], labels=LABELS, repeat_fraction=0.0
    )
    for seed, choice in [(1, "left"), (2, "right")]:
        rater = study.invite_rater(db, study_id, f"Dr {seed}", seed=seed).rater_id
        for _ in range(6):
            trial = study.next_trial(db, rater)
            study.record_vote(db, rater, trial.trial_id, choice)
    shown = tables.result_tables(db, study_id, n_boot=20)
    assert "**12** votes of 12 planned (100%) from 2 raters, 2 finished" in shown.status
    # Two raters: no intervals, and the page says why instead of printing numbers.
    assert "2 raters give only 3 distinct resamples" in shown.status
    assert "Outlier flags need at least 10 decisive votes" in shown.status
    assert "Position bias:" in shown.status and "log-odds for the left image" in shown.status
    assert tables.result_tables(db, study_id, n_boot=20).status == shown.status  # cached
    assert shown.raters["Votes"].tolist() == [6, 6]
    assert set(shown.share["method"]) == set(LABELS.values())
    # every comparison has a winner or is split evenly: shares of three methods sum to 1.5
    assert shown.share["share"].sum() == pytest.approx(1.5)
    assert len(shown.ratings) == 3 and shown.by_modality.empty  # one modality only
    assert len(re.findall(r'title="4 votes">', shown.win_matrix)) == 6  # 2 raters x 2 images
    assert shown.quality["Rater"].tolist() == ["R01", "R02"]
    with pytest.raises(study.NotFoundError):
        tables.result_tables(db, "nope")


def test_the_analysis_is_refitted_only_when_votes_arrive(tmp_path, monkeypatch):
    db, study_id = make_study(tmp_path, n_images=1, methods=["a", "b", "c"], repeat_fraction=0.0)
    rater = study.invite_rater(db, study_id, "Dr A").rater_id
    fits = []
    real = tables.analyse_study
    monkeypatch.setattr(tables, "analyse_study", lambda *a, **k: fits.append(1) or real(*a, **k))
    first = tables.result_tables(db, study_id, n_boot=10)
    tables.result_tables(db, study_id, n_boot=10)  # looking again, refreshing: no refit
    assert len(fits) == 1
    trial = study.next_trial(db, rater)
    study.record_vote(db, rater, trial.trial_id, "left")
    second = tables.result_tables(db, study_id, n_boot=10)
    assert len(fits) == 2 and first.status != second.status


def test_the_bootstrap_runs_off_the_request_path(tmp_path, monkeypatch):
    """A page that asks while the bootstrap runs gets point estimates at once and a note; the
    next look, once the fit is done, has the intervals."""
    import threading

    db, study_id = make_study(tmp_path, n_images=2, methods=["a", "b", "c"], repeat_fraction=0.0)
    for seed in range(1, 6):  # enough raters for intervals
        rater = study.invite_rater(db, study_id, f"Dr {seed}", seed=seed).rater_id
        for _ in range(6):
            trial = study.next_trial(db, rater)
            study.record_vote(db, rater, trial.trial_id, "left" if seed % 2 else "right")
    release = threading.Event()
    real = tables.analyse_study

    def slow(db_, sid, *, n_boot):
        if n_boot:  # the background fit waits until the page has answered
            assert release.wait(30)
        return real(db_, sid, n_boot=n_boot)

    monkeypatch.setattr(tables, "analyse_study", slow)
    monkeypatch.setattr(tables, "WAIT_FOR_INTERVALS_S", 0.05)
    monkeypatch.setattr(tables, "QUICK_FROM_VOTES", 10)  # this small study counts as big
    first = tables.result_tables(db, study_id, n_boot=20)
    assert "are being computed" in first.status
    assert first.ratings["BT [95% CI]"].str.contains(r"\[").sum() == 0  # no interval yet
    release.set()
    report = tables.cached_report(db, study_id, 30, n_boot=20, wait=math.inf)
    assert report["n_bootstrap"] == 20 and not report["intervals"]
    second = tables.result_tables(db, study_id, n_boot=20)
    assert "are being computed" not in second.status
    assert second.ratings["BT [95% CI]"].str.contains(r"\[").all()
