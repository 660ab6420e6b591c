"""Analysis: tallies, Bradley-Terry with rater-bootstrap CIs, JOD, consistency and agreement."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import kendalltau

from study import analysis
from tests.test_study_support import simulate_panel

TRUTH = {"dpe": 0.9, "dran": 0.5, "retinexnet": 0.0, "lime": -0.4, "dual": -1.0}  # mean 0
METHODS = list(TRUTH)


@pytest.mark.slow
def test_simulated_panel_recovers_the_order_and_intervals_cover_the_truth():
    runs, covered, total, ordered, consistent_ranks = 20, 0, 0, 0, 0
    truth = np.array(list(TRUTH.values()))
    for seed in range(runs):
        votes = simulate_panel(TRUTH, n_raters=12, n_items=10, rater_spread=0.3, seed=seed)
        table = analysis.ratings(votes, METHODS, n_boot=200, seed=seed)
        ordered += list(table["bt"].sort_values(ascending=False).index) == METHODS
        inside = (table["bt_lower"] <= truth) & (truth <= table["bt_upper"])
        covered, total = covered + int(inside.sum()), total + len(truth)
        ranks = table.loc[METHODS, "rank"].to_numpy()  # true order, best first
        consistent_ranks += bool(np.all(np.diff(ranks) >= 0)) and ranks[0] == 1
    print(f"\norder recovered {ordered}/{runs}; 95% CIs cover the truth {covered}/{total}")
    assert ordered >= 0.9 * runs
    assert covered >= 0.8 * total
    assert consistent_ranks >= 0.9 * runs


def test_bootstrap_resamples_raters_not_votes():
    # Two raters who disagree completely: resampling raters sometimes gives all-"a" data,
    # so the interval is wide; resampling 400 votes would give a narrow one.
    rows = [
        {"rater": r, "method_left": "a", "method_right": "b", "choice": c}
        for r, c in (("R1", "left"), ("R2", "right"))
        for _ in range(200)
    ]
    samples = analysis.bootstrap_raters(pd.DataFrame(rows), ["a", "b"], n_boot=200, seed=1)
    gaps = samples["bt"][:, 0] - samples["bt"][:, 1]
    assert gaps.max() > 3 and gaps.min() < -3
    assert samples["bt"].shape == (200, 2)


def test_tallies_add_up_to_the_vote_count():
    votes = simulate_panel(TRUTH, n_raters=3, n_items=4, tie_rate=0.2, seed=3)
    votes.loc[votes.index % 7 == 0, "choice"] = "both_bad"
    n = len(votes)
    pairs = analysis.pair_tallies(votes, METHODS)
    assert pairs["votes"].sum() == n
    assert (pairs[["a_wins", "b_wins", "ties", "both_bad"]].sum(axis=1) == pairs["votes"]).all()
    assert pairs["both_bad"].sum() == (votes["choice"] == "both_bad").sum()
    share = analysis.preference_share(votes, METHODS)
    assert share["comparisons"].sum() == 2 * n
    assert share["wins"].sum() == share["losses"].sum()
    assert share["share"].mul(share["comparisons"]).sum() == pytest.approx(n)
    m = analysis.outcome_matrices(votes, METHODS)
    assert m["wins"].to_numpy().sum() + m["ties"].to_numpy().sum() / 2 == n
    assert (m["losses"].to_numpy() == m["wins"].to_numpy().T).all()


def test_preference_share_counts_ties_half():
    votes = pd.DataFrame(
        {
            "rater": ["R1"] * 4,
            "method_left": ["a", "b", "a", "a"],
            "method_right": ["b", "a", "b", "b"],
            "choice": ["left", "right", "tie", "both_bad"],
        }
    )
    share = analysis.preference_share(votes, ["a", "b"])
    assert share.loc["a", "share"] == pytest.approx(3 / 4)  # 2 wins + 2 halves of 4
    assert share.loc["b", "share"] == pytest.approx(1 / 4)


def test_jod_unit_is_seventy_five_percent_preference():
    rows = [("a", "b", "left")] * 300 + [("a", "b", "right")] * 100
    votes = pd.DataFrame(rows, columns=["method_left", "method_right", "choice"]).assign(rater="R")
    jod = analysis.thurstone_jod(votes, ["a", "b"])
    assert jod["a"] - jod["b"] == pytest.approx(1.0, abs=0.01)
    bt = analysis.bradley_terry(votes, ["a", "b"])
    assert bt["a"] - bt["b"] == pytest.approx(math.log(3), abs=0.01)


def test_jod_orders_methods_like_bradley_terry():
    votes = simulate_panel(TRUTH, n_raters=6, n_items=5, seed=11)
    jod = analysis.thurstone_jod(votes, METHODS)
    bt = analysis.bradley_terry(votes, METHODS)
    assert list(jod.sort_values().index) == list(bt.sort_values().index)
    assert jod.mean() == pytest.approx(0.0, abs=1e-9)


def test_unbeaten_method_gets_a_finite_score():
    votes = pd.DataFrame(
        {"rater": "R", "method_left": ["a"] * 5, "method_right": ["b"] * 5, "choice": "left"}
    )
    for scale in (analysis.bradley_terry, analysis.thurstone_jod):
        scores = scale(votes, ["a", "b", "c"])
        assert np.isfinite(scores).all() and scores["a"] > scores["c"] > scores["b"]


def test_significance_rank_ties_overlapping_intervals():
    lower = [2.0, 1.5, 0.0, -2.0]
    upper = [3.0, 2.5, 1.0, -1.0]
    assert list(analysis.significance_rank(lower, upper)) == [1, 1, 3, 4]


# Kendall & Babington Smith (1940, p. 326), reproduced in David (1988): a dog's choices
# between six samples of food; row preferred over column.
DOG_FOOD = np.array(
    [
        [0, 1, 1, 0, 1, 1],
        [0, 0, 0, 1, 1, 0],
        [0, 1, 0, 1, 1, 1],
        [1, 0, 0, 0, 0, 0],
        [0, 0, 0, 1, 0, 1],
        [0, 1, 0, 1, 0, 0],
    ]
)


def test_circular_triads_and_zeta_on_the_dog_food_example():
    assert analysis.circular_triads(DOG_FOOD) == 5
    assert analysis.max_circular_triads(6) == 8
    assert analysis.kendall_zeta(DOG_FOOD) == pytest.approx(0.375)


def test_circular_triads_formula_matches_counting_cycles():
    rng = np.random.default_rng(0)
    for n in (3, 4, 5, 7):
        for _ in range(20):
            upper = np.triu(rng.integers(0, 2, (n, n)), 1)
            p = upper + np.triu(1 - upper, 1).T
            cycles = sum(
                (p[a, b] and p[b, c] and p[c, a]) or (p[a, c] and p[c, b] and p[b, a])
                for a, b, c in itertools.combinations(range(n), 3)
            )
            assert analysis.circular_triads(p) == cycles


def test_zeta_bounds():
    transitive = np.triu(np.ones((5, 5)), 1)
    assert analysis.kendall_zeta(transitive) == 1.0
    # the regular tournament on 5 objects (a beats the next two) has the maximum, 5, triads
    regular = np.array([[1 if (b - a) % 5 in (1, 2) else 0 for b in range(5)] for a in range(5)])
    assert analysis.circular_triads(regular) == analysis.max_circular_triads(5) == 5
    assert analysis.kendall_zeta(regular) == 0.0
    with pytest.raises(ValueError, match="one judgement per pair"):
        analysis.circular_triads(np.zeros((3, 3)))


def test_kendall_u_worked_example_and_bounds():
    # 4 judges, 3 objects. Agreeing judge pairs per ordered pair of objects, C(a,2):
    # C(3,2)+C(4,2)+C(1,2)+C(2,2)+C(0,2)+C(2,2) = 3+6+0+1+0+1 = 11;
    # u = 2*11 / (C(4,2)*C(3,2)) - 1 = 22/18 - 1 = 2/9.
    counts = np.array([[0, 3, 4], [1, 0, 2], [0, 2, 0]])
    assert analysis.kendall_u(counts, 4) == pytest.approx(2 / 9)
    unanimous = np.triu(np.full((4, 4), 5), 1)
    assert analysis.kendall_u(unanimous, 5) == 1.0
    # the minimum is -1/(m-1) for an even number of judges, -1/m for an odd number
    assert analysis.kendall_u(np.array([[0, 2], [2, 0]]), 4) == pytest.approx(-1 / 3)
    assert analysis.kendall_u(np.array([[0, 2], [1, 0]]), 3) == pytest.approx(-1 / 3)
    with pytest.raises(ValueError, match="n_judges"):
        analysis.kendall_u(counts, 5)


def test_kendall_u_equals_mean_kendall_tau_for_rankings():
    # Kendall (1962): when every judge's choices come from a ranking, u is the average
    # Kendall tau over all pairs of judges.
    rng = np.random.default_rng(5)
    n, m = 6, 5
    rankings = [rng.permutation(n) for _ in range(m)]
    counts = np.zeros((n, n))
    for r in rankings:
        counts += r[:, None] < r[None, :]
    taus = [kendalltau(rankings[i], rankings[j])[0] for i, j in itertools.combinations(range(m), 2)]
    assert analysis.kendall_u(counts, m) == pytest.approx(np.mean(taus))


def test_agreement_is_high_for_a_unanimous_panel_and_near_zero_for_coin_flippers():
    strong = {m: 3.0 * s for m, s in TRUTH.items()}
    sure = simulate_panel({m: 20 * s for m, s in TRUTH.items()}, n_raters=4, n_items=3, seed=0)
    assert analysis.agreement(sure, METHODS) == {
        "kendall_u_mean": 1.0,
        "kendall_u_items": 3,
        "krippendorff_alpha": 1.0,
    }
    coin = simulate_panel(dict.fromkeys(METHODS, 0.0), n_raters=8, n_items=6, seed=1)
    noisy = analysis.agreement(coin, METHODS)
    assert abs(noisy["kendall_u_mean"]) < 0.1 and abs(noisy["krippendorff_alpha"]) < 0.1
    fair = analysis.agreement(simulate_panel(strong, n_raters=8, n_items=6, seed=2), METHODS)
    assert fair["krippendorff_alpha"] > noisy["krippendorff_alpha"] + 0.2


def test_reversed_rater_is_flagged_as_outlier():
    votes = simulate_panel(TRUTH, n_raters=8, n_items=4, seed=4)
    contrarian = simulate_panel({m: -s for m, s in TRUTH.items()}, n_raters=1, n_items=4, seed=5)
    votes = pd.concat([votes, contrarian.assign(rater="R99")], ignore_index=True)
    table = analysis.loo_outliers(votes, METHODS)
    assert table.loc["R99", "outlier"]
    assert not table.drop("R99")["outlier"].any()
    assert table.loc["R99", "loo_loglik"] < table.drop("R99")["loo_loglik"].min()


def test_repeat_flip_rate_per_rater():
    def vote(rater, trial, left, right, choice, repeat_of=None):
        return {
            "rater": rater,
            "trial": trial,
            "item": "i",
            "method_left": left,
            "method_right": right,
            "choice": choice,
            "is_repeat": repeat_of is not None,
            "repeat_of": repeat_of,
        }

    votes = pd.DataFrame(
        [
            vote("steady", 1, "a", "b", "left"),
            vote("steady", 2, "b", "a", "right", repeat_of=1),  # a again: consistent
            vote("steady", 3, "a", "c", "tie"),
            vote("steady", 4, "c", "a", "tie", repeat_of=3),
            vote("fickle", 5, "a", "b", "left"),
            vote("fickle", 6, "b", "a", "left", repeat_of=5),  # same side, other method: flip
        ]
    )
    table = analysis.repeat_consistency(votes)
    assert table.loc["steady"].tolist() == [2, 0, 0.0]
    assert table.loc["fickle"].tolist() == [1, 1, 1.0]


def test_single_rater_gets_scores_but_no_intervals():
    votes = simulate_panel(TRUTH, n_raters=1, n_items=3, seed=0)
    table = analysis.ratings(votes, METHODS, n_boot=50)
    assert table["bt_lower"].isna().all() and table["bt"].notna().all()
    assert sorted(table["rank"]) == [1, 2, 3, 4, 5]


def test_report_is_json_and_has_every_section():
    votes = simulate_panel(TRUTH, n_raters=4, n_items=4, tie_rate=0.1, seed=8)
    report = analysis.analyse(votes, METHODS, n_boot=50)
    text = json.dumps(report, allow_nan=False)
    assert set(report["by_modality"]) == {"xray", "endoscopy"}
    assert report["votes"] == len(votes) == report["overall"]["votes"]
    assert sum(s["votes"] for s in report["by_modality"].values()) == len(votes)
    assert {r["rater"] for r in report["rater_quality"]} == set(votes["rater"])
    first = report["rater_quality"][0]
    assert {"flip_rate", "zeta", "circular_triads", "loo_loglik", "outlier"} <= set(first)
    assert (
        first["median_response_ms"]
        == votes[votes["rater"] == first["rater"]]["response_ms"].median()
    )
    summary = analysis.format_report(report)
    assert all(m in summary for m in METHODS) and "Krippendorff" in summary
    assert "NaN" not in text


def test_votes_naming_unknown_methods_are_rejected():
    votes = pd.DataFrame(
        {"rater": ["R"], "method_left": ["x"], "method_right": ["a"], "choice": ["left"]}
    )
    with pytest.raises(ValueError, match="not in"):
        analysis.preference_share(votes, ["a", "b"])


def biased_panel(h: float, *, n_raters: int = 8, seed: int = 0) -> pd.DataFrame:
    """A panel following Bradley-Terry with TRUTH plus ``h`` log-odds for the left image."""
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(n_raters):
        for item in range(6):
            for a, b in itertools.combinations(METHODS, 2):
                left, right = (a, b) if rng.random() < 0.5 else (b, a)
                p_left = 1 / (1 + math.exp(-(TRUTH[left] - TRUTH[right] + h)))
                choice = "left" if rng.random() < p_left else "right"
                rows.append(
                    {"rater": f"R{r:02d}", "item": item, "method_left": left}
                    | {"method_right": right, "choice": choice}
                )
    return pd.DataFrame(rows)


def test_position_bias_is_measured_per_rater_and_overall_with_intervals():
    biased = analysis.position_bias(biased_panel(1.0), METHODS)
    fair = analysis.position_bias(biased_panel(0.0, seed=1), METHODS)
    overall = biased["overall"]
    assert overall["decisive"] == 8 * 6 * 10 and overall["lower"] > 0.5  # left preferred
    assert fair["overall"]["lower"] < 0.5 < fair["overall"]["upper"]
    assert len(biased["raters"]) == 8
    assert all(r["lower"] <= r["left_share"] <= r["upper"] for r in biased["raters"])
    fit = biased["bt_position"]
    assert fit["h_lower"] < 1.0 < fit["h_upper"] and fit["h_lower"] > 0  # recovers the term
    assert fair["bt_position"]["h_lower"] < 0 < fair["bt_position"]["h_upper"]
    assert fit["ranking"] == METHODS and fit["ranking_changed"] is False
    scores = np.array([fit["scores"][m] for m in METHODS])
    assert abs(scores.mean()) < 1e-9 and np.corrcoef(scores, list(TRUTH.values()))[0, 1] > 0.95
    text = "\n".join(analysis.format_position_bias(biased))
    assert "log-odds for the left image" in text and "does not change the ranking" in text


def test_few_raters_give_no_intervals_and_say_why():
    votes = simulate_panel(TRUTH, n_raters=2, n_items=4, seed=3)
    table = analysis.ratings(votes, METHODS, n_boot=100)
    assert table[["bt_lower", "bt_upper", "jod_lower", "jod_upper"]].isna().all().all()
    note = analysis.interval_note(2)
    assert "2 raters give only 3 distinct resamples" in note and "at least 5" in note
    assert analysis.interval_note(analysis.MIN_RATERS_FOR_INTERVALS) == ""
    report = analysis.analyse(votes, METHODS, n_boot=20)
    assert report["intervals"] == note and note in analysis.format_report(report)
    five = analysis.ratings(simulate_panel(TRUTH, n_raters=5, n_items=2), METHODS, n_boot=50)
    assert five["bt_lower"].notna().all()


def test_a_rater_with_few_votes_is_never_flagged():
    votes = simulate_panel(TRUTH, n_raters=6, n_items=3, seed=2)
    few = votes[votes["rater"] == votes["rater"].iloc[0]].head(1).copy()
    few["rater"] = "Rnew"
    few["choice"] = few["choice"].map({"left": "right", "right": "left"})  # against everyone
    table = analysis.loo_outliers(pd.concat([votes, few]), METHODS)
    assert not table.loc["Rnew", "outlier"]
    assert analysis.MIN_VOTES_FOR_OUTLIER == 10
